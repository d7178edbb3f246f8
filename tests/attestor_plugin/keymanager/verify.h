// Test helpers for the KeyManager tests: every signature a KeyManager returns is verified here
// by OpenSSL's default provider against the SubjectPublicKeyInfo the KeyManager published.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_KEYMANAGER_VERIFY_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_KEYMANAGER_VERIFY_H_

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <string>

#include "common/bytes.h"
#include "common/ossl.h"
#include "common/sign.h"

namespace hwid::keymanager::testing {

// Digest hashes `msg` with `hash`.
inline Bytes Digest(HashAlg hash, const std::string& msg) {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int n = 0;
  EVP_Digest(msg.data(), msg.size(), out.data(), &n, HashAlgMd(hash), nullptr);
  out.resize(n);
  return out;
}

// VerifyDigest: true when `sig` is a valid signature of `digest` under the key in `pkix_der`.
// `pss_salt` (RSA-PSS only): Go semantics: 0 = any salt (auto), -1 = digest length, >0 exact.
inline bool VerifyDigest(const Bytes& pkix_der, HashAlg hash, ByteSpan digest, ByteSpan sig,
                         bool pss = false, int pss_salt = -1) {
  const unsigned char* p = pkix_der.data();
  OsslPtr<EVP_PKEY> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(pkix_der.size())));
  if (key == nullptr) {
    return false;
  }
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (ctx == nullptr || EVP_PKEY_verify_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_signature_md(ctx.get(), HashAlgMd(hash)) != 1) {
    return false;
  }
  if (EVP_PKEY_is_a(key.get(), "RSA")) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(),
                                     pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) != 1) {
      return false;
    }
    if (pss && EVP_PKEY_CTX_set_rsa_pss_saltlen(
                   ctx.get(), pss_salt == 0    ? RSA_PSS_SALTLEN_AUTO
                              : pss_salt == -1 ? RSA_PSS_SALTLEN_DIGEST
                                               : pss_salt) != 1) {
      return false;
    }
  }
  const bool ok =
      EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), digest.data(), digest.size()) == 1;
  DrainOpenSslErrors();
  return ok;
}

inline std::string Sha256Hex(const Bytes& b) {
  uint8_t d[32];
  SHA256(b.data(), b.size(), d);
  return HexEncode(ByteSpan(d, sizeof(d)));
}

}  // namespace hwid::keymanager::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_KEYMANAGER_VERIFY_H_
