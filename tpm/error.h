// Translation of TSS2_RC into absl::Status: the one place a TPM/TSS return code becomes an
// operator-readable error.
#ifndef HWID_TPM_ERROR_H_
#define HWID_TPM_ERROR_H_

#include <tss2/tss2_common.h>

#include <string_view>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"

namespace hwid::tpm {

// TssError returns OkStatus for TSS2_RC_SUCCESS; otherwise a Status whose message reads
// "<operation> on <object> failed: 0x<rc> (<Tss2_RC_Decode text>)[; hint: <what to check>]".
// The status code reflects the cause: kUnavailable (TPM unreachable, TCTI failure),
// kNotFound (handle/NV index absent), kPermissionDenied (authorization failure, lockout),
// kResourceExhausted (out of object/session memory), kInvalidArgument (bad parameters),
// kInternal otherwise.
absl::Status TssError(TSS2_RC rc, absl::string_view operation, absl::string_view object = "");

// TpmRcBase strips the layer and the handle/session/parameter number from a TPM format-one code
// so it can be compared with TPM2_RC_* constants. Returns rc unchanged for non-TPM layers.
TSS2_RC TpmRcBase(TSS2_RC rc);

}  // namespace hwid::tpm

#endif  // HWID_TPM_ERROR_H_
