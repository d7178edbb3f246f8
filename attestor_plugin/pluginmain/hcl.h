// A small, strict parser for the HCL v1 subset that SPIRE hands plugins as `plugin_data`,
// and a decoder that maps it onto a plugin's configuration with errors naming the key.
//
// Accepted (HCL v1 syntax, as SPIRE's printer emits it or an operator writes it):
//   key = "string"            escapes \" \\ \n \r \t \uXXXX \UXXXXXXXX; heredocs <<EOF / <<-EOF
//   key = 42 | -1.5e3         decimal numbers only (no hex/octal; "017" is rejected)
//   key = true | false
//   key = ["a", "b",]         lists (trailing comma allowed)
//   key { k = "v" }           nested blocks; also key = { ... }; quoted keys ("sha256:7" = "..")
//   # comment, // comment, /* comment */
// Rejected with a message naming line and key: duplicate keys, block labels (key "label" {}),
// a bare string as the whole document (plugin_data = "..." instead of a block), anything else.
#ifndef HWID_ATTESTOR_PLUGIN_PLUGINMAIN_HCL_H_
#define HWID_ATTESTOR_PLUGIN_PLUGINMAIN_HCL_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace hwid::pluginmain {

struct HclItem;

// HclValue: one parsed value. `text` holds a string's decoded contents or a number's literal.
struct HclValue {
  enum class Kind { kString, kNumber, kBool, kList, kObject };
  Kind kind = Kind::kString;
  int line = 0;
  std::string text;
  bool boolean = false;
  std::vector<HclValue> list;
  std::vector<HclItem> object;
};

// HclItem: `key = value` (or `key { ... }`) at `line` (1-based).
struct HclItem {
  std::string key;
  int line = 0;
  HclValue value;
};

using HclObject = std::vector<HclItem>;

// Limits that keep hostile input bounded.
inline constexpr size_t kMaxHclBytes = 1 << 20;
inline constexpr int kMaxHclDepth = 16;

// HclKindName returns "a string", "a number", "a bool", "a list" or "a block".
const char* HclKindName(HclValue::Kind kind);

// ParseHcl parses `text` (the whole plugin_data) into its top-level items. Whitespace or
// comments only give an empty object. Fails with INVALID_ARGUMENT naming line and column.
absl::StatusOr<HclObject> ParseHcl(absl::string_view text);

// HclDecoder maps the items of one HCL object onto typed fields. Each Optional/Required call
// consumes one key; the first error is kept. Finish() returns that error, or an error naming
// the first key no call consumed (unknown key). Messages look like
//   plugin_data: key "pcrs" (line 2): expected a string, got a list
class HclDecoder {
 public:
  // HclDecoder: `object` must outlive the decoder; `path` prefixes nested keys ("a.b").
  explicit HclDecoder(const HclObject& object, std::string path = "");

  void Optional(absl::string_view key, std::string* out);
  void Optional(absl::string_view key, bool* out);
  void Optional(absl::string_view key, int64_t* out,
                int64_t min = std::numeric_limits<int64_t>::min(),
                int64_t max = std::numeric_limits<int64_t>::max());
  void Optional(absl::string_view key, double* out);
  void Optional(absl::string_view key, std::vector<std::string>* out);
  // A block whose keys are free-form and whose values are strings, e.g.
  // pcr_policy { "sha256:7" = "ab12.." }. Keys keep their order of appearance in the map's
  // ordering; duplicates were already rejected by the parser.
  void Optional(absl::string_view key, std::map<std::string, std::string>* out);

  // Required: as Optional, but a missing key is an error.
  template <typename T>
  void Required(absl::string_view key, T* out) {
    if (Find(key) == nullptr) {
      SetError(absl::StrCat("missing required key \"", Path(key), "\""));
      return;
    }
    Optional(key, out);
  }

  // Block: when `key` is present it must be a block; `fn` decodes it with a child decoder
  // whose Finish() is checked afterwards. Returns whether the key was present.
  bool Block(absl::string_view key, const std::function<void(HclDecoder&)>& fn);

  // Has: whether `key` is present (does not consume it).
  bool Has(absl::string_view key) const { return Find(key) != nullptr; }

  // Finish: the first error, or INVALID_ARGUMENT for the first unconsumed (unknown) key.
  absl::Status Finish();

 private:
  const HclItem* Take(absl::string_view key, HclValue::Kind want);
  const HclItem* Find(absl::string_view key) const;
  std::string Path(absl::string_view key) const;
  void SetError(std::string message);
  void KeyError(const HclItem& item, absl::string_view what);

  const HclObject& object_;
  std::string path_;
  std::set<std::string, std::less<>> consumed_;
  std::vector<std::string> known_;
  absl::Status error_;
};

}  // namespace hwid::pluginmain

#endif  // HWID_ATTESTOR_PLUGIN_PLUGINMAIN_HCL_H_
