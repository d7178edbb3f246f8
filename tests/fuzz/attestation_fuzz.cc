// libFuzzer target for the attestation server's handling of attacker-controlled bytes: the
// hwid.attestation.v1 payload and response decoders, a ServerSession's HandlePayload (EK/AK
// public areas, EK certificates and intermediates, both trust modes) and HandleChallengeResponse,
// and the downstream PCR-value and quote checks on whatever a response decodes to. The agent-side
// challenge decoder is fuzzed too (a malicious server).
//
// The first input byte picks the entry point; the rest is the message. 0xC5 picks the clock-state
// file store's record decoder (a record must survive encode -> decode unchanged).
// Built from tests/attestor_plugin/attestation/CMakeLists.txt. With Clang the target
// `attestation_fuzz` is built with -fsanitize=fuzzer,address,undefined:
//   ./attestation_fuzz -max_total_time=600 -max_len=40000
// With other compilers, HWID_FUZZ_REPLAY_MAIN adds a main() that replays files given on the
// command line (CTest `attestation_fuzz_replay`).
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <tss2/tss2_tpm2_types.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "attestor_plugin/attestation/clock_state.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tests/fuzz/fuzz_fixtures.h"
#include "tpm/wire/templates.h"

namespace {

using hwid::ByteSpan;
using hwid::Bytes;
namespace att = hwid::attestation;

using hwid::fuzzing::SetP256Generator;

struct Fixture {
  std::shared_ptr<const att::ServerConfig> config;
  TPMT_PUBLIC ak{};
  Bytes payload;     // a valid payload (allowlisted EK), to reach HandleChallengeResponse
  Bytes payload_v2;  // the same, protocol version 2 (agent-key binding)
};

// A self-signed root in a temporary file, so that certificate mode is configured too.
std::string WriteRootBundle() {
  hwid::OsslPtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  hwid::OsslPtr<X509> cert(X509_new());
  X509_set_version(cert.get(), 2);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -86400);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("fuzz root"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  X509_set_pubkey(cert.get(), key.get());
  X509_sign(cert.get(), key.get(), EVP_sha256());
  char path[] = "/tmp/hwid-attestation-fuzz-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) {
    std::abort();
  }
  close(fd);
  hwid::OsslPtr<BIO> bio(BIO_new_file(path, "w"));
  if (!bio || PEM_write_bio_X509(bio.get(), cert.get()) != 1) {
    std::abort();
  }
  return path;
}

const Fixture& GetFixture() {
  static const Fixture* f = [] {
    auto* fx = new Fixture();
    TPMT_PUBLIC ek = hwid::wire::EkTemplate(hwid::wire::EkType::kEccP256).publicArea;
    SetP256Generator(ek);
    fx->ak = hwid::wire::AkTemplate(hwid::wire::KeyAlg::kEcP256).publicArea;
    SetP256Generator(fx->ak);
    att::ServerConfigInput in;
    in.trust_domain = "fuzz.example";
    const std::string bundle = WriteRootBundle();
    in.ek_ca_bundle_paths = {bundle};
    in.ek_allowlist = {*att::EkPublicKeyHash(ek)};
    in.pcrs = "sha256:0-7";
    in.ek_algs = {"ecc-p256"};
    absl::StatusOr<std::shared_ptr<const att::ServerConfig>> c = att::ValidateServerConfig(in);
    unlink(bundle.c_str());
    if (!c.ok()) {
      std::fprintf(stderr, "attestation_fuzz: %s\n", std::string(c.status().message()).c_str());
      std::abort();
    }
    fx->config = *c;
    TPM2B_PUBLIC ek2b{};
    ek2b.publicArea = ek;
    TPM2B_PUBLIC ak2b{};
    ak2b.publicArea = fx->ak;
    att::AttestationPayload p;
    p.ek_public = *hwid::wire::MarshalPublic(ek2b);
    p.ak_public = *hwid::wire::MarshalPublic(ak2b);
    fx->payload = *att::EncodePayload(p);
    p.version = att::kProtocolVersionCertify;
    fx->payload_v2 = *att::EncodePayload(p);
    return fx;
  }();
  return *f;
}

}  // namespace

constexpr uint8_t kClockRecordMode = 0xC5;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const Fixture& fx = GetFixture();
  const ByteSpan in(data + 1, size - 1);
  if (data[0] == kClockRecordMode) {
    const absl::string_view text(reinterpret_cast<const char*>(in.data()), in.size());
    absl::StatusOr<att::StoredClockRecord> r = att::DecodeClockRecordFile("fuzz", text);
    if (r.ok()) {
      absl::StatusOr<att::StoredClockRecord> again =
          att::DecodeClockRecordFile("fuzz", att::EncodeClockRecordFile(*r));
      if (!again.ok() || again->version != r->version || !(again->record == r->record)) {
        std::abort();  // a decoded record must round-trip
      }
    }
    return 0;
  }
  switch (data[0] % 4) {
    case 0: {
      // A whole server session on an arbitrary payload.
      auto s = att::ServerSession::New(fx.config);
      (void)(*s)->HandlePayload(in);
      break;
    }
    case 1: {
      // An arbitrary response to a genuine challenge, and the checks behind the secret.
      auto s = att::ServerSession::New(fx.config);
      if (!(*s)->HandlePayload(fx.payload).ok()) {
        std::abort();  // the fixture payload must be accepted
      }
      (void)(*s)->HandleChallengeResponse(in);
      absl::StatusOr<att::ChallengeResponse> r = att::DecodeResponse(in);
      if (r.ok()) {
        // The agent-key certifications, which a session only reaches after the secret.
        static const Bytes certify_nonce(32, 0xa5);
        (void)att::VerifyCertifiedKeys(fx.ak, r->certified_keys, certify_nonce);
        absl::StatusOr<hwid::wire::PcrValues> pcrs = att::DecodePcrValues(r->pcrs);
        if (pcrs.ok()) {
          static const Bytes nonce(32, 0x5a);
          absl::StatusOr<hwid::wire::VerifiedQuote> q = hwid::wire::VerifyQuote(
              fx.ak, r->quote_attest, r->quote_signature, nonce, *pcrs);
          if (q.ok()) {
            (void)att::CheckQuotedSelection(q->attest.attested.quote.pcrSelect,
                                            fx.config->required_pcrs);
          }
        }
      }
      break;
    }
    case 3: {
      // A protocol-version-2 session: an arbitrary response to a genuine v2 challenge.
      auto s = att::ServerSession::New(fx.config);
      if (!(*s)->HandlePayload(fx.payload_v2).ok()) {
        std::abort();
      }
      (void)(*s)->HandleChallengeResponse(in);
      break;
    }
    default: {
      // The agent decoding a malicious server's challenge.
      absl::StatusOr<att::Challenge> c = att::DecodeChallenge(in);
      if (c.ok()) {
        (void)hwid::wire::ParsePcrSelection(c->pcr_selection);
        (void)hwid::wire::ParseIdObject(c->credential_blob);
        (void)hwid::wire::ParseEncryptedSecret(c->encrypted_secret);
      }
      break;
    }
  }
  return 0;
}

#ifdef HWID_FUZZ_REPLAY_MAIN
#include "tests/fuzz/replay_main.h"

int main(int argc, char** argv) {
  // Built-in seeds: every entry point with the fixture payload.
  std::vector<std::string> seeds;
  const Bytes& p = GetFixture().payload;
  const Bytes& p2 = GetFixture().payload_v2;
  for (uint8_t mode = 0; mode < 4; ++mode) {
    std::string in(1, static_cast<char>(mode));
    const Bytes& body = mode == 3 ? p2 : p;
    in.append(body.begin(), body.end());
    seeds.push_back(std::move(in));
  }
  {
    att::StoredClockRecord rec;
    rec.version = 3;
    rec.record.ak_name = "000b" + std::string(64, 'a');
    rec.record.clock = 123456;
    rec.record.reset_count = 2;
    rec.record.restart_count = 1;
    rec.record.safe = true;
    rec.record.firmware_version = 42;
    rec.record.verified_at_ms = 1700000000000;
    std::string in(1, static_cast<char>(kClockRecordMode));
    in += att::EncodeClockRecordFile(rec);
    seeds.push_back(std::move(in));
  }
  return hwid::fuzzing::ReplayMain("attestation_fuzz_replay", argc, argv, seeds);
}
#endif
