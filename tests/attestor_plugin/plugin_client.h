// PluginClient: SPIRE's side of a plugin binary, as go-plugin's host plays it: starts the binary
// (PluginProcess) with the magic cookie and the PLUGIN_* variables, checks the handshake line,
// connects over the unix socket, calls Init through its literal wire path, Configure, and
// GRPCController/Shutdown. Test-only, and free of gtest (the benchmarks use it too): failures
// come back as absl::Status with what was expected.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_CLIENT_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_CLIENT_H_

#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "plugin/grpc_controller.grpc.pb.h"
#include "spire/service/common/config/v1/config.grpc.pb.h"
#include "spire/service/private/init/v1/init.grpc.pb.h"
#include "tests/attestor_plugin/plugin_process.h"

namespace hwid::testing {

// CallContext: a client context with a deadline (SPIRE's per-call timeout is 30 s).
inline std::unique_ptr<grpc::ClientContext> CallContext(
    std::chrono::seconds timeout = std::chrono::seconds(30)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

// GoPluginEnv: what go-plugin's host puts in a plugin's environment: the magic cookie (SPIRE uses
// the plugin type as both its key and its value), the protocol version and the port range.
inline std::map<std::string, std::string> GoPluginEnv(const std::string& cookie) {
  return {{cookie, cookie},
          {"PLUGIN_PROTOCOL_VERSIONS", "1"},
          {"PLUGIN_MIN_PORT", "10000"},
          {"PLUGIN_MAX_PORT", "25000"}};
}

// ParseHandshake: the socket path of a go-plugin handshake line "1|1|unix|SOCKET|grpc|" (core
// protocol 1, app protocol 1, no TLS certificate); the socket must exist in a 0700 directory.
inline absl::StatusOr<std::string> ParseHandshake(const std::string& line) {
  std::vector<std::string> parts = absl::StrSplit(line, '|');
  if (parts.size() != 6) {
    return absl::InvalidArgumentError(
        absl::StrCat("handshake has ", parts.size(), " fields, not 6: ", line));
  }
  const std::pair<size_t, const char*> want[] = {{0, "1"}, {1, "1"}, {2, "unix"}, {4, "grpc"},
                                                 {5, ""}};
  for (const auto& [i, value] : want) {
    if (parts[i] != value) {
      return absl::InvalidArgumentError(
          absl::StrCat("handshake field ", i, " is \"", parts[i], "\", not \"", value, "\": ",
                       line));
    }
  }
  const std::string& socket = parts[3];
  struct stat st;
  if (stat(socket.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("no socket at ", socket, " (it must exist before the handshake)"));
  }
  struct stat dst;
  const std::string dir = std::filesystem::path(socket).parent_path();
  if (stat(dir.c_str(), &dst) != 0 || (dst.st_mode & 0777) != 0700) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir, " must be private (0700)"));
  }
  return socket;
}

class PluginClient {
 public:
  struct Options {
    std::vector<std::string> args;              // command-line arguments
    std::map<std::string, std::string> env;     // added to (and overriding) GoPluginEnv
    std::chrono::seconds call_timeout{30};      // deadline of Init, Configure and Shutdown
  };

  // Start: starts `binary` with GoPluginEnv(cookie) + options.env, reads the handshake line
  // (10 s), checks it (ParseHandshake) and connects to the socket (5 s).
  static absl::StatusOr<std::unique_ptr<PluginClient>> Start(const std::string& binary,
                                                             const std::string& cookie,
                                                             Options options) {
    std::map<std::string, std::string> env = std::move(options.env);
    env.merge(GoPluginEnv(cookie));  // keeps the caller's values
    std::unique_ptr<PluginProcess> process = PluginProcess::Start(binary, options.args, env);
    if (process == nullptr) {
      return absl::InternalError("cannot start " + binary);
    }
    std::optional<std::string> line = process->ReadStdoutLine(std::chrono::seconds(10));
    if (!line) {
      return absl::UnavailableError(absl::StrCat("no handshake line from ", binary,
                                                 " (it exited or took over 10 s); stderr: ",
                                                 process->Stderr()));
    }
    absl::StatusOr<std::string> socket = ParseHandshake(*line);
    if (!socket.ok()) {
      return socket.status();
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel("unix:" + *socket, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
      return absl::UnavailableError("cannot connect to " + *socket + " within 5 s");
    }
    return std::unique_ptr<PluginClient>(new PluginClient(std::move(process), *std::move(socket),
                                                          std::move(channel),
                                                          options.call_timeout));
  }
  static absl::StatusOr<std::unique_ptr<PluginClient>> Start(const std::string& binary,
                                                             const std::string& cookie) {
    return Start(binary, cookie, Options());
  }

  // StartFromEnv: Start with the binary named by the environment variable `var`.
  static absl::StatusOr<std::unique_ptr<PluginClient>> StartFromEnv(const char* var,
                                                                    const std::string& cookie) {
    const char* binary = std::getenv(var);
    if (binary == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(var, " not set"));
    }
    return Start(binary, cookie);
  }

  PluginProcess* process() { return process_.get(); }
  const std::string& socket() const { return socket_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

  // Init: calls Init through its literal wire path (a generic call, so a wrong path in the
  // generated code shows) and returns the service names the plugin advertises.
  absl::StatusOr<std::vector<std::string>> Init(
      const std::vector<std::string>& host_service_names = {}) {
    namespace initv1 = ::spire::service::private_::init::v1;
    initv1::InitRequest req;
    for (const std::string& name : host_service_names) {
      req.add_host_service_names(name);
    }
    std::string bytes = req.SerializeAsString();
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::GenericStub generic(channel_);
    grpc::CompletionQueue cq;
    auto ctx = CallContext(call_timeout_);
    auto call = generic.PrepareUnaryCall(ctx.get(), "/spire.service.private.init.v1.Init/Init",
                                         request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    const bool next = cq.Next(&tag, &ok);
    const bool completed = next && ok;
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    if (!completed) {
      return absl::InternalError("Init: the call did not complete");
    }
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          "Init: " + status.error_message());
    }
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) {
      return absl::InternalError("Init: cannot read the response");
    }
    std::string out;
    for (const grpc::Slice& s : slices) {
      out.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    initv1::InitResponse resp;
    if (!resp.ParseFromString(out)) {
      return absl::InternalError("Init: the response is not an InitResponse");
    }
    return std::vector<std::string>(resp.plugin_service_names().begin(),
                                    resp.plugin_service_names().end());
  }

  // Configure: the HCL configuration with the core configuration's trust domain.
  grpc::Status Configure(const std::string& hcl, const std::string& trust_domain = "example.org") {
    namespace configv1 = ::spire::service::common::config::v1;
    configv1::ConfigureRequest req;
    req.mutable_core_configuration()->set_trust_domain(trust_domain);
    req.set_hcl_configuration(hcl);
    configv1::ConfigureResponse resp;
    return configv1::Config::NewStub(channel_)->Configure(CallContext(call_timeout_).get(), req,
                                                          &resp);
  }

  // Shutdown: GRPCController/Shutdown (its reply ignored, as go-plugin does: it may race with
  // the exit), then the wait status if the process ended within `wait`.
  std::optional<int> Shutdown(std::chrono::milliseconds wait = std::chrono::milliseconds(2000)) {
    plugin::Empty e;
    (void)plugin::GRPCController::NewStub(channel_)->Shutdown(CallContext(call_timeout_).get(),
                                                              plugin::Empty(), &e);
    return process_->WaitExit(wait);
  }

  // Stop: Shutdown; OK when the process exited within 2 s with exit status 0.
  absl::Status Stop() {
    std::optional<int> status = Shutdown();
    if (!status.has_value()) {
      return absl::DeadlineExceededError("plugin still running 2 s after Shutdown");
    }
    if (WEXITSTATUS(*status) != 0) {
      return absl::InternalError(absl::StrCat("plugin exit status ", WEXITSTATUS(*status)));
    }
    return absl::OkStatus();
  }

 private:
  PluginClient(std::unique_ptr<PluginProcess> process, std::string socket,
               std::shared_ptr<grpc::Channel> channel, std::chrono::seconds call_timeout)
      : process_(std::move(process)),
        socket_(std::move(socket)),
        channel_(std::move(channel)),
        call_timeout_(call_timeout) {}

  std::unique_ptr<PluginProcess> process_;
  std::string socket_;
  std::shared_ptr<grpc::Channel> channel_;
  std::chrono::seconds call_timeout_;
};

}  // namespace hwid::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_PLUGIN_CLIENT_H_
