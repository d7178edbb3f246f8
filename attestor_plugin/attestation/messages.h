// The hwid_tpm attestation messages (protocol version 1, attestor_plugin/attestation/
// hwid_tpm.proto) as plain C++ values, with strict, bounded encoding and decoding. The protobuf
// types stay inside messages.cc.
//
// Decode* run on attacker-controlled bytes. Each one rejects, with InvalidArgument naming the
// message and the field: input larger than the message bound (checked before parsing), bytes that
// do not parse, unknown fields, a version other than kProtocolVersion, and any field larger than
// its bound or missing when required. They do not interpret TPM structures (the verifier does).
#ifndef HWID_ATTESTOR_PLUGIN_ATTESTATION_MESSAGES_H_
#define HWID_ATTESTOR_PLUGIN_ATTESTATION_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::attestation {

// Version 1: EK, AK, credential activation, quote. Version 2 adds TPM2_Certify of the agent's
// KeyManager keys (the agent asks for it with a version-2 payload; every later message of the
// session carries the payload's version).
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kProtocolVersionCertify = 2;

// Bounds (bytes unless noted). Documented in docs/plugin-protocol.md; change both together.
inline constexpr size_t kMaxPayloadBytes = 32 * 1024;
inline constexpr size_t kMaxChallengeBytes = 4 * 1024;
inline constexpr size_t kMaxResponseBytes = 16 * 1024;
inline constexpr size_t kMaxPublicBytes = 1024;         // TPM2B_PUBLIC
inline constexpr size_t kMaxCertificateBytes = 8 * 1024;  // one DER certificate
inline constexpr size_t kMaxIntermediates = 2;          // count
inline constexpr size_t kMaxCredentialBlobBytes = 512;  // TPM2B_ID_OBJECT
inline constexpr size_t kMaxEncryptedSecretBytes = 1024;  // TPM2B_ENCRYPTED_SECRET
inline constexpr size_t kMaxNonceBytes = 64;
inline constexpr size_t kMaxPcrSelectionChars = 256;
inline constexpr size_t kMaxSecretBytes = 64;
inline constexpr size_t kMaxAttestBytes = 2048;     // TPMS_ATTEST
inline constexpr size_t kMaxSignatureBytes = 1024;  // TPMT_SIGNATURE
inline constexpr size_t kMaxPcrValues = 96;         // count (4 banks x 24 PCRs)
inline constexpr size_t kMaxPcrDigestBytes = 64;
inline constexpr size_t kMaxCertifiedKeys = 4;      // count (SPIRE uses agent-svid-A and -B)

// AttestationPayload: the agent's first message.
struct AttestationPayload {
  Bytes ek_public;       // marshalled TPM2B_PUBLIC (required)
  Bytes ek_certificate;  // DER; empty when the TPM has none
  std::vector<Bytes> ek_intermediates;  // DER, untrusted path-building helpers
  Bytes ak_public;       // marshalled TPM2B_PUBLIC (required)
  uint32_t version = kProtocolVersion;  // kProtocolVersionCertify: agent-key binding
};

// Challenge: the server's only challenge.
struct Challenge {
  Bytes credential_blob;   // marshalled TPM2B_ID_OBJECT (required)
  Bytes encrypted_secret;  // marshalled TPM2B_ENCRYPTED_SECRET (required)
  Bytes nonce;             // TPM2_Quote qualifying data (required)
  std::string pcr_selection;  // canonical text form, e.g. "sha256:0,1,2" (required)
  Bytes certify_nonce;        // TPM2_Certify qualifying data (version 2: required; 1: empty)
  uint32_t version = kProtocolVersion;
};

struct PcrValue {
  uint32_t bank = 0;  // TPM_ALG_ID
  uint32_t index = 0;
  Bytes digest;
};

// CertifiedKey: one KeyManager key certified by the AK (version 2).
struct CertifiedKey {
  Bytes key_public;    // marshalled TPM2B_PUBLIC
  Bytes certify_info;  // TPMS_ATTEST
  Bytes signature;     // marshalled TPMT_SIGNATURE
};

// ChallengeResponse: the agent's answer.
struct ChallengeResponse {
  SecureBytes secret;     // the activated credential secret (required)
  Bytes quote_attest;     // TPMS_ATTEST (required)
  Bytes quote_signature;  // marshalled TPMT_SIGNATURE (required)
  std::vector<PcrValue> pcrs;
  std::vector<CertifiedKey> certified_keys;  // version 2 only
  uint32_t version = kProtocolVersion;
};

// Encode* serialise a message with its version (1 or 2); version-2 fields in a version-1 message
// are refused. InvalidArgument when a field
// exceeds its bound (the peer would refuse it anyway); Internal if serialisation fails.
absl::StatusOr<Bytes> EncodePayload(const AttestationPayload& m);
absl::StatusOr<Bytes> EncodeChallenge(const Challenge& m);
absl::StatusOr<Bytes> EncodeResponse(const ChallengeResponse& m);

absl::StatusOr<AttestationPayload> DecodePayload(ByteSpan bytes);
absl::StatusOr<Challenge> DecodeChallenge(ByteSpan bytes);
absl::StatusOr<ChallengeResponse> DecodeResponse(ByteSpan bytes);

}  // namespace hwid::attestation

#endif  // HWID_ATTESTOR_PLUGIN_ATTESTATION_MESSAGES_H_
