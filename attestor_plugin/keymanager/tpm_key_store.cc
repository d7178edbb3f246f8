#include "attestor_plugin/keymanager/tpm_key_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "attestor_plugin/pluginmain/log.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"

namespace hwid::keymanager {
namespace {

constexpr absl::string_view kSuffix = ".tss2.pem";

bool Plain(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  const int e = errno;
  absl::StatusCode code = (e == EACCES || e == EPERM || e == EROFS || e == ENOSPC)
                              ? absl::StatusCode::kFailedPrecondition
                              : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, " ", path, ": ", std::strerror(e)));
}

// Retry runs `fn` until it succeeds, fails with something other than "no free slot", or
// `wait` has passed.
template <typename Fn>
auto RetryWhileBusy(absl::Duration wait, Fn fn) -> decltype(fn()) {
  const absl::Time deadline = absl::Now() + wait;
  absl::Duration backoff = absl::Milliseconds(5);
  while (true) {
    auto r = fn();
    if (r.ok() || !absl::IsResourceExhausted(r.status()) || absl::Now() + backoff > deadline) {
      return r;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Milliseconds(200));
  }
}

// CheckPss verifies an RSA-PSS signature the TPM made against the salt length SPIRE asked for:
// a TPM chooses its own salt (the digest length, or the largest possible), so a request it
// cannot honour is refused rather than answered with a signature the verifier rejects.
absl::Status CheckPss(const EVP_PKEY* pub, HashAlg hash, int go_salt, ByteSpan digest,
                      ByteSpan sig) {
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, const_cast<EVP_PKEY*>(pub), nullptr));
  const int salt = go_salt == -1 ? static_cast<int>(HashAlgSize(hash)) : go_salt;
  if (ctx == nullptr || EVP_PKEY_verify_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING) != 1 ||
      EVP_PKEY_CTX_set_signature_md(ctx.get(), HashAlgMd(hash)) != 1 ||
      EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), salt) != 1) {
    return OpenSslError("setting up the RSA-PSS salt check");
  }
  if (EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), digest.data(), digest.size()) != 1) {
    DrainOpenSslErrors();
    return absl::InvalidArgumentError(absl::StrCat(
        "this TPM makes RSA-PSS signatures with its own salt length, not the ", salt,
        " bytes requested (ask for PSSSaltLengthAuto, or use PKCS#1 v1.5)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string KeyFileName(absl::string_view id) {
  std::string out;
  for (char c : id) {
    if (Plain(c)) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  absl::StrAppend(&out, kSuffix);
  return out;
}

std::optional<std::string> KeyIdFromFileName(absl::string_view name) {
  if (!absl::ConsumeSuffix(&name, kSuffix) || name.empty()) {
    return std::nullopt;
  }
  std::string id;
  for (size_t i = 0; i < name.size(); ++i) {
    if (Plain(name[i])) {
      id.push_back(name[i]);
      continue;
    }
    int v = 0;
    if (name[i] != '%' || i + 2 >= name.size() ||
        !absl::SimpleHexAtoi(name.substr(i + 1, 2), &v)) {
      return std::nullopt;
    }
    id.push_back(static_cast<char>(v));
    i += 2;
  }
  if (KeyFileName(id) != absl::StrCat(name, kSuffix)) {
    return std::nullopt;  // not canonical (e.g. "%41" for 'A', lowercase hex)
  }
  return id;
}

absl::StatusOr<std::unique_ptr<TpmKeyStore>> TpmKeyStore::Open(Options options) {
  if (options.key_dir.empty()) {
    return absl::InvalidArgumentError("key_dir is required");
  }
  while (options.key_dir.size() > 1 && options.key_dir.back() == '/') {
    options.key_dir.pop_back();
  }
  if (mkdir(options.key_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errno("key_dir: cannot create", options.key_dir);
  }
  struct stat st = {};
  if (stat(options.key_dir.c_str(), &st) != 0) {
    return Errno("key_dir: cannot stat", options.key_dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("key_dir ", options.key_dir, " is not a directory"));
  }
  if (access(options.key_dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "key_dir ", options.key_dir, " is not writable by this process (uid ", getuid(), ")"));
  }
  // Leftovers of a write interrupted by a crash (common/bytes.h WriteFile temp files): only this
  // plugin writes here, and it is starting, so none of them is in progress.
  if (std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(options.key_dir.c_str()), closedir);
      d != nullptr) {
    while (struct dirent* de = readdir(d.get())) {
      const absl::string_view name = de->d_name;
      if (absl::StartsWith(name, ".tmp-") && absl::StrContains(name, ".tss2.pem-")) {
        unlinkat(dirfd(d.get()), de->d_name, 0);
      }
    }
  }
  std::unique_ptr<TpmKeyStore> store(new TpmKeyStore(std::move(options)));
  (void)store->Device();  // connect now if we can; failures are retried by every call
  return store;
}

std::string TpmKeyStore::Describe() const {
  return absl::StrCat("TPM ", options_.tcti.empty() ? tpm::DefaultTcti() : options_.tcti,
                      ", key_dir ", options_.key_dir);
}

absl::Status TpmKeyStore::device_status() {
  std::lock_guard<std::mutex> lock(mu_);
  return last_device_status_;
}

uint64_t TpmKeyStore::CommandCount() {
  std::lock_guard<std::mutex> lock(mu_);
  return retired_commands_ + (tpm_ != nullptr ? tpm_->command_count() : 0);
}

absl::StatusOr<std::shared_ptr<tpm::Tpm>> TpmKeyStore::Device() {
  std::lock_guard<std::mutex> lock(mu_);
  if (tpm_ != nullptr) {
    return tpm_;
  }
  absl::StatusOr<std::unique_ptr<tpm::Tpm>> t = tpm::Tpm::Open(options_.tcti);
  if (!t.ok()) {
    last_device_status_ = DeviceError(t.status(), "opening the TPM");
    if (!absl::IsUnavailable(last_device_status_) &&
        !absl::IsFailedPrecondition(last_device_status_)) {
      last_device_status_ = absl::UnavailableError(last_device_status_.message());
    }
    return last_device_status_;
  }
  tpm_ = std::shared_ptr<tpm::Tpm>(std::move(*t));
  last_device_status_ = absl::OkStatus();
  return tpm_;
}

absl::Status TpmKeyStore::Check(const std::shared_ptr<tpm::Tpm>& tpm, absl::Status st) {
  if (absl::IsUnavailable(st)) {
    std::lock_guard<std::mutex> lock(mu_);
    last_device_status_ = st;
    if (tpm_ == tpm && tpm_ != nullptr) {
      retired_commands_ += tpm_->command_count();
      tpm_.reset();  // reconnect on the next call
    }
  }
  return st;
}

absl::StatusOr<std::shared_ptr<TpmKeyStore::Entry>> TpmKeyStore::Parse(const std::string& id,
                                                                       Bytes file) {
  auto e = std::make_shared<Entry>();
  absl::StatusOr<wire::TpmKeyFile> kf = wire::ParseTpmKeyFile(file);
  if (!kf.ok()) {
    return absl::InternalError(
        absl::StrCat("key file ", KeyFileName(id), " is damaged: ", kf.status().message()));
  }
  ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, wire::ParsePublic(kf->pub));
  ASSIGN_OR_RETURN(e->public_key, wire::PublicToEvp(pub.publicArea));
  ASSIGN_OR_RETURN(e->info.alg, KeyAlgOf(e->public_key.get()));
  ASSIGN_OR_RETURN(e->info.pkix_der, wire::PublicKeyDer(e->public_key.get()));
  e->info.id = id;
  e->info.fingerprint = Sha256Hex(e->info.pkix_der);  // SPIRE's convention
  e->key.blob = *std::move(kf);
  e->key.pub = pub;
  e->file = std::move(file);
  return e;
}

absl::StatusOr<std::shared_ptr<TpmKeyStore::Entry>> TpmKeyStore::Load(const std::string& id) {
  const std::string path = absl::StrCat(options_.key_dir, "/", KeyFileName(id));
  absl::StatusOr<Bytes> file = ReadFile(path, 64 << 10);
  if (!file.ok()) {
    struct stat st = {};
    if (stat(path.c_str(), &st) != 0 && errno == ENOENT) {
      std::lock_guard<std::mutex> lock(mu_);
      cache_.erase(id);
      return absl::NotFoundError(absl::StrCat("no key \"", id, "\" in ", options_.key_dir));
    }
    return absl::InternalError(absl::StrCat("reading key \"", id, "\": ", file.status().message()));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(id);
    if (it != cache_.end() && it->second->file == *file) {
      return it->second;
    }
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, Parse(id, *std::move(file)));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[id] = e;
  return e;
}

absl::StatusOr<PublicKeyInfo> TpmKeyStore::Generate(const std::string& id, KeyAlg alg) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<tpm::Tpm> tpm, Device());
  absl::Status ok = tpm->CheckKeyAlg(alg);
  if (!ok.ok()) {
    return Check(tpm, absl::IsInvalidArgument(ok) ? ok : DeviceError(ok, "TPM2_TestParms"));
  }
  absl::StatusOr<wire::TpmKeyFile> kf =
      RetryWhileBusy(options_.slot_wait, [&] { return tpm->CreateKey(alg); });
  if (!kf.ok()) {
    return Check(tpm, DeviceError(kf.status(), absl::StrCat("creating key \"", id, "\"")));
  }
  kf->description = absl::StrCat("hwid keymanager ", id);
  ASSIGN_OR_RETURN(std::string pem, wire::EncodeTpmKeyFilePem(*kf));
  const std::string path = absl::StrCat(options_.key_dir, "/", KeyFileName(id));
  RETURN_IF_ERROR(WriteFile(path, AsSpan(pem), 0600));
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, Parse(id, Bytes(pem.begin(), pem.end())));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[id] = e;
  return e->info;
}

absl::StatusOr<PublicKeyInfo> TpmKeyStore::Get(const std::string& id) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, Load(id));
  return e->info;
}

absl::StatusOr<std::vector<PublicKeyInfo>> TpmKeyStore::List() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(options_.key_dir.c_str()), closedir);
  if (dir == nullptr) {
    return Errno("listing key_dir", options_.key_dir);
  }
  std::vector<std::string> ids;
  while (struct dirent* de = readdir(dir.get())) {
    std::optional<std::string> id = KeyIdFromFileName(de->d_name);
    if (id.has_value() && de->d_name[0] != '.') {
      ids.push_back(*std::move(id));
    }
  }
  std::sort(ids.begin(), ids.end());
  std::vector<PublicKeyInfo> out;
  for (const std::string& id : ids) {
    absl::StatusOr<std::shared_ptr<Entry>> e = Load(id);
    if (absl::IsNotFound(e.status())) {
      continue;  // removed while we listed
    }
    if (absl::IsInternal(e.status())) {
      // A damaged file must not stop SPIRE from starting: it regenerates the key it misses.
      pluginmain::PluginLogger().Warn("skipping a damaged key file",
                                      {{"key_id", id}, {"reason", e.status().message()}});
      continue;
    }
    RETURN_IF_ERROR(e.status());
    out.push_back((*e)->info);
  }
  return out;
}

absl::StatusOr<Signature> TpmKeyStore::Sign(const std::string& id, ByteSpan digest,
                                            const SignRequest& request) {
  if (id.empty()) {
    return absl::InvalidArgumentError("key id is required");
  }
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(id);
    if (it != cache_.end()) {
      e = it->second;
    }
  }
  if (e == nullptr) {
    ASSIGN_OR_RETURN(e, Load(id));
  }
  ASSIGN_OR_RETURN(SignParams params, SignParamsFor(id, e->info.alg, digest, request));
  ASSIGN_OR_RETURN(TPMI_ALG_HASH hash, wire::TpmHashAlg(request.hash));
  ASSIGN_OR_RETURN(std::shared_ptr<tpm::Tpm> tpm, Device());
  absl::StatusOr<TPMT_SIGNATURE> sig;
  {
    std::lock_guard<std::mutex> key_lock(e->mu);
    sig = tpm->SignSlotFree(e->key, digest, params.scheme, hash, options_.slot_wait);
  }
  if (!sig.ok()) {
    return Check(tpm, DeviceError(sig.status(), absl::StrCat("signing with key \"", id, "\"")));
  }
  ASSIGN_OR_RETURN(Bytes der, wire::SignatureToDer(*sig));
  if (params.scheme == SignScheme::kRsaPss && request.go_pss_salt != 0) {
    RETURN_IF_ERROR(CheckPss(e->public_key.get(), request.hash, request.go_pss_salt, digest, der));
  }
  return Signature{std::move(der), e->info.fingerprint};
}

}  // namespace hwid::keymanager
