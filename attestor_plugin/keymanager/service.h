// KeyManagerService<P>: SPIRE's KeyManager v1 gRPC service over keymanager::Core, for either
// role. The agent and server protos are byte-identical apart from their package, so one
// template serves both; P names the generated types of one role (AgentProtos, ServerProtos).
#ifndef HWID_ATTESTOR_PLUGIN_KEYMANAGER_SERVICE_H_
#define HWID_ATTESTOR_PLUGIN_KEYMANAGER_SERVICE_H_

#include <string>

#include "attestor_plugin/keymanager/core.h"
#include "attestor_plugin/pluginmain/pluginmain.h"
#include "spire/plugin/agent/keymanager/v1/keymanager.grpc.pb.h"
#include "spire/plugin/server/keymanager/v1/keymanager.grpc.pb.h"

namespace hwid::keymanager {

#define HWID_KM_PROTOS(NAME, NS, SERVICE_NAME)                   \
  struct NAME {                                                  \
    static constexpr char kServiceName[] = SERVICE_NAME;         \
    using Service = NS::KeyManager::Service;                     \
    using PublicKey = NS::PublicKey;                             \
    using KeyType = NS::KeyType;                                 \
    using GenerateKeyRequest = NS::GenerateKeyRequest;           \
    using GenerateKeyResponse = NS::GenerateKeyResponse;         \
    using GetPublicKeyRequest = NS::GetPublicKeyRequest;         \
    using GetPublicKeyResponse = NS::GetPublicKeyResponse;       \
    using GetPublicKeysRequest = NS::GetPublicKeysRequest;       \
    using GetPublicKeysResponse = NS::GetPublicKeysResponse;     \
    using SignDataRequest = NS::SignDataRequest;                 \
    using SignDataResponse = NS::SignDataResponse;               \
  }
HWID_KM_PROTOS(AgentProtos, spire::plugin::agent::keymanager::v1,
               "spire.plugin.agent.keymanager.v1.KeyManager");
HWID_KM_PROTOS(ServerProtos, spire::plugin::server::keymanager::v1,
               "spire.plugin.server.keymanager.v1.KeyManager");
#undef HWID_KM_PROTOS

template <typename P>
class KeyManagerService final : public P::Service {
 public:
  explicit KeyManagerService(Core* core) : core_(core) {}

  grpc::Status GenerateKey(grpc::ServerContext*, const typename P::GenerateKeyRequest* req,
                           typename P::GenerateKeyResponse* resp) override {
    absl::StatusOr<PublicKeyInfo> info = core_->GenerateKey(req->key_id(), req->key_type());
    if (!info.ok()) {
      return Prefixed("failed to generate key", info.status());
    }
    Fill(*info, resp->mutable_public_key());
    return grpc::Status::OK;
  }

  grpc::Status GetPublicKey(grpc::ServerContext*, const typename P::GetPublicKeyRequest* req,
                            typename P::GetPublicKeyResponse* resp) override {
    absl::StatusOr<PublicKeyInfo> info = core_->GetPublicKey(req->key_id());
    if (!info.ok()) {
      return Prefixed("failed to get public key", info.status());
    }
    Fill(*info, resp->mutable_public_key());
    return grpc::Status::OK;
  }

  grpc::Status GetPublicKeys(grpc::ServerContext*, const typename P::GetPublicKeysRequest*,
                             typename P::GetPublicKeysResponse* resp) override {
    absl::StatusOr<std::vector<PublicKeyInfo>> infos = core_->GetPublicKeys();
    if (!infos.ok()) {
      return Prefixed("failed to get public keys", infos.status());
    }
    for (const PublicKeyInfo& i : *infos) {
      Fill(i, resp->add_public_keys());
    }
    return grpc::Status::OK;
  }

  grpc::Status SignData(grpc::ServerContext*, const typename P::SignDataRequest* req,
                        typename P::SignDataResponse* resp) override {
    const bool pss = req->has_pss_options();
    const int hash = pss ? static_cast<int>(req->pss_options().hash_algorithm())
                         : static_cast<int>(req->hash_algorithm());
    const int salt = pss ? req->pss_options().salt_length() : 0;
    const std::string& data = req->data();
    absl::StatusOr<Signature> sig = core_->SignData(
        req->key_id(), ByteSpan(reinterpret_cast<const uint8_t*>(data.data()), data.size()), hash,
        pss, salt);
    if (!sig.ok()) {
      return Prefixed("failed to sign data", sig.status());
    }
    resp->set_signature(sig->signature.data(), sig->signature.size());
    resp->set_key_fingerprint(sig->fingerprint);
    return grpc::Status::OK;
  }

 private:
  static void Fill(const PublicKeyInfo& in, typename P::PublicKey* out) {
    out->set_id(in.id);
    out->set_type(static_cast<typename P::KeyType>(KeyAlgToSpire(in.alg)));
    out->set_pkix_data(in.pkix_der.data(), in.pkix_der.size());
    out->set_fingerprint(in.fingerprint);
  }
  static grpc::Status Prefixed(absl::string_view what, const absl::Status& st) {
    return pluginmain::ToGrpcStatus(
        absl::Status(st.code(), absl::StrCat(what, ": ", st.message())));
  }

  Core* core_;
};

// RunKeyManagerPlugin: main() of hwid-keymanager-{agent,server}.
template <typename P>
int RunKeyManagerPlugin(const char* role) {
  Core core(role);
  KeyManagerService<P> service(&core);
  pluginmain::PluginOptions opts;
  opts.name = "hwid_keymanager";
  opts.magic_cookie_key = "KeyManager";
  opts.magic_cookie_value = "KeyManager";
  opts.plugin_service_names = {P::kServiceName};
  return pluginmain::ServePlugin(opts, {&service}, &core);
}

}  // namespace hwid::keymanager

#endif  // HWID_ATTESTOR_PLUGIN_KEYMANAGER_SERVICE_H_
