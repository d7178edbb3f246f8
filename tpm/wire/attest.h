// Attestation-key policy and TPM2_Quote verification (server side, attacker-controlled input).
#ifndef HWID_TPM_WIRE_ATTEST_H_
#define HWID_TPM_WIRE_ATTEST_H_

#include <tss2/tss2_tpm2_types.h>

#include <openssl/evp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "tpm/wire/pcr.h"

namespace hwid::wire {

// CheckAkAttributes enforces what makes a TPM quote trustworthy: restricted, sign, fixedTPM,
// fixedParent and sensitiveDataOrigin set; decrypt clear; nameAlg SHA-256/384/512; RSA of at
// least 2048 bits with an RSASSA or RSAPSS scheme, or ECC P-256/P-384 with an ECDSA scheme, and
// the scheme's hash SHA-256/384/512. InvalidArgument naming the first failing attribute.
absl::Status CheckAkAttributes(const TPMT_PUBLIC& ak);

struct VerifiedQuote {
  TPMS_ATTEST attest;  // The parsed, verified attestation structure.
  PcrValues pcrs;      // Exactly the PCR values covered by the quote.
};

// VerifyQuote verifies a TPM2_Quote made by `ak` over `pcrs` with qualifying data `nonce`.
// `attest` is the TPMS_ATTEST (the contents of TPM2B_ATTEST), `signature` a marshalled
// TPMT_SIGNATURE. Checks, in order, each with its own message:
//   1. `ak` passes CheckAkAttributes (the magic check below only binds restricted keys);
//   2. strict parse of attest and signature;
//   3. the signature's scheme and hash equal the AK's scheme, and it verifies over `attest`;
//   4. magic == TPM_GENERATED_VALUE;
//   5. type == TPM_ST_ATTEST_QUOTE;
//   6. extraData == nonce (constant time);
//   7. the quoted PCR selection is well formed and matches `pcrs` both ways (every selected PCR
//      has a value, every supplied value is selected, each value has the bank's digest length);
//   8. pcrDigest == H_sigHash(selected values concatenated in selection order).
// Malformed input (including a PCR set that does not match the selection) is InvalidArgument; a
// failed proof (signature, magic, type, nonce, pcrDigest) is PermissionDenied.
absl::StatusOr<VerifiedQuote> VerifyQuote(const TPMT_PUBLIC& ak, ByteSpan attest,
                                          ByteSpan signature, ByteSpan nonce,
                                          const PcrValues& pcrs);

// CheckCertifiedKeyAttributes: what a key made by the hwid KeyManager looks like, and what makes
// it a hardware-held signing key: fixedTPM, fixedParent, sensitiveDataOrigin, sign set; decrypt
// and restricted clear; nameAlg SHA-256/384/512; ECC P-256/P-384 or RSA 2048/3072/4096.
// PermissionDenied naming the first failing attribute (a duplicable or imported key fails here).
absl::Status CheckCertifiedKeyAttributes(const TPMT_PUBLIC& key);

struct VerifiedCertify {
  TPMT_PUBLIC key;  // the certified key's public area
  Bytes pkix_der;   // its DER SubjectPublicKeyInfo
};

// VerifyCertify verifies a TPM2_Certify of `key_public` (a marshalled TPM2B_PUBLIC) by `ak` with
// qualifying data `qualifying`: `attest` is the TPMS_ATTEST, `signature` a marshalled
// TPMT_SIGNATURE. Checks, in order, each with its own message:
//   1. `ak` passes CheckAkAttributes;
//   2. strict parse of key_public, attest and signature;
//   3. the signature's scheme and hash equal the AK's, and it verifies over `attest`;
//   4. magic == TPM_GENERATED_VALUE;
//   5. type == TPM_ST_ATTEST_CERTIFY;
//   6. extraData == qualifying (constant time);
//   7. the certified name equals the name computed here from key_public (so the public area
//      presented is the one the TPM certified);
//   8. the key passes CheckCertifiedKeyAttributes.
// Malformed input is InvalidArgument; a failed proof or policy is PermissionDenied.
absl::StatusOr<VerifiedCertify> VerifyCertify(const TPMT_PUBLIC& ak, ByteSpan key_public,
                                              ByteSpan attest, ByteSpan signature,
                                              ByteSpan qualifying);
// VerifyCertify with the AK already converted (`ak_key` = PublicToEvp(ak)), for a session that
// verifies several certifications by one AK.
absl::StatusOr<VerifiedCertify> VerifyCertify(const TPMT_PUBLIC& ak, const EVP_PKEY* ak_key,
                                              ByteSpan key_public, ByteSpan attest,
                                              ByteSpan signature, ByteSpan qualifying);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_ATTEST_H_
