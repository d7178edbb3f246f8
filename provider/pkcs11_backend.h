// Pkcs11Backend: the provider's Backend over hwid::pkcs11 (libp11 + the module's C_* functions).
//
// Keys are addressed by RFC 7512 URIs through the provider's "pkcs11" store
// (`openssl ... -key 'pkcs11:token=t;object=k'`) or by a PKCS#11 PROVIDER URI file
// (pkcs11/uri_pem.h) through the decoder, for programs that only take a key file. The module and
// PIN come from the URI, then $HWID_PKCS11_MODULE / $HWID_PKCS11_PIN, then openssl.cnf
// (`pkcs11-module-path`, `pkcs11-pin-source`), then the application's passphrase callback.
//
// A token key signs with one C_SignInit + C_Sign on a pooled session (hashing stays in software);
// fork and thread safety are hwid::pkcs11's (pkcs11.h). Keys are found on the token when they are
// loaded, so a URI naming no key fails at load, not at the first signature. Key generation through
// `openssl genpkey` is not offered for tokens: `hwid key create --pkcs11` does it.
#ifndef HWID_PROVIDER_PKCS11_BACKEND_H_
#define HWID_PROVIDER_PKCS11_BACKEND_H_

#include <openssl/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "provider/backend.h"

namespace hwid::pkcs11 {
class Token;
}

namespace hwid::provider {

struct Pkcs11Config {
  std::string module_path;  // openssl.cnf pkcs11-module-path
  std::string pin_source;   // openssl.cnf pkcs11-pin-source ("file:/path")
};

class Pkcs11Backend : public Backend {
 public:
  // `libctx` (not owned, must outlive the keys) is where public keys are re-created.
  Pkcs11Backend(OSSL_LIB_CTX* libctx, Pkcs11Config config);
  ~Pkcs11Backend() override;

  Device device() const override { return Device::kPkcs11; }
  const char* Scheme() const override { return "pkcs11"; }
  absl::StatusOr<std::shared_ptr<Key>> LoadUri(absl::string_view uri,
                                               const PassphraseFn& ask) override;
  // LoadKeyFile reads a PKCS#11 PROVIDER URI file (PEM or DER); `auth`, when not empty, is the
  // token PIN to use if nothing else gives one.
  absl::StatusOr<std::shared_ptr<Key>> LoadKeyFile(ByteSpan pem_or_der, ByteSpan auth) override;
  // KeyFileNeedsAuth is false: a token PIN is asked for only when a login is needed and nothing
  // else supplies it (LoadUri's `ask`).
  absl::StatusOr<bool> KeyFileNeedsAuth(ByteSpan pem_or_der) override;
  absl::StatusOr<std::shared_ptr<Key>> LoadHandle(uint32_t handle, ByteSpan auth) override;
  absl::StatusOr<std::shared_ptr<Key>> Generate(KeyAlg alg, ByteSpan auth) override;
  // CommandCount is the number of PKCS#11 calls made for keys loaded through this backend.
  uint64_t CommandCount() override;
  // UnloadAll closes idle pooled sessions (they reopen on demand).
  void UnloadAll() override;

 private:
  OSSL_LIB_CTX* libctx_;
  Pkcs11Config config_;
  std::mutex mu_;
  std::vector<std::weak_ptr<pkcs11::Token>> tokens_;
  // The key most recently loaded and its URI: OpenSSL's file: store decodes a URI file twice (see
  // decoder.cc), and the second load must not log in or prompt again.
  std::string recent_uri_;
  std::shared_ptr<Key> recent_;
};

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_PKCS11_BACKEND_H_
