// KEYMGMT "EC" and "RSA": key objects whose private half lives in the backend. Public parts
// import and export (certificate keys are imported to compare them with ours); private export is
// refused, so OpenSSL can never sign with a public-only copy in another provider.
#include <openssl/core_names.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "provider/io.h"
#include "provider/provider.h"

namespace hwid::provider {
namespace {

struct GenCtx {
  ProvCtx* prov;
  KeyType type;
  KeyAlg alg;
  SecureBytes auth;
};

ProvKey* NewKey(ProvCtx* prov, KeyType type) {
  auto* k = new ProvKey;
  k->prov = prov;
  k->type = type;
  return k;
}

void* EcNew(void* provctx) {
  auto* prov = static_cast<ProvCtx*>(provctx);
  return Guard<void*>(prov, nullptr, [&]() -> void* { return NewKey(prov, KeyType::kEc); });
}
void* RsaNew(void* provctx) {
  auto* prov = static_cast<ProvCtx*>(provctx);
  return Guard<void*>(prov, nullptr, [&]() -> void* { return NewKey(prov, KeyType::kRsa); });
}

void KeyFree(void* keydata) { delete static_cast<ProvKey*>(keydata); }

int KeyHas(const void* keydata, int selection) {
  const auto* k = static_cast<const ProvKey*>(keydata);
  if (k == nullptr) {
    return 0;
  }
  if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && k->priv == nullptr) {
    return 0;
  }
  if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) != 0 &&
      k->pub == nullptr) {
    return 0;
  }
  return 1;
}

int KeyMatch(const void* a, const void* b, int) {
  const auto* ka = static_cast<const ProvKey*>(a);
  const auto* kb = static_cast<const ProvKey*>(b);
  if (ka == nullptr || kb == nullptr || ka->pub == nullptr || kb->pub == nullptr) {
    return 0;
  }
  // Private halves cannot be compared; equal public keys identify the same key pair.
  return EVP_PKEY_eq(ka->pub.get(), kb->pub.get()) == 1 ? 1 : 0;
}

bool HasPrivateParam(const OSSL_PARAM params[]) {
  return OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PRIV_KEY) != nullptr ||
         OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_D) != nullptr;
}

int KeyImport(void* keydata, int selection, const OSSL_PARAM params[]) {
  auto* k = static_cast<ProvKey*>(keydata);
  return Guard(k->prov, 0, [&]() {
    if (k->priv != nullptr || k->pub != nullptr) {
      RaiseError(k->prov, kReasonUnsupported, "import into an existing hwid key");
      return 0;
    }
    if (HasPrivateParam(params)) {
      RaiseError(k->prov, kReasonUnsupported,
                 "hwid does not import software private keys; create the key in the TPM "
                 "(openssl genpkey -propquery provider=hwid) or import it with tpm2_import");
      return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0) {
      return 0;
    }
    OsslPtr<EVP_PKEY_CTX> ctx(
        EVP_PKEY_CTX_new_from_name(k->prov->libctx, KeymgmtName(k->type), nullptr));
    EVP_PKEY* pkey = nullptr;
    if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
        EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY,
                          const_cast<OSSL_PARAM*>(params)) != 1) {
      RaiseError(k->prov, kReasonInvalidArgument, "importing a public %s key failed",
                 KeymgmtName(k->type));
      return 0;
    }
    k->pub.reset(pkey);
    return 1;
  });
}

const OSSL_PARAM kEcPublicTypes[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kRsaPublicTypes[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM* EcTypes(int) { return kEcPublicTypes; }
const OSSL_PARAM* RsaTypes(int) { return kRsaPublicTypes; }

int KeyExport(void* keydata, int selection, OSSL_CALLBACK* cb, void* cbarg) {
  auto* k = static_cast<ProvKey*>(keydata);
  return Guard(k->prov, 0, [&]() {
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 || k->pub == nullptr) {
      // Refused without raising an error: OpenSSL probes exports while choosing a provider and
      // then falls back to this provider's own operations; a queued error would leak into
      // unrelated checks (SSL_get_error).
      return 0;
    }
    OSSL_PARAM* raw = nullptr;
    if (EVP_PKEY_todata(k->pub.get(), EVP_PKEY_PUBLIC_KEY, &raw) != 1) {
      return 0;
    }
    OsslPtr<OSSL_PARAM> params(raw);
    return cb(params.get(), cbarg);
  });
}

int KeyGetParams(void* keydata, OSSL_PARAM params[]) {
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || k->pub == nullptr) {
    return 1;
  }
  return Guard(k->prov, 0, [&]() {
    // The public key in our library context knows bits, security-bits, max-size, group,
    // default-digest, n, e, pub ...: exactly what OpenSSL's default provider reports.
    return EVP_PKEY_get_params(k->pub.get(), params) == 1 ? 1 : 0;
  });
}

const OSSL_PARAM kEcGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kRsaGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* EcGettable(void*) { return kEcGettable; }
const OSSL_PARAM* RsaGettable(void*) { return kRsaGettable; }

const char* EcOpName(int op) { return op == OSSL_OP_SIGNATURE ? "ECDSA" : nullptr; }
const char* RsaOpName(int op) { return op == OSSL_OP_SIGNATURE ? "RSA" : nullptr; }

void* KeyLoad(const void* reference, size_t reference_sz) {
  Debug("keymgmt load called, size %zu", reference_sz);
  if (reference == nullptr || reference_sz != sizeof(ProvKey*)) {
    return nullptr;
  }
  // The store/decoder passes the address of its ProvKey pointer; we take ownership of the key.
  ProvKey** ref = static_cast<ProvKey**>(const_cast<void*>(reference));
  ProvKey* k = *ref;
  if (k == nullptr || k->magic != kProvKeyMagic || k->priv == nullptr) {
    return nullptr;
  }
  return Guard<void*>(k->prov, nullptr, [&]() -> void* {
    absl::Status s = k->priv->Activate();
    Debug("keymgmt load: %s: %s", k->priv->Describe().c_str(), s.ToString().c_str());
    if (!s.ok()) {
      RaiseKeyLoadError(k->prov, kReasonKeyLoadFailed,
                        k->priv->device() == Device::kTpm ? "loading TPM key" : "loading PKCS#11 key",
                        s, k->priv->device());
      return nullptr;
    }
    ForgetKeyLoadError();
    *ref = nullptr;
    return k;
  });
}

void* KeyDup(const void* keydata, int) {
  const auto* k = static_cast<const ProvKey*>(keydata);
  return Guard<void*>(k->prov, nullptr, [&]() -> void* {
    auto* d = NewKey(k->prov, k->type);
    d->priv = k->priv;
    if (k->pub != nullptr) {
      if (EVP_PKEY_up_ref(k->pub.get()) != 1) {
        delete d;
        return nullptr;
      }
      d->pub.reset(k->pub.get());
    }
    return d;
  });
}

// --- key generation (openssl genpkey) ---

int GenSetParams(void* vgen, const OSSL_PARAM params[]) {
  auto* g = static_cast<GenCtx*>(vgen);
  return Guard(g->prov, 0, [&]() {
    const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME);
    if (p != nullptr) {
      const char* name = nullptr;
      if (OSSL_PARAM_get_utf8_string_ptr(p, &name) != 1) {
        return 0;
      }
      const std::string n(name);
      if (n == "P-256" || n == "prime256v1" || n == "secp256r1") {
        g->alg = KeyAlg::kEcP256;
      } else if (n == "P-384" || n == "secp384r1") {
        g->alg = KeyAlg::kEcP384;
      } else {
        RaiseError(g->prov, kReasonUnsupported, "EC group %s is not supported (P-256, P-384)",
                   name);
        return 0;
      }
    }
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_BITS);
    if (p != nullptr) {
      size_t bits = 0;
      if (OSSL_PARAM_get_size_t(p, &bits) != 1) {
        return 0;
      }
      if (bits == 2048) {
        g->alg = KeyAlg::kRsa2048;
      } else if (bits == 3072) {
        g->alg = KeyAlg::kRsa3072;
      } else {
        RaiseError(g->prov, kReasonUnsupported, "RSA key size %zu is not supported (2048, 3072)",
                   bits);
        return 0;
      }
    }
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_E);
    if (p != nullptr) {
      BIGNUM* e = nullptr;
      if (OSSL_PARAM_get_BN(p, &e) != 1) {
        return 0;
      }
      OsslPtr<BIGNUM> owned(e);
      if (!BN_is_word(e, 65537)) {
        RaiseError(g->prov, kReasonUnsupported, "the TPM key's public exponent is 65537");
        return 0;
      }
    }
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_PRIMES);
    if (p != nullptr) {
      size_t primes = 0;
      if (OSSL_PARAM_get_size_t(p, &primes) != 1 || primes != 2) {
        RaiseError(g->prov, kReasonUnsupported, "TPM RSA keys have 2 primes");
        return 0;
      }
    }
    p = OSSL_PARAM_locate_const(params, "user-auth");
    if (p != nullptr) {
      const char* auth = nullptr;
      if (OSSL_PARAM_get_utf8_string_ptr(p, &auth) != 1) {
        return 0;
      }
      g->auth.assign(auth, auth + std::strlen(auth));
    }
    return 1;
  });
}

const OSSL_PARAM kEcGenSettable[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_utf8_string("user-auth", nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kRsaGenSettable[] = {
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr),
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_utf8_string("user-auth", nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* EcGenSettable(void*, void*) { return kEcGenSettable; }
const OSSL_PARAM* RsaGenSettable(void*, void*) { return kRsaGenSettable; }

void* GenInit(ProvCtx* prov, KeyType type, int selection, const OSSL_PARAM params[]) {
  return Guard<void*>(prov, nullptr, [&]() -> void* {
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0) {
      RaiseError(prov, kReasonUnsupported, "hwid generates key pairs only (no domain parameters)");
      return nullptr;
    }
    auto* g = new GenCtx{prov, type, type == KeyType::kEc ? KeyAlg::kEcP256 : KeyAlg::kRsa2048,
                         {}};
    if (params != nullptr && GenSetParams(g, params) != 1) {
      delete g;
      return nullptr;
    }
    return g;
  });
}
void* EcGenInit(void* provctx, int selection, const OSSL_PARAM params[]) {
  return GenInit(static_cast<ProvCtx*>(provctx), KeyType::kEc, selection, params);
}
void* RsaGenInit(void* provctx, int selection, const OSSL_PARAM params[]) {
  return GenInit(static_cast<ProvCtx*>(provctx), KeyType::kRsa, selection, params);
}

void* Gen(void* vgen, OSSL_CALLBACK*, void*) {
  auto* g = static_cast<GenCtx*>(vgen);
  return Guard<void*>(g->prov, nullptr, [&]() -> void* {
    absl::StatusOr<std::shared_ptr<Key>> key = g->prov->backend->Generate(g->alg, AsSpan(g->auth));
    if (!key.ok()) {
      // Name how hwid came to generate: a program that meant a software key sees the fix.
      RaiseStatus(g->prov, kReasonKeyGenFailed,
                  "generating a TPM key (hwid was chosen for this key generation: by a property "
                  "query such as provider=hwid, or because hwid is activated before default and "
                  "openssl.cnf lacks 'default_properties = ?provider!=hwid', see "
                  "docs/provider.md \"Provider order\")",
                  key.status());
      return nullptr;
    }
    auto* k = NewKey(g->prov, (*key)->type());
    EVP_PKEY* pub = (*key)->public_key();
    EVP_PKEY_up_ref(pub);
    k->pub.reset(pub);
    k->priv = std::move(*key);
    return k;
  });
}

void GenCleanup(void* vgen) { delete static_cast<GenCtx*>(vgen); }

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}

const OSSL_DISPATCH kEcKeymgmt[] = {
    FN(OSSL_FUNC_KEYMGMT_NEW, EcNew),
    FN(OSSL_FUNC_KEYMGMT_FREE, KeyFree),
    FN(OSSL_FUNC_KEYMGMT_HAS, KeyHas),
    FN(OSSL_FUNC_KEYMGMT_MATCH, KeyMatch),
    FN(OSSL_FUNC_KEYMGMT_IMPORT, KeyImport),
    FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, EcTypes),
    FN(OSSL_FUNC_KEYMGMT_EXPORT, KeyExport),
    FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, EcTypes),
    FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, KeyGetParams),
    FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, EcGettable),
    FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, EcOpName),
    FN(OSSL_FUNC_KEYMGMT_LOAD, KeyLoad),
    FN(OSSL_FUNC_KEYMGMT_DUP, KeyDup),
    FN(OSSL_FUNC_KEYMGMT_GEN_INIT, EcGenInit),
    FN(OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, GenSetParams),
    FN(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, EcGenSettable),
    FN(OSSL_FUNC_KEYMGMT_GEN, Gen),
    FN(OSSL_FUNC_KEYMGMT_GEN_CLEANUP, GenCleanup),
    {0, nullptr},
};

const OSSL_DISPATCH kRsaKeymgmt[] = {
    FN(OSSL_FUNC_KEYMGMT_NEW, RsaNew),
    FN(OSSL_FUNC_KEYMGMT_FREE, KeyFree),
    FN(OSSL_FUNC_KEYMGMT_HAS, KeyHas),
    FN(OSSL_FUNC_KEYMGMT_MATCH, KeyMatch),
    FN(OSSL_FUNC_KEYMGMT_IMPORT, KeyImport),
    FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, RsaTypes),
    FN(OSSL_FUNC_KEYMGMT_EXPORT, KeyExport),
    FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, RsaTypes),
    FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, KeyGetParams),
    FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, RsaGettable),
    FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, RsaOpName),
    FN(OSSL_FUNC_KEYMGMT_LOAD, KeyLoad),
    FN(OSSL_FUNC_KEYMGMT_DUP, KeyDup),
    FN(OSSL_FUNC_KEYMGMT_GEN_INIT, RsaGenInit),
    FN(OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, GenSetParams),
    FN(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, RsaGenSettable),
    FN(OSSL_FUNC_KEYMGMT_GEN, Gen),
    FN(OSSL_FUNC_KEYMGMT_GEN_CLEANUP, GenCleanup),
    {0, nullptr},
};

}  // namespace

const OSSL_ALGORITHM kKeymgmtAlgorithms[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=hwid", kEcKeymgmt,
     "hwid TPM-resident EC key"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=hwid", kRsaKeymgmt,
     "hwid TPM-resident RSA key"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
