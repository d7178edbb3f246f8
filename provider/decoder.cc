// DECODER: "TSS2 PRIVATE KEY" files (PEM -> DER, then DER -> a TPM key loaded by the backend) and
// "PKCS#11 PROVIDER URI" files (PEM -> DER, then DER -> the token key the URI names).
// This is what lets programs that only read key files (PEM_read_bio_PrivateKey,
// SSL_CTX_use_PrivateKey_file: nginx, curl) use TPM keys once the provider is active.
// Inputs that are not TSS2 keys are left to other decoders (return 1 with no object).
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#ifdef HWID_WITH_PKCS11
#include "pkcs11/uri_pem.h"
#endif
#include "provider/io.h"
#include "provider/provider.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"

namespace hwid::provider {
namespace {

constexpr char kPemLabel[] = "TSS2 PRIVATE KEY";
constexpr char kStructure[] = "TSS2";
#ifdef HWID_WITH_PKCS11
constexpr char kUriStructure[] = "pk11-uri";
#endif

struct DecCtx {
  ProvCtx* prov;
  KeyType type;  // key decoders only
};

void* NewPemCtx(void* provctx) { return new DecCtx{static_cast<ProvCtx*>(provctx), KeyType::kEc}; }
void* NewEcCtx(void* provctx) { return new DecCtx{static_cast<ProvCtx*>(provctx), KeyType::kEc}; }
void* NewRsaCtx(void* provctx) {
  return new DecCtx{static_cast<ProvCtx*>(provctx), KeyType::kRsa};
}
void FreeCtx(void* vctx) { delete static_cast<DecCtx*>(vctx); }

[[maybe_unused]] int DoesSelection(void*, int selection) {
  return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

// PassDer hands a key file's DER body to the next decoder in the chain, tagged with `structure`.
// When that fails because the key could not be activated, the error is raised again here: the
// file: STORE decodes the body in a nested decoder and drops that decoder's errors before it
// returns to this frame (see RaiseKeyLoadError in io.h).
int PassDer(unsigned char* data, long len, const char* structure, OSSL_CALLBACK* data_cb,
            void* data_cbarg) {
  OSSL_PARAM params[] = {
      OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_DATA, data, static_cast<size_t>(len)),
      OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
                                       const_cast<char*>(structure), 0),
      OSSL_PARAM_END,
  };
  ForgetKeyLoadError();
  const int r = data_cb(params, data_cbarg);
  if (r == 0) {
    RaisePendingKeyLoadError();
  }
  ForgetKeyLoadError();
  return r;
}

int PemDecode(void* vctx, OSSL_CORE_BIO* in, int, OSSL_CALLBACK* data_cb, void* data_cbarg,
              [[maybe_unused]] OSSL_PASSPHRASE_CALLBACK* pw_cb,
              [[maybe_unused]] void* pw_cbarg) {
  auto* c = static_cast<DecCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    OsslPtr<BIO> bio(BIO_new_from_core_bio(c->prov->libctx, in));
    if (bio == nullptr) {
      return 0;
    }
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    ERR_set_mark();
    const int ok = PEM_read_bio(bio.get(), &name, &header, &data, &len);
    ERR_pop_to_mark();
    int r = 1;  // not ours: empty-handed
    Debug("PEM decoder: label %s", ok == 1 ? name : "(none)");
#ifdef HWID_WITH_PKCS11
    if (ok == 1 && std::strcmp(name, pkcs11::kUriPemLabel) == 0) {
      absl::StatusOr<std::string> uri = pkcs11::ParseUriDer(ByteSpan(data, static_cast<size_t>(len)));
      absl::StatusOr<std::shared_ptr<Key>> key = absl::UnavailableError("no PKCS#11 support");
      if (uri.ok() && c->prov->pkcs11 != nullptr) {
        // Find the key here, in the first decoder of the chain: OpenSSL's file: store decodes the
        // DER we pass on in a nested decoder whose errors it discards, so a wrong PIN or a missing
        // key would otherwise surface only as "unsupported". The backend keeps the key it found
        // for the nested decoder (no second login or PIN prompt).
        PassphraseFn ask = [&]() {
          return AskPassphrase(pw_cb, pw_cbarg, "PKCS#11 token user PIN");
        };
        key = c->prov->pkcs11->LoadUri(*uri, ask);
      }
      if (!uri.ok()) {
        RaiseStatus(c->prov, kReasonBadUriFile, "PKCS#11 PROVIDER URI PEM", uri.status(),
                    Device::kPkcs11);
        r = 0;
      } else if (!key.ok()) {
        RaiseStatus(c->prov, kReasonKeyLoadFailed,
                    absl::StrCat("loading the PKCS#11 key of a URI file (", *uri, ")").c_str(),
                    key.status(), Device::kPkcs11);
        r = 0;
      } else {
        r = PassDer(data, len, kUriStructure, data_cb, data_cbarg);
      }
      OPENSSL_free(name);
      OPENSSL_free(header);
      OPENSSL_free(data);
      return r;
    }
#endif
    if (ok == 1 && std::strcmp(name, kPemLabel) == 0) {
      // The label is ours, so a body that is not a TPMKey is a broken key file, not someone
      // else's input: say so instead of letting OpenSSL report "unsupported".
      absl::StatusOr<wire::TpmKeyFile> file =
          wire::ParseTpmKeyFile(ByteSpan(data, static_cast<size_t>(len)));
      if (!file.ok()) {
        RaiseStatus(c->prov, kReasonBadKeyFile, "TSS2 PRIVATE KEY PEM", file.status());
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        return 0;
      }
      r = PassDer(data, len, kStructure, data_cb, data_cbarg);
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    return r;
  });
}

int KeyDecode(void* vctx, OSSL_CORE_BIO* in, int selection, OSSL_CALLBACK* data_cb,
              void* data_cbarg, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_cbarg) {
  auto* c = static_cast<DecCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    if (selection != 0 && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0 &&
        (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0) {
      return 1;
    }
    absl::StatusOr<Bytes> der = ReadAllFromCoreBio(c->prov, in);
    if (!der.ok()) {
      return 1;
    }
    Debug("%s key decoder: %zu bytes, selection 0x%x", KeymgmtName(c->type), der->size(), selection);
    // Only TSS2 keys are ours: a DER that is not one at all goes to other decoders. A TSS2 key
    // that is malformed is an error worth reporting.
    if (der->size() < 2 || (*der)[0] != 0x30) {
      return 1;
    }
    absl::StatusOr<wire::TpmKeyFile> file = wire::ParseTpmKeyFile(*der);
    if (!file.ok()) {
      // Only claim it when it carries the TPMKey OID (06 06 67 81 05 0A 01 xx).
      static constexpr uint8_t kOidPrefix[] = {0x06, 0x06, 0x67, 0x81, 0x05, 0x0a};
      const bool looks_tss2 = std::search(der->begin(), der->begin() + std::min<size_t>(der->size(), 16),
                                          std::begin(kOidPrefix), std::end(kOidPrefix)) !=
                              der->begin() + std::min<size_t>(der->size(), 16);
      if (looks_tss2) {
        RaiseStatus(c->prov, kReasonBadKeyFile, "TSS2 PRIVATE KEY", file.status());
        return 0;
      }
      return 1;
    }
    absl::StatusOr<TPM2B_PUBLIC> pub = wire::ParsePublic(file->pub);
    if (!pub.ok()) {
      RaiseStatus(c->prov, kReasonBadKeyFile, "TSS2 PRIVATE KEY public area", pub.status());
      return 0;
    }
    const KeyType type = pub->publicArea.type == TPM2_ALG_ECC ? KeyType::kEc : KeyType::kRsa;
    if (type != c->type) {
      return 1;  // the other key decoder's
    }
    SecureBytes auth;
    if (!file->empty_auth) {
      auth = AskPassphrase(pw_cb, pw_cbarg, "TPM key authorization value");
    }
    absl::StatusOr<std::shared_ptr<Key>> key = c->prov->backend->LoadKeyFile(*der, AsSpan(auth));
    if (!key.ok()) {
      RaiseKeyLoadError(c->prov, kReasonKeyLoadFailed, "loading TPM key", key.status(),
                        Device::kTpm);
      return 0;
    }
    return PassKeyReference(std::move(*key), c->prov, data_cb, data_cbarg);
  });
}

#ifdef HWID_WITH_PKCS11
// UriKeyDecode: a PKCS#11 PROVIDER URI DER -> the token key it names (when it has this decoder's
// key type; the other type's decoder takes it otherwise).
int UriKeyDecode(void* vctx, OSSL_CORE_BIO* in, int selection, OSSL_CALLBACK* data_cb,
                 void* data_cbarg, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_cbarg) {
  auto* c = static_cast<DecCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    if (c->prov->pkcs11 == nullptr ||
        (selection != 0 && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0 &&
         (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0)) {
      return 1;
    }
    absl::StatusOr<Bytes> der = ReadAllFromCoreBio(c->prov, in);
    if (!der.ok() || !pkcs11::LooksLikeUriDer(*der)) {
      return 1;
    }
    absl::StatusOr<std::string> uri = pkcs11::ParseUriDer(*der);
    if (!uri.ok()) {
      RaiseStatus(c->prov, kReasonBadUriFile, "PKCS#11 PROVIDER URI", uri.status(),
                  Device::kPkcs11);
      return 0;
    }
    PassphraseFn ask = [&]() { return AskPassphrase(pw_cb, pw_cbarg, "PKCS#11 token user PIN"); };
    absl::StatusOr<std::shared_ptr<Key>> key = c->prov->pkcs11->LoadUri(*uri, ask);
    Debug("%s URI key decoder: %s", KeymgmtName(c->type), key.status().ToString().c_str());
    if (!key.ok()) {
      RaiseKeyLoadError(c->prov, kReasonKeyLoadFailed, "loading the PKCS#11 key of a URI file",
                        key.status(), Device::kPkcs11);
      return 0;
    }
    if ((*key)->type() != c->type) {
      return 1;  // the other key decoder's
    }
    return PassKeyReference(std::move(*key), c->prov, data_cb, data_cbarg);
  });
}
#endif

int ExportObject(void*, const void*, size_t, OSSL_CALLBACK*, void*) {
  Debug("decoder export_object refused");
  // Refused: exporting would hand another provider a public-only copy of a private key.
  return 0;
}

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}

const OSSL_DISPATCH kPemToDer[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, NewPemCtx),
    FN(OSSL_FUNC_DECODER_FREECTX, FreeCtx),
    FN(OSSL_FUNC_DECODER_DECODE, PemDecode),
    {0, nullptr},
};
const OSSL_DISPATCH kEcDecoder[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, NewEcCtx),
    FN(OSSL_FUNC_DECODER_FREECTX, FreeCtx),
    FN(OSSL_FUNC_DECODER_DECODE, KeyDecode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, ExportObject),
    {0, nullptr},
};
const OSSL_DISPATCH kRsaDecoder[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, NewRsaCtx),
    FN(OSSL_FUNC_DECODER_FREECTX, FreeCtx),
    FN(OSSL_FUNC_DECODER_DECODE, KeyDecode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, ExportObject),
    {0, nullptr},
};

#ifdef HWID_WITH_PKCS11
const OSSL_DISPATCH kEcUriDecoder[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, NewEcCtx),
    FN(OSSL_FUNC_DECODER_FREECTX, FreeCtx),
    FN(OSSL_FUNC_DECODER_DECODE, UriKeyDecode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, ExportObject),
    {0, nullptr},
};
const OSSL_DISPATCH kRsaUriDecoder[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, NewRsaCtx),
    FN(OSSL_FUNC_DECODER_FREECTX, FreeCtx),
    FN(OSSL_FUNC_DECODER_DECODE, UriKeyDecode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, ExportObject),
    {0, nullptr},
};
#endif

}  // namespace

const OSSL_ALGORITHM kDecoderAlgorithms[] = {
    {"DER", "provider=hwid,input=pem", kPemToDer, "TSS2 PRIVATE KEY PEM to DER"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=hwid,input=der,structure=TSS2", kEcDecoder,
     "TSS2 EC key"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=hwid,input=der,structure=TSS2",
     kRsaDecoder, "TSS2 RSA key"},
#ifdef HWID_WITH_PKCS11
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=hwid,input=der,structure=pk11-uri",
     kEcUriDecoder, "PKCS#11 PROVIDER URI EC key"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=hwid,input=der,structure=pk11-uri",
     kRsaUriDecoder, "PKCS#11 PROVIDER URI RSA key"},
#endif
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
