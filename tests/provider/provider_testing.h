// Helpers for the in-process provider tests (provider_test, provider_pkcs11_test): hwid.so loaded
// into a private OSSL_LIB_CTX, OpenSSL's error queue as text, a self-signed certificate and one
// TLS handshake over a BIO pair.
//
// Needs HWID_PROVIDER_DIR (the directory holding hwid.so) as a compile definition.
#ifndef HWID_TESTS_PROVIDER_PROVIDER_TESTING_H_
#define HWID_TESTS_PROVIDER_PROVIDER_TESTING_H_

#include <openssl/provider.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/ossl.h"

namespace hwid {

template <>
struct internal::OsslDeleter<SSL_CTX> {
  void operator()(SSL_CTX* p) const noexcept { SSL_CTX_free(p); }
};
template <>
struct internal::OsslDeleter<SSL> {
  void operator()(SSL* p) const noexcept { SSL_free(p); }
};

namespace testing {

// Errors drains the calling thread's OpenSSL error queue into one string (reason + data), one
// line per entry.
std::string Errors();

// Ctx is a private library context with the default provider and then hwid (the order documented
// for TLS, docs/provider.md).
class Ctx {
 public:
  // New loads default, then hwid from HWID_PROVIDER_DIR. With `hwid_section_extra` non-empty
  // ("key = value\n" lines, e.g. "tcti = ...\n"), hwid is configured by an openssl.cnf whose hwid
  // section holds those lines (module = HWID_PROVIDER_DIR/hwid.so, then them, then activate = 1),
  // loaded into the context from a temporary file that is removed again. Returns nullptr when a
  // provider does not load (the reason is on the OpenSSL error queue).
  static std::unique_ptr<Ctx> New(const std::string& hwid_section_extra = "");
  ~Ctx();
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;

  OSSL_LIB_CTX* get() const { return ctx_; }
  OSSL_PROVIDER* hwid() const { return hwid_; }

  // Param reads hwid's uint64 provider parameter `name` (a counter); EXPECTs the read to work.
  uint64_t Param(const char* name) const;
  // Commands is Param("hwid-tpm-commands").
  uint64_t Commands() const { return Param("hwid-tpm-commands"); }

 private:
  Ctx() = default;
  OSSL_LIB_CTX* ctx_ = nullptr;
  OSSL_PROVIDER* default_ = nullptr;
  OSSL_PROVIDER* hwid_ = nullptr;
};

// SelfSigned makes a certificate (v3, serial `serial`, valid from a minute ago for an hour,
// subject = issuer = CN=`cn`) for `key`, signed with SHA-256 by `key` in `ctx`. nullptr on
// failure (the reason is on the OpenSSL error queue).
OsslPtr<X509> SelfSigned(OSSL_LIB_CTX* ctx, EVP_PKEY* key, const char* cn, long serial = 1);

// Handshake runs one TLS handshake between `server` and `client` over a new BIO pair (owned by
// the SSL objects afterwards). False when either side fails or it takes more than 100 rounds.
bool Handshake(SSL* server, SSL* client);

// ToPem writes `k` as a PEM private key (whatever the key's provider encodes); "" on failure.
std::string ToPem(EVP_PKEY* k);

}  // namespace testing
}  // namespace hwid

#endif  // HWID_TESTS_PROVIDER_PROVIDER_TESTING_H_
