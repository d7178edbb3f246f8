// SPIRE HA: two hwid-nodeattestor-server processes (two SPIRE servers' plugins) sharing one
// PostgreSQL clock store (a private PostgreSQL 15), configured through plugin_data with the
// connection string in a file. Two clones of one TPM (swtpm state copied) attest at different
// servers: the one behind the shared history is refused by the other server; with the database
// down, fail_closed refuses and fail_open attests, and both recover when it is back. The
// database password never shows up in the plugins' output.
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/agent.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/attestor_plugin/attestation/clone_testing.h"
#include "tests/attestor_plugin/server/server_testing.h"
#include "tests/testing/postgres.h"
#include "tests/testing/run_shell.h"

namespace hwid::attestor {
namespace {

namespace nav1 = ::spire::plugin::server::nodeattestor::v1;
using ::hwid::attestor::testing::AttestOverGrpc;
using ::hwid::attestor::testing::StartPlugin;
using ::hwid::testing::PluginClient;
using ::hwid::testing::Swtpm;
using ::testing::HasSubstr;
using ::testing::Not;

grpc::Status AttestWith(PluginClient& plugin, const Swtpm& tpm) {
  std::unique_ptr<attestation::AgentResponder> agent =
      attestation::testing::NewAgent(tpm.tcti(), "ecc");
  if (agent == nullptr) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "no agent");
  }
  auto stub = nav1::NodeAttestor::NewStub(plugin.channel());
  return AttestOverGrpc(stub.get(), *agent);
}

TEST(HaClockStateTest, TwoServersOnePostgresCloneRefusedOutageAndRecovery) {
  absl::StatusOr<std::unique_ptr<::hwid::testing::Postgres>> pg =
      ::hwid::testing::Postgres::Start();
  if (!pg.ok()) {
    if (::hwid::testing::RunningInCi()) {
      FAIL() << pg.status();
    }
    GTEST_SKIP() << pg.status();
  }
  const std::string conninfo_file = (*pg)->dir() + "/conninfo";
  std::ofstream((*pg)->dir() + "/conninfo") << (*pg)->conninfo() << "\n";
  ASSERT_EQ(chmod(conninfo_file.c_str(), 0600), 0);

  std::unique_ptr<PluginClient> server1 = StartPlugin();
  std::unique_ptr<PluginClient> server2 = StartPlugin();
  ASSERT_NE(server1, nullptr);
  ASSERT_NE(server2, nullptr);
  auto configure = [&](PluginClient& p, const Swtpm& tpm, const char* policy) {
    grpc::Status st = p.Configure(absl::StrCat(
        "ek_ca_bundle_paths = [\"", tpm.ek_ca_bundle(), "\"]\npcrs = \"sha256:0-7\"\n",
        "ek_algs = [\"ecc-p256\"]\n",  // the agents present their ECC EK (fast on swtpm)
        "clock_state = \"postgres\"\nclock_state_conninfo_file = \"", conninfo_file, "\"\n",
        "on_store_unavailable = \"", policy, "\"\n"));
    EXPECT_TRUE(st.ok()) << st.error_message();
  };

  absl::StatusOr<attestation::testing::TpmClones> clones =
      attestation::testing::MakeClones([&](const Swtpm& original) -> absl::Status {
        configure(*server1, original, "fail_closed");
        configure(*server2, original, "fail_open");
        grpc::Status st = AttestWith(*server1, original);
        return st.ok() ? absl::OkStatus() : absl::InternalError(st.error_message());
      });
  ASSERT_TRUE(clones.ok()) << clones.status();

  // A at server 1, then its copy B (behind A) at server 2: server 2 sees server 1's record.
  grpc::Status a = AttestWith(*server1, *clones->a);
  ASSERT_TRUE(a.ok()) << a.error_message();
  grpc::Status b = AttestWith(*server2, *clones->b);
  EXPECT_EQ(b.error_code(), grpc::StatusCode::PERMISSION_DENIED) << b.error_message();
  EXPECT_THAT(b.error_message(), HasSubstr("clock_went_backwards"));
  EXPECT_TRUE(AttestWith(*server2, *clones->a).ok());  // the original, at either server
  EXPECT_EQ((*pg)->Psql("SELECT version FROM hwid_tpm_clock_state").value(), "3\n");

  // The database goes away: server 1 (fail_closed) refuses, server 2 (fail_open) attests.
  ASSERT_TRUE((*pg)->Stop().ok());
  grpc::Status closed = AttestWith(*server1, *clones->a);
  EXPECT_EQ(closed.error_code(), grpc::StatusCode::UNAVAILABLE) << closed.error_message();
  EXPECT_THAT(closed.error_message(), HasSubstr("on_store_unavailable = fail_closed"));
  grpc::Status open = AttestWith(*server2, *clones->a);
  EXPECT_TRUE(open.ok()) << open.error_message();
  // Back: both record again, and the clone is still refused.
  ASSERT_TRUE((*pg)->Resume().ok());
  grpc::Status again = AttestWith(*server1, *clones->a);
  EXPECT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(AttestWith(*server1, *clones->b).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ((*pg)->Psql("SELECT version FROM hwid_tpm_clock_state").value(), "4\n");

  for (PluginClient* p : {server1.get(), server2.get()}) {
    EXPECT_TRUE(p->Stop().ok());
    EXPECT_THAT(p->process()->Stderr(), Not(HasSubstr((*pg)->password())));
  }
  EXPECT_THAT(server2->process()->Stderr(), HasSubstr("unchecked (store unavailable, fail_open)"));
}

}  // namespace
}  // namespace hwid::attestor
