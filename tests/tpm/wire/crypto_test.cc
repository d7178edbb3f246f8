#include "tpm/wire/crypto.h"

#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <cstring>

#include <string>
#include <vector>

#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::EcKey2;
using ::hwid::wire::testing::Hex;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::ReadTestdata;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::RsaKey2;
using ::hwid::wire::testing::Sign;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using absl::StatusCode;

Bytes SpkiOf(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(pkey, &der);
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

TEST(Hash, KnownVectorsAndSizes) {
  const Bytes abc = {'a', 'b', 'c'};
  EXPECT_EQ(Hash(TPM2_ALG_SHA256, abc).value(),
            Hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  EXPECT_EQ(Hash(TPM2_ALG_SHA1, abc).value(), Hex("a9993e364706816aba3e25717850c26c9cd0d89d"));
  EXPECT_EQ(Hash(TPM2_ALG_SHA384, abc).value().size(), 48u);
  EXPECT_EQ(Hash(TPM2_ALG_SHA512, abc).value().size(), 64u);
  EXPECT_EQ(DigestSize(TPM2_ALG_SHA1), 20u);
  EXPECT_EQ(DigestSize(TPM2_ALG_SHA256), 32u);
  EXPECT_EQ(DigestSize(TPM2_ALG_SHA384), 48u);
  EXPECT_EQ(DigestSize(TPM2_ALG_SHA512), 64u);
  EXPECT_EQ(DigestSize(TPM2_ALG_SM3_256), 0u);
  EXPECT_EQ(DigestSize(TPM2_ALG_NULL), 0u);
  EXPECT_EQ(DigestForAlg(TPM2_ALG_SHA384).value(), EVP_sha384());
  EXPECT_THAT(DigestForAlg(TPM2_ALG_SM3_256),
              StatusIs(StatusCode::kInvalidArgument, "unsupported hash algorithm sm3_256"));
  EXPECT_THAT(Hash(TPM2_ALG_NULL, abc), StatusIs(StatusCode::kInvalidArgument, "null"));
}

TEST(PublicToEvp, SoftwareKeysRoundTrip) {
  struct Row {
    std::string name;
    EVP_PKEY* key;
    TPM2B_PUBLIC tmpl;
  };
  const std::vector<Row> rows = {
      {"p256", EcKey("P-256"), SigningKeyTemplate(KeyAlg::kEcP256)},
      {"p384", EcKey("P-384"), SigningKeyTemplate(KeyAlg::kEcP384)},
      {"p521", EcKey("P-521"), EkTemplate(EkType::kEccP521High)},
      {"rsa2048", RsaKey(2048), SigningKeyTemplate(KeyAlg::kRsa2048)},
      {"rsa3072", RsaKey(3072), SigningKeyTemplate(KeyAlg::kRsa3072)},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    const TPMT_PUBLIC pub = WithKey(r.tmpl.publicArea, r.key);
    absl::StatusOr<OsslPtr<EVP_PKEY>> pkey = PublicToEvp(pub);
    ASSERT_THAT(pkey, IsOk());
    EXPECT_TRUE(SamePublicKey(pkey->get(), r.key));
    EXPECT_FALSE(SamePublicKey(pkey->get(), EcKey2()));
    EXPECT_EQ(PublicKeyDer(pub).value(), SpkiOf(r.key));
    EXPECT_EQ(PublicKeyDerTrusted(pub).value(), SpkiOf(r.key));  // direct encoding agrees
  }
  EXPECT_FALSE(SamePublicKey(nullptr, EcKey()));
}

TEST(PublicToEvp, MatchesTpm2OpensslForARealTpmKey) {
  // tpm2-openssl exported the SubjectPublicKeyInfo of this swtpm key; we must derive the same.
  absl::StatusOr<TpmKeyFile> key = ParseTpmKeyFile(ReadTestdata("tpm2openssl_ec_key.pem"));
  ASSERT_THAT(key, IsOk());
  absl::StatusOr<TPM2B_PUBLIC> pub = ParsePublic(key->pub);
  ASSERT_THAT(pub, IsOk());
  EXPECT_EQ(PublicKeyDer(pub->publicArea).value(), ReadTestdata("tpm2openssl_ec_key.spki.der"));
  EXPECT_EQ(PublicKeyDerTrusted(pub->publicArea).value(),
            ReadTestdata("tpm2openssl_ec_key.spki.der"));
}

TEST(PublicToEvp, TrustedEncodingPadsShortCoordinates) {
  // A coordinate with leading zero bytes may arrive shorter than the field: the encoding must
  // left-pad it exactly as OpenSSL does. Find P-256 keys whose X or Y starts with 0x00.
  int checked = 0;
  for (int i = 0; i < 2000 && checked < 3; ++i) {
    OsslPtr<EVP_PKEY> owned(EVP_EC_gen("P-256"));
    EVP_PKEY* key = owned.get();
    TPMT_PUBLIC pub = WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, key);
    for (TPM2B_ECC_PARAMETER* c : {&pub.unique.ecc.x, &pub.unique.ecc.y}) {
      if (c->size == 32 && c->buffer[0] == 0) {
        std::memmove(c->buffer, c->buffer + 1, 31);
        c->size = 31;
        EXPECT_EQ(PublicKeyDerTrusted(pub).value(), SpkiOf(key));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(PublicToEvp, RejectsBadKeys) {
  const TPMT_PUBLIC ec = WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, EcKey());
  const TPMT_PUBLIC rsa = WithKey(SigningKeyTemplate(KeyAlg::kRsa2048).publicArea, RsaKey());
  struct Row {
    std::string name;
    TPMT_PUBLIC pub;
    std::string substr;
  };
  std::vector<Row> rows;
  {
    TPMT_PUBLIC p = ec;
    p.unique.ecc.y.buffer[31] ^= 1;  // no longer on the curve
    rows.push_back({"point_off_curve", p, "EC public key"});
  }
  {
    TPMT_PUBLIC p = ec;
    p.unique.ecc.x.size = 0;
    rows.push_back({"empty_x", p, "coordinates are 0 and 32 bytes"});
  }
  {
    TPMT_PUBLIC p = ec;
    p.unique.ecc.x.size = 33;
    rows.push_back({"x_too_long", p, "expected 1..32 for P-256"});
  }
  {
    TPMT_PUBLIC p = ec;
    p.parameters.eccDetail.curveID = TPM2_ECC_BN_P256;
    rows.push_back({"bn_curve", p, "unsupported ECC curve 0x0010"});
  }
  {
    TPMT_PUBLIC p = rsa;
    p.unique.rsa.size = 255;
    rows.push_back({"short_modulus", p, "RSA modulus is 255 bytes but keyBits is 2048"});
  }
  {
    TPMT_PUBLIC p = rsa;
    p.unique.rsa.buffer[0] = 0x01;
    rows.push_back({"modulus_top_bit_clear", p, "shorter than keyBits"});
  }
  {
    TPMT_PUBLIC p = rsa;
    p.parameters.rsaDetail.keyBits = 512;
    rows.push_back({"rsa_512", p, "unsupported RSA keyBits 512"});
  }
  {
    TPMT_PUBLIC p = rsa;
    p.parameters.rsaDetail.exponent = 4;
    rows.push_back({"even_exponent", p, "invalid RSA exponent 4"});
  }
  {
    TPMT_PUBLIC p = rsa;
    p.unique.rsa.buffer[255] &= 0xfe;  // even modulus
    rows.push_back({"even_modulus", p, "RSA modulus is even"});
  }
  {
    TPMT_PUBLIC p = ec;
    p.type = TPM2_ALG_KEYEDHASH;
    rows.push_back({"keyedhash", p, "not an asymmetric key"});
  }
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_THAT(PublicToEvp(r.pub), StatusIs(StatusCode::kInvalidArgument, r.substr));
    EXPECT_FALSE(PublicKeyDer(r.pub).ok());
  }
}

TEST(PublicToEvp, ExponentZeroMeans65537) {
  TPMT_PUBLIC pub = WithKey(SigningKeyTemplate(KeyAlg::kRsa2048).publicArea, RsaKey());
  ASSERT_EQ(pub.parameters.rsaDetail.exponent, 0u);
  absl::StatusOr<OsslPtr<EVP_PKEY>> a = PublicToEvp(pub);
  pub.parameters.rsaDetail.exponent = 65537;
  absl::StatusOr<OsslPtr<EVP_PKEY>> b = PublicToEvp(pub);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_TRUE(SamePublicKey(a->get(), b->get()));
  pub.parameters.rsaDetail.exponent = 3;
  absl::StatusOr<OsslPtr<EVP_PKEY>> c = PublicToEvp(pub);
  ASSERT_THAT(c, IsOk());
  EXPECT_FALSE(SamePublicKey(a->get(), c->get()));
}

TEST(ObjectName, MatchesNamesComputedByTheTpm) {
  for (const char* stem : {"ecc_key", "ek_rsa", "ek_ecc", "ak_ecc", "ak_rsa"}) {
    SCOPED_TRACE(stem);
    absl::StatusOr<TPM2B_PUBLIC> pub = ParsePublic(ReadTestdata(std::string(stem) + ".pub"));
    ASSERT_THAT(pub, IsOk());
    const Bytes name = ReadTestdata(std::string(stem) + ".name");
    EXPECT_EQ(ObjectName(pub->publicArea).value(), name);
    EXPECT_THAT(CheckName(name, "t"), IsOk());
  }
}

TEST(ObjectName, UsesTheNameAlg) {
  TPMT_PUBLIC pub = EkTemplate(EkType::kEccP384High).publicArea;
  const Bytes name = ObjectName(pub).value();
  ASSERT_EQ(name.size(), 50u);
  EXPECT_EQ(name[0], 0x00);
  EXPECT_EQ(name[1], 0x0c);
  pub.nameAlg = TPM2_ALG_NULL;
  EXPECT_THAT(ObjectName(pub), StatusIs(StatusCode::kInvalidArgument, "unsupported nameAlg"));
}

TEST(CheckName, Rows) {
  EXPECT_THAT(CheckName(Bytes{}, "mc"), StatusIs(StatusCode::kInvalidArgument, "too short"));
  EXPECT_THAT(CheckName(Hex("000b00"), "mc"),
              StatusIs(StatusCode::kInvalidArgument,
                       "mc: object name is 3 bytes; a sha256 name is 34"));
  Bytes sm3 = Hex("0012");
  sm3.resize(34);
  EXPECT_THAT(CheckName(sm3, "mc"),
              StatusIs(StatusCode::kInvalidArgument, "unsupported hash sm3_256"));
  Bytes sha1 = Hex("0004");
  sha1.resize(22);
  EXPECT_THAT(CheckName(sha1, "mc"), IsOk());
}

TEST(SignatureToDer, EcdsaAndRsa) {
  const Bytes msg = {'m'};
  const TPMT_SIGNATURE ec = Sign(EcKey(), TPM2_ALG_ECDSA, TPM2_ALG_SHA256, msg);
  absl::StatusOr<Bytes> der = SignatureToDer(ec);
  ASSERT_THAT(der, IsOk());
  // Independent check: OpenSSL verifies the DER against the digest.
  OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, EcKey()), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx.get(), der->data(), der->size(), msg.data(), msg.size()), 1);

  const TPMT_SIGNATURE rsa = Sign(RsaKey(), TPM2_ALG_RSASSA, TPM2_ALG_SHA256, msg);
  EXPECT_EQ(SignatureToDer(rsa).value(),
            Bytes(rsa.signature.rsassa.sig.buffer,
                  rsa.signature.rsassa.sig.buffer + rsa.signature.rsassa.sig.size));

  TPMT_SIGNATURE empty = ec;
  empty.signature.ecdsa.signatureS.size = 0;
  EXPECT_THAT(SignatureToDer(empty), StatusIs(StatusCode::kInvalidArgument, "empty ECDSA"));
  TPMT_SIGNATURE hmac = ec;
  hmac.sigAlg = TPM2_ALG_HMAC;
  EXPECT_THAT(SignatureToDer(hmac),
              StatusIs(StatusCode::kInvalidArgument, "unsupported signature scheme hmac"));
}

struct VerifyRow {
  std::string name;
  TPMI_ALG_SIG_SCHEME scheme;
  TPMI_ALG_HASH hash;
  bool rsa;
};

TEST(VerifySignature, GoodAndTampered) {
  const Bytes msg = {'h', 'w', 'i', 'd'};
  for (const VerifyRow& r : std::vector<VerifyRow>{
           {"ecdsa_sha256", TPM2_ALG_ECDSA, TPM2_ALG_SHA256, false},
           {"ecdsa_sha384", TPM2_ALG_ECDSA, TPM2_ALG_SHA384, false},
           {"ecdsa_sha1", TPM2_ALG_ECDSA, TPM2_ALG_SHA1, false},
           {"rsassa_sha256", TPM2_ALG_RSASSA, TPM2_ALG_SHA256, true},
           {"rsassa_sha512", TPM2_ALG_RSASSA, TPM2_ALG_SHA512, true},
           {"rsapss_sha256", TPM2_ALG_RSAPSS, TPM2_ALG_SHA256, true},
           {"rsapss_sha384", TPM2_ALG_RSAPSS, TPM2_ALG_SHA384, true}}) {
    SCOPED_TRACE(r.name);
    EVP_PKEY* key = r.rsa ? RsaKey() : EcKey();
    const TPMT_PUBLIC pub = WithKey(
        SigningKeyTemplate(r.rsa ? KeyAlg::kRsa2048 : KeyAlg::kEcP256).publicArea, key);
    const TPMT_SIGNATURE sig = Sign(key, r.scheme, r.hash, msg);
    EXPECT_THAT(VerifySignature(pub, msg, sig), IsOk());
    Bytes other = msg;
    other[0] ^= 1;
    EXPECT_THAT(VerifySignature(pub, other, sig),
                StatusIs(StatusCode::kPermissionDenied, "does not verify"));
    const TPMT_PUBLIC wrong_key = WithKey(pub, r.rsa ? RsaKey2() : EcKey2());
    EXPECT_THAT(VerifySignature(wrong_key, msg, sig),
                StatusIs(StatusCode::kPermissionDenied, "does not verify"));
    TPMT_SIGNATURE wrong_hash = sig;
    const TPMI_ALG_HASH other_hash = r.hash == TPM2_ALG_SHA256 ? TPM2_ALG_SHA384 : TPM2_ALG_SHA256;
    if (r.rsa) {
      wrong_hash.signature.rsassa.hash = other_hash;  // rsapss has the same layout
    } else {
      wrong_hash.signature.ecdsa.hash = other_hash;
    }
    EXPECT_THAT(VerifySignature(pub, msg, wrong_hash),
                StatusIs(StatusCode::kPermissionDenied, "does not verify"));
  }
}

TEST(VerifySignature, PssAcceptsAnySaltLength) {
  // A TPM may use the maximum salt length; sign with it explicitly.
  const Bytes msg = {'p', 's', 's'};
  OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  ASSERT_EQ(EVP_DigestSignInit(ctx.get(), &pctx, EVP_sha256(), nullptr, RsaKey()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_MAX), 1);
  size_t len = 512;
  Bytes raw(len);
  ASSERT_EQ(EVP_DigestSign(ctx.get(), raw.data(), &len, msg.data(), msg.size()), 1);
  TPMT_SIGNATURE sig = {};
  sig.sigAlg = TPM2_ALG_RSAPSS;
  sig.signature.rsapss.hash = TPM2_ALG_SHA256;
  sig.signature.rsapss.sig.size = static_cast<UINT16>(len);
  std::memcpy(sig.signature.rsapss.sig.buffer, raw.data(), len);
  const TPMT_PUBLIC pub = WithKey(SigningKeyTemplate(KeyAlg::kRsa2048).publicArea, RsaKey());
  EXPECT_THAT(VerifySignature(pub, msg, sig), IsOk());
  // The same bytes are not a PKCS#1 v1.5 signature.
  sig.sigAlg = TPM2_ALG_RSASSA;
  EXPECT_THAT(VerifySignature(pub, msg, sig), StatusIs(StatusCode::kPermissionDenied, ""));
}

TEST(VerifySignature, RejectsMismatchedOrUnsupportedInputs) {
  const Bytes msg = {1};
  const TPMT_PUBLIC ec = WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, EcKey());
  const TPMT_PUBLIC rsa = WithKey(SigningKeyTemplate(KeyAlg::kRsa2048).publicArea, RsaKey());
  const TPMT_SIGNATURE ec_sig = Sign(EcKey(), TPM2_ALG_ECDSA, TPM2_ALG_SHA256, msg);
  const TPMT_SIGNATURE rsa_sig = Sign(RsaKey(), TPM2_ALG_RSASSA, TPM2_ALG_SHA256, msg);
  EXPECT_THAT(VerifySignature(rsa, msg, ec_sig),
              StatusIs(StatusCode::kInvalidArgument, "ecdsa signature for a rsa key"));
  EXPECT_THAT(VerifySignature(ec, msg, rsa_sig),
              StatusIs(StatusCode::kInvalidArgument, "rsassa signature for a ecc key"));
  TPMT_SIGNATURE sm2 = ec_sig;
  sm2.sigAlg = TPM2_ALG_SM2;
  EXPECT_THAT(VerifySignature(ec, msg, sm2),
              StatusIs(StatusCode::kInvalidArgument, "unsupported signature scheme sm2"));
  TPMT_SIGNATURE sm3 = ec_sig;
  sm3.signature.ecdsa.hash = TPM2_ALG_SM3_256;
  EXPECT_THAT(VerifySignature(ec, msg, sm3),
              StatusIs(StatusCode::kInvalidArgument, "unsupported hash algorithm"));
  TPMT_SIGNATURE truncated = rsa_sig;
  truncated.signature.rsassa.sig.size -= 1;
  EXPECT_THAT(VerifySignature(rsa, msg, truncated),
              StatusIs(StatusCode::kPermissionDenied, "does not verify"));
  TPMT_SIGNATURE zero_r = ec_sig;
  std::memset(zero_r.signature.ecdsa.signatureR.buffer, 0, zero_r.signature.ecdsa.signatureR.size);
  EXPECT_THAT(VerifySignature(ec, msg, zero_r),
              StatusIs(StatusCode::kPermissionDenied, "does not verify"));
}

}  // namespace
}  // namespace hwid::wire
