// ENCODER for hwid keys: PrivateKeyInfo -> the key's reference file (PEM or DER): "TSS2 PRIVATE
// KEY" for a TPM key (what `openssl genpkey` writes: a TPM-wrapped blob, never key material),
// "PKCS#11 PROVIDER URI" for a token key (its URI, never a PIN), SubjectPublicKeyInfo (PEM or
// DER) for `pkey -pubout`, CSRs and certificates. No import_object: these encoders only serve
// hwid keys.
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <string>

#include "provider/io.h"
#include "provider/provider.h"

namespace hwid::provider {
namespace {

enum class Kind { kPrivPem, kPrivDer, kPubPem, kPubDer, kText };

struct EncCtx {
  ProvCtx* prov;
  Kind kind;
};

template <Kind K>
void* NewCtx(void* provctx) {
  return new EncCtx{static_cast<ProvCtx*>(provctx), K};
}
void FreeCtx(void* vctx) { delete static_cast<EncCtx*>(vctx); }

int PrivSelection(void*, int selection) {
  return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}
int PubSelection(void*, int selection) {
  return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0;
}
int TextSelection(void*, int selection) {
  return (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

int Encode(void* vctx, OSSL_CORE_BIO* out, const void* obj, const OSSL_PARAM[], int selection,
           OSSL_PASSPHRASE_CALLBACK*, void*) {
  auto* c = static_cast<EncCtx*>(vctx);
  const auto* k = static_cast<const ProvKey*>(obj);
  return Guard(c->prov, 0, [&]() {
    if (k == nullptr || k->pub == nullptr) {
      RaiseError(c->prov, kReasonInvalidArgument, "no key to encode");
      return 0;
    }
    if (c->kind == Kind::kPrivPem || c->kind == Kind::kPrivDer) {
      if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0) {
        return 0;
      }
      if (k->priv == nullptr) {
        RaiseError(c->prov, kReasonNoPrivateKey, "a public-only key has no TPM key file");
        return 0;
      }
      if (c->kind == Kind::kPrivPem) {
        absl::StatusOr<std::string> pem = k->priv->EncodePem();
        if (!pem.ok()) {
          RaiseStatus(c->prov, kReasonUnsupported, "writing the key file", pem.status(),
                      k->priv->device());
          return 0;
        }
        return WriteToCoreBio(c->prov, out, AsSpan(*pem)) ? 1 : 0;
      }
      absl::StatusOr<Bytes> der = k->priv->EncodeDer();
      if (!der.ok()) {
        RaiseStatus(c->prov, kReasonUnsupported, "writing the key file", der.status(),
                    k->priv->device());
        return 0;
      }
      return WriteToCoreBio(c->prov, out, *der) ? 1 : 0;
    }
    // SubjectPublicKeyInfo, from the public key in our library context.
    OsslPtr<BIO> bio(BIO_new_from_core_bio(c->prov->libctx, out));
    if (bio == nullptr) {
      return 0;
    }
    if (c->kind == Kind::kText) {
      // `openssl pkey -text`: where the private key lives (never its value), then the public key.
      if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
        const std::string where =
            k->priv != nullptr
                ? k->priv->Describe() + (k->priv->device() == Device::kTpm
                                             ? ": private key in the TPM, not exportable\n"
                                             : ": private key on the token, not exportable\n")
                : std::string("public key only (no private part)\n");
        if (BIO_puts(bio.get(), where.c_str()) <= 0) {
          return 0;
        }
      }
      return EVP_PKEY_print_public(bio.get(), k->pub.get(), 0, nullptr) == 1 ? 1 : 0;
    }
    if (c->kind == Kind::kPubPem) {
      return PEM_write_bio_PUBKEY(bio.get(), k->pub.get()) == 1 ? 1 : 0;
    }
    return i2d_PUBKEY_bio(bio.get(), k->pub.get()) == 1 ? 1 : 0;
  });
}

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}
#define ENCODER(name, kind, sel)                                   \
  const OSSL_DISPATCH name[] = {                                   \
      FN(OSSL_FUNC_ENCODER_NEWCTX, NewCtx<kind>),                  \
      FN(OSSL_FUNC_ENCODER_FREECTX, FreeCtx),                      \
      FN(OSSL_FUNC_ENCODER_DOES_SELECTION, sel),                   \
      FN(OSSL_FUNC_ENCODER_ENCODE, Encode),                        \
      {0, nullptr},                                                \
  }
ENCODER(kPrivPem, Kind::kPrivPem, PrivSelection);
ENCODER(kPrivDer, Kind::kPrivDer, PrivSelection);
ENCODER(kPubPem, Kind::kPubPem, PubSelection);
ENCODER(kPubDer, Kind::kPubDer, PubSelection);
ENCODER(kText, Kind::kText, TextSelection);

#define EC_NAME "EC:id-ecPublicKey:1.2.840.10045.2.1"
#define RSA_NAME "RSA:rsaEncryption:1.2.840.113549.1.1.1"

}  // namespace

const OSSL_ALGORITHM kEncoderAlgorithms[] = {
    {EC_NAME, "provider=hwid,output=pem,structure=PrivateKeyInfo", kPrivPem, "TSS2 key PEM"},
    {EC_NAME, "provider=hwid,output=der,structure=PrivateKeyInfo", kPrivDer, "TSS2 key DER"},
    {EC_NAME, "provider=hwid,output=pem,structure=SubjectPublicKeyInfo", kPubPem, "EC SPKI PEM"},
    {EC_NAME, "provider=hwid,output=der,structure=SubjectPublicKeyInfo", kPubDer, "EC SPKI DER"},
    {RSA_NAME, "provider=hwid,output=pem,structure=PrivateKeyInfo", kPrivPem, "TSS2 key PEM"},
    {RSA_NAME, "provider=hwid,output=der,structure=PrivateKeyInfo", kPrivDer, "TSS2 key DER"},
    {RSA_NAME, "provider=hwid,output=pem,structure=SubjectPublicKeyInfo", kPubPem, "RSA SPKI PEM"},
    {RSA_NAME, "provider=hwid,output=der,structure=SubjectPublicKeyInfo", kPubDer, "RSA SPKI DER"},
    {EC_NAME, "provider=hwid,output=text", kText, "EC key text (public part, key location)"},
    {RSA_NAME, "provider=hwid,output=text", kText, "RSA key text (public part, key location)"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
