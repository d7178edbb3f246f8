// The main() of a fuzz target built without libFuzzer (gcc builds; CTest `*_fuzz_replay`): it
// replays the files named on the command line, or the target's built-in seeds when there are none,
// through LLVMFuzzerTestOneInput. Include it once, from the target's `#ifdef HWID_FUZZ_REPLAY_MAIN`.
#ifndef HWID_TESTS_FUZZ_REPLAY_MAIN_H_
#define HWID_TESTS_FUZZ_REPLAY_MAIN_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace hwid::fuzzing {

// ReplayMain replays argv[1..] (or `seeds` without arguments) and prints how many inputs ran.
// Returns 1 when a named file cannot be read.
inline int ReplayMain(const char* name, int argc, char** argv,
                      const std::vector<std::string>& seeds) {
  std::vector<std::string> inputs;
  for (int a = 1; a < argc; ++a) {
    std::ifstream f(argv[a], std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "%s: cannot read %s\n", name, argv[a]);
      return 1;
    }
    inputs.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  if (argc <= 1) {
    inputs = seeds;
  }
  for (const std::string& in : inputs) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(in.data()), in.size());
  }
  std::printf("%s: %zu inputs replayed\n", name, inputs.size());
  return 0;
}

}  // namespace hwid::fuzzing

#endif  // HWID_TESTS_FUZZ_REPLAY_MAIN_H_
