// Software cryptography over TPM structures: hashes, TPMT_PUBLIC -> EVP_PKEY, object names,
// TPMT_SIGNATURE -> OpenSSL encodings and signature verification. OpenSSL's default provider is
// the only crypto used.
#ifndef HWID_TPM_WIRE_CRYPTO_H_
#define HWID_TPM_WIRE_CRYPTO_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "common/sign.h"
#include "common/ossl.h"

namespace hwid::wire {

// DigestForAlg maps TPM_ALG_SHA1/256/384/512 to EVP_sha1()/... (static objects, not owned).
// InvalidArgument for any other algorithm.
absl::StatusOr<const EVP_MD*> DigestForAlg(TPMI_ALG_HASH alg);

// DigestSize returns the digest length of a supported hash algorithm, 0 when unknown.
size_t DigestSize(TPMI_ALG_HASH alg);

// Hash returns H_alg(data); InvalidArgument for an unsupported algorithm.
absl::StatusOr<Bytes> Hash(TPMI_ALG_HASH alg, ByteSpan data);

// PublicToEvp converts an RSA (1024..4096 bits; exponent 0 means 65537; the modulus length must
// equal keyBits) or ECC (NIST P-256/P-384/P-521; coordinates at most the field size) public area
// into an OpenSSL public key, and runs OpenSSL's public-key check (point on the curve, sane
// modulus). InvalidArgument for anything else or an invalid key.
absl::StatusOr<OsslPtr<EVP_PKEY>> PublicToEvp(const TPMT_PUBLIC& pub);

// PublicKeyDer returns the DER SubjectPublicKeyInfo of the key in `pub` (see PublicToEvp).
absl::StatusOr<Bytes> PublicKeyDer(const TPMT_PUBLIC& pub);

// PublicKeyDerTrusted returns the same bytes as PublicKeyDer(pub) without OpenSSL's public-key
// validation, for a public area the TPM has vouched for (e.g. after a verified TPM2_Certify whose
// name matches): ECC P-256/P-384 are encoded directly (~100x cheaper), everything else goes
// through PublicKeyDer.
absl::StatusOr<Bytes> PublicKeyDerTrusted(const TPMT_PUBLIC& pub);

// PublicKeyDer returns the DER SubjectPublicKeyInfo of `key` (for callers that already hold the
// PublicToEvp result and must not pay for a second conversion and check). InvalidArgument when
// `key` is null.
absl::StatusOr<Bytes> PublicKeyDer(const EVP_PKEY* key);

// SamePublicKey is true iff EVP_PKEY_eq(a, b) == 1 (same type and public components). False when
// either is null.
bool SamePublicKey(const EVP_PKEY* a, const EVP_PKEY* b);

// ObjectName returns the TPM Name of an object: nameAlg (2 bytes, big endian) followed by
// H_nameAlg(marshalled TPMT_PUBLIC).
absl::StatusOr<Bytes> ObjectName(const TPMT_PUBLIC& pub);

// CheckName checks that `name` is a well-formed object name: a supported hash algorithm followed
// by exactly that algorithm's digest size. InvalidArgument naming `what` otherwise.
absl::Status CheckName(ByteSpan name, std::string_view what);

// TpmHashAlg is the TPM algorithm ID of a digest (common/sign.h); InvalidArgument naming the
// digest for SHA-224, which TPM 2.0 does not define.
absl::StatusOr<TPMI_ALG_HASH> TpmHashAlg(HashAlg hash);

// SignatureToDer converts a TPMT_SIGNATURE into what OpenSSL verifies: ECDSA -> DER
// ECDSA-Sig-Value; RSASSA/RSAPSS -> the raw signature bytes. InvalidArgument for other schemes
// or an empty signature.
absl::StatusOr<Bytes> SignatureToDer(const TPMT_SIGNATURE& sig);

// VerifySignature hashes `message` with the signature's hash algorithm and verifies `sig` with the
// public key in `key` (ECDSA, RSASSA PKCS#1 v1.5, or RSAPSS with MGF1 of the same hash and any
// salt length). The signature algorithm must fit the key type (ECDSA for ECC, RSASSA/RSAPSS for
// RSA). PermissionDenied when the signature does not verify; InvalidArgument for malformed or
// unsupported inputs.
absl::Status VerifySignature(const TPMT_PUBLIC& key, ByteSpan message, const TPMT_SIGNATURE& sig);
// VerifySignature with the key already converted: `pkey` must be PublicToEvp(key) (callers that
// verify several signatures by one key convert it once).
absl::Status VerifySignature(const TPMT_PUBLIC& key, const EVP_PKEY* pkey, ByteSpan message,
                             const TPMT_SIGNATURE& sig);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_CRYPTO_H_
