// SIGNATURE "ECDSA" and "RSA" (PKCS#1 v1.5 and PSS). Messages are hashed in software (our own
// library context, OpenSSL's default provider); the backend signs the digest with one device
// command. Verification is software only, with the key's public half. A key without a private
// half (imported public key) never signs: there is no software fallback.
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include <climits>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "provider/pss.h"
#include "provider/provider.h"

namespace hwid::provider {
namespace {

constexpr int kSaltUnset = INT_MIN;

struct SigCtx {
  ProvCtx* prov = nullptr;
  KeyType type = KeyType::kEc;
  std::shared_ptr<Key> priv;
  OsslPtr<EVP_PKEY> pub;
  OsslPtr<EVP_MD> md;
  HashAlg hash = HashAlg::kSha256;  // md as the backend's digest (set together with md)
  // Streaming digest-sign/verify: `streaming` after DigestSign/VerifyInit; `mdctx` is made on the
  // first update or final, so one-shot users (libssl's EVP_DigestSign) never allocate it.
  bool streaming = false;
  OsslPtr<EVP_MD_CTX> mdctx;
  SignScheme scheme = SignScheme::kEcdsa;
  int saltlen = kSaltUnset;  // OpenSSL codes: -1 digest, -2 auto, -3 max, >= 0 bytes
  OsslPtr<EVP_MD> mgf1;
};

// SetDigest fetches digest `name` and maps it to the backend's HashAlg once, by NID (a field of the
// fetched method; every alias of a digest has its NID): this runs on every signature init, where
// name comparisons (EVP_MD_is_a's name-map lookups) would cost more than the rest of the init.
bool SetDigest(SigCtx* c, const char* name) {
  OsslPtr<EVP_MD> md(EVP_MD_fetch(c->prov->libctx, name, nullptr));
  absl::StatusOr<HashAlg> hash =
      md != nullptr ? HashAlgFromNid(EVP_MD_get_type(md.get()))
                    : absl::StatusOr<HashAlg>(absl::InvalidArgumentError("unknown digest"));
  const bool tpm_key = c->priv != nullptr && c->priv->device() == Device::kTpm;
  if (!hash.ok() || (tpm_key && *hash == HashAlg::kSha224)) {
    RaiseError(c->prov, kReasonUnsupported, "digest %s is not supported for %s signatures (%s)",
               name, tpm_key ? "TPM" : "hwid",
               tpm_key ? "SHA1, SHA256, SHA384, SHA512" : "SHA1, SHA224, SHA256, SHA384, SHA512");
    return false;
  }
  c->md = std::move(md);
  c->hash = *hash;
  return true;
}

void* NewCtx(void* provctx, const char*) {
  auto* prov = static_cast<ProvCtx*>(provctx);
  return Guard<void*>(prov, nullptr, [&]() -> void* {
    auto* c = new SigCtx;
    c->prov = prov;
    return c;
  });
}

void FreeCtx(void* vctx) { delete static_cast<SigCtx*>(vctx); }

void* DupCtx(void* vctx) {
  auto* src = static_cast<SigCtx*>(vctx);
  return Guard<void*>(src->prov, nullptr, [&]() -> void* {
    auto d = std::make_unique<SigCtx>();
    d->prov = src->prov;
    d->type = src->type;
    d->priv = src->priv;
    d->hash = src->hash;
    d->scheme = src->scheme;
    d->saltlen = src->saltlen;
    d->streaming = src->streaming;
    if (src->pub != nullptr) {
      EVP_PKEY_up_ref(src->pub.get());
      d->pub.reset(src->pub.get());
    }
    if (src->md != nullptr) {
      EVP_MD_up_ref(src->md.get());
      d->md.reset(src->md.get());
    }
    if (src->mgf1 != nullptr) {
      EVP_MD_up_ref(src->mgf1.get());
      d->mgf1.reset(src->mgf1.get());
    }
    if (src->mdctx != nullptr) {
      d->mdctx.reset(EVP_MD_CTX_new());
      if (d->mdctx == nullptr || EVP_MD_CTX_copy_ex(d->mdctx.get(), src->mdctx.get()) != 1) {
        return nullptr;
      }
    }
    return d.release();
  });
}

int SetCtxParams(void* vctx, const OSSL_PARAM params[]);

int Init(SigCtx* c, void* vkey, const OSSL_PARAM params[], bool signing) {
  auto* k = static_cast<ProvKey*>(vkey);
  if (k == nullptr || k->pub == nullptr) {
    RaiseError(c->prov, kReasonInvalidArgument, "no key");
    return 0;
  }
  if (signing && k->priv == nullptr) {
    RaiseError(c->prov, kReasonNoPrivateKey,
               "this %s key is a public key only (imported, not in the TPM); hwid never signs "
               "in software", KeymgmtName(k->type));
    return 0;
  }
  c->type = k->type;
  c->priv = k->priv;
  EVP_PKEY_up_ref(k->pub.get());
  c->pub.reset(k->pub.get());
  c->scheme = k->type == KeyType::kEc ? SignScheme::kEcdsa : SignScheme::kRsaPkcs1;
  c->saltlen = kSaltUnset;
  c->mgf1.reset();
  c->streaming = false;
  c->mdctx.reset();
  return params == nullptr ? 1 : SetCtxParams(c, params);
}

int SignInit(void* vctx, void* vkey, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return Init(c, vkey, params, true); });
}
int VerifyInit(void* vctx, void* vkey, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return Init(c, vkey, params, false); });
}

// EnsureDigestFor picks a digest from the input length for pre-hashed signing without one.
bool EnsureDigestFor(SigCtx* c, size_t tbslen) {
  if (c->md != nullptr) {
    return true;
  }
  const char* name = tbslen == 32 ? "SHA256" : tbslen == 48 ? "SHA384" : tbslen == 64 ? "SHA512"
                     : tbslen == 20 ? "SHA1" : nullptr;
  if (name == nullptr) {
    RaiseError(c->prov, kReasonInvalidArgument,
               "input of %zu bytes is not a SHA-1/256/384/512 digest; set the digest", tbslen);
    return false;
  }
  return SetDigest(c, name);
}

size_t MaxSize(const SigCtx* c) { return static_cast<size_t>(EVP_PKEY_get_size(c->pub.get())); }

// DoSign signs a digest with the backend.
int DoSign(SigCtx* c, unsigned char* sig, size_t* siglen, size_t sigsize, const unsigned char* tbs,
           size_t tbslen) {
  if (sig == nullptr) {
    *siglen = MaxSize(c);
    return 1;
  }
  if (c->priv == nullptr) {
    RaiseError(c->prov, kReasonNoPrivateKey, "key has no private part in the TPM");
    return 0;
  }
  if (c->type == KeyType::kRsa && c->md == nullptr) {
    // The TPM signs RSA over a DigestInfo it builds itself; a raw PKCS#1 signature of an
    // arbitrary input (what OpenSSL does without a digest) is not possible.
    RaiseError(c->prov, kReasonInvalidArgument,
               "RSA signing of a pre-hashed input needs the digest name (e.g. openssl pkeyutl "
               "-pkeyopt digest:sha256): the TPM signs a DigestInfo, not raw data");
    return 0;
  }
  if (!EnsureDigestFor(c, tbslen)) {
    return 0;
  }
  SignParams p;
  p.scheme = c->scheme;
  p.hash = c->hash;
  const int hlen = EVP_MD_get_size(c->md.get());
  if (static_cast<int>(tbslen) != hlen) {
    RaiseError(c->prov, kReasonInvalidArgument, "input of %zu bytes is not a %s digest", tbslen,
               HashAlgName(c->hash));
    return 0;
  }
  if (c->scheme == SignScheme::kRsaPss) {
    if (c->mgf1 != nullptr && EVP_MD_get_type(c->mgf1.get()) != HashAlgNid(c->hash)) {
      RaiseError(c->prov, kReasonUnsupported,
                 "the device uses MGF1 with the signature digest (%s); another MGF1 digest was set",
                 HashAlgName(c->hash));
      return 0;
    }
    if (c->saltlen == RSA_PSS_SALTLEN_DIGEST) {
      p.pss_salt_len = hlen;
    } else if (c->saltlen == RSA_PSS_SALTLEN_MAX) {
      p.pss_salt_len = PssMaxSaltLength(EVP_PKEY_get_bits(c->pub.get()), hlen);
    } else if (c->saltlen >= 0) {
      p.pss_salt_len = c->saltlen;
    }  // unset or "auto": the TPM's own choice (auto-verifiers accept any salt length)
  }
  absl::StatusOr<Bytes> out = c->priv->Sign(ByteSpan(tbs, tbslen), p);
  if (!out.ok()) {
    const int reason = absl::IsFailedPrecondition(out.status()) ? kReasonPssSaltUnsupported
                                                                 : kReasonSignFailed;
    RaiseStatus(c->prov, reason,
                c->priv->device() == Device::kTpm ? "TPM signature" : "PKCS#11 signature",
                out.status(), c->priv->device());
    return 0;
  }
  if (out->size() > sigsize) {
    RaiseError(c->prov, kReasonInvalidArgument, "signature buffer of %zu bytes is too small (%zu)",
               sigsize, out->size());
    return 0;
  }
  std::memcpy(sig, out->data(), out->size());
  *siglen = out->size();
  NoteSignature(c->prov);
  return 1;
}

int Sign(void* vctx, unsigned char* sig, size_t* siglen, size_t sigsize, const unsigned char* tbs,
         size_t tbslen) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return DoSign(c, sig, siglen, sigsize, tbs, tbslen); });
}

// SoftwareVerify verifies in our library context with the public key.
int SoftwareVerify(SigCtx* c, const unsigned char* sig, size_t siglen, const unsigned char* tbs,
                   size_t tbslen) {
  if (!EnsureDigestFor(c, tbslen)) {
    return 0;
  }
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(c->prov->libctx, c->pub.get(), nullptr));
  if (ctx == nullptr || EVP_PKEY_verify_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_signature_md(ctx.get(), c->md.get()) != 1) {
    return 0;
  }
  if (c->type == KeyType::kRsa) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), c->scheme == SignScheme::kRsaPss ? RSA_PKCS1_PSS_PADDING
                                                                        : RSA_PKCS1_PADDING) != 1) {
      return 0;
    }
    if (c->scheme == SignScheme::kRsaPss) {
      const int salt = c->saltlen == kSaltUnset ? RSA_PSS_SALTLEN_AUTO : c->saltlen;
      if (EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), salt) != 1 ||
          (c->mgf1 != nullptr && EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), c->mgf1.get()) != 1)) {
        return 0;
      }
    }
  }
  return EVP_PKEY_verify(ctx.get(), sig, siglen, tbs, tbslen) == 1 ? 1 : 0;
}

int Verify(void* vctx, const unsigned char* sig, size_t siglen, const unsigned char* tbs,
           size_t tbslen) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return SoftwareVerify(c, sig, siglen, tbs, tbslen); });
}

int DigestInit(SigCtx* c, const char* mdname, void* vkey, const OSSL_PARAM params[], bool signing) {
  if (vkey != nullptr && Init(c, vkey, nullptr, signing) != 1) {
    return 0;
  }
  if (!SetDigest(c, mdname != nullptr && mdname[0] != '\0' ? mdname : "SHA256")) {
    return 0;
  }
  if (params != nullptr && SetCtxParams(c, params) != 1) {
    return 0;
  }
  c->mdctx.reset();
  c->streaming = true;
  return 1;
}

// StreamingDigest returns the context's digest context, made and initialised on first use;
// null (with an error raised) when no digest init was done or the digest cannot start.
EVP_MD_CTX* StreamingDigest(SigCtx* c) {
  if (!c->streaming) {
    return nullptr;
  }
  if (c->mdctx == nullptr) {
    OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
    if (m == nullptr || EVP_DigestInit_ex2(m.get(), c->md.get(), nullptr) != 1) {
      RaiseError(c->prov, kReasonInternal, "digest init failed");
      return nullptr;
    }
    c->mdctx = std::move(m);
  }
  return c->mdctx.get();
}

int DigestSignInit(void* vctx, const char* mdname, void* vkey, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return DigestInit(c, mdname, vkey, params, true); });
}
int DigestVerifyInit(void* vctx, const char* mdname, void* vkey, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() { return DigestInit(c, mdname, vkey, params, false); });
}

int DigestUpdate(void* vctx, const unsigned char* data, size_t len) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    EVP_MD_CTX* m = StreamingDigest(c);
    return m != nullptr && EVP_DigestUpdate(m, data, len) == 1 ? 1 : 0;
  });
}

int DigestSignFinal(void* vctx, unsigned char* sig, size_t* siglen, size_t sigsize) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    if (sig == nullptr) {
      *siglen = MaxSize(c);
      return 1;
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX* m = StreamingDigest(c);
    if (m == nullptr || EVP_DigestFinal_ex(m, digest, &dlen) != 1) {
      return 0;
    }
    return DoSign(c, sig, siglen, sigsize, digest, dlen);
  });
}

int DigestVerifyFinal(void* vctx, const unsigned char* sig, size_t siglen) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX* m = StreamingDigest(c);
    if (m == nullptr || EVP_DigestFinal_ex(m, digest, &dlen) != 1) {
      return 0;
    }
    return SoftwareVerify(c, sig, siglen, digest, dlen);
  });
}

int DigestSign(void* vctx, unsigned char* sig, size_t* siglen, size_t sigsize,
               const unsigned char* tbs, size_t tbslen) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    if (sig == nullptr) {
      *siglen = MaxSize(c);
      return 1;
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (EVP_Digest(tbs, tbslen, digest, &dlen, c->md.get(), nullptr) != 1) {
      return 0;
    }
    return DoSign(c, sig, siglen, sigsize, digest, dlen);
  });
}

int DigestVerify(void* vctx, const unsigned char* sig, size_t siglen, const unsigned char* tbs,
                 size_t tbslen) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (EVP_Digest(tbs, tbslen, digest, &dlen, c->md.get(), nullptr) != 1) {
      return 0;
    }
    return SoftwareVerify(c, sig, siglen, digest, dlen);
  });
}

// AlgorithmId asks OpenSSL's default provider (verify side, public key) for the DER
// AlgorithmIdentifier of this signature: the same bytes a software key would produce.
int GetAlgorithmId(SigCtx* c, OSSL_PARAM* p) {
  if (c->pub == nullptr || c->md == nullptr) {
    return 0;
  }
  OsslPtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (mctx == nullptr ||
      EVP_DigestVerifyInit_ex(mctx.get(), &pctx, EVP_MD_get0_name(c->md.get()), c->prov->libctx,
                              nullptr, c->pub.get(), nullptr) != 1) {
    return 0;
  }
  if (c->type == KeyType::kRsa && c->scheme == SignScheme::kRsaPss) {
    const int hlen = EVP_MD_get_size(c->md.get());
    int salt = hlen;
    if (c->saltlen >= 0) {
      salt = c->saltlen;
    } else if (c->saltlen == RSA_PSS_SALTLEN_MAX ||
               (c->saltlen != RSA_PSS_SALTLEN_DIGEST && c->priv != nullptr &&
                c->priv->pss_salt_mode() == PssSaltMode::kMaximum)) {
      salt = PssMaxSaltLength(EVP_PKEY_get_bits(c->pub.get()), hlen);
    }
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, salt) != 1) {
      return 0;
    }
  }
  unsigned char aid[256];
  OSSL_PARAM q[] = {OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, aid, sizeof(aid)),
                    OSSL_PARAM_END};
  if (EVP_PKEY_CTX_get_params(pctx, q) != 1 || !OSSL_PARAM_modified(q)) {
    return 0;
  }
  return OSSL_PARAM_set_octet_string(p, aid, q[0].return_size);
}

int GetCtxParams(void* vctx, OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  return Guard(c->prov, 0, [&]() {
    OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    if (p != nullptr && GetAlgorithmId(c, p) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != nullptr && c->md != nullptr &&
        OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(c->md.get())) != 1) {
      return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != nullptr && c->type == KeyType::kRsa) {
      const int mode = c->scheme == SignScheme::kRsaPss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING;
      if (p->data_type == OSSL_PARAM_INTEGER) {
        if (OSSL_PARAM_set_int(p, mode) != 1) {
          return 0;
        }
      } else if (OSSL_PARAM_set_utf8_string(p, c->scheme == SignScheme::kRsaPss ? "pss" : "pkcs1") != 1) {
        return 0;
      }
    }
    return 1;
  });
}

const OSSL_PARAM kGettableCtx[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* GettableCtxParams(void*, void*) { return kGettableCtx; }

int SetCtxParams(void* vctx, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  if (params == nullptr) {
    return 1;
  }
  return Guard(c->prov, 0, [&]() {
    const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != nullptr) {
      const char* name = nullptr;
      if (OSSL_PARAM_get_utf8_string_ptr(p, &name) != 1 || !SetDigest(c, name)) {
        return 0;
      }
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != nullptr) {
      int mode = 0;
      if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char* s = nullptr;
        if (OSSL_PARAM_get_utf8_string_ptr(p, &s) != 1) {
          return 0;
        }
        mode = std::strcmp(s, "pss") == 0 ? RSA_PKCS1_PSS_PADDING
               : std::strcmp(s, "pkcs1") == 0 ? RSA_PKCS1_PADDING : -1;
      } else if (OSSL_PARAM_get_int(p, &mode) != 1) {
        return 0;
      }
      if (c->type != KeyType::kRsa ||
          (mode != RSA_PKCS1_PSS_PADDING && mode != RSA_PKCS1_PADDING)) {
        RaiseError(c->prov, kReasonUnsupported,
                   "padding mode %d is not supported (TPM keys sign with PKCS#1 v1.5 or PSS)",
                   mode);
        return 0;
      }
      c->scheme = mode == RSA_PKCS1_PSS_PADDING ? SignScheme::kRsaPss : SignScheme::kRsaPkcs1;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != nullptr) {
      int salt = 0;
      if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char* s = nullptr;
        if (OSSL_PARAM_get_utf8_string_ptr(p, &s) != 1) {
          return 0;
        }
        if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
          salt = RSA_PSS_SALTLEN_DIGEST;
        } else if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0) {
          salt = RSA_PSS_SALTLEN_MAX;
        } else if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0) {
          salt = RSA_PSS_SALTLEN_AUTO;
        } else if (!absl::SimpleAtoi(s, &salt) || salt < 0) {
          RaiseError(c->prov, kReasonInvalidArgument, "bad PSS salt length '%s'", s);
          return 0;
        }
      } else if (OSSL_PARAM_get_int(p, &salt) != 1) {
        return 0;
      }
      c->saltlen = salt;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != nullptr) {
      const char* name = nullptr;
      if (OSSL_PARAM_get_utf8_string_ptr(p, &name) != 1) {
        return 0;
      }
      c->mgf1.reset(EVP_MD_fetch(c->prov->libctx, name, nullptr));
      if (c->mgf1 == nullptr) {
        RaiseError(c->prov, kReasonUnsupported, "unknown MGF1 digest %s", name);
        return 0;
      }
    }
    return 1;
  });
}

const OSSL_PARAM kSettableCtx[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kSettableCtxEc[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* SettableCtxParamsRsa(void*, void*) { return kSettableCtx; }
const OSSL_PARAM* SettableCtxParamsEc(void*, void*) { return kSettableCtxEc; }

#define FN(id, f) {id, reinterpret_cast<void (*)()>(f)}
#define COMMON_SIG_FUNCS                                                 \
  FN(OSSL_FUNC_SIGNATURE_NEWCTX, NewCtx), FN(OSSL_FUNC_SIGNATURE_FREECTX, FreeCtx), \
      FN(OSSL_FUNC_SIGNATURE_DUPCTX, DupCtx),                               \
      FN(OSSL_FUNC_SIGNATURE_SIGN_INIT, SignInit), FN(OSSL_FUNC_SIGNATURE_SIGN, Sign), \
      FN(OSSL_FUNC_SIGNATURE_VERIFY_INIT, VerifyInit), FN(OSSL_FUNC_SIGNATURE_VERIFY, Verify), \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, DigestSignInit),            \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, DigestUpdate),            \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, DigestSignFinal),          \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, DigestSign),                     \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, DigestVerifyInit),        \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, DigestUpdate),          \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, DigestVerifyFinal),      \
      FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY, DigestVerify),                 \
      FN(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, GetCtxParams),                \
      FN(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, GettableCtxParams),      \
      FN(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, SetCtxParams)

const OSSL_DISPATCH kEcdsa[] = {
    COMMON_SIG_FUNCS,
    FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, SettableCtxParamsEc),
    {0, nullptr},
};
const OSSL_DISPATCH kRsa[] = {
    COMMON_SIG_FUNCS,
    FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, SettableCtxParamsRsa),
    {0, nullptr},
};

}  // namespace

const OSSL_ALGORITHM kSignatureAlgorithms[] = {
    {"ECDSA", "provider=hwid", kEcdsa, "hwid ECDSA with TPM keys"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=hwid", kRsa,
     "hwid RSA (PKCS#1 v1.5, PSS) with TPM keys"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace hwid::provider
