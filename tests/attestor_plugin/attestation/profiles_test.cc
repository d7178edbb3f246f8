// The hwid_tpm attestation (AgentResponder + ServerSession, in process) against every swtpm-setup
// profile (swtpm-setup/README.md "Profiles"): TPMs as they come out of a factory, including
// broken ones. The server is configured as a demanding operator would: the profile's ek-ca.pem
// (ek-root.pem for intermediate-in-nv), default ek_algs (rsa-2048), default PCRs (sha256:0-7).
// Each refusal's message is checked, not only its code. trailing-bytes and intermediate-in-nv are
// admitted because the agent strips NV wrappers, junk and padding and sends NV intermediates in
// ek_intermediates.
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/attestor_plugin/attestation/test_pki.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/swtpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/marshal.h"

namespace hwid::attestation {
namespace {

using ::hwid::attestation::testing::NewAgent;
using ::hwid::testing::Swtpm;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;

// One profile's swtpm and an agent on it (the AK is created once and reused).
struct Node {
  std::unique_ptr<Swtpm> swtpm;
  std::unique_ptr<AgentResponder> agent;
};

// StartNode starts a private swtpm of `profile` and an agent with `ek` ("auto" as deployed) and
// agent-side `pcrs` ("" = whatever the server asks). Null after a gtest failure.
std::unique_ptr<Node> StartNode(const std::string& profile, const char* ek = "auto",
                                const char* pcrs = "") {
  absl::StatusOr<std::unique_ptr<Swtpm>> s = Swtpm::StartProfile(profile);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) {
    return nullptr;
  }
  auto node = std::make_unique<Node>();
  node->swtpm = std::move(*s);
  node->agent = NewAgent(node->swtpm->tcti(), ek, "ec-p256", "0x81000100", pcrs);
  if (node->agent == nullptr) {
    return nullptr;
  }
  return node;
}

// Demanding: what an operator configures: the EK CA bundle, default ek_algs and PCRs.
ServerConfigInput Demanding(const std::string& bundle) {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {bundle};
  return in;
}

// Attest runs one attestation of `node` against a new session with `in`.
absl::StatusOr<AttestationResult> Attest(Node& node, const ServerConfigInput& in,
                                         Bytes* payload_out = nullptr) {
  absl::StatusOr<std::shared_ptr<const ServerConfig>> config = ValidateServerConfig(in);
  if (!config.ok()) {
    return absl::InternalError(absl::StrCat("test server config: ", config.status().ToString()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ServerSession> session, ServerSession::New(*config));
  ASSIGN_OR_RETURN(Bytes payload, node.agent->MakePayload());
  if (payload_out != nullptr) {
    *payload_out = payload;
  }
  ASSIGN_OR_RETURN(Bytes challenge, session->HandlePayload(payload));
  ASSIGN_OR_RETURN(Bytes response, node.agent->RespondToChallenge(challenge));
  return session->HandleChallengeResponse(response);
}

// AttestLogged is Attest, printing a refusal (the message an operator would read) to stderr.
absl::StatusOr<AttestationResult> AttestLogged(Node& node, const ServerConfigInput& in,
                                               Bytes* payload_out = nullptr) {
  absl::StatusOr<AttestationResult> r = Attest(node, in, payload_out);
  if (!r.ok()) {
    std::fprintf(stderr, "[refused] %s\n", r.status().ToString().c_str());
  }
  return r;
}

// EkHashOfPayload: SHA-256 of the EK's SubjectPublicKeyInfo, computed with OpenSSL from the EK
// public area in the payload (the oracle an operator enrolling a TPM uses).
std::string EkHashOfPayload(const Bytes& payload) {
  absl::StatusOr<AttestationPayload> p = DecodePayload(payload);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) {
    return "";
  }
  absl::StatusOr<TPM2B_PUBLIC> pub = wire::ParsePublic(p->ek_public);
  EXPECT_TRUE(pub.ok()) << pub.status();
  if (!pub.ok()) {
    return "";
  }
  absl::StatusOr<OsslPtr<EVP_PKEY>> key = wire::PublicToEvp(pub->publicArea);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? testing::SpkiSha256Hex(key->get()) : "";
}

TEST(SwtpmProfileFixtureTest, UnknownProfileIsAFailedPrecondition) {
  absl::StatusOr<std::unique_ptr<Swtpm>> s = Swtpm::StartProfile("no-such-profile");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("no-such-profile"));
}

TEST(SwtpmProfileFixtureTest, ProfileCopiesItsFiles) {
  std::unique_ptr<Node> node = StartNode("wrong-ca");
  ASSERT_NE(node, nullptr);
  std::unique_ptr<Swtpm>& s = node->swtpm;
  for (const std::string& f : {s->ek_ca_bundle(), s->ek_root(), s->other_ca(),
                               s->dir() + "/profile", s->dir() + "/certs/ek-rsa2048.pem"}) {
    EXPECT_EQ(access(f.c_str(), R_OK), 0) << f;
  }
}

TEST(AttestProfileTest, GoodIsAdmitted) {
  std::unique_ptr<Node> node = StartNode("good");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->ek_trust, "certificate");
  EXPECT_THAT(r->selectors, Contains("ek_alg:rsa-2048"));
  EXPECT_THAT(r->selectors, Contains("ek_issuer_cn:swtpm-localca"));
}

TEST(AttestProfileTest, NoEkCertIsRefusedWithoutCertificateAndAdmittedByAllowlist) {
  std::unique_ptr<Node> node = StartNode("no-ekcert");
  ASSERT_NE(node, nullptr);
  Bytes payload;
  absl::StatusOr<AttestationResult> r =
      AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()), &payload);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("no EK certificate was presented"), HasSubstr("allowlist")));
  absl::StatusOr<AttestationPayload> decoded = DecodePayload(payload);
  ASSERT_OK(decoded.status());
  EXPECT_TRUE(decoded->ek_certificate.empty());

  const std::string hash = EkHashOfPayload(payload);
  ASSERT_EQ(hash.size(), 64u);
  EXPECT_THAT(r.status().message(), HasSubstr(hash));  // so the operator can enrol it
  ServerConfigInput allow;
  allow.trust_domain = "example.org";
  allow.ek_allowlist = {hash};
  absl::StatusOr<AttestationResult> r2 = AttestLogged(*node, allow);
  ASSERT_OK(r2.status());
  EXPECT_EQ(r2->ek_trust, "allowlist");
  EXPECT_EQ(r2->ek_pubhash, hash);
}

TEST(AttestProfileTest, EccOnlyIsRefusedByDefaultEkAlgsAndAdmittedWithEccP256) {
  std::unique_ptr<Node> node = StartNode("ecc-only");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("ecc-p256"), HasSubstr("ek_algs"), HasSubstr("rsa-2048")));

  ServerConfigInput ecc = Demanding(node->swtpm->ek_ca_bundle());
  ecc.ek_algs = {"ecc-p256"};
  absl::StatusOr<AttestationResult> r2 = AttestLogged(*node, ecc);
  ASSERT_OK(r2.status());
  EXPECT_EQ(r2->ek_trust, "certificate");
  EXPECT_THAT(r2->selectors, Contains("ek_alg:ecc-p256"));
}

TEST(AttestProfileTest, RsaOnlyIsAdmitted) {
  std::unique_ptr<Node> node = StartNode("rsa-only");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->ek_trust, "certificate");
  EXPECT_THAT(r->selectors, Contains("ek_alg:rsa-2048"));
}

TEST(AttestProfileTest, ExpiredEkCertIsRefusedNamingExpiry) {
  std::unique_ptr<Node> node = StartNode("expired-ekcert");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("EK certificate"), HasSubstr("expired")));
}

TEST(AttestProfileTest, WrongCaIsRefusedNamingTheChain) {
  std::unique_ptr<Node> node = StartNode("wrong-ca");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("chain verification failed"), HasSubstr("issuer"),
                    HasSubstr("CA bundle")));
  // The same TPM against the bundle of the CA that did issue its certificates: admitted, so the
  // refusal above is about the chain and nothing else.
  absl::StatusOr<AttestationResult> r2 = AttestLogged(*node, Demanding(node->swtpm->other_ca()));
  ASSERT_OK(r2.status());
  EXPECT_THAT(r2->selectors, Contains("ek_issuer_cn:hwid-otherca"));
}

TEST(AttestProfileTest, CertKeyMismatchIsRefusedNamingTheKeyMismatch) {
  std::unique_ptr<Node> node = StartNode("cert-key-mismatch");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("certifies a different key than the EK"));
}

TEST(AttestProfileTest, Sha1OnlyPcrsIsRefusedForSha256AndAdmittedWithSha1) {
  std::unique_ptr<Node> node = StartNode("sha1-only-pcrs");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_ca_bundle()));
  ASSERT_FALSE(r.ok());
  // The agent refuses to quote a bank the TPM has not allocated (before the server sees a quote).
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), AllOf(HasSubstr("sha256"), HasSubstr("not allocated")));

  ServerConfigInput sha1 = Demanding(node->swtpm->ek_ca_bundle());
  sha1.pcrs = "sha1:0-7";
  absl::StatusOr<AttestationResult> r2 = AttestLogged(*node, sha1);
  ASSERT_OK(r2.status());
  EXPECT_THAT(r2->selectors, Contains("pcr_selection:sha1:0,1,2,3,4,5,6,7"));
}

// Every EK certificate NV carries a vendor quirk (wrapper, junk, 0xff padding); the agent must
// send the plain DER. Needs the `trust` branch (agent side).
TEST(AttestProfileTest, TrailingBytesIsAdmitted) {
  for (const char* ek : {"rsa", "ecc", "ecc-p384-h3"}) {
    SCOPED_TRACE(ek);
    std::unique_ptr<Node> node = StartNode("trailing-bytes", ek);
    ASSERT_NE(node, nullptr);
    ServerConfigInput in = Demanding(node->swtpm->ek_ca_bundle());
    in.ek_algs = {"rsa-2048", "ecc-p256", "ecc-p384"};
    absl::StatusOr<AttestationResult> r = AttestLogged(*node, in);
    EXPECT_OK(r.status());
  }
}

// The issuing intermediate is only in NV 0x01c00100 and the server trusts the root alone: the
// agent must send it in ek_intermediates. Needs the `trust` branch (agent side).
TEST(AttestProfileTest, IntermediateInNvIsAdmitted) {
  std::unique_ptr<Node> node = StartNode("intermediate-in-nv");
  ASSERT_NE(node, nullptr);
  absl::StatusOr<AttestationResult> r = AttestLogged(*node, Demanding(node->swtpm->ek_root()));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->ek_trust, "certificate");
}

}  // namespace
}  // namespace hwid::attestation
