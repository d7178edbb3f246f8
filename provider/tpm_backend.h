// TpmBackend: the provider's Backend over hwid::tpm (no ESAPI here).
//
// Key lifecycle (no resource manager needed): a key is loaded into the TPM when it is decoded
// (which proves it belongs to this TPM) and stays loaded, so a signature is exactly one TPM2_Sign.
// Every live key is registered process-wide; provider teardown, OPENSSL_cleanup and a static
// destructor that runs at exit()/dlclose flush every loaded key, so a process that exits without
// freeing its EVP_PKEY leaves no transient object behind. (A process killed by a signal cannot run
// any code; without a resource manager its objects stay until TPM2_Startup(CLEAR) or a flush.)
// When the TPM is out of object slots (swtpm has 3), the backend unloads this process' other keys
// and retries; unloaded keys reload transparently on their next signature.
//
// Fork: the connection records the pid that opened it; in a child the first use opens a new
// connection, abandons (never flushes) the parent's objects and reloads keys on demand.
// TPM restart: tpm::Tpm::Sign reloads a transient key whose handle vanished.
#ifndef HWID_PROVIDER_TPM_BACKEND_H_
#define HWID_PROVIDER_TPM_BACKEND_H_

#include <openssl/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "provider/backend.h"
#include "tpm/wire/keyfile.h"

namespace hwid::provider {

class TpmDevice;

class TpmBackend : public Backend {
 public:
  // New makes a backend for the TPM named by `tcti` ("" => $HWID_TCTI, else device:/dev/tpmrm0).
  // The TPM is not contacted until the first key operation. `libctx` (not owned, must outlive
  // the backend's keys) is where public keys are created; it must have the default provider.
  static absl::StatusOr<std::unique_ptr<TpmBackend>> New(OSSL_LIB_CTX* libctx, std::string tcti);
  ~TpmBackend() override;

  Device device() const override { return Device::kTpm; }
  const char* Scheme() const override { return "handle"; }
  // LoadUri serves handle:0x81xxxxxx; a "?pass" suffix asks for the key's authorization value.
  absl::StatusOr<std::shared_ptr<Key>> LoadUri(absl::string_view uri,
                                               const PassphraseFn& ask) override;
  absl::StatusOr<std::shared_ptr<Key>> LoadKeyFile(ByteSpan pem_or_der, ByteSpan auth) override;
  absl::StatusOr<bool> KeyFileNeedsAuth(ByteSpan pem_or_der) override;
  absl::StatusOr<std::shared_ptr<Key>> LoadHandle(uint32_t handle, ByteSpan auth) override;
  absl::StatusOr<std::shared_ptr<Key>> Generate(KeyAlg alg, ByteSpan auth) override;
  uint64_t CommandCount() override;
  void UnloadAll() override;

 private:
  TpmBackend(OSSL_LIB_CTX* libctx, std::shared_ptr<TpmDevice> device);
  absl::StatusOr<std::shared_ptr<Key>> LoadPersistentKeyFile(wire::TpmKeyFile file, ByteSpan auth);
  OSSL_LIB_CTX* libctx_;
  std::shared_ptr<TpmDevice> device_;
};

// UnloadAllTpmKeys flushes every loaded key of every backend in this process (used at exit).
void UnloadAllTpmKeys();

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_TPM_BACKEND_H_
