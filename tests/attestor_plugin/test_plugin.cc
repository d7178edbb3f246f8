// hwid_test_plugin: a fixture for the plugin runtime tests only (NOT the attestor). It serves
// the server NodeAttestor ("server", the default) or the agent NodeAttestor ("agent", from
// plugin_args) through hwid::pluginmain; every attestation RPC fails with
// FAILED_PRECONDITION before Configure and UNIMPLEMENTED after. Its configuration exercises
// every HCL type the decoder offers and logs at info/warn so the tests can find the lines.
// With HWID_TEST_PLUGIN_PROBE_HOST=health its Init dials the host through the broker (id 1)
// and calls grpc.health.v1.Health/Check there; with =agentstore it calls SPIRE's
// AgentStore/GetAgentInfo for an unknown agent and expects SPIRE's own answer.
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "attestor_plugin/pluginmain/log.h"
#include "attestor_plugin/pluginmain/pluginmain.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "spire/hostservice/server/agentstore/v1/agentstore.grpc.pb.h"
#include "spire/plugin/agent/nodeattestor/v1/nodeattestor.grpc.pb.h"
#include "spire/plugin/server/nodeattestor/v1/nodeattestor.grpc.pb.h"

namespace {

using hwid::pluginmain::ConfigStore;
using hwid::pluginmain::CoreConfig;
using hwid::pluginmain::HclDecoder;
using hwid::pluginmain::PluginLogger;

struct TestConfig {
  std::string trust_domain;
  std::string greeting = "hello";
  int64_t count = 1;
  bool verbose = false;
  std::vector<std::string> items;
  std::map<std::string, std::string> policy;
  std::string nested_name;
};

absl::StatusOr<TestConfig> ParseTestConfig(const CoreConfig& core, absl::string_view hcl) {
  if (core.trust_domain.empty()) {
    return absl::InvalidArgumentError("core configuration: trust_domain is required");
  }
  auto doc = hwid::pluginmain::ParseHcl(hcl);
  if (!doc.ok()) {
    return doc.status();
  }
  TestConfig c;
  c.trust_domain = core.trust_domain;
  HclDecoder d(*doc);
  d.Optional("greeting", &c.greeting);
  d.Optional("count", &c.count, 0, 100);
  d.Optional("verbose", &c.verbose);
  d.Optional("items", &c.items);
  d.Optional("policy", &c.policy);
  d.Block("nested", [&](HclDecoder& n) { n.Required("name", &c.nested_name); });
  absl::Status s = d.Finish();
  if (!s.ok()) {
    return s;
  }
  return c;
}

class Fixture {
 public:
  Fixture() : store_(ParseTestConfig) {}

  ConfigStore<TestConfig>& store() { return store_; }

  // Configured: logs what was applied (no secrets here) and returns the status to report.
  grpc::Status AttestStatus() {
    auto c = store_.GetOrError();
    if (!c.ok()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, std::string(c.status().message()));
    }
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "hwid_test_plugin is a runtime test fixture and does not attest");
  }

 private:
  ConfigStore<TestConfig> store_;
};

class ServerAttestor final : public spire::plugin::server::nodeattestor::v1::NodeAttestor::Service {
 public:
  explicit ServerAttestor(Fixture* f) : f_(f) {}
  grpc::Status Attest(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<spire::plugin::server::nodeattestor::v1::AttestResponse,
                               spire::plugin::server::nodeattestor::v1::AttestRequest>* stream)
      override {
    spire::plugin::server::nodeattestor::v1::AttestRequest req;
    if (!stream->Read(&req)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "stream ended before the payload");
    }
    return f_->AttestStatus();
  }

 private:
  Fixture* const f_;
};

class AgentAttestor final : public spire::plugin::agent::nodeattestor::v1::NodeAttestor::Service {
 public:
  explicit AgentAttestor(Fixture* f) : f_(f) {}
  grpc::Status AidAttestation(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<spire::plugin::agent::nodeattestor::v1::PayloadOrChallengeResponse,
                               spire::plugin::agent::nodeattestor::v1::Challenge>*) override {
    return f_->AttestStatus();
  }

 private:
  Fixture* const f_;
};

absl::Status ProbeHost(const hwid::pluginmain::InitContext& ctx, absl::string_view mode) {
  auto channel = ctx.broker->Dial(hwid::pluginmain::kHostServiceBrokerId);
  if (!channel.ok()) {
    return channel.status();
  }
  grpc::ClientContext cctx;
  cctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (mode == "health") {
    auto stub = grpc::health::v1::Health::NewStub(*channel);
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&cctx, req, &resp);
    if (!s.ok() || resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::UnavailableError(absl::StrCat("host health check through the broker failed: ",
                                                 s.error_message()));
    }
  } else {
    namespace as = spire::hostservice::server::agentstore::v1;
    auto stub = as::AgentStore::NewStub(*channel);
    as::GetAgentInfoRequest req;
    req.set_agent_id("spiffe://example.org/spire/agent/hwid_test/never-attested");
    as::GetAgentInfoResponse resp;
    grpc::Status s = stub->GetAgentInfo(&cctx, req, &resp);
    // SPIRE answers NOT_FOUND for an unknown agent once running, and FAILED_PRECONDITION
    // "AgentStore host service has not been initialized" while plugins are still loading:
    // either way the call went through the broker to SPIRE's AgentStore.
    if (s.error_code() != grpc::StatusCode::NOT_FOUND &&
        s.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      return absl::UnavailableError(absl::StrCat(
          "host AgentStore/GetAgentInfo through the broker: expected NOT_FOUND or "
          "FAILED_PRECONDITION, got code ",
          static_cast<int>(s.error_code()), ": ", s.error_message()));
    }
    PluginLogger().Info("host services reachable through the broker",
                        {{"probe", mode},
                         {"code", absl::StrCat(static_cast<int>(s.error_code()))},
                         {"answer", s.error_message()}});
    return absl::OkStatus();
  }
  PluginLogger().Info("host services reachable through the broker", {{"probe", mode}});
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  bool agent = argc > 1 && std::strcmp(argv[1], "agent") == 0;
  Fixture fixture;
  ServerAttestor server_attestor(&fixture);
  AgentAttestor agent_attestor(&fixture);

  // Wrap the store to log each applied configuration.
  class LoggingConfig final : public hwid::pluginmain::Configurable {
   public:
    explicit LoggingConfig(ConfigStore<TestConfig>* s) : s_(s) {}
    absl::Status Configure(const CoreConfig& core, absl::string_view hcl) override {
      absl::Status st = s_->Configure(core, hcl);
      if (st.ok()) {
        auto c = s_->Get();
        PluginLogger().Info("test plugin configured",
                            {{"trust_domain", c->trust_domain},
                             {"greeting", c->greeting},
                             {"count", absl::StrCat(c->count)},
                             {"items", absl::StrJoin(c->items, ",")}});
        if (c->verbose) {
          PluginLogger().Warn("verbose mode is on");
        }
      } else {
        PluginLogger().Error("test plugin configuration rejected", {{"error", st.message()}});
      }
      return st;
    }
    absl::Status Validate(const CoreConfig& core, absl::string_view hcl) override {
      return s_->Validate(core, hcl);
    }

   private:
    ConfigStore<TestConfig>* const s_;
  } logging_config(&fixture.store());

  hwid::pluginmain::PluginOptions opts;
  opts.name = "hwid_test";
  if (agent) {
    opts.plugin_service_names = {"spire.plugin.agent.nodeattestor.v1.NodeAttestor"};
  } else {
    opts.plugin_service_names = {"spire.plugin.server.nodeattestor.v1.NodeAttestor"};
  }
  const char* probe = std::getenv("HWID_TEST_PLUGIN_PROBE_HOST");
  std::string probe_mode = probe == nullptr ? "" : probe;
  opts.on_init = [&probe_mode](const hwid::pluginmain::InitContext& ctx) -> absl::Status {
    PluginLogger().Info("test plugin initialised",
                        {{"host_services", absl::StrJoin(ctx.host_service_names, ",")}});
    if (!probe_mode.empty()) {
      return ProbeHost(ctx, probe_mode);
    }
    return absl::OkStatus();
  };
  opts.on_deinit = [] {
    PluginLogger().Info("test plugin deinitialised");
    return absl::OkStatus();
  };
  std::vector<grpc::Service*> services;
  if (agent) {
    services.push_back(&agent_attestor);
  } else {
    services.push_back(&server_attestor);
  }
  return hwid::pluginmain::ServePlugin(opts, services, &logging_config);
}
