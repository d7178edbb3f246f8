#include "attestor_plugin/pluginmain/hcl.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace hwid::pluginmain {
namespace {

#define RETURN_IF_ERROR_LOCAL(expr)   \
  do {                                \
    absl::Status hcl_status_ = (expr); \
    if (!hcl_status_.ok()) {          \
      return hcl_status_;             \
    }                                 \
  } while (false)

enum class Tok { kEof, kIdent, kString, kNumber, kTrue, kFalse, kEq, kComma, kLBrace, kRBrace,
                 kLBracket, kRBracket };

struct Token {
  Tok type = Tok::kEof;
  std::string text;  // decoded string contents, identifier or number literal
  int line = 1;
  int col = 1;
};

const char* TokName(Tok t) {
  switch (t) {
    case Tok::kEof: return "end of input";
    case Tok::kIdent: return "a key";
    case Tok::kString: return "a string";
    case Tok::kNumber: return "a number";
    case Tok::kTrue:
    case Tok::kFalse: return "a bool";
    case Tok::kEq: return "\"=\"";
    case Tok::kComma: return "\",\"";
    case Tok::kLBrace: return "\"{\"";
    case Tok::kRBrace: return "\"}\"";
    case Tok::kLBracket: return "\"[\"";
    case Tok::kRBracket: return "\"]\"";
  }
  return "?";
}

bool IsIdentStart(char c) { return absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsIdentChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

class Lexer {
 public:
  explicit Lexer(absl::string_view in) : in_(in) {}

  absl::StatusOr<Token> Next() {
    RETURN_IF_ERROR_LOCAL(SkipSpaceAndComments());
    Token t;
    t.line = line_;
    t.col = col_;
    if (pos_ >= in_.size()) {
      t.type = Tok::kEof;
      return t;
    }
    char c = in_[pos_];
    switch (c) {
      case '=': Advance(); t.type = Tok::kEq; return t;
      case ',': Advance(); t.type = Tok::kComma; return t;
      case '{': Advance(); t.type = Tok::kLBrace; return t;
      case '}': Advance(); t.type = Tok::kRBrace; return t;
      case '[': Advance(); t.type = Tok::kLBracket; return t;
      case ']': Advance(); t.type = Tok::kRBracket; return t;
      case '"': {
        t.type = Tok::kString;
        absl::Status s = String(&t.text);
        if (!s.ok()) {
          return s;
        }
        return t;
      }
      case '<': {
        t.type = Tok::kString;
        absl::Status s = Heredoc(&t.text);
        if (!s.ok()) {
          return s;
        }
        return t;
      }
      default:
        break;
    }
    if (c == '-' || absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      t.type = Tok::kNumber;
      absl::Status s = Number(&t.text);
      if (!s.ok()) {
        return s;
      }
      return t;
    }
    if (IsIdentStart(c)) {
      size_t start = pos_;
      while (pos_ < in_.size() && IsIdentChar(in_[pos_])) {
        Advance();
      }
      t.text = std::string(in_.substr(start, pos_ - start));
      t.type = t.text == "true" ? Tok::kTrue : t.text == "false" ? Tok::kFalse : Tok::kIdent;
      return t;
    }
    return Error(absl::StrCat("unexpected character ", Printable(c)));
  }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("plugin_data line ", line_, ", column ", col_, ": ", what));
  }

 private:

  static std::string Printable(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x21 && u < 0x7F) {
      return absl::StrCat("'", std::string(1, c), "'");
    }
    return absl::StrCat("0x", absl::Hex(u, absl::kZeroPad2));
  }

  void Advance() {
    if (in_[pos_] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    ++pos_;
  }

  absl::Status SkipSpaceAndComments() {
    while (pos_ < in_.size()) {
      char c = in_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        Advance();
      } else if (c == '#' || (c == '/' && pos_ + 1 < in_.size() && in_[pos_ + 1] == '/')) {
        while (pos_ < in_.size() && in_[pos_] != '\n') {
          Advance();
        }
      } else if (c == '/' && pos_ + 1 < in_.size() && in_[pos_ + 1] == '*') {
        Advance();
        Advance();
        bool closed = false;
        while (pos_ < in_.size()) {
          if (in_[pos_] == '*' && pos_ + 1 < in_.size() && in_[pos_ + 1] == '/') {
            Advance();
            Advance();
            closed = true;
            break;
          }
          Advance();
        }
        if (!closed) {
          return Error("unterminated /* comment");
        }
      } else {
        break;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Hex(int digits, uint32_t* out) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (pos_ >= in_.size()) {
        return Error("truncated \\u escape");
      }
      char c = in_[pos_];
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return Error("bad hex digit in \\u escape");
      }
      v = v * 16 + static_cast<uint32_t>(d);
      Advance();
    }
    *out = v;
    return absl::OkStatus();
  }

  absl::Status String(std::string* out) {
    Advance();  // opening quote
    while (true) {
      if (pos_ >= in_.size()) {
        return Error("unterminated string");
      }
      char c = in_[pos_];
      if (c == '"') {
        Advance();
        return absl::OkStatus();
      }
      if (c == '\n') {
        return Error("newline inside a string (use \\n or a heredoc)");
      }
      if (c != '\\') {
        out->push_back(c);
        Advance();
        continue;
      }
      Advance();
      if (pos_ >= in_.size()) {
        return Error("unterminated string");
      }
      char e = in_[pos_];
      Advance();
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u':
        case 'U': {
          uint32_t cp = 0;
          RETURN_IF_ERROR_LOCAL(Hex(e == 'u' ? 4 : 8, &cp));
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return Error("\\u escape is not a valid Unicode scalar value");
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          return Error(absl::StrCat("unknown escape \\", Printable(e)));
      }
    }
  }

  // Heredoc: <<ID\n...\nID or <<-ID (indented closing marker; leading whitespace kept).
  absl::Status Heredoc(std::string* out) {
    if (in_.substr(pos_, 2) != "<<") {
      return Error("unexpected character '<'");
    }
    Advance();
    Advance();
    bool indented = false;
    if (pos_ < in_.size() && in_[pos_] == '-') {
      indented = true;
      Advance();
    }
    size_t start = pos_;
    while (pos_ < in_.size() && IsIdentChar(in_[pos_])) {
      Advance();
    }
    std::string marker(in_.substr(start, pos_ - start));
    if (marker.empty() || !IsIdentStart(marker[0])) {
      return Error("heredoc needs an identifier after <<");
    }
    if (pos_ < in_.size() && in_[pos_] == '\r') {
      Advance();
    }
    if (pos_ >= in_.size() || in_[pos_] != '\n') {
      return Error("heredoc marker must end its line");
    }
    Advance();
    std::vector<std::string> lines;
    while (pos_ < in_.size()) {
      size_t eol = in_.find('\n', pos_);
      absl::string_view line =
          in_.substr(pos_, eol == absl::string_view::npos ? absl::string_view::npos : eol - pos_);
      absl::string_view trimmed = absl::StripSuffix(line, "\r");
      absl::string_view stripped = absl::StripLeadingAsciiWhitespace(trimmed);
      if ((indented ? stripped : trimmed) == marker) {
        for (size_t i = 0; i < line.size(); ++i) {
          Advance();
        }
        // Like HCL v1: every line keeps its newline; <<- removes the closing marker's
        // indentation from each line when all lines carry it.
        absl::string_view indent = trimmed.substr(0, trimmed.size() - stripped.size());
        bool strip = indented && !indent.empty();
        for (const std::string& l : lines) {
          strip = strip && absl::StartsWith(l, indent);
        }
        for (const std::string& l : lines) {
          out->append(strip ? l.substr(indent.size()) : l);
          out->push_back('\n');
        }
        return absl::OkStatus();
      }
      lines.emplace_back(line);
      for (size_t i = 0; i < line.size(); ++i) {
        Advance();
      }
      if (pos_ < in_.size()) {
        Advance();
      }
    }
    return Error(absl::StrCat("unterminated heredoc (missing closing ", marker, ")"));
  }

  absl::Status Number(std::string* out) {
    size_t start = pos_;
    if (in_[pos_] == '-') {
      Advance();
    }
    size_t int_start = pos_;
    while (pos_ < in_.size() && absl::ascii_isdigit(static_cast<unsigned char>(in_[pos_]))) {
      Advance();
    }
    size_t int_len = pos_ - int_start;
    if (int_len == 0) {
      return Error("'-' must be followed by digits");
    }
    if (int_len > 1 && in_[int_start] == '0') {
      return Error("numbers with a leading zero (octal) are not accepted");
    }
    if (pos_ < in_.size() && (in_[pos_] == 'x' || in_[pos_] == 'X')) {
      return Error("hexadecimal numbers are not accepted; use decimal");
    }
    if (pos_ < in_.size() && in_[pos_] == '.') {
      Advance();
      size_t frac = pos_;
      while (pos_ < in_.size() && absl::ascii_isdigit(static_cast<unsigned char>(in_[pos_]))) {
        Advance();
      }
      if (pos_ == frac) {
        return Error("digits expected after '.'");
      }
    }
    if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
      Advance();
      if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-')) {
        Advance();
      }
      size_t exp = pos_;
      while (pos_ < in_.size() && absl::ascii_isdigit(static_cast<unsigned char>(in_[pos_]))) {
        Advance();
      }
      if (pos_ == exp) {
        return Error("digits expected in exponent");
      }
    }
    if (pos_ < in_.size() && IsIdentChar(in_[pos_])) {
      return Error("malformed number");
    }
    *out = std::string(in_.substr(start, pos_ - start));
    return absl::OkStatus();
  }
#undef RETURN_IF_ERROR_LOCAL

  absl::string_view in_;
  size_t pos_ = 0;
  int line_ = 1;
  int col_ = 1;
};

class Parser {
 public:
  explicit Parser(absl::string_view in) : lex_(in) {}

  absl::StatusOr<HclObject> Document() {
    absl::Status s = Advance();
    if (!s.ok()) {
      return s;
    }
    if (tok_.type == Tok::kString) {
      // plugin_data = "..." reaches the plugin as a quoted string token.
      Token first = tok_;
      s = Advance();
      if (!s.ok()) {
        return s;
      }
      if (tok_.type == Tok::kEof) {
        return absl::InvalidArgumentError(
            "plugin_data must be a block of settings (plugin_data { key = value }), not a "
            "string");
      }
      // Not alone: it is a quoted key; rewind by handling it as the first item.
      HclObject out;
      s = ItemsAfterKey(first, &out, /*depth=*/0, Tok::kEof);
      if (!s.ok()) {
        return s;
      }
      s = Items(&out, 0, Tok::kEof);
      if (!s.ok()) {
        return s;
      }
      return out;
    }
    HclObject out;
    s = Items(&out, 0, Tok::kEof);
    if (!s.ok()) {
      return s;
    }
    return out;
  }

 private:
  absl::Status Advance() {
    auto t = lex_.Next();
    if (!t.ok()) {
      return t.status();
    }
    tok_ = *std::move(t);
    return absl::OkStatus();
  }

  absl::Status ErrorAt(const Token& t, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("plugin_data line ", t.line, ", column ", t.col, ": ", what));
  }

  // CheckDuplicates: rejects a key set twice in one object (O(n log n)).
  static absl::Status CheckDuplicates(const HclObject& items) {
    std::vector<std::pair<absl::string_view, int>> keys;
    keys.reserve(items.size());
    for (const HclItem& item : items) {
      keys.emplace_back(item.key, item.line);
    }
    std::sort(keys.begin(), keys.end());
    for (size_t i = 1; i < keys.size(); ++i) {
      if (keys[i].first == keys[i - 1].first) {
        return absl::InvalidArgumentError(
            absl::StrCat("plugin_data line ", keys[i].second, ": duplicate key \"", keys[i].first,
                         "\" (first set on line ", keys[i - 1].second, ")"));
      }
    }
    return absl::OkStatus();
  }

  // Items: item* up to (and consuming) `end` (kRBrace or kEof).
  absl::Status Items(HclObject* out, int depth, Tok end) {
    while (true) {
      if (tok_.type == end) {
        absl::Status dup = CheckDuplicates(*out);
        if (!dup.ok()) {
          return dup;
        }
        if (end != Tok::kEof) {
          return Advance();
        }
        return absl::OkStatus();
      }
      if (tok_.type == Tok::kEof && end == Tok::kRBrace) {
        return ErrorAt(tok_, "unclosed block: missing \"}\"");
      }
      if (tok_.type != Tok::kIdent && tok_.type != Tok::kString) {
        return ErrorAt(tok_, absl::StrCat("expected a key, got ", TokName(tok_.type)));
      }
      Token key = tok_;
      absl::Status s = Advance();
      if (!s.ok()) {
        return s;
      }
      s = ItemsAfterKey(key, out, depth, end);
      if (!s.ok()) {
        return s;
      }
    }
  }

  // ItemsAfterKey: finishes the item whose key was just read (tok_ follows the key).
  absl::Status ItemsAfterKey(const Token& key, HclObject* out, int depth, Tok end) {
    if (key.text.empty()) {
      return ErrorAt(key, "empty key");
    }
    HclItem item;
    item.key = key.text;
    item.line = key.line;
    absl::Status s;
    if (tok_.type == Tok::kEq) {
      s = Advance();
      if (!s.ok()) {
        return s;
      }
      s = Value(&item.value, depth);
    } else if (tok_.type == Tok::kLBrace) {
      s = Value(&item.value, depth);
    } else if (tok_.type == Tok::kString || tok_.type == Tok::kIdent) {
      return ErrorAt(tok_, absl::StrCat("key \"", key.text,
                                        "\": block labels (key \"label\" { ... }) are not "
                                        "supported"));
    } else {
      return ErrorAt(tok_, absl::StrCat("key \"", key.text, "\": expected \"=\" or \"{\", got ",
                                        TokName(tok_.type)));
    }
    if (!s.ok()) {
      return s;
    }
    out->push_back(std::move(item));
    if (tok_.type == Tok::kComma) {
      return Advance();
    }
    if (tok_.type == Tok::kEof && end == Tok::kRBrace) {
      return ErrorAt(tok_, "unclosed block: missing \"}\"");
    }
    if (tok_.type != end && tok_.type != Tok::kIdent && tok_.type != Tok::kString) {
      return ErrorAt(tok_, absl::StrCat("after key \"", key.text, "\": expected a new line, got ",
                                        TokName(tok_.type)));
    }
    // Two items on one line without a comma are a mistake in HCL v1 too.
    if (tok_.type != end && tok_.line == key.line && tok_.type != Tok::kEof) {
      const HclItem& last = out->back();
      if (last.value.kind != HclValue::Kind::kObject && last.value.kind != HclValue::Kind::kList) {
        return ErrorAt(tok_, absl::StrCat("after key \"", key.text,
                                          "\": expected a new line or \",\""));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Value(HclValue* v, int depth) {
    if (depth >= kMaxHclDepth) {
      return ErrorAt(tok_, absl::StrCat("nesting deeper than ", kMaxHclDepth, " levels"));
    }
    v->line = tok_.line;
    switch (tok_.type) {
      case Tok::kString:
        v->kind = HclValue::Kind::kString;
        v->text = std::move(tok_.text);
        return Advance();
      case Tok::kNumber:
        v->kind = HclValue::Kind::kNumber;
        v->text = std::move(tok_.text);
        return Advance();
      case Tok::kTrue:
      case Tok::kFalse:
        v->kind = HclValue::Kind::kBool;
        v->boolean = tok_.type == Tok::kTrue;
        return Advance();
      case Tok::kLBrace: {
        v->kind = HclValue::Kind::kObject;
        absl::Status s = Advance();
        if (!s.ok()) {
          return s;
        }
        return Items(&v->object, depth + 1, Tok::kRBrace);
      }
      case Tok::kLBracket: {
        v->kind = HclValue::Kind::kList;
        absl::Status s = Advance();
        if (!s.ok()) {
          return s;
        }
        while (tok_.type != Tok::kRBracket) {
          HclValue elem;
          s = Value(&elem, depth + 1);
          if (!s.ok()) {
            return s;
          }
          v->list.push_back(std::move(elem));
          if (tok_.type == Tok::kComma) {
            s = Advance();
            if (!s.ok()) {
              return s;
            }
          } else if (tok_.type != Tok::kRBracket) {
            return ErrorAt(tok_, absl::StrCat("in list: expected \",\" or \"]\", got ",
                                              TokName(tok_.type)));
          }
        }
        return Advance();
      }
      case Tok::kIdent:
        return ErrorAt(tok_, absl::StrCat("unquoted value '", tok_.text,
                                          "' (strings must be in double quotes)"));
      default:
        return ErrorAt(tok_, absl::StrCat("expected a value, got ", TokName(tok_.type)));
    }
  }

  Lexer lex_;
  Token tok_;
};

}  // namespace

const char* HclKindName(HclValue::Kind kind) {
  switch (kind) {
    case HclValue::Kind::kString: return "a string";
    case HclValue::Kind::kNumber: return "a number";
    case HclValue::Kind::kBool: return "a bool";
    case HclValue::Kind::kList: return "a list";
    case HclValue::Kind::kObject: return "a block";
  }
  return "?";
}

absl::StatusOr<HclObject> ParseHcl(absl::string_view text) {
  if (text.size() > kMaxHclBytes) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data is ", text.size(),
                                                   " bytes; the limit is ", kMaxHclBytes));
  }
  Parser p(text);
  return p.Document();
}

HclDecoder::HclDecoder(const HclObject& object, std::string path)
    : object_(object), path_(std::move(path)) {}

std::string HclDecoder::Path(absl::string_view key) const {
  return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
}

void HclDecoder::SetError(std::string message) {
  if (error_.ok()) {
    error_ = absl::InvalidArgumentError(absl::StrCat("plugin_data: ", message));
  }
}

void HclDecoder::KeyError(const HclItem& item, absl::string_view what) {
  SetError(absl::StrCat("key \"", Path(item.key), "\" (line ", item.line, "): ", what));
}

const HclItem* HclDecoder::Find(absl::string_view key) const {
  for (const HclItem& item : object_) {
    if (item.key == key) {
      return &item;
    }
  }
  return nullptr;
}

const HclItem* HclDecoder::Take(absl::string_view key, HclValue::Kind want) {
  known_.emplace_back(key);
  const HclItem* item = Find(key);
  if (item == nullptr) {
    return nullptr;
  }
  consumed_.emplace(key);
  if (item->value.kind != want) {
    KeyError(*item, absl::StrCat("expected ", HclKindName(want), ", got ",
                                 HclKindName(item->value.kind)));
    return nullptr;
  }
  return item;
}

void HclDecoder::Optional(absl::string_view key, std::string* out) {
  if (const HclItem* item = Take(key, HclValue::Kind::kString)) {
    *out = item->value.text;
  }
}

void HclDecoder::Optional(absl::string_view key, bool* out) {
  if (const HclItem* item = Take(key, HclValue::Kind::kBool)) {
    *out = item->value.boolean;
  }
}

void HclDecoder::Optional(absl::string_view key, int64_t* out, int64_t min, int64_t max) {
  const HclItem* item = Take(key, HclValue::Kind::kNumber);
  if (item == nullptr) {
    return;
  }
  int64_t v = 0;
  if (!absl::SimpleAtoi(item->value.text, &v)) {
    KeyError(*item, absl::StrCat("expected an integer, got ", item->value.text));
    return;
  }
  if (v < min || v > max) {
    KeyError(*item, absl::StrCat(v, " is out of range [", min, ", ", max, "]"));
    return;
  }
  *out = v;
}

void HclDecoder::Optional(absl::string_view key, double* out) {
  const HclItem* item = Take(key, HclValue::Kind::kNumber);
  if (item == nullptr) {
    return;
  }
  double v = 0;
  if (!absl::SimpleAtod(item->value.text, &v) || !std::isfinite(v)) {
    KeyError(*item, absl::StrCat("number ", item->value.text, " is out of range"));
    return;
  }
  *out = v;
}

void HclDecoder::Optional(absl::string_view key, std::vector<std::string>* out) {
  const HclItem* item = Take(key, HclValue::Kind::kList);
  if (item == nullptr) {
    return;
  }
  std::vector<std::string> values;
  for (size_t i = 0; i < item->value.list.size(); ++i) {
    const HclValue& v = item->value.list[i];
    if (v.kind != HclValue::Kind::kString) {
      KeyError(*item, absl::StrCat("element ", i, ": expected a string, got ",
                                   HclKindName(v.kind)));
      return;
    }
    values.push_back(v.text);
  }
  *out = std::move(values);
}

void HclDecoder::Optional(absl::string_view key, std::map<std::string, std::string>* out) {
  const HclItem* item = Take(key, HclValue::Kind::kObject);
  if (item == nullptr) {
    return;
  }
  std::map<std::string, std::string> values;
  for (const HclItem& entry : item->value.object) {
    if (entry.value.kind != HclValue::Kind::kString) {
      SetError(absl::StrCat("key \"", Path(key), ".", entry.key, "\" (line ", entry.line,
                            "): expected a string, got ", HclKindName(entry.value.kind)));
      return;
    }
    values.emplace(entry.key, entry.value.text);
  }
  *out = std::move(values);
}

bool HclDecoder::Block(absl::string_view key, const std::function<void(HclDecoder&)>& fn) {
  const HclItem* item = Take(key, HclValue::Kind::kObject);
  if (item == nullptr) {
    return Find(key) != nullptr;
  }
  HclDecoder child(item->value.object, Path(key));
  fn(child);
  absl::Status s = child.Finish();
  if (!s.ok() && error_.ok()) {
    error_ = s;  // already prefixed
  }
  return true;
}

absl::Status HclDecoder::Finish() {
  if (!error_.ok()) {
    return error_;
  }
  for (const HclItem& item : object_) {
    if (consumed_.find(item.key) == consumed_.end()) {
      std::vector<std::string> known = known_;
      std::sort(known.begin(), known.end());
      known.erase(std::unique(known.begin(), known.end()), known.end());
      return absl::InvalidArgumentError(absl::StrCat(
          "plugin_data: unknown key \"", Path(item.key), "\" (line ", item.line, ")",
          known.empty() ? std::string(" (no keys are accepted here)")
                        : absl::StrCat("; accepted keys: ", absl::StrJoin(known, ", "))));
    }
  }
  return absl::OkStatus();
}

}  // namespace hwid::pluginmain
