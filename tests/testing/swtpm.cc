#include "tests/testing/swtpm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace hwid::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

// Ports below the kernel's ephemeral range (32768+) so outgoing connections never hold them.
constexpr int kPortMin = 20000;
constexpr int kPortMax = 32000;
constexpr int kLaunchAttempts = 10;
constexpr auto kAnswerTimeout = std::chrono::seconds(10);

// Fd closes a file descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) {
      close(fd_);
    }
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string ErrnoText(int err) { return std::error_code(err, std::generic_category()).message(); }

// LoopbackConnect connects to 127.0.0.1:port with send/receive timeouts; -1 on failure.
int LoopbackConnect(int port, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const uint8_t* data, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool RecvAll(int fd, uint8_t* data, size_t n) {
  while (n > 0) {
    ssize_t r = recv(fd, data, n, 0);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      return false;
    }
    data += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

uint32_t ReadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// TpmAnswers sends TPM2_GetRandom(8) on the raw TPM command channel and checks for a success
// response with 8 bytes.
bool TpmAnswers(int port) {
  Fd fd(LoopbackConnect(port, 2000));
  if (fd.get() < 0) {
    return false;
  }
  // TPM_ST_NO_SESSIONS, commandSize 12, TPM_CC_GetRandom (0x17B), bytesRequested 8.
  const uint8_t cmd[] = {0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08};
  if (!SendAll(fd.get(), cmd, sizeof(cmd))) {
    return false;
  }
  uint8_t hdr[10];
  if (!RecvAll(fd.get(), hdr, sizeof(hdr))) {
    return false;
  }
  uint32_t size = ReadBe32(hdr + 2);
  uint32_t rc = ReadBe32(hdr + 6);
  if (rc != 0 || size != 10 + 2 + 8) {
    return false;
  }
  uint8_t rest[10];
  return RecvAll(fd.get(), rest, sizeof(rest)) && rest[0] == 0 && rest[1] == 8;
}

// CtrlShutdown sends swtpm's CMD_SHUTDOWN (3) on the control channel; true when acknowledged.
bool CtrlShutdown(int ctrl_port) {
  Fd fd(LoopbackConnect(ctrl_port, 2000));
  if (fd.get() < 0) {
    return false;
  }
  const uint8_t cmd[] = {0x00, 0x00, 0x00, 0x03};
  if (!SendAll(fd.get(), cmd, sizeof(cmd))) {
    return false;
  }
  uint8_t res[4];
  return RecvAll(fd.get(), res, sizeof(res)) && ReadBe32(res) == 0;
}

// PortPairBindable checks that 127.0.0.1:port and port+1 can be bound now (a hint only: the
// swtpm child's own bind decides).
bool PortPairBindable(int port) {
  for (int p : {port, port + 1}) {
    Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) {
      return false;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(p));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return false;
    }
  }
  return true;
}

int PickPortPair() {
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(getpid()));
  std::uniform_int_distribution<int> dist(kPortMin / 2, kPortMax / 2 - 1);
  for (int i = 0; i < 200; ++i) {
    int port = dist(rng) * 2;
    if (PortPairBindable(port)) {
      return port;
    }
  }
  return -1;
}

// FindInPath returns the absolute path of an executable named `name` on $PATH, or "".
std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (const auto& dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    if (dir.empty()) {
      continue;
    }
    std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

std::string FileSuffix(const std::string& path, std::uintmax_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return "";
  }
  in.seekg(static_cast<std::streamoff>(offset));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uintmax_t FileSizeOrZero(const std::string& path) {
  std::error_code ec;
  std::uintmax_t n = fs::file_size(path, ec);
  return ec ? 0 : n;
}

// LastLines returns at most `n` trailing lines of `text`, joined by " | ".
std::string LastLines(const std::string& text, size_t n) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  size_t from = lines.size() > n ? lines.size() - n : 0;
  std::string out;
  for (size_t i = from; i < lines.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : " | ", lines[i]);
  }
  return out.empty() ? "(empty)" : out;
}

// WaitExit polls for the child's exit for up to `timeout`; true once it is reaped.
bool WaitExit(pid_t pid, milliseconds timeout, int* status) {
  auto deadline = steady_clock::now() + timeout;
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
      return true;
    }
    if (steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
}

}  // namespace

Swtpm::Swtpm(std::string dir, std::string swtpm_binary)
    : dir_(std::move(dir)), swtpm_binary_(std::move(swtpm_binary)), owner_pid_(getpid()) {}

absl::StatusOr<std::unique_ptr<Swtpm>> Swtpm::Start() {
  const char* tmpl_env = std::getenv("HWID_SWTPM_TEMPLATE");
  if (tmpl_env == nullptr || *tmpl_env == '\0') {
    return absl::FailedPreconditionError(
        "swtpm test fixture: HWID_SWTPM_TEMPLATE is not set; run the test through ctest (fixture "
        "swtpm_template) or set it to a directory made by swtpm-setup/swtpm-provision-template");
  }
  const std::string tmpl = tmpl_env;
  for (const char* f : {"/.provisioned", "/state/tpm2-00.permall", "/ek-ca.pem", "/ek-root.pem"}) {
    if (!fs::exists(tmpl + f)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "swtpm test fixture: template ", tmpl, " is not provisioned (", tmpl, f,
          " missing); run swtpm-setup/swtpm-provision-template ", tmpl));
    }
  }
  return StartFrom(tmpl);
}

absl::StatusOr<std::unique_ptr<Swtpm>> Swtpm::StartProfile(const std::string& name) {
  const char* base = std::getenv("HWID_SWTPM_PROFILES");
  if (base == nullptr || *base == '\0') {
    return absl::FailedPreconditionError(absl::StrCat(
        "swtpm test fixture: HWID_SWTPM_PROFILES is not set, so profile '", name,
        "' has no template; run the test through ctest (declare SWTPM_PROFILES in hwid_add_test: "
        "fixture swtpm_profiles) or set it to a directory made by "
        "tests/swtpm_setup/provision_profiles.sh"));
  }
  const std::string dir = absl::StrCat(base, "/", name);
  if (!fs::is_directory(dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "swtpm test fixture: no template for profile '", name, "' (", dir,
        " missing); run swtpm-setup/swtpm-provision-template --profile ", name, " ", dir));
  }
  std::ifstream marker(dir + "/profile");
  std::string provisioned;
  std::getline(marker, provisioned);
  if (!fs::exists(dir + "/.provisioned") || provisioned != name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "swtpm test fixture: ", dir, " is not a provisioned template of profile '", name,
        "' (", dir, "/profile says '", provisioned, "'); run swtpm-setup/swtpm-provision-template "
        "--profile ", name, " ", dir));
  }
  return StartFrom(dir);
}

absl::StatusOr<std::unique_ptr<Swtpm>> Swtpm::StartFrom(const std::string& tmpl) {
  for (const char* f : {"/state/tpm2-00.permall", "/ek-ca.pem", "/ek-root.pem"}) {
    if (!fs::exists(tmpl + f)) {
      return absl::FailedPreconditionError(
          absl::StrCat("swtpm test fixture: ", tmpl, f, " is missing (not a swtpm directory)"));
    }
  }
  std::string binary = FindInPath("swtpm");
  if (binary.empty()) {
    return absl::FailedPreconditionError(
        "swtpm test fixture: no `swtpm` executable on PATH (apt-get install swtpm swtpm-tools)");
  }

  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp", "/hwid-swtpm-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("swtpm test fixture: mkdtemp ", pattern, ": ", ErrnoText(errno)));
  }
  // From here on the object owns the directory and removes it on every error path.
  std::unique_ptr<Swtpm> swtpm(new Swtpm(buf.data(), std::move(binary)));

  std::error_code ec;
  fs::copy(tmpl + "/state", swtpm->dir_ + "/state", fs::copy_options::recursive, ec);
  for (const char* f : {"ek-ca.pem", "ek-root.pem"}) {
    if (!ec) {
      fs::copy_file(absl::StrCat(tmpl, "/", f), absl::StrCat(swtpm->dir_, "/", f), ec);
    }
  }
  // Present only in some layouts (swtpm-setup profiles): copied when they exist.
  for (const char* f : {"other-ca.pem", "profile", "certs"}) {
    const std::string from = absl::StrCat(tmpl, "/", f);
    if (!ec && fs::exists(from)) {
      fs::copy(from, absl::StrCat(swtpm->dir_, "/", f), fs::copy_options::recursive, ec);
    }
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("swtpm test fixture: copying template ", tmpl,
                                            " to ", swtpm->dir_, ": ", ec.message()));
  }
  RETURN_IF_ERROR(swtpm->Launch(/*keep_ports=*/false));
  return swtpm;
}

absl::Status Swtpm::SpawnAndWait(int port, bool* bind_failed) {
  *bind_failed = false;
  const std::string log = dir_ + "/swtpm.log";
  const std::string errlog = log + ".stderr";
  const std::uintmax_t log_offset = FileSizeOrZero(log);
  const std::uintmax_t errlog_offset = FileSizeOrZero(errlog);

  std::vector<std::string> args = {
      swtpm_binary_,
      "socket",
      "--tpm2",
      "--server",
      absl::StrCat("type=tcp,port=", port, ",bindaddr=127.0.0.1"),
      "--ctrl",
      absl::StrCat("type=tcp,port=", port + 1, ",bindaddr=127.0.0.1"),
      "--tpmstate",
      absl::StrCat("dir=", dir_, "/state"),
      "--flags",
      "not-need-init,startup-clear",
      "--log",
      absl::StrCat("file=", log, ",level=1"),
  };
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);

  // Everything the child needs is prepared before fork: after fork only async-signal-safe calls.
  Fd devnull(open("/dev/null", O_RDWR | O_CLOEXEC));
  Fd errfile(open(errlog.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (devnull.get() < 0 || errfile.get() < 0) {
    return absl::InternalError(
        absl::StrCat("swtpm test fixture: opening /dev/null or ", errlog, ": ", ErrnoText(errno)));
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("swtpm test fixture: fork: ", ErrnoText(errno)));
  }
  if (pid == 0) {
    // Child: die with the parent, detach stdio, close inherited descriptors, exec swtpm.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) {
      _exit(127);
    }
    dup2(devnull.get(), STDIN_FILENO);
    dup2(devnull.get(), STDOUT_FILENO);
    dup2(errfile.get(), STDERR_FILENO);
    close_range(3, ~0U, 0);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;

  auto deadline = steady_clock::now() + kAnswerTimeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      pid_ = -1;
      std::string why = FileSuffix(log, log_offset) + FileSuffix(errlog, errlog_offset);
      *bind_failed = why.find("Address already in use") != std::string::npos;
      std::string how = WIFEXITED(status) ? absl::StrCat("exit code ", WEXITSTATUS(status))
                                          : absl::StrCat("signal ", WTERMSIG(status));
      return absl::UnavailableError(absl::StrCat(
          "swtpm test fixture: `swtpm socket` on ports ", port, "/", port + 1, " for ", dir_,
          " ended at start (", how, "); log: ", LastLines(why, 4)));
    }
    if (TpmAnswers(port)) {
      return absl::OkStatus();
    }
    if (steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  pid_ = -1;
  return absl::UnavailableError(absl::StrCat(
      "swtpm test fixture: swtpm pid ", pid, " on port ", port, " (", dir_,
      ") did not answer TPM2_GetRandom within 10 s (killed it); log: ",
      LastLines(FileSuffix(log, log_offset) + FileSuffix(errlog, errlog_offset), 4)));
}

absl::Status Swtpm::Launch(bool keep_ports) {
  if (keep_ports) {
    // The old swtpm just closed these ports; retry briefly in case the bind races with that.
    absl::Status last;
    for (int attempt = 0; attempt < 20; ++attempt) {
      bool bind_failed = false;
      last = SpawnAndWait(port_, &bind_failed);
      if (last.ok() || !bind_failed) {
        return last;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    return absl::UnavailableError(absl::StrCat(
        "swtpm test fixture: restart could not re-bind ports ", port_, "/", port_ + 1,
        " (taken by another process?): ", last.message()));
  }
  absl::Status last;
  for (int attempt = 0; attempt < kLaunchAttempts; ++attempt) {
    int port = PickPortPair();
    if (port < 0) {
      return absl::UnavailableError(absl::StrCat(
          "swtpm test fixture: no free loopback port pair in ", kPortMin, "..", kPortMax));
    }
    bool bind_failed = false;
    last = SpawnAndWait(port, &bind_failed);
    if (last.ok()) {
      port_ = port;
      tcti_ = absl::StrCat("swtpm:host=127.0.0.1,port=", port_);
      return absl::OkStatus();
    }
    if (!bind_failed) {
      return last;
    }
  }
  return absl::UnavailableError(absl::StrCat("swtpm test fixture: no port pair could be bound in ",
                                             kLaunchAttempts, " attempts: ", last.message()));
}

absl::Status Swtpm::Restart() {
  RETURN_IF_ERROR(Stop());
  if (port_ <= 0) {
    return absl::FailedPreconditionError("swtpm test fixture: Restart before a successful Start");
  }
  return Launch(/*keep_ports=*/true);
}

absl::Status Swtpm::Stop() {
  if (pid_ <= 0 || getpid() != owner_pid_) {
    return absl::OkStatus();
  }
  const pid_t pid = pid_;
  int status = 0;
  bool gone = false;
  if (port_ > 0 && CtrlShutdown(port_ + 1)) {
    gone = WaitExit(pid, milliseconds(5000), &status);
  }
  if (!gone) {
    kill(pid, SIGTERM);
    gone = WaitExit(pid, milliseconds(3000), &status);
  }
  if (!gone) {
    kill(pid, SIGKILL);
    gone = WaitExit(pid, milliseconds(5000), &status);
  }
  if (!gone) {
    return absl::InternalError(
        absl::StrCat("swtpm test fixture: swtpm pid ", pid, " (", dir_, ") survived SIGKILL"));
  }
  pid_ = -1;
  return absl::OkStatus();
}

Swtpm::~Swtpm() {
  if (getpid() != owner_pid_) {
    return;  // A forked child (death test) neither stops the parent's swtpm nor deletes its dir.
  }
  absl::Status s = Stop();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
  }
  if (std::getenv("HWID_SWTPM_KEEP_DIR") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  } else {
    std::fprintf(stderr, "swtpm test fixture: keeping %s (HWID_SWTPM_KEEP_DIR)\n", dir_.c_str());
  }
}

}  // namespace hwid::testing
