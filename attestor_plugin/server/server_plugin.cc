#include "attestor_plugin/server/server_plugin.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/composer/handoff.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "attestor_plugin/pluginmain/log.h"
#include "common/status_macros.h"

namespace hwid::attestor {

namespace nav1 = spire::plugin::server::nodeattestor::v1;


absl::StatusOr<ServerConfigPtr> ParseServerPluginConfig(const pluginmain::CoreConfig& core,
                                                        absl::string_view hcl) {
  absl::StatusOr<pluginmain::HclObject> obj = pluginmain::ParseHcl(hcl);
  if (!obj.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", obj.status().message()));
  }
  attestation::ServerConfigInput in;
  in.trust_domain = core.trust_domain;
  pluginmain::HclDecoder d(*obj);
  d.Optional("ek_ca_bundle_paths", &in.ek_ca_bundle_paths);
  d.Optional("ek_allowlist", &in.ek_allowlist);
  d.Optional("ek_allowlist_path", &in.ek_allowlist_path);
  d.Optional("pcrs", &in.pcrs);
  d.Optional("expected_pcrs", &in.expected_pcrs);
  d.Optional("ak_algs", &in.ak_algs);
  d.Optional("certified_keys_dir", &in.certified_keys_dir);
  d.Optional("clock_state", &in.clock_state);
  d.Optional("clock_state_path", &in.clock_state_path);
  d.Optional("clock_state_conninfo_file", &in.clock_state_conninfo_file);
  d.Optional("clock_state_conninfo_env", &in.clock_state_conninfo_env);
  d.Optional("on_store_unavailable", &in.on_store_unavailable);
  d.Optional("challenge_timeout_seconds", &in.challenge_timeout_seconds);
  absl::Status st = d.Finish();
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", st.message()));
  }
  if (!in.certified_keys_dir.empty()) {
    absl::Status dir = composer::CheckHandoffDir(in.certified_keys_dir);
    if (!dir.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("plugin_data: ", dir.message()));
    }
  }
  return attestation::ValidateServerConfig(in);
}

ServerNodeAttestor::ServerNodeAttestor() : config_(ParseServerPluginConfig) {}

grpc::Status ServerNodeAttestor::Attest(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<nav1::AttestResponse, nav1::AttestRequest>* stream) {
  auto& log = pluginmain::PluginLogger();
  absl::StatusOr<std::shared_ptr<const ServerConfigPtr>> cfg = config_.GetOrError();
  if (!cfg.ok()) {
    return pluginmain::ToGrpcStatus(cfg.status());
  }
  absl::StatusOr<std::unique_ptr<attestation::ServerSession>> session =
      attestation::ServerSession::New(**cfg);
  if (!session.ok()) {
    return pluginmain::ToGrpcStatus(session.status());
  }
  auto fail = [&](const absl::Status& st) {
    log.Warn("attestation refused", {{"code", absl::StatusCodeToString(st.code())},
                                     {"reason", st.message()}});
    return pluginmain::ToGrpcStatus(st);
  };
  nav1::AttestRequest req;
  if (!stream->Read(&req)) {
    return fail(absl::InvalidArgumentError("attestation stream closed before the payload"));
  }
  if (req.request_case() != nav1::AttestRequest::kPayload) {
    return fail(absl::InvalidArgumentError("first attestation message is not a payload"));
  }
  absl::StatusOr<Bytes> challenge =
      (*session)->HandlePayload(AsSpan(absl::string_view(req.payload())));
  if (!challenge.ok()) {
    return fail(challenge.status());
  }
  nav1::AttestResponse resp;
  resp.set_challenge(std::string(challenge->begin(), challenge->end()));
  if (!stream->Write(resp)) {
    return fail(absl::UnavailableError("cannot send the challenge to the agent"));
  }
  req.Clear();
  if (!stream->Read(&req)) {
    return fail(absl::InvalidArgumentError("agent closed the stream before answering the challenge"));
  }
  if (req.request_case() != nav1::AttestRequest::kChallengeResponse) {
    return fail(absl::InvalidArgumentError("expected a challenge response"));
  }
  absl::StatusOr<attestation::AttestationResult> result =
      (*session)->HandleChallengeResponse(AsSpan(absl::string_view(req.challenge_response())));
  if (!result.ok()) {
    return fail(result.status());
  }
  // Agent-key binding: hand the certified keys to the CredentialComposer before SPIRE signs the
  // agent SVID (the next step of the same AttestAgent RPC).
  if (!(**cfg)->certified_keys_dir.empty()) {
    for (const Bytes& key : result->certified_keys) {
      absl::Status st =
          composer::RecordCertifiedKey((**cfg)->certified_keys_dir, result->spiffe_id, key);
      if (!st.ok()) {
        return fail(absl::InternalError(
            absl::StrCat("agent key binding: cannot record a certified key: ", st.message())));
      }
    }
  }
  resp.Clear();
  nav1::AgentAttributes* attrs = resp.mutable_agent_attributes();
  attrs->set_spiffe_id(result->spiffe_id);
  for (const std::string& s : result->selectors) {
    attrs->add_selector_values(s);
  }
  attrs->set_can_reattest(result->can_reattest);
  log.Info("agent attested", {{"spiffe_id", result->spiffe_id},
                              {"ek_trust", result->ek_trust},
                              {"certified_agent_keys", absl::StrCat(result->certified_keys.size())}});
  // SPIRE cancels the stream after reading the attributes; a failed write is then harmless.
  stream->Write(resp);
  return grpc::Status::OK;
}

}  // namespace hwid::attestor
