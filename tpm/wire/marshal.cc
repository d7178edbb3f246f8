#include "tpm/wire/marshal.h"

#include <tss2/tss2_mu.h>

#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace hwid::wire {
namespace {

// absl::string_view is its own type in Debian's abseil; convert explicitly.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string MuError(TSS2_RC rc) {
  switch (rc) {
    case TSS2_MU_RC_INSUFFICIENT_BUFFER:
      return "truncated, or an inner size field exceeds the data or its buffer";
    case TSS2_MU_RC_BAD_SIZE:
      return "an inner size field is out of range";
    case TSS2_MU_RC_BAD_VALUE:
      return "an algorithm or type selector is not valid for this structure";
    case TSS2_SYS_RC_MALFORMED_RESPONSE:
      return "a list count or PCR select size is out of range";
    case TSS2_SYS_RC_BAD_VALUE:
      return "an inner structure is not well formed";
    default:
      return absl::StrFormat("tss2-mu error 0x%08x", rc);
  }
}

uint16_t ReadBe16(ByteSpan in) { return static_cast<uint16_t>((in[0] << 8) | in[1]); }

// CheckTpm2bFrame checks the outer frame of a marshalled TPM2B: a 2-byte size, exactly `size`
// bytes after it, size >= 1 and size <= capacity.
absl::Status CheckTpm2bFrame(std::string_view what, ByteSpan in, size_t capacity) {
  if (in.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": empty input"));
  }
  if (in.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": truncated (", in.size(), " byte, the size field needs 2)"));
  }
  const size_t size = ReadBe16(in);
  const size_t body = in.size() - 2;
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": size field is 0 (empty structure)"));
  }
  if (size > capacity) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": size field ", size,
                                                   " exceeds the maximum of ", capacity));
  }
  if (size > body) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": size field says ", size,
                                                   " bytes but only ", body, " follow"));
  }
  if (size < body) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": ", body - size, " trailing bytes after the structure"));
  }
  return absl::OkStatus();
}

template <typename T>
using UnmarshalFn = TSS2_RC (*)(const uint8_t[], size_t, size_t*, T*);
template <typename T>
using MarshalFn = TSS2_RC (*)(const T*, uint8_t[], size_t, size_t*);

// UnmarshalExact decodes one T that must span all of `in`.
template <typename T>
absl::StatusOr<T> UnmarshalExact(std::string_view what, ByteSpan in, UnmarshalFn<T> fn) {
  if (in.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": empty input"));
  }
  T out;
  std::memset(&out, 0, sizeof(out));
  size_t offset = 0;
  const TSS2_RC rc = fn(in.data(), in.size(), &offset, &out);
  if (rc != TSS2_RC_SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": malformed (", MuError(rc), ")"));
  }
  if (offset > in.size()) {  // Cannot happen with a correct tss2-mu; never trust it blindly.
    return absl::InternalError(absl::StrCat(Sv(what), ": decoder overran its input"));
  }
  if (offset != in.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": ", in.size() - offset, " trailing bytes after the structure"));
  }
  return out;
}

template <typename T>
absl::StatusOr<Bytes> MarshalToBytes(std::string_view what, const T& value, MarshalFn<T> fn) {
  // A marshalled structure is never larger than its C struct (unions and TPM2B buffers are
  // stored at their maximum size); the slack only guards against surprises.
  Bytes buf(sizeof(T) + 64);
  size_t offset = 0;
  const TSS2_RC rc = fn(&value, buf.data(), buf.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": cannot marshal (", MuError(rc), ")"));
  }
  buf.resize(offset);
  return buf;
}

bool KnownNameAlg(TPMI_ALG_HASH alg) {
  return alg == TPM2_ALG_SHA1 || alg == TPM2_ALG_SHA256 || alg == TPM2_ALG_SHA384 ||
         alg == TPM2_ALG_SHA512;
}

absl::Status CheckTpmtPublicSemantics(std::string_view what, const TPMT_PUBLIC& pub) {
  switch (pub.type) {
    case TPM2_ALG_RSA:
    case TPM2_ALG_ECC:
    case TPM2_ALG_KEYEDHASH:
    case TPM2_ALG_SYMCIPHER:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(Sv(what), ": unsupported object type ", AlgName(pub.type)));
  }
  if (!KnownNameAlg(pub.nameAlg)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": unsupported nameAlg ", AlgName(pub.nameAlg)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string AlgName(TPM2_ALG_ID alg) {
  switch (alg) {
    case TPM2_ALG_RSA: return "rsa";
    case TPM2_ALG_SHA1: return "sha1";
    case TPM2_ALG_HMAC: return "hmac";
    case TPM2_ALG_AES: return "aes";
    case TPM2_ALG_KEYEDHASH: return "keyedhash";
    case TPM2_ALG_SHA256: return "sha256";
    case TPM2_ALG_SHA384: return "sha384";
    case TPM2_ALG_SHA512: return "sha512";
    case TPM2_ALG_NULL: return "null";
    case TPM2_ALG_SM3_256: return "sm3_256";
    case TPM2_ALG_RSASSA: return "rsassa";
    case TPM2_ALG_RSAES: return "rsaes";
    case TPM2_ALG_RSAPSS: return "rsapss";
    case TPM2_ALG_OAEP: return "oaep";
    case TPM2_ALG_ECDSA: return "ecdsa";
    case TPM2_ALG_ECDH: return "ecdh";
    case TPM2_ALG_ECDAA: return "ecdaa";
    case TPM2_ALG_SM2: return "sm2";
    case TPM2_ALG_ECSCHNORR: return "ecschnorr";
    case TPM2_ALG_ECC: return "ecc";
    case TPM2_ALG_SYMCIPHER: return "symcipher";
    case TPM2_ALG_CFB: return "cfb";
    case TPM2_ALG_TDES: return "tdes";
    case TPM2_ALG_MGF1: return "mgf1";
    case TPM2_ALG_XOR: return "xor";
    case TPM2_ALG_ECMQV: return "ecmqv";
    case TPM2_ALG_KDF1_SP800_56A: return "kdf1-sp800-56a";
    case TPM2_ALG_KDF2: return "kdf2";
    case TPM2_ALG_KDF1_SP800_108: return "kdf1-sp800-108";
    case TPM2_ALG_SM4: return "sm4";
    case TPM2_ALG_CAMELLIA: return "camellia";
    case TPM2_ALG_SHA3_256: return "sha3-256";
    case TPM2_ALG_SHA3_384: return "sha3-384";
    case TPM2_ALG_SHA3_512: return "sha3-512";
    case TPM2_ALG_CMAC: return "cmac";
    case TPM2_ALG_CTR: return "ctr";
    case TPM2_ALG_OFB: return "ofb";
    case TPM2_ALG_CBC: return "cbc";
    case TPM2_ALG_ECB: return "ecb";
    default: return absl::StrFormat("0x%04x", alg);
  }
}

absl::StatusOr<TPMT_PUBLIC> ParseTpmtPublic(ByteSpan tpmt_public) {
  ASSIGN_OR_RETURN(TPMT_PUBLIC pub,
                   UnmarshalExact<TPMT_PUBLIC>("TPMT_PUBLIC", tpmt_public,
                                               &Tss2_MU_TPMT_PUBLIC_Unmarshal));
  RETURN_IF_ERROR(CheckTpmtPublicSemantics("TPMT_PUBLIC", pub));
  return pub;
}

absl::StatusOr<TPM2B_PUBLIC> ParsePublic(ByteSpan tpm2b_public) {
  // Framed by hand: tss2-mu 3.2.1's TPM2B_PUBLIC decoder ignores the inner TPMT_PUBLIC's error
  // and never compares the size field with what the TPMT_PUBLIC consumed.
  RETURN_IF_ERROR(
      CheckTpm2bFrame("TPM2B_PUBLIC", tpm2b_public, sizeof(TPM2B_PUBLIC::publicArea)));
  const ByteSpan inner = tpm2b_public.subspan(2);
  TPM2B_PUBLIC out;
  std::memset(&out, 0, sizeof(out));
  size_t offset = 0;
  const TSS2_RC rc =
      Tss2_MU_TPMT_PUBLIC_Unmarshal(inner.data(), inner.size(), &offset, &out.publicArea);
  if (rc != TSS2_RC_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("TPM2B_PUBLIC: malformed TPMT_PUBLIC (", MuError(rc), ")"));
  }
  RETURN_IF_ERROR(CheckTpmtPublicSemantics("TPM2B_PUBLIC", out.publicArea));
  if (offset != inner.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TPM2B_PUBLIC: size field says ", inner.size(), " bytes but the TPMT_PUBLIC is ", offset,
        " bytes (", inner.size() - offset, " trailing bytes after the structure)"));
  }
  out.size = static_cast<UINT16>(inner.size());
  return out;
}

absl::StatusOr<Bytes> MarshalTpmtPublic(const TPMT_PUBLIC& pub) {
  return MarshalToBytes<TPMT_PUBLIC>("TPMT_PUBLIC", pub, &Tss2_MU_TPMT_PUBLIC_Marshal);
}

absl::StatusOr<Bytes> MarshalPublic(const TPM2B_PUBLIC& pub) {
  ASSIGN_OR_RETURN(Bytes tpmt, MarshalTpmtPublic(pub.publicArea));
  if (tpmt.size() > 0xffff) {
    return absl::InvalidArgumentError("TPM2B_PUBLIC: TPMT_PUBLIC longer than 65535 bytes");
  }
  Bytes out;
  out.reserve(tpmt.size() + 2);
  out.push_back(static_cast<uint8_t>(tpmt.size() >> 8));
  out.push_back(static_cast<uint8_t>(tpmt.size()));
  out.insert(out.end(), tpmt.begin(), tpmt.end());
  return out;
}

absl::StatusOr<TPM2B_PRIVATE> ParsePrivate(ByteSpan tpm2b_private) {
  RETURN_IF_ERROR(
      CheckTpm2bFrame("TPM2B_PRIVATE", tpm2b_private, sizeof(TPM2B_PRIVATE::buffer)));
  return UnmarshalExact<TPM2B_PRIVATE>("TPM2B_PRIVATE", tpm2b_private,
                                       &Tss2_MU_TPM2B_PRIVATE_Unmarshal);
}

absl::StatusOr<Bytes> MarshalPrivate(const TPM2B_PRIVATE& priv) {
  if (priv.size == 0) {
    return absl::InvalidArgumentError("TPM2B_PRIVATE: size is 0 (empty structure)");
  }
  return MarshalToBytes<TPM2B_PRIVATE>("TPM2B_PRIVATE", priv, &Tss2_MU_TPM2B_PRIVATE_Marshal);
}

absl::StatusOr<TPMS_ATTEST> ParseAttest(ByteSpan tpms_attest) {
  return UnmarshalExact<TPMS_ATTEST>("TPMS_ATTEST", tpms_attest, &Tss2_MU_TPMS_ATTEST_Unmarshal);
}

absl::StatusOr<Bytes> MarshalAttest(const TPMS_ATTEST& attest) {
  return MarshalToBytes<TPMS_ATTEST>("TPMS_ATTEST", attest, &Tss2_MU_TPMS_ATTEST_Marshal);
}

absl::StatusOr<TPMT_SIGNATURE> ParseSignature(ByteSpan tpmt_signature) {
  return UnmarshalExact<TPMT_SIGNATURE>("TPMT_SIGNATURE", tpmt_signature,
                                        &Tss2_MU_TPMT_SIGNATURE_Unmarshal);
}

absl::StatusOr<Bytes> MarshalSignature(const TPMT_SIGNATURE& sig) {
  return MarshalToBytes<TPMT_SIGNATURE>("TPMT_SIGNATURE", sig, &Tss2_MU_TPMT_SIGNATURE_Marshal);
}

absl::StatusOr<TPM2B_ID_OBJECT> ParseIdObject(ByteSpan tpm2b_id_object) {
  RETURN_IF_ERROR(CheckTpm2bFrame("TPM2B_ID_OBJECT", tpm2b_id_object,
                                  sizeof(TPM2B_ID_OBJECT::credential)));
  return UnmarshalExact<TPM2B_ID_OBJECT>("TPM2B_ID_OBJECT", tpm2b_id_object,
                                         &Tss2_MU_TPM2B_ID_OBJECT_Unmarshal);
}

absl::StatusOr<Bytes> MarshalIdObject(const TPM2B_ID_OBJECT& id_object) {
  if (id_object.size == 0) {
    return absl::InvalidArgumentError("TPM2B_ID_OBJECT: size is 0 (empty structure)");
  }
  return MarshalToBytes<TPM2B_ID_OBJECT>("TPM2B_ID_OBJECT", id_object,
                                         &Tss2_MU_TPM2B_ID_OBJECT_Marshal);
}

absl::StatusOr<TPM2B_ENCRYPTED_SECRET> ParseEncryptedSecret(ByteSpan tpm2b_encrypted_secret) {
  RETURN_IF_ERROR(CheckTpm2bFrame("TPM2B_ENCRYPTED_SECRET", tpm2b_encrypted_secret,
                                  sizeof(TPM2B_ENCRYPTED_SECRET::secret)));
  return UnmarshalExact<TPM2B_ENCRYPTED_SECRET>("TPM2B_ENCRYPTED_SECRET", tpm2b_encrypted_secret,
                                                &Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal);
}

absl::StatusOr<Bytes> MarshalEncryptedSecret(const TPM2B_ENCRYPTED_SECRET& secret) {
  if (secret.size == 0) {
    return absl::InvalidArgumentError("TPM2B_ENCRYPTED_SECRET: size is 0 (empty structure)");
  }
  return MarshalToBytes<TPM2B_ENCRYPTED_SECRET>("TPM2B_ENCRYPTED_SECRET", secret,
                                                &Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal);
}

}  // namespace hwid::wire
