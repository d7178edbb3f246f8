// The key algorithms hwid creates in a TPM or on a PKCS#11 token (one vocabulary for both
// backends and the CLI).
#ifndef HWID_COMMON_KEY_ALG_H_
#define HWID_COMMON_KEY_ALG_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hwid {

enum class KeyAlg { kEcP256, kEcP384, kRsa2048, kRsa3072, kRsa4096 };

// ParseKeyAlg parses "ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096" (case-insensitive);
// InvalidArgument naming the input and listing the valid names otherwise.
absl::StatusOr<KeyAlg> ParseKeyAlg(absl::string_view name);
// KeyAlgName returns the name ParseKeyAlg accepts.
const char* KeyAlgName(KeyAlg alg);

}  // namespace hwid

#endif  // HWID_COMMON_KEY_ALG_H_
