#include "tpm/wire/crypto.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/ecdsa_der.h"
#include "common/status_macros.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

// OwnedDer owns a buffer allocated by an OpenSSL i2d_* function.
struct OpensslFree {
  void operator()(unsigned char* p) const noexcept { OPENSSL_free(p); }
};
using OwnedDer = std::unique_ptr<unsigned char, OpensslFree>;

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

struct CurveInfo {
  const char* group;  // OpenSSL group name
  size_t field_bytes;
};

absl::StatusOr<CurveInfo> CurveFor(TPMI_ECC_CURVE curve) {
  switch (curve) {
    case TPM2_ECC_NIST_P256:
      return CurveInfo{"P-256", 32};
    case TPM2_ECC_NIST_P384:
      return CurveInfo{"P-384", 48};
    case TPM2_ECC_NIST_P521:
      return CurveInfo{"P-521", 66};
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("TPMT_PUBLIC: unsupported ECC curve 0x", absl::Hex(curve, absl::kZeroPad4),
                       " (supported: NIST P-256, P-384, P-521)"));
  }
}

// FromData builds the EVP_PKEY. `validate` runs OpenSSL's public-key check; it is used for EC
// keys, where it proves the point is on the curve (an off-curve EK point would turn the server's
// ECDH in MakeCredential into an invalid-curve oracle). RSA keys get structural checks in
// RsaToEvp instead: OpenSSL 3.0's RSA check (SP 800-56B, quick or full) costs ~3.6 ms per key and
// proves nothing the protocol relies on, since an RSA EK is trusted only through its certificate's
// signature or the operator's allowlist, and an RSA AK only through fixedTPM + credential
// activation (the TPM generated its modulus).
absl::StatusOr<OsslPtr<EVP_PKEY>> FromData(const char* type, OSSL_PARAM_BLD* bld, bool validate) {
  OsslPtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld));
  if (params == nullptr) {
    return OpenSslError("PublicToEvp: OSSL_PARAM_BLD_to_param");
  }
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    return OpenSslError(absl::StrCat("PublicToEvp: EVP_PKEY_fromdata_init(", type, ")"));
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return OpenSslError(absl::StrCat("TPMT_PUBLIC: not a valid ", type, " public key"),
                        absl::StatusCode::kInvalidArgument);
  }
  OsslPtr<EVP_PKEY> pkey(raw);
  if (!validate) {
    return pkey;
  }
  OsslPtr<EVP_PKEY_CTX> check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check_quick(check.get()) != 1) {
    return OpenSslError(absl::StrCat("TPMT_PUBLIC: ", type, " public key fails validation"),
                        absl::StatusCode::kInvalidArgument);
  }
  return pkey;
}

absl::StatusOr<OsslPtr<EVP_PKEY>> RsaToEvp(const TPMT_PUBLIC& pub) {
  const TPMS_RSA_PARMS& parms = pub.parameters.rsaDetail;
  const TPM2B_PUBLIC_KEY_RSA& n = pub.unique.rsa;
  if (parms.keyBits < 1024 || parms.keyBits > 4096 || parms.keyBits % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("TPMT_PUBLIC: unsupported RSA keyBits ", parms.keyBits));
  }
  if (n.size != parms.keyBits / 8) {
    return absl::InvalidArgumentError(absl::StrCat("TPMT_PUBLIC: RSA modulus is ", n.size,
                                                   " bytes but keyBits is ", parms.keyBits));
  }
  if ((n.buffer[0] & 0x80) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("TPMT_PUBLIC: RSA modulus is shorter than keyBits ", parms.keyBits));
  }
  if ((n.buffer[n.size - 1] & 1) == 0) {
    return absl::InvalidArgumentError("TPMT_PUBLIC: RSA modulus is even");
  }
  const uint32_t exponent = parms.exponent == 0 ? 65537u : parms.exponent;
  if (exponent < 3 || exponent % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat("TPMT_PUBLIC: invalid RSA exponent ", exponent));
  }
  OsslPtr<BIGNUM> bn_n(BN_bin2bn(n.buffer, n.size, nullptr));
  OsslPtr<BIGNUM> bn_e(BN_new());
  if (bn_n == nullptr || bn_e == nullptr || BN_set_word(bn_e.get(), exponent) != 1) {
    return OpenSslError("PublicToEvp: BIGNUM allocation");
  }
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    return OpenSslError("PublicToEvp: OSSL_PARAM_BLD (RSA)");
  }
  return FromData("RSA", bld.get(), /*validate=*/false);
}

absl::StatusOr<OsslPtr<EVP_PKEY>> EccToEvp(const TPMT_PUBLIC& pub) {
  ASSIGN_OR_RETURN(CurveInfo curve, CurveFor(pub.parameters.eccDetail.curveID));
  const TPM2B_ECC_PARAMETER& x = pub.unique.ecc.x;
  const TPM2B_ECC_PARAMETER& y = pub.unique.ecc.y;
  if (x.size == 0 || y.size == 0 || x.size > curve.field_bytes || y.size > curve.field_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TPMT_PUBLIC: ECC point coordinates are ", x.size, " and ", y.size,
        " bytes; expected 1..", curve.field_bytes, " for ", curve.group));
  }
  // Uncompressed SEC1 point, coordinates left-padded to the field size.
  Bytes point(1 + 2 * curve.field_bytes, 0);
  point[0] = 0x04;
  std::copy(x.buffer, x.buffer + x.size, point.begin() + 1 + (curve.field_bytes - x.size));
  std::copy(y.buffer, y.buffer + y.size, point.end() - y.size);
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve.group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    return OpenSslError("PublicToEvp: OSSL_PARAM_BLD (EC)");
  }
  return FromData("EC", bld.get(), /*validate=*/true);
}

}  // namespace

absl::StatusOr<const EVP_MD*> DigestForAlg(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return EVP_sha1();
    case TPM2_ALG_SHA256:
      return EVP_sha256();
    case TPM2_ALG_SHA384:
      return EVP_sha384();
    case TPM2_ALG_SHA512:
      return EVP_sha512();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported hash algorithm ", AlgName(alg)));
  }
}

size_t DigestSize(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return 20;
    case TPM2_ALG_SHA256:
      return 32;
    case TPM2_ALG_SHA384:
      return 48;
    case TPM2_ALG_SHA512:
      return 64;
    default:
      return 0;
  }
}

absl::StatusOr<Bytes> Hash(TPMI_ALG_HASH alg, ByteSpan data) {
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(alg));
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr) != 1) {
    return OpenSslError(absl::StrCat("Hash: EVP_Digest(", AlgName(alg), ")"));
  }
  out.resize(len);
  return out;
}

absl::StatusOr<OsslPtr<EVP_PKEY>> PublicToEvp(const TPMT_PUBLIC& pub) {
  switch (pub.type) {
    case TPM2_ALG_RSA:
      return RsaToEvp(pub);
    case TPM2_ALG_ECC:
      return EccToEvp(pub);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "TPMT_PUBLIC: type ", AlgName(pub.type), " is not an asymmetric key (need rsa or ecc)"));
  }
}

absl::StatusOr<Bytes> PublicKeyDer(const TPMT_PUBLIC& pub) {
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> pkey, PublicToEvp(pub));
  return PublicKeyDer(pkey.get());
}

absl::StatusOr<Bytes> PublicKeyDerTrusted(const TPMT_PUBLIC& pub) {
  if (pub.type == TPM2_ALG_ECC) {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING (0 unused) 04 || X || Y }
    static constexpr uint8_t kP256[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                        0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04};
    static constexpr uint8_t kP384[] = {0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86,
                                        0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
                                        0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04};
    const TPMI_ECC_CURVE curve = pub.parameters.eccDetail.curveID;
    const TPMS_ECC_POINT& q = pub.unique.ecc;
    const size_t n = curve == TPM2_ECC_NIST_P256 ? 32 : curve == TPM2_ECC_NIST_P384 ? 48 : 0;
    if (n != 0 && q.x.size <= n && q.y.size <= n && q.x.size > 0 && q.y.size > 0) {
      Bytes out = n == 32 ? Bytes(std::begin(kP256), std::end(kP256))
                          : Bytes(std::begin(kP384), std::end(kP384));
      out.insert(out.end(), n - q.x.size, 0);  // left-pad each coordinate to the field size
      out.insert(out.end(), q.x.buffer, q.x.buffer + q.x.size);
      out.insert(out.end(), n - q.y.size, 0);
      out.insert(out.end(), q.y.buffer, q.y.buffer + q.y.size);
      return out;
    }
  }
  return PublicKeyDer(pub);
}

absl::StatusOr<Bytes> PublicKeyDer(const EVP_PKEY* key) {
  if (key == nullptr) {
    return absl::InvalidArgumentError("PublicKeyDer: no key");
  }
  unsigned char* raw = nullptr;
  const int len = i2d_PUBKEY(key, &raw);
  OwnedDer der(raw);
  if (len <= 0 || der == nullptr) {
    return OpenSslError("PublicKeyDer: i2d_PUBKEY");
  }
  return Bytes(der.get(), der.get() + len);
}

bool SamePublicKey(const EVP_PKEY* a, const EVP_PKEY* b) {
  if (a == nullptr || b == nullptr) {
    return false;
  }
  const bool same = EVP_PKEY_eq(a, b) == 1;
  DrainOpenSslErrors();  // A type mismatch may leave entries; the answer is simply "no".
  return same;
}

absl::StatusOr<Bytes> ObjectName(const TPMT_PUBLIC& pub) {
  if (DigestSize(pub.nameAlg) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ObjectName: unsupported nameAlg ", AlgName(pub.nameAlg)));
  }
  ASSIGN_OR_RETURN(Bytes marshalled, MarshalTpmtPublic(pub));
  ASSIGN_OR_RETURN(Bytes digest, Hash(pub.nameAlg, marshalled));
  Bytes name;
  name.reserve(2 + digest.size());
  name.push_back(static_cast<uint8_t>(pub.nameAlg >> 8));
  name.push_back(static_cast<uint8_t>(pub.nameAlg));
  name.insert(name.end(), digest.begin(), digest.end());
  return name;
}

absl::Status CheckName(ByteSpan name, std::string_view what) {
  if (name.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": object name is ", name.size(), " bytes (too short)"));
  }
  const TPMI_ALG_HASH alg = static_cast<TPMI_ALG_HASH>((name[0] << 8) | name[1]);
  const size_t digest = DigestSize(alg);
  if (digest == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": object name uses unsupported hash ", AlgName(alg)));
  }
  if (name.size() != 2 + digest) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": object name is ", name.size(),
                                                   " bytes; a ", AlgName(alg), " name is ",
                                                   2 + digest));
  }
  return absl::OkStatus();
}

absl::StatusOr<Bytes> SignatureToDer(const TPMT_SIGNATURE& sig) {
  switch (sig.sigAlg) {
    case TPM2_ALG_ECDSA: {
      const TPMS_SIGNATURE_ECC& ecc = sig.signature.ecdsa;
      if (ecc.signatureR.size == 0 || ecc.signatureS.size == 0) {
        return absl::InvalidArgumentError("TPMT_SIGNATURE: empty ECDSA r or s");
      }
      return EcdsaDerFromRS(ByteSpan(ecc.signatureR.buffer, ecc.signatureR.size),
                            ByteSpan(ecc.signatureS.buffer, ecc.signatureS.size));
    }
    case TPM2_ALG_RSASSA:
    case TPM2_ALG_RSAPSS: {
      const TPM2B_PUBLIC_KEY_RSA& raw = sig.signature.rsassa.sig;  // Same layout for rsapss.
      if (raw.size == 0) {
        return absl::InvalidArgumentError("TPMT_SIGNATURE: empty RSA signature");
      }
      return Bytes(raw.buffer, raw.buffer + raw.size);
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "TPMT_SIGNATURE: unsupported signature scheme ", AlgName(sig.sigAlg),
          " (supported: ecdsa, rsassa, rsapss)"));
  }
}

absl::Status VerifySignature(const TPMT_PUBLIC& key, ByteSpan message, const TPMT_SIGNATURE& sig) {
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> pkey, PublicToEvp(key));
  return VerifySignature(key, pkey.get(), message, sig);
}

absl::Status VerifySignature(const TPMT_PUBLIC& key, const EVP_PKEY* pkey, ByteSpan message,
                             const TPMT_SIGNATURE& sig) {
  TPMI_ALG_HASH hash_alg = TPM2_ALG_NULL;
  switch (sig.sigAlg) {
    case TPM2_ALG_ECDSA:
      if (key.type != TPM2_ALG_ECC) {
        return absl::InvalidArgumentError(absl::StrCat(
            "VerifySignature: ecdsa signature for a ", AlgName(key.type), " key"));
      }
      hash_alg = sig.signature.ecdsa.hash;
      break;
    case TPM2_ALG_RSASSA:
    case TPM2_ALG_RSAPSS:
      if (key.type != TPM2_ALG_RSA) {
        return absl::InvalidArgumentError(absl::StrCat("VerifySignature: ", AlgName(sig.sigAlg),
                                                       " signature for a ", AlgName(key.type),
                                                       " key"));
      }
      hash_alg = sig.signature.rsassa.hash;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "VerifySignature: unsupported signature scheme ", AlgName(sig.sigAlg)));
  }
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(hash_alg));
  ASSIGN_OR_RETURN(Bytes der, SignatureToDer(sig));

  OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // Owned by ctx.
  if (ctx == nullptr ||
      EVP_DigestVerifyInit(ctx.get(), &pctx, md, nullptr, const_cast<EVP_PKEY*>(pkey)) != 1) {
    return OpenSslError("VerifySignature: EVP_DigestVerifyInit");
  }
  if (sig.sigAlg == TPM2_ALG_RSASSA) {
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
      return OpenSslError("VerifySignature: set PKCS#1 v1.5 padding");
    }
  } else if (sig.sigAlg == TPM2_ALG_RSAPSS) {
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_AUTO) != 1) {
      return OpenSslError("VerifySignature: set PSS parameters");
    }
  }
  const int rc =
      EVP_DigestVerify(ctx.get(), der.data(), der.size(), message.data(), message.size());
  if (rc == 1) {
    return absl::OkStatus();
  }
  // 0 is "does not verify"; a negative value is a malformed signature (e.g. bad DER or length).
  // Both mean the proof failed.
  DrainOpenSslErrors();
  return absl::PermissionDeniedError(
      absl::StrCat("VerifySignature: ", AlgName(sig.sigAlg), "/", AlgName(hash_alg),
                   " signature does not verify with the given ", AlgName(key.type), " key"));
}

absl::StatusOr<TPMI_ALG_HASH> TpmHashAlg(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return TPM2_ALG_SHA1;
    case HashAlg::kSha256:
      return TPM2_ALG_SHA256;
    case HashAlg::kSha384:
      return TPM2_ALG_SHA384;
    case HashAlg::kSha512:
      return TPM2_ALG_SHA512;
    case HashAlg::kSha224:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "digest ", HashAlgName(hash), " is not a TPM 2.0 hash algorithm (SHA1, SHA256, SHA384, SHA512)"));
}

}  // namespace hwid::wire
