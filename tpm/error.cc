#include "tpm/error.h"

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tpm2_types.h>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hwid::tpm {

TSS2_RC TpmRcBase(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER) {
    return rc;
  }
  TSS2_RC code = rc & 0xffff;
  if ((code & TPM2_RC_FMT1) != 0) {
    return code & (TPM2_RC_FMT1 | 0x3f);
  }
  if ((code & TPM2_RC_WARN) != 0 || (code & TPM2_RC_VER1) != 0) {
    return code & 0x97f;
  }
  return code;
}

namespace {

struct Classified {
  absl::StatusCode code;
  const char* hint;
};

Classified Classify(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TCTI_RC_LAYER || layer == TSS2_RESMGR_RC_LAYER) {
    return {absl::StatusCode::kUnavailable,
            "the TPM did not answer: check the TCTI (HWID_TCTI or tcti=), that the device, "
            "resource manager or swtpm is running and reachable, and permissions on /dev/tpmrm0"};
  }
  if (layer == TSS2_ESAPI_RC_LAYER || layer == TSS2_SYS_RC_LAYER || layer == TSS2_MU_RC_LAYER) {
    const TSS2_RC code = rc & 0xffff;
    if (code == TSS2_BASE_RC_IO_ERROR || code == TSS2_BASE_RC_NO_CONNECTION ||
        code == TSS2_BASE_RC_TRY_AGAIN) {
      return {absl::StatusCode::kUnavailable,
              "the TPM connection failed: check that the TPM is reachable"};
    }
    if (code == TSS2_BASE_RC_BAD_VALUE || code == TSS2_BASE_RC_BAD_REFERENCE ||
        code == TSS2_BASE_RC_BAD_SIZE || code == TSS2_BASE_RC_INSUFFICIENT_BUFFER) {
      return {absl::StatusCode::kInvalidArgument, nullptr};
    }
    return {absl::StatusCode::kInternal, nullptr};
  }
  switch (TpmRcBase(rc)) {
    case TPM2_RC_HANDLE:
    case TPM2_RC_REFERENCE_H0:
      return {absl::StatusCode::kNotFound,
              "the handle or NV index does not exist in this TPM (not provisioned, or "
              "evicted/flushed)"};
    case TPM2_RC_AUTH_FAIL:
    case TPM2_RC_BAD_AUTH:
      return {absl::StatusCode::kPermissionDenied,
              "wrong authorization value for the object or hierarchy"};
    case TPM2_RC_LOCKOUT:
      return {absl::StatusCode::kPermissionDenied,
              "the TPM is in dictionary-attack lockout: wait for recovery or reset the DA "
              "counter with lockout authorization"};
    case TPM2_RC_POLICY_FAIL:
      return {absl::StatusCode::kPermissionDenied, "a policy session did not satisfy the object's policy"};
    case TPM2_RC_INTEGRITY:
      return {absl::StatusCode::kPermissionDenied,
              "integrity check failed: the blob was made for another TPM, another parent or "
              "another object, or was altered"};
    case TPM2_RC_OBJECT_MEMORY:
    case TPM2_RC_SESSION_MEMORY:
    case TPM2_RC_OBJECT_HANDLES:
    case TPM2_RC_SESSION_HANDLES:
    case TPM2_RC_MEMORY:
      return {absl::StatusCode::kResourceExhausted,
              "the TPM has no free object or session slots: another process may have leaked "
              "transient objects (tpm2_flushcontext -t) or use a resource manager"};
    case TPM2_RC_NV_SPACE:
      return {absl::StatusCode::kResourceExhausted, "the TPM's NV space is full"};
    case TPM2_RC_NV_DEFINED:
      return {absl::StatusCode::kAlreadyExists,
              "the persistent handle or NV index is already in use"};
    case TPM2_RC_RETRY:
    case TPM2_RC_YIELDED:
    case TPM2_RC_TESTING:
      return {absl::StatusCode::kUnavailable, "the TPM asked to retry later"};
    case TPM2_RC_INITIALIZE:
      return {absl::StatusCode::kFailedPrecondition,
              "the TPM was not started (TPM2_Startup missing)"};
    case TPM2_RC_FAILURE:
      return {absl::StatusCode::kUnavailable, "the TPM is in failure mode"};
    case TPM2_RC_HIERARCHY:
      return {absl::StatusCode::kFailedPrecondition, "the hierarchy is disabled"};
    case TPM2_RC_VALUE:
    case TPM2_RC_SIZE:
    case TPM2_RC_SCHEME:
    case TPM2_RC_HASH:
    case TPM2_RC_CURVE:
    case TPM2_RC_KEY_SIZE:
    case TPM2_RC_ATTRIBUTES:
    case TPM2_RC_TYPE:
    case TPM2_RC_SYMMETRIC:
    case TPM2_RC_KDF:
    case TPM2_RC_RANGE:
    case TPM2_RC_SELECTOR:
    case TPM2_RC_INSUFFICIENT:
    case TPM2_RC_KEY:
    case TPM2_RC_ASYMMETRIC:
      return {absl::StatusCode::kInvalidArgument,
              "the TPM rejected a parameter: check that it supports this algorithm, curve or key "
              "size"};
    default:
      return {absl::StatusCode::kInternal, nullptr};
  }
}

}  // namespace

absl::Status TssError(TSS2_RC rc, absl::string_view operation, absl::string_view object) {
  if (rc == TSS2_RC_SUCCESS) {
    return absl::OkStatus();
  }
  Classified c = Classify(rc);
  std::string msg = absl::StrCat(operation);
  if (!object.empty()) {
    absl::StrAppend(&msg, " on ", object);
  }
  absl::StrAppend(&msg, " failed: ", absl::StrFormat("0x%x", rc), " (", Tss2_RC_Decode(rc), ")");
  if (c.hint != nullptr) {
    absl::StrAppend(&msg, "; hint: ", c.hint);
  }
  return absl::Status(c.code, msg);
}

}  // namespace hwid::tpm
