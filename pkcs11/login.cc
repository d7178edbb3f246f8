// Login (one C_Login per call, never retried), login again after someone logged the process out,
// and the re-initialisation of a token in a forked child.
#include <p11-kit/pkcs11.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/internal.h"
#include "pkcs11/pkcs11.h"

namespace hwid::pkcs11 {

bool UserLoggedIn(const Ck& ck, CK_SESSION_HANDLE session) {
  CK_SESSION_INFO si;
  return HWID_CK(ck, C_GetSessionInfo, session, &si).ok() &&
         (si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS);
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
  ASSIGN_OR_RETURN(const CK_SESSION_HANDLE s, OwnSession());
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
  // The parent's session handles mean nothing here; forget them without C_CloseSession (the
  // keys' session copies, held by login_session_, are forgotten by the keys: Key::SigningHandle).
  idle_.clear();
  login_session_ = CK_INVALID_HANDLE;
  if (logged_in_) {
    logged_in_ = false;
    RETURN_IF_ERROR(Login());
  }
  generation_.store(gen, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace hwid::pkcs11
