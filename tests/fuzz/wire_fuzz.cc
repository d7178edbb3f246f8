// libFuzzer target for the tpm/wire code that runs on attacker-controlled bytes: the TPM structure
// parsers, the TSS2 PRIVATE KEY codec, the PCR selection parser, VerifyQuote, and (issue 13) the
// weak-key checks, the EK-certificate profile on a parsed certificate and the CA bundle reader,
// and (issue 14) the NV certificate extractor (TCG header, padding, trailing bytes).
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
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keystrength.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tests/fuzz/fuzz_fixtures.h"
#include "tpm/wire/templates.h"

namespace {

using hwid::ByteSpan;
using hwid::Bytes;

// A fixed, valid ECDSA P-256 AK (the curve's generator as public point).
TPMT_PUBLIC FixedAk() {
  TPMT_PUBLIC ak = hwid::wire::AkTemplate(hwid::wire::KeyAlg::kEcP256).publicArea;
  hwid::fuzzing::SetP256Generator(ak);
  return ak;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ByteSpan in(data, size);
  if (auto pub = hwid::wire::ParsePublic(in); pub.ok()) {
    (void)hwid::wire::CheckKeyStrength(pub->publicArea, "EK");
  }
  (void)hwid::wire::HasRocaFingerprint(in);
  if (auto cert = hwid::wire::ParseCertificateDer(in); cert.ok()) {
    (void)hwid::wire::CheckEkCertificateProfile(cert->get());
  }
  (void)hwid::wire::LoadCaBundlePem(in);
  if (auto nv = hwid::wire::ExtractNvCertificate(in); nv.ok()) {
    // What it returns is what verifiers get: exactly one DER certificate, inside the input.
    if (!hwid::wire::ParseCertificateDer(nv->der).ok() || nv->der.size() > size ||
        nv->der.size() + nv->padding_bytes + nv->trailing_bytes + (nv->tcg_wrapper ? 5 : 0) !=
            size) {
      __builtin_trap();
    }
  }
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
#include "tests/fuzz/replay_main.h"

int main(int argc, char** argv) {
  return hwid::fuzzing::ReplayMain("wire_fuzz_replay", argc, argv, {});
}
#endif
