// In-process TLS handshakes for the benchmarks: a self-signed certificate for a key, and one full
// handshake between a server and a client SSL_CTX over a BIO pair (no sockets, no resumption).
#ifndef HWID_BENCH_TLS_LOOP_H_
#define HWID_BENCH_TLS_LOOP_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace hwid::bench {

// SelfSigned returns a one-hour self-signed certificate for `key` (CN=bench), or null.
inline X509* SelfSigned(OSSL_LIB_CTX* ctx, EVP_PKEY* key) {
  X509* x = X509_new_ex(ctx, nullptr);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("bench"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  if (X509_sign(x, key, EVP_sha256()) <= 0) {
    X509_free(x);
    return nullptr;
  }
  return x;
}

// Handshake runs one full handshake between new SSL objects of `sctx` and `cctx`; true when both
// sides completed it.
inline bool Handshake(SSL_CTX* sctx, SSL_CTX* cctx) {
  SSL* s = SSL_new(sctx);
  SSL* c = SSL_new(cctx);
  BIO* sb = nullptr;
  BIO* cb = nullptr;
  BIO_new_bio_pair(&sb, 0, &cb, 0);
  SSL_set_bio(s, sb, sb);
  SSL_set_bio(c, cb, cb);
  SSL_set_accept_state(s);
  SSL_set_connect_state(c);
  bool sd = false, cd = false, ok = true;
  for (int i = 0; i < 100 && !(sd && cd) && ok; ++i) {
    if (!cd) {
      const int r = SSL_do_handshake(c);
      cd = r == 1;
      ok = cd || SSL_get_error(c, r) == SSL_ERROR_WANT_READ;
    }
    if (!sd && ok) {
      const int r = SSL_do_handshake(s);
      sd = r == 1;
      ok = sd || SSL_get_error(s, r) == SSL_ERROR_WANT_READ;
    }
  }
  SSL_free(s);
  SSL_free(c);
  return ok && sd && cd;
}

}  // namespace hwid::bench

#endif  // HWID_BENCH_TLS_LOOP_H_
