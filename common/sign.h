// One signing vocabulary for every hwid key user (the provider, the SPIRE KeyManager, the CLI):
// the digest algorithms, the signature schemes, the key types, the parameters of one signature,
// and the interface a hardware-held signing key (TPM or PKCS#11) implements.
//
// Hashing always happens in software; a SigningKey signs a digest its caller computed.
#ifndef HWID_COMMON_SIGN_H_
#define HWID_COMMON_SIGN_H_

#include <cstddef>
#include <optional>
#include <string>

#include <openssl/evp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"

namespace hwid {

// HashAlg: the digests a hardware key signs over (SHA-1 only for legacy verification paths).
enum class HashAlg { kSha1, kSha224, kSha256, kSha384, kSha512 };

// ParseHashAlg accepts "SHA256", "sha256", "SHA2-256", "SHA-256" (and likewise for the others);
// InvalidArgument naming the input and listing the valid names otherwise.
absl::StatusOr<HashAlg> ParseHashAlg(absl::string_view name);
// HashAlgName is the OpenSSL digest name: "SHA1", "SHA224", "SHA256", "SHA384", "SHA512".
const char* HashAlgName(HashAlg hash);
// HashAlgSize is the digest length in bytes.
size_t HashAlgSize(HashAlg hash);
// HashAlgNid is the OpenSSL NID (NID_sha256, ...).
int HashAlgNid(HashAlg hash);
// HashAlgFromNid maps an OpenSSL digest NID back; InvalidArgument for any other digest.
absl::StatusOr<HashAlg> HashAlgFromNid(int nid);
// HashAlgMd is the default provider's EVP_MD (never null; owned by OpenSSL).
const EVP_MD* HashAlgMd(HashAlg hash);

// SignScheme: ECDSA, RSASSA-PKCS1-v1_5 (over a DigestInfo), RSASSA-PSS (MGF1 with the same hash).
enum class SignScheme { kEcdsa, kRsaPkcs1, kRsaPss };
const char* SignSchemeName(SignScheme scheme);  // "ECDSA", "RSA-PKCS1", "RSA-PSS"

// KeyType: the family of a signing key.
enum class KeyType { kEc, kRsa };

// SignParams describes one signature over a digest computed in software.
struct SignParams {
  SignScheme scheme = SignScheme::kEcdsa;
  HashAlg hash = HashAlg::kSha256;
  // RSA-PSS only: the salt length the caller requires, in bytes; nullopt = the device's choice.
  std::optional<int> pss_salt_len;
};

// CheckDigest: InvalidArgument unless `digest` has the length `params.hash` produces and the
// scheme fits `type` (ECDSA for EC keys, PKCS#1 / PSS for RSA keys).
absl::Status CheckSignRequest(KeyType type, ByteSpan digest, const SignParams& params);

// SigningKey: a private key that never leaves its device. Thread-safe.
class SigningKey {
 public:
  virtual ~SigningKey() = default;
  virtual KeyType type() const = 0;
  // public_key is the key's public half (default provider, never null, owned by the key).
  virtual EVP_PKEY* public_key() const = 0;
  // Describe names the key for operators ("TPM key file ...", "PKCS#11 key 'L' on token 'T'");
  // never contains secrets.
  virtual std::string Describe() const = 0;
  // Sign signs `digest` and returns a DER ECDSA-Sig-Value or the RSA signature (modulus size).
  // Errors name the operation, the key and the decoded device code.
  virtual absl::StatusOr<Bytes> Sign(ByteSpan digest, const SignParams& params) = 0;
};

}  // namespace hwid

#endif  // HWID_COMMON_SIGN_H_
