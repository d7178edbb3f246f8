// Templates: byte-exact TCG L-1/L-2 EK templates (hand-assembled from the EK Credential Profile
// tables), cross-checks against EKs made by tpm2_createek on swtpm, and the EK policy digests
// recomputed from the policy-command definitions (TPM 2.0 Part 3 PolicySecret / PolicyOR).
#include "tpm/wire/templates.h"

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::Hex;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::ReadTestdata;
using ::hwid::wire::testing::Sha;
using ::hwid::wire::testing::StatusIs;

constexpr char kPolicyA[] = "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa";

std::string Zeros(size_t n) { return std::string(2 * n, '0'); }

Bytes Cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

TEST(EkTemplate, L1RsaMatchesTheTcgTemplateBytes) {
  const Bytes tpmt = Hex(std::string("0001"        // type TPM_ALG_RSA
                                     "000b"        // nameAlg SHA256
                                     "000300b2"    // fixedTPM|fixedParent|sensitiveDataOrigin|
                                                   // adminWithPolicy|restricted|decrypt
                                     "0020") +     // authPolicy: PolicyA (SHA256)
                         kPolicyA +
                         "0006" "0080" "0043"      // symmetric AES-128-CFB
                         "0010"                    // scheme NULL
                         "0800"                    // keyBits 2048
                         "00000000"                // exponent 0 (= 65537)
                         "0100" + Zeros(256));     // unique: 256 zero bytes
  ASSERT_EQ(tpmt.size(), 314u);
  EXPECT_EQ(MarshalPublic(EkTemplate(EkType::kRsa2048)).value(), Cat({Hex("013a"), tpmt}));
}

TEST(EkTemplate, L2EccMatchesTheTcgTemplateBytes) {
  const Bytes tpmt = Hex(std::string("0023"        // type TPM_ALG_ECC
                                     "000b"        // nameAlg SHA256
                                     "000300b2"    // same attributes as L-1
                                     "0020") +
                         kPolicyA +
                         "0006" "0080" "0043"      // symmetric AES-128-CFB
                         "0010"                    // scheme NULL
                         "0003"                    // curve NIST P-256
                         "0010"                    // kdf NULL
                         "0020" + Zeros(32) +      // unique.x: 32 zero bytes
                         "0020" + Zeros(32));      // unique.y: 32 zero bytes
  ASSERT_EQ(tpmt.size(), 122u);
  EXPECT_EQ(MarshalPublic(EkTemplate(EkType::kEccP256)).value(), Cat({Hex("007a"), tpmt}));
}

// tpm2_createek (tpm2-tools 5.4) uses the TCG default templates: apart from the key itself, the
// EKs it made on swtpm must equal ours, and a TPM's Name for them must equal ObjectName().
TEST(EkTemplate, MatchesEksCreatedOnSwtpm) {
  for (const auto& [file, type] :
       std::vector<std::pair<std::string, EkType>>{{"ek_rsa", EkType::kRsa2048},
                                                   {"ek_ecc", EkType::kEccP256}}) {
    SCOPED_TRACE(file);
    absl::StatusOr<TPM2B_PUBLIC> real = ParsePublic(ReadTestdata(file + ".pub"));
    ASSERT_THAT(real, IsOk());
    EXPECT_EQ(ObjectName(real->publicArea).value(), ReadTestdata(file + ".name"));
    TPMT_PUBLIC ours = EkTemplate(type).publicArea;
    ours.unique = real->publicArea.unique;
    EXPECT_EQ(MarshalTpmtPublic(ours).value(), MarshalTpmtPublic(real->publicArea).value());
  }
}

// swtpm_setup persists a high-range H-3 (P-384) EK at 0x81010016: our template must match it.
TEST(EkTemplate, H3MatchesTheEkSwtpmSetupCreates) {
  absl::StatusOr<TPM2B_PUBLIC> real = ParsePublic(ReadTestdata("swtpm_setup_ek_p384.pub"));
  ASSERT_THAT(real, IsOk());
  TPMT_PUBLIC ours = EkTemplate(EkType::kEccP384High).publicArea;
  ours.unique = real->publicArea.unique;
  EXPECT_EQ(MarshalTpmtPublic(ours).value(), MarshalTpmtPublic(real->publicArea).value());
}

struct HighRow {
  EkType type;
  TPMI_ALG_PUBLIC alg;
  TPMI_ALG_HASH name_alg;
  uint16_t aes_bits;
  uint16_t rsa_bits;
  TPMI_ECC_CURVE curve;
  std::string policy_b;
};

TEST(EkTemplate, HighRangeTemplates) {
  const std::vector<HighRow> rows = {
      {EkType::kRsa2048High, TPM2_ALG_RSA, TPM2_ALG_SHA256, 128, 2048, 0,
       "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0"},
      {EkType::kEccP256High, TPM2_ALG_ECC, TPM2_ALG_SHA256, 128, 0, TPM2_ECC_NIST_P256,
       "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0"},
      {EkType::kEccP384High, TPM2_ALG_ECC, TPM2_ALG_SHA384, 256, 0, TPM2_ECC_NIST_P384,
       "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
       "cb47ba09699646150f9fc000f3f80e12"},
      {EkType::kEccP521High, TPM2_ALG_ECC, TPM2_ALG_SHA512, 256, 0, TPM2_ECC_NIST_P521,
       "b8221ca69e8550a4914de3faa6a18c072cc01208073a928d5d66d59ef79e49a4"
       "29c41a6b269571d57edb25fbdb1838425608b413cd616a5f6db5b6071af99bea"},
      {EkType::kRsa3072High, TPM2_ALG_RSA, TPM2_ALG_SHA384, 256, 3072, 0,
       "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
       "cb47ba09699646150f9fc000f3f80e12"},
      {EkType::kRsa4096High, TPM2_ALG_RSA, TPM2_ALG_SHA384, 256, 4096, 0,
       "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
       "cb47ba09699646150f9fc000f3f80e12"},
  };
  for (const HighRow& r : rows) {
    SCOPED_TRACE(EkSpecFor(r.type).name);
    const TPMT_PUBLIC t = EkTemplate(r.type).publicArea;
    EXPECT_EQ(t.type, r.alg);
    EXPECT_EQ(t.nameAlg, r.name_alg);
    EXPECT_EQ(t.objectAttributes, 0x000300f2u);  // L attributes + userWithAuth
    EXPECT_EQ(Bytes(t.authPolicy.buffer, t.authPolicy.buffer + t.authPolicy.size),
              Hex(r.policy_b));
    const TPMT_SYM_DEF_OBJECT& sym = t.parameters.asymDetail.symmetric;
    EXPECT_EQ(sym.algorithm, TPM2_ALG_AES);
    EXPECT_EQ(sym.keyBits.aes, r.aes_bits);
    EXPECT_EQ(sym.mode.aes, TPM2_ALG_CFB);
    EXPECT_EQ(t.parameters.asymDetail.scheme.scheme, TPM2_ALG_NULL);
    if (r.alg == TPM2_ALG_RSA) {
      EXPECT_EQ(t.parameters.rsaDetail.keyBits, r.rsa_bits);
      EXPECT_EQ(t.parameters.rsaDetail.exponent, 0u);
      EXPECT_EQ(t.unique.rsa.size, 0);
    } else {
      EXPECT_EQ(t.parameters.eccDetail.curveID, r.curve);
      EXPECT_EQ(t.parameters.eccDetail.kdf.scheme, TPM2_ALG_NULL);
      EXPECT_EQ(t.unique.ecc.x.size, 0);
      EXPECT_EQ(t.unique.ecc.y.size, 0);
    }
  }
}

// PolicySecret(TPM_RH_ENDORSEMENT) from a fresh session (Part 3 §23.4):
//   d = H(0^n || TPM_CC_PolicySecret || Name(TPM_RH_ENDORSEMENT)); d = H(d || policyRef="").
Bytes ComputePolicyA(TPMI_ALG_HASH alg) {
  const size_t n = DigestSize(alg);
  const Bytes step = Sha(alg, Cat({Bytes(n, 0), Hex("00000151"), Hex("4000000b")}));
  return Sha(alg, step);
}

// PolicyOR (Part 3 §23.6): d = H(0^n || TPM_CC_PolicyOR || digests...).
Bytes ComputePolicyOr(TPMI_ALG_HASH alg, const std::vector<Bytes>& branches) {
  Bytes in = Cat({Bytes(DigestSize(alg), 0), Hex("00000171")});
  for (const Bytes& b : branches) {
    in.insert(in.end(), b.begin(), b.end());
  }
  return Sha(alg, in);
}

TEST(EkPolicyFor, DigestsFollowFromThePolicyCommands) {
  EXPECT_EQ(ComputePolicyA(TPM2_ALG_SHA256), Hex(kPolicyA));
  for (const EkSpec& spec : AllEkSpecs()) {
    SCOPED_TRACE(spec.name);
    const EkPolicy p = EkPolicyFor(spec.type);
    const TPMT_PUBLIC t = EkTemplate(spec.type).publicArea;
    const Bytes auth_policy(t.authPolicy.buffer, t.authPolicy.buffer + t.authPolicy.size);
    EXPECT_EQ(p.name_alg, t.nameAlg);
    EXPECT_EQ(p.policy_digest, auth_policy);
    ASSERT_LT(p.secret_branch, p.or_branches.size());
    EXPECT_EQ(p.or_branches[p.secret_branch], ComputePolicyA(t.nameAlg));
    for (const Bytes& b : p.or_branches) {
      EXPECT_EQ(b.size(), DigestSize(t.nameAlg));
    }
    const bool high = (t.objectAttributes & TPMA_OBJECT_USERWITHAUTH) != 0;
    EXPECT_EQ(p.needs_policy_or, high);
    if (high) {
      ASSERT_EQ(p.or_branches.size(), 2u);
      EXPECT_EQ(ComputePolicyOr(t.nameAlg, p.or_branches), auth_policy);
    } else {
      ASSERT_EQ(p.or_branches.size(), 1u);
      EXPECT_EQ(p.or_branches[0], auth_policy);
    }
  }
}

TEST(EkSpecs, IndicesHandlesAndNames) {
  const std::vector<std::tuple<EkType, std::string, uint32_t, uint32_t>> want = {
      {EkType::kRsa2048, "rsa2048", 0x01c00002, 0x81010001},
      {EkType::kEccP256, "ecc-p256", 0x01c0000a, 0x81010002},
      {EkType::kRsa2048High, "rsa2048-h1", 0x01c00012, 0},
      {EkType::kEccP256High, "ecc-p256-h2", 0x01c00014, 0},
      {EkType::kEccP384High, "ecc-p384-h3", 0x01c00016, 0},
      {EkType::kEccP521High, "ecc-p521-h4", 0x01c00018, 0},
      {EkType::kRsa3072High, "rsa3072-h6", 0x01c0001c, 0},
      {EkType::kRsa4096High, "rsa4096-h7", 0x01c0001e, 0},
  };
  ASSERT_EQ(AllEkSpecs().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const EkSpec& s = AllEkSpecs()[i];
    EXPECT_EQ(s.type, std::get<0>(want[i]));
    EXPECT_EQ(s.name, std::get<1>(want[i]));
    EXPECT_EQ(s.cert_nv_index, std::get<2>(want[i]));
    EXPECT_EQ(s.persistent_handle, std::get<3>(want[i]));
    EXPECT_EQ(ParseEkType(s.name).value(), s.type);
    EXPECT_EQ(&EkSpecFor(s.type), &s);
  }
  EXPECT_THAT(ParseEkType("rsa1024"),
              StatusIs(absl::StatusCode::kInvalidArgument, "valid: rsa2048, ecc-p256, rsa2048-h1"));
}

TEST(SrkTemplate, MatchesTpm2OpensslPrimaryTemplates) {
  // tpm2-openssl primaryEccTemplate / primaryRsaTemplate, marshalled by hand.
  EXPECT_EQ(MarshalTpmtPublic(SrkTemplateEcc().publicArea).value(),
            Hex("0023" "000b" "00030472" "0000" "0006" "0080" "0043" "0010" "0003" "0010"
                "0000" "0000"));
  EXPECT_EQ(MarshalTpmtPublic(SrkTemplateRsa().publicArea).value(),
            Hex("0001" "000b" "00030472" "0000" "0006" "0080" "0043" "0010" "0800" "00000000"
                "0000"));
}

TEST(KeyTemplates, AttributesAndSchemes) {
  struct Row {
    KeyAlg alg;
    TPMI_ALG_PUBLIC type;
    TPMI_ALG_SIG_SCHEME ak_scheme;
    TPMI_ALG_HASH ak_hash;
  };
  for (const Row& r : std::vector<Row>{
           {KeyAlg::kEcP256, TPM2_ALG_ECC, TPM2_ALG_ECDSA, TPM2_ALG_SHA256},
           {KeyAlg::kEcP384, TPM2_ALG_ECC, TPM2_ALG_ECDSA, TPM2_ALG_SHA384},
           {KeyAlg::kRsa2048, TPM2_ALG_RSA, TPM2_ALG_RSASSA, TPM2_ALG_SHA256},
           {KeyAlg::kRsa3072, TPM2_ALG_RSA, TPM2_ALG_RSASSA, TPM2_ALG_SHA256}}) {
    SCOPED_TRACE(KeyAlgName(r.alg));
    const TPMT_PUBLIC ak = AkTemplate(r.alg).publicArea;
    const TPMT_PUBLIC sk = SigningKeyTemplate(r.alg).publicArea;
    EXPECT_EQ(ak.type, r.type);
    EXPECT_EQ(sk.type, r.type);
    EXPECT_EQ(ak.nameAlg, TPM2_ALG_SHA256);
    EXPECT_EQ(sk.nameAlg, TPM2_ALG_SHA256);
    // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|sign (+restricted for the AK)
    EXPECT_EQ(ak.objectAttributes, 0x00050472u);
    EXPECT_EQ(sk.objectAttributes, 0x00040472u);
    EXPECT_EQ(ak.parameters.asymDetail.scheme.scheme, r.ak_scheme);
    EXPECT_EQ(ak.parameters.asymDetail.scheme.details.anySig.hashAlg, r.ak_hash);
    EXPECT_EQ(sk.parameters.asymDetail.scheme.scheme, TPM2_ALG_NULL);
    EXPECT_EQ(ak.parameters.asymDetail.symmetric.algorithm, TPM2_ALG_NULL);
    EXPECT_EQ(sk.parameters.asymDetail.symmetric.algorithm, TPM2_ALG_NULL);
    EXPECT_EQ(ak.authPolicy.size, 0);
    EXPECT_EQ(ParseKeyAlg(KeyAlgName(r.alg)).value(), r.alg);
  }
  EXPECT_EQ(AkTemplate(KeyAlg::kRsa3072).publicArea.parameters.rsaDetail.keyBits, 3072);
  EXPECT_EQ(SigningKeyTemplate(KeyAlg::kEcP384).publicArea.parameters.eccDetail.curveID,
            TPM2_ECC_NIST_P384);
  EXPECT_THAT(ParseKeyAlg("ec-p521"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "valid: ec-p256, ec-p384, rsa-2048, rsa-3072"));
  EXPECT_EQ(ParseKeyAlg("RSA-2048").value(), KeyAlg::kRsa2048);
}

}  // namespace
}  // namespace hwid::wire
