#include "tpm/wire/attest.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

bool IsStrongHash(TPMI_ALG_HASH alg) {
  return alg == TPM2_ALG_SHA256 || alg == TPM2_ALG_SHA384 || alg == TPM2_ALG_SHA512;
}

absl::Status RequireAttr(const TPMT_PUBLIC& ak, TPMA_OBJECT bit, const char* name) {
  if ((ak.objectAttributes & bit) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("AK: attribute ", name, " is not set"));
  }
  return absl::OkStatus();
}

// SignatureScheme returns the scheme and hash of a signature (NULL/NULL when unsupported).
std::pair<TPMI_ALG_SIG_SCHEME, TPMI_ALG_HASH> SchemeOf(const TPMT_SIGNATURE& sig) {
  switch (sig.sigAlg) {
    case TPM2_ALG_ECDSA:
      return {sig.sigAlg, sig.signature.ecdsa.hash};
    case TPM2_ALG_RSASSA:
      return {sig.sigAlg, sig.signature.rsassa.hash};
    case TPM2_ALG_RSAPSS:
      return {sig.sigAlg, sig.signature.rsapss.hash};
    default:
      return {sig.sigAlg, TPM2_ALG_NULL};
  }
}

std::pair<TPMI_ALG_SIG_SCHEME, TPMI_ALG_HASH> SchemeOf(const TPMT_PUBLIC& ak) {
  if (ak.type == TPM2_ALG_RSA) {
    const TPMT_RSA_SCHEME& s = ak.parameters.rsaDetail.scheme;
    return {s.scheme, s.details.anySig.hashAlg};
  }
  if (ak.type == TPM2_ALG_ECC) {
    const TPMT_ECC_SCHEME& s = ak.parameters.eccDetail.scheme;
    return {s.scheme, s.details.anySig.hashAlg};
  }
  return {TPM2_ALG_NULL, TPM2_ALG_NULL};
}

// VerifySignedAttest is steps 2-5 shared by VerifyQuote and VerifyCertify: strict parsing of the
// TPMS_ATTEST and the TPMT_SIGNATURE, the signature's scheme/hash equal to the AK's, the
// signature verifying with the AK (`ak_key` = PublicToEvp(ak), or null to convert here), the
// TPM_GENERATED_VALUE magic and the attestation `type`. `what` prefixes every message.
absl::StatusOr<TPMS_ATTEST> VerifySignedAttest(const TPMT_PUBLIC& ak, const EVP_PKEY* ak_key,
                                               ByteSpan attest, ByteSpan signature,
                                               TPMI_ST_ATTEST type, const char* type_name,
                                               absl::string_view what) {
  ASSIGN_OR_RETURN(TPMS_ATTEST parsed, ParseAttest(attest));
  ASSIGN_OR_RETURN(TPMT_SIGNATURE sig, ParseSignature(signature));
  const auto [ak_scheme, ak_hash] = SchemeOf(ak);
  const auto [sig_scheme, sig_hash] = SchemeOf(sig);
  if (sig_scheme != ak_scheme || sig_hash != ak_hash) {
    return absl::PermissionDeniedError(absl::StrCat(
        what, ": signature scheme ", AlgName(sig_scheme), "/", AlgName(sig_hash),
        " does not match the AK's scheme ", AlgName(ak_scheme), "/", AlgName(ak_hash)));
  }
  absl::Status verified = ak_key != nullptr ? VerifySignature(ak, ak_key, attest, sig)
                                            : VerifySignature(ak, attest, sig);
  if (!verified.ok()) {
    if (verified.code() == absl::StatusCode::kPermissionDenied) {
      return absl::PermissionDeniedError(
          absl::StrCat(what, ": signature does not verify with the AK"));
    }
    return absl::Status(verified.code(), absl::StrCat(what, ": ", verified.message()));
  }
  // Only a TPM-generated structure starts with TPM_GENERATED_VALUE.
  if (parsed.magic != TPM2_GENERATED_VALUE) {
    return absl::PermissionDeniedError(absl::StrCat(what, ": magic 0x",
                                                    absl::Hex(parsed.magic, absl::kZeroPad8),
                                                    " is not TPM_GENERATED_VALUE (0xff544347)"));
  }
  // A structure of another type (quote, certify, creation, NV) must not pass as this one.
  if (parsed.type != type) {
    return absl::PermissionDeniedError(
        absl::StrCat(what, ": attestation type 0x", absl::Hex(parsed.type, absl::kZeroPad4),
                     " is not ", type_name));
  }
  return parsed;
}

std::string PcrName(TPMI_ALG_HASH bank, uint32_t index) {
  return absl::StrCat(HashAlgName(bank), ":", index);
}

}  // namespace

absl::Status CheckAkAttributes(const TPMT_PUBLIC& ak) {
  RETURN_IF_ERROR(RequireAttr(ak, TPMA_OBJECT_RESTRICTED, "restricted"));
  RETURN_IF_ERROR(RequireAttr(ak, TPMA_OBJECT_SIGN_ENCRYPT, "sign"));
  RETURN_IF_ERROR(RequireAttr(ak, TPMA_OBJECT_FIXEDTPM, "fixedTPM"));
  RETURN_IF_ERROR(RequireAttr(ak, TPMA_OBJECT_FIXEDPARENT, "fixedParent"));
  RETURN_IF_ERROR(RequireAttr(ak, TPMA_OBJECT_SENSITIVEDATAORIGIN, "sensitiveDataOrigin"));
  if ((ak.objectAttributes & TPMA_OBJECT_DECRYPT) != 0) {
    return absl::InvalidArgumentError("AK: attribute decrypt is set (an AK must be sign-only)");
  }
  if (!IsStrongHash(ak.nameAlg)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AK: nameAlg ", AlgName(ak.nameAlg), " is not sha256/sha384/sha512"));
  }
  const auto [scheme, hash] = SchemeOf(ak);
  if (ak.type == TPM2_ALG_RSA) {
    if (ak.parameters.rsaDetail.keyBits < 2048) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AK: RSA keyBits ", ak.parameters.rsaDetail.keyBits, " is below 2048"));
    }
    if (scheme != TPM2_ALG_RSASSA && scheme != TPM2_ALG_RSAPSS) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AK: RSA signing scheme ", AlgName(scheme), " is not rsassa or rsapss"));
    }
  } else if (ak.type == TPM2_ALG_ECC) {
    const TPMI_ECC_CURVE curve = ak.parameters.eccDetail.curveID;
    if (curve != TPM2_ECC_NIST_P256 && curve != TPM2_ECC_NIST_P384) {
      return absl::InvalidArgumentError(absl::StrCat("AK: ECC curve 0x",
                                                     absl::Hex(curve, absl::kZeroPad4),
                                                     " is not NIST P-256 or P-384"));
    }
    if (scheme != TPM2_ALG_ECDSA) {
      return absl::InvalidArgumentError(
          absl::StrCat("AK: ECC signing scheme ", AlgName(scheme), " is not ecdsa"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("AK: type ", AlgName(ak.type), " is not rsa or ecc"));
  }
  if (!IsStrongHash(hash)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AK: signing scheme hash ", AlgName(hash), " is not sha256/sha384/sha512"));
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifiedQuote> VerifyQuote(const TPMT_PUBLIC& ak, ByteSpan attest,
                                          ByteSpan signature, ByteSpan nonce,
                                          const PcrValues& pcrs) {
  // 1. The AK. (The magic value proves nothing for an unrestricted key, which signs anything.)
  RETURN_IF_ERROR(CheckAkAttributes(ak));

  // 2-5. Strict parsing, the AK's signature, magic, type.
  ASSIGN_OR_RETURN(TPMS_ATTEST parsed,
                   VerifySignedAttest(ak, nullptr, attest, signature, TPM2_ST_ATTEST_QUOTE,
                                      "TPM_ST_ATTEST_QUOTE (0x8018)", "quote"));

  // 6. Freshness.
  if (!ConstantTimeEquals(ByteSpan(parsed.extraData.buffer, parsed.extraData.size), nonce)) {
    return absl::PermissionDeniedError("quote: extraData does not match the nonce");
  }

  // 7. Reconcile the signed selection with the supplied values, both ways.
  const TPML_PCR_SELECTION& selection = parsed.attested.quote.pcrSelect;
  RETURN_IF_ERROR(ValidatePcrSelection(selection, "quote"));
  const std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> selected = SelectedPcrs(selection);
  std::set<std::pair<TPMI_ALG_HASH, uint32_t>> selected_set(selected.begin(), selected.end());
  for (const auto& [bank, values] : pcrs) {
    for (const auto& [index, value] : values) {
      if (selected_set.count({bank, index}) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "quote: supplied PCR ", PcrName(bank, index), " is not in the quoted selection"));
      }
    }
  }
  Bytes concatenated;
  VerifiedQuote out;
  for (const auto& [bank, index] : selected) {
    auto bank_it = pcrs.find(bank);
    if (bank_it == pcrs.end() || bank_it->second.count(index) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("quote: selected PCR ", PcrName(bank, index),
                                                     " has no supplied value"));
    }
    const Bytes& value = bank_it->second.at(index);
    if (value.size() != DigestSize(bank)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quote: PCR ", PcrName(bank, index), " value is ", value.size(), " bytes; a ",
          HashAlgName(bank), " PCR is ", DigestSize(bank)));
    }
    concatenated.insert(concatenated.end(), value.begin(), value.end());
    out.pcrs[bank][index] = value;
  }

  // 8. pcrDigest, hashed with the signing scheme's hash.
  // The signature's hash, which step 3 found equal to the AK scheme's.
  ASSIGN_OR_RETURN(Bytes digest, Hash(SchemeOf(ak).second, concatenated));
  const TPM2B_DIGEST& quoted = parsed.attested.quote.pcrDigest;
  if (!ConstantTimeEquals(ByteSpan(quoted.buffer, quoted.size), digest)) {
    return absl::PermissionDeniedError(
        "quote: pcrDigest does not match the digest of the supplied PCR values");
  }
  out.attest = parsed;
  return out;
}

absl::Status CheckCertifiedKeyAttributes(const TPMT_PUBLIC& key) {
  const auto require = [&](TPMA_OBJECT bit, const char* name) -> absl::Status {
    if ((key.objectAttributes & bit) == 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("certified key: attribute ", name, " is not set"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(require(TPMA_OBJECT_FIXEDTPM, "fixedTPM (the key could leave this TPM)"));
  RETURN_IF_ERROR(require(TPMA_OBJECT_FIXEDPARENT, "fixedParent (the key is duplicable)"));
  RETURN_IF_ERROR(require(TPMA_OBJECT_SENSITIVEDATAORIGIN,
                          "sensitiveDataOrigin (the private key was imported, not made in the TPM)"));
  RETURN_IF_ERROR(require(TPMA_OBJECT_SIGN_ENCRYPT, "sign"));
  if ((key.objectAttributes & TPMA_OBJECT_DECRYPT) != 0) {
    return absl::PermissionDeniedError("certified key: attribute decrypt is set");
  }
  if ((key.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0) {
    return absl::PermissionDeniedError(
        "certified key: attribute restricted is set (an attestation key, not an SVID key)");
  }
  if (!IsStrongHash(key.nameAlg)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "certified key: nameAlg ", AlgName(key.nameAlg), " is not sha256/sha384/sha512"));
  }
  if (key.type == TPM2_ALG_ECC) {
    const TPMI_ECC_CURVE c = key.parameters.eccDetail.curveID;
    if (c != TPM2_ECC_NIST_P256 && c != TPM2_ECC_NIST_P384) {
      return absl::PermissionDeniedError(absl::StrCat(
          "certified key: ECC curve 0x", absl::Hex(c, absl::kZeroPad4), " is not P-256 or P-384"));
    }
  } else if (key.type == TPM2_ALG_RSA) {
    const uint16_t bits = key.parameters.rsaDetail.keyBits;
    if (bits != 2048 && bits != 3072 && bits != 4096) {
      return absl::PermissionDeniedError(
          absl::StrCat("certified key: RSA keyBits ", bits, " is not 2048, 3072 or 4096"));
    }
  } else {
    return absl::PermissionDeniedError(
        absl::StrCat("certified key: type ", AlgName(key.type), " is not rsa or ecc"));
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifiedCertify> VerifyCertify(const TPMT_PUBLIC& ak, ByteSpan key_public,
                                              ByteSpan attest, ByteSpan signature,
                                              ByteSpan qualifying) {
  RETURN_IF_ERROR(CheckAkAttributes(ak));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> ak_key, PublicToEvp(ak));
  return VerifyCertify(ak, ak_key.get(), key_public, attest, signature, qualifying);
}

absl::StatusOr<VerifiedCertify> VerifyCertify(const TPMT_PUBLIC& ak, const EVP_PKEY* ak_key,
                                              ByteSpan key_public, ByteSpan attest,
                                              ByteSpan signature, ByteSpan qualifying) {
  // 1. The AK (only a restricted key's signature over TPM_GENERATED_VALUE means anything).
  RETURN_IF_ERROR(CheckAkAttributes(ak));

  // 2. Strict parsing.
  absl::StatusOr<TPM2B_PUBLIC> key = ParsePublic(key_public);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("certify: key public area: ", key.status().message()));
  }
  // 3-5. The AK's signature, magic, type (a quote or creation structure does not pass).
  ASSIGN_OR_RETURN(TPMS_ATTEST parsed,
                   VerifySignedAttest(ak, ak_key, attest, signature, TPM2_ST_ATTEST_CERTIFY,
                                      "TPM_ST_ATTEST_CERTIFY (0x8017)", "certify"));

  // 6. Freshness.
  if (!ConstantTimeEquals(ByteSpan(parsed.extraData.buffer, parsed.extraData.size),
                          qualifying)) {
    return absl::PermissionDeniedError(
        "certify: extraData does not match this session's certify nonce (stale or replayed)");
  }

  // 7. The certified object is the presented public area.
  ASSIGN_OR_RETURN(Bytes name, ObjectName(key->publicArea));
  const TPM2B_NAME& certified = parsed.attested.certify.name;
  if (!ConstantTimeEquals(ByteSpan(certified.name, certified.size), name)) {
    return absl::PermissionDeniedError(
        "certify: the certified name is not the name of the presented key public area");
  }

  // 8. What kind of key it is.
  RETURN_IF_ERROR(CheckCertifiedKeyAttributes(key->publicArea));
  VerifiedCertify out;
  out.key = key->publicArea;
  // The TPM vouched for this public area (signature and name checked above).
  ASSIGN_OR_RETURN(out.pkix_der, PublicKeyDerTrusted(key->publicArea));
  return out;
}

}  // namespace hwid::wire
