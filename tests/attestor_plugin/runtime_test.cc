// The plugin runtime driven exactly as go-plugin's host drives it: the fixture binary is
// started with the magic cookie, the handshake line is read, a gRPC client connects over the
// unix socket and plays SPIRE's part (broker stream with a ConnInfo to our own host server,
// stdio stream, Init, Configure, Validate, health, an attestation stream), then
// GRPCController/Shutdown must end the process within go-plugin's 2 s budget.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "plugin/grpc_broker.grpc.pb.h"
#include "plugin/grpc_stdio.grpc.pb.h"
#include "spire/plugin/agent/nodeattestor/v1/nodeattestor.grpc.pb.h"
#include "spire/plugin/server/nodeattestor/v1/nodeattestor.grpc.pb.h"
#include "spire/service/common/config/v1/config.grpc.pb.h"
#include "spire/service/private/init/v1/init.grpc.pb.h"
#include "tests/attestor_plugin/hclog_check.h"
#include "tests/attestor_plugin/plugin_client.h"
#include "tests/testing/status_assert.h"

namespace {

namespace fs = std::filesystem;
namespace configv1 = ::spire::service::common::config::v1;
namespace initv1 = ::spire::service::private_::init::v1;
namespace healthv1 = ::grpc::health::v1;
namespace servernav1 = ::spire::plugin::server::nodeattestor::v1;
namespace agentnav1 = ::spire::plugin::agent::nodeattestor::v1;
using ::hwid::testing::ParseHclogLine;
using ::hwid::testing::PluginClient;
using ::hwid::testing::PluginProcess;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string FixtureBinary() {
  const char* p = std::getenv("HWID_TEST_PLUGIN");
  return p == nullptr ? "" : p;
}

std::unique_ptr<grpc::ClientContext> Ctx(std::chrono::seconds timeout = 10s) {
  return ::hwid::testing::CallContext(timeout);
}

// A private directory for this test's sockets, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string t = "/tmp/hwid-rt-XXXXXX";
    path_ = mkdtemp(t.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The "host services" server SPIRE would serve on broker id 1: a health service here.
class HostHealth final : public healthv1::Health::Service {
 public:
  grpc::Status Check(grpc::ServerContext*, const healthv1::HealthCheckRequest*,
                     healthv1::HealthCheckResponse* resp) override {
    ++calls;
    resp->set_status(healthv1::HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
  std::atomic<int> calls{0};
};

// StartPlugin: starts the fixture like go-plugin's host (NodeAttestor cookie, 10 s calls) and
// checks its handshake.
absl::StatusOr<std::unique_ptr<PluginClient>> StartPlugin(
    const std::vector<std::string>& args, std::map<std::string, std::string> env) {
  return PluginClient::Start(FixtureBinary(), "NodeAttestor",
                             PluginClient::Options{args, std::move(env), 10s});
}

// StderrLinesAreHclog: every stderr line is valid hclog JSON; returns them parsed.
std::vector<std::map<std::string, std::string>> ParsedLogs(PluginProcess* p) {
  std::vector<std::map<std::string, std::string>> out;
  for (const std::string& line : p->StderrLines()) {
    auto obj = ParseHclogLine(line);
    EXPECT_TRUE(obj.ok()) << obj.status();
    if (obj.ok()) {
      out.push_back(*obj);
    }
  }
  return out;
}

const std::map<std::string, std::string>* FindLog(
    const std::vector<std::map<std::string, std::string>>& logs, const std::string& message) {
  for (const auto& l : logs) {
    if (l.at("@message") == message) {
      return &l;
    }
  }
  return nullptr;
}

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(FixtureBinary().empty()) << "HWID_TEST_PLUGIN is not set (run through ctest)";
  }
};

TEST_F(RuntimeTest, FullHostConversationThenShutdownWithinTwoSeconds) {
  TempDir tmp;
  // Host side: our own "host services" server, announced over the broker as id 1.
  HostHealth host_health;
  std::string host_sock = tmp.path() + "/host.sock";
  grpc::ServerBuilder hb;
  hb.AddListeningPort("unix:" + host_sock, grpc::InsecureServerCredentials());
  hb.RegisterService(&host_health);
  std::unique_ptr<grpc::Server> host = hb.BuildAndStart();
  ASSERT_NE(host, nullptr);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> c,
                       StartPlugin({}, {{"HWID_TEST_PLUGIN_PROBE_HOST", "health"},
                                        {"PLUGIN_UNIX_SOCKET_DIR", tmp.path()}}));
  PluginProcess* p = c->process();
  EXPECT_TRUE(absl::StartsWith(c->socket(), tmp.path() + "/")) << "PLUGIN_UNIX_SOCKET_DIR honoured";
  const std::shared_ptr<grpc::Channel>& ch = c->channel();

  // 1. Broker stream (kept open) with the host's ConnInfo.
  auto broker = plugin::GRPCBroker::NewStub(ch);
  grpc::ClientContext broker_ctx;
  auto broker_stream = broker->StartStream(&broker_ctx);
  plugin::ConnInfo info;
  info.set_service_id(1);
  info.set_network("unix");
  info.set_address(host_sock);
  ASSERT_TRUE(broker_stream->Write(info));
  std::thread broker_reader([&] {
    plugin::ConnInfo in;
    while (broker_stream->Read(&in)) {
    }
  });

  // 2. Stdio stream (kept open).
  auto stdio = plugin::GRPCStdio::NewStub(ch);
  grpc::ClientContext stdio_ctx;
  google::protobuf::Empty empty;
  auto stdio_stream = stdio->StreamStdio(&stdio_ctx, empty);
  std::thread stdio_reader([&] {
    plugin::StdioData d;
    while (stdio_stream->Read(&d)) {
    }
  });

  // 3. Health: service "plugin" is SERVING, unknown names are NOT_FOUND.
  auto health = healthv1::Health::NewStub(ch);
  {
    healthv1::HealthCheckRequest req;
    req.set_service("plugin");
    healthv1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(Ctx().get(), req, &resp).ok());
    EXPECT_EQ(resp.status(), healthv1::HealthCheckResponse::SERVING);
    req.set_service("nope");
    EXPECT_EQ(health->Check(Ctx().get(), req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }

  // 4. Init through the literal wire path (the generated code's path was rewritten, so check
  //    it with a generic call), which also makes the plugin dial our host via the broker.
  {
    ASSERT_OK_AND_ASSIGN(std::vector<std::string> services,
                         c->Init({"spire.hostservice.common.metrics.v1.Metrics"}));
    EXPECT_THAT(services,
                ::testing::ElementsAre("spire.plugin.server.nodeattestor.v1.NodeAttestor",
                                       "spire.service.common.config.v1.Config"));
    EXPECT_GE(host_health.calls.load(), 1) << "the plugin reached the host through the broker";
  }

  auto attestor = servernav1::NodeAttestor::NewStub(ch);
  auto attest_once = [&]() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    auto stream = attestor->Attest(&ctx);
    servernav1::AttestRequest req;
    req.set_payload("x");
    stream->Write(req);
    servernav1::AttestResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    return stream->Finish();
  };
  // 5. Before Configure: FAILED_PRECONDITION.
  grpc::Status s = attest_once();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();

  // 6. Bad configuration: INVALID_ARGUMENT naming the key; nothing applied.
  {
    grpc::Status bad = c->Configure("greeting = \"hi\"\ncolour = \"red\"\n");
    EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(bad.error_message(), HasSubstr("unknown key \"colour\" (line 2)"));
    bad = c->Configure("count = \"many\"");
    EXPECT_THAT(bad.error_message(), HasSubstr("key \"count\" (line 1): expected a number"));
    EXPECT_EQ(attest_once().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // 7. Validate reports without applying.
  auto config = configv1::Config::NewStub(ch);
  {
    configv1::ValidateRequest req;
    req.mutable_core_configuration()->set_trust_domain("example.org");
    req.set_hcl_configuration("count = 1000");
    configv1::ValidateResponse resp;
    ASSERT_TRUE(config->Validate(Ctx().get(), req, &resp).ok());
    EXPECT_FALSE(resp.valid());
    ASSERT_EQ(resp.notes_size(), 1);
    EXPECT_THAT(resp.notes(0), HasSubstr("key \"count\""));
    req.set_hcl_configuration("count = 10");
    ASSERT_TRUE(config->Validate(Ctx().get(), req, &resp).ok());
    EXPECT_TRUE(resp.valid());
    EXPECT_EQ(attest_once().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // 8. Good configuration (every HCL type), then reconfiguration concurrent with RPCs.
  {
    grpc::Status ok = c->Configure(
        "greeting = \"hi\"\ncount = 3\nverbose = true\nitems = [\"a\", \"b\"]\n"
        "policy {\n  \"sha256:7\" = \"00ff\"\n}\nnested {\n  name = \"n\"\n}\n");
    ASSERT_TRUE(ok.ok()) << ok.error_message();
    EXPECT_EQ(attest_once().error_code(), grpc::StatusCode::UNIMPLEMENTED);

    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 10; ++i) {
          if (t % 2 == 0) {
            failures += c->Configure("count = " + std::to_string(i)).ok() ? 0 : 1;
          } else {
            failures += attest_once().error_code() == grpc::StatusCode::UNIMPLEMENTED ? 0 : 1;
          }
        }
      });
    }
    for (auto& th : threads) {
      th.join();
    }
    EXPECT_EQ(failures.load(), 0);
  }

  // 9. A NodeAttestor stream left open (SPIRE cancels rather than half-closes), then Deinit
  //    and Shutdown: the process must exit, cleanly, within 2 s.
  grpc::ClientContext hanging_ctx;
  auto hanging = attestor->Attest(&hanging_ctx);
  std::thread hanging_reader([&] {
    servernav1::AttestResponse r;
    while (hanging->Read(&r)) {
    }
  });
  {
    initv1::DeinitResponse resp;
    auto init = initv1::Init::NewStub(ch);
    EXPECT_TRUE(init->Deinit(Ctx().get(), initv1::DeinitRequest(), &resp).ok());
  }
  auto start = std::chrono::steady_clock::now();
  std::optional<int> status = c->Shutdown();
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(status.has_value()) << "plugin still running 2 s after Shutdown";
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  std::cout << "[ INFO     ] exit after Shutdown took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms\n";

  hanging_ctx.TryCancel();
  hanging_reader.join();
  broker_ctx.TryCancel();
  broker_reader.join();
  stdio_ctx.TryCancel();
  stdio_reader.join();
  host->Shutdown();

  EXPECT_FALSE(fs::exists(c->socket())) << "socket removed at exit";
  EXPECT_FALSE(fs::exists(fs::path(c->socket()).parent_path())) << "socket dir removed at exit";
  EXPECT_EQ(p->RemainingStdout(), "") << "nothing but the handshake on stdout";

  // 10. Logs: every line is hclog JSON; levels and fields as logged.
  auto logs = ParsedLogs(p);
  const auto* configured = FindLog(logs, "test plugin configured");
  ASSERT_NE(configured, nullptr) << p->Stderr();
  EXPECT_EQ(configured->at("@level"), "info");
  EXPECT_EQ(configured->at("@module"), "hwid_test");
  EXPECT_EQ(configured->at("trust_domain"), "example.org");
  EXPECT_EQ(configured->at("items"), "a,b");
  const auto* rejected = FindLog(logs, "test plugin configuration rejected");
  ASSERT_NE(rejected, nullptr);
  EXPECT_EQ(rejected->at("@level"), "error");
  EXPECT_THAT(rejected->at("error"), HasSubstr("colour"));
  const auto* warn = FindLog(logs, "verbose mode is on");
  ASSERT_NE(warn, nullptr);
  EXPECT_EQ(warn->at("@level"), "warn");
  EXPECT_NE(FindLog(logs, "host services reachable through the broker"), nullptr);
  EXPECT_NE(FindLog(logs, "test plugin deinitialised"), nullptr);
  const auto* serving = FindLog(logs, "plugin serving");
  ASSERT_NE(serving, nullptr);
  EXPECT_EQ(serving->at("@level"), "debug");
}

TEST_F(RuntimeTest, WrongOrMissingCookieExitsOneWithGoPluginMessage) {
  for (const char* value : {"KeyManager", ""}) {
    std::map<std::string, std::string> env;
    if (*value != '\0') {
      env.emplace("NodeAttestor", value);
    }
    auto p = PluginProcess::Start(FixtureBinary(), {}, env);
    ASSERT_NE(p, nullptr);
    auto status = p->WaitExit(10000ms);
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(WIFEXITED(*status));
    EXPECT_EQ(WEXITSTATUS(*status), 1);
    EXPECT_THAT(p->Stderr(), HasSubstr("This binary is a plugin. These are not meant to be "
                                       "executed directly."));
    EXPECT_EQ(p->RemainingStdout(), "") << "no handshake without the cookie";
  }
}

// ProcessGone: true when `pid` no longer exists or is a zombie (a re-parented process is reaped
// by whoever adopted it, or stays a zombie in sandboxes whose PID 1 does not reap).
bool ProcessGone(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) {
    return true;
  }
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

TEST_F(RuntimeTest, StopsWhenTheHostIsKilled) {
  // A host killed with SIGKILL neither calls Shutdown nor signals its plugins: the plugin must
  // notice it was re-parented and stop (SPIRE's spire-server killed with -9 left its plugins
  // running until this check existed).
  TempDir tmp;
  const std::string out = tmp.path() + "/stdout";
  const std::string binary = FixtureBinary();
  std::vector<std::string> env_strings = {"NodeAttestor=NodeAttestor",
                                          "PLUGIN_PROTOCOL_VERSIONS=1",
                                          "PLUGIN_UNIX_SOCKET_DIR=" + tmp.path()};
  std::vector<char*> envp;
  for (std::string& e : env_strings) {
    envp.push_back(e.data());
  }
  envp.push_back(nullptr);
  std::vector<char*> argv = {const_cast<char*>(binary.c_str()), nullptr};
  int pids[2];
  ASSERT_EQ(pipe(pids), 0);
  const pid_t host = fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    // The "host": starts the plugin, reports its pid, waits to be killed.
    const pid_t plugin = fork();
    if (plugin == 0) {
      const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      const int null_fd = open("/dev/null", O_WRONLY);
      if (fd < 0 || null_fd < 0 || dup2(fd, 1) < 0 || dup2(null_fd, 2) < 0) {
        _exit(126);
      }
      execve(binary.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    if (write(pids[1], &plugin, sizeof(plugin)) != sizeof(plugin)) {
      _exit(1);
    }
    for (;;) {
      pause();
    }
  }
  close(pids[1]);
  pid_t plugin = -1;
  ASSERT_EQ(read(pids[0], &plugin, sizeof(plugin)), static_cast<ssize_t>(sizeof(plugin)));
  close(pids[0]);
  ASSERT_GT(plugin, 0);
  // Wait (bounded) for the handshake line: the plugin is serving.
  std::string handshake;
  for (int i = 0; i < 100 && !absl::StrContains(handshake, "|grpc|"); ++i) {
    std::this_thread::sleep_for(100ms);
    std::ifstream f(out);
    std::stringstream ss;
    ss << f.rdbuf();
    handshake = ss.str();
  }
  ASSERT_THAT(handshake, ::testing::HasSubstr("|grpc|")) << "the plugin did not start";
  const std::vector<std::string> fields = absl::StrSplit(handshake, '|');
  ASSERT_GE(fields.size(), 4u);
  const std::string socket = fields[3];
  EXPECT_TRUE(fs::exists(socket));
  EXPECT_FALSE(ProcessGone(plugin));

  ASSERT_EQ(kill(host, SIGKILL), 0);
  ASSERT_EQ(waitpid(host, nullptr, 0), host);
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {  // 10 s bound; it takes about 0.25-0.5 s
    std::this_thread::sleep_for(100ms);
    gone = ProcessGone(plugin);
  }
  if (!gone) {
    kill(plugin, SIGKILL);
  }
  EXPECT_TRUE(gone) << "the plugin kept running after its host was killed";
  EXPECT_FALSE(fs::exists(socket)) << "a stopped plugin removes its socket";
}

TEST_F(RuntimeTest, SigintIgnoredSigtermStopsCleanly) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> c,
                       StartPlugin({}, {{"PLUGIN_UNIX_SOCKET_DIR", tmp.path()}}));
  PluginProcess* p = c->process();
  const std::shared_ptr<grpc::Channel>& ch = c->channel();
  ASSERT_EQ(kill(p->pid(), SIGINT), 0);
  ASSERT_EQ(kill(p->pid(), SIGPIPE), 0);
  EXPECT_FALSE(p->WaitExit(300ms).has_value()) << "SIGINT/SIGPIPE must not stop the plugin";
  auto health = healthv1::Health::NewStub(ch);
  healthv1::HealthCheckRequest req;
  req.set_service("plugin");
  healthv1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.status(), healthv1::HealthCheckResponse::SERVING);

  ASSERT_EQ(kill(p->pid(), SIGTERM), 0);
  auto status = p->WaitExit(2000ms);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_FALSE(fs::exists(c->socket()));
  ParsedLogs(p);
}

TEST_F(RuntimeTest, AgentRoleAdvertisesAgentInterface) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> c,
                       StartPlugin({"agent"}, {{"PLUGIN_UNIX_SOCKET_DIR", tmp.path()}}));
  const std::shared_ptr<grpc::Channel>& ch = c->channel();
  auto init = initv1::Init::NewStub(ch);
  initv1::InitResponse resp;
  ASSERT_TRUE(init->Init(Ctx().get(), initv1::InitRequest(), &resp).ok());
  EXPECT_THAT(resp.plugin_service_names(),
              ::testing::ElementsAre("spire.plugin.agent.nodeattestor.v1.NodeAttestor",
                                     "spire.service.common.config.v1.Config"));
  auto agent = agentnav1::NodeAttestor::NewStub(ch);
  grpc::ClientContext ctx;
  auto stream = agent->AidAttestation(&ctx);
  agentnav1::PayloadOrChallengeResponse r;
  EXPECT_FALSE(stream->Read(&r));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The server interface is not served in the agent role.
  auto server = servernav1::NodeAttestor::NewStub(ch);
  grpc::ClientContext sctx;
  auto sstream = server->Attest(&sctx);
  servernav1::AttestResponse sr;
  EXPECT_FALSE(sstream->Read(&sr));
  EXPECT_EQ(sstream->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);

  std::optional<int> status = c->Shutdown();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

TEST_F(RuntimeTest, InitFailsWhenTheHostNeverAnnouncesItsServices) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PluginClient> c,
                       StartPlugin({}, {{"HWID_TEST_PLUGIN_PROBE_HOST", "health"},
                                        {"PLUGIN_UNIX_SOCKET_DIR", tmp.path()}}));
  auto init = initv1::Init::NewStub(c->channel());
  initv1::InitResponse resp;
  grpc::Status s = init->Init(Ctx(20s).get(), initv1::InitRequest(), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(s.error_message(), HasSubstr("did not announce service id 1"));
  ASSERT_TRUE(c->Shutdown().has_value());
}

}  // namespace
