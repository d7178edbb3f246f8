#include "attestor_plugin/agent/agent_plugin.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "attestor_plugin/pluginmain/log.h"

namespace hwid::attestor {

namespace nav1 = spire::plugin::agent::nodeattestor::v1;


absl::StatusOr<attestation::AgentConfig> ParseAgentPluginConfig(const pluginmain::CoreConfig&,
                                                                absl::string_view hcl) {
  absl::StatusOr<pluginmain::HclObject> obj = pluginmain::ParseHcl(hcl);
  if (!obj.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", obj.status().message()));
  }
  attestation::AgentConfigInput in;
  pluginmain::HclDecoder d(*obj);
  d.Optional("tcti", &in.tcti);
  d.Optional("ek", &in.ek);
  d.Optional("pcrs", &in.pcrs);
  d.Optional("ak_handle", &in.ak_handle);
  d.Optional("ak_alg", &in.ak_alg);
  d.Optional("keymanager_key_dir", &in.keymanager_key_dir);
  absl::Status st = d.Finish();
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", st.message()));
  }
  return attestation::ValidateAgentConfig(in);
}

AgentNodeAttestor::AgentNodeAttestor() : config_(ParseAgentPluginConfig) {}

grpc::Status AgentNodeAttestor::AidAttestation(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<nav1::PayloadOrChallengeResponse, nav1::Challenge>* stream) {
  auto& log = pluginmain::PluginLogger();
  absl::StatusOr<std::shared_ptr<const attestation::AgentConfig>> cfg = config_.GetOrError();
  if (!cfg.ok()) {
    return pluginmain::ToGrpcStatus(cfg.status());
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (responder_ == nullptr || responder_config_ != *cfg) {
    // First attestation, or the configuration changed: (re)open the TPM. Otherwise the open
    // connection, EK and AK are reused (re-attestation creates no keys).
    responder_.reset();
    absl::StatusOr<std::unique_ptr<attestation::AgentResponder>> r =
        attestation::AgentResponder::New(**cfg);
    if (!r.ok()) {
      log.Error("cannot open the TPM", {{"reason", r.status().message()}});
      return pluginmain::ToGrpcStatus(r.status());
    }
    responder_ = std::move(*r);
    responder_config_ = *cfg;
  }
  absl::StatusOr<Bytes> payload = responder_->MakePayload();
  for (const std::string& w : responder_->TakeWarnings()) {
    log.Warn(w);
  }
  if (!payload.ok()) {
    log.Error("cannot build the attestation payload", {{"reason", payload.status().message()}});
    return pluginmain::ToGrpcStatus(payload.status());
  }
  nav1::PayloadOrChallengeResponse out;
  out.set_payload(std::string(payload->begin(), payload->end()));
  if (!stream->Write(out)) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "agent closed the attestation stream");
  }
  nav1::Challenge challenge;
  if (!stream->Read(&challenge)) {
    // SPIRE cancels the stream once the server has answered; without a challenge there is
    // nothing more to do.
    return grpc::Status::OK;
  }
  absl::StatusOr<Bytes> response = responder_->RespondToChallenge(AsSpan(absl::string_view(challenge.challenge())));
  if (!response.ok()) {
    log.Error("cannot answer the attestation challenge", {{"reason", response.status().message()}});
    return pluginmain::ToGrpcStatus(response.status());
  }
  out.Clear();
  out.set_challenge_response(std::string(response->begin(), response->end()));
  if (!stream->Write(out)) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "agent closed the attestation stream");
  }
  log.Debug("challenge answered", {{"tpm_commands", absl::StrCat(responder_->tpm_command_count())}});
  // A second challenge is a protocol violation by the server: refuse it.
  if (stream->Read(&challenge)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "server sent more than one challenge (hwid_tpm uses exactly one round)");
  }
  return grpc::Status::OK;
}

}  // namespace hwid::attestor
