// Memory across attestations on real swtpms: the clock info of verified quotes recorded per EK
// (file store), a power-cycled TPM (orderly and abrupt, through swtpm's control channel) still
// attests with its resetCount one higher, and a cloned TPM state (two swtpms from one copied
// state directory) is refused once its history diverges from the recorded one.
//
// Each test uses its own swtpms (not the binary's global one), and never keeps two connections to
// one swtpm open (the agent is destroyed before tpm2-tools or swtpm_ioctl touch the TPM).
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/clock_state.h"
#include "attestor_plugin/attestation/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/attestor_plugin/attestation/clone_testing.h"
#include "tests/testing/run_shell.h"
#include "tests/testing/swtpm.h"

namespace hwid::attestation {
namespace {

using ::hwid::attestation::testing::NewAgent;
using ::hwid::testing::RunShell;
using ::hwid::testing::ShellResult;
using ::hwid::testing::Swtpm;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class ClockSwtpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* tool : {"swtpm_ioctl", "tpm2_startup", "tpm2_shutdown", "tpm2_setclock"}) {
      if (RunShell(absl::StrCat("command -v ", tool)).exit_code != 0) {
        if (::hwid::testing::RunningInCi()) {
          FAIL() << tool << " is required when CI=true (swtpm-tools, tpm2-tools)";
        }
        GTEST_SKIP() << tool << " is missing";
      }
    }
    std::string t = std::filesystem::temp_directory_path() / "hwid-clockstate-XXXXXX";
    ASSERT_NE(mkdtemp(t.data()), nullptr);
    state_dir_ = t;
  }
  void TearDown() override {
    if (!state_dir_.empty()) {
      std::filesystem::remove_all(state_dir_);
    }
  }

  std::shared_ptr<const ServerConfig> Config(const Swtpm& tpm) {
    ServerConfigInput in;
    in.trust_domain = "example.org";
    in.ek_ca_bundle_paths = {tpm.ek_ca_bundle()};
    in.ek_algs = {"ecc-p256"};  // the agents present their ECC EK (fast on swtpm)
    in.pcrs = "sha256:0-7";
    in.clock_state = "file";
    in.clock_state_path = state_dir_ + "/records";
    absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  // Attest: one full attestation of `tpm`'s ECC EK against a server with `config`.
  absl::StatusOr<AttestationResult> Attest(const Swtpm& tpm,
                                           std::shared_ptr<const ServerConfig> config) {
    std::unique_ptr<AgentResponder> agent = NewAgent(tpm.tcti(), "ecc");
    if (agent == nullptr) {
      return absl::InternalError("no agent");
    }
    absl::StatusOr<std::unique_ptr<ServerSession>> session = ServerSession::New(config);
    if (!session.ok()) {
      return session.status();
    }
    absl::StatusOr<Bytes> payload = agent->MakePayload();
    if (!payload.ok()) {
      return payload.status();
    }
    absl::StatusOr<Bytes> challenge = (*session)->HandlePayload(*payload);
    if (!challenge.ok()) {
      return challenge.status();
    }
    absl::StatusOr<Bytes> response = agent->RespondToChallenge(*challenge);
    if (!response.ok()) {
      return response.status();
    }
    return (*session)->HandleChallengeResponse(*response);
  }

  ClockRecord Recorded(const ServerConfig& config, const std::string& ek_pubhash) {
    absl::StatusOr<std::optional<StoredClockRecord>> r =
        config.clock_state->store().Load(ek_pubhash);
    EXPECT_TRUE(r.ok() && r->has_value()) << r.status();
    return r.ok() && r->has_value() ? (*r)->record : ClockRecord{};
  }

  static void Tpm2(const Swtpm& tpm, const std::string& args) {
    absl::StatusOr<std::string> r = testing::Tpm2Tool(tpm, args);
    EXPECT_TRUE(r.ok()) << r.status();
  }

  // PowerCycle: _TPM_Init through the control channel (swtpm_ioctl -i), then TPM2_Startup(CLEAR)
  // as firmware does. `orderly`: TPM2_Shutdown(CLEAR) first, so the TPM saves Clock.
  static void PowerCycle(const Swtpm& tpm, bool orderly) {
    if (orderly) {
      Tpm2(tpm, "tpm2_shutdown -c");
    }
    ShellResult r = RunShell(absl::StrCat("swtpm_ioctl --tcp 127.0.0.1:", tpm.ctrl_port(), " -i"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    // swtpm's startup-clear flag may already have started it: TPM_RC_INITIALIZE (0x100) is fine.
    r = RunShell(absl::StrCat("tpm2_startup -c -T 'swtpm:host=127.0.0.1,port=", tpm.port(),
                              "' 2>&1"));
    ASSERT_TRUE(r.exit_code == 0 || r.output.find("0x100") != std::string::npos) << r.output;
  }

  std::string state_dir_;
};

TEST_F(ClockSwtpmTest, PowerCycleIncrementsResetCountAndStillAttests) {
  absl::StatusOr<std::unique_ptr<Swtpm>> tpm = Swtpm::Start();
  ASSERT_TRUE(tpm.ok()) << tpm.status();
  auto config = Config(**tpm);
  absl::StatusOr<AttestationResult> first = Attest(**tpm, config);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->clock_state, "recorded");
  const ClockRecord before = Recorded(*config, first->ek_pubhash);

  absl::StatusOr<AttestationResult> again = Attest(**tpm, config);  // same power cycle
  ASSERT_TRUE(again.ok()) << again.status();
  ClockRecord last = Recorded(*config, first->ek_pubhash);
  EXPECT_EQ(last.reset_count, before.reset_count);
  EXPECT_GE(last.clock, before.clock);

  for (bool orderly : {true, false}) {
    SCOPED_TRACE(orderly ? "orderly shutdown" : "power loss");
    PowerCycle(**tpm, orderly);
    absl::StatusOr<AttestationResult> after = Attest(**tpm, config);
    ASSERT_TRUE(after.ok()) << after.status();
    const ClockRecord now = Recorded(*config, first->ek_pubhash);
    // The counters may carry the AK's obfuscation offset; their difference is exact.
    EXPECT_EQ(static_cast<uint32_t>(now.reset_count - last.reset_count), 1u);
    EXPECT_EQ(now.ak_name, last.ak_name);
    last = now;
  }
}

TEST_F(ClockSwtpmTest, ClonedTpmStateIsRefusedOnceHistoriesDiverge) {
  std::shared_ptr<const ServerConfig> config;
  // The AK is created and persisted by a first attestation, before the state is copied: both
  // clones have it.
  absl::StatusOr<testing::TpmClones> clones =
      testing::MakeClones([&](const Swtpm& original) -> absl::Status {
        config = Config(original);
        return Attest(original, config).status();
      });
  ASSERT_TRUE(clones.ok()) << clones.status();
  Swtpm& a = *clones->a;
  Swtpm& b = *clones->b;

  absl::StatusOr<AttestationResult> from_a = Attest(a, config);
  ASSERT_TRUE(from_a.ok()) << from_a.status();
  absl::StatusOr<AttestationResult> from_b = Attest(b, config);
  ASSERT_FALSE(from_b.ok());
  EXPECT_EQ(from_b.status().code(), absl::StatusCode::kPermissionDenied) << from_b.status();
  EXPECT_THAT(std::string(from_b.status().message()), StartsWith("clock_went_backwards"));
  EXPECT_THAT(std::string(from_b.status().message()), HasSubstr(from_a->ek_pubhash));
  // The original keeps attesting; the clone keeps being refused.
  EXPECT_TRUE(Attest(a, config).ok());
  EXPECT_FALSE(Attest(b, config).ok());

  // Without a clock state the clone would pass: the refusal comes from the recorded history.
  ServerConfigInput plain;
  plain.trust_domain = "example.org";
  plain.ek_ca_bundle_paths = {b.ek_ca_bundle()};
  plain.ek_algs = {"ecc-p256"};
  plain.pcrs = "sha256:0-7";
  absl::StatusOr<std::shared_ptr<const ServerConfig>> no_state = ValidateServerConfig(plain);
  ASSERT_TRUE(no_state.ok());
  absl::StatusOr<AttestationResult> unchecked = Attest(b, *no_state);
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  EXPECT_EQ(unchecked->clock_state, "not configured");

  // The operator accepts B's history by deleting the record (docs/plugin-protocol.md, section
  // Clock state).
  std::filesystem::remove(
      absl::StrCat(state_dir_, "/records/", from_a->ek_pubhash, ".clock"));
  absl::StatusOr<AttestationResult> accepted = Attest(b, config);
  EXPECT_TRUE(accepted.ok()) << accepted.status();
}

// A TPM whose Clock is set an hour ahead (TPM2_ClockSet) gained more than real time since the
// last verification: refused; the record keeps the earlier history.
TEST_F(ClockSwtpmTest, ClockSetAheadOfRealTimeIsRefused) {
  absl::StatusOr<std::unique_ptr<Swtpm>> tpm = Swtpm::Start();
  ASSERT_TRUE(tpm.ok()) << tpm.status();
  auto config = Config(**tpm);
  absl::StatusOr<AttestationResult> first = Attest(**tpm, config);
  ASSERT_TRUE(first.ok()) << first.status();
  const ClockRecord before = Recorded(*config, first->ek_pubhash);
  Tpm2(**tpm, absl::StrCat("tpm2_setclock ", before.clock + 3'600'000));
  absl::StatusOr<AttestationResult> after = Attest(**tpm, config);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), absl::StatusCode::kPermissionDenied) << after.status();
  EXPECT_THAT(std::string(after.status().message()), StartsWith("clock_ahead_of_real_time"));
  EXPECT_EQ(Recorded(*config, first->ek_pubhash), before);
}

}  // namespace
}  // namespace hwid::attestation
