#include "attestor_plugin/pluginmain/pluginmain.h"

#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <set>
#include <thread>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "attestor_plugin/pluginmain/log.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "plugin/grpc_broker.grpc.pb.h"
#include "plugin/grpc_controller.grpc.pb.h"
#include "plugin/grpc_stdio.grpc.pb.h"
#include "spire/service/common/config/v1/config.grpc.pb.h"
#include "spire/service/private/init/v1/init.grpc.pb.h"

namespace hwid::pluginmain {
namespace {

namespace configv1 = ::spire::service::common::config::v1;
namespace initv1 = ::spire::service::private_::init::v1;  // see init.proto
namespace healthv1 = ::grpc::health::v1;


// The message go-plugin prints when a plugin binary is run without its host.
constexpr char kNotAPluginMessage[] =
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n";

// Runtime: shutdown state shared by the services and the main thread.
class Runtime {
 public:
  // RegisterStream: a long-lived stream (broker, stdio) to cancel at shutdown. False when
  // shutdown already began.
  bool RegisterStream(grpc::ServerContext* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_) {
      return false;
    }
    streams_.insert(ctx);
    return true;
  }
  void UnregisterStream(grpc::ServerContext* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.erase(ctx);
  }

  void RequestShutdown(absl::string_view why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_requested_) {
        return;
      }
      shutdown_requested_ = true;
    }
    PluginLogger().Debug("shutdown requested", {{"by", why}});
    cv_.notify_all();
  }

  void WaitForShutdownRequest() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return shutdown_requested_; });
  }

  // BeginShutdown: wakes and cancels the long-lived streams.
  void BeginShutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    shutting_down_ = true;
    for (grpc::ServerContext* ctx : streams_) {
      ctx->TryCancel();
    }
    cv_.notify_all();
  }

  bool shutting_down() {
    std::lock_guard<std::mutex> lock(mu_);
    return shutting_down_;
  }

  // WaitUntilShutdownOrCancelled: blocks a stream handler until shutdown or client cancel.
  void WaitUntilShutdownOrCancelled(grpc::ServerContext* ctx) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!shutting_down_ && !ctx->IsCancelled()) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_requested_ = false;
  bool shutting_down_ = false;
  std::set<grpc::ServerContext*> streams_;
};

class BrokerService final : public ::plugin::GRPCBroker::Service {
 public:
  BrokerService(Runtime* rt, HostBroker* broker) : rt_(rt), broker_(broker) {}

  grpc::Status StartStream(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<::plugin::ConnInfo, ::plugin::ConnInfo>* stream) override {
    if (!rt_->RegisterStream(ctx)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "plugin is shutting down");
    }
    ::plugin::ConnInfo info;
    while (stream->Read(&info)) {
      PluginLogger().Debug("broker: host announced a connection",
                           {{"service_id", absl::StrCat(info.service_id())},
                            {"network", info.network()},
                            {"address", info.address()}});
      broker_->Announce(info.service_id(), info.network(), info.address());
    }
    rt_->UnregisterStream(ctx);
    return grpc::Status::OK;
  }

 private:
  Runtime* const rt_;
  HostBroker* const broker_;
};

class StdioService final : public ::plugin::GRPCStdio::Service {
 public:
  explicit StdioService(Runtime* rt) : rt_(rt) {}

  // StreamStdio: our logs go to fd 2 directly (that is what SPIRE reads); nothing is ever
  // sent here, the stream just stays open until the host cancels it or we shut down.
  grpc::Status StreamStdio(grpc::ServerContext* ctx, const ::google::protobuf::Empty*,
                           grpc::ServerWriter<::plugin::StdioData>*) override {
    if (!rt_->RegisterStream(ctx)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "plugin is shutting down");
    }
    rt_->WaitUntilShutdownOrCancelled(ctx);
    rt_->UnregisterStream(ctx);
    return grpc::Status::OK;
  }

 private:
  Runtime* const rt_;
};

class ControllerService final : public ::plugin::GRPCController::Service {
 public:
  explicit ControllerService(Runtime* rt) : rt_(rt) {}

  // Shutdown: replies at once; the main thread stops the server (stopping it from inside a
  // handler would wait for this very handler).
  grpc::Status Shutdown(grpc::ServerContext*, const ::plugin::Empty*, ::plugin::Empty*) override {
    rt_->RequestShutdown("GRPCController/Shutdown");
    return grpc::Status::OK;
  }

 private:
  Runtime* const rt_;
};

class HealthService final : public healthv1::Health::Service {
 public:
  explicit HealthService(Runtime* rt) : rt_(rt) {}

  grpc::Status Check(grpc::ServerContext*, const healthv1::HealthCheckRequest* req,
                     healthv1::HealthCheckResponse* resp) override {
    if (!req->service().empty() && req->service() != "plugin") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("health: unknown service \"", req->service(), "\""));
    }
    resp->set_status(rt_->shutting_down() ? healthv1::HealthCheckResponse::NOT_SERVING
                                          : healthv1::HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
  // Watch stays UNIMPLEMENTED: go-plugin only calls Check.

 private:
  Runtime* const rt_;
};

class InitService final : public initv1::Init::Service {
 public:
  InitService(const PluginOptions* options, bool has_config, HostBroker* broker)
      : options_(options), has_config_(has_config), broker_(broker) {}

  grpc::Status Init(grpc::ServerContext*, const initv1::InitRequest* req,
                    initv1::InitResponse* resp) override {
    InitContext ictx;
    ictx.host_service_names.assign(req->host_service_names().begin(),
                                   req->host_service_names().end());
    ictx.broker = broker_;
    PluginLogger().Debug("Init", {{"host_services", absl::StrJoin(ictx.host_service_names, ",")}});
    if (options_->on_init) {
      absl::Status s = options_->on_init(ictx);
      if (!s.ok()) {
        return ToGrpcStatus(s);
      }
    }
    for (const std::string& name : options_->plugin_service_names) {
      resp->add_plugin_service_names(name);
    }
    if (has_config_) {
      resp->add_plugin_service_names(kConfigServiceName);
    }
    return grpc::Status::OK;
  }

  grpc::Status Deinit(grpc::ServerContext*, const initv1::DeinitRequest*,
                      initv1::DeinitResponse*) override {
    PluginLogger().Debug("Deinit");
    if (options_->on_deinit) {
      return ToGrpcStatus(options_->on_deinit());
    }
    return grpc::Status::OK;
  }

 private:
  const PluginOptions* const options_;
  const bool has_config_;
  HostBroker* const broker_;
};

class ConfigService final : public configv1::Config::Service {
 public:
  explicit ConfigService(Configurable* target) : target_(target) {}

  grpc::Status Configure(grpc::ServerContext*, const configv1::ConfigureRequest* req,
                         configv1::ConfigureResponse*) override {
    CoreConfig core{req->core_configuration().trust_domain()};
    absl::Status s = target_->Configure(core, req->hcl_configuration());
    if (!s.ok()) {
      PluginLogger().Debug("Configure failed", {{"error", s.message()}});
    }
    return ToGrpcStatus(s);
  }

  grpc::Status Validate(grpc::ServerContext*, const configv1::ValidateRequest* req,
                        configv1::ValidateResponse* resp) override {
    CoreConfig core{req->core_configuration().trust_domain()};
    absl::Status s = target_->Validate(core, req->hcl_configuration());
    resp->set_valid(s.ok());
    if (!s.ok()) {
      resp->add_notes(std::string(s.message()));
    }
    return grpc::Status::OK;
  }

 private:
  Configurable* const target_;
};

// SocketDir: a private 0700 directory holding the listening socket; removed on destruction.
class SocketDir {
 public:
  static absl::StatusOr<std::unique_ptr<SocketDir>> New() {
    const char* base = getenv("PLUGIN_UNIX_SOCKET_DIR");
    if (base == nullptr || *base == '\0') {
      base = getenv("TMPDIR");
    }
    if (base == nullptr || *base == '\0') {
      base = "/tmp";
    }
    std::string tmpl = absl::StrCat(base, "/hwid-plugin-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      int err = errno;
      return absl::InternalError(absl::StrCat("creating the plugin socket directory under ", base,
                                              ": ", strerror(err),
                                              " (check PLUGIN_UNIX_SOCKET_DIR / TMPDIR)"));
    }
    auto dir = std::unique_ptr<SocketDir>(new SocketDir(tmpl));
    constexpr size_t kSunPathMax = 107;  // sizeof(sockaddr_un::sun_path) - 1
    if (dir->socket_path().size() > kSunPathMax) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plugin socket path ", dir->socket_path(), " is longer than ", kSunPathMax,
          " bytes; set PLUGIN_UNIX_SOCKET_DIR or TMPDIR to a shorter directory"));
    }
    return dir;
  }

  ~SocketDir() {
    unlink(socket_path().c_str());
    rmdir(dir_.c_str());
  }

  std::string socket_path() const { return dir_ + "/plugin.sock"; }

  // ApplyGroup: honours PLUGIN_UNIX_SOCKET_GROUP (name or numeric gid) like go-plugin.
  absl::Status ApplyGroup() const {
    const char* group = getenv("PLUGIN_UNIX_SOCKET_GROUP");
    if (group == nullptr || *group == '\0') {
      return absl::OkStatus();
    }
    gid_t gid;
    if (struct group* g = getgrnam(group)) {
      gid = g->gr_gid;
    } else {
      char* end = nullptr;
      unsigned long v = strtoul(group, &end, 10);
      if (end == group || *end != '\0') {
        return absl::InvalidArgumentError(
            absl::StrCat("PLUGIN_UNIX_SOCKET_GROUP \"", group, "\" is not a known group"));
      }
      gid = static_cast<gid_t>(v);
    }
    std::string sock = socket_path();
    if (chown(dir_.c_str(), static_cast<uid_t>(-1), gid) != 0 ||
        chown(sock.c_str(), static_cast<uid_t>(-1), gid) != 0 || chmod(dir_.c_str(), 0750) != 0 ||
        chmod(sock.c_str(), 0660) != 0) {
      int err = errno;
      return absl::InternalError(absl::StrCat("giving the plugin socket ", sock, " to group ",
                                              group, ": ", strerror(err)));
    }
    return absl::OkStatus();
  }

 private:
  explicit SocketDir(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
};

bool WriteAll(int fd, absl::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> HostBroker::Dial(uint32_t service_id,
                                                                absl::Duration timeout) {
  std::string network;
  std::string address;
  {
    std::unique_lock<std::mutex> lock(mu_);
    bool found = cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
      return closed_ || conns_.count(service_id) > 0;
    });
    if (closed_) {
      return absl::UnavailableError("broker: plugin is shutting down");
    }
    if (!found) {
      return absl::DeadlineExceededError(
          absl::StrCat("broker: the host did not announce service id ", service_id, " within ",
                       absl::FormatDuration(timeout)));
    }
    std::tie(network, address) = conns_[service_id];
  }
  std::string target;
  if (network == "unix") {
    target = absl::StrCat("unix:", address);
  } else if (network == "tcp") {
    target = address;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("broker: service id ", service_id,
                                                   " announced with unknown network \"", network,
                                                   "\""));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

void HostBroker::Announce(uint32_t service_id, std::string network, std::string address) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns_[service_id] = {std::move(network), std::move(address)};
  }
  cv_.notify_all();
}

void HostBroker::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

int ServePlugin(const PluginOptions& options, std::vector<grpc::Service*> services,
                Configurable* configurable) {
  Logger& log = PluginLogger();
  log.SetModule(options.name);

  // 1. Magic cookie (also lets the binary tell a person it is a plugin).
  const char* cookie = getenv(options.magic_cookie_key.c_str());
  if (cookie == nullptr || options.magic_cookie_value != cookie) {
    WriteAll(2, kNotAPluginMessage);
    return 1;
  }
  if (options.plugin_service_names.empty()) {
    log.Error("plugin runtime: PluginOptions.plugin_service_names is empty (a bug in the plugin)");
    return 1;
  }

  // The host: when it dies without stopping us (SIGKILL, a crash), we are re-parented and stop
  // (below), instead of lingering with the TPM connection and the socket.
  const pid_t host_pid = getppid();

  // 2. Signals: SIGINT and SIGPIPE ignored like go-plugin; SIGTERM handled by a thread.
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);

  // 3. App protocol: SPIRE offers only 1.
  if (const char* versions = getenv("PLUGIN_PROTOCOL_VERSIONS")) {
    bool has1 = false;
    for (absl::string_view v : absl::StrSplit(versions, ',')) {
      has1 = has1 || v == "1";
    }
    if (!has1) {
      log.Warn("the host does not offer plugin protocol version 1; answering 1 anyway",
               {{"offered", versions}});
    }
  }

  // 4. Listener in a private directory.
  absl::StatusOr<std::unique_ptr<SocketDir>> dir = SocketDir::New();
  if (!dir.ok()) {
    log.Error("plugin runtime: cannot create the listening socket",
              {{"error", dir.status().message()}});
    return 1;
  }
  const std::string socket_path = (*dir)->socket_path();

  Runtime rt;
  HostBroker broker;
  BrokerService broker_service(&rt, &broker);
  StdioService stdio_service(&rt);
  ControllerService controller_service(&rt);
  HealthService health_service(&rt);
  InitService init_service(&options, configurable != nullptr, &broker);
  std::unique_ptr<ConfigService> config_service;

  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", socket_path), grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // One completion queue with few pollers: a plugin serves one host over one connection, and
  // gRPC's default (a queue per core, more pollers) only adds thread hand-offs per call.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 2);
  builder.RegisterService(&health_service);
  builder.RegisterService(&broker_service);
  builder.RegisterService(&controller_service);
  builder.RegisterService(&stdio_service);
  builder.RegisterService(&init_service);
  if (configurable != nullptr) {
    config_service = std::make_unique<ConfigService>(configurable);
    builder.RegisterService(config_service.get());
  }
  for (grpc::Service* s : services) {
    builder.RegisterService(s);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    log.Error("plugin runtime: gRPC could not listen on the plugin socket",
              {{"socket", socket_path}});
    return 1;
  }
  if (absl::Status s = (*dir)->ApplyGroup(); !s.ok()) {
    log.Error("plugin runtime: cannot set the socket group", {{"error", s.message()}});
    server->Shutdown();
    return 1;
  }

  // SIGTERM watcher; woken with a thread-directed SIGTERM at the end so it can be joined.
  std::thread watcher([&rt, term] {
    int sig = 0;
    if (sigwait(&term, &sig) == 0) {
      rt.RequestShutdown("SIGTERM");
    }
  });

  // Host watcher: go-plugin hosts stop their plugins with GRPCController/Shutdown or a signal, but
  // a host killed with SIGKILL (or crashing) does neither; the plugin is then re-parented (to
  // init or a subreaper) and stops within about half a second. Polling getppid() works for any
  // host (PR_SET_PDEATHSIG would fire when the host's forking *thread* exits, which Go's runtime
  // may do while the host lives on).
  std::atomic<bool> stopping{false};
  std::thread host_watcher([&rt, &stopping, &log, host_pid] {
    while (!stopping.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (stopping.load()) {
        break;
      }
      const pid_t now = getppid();
      if (now != host_pid) {
        log.Warn("the host process is gone (this plugin was re-parented); stopping",
                 {{"host_pid", absl::StrCat(host_pid)}, {"new_parent_pid", absl::StrCat(now)}});
        rt.RequestShutdown("host process gone");
        break;
      }
    }
  });

  // 5. Handshake line, only now that the listener exists; one write, no stdio buffering.
  fflush(stdout);
  int exit_code = 0;
  if (WriteAll(1, absl::StrCat("1|1|unix|", socket_path, "|grpc|\n"))) {
    log.Debug("plugin serving", {{"socket", socket_path}});
  } else {
    log.Error("plugin runtime: cannot write the handshake line to stdout");
    exit_code = 1;
    rt.RequestShutdown("handshake failure");
  }

  // 6. Serve until asked to stop, then stop within the host's 2 s budget.
  rt.WaitForShutdownRequest();
  rt.BeginShutdown();
  broker.Close();
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(options.shutdown_grace));
  server->Wait();
  pthread_kill(watcher.native_handle(), SIGTERM);  // no-op if it already returned
  watcher.join();
  stopping.store(true);
  host_watcher.join();
  log.Debug("plugin stopped");
  return exit_code;
}

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) {
    return grpc::Status::OK;
  }
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace hwid::pluginmain
