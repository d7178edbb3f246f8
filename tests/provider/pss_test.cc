// The RSA-PSS salt-length detector the provider runs at key load (a TPM that signs only with the
// maximum salt cannot serve TLS 1.3): software PSS signatures with known salt lengths, made by
// OpenSSL's default provider, must be measured exactly, and anything else rejected.
#include "provider/pss.h"

#include <gtest/gtest.h>
#include <openssl/rsa.h>

#include <string>

#include "common/ossl.h"

namespace hwid::provider {
namespace {

class PssTest : public ::testing::TestWithParam<int> {
 protected:
  static void SetUpTestSuite() {
    key_ = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
    ASSERT_NE(key_, nullptr);
  }
  static void TearDownTestSuite() { EVP_PKEY_free(key_); }

  Bytes SignPss(const Bytes& digest, int saltlen) {
    OsslPtr<EVP_PKEY_CTX> c(EVP_PKEY_CTX_new_from_pkey(nullptr, key_, nullptr));
    EXPECT_EQ(EVP_PKEY_sign_init(c.get()), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(c.get(), RSA_PKCS1_PSS_PADDING), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_signature_md(c.get(), EVP_sha256()), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(c.get(), saltlen), 1);
    size_t len = 0;
    EXPECT_EQ(EVP_PKEY_sign(c.get(), nullptr, &len, digest.data(), digest.size()), 1);
    Bytes sig(len);
    EXPECT_EQ(EVP_PKEY_sign(c.get(), sig.data(), &len, digest.data(), digest.size()), 1);
    sig.resize(len);
    return sig;
  }

  static EVP_PKEY* key_;
};
EVP_PKEY* PssTest::key_ = nullptr;

TEST_P(PssTest, MeasuresTheSaltLength) {
  const Bytes digest(32, 0x5a);
  const int salt = GetParam() < 0 ? PssMaxSaltLength(2048, 32) : GetParam();
  const Bytes sig = SignPss(digest, salt);
  auto got = PssSaltLength(nullptr, key_, EVP_sha256(), digest, sig);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, salt);
}

INSTANTIATE_TEST_SUITE_P(Salts, PssTest, ::testing::Values(0, 20, 32, 64, -1));

TEST_F(PssTest, MaximumSaltForRsa2048Sha256Is222) { EXPECT_EQ(PssMaxSaltLength(2048, 32), 222); }

TEST_F(PssTest, RejectsOtherDigestTamperedSignatureAndPkcs1) {
  const Bytes digest(32, 0x5a);
  const Bytes sig = SignPss(digest, 32);
  const Bytes other(32, 0x5b);
  EXPECT_FALSE(PssSaltLength(nullptr, key_, EVP_sha256(), other, sig).ok());
  Bytes tampered = sig;
  tampered[10] ^= 1;
  EXPECT_FALSE(PssSaltLength(nullptr, key_, EVP_sha256(), digest, tampered).ok());
  Bytes truncated(sig.begin(), sig.end() - 1);
  EXPECT_FALSE(PssSaltLength(nullptr, key_, EVP_sha256(), digest, truncated).ok());
  // A PKCS#1 v1.5 signature is not PSS.
  OsslPtr<EVP_PKEY_CTX> c(EVP_PKEY_CTX_new_from_pkey(nullptr, key_, nullptr));
  ASSERT_EQ(EVP_PKEY_sign_init(c.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(c.get(), EVP_sha256()), 1);
  size_t len = 256;
  Bytes p1(len);
  ASSERT_EQ(EVP_PKEY_sign(c.get(), p1.data(), &len, digest.data(), digest.size()), 1);
  EXPECT_FALSE(PssSaltLength(nullptr, key_, EVP_sha256(), digest, p1).ok());
  // Wrong digest size, non-RSA key.
  EXPECT_FALSE(PssSaltLength(nullptr, key_, EVP_sha256(), Bytes(20, 1), sig).ok());
  OsslPtr<EVP_PKEY> ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  EXPECT_FALSE(PssSaltLength(nullptr, ec.get(), EVP_sha256(), digest, sig).ok());
}

}  // namespace
}  // namespace hwid::provider
