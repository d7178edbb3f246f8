// The hwid_tpm CredentialComposer (server): gates the agent X509-SVIDs of hwid_tpm agents on
// the agent-key binding. For an agent SVID whose SPIFFE ID is an hwid_tpm agent ID
// (spiffe://<td>/spire/agent/hwid_tpm/...), it refuses with PERMISSION_DENIED unless the SVID's
// public key was certified by that agent's TPM in the attestation that just ran (the hwid_tpm
// node attestor records it; see handoff.h). Every other credential passes through untouched
// (other agents, workload SVIDs, JWTs, the CA: UNIMPLEMENTED, which SPIRE treats as "no change").
//
// plugin_data:
//   certified_keys_dir    = "/var/lib/spire/server/hwid-certified-keys"  (required; the same
//                           path as the hwid_tpm node attestor's certified_keys_dir)
//   require_tpm_agent_key = true   (default true; false: log uncertified agent keys, allow them)
#ifndef HWID_ATTESTOR_PLUGIN_COMPOSER_COMPOSER_H_
#define HWID_ATTESTOR_PLUGIN_COMPOSER_COMPOSER_H_

#include <string>

#include "absl/status/statusor.h"
#include "attestor_plugin/pluginmain/pluginmain.h"
#include "common/bytes.h"
#include "spire/plugin/server/credentialcomposer/v1/credentialcomposer.grpc.pb.h"

namespace hwid::composer {

struct ComposerConfig {
  std::string trust_domain;
  std::string certified_keys_dir;
  bool require_tpm_agent_key = true;
};

absl::StatusOr<ComposerConfig> ParseComposerConfig(const pluginmain::CoreConfig& core,
                                                   absl::string_view hcl);

// CheckAgentSvidKey is the decision for one agent SVID (transport-free).
absl::Status CheckAgentSvidKey(const ComposerConfig& config, absl::string_view spiffe_id,
                               ByteSpan pkix_der);

class CredentialComposer final
    : public spire::plugin::server::credentialcomposer::v1::CredentialComposer::Service {
 public:
  CredentialComposer() : config_(ParseComposerConfig) {}
  pluginmain::ConfigStore<ComposerConfig>& config() { return config_; }

  grpc::Status ComposeAgentX509SVID(
      grpc::ServerContext* context,
      const spire::plugin::server::credentialcomposer::v1::ComposeAgentX509SVIDRequest* request,
      spire::plugin::server::credentialcomposer::v1::ComposeAgentX509SVIDResponse* response)
      override;

 private:
  pluginmain::ConfigStore<ComposerConfig> config_;
};

}  // namespace hwid::composer

#endif  // HWID_ATTESTOR_PLUGIN_COMPOSER_COMPOSER_H_
