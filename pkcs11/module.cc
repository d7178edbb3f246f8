// Module loading and initialisation (one instance per module path and process), the fork
// generation and the exit guard. See pkcs11/internal.h.
#include <dlfcn.h>
#include <libp11.h>
#include <limits.h>
#include <link.h>
#include <openssl/err.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdlib.h>

#include <cstdlib>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/error.h"
#include "pkcs11/internal.h"
#include "pkcs11/pkcs11.h"

#ifndef HWID_P11KIT_PROXY
#define HWID_P11KIT_PROXY "p11-kit-proxy.so"
#endif

namespace hwid::pkcs11 {

// Fork detection: a pthread_atfork child handler bumps a process-wide generation.

namespace {

std::atomic<uint64_t> g_fork_generation{1};

void OnForkChild() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

void RegisterForkHandler() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, OnForkChild); });
}

// Process exit: a module loaded with dlopen registers its own static destructors (SoftHSM2 does,
// during C_Initialize) after OpenSSL registered OPENSSL_cleanup, so at exit() the module is torn
// down *before* OpenSSL unloads providers and frees the keys still alive. Calls into the module
// from then on crash. An exit handler registered after the first module's C_Initialize runs
// before those destructors; from then on every call is refused (ModuleUsable, pkcs11/call.h) and
// the teardown paths skip the module.
std::atomic<bool> g_process_exiting{false};

void OnProcessExit() { g_process_exiting.store(true, std::memory_order_release); }

void RegisterExitHandler() {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(OnProcessExit); });
}

}  // namespace

uint64_t ForkGeneration() { return g_fork_generation.load(std::memory_order_relaxed); }

// ModuleUsable is false once the process is exiting: no call may enter the module (call.h).
bool ModuleUsable() { return !g_process_exiting.load(std::memory_order_acquire); }

namespace {

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

}  // namespace

Module::~Module() {
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

absl::StatusOr<uint64_t> Module::CheckFork() {
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

}  // namespace hwid::pkcs11
