// The hwid-credentialcomposer binary driven over gRPC exactly as SPIRE's host drives it: magic
// cookie CredentialComposer, go-plugin handshake, Init (advertises the CredentialComposer service
// and Config, nothing else), Configure, then ComposeAgentX509SVID allowed for a key the node
// attestor recorded and PERMISSION_DENIED otherwise; the other Compose* RPCs are UNIMPLEMENTED,
// which SPIRE's facade treats as "no change". Logs are hclog JSON.
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attestor_plugin/composer/handoff.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spire/plugin/server/credentialcomposer/v1/credentialcomposer.grpc.pb.h"
#include "tests/attestor_plugin/hclog_check.h"
#include "tests/attestor_plugin/plugin_client.h"
#include "tests/testing/status_assert.h"

namespace hwid::composer {
namespace {

namespace fs = std::filesystem;
namespace ccv1 = ::spire::plugin::server::credentialcomposer::v1;
using ::hwid::testing::GoPluginEnv;
using ::hwid::testing::PluginClient;
using ::hwid::testing::PluginProcess;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kAgent[] =
    "spiffe://example.org/spire/agent/hwid_tpm/"
    "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

// Ctx: a call context with SPIRE's per-call timeout.
std::unique_ptr<grpc::ClientContext> Ctx() { return hwid::testing::CallContext(); }

grpc::Status ComposeAgent(ccv1::CredentialComposer::Stub* cc, const std::string& id,
                          const std::string& key, ccv1::ComposeAgentX509SVIDResponse* resp) {
  ccv1::ComposeAgentX509SVIDRequest req;
  req.set_spiffe_id(id);
  req.set_public_key(key);
  req.mutable_attributes()->mutable_subject()->set_common_name("agent");
  return cc->ComposeAgentX509SVID(Ctx().get(), req, resp);
}

ByteSpan Span(const std::string& s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(ComposerPluginTest, OverGrpcLikeSpire) {
  char tmpl[] = "/tmp/hwid-composer-plugin-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string keys = dir + "/certified-keys";

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> r,
                       PluginClient::StartFromEnv("HWID_COMPOSER", "CredentialComposer"));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> services, r->Init());
  EXPECT_THAT(services, ElementsAre("spire.plugin.server.credentialcomposer.v1.CredentialComposer",
                                    "spire.service.common.config.v1.Config"));
  auto cc = ccv1::CredentialComposer::NewStub(r->channel());
  ccv1::ComposeAgentX509SVIDResponse resp;

  // Before Configure: refused, not passed.
  EXPECT_EQ(ComposeAgent(cc.get(), kAgent, "k", &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  grpc::Status bad = r->Configure("require_tpm_agent_key = true\n");
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("certified_keys_dir"));
  bad = r->Configure(absl::StrCat("certified_keys_dir = \"", keys, "\"\ncolor = 1\n"));
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("color"));
  grpc::Status ok = r->Configure(absl::StrCat("certified_keys_dir = \"", keys, "\"\n"));
  ASSERT_TRUE(ok.ok()) << ok.error_message();

  // What the node attestor does in the same spire-server (same user) after a v2 attestation.
  const std::string certified = "certified SPKI DER";
  ASSERT_TRUE(RecordCertifiedKey(keys, kAgent, Span(certified)).ok());

  grpc::Status st = ComposeAgent(cc.get(), kAgent, certified, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(resp.has_attributes());  // SPIRE keeps its attributes unchanged
  st = ComposeAgent(cc.get(), kAgent, "another key", &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("was not certified by that agent's TPM"));
  st = ComposeAgent(cc.get(),
                    "spiffe://example.org/spire/agent/hwid_tpm/"
                    "0000000000000000000000000000000000000000000000000000000000000000",
                    certified, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Other node attestors' agents pass.
  st = ComposeAgent(cc.get(), "spiffe://example.org/spire/agent/join_token/x", "any", &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();

  // The other credentials are not this plugin's: UNIMPLEMENTED (SPIRE: unchanged).
  {
    ccv1::ComposeWorkloadX509SVIDRequest req;
    req.set_spiffe_id("spiffe://example.org/workload");
    req.set_public_key(certified);
    ccv1::ComposeWorkloadX509SVIDResponse wresp;
    EXPECT_EQ(cc->ComposeWorkloadX509SVID(Ctx().get(), req, &wresp).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  {
    ccv1::ComposeWorkloadJWTSVIDRequest req;
    req.set_spiffe_id("spiffe://example.org/workload");
    ccv1::ComposeWorkloadJWTSVIDResponse jresp;
    EXPECT_EQ(cc->ComposeWorkloadJWTSVID(Ctx().get(), req, &jresp).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  {
    ccv1::ComposeServerX509CARequest req;
    ccv1::ComposeServerX509CAResponse caresp;
    EXPECT_EQ(cc->ComposeServerX509CA(Ctx().get(), req, &caresp).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
    ccv1::ComposeServerX509SVIDRequest sreq;
    ccv1::ComposeServerX509SVIDResponse sresp;
    EXPECT_EQ(cc->ComposeServerX509SVID(Ctx().get(), sreq, &sresp).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }

  // require_tpm_agent_key = false: an uncertified key is allowed (and logged).
  ok = r->Configure(
      absl::StrCat("certified_keys_dir = \"", keys, "\"\nrequire_tpm_agent_key = false\n"));
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  st = ComposeAgent(cc.get(), kAgent, "another key", &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();

  EXPECT_OK(r->Stop());
  bool refused_logged = false;
  bool allowed_logged = false;
  for (const std::string& line : r->process()->StderrLines()) {
    absl::StatusOr<std::map<std::string, std::string>> l = hwid::testing::ParseHclogLine(line);
    EXPECT_TRUE(l.ok()) << line;
    if (!l.ok()) continue;
    refused_logged |= (*l)["@message"] == "agent SVID refused";
    allowed_logged |= absl::StrContains((*l)["@message"], "require_tpm_agent_key = false");
  }
  EXPECT_TRUE(refused_logged) << r->process()->Stderr();
  EXPECT_TRUE(allowed_logged) << r->process()->Stderr();
  fs::remove_all(dir);
}

TEST(ComposerPluginTest, WrongMagicCookieRefusesToStart) {
  const char* bin = std::getenv("HWID_COMPOSER");
  ASSERT_NE(bin, nullptr);
  // SPIRE starts every plugin with its type's cookie; a KeyManager cookie is not ours.
  auto p = PluginProcess::Start(bin, {}, GoPluginEnv("KeyManager"));
  ASSERT_NE(p, nullptr);
  auto status = p->WaitExit(5000ms);
  ASSERT_TRUE(status.has_value());
  EXPECT_NE(WEXITSTATUS(*status), 0);
  EXPECT_FALSE(p->ReadStdoutLine(100ms).has_value());
}

}  // namespace
}  // namespace hwid::composer
