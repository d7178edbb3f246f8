#include "common/sign.h"

#include <openssl/obj_mac.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace hwid {
namespace {

constexpr HashAlg kAll[] = {HashAlg::kSha1, HashAlg::kSha224, HashAlg::kSha256, HashAlg::kSha384,
                            HashAlg::kSha512};

}  // namespace

const char* HashAlgName(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return "SHA1";
    case HashAlg::kSha224:
      return "SHA224";
    case HashAlg::kSha256:
      return "SHA256";
    case HashAlg::kSha384:
      return "SHA384";
    case HashAlg::kSha512:
      return "SHA512";
  }
  return "unknown";
}

size_t HashAlgSize(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return 20;
    case HashAlg::kSha224:
      return 28;
    case HashAlg::kSha256:
      return 32;
    case HashAlg::kSha384:
      return 48;
    case HashAlg::kSha512:
      return 64;
  }
  return 0;
}

int HashAlgNid(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return NID_sha1;
    case HashAlg::kSha224:
      return NID_sha224;
    case HashAlg::kSha256:
      return NID_sha256;
    case HashAlg::kSha384:
      return NID_sha384;
    case HashAlg::kSha512:
      return NID_sha512;
  }
  return NID_undef;
}

absl::StatusOr<HashAlg> HashAlgFromNid(int nid) {
  for (HashAlg h : kAll) {
    if (HashAlgNid(h) == nid) {
      return h;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("digest ", OBJ_nid2sn(nid), " cannot be used for signing here "
                   "(valid: SHA1, SHA224, SHA256, SHA384, SHA512)"));
}

const EVP_MD* HashAlgMd(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return EVP_sha1();
    case HashAlg::kSha224:
      return EVP_sha224();
    case HashAlg::kSha256:
      return EVP_sha256();
    case HashAlg::kSha384:
      return EVP_sha384();
    case HashAlg::kSha512:
      return EVP_sha512();
  }
  return EVP_sha256();
}

absl::StatusOr<HashAlg> ParseHashAlg(absl::string_view name) {
  std::string n = absl::AsciiStrToUpper(name);
  n = absl::StrReplaceAll(n, {{"SHA2-", "SHA"}, {"SHA-", "SHA"}});
  for (HashAlg h : kAll) {
    if (n == HashAlgName(h)) {
      return h;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown digest \"", name, "\" (valid: SHA1, SHA224, SHA256, SHA384, SHA512)"));
}

const char* SignSchemeName(SignScheme scheme) {
  switch (scheme) {
    case SignScheme::kEcdsa:
      return "ECDSA";
    case SignScheme::kRsaPkcs1:
      return "RSA-PKCS1";
    case SignScheme::kRsaPss:
      return "RSA-PSS";
  }
  return "unknown";
}

absl::Status CheckSignRequest(KeyType type, ByteSpan digest, const SignParams& params) {
  if (digest.size() != HashAlgSize(params.hash)) {
    return absl::InvalidArgumentError(absl::StrCat("a ", HashAlgName(params.hash), " digest has ",
                                                   HashAlgSize(params.hash), " bytes, got ",
                                                   digest.size()));
  }
  const bool ec_scheme = params.scheme == SignScheme::kEcdsa;
  if (ec_scheme != (type == KeyType::kEc)) {
    return absl::InvalidArgumentError(
        absl::StrCat(SignSchemeName(params.scheme), " does not fit an ",
                     type == KeyType::kEc ? "EC" : "RSA", " key"));
  }
  if (params.pss_salt_len.has_value() &&
      (params.scheme != SignScheme::kRsaPss || *params.pss_salt_len < 0)) {
    return absl::InvalidArgumentError("a salt length is only meaningful for RSA-PSS, and >= 0");
  }
  return absl::OkStatus();
}

}  // namespace hwid
