// The hwid provider entry point: OSSL_provider_init, the provider's own parameters, the reason
// string table and teardown.
#include "provider/provider.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "provider/tpm_backend.h"
#ifdef HWID_WITH_PKCS11
#include "provider/pkcs11_backend.h"
#endif
#include "tpm/tpm.h"

namespace hwid::provider {
namespace {

constexpr char kVersion[] = "0.1.0";

const OSSL_ITEM kReasonStrings[] = {
    {kReasonTpmUnavailable, const_cast<char*>("TPM unreachable")},
    {kReasonBadKeyFile, const_cast<char*>("bad TPM key file")},
    {kReasonKeyLoadFailed, const_cast<char*>("TPM key load failed")},
    {kReasonAuthFailed, const_cast<char*>("TPM authorization failed")},
    {kReasonSignFailed, const_cast<char*>("TPM signing failed")},
    {kReasonPrivateExportRefused,
     const_cast<char*>("private key export refused (the key never leaves the TPM)")},
    {kReasonUnsupported, const_cast<char*>("unsupported by the hwid provider")},
    {kReasonInvalidArgument, const_cast<char*>("invalid argument")},
    {kReasonPssSaltUnsupported, const_cast<char*>("RSA-PSS salt length not supported by the TPM")},
    {kReasonNoPrivateKey, const_cast<char*>("key has no private part in the TPM")},
    {kReasonTpmResources, const_cast<char*>("TPM out of resources")},
    {kReasonKeyGenFailed, const_cast<char*>("TPM key generation failed")},
    {kReasonInternal, const_cast<char*>("internal error")},
    {kReasonTokenUnavailable, const_cast<char*>("PKCS#11 module or token unavailable")},
    {kReasonBadUriFile, const_cast<char*>("bad PKCS#11 URI or URI key file")},
    {kReasonTokenKeyLoadFailed, const_cast<char*>("PKCS#11 key load failed")},
    {kReasonTokenLoginFailed, const_cast<char*>("PKCS#11 login failed")},
    {kReasonTokenSignFailed, const_cast<char*>("PKCS#11 signing failed")},
    {0, nullptr},
};

const OSSL_PARAM kGettableParams[] = {
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, nullptr, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, nullptr, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_BUILDINFO, OSSL_PARAM_UTF8_PTR, nullptr, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, nullptr, 0),
    OSSL_PARAM_DEFN("hwid-tcti", OSSL_PARAM_UTF8_PTR, nullptr, 0),
    OSSL_PARAM_DEFN("hwid-tpm-commands", OSSL_PARAM_UNSIGNED_INTEGER, nullptr, 0),
    OSSL_PARAM_DEFN("hwid-signatures", OSSL_PARAM_UNSIGNED_INTEGER, nullptr, 0),
    OSSL_PARAM_DEFN("hwid-pkcs11-calls", OSSL_PARAM_UNSIGNED_INTEGER, nullptr, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM* ProvGettableParams(void*) { return kGettableParams; }

int ProvGetParams(void* vctx, OSSL_PARAM params[]) {
  auto* prov = static_cast<ProvCtx*>(vctx);
  return Guard(prov, 0, [&]() {
    OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != nullptr &&
        OSSL_PARAM_set_utf8_ptr(p, "hwid TPM 2.0 and PKCS#11 key provider") != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, kVersion) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, kVersion) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != nullptr && OSSL_PARAM_set_int(p, 1) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, "hwid-tcti");
    if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, prov->tcti.c_str()) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, "hwid-tpm-commands");
    if (p != nullptr && OSSL_PARAM_set_uint64(p, prov->backend->CommandCount()) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, "hwid-pkcs11-calls");
    if (p != nullptr &&
        OSSL_PARAM_set_uint64(p, prov->pkcs11 ? prov->pkcs11->CommandCount() : 0) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, "hwid-signatures");
    if (p != nullptr && OSSL_PARAM_set_uint64(p, prov->signatures.load()) != 1) {
      return 0;
    }
    return 1;
  });
}

const OSSL_ALGORITHM* ProvQueryOperation(void*, int operation_id, int* no_cache) {
  *no_cache = 0;
  switch (operation_id) {
    case OSSL_OP_KEYMGMT:
      return kKeymgmtAlgorithms;
    case OSSL_OP_SIGNATURE:
      return kSignatureAlgorithms;
    case OSSL_OP_STORE:
      return kStoreAlgorithms;
    case OSSL_OP_DECODER:
      return kDecoderAlgorithms;
    case OSSL_OP_ENCODER:
      return kEncoderAlgorithms;
    default:
      return nullptr;  // digests, ciphers, RNG, key exchange stay in software providers
  }
}

const OSSL_ITEM* ProvReasonStrings(void*) { return kReasonStrings; }

void ProvTeardown(void* vctx) {
  auto* prov = static_cast<ProvCtx*>(vctx);
  Guard(prov, 0, [&]() {
    const char* stats = std::getenv("HWID_PROVIDER_STATS");
    if (stats != nullptr && stats[0] != '\0' && stats[0] != '0') {
      const uint64_t total = prov->backend->CommandCount();
      const uint64_t before = prov->commands_before_first_signature.load();
      std::fprintf(stderr,
                   "hwid-provider-stats: pid=%ld tpm_commands=%llu setup_commands=%llu "
                   "signatures=%llu\n",
                   static_cast<long>(getpid()), static_cast<unsigned long long>(total),
                   static_cast<unsigned long long>(before == UINT64_MAX ? total : before),
                   static_cast<unsigned long long>(prov->signatures.load()));
    }
    prov->backend->UnloadAll();
    if (prov->pkcs11) {
      prov->pkcs11->UnloadAll();
    }
    return 0;
  });
  // Keys still referenced by the application keep the TPM connection alive (shared) and their
  // public keys live in prov->libctx, so the library context is only freed when no key is left.
  OSSL_PROVIDER_unload(prov->default_provider);
  prov->backend.reset();
  prov->pkcs11.reset();
  OSSL_LIB_CTX_free(prov->libctx);
  delete prov;
}

const OSSL_DISPATCH kProviderDispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, reinterpret_cast<void (*)()>(ProvTeardown)},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(ProvGettableParams)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, reinterpret_cast<void (*)()>(ProvGetParams)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<void (*)()>(ProvQueryOperation)},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, reinterpret_cast<void (*)()>(ProvReasonStrings)},
    {0, nullptr},
};

}  // namespace

void Debug(const char* fmt, ...) {
  static const bool enabled = [] {
    const char* e = std::getenv("HWID_PROVIDER_DEBUG");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  if (!enabled) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "hwid-provider[%ld]: ", static_cast<long>(getpid()));
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

void RaiseError(const ProvCtx* prov, int reason, const char* fmt, ...) {
  if (prov == nullptr || prov->core_new_error == nullptr || prov->core_vset_error == nullptr) {
    return;
  }
  prov->core_new_error(prov->handle);
  if (prov->core_set_error_debug != nullptr) {
    prov->core_set_error_debug(prov->handle, "hwid", 0, "hwid");
  }
  va_list ap;
  va_start(ap, fmt);
  prov->core_vset_error(prov->handle, static_cast<uint32_t>(reason), fmt, ap);
  va_end(ap);
}

Backend* BackendForScheme(const ProvCtx* prov, absl::string_view scheme) {
  if (prov->backend && scheme == prov->backend->Scheme()) {
    return prov->backend.get();
  }
  if (prov->pkcs11 && scheme == prov->pkcs11->Scheme()) {
    return prov->pkcs11.get();
  }
  return nullptr;
}

void RaiseStatus(const ProvCtx* prov, int fallback, const char* what, const absl::Status& s,
                 Device device) {
  int reason = fallback;
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
      reason = kReasonTpmUnavailable;
      break;
    case absl::StatusCode::kPermissionDenied:
      reason = kReasonAuthFailed;
      break;
    case absl::StatusCode::kResourceExhausted:
      reason = kReasonTpmResources;
      break;
    default:
      break;
  }
  if (device == Device::kPkcs11) {
    switch (reason) {
      case kReasonTpmUnavailable:
        reason = kReasonTokenUnavailable;
        break;
      case kReasonBadKeyFile:
        reason = kReasonBadUriFile;
        break;
      case kReasonKeyLoadFailed:
        reason = kReasonTokenKeyLoadFailed;
        break;
      case kReasonAuthFailed:
        reason = kReasonTokenLoginFailed;
        break;
      case kReasonSignFailed:
        reason = kReasonTokenSignFailed;
        break;
      default:
        break;
    }
  }
  // OpenSSL 3.0 drops an error's whole text when it exceeds ERR_MAX_DATA_SIZE (1024): keep the
  // start (operation, object, code) and the end (the hint) of a long message.
  std::string msg = absl::StrCat(what, ": ", s.message());
  if (msg.size() > 1000) {
    msg = absl::StrCat(msg.substr(0, 330), " [...] ", msg.substr(msg.size() - 660));
  }
  RaiseError(prov, reason, "%s", msg.c_str());
}

void NoteSignature(ProvCtx* prov) {
  if (prov->signatures.fetch_add(1) == 0) {
    // Commands before the first signature: provider setup, key load, self-test (minus this Sign).
    const uint64_t c = prov->backend->CommandCount();
    prov->commands_before_first_signature.store(c > 0 ? c - 1 : 0);
  }
}

const char* KeymgmtName(KeyType type) { return type == KeyType::kEc ? "EC" : "RSA"; }

}  // namespace hwid::provider

extern "C" __attribute__((visibility("default"))) int OSSL_provider_init(
    const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH* in, const OSSL_DISPATCH** out,
    void** provctx) {
  using hwid::provider::ProvCtx;
  auto prov = std::make_unique<ProvCtx>();
  prov->handle = handle;
  OSSL_FUNC_core_get_params_fn* core_get_params = nullptr;
  for (const OSSL_DISPATCH* d = in; d != nullptr && d->function_id != 0; ++d) {
    switch (d->function_id) {
      case OSSL_FUNC_CORE_GET_PARAMS:
        core_get_params = OSSL_FUNC_core_get_params(d);
        break;
      case OSSL_FUNC_CORE_NEW_ERROR:
        prov->core_new_error = OSSL_FUNC_core_new_error(d);
        break;
      case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
        prov->core_set_error_debug = OSSL_FUNC_core_set_error_debug(d);
        break;
      case OSSL_FUNC_CORE_VSET_ERROR:
        prov->core_vset_error = OSSL_FUNC_core_vset_error(d);
        break;
      default:
        break;
    }
  }
  // TCTI: the provider section's "tcti" (openssl.cnf) wins, then $HWID_TCTI, then
  // device:/dev/tpmrm0.
  // PKCS#11: the URI's module-path / pin-source, then $HWID_PKCS11_MODULE / $HWID_PKCS11_PIN, then
  // "pkcs11-module-path" / "pkcs11-pin-source" here (a PIN file, never a PIN in openssl.cnf).
  [[maybe_unused]] std::string pkcs11_module;
  [[maybe_unused]] std::string pkcs11_pin_source;
  if (core_get_params != nullptr) {
    char* tcti = nullptr;
    char* module = nullptr;
    char* pin_source = nullptr;
    OSSL_PARAM p[] = {OSSL_PARAM_utf8_ptr("tcti", &tcti, 0),
                      OSSL_PARAM_utf8_ptr("pkcs11-module-path", &module, 0),
                      OSSL_PARAM_utf8_ptr("pkcs11-pin-source", &pin_source, 0), OSSL_PARAM_END};
    if (core_get_params(handle, p) == 1) {
      if (tcti != nullptr) {
        prov->tcti = tcti;
      }
      if (module != nullptr) {
        pkcs11_module = module;
      }
      if (pin_source != nullptr) {
        pkcs11_pin_source = pin_source;
      }
    }
  }
  prov->libctx = OSSL_LIB_CTX_new_from_dispatch(handle, in);
  if (prov->libctx == nullptr) {
    hwid::provider::RaiseError(prov.get(), hwid::provider::kReasonInternal,
                               "cannot create the provider's library context");
    return 0;
  }
  prov->default_provider = OSSL_PROVIDER_load(prov->libctx, "default");
  if (prov->default_provider == nullptr) {
    hwid::provider::RaiseError(prov.get(), hwid::provider::kReasonInternal,
                               "cannot load OpenSSL's default provider into hwid's library context");
    OSSL_LIB_CTX_free(prov->libctx);
    return 0;
  }
  absl::StatusOr<std::unique_ptr<hwid::provider::TpmBackend>> backend =
      hwid::provider::TpmBackend::New(prov->libctx, prov->tcti);
  if (!backend.ok()) {
    hwid::provider::RaiseStatus(prov.get(), hwid::provider::kReasonInternal, "hwid provider init",
                                backend.status());
    OSSL_PROVIDER_unload(prov->default_provider);
    OSSL_LIB_CTX_free(prov->libctx);
    return 0;
  }
  if (prov->tcti.empty()) {
    prov->tcti = hwid::tpm::DefaultTcti();
  }
  prov->backend = std::move(*backend);
#ifdef HWID_WITH_PKCS11
  prov->pkcs11 = std::make_unique<hwid::provider::Pkcs11Backend>(
      prov->libctx, hwid::provider::Pkcs11Config{pkcs11_module, pkcs11_pin_source});
#endif
  *out = hwid::provider::kProviderDispatch;
  *provctx = prov.release();
  return 1;
}
