// The KeyManager plugin binaries driven over gRPC exactly as SPIRE's host drives them: magic
// cookie KeyManager, handshake, Init (each role advertises only its own service), Configure,
// then the four KeyManager RPCs with SPIRE's error-code expectations; the agent binary on the
// swtpm (TPM backend), the server binary on a SoftHSM2 token (PKCS#11 backend). Logs are hclog
// JSON and never carry the PIN.
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spire/plugin/agent/keymanager/v1/keymanager.grpc.pb.h"
#include "spire/plugin/server/keymanager/v1/keymanager.grpc.pb.h"
#include "tests/attestor_plugin/hclog_check.h"
#include "tests/attestor_plugin/keymanager/verify.h"
#include "tests/attestor_plugin/plugin_client.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/swtpm.h"

namespace hwid::keymanager {
namespace {

namespace fs = std::filesystem;
namespace akm = ::spire::plugin::agent::keymanager::v1;
namespace skm = ::spire::plugin::server::keymanager::v1;
using ::hwid::testing::PluginClient;
using ::hwid::testing::SoftHsm;
using testing::Digest;
using testing::Sha256Hex;
using testing::VerifyDigest;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPin[] = "plugin-pin-8642";

// Ctx: a call context with SPIRE's per-call timeout.
std::unique_ptr<grpc::ClientContext> Ctx() { return hwid::testing::CallContext(); }

// The generated types of one role (the namespaces differ, the shapes do not).
#define HWID_KM_TYPES(NAME, NSP)                                                   \
  struct NAME {                                                                    \
    using GenerateKeyRequest = NSP::GenerateKeyRequest;                            \
    using GenerateKeyResponse = NSP::GenerateKeyResponse;                          \
    using GetPublicKeyRequest = NSP::GetPublicKeyRequest;                          \
    using GetPublicKeyResponse = NSP::GetPublicKeyResponse;                        \
    using GetPublicKeysRequest = NSP::GetPublicKeysRequest;                        \
    using GetPublicKeysResponse = NSP::GetPublicKeysResponse;                      \
    using SignDataRequest = NSP::SignDataRequest;                                  \
    using SignDataResponse = NSP::SignDataResponse;                                \
    static constexpr NSP::KeyType UNSPECIFIED_KEY_TYPE = NSP::UNSPECIFIED_KEY_TYPE; \
    static constexpr NSP::KeyType EC_P256 = NSP::EC_P256;                          \
    static constexpr NSP::KeyType RSA_2048 = NSP::RSA_2048;                        \
    static constexpr NSP::HashAlgorithm SHA256 = NSP::SHA256;                      \
    static constexpr NSP::HashAlgorithm SHA384 = NSP::SHA384;                      \
    static constexpr NSP::HashAlgorithm SHA3_256 = NSP::SHA3_256;                  \
  }
HWID_KM_TYPES(AgentKm, akm);
HWID_KM_TYPES(ServerKm, skm);
#undef HWID_KM_TYPES

// The contract SPIRE's facades and conformance suite check, for either role's stub.
template <typename NS, typename Stub>
void ExerciseContract(Stub* km, const std::string& role) {
  SCOPED_TRACE(role);
  // GenerateKey: every type SPIRE asks for in this role.
  typename NS::GenerateKeyRequest g;
  g.set_key_id(role == "agent" ? "agent-svid-A" : "x509-CA-A");
  g.set_key_type(NS::EC_P256);
  typename NS::GenerateKeyResponse gr;
  grpc::Status st = km->GenerateKey(Ctx().get(), g, &gr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const auto pk = gr.public_key();
  EXPECT_EQ(pk.id(), g.key_id());
  EXPECT_EQ(pk.type(), NS::EC_P256);
  const Bytes pkix(pk.pkix_data().begin(), pk.pkix_data().end());
  EXPECT_EQ(pk.fingerprint(), Sha256Hex(pkix));

  // SignData: the digest, the fingerprint echoed, a DER ECDSA signature that verifies.
  const Bytes d = Digest(HashAlg::kSha256, "csr");
  typename NS::SignDataRequest s;
  s.set_key_id(g.key_id());
  s.set_data(d.data(), d.size());
  s.set_hash_algorithm(NS::SHA256);
  typename NS::SignDataResponse sr;
  st = km->SignData(Ctx().get(), s, &sr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(sr.key_fingerprint(), pk.fingerprint());
  EXPECT_TRUE(VerifyDigest(pkix, HashAlg::kSha256, d,
                           ByteSpan(reinterpret_cast<const uint8_t*>(sr.signature().data()),
                                    sr.signature().size())));

  // RSA with PSS (Go's salt semantics) on the server role.
  if (role == "server") {
    typename NS::GenerateKeyRequest rg;
    rg.set_key_id("JWT-Signer-A");
    rg.set_key_type(NS::RSA_2048);
    typename NS::GenerateKeyResponse rgr;
    ASSERT_TRUE(km->GenerateKey(Ctx().get(), rg, &rgr).ok());
    const Bytes rpkix(rgr.public_key().pkix_data().begin(), rgr.public_key().pkix_data().end());
    const Bytes d384 = Digest(HashAlg::kSha384, "jwt");
    typename NS::SignDataRequest ps;
    ps.set_key_id("JWT-Signer-A");
    ps.set_data(d384.data(), d384.size());
    ps.mutable_pss_options()->set_hash_algorithm(NS::SHA384);
    ps.mutable_pss_options()->set_salt_length(-1);
    typename NS::SignDataResponse psr;
    st = km->SignData(Ctx().get(), ps, &psr);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(VerifyDigest(rpkix, HashAlg::kSha384, d384,
                             ByteSpan(reinterpret_cast<const uint8_t*>(psr.signature().data()),
                                      psr.signature().size()),
                             true, -1));
  }

  // GetPublicKey / GetPublicKeys.
  typename NS::GetPublicKeyRequest q;
  q.set_key_id(g.key_id());
  typename NS::GetPublicKeyResponse qr;
  ASSERT_TRUE(km->GetPublicKey(Ctx().get(), q, &qr).ok());
  EXPECT_EQ(qr.public_key().fingerprint(), pk.fingerprint());
  typename NS::GetPublicKeysResponse all;
  ASSERT_TRUE(km->GetPublicKeys(Ctx().get(), typename NS::GetPublicKeysRequest(), &all).ok());
  EXPECT_EQ(all.public_keys_size(), role == "server" ? 2 : 1);

  // Error codes SPIRE relies on.
  q.set_key_id("missing");
  EXPECT_EQ(km->GetPublicKey(Ctx().get(), q, &qr).error_code(), grpc::StatusCode::NOT_FOUND);
  s.set_key_id("missing");
  EXPECT_EQ(km->SignData(Ctx().get(), s, &sr).error_code(), grpc::StatusCode::NOT_FOUND);
  s.set_key_id(g.key_id());
  s.clear_hash_algorithm();
  st = km->SignData(Ctx().get(), s, &sr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s.set_hash_algorithm(NS::SHA3_256);
  st = km->SignData(Ctx().get(), s, &sr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("SHA-3"));
  g.set_key_type(NS::UNSPECIFIED_KEY_TYPE);
  st = km->GenerateKey(Ctx().get(), g, &gr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("key type is required"));
  g.set_key_id("");
  g.set_key_type(NS::EC_P256);
  EXPECT_EQ(km->GenerateKey(Ctx().get(), g, &gr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(KeyManagerPluginTest, AgentBinaryOnTheTpm) {
  char tmpl[] = "/tmp/hwid-km-plugin-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string key_dir = tmpl;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> r,
                       PluginClient::StartFromEnv("HWID_KM_AGENT", "KeyManager"));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> services, r->Init());
  EXPECT_THAT(services, ElementsAre("spire.plugin.agent.keymanager.v1.KeyManager",
                                    "spire.service.common.config.v1.Config"));
  auto km = akm::KeyManager::NewStub(r->channel());
  akm::GetPublicKeysResponse none;
  EXPECT_EQ(km->GetPublicKeys(Ctx().get(), akm::GetPublicKeysRequest(), &none).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  grpc::Status bad = r->Configure("backend = \"tpm\"\nkey_dir = \"/k\"\ncolor = 1\n");
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("color"));
  const std::string hcl = absl::StrCat("backend = \"tpm\"\ntcti = \"",
                                       hwid::testing::GlobalSwtpm().tcti(), "\"\nkey_dir = \"",
                                       key_dir, "\"\n");
  grpc::Status ok = r->Configure(hcl);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  ExerciseContract<AgentKm>(km.get(), "agent");
  akm::GetPublicKeysResponse before;
  ASSERT_TRUE(km->GetPublicKeys(Ctx().get(), akm::GetPublicKeysRequest(), &before).ok());
  EXPECT_OK(r->Stop());

  // A new process (agent restart) finds the same key with the same fingerprint.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> again,
                       PluginClient::StartFromEnv("HWID_KM_AGENT", "KeyManager"));
  ASSERT_TRUE(again->Configure(hcl).ok());
  auto km2 = akm::KeyManager::NewStub(again->channel());
  akm::GetPublicKeysResponse after;
  ASSERT_TRUE(km2->GetPublicKeys(Ctx().get(), akm::GetPublicKeysRequest(), &after).ok());
  ASSERT_EQ(after.public_keys_size(), 1);
  EXPECT_EQ(after.public_keys(0).fingerprint(), before.public_keys(0).fingerprint());
  EXPECT_OK(again->Stop());
  for (const std::string& line : r->process()->StderrLines()) {
    EXPECT_TRUE(hwid::testing::ParseHclogLine(line).ok()) << line;
  }
  fs::remove_all(key_dir);
}

TEST(KeyManagerPluginTest, ServerBinaryOnASoftHsmToken) {
  HWID_REQUIRE_SOFTHSM();
  absl::StatusOr<std::unique_ptr<SoftHsm>> hsm = SoftHsm::Start("hwid-km-srv", kPin, "so-1357");
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> r,
                       PluginClient::StartFromEnv("HWID_KM_SERVER", "KeyManager"));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> services, r->Init());
  EXPECT_THAT(services, ElementsAre("spire.plugin.server.keymanager.v1.KeyManager",
                                    "spire.service.common.config.v1.Config"));
  // A wrong PIN fails Configure (FAILED_PRECONDITION, never PERMISSION_DENIED) without the PIN.
  grpc::Status wrong =
      r->Configure(absl::StrCat("backend = \"pkcs11\"\nuri = \"pkcs11:token=", (*hsm)->label(),
                                "?module-path=", SoftHsm::kModule, "&pin-value=bad-pin-2468\"\n"));
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << wrong.error_message();
  EXPECT_THAT(wrong.error_message(), Not(HasSubstr("bad-pin-2468")));
  EXPECT_OK(r->Stop());

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> s,
                       PluginClient::StartFromEnv("HWID_KM_SERVER", "KeyManager"));
  grpc::Status ok =
      s->Configure(absl::StrCat("backend = \"pkcs11\"\nuri = \"", (*hsm)->uri(), "\"\n"));
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  auto km = skm::KeyManager::NewStub(s->channel());
  ExerciseContract<ServerKm>(km.get(), "server");
  EXPECT_OK(s->Stop());
  for (PluginClient* p : {r.get(), s.get()}) {
    for (const std::string& line : p->process()->StderrLines()) {
      EXPECT_TRUE(hwid::testing::ParseHclogLine(line).ok()) << line;
      EXPECT_THAT(line, Not(HasSubstr(kPin)));
      EXPECT_THAT(line, Not(HasSubstr("bad-pin-2468")));
    }
  }
}

}  // namespace
}  // namespace hwid::keymanager
