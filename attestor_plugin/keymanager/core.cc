#include "attestor_plugin/keymanager/core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/keymanager/pkcs11_key_store.h"
#include "attestor_plugin/keymanager/tpm_key_store.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "attestor_plugin/pluginmain/log.h"
#include "common/status_macros.h"

namespace hwid::keymanager {
namespace {

absl::Status ConfigError(absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat("plugin_data: ", msg));
}

}  // namespace

absl::StatusOr<Config> ParseConfig(const pluginmain::CoreConfig& core, absl::string_view hcl) {
  absl::StatusOr<pluginmain::HclObject> obj = pluginmain::ParseHcl(hcl);
  if (!obj.ok()) {
    return ConfigError(obj.status().message());
  }
  Config c;
  pluginmain::HclDecoder d(*obj);
  // Which keys are present (not their values) decides the cross-backend checks below.
  const bool has_tcti = d.Has("tcti"), has_key_dir = d.Has("key_dir"), has_uri = d.Has("uri"),
             has_prefix = d.Has("key_prefix");
  d.Required("backend", &c.backend);
  d.Optional("tcti", &c.tcti);
  d.Optional("key_dir", &c.key_dir);
  d.Optional("uri", &c.uri);
  d.Optional("key_prefix", &c.key_prefix);
  absl::Status st = d.Finish();
  if (!st.ok()) {
    // The decoder names keys and types, never values: a pin-value in `uri` cannot leak here.
    return ConfigError(st.message());
  }
  if (c.backend == "tpm") {
    if (has_uri || has_prefix) {
      return ConfigError(absl::StrCat("key \"", has_uri ? "uri" : "key_prefix",
                                      "\" belongs to backend \"pkcs11\", not \"tpm\""));
    }
    if (c.key_dir.empty()) {
      return ConfigError("backend \"tpm\" needs key_dir (the directory for the key files)");
    }
    if (c.key_dir[0] != '/') {
      return ConfigError(absl::StrCat("key_dir must be an absolute path, got \"", c.key_dir, "\""));
    }
  } else if (c.backend == "pkcs11") {
    if (has_tcti || has_key_dir) {
      return ConfigError(absl::StrCat("key \"", has_tcti ? "tcti" : "key_dir",
                                      "\" belongs to backend \"tpm\", not \"pkcs11\""));
    }
    if (c.uri.empty()) {
      return ConfigError(
          "backend \"pkcs11\" needs uri (pkcs11:token=...?module-path=...&pin-source=...)");
    }
    if (!has_prefix) {
      c.key_prefix = core.trust_domain;
    }
    if (c.key_prefix.empty()) {
      return ConfigError("key_prefix is empty and SPIRE gave no trust domain to default to");
    }
  } else {
    return ConfigError(absl::StrCat("backend must be \"tpm\" or \"pkcs11\", got \"", c.backend,
                                    "\""));
  }
  return c;
}

absl::StatusOr<std::unique_ptr<KeyStore>> OpenStore(const Config& c) {
  if (c.backend == "tpm") {
    TpmKeyStore::Options o;
    o.tcti = c.tcti;
    o.key_dir = c.key_dir;
    ASSIGN_OR_RETURN(std::unique_ptr<TpmKeyStore> s, TpmKeyStore::Open(std::move(o)));
    return std::unique_ptr<KeyStore>(std::move(s));
  }
  Pkcs11KeyStore::Options o;
  o.uri = c.uri;
  o.key_prefix = c.key_prefix;
  ASSIGN_OR_RETURN(std::unique_ptr<Pkcs11KeyStore> s, Pkcs11KeyStore::Open(std::move(o)));
  return std::unique_ptr<KeyStore>(std::move(s));
}

absl::StatusOr<KeyAlg> KeyAlgFromSpire(int key_type) {
  switch (key_type) {
    case 1:
      return KeyAlg::kEcP256;
    case 2:
      return KeyAlg::kEcP384;
    case 3:
      return KeyAlg::kRsa2048;
    case 4:
      return KeyAlg::kRsa4096;
    case 0:
      return absl::InvalidArgumentError("key type is required");
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown key type ", key_type));
  }
}

int KeyAlgToSpire(KeyAlg alg) {
  switch (alg) {
    case KeyAlg::kEcP256:
      return 1;
    case KeyAlg::kEcP384:
      return 2;
    case KeyAlg::kRsa2048:
      return 3;
    case KeyAlg::kRsa4096:
      return 4;
    case KeyAlg::kRsa3072:
      break;
  }
  return 0;
}

absl::StatusOr<HashAlg> HashAlgFromSpire(int h) {
  switch (h) {
    case 4:
      return HashAlg::kSha224;
    case 5:
      return HashAlg::kSha256;
    case 6:
      return HashAlg::kSha384;
    case 7:
      return HashAlg::kSha512;
    case 0:
      return absl::InvalidArgumentError("hash algorithm is required");
    case 10:
    case 11:
    case 12:
    case 13:
      return absl::InvalidArgumentError(
          absl::StrCat("SHA-3 (hash algorithm ", h, ") is not supported; use SHA256/384/512"));
    case 14:
    case 15:
      return absl::InvalidArgumentError(absl::StrCat(
          "SHA-512/", h == 14 ? "224" : "256", " is not supported; use SHA256/384/512"));
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown hash algorithm ", h));
  }
}

absl::Status Core::Validate(const pluginmain::CoreConfig& core, absl::string_view hcl) {
  return ParseConfig(core, hcl).status();
}

absl::Status Core::Configure(const pluginmain::CoreConfig& core, absl::string_view hcl) {
  ASSIGN_OR_RETURN(Config parsed, ParseConfig(core, hcl));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (config_ != nullptr && *config_ == parsed) {
      return absl::OkStatus();  // same configuration (SIGUSR1 without a change): keep the store
    }
  }
  absl::StatusOr<std::unique_ptr<KeyStore>> store = OpenStore(parsed);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        absl::StrCat(parsed.backend, " backend: ", store.status().message()));
  }
  std::shared_ptr<KeyStore> s(*std::move(store));
  auto& log = pluginmain::PluginLogger();
  log.Info("configured", {{"role", role_}, {"backend", parsed.backend}, {"keys", s->Describe()}});
  if (auto* tpm_store = dynamic_cast<TpmKeyStore*>(s.get()); tpm_store != nullptr) {
    absl::Status dev = tpm_store->device_status();
    if (!dev.ok()) {
      log.Warn("TPM not reachable yet; every call retries", {{"reason", dev.message()}});
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  config_ = std::make_shared<const Config>(std::move(parsed));
  store_ = std::move(s);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<KeyStore>> Core::Store() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (store_ == nullptr) {
    return absl::FailedPreconditionError("plugin not configured");
  }
  return store_;
}

absl::StatusOr<PublicKeyInfo> Core::GenerateKey(const std::string& id, int key_type) {
  ASSIGN_OR_RETURN(std::shared_ptr<KeyStore> store, Store());
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  ASSIGN_OR_RETURN(KeyAlg alg, KeyAlgFromSpire(key_type));
  absl::StatusOr<PublicKeyInfo> info = store->Generate(id, alg);
  auto& log = pluginmain::PluginLogger();
  if (info.ok()) {
    log.Info("generated key", {{"key_id", id}, {"type", KeyAlgName(alg)},
                               {"fingerprint", info->fingerprint}});
  } else {
    log.Warn("key generation failed", {{"key_id", id}, {"reason", info.status().message()}});
  }
  return info;
}

absl::StatusOr<PublicKeyInfo> Core::GetPublicKey(const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<KeyStore> store, Store());
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  return store->Get(id);
}

absl::StatusOr<std::vector<PublicKeyInfo>> Core::GetPublicKeys() {
  ASSIGN_OR_RETURN(std::shared_ptr<KeyStore> store, Store());
  return store->List();
}

absl::StatusOr<Signature> Core::SignData(const std::string& id, ByteSpan digest, int hash,
                                         bool pss, int salt) {
  ASSIGN_OR_RETURN(std::shared_ptr<KeyStore> store, Store());
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  if (hash == 0) {
    return absl::InvalidArgumentError(pss ? "hash algorithm in PSS options is required"
                                          : "signer opts with a hash algorithm are required");
  }
  ASSIGN_OR_RETURN(HashAlg h, HashAlgFromSpire(hash));
  if (pss && salt < -1) {
    return absl::InvalidArgumentError(absl::StrCat("invalid PSS salt length ", salt));
  }
  SignRequest r;
  r.hash = h;
  r.pss = pss;
  r.go_pss_salt = salt;
  absl::StatusOr<Signature> sig = store->Sign(id, digest, r);
  if (!sig.ok() && !absl::IsInvalidArgument(sig.status()) && !absl::IsNotFound(sig.status())) {
    pluginmain::PluginLogger().Warn("signing failed",
                                    {{"key_id", id}, {"reason", sig.status().message()}});
  }
  return sig;
}

}  // namespace hwid::keymanager
