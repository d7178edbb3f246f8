// libFuzzer target for the tpm/wire code that runs on attacker-controlled bytes: the TPM structure
// parsers, the TSS2 PRIVATE KEY codec, the PCR selection parser and VerifyQuote.
//
// With Clang the target `wire_fuzz` is built with -fsanitize=fuzzer,address,undefined:
//   ./wire_fuzz -max_total_time=600 <corpus dir, e.g. tests/tpm/wire/testdata>
// With other compilers, HWID_FUZZ_REPLAY_MAIN adds a main() that replays files given on the
// command line, so the target still compiles and runs (CTest `wire_fuzz_replay`).
#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "common/bytes.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace {

using hwid::ByteSpan;
using hwid::Bytes;

// A fixed, valid ECDSA P-256 AK (the curve's generator as public point).
TPMT_PUBLIC FixedAk() {
  TPMT_PUBLIC ak = hwid::wire::AkTemplate(hwid::wire::KeyAlg::kEcP256).publicArea;
  static constexpr uint8_t kGx[] = {
      0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6,
      0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb,
      0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96};
  static constexpr uint8_t kGy[] = {
      0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb,
      0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31,
      0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5};
  ak.unique.ecc.x.size = sizeof(kGx);
  std::memcpy(ak.unique.ecc.x.buffer, kGx, sizeof(kGx));
  ak.unique.ecc.y.size = sizeof(kGy);
  std::memcpy(ak.unique.ecc.y.buffer, kGy, sizeof(kGy));
  return ak;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ByteSpan in(data, size);
  (void)hwid::wire::ParsePublic(in);
  (void)hwid::wire::ParseTpmtPublic(in);
  (void)hwid::wire::ParsePrivate(in);
  (void)hwid::wire::ParseIdObject(in);
  (void)hwid::wire::ParseEncryptedSecret(in);
  if (auto sig = hwid::wire::ParseSignature(in); sig.ok()) {
    (void)hwid::wire::SignatureToDer(*sig);
  }
  if (auto attest = hwid::wire::ParseAttest(in); attest.ok()) {
    (void)hwid::wire::FormatPcrSelection(attest->attested.quote.pcrSelect);
  }
  if (auto key = hwid::wire::ParseTpmKeyFile(in); key.ok()) {
    (void)hwid::wire::EncodeTpmKeyFilePem(*key);
  }
  (void)hwid::wire::ParsePcrSelection(
      std::string_view(reinterpret_cast<const char*>(data), size));

  // VerifyQuote: first byte splits the rest into attest and signature; a PCR value for
  // sha256:0 is supplied so the reconciliation paths run too.
  if (size > 1) {
    static const TPMT_PUBLIC ak = FixedAk();
    const ByteSpan rest = in.subspan(1);
    const size_t split = data[0] % rest.size();
    hwid::wire::PcrValues pcrs;
    pcrs[TPM2_ALG_SHA256][0] = Bytes(32, 0);
    (void)hwid::wire::VerifyQuote(ak, rest.subspan(0, split), rest.subspan(split), ByteSpan(),
                                  pcrs);
  }
  return 0;
}

#ifdef HWID_FUZZ_REPLAY_MAIN
#include <cstdio>

int main(int argc, char** argv) {
  int replayed = 0;
  for (int i = 1; i < argc; ++i) {
    absl::StatusOr<Bytes> file = hwid::ReadFile(argv[i]);
    if (!file.ok()) {
      std::fprintf(stderr, "wire_fuzz_replay: %s\n", std::string(file.status().message()).c_str());
      return 1;
    }
    LLVMFuzzerTestOneInput(file->data(), file->size());
    ++replayed;
  }
  std::printf("wire_fuzz_replay: %d inputs replayed\n", replayed);
  return 0;
}
#endif
