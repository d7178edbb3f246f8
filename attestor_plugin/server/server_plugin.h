// The hwid_tpm server NodeAttestor: a thin gRPC adapter over attestation::ServerSession.
// Links tpm/wire only (never ESAPI): the server verifies everything in software.
#ifndef HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_
#define HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attestor_plugin/attestation/server.h"
#include "attestor_plugin/pluginmain/pluginmain.h"
#include "spire/plugin/server/nodeattestor/v1/nodeattestor.grpc.pb.h"

namespace hwid::attestor {

using ServerConfigPtr = std::shared_ptr<const attestation::ServerConfig>;

// ParseServerPluginConfig turns SPIRE's plugin_data (HCL) into a validated configuration;
// unknown keys, wrong types and invalid values are errors naming the key.
absl::StatusOr<ServerConfigPtr> ParseServerPluginConfig(const pluginmain::CoreConfig& core,
                                                        absl::string_view hcl);

// StreamDeadlines ends attestation streams whose agent stalls: one thread (started on first use)
// cancels each registered call at its deadline with DEADLINE_EXCEEDED and a message, which gRPC
// sends to the agent as the RPC status; the handler blocked in Read then returns at once, freeing
// its thread and session. Thread-safe.
class StreamDeadlines {
 public:
  StreamDeadlines() = default;
  StreamDeadlines(const StreamDeadlines&) = delete;
  StreamDeadlines& operator=(const StreamDeadlines&) = delete;
  ~StreamDeadlines();

  // Add: `call` (the handler's ServerContext::c_call()) is cancelled at `deadline` unless Remove
  // comes first. Returns the registration id.
  uint64_t Add(std::chrono::steady_clock::time_point deadline, grpc_call* call,
               std::string message);
  // Remove: after it returns the call is never touched again. True when the deadline fired.
  bool Remove(uint64_t id);

 private:
  struct Entry {
    std::chrono::steady_clock::time_point deadline;
    grpc_call* call;
    std::string message;
    bool fired = false;
  };
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

class ServerNodeAttestor final
    : public spire::plugin::server::nodeattestor::v1::NodeAttestor::Service {
 public:
  ServerNodeAttestor();
  pluginmain::ConfigStore<ServerConfigPtr>& config() { return config_; }

  grpc::Status Attest(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<spire::plugin::server::nodeattestor::v1::AttestResponse,
                               spire::plugin::server::nodeattestor::v1::AttestRequest>* stream)
      override;

 private:
  // AttestWithin runs one attestation on `stream` (Attest adds the deadline around it).
  grpc::Status AttestWithin(
      const ServerConfigPtr& config,
      grpc::ServerReaderWriter<spire::plugin::server::nodeattestor::v1::AttestResponse,
                               spire::plugin::server::nodeattestor::v1::AttestRequest>* stream);

  pluginmain::ConfigStore<ServerConfigPtr> config_;
  StreamDeadlines deadlines_;
};


}  // namespace hwid::attestor

#endif  // HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_
