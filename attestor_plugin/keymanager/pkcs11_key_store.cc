#include "attestor_plugin/keymanager/pkcs11_key_store.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"

namespace hwid::keymanager {
namespace {

std::optional<int> PssSaltBytes(const SignRequest& r, const EVP_PKEY* pub) {
  if (!r.pss) {
    return std::nullopt;
  }
  if (r.go_pss_salt == -1) {
    return static_cast<int>(HashAlgSize(r.hash));
  }
  if (r.go_pss_salt == 0) {
    // Go's PSSSaltLengthAuto when signing: the largest salt the key allows (RFC 8017 9.1.1).
    const int em_len = (EVP_PKEY_get_bits(pub) - 1 + 7) / 8;
    return em_len - static_cast<int>(HashAlgSize(r.hash)) - 2;
  }
  return r.go_pss_salt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pkcs11KeyStore>> Pkcs11KeyStore::Open(Options options) {
  if (options.key_prefix.empty()) {
    return absl::InvalidArgumentError("key_prefix must not be empty");
  }
  if (absl::StrContains(options.key_prefix, "#pending")) {
    return absl::InvalidArgumentError("key_prefix must not contain \"#pending\"");
  }
  absl::StatusOr<pkcs11::Pkcs11Uri> uri = pkcs11::ParseUri(options.uri);
  if (!uri.ok()) {
    // The parser's message never echoes a pin-value.
    return absl::InvalidArgumentError(absl::StrCat("uri: ", uri.status().message()));
  }
  if (!uri->module_path.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", uri->redacted, " has no module-path (the PKCS#11 module to load)"));
  }
  if (!uri->pin_value.has_value() && !uri->pin_source.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "uri ", uri->redacted, " has neither pin-source nor pin-value (keys are private objects: "
        "the token needs a login)"));
  }
  if (uri->object.has_value() || uri->id.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "uri ", uri->redacted, " names an object; give only the token (keys are named "
        "<key_prefix>/<key id>)"));
  }
  std::unique_ptr<Pkcs11KeyStore> store(new Pkcs11KeyStore(std::move(options), *std::move(uri)));
  absl::StatusOr<std::shared_ptr<pkcs11::Token>> t = store->Device();
  if (!t.ok() && absl::IsFailedPrecondition(t.status())) {
    return t.status();  // wrong PIN, module that does not load: the operator must fix it
  }
  return store;
}

std::string Pkcs11KeyStore::Describe() const {
  return absl::StrCat("PKCS#11 ", uri_.redacted, ", key_prefix ", options_.key_prefix);
}

std::string Pkcs11KeyStore::LiveLabel(absl::string_view id) const {
  return absl::StrCat(options_.key_prefix, "/", id);
}
std::string Pkcs11KeyStore::PendingLabel(absl::string_view id) const {
  return absl::StrCat(options_.key_prefix, "#pending/", id);
}

uint64_t Pkcs11KeyStore::CommandCount() {
  std::lock_guard<std::mutex> lock(mu_);
  return token_ != nullptr ? token_->command_count() : 0;
}

absl::StatusOr<std::shared_ptr<pkcs11::Token>> Pkcs11KeyStore::Device() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!latched_.ok()) {
    return latched_;
  }
  if (token_ != nullptr) {
    return token_;
  }
  absl::StatusOr<std::shared_ptr<pkcs11::Token>> t = pkcs11::Token::Open(uri_);
  if (!t.ok()) {
    absl::Status st = DeviceError(t.status(), "opening the PKCS#11 token");
    if (absl::IsFailedPrecondition(st)) {
      // Wrong or locked PIN, or a module that does not load: retrying could lock the token.
      latched_ = absl::FailedPreconditionError(absl::StrCat(
          st.message(), " (not retried: fix the PIN or module and reconfigure or restart)"));
      return latched_;
    }
    return st;
  }
  if (!(*t)->logged_in()) {
    latched_ = absl::FailedPreconditionError(
        absl::StrCat((*t)->Describe(), ": not logged in although a PIN was configured"));
    return latched_;
  }
  token_ = *std::move(t);
  return token_;
}

absl::Status Pkcs11KeyStore::Check(absl::Status st) {
  if (absl::IsUnavailable(st)) {
    std::lock_guard<std::mutex> lock(mu_);
    token_.reset();  // the token went away: open it again on the next call
    cache_.clear();
  }
  return st;
}

absl::StatusOr<std::shared_ptr<pkcs11::Key>> Pkcs11KeyStore::Find(pkcs11::Token& token,
                                                                  const std::string& label) {
  pkcs11::Pkcs11Uri want;
  want.object = label;
  want.type = "private";
  absl::StatusOr<std::shared_ptr<pkcs11::Key>> k = token.FindKey(want);
  if (absl::IsNotFound(k.status())) {
    return std::shared_ptr<pkcs11::Key>();
  }
  if (!k.ok()) {
    return Check(DeviceError(k.status(), absl::StrCat("looking up key '", label, "'")));
  }
  return k;
}

absl::StatusOr<std::shared_ptr<Pkcs11KeyStore::Entry>> Pkcs11KeyStore::MakeEntry(
    const std::string& id, std::shared_ptr<pkcs11::Key> key) {
  auto e = std::make_shared<Entry>();
  ASSIGN_OR_RETURN(e->info.alg, KeyAlgOf(key->public_key()));
  ASSIGN_OR_RETURN(e->info.pkix_der, wire::PublicKeyDer(key->public_key()));
  e->info.id = id;
  e->info.fingerprint = Sha256Hex(e->info.pkix_der);  // SPIRE's convention
  e->key = std::move(key);
  return e;
}

absl::Status Pkcs11KeyStore::Recover(pkcs11::Token& token, const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> pending, Find(token, PendingLabel(id)));
  if (pending == nullptr) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> live, Find(token, LiveLabel(id)));
  if (live != nullptr) {
    // Interrupted before the old key was destroyed: SPIRE never saw the pending key.
    return Check(DeviceError(token.DestroyKey(*pending),
                             absl::StrCat("removing the unfinished key '", PendingLabel(id), "'")));
  }
  // Interrupted after the old key was destroyed: the pending key is the only one; finish.
  return Check(DeviceError(token.RelabelKey(*pending, LiveLabel(id)).status(),
                           absl::StrCat("finishing key '", LiveLabel(id), "'")));
}

absl::StatusOr<std::shared_ptr<Pkcs11KeyStore::Entry>> Pkcs11KeyStore::Load(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(id);
    if (it != cache_.end()) {
      return it->second;
    }
  }
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, Device());
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> key, Find(*token, LiveLabel(id)));
  if (key == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no key \"", id, "\" (label '", LiveLabel(id), "') on ", token->Describe()));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, MakeEntry(id, std::move(key)));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[id] = e;
  return e;
}

absl::StatusOr<PublicKeyInfo> Pkcs11KeyStore::Generate(const std::string& id, KeyAlg alg) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  std::lock_guard<std::mutex> gen(gen_mu_);
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, Device());
  RETURN_IF_ERROR(Recover(*token, id));
  // 1. The new pair, durable on the token, under the pending label.
  absl::StatusOr<std::shared_ptr<pkcs11::Key>> fresh = token->GenerateKey(alg, PendingLabel(id));
  if (!fresh.ok()) {
    absl::Status st = fresh.status();
    if (absl::IsInvalidArgument(st) || absl::IsUnimplemented(st)) {
      return absl::InvalidArgumentError(absl::StrCat(
          token->Describe(), " cannot make ", KeyAlgName(alg), " keys: ", st.message()));
    }
    return Check(DeviceError(st, absl::StrCat("generating key \"", id, "\"")));
  }
  // 2. The old pair goes.
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> old, Find(*token, LiveLabel(id)));
  if (old != nullptr) {
    RETURN_IF_ERROR(Check(DeviceError(token->DestroyKey(*old),
                                      absl::StrCat("removing the old key \"", id, "\""))));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    cache_.erase(id);
  }
  // 3. The new pair takes the live label.
  absl::StatusOr<std::shared_ptr<pkcs11::Key>> live = token->RelabelKey(**fresh, LiveLabel(id));
  if (!live.ok()) {
    return Check(DeviceError(live.status(), absl::StrCat("labelling key \"", id, "\"")));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, MakeEntry(id, *std::move(live)));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[id] = e;
  return e->info;
}

absl::StatusOr<PublicKeyInfo> Pkcs11KeyStore::Get(const std::string& id) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, Load(id));
  return e->info;
}

absl::StatusOr<std::vector<PublicKeyInfo>> Pkcs11KeyStore::List() {
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, Device());
  absl::StatusOr<std::vector<pkcs11::KeyInfo>> keys = token->ListKeys();
  if (!keys.ok()) {
    return Check(DeviceError(keys.status(), "listing keys"));
  }
  const std::string live = absl::StrCat(options_.key_prefix, "/");
  const std::string pending = absl::StrCat(options_.key_prefix, "#pending/");
  std::set<std::string> ids;
  std::set<std::string> unfinished;
  for (const pkcs11::KeyInfo& k : *keys) {
    if (absl::StartsWith(k.label, live) && k.label.size() > live.size()) {
      ids.insert(k.label.substr(live.size()));
    } else if (absl::StartsWith(k.label, pending) && k.label.size() > pending.size()) {
      unfinished.insert(k.label.substr(pending.size()));
    }
  }
  if (!unfinished.empty()) {
    std::lock_guard<std::mutex> gen(gen_mu_);
    for (const std::string& id : unfinished) {
      RETURN_IF_ERROR(Recover(*token, id));
      ids.insert(id);  // if it was finished, it is live now; Load tells
    }
  }
  std::vector<PublicKeyInfo> out;
  for (const std::string& id : ids) {
    absl::StatusOr<std::shared_ptr<Entry>> e = Load(id);
    if (absl::IsNotFound(e.status())) {
      continue;
    }
    RETURN_IF_ERROR(e.status());
    out.push_back((*e)->info);
  }
  return out;
}

absl::StatusOr<Signature> Pkcs11KeyStore::Sign(const std::string& id, ByteSpan digest,
                                               const SignRequest& request) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, Load(id));
  ASSIGN_OR_RETURN(SignParams params, SignParamsFor(id, e->info.alg, digest, request));
  params.pss_salt_len = PssSaltBytes(request, e->key->public_key());
  absl::StatusOr<Bytes> sig = e->key->Sign(digest, params);
  if (!sig.ok()) {
    if (absl::IsInvalidArgument(sig.status())) {
      return sig.status();
    }
    return Check(DeviceError(sig.status(), absl::StrCat("signing with key \"", id, "\"")));
  }
  return Signature{*std::move(sig), e->info.fingerprint};
}

}  // namespace hwid::keymanager
