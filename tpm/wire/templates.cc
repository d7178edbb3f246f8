#include "tpm/wire/templates.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Policy digests from the TCG EK Credential Profile 2.x, Annex B ("Computing PolicyA/B/C").
// PolicyA = TPM2_PolicySecret(TPM_RH_ENDORSEMENT); PolicyC = TPM2_PolicyAuthorizeNV(EK policy NV
// index 0x01c07f01/02/03); PolicyB = TPM2_PolicyOR(PolicyA, PolicyC). The unit tests recompute
// PolicyA and PolicyB from the policy-command definitions.
constexpr uint8_t kPolicyASha256[] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};
constexpr uint8_t kPolicyASha384[] = {
    0x8b, 0xbf, 0x22, 0x66, 0x53, 0x7c, 0x17, 0x1c, 0xb5, 0x6e, 0x40, 0x3c, 0x4d, 0xc1, 0xd4, 0xb6,
    0x4f, 0x43, 0x26, 0x11, 0xdc, 0x38, 0x6e, 0x6f, 0x53, 0x20, 0x50, 0xc3, 0x27, 0x8c, 0x93, 0x0e,
    0x14, 0x3e, 0x8b, 0xb1, 0x13, 0x38, 0x24, 0xcc, 0xb4, 0x31, 0x05, 0x38, 0x71, 0xc6, 0xdb, 0x53};
constexpr uint8_t kPolicyASha512[] = {
    0x1e, 0x3b, 0x76, 0x50, 0x2c, 0x8a, 0x14, 0x25, 0xaa, 0x0b, 0x7b, 0x3f, 0xc6, 0x46, 0xa1, 0xb0,
    0xfa, 0xe0, 0x63, 0xb0, 0x3b, 0x53, 0x68, 0xf9, 0xc4, 0xcd, 0xde, 0xca, 0xff, 0x08, 0x91, 0xdd,
    0x68, 0x2b, 0xac, 0x1a, 0x85, 0xd4, 0xd8, 0x32, 0xb7, 0x81, 0xea, 0x45, 0x19, 0x15, 0xde, 0x5f,
    0xc5, 0xbf, 0x0d, 0xc4, 0xa1, 0x91, 0x7c, 0xd4, 0x2f, 0xa0, 0x41, 0xe3, 0xf9, 0x98, 0xe0, 0xee};
constexpr uint8_t kPolicyBSha256[] = {
    0xca, 0x3d, 0x0a, 0x99, 0xa2, 0xb9, 0x39, 0x06, 0xf7, 0xa3, 0x34, 0x24, 0x14, 0xef, 0xcf, 0xb3,
    0xa3, 0x85, 0xd4, 0x4c, 0xd1, 0xfd, 0x45, 0x90, 0x89, 0xd1, 0x9b, 0x50, 0x71, 0xc0, 0xb7, 0xa0};
constexpr uint8_t kPolicyBSha384[] = {
    0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc, 0xf5, 0xfd, 0x3a, 0x1a,
    0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4, 0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca,
    0xcb, 0x47, 0xba, 0x09, 0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12};
constexpr uint8_t kPolicyBSha512[] = {
    0xb8, 0x22, 0x1c, 0xa6, 0x9e, 0x85, 0x50, 0xa4, 0x91, 0x4d, 0xe3, 0xfa, 0xa6, 0xa1, 0x8c, 0x07,
    0x2c, 0xc0, 0x12, 0x08, 0x07, 0x3a, 0x92, 0x8d, 0x5d, 0x66, 0xd5, 0x9e, 0xf7, 0x9e, 0x49, 0xa4,
    0x29, 0xc4, 0x1a, 0x6b, 0x26, 0x95, 0x71, 0xd5, 0x7e, 0xdb, 0x25, 0xfb, 0xdb, 0x18, 0x38, 0x42,
    0x56, 0x08, 0xb4, 0x13, 0xcd, 0x61, 0x6a, 0x5f, 0x6d, 0xb5, 0xb6, 0x07, 0x1a, 0xf9, 0x9b, 0xea};
constexpr uint8_t kPolicyCSha256[] = {
    0x37, 0x67, 0xe2, 0xed, 0xd4, 0x3f, 0xf4, 0x5a, 0x3a, 0x7e, 0x1e, 0xae, 0xfc, 0xef, 0x78, 0x64,
    0x3d, 0xca, 0x96, 0x46, 0x32, 0xe7, 0xaa, 0xd8, 0x2c, 0x67, 0x3a, 0x30, 0xd8, 0x63, 0x3f, 0xde};
constexpr uint8_t kPolicyCSha384[] = {
    0xd6, 0x03, 0x2c, 0xe6, 0x1f, 0x2f, 0xb3, 0xc2, 0x40, 0xeb, 0x3c, 0xf6, 0xa3, 0x32, 0x37, 0xef,
    0x2b, 0x6a, 0x16, 0xf4, 0x29, 0x3c, 0x22, 0xb4, 0x55, 0xe2, 0x61, 0xcf, 0xfd, 0x21, 0x7a, 0xd5,
    0xb4, 0x94, 0x7c, 0x2d, 0x73, 0xe6, 0x30, 0x05, 0xee, 0xd2, 0xdc, 0x2b, 0x35, 0x93, 0xd1, 0x65};
constexpr uint8_t kPolicyCSha512[] = {
    0x58, 0x9e, 0xe1, 0xe1, 0x46, 0x54, 0x47, 0x16, 0xe8, 0xde, 0xaf, 0xe6, 0xdb, 0x24, 0x7b, 0x01,
    0xb8, 0x1e, 0x9f, 0x9c, 0x7d, 0xd1, 0x6b, 0x81, 0x4a, 0xa1, 0x59, 0x13, 0x87, 0x49, 0x10, 0x5f,
    0xba, 0x53, 0x88, 0xdd, 0x1d, 0xea, 0x70, 0x2f, 0x35, 0x24, 0x0c, 0x18, 0x49, 0x33, 0x12, 0x1e,
    0x2c, 0x61, 0xb8, 0xf5, 0x0d, 0x3e, 0xf9, 0x13, 0x93, 0xa4, 0x9a, 0x38, 0xc3, 0xf7, 0x3f, 0xc8};

template <size_t N>
Bytes ToBytes(const uint8_t (&a)[N]) {
  return Bytes(a, a + N);
}

Bytes PolicyA(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA384:
      return ToBytes(kPolicyASha384);
    case TPM2_ALG_SHA512:
      return ToBytes(kPolicyASha512);
    default:
      return ToBytes(kPolicyASha256);
  }
}

Bytes PolicyB(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA384:
      return ToBytes(kPolicyBSha384);
    case TPM2_ALG_SHA512:
      return ToBytes(kPolicyBSha512);
    default:
      return ToBytes(kPolicyBSha256);
  }
}

Bytes PolicyC(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA384:
      return ToBytes(kPolicyCSha384);
    case TPM2_ALG_SHA512:
      return ToBytes(kPolicyCSha512);
    default:
      return ToBytes(kPolicyCSha256);
  }
}

constexpr EkSpec kEkSpecs[] = {
    {EkType::kRsa2048, "rsa2048", 0x01c00002, 0x81010001},
    {EkType::kEccP256, "ecc-p256", 0x01c0000a, 0x81010002},
    {EkType::kRsa2048High, "rsa2048-h1", 0x01c00012, 0},
    {EkType::kEccP256High, "ecc-p256-h2", 0x01c00014, 0},
    {EkType::kEccP384High, "ecc-p384-h3", 0x01c00016, 0},
    {EkType::kEccP521High, "ecc-p521-h4", 0x01c00018, 0},
    {EkType::kRsa3072High, "rsa3072-h6", 0x01c0001c, 0},
    {EkType::kRsa4096High, "rsa4096-h7", 0x01c0001e, 0},
};

// Per-type template parameters.
struct EkParams {
  bool high;
  TPMI_ALG_PUBLIC type;
  TPMI_ALG_HASH name_alg;
  uint16_t aes_bits;
  uint16_t rsa_bits;       // RSA only
  TPMI_ECC_CURVE curve;    // ECC only
  uint16_t unique_bytes;   // L templates: zero-filled unique size (RSA n, or each of ECC x/y)
};

EkParams ParamsFor(EkType t) {
  switch (t) {
    case EkType::kRsa2048:
      return {false, TPM2_ALG_RSA, TPM2_ALG_SHA256, 128, 2048, 0, 256};
    case EkType::kEccP256:
      return {false, TPM2_ALG_ECC, TPM2_ALG_SHA256, 128, 0, TPM2_ECC_NIST_P256, 32};
    case EkType::kRsa2048High:
      return {true, TPM2_ALG_RSA, TPM2_ALG_SHA256, 128, 2048, 0, 0};
    case EkType::kEccP256High:
      return {true, TPM2_ALG_ECC, TPM2_ALG_SHA256, 128, 0, TPM2_ECC_NIST_P256, 0};
    case EkType::kEccP384High:
      return {true, TPM2_ALG_ECC, TPM2_ALG_SHA384, 256, 0, TPM2_ECC_NIST_P384, 0};
    case EkType::kEccP521High:
      return {true, TPM2_ALG_ECC, TPM2_ALG_SHA512, 256, 0, TPM2_ECC_NIST_P521, 0};
    case EkType::kRsa3072High:
      return {true, TPM2_ALG_RSA, TPM2_ALG_SHA384, 256, 3072, 0, 0};
    case EkType::kRsa4096High:
      return {true, TPM2_ALG_RSA, TPM2_ALG_SHA384, 256, 4096, 0, 0};
  }
  return {false, TPM2_ALG_RSA, TPM2_ALG_SHA256, 128, 2048, 0, 256};  // Unreachable.
}

void SetDigest(TPM2B_DIGEST* d, const Bytes& value) {
  d->size = static_cast<UINT16>(value.size());
  std::memcpy(d->buffer, value.data(), value.size());
}

// WithSize sets pub.size to the length of the marshalled publicArea (templates are static data,
// so marshalling cannot fail; size stays 0 if it ever did).
TPM2B_PUBLIC WithSize(TPM2B_PUBLIC pub) {
  absl::StatusOr<Bytes> tpmt = MarshalTpmtPublic(pub.publicArea);
  if (tpmt.ok()) {
    pub.size = static_cast<UINT16>(tpmt->size());
  }
  return pub;
}

TPM2B_PUBLIC Zeroed() {
  TPM2B_PUBLIC pub;
  std::memset(&pub, 0, sizeof(pub));
  return pub;
}

void SetAes(TPMT_SYM_DEF_OBJECT* sym, uint16_t bits) {
  sym->algorithm = TPM2_ALG_AES;
  sym->keyBits.aes = bits;
  sym->mode.aes = TPM2_ALG_CFB;
}

constexpr TPMA_OBJECT kSrkAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA |
                                       TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;

TPM2B_PUBLIC KeyTemplate(KeyAlg a, TPMA_OBJECT attributes, bool restricted) {
  TPM2B_PUBLIC pub = Zeroed();
  TPMT_PUBLIC& p = pub.publicArea;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = attributes;
  switch (a) {
    case KeyAlg::kEcP256:
    case KeyAlg::kEcP384: {
      p.type = TPM2_ALG_ECC;
      TPMS_ECC_PARMS& e = p.parameters.eccDetail;
      e.symmetric.algorithm = TPM2_ALG_NULL;
      e.curveID = a == KeyAlg::kEcP256 ? TPM2_ECC_NIST_P256 : TPM2_ECC_NIST_P384;
      e.kdf.scheme = TPM2_ALG_NULL;
      if (restricted) {
        e.scheme.scheme = TPM2_ALG_ECDSA;
        e.scheme.details.ecdsa.hashAlg =
            a == KeyAlg::kEcP256 ? TPM2_ALG_SHA256 : TPM2_ALG_SHA384;
      } else {
        e.scheme.scheme = TPM2_ALG_NULL;
      }
      break;
    }
    case KeyAlg::kRsa2048:
    case KeyAlg::kRsa3072:
    case KeyAlg::kRsa4096: {
      p.type = TPM2_ALG_RSA;
      TPMS_RSA_PARMS& r = p.parameters.rsaDetail;
      r.symmetric.algorithm = TPM2_ALG_NULL;
      r.keyBits = a == KeyAlg::kRsa2048 ? 2048 : a == KeyAlg::kRsa3072 ? 3072 : 4096;
      r.exponent = 0;
      if (restricted) {
        r.scheme.scheme = TPM2_ALG_RSASSA;
        r.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
      } else {
        r.scheme.scheme = TPM2_ALG_NULL;
      }
      break;
    }
  }
  return WithSize(pub);
}

}  // namespace

absl::Span<const EkSpec> AllEkSpecs() { return absl::MakeConstSpan(kEkSpecs); }

const EkSpec& EkSpecFor(EkType t) {
  for (const EkSpec& s : kEkSpecs) {
    if (s.type == t) {
      return s;
    }
  }
  return kEkSpecs[0];  // Unreachable: every enumerator has a row.
}

absl::StatusOr<EkType> ParseEkType(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(Sv(name));
  std::vector<std::string> names;
  for (const EkSpec& s : kEkSpecs) {
    if (lower == s.name) {
      return s.type;
    }
    names.emplace_back(s.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown EK type \"", Sv(name),
                                                 "\" (valid: ", absl::StrJoin(names, ", "), ")"));
}

TPM2B_PUBLIC EkTemplate(EkType t) {
  const EkParams k = ParamsFor(t);
  TPM2B_PUBLIC pub = Zeroed();
  TPMT_PUBLIC& p = pub.publicArea;
  p.type = k.type;
  p.nameAlg = k.name_alg;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                       TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  if (k.high) {
    p.objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
    SetDigest(&p.authPolicy, PolicyB(k.name_alg));
  } else {
    SetDigest(&p.authPolicy, PolicyA(k.name_alg));
  }
  if (k.type == TPM2_ALG_RSA) {
    TPMS_RSA_PARMS& r = p.parameters.rsaDetail;
    SetAes(&r.symmetric, k.aes_bits);
    r.scheme.scheme = TPM2_ALG_NULL;
    r.keyBits = k.rsa_bits;
    r.exponent = 0;
    p.unique.rsa.size = k.unique_bytes;  // Buffer already zero-filled.
  } else {
    TPMS_ECC_PARMS& e = p.parameters.eccDetail;
    SetAes(&e.symmetric, k.aes_bits);
    e.scheme.scheme = TPM2_ALG_NULL;
    e.curveID = k.curve;
    e.kdf.scheme = TPM2_ALG_NULL;
    p.unique.ecc.x.size = k.unique_bytes;
    p.unique.ecc.y.size = k.unique_bytes;
  }
  return WithSize(pub);
}

EkPolicy EkPolicyFor(EkType t) {
  const EkParams k = ParamsFor(t);
  EkPolicy policy;
  policy.name_alg = k.name_alg;
  if (k.high) {
    policy.needs_policy_or = true;
    policy.or_branches = {PolicyA(k.name_alg), PolicyC(k.name_alg)};
    policy.secret_branch = 0;
    policy.policy_digest = PolicyB(k.name_alg);
  } else {
    policy.needs_policy_or = false;
    policy.or_branches = {PolicyA(k.name_alg)};
    policy.secret_branch = 0;
    policy.policy_digest = PolicyA(k.name_alg);
  }
  return policy;
}

TPM2B_PUBLIC SrkTemplateEcc() {
  TPM2B_PUBLIC pub = Zeroed();
  TPMT_PUBLIC& p = pub.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = kSrkAttributes;
  TPMS_ECC_PARMS& e = p.parameters.eccDetail;
  SetAes(&e.symmetric, 128);
  e.scheme.scheme = TPM2_ALG_NULL;
  e.curveID = TPM2_ECC_NIST_P256;
  e.kdf.scheme = TPM2_ALG_NULL;
  return WithSize(pub);
}

TPM2B_PUBLIC SrkTemplateRsa() {
  TPM2B_PUBLIC pub = Zeroed();
  TPMT_PUBLIC& p = pub.publicArea;
  p.type = TPM2_ALG_RSA;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = kSrkAttributes;
  TPMS_RSA_PARMS& r = p.parameters.rsaDetail;
  SetAes(&r.symmetric, 128);
  r.scheme.scheme = TPM2_ALG_NULL;
  r.keyBits = 2048;
  r.exponent = 0;
  return WithSize(pub);
}

TPM2B_PUBLIC AkTemplate(KeyAlg a) {
  return KeyTemplate(a,
                     TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                         TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT,
                     /*restricted=*/true);
}

TPM2B_PUBLIC SigningKeyTemplate(KeyAlg a) {
  return KeyTemplate(a,
                     TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                         TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT,
                     /*restricted=*/false);
}

}  // namespace hwid::wire
