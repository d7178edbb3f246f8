#include "attestor_plugin/pluginmain/log.h"

#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace hwid::pluginmain {
namespace {

// Utf8Length: length of the valid UTF-8 sequence starting at s[i], or 0 if invalid.
size_t Utf8Length(absl::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) {
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) {
      return 0;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;  // overlong, out of range or a surrogate
  }
  return n;
}

void AppendJsonString(absl::string_view s, std::string* out) {
  bool truncated = false;
  if (s.size() > kMaxLogValueBytes) {
    s = s.substr(0, kMaxLogValueBytes);
    truncated = true;
  }
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t n = Utf8Length(s, i);
      if (n == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20 || c == 0x7F) {
          absl::StrAppend(out, "\\u", absl::Hex(c, absl::kZeroPad4));
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  if (truncated) {
    out->append("...(truncated)");
  }
  out->push_back('"');
}

void AppendMember(absl::string_view key, absl::string_view value, std::string* out) {
  out->push_back(',');
  AppendJsonString(key, out);
  out->push_back(':');
  AppendJsonString(value, out);
}

}  // namespace

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return "trace";
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "error";
}

std::string FormatHclogLine(LogLevel level, absl::Time time, absl::string_view module,
                            absl::string_view message, std::initializer_list<LogField> fields) {
  std::string line = "{\"@level\":";
  AppendJsonString(LogLevelName(level), &line);
  AppendMember("@message", message, &line);
  if (!module.empty()) {
    AppendMember("@module", module, &line);
  }
  AppendMember("@timestamp",
               absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", time, absl::UTCTimeZone()), &line);
  for (const LogField& f : fields) {
    if (!f.first.empty() && f.first[0] == '@') {
      AppendMember(absl::StrCat("_", f.first), f.second, &line);
    } else {
      AppendMember(f.first, f.second, &line);
    }
  }
  line.append("}\n");
  return line;
}

void Logger::Log(LogLevel level, absl::string_view message,
                 std::initializer_list<LogField> fields) {
  if (level < min_level_.load()) {
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::string line = FormatHclogLine(level, absl::Now(), module_, message, fields);
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return;  // the host went away (EPIPE with SIGPIPE ignored): nothing useful to do
    }
    off += static_cast<size_t>(n);
  }
}

Logger& PluginLogger() {
  static Logger* logger = new Logger("hwid");
  return *logger;
}

}  // namespace hwid::pluginmain
