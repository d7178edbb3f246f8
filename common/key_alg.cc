#include "common/key_alg.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace hwid {

const char* KeyAlgName(KeyAlg alg) {
  switch (alg) {
    case KeyAlg::kEcP256:
      return "ec-p256";
    case KeyAlg::kEcP384:
      return "ec-p384";
    case KeyAlg::kRsa2048:
      return "rsa-2048";
    case KeyAlg::kRsa3072:
      return "rsa-3072";
    case KeyAlg::kRsa4096:
      return "rsa-4096";
  }
  return "unknown";
}

absl::StatusOr<KeyAlg> ParseKeyAlg(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (KeyAlg a : {KeyAlg::kEcP256, KeyAlg::kEcP384, KeyAlg::kRsa2048, KeyAlg::kRsa3072,
                   KeyAlg::kRsa4096}) {
    if (lower == KeyAlgName(a)) {
      return a;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown key algorithm \"", name, "\" (valid: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096)"));
}

}  // namespace hwid
