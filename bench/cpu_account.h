// CpuAccount: where the wall time of a benchmark loop went, on a machine where the benchmark and
// swtpm share the cores: CPU time of this process (getrusage) and of another process (swtpm:
// utime+stime from /proc/PID/stat, and from /proc/PID/schedstat the nanoseconds its main thread
// ran and waited runnable for a CPU). Benchmark-only code; Linux only.
#ifndef HWID_BENCH_CPU_ACCOUNT_H_
#define HWID_BENCH_CPU_ACCOUNT_H_

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace hwid::bench {

struct CpuSnapshot {
  std::chrono::steady_clock::time_point wall;
  double self_s = 0;        // this process, user + system
  double self_sys_s = 0;    // this process, system (kernel) only
  double other_s = 0;       // the other process, user + system (clock ticks)
  double other_run_s = 0;   // its main thread on a CPU (schedstat, ns resolution)
  double other_wait_s = 0;  // its main thread runnable but waiting for a CPU
};

// CpuUsage is the difference of two snapshots, per operation, in microseconds.
struct CpuUsage {
  double wall_us = 0;
  double self_us = 0;
  double self_sys_us = 0;
  double other_us = 0;
  double other_run_us = 0;
  double other_wait_us = 0;
};

class CpuAccount {
 public:
  // `other_pid` 0: only this process is accounted.
  explicit CpuAccount(long other_pid) : other_pid_(other_pid) {}

  CpuSnapshot Take() const {
    CpuSnapshot s;
    s.wall = std::chrono::steady_clock::now();
    rusage ru = {};
    getrusage(RUSAGE_SELF, &ru);
    s.self_sys_s = static_cast<double>(ru.ru_stime.tv_sec) +
                   static_cast<double>(ru.ru_stime.tv_usec) / 1e6;
    s.self_s = static_cast<double>(ru.ru_utime.tv_sec) +
               static_cast<double>(ru.ru_utime.tv_usec) / 1e6 + s.self_sys_s;
    if (other_pid_ > 0) {
      std::ifstream stat("/proc/" + std::to_string(other_pid_) + "/stat");
      std::string line;
      std::getline(stat, line);
      // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
      const size_t close = line.rfind(')');
      if (close != std::string::npos) {
        std::istringstream rest(line.substr(close + 2));
        std::string f;
        unsigned long long utime = 0, stime = 0;
        for (int field = 3; field <= 15 && (rest >> f); ++field) {
          if (field == 14) {
            utime = std::stoull(f);
          } else if (field == 15) {
            stime = std::stoull(f);
          }
        }
        s.other_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
      }
      std::ifstream sched("/proc/" + std::to_string(other_pid_) + "/schedstat");
      unsigned long long run_ns = 0, wait_ns = 0;
      if (sched >> run_ns >> wait_ns) {
        s.other_run_s = static_cast<double>(run_ns) / 1e9;
        s.other_wait_s = static_cast<double>(wait_ns) / 1e9;
      }
    }
    return s;
  }

  static CpuUsage PerOp(const CpuSnapshot& a, const CpuSnapshot& b, double ops) {
    CpuUsage u;
    if (ops <= 0) {
      return u;
    }
    u.wall_us = std::chrono::duration<double>(b.wall - a.wall).count() * 1e6 / ops;
    u.self_us = (b.self_s - a.self_s) * 1e6 / ops;
    u.self_sys_us = (b.self_sys_s - a.self_sys_s) * 1e6 / ops;
    u.other_us = (b.other_s - a.other_s) * 1e6 / ops;
    u.other_run_us = (b.other_run_s - a.other_run_s) * 1e6 / ops;
    u.other_wait_us = (b.other_wait_s - a.other_wait_s) * 1e6 / ops;
    return u;
  }

  long other_pid() const { return other_pid_; }

 private:
  long other_pid_;
};

}  // namespace hwid::bench

#endif  // HWID_BENCH_CPU_ACCOUNT_H_
