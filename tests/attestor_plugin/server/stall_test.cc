// Stalled agents against the hwid-nodeattestor-server binary, driven over gRPC like SPIRE: many
// attestation streams that never send a payload or never answer the challenge are ended with
// DEADLINE_EXCEEDED naming attestation_timeout_seconds, while an honest attestation (agent on
// swtpm) completes in the middle of them; afterwards the plugin's threads are back to where they
// were (no thread held by an ended session).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/agent.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spire/plugin/server/nodeattestor/v1/nodeattestor.grpc.pb.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/attestor_plugin/plugin_client.h"
#include "tests/attestor_plugin/server/server_testing.h"
#include "tests/testing/swtpm.h"

namespace hwid::attestor {
namespace {

namespace nav1 = ::spire::plugin::server::nodeattestor::v1;
using ::hwid::attestor::testing::Open;
using ::hwid::attestor::testing::OpenStream;
using ::hwid::attestor::testing::StartPlugin;
using ::hwid::testing::PluginClient;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr int kStalledBeforePayload = 10;
constexpr int kStalledAfterChallenge = 10;

// Threads: the number of threads of process `pid` (/proc/<pid>/status).
int Threads(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Threads:", 0) == 0) {
      return std::stoi(line.substr(8));
    }
  }
  return -1;
}

TEST(StalledAgentTest, StalledStreamsEndAtTheDeadlineAndDoNotStarveHonestOnes) {
  std::unique_ptr<PluginClient> plugin = StartPlugin();
  ASSERT_NE(plugin, nullptr);
  const std::string& bundle = ::hwid::testing::GlobalSwtpm().ek_ca_bundle();
  grpc::Status configured = plugin->Configure(absl::StrCat(
      "ek_ca_bundle_paths = [\"", bundle, "\"]\npcrs = \"sha256:0-7\"\n",
      "ek_algs = [\"ecc-p256\"]\n",  // the agent presents its ECC EK (fast on swtpm)
      "attestation_timeout_seconds = 2\n"));
  ASSERT_TRUE(configured.ok()) << configured.error_message();
  const pid_t pid = plugin->process()->pid();
  auto stub = nav1::NodeAttestor::NewStub(plugin->channel());

  std::unique_ptr<attestation::AgentResponder> agent =
      attestation::testing::NewAgent(::hwid::testing::GlobalSwtpm().tcti(), "ecc");
  ASSERT_NE(agent, nullptr);
  absl::StatusOr<Bytes> payload = agent->MakePayload();
  ASSERT_TRUE(payload.ok()) << payload.status();
  nav1::AttestRequest payload_req;
  payload_req.set_payload(std::string(payload->begin(), payload->end()));

  // Warm-up attestation (the plugin's thread pool at rest afterwards is the baseline).
  auto honest = [&] { return testing::AttestOverGrpc(stub.get(), *agent); };
  ASSERT_TRUE(honest().ok());
  const int baseline = Threads(pid);
  ASSERT_GT(baseline, 0);

  std::vector<OpenStream> stalled;
  for (int i = 0; i < kStalledBeforePayload; ++i) {
    stalled.push_back(Open(stub.get()));  // never writes anything
  }
  for (int i = 0; i < kStalledAfterChallenge; ++i) {
    OpenStream s = Open(stub.get());
    ASSERT_TRUE(s.stream->Write(payload_req));
    nav1::AttestResponse challenge;
    ASSERT_TRUE(s.stream->Read(&challenge));  // the plugin answers; the agent never does
    ASSERT_FALSE(challenge.challenge().empty());
    stalled.push_back(std::move(s));
  }

  const int with_stalled = Threads(pid);
  // With 20 stalled sessions open, an honest attestation still completes.
  grpc::Status ok = honest();
  EXPECT_TRUE(ok.ok()) << ok.error_code() << " " << ok.error_message();

  // Every stalled stream ends (no client deadline involved: 120 s) with the plugin's status.
  for (OpenStream& s : stalled) {
    nav1::AttestResponse ignored;
    while (s.stream->Read(&ignored)) {
    }
    grpc::Status st = s.stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("attestation_timeout_seconds = 2"));
  }

  // The ended sessions hold no thread: the pool shrinks back (bounded wait, no timing claim).
  int now = Threads(pid);
  for (int i = 0; i < 100 && now > baseline + 2; ++i) {
    std::this_thread::sleep_for(100ms);
    now = Threads(pid);
  }
  EXPECT_LE(now, baseline + 2) << "threads at rest " << baseline << ", after the stalls " << now;
  std::printf("plugin threads: %d at rest, %d with %d stalled streams open, %d after they ended\n",
              baseline, with_stalled, kStalledBeforePayload + kStalledAfterChallenge, now);

  EXPECT_TRUE(plugin->Stop().ok());
}

TEST(StalledAgentTest, TimeoutIsValidated) {
  std::unique_ptr<PluginClient> plugin = StartPlugin();
  ASSERT_NE(plugin, nullptr);
  const std::string& bundle = ::hwid::testing::GlobalSwtpm().ek_ca_bundle();
  for (const char* bad : {"0", "3601", "-5"}) {
    grpc::Status st = plugin->Configure(absl::StrCat("ek_ca_bundle_paths = [\"", bundle,
                                                        "\"]\nattestation_timeout_seconds = ",
                                                        bad, "\n"));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << bad;
    EXPECT_THAT(st.error_message(), HasSubstr("attestation_timeout_seconds"));
  }
  EXPECT_TRUE(plugin->Stop().ok());
}

}  // namespace
}  // namespace hwid::attestor
