// The session pool: pooled read-only sessions leased per operation (Token::Lease, internal.h),
// read/write sessions of their own for token-object changes.
#include <p11-kit/pkcs11.h>

#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/internal.h"
#include "pkcs11/pkcs11.h"

namespace hwid::pkcs11 {

// A session problem that makes the session unusable (dropped from the pool).
bool SessionBroken(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
         rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_DEVICE_ERROR;
}

Ck Token::ck() { return Ck(module_->fl(), &commands_); }

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

absl::StatusOr<unsigned long> Token::OwnSession() {
  CK_SESSION_INFO si;
  if (login_session_ != CK_INVALID_HANDLE &&
      SessionBroken(HWID_CK(ck(), C_GetSessionInfo, login_session_, &si).rv())) {
    login_session_ = CK_INVALID_HANDLE;  // closed underneath us (C_CloseAllSessions, ...)
  }
  if (login_session_ == CK_INVALID_HANDLE) {
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    RETURN_IF_ERROR(HWID_CK(ck(), C_OpenSession, slot_id_, CKF_SERIAL_SESSION, nullptr, nullptr, &s)
                        .Status("the token's own session", Describe()));
    login_session_ = s;
  }
  return login_session_;
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

}  // namespace hwid::pkcs11
