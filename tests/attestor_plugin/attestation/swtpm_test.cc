// The hwid_tpm attestation protocol end to end in process: AgentResponder on a real swtpm (the
// binary's private TPM, provisioned with EK certificates from a local CA) against ServerSession,
// RSA and ECC EKs, certificate and allowlist modes, re-attestation, and the negative matrix of
// issue 5, each rejected with the right code.
//
// swtpm serves one client connection at a time, so a test never keeps two tpm::Tpm connections to
// the same swtpm open at once.
#include <openssl/x509.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/attestor_plugin/attestation/test_pki.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/run_shell.h"
#include "tests/testing/swtpm.h"
#include "tests/testing/swtpm_nv.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::attestation {
namespace {

using ::hwid::attestation::testing::NewAgent;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDenied = absl::StatusCode::kPermissionDenied;


std::unique_ptr<AgentResponder> NewAgent(const char* ek, const char* ak_alg = "ec-p256",
                                         const char* ak_handle = "0x81000100",
                                         const char* pcrs = "") {
  return NewAgent(::hwid::testing::GlobalSwtpm().tcti(), ek, ak_alg, ak_handle, pcrs);
}

ServerConfigInput CertConfig(const std::string& bundle) {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {bundle};
  in.pcrs = "sha256:0-7";
  // These tests exercise every EK type the swtpm holds; the default (rsa-2048 only) is tested in
  // OneIdentityPerTpmTest.
  in.ek_algs = {"rsa-2048", "ecc-p256", "ecc-p384"};
  return in;
}
ServerConfigInput CertConfig() {
  return CertConfig(::hwid::testing::GlobalSwtpm().ek_ca_bundle());
}

std::shared_ptr<const ServerConfig> Config(const ServerConfigInput& in) {
  absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

std::unique_ptr<ServerSession> NewSession(const ServerConfigInput& in) {
  absl::StatusOr<std::unique_ptr<ServerSession>> s = ServerSession::New(Config(in));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Transcript of one attestation.
struct Transcript {
  Bytes payload;
  Bytes challenge;
  Bytes response;
  absl::StatusOr<AttestationResult> result = absl::UnknownError("not run");
};

Transcript Attest(AgentResponder& agent, ServerSession& session) {
  Transcript r;
  absl::StatusOr<Bytes> p = agent.MakePayload();
  if (!p.ok()) {
    r.result = p.status();
    return r;
  }
  r.payload = *p;
  absl::StatusOr<Bytes> c = session.HandlePayload(r.payload);
  if (!c.ok()) {
    r.result = c.status();
    return r;
  }
  r.challenge = *c;
  absl::StatusOr<Bytes> resp = agent.RespondToChallenge(r.challenge);
  if (!resp.ok()) {
    r.result = resp.status();
    return r;
  }
  r.response = *resp;
  r.result = session.HandleChallengeResponse(r.response);
  return r;
}

// EkHashFromCertificate: the oracle for the SPIFFE ID, computed by OpenSSL alone from the EK
// certificate in the payload.
std::string EkHashFromCertificate(const Bytes& payload) {
  absl::StatusOr<AttestationPayload> p = DecodePayload(payload);
  EXPECT_TRUE(p.ok());
  if (!p.ok() || p->ek_certificate.empty()) {
    return "";
  }
  const unsigned char* d = p->ek_certificate.data();
  OsslPtr<X509> cert(d2i_X509(nullptr, &d, static_cast<long>(p->ek_certificate.size())));
  EXPECT_TRUE(cert != nullptr);
  return cert ? testing::SpkiSha256Hex(X509_get0_pubkey(cert.get())) : "";
}

Bytes Reencode(const AttestationPayload& p) {
  absl::StatusOr<Bytes> b = EncodePayload(p);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : Bytes{};
}
Bytes Reencode(const ChallengeResponse& r) {
  absl::StatusOr<Bytes> b = EncodeResponse(r);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : Bytes{};
}
Bytes Reencode(const Challenge& c) {
  absl::StatusOr<Bytes> b = EncodeChallenge(c);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : Bytes{};
}

// ---------------------------------------------------------------- round trips

struct RoundTripCase {
  const char* ek;
  const char* ak_alg;
  const char* ek_alg;
};

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTripTest, CertificateThenAllowlistMode) {
  const RoundTripCase& tc = GetParam();
  std::unique_ptr<AgentResponder> agent = NewAgent(tc.ek, tc.ak_alg, "0x81000101");
  ASSERT_NE(agent, nullptr);
  std::unique_ptr<ServerSession> session = NewSession(CertConfig());
  Transcript run = Attest(*agent, *session);
  ASSERT_THAT(run.result, IsOk());
  const AttestationResult& r = *run.result;

  const std::string hash = EkHashFromCertificate(run.payload);
  ASSERT_EQ(hash.size(), 64u);
  EXPECT_EQ(r.spiffe_id, "spiffe://example.org/spire/agent/hwid_tpm/" + hash);
  EXPECT_EQ(r.ek_pubhash, hash);
  EXPECT_TRUE(r.can_reattest);
  EXPECT_EQ(r.ek_trust, "certificate");
  const std::vector<std::string>& sel = r.selectors;
  EXPECT_THAT(sel, Contains("ek_pubhash:" + hash));
  EXPECT_THAT(sel, Contains("ek_trust:certificate"));
  // swtpm_setup's EK certificates: manufacturer IBM, model swtpm (swtpm-setup/README.md).
  EXPECT_THAT(sel, Contains("ek_manufacturer:id:00001014"));
  EXPECT_THAT(sel, Contains("ek_model:swtpm"));
  EXPECT_THAT(sel, Contains("ek_version:id:20191023"));
  EXPECT_THAT(sel, Contains("ek_issuer_cn:swtpm-localca"));
  // No ek_type selector: the template fields it was derived from are not proven (issue 13).
  for (const std::string& s : sel) {
    EXPECT_THAT(s, Not(HasSubstr("ek_type:")));
  }
  EXPECT_THAT(sel, Contains(absl::StrCat("ek_alg:", tc.ek_alg)));
  EXPECT_THAT(sel, Contains(absl::StrCat("ak_alg:", tc.ak_alg)));
  EXPECT_THAT(sel, Contains("pcr_selection:sha256:0,1,2,3,4,5,6,7"));
  ASSERT_OK_AND_ASSIGN(Bytes ak_name, agent->AkName());

  // Allowlist mode (no CA configured): the same TPM is admitted by its EK hash, without the
  // certificate-derived selectors.
  ServerConfigInput allow;
  allow.trust_domain = "example.org";
  allow.pcrs = "sha256:0-7";
  allow.ek_allowlist = {hash};
  allow.ek_algs = {tc.ek_alg};
  std::unique_ptr<ServerSession> session2 = NewSession(allow);
  Transcript run2 = Attest(*agent, *session2);
  ASSERT_THAT(run2.result, IsOk());
  EXPECT_EQ(run2.result->spiffe_id, r.spiffe_id);
  EXPECT_EQ(run2.result->ek_trust, "allowlist");
  EXPECT_THAT(run2.result->selectors, Contains("ek_trust:allowlist"));
  for (const std::string& s : run2.result->selectors) {
    EXPECT_THAT(s, Not(HasSubstr("ek_manufacturer:")));
    EXPECT_THAT(s, Not(HasSubstr("ek_issuer_cn:")));
  }
  // Re-attestation reused the AK.
  ASSERT_OK_AND_ASSIGN(Bytes ak_name2, agent->AkName());
  EXPECT_EQ(ak_name2, ak_name);

  // The pcr selectors carry exactly the PCR values the TPM reports (read independently).
  agent.reset();  // one connection at a time
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t,
                       tpm::Tpm::Open(::hwid::testing::GlobalSwtpm().tcti()));
  ASSERT_OK_AND_ASSIGN(TPML_PCR_SELECTION ps, wire::ParsePcrSelection("sha256:0-7"));
  ASSERT_OK_AND_ASSIGN(wire::PcrValues values, t->PcrRead(ps));
  int pcr_selectors = 0;
  for (const std::string& s : sel) {
    pcr_selectors += s.rfind("pcr:", 0) == 0 ? 1 : 0;
  }
  EXPECT_EQ(pcr_selectors, 8);
  for (const auto& [index, digest] : values.at(TPM2_ALG_SHA256)) {
    EXPECT_THAT(sel, Contains(absl::StrCat("pcr:sha256:", index, ":", HexEncode(digest))));
  }
  ASSERT_THAT(t->EvictPersistent(0x81000101), IsOk());
}

INSTANTIATE_TEST_SUITE_P(
    Eks, RoundTripTest,
    ::testing::Values(RoundTripCase{"ecc", "ec-p256", "ecc-p256"},
                      RoundTripCase{"rsa", "rsa-2048", "rsa-2048"},
                      RoundTripCase{"ecc-p384-h3", "ec-p384", "ecc-p384"},
                      RoundTripCase{"auto", "ec-p256", "rsa-2048"}),
    [](const auto& p) {
      std::string n = p.param.ek;
      for (char& c : n) {
        if (!isalnum(static_cast<unsigned char>(c))) {
          c = '_';
        }
      }
      return n;
    });

TEST(ReattestationTest, ReusesEkAndAkWithoutKeyGeneration) {
  std::unique_ptr<AgentResponder> agent = NewAgent("ecc", "ec-p256", "0x81000102");
  ASSERT_NE(agent, nullptr);
  Transcript first = Attest(*agent, *NewSession(CertConfig()));
  ASSERT_THAT(first.result, IsOk());
  const uint64_t after_first = agent->tpm_command_count();
  ASSERT_OK_AND_ASSIGN(Bytes ak_name, agent->AkName());
  Transcript second = Attest(*agent, *NewSession(CertConfig()));
  ASSERT_THAT(second.result, IsOk());
  const uint64_t renewal = agent->tpm_command_count() - after_first;
  ASSERT_OK_AND_ASSIGN(Bytes ak_name2, agent->AkName());
  EXPECT_EQ(ak_name2, ak_name);
  EXPECT_EQ(second.result->spiffe_id, first.result->spiffe_id);
  EXPECT_EQ(second.payload, first.payload);
  EXPECT_LT(renewal, after_first);
  std::printf("TPM commands: first attestation %llu, re-attestation %llu\n",
              static_cast<unsigned long long>(after_first),
              static_cast<unsigned long long>(renewal));

  // An agent restart (new responder, same TPM) finds the persisted AK: same name, same identity.
  agent.reset();
  std::unique_ptr<AgentResponder> restarted = NewAgent("ecc", "ec-p256", "0x81000102");
  ASSERT_NE(restarted, nullptr);
  Transcript third = Attest(*restarted, *NewSession(CertConfig()));
  ASSERT_THAT(third.result, IsOk());
  ASSERT_OK_AND_ASSIGN(Bytes ak_name3, restarted->AkName());
  EXPECT_EQ(ak_name3, ak_name);
  EXPECT_EQ(third.result->spiffe_id, first.result->spiffe_id);
}

// ---------------------------------------------------------------- negative matrix

class NegativeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    agent_ = NewAgent("ecc");
    ASSERT_NE(agent_, nullptr);
  }
  // Challenge starts a session and returns the challenge for the agent's genuine payload.
  Bytes StartSession(ServerSession& s) {
    absl::StatusOr<Bytes> p = agent_->MakePayload();
    EXPECT_TRUE(p.ok()) << p.status();
    absl::StatusOr<Bytes> c = s.HandlePayload(p.ok() ? *p : Bytes{});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : Bytes{};
  }
  // GenuineResponse runs the challenge through the agent.
  ChallengeResponse GenuineResponse(const Bytes& challenge) {
    absl::StatusOr<Bytes> r = agent_->RespondToChallenge(challenge);
    EXPECT_TRUE(r.ok()) << r.status();
    absl::StatusOr<ChallengeResponse> d = DecodeResponse(r.ok() ? *r : Bytes{});
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : ChallengeResponse{};
  }
  std::unique_ptr<AgentResponder> agent_;
};

TEST_F(NegativeTest, ReplayedResponseFromAPreviousSession) {
  Transcript old = Attest(*agent_, *NewSession(CertConfig()));
  ASSERT_THAT(old.result, IsOk());
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  StartSession(*s);
  EXPECT_THAT(s->HandleChallengeResponse(old.response),
              StatusIs(kDenied, "credential activation"));
}

TEST_F(NegativeTest, ReplayedNonceWithTheFreshSecret) {
  Transcript old = Attest(*agent_, *NewSession(CertConfig()));
  ASSERT_THAT(old.result, IsOk());
  ASSERT_OK_AND_ASSIGN(ChallengeResponse old_r, DecodeResponse(old.response));
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  ChallengeResponse fresh = GenuineResponse(StartSession(*s));
  // The fresh secret proves activation, but the quote is the old one (old nonce).
  fresh.quote_attest = old_r.quote_attest;
  fresh.quote_signature = old_r.quote_signature;
  fresh.pcrs = old_r.pcrs;
  EXPECT_THAT(s->HandleChallengeResponse(Reencode(fresh)),
              StatusIs(kDenied, "extraData does not match the nonce"));
}

TEST_F(NegativeTest, WrongSecret) {
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  ChallengeResponse r = GenuineResponse(StartSession(*s));
  r.secret[0] ^= 0x01;
  EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)),
              StatusIs(kDenied, "credential activation"));
}

TEST_F(NegativeTest, GenuineCertificateWithASoftwareEk) {
  ASSERT_OK_AND_ASSIGN(Bytes genuine, agent_->MakePayload());
  ASSERT_OK_AND_ASSIGN(AttestationPayload p, DecodePayload(genuine));
  // The attacker keeps the real EK certificate but substitutes an EK whose private key it holds.
  TPM2B_PUBLIC soft{};
  soft.publicArea = WithKey(wire::EkTemplate(wire::EkType::kRsa2048).publicArea, RsaKey());
  ASSERT_OK_AND_ASSIGN(p.ek_public, wire::MarshalPublic(soft));
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  EXPECT_THAT(s->HandlePayload(Reencode(p)), StatusIs(kDenied, "certifies a different key"));
}

TEST_F(NegativeTest, UntrustedCa) {
  testing::TestCert other = testing::MakeRoot("some other TPM vendor");
  const std::string bundle = testing::WriteTemp("other-ca.pem", testing::ToPem({other.cert.get()}));
  std::unique_ptr<ServerSession> s = NewSession(CertConfig(bundle));
  ASSERT_OK_AND_ASSIGN(Bytes payload, agent_->MakePayload());
  EXPECT_THAT(s->HandlePayload(payload), StatusIs(kDenied, "chain verification failed"));
  // The swtpm root alone (without its intermediate) does not suffice either.
  std::unique_ptr<ServerSession> s2 =
      NewSession(CertConfig(::hwid::testing::GlobalSwtpm().ek_root()));
  EXPECT_THAT(s2->HandlePayload(payload), StatusIs(kDenied, "chain verification failed"));
}

TEST_F(NegativeTest, CertificateOutsideItsValidity) {
  ServerConfigInput in = CertConfig();
  in.verification_time = 86400;  // 1970: before the swtpm CA and EK certificates were issued
  ASSERT_OK_AND_ASSIGN(Bytes payload, agent_->MakePayload());
  EXPECT_THAT(NewSession(in)->HandlePayload(payload), StatusIs(kDenied, "not yet valid"));
  // swtpm's certificates are valid until 9999-12-31, so expiry (of the CA and of the EK
  // certificate) is covered with the software PKI in attestation_core_test
  // (EkStepsTest.ExpiredCaAndVerificationTime, CertificateNegativeMatrix).
}

TEST_F(NegativeTest, PayloadAkNotRestrictedOrNotFixedTpm) {
  ASSERT_OK_AND_ASSIGN(Bytes genuine, agent_->MakePayload());
  ASSERT_OK_AND_ASSIGN(AttestationPayload p, DecodePayload(genuine));
  ASSERT_OK_AND_ASSIGN(TPM2B_PUBLIC ak, wire::ParsePublic(p.ak_public));
  TPM2B_PUBLIC not_fixed = ak;
  not_fixed.publicArea.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM;
  AttestationPayload q = p;
  ASSERT_OK_AND_ASSIGN(q.ak_public, wire::MarshalPublic(not_fixed));
  EXPECT_THAT(NewSession(CertConfig())->HandlePayload(Reencode(q)),
              StatusIs(kDenied, "fixedTPM"));

  // A real, unrestricted TPM signing key (it could sign a forged TPMS_ATTEST).
  agent_.reset();
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t,
                         tpm::Tpm::Open(::hwid::testing::GlobalSwtpm().tcti()));
    ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, t->CreateKey(wire::KeyAlg::kEcP256));
    ASSERT_OK_AND_ASSIGN(TPM2B_PUBLIC unrestricted, wire::ParsePublic(kf.pub));
    ASSERT_OK_AND_ASSIGN(q.ak_public, wire::MarshalPublic(unrestricted));
  }
  EXPECT_THAT(NewSession(CertConfig())->HandlePayload(Reencode(q)),
              StatusIs(kDenied, "restricted"));
}

TEST_F(NegativeTest, QuoteByAnotherKey) {
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  const Bytes challenge = StartSession(*s);
  ChallengeResponse r = GenuineResponse(challenge);
  ASSERT_OK_AND_ASSIGN(Challenge c, DecodeChallenge(challenge));
  agent_.reset();
  {
    // Another restricted AK in the same TPM quotes the same nonce and PCRs.
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t,
                         tpm::Tpm::Open(::hwid::testing::GlobalSwtpm().tcti()));
    ASSERT_OK_AND_ASSIGN(tpm::LoadedKey other, t->EnsureAk(wire::KeyAlg::kEcP256, 0x81000110));
    ASSERT_OK_AND_ASSIGN(TPML_PCR_SELECTION sel, wire::ParsePcrSelection(c.pcr_selection));
    ASSERT_OK_AND_ASSIGN(tpm::Quote q, t->QuotePcrs(other, c.nonce, sel));
    r.quote_attest = q.attest;
    r.quote_signature = q.signature;
    ASSERT_THAT(t->EvictPersistent(0x81000110), IsOk());
  }
  EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)),
              StatusIs(kDenied, "signature does not verify"));
}

TEST_F(NegativeTest, TamperedPcrValue) {
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  ChallengeResponse r = GenuineResponse(StartSession(*s));
  ASSERT_FALSE(r.pcrs.empty());
  r.pcrs[3].digest[0] ^= 0x80;
  EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)), StatusIs(kDenied, "pcrDigest"));
}

TEST_F(NegativeTest, PcrValuesNotMatchingTheQuotedSelection) {
  {
    std::unique_ptr<ServerSession> s = NewSession(CertConfig());
    ChallengeResponse r = GenuineResponse(StartSession(*s));
    r.pcrs.pop_back();  // a quoted PCR without its value
    EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)), StatusIs(kInvalid, "PCR"));
  }
  {
    std::unique_ptr<ServerSession> s = NewSession(CertConfig());
    ChallengeResponse r = GenuineResponse(StartSession(*s));
    r.pcrs.push_back(PcrValue{TPM2_ALG_SHA256, 8, Bytes(32, 0)});  // a value outside the quote
    EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)), StatusIs(kInvalid, "PCR"));
  }
}

TEST_F(NegativeTest, QuotedSelectionFewerOrMoreThanRequired) {
  for (const char* asked : {"sha256:0-6", "sha256:0-8", "sha1:0-7"}) {
    SCOPED_TRACE(asked);
    std::unique_ptr<ServerSession> s = NewSession(CertConfig());
    // A man in the middle (or a lying agent) changes the selection to quote.
    ASSERT_OK_AND_ASSIGN(Challenge c, DecodeChallenge(StartSession(*s)));
    c.pcr_selection = asked;
    ChallengeResponse r = GenuineResponse(Reencode(c));
    EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)), StatusIs(kDenied, "PCR selection"));
  }
}

TEST_F(NegativeTest, PcrPolicy) {
  Transcript genuine = Attest(*agent_, *NewSession(CertConfig()));
  ASSERT_THAT(genuine.result, IsOk());
  std::string pcr7;
  for (const std::string& sel : genuine.result->selectors) {
    if (sel.rfind("pcr:sha256:7:", 0) == 0) {
      pcr7 = sel.substr(13);
    }
  }
  ASSERT_EQ(pcr7.size(), 64u);
  ServerConfigInput in = CertConfig();
  in.expected_pcrs = {{"sha256:7", pcr7}};
  EXPECT_THAT(Attest(*agent_, *NewSession(in)).result, IsOk());
  std::string wrong = pcr7;
  wrong[0] = wrong[0] == '0' ? '1' : '0';
  in.expected_pcrs = {{"sha256:7", wrong}};
  absl::StatusOr<AttestationResult> refused = Attest(*agent_, *NewSession(in)).result;
  EXPECT_THAT(refused, StatusIs(kDenied, "PCR policy: sha256 PCR 7 is " + pcr7));
  // The configured (golden) value reaches the server's log only, never the agent's message.
  EXPECT_THAT(std::string(refused.status().message()), Not(HasSubstr(wrong)));
  EXPECT_THAT(ServerLogDetail(refused.status()), HasSubstr("sha256:7 = " + wrong));
}

// ---------------------------------------------------------------- one identity per TPM

// The swtpm holds three certified EKs (RSA-2048, ECC P-256, ECC P-384). With the default ek_algs
// (rsa-2048) only one of them is an identity: the others are refused naming the setting, and the
// agent's `auto` picks the accepted one.
TEST(OneIdentityPerTpmTest, DefaultAcceptsOneEkTypeOfTheSameTpm) {
  ServerConfigInput in = CertConfig();
  in.ek_algs.clear();  // the default
  std::string rsa_id;
  {
    std::unique_ptr<AgentResponder> agent = NewAgent("auto", "ec-p256", "0x81000103");
    ASSERT_NE(agent, nullptr);
    Transcript run = Attest(*agent, *NewSession(in));
    ASSERT_THAT(run.result, IsOk());
    EXPECT_THAT(run.result->selectors, Contains("ek_alg:rsa-2048"));
    rsa_id = run.result->spiffe_id;
  }
  for (const char* ek : {"ecc", "ecc-p384-h3"}) {
    SCOPED_TRACE(ek);
    std::unique_ptr<AgentResponder> agent = NewAgent(ek, "ec-p256", "0x81000103");
    ASSERT_NE(agent, nullptr);
    EXPECT_THAT(Attest(*agent, *NewSession(in)).result,
                StatusIs(kDenied, "which is not in the configured ek_algs (rsa-2048)"));
  }
  // A migration window (both types accepted) admits the ECC EK too, under another ID: the cost
  // the docs describe (evict the old IDs once the fleet has moved).
  in.ek_algs = {"rsa-2048", "ecc-p256"};
  std::unique_ptr<AgentResponder> agent = NewAgent("ecc", "ec-p256", "0x81000103");
  ASSERT_NE(agent, nullptr);
  Transcript run = Attest(*agent, *NewSession(in));
  ASSERT_THAT(run.result, IsOk());
  EXPECT_NE(run.result->spiffe_id, rsa_id);
  agent.reset();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t,
                       tpm::Tpm::Open(::hwid::testing::GlobalSwtpm().tcti()));
  ASSERT_THAT(t->EvictPersistent(0x81000103), IsOk());
}

TEST_F(NegativeTest, MalformedResponsesAfterARealChallenge) {
  struct Row {
    const char* name;
    // Turns this session's genuine response into the bytes sent.
    std::function<Bytes(ChallengeResponse)> make;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"truncated",
       [](ChallengeResponse r) {
         Bytes b = Reencode(r);
         b.resize(b.size() / 2);
         return b;
       },
       "malformed challenge response"},
      {"oversized",
       [](ChallengeResponse r) {
         Bytes b = Reencode(r);
         b.resize(kMaxResponseBytes + 1, 0);
         return b;
       },
       "more than the limit"},
      {"garbage",
       [](ChallengeResponse) {
         Bytes g(300);
         for (size_t i = 0; i < g.size(); ++i) {
           g[i] = static_cast<uint8_t>(i * 37 + 11);
         }
         return g;
       },
       "malformed challenge response"},
      {"truncated TPMS_ATTEST",
       [](ChallengeResponse r) {
         r.quote_attest.pop_back();
         return Reencode(r);
       },
       ""},
      {"TPMT_SIGNATURE with a trailing byte",
       [](ChallengeResponse r) {
         r.quote_signature.push_back(0);
         return Reencode(r);
       },
       ""},
      {"PCR digest of the wrong length",
       [](ChallengeResponse r) {
         r.pcrs[0].digest.pop_back();
         return Reencode(r);
       },
       "PCR values"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    std::unique_ptr<ServerSession> s = NewSession(CertConfig());
    ChallengeResponse r = GenuineResponse(StartSession(*s));
    ASSERT_FALSE(r.pcrs.empty());
    EXPECT_THAT(s->HandleChallengeResponse(row.make(std::move(r))),
                StatusIs(kInvalid, row.message));
  }
}

TEST_F(NegativeTest, TooManyRounds) {
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  Transcript run = Attest(*agent_, *s);
  ASSERT_THAT(run.result, IsOk());
  EXPECT_THAT(s->HandleChallengeResponse(run.response),
              StatusIs(kInvalid, "extra challenge response"));
  EXPECT_THAT(s->HandlePayload(run.payload), StatusIs(kInvalid, "second attestation payload"));
  // The agent answers one challenge per payload.
  EXPECT_THAT(agent_->RespondToChallenge(run.challenge),
              StatusIs(absl::StatusCode::kFailedPrecondition, "before the attestation payload"));
}

TEST_F(NegativeTest, AgentRefusesMalformedChallengesAndUnwantedPcrs) {
  std::unique_ptr<ServerSession> s = NewSession(CertConfig());
  const Bytes challenge = StartSession(*s);
  EXPECT_THAT(agent_->RespondToChallenge(Bytes(50, 0xab)), StatusIs(kInvalid, "challenge"));
  ASSERT_OK_AND_ASSIGN(Bytes unused, agent_->MakePayload());
  ASSERT_OK_AND_ASSIGN(Challenge c, DecodeChallenge(challenge));
  Challenge wrong_blob = c;
  wrong_blob.credential_blob[wrong_blob.credential_blob.size() / 2] ^= 1;
  EXPECT_THAT(agent_->RespondToChallenge(Reencode(wrong_blob)),
              StatusIs(kDenied, "ActivateCredential"));
  agent_.reset();
  std::unique_ptr<AgentResponder> limited = NewAgent("ecc", "ec-p256", "0x81000100", "sha256:0-3");
  ASSERT_NE(limited, nullptr);
  ASSERT_OK_AND_ASSIGN(Bytes payload, limited->MakePayload());
  std::unique_ptr<ServerSession> s2 = NewSession(CertConfig());
  ASSERT_OK_AND_ASSIGN(Bytes ch2, s2->HandlePayload(payload));
  EXPECT_THAT(limited->RespondToChallenge(ch2),
              StatusIs(kDenied, "outside the agent's configured pcrs"));
}

// ---------------------------------------------------------------- a second TPM, another CA

bool HaveTool(const char* tool) {
  return std::system(absl::StrCat("command -v ", tool, " >/dev/null 2>&1").c_str()) == 0;
}

TEST(SecondTpmTest, EkFromAnotherCaIsRefused) {
  if (!HaveTool("tpm2_changeeps") || !HaveTool("tpm2_nvdefine")) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL() << "tpm2-tools (tpm2_changeeps, tpm2_nvdefine) are required when CI=true";
    }
    GTEST_SKIP() << "tpm2-tools not installed";
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<::hwid::testing::Swtpm> second,
                       ::hwid::testing::Swtpm::Start());
  const std::string tcti = second->tcti();
  // A different endorsement seed: a different EK, certified by a CA the server does not trust.
  ASSERT_EQ(std::system(absl::StrCat("tpm2_changeeps -T '", tcti, "' >/dev/null").c_str()), 0);
  Bytes ek_pub;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(tcti));
    ASSERT_OK_AND_ASSIGN(tpm::Ek ek, t->LoadEk(wire::EkType::kEccP256));
    ASSERT_EQ(ek.persistent_handle, 0u) << "ChangeEPS must have evicted the persistent EK";
    ASSERT_OK_AND_ASSIGN(ek_pub, wire::PublicKeyDer(ek.pub.publicArea));
  }
  const unsigned char* d = ek_pub.data();
  OsslPtr<EVP_PKEY> ek_key(d2i_PUBKEY(nullptr, &d, static_cast<long>(ek_pub.size())));
  ASSERT_NE(ek_key, nullptr);
  testing::TestCert other_root = testing::MakeRoot("other manufacturer root");
  testing::TestCert other_ca = testing::MakeIntermediate("other manufacturer EK CA", other_root);
  OsslPtr<X509> cert = testing::MakeEkCert(ek_key.get(), other_ca);
  const Bytes der = testing::ToDer(cert.get());
  const std::string der_path =
      testing::WriteTemp("second-ek.der", std::string(der.begin(), der.end()));
  const std::string nv = "0x01c0000a";
  const std::string cmd = absl::StrCat(
      "set -e; T='", tcti, "'; tpm2_nvundefine -T \"$T\" -C p ", nv, " >/dev/null; ",
      "tpm2_nvdefine -T \"$T\" -C p -s ", der.size(),
      " -a 'ppwrite|ppread|ownerread|authread|no_da|platformcreate' ", nv, " >/dev/null; ",
      "tpm2_nvwrite -T \"$T\" -C p -i '", der_path, "' ", nv);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  std::unique_ptr<AgentResponder> agent2 = NewAgent(tcti, "ecc");
  ASSERT_NE(agent2, nullptr);
  // Refused by the server that trusts the first manufacturer's CA...
  Transcript refused = Attest(*agent2, *NewSession(CertConfig()));
  EXPECT_THAT(refused.result, StatusIs(kDenied, "chain verification failed"));
  // ...admitted by a server that trusts the other CA, under a different SPIFFE ID.
  const std::string other_bundle = testing::WriteTemp(
      "second-ca.pem", testing::ToPem({other_root.cert.get(), other_ca.cert.get()}));
  Transcript admitted = Attest(*agent2, *NewSession(CertConfig(other_bundle)));
  ASSERT_THAT(admitted.result, IsOk());
  EXPECT_THAT(admitted.result->selectors, Contains("ek_manufacturer:id:58595A00"));
  // And the first TPM is refused by that server.
  std::unique_ptr<AgentResponder> agent1 = NewAgent("ecc");
  ASSERT_NE(agent1, nullptr);
  Transcript first = Attest(*agent1, *NewSession(CertConfig(other_bundle)));
  EXPECT_THAT(first.result, StatusIs(kDenied, "chain verification failed"));
  Transcript first_ok = Attest(*agent1, *NewSession(CertConfig()));
  ASSERT_THAT(first_ok.result, IsOk());
  EXPECT_NE(first_ok.result->spiffe_id, admitted.result->spiffe_id);
}

// ---------------------------------------------------------------- certificates in NV as vendors
// ship them (issue 14): the chain's intermediate in NV 0x01c00100, a TCG-wrapped EK certificate.

class NvChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!::hwid::testing::HaveTpm2Tools()) {
      if (::hwid::testing::RunningInCi()) {
        FAIL() << "tpm2-tools (tpm2_nvdefine, tpm2_nvwrite, tpm2_nvundefine) are required when "
                  "CI=true";
      }
      GTEST_SKIP() << "tpm2-tools not installed";
    }
    ASSERT_OK_AND_ASSIGN(swtpm_, ::hwid::testing::Swtpm::Start());
    ASSERT_OK_AND_ASSIGN(wire::CaBundle ca, wire::LoadTrustBundle(swtpm_->ek_ca_bundle()));
    ASSERT_EQ(ca.intermediates.size(), 1u);
    intermediate_der_ = testing::ToDer(ca.intermediates[0].get());
  }
  absl::Status Write(uint32_t index, const Bytes& data) {
    return ::hwid::testing::WriteNvIndex(swtpm_->tcti(), swtpm_->dir(), index, data);
  }
  // AttestOnce runs one attestation with a new agent (closed afterwards: swtpm serves one client)
  // against a server trusting `bundle`.
  Transcript AttestOnce(const std::string& bundle) {
    std::unique_ptr<AgentResponder> agent = NewAgent(swtpm_->tcti(), "rsa");
    EXPECT_NE(agent, nullptr);
    if (agent == nullptr) {
      return {};
    }
    std::unique_ptr<ServerSession> session = NewSession(CertConfig(bundle));
    EXPECT_NE(session, nullptr);
    if (session == nullptr) {
      return {};
    }
    return Attest(*agent, *session);
  }

  std::unique_ptr<::hwid::testing::Swtpm> swtpm_;
  Bytes intermediate_der_;
};

TEST_F(NvChainTest, IntermediateInNvCompletesTheChainToTheRoot) {
  // The server trusts the root only: without the intermediate there is no path.
  Transcript refused = AttestOnce(swtpm_->ek_root());
  EXPECT_THAT(refused.result,
              StatusIs(kDenied, "chain verification failed: unable to get local issuer"));
  ASSERT_OK_AND_ASSIGN(AttestationPayload without, DecodePayload(refused.payload));
  EXPECT_TRUE(without.ek_intermediates.empty());

  ASSERT_OK(Write(0x01c00100, intermediate_der_));
  ASSERT_OK(Write(0x01c00101, Bytes(32, 0x5a)));  // garbage in the range: skipped, not fatal
  Transcript admitted = AttestOnce(swtpm_->ek_root());
  ASSERT_THAT(admitted.result, IsOk());
  ASSERT_OK_AND_ASSIGN(AttestationPayload with, DecodePayload(admitted.payload));
  ASSERT_EQ(with.ek_intermediates.size(), 1u);
  EXPECT_EQ(with.ek_intermediates[0], intermediate_der_);
  // The same SPIFFE ID as a server that has the intermediate in its bundle.
  Transcript bundled = AttestOnce(swtpm_->ek_ca_bundle());
  ASSERT_THAT(bundled.result, IsOk());
  EXPECT_EQ(bundled.result->spiffe_id, admitted.result->spiffe_id);
}

TEST_F(NvChainTest, TcgWrappedEkCertificateIsAdmitted) {
  Bytes der;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(swtpm_->tcti()));
    ASSERT_OK_AND_ASSIGN(Bytes nv, t->NvRead(0x01c00002));
    ASSERT_OK_AND_ASSIGN(der, wire::ExtractEkCertificateDer(nv));
  }
  Bytes wrapped = {0x10, 0x01, 0x00, static_cast<uint8_t>(der.size() >> 8),
                   static_cast<uint8_t>(der.size())};
  wrapped.resize(5 + der.size() + 40, 0xff);
  std::copy(der.begin(), der.end(), wrapped.begin() + 5);
  ASSERT_OK(Write(0x01c00002, wrapped));
  Transcript admitted = AttestOnce(swtpm_->ek_ca_bundle());
  ASSERT_THAT(admitted.result, IsOk());
  ASSERT_OK_AND_ASSIGN(AttestationPayload p, DecodePayload(admitted.payload));
  EXPECT_EQ(p.ek_certificate, der);  // the server gets exactly the DER
  EXPECT_EQ(admitted.result->spiffe_id,
            "spiffe://example.org/spire/agent/hwid_tpm/" + EkHashFromCertificate(admitted.payload));
}

TEST_F(NvChainTest, UnusableEkCertificateIndexIsSkippedWithAWarning) {
  // Garbage at the P-256 EK certificate index: the agent still attests with the RSA EK and says
  // in its warnings (the plugin logs them) which index it skipped and why.
  ASSERT_OK(Write(0x01c0000a, Bytes(64, 0x5a)));
  std::unique_ptr<AgentResponder> agent = NewAgent(swtpm_->tcti(), "auto");
  ASSERT_NE(agent, nullptr);
  std::unique_ptr<ServerSession> session = NewSession(CertConfig(swtpm_->ek_ca_bundle()));
  ASSERT_NE(session, nullptr);
  Transcript t = Attest(*agent, *session);
  ASSERT_THAT(t.result, IsOk());
  const std::vector<std::string> warnings = agent->TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], ::testing::HasSubstr("0x01c0000a"));
  EXPECT_TRUE(agent->TakeWarnings().empty()) << "taken once";
}

}  // namespace
}  // namespace hwid::attestation
