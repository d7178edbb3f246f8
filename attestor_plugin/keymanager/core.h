// The shared core of the hwid KeyManager plugins (agent and server): configuration, the key
// store it opens, and SPIRE's request vocabulary (KeyType and HashAlgorithm numbers) mapped onto
// hwid's. Transport-free: service.h adapts it to either role's gRPC service.
//
// plugin_data (HCL), exactly these keys:
//   backend    = "tpm" | "pkcs11"                        (required)
//   tcti       = "device:/dev/tpmrm0"                    (tpm; default $HWID_TCTI or that)
//   key_dir    = "/var/lib/spire/agent/hwid-keys"        (tpm; required)
//   uri        = "pkcs11:token=spire?module-path=...&pin-source=/etc/spire/pin"  (pkcs11; required)
//   key_prefix = "example.org"                           (pkcs11; default: the trust domain)
#ifndef HWID_ATTESTOR_PLUGIN_KEYMANAGER_CORE_H_
#define HWID_ATTESTOR_PLUGIN_KEYMANAGER_CORE_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attestor_plugin/keymanager/key_store.h"
#include "attestor_plugin/pluginmain/pluginmain.h"

namespace hwid::keymanager {

struct Config {
  std::string backend;  // "tpm" or "pkcs11"
  std::string tcti;
  std::string key_dir;
  std::string uri;  // may hold a pin-value: never log it (use the store's Describe())
  std::string key_prefix;

  bool operator==(const Config&) const = default;
};

// ParseConfig: strict; unknown keys and keys of the other backend are errors naming the key.
absl::StatusOr<Config> ParseConfig(const pluginmain::CoreConfig& core, absl::string_view hcl);

// OpenStore opens the backend a configuration names.
absl::StatusOr<std::unique_ptr<KeyStore>> OpenStore(const Config& config);

// SPIRE's KeyType numbers (identical in the agent and server protos).
absl::StatusOr<KeyAlg> KeyAlgFromSpire(int key_type);
int KeyAlgToSpire(KeyAlg alg);  // 0 (unspecified) for rsa-3072, which SPIRE cannot name
// SPIRE's HashAlgorithm numbers (= Go crypto.Hash).
absl::StatusOr<HashAlg> HashAlgFromSpire(int hash_algorithm);

// Core: Configurable for the plugin runtime; the RPC handlers call the methods below.
class Core final : public pluginmain::Configurable {
 public:
  explicit Core(std::string role) : role_(std::move(role)) {}

  absl::Status Configure(const pluginmain::CoreConfig& core, absl::string_view hcl) override;
  absl::Status Validate(const pluginmain::CoreConfig& core, absl::string_view hcl) override;

  // Store: FAILED_PRECONDITION "not configured" before the first successful Configure.
  absl::StatusOr<std::shared_ptr<KeyStore>> Store() const;

  absl::StatusOr<PublicKeyInfo> GenerateKey(const std::string& id, int key_type);
  absl::StatusOr<PublicKeyInfo> GetPublicKey(const std::string& id);
  absl::StatusOr<std::vector<PublicKeyInfo>> GetPublicKeys();
  // SignData: `pss` selects RSA-PSS with `salt` (Go semantics) and `hash` from the PSS options;
  // otherwise `hash` is the plain hash_algorithm. hash 0 = missing signer options.
  absl::StatusOr<Signature> SignData(const std::string& id, ByteSpan digest, int hash, bool pss,
                                     int salt);

 private:
  const std::string role_;
  mutable std::mutex mu_;
  std::shared_ptr<const Config> config_;  // guarded by mu_
  std::shared_ptr<KeyStore> store_;       // guarded by mu_
};

}  // namespace hwid::keymanager

#endif  // HWID_ATTESTOR_PLUGIN_KEYMANAGER_CORE_H_
