#include "attestor_plugin/server/server_plugin.h"

#include <grpc/grpc.h>

#include <algorithm>
#include <string>
#include <utility>
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
  d.Optional("ek_algs", &in.ek_algs);
  d.Optional("pcrs", &in.pcrs);
  d.Optional("expected_pcrs", &in.expected_pcrs);
  d.Optional("ak_algs", &in.ak_algs);
  d.Optional("certified_keys_dir", &in.certified_keys_dir);
  d.Optional("clock_state", &in.clock_state);
  d.Optional("clock_state_path", &in.clock_state_path);
  d.Optional("clock_state_conninfo_file", &in.clock_state_conninfo_file);
  d.Optional("clock_state_conninfo_env", &in.clock_state_conninfo_env);
  d.Optional("on_store_unavailable", &in.on_store_unavailable);
  d.Optional("attestation_timeout_seconds", &in.attestation_timeout_seconds);
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

StreamDeadlines::~StreamDeadlines() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

uint64_t StreamDeadlines::Add(std::chrono::steady_clock::time_point deadline, grpc_call* call,
                              std::string message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!thread_.joinable()) {
    thread_ = std::thread([this] { Run(); });
  }
  const uint64_t id = next_id_++;
  entries_.emplace(id, Entry{deadline, call, std::move(message)});
  cv_.notify_all();
  return id;
}

bool StreamDeadlines::Remove(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    return false;
  }
  const bool fired = it->second.fired;
  entries_.erase(it);
  return fired;
}

void StreamDeadlines::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    auto next = std::chrono::steady_clock::time_point::max();
    const auto now = std::chrono::steady_clock::now();
    for (auto& [id, e] : entries_) {
      if (e.fired) {
        continue;
      }
      if (e.deadline <= now) {
        // Under the lock: Remove cannot return (and the call cannot end) while this runs.
        grpc_call_cancel_with_status(e.call, GRPC_STATUS_DEADLINE_EXCEEDED, e.message.c_str(),
                                     nullptr);
        e.fired = true;
      } else {
        next = std::min(next, e.deadline);
      }
    }
    if (next == std::chrono::steady_clock::time_point::max()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, next);
    }
  }
}

ServerNodeAttestor::ServerNodeAttestor() : config_(ParseServerPluginConfig) {}

grpc::Status ServerNodeAttestor::Attest(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<nav1::AttestResponse, nav1::AttestRequest>* stream) {
  absl::StatusOr<std::shared_ptr<const ServerConfigPtr>> cfg = config_.GetOrError();
  if (!cfg.ok()) {
    return pluginmain::ToGrpcStatus(cfg.status());
  }
  // A stalled agent (no payload, or no answer to the challenge) is cut off at the deadline; the
  // stream, its thread and its session are freed then (StreamDeadlines).
  const int64_t timeout = (**cfg)->attestation_timeout_seconds;
  const std::string expired = absl::StrCat(
      "hwid_tpm: the agent did not complete the attestation within attestation_timeout_seconds = ",
      timeout, " (stalled agent or TPM); the stream was ended");
  const uint64_t deadline_id = deadlines_.Add(
      std::chrono::steady_clock::now() + std::chrono::seconds(timeout), context->c_call(),
      expired);
  grpc::Status st = AttestWithin(**cfg, stream);
  if (deadlines_.Remove(deadline_id)) {
    pluginmain::PluginLogger().Warn(
        "attestation refused",
        {{"code", "DEADLINE_EXCEEDED"}, {"reason", expired}});
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, expired);
  }
  return st;
}

grpc::Status ServerNodeAttestor::AttestWithin(
    const ServerConfigPtr& config,
    grpc::ServerReaderWriter<nav1::AttestResponse, nav1::AttestRequest>* stream) {
  auto& log = pluginmain::PluginLogger();
  absl::StatusOr<std::unique_ptr<attestation::ServerSession>> session =
      attestation::ServerSession::New(config);
  if (!session.ok()) {
    return pluginmain::ToGrpcStatus(session.status());
  }
  auto fail = [&](const absl::Status& st) {
    // The server-only detail (e.g. a PCR policy's golden value) goes to the log, never to the
    // agent: ToGrpcStatus sends the message alone.
    const std::string detail = attestation::ServerLogDetail(st);
    if (detail.empty()) {
      log.Warn("attestation refused", {{"code", absl::StatusCodeToString(st.code())},
                                       {"reason", st.message()}});
    } else {
      log.Warn("attestation refused", {{"code", absl::StatusCodeToString(st.code())},
                                       {"reason", st.message()},
                                       {"server_detail", detail}});
    }
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
  if (!config->certified_keys_dir.empty()) {
    for (const Bytes& key : result->certified_keys) {
      absl::Status st =
          composer::RecordCertifiedKey(config->certified_keys_dir, result->spiffe_id, key);
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
                              {"clock_state", result->clock_state},
                              {"certified_agent_keys", absl::StrCat(result->certified_keys.size())}});
  // SPIRE cancels the stream after reading the attributes; a failed write is then harmless.
  stream->Write(resp);
  return grpc::Status::OK;
}

}  // namespace hwid::attestor
