// The attestation core in software: message bounds, configuration (fails closed), each named
// verification step with its negative rows, and the session state machine. Keys are software
// keys expressed as TPM public areas; certificates come from a software PKI (test_pki.h).
// The full protocol against a real TPM is in attestation_swtpm_test.cc.
#include <openssl/rand.h>

#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "attestor_plugin/attestation/hwid_tpm.pb.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/test_pki.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::attestation {
namespace {

using ::hwid::attestation::testing::CertOptions;
using ::hwid::attestation::testing::MakeEkCert;
using ::hwid::attestation::testing::MakeIntermediate;
using ::hwid::attestation::testing::MakeRoot;
using ::hwid::attestation::testing::TestCert;
using ::hwid::attestation::testing::ToDer;
using ::hwid::attestation::testing::ToPem;
using ::hwid::attestation::testing::WriteTemp;
using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::EcKey2;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::RsaKey2;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDenied = absl::StatusCode::kPermissionDenied;
constexpr auto kPrecondition = absl::StatusCode::kFailedPrecondition;

TPMT_PUBLIC SoftEk(EVP_PKEY* key = RsaKey()) {
  return WithKey(wire::EkTemplate(wire::EkType::kRsa2048).publicArea, key);
}
TPMT_PUBLIC SoftEccEk(EVP_PKEY* key = EcKey()) {
  return WithKey(wire::EkTemplate(wire::EkType::kEccP256).publicArea, key);
}
TPMT_PUBLIC SoftAk(EVP_PKEY* key = EcKey2()) {
  return WithKey(wire::AkTemplate(wire::KeyAlg::kEcP256).publicArea, key);
}

Bytes MarshalPub(const TPMT_PUBLIC& p) {
  TPM2B_PUBLIC b{};
  b.publicArea = p;
  absl::StatusOr<Bytes> out = wire::MarshalPublic(b);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : Bytes{};
}

std::string HashOf(const TPMT_PUBLIC& ek) {
  absl::StatusOr<std::string> h = EkPublicKeyHash(ek);
  EXPECT_TRUE(h.ok());
  return h.ok() ? *h : "";
}

// A shared software PKI: root -> intermediate -> EK certificates.
struct Pki {
  TestCert root = MakeRoot("hwid test root");
  TestCert inter = MakeIntermediate("hwid test EK CA", root);
  std::string bundle_path = WriteTemp("bundle.pem", ToPem({root.cert.get(), inter.cert.get()}));
  std::string root_only_path = WriteTemp("root.pem", ToPem({root.cert.get()}));
};
Pki& SharedPki() {
  static Pki* pki = new Pki();
  return *pki;
}

std::shared_ptr<const ServerConfig> Config(ServerConfigInput in) {
  absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

ServerConfigInput CertInput() {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {SharedPki().bundle_path};
  return in;
}

ServerConfigInput AllowlistInput(const TPMT_PUBLIC& ek) {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_allowlist = {HashOf(ek)};
  return in;
}

// ---------------------------------------------------------------- messages

TEST(MessagesTest, RoundTrip) {
  AttestationPayload p{Bytes{1, 2}, Bytes{3}, {Bytes{4}, Bytes{5}}, Bytes{6, 7}};
  absl::StatusOr<Bytes> enc = EncodePayload(p);
  ASSERT_THAT(enc, IsOk());
  absl::StatusOr<AttestationPayload> dec = DecodePayload(*enc);
  ASSERT_THAT(dec, IsOk());
  EXPECT_EQ(dec->ek_public, p.ek_public);
  EXPECT_EQ(dec->ek_certificate, p.ek_certificate);
  EXPECT_EQ(dec->ek_intermediates, p.ek_intermediates);
  EXPECT_EQ(dec->ak_public, p.ak_public);

  ChallengeResponse r;
  r.secret = {9, 9};
  r.quote_attest = {1};
  r.quote_signature = {2};
  r.pcrs.push_back(PcrValue{TPM2_ALG_SHA256, 7, Bytes(32, 0xaa)});
  absl::StatusOr<Bytes> renc = EncodeResponse(r);
  ASSERT_THAT(renc, IsOk());
  absl::StatusOr<ChallengeResponse> rdec = DecodeResponse(*renc);
  ASSERT_THAT(rdec, IsOk());
  EXPECT_EQ(Bytes(rdec->secret.begin(), rdec->secret.end()), Bytes({9, 9}));
  ASSERT_EQ(rdec->pcrs.size(), 1u);
  EXPECT_EQ(rdec->pcrs[0].index, 7u);

  Challenge c{Bytes{1}, Bytes{2}, Bytes(32, 3), "sha256:0,1"};
  absl::StatusOr<Bytes> cenc = EncodeChallenge(c);
  ASSERT_THAT(cenc, IsOk());
  absl::StatusOr<Challenge> cdec = DecodeChallenge(*cenc);
  ASSERT_THAT(cdec, IsOk());
  EXPECT_EQ(cdec->pcr_selection, "sha256:0,1");
}

Bytes Serialize(const google::protobuf::Message& m) {
  std::string s = m.SerializeAsString();
  return Bytes(s.begin(), s.end());
}

v1::AttestationPayload ValidPb() {
  v1::AttestationPayload p;
  p.set_version(1);
  p.set_ek_public("ek");
  p.set_ak_public("ak");
  return p;
}

TEST(MessagesTest, DecodeRejectsMalformedPayloads) {
  const Bytes valid = Serialize(ValidPb());
  ASSERT_THAT(DecodePayload(valid), IsOk());

  EXPECT_THAT(DecodePayload(Bytes{}), StatusIs(kInvalid, "empty message"));
  Bytes truncated(valid.begin(), valid.end() - 1);
  EXPECT_THAT(DecodePayload(truncated), StatusIs(kInvalid, "attestation payload"));
  EXPECT_THAT(DecodePayload(Bytes(kMaxPayloadBytes + 1, 0)),
              StatusIs(kInvalid, "more than the limit"));
  Bytes garbage(300);
  for (size_t i = 0; i < garbage.size(); ++i) {
    garbage[i] = static_cast<uint8_t>(0xff - i);
  }
  EXPECT_THAT(DecodePayload(garbage), StatusIs(kInvalid, "attestation payload"));

  Bytes unknown = valid;
  for (uint8_t b : {0x98, 0x06, 0x01}) {  // field 99 (varint) = 1
    unknown.push_back(b);
  }
  EXPECT_THAT(DecodePayload(unknown), StatusIs(kInvalid, "unknown fields"));

  v1::AttestationPayload p = ValidPb();
  p.set_version(3);  // 1 and 2 (agent-key binding) are spoken
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "protocol version 3"));
  p = ValidPb();
  p.set_version(2);
  absl::StatusOr<AttestationPayload> v2 = DecodePayload(Serialize(p));
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->version, kProtocolVersionCertify);
  p = ValidPb();
  p.set_version(0);
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "protocol version 0"));
  p = ValidPb();
  p.clear_ak_public();
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "field ak_public is missing"));
  p = ValidPb();
  p.set_ek_public(std::string(kMaxPublicBytes + 1, 'x'));
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "field ek_public has"));
  p = ValidPb();
  p.set_ek_certificate(std::string(kMaxCertificateBytes + 1, 'x'));
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "field ek_certificate has"));
  p = ValidPb();
  for (size_t i = 0; i <= kMaxIntermediates; ++i) {
    p.add_ek_intermediates("c");
  }
  EXPECT_THAT(DecodePayload(Serialize(p)), StatusIs(kInvalid, "ek_intermediates"));
}

TEST(MessagesTest, DecodeRejectsMalformedResponses) {
  v1::ChallengeResponse r;
  r.set_version(1);
  r.set_secret(std::string(32, 's'));
  r.set_quote_attest("a");
  r.set_quote_signature("s");
  ASSERT_THAT(DecodeResponse(Serialize(r)), IsOk());

  EXPECT_THAT(DecodeResponse(Bytes(kMaxResponseBytes + 1, 1)),
              StatusIs(kInvalid, "more than the limit"));
  v1::ChallengeResponse bad = r;
  bad.set_secret(std::string(kMaxSecretBytes + 1, 's'));
  EXPECT_THAT(DecodeResponse(Serialize(bad)), StatusIs(kInvalid, "field secret has"));
  bad = r;
  bad.clear_quote_signature();
  EXPECT_THAT(DecodeResponse(Serialize(bad)), StatusIs(kInvalid, "quote_signature is missing"));
  bad = r;
  for (size_t i = 0; i <= kMaxPcrValues; ++i) {
    v1::PcrValue* v = bad.add_pcrs();
    v->set_bank(TPM2_ALG_SHA256);
    v->set_digest(std::string(32, 0));
  }
  EXPECT_THAT(DecodeResponse(Serialize(bad)), StatusIs(kInvalid, "field pcrs has"));
  bad = r;
  bad.add_pcrs()->set_digest(std::string(kMaxPcrDigestBytes + 1, 0));
  EXPECT_THAT(DecodeResponse(Serialize(bad)), StatusIs(kInvalid, "pcrs.digest"));
  // An unknown field nested in a PCR value.
  bad = r;
  v1::PcrValue* v = bad.add_pcrs();
  v->set_digest(std::string(32, 0));
  v->GetReflection()->MutableUnknownFields(v)->AddVarint(15, 1);
  EXPECT_THAT(DecodeResponse(Serialize(bad)), StatusIs(kInvalid, "unknown fields in pcrs"));
}

TEST(MessagesTest, DecodeRejectsMalformedChallenges) {
  v1::Challenge c;
  c.set_version(1);
  c.set_credential_blob("b");
  c.set_encrypted_secret("s");
  c.set_nonce(std::string(32, 'n'));
  c.set_pcr_selection("sha256:0");
  ASSERT_THAT(DecodeChallenge(Serialize(c)), IsOk());
  v1::Challenge bad = c;
  bad.set_nonce(std::string(kMaxNonceBytes + 1, 'n'));
  EXPECT_THAT(DecodeChallenge(Serialize(bad)), StatusIs(kInvalid, "field nonce has"));
  bad = c;
  bad.clear_pcr_selection();
  EXPECT_THAT(DecodeChallenge(Serialize(bad)), StatusIs(kInvalid, "pcr_selection is missing"));
  bad = c;
  bad.set_pcr_selection(std::string("sha256:0\xff", 9));
  EXPECT_THAT(DecodeChallenge(Serialize(bad)), StatusIs(kInvalid, "not printable ASCII"));
  EXPECT_THAT(DecodeChallenge(Bytes(kMaxChallengeBytes + 1, 0)),
              StatusIs(kInvalid, "more than the limit"));
}

// ---------------------------------------------------------------- configuration

TEST(ConfigTest, ValidCertificateAndAllowlistModes) {
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->ca.has_value());
  EXPECT_EQ(c->ca->roots.size(), 1u);
  EXPECT_EQ(c->ca->intermediates.size(), 1u);
  EXPECT_EQ(c->required_pcrs_text, "sha256:0,1,2,3,4,5,6,7");
  EXPECT_EQ(c->ak_algs.size(), 4u);
  EXPECT_EQ(c->ek_algs, std::set<std::string>{"rsa-2048"});  // one identity per TPM

  ServerConfigInput in = AllowlistInput(SoftEk());
  in.ek_allowlist.push_back(std::string(64, 'A'));  // upper case is accepted, stored lower
  in.pcrs = "sha1:0+sha256:7";
  in.expected_pcrs = {{"sha256:7", std::string(64, 'b')}};
  in.ak_algs = {"rsa-2048"};
  std::shared_ptr<const ServerConfig> a = Config(in);
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(a->ca.has_value());
  EXPECT_TRUE(a->allowlist.count(std::string(64, 'a')));
  EXPECT_EQ(a->expected_pcrs.at(TPM2_ALG_SHA256).at(7), Bytes(32, 0xbb));
  EXPECT_EQ(a->ak_algs, std::set<wire::KeyAlg>{wire::KeyAlg::kRsa2048});

  const std::string list = WriteTemp(
      "allow.txt", "# enrolled TPMs\n\n" + HashOf(SoftEk()) + "\n  " + HashOf(SoftEccEk()) + "\n");
  ServerConfigInput f;
  f.trust_domain = "td";
  f.ek_allowlist_path = list;
  std::shared_ptr<const ServerConfig> fc = Config(f);
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->allowlist.size(), 2u);
}

struct BadConfig {
  const char* name;
  std::function<void(ServerConfigInput&)> mutate;
  const char* key;
};

TEST(ConfigTest, FailsClosedNamingTheKey) {
  const std::string intermediate_only =
      WriteTemp("inter.pem", ToPem({SharedPki().inter.cert.get()}));
  const std::string bad_list = WriteTemp("bad-allow.txt", HashOf(SoftEk()) + "\nnot-a-hash\n");
  const std::string empty_list = WriteTemp("empty-allow.txt", "# nothing\n");
  const std::string garbled = WriteTemp(
      "garbled.pem",
      ToPem({SharedPki().root.cert.get()}) +
          "-----BEGIN CERTIFICATE-----\nMIIB!!not base64!!\n-----END CERTIFICATE-----\n" +
          ToPem({SharedPki().inter.cert.get()}));
  const std::vector<BadConfig> rows = {
      {"no trust domain", [](auto& in) { in.trust_domain = ""; }, "trust_domain"},
      {"bad trust domain", [](auto& in) { in.trust_domain = "Example.ORG/x"; }, "trust_domain"},
      {"no trust source",
       [](auto& in) {
         in.ek_ca_bundle_paths.clear();
         in.ek_allowlist.clear();
       },
       "neither an EK CA bundle nor an EK allowlist"},
      {"missing bundle", [](auto& in) { in.ek_ca_bundle_paths = {"/nonexistent/ca.pem"}; },
       "ek_ca_bundle_paths"},
      {"intermediate-only bundle",
       [&](auto& in) { in.ek_ca_bundle_paths = {intermediate_only}; }, "ek_ca_bundle_paths"},
      {"bad hash", [](auto& in) { in.ek_allowlist = {"abcd"}; }, "ek_allowlist"},
      {"bad allowlist line", [&](auto& in) { in.ek_allowlist_path = bad_list; }, "line 2"},
      {"empty allowlist file", [&](auto& in) { in.ek_allowlist_path = empty_list; },
       "ek_allowlist_path"},
      {"missing allowlist file", [](auto& in) { in.ek_allowlist_path = "/nonexistent"; },
       "ek_allowlist_path"},
      {"empty pcrs", [](auto& in) { in.pcrs = ""; }, "pcrs"},
      {"bad pcrs", [](auto& in) { in.pcrs = "sha256:0-99"; }, "pcrs"},
      {"unknown bank", [](auto& in) { in.pcrs = "md5:0"; }, "pcrs"},
      {"expected pcr not quoted",
       [](auto& in) { in.expected_pcrs = {{"sha256:9", std::string(64, '0')}}; },
       "expected_pcrs: 'sha256:9' is not in the quoted selection"},
      {"expected pcr wrong length",
       [](auto& in) { in.expected_pcrs = {{"sha256:1", std::string(40, '0')}}; },
       "expected_pcrs"},
      {"expected pcr bad key", [](auto& in) { in.expected_pcrs = {{"sha256", "00"}}; },
       "expected_pcrs"},
      {"unknown ak alg", [](auto& in) { in.ak_algs = {"rsa-1024"}; }, "ak_algs"},
      {"unknown ek alg", [](auto& in) { in.ek_algs = {"rsa-1024"}; },
       "ek_algs: 'rsa-1024' is not one of rsa-2048"},
      {"ek alg spelled like ak_algs", [](auto& in) { in.ek_algs = {"ec-p256"}; }, "ek_algs"},
      {"ek alg listed twice", [](auto& in) { in.ek_algs = {"rsa-2048", "rsa-2048"}; },
       "ek_algs: 'rsa-2048' is listed twice"},
      {"one PCR spelled twice",
       [](auto& in) {
         in.expected_pcrs = {{"sha256:7", std::string(64, '0')},
                             {"SHA256:07", std::string(64, '1')}};
       },
       "expected_pcrs: 'sha256:7' names sha256 PCR 7, which another key already sets"},
      {"garbled PEM block in the bundle", [&](auto& in) { in.ek_ca_bundle_paths = {garbled}; },
       "ek_ca_bundle_paths"},
  };
  for (const BadConfig& row : rows) {
    SCOPED_TRACE(row.name);
    ServerConfigInput in = CertInput();
    row.mutate(in);
    absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
    EXPECT_THAT(c, StatusIs(kPrecondition, row.key));
  }
}

// ---------------------------------------------------------------- EK checks

TEST(EkStepsTest, PublicKeyHashIsSha256OfSpki) {
  EXPECT_EQ(HashOf(SoftEk()), testing::SpkiSha256Hex(RsaKey()));
  EXPECT_EQ(HashOf(SoftEccEk()), testing::SpkiSha256Hex(EcKey()));
  EXPECT_NE(HashOf(SoftEk()), HashOf(SoftEk(RsaKey2())));
}

TEST(EkStepsTest, PublicAreaPolicy) {
  EXPECT_THAT(CheckEkPublicArea(SoftEk()), IsOk());
  EXPECT_THAT(CheckEkPublicArea(SoftEccEk()), IsOk());
  TPMT_PUBLIC ek = SoftEk();
  ek.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM;
  EXPECT_THAT(CheckEkPublicArea(ek), StatusIs(kDenied, "fixedTPM is not set"));
  ek = SoftEk();
  ek.objectAttributes &= ~TPMA_OBJECT_RESTRICTED;
  EXPECT_THAT(CheckEkPublicArea(ek), StatusIs(kDenied, "restricted is not set"));
  ek = SoftEk();
  ek.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
  EXPECT_THAT(CheckEkPublicArea(ek), StatusIs(kDenied, "sign is set"));
  EXPECT_THAT(CheckEkPublicArea(SoftAk()), StatusIs(kDenied, "EK policy"));
}

TEST(EkStepsTest, CertificateChainThroughConfiguredIntermediate) {
  Pki& pki = SharedPki();
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  OsslPtr<X509> cert = MakeEkCert(RsaKey(), pki.inter);  // critical TCG SAN, EK EKU
  absl::StatusOr<EkTrust> t = VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), {});
  ASSERT_THAT(t, IsOk());
  EXPECT_TRUE(t->via_certificate);
  EXPECT_EQ(t->pubhash, HashOf(SoftEk()));
  ASSERT_TRUE(t->device.has_value());
  EXPECT_EQ(t->device->manufacturer, "id:58595A00");
  EXPECT_EQ(t->device->model, "hwid-test");
  EXPECT_EQ(t->device->version, "id:00010002");
  EXPECT_EQ(t->issuer_cn, "hwid test EK CA");
}

TEST(EkStepsTest, IntermediateFromTheAgentIsAHelperNotAnAnchor) {
  Pki& pki = SharedPki();
  ServerConfigInput in = CertInput();
  in.ek_ca_bundle_paths = {pki.root_only_path};
  std::shared_ptr<const ServerConfig> c = Config(in);
  OsslPtr<X509> cert = MakeEkCert(RsaKey(), pki.inter);
  // Without the intermediate the path cannot be built.
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), {}),
              StatusIs(kDenied, "chain verification failed"));
  // With it from the agent, the chain ends at the configured root.
  const std::vector<Bytes> inter = {ToDer(pki.inter.cert.get())};
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), inter), IsOk());
  // An agent cannot bring its own anchor: a self-signed "intermediate" is not trusted.
  TestCert rogue = MakeRoot("rogue root");
  OsslPtr<X509> rogue_cert = MakeEkCert(RsaKey(), rogue);
  const std::vector<Bytes> rogue_chain = {ToDer(rogue.cert.get())};
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(rogue_cert.get()), rogue_chain),
              StatusIs(kDenied, "chain verification failed"));
  const std::vector<Bytes> garbage = {Bytes{0x30, 0x03, 1, 2, 3}};
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), garbage),
              StatusIs(kInvalid, "EK intermediate certificate from the agent"));
}

struct CertRow {
  const char* name;
  std::function<OsslPtr<X509>()> make;
  absl::StatusCode code;
  const char* message;
};

TEST(EkStepsTest, CertificateNegativeMatrix) {
  Pki& pki = SharedPki();
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  CertOptions expired;
  expired.not_before = -20L * 86400;
  expired.not_after = -10L * 86400;
  CertOptions future;
  future.not_before = 10L * 86400;
  CertOptions server_auth;
  server_auth.eku_oid = "1.3.6.1.5.5.7.3.1";
  const std::vector<CertRow> rows = {
      {"untrusted CA",
       [] {
         static TestCert other = MakeRoot("other vendor root");
         return MakeEkCert(RsaKey(), other);
       },
       kDenied, "unable to get local issuer certificate"},
      {"expired EK certificate", [&] { return MakeEkCert(RsaKey(), pki.inter, expired); },
       kDenied, "certificate has expired"},
      {"not yet valid EK certificate", [&] { return MakeEkCert(RsaKey(), pki.inter, future); },
       kDenied, "not yet valid"},
      {"EKU without tcg-kp-EKCertificate",
       [&] { return MakeEkCert(RsaKey(), pki.inter, server_auth); }, kDenied,
       "tcg-kp-EKCertificate"},
      {"genuine certificate, different (software) EK public key",
       [&] { return MakeEkCert(RsaKey2(), pki.inter); }, kDenied, "certifies a different key"},
      {"certificate of an ECC key for an RSA EK", [&] { return MakeEkCert(EcKey(), pki.inter); },
       kDenied, "certifies a different key"},
  };
  for (const CertRow& row : rows) {
    SCOPED_TRACE(row.name);
    OsslPtr<X509> cert = row.make();
    EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), {}),
                StatusIs(row.code, row.message));
  }
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), Bytes{1, 2, 3}, {}),
              StatusIs(kInvalid, "EK certificate"));
  // No EKU at all is accepted (older EK certificates omit it); a non-critical SAN too.
  CertOptions no_eku;
  no_eku.eku_oid = nullptr;
  no_eku.san_critical = false;
  OsslPtr<X509> plain = MakeEkCert(RsaKey(), pki.inter, no_eku);
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(plain.get()), {}), IsOk());
}

TEST(EkStepsTest, ExpiredCaAndVerificationTime) {
  CertOptions expired;
  expired.not_before = -20L * 86400;
  expired.not_after = -10L * 86400;
  CertOptions month_old;
  month_old.not_before = -30L * 86400;
  TestCert old_root = MakeRoot("expired root", expired);
  TestCert inter = MakeIntermediate("inter under expired root", old_root, month_old);
  OsslPtr<X509> cert = MakeEkCert(RsaKey(), inter, month_old);
  ServerConfigInput in = CertInput();
  in.ek_ca_bundle_paths = {WriteTemp("expired-root.pem",
                                     ToPem({old_root.cert.get(), inter.cert.get()}))};
  std::shared_ptr<const ServerConfig> c = Config(in);
  EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), {}),
              StatusIs(kDenied, "certificate has expired"));
  // The same chain verifies at a time when the root was valid...
  in.verification_time = std::time(nullptr) - 15L * 86400;
  EXPECT_THAT(VerifyEkTrust(*Config(in), SoftEk(), ToDer(cert.get()), {}), IsOk());
  // ...and a valid chain fails at a time after its expiry.
  ServerConfigInput later = CertInput();
  later.verification_time = std::time(nullptr) + 20L * 365 * 86400;
  OsslPtr<X509> good = MakeEkCert(RsaKey(), SharedPki().inter);
  EXPECT_THAT(VerifyEkTrust(*Config(later), SoftEk(), ToDer(good.get()), {}),
              StatusIs(kDenied, "expired"));
}

TEST(EkStepsTest, AllowlistModeAndBothModes) {
  Pki& pki = SharedPki();
  // Allowlist only: the EK is admitted by hash, a presented certificate adds nothing.
  std::shared_ptr<const ServerConfig> a = Config(AllowlistInput(SoftEk()));
  absl::StatusOr<EkTrust> t = VerifyEkTrust(*a, SoftEk(), {}, {});
  ASSERT_THAT(t, IsOk());
  EXPECT_FALSE(t->via_certificate);
  EXPECT_FALSE(t->device.has_value());
  absl::Status unknown = VerifyEkTrust(*a, SoftEk(RsaKey2()), {}, {}).status();
  EXPECT_THAT(unknown, StatusIs(kDenied, "is not in the allowlist"));
  EXPECT_THAT(std::string(unknown.message()), HasSubstr(HashOf(SoftEk(RsaKey2()))));
  OsslPtr<X509> cert = MakeEkCert(RsaKey2(), pki.inter);
  EXPECT_THAT(VerifyEkTrust(*a, SoftEk(RsaKey2()), ToDer(cert.get()), {}),
              StatusIs(kDenied, "no EK CA bundle is configured"));

  // Both: a failing certificate is overridden by an allowlisted hash (without cert selectors),
  // an unlisted EK still needs a valid certificate.
  ServerConfigInput both = CertInput();
  both.ek_allowlist = {HashOf(SoftEk())};
  std::shared_ptr<const ServerConfig> b = Config(both);
  TestCert other = MakeRoot("other vendor root 2");
  OsslPtr<X509> untrusted = MakeEkCert(RsaKey(), other);
  absl::StatusOr<EkTrust> via_list = VerifyEkTrust(*b, SoftEk(), ToDer(untrusted.get()), {});
  ASSERT_THAT(via_list, IsOk());
  EXPECT_FALSE(via_list->via_certificate);
  EXPECT_FALSE(via_list->device.has_value());
  OsslPtr<X509> good2 = MakeEkCert(RsaKey2(), pki.inter);
  absl::StatusOr<EkTrust> via_cert = VerifyEkTrust(*b, SoftEk(RsaKey2()), ToDer(good2.get()), {});
  ASSERT_THAT(via_cert, IsOk());
  EXPECT_TRUE(via_cert->via_certificate);
  OsslPtr<X509> untrusted2 = MakeEkCert(RsaKey2(), other);
  EXPECT_THAT(VerifyEkTrust(*b, SoftEk(RsaKey2()), ToDer(untrusted2.get()), {}),
              StatusIs(kDenied, "chain verification failed"));
}

// ---------------------------------------------------------------- AK, secret, PCRs

TEST(AkStepsTest, AttributePolicy) {
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  EXPECT_THAT(CheckAkPolicy(*c, SoftAk()), IsOk());
  EXPECT_THAT(CheckAkPolicy(*c, WithKey(wire::AkTemplate(wire::KeyAlg::kRsa2048).publicArea,
                                        RsaKey())),
              IsOk());
  struct Row {
    const char* name;
    std::function<void(TPMT_PUBLIC&)> mutate;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"not restricted", [](auto& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; },
       "restricted"},
      {"not fixedTPM", [](auto& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; }, "fixedTPM"},
      {"not fixedParent", [](auto& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; },
       "fixedParent"},
      {"not sensitiveDataOrigin",
       [](auto& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; },
       "sensitiveDataOrigin"},
      {"not sign", [](auto& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; }, "sign"},
      {"decrypt", [](auto& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; }, "decrypt"},
      {"sha1 name alg", [](auto& p) { p.nameAlg = TPM2_ALG_SHA1; }, "AK policy"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    TPMT_PUBLIC ak = SoftAk();
    row.mutate(ak);
    EXPECT_THAT(CheckAkPolicy(*c, ak), StatusIs(kDenied, row.message));
  }
  ServerConfigInput rsa_only = CertInput();
  rsa_only.ak_algs = {"rsa-2048"};
  EXPECT_THAT(CheckAkPolicy(*Config(rsa_only), SoftAk()),
              StatusIs(kDenied, "ec-p256 is not in the configured ak_algs"));
}

TEST(SecretStepTest, ConstantTimeComparison) {
  const Bytes s(32, 7);
  EXPECT_THAT(CheckActivationSecret(s, s), IsOk());
  Bytes other = s;
  other[31] ^= 1;
  EXPECT_THAT(CheckActivationSecret(s, other), StatusIs(kDenied, "credential activation"));
  EXPECT_THAT(CheckActivationSecret(s, Bytes(31, 7)), StatusIs(kDenied, "credential activation"));
  EXPECT_THAT(CheckActivationSecret(Bytes{}, Bytes{}), StatusIs(kDenied, "credential activation"));
}

TEST(PcrStepsTest, DecodeValues) {
  std::vector<PcrValue> ok = {{TPM2_ALG_SHA256, 0, Bytes(32, 1)}, {TPM2_ALG_SHA1, 23, Bytes(20)}};
  absl::StatusOr<wire::PcrValues> v = DecodePcrValues(ok);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->at(TPM2_ALG_SHA1).at(23), Bytes(20));
  EXPECT_THAT(DecodePcrValues({{0x0005, 0, Bytes(16)}}), StatusIs(kInvalid, "not a supported"));
  EXPECT_THAT(DecodePcrValues({{0x1000b, 0, Bytes(32)}}), StatusIs(kInvalid, "not a supported"));
  EXPECT_THAT(DecodePcrValues({{TPM2_ALG_SHA256, 24, Bytes(32)}}),
              StatusIs(kInvalid, "out of range"));
  EXPECT_THAT(DecodePcrValues({{TPM2_ALG_SHA256, 1, Bytes(20)}}),
              StatusIs(kInvalid, "sha256 PCR 1 has 20 bytes"));
  EXPECT_THAT(DecodePcrValues({{TPM2_ALG_SHA256, 1, Bytes(32)}, {TPM2_ALG_SHA256, 1, Bytes(32)}}),
              StatusIs(kInvalid, "listed twice"));
}

TPML_PCR_SELECTION Sel(const char* s) {
  absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(s);
  EXPECT_TRUE(sel.ok());
  return sel.ok() ? *sel : TPML_PCR_SELECTION{};
}

TEST(PcrStepsTest, QuotedSelectionMustEqualRequired) {
  EXPECT_THAT(CheckQuotedSelection(Sel("sha256:0-7"), Sel("sha256:0-7")), IsOk());
  EXPECT_THAT(CheckQuotedSelection(Sel("sha1:1+sha256:0"), Sel("sha256:0+sha1:1")), IsOk());
  EXPECT_THAT(CheckQuotedSelection(Sel("sha256:0-6"), Sel("sha256:0-7")),
              StatusIs(kDenied, "the quote covers 'sha256:0,1,2,3,4,5,6'"));
  EXPECT_THAT(CheckQuotedSelection(Sel("sha256:0-8"), Sel("sha256:0-7")),
              StatusIs(kDenied, "requires exactly 'sha256:0,1,2,3,4,5,6,7'"));
  EXPECT_THAT(CheckQuotedSelection(Sel("sha1:0-7"), Sel("sha256:0-7")),
              StatusIs(kDenied, "PCR selection"));
  EXPECT_THAT(CheckQuotedSelection(TPML_PCR_SELECTION{}, Sel("sha256:0")),
              StatusIs(kDenied, "PCR selection"));
}

TEST(PcrStepsTest, Policy) {
  wire::PcrValues quoted;
  quoted[TPM2_ALG_SHA256][7] = Bytes(32, 1);
  quoted[TPM2_ALG_SHA256][0] = Bytes(32, 0);
  wire::PcrValues expected;
  EXPECT_THAT(CheckPcrPolicy(expected, quoted), IsOk());
  expected[TPM2_ALG_SHA256][7] = Bytes(32, 1);
  EXPECT_THAT(CheckPcrPolicy(expected, quoted), IsOk());
  expected[TPM2_ALG_SHA256][7] = Bytes(32, 2);
  EXPECT_THAT(CheckPcrPolicy(expected, quoted), StatusIs(kDenied, "sha256 PCR 7 is 0101"));
  expected.clear();
  expected[TPM2_ALG_SHA1][7] = Bytes(20, 1);
  EXPECT_THAT(CheckPcrPolicy(expected, quoted), StatusIs(kDenied, "sha1 PCR 7 has an expected"));
}

// ---------------------------------------------------------------- session (software keys)

Bytes SoftPayload(const TPMT_PUBLIC& ek, const TPMT_PUBLIC& ak, Bytes cert = {}) {
  AttestationPayload p;
  p.ek_public = MarshalPub(ek);
  p.ak_public = MarshalPub(ak);
  p.ek_certificate = std::move(cert);
  absl::StatusOr<Bytes> enc = EncodePayload(p);
  EXPECT_TRUE(enc.ok());
  return enc.ok() ? *enc : Bytes{};
}

TEST(SessionTest, UnconfiguredServerFailsClosed) {
  EXPECT_THAT(ServerSession::New(nullptr), StatusIs(kPrecondition, "not configured"));
}

TEST(SessionTest, ChallengeIsFreshAndBoundToTheRequiredSelection) {
  ServerConfigInput in = AllowlistInput(SoftEk());
  in.pcrs = "sha256:7+sha1:0-2";
  std::shared_ptr<const ServerConfig> c = Config(in);
  std::vector<Challenge> seen;
  for (int i = 0; i < 2; ++i) {
    auto s = ServerSession::New(c);
    ASSERT_THAT(s, IsOk());
    absl::StatusOr<Bytes> ch = (*s)->HandlePayload(SoftPayload(SoftEk(), SoftAk()));
    ASSERT_THAT(ch, IsOk());
    absl::StatusOr<Challenge> dec = DecodeChallenge(*ch);
    ASSERT_THAT(dec, IsOk());
    EXPECT_EQ(dec->nonce.size(), 32u);
    EXPECT_EQ(dec->pcr_selection, "sha256:7+sha1:0,1,2");
    EXPECT_THAT(wire::ParseIdObject(dec->credential_blob), IsOk());
    EXPECT_THAT(wire::ParseEncryptedSecret(dec->encrypted_secret), IsOk());
    seen.push_back(*dec);
  }
  EXPECT_NE(seen[0].nonce, seen[1].nonce);
  EXPECT_NE(seen[0].credential_blob, seen[1].credential_blob);
  EXPECT_NE(seen[0].encrypted_secret, seen[1].encrypted_secret);
}

TEST(SessionTest, PayloadNegativeMatrix) {
  std::shared_ptr<const ServerConfig> c = Config(AllowlistInput(SoftEk()));
  TPMT_PUBLIC not_fixed = SoftAk();
  not_fixed.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM;
  TPMT_PUBLIC not_restricted = SoftAk();
  not_restricted.objectAttributes &= ~TPMA_OBJECT_RESTRICTED;
  Bytes trailing = MarshalPub(SoftAk());
  trailing.push_back(0);
  AttestationPayload trailing_ak{MarshalPub(SoftEk()), {}, {}, trailing};
  AttestationPayload garbage_ek{Bytes{0, 4, 1, 2, 3, 4}, {}, {}, MarshalPub(SoftAk())};
  struct Row {
    const char* name;
    Bytes payload;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"AK not fixedTPM", SoftPayload(SoftEk(), not_fixed), kDenied, "fixedTPM"},
      {"AK not restricted", SoftPayload(SoftEk(), not_restricted), kDenied, "restricted"},
      {"EK not allowlisted", SoftPayload(SoftEk(RsaKey2()), SoftAk()), kDenied, "allowlist"},
      {"AK public with trailing bytes", *EncodePayload(trailing_ak), kInvalid, "AK public area"},
      {"garbage EK public", *EncodePayload(garbage_ek), kInvalid, "EK public area"},
      {"EK and AK swapped", SoftPayload(SoftAk(), SoftEk()), kDenied, "EK policy"},
      {"garbage", Bytes(100, 0xee), kInvalid, "malformed attestation payload"},
      {"oversized", Bytes(kMaxPayloadBytes + 1, 0), kInvalid, "more than the limit"},
      {"empty", Bytes{}, kInvalid, "empty"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    auto s = ServerSession::New(c);
    ASSERT_THAT(s, IsOk());
    EXPECT_THAT((*s)->HandlePayload(row.payload), StatusIs(row.code, row.message));
    // A failed session stays failed.
    EXPECT_THAT((*s)->HandlePayload(SoftPayload(SoftEk(), SoftAk())), StatusIs(kInvalid, ""));
  }
}

TEST(SessionTest, ResponseNegativeMatrixAndRounds) {
  std::shared_ptr<const ServerConfig> c = Config(AllowlistInput(SoftEk()));
  v1::ChallengeResponse wrong;
  wrong.set_version(1);
  wrong.set_secret(std::string(32, 'x'));
  wrong.set_quote_attest("a");
  wrong.set_quote_signature("s");
  struct Row {
    const char* name;
    Bytes response;
    absl::StatusCode code;
    const char* message;
  };
  Bytes valid_but_truncated = Serialize(wrong);
  valid_but_truncated.resize(valid_but_truncated.size() - 2);
  const std::vector<Row> rows = {
      {"wrong secret", Serialize(wrong), kDenied, "credential activation"},
      {"truncated", valid_but_truncated, kInvalid, "malformed challenge response"},
      {"garbage", Bytes(64, 0x5a), kInvalid, "malformed challenge response"},
      {"oversized", Bytes(kMaxResponseBytes + 1, 1), kInvalid, "more than the limit"},
      {"empty", Bytes{}, kInvalid, "empty"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    auto s = ServerSession::New(c);
    ASSERT_THAT(s, IsOk());
    ASSERT_THAT((*s)->HandlePayload(SoftPayload(SoftEk(), SoftAk())), IsOk());
    EXPECT_THAT((*s)->HandleChallengeResponse(row.response), StatusIs(row.code, row.message));
    // No second chance within a session.
    EXPECT_THAT((*s)->HandleChallengeResponse(Serialize(wrong)),
                StatusIs(kInvalid, "attestation protocol"));
  }

  auto s = ServerSession::New(c);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT((*s)->HandleChallengeResponse(Serialize(wrong)),
              StatusIs(kInvalid, "before the attestation payload"));
  auto s2 = ServerSession::New(c);
  ASSERT_THAT((*s2)->HandlePayload(SoftPayload(SoftEk(), SoftAk())), IsOk());
  EXPECT_THAT((*s2)->HandlePayload(SoftPayload(SoftEk(), SoftAk())),
              StatusIs(kInvalid, "second attestation payload"));
}

// ---------------------------------------------------------------- issue 13: verifier hardening

// A CA bundle is taken whole or not at all (wire::LoadCaBundlePem).
TEST(CaBundleTest, UnreadableOrForeignBlocksFailLoudly) {
  Pki& pki = SharedPki();
  const std::string root = ToPem({pki.root.cert.get()});
  const std::string inter = ToPem({pki.inter.cert.get()});
  ASSERT_THAT(wire::LoadCaBundlePem(AsSpan(root + inter)), IsOk());
  struct Row {
    const char* name;
    std::string pem;
    const char* message;
  };
  std::string truncated = root + inter;
  truncated.resize(truncated.size() - 30);  // the last block loses its END line
  std::string bad_der = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
  const std::vector<Row> rows = {
      {"bad base64 between good blocks",
       root + "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n" + inter,
       "PEM block 2 cannot be read"},
      {"truncated last block", truncated, "PEM block 2 cannot be read"},
      {"a private key block", root + "-----BEGIN PRIVATE KEY-----\nMAMCAQE=\n-----END PRIVATE "
                                     "KEY-----\n",
       "PEM block 2 is a 'PRIVATE KEY', not a CERTIFICATE"},
      {"a block that is not a certificate", bad_der + root, "PEM block 1: "},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    EXPECT_THAT(wire::LoadCaBundlePem(AsSpan(row.pem)), StatusIs(kInvalid, row.message));
  }
}

TEST(EkAlgorithmTest, OneEkTypePerTpmByDefault) {
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  EXPECT_THAT(CheckEkAlgorithm(*c, SoftEk()), IsOk());
  EXPECT_THAT(CheckEkAlgorithm(*c, SoftEccEk()),
              StatusIs(kDenied, "the EK is ecc-p256, which is not in the configured ek_algs "
                                "(rsa-2048)"));
  TPMT_PUBLIC p384 = WithKey(wire::EkTemplate(wire::EkType::kEccP384High).publicArea,
                             EcKey("P-384"));
  EXPECT_THAT(CheckEkAlgorithm(*c, p384), StatusIs(kDenied, "ecc-p384"));
  EXPECT_THAT(CheckEkAlgorithm(*c, SoftEk(RsaKey(3072))), StatusIs(kDenied, "rsa-3072"));
  ServerConfigInput both = CertInput();
  both.ek_algs = {"ecc-p256", "rsa-2048"};
  std::shared_ptr<const ServerConfig> b = Config(both);
  EXPECT_THAT(CheckEkAlgorithm(*b, SoftEk()), IsOk());
  EXPECT_THAT(CheckEkAlgorithm(*b, SoftEccEk()), IsOk());
  EXPECT_THAT(CheckEkAlgorithm(*b, p384), StatusIs(kDenied, "ecc-p256, rsa-2048"));

  // In a session: an allowlisted ECC EK is still refused by the default, before any work.
  ServerConfigInput allow = AllowlistInput(SoftEccEk());
  auto s = ServerSession::New(Config(allow));
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT((*s)->HandlePayload(SoftPayload(SoftEccEk(), SoftAk())),
              StatusIs(kDenied, "ek_algs"));
  allow.ek_algs = {"ecc-p256"};
  auto s2 = ServerSession::New(Config(allow));
  ASSERT_THAT(s2, IsOk());
  EXPECT_THAT((*s2)->HandlePayload(SoftPayload(SoftEccEk(), SoftAk())), IsOk());
}

TPMT_PUBLIC WithModulus(TPMT_PUBLIC p, const Bytes& n) {
  p.parameters.rsaDetail.keyBits = static_cast<UINT16>(n.size() * 8);
  p.unique.rsa.size = static_cast<UINT16>(n.size());
  std::copy(n.begin(), n.end(), p.unique.rsa.buffer);
  return p;
}

TEST(WeakKeyTest, EkAndAkEachWithItsOwnReason) {
  const Bytes& roca = wire::testing::RocaModulus(2048);
  TPMT_PUBLIC sha1_ek = SoftEk();
  sha1_ek.nameAlg = TPM2_ALG_SHA1;
  TPMT_PUBLIC roca_ek = WithModulus(SoftEk(), roca);
  EXPECT_THAT(CheckEkStrength(SoftEk()), IsOk());
  EXPECT_THAT(CheckEkStrength(SoftEccEk()), IsOk());
  EXPECT_THAT(CheckEkStrength(sha1_ek), StatusIs(kDenied, "EK policy: nameAlg sha1 is refused"));
  EXPECT_THAT(CheckEkStrength(SoftEk(RsaKey(1024))),
              StatusIs(kDenied, "EK policy: RSA key of 1024 bits"));
  EXPECT_THAT(CheckEkStrength(roca_ek),
              StatusIs(kDenied, "EK policy: the RSA modulus has the ROCA"));

  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  const TPMT_PUBLIC rsa_ak = WithKey(wire::AkTemplate(wire::KeyAlg::kRsa2048).publicArea, RsaKey());
  EXPECT_THAT(CheckAkPolicy(*c, rsa_ak), IsOk());
  EXPECT_THAT(CheckAkPolicy(*c, WithModulus(rsa_ak, roca)),
              StatusIs(kDenied, "AK policy: the RSA modulus has the ROCA fingerprint"));

  // In a session, with the weak EK allowlisted (so only the strength check can refuse it).
  struct Row {
    const char* name;
    TPMT_PUBLIC ek;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"sha1 nameAlg", sha1_ek, "nameAlg sha1"},
      {"RSA-1024", SoftEk(RsaKey(1024)), "RSA key of 1024 bits"},
      {"ROCA", roca_ek, "ROCA fingerprint"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    ServerConfigInput in;
    in.trust_domain = "example.org";
    in.ek_allowlist = {HashOf(SoftEk())};
    auto s = ServerSession::New(Config(in));
    ASSERT_THAT(s, IsOk());
    EXPECT_THAT((*s)->HandlePayload(SoftPayload(row.ek, SoftAk())),
                StatusIs(kDenied, row.message));
  }
}

TEST(EkProfileTest, LeafProfileViolationsAreRefused) {
  Pki& pki = SharedPki();
  std::shared_ptr<const ServerConfig> c = Config(CertInput());
  auto with = [](auto mutate) {
    CertOptions o;
    mutate(o);
    return o;
  };
  struct Row {
    const char* name;
    EVP_PKEY* key;
    TPMT_PUBLIC ek;
    CertOptions options;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"a CA certificate", RsaKey(), SoftEk(),
       with([](CertOptions& o) { o.basic_constraints = "critical,CA:TRUE"; }),
       "is a CA certificate (basicConstraints cA TRUE)"},
      {"RSA keyUsage without keyEncipherment", RsaKey(), SoftEk(),
       with([](CertOptions& o) { o.key_usage = "critical,digitalSignature"; }),
       "without keyEncipherment"},
      {"ECC keyUsage without keyAgreement", EcKey(), SoftEccEk(),
       with([](CertOptions& o) { o.key_usage = "critical,keyEncipherment"; }),
       "without keyAgreement"},
      {"keyUsage with keyCertSign", RsaKey(), SoftEk(),
       with([](CertOptions& o) { o.key_usage = "critical,keyEncipherment,keyCertSign"; }),
       "keyCertSign or cRLSign"},
      {"neither EK EKU nor TCG SAN", RsaKey(), SoftEk(),
       with([](CertOptions& o) {
         o.eku_oid = nullptr;
         o.tcg_san = false;
       }),
       "neither the EK extended key usage"},
      {"another EKU, TCG SAN present", RsaKey(), SoftEk(),
       with([](CertOptions& o) { o.eku_oid = "1.3.6.1.5.5.7.3.2"; }), "tcg-kp-EKCertificate"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    OsslPtr<X509> cert = MakeEkCert(row.key, pki.inter, row.options);
    EXPECT_THAT(VerifyEkTrust(*c, row.ek, ToDer(cert.get()), {}),
                StatusIs(kDenied, "EK certificate profile: "));
    EXPECT_THAT(VerifyEkTrust(*c, row.ek, ToDer(cert.get()), {}), StatusIs(kDenied, row.message));
  }
  // What the profile accepts: EKU without SAN, SAN without EKU, no basicConstraints, no keyUsage,
  // and the ECC key usage for an ECC EK.
  const std::vector<std::pair<const char*, CertOptions>> good = {
      {"EKU only", with([](CertOptions& o) { o.tcg_san = false; })},
      {"SAN only", with([](CertOptions& o) { o.eku_oid = nullptr; })},
      {"no basicConstraints, no keyUsage", with([](CertOptions& o) {
         o.basic_constraints = "";
         o.key_usage = "";
       })},
  };
  for (const auto& [name, options] : good) {
    SCOPED_TRACE(name);
    OsslPtr<X509> cert = MakeEkCert(RsaKey(), pki.inter, options);
    EXPECT_THAT(VerifyEkTrust(*c, SoftEk(), ToDer(cert.get()), {}), IsOk());
  }
  OsslPtr<X509> ecc = MakeEkCert(EcKey(), pki.inter);
  EXPECT_THAT(VerifyEkTrust(*c, SoftEccEk(), ToDer(ecc.get()), {}), IsOk());
}

TEST(EkProfileTest, ChainCaAndPathLengthConstraintsAreEnforced) {
  // An "intermediate" that is not a CA (cA FALSE) cannot issue EK certificates.
  TestCert root = MakeRoot("constraint test root");
  CertOptions not_ca;
  not_ca.basic_constraints = "critical,CA:FALSE";
  not_ca.key_usage = "critical,digitalSignature,keyCertSign";
  TestCert fake_ca = MakeIntermediate("end entity posing as CA", root, not_ca);
  ServerConfigInput in = CertInput();
  in.ek_ca_bundle_paths = {
      WriteTemp("not-ca.pem", ToPem({root.cert.get(), fake_ca.cert.get()}))};
  OsslPtr<X509> under_fake = MakeEkCert(RsaKey(), fake_ca);
  EXPECT_THAT(VerifyEkTrust(*Config(in), SoftEk(), ToDer(under_fake.get()), {}),
              StatusIs(kDenied, "invalid CA certificate"));
  // The same chain with a real CA verifies (the control).
  TestCert real_ca = MakeIntermediate("real CA", root);
  in.ek_ca_bundle_paths = {WriteTemp("real-ca.pem", ToPem({root.cert.get(), real_ca.cert.get()}))};
  OsslPtr<X509> under_real = MakeEkCert(RsaKey(), real_ca);
  EXPECT_THAT(VerifyEkTrust(*Config(in), SoftEk(), ToDer(under_real.get()), {}), IsOk());

  // pathLenConstraint 0 on the root: an intermediate below it may not issue.
  CertOptions path0;
  path0.basic_constraints = "critical,CA:TRUE,pathlen:0";
  TestCert short_root = MakeRoot("pathlen 0 root", path0);
  TestCert inter = MakeIntermediate("inter below pathlen 0", short_root);
  in.ek_ca_bundle_paths = {
      WriteTemp("pathlen.pem", ToPem({short_root.cert.get(), inter.cert.get()}))};
  OsslPtr<X509> too_deep = MakeEkCert(RsaKey(), inter);
  EXPECT_THAT(VerifyEkTrust(*Config(in), SoftEk(), ToDer(too_deep.get()), {}),
              StatusIs(kDenied, "path length constraint exceeded"));
  // Directly under the pathlen-0 root is within the constraint.
  OsslPtr<X509> direct = MakeEkCert(RsaKey(), short_root);
  EXPECT_THAT(VerifyEkTrust(*Config(in), SoftEk(), ToDer(direct.get()), {}), IsOk());
}

TEST(PcrStepsTest, PolicyFailureKeepsTheGoldenValueServerSide) {
  wire::PcrValues quoted;
  quoted[TPM2_ALG_SHA256][7] = Bytes(32, 1);
  wire::PcrValues expected;
  expected[TPM2_ALG_SHA256][7] = Bytes(32, 0xab);
  absl::Status st = CheckPcrPolicy(expected, quoted);
  EXPECT_THAT(st, StatusIs(kDenied, "PCR policy: sha256 PCR 7 is " + HexEncode(Bytes(32, 1))));
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr("abab")));
  EXPECT_EQ(ServerLogDetail(st), "expected_pcrs sha256:7 = " + HexEncode(Bytes(32, 0xab)));
  EXPECT_EQ(ServerLogDetail(absl::PermissionDeniedError("x")), "");
}

}  // namespace
}  // namespace hwid::attestation
