// Driving the hwid-nodeattestor-server binary over gRPC as SPIRE's server does: start and Init
// the plugin, open Attest streams, run one full attestation of an agent responder.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_SERVER_SERVER_TESTING_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_SERVER_SERVER_TESTING_H_

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include <grpcpp/client_context.h>

#include "attestor_plugin/attestation/agent.h"
#include "spire/plugin/server/nodeattestor/v1/nodeattestor.grpc.pb.h"
#include "tests/attestor_plugin/plugin_client.h"

namespace hwid::attestor::testing {

namespace nav1 = ::spire::plugin::server::nodeattestor::v1;
using AttestStream = grpc::ClientReaderWriter<nav1::AttestRequest, nav1::AttestResponse>;

struct OpenStream {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<AttestStream> stream;
};

// Open: an Attest stream with a 120 s client deadline (beyond any plugin deadline in the tests).
inline OpenStream Open(nav1::NodeAttestor::Stub* stub) {
  OpenStream s;
  s.ctx = ::hwid::testing::CallContext(std::chrono::seconds(120));
  s.stream = stub->Attest(s.ctx.get());
  return s;
}

// StartPlugin: $HWID_NODEATTESTOR_SERVER started and initialised like SPIRE does; null on failure
// (with a gtest failure recorded).
inline std::unique_ptr<::hwid::testing::PluginClient> StartPlugin() {
  absl::StatusOr<std::unique_ptr<::hwid::testing::PluginClient>> plugin =
      ::hwid::testing::PluginClient::StartFromEnv("HWID_NODEATTESTOR_SERVER", "NodeAttestor");
  EXPECT_TRUE(plugin.ok()) << plugin.status();
  if (!plugin.ok() || !(*plugin)->Init().ok()) {
    ADD_FAILURE() << "cannot start and Init the server plugin";
    return nullptr;
  }
  return std::move(*plugin);
}

// AttestOverGrpc: one attestation of `agent` through the plugin: payload, challenge, response,
// agent attributes (then the stream is cancelled, as SPIRE does). The plugin's status on refusal;
// INTERNAL when the agent fails.
inline grpc::Status AttestOverGrpc(nav1::NodeAttestor::Stub* stub,
                                   attestation::AgentResponder& agent) {
  absl::StatusOr<Bytes> payload = agent.MakePayload();
  if (!payload.ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string(payload.status().message()));
  }
  nav1::AttestRequest req;
  req.set_payload(std::string(payload->begin(), payload->end()));
  OpenStream s = Open(stub);
  nav1::AttestResponse resp;
  if (!s.stream->Write(req) || !s.stream->Read(&resp)) {
    return s.stream->Finish();
  }
  absl::StatusOr<Bytes> response =
      agent.RespondToChallenge(AsSpan(absl::string_view(resp.challenge())));
  if (!response.ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string(response.status().message()));
  }
  nav1::AttestRequest answer;
  answer.set_challenge_response(std::string(response->begin(), response->end()));
  if (!s.stream->Write(answer) || !s.stream->Read(&resp)) {
    return s.stream->Finish();
  }
  s.stream->WritesDone();
  if (!resp.has_agent_attributes()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "no agent attributes");
  }
  s.ctx->TryCancel();
  return grpc::Status::OK;
}

}  // namespace hwid::attestor::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_SERVER_SERVER_TESTING_H_
