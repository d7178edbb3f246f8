// libFuzzer target for the plugin_data HCL v1 subset parser and decoder
// (attestor_plugin/pluginmain/hcl.h): plugin_data comes from SPIRE's configuration, and a bad
// one must give an error, never a crash, a hang or quadratic time.
//
// With Clang the target `hcl_fuzz` is built with -fsanitize=fuzzer,address,undefined:
//   ./hcl_fuzz -max_total_time=60 -max_len=4096 [corpus dir]
// With other compilers, HWID_FUZZ_REPLAY_MAIN adds a main() that replays the files given on
// the command line, or built-in seeds without arguments (CTest `hcl_fuzz_replay`).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "attestor_plugin/pluginmain/hcl.h"

namespace {

using hwid::pluginmain::HclDecoder;

void Walk(const hwid::pluginmain::HclValue& v, size_t* n) {
  ++*n;
  for (const auto& e : v.list) {
    Walk(e, n);
  }
  for (const auto& i : v.object) {
    Walk(i.value, n);
  }
}

void FuzzOne(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto doc = hwid::pluginmain::ParseHcl(text);
  if (!doc.ok()) {
    if (doc.status().message().empty()) {
      __builtin_trap();  // every rejection must say why
    }
    return;
  }
  size_t nodes = 0;
  for (const auto& item : *doc) {
    Walk(item.value, &nodes);
  }
  // Decode with a schema shaped like the attestor's (every decoder type).
  std::string s;
  int64_t i = 0;
  double d = 0;
  bool b = false;
  std::vector<std::string> l;
  std::map<std::string, std::string> m;
  HclDecoder dec(*doc);
  dec.Optional("tcti", &s);
  dec.Optional("pcrs", &s);
  dec.Optional("rounds", &i, 1, 8);
  dec.Optional("ratio", &d);
  dec.Optional("strict", &b);
  dec.Optional("allowed_ek_hashes", &l);
  dec.Optional("pcr_policy", &m);
  dec.Block("nested", [&](HclDecoder& n) {
    n.Optional("name", &s);
    n.Optional("list", &l);
  });
  absl::Status st = dec.Finish();
  if (!st.ok() && st.message().empty()) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzOne(data, size);
  return 0;
}

#ifdef HWID_FUZZ_REPLAY_MAIN
#include "tests/fuzz/replay_main.h"

int main(int argc, char** argv) {
  const std::vector<std::string> seeds = {
      "",
      "tcti = \"device:/dev/tpmrm0\"\npcrs = \"sha256:0,1,2\"\n",
      "allowed_ek_hashes = [\"ab\", \"cd\",]\npcr_policy {\n  \"sha256:7\" = \"00\"\n}\n",
      "nested { name = \"x\" list = [] }\nrounds = 3\nratio = -1.5e3\nstrict = true\n",
      "tcti = <<EOT\nabc\nEOT\n",
      "tcti = <<-EOT\n  a\n  EOT\n",
      "\"DATA\"",
      "a = [[[[[[[[[[[[[[[[[[[[[[",
      "a { b { c { d = \"\\u00e9\\U0001F600\" } } }",
      "/* x */ # y\n// z\n",
      "a = 1e99999",
      "k = \"\\ud800\"",
  };
  return hwid::fuzzing::ReplayMain("hcl_fuzz_replay", argc, argv, seeds);
}
#endif
