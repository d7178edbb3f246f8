// The storage side of the hwid SPIRE KeyManager plugins: where SPIRE's keys live (a TPM with one
// TSS2 PRIVATE KEY file per key, or a PKCS#11 token), behind one interface that the agent and
// server KeyManager services share.
//
// Error-code contract (the gRPC edge forwards it unchanged, SPIRE's facades depend on it):
//   INVALID_ARGUMENT    bad request (empty id, key type or digest the device cannot do)
//   NOT_FOUND           no key with that id in this instance
//   UNAVAILABLE         the device is missing, unreachable or busy (retry later)
//   FAILED_PRECONDITION not configured, or the device refuses our credentials (PIN, lockout):
//                       an operator must act. Never PERMISSION_DENIED (it makes the agent exit).
//   INTERNAL            our bug or a device answer that makes no sense
#ifndef HWID_ATTESTOR_PLUGIN_KEYMANAGER_KEY_STORE_H_
#define HWID_ATTESTOR_PLUGIN_KEYMANAGER_KEY_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"
#include "common/key_alg.h"
#include "common/sign.h"

namespace hwid::keymanager {

// PublicKeyInfo: what SPIRE learns about one key.
struct PublicKeyInfo {
  std::string id;
  KeyAlg alg = KeyAlg::kEcP256;
  Bytes pkix_der;           // DER SubjectPublicKeyInfo
  std::string fingerprint;  // lowercase hex SHA-256 of pkix_der (SPIRE's built-in convention)
};

struct Signature {
  Bytes signature;          // DER ECDSA-Sig-Value, or the RSA signature
  std::string fingerprint;  // of the key that made it
};

// PssSalt: Go's rsa.PSSOptions.SaltLength meaning, as SPIRE forwards it.
//   0  = PSSSaltLengthAuto: the signer chooses (the largest salt the key allows);
//   -1 = PSSSaltLengthEqualsHash; >0 = exactly that many bytes.
// The scheme follows the key: ECDSA for EC keys, RSA-PSS when `pss`, else PKCS#1 v1.5.
struct SignRequest {
  HashAlg hash = HashAlg::kSha256;
  bool pss = false;
  int go_pss_salt = 0;  // RSA-PSS only
};

// SignParamsFor turns SPIRE's request for key `id` (of `alg`) into the signature parameters:
// the scheme follows the key (see SignRequest) and the digest length must fit the hash
// (CheckSignRequest). The PSS salt is left unset: each store knows what its device can do.
// INVALID_ARGUMENT naming the key otherwise (e.g. PSS options for an EC key).
absl::StatusOr<SignParams> SignParamsFor(absl::string_view id, KeyAlg alg, ByteSpan digest,
                                         const SignRequest& request);

class KeyStore {
 public:
  virtual ~KeyStore() = default;
  // Describe names the backend for logs ("TPM device:/dev/tpmrm0, key_dir /var/lib/...").
  virtual std::string Describe() const = 0;
  // Generate makes a new key for `id` in the device and makes it durable (it survives a crash
  // or restart from the moment this returns) before it replaces the previous key of `id`;
  // other ids are never touched. The new key has a new fingerprint.
  virtual absl::StatusOr<PublicKeyInfo> Generate(const std::string& id, KeyAlg alg) = 0;
  // Get: NOT_FOUND when this instance has no key `id`.
  virtual absl::StatusOr<PublicKeyInfo> Get(const std::string& id) = 0;
  // List: every key of this instance (and only those), sorted by id.
  virtual absl::StatusOr<std::vector<PublicKeyInfo>> List() = 0;
  // Sign signs a digest computed by SPIRE.
  virtual absl::StatusOr<Signature> Sign(const std::string& id, ByteSpan digest,
                                         const SignRequest& request) = 0;
  // CommandCount: device commands sent so far (benchmarks and tests).
  virtual uint64_t CommandCount() = 0;
};

// KeyAlgOf returns the KeyAlg of a public key (P-256, P-384, RSA 2048/3072/4096), else
// INVALID_ARGUMENT naming what it is.
absl::StatusOr<KeyAlg> KeyAlgOf(const EVP_PKEY* key);

// DeviceError rewrites a device error into the contract above: NotFound (token or TPM
// missing) and ResourceExhausted (no free slot) become UNAVAILABLE, PermissionDenied (wrong
// PIN, TPM lockout) becomes FAILED_PRECONDITION; the message gets `what` in front.
absl::Status DeviceError(const absl::Status& st, absl::string_view what);

}  // namespace hwid::keymanager

#endif  // HWID_ATTESTOR_PLUGIN_KEYMANAGER_KEY_STORE_H_
