// The hwid_tpm server NodeAttestor: a thin gRPC adapter over attestation::ServerSession.
// Links tpm/wire only (never ESAPI): the server verifies everything in software.
#ifndef HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_
#define HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_

#include <memory>

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
  pluginmain::ConfigStore<ServerConfigPtr> config_;
};


}  // namespace hwid::attestor

#endif  // HWID_ATTESTOR_PLUGIN_SERVER_SERVER_PLUGIN_H_
