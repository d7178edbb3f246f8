// Weak-key checks: the ROCA detector against a modulus made with RSALib's structure and against
// random OpenSSL moduli (negative controls), RSA size and SHA-1 name algorithm refusals, each with
// its own reason.
#include "tpm/wire/keystrength.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/templates.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::RocaModulus;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::RsaKey2;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;

constexpr auto kDenied = absl::StatusCode::kPermissionDenied;

Bytes ModulusOf(EVP_PKEY* key) {
  BIGNUM* n = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n), 1);
  OsslPtr<BIGNUM> owner(n);
  Bytes out(static_cast<size_t>(BN_num_bytes(n)));
  BN_bn2bin(n, out.data());
  return out;
}

TPMT_PUBLIC RsaEkWithModulus(const Bytes& n) {
  TPMT_PUBLIC ek = EkTemplate(EkType::kRsa2048).publicArea;
  ek.parameters.rsaDetail.keyBits = static_cast<UINT16>(n.size() * 8);
  ek.unique.rsa.size = static_cast<UINT16>(n.size());
  std::copy(n.begin(), n.end(), ek.unique.rsa.buffer);
  return ek;
}

TEST(RocaTest, RsaLibStructuredModulusIsFlagged) {
  EXPECT_TRUE(HasRocaFingerprint(RocaModulus(2048)));
  EXPECT_TRUE(HasRocaFingerprint(RocaModulus(3072)));
  // Leading zero bytes do not change the value.
  Bytes padded(3, 0);
  padded.insert(padded.end(), RocaModulus(2048).begin(), RocaModulus(2048).end());
  EXPECT_TRUE(HasRocaFingerprint(padded));
}

TEST(RocaTest, RandomModuliAreNotFlagged) {
  EXPECT_FALSE(HasRocaFingerprint(ModulusOf(RsaKey())));
  EXPECT_FALSE(HasRocaFingerprint(ModulusOf(RsaKey2())));
  EXPECT_FALSE(HasRocaFingerprint(ModulusOf(RsaKey(3072))));
  for (int i = 0; i < 8; ++i) {
    OsslPtr<EVP_PKEY> k(EVP_RSA_gen(2048));
    ASSERT_NE(k, nullptr);
    EXPECT_FALSE(HasRocaFingerprint(ModulusOf(k.get())));
  }
  // One step off the structure is enough to leave it.
  Bytes near = RocaModulus(2048);
  near.back() ^= 0x02;
  EXPECT_FALSE(HasRocaFingerprint(near));
  EXPECT_FALSE(HasRocaFingerprint(Bytes{}));
  EXPECT_FALSE(HasRocaFingerprint(Bytes(256, 0)));
}

TEST(KeyStrengthTest, GoodKeysPass) {
  EXPECT_THAT(CheckKeyStrength(WithKey(EkTemplate(EkType::kRsa2048).publicArea, RsaKey()), "EK"),
              IsOk());
  EXPECT_THAT(CheckKeyStrength(WithKey(EkTemplate(EkType::kEccP256).publicArea, EcKey()), "EK"),
              IsOk());
  EXPECT_THAT(CheckKeyStrength(WithKey(AkTemplate(KeyAlg::kRsa3072).publicArea, RsaKey(3072)),
                               "AK"),
              IsOk());
}

TEST(KeyStrengthTest, EachWeaknessHasItsOwnReason) {
  TPMT_PUBLIC sha1 = WithKey(EkTemplate(EkType::kEccP256).publicArea, EcKey());
  sha1.nameAlg = TPM2_ALG_SHA1;
  EXPECT_THAT(CheckKeyStrength(sha1, "EK"), StatusIs(kDenied, "EK policy: nameAlg sha1"));

  TPMT_PUBLIC small = WithKey(EkTemplate(EkType::kRsa2048).publicArea, RsaKey(1024));
  EXPECT_THAT(CheckKeyStrength(small, "EK"),
              StatusIs(kDenied, "RSA key of 1024 bits (keyBits 1024) is refused (weak key"));
  // keyBits claims 2048 but the modulus is shorter (leading zeros).
  TPMT_PUBLIC short_modulus = RsaEkWithModulus(ModulusOf(RsaKey(1024)));
  Bytes padded(128, 0);
  padded.insert(padded.end(), short_modulus.unique.rsa.buffer,
                short_modulus.unique.rsa.buffer + short_modulus.unique.rsa.size);
  short_modulus = RsaEkWithModulus(padded);
  EXPECT_THAT(CheckKeyStrength(short_modulus, "EK"), StatusIs(kDenied, "RSA key of 1024 bits"));

  EXPECT_THAT(CheckKeyStrength(RsaEkWithModulus(RocaModulus(2048)), "AK"),
              StatusIs(kDenied, "AK policy: the RSA modulus has the ROCA fingerprint"));
  // The ROCA vector is otherwise a sound RSA key: only the fingerprint refuses it.
  EXPECT_THAT(PublicToEvp(RsaEkWithModulus(RocaModulus(2048))), IsOk());
}

}  // namespace
}  // namespace hwid::wire
