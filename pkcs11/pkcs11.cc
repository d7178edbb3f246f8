#include "pkcs11/pkcs11.h"

#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdlib.h>
#include <libp11.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/ecdsa_der.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/error.h"

#ifndef HWID_P11KIT_PROXY
#define HWID_P11KIT_PROXY "p11-kit-proxy.so"
#endif

namespace hwid::pkcs11 {

// ----------------------------------------------------------------------------------------------
// Fork detection: a pthread_atfork child handler bumps a process-wide generation.

namespace {

std::atomic<uint64_t> g_fork_generation{1};

void OnForkChild() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

void RegisterForkHandler() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, OnForkChild); });
}

uint64_t ForkGeneration() { return g_fork_generation.load(std::memory_order_relaxed); }

// Process exit: a module loaded with dlopen registers its own static destructors (SoftHSM2 does,
// during C_Initialize) after OpenSSL registered OPENSSL_cleanup, so at exit() the module is torn
// down *before* OpenSSL unloads providers and frees the keys still alive. Calls into the module
// from then on crash. An exit handler registered after the first module's C_Initialize runs
// before those destructors and makes every later teardown path skip the module.
std::atomic<bool> g_process_exiting{false};

void OnProcessExit() { g_process_exiting.store(true, std::memory_order_release); }

void RegisterExitHandler() {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(OnProcessExit); });
}

}  // namespace

// ModuleUsable is false once the process is exiting: no call may enter the module (call.h).
bool ModuleUsable() { return !g_process_exiting.load(std::memory_order_acquire); }

namespace {

// UserLoggedIn asks the token whether this process is logged in as the user, through `session`.
// PKCS#11 login state belongs to the process, so only the token knows (another user of the module
// may have logged in or out); false when the session cannot be queried.
bool UserLoggedIn(const Ck& ck, CK_SESSION_HANDLE session) {
  CK_SESSION_INFO si;
  return HWID_CK(ck, C_GetSessionInfo, session, &si).ok() &&
         (si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS);
}

// SymbolOwner is the resolved path of the shared object defining `sym` ("" when unknown).
std::string SymbolOwner(void* sym) {
  Dl_info info{};
  if (dladdr(sym, &info) == 0 || info.dli_fname == nullptr) {
    return "";
  }
  char buf[PATH_MAX];
  return realpath(info.dli_fname, buf) != nullptr ? std::string(buf) : std::string(info.dli_fname);
}

// LoadedPath is the resolved path of a dlopen handle's object ("" when unknown).
std::string LoadedPath(void* handle) {
  struct link_map* lm = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || lm == nullptr || lm->l_name == nullptr) {
    return "";
  }
  char buf[PATH_MAX];
  return realpath(lm->l_name, buf) != nullptr ? std::string(buf) : std::string(lm->l_name);
}

struct CtxDeleter {
  void operator()(PKCS11_CTX* c) const noexcept { PKCS11_CTX_free(c); }
};

// LibP11Error drains the OpenSSL error queue after a failed libp11 call; libp11 reports a CK_RV
// as the reason of its own error library. Returns the CK_RV (or CKR_GENERAL_ERROR) and the text.
std::pair<CK_RV, std::string> LibP11Error() {
  CK_RV rv = CKR_GENERAL_ERROR;
  const unsigned long e = ERR_peek_last_error();
  if (e != 0 && ERR_GET_LIB(e) == ERR_get_CKR_code()) {
    rv = ERR_GET_REASON(e);
  }
  return {rv, DrainOpenSslErrors()};
}

std::string Trim(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) {
    s.pop_back();
  }
  return s;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// Module: one loaded PKCS#11 library per path and process: the libp11 context (which loads the
// library and runs C_Initialize) plus our view of the same library's CK_FUNCTION_LIST.

class Module {
 public:
  static absl::StatusOr<std::shared_ptr<Module>> Get(const std::string& path);

  Module() = default;
  ~Module() {
    if (slots_ != nullptr) {
      PKCS11_release_all_slots(ctx_.get(), slots_, nslots_);
    }
    if (own_init_ && fl_ != nullptr) {
      (void)HWID_CK(ck(), C_Finalize, nullptr);
    }
    if (ctx_ != nullptr && loaded_) {
      PKCS11_CTX_unload(ctx_.get());
    }
    ctx_.reset();
    if (dl_ != nullptr) {
      dlclose(dl_);
    }
  }
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ck calls the module for module-wide operations (not charged to a token's counter).
  Ck ck() const { return Ck(fl_, nullptr); }
  CK_FUNCTION_LIST* fl() const { return fl_; }
  PKCS11_CTX* ctx() const { return ctx_.get(); }
  PKCS11_SLOT* slots() const { return slots_; }
  unsigned int nslots() const { return nslots_; }
  const std::string& path() const { return path_; }

  // CheckFork runs C_Initialize again (with CKF_OS_LOCKING_OK) in a forked child, once per fork,
  // before libp11 reloads itself (libp11 0.4.12 re-initialises without the locking flag, libp11
  // #500). Returns the generation the module is now valid for.
  absl::StatusOr<uint64_t> CheckFork() {
    const uint64_t gen = ForkGeneration();
    if (generation_.load(std::memory_order_acquire) == gen) {
      return gen;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (generation_.load() == gen) {
      return gen;
    }
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    const CkResult r = HWID_CK(ck(), C_Initialize, &args);
    if (!r.ok() && r.rv() != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      return r.Status("in the forked child", absl::StrCat("module ", path_));
    }
    generation_.store(gen, std::memory_order_release);
    return gen;
  }

 private:
  std::string path_;
  void* dl_ = nullptr;
  CK_FUNCTION_LIST* fl_ = nullptr;
  std::unique_ptr<PKCS11_CTX, CtxDeleter> ctx_;
  bool loaded_ = false;
  PKCS11_SLOT* slots_ = nullptr;
  unsigned int nslots_ = 0;
  bool own_init_ = false;
  std::atomic<uint64_t> generation_{0};
  std::mutex mu_;
};

absl::StatusOr<std::shared_ptr<Module>> Module::Get(const std::string& path) {
  // Modules stay loaded and initialised for the life of the process (never C_Finalize): a module
  // is process-global state shared with whoever else uses it here (the application, libp11's
  // engine, another hwid instance), and finalising it would invalidate their sessions and login.
  static std::mutex registry_mu;
  static auto* registry = new std::map<std::string, std::shared_ptr<Module>>();
  RegisterForkHandler();
  std::lock_guard<std::mutex> lock(registry_mu);
  if (auto it = registry->find(path); it != registry->end()) {
    return it->second;
  }
  auto m = std::make_shared<Module>();
  m->path_ = path;
  // Our own dlopen first: its dlerror() text is the useful part of "module does not load".
  m->dl_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (m->dl_ == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "loading PKCS#11 module '", path, "' failed: ", err != nullptr ? err : "unknown error",
        "; check the URI's module-path or HWID_PKCS11_MODULE"));
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(m->dl_, "C_GetFunctionList"));
  if (get_list == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "loading PKCS#11 module '", path, "' failed: it has no C_GetFunctionList (not a PKCS#11 module)"));
  }
  // dlsym also searches the library's dependencies: a library that merely links p11-kit would
  // silently hand us p11-kit's proxy. The symbol must be the module's own.
  if (std::string owner = SymbolOwner(reinterpret_cast<void*>(get_list)),
      self = LoadedPath(m->dl_);
      !owner.empty() && !self.empty() && owner != self) {
    return absl::FailedPreconditionError(absl::StrCat(
        "loading PKCS#11 module '", path, "' failed: it does not define C_GetFunctionList itself "
        "(found in its dependency ", owner, "); point module-path at the PKCS#11 module"));
  }
  m->ctx_.reset(PKCS11_CTX_new());
  if (m->ctx_ == nullptr) {
    return absl::ResourceExhaustedError("PKCS11_CTX_new: out of memory");
  }
  if (PKCS11_CTX_load(m->ctx_.get(), path.c_str()) != 0) {
    auto [rv, text] = LibP11Error();
    return absl::FailedPreconditionError(absl::StrCat(
        "loading PKCS#11 module '", path, "' with libp11 failed (C_Initialize: ", CkrName(rv),
        ")", text.empty() ? "" : ": ", text, "; for SoftHSM2 check SOFTHSM2_CONF and its tokendir"));
  }
  m->loaded_ = true;
  CK_RV rv = get_list(&m->fl_);
  if (rv != CKR_OK || m->fl_ == nullptr) {
    return CkrError(rv == CKR_OK ? CKR_GENERAL_ERROR : rv, "C_GetFunctionList",
                    absl::StrCat("module ", path));
  }
  // libp11 initialised the module. A module that hands out one function list per caller
  // (p11-kit's proxy does) reports CKR_CRYPTOKI_NOT_INITIALIZED on ours: initialise it too.
  CK_INFO info;
  const CkResult got = HWID_CK(m->ck(), C_GetInfo, &info);
  if (got.rv() == CKR_CRYPTOKI_NOT_INITIALIZED) {
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    RETURN_IF_ERROR(HWID_CK(m->ck(), C_Initialize, &args).Status(absl::StrCat("module ", path)));
    m->own_init_ = true;
  } else {
    RETURN_IF_ERROR(got.Status(absl::StrCat("module ", path)));
  }
  if (PKCS11_enumerate_slots(m->ctx_.get(), &m->slots_, &m->nslots_) != 0) {
    auto [erv, text] = LibP11Error();
    return CkrError(erv, "C_GetSlotList (PKCS11_enumerate_slots)", absl::StrCat("module ", path));
  }
  m->generation_.store(ForkGeneration());
  RegisterExitHandler();  // after C_Initialize: runs before the module's own destructors
  (*registry)[path] = m;
  return m;
}

absl::string_view DefaultModulePath() { return HWID_P11KIT_PROXY; }

// ----------------------------------------------------------------------------------------------
namespace {

constexpr uint8_t kOidP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
constexpr uint8_t kOidP384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

// CkHash is what PKCS#11 needs to know about a digest: the CKM_ hash and CKG_MGF1_ of the PSS
// parameters, and the DER DigestInfo up to the digest octets (CKM_RSA_PKCS signs the DigestInfo).
struct CkHash {
  CK_MECHANISM_TYPE mech;
  CK_RSA_PKCS_MGF_TYPE mgf;
  ByteSpan digest_info_prefix;
};

constexpr uint8_t kDigestInfoSha1[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                       0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
constexpr uint8_t kDigestInfoSha224[] = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x04, 0x05, 0x00, 0x04, 0x1c};
constexpr uint8_t kDigestInfoSha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x01, 0x05, 0x00, 0x04, 0x20};
constexpr uint8_t kDigestInfoSha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x02, 0x05, 0x00, 0x04, 0x30};
constexpr uint8_t kDigestInfoSha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x03, 0x05, 0x00, 0x04, 0x40};

CkHash CkHashFor(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return {CKM_SHA_1, CKG_MGF1_SHA1, kDigestInfoSha1};
    case HashAlg::kSha224:
      return {CKM_SHA224, CKG_MGF1_SHA224, kDigestInfoSha224};
    case HashAlg::kSha256:
      break;
    case HashAlg::kSha384:
      return {CKM_SHA384, CKG_MGF1_SHA384, kDigestInfoSha384};
    case HashAlg::kSha512:
      return {CKM_SHA512, CKG_MGF1_SHA512, kDigestInfoSha512};
  }
  return {CKM_SHA256, CKG_MGF1_SHA256, kDigestInfoSha256};
}

// A session problem that makes the session unusable (dropped from the pool).
bool SessionBroken(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
         rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_DEVICE_ERROR;
}

// GetAttributeBytes reads one variable-length attribute (its length, then its value).
absl::StatusOr<Bytes> GetAttributeBytes(const Ck& ck, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                        CK_ATTRIBUTE_TYPE type, absl::string_view what) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  CkResult r = HWID_CK(ck, C_GetAttributeValue, s, o, &a, 1);
  if (!r.ok()) {
    return r.Status(absl::StrFormat("attribute 0x%lx", type), what);
  }
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    return absl::NotFoundError(
        absl::StrFormat("C_GetAttributeValue(0x%lx) on %s: attribute unavailable", type, what));
  }
  Bytes out(a.ulValueLen);
  a.pValue = out.data();
  r = HWID_CK(ck, C_GetAttributeValue, s, o, &a, 1);
  if (!r.ok()) {
    return r.Status(absl::StrFormat("attribute 0x%lx", type), what);
  }
  out.resize(a.ulValueLen);
  return out;
}

// FindObjects runs one object search on session `s`: C_FindObjectsInit with the template, then
// C_FindObjects, then C_FindObjectsFinal (always, once the search started). With max > 0 one
// C_FindObjects asks for up to `max` handles (a bounded lookup, three calls); with max == 0 it is
// repeated until the module returns no more. Errors name `what`.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(const Ck& ck, CK_SESSION_HANDLE s,
                                                          CK_ATTRIBUTE* tmpl, CK_ULONG count,
                                                          size_t max, absl::string_view what) {
  RETURN_IF_ERROR(HWID_CK(ck, C_FindObjectsInit, s, tmpl, count).Status(what));
  std::vector<CK_OBJECT_HANDLE> out;
  CkResult r(CKR_OK, "C_FindObjects");
  while (true) {
    CK_OBJECT_HANDLE chunk[64];
    const CK_ULONG want = max > 0 ? std::min<size_t>(max, 64) : 64;
    CK_ULONG n = 0;
    r = HWID_CK(ck, C_FindObjects, s, chunk, want, &n);
    if (!r.ok()) {
      break;
    }
    out.insert(out.end(), chunk, chunk + n);
    if (n == 0 || max > 0) {
      break;
    }
  }
  (void)HWID_CK(ck, C_FindObjectsFinal, s);
  RETURN_IF_ERROR(r.Status(what));
  return out;
}

// EcPublicKey builds an EVP_PKEY from CKA_EC_PARAMS (named-curve OID) and CKA_EC_POINT (a DER
// OCTET STRING holding the uncompressed point; raw points are accepted too).
absl::StatusOr<OsslPtr<EVP_PKEY>> EcPublicKey(const Bytes& params, const Bytes& point_attr,
                                              int* bits) {
  const uint8_t* p = params.data();
  OsslPtr<ASN1_OBJECT> oid(d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(params.size())));
  if (oid == nullptr) {
    DrainOpenSslErrors();
    return absl::InvalidArgumentError("CKA_EC_PARAMS is not a named-curve OID");
  }
  const int nid = OBJ_obj2nid(oid.get());
  const char* group = OBJ_nid2sn(nid);
  if (nid == NID_undef || group == nullptr) {
    return absl::UnimplementedError("CKA_EC_PARAMS names a curve OpenSSL does not know");
  }
  Bytes point = point_attr;
  if (!point_attr.empty() && point_attr[0] == 0x04) {
    const uint8_t* q = point_attr.data();
    ASN1_OCTET_STRING* os = d2i_ASN1_OCTET_STRING(nullptr, &q, static_cast<long>(point_attr.size()));
    if (os != nullptr && q == point_attr.data() + point_attr.size()) {
      point.assign(os->data, os->data + os->length);
    }
    ASN1_OCTET_STRING_free(os);
    DrainOpenSslErrors();
  }
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return OpenSslError("building EC public key parameters");
  }
  OsslPtr<OSSL_PARAM> prm(OSSL_PARAM_BLD_to_param(bld.get()));
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (prm == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, prm.get()) <= 0) {
    return OpenSslError("EC public key from CKA_EC_POINT", absl::StatusCode::kInvalidArgument);
  }
  OsslPtr<EVP_PKEY> key(raw);
  *bits = EVP_PKEY_get_bits(key.get());
  return key;
}

absl::StatusOr<OsslPtr<EVP_PKEY>> RsaPublicKey(const Bytes& n, const Bytes& e, int* bits) {
  OsslPtr<BIGNUM> bn(BN_bin2bn(n.data(), static_cast<int>(n.size()), nullptr));
  OsslPtr<BIGNUM> be(BN_bin2bn(e.data(), static_cast<int>(e.size()), nullptr));
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bn == nullptr || be == nullptr || bld == nullptr ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, be.get())) {
    return OpenSslError("building RSA public key parameters");
  }
  OsslPtr<OSSL_PARAM> prm(OSSL_PARAM_BLD_to_param(bld.get()));
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (prm == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, prm.get()) <= 0) {
    return OpenSslError("RSA public key from CKA_MODULUS", absl::StatusCode::kInvalidArgument);
  }
  OsslPtr<EVP_PKEY> key(raw);
  *bits = EVP_PKEY_get_bits(key.get());
  return key;
}

}  // namespace


namespace {

std::string IdHex(const Bytes& id) { return id.empty() ? "(none)" : HexEncode(id); }

}  // namespace

// ----------------------------------------------------------------------------------------------
// Token.

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

Ck Token::ck() { return Ck(module_->fl(), &commands_); }

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

absl::Status Token::Login() {
  const Ck ck = this->ck();
  CK_TOKEN_INFO ti;
  RETURN_IF_ERROR(HWID_CK(ck, C_GetTokenInfo, slot_id_, &ti).Status(Describe()));
  if ((ti.flags & CKF_LOGIN_REQUIRED) == 0) {
    logged_in_ = true;
    return absl::OkStatus();
  }
  // PKCS#11 login state belongs to the process, not to us: another user of the module (or an
  // earlier hwid key) may have logged in, or out. Ask the token, on a session of our own (not the
  // pool: CheckFork calls this while re-initialising).
  // This session stays open for the Token's life: closing an application's last session on a
  // token logs it out (PKCS#11 C_CloseSession).
  if (login_session_ == CK_INVALID_HANDLE) {
    CK_SESSION_HANDLE ls = CK_INVALID_HANDLE;
    RETURN_IF_ERROR(HWID_CK(ck, C_OpenSession, slot_id_, CKF_SERIAL_SESSION, nullptr, nullptr, &ls)
                        .Status("login", Describe()));
    login_session_ = ls;
  }
  const CK_SESSION_HANDLE s = login_session_;
  if (UserLoggedIn(ck, s)) {
    logged_in_ = true;  // already logged in in this process; the PIN is not checked again
    return absl::OkStatus();
  }
  if ((ti.flags & CKF_USER_PIN_LOCKED) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "login to ", Describe(), " refused: the user PIN is locked (CKF_USER_PIN_LOCKED); "
        "the security officer must reset it"));
  }
  if ((ti.flags & CKF_USER_PIN_FINAL_TRY) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "login to ", Describe(), " refused: one more wrong PIN locks the token "
        "(CKF_USER_PIN_FINAL_TRY); check the PIN and log in once with the token's own tools"));
  }
  // Exactly one C_Login per call: a wrong PIN is reported, never retried.
  const CkResult r =
      HWID_CK(ck, C_Login, s, CKU_USER, const_cast<CK_UTF8CHAR*>(pin_.data()), pin_.size());
  if (r.rv() != CKR_USER_ALREADY_LOGGED_IN) {
    RETURN_IF_ERROR(r.Status("user", Describe()));
  }
  logged_in_ = true;
  return absl::OkStatus();
}

absl::Status Token::Relogin() {
  std::lock_guard<std::mutex> lock(mu_);
  logged_in_ = false;
  return Login();
}

absl::Status Token::CheckFork() {
  const uint64_t gen = ForkGeneration();
  if (generation_.load(std::memory_order_acquire) == gen) {
    return absl::OkStatus();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (generation_.load() == gen) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(uint64_t mgen, module_->CheckFork());
  (void)mgen;
  // The parent's session handles mean nothing here; forget them without C_CloseSession.
  idle_.clear();
  login_session_ = CK_INVALID_HANDLE;
  if (logged_in_) {
    logged_in_ = false;
    RETURN_IF_ERROR(Login());
  }
  generation_.store(gen, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<unsigned long> Token::AcquireSession() {
  RETURN_IF_ERROR(CheckFork());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      const unsigned long s = idle_.back();
      idle_.pop_back();
      return s;
    }
  }
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  RETURN_IF_ERROR(HWID_CK(ck(), C_OpenSession, slot_id_, CKF_SERIAL_SESSION, nullptr, nullptr, &s)
                      .Status(Describe()));
  sessions_opened_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

void Token::ReleaseSession(unsigned long session, bool reusable) {
  if (reusable && generation_.load() == ForkGeneration()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleSessions) {
      idle_.push_back(session);
      return;
    }
  }
  (void)HWID_CK(ck(), C_CloseSession, session);
}

void Token::CloseIdleSessions() {
  std::vector<unsigned long> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle.swap(idle_);
  }
  if (!ModuleUsable()) {
    return;  // process exiting: the module may already be gone (see OnProcessExit)
  }
  for (unsigned long s : idle) {
    (void)HWID_CK(ck(), C_CloseSession, s);
  }
}

// Lease returns a pooled session to the pool when it goes out of scope.
class Token::Lease {
 public:
  Lease(Token* t, unsigned long s) : t_(t), s_(s) {}
  ~Lease() { t_->ReleaseSession(s_, reusable_); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  unsigned long get() const { return s_; }
  void Discard() { reusable_ = false; }
  // Check discards the session when the call's CK_RV says it is unusable, and returns the result.
  CkResult Check(CkResult r) {
    if (SessionBroken(r.rv())) {
      reusable_ = false;
    }
    return r;
  }
  // CheckStatus discards the session after an error that says it is unusable (kUnavailable: the
  // session, token or module is gone), and returns the status.
  absl::Status CheckStatus(absl::Status st) {
    if (absl::IsUnavailable(st)) {
      reusable_ = false;
    }
    return st;
  }

 private:
  Token* t_;
  unsigned long s_;
  bool reusable_ = true;
};

absl::StatusOr<unsigned long> Token::FindPrivateKeyHandle(unsigned long session,
                                                          const std::optional<std::string>& label,
                                                          const std::optional<Bytes>& id,
                                                          absl::string_view what) {
  const Ck ck = this->ck();
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof(cls)}};
  if (label.has_value()) {
    tmpl.push_back({CKA_LABEL, const_cast<char*>(label->data()), label->size()});
  }
  if (id.has_value()) {
    tmpl.push_back({CKA_ID, const_cast<uint8_t*>(id->data()), id->size()});
  }
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                   FindObjects(ck, session, tmpl.data(), tmpl.size(), 2, Describe()));
  const size_t n = found.size();
  if (n == 0) {
    // Private keys are invisible without a login; ask the token rather than trusting our flag
    // (another user of the module may have logged the process out).
    const bool user = UserLoggedIn(ck, session);
    return absl::NotFoundError(absl::StrCat(
        "no private key ", what, " on ", Describe(),
        user ? "" : "; not logged in: private keys are visible only after login (give "
                    "pin-value/pin-source in the URI, HWID_PKCS11_PIN or pkcs11-pin-source)"));
  }
  if (n > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "several private keys ", what, " on ", Describe(), "; add id= or object= to the URI"));
  }
  return found[0];
}

absl::StatusOr<std::shared_ptr<Key>> Token::MakeKey(unsigned long session, unsigned long handle) {
  const Ck ck = this->ck();
  const std::string what = absl::StrCat("private key object on ", Describe());
  CK_KEY_TYPE kt = 0;
  CK_ATTRIBUTE a{CKA_KEY_TYPE, &kt, sizeof(kt)};
  RETURN_IF_ERROR(HWID_CK(ck, C_GetAttributeValue, session, handle, &a, 1).Status("CKA_KEY_TYPE", what));
  ASSIGN_OR_RETURN(Bytes id, GetAttributeBytes(ck, session, handle, CKA_ID, what));
  absl::StatusOr<Bytes> label_bytes = GetAttributeBytes(ck, session, handle, CKA_LABEL, what);
  std::string label = label_bytes.ok() ? std::string(label_bytes->begin(), label_bytes->end()) : "";
  OsslPtr<EVP_PKEY> pub;
  int bits = 0;
  KeyType type;
  if (kt == CKK_RSA) {
    type = KeyType::kRsa;
    ASSIGN_OR_RETURN(Bytes n, GetAttributeBytes(ck, session, handle, CKA_MODULUS, what));
    ASSIGN_OR_RETURN(Bytes e, GetAttributeBytes(ck, session, handle, CKA_PUBLIC_EXPONENT, what));
    ASSIGN_OR_RETURN(pub, RsaPublicKey(n, e, &bits));
  } else if (kt == CKK_EC) {
    type = KeyType::kEc;
    // The EC point lives in the public key object with the same CKA_ID.
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id.data(), id.size()}};
    ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> pubs, FindObjects(ck, session, t, 2, 1, what));
    if (pubs.empty()) {
      return absl::NotFoundError(absl::StrCat("EC key '", label, "' (id ", IdHex(id), ") on ",
                                              Describe(),
                                              " has no public key object with the same CKA_ID"));
    }
    ASSIGN_OR_RETURN(Bytes params, GetAttributeBytes(ck, session, pubs[0], CKA_EC_PARAMS, what));
    ASSIGN_OR_RETURN(Bytes point, GetAttributeBytes(ck, session, pubs[0], CKA_EC_POINT, what));
    ASSIGN_OR_RETURN(pub, EcPublicKey(params, point, &bits));
  } else {
    return absl::UnimplementedError(absl::StrFormat(
        "key '%s' on %s has key type 0x%lx; hwid supports CKK_EC and CKK_RSA", label, Describe(), kt));
  }
  std::string uri = FormatObjectUri(fields_, label, id, "private");
  return std::shared_ptr<Key>(new Key(shared_from_this(), handle, type, bits, std::move(pub),
                                      std::move(label), std::move(id), std::move(uri)));
}

absl::StatusOr<std::shared_ptr<Key>> Token::FindKey(absl::string_view uri) {
  ASSIGN_OR_RETURN(Pkcs11Uri parsed, ParseUri(uri));
  return FindKey(parsed);
}

absl::StatusOr<std::shared_ptr<Key>> Token::FindKey(const Pkcs11Uri& uri) {
  if (uri.type.has_value() && *uri.type != "private") {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", uri.redacted, "' names type=", *uri.type, "; hwid signs with type=private objects"));
  }
  if (!uri.object.has_value() && !uri.id.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", uri.redacted, "' names no key: add object=LABEL and/or id=%xx"));
  }
  std::string what = "matching";
  if (uri.object) absl::StrAppend(&what, " object='", *uri.object, "'");
  if (uri.id) absl::StrAppend(&what, " id=", HexEncode(*uri.id));
  ASSIGN_OR_RETURN(unsigned long s, AcquireSession());
  Lease lease(this, s);
  absl::StatusOr<unsigned long> h = FindPrivateKeyHandle(s, uri.object, uri.id, what);
  if (!h.ok()) {
    if (h.status().code() == absl::StatusCode::kUnavailable) {
      lease.Discard();
    }
    return h.status();
  }
  return MakeKey(s, *h);
}

absl::StatusOr<std::vector<KeyInfo>> Token::ListKeys() {
  // Our own C_FindObjects, not libp11's PKCS11_enumerate_keys: libp11 keeps the keys it listed
  // once in the shared slot and serves them again, so a destroyed or relabelled key would still
  // be listed (with its old label).
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, AcquireSession());
  Lease lease(this, s);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl{CKA_CLASS, &cls, sizeof(cls)};
  absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> handles =
      FindObjects(ck, s, &tmpl, 1, 0, absl::StrCat("private keys on ", Describe()));
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

absl::StatusOr<unsigned long> Token::OpenWriteSession(absl::string_view operation) {
  RETURN_IF_ERROR(CheckFork());
  if (!logged_in_) {
    return absl::FailedPreconditionError(absl::StrCat(
        operation, " on ", Describe(), " needs a login: give the PIN with pin-value/"
        "pin-source in the URI or HWID_PKCS11_PIN"));
  }
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  RETURN_IF_ERROR(HWID_CK(ck(), C_OpenSession, slot_id_, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                          nullptr, nullptr, &s)
                      .Status("read/write", Describe()));
  return s;
}

namespace {

// SessionCloser closes a session of its own (not pooled) when it goes out of scope.
struct SessionCloser {
  Ck ck;
  CK_SESSION_HANDLE s;
  ~SessionCloser() { (void)HWID_CK(ck, C_CloseSession, s); }
};

}  // namespace

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

absl::Status Token::CheckSameToken(const Key& key, absl::string_view operation) const {
  if (key.token_->module_ != module_ || key.token_->slot_id_ != slot_id_) {
    return absl::InvalidArgumentError(absl::StrCat(operation, ": ", key.Describe(),
                                                   " was found through another slot or module than ",
                                                   Describe()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<unsigned long>> Token::FindPublicKeyHandles(unsigned long session,
                                                                       const Key& key) {
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof(cls)},
                                    {CKA_ID, const_cast<uint8_t*>(key.id_.data()), key.id_.size()}};
  if (key.id_.empty()) {
    // Without a CKA_ID, "the same CKA_ID" would match every public key without one.
    tmpl.push_back({CKA_LABEL, const_cast<char*>(key.label_.data()), key.label_.size()});
  }
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                   FindObjects(ck(), session, tmpl.data(), tmpl.size(), 16,
                               absl::StrCat("the public key objects of ", key.Describe())));
  return std::vector<unsigned long>(found.begin(), found.end());
}

absl::Status Token::DestroyKey(const Key& key) {
  RETURN_IF_ERROR(CheckSameToken(key, "destroying a key"));
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, OpenWriteSession("destroying a key"));
  SessionCloser closer{ck, s};
  ASSIGN_OR_RETURN(unsigned long privh,
                   FindPrivateKeyHandle(s, key.label_.empty() ? std::nullopt
                                                              : std::optional<std::string>(key.label_),
                                        key.id_, absl::StrCat("with id ", IdHex(key.id_))));
  ASSIGN_OR_RETURN(std::vector<unsigned long> pubs, FindPublicKeyHandles(s, key));
  RETURN_IF_ERROR(HWID_CK(ck, C_DestroyObject, s, privh).Status("private key", key.Describe()));
  for (unsigned long h : pubs) {
    const CkResult r = HWID_CK(ck, C_DestroyObject, s, h);
    if (!r.ok()) {
      const absl::Status st = r.Status("public key", key.Describe());
      return absl::Status(st.code(), absl::StrCat(st.message(), "; the private key is destroyed, "
                                                  "its public key object remains"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Key>> Token::RelabelKey(const Key& key,
                                                       absl::string_view new_label) {
  if (new_label.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("relabelling ", key.Describe(), ": the new label must not be empty"));
  }
  RETURN_IF_ERROR(CheckSameToken(key, "relabelling a key"));
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, OpenWriteSession("relabelling a key"));
  SessionCloser closer{ck, s};
  ASSIGN_OR_RETURN(unsigned long privh,
                   FindPrivateKeyHandle(s, key.label_.empty() ? std::nullopt
                                                              : std::optional<std::string>(key.label_),
                                        key.id_, absl::StrCat("with id ", IdHex(key.id_))));
  const std::string lbl(new_label);
  absl::StatusOr<unsigned long> existing =
      FindPrivateKeyHandle(s, lbl, std::nullopt, absl::StrCat("labelled '", lbl, "'"));
  if ((existing.ok() && *existing != privh) ||
      existing.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::AlreadyExistsError(absl::StrCat("relabelling ", key.Describe(), ": a private key labelled '",
                                                 lbl, "' already exists on ", Describe()));
  }
  if (!existing.ok() && !absl::IsNotFound(existing.status())) {
    return existing.status();
  }
  ASSIGN_OR_RETURN(std::vector<unsigned long> pubs, FindPublicKeyHandles(s, key));
  CK_ATTRIBUTE set{CKA_LABEL, const_cast<char*>(lbl.data()), lbl.size()};
  RETURN_IF_ERROR(HWID_CK(ck, C_SetAttributeValue, s, privh, &set, 1)
                      .Status("CKA_LABEL of the private key", key.Describe()));
  for (unsigned long h : pubs) {
    const CkResult r = HWID_CK(ck, C_SetAttributeValue, s, h, &set, 1);
    if (!r.ok()) {
      CK_ATTRIBUTE undo{CKA_LABEL, const_cast<char*>(key.label_.data()), key.label_.size()};
      const bool undone = HWID_CK(ck, C_SetAttributeValue, s, privh, &undo, 1).ok();
      const absl::Status st = r.Status("CKA_LABEL of the public key", key.Describe());
      return absl::Status(st.code(), absl::StrCat(st.message(), undone
                                                  ? "; the private key keeps its old label"
                                                  : "; the private key is relabelled, its public "
                                                    "key object is not"));
    }
  }
  return MakeKey(s, privh);
}

absl::StatusOr<std::shared_ptr<Key>> LoadKey(absl::string_view uri) {
  ASSIGN_OR_RETURN(Pkcs11Uri parsed, ParseUri(uri));
  ASSIGN_OR_RETURN(std::shared_ptr<Token> token, Token::Open(parsed));
  return token->FindKey(parsed);
}

// ----------------------------------------------------------------------------------------------
// Key.

Key::Key(std::shared_ptr<Token> token, unsigned long handle, hwid::KeyType type, int bits,
         OsslPtr<EVP_PKEY> public_key, std::string label, Bytes id, std::string uri)
    : token_(std::move(token)),
      handle_(handle),
      generation_(ForkGeneration()),
      type_(type),
      bits_(bits),
      public_key_(std::move(public_key)),
      label_(std::move(label)),
      id_(std::move(id)),
      uri_(std::move(uri)) {}

std::string Key::Describe() const {
  return absl::StrFormat("PKCS#11 key '%s' (id %s) on token '%s'", label_, IdHex(id_),
                         token_->fields_.label);
}

absl::StatusOr<unsigned long> Key::Handle(unsigned long session, bool refind) {
  const uint64_t gen = ForkGeneration();
  if (!refind && generation_.load(std::memory_order_acquire) == gen) {
    return handle_.load(std::memory_order_relaxed);
  }
  absl::StatusOr<unsigned long> h = token_->FindPrivateKeyHandle(
      session, label_.empty() ? std::nullopt : std::optional<std::string>(label_), id_,
      absl::StrCat("with id ", IdHex(id_)));
  if (!h.ok()) {
    return absl::Status(h.status().code(),
                        absl::StrCat(Describe(), " is no longer usable: ", h.status().message()));
  }
  handle_.store(*h, std::memory_order_relaxed);
  generation_.store(gen, std::memory_order_release);
  return *h;
}

absl::StatusOr<Bytes> Key::Sign(ByteSpan digest, const hwid::SignParams& params) {
  if (absl::Status st = CheckSignRequest(type_, digest, params); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("signing with ", Describe(), ": ", st.message()));
  }
  const bool is_ec = type_ == KeyType::kEc;
  const CkHash d = CkHashFor(params.hash);
  CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
  CK_RSA_PKCS_PSS_PARAMS pss{};
  Bytes data;
  ByteSpan input = digest;
  const char* mech_name = "CKM_ECDSA";
  if (params.scheme == SignScheme::kRsaPkcs1) {
    mech.mechanism = CKM_RSA_PKCS;
    mech_name = "CKM_RSA_PKCS";
    data.reserve(d.digest_info_prefix.size() + digest.size());
    data.assign(d.digest_info_prefix.begin(), d.digest_info_prefix.end());
    data.insert(data.end(), digest.begin(), digest.end());
    input = data;
  } else if (params.scheme == SignScheme::kRsaPss) {
    const int hlen = static_cast<int>(digest.size());
    const int salt = params.pss_salt_len.value_or(hlen);
    const int max_salt = (bits_ + 7) / 8 - hlen - 2;
    if (salt < 0 || salt > max_salt) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "signing with %s: PSS salt length %d out of range 0..%d", Describe(), salt, max_salt));
    }
    pss.hashAlg = d.mech;
    pss.mgf = d.mgf;
    pss.sLen = static_cast<CK_ULONG>(salt);
    mech = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    mech_name = "CKM_RSA_PKCS_PSS";
  }
  const Ck ck = token_->ck();
  ASSIGN_OR_RETURN(unsigned long s, token_->AcquireSession());
  Token::Lease lease(token_.get(), s);
  ASSIGN_OR_RETURN(unsigned long h, Handle(s, false));
  Bytes sig(is_ec ? 2 * 66 : static_cast<size_t>((bits_ + 7) / 8));
  CK_ULONG sig_len = sig.size();
  CkResult r = lease.Check(HWID_CK(ck, C_SignInit, s, &mech, h));
  if (r.rv() == CKR_KEY_HANDLE_INVALID || r.rv() == CKR_OBJECT_HANDLE_INVALID ||
      r.rv() == CKR_USER_NOT_LOGGED_IN) {
    // Someone else using the module in this process may have logged it out (private objects
    // then vanish): log in again, once, with the key's PIN. The object may also have been
    // re-created or the module re-initialised: look it up once more.
    if (!UserLoggedIn(ck, s) && token_->HasPin()) {
      RETURN_IF_ERROR(token_->Relogin());
    }
    ASSIGN_OR_RETURN(h, Handle(s, true));
    r = lease.Check(HWID_CK(ck, C_SignInit, s, &mech, h));
  }
  // Messages are built only on failure: this is the per-signature hot path.
  if (!r.ok()) {
    return r.Status(mech_name, Describe());
  }
  r = lease.Check(HWID_CK(ck, C_Sign, s, const_cast<uint8_t*>(input.data()), input.size(),
                          sig.data(), &sig_len));
  if (!r.ok()) {
    lease.Discard();  // an operation may still be active on it
    return r.Status(mech_name, Describe());
  }
  sig.resize(sig_len);
  if (!is_ec) {
    return sig;
  }
  // CKM_ECDSA returns r || s; OpenSSL wants a DER ECDSA-Sig-Value.
  if (sig_len == 0 || sig_len % 2 != 0) {
    return absl::InternalError(absl::StrFormat("C_Sign (CKM_ECDSA) with %s returned %u bytes",
                                               Describe(), sig_len));
  }
  const ByteSpan rs(sig.data(), sig_len);
  return EcdsaDerFromRS(rs.subspan(0, sig_len / 2), rs.subspan(sig_len / 2));
}

absl::StatusOr<KeyAttributes> Key::ReadAttributes() {
  ASSIGN_OR_RETURN(unsigned long s, token_->AcquireSession());
  Token::Lease lease(token_.get(), s);
  ASSIGN_OR_RETURN(unsigned long h, Handle(s, false));
  CK_BBOOL v[7] = {};
  CK_ATTRIBUTE a[7] = {
      {CKA_TOKEN, &v[0], 1},     {CKA_PRIVATE, &v[1], 1},
      {CKA_SENSITIVE, &v[2], 1}, {CKA_EXTRACTABLE, &v[3], 1},
      {CKA_ALWAYS_SENSITIVE, &v[4], 1}, {CKA_NEVER_EXTRACTABLE, &v[5], 1},
      {CKA_SIGN, &v[6], 1},
  };
  RETURN_IF_ERROR(lease.Check(HWID_CK(token_->ck(), C_GetAttributeValue, s, h, a, 7))
                      .Status("protection attributes", Describe()));
  KeyAttributes out;
  out.token = v[0] == CK_TRUE;
  out.is_private = v[1] == CK_TRUE;
  out.sensitive = v[2] == CK_TRUE;
  out.extractable = v[3] == CK_TRUE;
  out.always_sensitive = v[4] == CK_TRUE;
  out.never_extractable = v[5] == CK_TRUE;
  out.sign = v[6] == CK_TRUE;
  return out;
}

}  // namespace hwid::pkcs11
