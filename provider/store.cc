// STORE "handle": keys persisted in the TPM, addressed as handle:0x81xxxxxx (the form tpm2-openssl
// writes). A "?pass" suffix asks the application's passphrase callback for the key's
// authorization value. Key files are read by the default/base provider's file: store with hwid's
// decoder.
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "provider/io.h"
#include "provider/provider.h"
#include "tpm/tpm.h"

namespace hwid::provider {
namespace {

struct StoreCtx {
  ProvCtx* prov;
  uint32_t handle;
  bool ask_pass;
  int expect = 0;
  bool done = false;
};

void* Open(void* provctx, const char* uri) {
  auto* prov = static_cast<ProvCtx*>(provctx);
  return Guard<void*>(prov, nullptr, [&]() -> void* {
    absl::string_view u(uri);
    if (!absl::ConsumePrefix(&u, "handle:")) {
      return nullptr;
    }
    bool ask_pass = false;
    if (absl::ConsumeSuffix(&u, "?pass")) {
      ask_pass = true;
    }
    absl::StatusOr<uint32_t> h = tpm::ParseHandle(u);
    if (!h.ok()) {
      RaiseStatus(prov, kReasonInvalidArgument, "key URI", h.status());
      return nullptr;
    }
    return new StoreCtx{prov, *h, ask_pass};
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
    SecureBytes auth;
    if (c->ask_pass) {
      auth = AskPassphrase(pw_cb, pw_cbarg, "TPM key authorization value");
    }
    absl::StatusOr<std::shared_ptr<Key>> key = c->prov->backend->LoadHandle(c->handle, AsSpan(auth));
    if (!key.ok()) {
      RaiseStatus(c->prov, kReasonKeyLoadFailed,
                  absl::StrCat("loading handle:", tpm::FormatHandle(c->handle)).c_str(),
                  key.status());
      return 0;
    }
    return PassKeyReference(std::move(*key), c->prov, object_cb, object_cbarg);
  });
}

int Eof(void* vctx) { return static_cast<StoreCtx*>(vctx)->done ? 1 : 0; }

int Close(void* vctx) {
  delete static_cast<StoreCtx*>(vctx);
  return 1;
}

int ExportObject(void*, const void*, size_t, OSSL_CALLBACK*, void*) { return 0; }

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}
const OSSL_DISPATCH kHandleStore[] = {
    FN(OSSL_FUNC_STORE_OPEN, Open),
    FN(OSSL_FUNC_STORE_ATTACH, Attach),
    FN(OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, SettableCtxParams),
    FN(OSSL_FUNC_STORE_SET_CTX_PARAMS, SetCtxParams),
    FN(OSSL_FUNC_STORE_LOAD, Load),
    FN(OSSL_FUNC_STORE_EOF, Eof),
    FN(OSSL_FUNC_STORE_CLOSE, Close),
    FN(OSSL_FUNC_STORE_EXPORT_OBJECT, ExportObject),
    {0, nullptr},
};

}  // namespace

const OSSL_ALGORITHM kStoreAlgorithms[] = {
    {"handle", "provider=hwid", kHandleStore, "TPM persistent keys (handle:0x81xxxxxx)"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
