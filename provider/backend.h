// The backend interface of the hwid OpenSSL provider: where private keys live and how they sign.
// The provider's OpenSSL glue (keymgmt, signature, store, decoder, encoder) speaks only this
// interface; TpmBackend (tpm_backend.h) implements it over hwid::tpm, Pkcs11Backend
// (pkcs11_backend.h) over hwid::pkcs11.
//
// A Key never exposes private material: it offers its public key (an EVP_PKEY in the provider's
// own library context, served by OpenSSL's default provider), a signature over a digest computed
// by the caller in software, and an encoding of its *reference* (for a TPM key the TSS2 PRIVATE
// KEY file, which holds only a TPM-wrapped blob; for a token key the PKCS#11 PROVIDER URI file,
// which holds only the key's pkcs11: URI).
#ifndef HWID_PROVIDER_BACKEND_H_
#define HWID_PROVIDER_BACKEND_H_

#include <openssl/evp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"
#include "common/key_alg.h"
#include "common/ossl.h"
#include "common/sign.h"

namespace hwid::provider {

// The signing vocabulary is common/sign.h's: hwid::KeyType, hwid::SignScheme (ECDSA, RSA PKCS#1
// v1.5, RSA-PSS), hwid::HashAlg and hwid::SignParams (found unqualified from this namespace).

// Device says where a key lives; it picks the wording of OpenSSL errors ("TPM ..." / "PKCS#11 ...").
enum class Device { kTpm, kPkcs11 };

// PassphraseFn asks the application for a secret (OpenSSL's passphrase callback); empty = none.
using PassphraseFn = std::function<SecureBytes()>;

// How a device chooses the RSA-PSS salt length: TPM 2.0 Part 1 B.7 says "the largest size
// allowed" (several hardware TPMs do that), libtpms/swtpm use the digest length. TLS 1.3 needs
// the digest length.
enum class PssSaltMode { kDigestLength, kMaximum };

// Key is a provider key: a hwid::SigningKey (type, public half, description, Sign) plus what the
// provider's OpenSSL glue needs on top (device, key-file encodings, activation, PSS salt mode).
class Key : public hwid::SigningKey {
 public:
  ~Key() override = default;

  virtual Device device() const = 0;
  // public_key is the key's public half in the provider's library context (never null).
  EVP_PKEY* public_key() const override = 0;
  // Describe names the key for error messages ("TPM key file (parent 0x40000001)",
  // "TPM persistent key 0x81000010"); never contains secrets.
  std::string Describe() const override = 0;
  // Sign signs `digest` (already hashed with params.hash) and returns what OpenSSL expects: a DER
  // ECDSA-Sig-Value, or the RSA signature (modulus size). params.pss_salt_len: nullopt = whatever
  // the device uses (OpenSSL's "auto"). Errors carry the operation, the key and the decoded device
  // code; FailedPrecondition when the device cannot use the requested PSS salt length.
  absl::StatusOr<Bytes> Sign(ByteSpan digest, const SignParams& params) override = 0;
  // EncodePem returns the key's reference as a PEM file that the provider's decoder reads back
  // (for a TPM key: "TSS2 PRIVATE KEY"). Unimplemented for keys that have no file form.
  virtual absl::StatusOr<std::string> EncodePem() const = 0;
  virtual absl::StatusOr<Bytes> EncodeDer() const = 0;
  // Activate makes the key usable: loads it into the device (proving it belongs there) and runs
  // its self-test (auth value, RSA-PSS salt behaviour). Idempotent. Store and decoder hand out
  // inactive keys; the keymgmt activates the one OpenSSL actually keeps.
  virtual absl::Status Activate() = 0;
  // pss_salt_mode is the RSA-PSS salt length the device uses, measured at key load by a
  // self-test signature (kDigestLength for EC keys, where it is meaningless).
  virtual PssSaltMode pss_salt_mode() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  // Scheme is the OSSL_STORE URI scheme this backend serves ("handle", "pkcs11").
  virtual const char* Scheme() const = 0;
  // LoadUri makes an inactive key for a store URI of this backend's scheme (the whole URI,
  // "handle:0x81000010?pass", "pkcs11:token=..;object=.."). `ask` is called when the key or token
  // needs a secret the URI and configuration do not give.
  virtual absl::StatusOr<std::shared_ptr<Key>> LoadUri(absl::string_view uri,
                                                       const PassphraseFn& ask) = 0;
  // LoadKeyFile makes an inactive key from its file form (PEM or DER): parsed and checked, not yet
  // in the device (see Key::Activate). `auth` is the key's authorization value (empty for none).
  // InvalidArgument for a malformed file.
  virtual absl::StatusOr<std::shared_ptr<Key>> LoadKeyFile(ByteSpan pem_or_der,
                                                           ByteSpan auth) = 0;
  // KeyFileNeedsAuth is true when the file says the key needs an authorization value.
  virtual absl::StatusOr<bool> KeyFileNeedsAuth(ByteSpan pem_or_der) = 0;
  // LoadHandle makes an inactive key for a device handle (TPM persistent handle 0x81xxxxxx);
  // reads its public part from the device.
  virtual absl::StatusOr<std::shared_ptr<Key>> LoadHandle(uint32_t handle, ByteSpan auth) = 0;
  // Generate makes a new non-exportable signing key in the device (returned active).
  // Unimplemented for backends that generate keys elsewhere (PKCS#11: `hwid key create --pkcs11`).
  virtual absl::StatusOr<std::shared_ptr<Key>> Generate(KeyAlg alg, ByteSpan auth) = 0;
  // CommandCount is the number of device commands this process has sent through the backend.
  virtual uint64_t CommandCount() = 0;
  // UnloadAll releases every device resource held for live keys (they reload on next use).
  virtual void UnloadAll() = 0;
};

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_BACKEND_H_
