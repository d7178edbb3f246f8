// STORE "handle" and "pkcs11": keys addressed by URI instead of by file.
//   handle:0x81xxxxxx[?pass]   a persistent TPM key (the form tpm2-openssl writes); "?pass" asks the
//                              application's passphrase callback for its authorization value.
//   pkcs11:token=..;object=..  a private key on a PKCS#11 token (RFC 7512); the PIN comes from the
//                              URI, the environment, openssl.cnf or the passphrase callback.
// Both schemes go through the same Backend interface; key files are read by the default/base
// provider's file: store with hwid's decoder.
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "provider/io.h"
#include "provider/provider.h"

namespace hwid::provider {
namespace {

struct StoreCtx {
  ProvCtx* prov;
  Backend* backend;
  std::string uri;
  int expect = 0;
  bool done = false;
};

// RedactUri drops everything after "pin-value=" up to the next ';'/'&' for messages.
std::string RedactUri(absl::string_view uri) {
  std::string out(uri);
  size_t pos = out.find("pin-value=");
  while (pos != std::string::npos) {
    const size_t start = pos + 10;
    const size_t end = out.find_first_of(";&", start);
    out.replace(start, (end == std::string::npos ? out.size() : end) - start, "***");
    pos = out.find("pin-value=", start);
  }
  return out;
}

template <const char* kScheme>
void* Open(void* provctx, const char* uri) {
  auto* prov = static_cast<ProvCtx*>(provctx);
  return Guard<void*>(prov, nullptr, [&]() -> void* {
    Backend* backend = BackendForScheme(prov, kScheme);
    absl::string_view u(uri);
    if (backend == nullptr || u.substr(0, u.find(':')) != kScheme) {
      return nullptr;
    }
    return new StoreCtx{prov, backend, std::string(u)};
  });
}

void* Attach(void*, OSSL_CORE_BIO*) { return nullptr; }

const OSSL_PARAM kSettable[] = {
    OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, nullptr),
    OSSL_PARAM_END,
};
const OSSL_PARAM* SettableCtxParams(void*) { return kSettable; }

int SetCtxParams(void* vctx, const OSSL_PARAM params[]) {
  auto* c = static_cast<StoreCtx*>(vctx);
  const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
  if (p != nullptr && OSSL_PARAM_get_int(p, &c->expect) != 1) {
    return 0;
  }
  return 1;
}

int Load(void* vctx, OSSL_CALLBACK* object_cb, void* object_cbarg,
         OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_cbarg) {
  auto* c = static_cast<StoreCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    c->done = true;
    if (c->expect != 0 && c->expect != OSSL_STORE_INFO_PKEY) {
      return 0;
    }
    const bool tpm = c->backend->device() == Device::kTpm;
    PassphraseFn ask = [&]() {
      return AskPassphrase(pw_cb, pw_cbarg,
                           tpm ? "TPM key authorization value" : "PKCS#11 token user PIN");
    };
    absl::StatusOr<std::shared_ptr<Key>> key = c->backend->LoadUri(c->uri, ask);
    if (!key.ok()) {
      const int reason = absl::IsInvalidArgument(key.status())
                             ? (tpm ? kReasonInvalidArgument : kReasonBadUriFile)
                             : kReasonKeyLoadFailed;
      RaiseStatus(c->prov, reason, absl::StrCat("loading ", RedactUri(c->uri)).c_str(),
                  key.status(), c->backend->device());
      return 0;
    }
    // Activation happens in the keymgmt's load(), inside OpenSSL's STORE, which drops its
    // errors: raise it again here (io.h, RaiseKeyLoadError).
    ForgetKeyLoadError();
    const int r = PassKeyReference(std::move(*key), c->prov, object_cb, object_cbarg);
    if (r == 0) {
      RaisePendingKeyLoadError();
    }
    ForgetKeyLoadError();
    return r;
  });
}

int Eof(void* vctx) { return static_cast<StoreCtx*>(vctx)->done ? 1 : 0; }

int Close(void* vctx) {
  delete static_cast<StoreCtx*>(vctx);
  return 1;
}

int ExportObject(void*, const void*, size_t, OSSL_CALLBACK*, void*) { return 0; }

constexpr char kHandle[] = "handle";
#ifdef HWID_WITH_PKCS11
constexpr char kPkcs11[] = "pkcs11";
#endif

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}
#define STORE(name, scheme)                                              \
  const OSSL_DISPATCH name[] = {                                         \
      FN(OSSL_FUNC_STORE_OPEN, Open<scheme>),                            \
      FN(OSSL_FUNC_STORE_ATTACH, Attach),                                \
      FN(OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, SettableCtxParams),        \
      FN(OSSL_FUNC_STORE_SET_CTX_PARAMS, SetCtxParams),                  \
      FN(OSSL_FUNC_STORE_LOAD, Load),                                    \
      FN(OSSL_FUNC_STORE_EOF, Eof),                                      \
      FN(OSSL_FUNC_STORE_CLOSE, Close),                                  \
      FN(OSSL_FUNC_STORE_EXPORT_OBJECT, ExportObject),                   \
      {0, nullptr},                                                      \
  }
STORE(kHandleStore, kHandle);
#ifdef HWID_WITH_PKCS11
STORE(kPkcs11Store, kPkcs11);
#endif

}  // namespace

const OSSL_ALGORITHM kStoreAlgorithms[] = {
    {"handle", "provider=hwid", kHandleStore, "TPM persistent keys (handle:0x81xxxxxx)"},
#ifdef HWID_WITH_PKCS11
    {"pkcs11", "provider=hwid", kPkcs11Store, "PKCS#11 token keys (RFC 7512 pkcs11: URIs)"},
#endif
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
