// OpenSSL ownership and error translation. Every OpenSSL object hwid creates is owned by an
// OsslPtr<T> from the line it is born; nothing calls *_free by hand.
#ifndef HWID_COMMON_OSSL_H_
#define HWID_COMMON_OSSL_H_

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"

namespace hwid {
namespace internal {
template <typename T>
struct OsslDeleter;

#define HWID_OSSL_DELETER(type, free_fn)                 \
  template <>                                            \
  struct OsslDeleter<type> {                             \
    void operator()(type* p) const noexcept { free_fn(p); } \
  }

HWID_OSSL_DELETER(BIO, BIO_free_all);
HWID_OSSL_DELETER(BIGNUM, BN_clear_free);
HWID_OSSL_DELETER(BN_CTX, BN_CTX_free);
HWID_OSSL_DELETER(EVP_PKEY, EVP_PKEY_free);
HWID_OSSL_DELETER(EVP_PKEY_CTX, EVP_PKEY_CTX_free);
HWID_OSSL_DELETER(EVP_MD_CTX, EVP_MD_CTX_free);
HWID_OSSL_DELETER(EVP_MD, EVP_MD_free);
HWID_OSSL_DELETER(EVP_CIPHER_CTX, EVP_CIPHER_CTX_free);
HWID_OSSL_DELETER(EVP_CIPHER, EVP_CIPHER_free);
HWID_OSSL_DELETER(EVP_MAC, EVP_MAC_free);
HWID_OSSL_DELETER(EVP_MAC_CTX, EVP_MAC_CTX_free);
HWID_OSSL_DELETER(OSSL_PARAM_BLD, OSSL_PARAM_BLD_free);
HWID_OSSL_DELETER(OSSL_PARAM, OSSL_PARAM_free);
HWID_OSSL_DELETER(X509, X509_free);
HWID_OSSL_DELETER(X509_REQ, X509_REQ_free);
HWID_OSSL_DELETER(X509_STORE, X509_STORE_free);
HWID_OSSL_DELETER(X509_STORE_CTX, X509_STORE_CTX_free);
HWID_OSSL_DELETER(ECDSA_SIG, ECDSA_SIG_free);
HWID_OSSL_DELETER(EC_POINT, EC_POINT_free);
HWID_OSSL_DELETER(EC_GROUP, EC_GROUP_free);
HWID_OSSL_DELETER(ASN1_OBJECT, ASN1_OBJECT_free);
HWID_OSSL_DELETER(BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free);
#undef HWID_OSSL_DELETER

template <>
struct OsslDeleter<STACK_OF(X509)> {
  void operator()(STACK_OF(X509) * p) const noexcept { sk_X509_pop_free(p, X509_free); }
};
template <>
struct OsslDeleter<EXTENDED_KEY_USAGE> {
  void operator()(EXTENDED_KEY_USAGE* p) const noexcept {
    sk_ASN1_OBJECT_pop_free(p, ASN1_OBJECT_free);
  }
};
template <>
struct OsslDeleter<GENERAL_NAMES> {
  void operator()(GENERAL_NAMES* p) const noexcept { GENERAL_NAMES_free(p); }
};
}  // namespace internal

// OsslPtr<T> owns one OpenSSL object and frees it with the matching *_free function.
template <typename T>
using OsslPtr = std::unique_ptr<T, internal::OsslDeleter<T>>;

// OpenSslError returns an absl::Status with `code` whose message is `what` followed by every
// entry of the calling thread's OpenSSL error queue. The queue is always emptied.
absl::Status OpenSslError(absl::string_view what,
                          absl::StatusCode code = absl::StatusCode::kInternal);

// DrainOpenSslErrors empties the thread's OpenSSL error queue and returns its entries joined by
// "; " (empty when the queue was empty).
std::string DrainOpenSslErrors();

}  // namespace hwid

#endif  // HWID_COMMON_OSSL_H_
