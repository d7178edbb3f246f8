// CLI-driven tests of the hwid provider: unmodified Debian programs (openssl, curl, nginx) use TPM
// keys through hwid.so, against the binary's swtpm, on loopback ports picked free. Every server
// and client is a process this test starts and stops itself, bounded in time. Signatures are
// checked by programs running with OpenSSL's default provider only (no -provider flags).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"
#include "tests/testing/run_shell.h"

namespace hwid {
namespace {

using ::testing::HasSubstr;

constexpr char kP[] = "-provider default -provider hwid";
// genpkey must reach hwid's key generation: hwid first (or -propquery provider=hwid).
constexpr char kGen[] = "-provider hwid -provider default";

std::pair<int, std::string> Shell(const std::string& cmd) {
  ::hwid::testing::ShellResult r = ::hwid::testing::RunShell(cmd);
  return {r.exit_code, r.output};
}

// SanitizerEnv prefixes a command that loads hwid.so. In a sanitized build the programs we start
// (openssl, curl, nginx) are not instrumented but hwid.so is: they need the sanitizer runtimes
// preloaded. Leak reports would be about those programs, so only errors count there. (tpm2-tools
// hang with the runtimes preloaded, so this is not set for the whole test.)
std::string SanitizerEnv() {
#ifdef HWID_SANITIZER_PRELOAD
  return "env LD_PRELOAD=" HWID_SANITIZER_PRELOAD " ASAN_OPTIONS=detect_leaks=0 ";
#else
  return "";
#endif
}

bool HaveTool(const char* name) {
  return Shell(absl::StrCat("command -v ", name, " || test -x /usr/sbin/", name)).first == 0;
}

// RequireTool skips without the tool, but fails under CI=true.
#define REQUIRE_TOOL(name)                                                     \
  do {                                                                         \
    if (!HaveTool(name)) {                                                     \
      const char* ci = std::getenv("CI");                                      \
      if (ci != nullptr && std::string(ci) == "true") {                        \
        FAIL() << name << " is missing (CI=true: install it, scripts/lib.sh)"; \
      }                                                                        \
      GTEST_SKIP() << name << " is missing";                                   \
    }                                                                          \
  } while (false)

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

// Background is one server process started by this test (sh -c "exec ..."), output to a log.
class Background {
 public:
  Background(const std::string& cmd, const std::string& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c",
            absl::StrCat("exec ", SanitizerEnv(), cmd, " >'", log, "' 2>&1").c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Background() { Stop(SIGTERM); }

  // WaitForLog waits (bounded) until the log contains `what` (s_server prints ACCEPT when it
  // listens; probing its port would use up its -naccept budget).
  bool WaitForLog(const std::string& what) {
    for (int i = 0; i < 400; ++i) {
      if (Log().find(what) != std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  bool WaitForPort(int port) {
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

  // Wait waits (bounded) for the process to exit by itself; returns its exit code or -1.
  int Wait(int seconds = 20) {
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

  // Stop sends `sig` to its own process only and waits for it (bounded), then SIGKILL.
  int Stop(int sig) {
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

  std::string Log() const {
    auto b = ReadFile(log_);
    return b.ok() ? std::string(b->begin(), b->end()) : "";
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int status_ = 0;
};

size_t TransientCount() {
  auto t = tpm::Tpm::Open(testing::GlobalSwtpm().tcti());
  if (!t.ok()) {
    return 999;
  }
  auto h = (*t)->TransientHandles();
  return h.ok() ? h->size() : 999;
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OPENSSL_MODULES", HWID_PROVIDER_DIR, 1);
    // Keep the system openssl.cnf out of the way: tests set OPENSSL_CONF where they need one.
    unsetenv("OPENSSL_CONF");

  }
  void SetUp() override {
    char tmpl[] = "/tmp/hwid-provcli-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_EQ(TransientCount(), 0u);
  }
  void TearDown() override {
    EXPECT_EQ(TransientCount(), 0u) << "a process left transient objects in the TPM";
    Shell("tpm2_flushcontext -t");
    if (!HasFailure()) {
      Shell(absl::StrCat("rm -rf '", dir_, "'"));
    } else {
      std::fprintf(stderr, "kept %s for debugging\n", dir_.c_str());
    }
  }

  // Run runs a shell command in dir_, bounded in time.
  std::pair<int, std::string> Run(const std::string& cmd, int seconds = 60) {
    // Not for tpm2-tools or a plain curl client (they do not load hwid.so, and both hang with the
    // sanitizer runtimes preloaded: their libcurl resolver thread never returns).
    const bool loads_hwid = cmd.find("tpm2_") == std::string::npos && cmd.rfind("curl ", 0) != 0;
    const std::string env = loads_hwid ? SanitizerEnv() : "";
    return Shell(absl::StrCat("cd '", dir_, "' && timeout ", seconds, " ", env, "sh -c '", cmd,
                              "'"));
  }
  void MustRun(const std::string& cmd, int seconds = 60) {
    auto [rc, out] = Run(cmd, seconds);
    ASSERT_EQ(rc, 0) << cmd << "\n" << out;
  }

  // GenKey writes a TPM key `name`.pem and its public key `name`.pub.
  void GenKey(const std::string& name, const std::string& alg) {
    const std::string opt = alg == "EC" || alg == "P-256" ? "-algorithm EC -pkeyopt group:P-256"
                            : alg == "P-384"             ? "-algorithm EC -pkeyopt group:P-384"
                            : alg == "RSA3072" ? "-algorithm RSA -pkeyopt bits:3072"
                                               : "-algorithm RSA -pkeyopt bits:2048";
    MustRun(absl::StrCat("openssl genpkey ", kGen, " ", opt, " -out ", name, ".pem"), 120);
    MustRun(absl::StrCat("openssl pkey ", kP, " -in ", name, ".pem -pubout -out ", name, ".pub"));
  }

  // MakeCa makes a CA whose key is in the TPM (ca.pem, ca.crt) and certificates signed by it.
  void MakeCa(const std::string& alg) {
    GenKey("ca", alg);
    MustRun(absl::StrCat("openssl req ", kP, " -new -x509 -key ca.pem -subj \"/CN=hwid test CA\" "
                         "-days 2 -addext basicConstraints=critical,CA:TRUE "
                         "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt"));
  }
  void MakeCert(const std::string& name, const std::string& alg, const std::string& san) {
    GenKey(name, alg);
    MustRun(absl::StrCat("openssl req ", kP, " -new -key ", name, ".pem -subj /CN=", name,
                         " -addext subjectAltName=", san, " -out ", name, ".csr"));
    MustRun(absl::StrCat("openssl req -verify -noout -in ", name, ".csr"));
    MustRun(absl::StrCat("openssl x509 ", kP, " -req -in ", name, ".csr -CA ca.crt -CAkey ca.pem "
                         "-CAcreateserial -copy_extensions copy -days 1 -out ", name, ".crt"));
    MustRun(absl::StrCat("openssl verify -CAfile ca.crt ", name, ".crt"));
  }

  // WriteOpensslCnf writes openssl.cnf activating default and then hwid (with the TCTI).
  std::string WriteOpensslCnf() {
    const std::string path = dir_ + "/openssl.cnf";
    const std::string cnf = absl::StrCat(
        "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n"
        "[provider_sect]\ndefault = default_sect\nhwid = hwid_sect\n[default_sect]\nactivate = 1\n"
        "[hwid_sect]\nmodule = ", HWID_PROVIDER_DIR, "/hwid.so\ntcti = ",
        testing::GlobalSwtpm().tcti(), "\nactivate = 1\n");
    EXPECT_TRUE(WriteFile(path, AsSpan(cnf)).ok());
    return path;
  }

  std::string dir_;
};

TEST_F(CliTest, GenpkeyEveryAlgorithmThenDgstAndPkeyutlSign) {
  for (const char* alg : {"P-256", "P-384", "RSA2048", "RSA3072"}) {
    SCOPED_TRACE(alg);
    GenKey("k", alg);
    auto pem = ReadFile(dir_ + "/k.pem");
    ASSERT_TRUE(pem.ok());
    EXPECT_THAT(std::string(pem->begin(), pem->end()), HasSubstr("BEGIN TSS2 PRIVATE KEY"));
    MustRun(absl::StrCat("printf \"message for %s\" ", alg, " > msg && openssl dgst ", kP,
                         " -sha256 -sign k.pem -out sig msg"));
    auto [rc, out] = Run("openssl dgst -sha256 -verify k.pub -signature sig msg");
    EXPECT_EQ(rc, 0) << out;
    EXPECT_THAT(out, HasSubstr("Verified OK"));
    // The oracle can say no.
    auto [rc2, out2] = Run("echo tampered >> msg && openssl dgst -sha256 -verify k.pub "
                           "-signature sig msg");
    EXPECT_NE(rc2, 0) << out2;
    MustRun(absl::StrCat("openssl dgst -sha384 -binary -out dgst msg && openssl pkeyutl ", kP,
                         " -sign -inkey k.pem -in dgst -out sig2 -pkeyopt digest:sha384 && "
                         "openssl pkeyutl -verify -pubin -inkey k.pub -in dgst -sigfile sig2 "
                         "-pkeyopt digest:sha384"));
  }
}

TEST_F(CliTest, PrivateKeyNeverExportsToSoftware) {
  GenKey("k", "EC");
  // pkey -traditional / -outform DER still writes only the TPM key file, never key material.
  auto [rc, out] = Run(absl::StrCat("openssl pkey ", kP, " -in k.pem -text -noout"));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("private key in the TPM, not exportable"));
  EXPECT_THAT(out, HasSubstr("pub:"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("priv:")));
  auto [rc2, out2] = Run(absl::StrCat("openssl pkey ", kP, " -in k.pem -out re.pem && cat re.pem"));
  EXPECT_EQ(rc2, 0) << out2;
  EXPECT_THAT(out2, HasSubstr("BEGIN TSS2 PRIVATE KEY"));
  EXPECT_THAT(out2, ::testing::Not(HasSubstr("BEGIN PRIVATE KEY")));
}

TEST_F(CliTest, CsrWithSpiffeIdSignedByTpmCa) {
  MakeCa("EC");
  MakeCert("workload", "EC", "URI:spiffe://example.org/workload");
  auto [rc, out] = Run("openssl x509 -in workload.crt -noout -ext subjectAltName");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("URI:spiffe://example.org/workload"));
  // An RSA CA signing an EC workload and the other way round.
  MustRun("rm -f ca.*");
  MakeCa("RSA2048");
  MakeCert("w2", "EC", "URI:spiffe://example.org/w2");
}

struct TlsCliCase {
  const char* name;
  const char* alg;
  const char* version;  // s_client flag
  bool mutual;
  const char* expect_sig;  // in s_client -brief output ("" = no check)
};

class TlsCliTest : public CliTest, public ::testing::WithParamInterface<TlsCliCase> {};

TEST_P(TlsCliTest, SServerSClient) {
  const TlsCliCase& tc = GetParam();
  MakeCa("EC");
  MakeCert("server", tc.alg, "IP:127.0.0.1");
  if (tc.mutual) {
    MakeCert("client", tc.alg, "URI:spiffe://example.org/client");
  }
  const int port = FreePort();
  Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port,
                                 " -cert ", dir_, "/server.crt -key ", dir_, "/server.pem -CAfile ",
                                 dir_, "/ca.crt -naccept 1 -www ",
                                 tc.mutual ? "-Verify 1 -verify_return_error" : ""),
                    dir_ + "/server.log");
  ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
  auto [rc, out] = Run(absl::StrCat(
      "printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | openssl s_client ",
      tc.mutual ? absl::StrCat(kP, " -cert client.crt -key client.pem ") : "",
      "-connect 127.0.0.1:", port, " -CAfile ca.crt -verify_return_error -verify_ip 127.0.0.1 ",
      tc.version, " -brief -ign_eof"), 30);
  EXPECT_EQ(server.Wait(), 0) << server.Log();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("Verification: OK"));
  EXPECT_THAT(out, HasSubstr(std::string(tc.version) == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"));
  EXPECT_THAT(out, HasSubstr(tc.expect_sig));
  EXPECT_THAT(out, HasSubstr("HTTP/1.0 200 ok"));
  if (tc.mutual) {
    // The server (-Verify 1 -verify_return_error) verified the client's TPM-signed handshake.
    EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
    EXPECT_THAT(server.Log(), HasSubstr("1 server accepts that finished"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, TlsCliTest,
    ::testing::Values(
        TlsCliCase{"Tls13Ec", "EC", "-tls1_3", false, "Signature type: ECDSA"},
        TlsCliCase{"Tls12Ec", "EC", "-tls1_2", false, "Signature type: ECDSA"},
        TlsCliCase{"Tls13RsaPss", "RSA2048", "-tls1_3", false, "Signature type: RSA-PSS"},
        TlsCliCase{"Tls12Rsa", "RSA2048", "-tls1_2", false, "Signature type: RSA"},
        TlsCliCase{"Tls13EcMutual", "EC", "-tls1_3", true, "Signature type: ECDSA"},
        TlsCliCase{"Tls12EcMutual", "EC", "-tls1_2", true, "Signature type: ECDSA"},
        TlsCliCase{"Tls13RsaMutual", "RSA2048", "-tls1_3", true, "Signature type: RSA-PSS"}),
    [](const auto& tp) { return std::string(tp.param.name); });

TEST_F(CliTest, HandleUriInEveryCommand) {
  GenKey("k", "EC");
  constexpr char kHandle[] = "0x81000201";
  Run(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null 2>&1"));  // leftovers
  MustRun(absl::StrCat("tpm2_load -r k.pem -c k.ctx >/dev/null && tpm2_evictcontrol -c k.ctx ",
                       kHandle, " >/dev/null && tpm2_flushcontext -t"));
  const std::string uri = absl::StrCat("handle:", kHandle);
  MustRun(absl::StrCat("openssl pkey ", kP, " -in ", uri, " -pubout -out h.pub && cmp h.pub k.pub"));
  MustRun(absl::StrCat("echo hi > msg && openssl dgst ", kP, " -sha256 -sign ", uri,
                       " -out sig msg && openssl dgst -sha256 -verify k.pub -signature sig msg"));
  MustRun(absl::StrCat("openssl req ", kP, " -new -key ", uri, " -subj /CN=persistent "
                       "-addext subjectAltName=URI:spiffe://example.org/persistent -out p.csr && "
                       "openssl req -verify -noout -in p.csr"));
  auto [rc, out] = Run(absl::StrCat("openssl pkey ", kP, " -in handle:0x81000299 -pubout"));
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("0x81000299"));
  MustRun(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null"));
}

TEST_F(CliTest, CurlClientKeyFromOpensslCnf) {
  REQUIRE_TOOL("curl");
#ifdef HWID_SANITIZER_PRELOAD
  // curl hangs in its resolver thread with the sanitizer runtimes preloaded (needed to dlopen the
  // sanitized hwid.so into the uninstrumented curl); the regular build runs this test.
  GTEST_SKIP() << "curl cannot load a sanitized hwid.so";
#endif
  MakeCa("EC");
  MakeCert("server", "EC", "IP:127.0.0.1");
  MakeCert("client", "EC", "URI:spiffe://example.org/curl");
  const std::string cnf = WriteOpensslCnf();
  for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
    SCOPED_TRACE(v);
    const int port = FreePort();
    const std::string log = absl::StrCat(dir_, "/server-", port, ".log");
    Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port,
                                   " -cert ", dir_, "/server.crt -key ", dir_,
                                   "/server.pem -CAfile ", dir_,
                                   "/ca.crt -naccept 1 -www -Verify 1 -verify_return_error"),
                      log);
    ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
    auto [rc, out] = Run(absl::StrCat("OPENSSL_CONF=", cnf, " curl -sS ", v,
                                      " --cacert ca.crt --cert client.crt --key client.pem "
                                      "https://127.0.0.1:", port, "/"), 30);
    EXPECT_EQ(server.Wait(), 0) << server.Log();
    EXPECT_EQ(rc, 0) << out;
    EXPECT_THAT(out, HasSubstr("Ciphers supported in s_server"));
    EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
  }
}

struct NginxCase {
  const char* name;
  const char* alg;
  int workers;
};

class NginxTest : public CliTest, public ::testing::WithParamInterface<NginxCase> {};

// nginx 1.22 reads ssl_certificate_key with PEM_read_bio_PrivateKey; openssl.cnf activates hwid.
// Without a resource manager all processes share swtpm's 3 object slots: the master flushes its
// keys at fork (pthread_atfork), each worker loads the key on its first handshake and keeps it.
TEST_P(NginxTest, ServesWithTpmKeyAndCurlVerifies) {
  REQUIRE_TOOL("nginx");
  REQUIRE_TOOL("curl");
  const NginxCase& nc = GetParam();
  MakeCa("EC");
  MakeCert("server", nc.alg, "IP:127.0.0.1");
  const std::string cnf = WriteOpensslCnf();
  const int port = FreePort();
  MustRun("mkdir -p logs tmp");
  const std::string conf = absl::StrCat(
      "daemon off;\nmaster_process on;\nworker_processes ", nc.workers, ";\n",
      geteuid() == 0 ? "user root root;\n" : "", "error_log ", dir_, "/logs/error.log info;\n",
      "pid ", dir_, "/logs/nginx.pid;\nevents { worker_connections 64; }\nhttp {\n",
      "  access_log off;\n  client_body_temp_path ", dir_, "/tmp/body;\n  proxy_temp_path ", dir_,
      "/tmp/proxy;\n  fastcgi_temp_path ", dir_, "/tmp/fcgi;\n  uwsgi_temp_path ", dir_,
      "/tmp/uwsgi;\n  scgi_temp_path ", dir_, "/tmp/scgi;\n",
      "  ssl_protocols TLSv1.2 TLSv1.3;\n",
      "  server {\n    listen 127.0.0.1:", port, " ssl;\n    ssl_certificate ", dir_,
      "/server.crt;\n    ssl_certificate_key ", dir_, "/server.pem;\n",
      "    location / { return 200 \"hwid nginx ok\\n\"; }\n  }\n}\n");
  ASSERT_TRUE(WriteFile(dir_ + "/nginx.conf", AsSpan(conf)).ok());
  Background nginx(absl::StrCat("env OPENSSL_CONF=", cnf, " nginx -p ", dir_, " -c ", dir_,
                                "/nginx.conf -e ", dir_, "/logs/error.log"),
                   dir_ + "/nginx.out");
  ASSERT_TRUE(nginx.WaitForPort(port)) << nginx.Log();
  // Several requests, so that every worker (forked after the master read the key) signs.
  for (int i = 0; i < 8; ++i) {
    for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
      auto [rc, out] = Run(absl::StrCat("curl -sS ", v, " --cacert ca.crt https://127.0.0.1:",
                                        port, "/"), 30);
      EXPECT_EQ(rc, 0) << v << " " << out;
      EXPECT_THAT(out, HasSubstr("hwid nginx ok"));
    }
  }
  // Graceful shutdown: workers and master exit normally and flush their TPM objects.
  EXPECT_EQ(nginx.Stop(SIGQUIT), 0);
  auto log = ReadFile(dir_ + "/logs/error.log");
  const std::string text = log.ok() ? std::string(log->begin(), log->end()) : "";
  EXPECT_THAT(text, ::testing::Not(HasSubstr("[crit]"))) << text;
  EXPECT_THAT(text, ::testing::Not(HasSubstr("[emerg]"))) << text;
}

INSTANTIATE_TEST_SUITE_P(Keys, NginxTest,
                         ::testing::Values(NginxCase{"EcTwoWorkers", "EC", 2},
                                           NginxCase{"RsaOneWorker", "RSA2048", 1}),
                         [](const auto& tp) { return std::string(tp.param.name); });

}  // namespace
}  // namespace hwid
