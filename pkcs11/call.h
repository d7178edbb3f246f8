// Internal to pkcs11/: the one chokepoint for calls into a PKCS#11 module's CK_FUNCTION_LIST
// (the idea of latchset/pkcs11-provider's interface.pre, without the code generator).
//
// Every C_* call in pkcs11/ is written HWID_CK(ck, C_Name, args...). The call
//   * refuses to enter the module once the process is exiting (see ModuleUsable in internal.h:
//     the module's own static destructors may already have run) and reports
//     CKR_CRYPTOKI_NOT_INITIALIZED instead,
//   * charges one command to the counter of the Ck it goes through (Token::command_count()),
//   * returns a CkResult: the CK_RV plus the function's name, so a caller either looks at the code
//     (retry on CKR_KEY_HANDLE_INVALID, drop a broken session, ...) or turns it into the one
//     Status vocabulary with .Status(object) / .Status(detail, object), which runs CkrError
//     (pkcs11/error.h) with the operation and the object named. Messages are built only on failure:
//     C_SignInit + C_Sign are the per-signature hot path.
//
// `grep -n -- '->C_' pkcs11/*.cc` finds no call outside this header.
#ifndef HWID_PKCS11_CALL_H_
#define HWID_PKCS11_CALL_H_

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "pkcs11/error.h"

namespace hwid::pkcs11 {

// ModuleUsable is false once exit() began (defined in module.cc): no call may enter a module then.
bool ModuleUsable();

// CkResult is the outcome of one C_* call.
class [[nodiscard]] CkResult {
 public:
  constexpr CkResult(CK_RV rv, const char* function) : rv_(rv), function_(function) {}

  CK_RV rv() const { return rv_; }
  bool ok() const { return rv_ == CKR_OK; }
  // function is the PKCS#11 function's name ("C_Sign").
  const char* function() const { return function_; }

  // Status is OkStatus for CKR_OK; otherwise CkrError(rv, "<function>[ (<detail>)]", object):
  // "C_SignInit (CKM_ECDSA) on PKCS#11 key 'k' ... failed: CKR_... (0x..); <hint>".
  absl::Status Status(absl::string_view object) const { return Status("", object); }
  absl::Status Status(absl::string_view detail, absl::string_view object) const {
    if (ok()) {
      return absl::OkStatus();
    }
    return CkrError(rv_, detail.empty() ? std::string(function_)
                                        : absl::StrCat(function_, " (", detail, ")"),
                    object);
  }

 private:
  CK_RV rv_;
  const char* function_;
};

// Ck is a module's function list plus the counter its calls are charged to (null: not counted;
// module loading and token discovery happen before there is a Token to charge).
class Ck {
 public:
  Ck(CK_FUNCTION_LIST* fl, std::atomic<uint64_t>* counter) : fl_(fl), counter_(counter) {}

  // Call invokes fl->*Function(args...) (use HWID_CK, which names the function).
  template <auto Function, typename... Args>
  CkResult Call(const char* name, Args&&... args) const {
    if (!ModuleUsable()) {
      return CkResult(CKR_CRYPTOKI_NOT_INITIALIZED, name);
    }
    if (counter_ != nullptr) {
      counter_->fetch_add(1, std::memory_order_relaxed);
    }
    return CkResult((fl_->*Function)(std::forward<Args>(args)...), name);
  }

 private:
  CK_FUNCTION_LIST* fl_;
  std::atomic<uint64_t>* counter_;
};

}  // namespace hwid::pkcs11

// HWID_CK(ck, C_Name, args...) calls C_Name through `ck` (see the file comment).
#define HWID_CK(ck, function, ...) \
  (ck).Call<&CK_FUNCTION_LIST::function>(#function, __VA_ARGS__)

#endif  // HWID_PKCS11_CALL_H_
