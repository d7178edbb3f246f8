#include "tests/provider/cli_support.h"

#include <gmock/gmock.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/bytes.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"

namespace hwid::testing {

using ::testing::HasSubstr;
using ::testing::Not;

std::string SanitizerEnv() {
#ifdef HWID_SANITIZER_PRELOAD
  return "env LD_PRELOAD=" HWID_SANITIZER_PRELOAD " ASAN_OPTIONS=detect_leaks=0 ";
#else
  return "";
#endif
}

std::string DocumentedOpensslCnf(ProviderOrder order, const std::string& tcti,
                                 const std::string& hwid_extra) {
  auto doc = ReadFile(HWID_PROVIDER_DOC);
  if (!doc.ok()) {
    ADD_FAILURE() << "cannot read " << HWID_PROVIDER_DOC << ": " << doc.status();
    return "";
  }
  const std::string text(doc->begin(), doc->end());
  const size_t marker = text.find("<!-- openssl.cnf snippet:");
  const size_t begin = text.find("```ini\n", marker);
  const size_t end = text.find("```\n", begin + 7);
  if (marker == std::string::npos || begin == std::string::npos || end == std::string::npos) {
    ADD_FAILURE() << HWID_PROVIDER_DOC << " has no ```ini block after the openssl.cnf marker";
    return "";
  }
  std::vector<std::string> lines =
      absl::StrSplit(absl::string_view(text).substr(begin + 7, end - begin - 7), '\n');
  int default_line = -1;
  int hwid_line = -1;
  bool module = false;
  bool tcti_set = false;
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string& line = lines[i];
    if (absl::StartsWith(line, "default = default_sect")) {
      default_line = static_cast<int>(i);
    } else if (absl::StartsWith(line, "hwid = hwid_sect")) {
      hwid_line = static_cast<int>(i);
    } else if (absl::StartsWith(line, "module = ")) {
      line = absl::StrCat("module = ", HWID_PROVIDER_DIR, "/hwid.so");
      module = true;
    } else if (absl::StartsWith(line, "tcti = ")) {
      line = absl::StrCat("tcti = ", tcti, "\n", hwid_extra);
      tcti_set = true;
    }
  }
  if (default_line < 0 || hwid_line < 0 || !module || !tcti_set) {
    ADD_FAILURE() << "the openssl.cnf block of " << HWID_PROVIDER_DOC
                  << " lacks a default/hwid provider, module or tcti line";
    return "";
  }
  if ((order == ProviderOrder::kHwidFirst) != (hwid_line < default_line)) {
    std::swap(lines[default_line], lines[hwid_line]);
  }
  return absl::StrJoin(lines, "\n");
}

bool HaveTool(const char* name) {
  return RunShell(absl::StrCat("command -v ", name, " || test -x /usr/sbin/", name)).exit_code ==
         0;
}

int FreePort() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

bool PortOpen(int port) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(s);
  return ok;
}

size_t TransientCount() {
  auto t = tpm::Tpm::Open(GlobalSwtpm().tcti());
  if (!t.ok()) {
    return 999;
  }
  auto h = (*t)->TransientHandles();
  return h.ok() ? h->size() : 999;
}

std::string NginxConf(const std::string& dir, int workers, int port, const std::string& key_file,
                      const std::string& reply) {
  return absl::StrCat(
      "daemon off;\nmaster_process on;\nworker_processes ", workers, ";\n",
      geteuid() == 0 ? "user root root;\n" : "", "error_log ", dir, "/logs/error.log info;\n",
      "pid ", dir, "/logs/nginx.pid;\nevents { worker_connections 64; }\nhttp {\n",
      "  access_log off;\n  client_body_temp_path ", dir, "/tmp/body;\n  proxy_temp_path ", dir,
      "/tmp/proxy;\n  fastcgi_temp_path ", dir, "/tmp/fcgi;\n  uwsgi_temp_path ", dir,
      "/tmp/uwsgi;\n  scgi_temp_path ", dir, "/tmp/scgi;\n",
      "  ssl_protocols TLSv1.2 TLSv1.3;\n",
      "  server {\n    listen 127.0.0.1:", port, " ssl;\n    ssl_certificate ", dir,
      "/server.crt;\n    ssl_certificate_key ", key_file, ";\n",
      "    location / { return 200 \"", reply, "\\n\"; }\n  }\n}\n");
}

std::string SClientGetCommand(const std::string& client_args, int port,
                              const std::string& version) {
  return absl::StrCat("printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | openssl s_client ", client_args,
                      "-connect 127.0.0.1:", port,
                      " -CAfile ca.crt -verify_return_error -verify_ip 127.0.0.1 ", version,
                      " -brief -ign_eof");
}

void ExpectSClientGetOk(const ShellResult& r, const std::string& version,
                        const std::string& expect_sig) {
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("Verification: OK"));
  EXPECT_THAT(r.output, HasSubstr(version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"));
  EXPECT_THAT(r.output, HasSubstr(expect_sig));
  EXPECT_THAT(r.output, HasSubstr("HTTP/1.0 200 ok"));
}

Background::Background(const std::string& cmd, const std::string& log) : log_(log) {
  pid_ = fork();
  if (pid_ == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c",
          absl::StrCat("exec ", SanitizerEnv(), cmd, " >'", log, "' 2>&1").c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
}

bool Background::WaitForLog(const std::string& what) {
  for (int i = 0; i < 400; ++i) {
    if (Log().find(what) != std::string::npos) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

bool Background::WaitForPort(int port) {
  for (int i = 0; i < 200; ++i) {
    if (PortOpen(port)) {
      return true;
    }
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = st;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int Background::Wait(int seconds) {
  for (int i = 0; pid_ > 0 && i < seconds * 20; ++i) {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = st;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (pid_ > 0) {
    Stop(SIGKILL);
    return -1;
  }
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
}

int Background::Stop(int sig) {
  if (pid_ <= 0) {
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }
  kill(pid_, sig);
  for (int i = 0; i < 200; ++i) {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = st;
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
  return -1;
}

std::string Background::Log() const {
  auto b = ReadFile(log_);
  return b.ok() ? std::string(b->begin(), b->end()) : "";
}

void ProviderCliTest::SetUpTestSuite() {
  setenv("OPENSSL_MODULES", HWID_PROVIDER_DIR, 1);
  unsetenv("OPENSSL_CONF");
}

void ProviderCliTest::SetUp() {
  std::string tmpl = absl::StrCat("/tmp/", dir_prefix_, "-XXXXXX");
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  dir_ = tmpl;
  ASSERT_EQ(TransientCount(), 0u);
}

void ProviderCliTest::TearDown() {
  if (dir_.empty()) {
    return;
  }
  EXPECT_EQ(TransientCount(), 0u) << "a process left transient objects in the TPM";
  RunShell("tpm2_flushcontext -t");
  if (!HasFailure()) {
    RunShell(absl::StrCat("rm -rf '", dir_, "'"));
  } else {
    std::fprintf(stderr, "kept %s for debugging\n", dir_.c_str());
  }
}

ShellResult ProviderCliTest::Run(const std::string& cmd, int seconds) {
  const bool loads_hwid = cmd.find("tpm2_") == std::string::npos &&
                          cmd.find("pkcs11-tool") == std::string::npos &&
                          cmd.rfind("curl ", 0) != 0;
  const std::string env = loads_hwid ? SanitizerEnv() : "";
  return RunShell(absl::StrCat("cd '", dir_, "' && timeout ", seconds, " ", env, "sh -c '", cmd,
                               "'"));
}

void ProviderCliTest::MustRun(const std::string& cmd, int seconds) {
  ShellResult r = Run(cmd, seconds);
  ASSERT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
}

std::string ProviderCliTest::MustFail(const std::string& cmd) {
  ShellResult r = Run(cmd);
  EXPECT_NE(r.exit_code, 0) << cmd << "\n" << r.output;
  EXPECT_LT(r.exit_code, 124) << "killed by a signal or timed out: " << cmd << "\n" << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("Segmentation"))) << cmd;
  EXPECT_THAT(r.output, Not(HasSubstr("AddressSanitizer"))) << cmd;
  EXPECT_THAT(r.output, Not(HasSubstr("runtime error"))) << cmd;
  return r.output;
}

std::string ProviderCliTest::Text(const std::string& name) {
  auto b = ReadFile(dir_ + "/" + name);
  return b.ok() ? std::string(b->begin(), b->end()) : "";
}

void ProviderCliTest::Write(const std::string& name, const std::string& text) {
  ASSERT_TRUE(WriteFile(dir_ + "/" + name, AsSpan(text)).ok());
}

std::string ProviderCliTest::WriteOpensslCnf(const std::string& name,
                                             const std::string& hwid_extra, ProviderOrder order,
                                             const std::string& tcti) {
  const std::string path = dir_ + "/" + name;
  const std::string cnf =
      DocumentedOpensslCnf(order, tcti.empty() ? GlobalSwtpm().tcti() : tcti, hwid_extra);
  EXPECT_TRUE(WriteFile(path, AsSpan(cnf)).ok());
  return path;
}

}  // namespace hwid::testing
