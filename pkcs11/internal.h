// Internal to pkcs11/: what the implementation files share. pkcs11/pkcs11.h is the API.
//
//   module.cc   Module (dlopen, libp11 load + C_Initialize, slots), the fork generation and the
//               exit guard (ModuleUsable)
//   session.cc  the session pool (AcquireSession / ReleaseSession / Lease), read/write sessions
//   login.cc    Login, Relogin, the fork re-initialisation of a token (CheckFork)
//   key.cc      finding keys and reading their attributes, Key (sign, attributes), DestroyKey,
//               RelabelKey
//   token.cc    Token::Open, ListKeys, GenerateKey, LoadKey
//   call.h      the chokepoint every C_* call goes through (HWID_CK)
#ifndef HWID_PKCS11_INTERNAL_H_
#define HWID_PKCS11_INTERNAL_H_

#include <libp11.h>
#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"
#include "pkcs11/call.h"
#include "pkcs11/pkcs11.h"

namespace hwid::pkcs11 {

// ----------------------------------------------------------------------------------------------
// module.cc

// ForkGeneration is bumped in every forked child (pthread_atfork); objects remember the
// generation their handles belong to.
uint64_t ForkGeneration();

struct CtxDeleter {
  void operator()(PKCS11_CTX* c) const noexcept { PKCS11_CTX_free(c); }
};

// Module: one loaded PKCS#11 library per path and process: the libp11 context (which loads the
// library and runs C_Initialize) plus our view of the same library's CK_FUNCTION_LIST.
class Module {
 public:
  // Get returns the process' instance for `path`, loading and initialising it on first use.
  // Modules stay loaded and initialised for the life of the process (never C_Finalize).
  // FailedPrecondition when the library does not load or is not a PKCS#11 module.
  static absl::StatusOr<std::shared_ptr<Module>> Get(const std::string& path);

  Module() = default;
  ~Module();
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
  absl::StatusOr<uint64_t> CheckFork();

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

// ----------------------------------------------------------------------------------------------
// session.cc

// SessionBroken is true for a CK_RV after which the session is unusable (dropped from the pool).
bool SessionBroken(CK_RV rv);

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

// SessionCloser closes a session of its own (not pooled) when it goes out of scope.
struct SessionCloser {
  Ck ck;
  CK_SESSION_HANDLE s;
  ~SessionCloser() { (void)HWID_CK(ck, C_CloseSession, s); }
};

// ----------------------------------------------------------------------------------------------
// login.cc

// UserLoggedIn asks the token whether this process is logged in as the user, through `session`.
// PKCS#11 login state belongs to the process, so only the token knows (another user of the module
// may have logged in or out); false when the session cannot be queried.
bool UserLoggedIn(const Ck& ck, CK_SESSION_HANDLE session);

// ----------------------------------------------------------------------------------------------
// key.cc

// FindObjects runs one object search on session `s`: C_FindObjectsInit with the template, then
// C_FindObjects, then C_FindObjectsFinal (always, once the search started). With max > 0 one
// C_FindObjects asks for up to `max` handles (a bounded lookup, three calls); with max == 0 it is
// repeated until the module returns no more. Errors name `what`.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(const Ck& ck, CK_SESSION_HANDLE s,
                                                          CK_ATTRIBUTE* tmpl, CK_ULONG count,
                                                          size_t max, absl::string_view what);

// IdHex is a CKA_ID for messages ("(none)" when empty).
std::string IdHex(const Bytes& id);

}  // namespace hwid::pkcs11

#endif  // HWID_PKCS11_INTERNAL_H_
