// Tokens: finding the one token a URI names and logging in, listing its keys, generating keys.
#include <libp11.h>
#include <openssl/rand.h>
#include <p11-kit/pkcs11.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/internal.h"
#include "pkcs11/pkcs11.h"

namespace hwid::pkcs11 {
namespace {

constexpr uint8_t kOidP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
constexpr uint8_t kOidP384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

std::string Trim(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) {
    s.pop_back();
  }
  return s;
}

}  // namespace

Token::Token(std::shared_ptr<Module> module, void* slot, unsigned long slot_id, TokenFields fields,
             SecureBytes pin)
    : module_(std::move(module)),
      slot_(slot),
      slot_id_(slot_id),
      fields_(std::move(fields)),
      pin_(std::move(pin)),
      generation_(ForkGeneration()) {}

Token::~Token() {
  if (ModuleUsable() && generation_.load() == ForkGeneration()) {
    for (unsigned long s : idle_) {
      (void)HWID_CK(ck(), C_CloseSession, s);
    }
    if (login_session_ != CK_INVALID_HANDLE) {
      (void)HWID_CK(ck(), C_CloseSession, login_session_);
    }
  }
}

const std::string& Token::module_path() const { return module_->path(); }

std::string Token::Describe() const {
  return absl::StrFormat("token '%s' (slot %lu, module %s)", fields_.label, slot_id_,
                         module_->path());
}

absl::StatusOr<std::shared_ptr<Token>> Token::Open(absl::string_view uri) {
  ASSIGN_OR_RETURN(Pkcs11Uri parsed, ParseUri(uri));
  return Open(parsed);
}

absl::StatusOr<std::shared_ptr<Token>> Token::Open(const Pkcs11Uri& uri,
                                                   const OpenOptions& options) {
  std::string path;
  if (uri.module_path.has_value()) {
    path = *uri.module_path;
  } else if (const char* env = std::getenv("HWID_PKCS11_MODULE"); env != nullptr && *env != 0) {
    path = env;
  } else if (!options.module_path.empty()) {
    path = options.module_path;
  } else {
    path = std::string(DefaultModulePath());
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Module> module, Module::Get(path));
  ASSIGN_OR_RETURN(uint64_t gen, module->CheckFork());
  (void)gen;
  const Ck mck = module->ck();
  std::vector<std::string> seen;
  std::vector<std::pair<PKCS11_SLOT*, std::pair<unsigned long, TokenFields>>> matches;
  for (unsigned int i = 0; i < module->nslots(); ++i) {
    PKCS11_SLOT* slot = &module->slots()[i];
    if (slot->token == nullptr) {
      continue;
    }
    const unsigned long id = PKCS11_get_slotid_from_slot(slot);
    CK_TOKEN_INFO ti;
    if (!HWID_CK(mck, C_GetTokenInfo, id, &ti).ok() || (ti.flags & CKF_TOKEN_INITIALIZED) == 0) {
      continue;
    }
    TokenFields f{Trim(ti.label, sizeof(ti.label)), Trim(ti.manufacturerID, sizeof(ti.manufacturerID)),
                  Trim(ti.model, sizeof(ti.model)), Trim(ti.serialNumber, sizeof(ti.serialNumber))};
    seen.push_back(absl::StrFormat("'%s' (slot %lu, serial %s)", f.label, id, f.serial));
    if (uri.slot_id.has_value() && *uri.slot_id != id) {
      continue;
    }
    if (MatchesToken(uri, f)) {
      matches.push_back({slot, {id, std::move(f)}});
    }
  }
  if (matches.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no token matches '", uri.redacted, "' in module ", path, "; tokens present: ",
        seen.empty() ? std::string("none") : absl::StrJoin(seen, ", ")));
  }
  if (matches.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        matches.size(), " tokens match '", uri.redacted, "' (", absl::StrJoin(seen, ", "),
        "); add token=, serial= or slot-id= to the URI"));
  }
  SecureBytes pin;
  bool have_pin = false;
  if (uri.pin_value.has_value()) {
    pin = *uri.pin_value;
    have_pin = true;
  } else if (uri.pin_source.has_value()) {
    ASSIGN_OR_RETURN(pin, ReadPinSource(*uri.pin_source));
    have_pin = true;
  } else if (const char* env = std::getenv("HWID_PKCS11_PIN"); env != nullptr) {
    pin.assign(env, env + std::strlen(env));
    have_pin = true;
  } else if (!options.pin_source.empty()) {
    absl::StatusOr<SecureBytes> p = ReadPinSource(options.pin_source);
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat("pkcs11-pin-source (openssl.cnf): ", p.status().message()));
    }
    pin = std::move(*p);
    have_pin = true;
  }
  auto& m = matches.front();
  std::shared_ptr<Token> token(
      new Token(module, m.first, m.second.first, std::move(m.second.second), std::move(pin)));
  if (const char* env = std::getenv("HWID_PKCS11_SESSION_COPY"); env != nullptr && *env != 0) {
    token->session_copies_ = std::string_view(env) != "0";
  }
  if (!have_pin && options.ask_pin) {
    // Ask only when a login is needed and nobody in this process has logged in yet.
    CK_TOKEN_INFO ti;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    bool need = HWID_CK(mck, C_GetTokenInfo, m.second.first, &ti).ok() &&
                (ti.flags & CKF_LOGIN_REQUIRED) != 0;
    if (need && HWID_CK(mck, C_OpenSession, m.second.first, CKF_SERIAL_SESSION, nullptr, nullptr,
                        &s).ok()) {
      need = !UserLoggedIn(mck, s);
      (void)HWID_CK(mck, C_CloseSession, s);
    }
    if (need) {
      token->pin_ = options.ask_pin();
      have_pin = !token->pin_.empty();
    }
  }
  if (have_pin) {
    RETURN_IF_ERROR(token->Login());
  }
  return token;
}

absl::StatusOr<std::vector<KeyInfo>> Token::ListKeys() {
  // Our own C_FindObjects, not libp11's PKCS11_enumerate_keys: libp11 keeps the keys it listed
  // once in the shared slot and serves them again, so a destroyed or relabelled key would still
  // be listed (with its old label).
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, AcquireSession());
  Lease lease(this, s);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_BBOOL on_token = CK_TRUE;  // not the session copies keys of this process sign with
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &on_token, sizeof(on_token)}};
  absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> handles =
      FindObjects(ck, s, tmpl, 2, 0, absl::StrCat("private keys on ", Describe()));
  RETURN_IF_ERROR(lease.CheckStatus(handles.status()));
  std::vector<KeyInfo> out;
  for (CK_OBJECT_HANDLE h : *handles) {
    // Key type and the lengths of CKA_ID and CKA_LABEL, then their values: two calls per key.
    const std::string what = absl::StrFormat("private key object 0x%lx on %s", h, Describe());
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a[3] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_ID, nullptr, 0},
                         {CKA_LABEL, nullptr, 0}};
    CkResult r = lease.Check(HWID_CK(ck, C_GetAttributeValue, s, h, a, 3));
    if (r.rv() == CKR_OBJECT_HANDLE_INVALID) {
      continue;  // destroyed since the search
    }
    RETURN_IF_ERROR(r.Status("CKA_KEY_TYPE, CKA_ID, CKA_LABEL", what));
    if (kt != CKK_RSA && kt != CKK_EC) {
      continue;  // hwid signs with EC and RSA keys only
    }
    KeyInfo k;
    k.type = kt == CKK_RSA ? KeyType::kRsa : KeyType::kEc;
    k.id.resize(a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[1].ulValueLen);
    k.label.resize(a[2].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[2].ulValueLen);
    CK_ATTRIBUTE v[2] = {{CKA_ID, k.id.data(), k.id.size()},
                         {CKA_LABEL, k.label.data(), k.label.size()}};
    r = lease.Check(HWID_CK(ck, C_GetAttributeValue, s, h, v, 2));
    if (r.rv() == CKR_OBJECT_HANDLE_INVALID) {
      continue;
    }
    RETURN_IF_ERROR(r.Status("CKA_ID, CKA_LABEL", what));
    k.uri = FormatObjectUri(fields_, k.label, k.id, "private");
    out.push_back(std::move(k));
  }
  return out;
}

absl::StatusOr<std::shared_ptr<Key>> Token::GenerateKey(KeyAlg alg, absl::string_view label) {
  if (label.empty()) {
    return absl::InvalidArgumentError("generating a PKCS#11 key: the label must not be empty");
  }
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, OpenWriteSession("generating a key"));
  SessionCloser closer{ck, s};
  const std::string lbl(label);
  absl::StatusOr<unsigned long> existing =
      FindPrivateKeyHandle(s, lbl, std::nullopt, absl::StrCat("labelled '", lbl, "'"));
  if (existing.ok() || existing.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::AlreadyExistsError(absl::StrCat("a private key labelled '", lbl,
                                                 "' already exists on ", Describe()));
  }
  Bytes id(16);
  if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1) {
    return OpenSslError("RAND_bytes for CKA_ID");
  }
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ULONG modulus_bits = alg == KeyAlg::kRsa4096 ? 4096 : alg == KeyAlg::kRsa3072 ? 3072 : 2048;
  uint8_t exponent[] = {0x01, 0x00, 0x01};
  const bool ec = alg == KeyAlg::kEcP256 || alg == KeyAlg::kEcP384;
  Bytes ec_params = alg == KeyAlg::kEcP384 ? Bytes(std::begin(kOidP384), std::end(kOidP384))
                                           : Bytes(std::begin(kOidP256), std::end(kOidP256));
  std::vector<CK_ATTRIBUTE> pub = {
      {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_PRIVATE, &no, sizeof(no)},
      {CKA_VERIFY, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &no, sizeof(no)},
      {CKA_WRAP, &no, sizeof(no)},
      {CKA_LABEL, const_cast<char*>(lbl.data()), lbl.size()},
      {CKA_ID, id.data(), id.size()},
  };
  if (ec) {
    pub.push_back({CKA_EC_PARAMS, ec_params.data(), ec_params.size()});
  } else {
    pub.push_back({CKA_MODULUS_BITS, &modulus_bits, sizeof(modulus_bits)});
    pub.push_back({CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)});
  }
  std::vector<CK_ATTRIBUTE> priv = {
      {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_SIGN, &yes, sizeof(yes)},
      {CKA_DECRYPT, &no, sizeof(no)},
      {CKA_UNWRAP, &no, sizeof(no)},
      {CKA_DERIVE, &no, sizeof(no)},
      {CKA_LABEL, const_cast<char*>(lbl.data()), lbl.size()},
      {CKA_ID, id.data(), id.size()},
  };
  CK_MECHANISM mech{ec ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pubh = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE privh = CK_INVALID_HANDLE;
  RETURN_IF_ERROR(HWID_CK(ck, C_GenerateKeyPair, s, &mech, pub.data(), pub.size(), priv.data(),
                          priv.size(), &pubh, &privh)
                      .Status(KeyAlgName(alg), Describe()));
  return MakeKey(s, privh);
}

absl::StatusOr<std::shared_ptr<Key>> LoadKey(absl::string_view uri) {
  ASSIGN_OR_RETURN(Pkcs11Uri parsed, ParseUri(uri));
  ASSIGN_OR_RETURN(std::shared_ptr<Token> token, Token::Open(parsed));
  return token->FindKey(parsed);
}

}  // namespace hwid::pkcs11
