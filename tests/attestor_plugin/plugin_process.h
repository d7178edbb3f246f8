// PluginProcess: starts a plugin binary exactly as go-plugin's host does (magic cookie and
// PLUGIN_* variables in the environment, stdout and stderr on pipes), reads the handshake
// line and collects stderr. Test-only.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_PROCESS_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_PROCESS_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace hwid::testing {

class PluginProcess {
 public:
  // Start: env = our environment without go-plugin variables, plus `env` (KEY -> VALUE).
  static std::unique_ptr<PluginProcess> Start(const std::string& binary,
                                              const std::vector<std::string>& args,
                                              const std::map<std::string, std::string>& env) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      return nullptr;
    }
    std::vector<std::string> envs;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string kv = *e;
      std::string key = kv.substr(0, kv.find('='));
      if (key == "NodeAttestor" || absl::StartsWith(key, "PLUGIN_") ||
          absl::StartsWith(key, "HWID_TEST_PLUGIN_") || env.count(key)) {
        continue;
      }
      envs.push_back(kv);
    }
    for (const auto& [k, v] : env) {
      envs.push_back(k + "=" + v);
    }
    std::vector<char*> envp;
    for (std::string& s : envs) {
      envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::vector<std::string> argv_s = {binary};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& s : argv_s) {
      argv.push_back(s.data());
    }
    argv.push_back(nullptr);

    pid_t pid = fork();
    if (pid < 0) {
      return nullptr;
    }
    if (pid == 0) {
      dup2(out[1], 1);
      dup2(err[1], 2);
      close(out[0]);
      close(err[0]);
      close(out[1]);
      close(err[1]);
      execve(binary.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    return std::unique_ptr<PluginProcess>(new PluginProcess(pid, out[0], err[0]));
  }

  ~PluginProcess() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
    if (stderr_thread_.joinable()) {
      stderr_thread_.join();
    }
    close(stdout_fd_);
  }

  pid_t pid() const { return pid_; }

  // ReadLine: the first stdout line (without '\n'), or nullopt on EOF/timeout.
  std::optional<std::string> ReadStdoutLine(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      size_t nl = stdout_buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = stdout_buf_.substr(0, nl);
        stdout_buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return std::nullopt;
      }
      pollfd p{stdout_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        continue;
      }
      char buf[512];
      ssize_t n = read(stdout_fd_, buf, sizeof(buf));
      if (n <= 0) {
        return std::nullopt;
      }
      stdout_buf_.append(buf, static_cast<size_t>(n));
    }
  }

  // RemainingStdout: what is left in the stdout pipe after exit.
  std::string RemainingStdout() {
    std::string s = stdout_buf_;
    char buf[512];
    ssize_t n;
    while ((n = read(stdout_fd_, buf, sizeof(buf))) > 0) {
      s.append(buf, static_cast<size_t>(n));
    }
    return s;
  }

  // WaitExit: the wait status if the process ended within `timeout`.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int st = 0;
      pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        if (stderr_thread_.joinable()) {
          stderr_thread_.join();
        }
        return st;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  std::string Stderr() {
    std::lock_guard<std::mutex> lock(mu_);
    return stderr_;
  }

  std::vector<std::string> StderrLines() {
    return absl::StrSplit(Stderr(), '\n', absl::SkipEmpty());
  }

 private:
  PluginProcess(pid_t pid, int out, int err) : pid_(pid), stdout_fd_(out) {
    stderr_thread_ = std::thread([this, err] {
      char buf[4096];
      ssize_t n;
      while ((n = read(err, buf, sizeof(buf))) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        stderr_.append(buf, static_cast<size_t>(n));
      }
      close(err);
    });
  }

  const pid_t pid_;
  const int stdout_fd_;
  bool exited_ = false;
  std::string stdout_buf_;
  std::mutex mu_;
  std::string stderr_;
  std::thread stderr_thread_;
};

}  // namespace hwid::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_PROCESS_H_
