// The hwid_tpm agent NodeAttestor: a thin gRPC adapter over attestation::AgentResponder, which
// holds the TPM connection, the EK and the persisted AK across attestations so re-attestation
// generates no keys.
#ifndef HWID_ATTESTOR_PLUGIN_AGENT_AGENT_PLUGIN_H_
#define HWID_ATTESTOR_PLUGIN_AGENT_AGENT_PLUGIN_H_

#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/pluginmain/pluginmain.h"
#include "spire/plugin/agent/nodeattestor/v1/nodeattestor.grpc.pb.h"

namespace hwid::attestor {

// ParseAgentPluginConfig: plugin_data keys tcti, ek, pcrs, ak_handle, ak_alg, keymanager_key_dir.
absl::StatusOr<attestation::AgentConfig> ParseAgentPluginConfig(const pluginmain::CoreConfig& core,
                                                                absl::string_view hcl);

class AgentNodeAttestor final : public spire::plugin::agent::nodeattestor::v1::NodeAttestor::Service {
 public:
  AgentNodeAttestor();
  pluginmain::ConfigStore<attestation::AgentConfig>& config() { return config_; }

  grpc::Status AidAttestation(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<spire::plugin::agent::nodeattestor::v1::PayloadOrChallengeResponse,
                               spire::plugin::agent::nodeattestor::v1::Challenge>* stream) override;

 private:
  pluginmain::ConfigStore<attestation::AgentConfig> config_;
  std::mutex mu_;  // serialises attestations (the responder is not thread-safe)
  std::shared_ptr<const attestation::AgentConfig> responder_config_;  // guarded by mu_
  std::unique_ptr<attestation::AgentResponder> responder_;            // guarded by mu_
};

}  // namespace hwid::attestor

#endif  // HWID_ATTESTOR_PLUGIN_AGENT_AGENT_PLUGIN_H_
