// Logging for SPIRE plugins: one hclog JSON object per line on stderr, as go-plugin's host
// parses it and SPIRE re-logs it at the same level:
//   {"@level":"info","@message":"configured","@module":"hwid_tpm","@timestamp":"2025-01-02T03:04:05.123456Z","pcrs":"sha256:0-7"}
// @level is one of trace|debug|info|warn|error (never "warning"); @timestamp has exactly six
// fractional digits; every value is a JSON string (SPIRE's parser panics on other types in
// the @ fields). Lines are written with one write(2) each and capped well below the host's
// 64 KiB line buffer. Never log secrets, nonces or credential blobs.
#ifndef HWID_ATTESTOR_PLUGIN_PLUGINMAIN_LOG_H_
#define HWID_ATTESTOR_PLUGIN_PLUGINMAIN_LOG_H_

#include <atomic>
#include <initializer_list>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace hwid::pluginmain {

enum class LogLevel { kTrace = 0, kDebug = 1, kInfo = 2, kWarn = 3, kError = 4 };

// LogField: one extra key/value; build values with absl::StrCat.
using LogField = std::pair<absl::string_view, absl::string_view>;

// Longest message or field value kept (longer ones are cut and marked "...(truncated)").
inline constexpr size_t kMaxLogValueBytes = 8192;

// LogLevelName: "trace", "debug", "info", "warn", "error".
const char* LogLevelName(LogLevel level);

// FormatHclogLine returns one JSON line (with the trailing '\n'). Invalid UTF-8 is replaced by
// U+FFFD, control characters are escaped, keys starting with '@' in `fields` are renamed with
// a leading '_' so they cannot clash with the reserved ones. `module` is omitted when empty.
std::string FormatHclogLine(LogLevel level, absl::Time time, absl::string_view module,
                            absl::string_view message, std::initializer_list<LogField> fields);

// Logger: thread-safe; writes to a file descriptor (stderr by default).
class Logger {
 public:
  explicit Logger(std::string module = "", int fd = 2) : module_(std::move(module)), fd_(fd) {}

  void SetLevel(LogLevel level) { min_level_.store(level); }
  void SetModule(std::string module) {
    std::lock_guard<std::mutex> lock(mu_);
    module_ = std::move(module);
  }
  LogLevel level() const { return min_level_.load(); }

  void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields = {});
  void Trace(absl::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kTrace, m, f); }
  void Debug(absl::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kDebug, m, f); }
  void Info(absl::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kInfo, m, f); }
  void Warn(absl::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kWarn, m, f); }
  void Error(absl::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kError, m, f); }

 private:
  std::string module_;  // guarded by mu_
  const int fd_;
  std::atomic<LogLevel> min_level_{LogLevel::kDebug};
  std::mutex mu_;
};

// PluginLogger: the process-wide logger the runtime uses (module set by ServePlugin from
// PluginOptions::name). Plugins log through it too.
Logger& PluginLogger();

}  // namespace hwid::pluginmain

#endif  // HWID_ATTESTOR_PLUGIN_PLUGINMAIN_LOG_H_
