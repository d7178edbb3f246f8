#include "provider/pkcs11_backend.h"

#include <dirent.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "common/access.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "pkcs11/pkcs11.h"
#include "pkcs11/uri.h"
#include "pkcs11/uri_pem.h"

namespace hwid::provider {
namespace {

// PublicInLibctx re-creates the token key's public half (made in the default library context) in
// the provider's own library context, where all of the provider's software crypto runs.
absl::StatusOr<OsslPtr<EVP_PKEY>> PublicInLibctx(OSSL_LIB_CTX* libctx, EVP_PKEY* pub) {
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(pub, &der);
  if (n <= 0) {
    return OpenSslError("encoding the token key's public key");
  }
  const unsigned char* p = der;
  OsslPtr<EVP_PKEY> out(d2i_PUBKEY_ex(nullptr, &p, n, libctx, nullptr));
  OPENSSL_free(der);
  if (out == nullptr) {
    return OpenSslError("decoding the token key's public key");
  }
  return out;
}

std::string SoftHsmAccessHint();

class Pkcs11Key final : public Key {
 public:
  Pkcs11Key(std::shared_ptr<pkcs11::Key> key, OsslPtr<EVP_PKEY> pub)
      : key_(std::move(key)), pub_(std::move(pub)) {}

  KeyType type() const override { return key_->type(); }
  Device device() const override { return Device::kPkcs11; }
  EVP_PKEY* public_key() const override { return pub_.get(); }
  std::string Describe() const override { return key_->Describe(); }
  // The token takes any PSS salt length we ask for; "auto" means the digest length (TLS 1.3).
  PssSaltMode pss_salt_mode() const override { return PssSaltMode::kDigestLength; }

  // A forked worker running as another uid re-opens the token at its first signature: when that
  // fails because the uid cannot use SoftHSM2's files, the error says so (as LoadUri does).
  absl::StatusOr<Bytes> Sign(ByteSpan digest, const SignParams& params) override {
    absl::StatusOr<Bytes> sig = key_->Sign(digest, params);
    if (!sig.ok()) {
      return absl::Status(sig.status().code(),
                          absl::StrCat(sig.status().message(), SoftHsmAccessHint()));
    }
    return sig;
  }

  absl::StatusOr<std::string> EncodePem() const override { return pkcs11::EncodeUriPem(key_->uri()); }
  absl::StatusOr<Bytes> EncodeDer() const override { return pkcs11::EncodeUriDer(key_->uri()); }

  // The key object was found on the logged-in token at load; confirm it is still a protected
  // signing key (sensitive, not extractable is *reported*, not required: tokens differ, and a key
  // made elsewhere is the operator's choice) and that the session works.
  absl::Status Activate() override {
    if (activated_) {
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(pkcs11::KeyAttributes a, key_->ReadAttributes());
    if (!a.sign) {
      return absl::FailedPreconditionError(
          absl::StrCat(key_->Describe(), " does not allow signing (CKA_SIGN is false)"));
    }
    activated_ = true;
    return absl::OkStatus();
  }

  const std::shared_ptr<pkcs11::Key>& key() const { return key_; }

 private:
  std::shared_ptr<pkcs11::Key> key_;
  OsslPtr<EVP_PKEY> pub_;
  bool activated_ = false;
};

}  // namespace

namespace {

// SoftHsmAccessHint: SoftHSM2 answers a token directory it may not use with CKR_GENERAL_ERROR
// (at C_Initialize, C_GetTokenInfo), which points nowhere. When the SoftHSM2 configuration
// ($SOFTHSM2_CONF, else /etc/softhsm/softhsm2.conf) or its directories.tokendir (or a token in
// it) is not usable by this uid, say so ("" otherwise, and for other modules' errors this says
// nothing as long as SoftHSM2's files are fine).
std::string SoftHsmAccessHint() {
  const char* env = std::getenv("SOFTHSM2_CONF");
  const std::string conf = env != nullptr && env[0] != '\0' ? env : "/etc/softhsm/softhsm2.conf";
  if (std::string p = AccessProblem(conf, R_OK, "read"); !p.empty()) {
    return absl::StrCat("; ", p, ", the SoftHSM2 configuration: make it readable for this user");
  }
  std::ifstream in(conf);
  std::string line;
  std::string tokendir;
  while (std::getline(in, line)) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (absl::ConsumePrefix(&l, "directories.tokendir")) {
      l = absl::StripAsciiWhitespace(l);
      if (absl::ConsumePrefix(&l, "=")) {
        tokendir = std::string(absl::StripAsciiWhitespace(l));
      }
    }
  }
  if (tokendir.empty()) {
    return "";
  }
  std::vector<std::string> paths = {tokendir};
  if (DIR* d = opendir(tokendir.c_str()); d != nullptr) {
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') {
        paths.push_back(absl::StrCat(tokendir, "/", e->d_name));
      }
    }
    closedir(d);
  }
  for (const std::string& p : paths) {
    if (std::string problem = AccessProblem(p, R_OK | W_OK | X_OK, "use (read, write, search)");
        !problem.empty()) {
      return absl::StrCat("; ", problem, ", in the SoftHSM2 token directory (directories.tokendir "
                          "of ", conf, "): give this user access to the token directory and its "
                          "token subdirectories (chown/chgrp -R, or run the program as their owner)");
    }
  }
  return "";
}

}  // namespace

Pkcs11Backend::Pkcs11Backend(OSSL_LIB_CTX* libctx, Pkcs11Config config)
    : libctx_(libctx), config_(std::move(config)) {}

Pkcs11Backend::~Pkcs11Backend() = default;

absl::StatusOr<std::shared_ptr<Key>> Pkcs11Backend::LoadUri(absl::string_view uri,
                                                            const PassphraseFn& ask) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (recent_ != nullptr && recent_uri_ == uri) {
      return recent_;
    }
  }
  ASSIGN_OR_RETURN(pkcs11::Pkcs11Uri parsed, pkcs11::ParseUri(uri));
  if (parsed.type.has_value() && *parsed.type != "private") {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", parsed.redacted, "' names type=", *parsed.type,
        "; the hwid provider loads private keys (type=private) from tokens"));
  }
  if (!parsed.object.has_value() && !parsed.id.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", parsed.redacted, "' names no key: add object=LABEL or id=%xx.. to the URI"));
  }
  pkcs11::OpenOptions options;
  options.module_path = config_.module_path;
  options.pin_source = config_.pin_source;
  options.ask_pin = ask;
  absl::StatusOr<std::shared_ptr<pkcs11::Token>> opened = pkcs11::Token::Open(parsed, options);
  if (!opened.ok()) {
    return absl::Status(opened.status().code(),
                        absl::StrCat(opened.status().message(), SoftHsmAccessHint()));
  }
  std::shared_ptr<pkcs11::Token> token = std::move(*opened);
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> key, token->FindKey(parsed));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> pub, PublicInLibctx(libctx_, key->public_key()));
  std::shared_ptr<Key> out = std::make_shared<Pkcs11Key>(std::move(key), std::move(pub));
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(tokens_, [](const std::weak_ptr<pkcs11::Token>& t) { return t.expired(); });
    tokens_.push_back(token);
    recent_uri_ = std::string(uri);
    recent_ = out;
  }
  return out;
}

absl::StatusOr<std::shared_ptr<Key>> Pkcs11Backend::LoadKeyFile(ByteSpan pem_or_der,
                                                                ByteSpan auth) {
  ASSIGN_OR_RETURN(std::string uri, pkcs11::ParseUriFile(pem_or_der));
  SecureBytes pin(auth.begin(), auth.end());
  PassphraseFn ask;
  if (!pin.empty()) {
    ask = [&pin]() { return pin; };
  }
  return LoadUri(uri, ask);
}

absl::StatusOr<bool> Pkcs11Backend::KeyFileNeedsAuth(ByteSpan pem_or_der) {
  ASSIGN_OR_RETURN(std::string uri, pkcs11::ParseUriFile(pem_or_der));
  (void)uri;
  return false;
}

absl::StatusOr<std::shared_ptr<Key>> Pkcs11Backend::LoadHandle(uint32_t, ByteSpan) {
  return absl::UnimplementedError("PKCS#11 keys are named by pkcs11: URIs, not TPM handles");
}

absl::StatusOr<std::shared_ptr<Key>> Pkcs11Backend::Generate(KeyAlg, ByteSpan) {
  return absl::UnimplementedError(
      "generate token keys with `hwid key create --pkcs11 URI --alg ALG --label NAME`");
}

uint64_t Pkcs11Backend::CommandCount() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& w : tokens_) {
    if (std::shared_ptr<pkcs11::Token> t = w.lock()) {
      n += t->command_count();
    }
  }
  return n;
}

void Pkcs11Backend::UnloadAll() {
  std::lock_guard<std::mutex> lock(mu_);
  recent_.reset();
  recent_uri_.clear();
  for (const auto& w : tokens_) {
    if (std::shared_ptr<pkcs11::Token> t = w.lock()) {
      t->CloseIdleSessions();
    }
  }
}

}  // namespace hwid::provider
