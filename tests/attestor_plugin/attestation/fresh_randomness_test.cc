// The benchmark seam ServerSession::NewWithFixedRandomnessForBenchmark (bench/attest_bench) must
// not weaken the plugin: sessions made by ServerSession::New (the only factory the server adapter
// calls; the CTest attestation_plugin_never_uses_benchmark_seam checks its sources) draw a fresh
// secret and nonce every time, so a transcript recorded through the seam is refused as a replay.
// On the binary's private swtpm.
#include <memory>
#include <string>

#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/testing/swtpm.h"

namespace hwid::attestation {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const ServerConfig> Config() {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {::hwid::testing::GlobalSwtpm().ek_ca_bundle()};
  in.pcrs = "sha256:0-7";
  in.ek_algs = {"ecc-p256"};  // the agent below uses the ECC EK
  absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

std::unique_ptr<AgentResponder> Agent() {
  return ::hwid::attestation::testing::NewAgent(::hwid::testing::GlobalSwtpm().tcti(), "ecc", "ec-p256", "0x81000120");
}

Bytes Filled(uint8_t v) { return Bytes(32, v); }

TEST(FreshRandomnessTest, PluginSessionsDrawAFreshNonceAndCredentialEachTime) {
  std::unique_ptr<AgentResponder> agent = Agent();
  ASSERT_NE(agent, nullptr);
  absl::StatusOr<Bytes> payload = agent->MakePayload();
  ASSERT_TRUE(payload.ok()) << payload.status();
  std::shared_ptr<const ServerConfig> config = Config();
  Challenge seen[2];
  for (Challenge& c : seen) {
    absl::StatusOr<std::unique_ptr<ServerSession>> s = ServerSession::New(config);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::StatusOr<Bytes> challenge = (*s)->HandlePayload(*payload);
    ASSERT_TRUE(challenge.ok()) << challenge.status();
    absl::StatusOr<Challenge> decoded = DecodeChallenge(*challenge);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    c = *decoded;
    EXPECT_EQ(c.nonce.size(), 32u);
    EXPECT_NE(c.nonce, Bytes(32, 0));
  }
  EXPECT_NE(seen[0].nonce, seen[1].nonce);
  EXPECT_NE(seen[0].credential_blob, seen[1].credential_blob);
  EXPECT_NE(seen[0].encrypted_secret, seen[1].encrypted_secret);
}

TEST(FreshRandomnessTest, BenchmarkSessionUsesTheFixedValuesAndItsTranscriptVerifies) {
  std::unique_ptr<AgentResponder> agent = Agent();
  ASSERT_NE(agent, nullptr);
  std::shared_ptr<const ServerConfig> config = Config();
  absl::StatusOr<std::unique_ptr<ServerSession>> s =
      ServerSession::NewWithFixedRandomnessForBenchmark(config, Filled(0x11), Filled(0x22));
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<Bytes> payload = agent->MakePayload();
  ASSERT_TRUE(payload.ok()) << payload.status();
  absl::StatusOr<Bytes> challenge = (*s)->HandlePayload(*payload);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  absl::StatusOr<Challenge> decoded = DecodeChallenge(*challenge);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->nonce, Filled(0x22));
  absl::StatusOr<Bytes> response = agent->RespondToChallenge(*challenge);
  ASSERT_TRUE(response.ok()) << response.status();
  absl::StatusOr<ChallengeResponse> r = DecodeResponse(*response);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Bytes(r->secret.begin(), r->secret.end()), Filled(0x11));  // the TPM recovered it
  EXPECT_TRUE((*s)->HandleChallengeResponse(*response).ok());

  // The same recorded response, replayed to a plugin session for the same payload, is refused:
  // that session bound a secret of its own and asked for another nonce.
  absl::StatusOr<std::unique_ptr<ServerSession>> plugin = ServerSession::New(config);
  ASSERT_TRUE(plugin.ok());
  ASSERT_TRUE((*plugin)->HandlePayload(*payload).ok());
  absl::StatusOr<AttestationResult> replay = (*plugin)->HandleChallengeResponse(*response);
  ASSERT_FALSE(replay.ok());
  EXPECT_EQ(replay.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(replay.status().message()), HasSubstr("credential activation"));
}

TEST(FreshRandomnessTest, BenchmarkSeamRejectsBadInputs) {
  std::shared_ptr<const ServerConfig> config = Config();
  EXPECT_EQ(ServerSession::NewWithFixedRandomnessForBenchmark(config, Bytes(31, 1), Filled(2))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ServerSession::NewWithFixedRandomnessForBenchmark(config, Filled(1), Bytes())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ServerSession::NewWithFixedRandomnessForBenchmark(nullptr, Filled(1), Filled(2))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace hwid::attestation
