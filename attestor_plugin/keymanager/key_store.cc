#include "attestor_plugin/keymanager/key_store.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"
#include "common/ossl.h"

namespace hwid::keymanager {

absl::StatusOr<KeyAlg> KeyAlgOf(const EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &len) != 1) {
      return absl::InvalidArgumentError("EC key without a named curve");
    }
    const std::string g(group, len);
    if (g == "prime256v1" || g == "P-256") {
      return KeyAlg::kEcP256;
    }
    if (g == "secp384r1" || g == "P-384") {
      return KeyAlg::kEcP384;
    }
    return absl::InvalidArgumentError(absl::StrCat("EC key on curve ", g,
                                                   " (SPIRE knows P-256 and P-384 only)"));
  }
  if (EVP_PKEY_is_a(key, "RSA")) {
    switch (EVP_PKEY_get_bits(key)) {
      case 2048:
        return KeyAlg::kRsa2048;
      case 3072:
        return KeyAlg::kRsa3072;
      case 4096:
        return KeyAlg::kRsa4096;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("RSA key of ", EVP_PKEY_get_bits(key), " bits"));
    }
  }
  return absl::InvalidArgumentError("neither an EC nor an RSA key");
}

absl::StatusOr<SignParams> SignParamsFor(absl::string_view id, KeyAlg alg, ByteSpan digest,
                                         const SignRequest& request) {
  const bool ec = alg == KeyAlg::kEcP256 || alg == KeyAlg::kEcP384;
  if (ec && request.pss) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", id, "\": RSA-PSS options were given for an EC key"));
  }
  SignParams params;
  params.scheme = ec            ? SignScheme::kEcdsa
                  : request.pss ? SignScheme::kRsaPss
                                : SignScheme::kRsaPkcs1;
  params.hash = request.hash;
  absl::Status st = CheckSignRequest(ec ? KeyType::kEc : KeyType::kRsa, digest, params);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("key \"", id, "\": ", st.message()));
  }
  return params;
}

absl::Status DeviceError(const absl::Status& st, absl::string_view what) {
  if (st.ok()) {
    return st;
  }
  const std::string msg = absl::StrCat(what, ": ", st.message());
  switch (st.code()) {
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return absl::UnavailableError(msg);
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::Status(st.code(), msg);
  }
}

}  // namespace hwid::keymanager
