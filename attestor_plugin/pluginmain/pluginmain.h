// The SPIRE external-plugin runtime: hashicorp/go-plugin's handshake, broker, stdio,
// controller and health services, SPIRE's private Init service and the common Config service,
// for plugins written in C++. A plugin's main() builds its gRPC service(s) and calls
// ServePlugin, which returns the process exit status.
//
//   int main(int argc, char** argv) {
//     MyNodeAttestor attestor;  // owns a ConfigStore<MyConfig>
//     hwid::pluginmain::PluginOptions opts;
//     opts.name = "hwid_tpm";
//     opts.plugin_service_names = {"spire.plugin.server.nodeattestor.v1.NodeAttestor"};
//     return hwid::pluginmain::ServePlugin(opts, {&attestor}, &attestor.config());
//   }
//
// See docs/plugin-runtime.md for the protocol details and their sources.
#ifndef HWID_ATTESTOR_PLUGIN_PLUGINMAIN_PLUGINMAIN_H_
#define HWID_ATTESTOR_PLUGIN_PLUGINMAIN_PLUGINMAIN_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace hwid::pluginmain {

// The gRPC service name SPIRE binds for configuration.
inline constexpr char kConfigServiceName[] = "spire.service.common.config.v1.Config";
// The broker service id on which SPIRE serves its host services.
inline constexpr uint32_t kHostServiceBrokerId = 1;

// CoreConfig: what SPIRE tells every plugin in Configure.
struct CoreConfig {
  std::string trust_domain;  // bare name, e.g. "example.org"
};

// Configurable: what the Config service calls. Both calls may run concurrently with each
// other and with every other RPC. A failed Configure must leave the previous configuration
// in place (or none).
class Configurable {
 public:
  virtual ~Configurable() = default;
  virtual absl::Status Configure(const CoreConfig& core, absl::string_view hcl) = 0;
  virtual absl::Status Validate(const CoreConfig& core, absl::string_view hcl) = 0;
};

// ConfigStore<T>: parses with `parser` and swaps the result in atomically; readers take a
// shared_ptr snapshot that stays valid while a reconfiguration replaces it.
template <typename T>
class ConfigStore final : public Configurable {
 public:
  using Parser = std::function<absl::StatusOr<T>(const CoreConfig&, absl::string_view hcl)>;

  explicit ConfigStore(Parser parser) : parser_(std::move(parser)) {}

  absl::Status Configure(const CoreConfig& core, absl::string_view hcl) override {
    absl::StatusOr<T> parsed = parser_(core, hcl);
    if (!parsed.ok()) {
      return parsed.status();
    }
    auto fresh = std::make_shared<const T>(*std::move(parsed));
    std::lock_guard<std::mutex> lock(mu_);
    current_ = std::move(fresh);
    return absl::OkStatus();
  }

  absl::Status Validate(const CoreConfig& core, absl::string_view hcl) override {
    return parser_(core, hcl).status();
  }

  // Get: the current configuration, or nullptr before the first successful Configure.
  std::shared_ptr<const T> Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }

  // GetOrError: the current configuration, or FAILED_PRECONDITION "plugin not configured".
  absl::StatusOr<std::shared_ptr<const T>> GetOrError() const {
    std::shared_ptr<const T> c = Get();
    if (c == nullptr) {
      return absl::FailedPreconditionError("plugin not configured");
    }
    return c;
  }

 private:
  const Parser parser_;
  mutable std::mutex mu_;
  std::shared_ptr<const T> current_;
};

// HostBroker: the connections the host announced on the go-plugin broker stream.
class HostBroker {
 public:
  // Dial: waits up to `timeout` for the ConnInfo with `service_id` (the host sends it before
  // Init, but on another HTTP/2 stream), then returns a plain-text gRPC channel to it.
  // DEADLINE_EXCEEDED when it never came, UNAVAILABLE after shutdown began.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> Dial(uint32_t service_id,
                                                      absl::Duration timeout = absl::Seconds(5));

  // Implementation side (called by the broker service).
  void Announce(uint32_t service_id, std::string network, std::string address);
  void Close();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  std::map<uint32_t, std::pair<std::string, std::string>> conns_;  // id -> (network, address)
};

// InitContext: what Init passes to PluginOptions::on_init.
struct InitContext {
  std::vector<std::string> host_service_names;
  HostBroker* broker;  // valid for the life of the process
};

struct PluginOptions {
  // name: the @module of log lines (SPIRE never tells a plugin its configured name).
  std::string name = "hwid";
  // The go-plugin magic cookie SPIRE sets for this plugin type.
  std::string magic_cookie_key = "NodeAttestor";
  std::string magic_cookie_value = "NodeAttestor";
  // plugin_service_names: the plugin interface first (e.g.
  // "spire.plugin.server.nodeattestor.v1.NodeAttestor"); Config is appended when a
  // Configurable is given. Must not be empty.
  std::vector<std::string> plugin_service_names;
  // on_init: optional; runs inside Init (an error fails the plugin load).
  std::function<absl::Status(const InitContext&)> on_init;
  // on_deinit: optional graceful cleanup (SPIRE allows 10 s); errors are returned to SPIRE,
  // which only logs them.
  std::function<absl::Status()> on_deinit;
  // Largest accepted message (SPIRE's client allows 2 GiB; payloads here are small).
  int max_message_bytes = 4 << 20;
  // How long Shutdown lets in-flight RPCs finish before cancelling them (go-plugin kills the
  // process 2 s after asking).
  absl::Duration shutdown_grace = absl::Milliseconds(500);
};

// ToGrpcStatus: the one absl::Status -> grpc::Status conversion (the codes are identical).
grpc::Status ToGrpcStatus(const absl::Status& s);

// ServePlugin: runs the plugin until the host's GRPCController/Shutdown (or SIGTERM) and
// returns the process exit status: 0 after a clean shutdown; 1 when the magic cookie is
// wrong (with go-plugin's message on stderr, so the binary can double as a CLI) or the
// listener cannot be set up (logged). `services` and `configurable` (may be null: then no
// Config service is offered) must outlive the call. Ignores SIGINT and SIGPIPE; blocks
// SIGTERM in every thread and handles it as a shutdown request. Call it once, from main(),
// before starting other threads.
int ServePlugin(const PluginOptions& options, std::vector<grpc::Service*> services,
                Configurable* configurable);

}  // namespace hwid::pluginmain

#endif  // HWID_ATTESTOR_PLUGIN_PLUGINMAIN_PLUGINMAIN_H_
