#include "attestor_plugin/composer/composer.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attestor_plugin/composer/handoff.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "attestor_plugin/pluginmain/log.h"

namespace hwid::composer {

namespace ccv1 = spire::plugin::server::credentialcomposer::v1;

absl::StatusOr<ComposerConfig> ParseComposerConfig(const pluginmain::CoreConfig& core,
                                                   absl::string_view hcl) {
  absl::StatusOr<pluginmain::HclObject> obj = pluginmain::ParseHcl(hcl);
  if (!obj.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", obj.status().message()));
  }
  ComposerConfig c;
  c.trust_domain = core.trust_domain;
  pluginmain::HclDecoder d(*obj);
  d.Required("certified_keys_dir", &c.certified_keys_dir);
  d.Optional("require_tpm_agent_key", &c.require_tpm_agent_key);
  absl::Status st = d.Finish();
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", st.message()));
  }
  if (c.trust_domain.empty()) {
    return absl::InvalidArgumentError("SPIRE gave no trust domain");
  }
  st = CheckHandoffDir(c.certified_keys_dir);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", st.message()));
  }
  return c;
}

absl::Status CheckAgentSvidKey(const ComposerConfig& config, absl::string_view spiffe_id,
                               ByteSpan pkix_der) {
  const std::string prefix =
      absl::StrCat("spiffe://", config.trust_domain, "/spire/agent/hwid_tpm/");
  if (!absl::StartsWith(spiffe_id, prefix)) {
    return absl::OkStatus();  // not an hwid_tpm agent: not ours to judge
  }
  absl::Status st = CheckCertifiedKey(config.certified_keys_dir, spiffe_id, pkix_der);
  if (st.ok() || config.require_tpm_agent_key) {
    return st;
  }
  pluginmain::PluginLogger().Warn("agent SVID key not bound to the TPM (allowed: "
                                  "require_tpm_agent_key = false)",
                                  {{"spiffe_id", spiffe_id}, {"reason", st.message()}});
  return absl::OkStatus();
}

grpc::Status CredentialComposer::ComposeAgentX509SVID(grpc::ServerContext*,
                                                      const ccv1::ComposeAgentX509SVIDRequest* req,
                                                      ccv1::ComposeAgentX509SVIDResponse*) {
  absl::StatusOr<std::shared_ptr<const ComposerConfig>> cfg = config_.GetOrError();
  if (!cfg.ok()) {
    return pluginmain::ToGrpcStatus(cfg.status());
  }
  const std::string& key = req->public_key();
  absl::Status st = CheckAgentSvidKey(
      **cfg, req->spiffe_id(),
      ByteSpan(reinterpret_cast<const uint8_t*>(key.data()), key.size()));
  if (!st.ok()) {
    pluginmain::PluginLogger().Warn("agent SVID refused",
                                    {{"spiffe_id", req->spiffe_id()}, {"reason", st.message()}});
    return pluginmain::ToGrpcStatus(st);
  }
  // An empty response leaves SPIRE's attributes unchanged.
  return grpc::Status::OK;
}

}  // namespace hwid::composer
