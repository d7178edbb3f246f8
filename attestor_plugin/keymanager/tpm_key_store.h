// TpmKeyStore: SPIRE keys in a TPM. Each key is a TPM-wrapped blob under the owner-hierarchy
// storage primary, kept as one TSS2 PRIVATE KEY file per key id in `key_dir` (written
// atomically: temp file, fsync, rename, fsync of the directory). The private key never exists
// outside the TPM; the file is useless on another TPM.
//
// Sharing the TPM: the store holds no object slot between calls (tpm::SlotFreeKey: saved
// context, load-sign-flush), waits with backoff while other processes hold every slot, and
// reopens the TPM connection after it failed (device gone and back).
#ifndef HWID_ATTESTOR_PLUGIN_KEYMANAGER_TPM_KEY_STORE_H_
#define HWID_ATTESTOR_PLUGIN_KEYMANAGER_TPM_KEY_STORE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/time/time.h"
#include "attestor_plugin/keymanager/key_store.h"
#include "common/ossl.h"
#include "tpm/tpm.h"

namespace hwid::keymanager {

// KeyFileName maps a key id to its file name in key_dir: [A-Za-z0-9_-] kept, every other byte
// as %XX, then ".tss2.pem" ("agent-svid-A" -> "agent-svid-A.tss2.pem"). KeyIdFromFileName is
// the inverse; nullopt for names that are not key files (temp files, foreign files).
std::string KeyFileName(absl::string_view id);
std::optional<std::string> KeyIdFromFileName(absl::string_view name);


class TpmKeyStore final : public KeyStore {
 public:
  struct Options {
    std::string tcti;     // "" = device:/dev/tpmrm0 ($HWID_TCTI)
    std::string key_dir;  // created (0700) when missing
    // How long one call waits for a free TPM object slot before UNAVAILABLE.
    absl::Duration slot_wait = absl::Seconds(10);
  };

  // Open checks key_dir (creates it, must be a writable directory: FAILED_PRECONDITION
  // otherwise) and tries the TPM; an unreachable TPM is not an error here (`device_status`
  // says so and each call retries).
  static absl::StatusOr<std::unique_ptr<TpmKeyStore>> Open(Options options);

  std::string Describe() const override;
  absl::StatusOr<PublicKeyInfo> Generate(const std::string& id, KeyAlg alg) override;
  absl::StatusOr<PublicKeyInfo> Get(const std::string& id) override;
  absl::StatusOr<std::vector<PublicKeyInfo>> List() override;
  absl::StatusOr<Signature> Sign(const std::string& id, ByteSpan digest,
                                 const SignRequest& request) override;
  uint64_t CommandCount() override;

  // device_status: OK when the TPM answered the last time it was asked.
  absl::Status device_status();

 private:
  struct Entry {
    PublicKeyInfo info;
    Bytes file;  // the key file as on disk (to notice a replaced file)
    OsslPtr<EVP_PKEY> public_key;  // converted once (the RSA-PSS salt check verifies with it)
    std::mutex mu;  // one signature at a time per key (SlotFreeKey is mutable state)
    tpm::SlotFreeKey key;
  };

  explicit TpmKeyStore(Options options) : options_(std::move(options)) {}
  absl::StatusOr<std::shared_ptr<tpm::Tpm>> Device();
  // Check: when `st` says the TPM is unreachable, forget the connection so the next call
  // reopens it. Returns `st`.
  absl::Status Check(const std::shared_ptr<tpm::Tpm>& tpm, absl::Status st);
  // Load reads key `id` from key_dir (NOT_FOUND when absent) and caches it.
  absl::StatusOr<std::shared_ptr<Entry>> Load(const std::string& id);
  static absl::StatusOr<std::shared_ptr<Entry>> Parse(const std::string& id, Bytes file);

  const Options options_;
  std::mutex mu_;
  std::shared_ptr<tpm::Tpm> tpm_;                          // guarded by mu_
  absl::Status last_device_status_;                        // guarded by mu_
  uint64_t retired_commands_ = 0;                          // guarded by mu_
  std::map<std::string, std::shared_ptr<Entry>> cache_;  // guarded by mu_
};

}  // namespace hwid::keymanager

#endif  // HWID_ATTESTOR_PLUGIN_KEYMANAGER_TPM_KEY_STORE_H_
