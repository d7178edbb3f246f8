// Internals shared by the operation files of the hwid OpenSSL provider module: the provider
// context, the key object every operation passes around, error reporting (a Status becomes one
// OpenSSL error with a reason from a small stable table), and the dispatch tables.
#ifndef HWID_PROVIDER_PROVIDER_H_
#define HWID_PROVIDER_PROVIDER_H_

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/ossl.h"
#include "provider/backend.h"

namespace hwid::provider {

// Reason codes of the errors the provider raises (stable: documented in docs/provider.md).
enum Reason : int {
  kReasonTpmUnavailable = 1,
  kReasonBadKeyFile = 2,
  kReasonKeyLoadFailed = 3,
  kReasonAuthFailed = 4,
  kReasonSignFailed = 5,
  kReasonPrivateExportRefused = 6,
  kReasonUnsupported = 7,
  kReasonInvalidArgument = 8,
  kReasonPssSaltUnsupported = 9,
  kReasonNoPrivateKey = 10,
  kReasonTpmResources = 11,
  kReasonKeyGenFailed = 12,
  kReasonInternal = 13,
  // The same failures for PKCS#11 token keys (RaiseStatus with Device::kPkcs11 maps 1-5 here).
  kReasonTokenUnavailable = 14,
  kReasonBadUriFile = 15,
  kReasonTokenKeyLoadFailed = 16,
  kReasonTokenLoginFailed = 17,
  kReasonTokenSignFailed = 18,
};

struct ProvCtx {
  const OSSL_CORE_HANDLE* handle = nullptr;
  // Our own library context (BIO upcalls to the core) with OpenSSL's default provider loaded:
  // all software crypto (hashing, public keys, verification) happens here.
  OSSL_LIB_CTX* libctx = nullptr;
  OSSL_PROVIDER* default_provider = nullptr;
  std::unique_ptr<Backend> backend;  // the TPM
  std::unique_ptr<Backend> pkcs11;   // PKCS#11 tokens; null when built without the pkcs11 layer
  std::string tcti;
  OSSL_FUNC_core_new_error_fn* core_new_error = nullptr;
  OSSL_FUNC_core_set_error_debug_fn* core_set_error_debug = nullptr;
  OSSL_FUNC_core_vset_error_fn* core_vset_error = nullptr;
  std::atomic<uint64_t> signatures{0};
  std::atomic<uint64_t> commands_before_first_signature{UINT64_MAX};
};

constexpr uint64_t kProvKeyMagic = 0x68776964'6b657931ULL;  // "hwidkey1"

// A key as OpenSSL's EVP_PKEY sees it (keymgmt "keydata"). `priv` is null for public-only keys
// made by import (e.g. a certificate's key compared with ours); such keys never sign.
struct ProvKey {
  uint64_t magic = kProvKeyMagic;
  ProvCtx* prov = nullptr;
  KeyType type = KeyType::kEc;
  std::shared_ptr<Key> priv;
  OsslPtr<EVP_PKEY> pub;  // in prov->libctx; null for an empty key from new()
};


// Debug prints a line to stderr when HWID_PROVIDER_DEBUG is set (never secrets).
void Debug(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// RaiseError adds one error to the calling thread's OpenSSL error queue, attributed to this
// provider, with `reason` and a printf-style message.
void RaiseError(const ProvCtx* prov, int reason, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
// RaiseStatus raises `s` (not OK): the reason follows the status code (Unavailable ->
// kReasonTpmUnavailable, PermissionDenied -> kReasonAuthFailed, ResourceExhausted ->
// kReasonTpmResources), else `fallback`; for Device::kPkcs11 the TPM reasons 1-5 become their
// PKCS#11 counterparts 14-18. The message is "<what>: <status message>".
void RaiseStatus(const ProvCtx* prov, int fallback, const char* what, const absl::Status& s,
                 Device device = Device::kTpm);

// BackendForScheme returns the backend serving a store URI scheme ("handle", "pkcs11"), or null.
Backend* BackendForScheme(const ProvCtx* prov, absl::string_view scheme);

// NoteSignature counts a signature for the statistics line (HWID_PROVIDER_STATS).
void NoteSignature(ProvCtx* prov);

// Algorithm tables, one per operation file.
extern const OSSL_ALGORITHM kKeymgmtAlgorithms[];
extern const OSSL_ALGORITHM kSignatureAlgorithms[];
extern const OSSL_ALGORITHM kStoreAlgorithms[];
extern const OSSL_ALGORITHM kDecoderAlgorithms[];
extern const OSSL_ALGORITHM kEncoderAlgorithms[];

// KeymgmtName is the keymgmt name OpenSSL uses for a key type ("EC", "RSA").
const char* KeymgmtName(KeyType type);

// Guard runs `body` and turns any C++ exception into an internal OpenSSL error and `fail`: no
// exception crosses a dispatch function.
template <typename R, typename F>
R Guard(const ProvCtx* prov, R fail, F&& body) noexcept {
  try {
    return body();
  } catch (...) {
    RaiseError(prov, kReasonInternal, "internal error (exception) in the hwid provider");
    return fail;
  }
}

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_PROVIDER_H_
