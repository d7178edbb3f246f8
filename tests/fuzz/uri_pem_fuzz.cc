// libFuzzer target for the PKCS#11 PROVIDER URI key-file parser (pkcs11/uri_pem.h): key files
// are read by nginx/curl through the provider, so a malformed one must give an error, never a
// crash. Properties checked: every rejection says why; an accepted DER input is canonical (it
// re-encodes to exactly the same bytes) and its URI carries no pin-value.
//
// With Clang the target `uri_pem_fuzz` is built with -fsanitize=fuzzer,address,undefined:
//   ./uri_pem_fuzz -max_total_time=60 -max_len=8192 [corpus dir]
// With other compilers, HWID_FUZZ_REPLAY_MAIN adds a main() that replays the files given on the
// command line, or built-in seeds without arguments (CTest `uri_pem_fuzz_replay`).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "pkcs11/uri_pem.h"

namespace {

void FuzzOne(const uint8_t* data, size_t size) {
  hwid::ByteSpan in(data, size);
  absl::StatusOr<std::string> uri = hwid::pkcs11::ParseUriFile(in);
  if (!uri.ok()) {
    if (uri.status().message().empty()) {
      __builtin_trap();  // every rejection must say why
    }
    return;
  }
  if (hwid::pkcs11::MentionsPinValue(*uri)) {
    __builtin_trap();  // a PIN must never come out of a key file
  }
  absl::StatusOr<hwid::Bytes> der = hwid::pkcs11::EncodeUriDer(*uri);
  if (!der.ok()) {
    __builtin_trap();  // what we accept, we can write
  }
  if (size > 0 && data[0] == 0x30 && hwid::Bytes(data, data + size) != *der) {
    __builtin_trap();  // accepted DER is canonical
  }
  absl::StatusOr<std::string> again = hwid::pkcs11::ParseUriDer(*der);
  if (!again.ok() || *again != *uri || !hwid::pkcs11::LooksLikeUriDer(*der)) {
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
  auto der = [](const std::string& uri) {
    absl::StatusOr<hwid::Bytes> d = hwid::pkcs11::EncodeUriDer(uri);
    return d.ok() ? std::string(d->begin(), d->end()) : std::string();
  };
  auto pem = [](const std::string& uri) {
    absl::StatusOr<std::string> p = hwid::pkcs11::EncodeUriPem(uri);
    return p.ok() ? *p : std::string();
  };
  std::vector<std::string> seeds = {
      "",
      der("pkcs11:token=t;object=k"),
      der("pkcs11:token=t;object=k;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so"),
      der("pkcs11:" + std::string(300, 'a')),
      pem("pkcs11:token=t;id=%01%02"),
      "-----BEGIN PKCS#11 PROVIDER URI-----\nMAA=\n-----END PKCS#11 PROVIDER URI-----\n",
      std::string("\x30\x81\x05\x1a\x00\x0c\x00\x00", 8),
      std::string("\x30\x82\x00\x04\x1a\x00\x0c\x00", 8),
      std::string("\x30\x84\xff\xff\xff\xff", 6),
  };
  return hwid::fuzzing::ReplayMain("uri_pem_fuzz_replay", argc, argv, seeds);
}
#endif
