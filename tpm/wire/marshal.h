// Strict (un)marshalling of the TPM structures hwid exchanges, on top of tss2-mu.
//
// Everything here may run on attacker-controlled bytes (the attestation server), so every Parse*
// function:
//   * rejects empty input, truncated input and trailing bytes after the structure;
//   * bounds-checks every TPM2B size field against both the remaining data and the field's
//     capacity before tss2-mu touches it (tss2-mu 3.2.1 does not propagate the inner error of
//     TPM2B_PUBLIC, so TPM2B_PUBLIC is framed here, not by tss2-mu);
//   * returns absl::InvalidArgumentError naming the structure and the failed check.
// Marshal* functions return InvalidArgument for values tss2-mu cannot encode (e.g. a TPM2B size
// larger than its buffer).
#ifndef HWID_TPM_WIRE_MARSHAL_H_
#define HWID_TPM_WIRE_MARSHAL_H_

#include <tss2/tss2_tpm2_types.h>

#include <string>

#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::wire {

// ParsePublic parses a marshalled TPM2B_PUBLIC including its 2-byte size; the size field must
// equal the length of the TPMT_PUBLIC that follows and nothing may follow it. The TPMT_PUBLIC must
// pass ParseTpmtPublic's checks.
absl::StatusOr<TPM2B_PUBLIC> ParsePublic(ByteSpan tpm2b_public);

// ParseTpmtPublic parses a marshalled TPMT_PUBLIC (no size prefix). Beyond the wire format it
// requires type RSA, ECC, KEYEDHASH or SYMCIPHER and a nameAlg of SHA-1/256/384/512.
absl::StatusOr<TPMT_PUBLIC> ParseTpmtPublic(ByteSpan tpmt_public);

// MarshalPublic returns the TPM2B_PUBLIC encoding of pub.publicArea; pub.size is ignored and the
// size prefix is computed from the marshalled TPMT_PUBLIC.
absl::StatusOr<Bytes> MarshalPublic(const TPM2B_PUBLIC& pub);
absl::StatusOr<Bytes> MarshalTpmtPublic(const TPMT_PUBLIC& pub);

// ParsePrivate / MarshalPrivate: TPM2B_PRIVATE including its size prefix (size must be >= 1).
absl::StatusOr<TPM2B_PRIVATE> ParsePrivate(ByteSpan tpm2b_private);
absl::StatusOr<Bytes> MarshalPrivate(const TPM2B_PRIVATE& priv);

// ParseAttest parses the bytes inside a TPM2B_ATTEST (a marshalled TPMS_ATTEST, the exact bytes a
// TPM signs). Structural only: magic and type are NOT checked here (VerifyQuote checks them, after
// the signature), but an unknown attestation type is rejected by the union decoder.
absl::StatusOr<TPMS_ATTEST> ParseAttest(ByteSpan tpms_attest);
absl::StatusOr<Bytes> MarshalAttest(const TPMS_ATTEST& attest);

// ParseSignature / MarshalSignature: a marshalled TPMT_SIGNATURE (no size prefix).
absl::StatusOr<TPMT_SIGNATURE> ParseSignature(ByteSpan tpmt_signature);
absl::StatusOr<Bytes> MarshalSignature(const TPMT_SIGNATURE& sig);

// TPM2B_ID_OBJECT (MakeCredential's credentialBlob) including its size prefix (size >= 1).
absl::StatusOr<TPM2B_ID_OBJECT> ParseIdObject(ByteSpan tpm2b_id_object);
absl::StatusOr<Bytes> MarshalIdObject(const TPM2B_ID_OBJECT& id_object);

// TPM2B_ENCRYPTED_SECRET (MakeCredential's secret) including its size prefix (size >= 1).
absl::StatusOr<TPM2B_ENCRYPTED_SECRET> ParseEncryptedSecret(ByteSpan tpm2b_encrypted_secret);
absl::StatusOr<Bytes> MarshalEncryptedSecret(const TPM2B_ENCRYPTED_SECRET& secret);

// AlgName returns a short name for a TPM_ALG_ID ("rsa", "ecc", "sha256", "ecdsa", ...) or
// "0x%04x" when unknown. For messages only.
std::string AlgName(TPM2_ALG_ID alg);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_MARSHAL_H_
