// ParseHclogLine: a strict checker for one hclog JSON line as go-plugin's host parses it
// (a flat JSON object; @level one of trace|debug|info|warn|error; @message a string;
// @timestamp with exactly six fractional digits). Test-only; values must be strings because
// that is all our logger emits.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_HCLOG_CHECK_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_HCLOG_CHECK_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace hwid::testing {

inline absl::StatusOr<std::map<std::string, std::string>> ParseHclogLine(const std::string& line) {
  size_t i = 0;
  auto err = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("at byte ", i, ": ", what, " in: ", line));
  };
  auto ws = [&] {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
      ++i;
    }
  };
  auto str = [&](std::string* out) -> bool {
    if (i >= line.size() || line[i] != '"') {
      return false;
    }
    ++i;
    while (i < line.size()) {
      unsigned char c = static_cast<unsigned char>(line[i]);
      if (c == '"') {
        ++i;
        return true;
      }
      if (c < 0x20) {
        return false;
      }
      if (c == '\\') {
        if (++i >= line.size()) {
          return false;
        }
        char e = line[i++];
        switch (e) {
          case '"': out->push_back('"'); break;
          case '\\': out->push_back('\\'); break;
          case '/': out->push_back('/'); break;
          case 'b': out->push_back('\b'); break;
          case 'f': out->push_back('\f'); break;
          case 'n': out->push_back('\n'); break;
          case 'r': out->push_back('\r'); break;
          case 't': out->push_back('\t'); break;
          case 'u': {
            if (i + 4 > line.size()) {
              return false;
            }
            for (int k = 0; k < 4; ++k) {
              if (!isxdigit(static_cast<unsigned char>(line[i + k]))) {
                return false;
              }
            }
            unsigned cp = std::stoul(line.substr(i, 4), nullptr, 16);
            i += 4;
            out->append(cp < 0x80 ? std::string(1, static_cast<char>(cp)) : "<U>");
            break;
          }
          default:
            return false;
        }
        continue;
      }
      if (c >= 0x80) {  // validate UTF-8
        int n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (n == 0 || i + n > line.size()) {
          return false;
        }
        for (int k = 1; k < n; ++k) {
          if ((static_cast<unsigned char>(line[i + k]) & 0xC0) != 0x80) {
            return false;
          }
        }
        out->append(line, i, n);
        i += n;
        continue;
      }
      out->push_back(static_cast<char>(c));
      ++i;
    }
    return false;
  };

  std::map<std::string, std::string> obj;
  ws();
  if (i >= line.size() || line[i] != '{') {
    return err("expected '{'");
  }
  ++i;
  ws();
  bool first = true;
  while (true) {
    ws();
    if (i < line.size() && line[i] == '}' && first) {
      ++i;
      break;
    }
    std::string key, value;
    if (!str(&key)) {
      return err("bad key");
    }
    ws();
    if (i >= line.size() || line[i] != ':') {
      return err("expected ':'");
    }
    ++i;
    ws();
    if (!str(&value)) {
      return err(absl::StrCat("value of ", key, " is not a valid JSON string"));
    }
    if (!obj.emplace(key, value).second) {
      return err(absl::StrCat("duplicate key ", key));
    }
    first = false;
    ws();
    if (i < line.size() && line[i] == ',') {
      ++i;
      continue;
    }
    if (i < line.size() && line[i] == '}') {
      ++i;
      break;
    }
    return err("expected ',' or '}'");
  }
  ws();
  if (i != line.size()) {
    return err("trailing bytes");
  }
  auto timestamp_ok = [](const std::string& t) {
    // 2006-01-02T15:04:05.000000 then Z or +hh:mm / -hh:mm
    const std::string shape = "dddd-dd-ddTdd:dd:dd.dddddd";
    if (t.size() < shape.size() + 1) {
      return false;
    }
    for (size_t k = 0; k < shape.size(); ++k) {
      bool digit = t[k] >= '0' && t[k] <= '9';
      if (shape[k] == 'd' ? !digit : t[k] != shape[k]) {
        return false;
      }
    }
    std::string zone = t.substr(shape.size());
    if (zone == "Z") {
      return true;
    }
    return zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && isdigit(zone[1]) &&
           isdigit(zone[2]) && zone[3] == ':' && isdigit(zone[4]) && isdigit(zone[5]);
  };
  const std::string level = obj.count("@level") ? obj["@level"] : "";
  if (level != "trace" && level != "debug" && level != "info" && level != "warn" &&
      level != "error") {
    return err("missing or unknown @level");
  }
  if (!obj.count("@message")) {
    return err("missing @message");
  }
  if (obj.count("@timestamp") && !timestamp_ok(obj["@timestamp"])) {
    return err("@timestamp does not match 2006-01-02T15:04:05.000000Z07:00");
  }
  return obj;
}

}  // namespace hwid::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_HCLOG_CHECK_H_
