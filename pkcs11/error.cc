#include "pkcs11/error.h"

#include <p11-kit/pkcs11.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hwid::pkcs11 {
namespace {

struct CkrInfo {
  unsigned long rv;
  const char* name;
  absl::StatusCode code;
  const char* hint;
};

constexpr CkrInfo kCkrTable[] = {
    {CKR_CANCEL, "CKR_CANCEL", absl::StatusCode::kAborted, nullptr},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY", absl::StatusCode::kResourceExhausted, nullptr},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID", absl::StatusCode::kNotFound,
     "the slot does not exist (token removed?)"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR", absl::StatusCode::kInternal, nullptr},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED", absl::StatusCode::kInternal, nullptr},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD", absl::StatusCode::kInvalidArgument, nullptr},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE", absl::StatusCode::kPermissionDenied,
     "the token refuses to reveal a sensitive attribute"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID", absl::StatusCode::kInvalidArgument,
     nullptr},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID",
     absl::StatusCode::kInvalidArgument, nullptr},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE", absl::StatusCode::kInvalidArgument, nullptr},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR", absl::StatusCode::kUnavailable,
     "the token reported a device error"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY", absl::StatusCode::kResourceExhausted,
     "the token is out of memory"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED", absl::StatusCode::kUnavailable,
     "the token was removed"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED", absl::StatusCode::kUnimplemented,
     nullptr},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID", absl::StatusCode::kNotFound,
     "the key object is gone from the token"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT", absl::StatusCode::kInvalidArgument,
     "the key type does not fit the mechanism"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED",
     absl::StatusCode::kPermissionDenied, "the key is not allowed to sign (CKA_SIGN false)"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID", absl::StatusCode::kUnimplemented,
     "the token does not support this mechanism"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID",
     absl::StatusCode::kInvalidArgument, nullptr},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID", absl::StatusCode::kNotFound,
     "the object is gone from the token"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE", absl::StatusCode::kInternal, nullptr},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED", absl::StatusCode::kInternal,
     nullptr},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT", absl::StatusCode::kPermissionDenied,
     "the user PIN is wrong; hwid does not retry (tokens lock after a few failures)"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID", absl::StatusCode::kPermissionDenied,
     "the PIN has characters the token does not accept"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE", absl::StatusCode::kPermissionDenied,
     "the PIN is too short or too long for this token"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED", absl::StatusCode::kPermissionDenied,
     "the PIN has expired: change it with the token's tools"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED", absl::StatusCode::kPermissionDenied,
     "the user PIN is locked: the security officer must reset it"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED", absl::StatusCode::kUnavailable, nullptr},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT", absl::StatusCode::kResourceExhausted,
     "the token has no free sessions"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID", absl::StatusCode::kUnavailable,
     "the session is gone (token removed or module re-initialised)"},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY", absl::StatusCode::kFailedPrecondition,
     nullptr},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE", absl::StatusCode::kInvalidArgument,
     nullptr},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT", absl::StatusCode::kInvalidArgument,
     nullptr},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT", absl::StatusCode::kUnavailable,
     "no token in the slot (removed?)"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED", absl::StatusCode::kUnavailable,
     nullptr},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED", absl::StatusCode::kFailedPrecondition,
     "the token is write-protected"},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN", absl::StatusCode::kInternal,
     nullptr},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN", absl::StatusCode::kPermissionDenied,
     "log in first: give the PIN with pin-value/pin-source in the URI or HWID_PKCS11_PIN"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED",
     absl::StatusCode::kFailedPrecondition, "the token's user PIN was never set"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID", absl::StatusCode::kInvalidArgument, nullptr},
    {CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID", absl::StatusCode::kUnimplemented,
     "the token does not support this curve"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL", absl::StatusCode::kInternal, nullptr},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED", absl::StatusCode::kUnavailable,
     "the PKCS#11 module was finalised (C_Finalize) underneath this process"},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED",
     absl::StatusCode::kInternal, nullptr},
};

}  // namespace

std::string CkrName(unsigned long rv) {
  for (const CkrInfo& i : kCkrTable) {
    if (i.rv == rv) {
      return i.name;
    }
  }
  return absl::StrFormat("CKR_0x%lx", rv);
}

absl::Status CkrError(unsigned long rv, absl::string_view operation, absl::string_view object) {
  if (rv == CKR_OK) {
    return absl::OkStatus();
  }
  absl::StatusCode code = absl::StatusCode::kInternal;
  const char* hint = nullptr;
  std::string name = absl::StrFormat("CKR_0x%lx", rv);
  for (const CkrInfo& i : kCkrTable) {
    if (i.rv == rv) {
      code = i.code;
      hint = i.hint;
      name = i.name;
      break;
    }
  }
  std::string msg = absl::StrCat(operation, object.empty() ? "" : " on ", object,
                                 " failed: ", name, absl::StrFormat(" (0x%lx)", rv));
  if (hint != nullptr) {
    absl::StrAppend(&msg, "; ", hint);
  }
  return absl::Status(code, msg);
}

}  // namespace hwid::pkcs11
