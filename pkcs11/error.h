// Translation of PKCS#11 CK_RV codes into absl::Status: the one place a PKCS#11 return code
// becomes an operator-readable error.
#ifndef HWID_PKCS11_ERROR_H_
#define HWID_PKCS11_ERROR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace hwid::pkcs11 {

// CkrName returns the spec name of a CK_RV ("CKR_PIN_INCORRECT"), or "CKR_0x<hex>" when unknown.
std::string CkrName(unsigned long rv);

// CkrError returns OkStatus for CKR_OK; otherwise a Status whose message reads
// "<operation> on <object> failed: <CKR name> (0x<rv>)[; <what to check>]". The status code
// reflects the cause: kPermissionDenied (wrong or locked PIN, not logged in), kNotFound (no such
// slot/object), kUnavailable (token removed, module finalised, device error), kUnimplemented
// (mechanism or function not supported), kInvalidArgument (bad parameters), kInternal otherwise.
absl::Status CkrError(unsigned long rv, absl::string_view operation, absl::string_view object);

}  // namespace hwid::pkcs11

#endif  // HWID_PKCS11_ERROR_H_
