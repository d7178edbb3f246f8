// Pkcs11KeyStore: SPIRE keys on a PKCS#11 token. Each key is a non-extractable, sensitive key
// pair on the token labelled "<key_prefix>/<key id>"; key_prefix (default: the trust domain)
// lets several agents or servers share one token without seeing or touching each other's keys.
//
// Replacing a key is crash-safe: the new pair is generated under the pending label
// "<key_prefix>#pending/<key id>", then the old pair is destroyed and the new one relabelled.
// A crash before the destroy leaves the old key in place (the pending one is removed on the
// next listing); a crash after it leaves only the pending key, which is then finished.
#ifndef HWID_ATTESTOR_PLUGIN_KEYMANAGER_PKCS11_KEY_STORE_H_
#define HWID_ATTESTOR_PLUGIN_KEYMANAGER_PKCS11_KEY_STORE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "attestor_plugin/keymanager/key_store.h"
#include "pkcs11/pkcs11.h"
#include "pkcs11/uri.h"

namespace hwid::keymanager {

class Pkcs11KeyStore final : public KeyStore {
 public:
  struct Options {
    std::string uri;         // token URI with module-path, and pin-source or pin-value
    std::string key_prefix;  // non-empty
  };

  // Open parses the URI (INVALID_ARGUMENT; the message never shows the PIN), requires a PIN
  // (pin-value or pin-source) and opens the token: a wrong PIN is FAILED_PRECONDITION and is
  // never retried (a token locks after a few wrong PINs); a token that is not there yet is not
  // an error here (each call retries).
  static absl::StatusOr<std::unique_ptr<Pkcs11KeyStore>> Open(Options options);

  std::string Describe() const override;
  absl::StatusOr<PublicKeyInfo> Generate(const std::string& id, KeyAlg alg) override;
  absl::StatusOr<PublicKeyInfo> Get(const std::string& id) override;
  absl::StatusOr<std::vector<PublicKeyInfo>> List() override;
  absl::StatusOr<Signature> Sign(const std::string& id, ByteSpan digest,
                                 const SignRequest& request) override;
  uint64_t CommandCount() override;

  std::string LiveLabel(absl::string_view id) const;
  std::string PendingLabel(absl::string_view id) const;

 private:
  struct Entry {
    PublicKeyInfo info;
    std::shared_ptr<pkcs11::Key> key;
  };
  Pkcs11KeyStore(Options options, pkcs11::Pkcs11Uri uri)
      : options_(std::move(options)), uri_(std::move(uri)) {}

  absl::StatusOr<std::shared_ptr<pkcs11::Token>> Device();
  absl::Status Check(absl::Status st);
  // Find returns the key labelled `label`, nullptr when there is none.
  absl::StatusOr<std::shared_ptr<pkcs11::Key>> Find(pkcs11::Token& token,
                                                    const std::string& label);
  absl::StatusOr<std::shared_ptr<Entry>> MakeEntry(const std::string& id,
                                                   std::shared_ptr<pkcs11::Key> key);
  // Recover finishes or discards an interrupted Generate of `id`.
  absl::Status Recover(pkcs11::Token& token, const std::string& id);
  absl::StatusOr<std::shared_ptr<Entry>> Load(const std::string& id);

  const Options options_;
  const pkcs11::Pkcs11Uri uri_;
  std::mutex gen_mu_;  // one Generate/Recover at a time
  std::mutex mu_;
  std::shared_ptr<pkcs11::Token> token_;                   // guarded by mu_
  absl::Status latched_;                                   // wrong PIN: guarded by mu_
  std::map<std::string, std::shared_ptr<Entry>> cache_;  // guarded by mu_
};

}  // namespace hwid::keymanager

#endif  // HWID_ATTESTOR_PLUGIN_KEYMANAGER_PKCS11_KEY_STORE_H_
