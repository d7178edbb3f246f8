// Table tests for the strict HCL v1 subset parser and the typed decoder (plugin_data).
#include "attestor_plugin/pluginmain/hcl.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hwid::pluginmain {
namespace {

using ::testing::HasSubstr;

// A configuration shaped like the attestor's, to decode with every decoder type.
struct Cfg {
  std::string tcti = "device:/dev/tpmrm0";
  std::string pcrs;
  int64_t rounds = 1;
  bool strict = false;
  double ratio = 0;
  std::vector<std::string> hashes;
  std::map<std::string, std::string> pcr_policy;
  std::string inner;
};

absl::Status Decode(absl::string_view text, Cfg* c) {
  auto doc = ParseHcl(text);
  if (!doc.ok()) {
    return doc.status();
  }
  HclDecoder d(*doc);
  d.Optional("tcti", &c->tcti);
  d.Optional("pcrs", &c->pcrs);
  d.Optional("rounds", &c->rounds, 1, 4);
  d.Optional("strict", &c->strict);
  d.Optional("ratio", &c->ratio);
  d.Optional("allowed_ek_hashes", &c->hashes);
  d.Optional("pcr_policy", &c->pcr_policy);
  d.Block("inner", [&](HclDecoder& in) { in.Required("name", &c->inner); });
  return d.Finish();
}

TEST(HclTest, FullConfigurationAsSpirePrintsIt) {
  Cfg c;
  ASSERT_TRUE(Decode(R"(tcti = "swtpm:host=127.0.0.1,port=2321"
pcrs = "sha256:0,1,2"
rounds = 2
strict = true
ratio = -1.5e2
allowed_ek_hashes = ["ab01", "cd02",]
"pcr_policy" = {
  "sha256:7" = "00ff"
  "sha1:0" = "11"
}
inner {
  name = "x\"y\\z\n\u00e9"
}
)", &c).ok());
  EXPECT_EQ(c.tcti, "swtpm:host=127.0.0.1,port=2321");
  EXPECT_EQ(c.pcrs, "sha256:0,1,2");
  EXPECT_EQ(c.rounds, 2);
  EXPECT_TRUE(c.strict);
  EXPECT_DOUBLE_EQ(c.ratio, -150.0);
  EXPECT_EQ(c.hashes, (std::vector<std::string>{"ab01", "cd02"}));
  EXPECT_EQ(c.pcr_policy, (std::map<std::string, std::string>{{"sha256:7", "00ff"},
                                                               {"sha1:0", "11"}}));
  EXPECT_EQ(c.inner, "x\"y\\z\n\xc3\xa9");
}

TEST(HclTest, CommentsCommasHeredocAndEmpty) {
  Cfg c;
  ASSERT_TRUE(Decode("# hash comment\n// slash comment\n/* block\n comment */\n"
                     "pcrs = \"a\", tcti = <<EOT\nline1\n  line2\nEOT\n",
                     &c).ok());
  EXPECT_EQ(c.pcrs, "a");
  EXPECT_EQ(c.tcti, "line1\n  line2\n");  // HCL v1 keeps the last newline
  Cfg d;
  ASSERT_TRUE(Decode("tcti = <<-EOT\n    indented\n      more\n    EOT\n", &d).ok());
  EXPECT_EQ(d.tcti, "indented\n  more\n");
  Cfg d2;  // a line without the marker's indentation: nothing is stripped
  ASSERT_TRUE(Decode("tcti = <<-EOT\n    a\n  b\n    EOT\n", &d2).ok());
  EXPECT_EQ(d2.tcti, "    a\n  b\n");
  Cfg e;
  EXPECT_TRUE(Decode("", &e).ok());
  EXPECT_TRUE(Decode("  \n# only a comment\n", &e).ok());
  EXPECT_EQ(e.tcti, "device:/dev/tpmrm0");  // untouched default
}

struct BadRow {
  const char* name;
  const char* text;
  const char* want;  // substring of the error message
};

class HclBadTest : public ::testing::TestWithParam<BadRow> {};

TEST_P(HclBadTest, RejectedWithMessageNamingTheProblem) {
  Cfg c;
  absl::Status s = Decode(GetParam().text, &c);
  ASSERT_FALSE(s.ok()) << GetParam().name;
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr(GetParam().want));
}

INSTANTIATE_TEST_SUITE_P(
    Rows, HclBadTest,
    ::testing::Values(
        BadRow{"unknown_key", "pcrs = \"a\"\npcr = \"b\"\n", "unknown key \"pcr\" (line 2)"},
        BadRow{"unknown_lists_accepted", "bogus = 1", "accepted keys: allowed_ek_hashes"},
        BadRow{"unknown_nested_key", "inner {\n name = \"a\"\n extra = 1\n}",
               "unknown key \"inner.extra\" (line 3)"},
        BadRow{"missing_required_nested", "inner {\n}", "missing required key \"inner.name\""},
        BadRow{"string_got_number", "tcti = 5", "key \"tcti\" (line 1): expected a string, got a number"},
        BadRow{"string_got_list", "pcrs = [\"a\"]", "key \"pcrs\" (line 1): expected a string, got a list"},
        BadRow{"bool_got_string", "strict = \"true\"", "key \"strict\" (line 1): expected a bool, got a string"},
        BadRow{"int_got_float", "rounds = 1.5", "key \"rounds\" (line 1): expected an integer"},
        BadRow{"int_out_of_range", "rounds = 9", "key \"rounds\" (line 1): 9 is out of range [1, 4]"},
        BadRow{"int_overflow", "rounds = 99999999999999999999", "expected an integer"},
        BadRow{"float_overflow", "ratio = 1e999", "key \"ratio\" (line 1): number 1e999 is out of range"},
        BadRow{"list_of_numbers", "allowed_ek_hashes = [\"a\", 2]",
               "key \"allowed_ek_hashes\" (line 1): element 1: expected a string, got a number"},
        BadRow{"list_got_string", "allowed_ek_hashes = \"ab\"", "expected a list, got a string"},
        BadRow{"map_value_not_string", "pcr_policy {\n \"sha256:7\" = 7\n}",
               "key \"pcr_policy.sha256:7\" (line 2): expected a string, got a number"},
        BadRow{"map_got_string", "pcr_policy = \"x\"", "key \"pcr_policy\" (line 1): expected a block"},
        BadRow{"block_got_list", "inner = []", "key \"inner\" (line 1): expected a block, got a list"},
        BadRow{"duplicate_key", "pcrs = \"a\"\npcrs = \"b\"", "line 2: duplicate key \"pcrs\" (first set on line 1)"},
        BadRow{"duplicate_nested", "pcr_policy {\n a = \"1\"\n a = \"2\"\n}", "duplicate key \"a\""},
        BadRow{"whole_string", "\"DATA\"", "must be a block of settings"},
        BadRow{"unterminated_string", "pcrs = \"abc", "unterminated string"},
        BadRow{"newline_in_string", "pcrs = \"a\nb\"", "newline inside a string"},
        BadRow{"bad_escape", "pcrs = \"\\q\"", "unknown escape"},
        BadRow{"bad_unicode", "pcrs = \"\\ud800\"", "not a valid Unicode scalar value"},
        BadRow{"short_unicode", "pcrs = \"\\u12\"", "bad hex digit"},
        BadRow{"unquoted_value", "pcrs = sha256", "unquoted value 'sha256'"},
        BadRow{"missing_value", "pcrs =", "expected a value, got end of input"},
        BadRow{"missing_equals", "pcrs \"a\"", "block labels"},
        BadRow{"label_block", "inner \"x\" {\n}", "block labels"},
        BadRow{"no_equals_number", "pcrs 5", "expected \"=\" or \"{\""},
        BadRow{"unclosed_block", "inner {\n name = \"a\"\n", "unclosed block: missing \"}\""},
        BadRow{"unclosed_empty_block", "inner {\n", "unclosed block"},
        BadRow{"unclosed_list", "allowed_ek_hashes = [\"a\"", "in list: expected \",\" or \"]\""},
        BadRow{"stray_brace", "}", "expected a key, got \"}\""},
        BadRow{"two_on_a_line", "pcrs = \"a\" tcti = \"b\"", "expected a new line or \",\""},
        BadRow{"octal", "rounds = 017", "leading zero"},
        BadRow{"hex", "rounds = 0x1", "hexadecimal"},
        BadRow{"lone_minus", "rounds = -", "'-' must be followed by digits"},
        BadRow{"bad_exponent", "ratio = 1e", "digits expected in exponent"},
        BadRow{"number_suffix", "rounds = 1abc", "malformed number"},
        BadRow{"unterminated_comment", "/* abc", "unterminated /* comment"},
        BadRow{"unterminated_heredoc", "tcti = <<EOT\nabc\n", "unterminated heredoc"},
        BadRow{"heredoc_no_marker", "tcti = <<\nabc\n", "heredoc needs an identifier"},
        BadRow{"bad_char", "pcrs = \"a\"\n$", "unexpected character '$'"},
        BadRow{"control_char", "pcrs = \"a\"\n\x01", "unexpected character 0x01"},
        BadRow{"empty_key", "\"\" = \"a\"", "empty key"}),
    [](const ::testing::TestParamInfo<BadRow>& row) { return std::string(row.param.name); });

TEST(HclTest, LineNumbersAndColumnsInSyntaxErrors) {
  auto doc = ParseHcl("a = \"1\"\nb = \"2\"\n  c = @");
  ASSERT_FALSE(doc.ok());
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("plugin_data line 3, column 7"));
}

TEST(HclTest, DepthAndSizeLimits) {
  std::string deep;
  for (int i = 0; i < kMaxHclDepth + 1; ++i) {
    deep += "a { ";
  }
  for (int i = 0; i < kMaxHclDepth + 1; ++i) {
    deep += "} ";
  }
  auto doc = ParseHcl(deep);
  ASSERT_FALSE(doc.ok());
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("nesting deeper than"));

  std::string lists(200, '[');
  doc = ParseHcl("a = " + lists);
  ASSERT_FALSE(doc.ok());
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("nesting deeper than"));

  std::string big = "a = \"" + std::string(kMaxHclBytes, 'x') + "\"";
  doc = ParseHcl(big);
  ASSERT_FALSE(doc.ok());
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("the limit is"));
}

TEST(HclTest, ManyKeysParseInReasonableTime) {
  // 20,000 distinct keys: duplicate detection must not be quadratic.
  std::string text;
  for (int i = 0; i < 20000; ++i) {
    text += "k" + std::to_string(i) + " = " + std::to_string(i) + "\n";
  }
  auto doc = ParseHcl(text);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ(doc->size(), 20000u);
  EXPECT_EQ((*doc)[19999].line, 20000);
}

TEST(HclTest, GenericTreeKeepsKindsAndOrder) {
  auto doc = ParseHcl("s = \"x\"\nn = -3\nb = false\nl = [1, \"two\", [true]]\no { p = 1 }\n");
  ASSERT_TRUE(doc.ok()) << doc.status();
  ASSERT_EQ(doc->size(), 5u);
  EXPECT_EQ((*doc)[0].value.kind, HclValue::Kind::kString);
  EXPECT_EQ((*doc)[1].value.kind, HclValue::Kind::kNumber);
  EXPECT_EQ((*doc)[1].value.text, "-3");
  EXPECT_EQ((*doc)[2].value.kind, HclValue::Kind::kBool);
  EXPECT_FALSE((*doc)[2].value.boolean);
  ASSERT_EQ((*doc)[3].value.list.size(), 3u);
  EXPECT_EQ((*doc)[3].value.list[2].kind, HclValue::Kind::kList);
  EXPECT_EQ((*doc)[4].key, "o");
  EXPECT_EQ((*doc)[4].value.object[0].key, "p");
}

TEST(HclTest, DecoderReportsFirstErrorOnly) {
  auto doc = ParseHcl("tcti = 1\npcrs = 2\n");
  ASSERT_TRUE(doc.ok());
  std::string a, b;
  HclDecoder d(*doc);
  d.Optional("tcti", &a);
  d.Optional("pcrs", &b);
  absl::Status s = d.Finish();
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"tcti\""));
  EXPECT_THAT(std::string(s.message()), ::testing::Not(HasSubstr("\"pcrs\"")));
}

}  // namespace
}  // namespace hwid::pluginmain
