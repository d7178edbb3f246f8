// MakeCredential against an independent software TPM2_ActivateCredential that holds the EK's
// private key. The activation side uses OpenSSL's own KDF implementations (KBKDF counter mode =
// KDFa, SSKDF = KDFe) rather than ours, and is itself pinned by credentials made by
// tpm2_makecredential (tpm2-tools 5.4) for fixed test EKs (testdata/mc_*).
#include "tpm/wire/credential.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/crypto.h"
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
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using absl::StatusCode;

const char* MdName(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return "SHA1";
    case TPM2_ALG_SHA384:
      return "SHA384";
    case TPM2_ALG_SHA512:
      return "SHA512";
    default:
      return "SHA256";
  }
}

size_t MdSize(TPMI_ALG_HASH alg) {
  return static_cast<size_t>(EVP_MD_get_size(EVP_get_digestbyname(MdName(alg))));
}

struct KdfFree {
  void operator()(EVP_KDF* k) const noexcept { EVP_KDF_free(k); }
  void operator()(EVP_KDF_CTX* c) const noexcept { EVP_KDF_CTX_free(c); }
};
using KdfPtr = std::unique_ptr<EVP_KDF, KdfFree>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, KdfFree>;

absl::Status Fail(const std::string& what) { return absl::PermissionDeniedError(what); }

// OpenSSL KBKDF (SP 800-108 counter mode, HMAC, 32-bit counter, 0x00 separator, 32-bit L):
// exactly KDFa(hash, key, label, context, "", bits).
Bytes Kbkdf(TPMI_ALG_HASH alg, ByteSpan key, const std::string& label, ByteSpan context,
            size_t bytes) {
  KdfPtr kdf(EVP_KDF_fetch(nullptr, "KBKDF", nullptr));
  KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  std::vector<OSSL_PARAM> params = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, const_cast<char*>("HMAC"), 0),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(MdName(alg)), 0),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, const_cast<char*>("counter"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key.data()),
                                        key.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(label.data()),
                                        label.size()),
  };
  if (!context.empty()) {
    params.push_back(OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(context.data()), context.size()));
  }
  params.push_back(OSSL_PARAM_construct_end());
  Bytes out(bytes);
  EXPECT_EQ(EVP_KDF_derive(ctx.get(), out.data(), out.size(), params.data()), 1);
  return out;
}

// OpenSSL SSKDF (SP 800-56C one-step, hash): H([i]32 || Z || FixedInfo) with
// FixedInfo = label || 0x00 || partyU || partyV — exactly KDFe.
Bytes Sskdf(TPMI_ALG_HASH alg, ByteSpan z, const std::string& label, ByteSpan u, ByteSpan v,
            size_t bytes) {
  Bytes info(label.begin(), label.end());
  info.push_back(0);
  info.insert(info.end(), u.begin(), u.end());
  info.insert(info.end(), v.begin(), v.end());
  KdfPtr kdf(EVP_KDF_fetch(nullptr, "SSKDF", nullptr));
  KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(MdName(alg)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(z.data()),
                                        z.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  Bytes out(bytes);
  EXPECT_EQ(EVP_KDF_derive(ctx.get(), out.data(), out.size(), params), 1);
  return out;
}

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

const char* GroupOf(TPMI_ECC_CURVE c) {
  return c == TPM2_ECC_NIST_P256 ? "P-256" : c == TPM2_ECC_NIST_P384 ? "P-384" : "P-521";
}

// Activate is TPM2_ActivateCredential in software: recover the seed with the EK private key,
// check the outer HMAC over (encIdentity || name), decrypt, unwrap the TPM2B.
absl::StatusOr<Bytes> Activate(EVP_PKEY* ek_priv, const TPMT_PUBLIC& ek, ByteSpan id_object,
                               ByteSpan encrypted_secret, ByteSpan name) {
  const TPMI_ALG_HASH alg = ek.nameAlg;
  const size_t hlen = MdSize(alg);
  // TPM2B_ENCRYPTED_SECRET
  if (encrypted_secret.size() < 2 || Be16(encrypted_secret.data()) != encrypted_secret.size() - 2) {
    return Fail("bad TPM2B_ENCRYPTED_SECRET framing");
  }
  const ByteSpan es = encrypted_secret.subspan(2);
  Bytes seed;
  if (ek.type == TPM2_ALG_RSA) {
    OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ek_priv, nullptr));
    EVP_PKEY_decrypt_init(ctx.get());
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_get_digestbyname(MdName(alg)));
    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_get_digestbyname(MdName(alg)));
    EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), OPENSSL_memdup("IDENTITY", 9), 9);
    size_t len = 1024;
    seed.resize(len);
    if (EVP_PKEY_decrypt(ctx.get(), seed.data(), &len, es.data(), es.size()) != 1) {
      DrainOpenSslErrors();
      return Fail("RSA-OAEP decryption of the seed failed");
    }
    seed.resize(len);
  } else {
    // TPMS_ECC_POINT { TPM2B x, TPM2B y }
    if (es.size() < 4) {
      return Fail("short ECC point");
    }
    const size_t xs = Be16(es.data());
    if (es.size() < 2 + xs + 2) {
      return Fail("short ECC point");
    }
    const size_t ys = Be16(es.data() + 2 + xs);
    if (es.size() != 4 + xs + ys) {
      return Fail("bad ECC point framing");
    }
    const ByteSpan x = es.subspan(2, xs);
    const ByteSpan y = es.subspan(4 + xs, ys);
    Bytes point = {0x04};
    point.insert(point.end(), x.begin(), x.end());
    point.insert(point.end(), y.begin(), y.end());
    OsslPtr<EVP_PKEY_CTX> fctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
    char* group = const_cast<char*>(GroupOf(ek.parameters.eccDetail.curveID));
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()),
        OSSL_PARAM_construct_end()};
    EVP_PKEY* peer_raw = nullptr;
    EVP_PKEY_fromdata_init(fctx.get());
    if (EVP_PKEY_fromdata(fctx.get(), &peer_raw, EVP_PKEY_PUBLIC_KEY, params) != 1) {
      DrainOpenSslErrors();
      return Fail("ephemeral point rejected");
    }
    OsslPtr<EVP_PKEY> peer(peer_raw);
    OsslPtr<EVP_PKEY_CTX> dctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ek_priv, nullptr));
    size_t zlen = 0;
    if (EVP_PKEY_derive_init(dctx.get()) != 1 ||
        EVP_PKEY_derive_set_peer(dctx.get(), peer.get()) != 1 ||
        EVP_PKEY_derive(dctx.get(), nullptr, &zlen) != 1) {
      DrainOpenSslErrors();
      return Fail("ECDH failed");
    }
    Bytes z(zlen);
    EVP_PKEY_derive(dctx.get(), z.data(), &zlen);
    seed = Sskdf(alg, z, "IDENTITY", x, ByteSpan(ek.unique.ecc.x.buffer, ek.unique.ecc.x.size),
                 hlen);
  }
  // TPM2B_ID_OBJECT { TPM2B_DIGEST integrityHMAC, encIdentity }
  if (id_object.size() < 4 || Be16(id_object.data()) != id_object.size() - 2) {
    return Fail("bad TPM2B_ID_OBJECT framing");
  }
  const ByteSpan blob = id_object.subspan(2);
  const size_t mac_len = Be16(blob.data());
  if (mac_len != hlen || blob.size() < 2 + mac_len) {
    return Fail("bad integrity HMAC size");
  }
  const ByteSpan mac = blob.subspan(2, mac_len);
  const ByteSpan enc = blob.subspan(2 + mac_len);
  const Bytes hmac_key = Kbkdf(alg, seed, "INTEGRITY", ByteSpan(), hlen);
  Bytes mac_input(enc.begin(), enc.end());
  mac_input.insert(mac_input.end(), name.begin(), name.end());
  Bytes expected(EVP_MAX_MD_SIZE);
  unsigned int elen = 0;
  HMAC(EVP_get_digestbyname(MdName(alg)), hmac_key.data(), static_cast<int>(hmac_key.size()),
       mac_input.data(), mac_input.size(), expected.data(), &elen);
  expected.resize(elen);
  if (Bytes(mac.begin(), mac.end()) != expected) {
    return Fail("integrity check failed");
  }
  const uint16_t aes_bits = ek.parameters.asymDetail.symmetric.keyBits.aes;
  const Bytes sym_key = Kbkdf(alg, seed, "STORAGE", name, aes_bits / 8);
  const EVP_CIPHER* cipher = aes_bits == 128   ? EVP_aes_128_cfb128()
                             : aes_bits == 192 ? EVP_aes_192_cfb128()
                                               : EVP_aes_256_cfb128();
  OsslPtr<EVP_CIPHER_CTX> cctx(EVP_CIPHER_CTX_new());
  const uint8_t iv[16] = {};
  Bytes plain(enc.size() + 16);
  int len = 0;
  int flen = 0;
  EVP_DecryptInit_ex(cctx.get(), cipher, nullptr, sym_key.data(), iv);
  EVP_DecryptUpdate(cctx.get(), plain.data(), &len, enc.data(), static_cast<int>(enc.size()));
  EVP_DecryptFinal_ex(cctx.get(), plain.data() + len, &flen);
  plain.resize(static_cast<size_t>(len + flen));
  if (plain.size() < 2 || Be16(plain.data()) != plain.size() - 2) {
    return Fail("decrypted credential is not a TPM2B");
  }
  return Bytes(plain.begin() + 2, plain.end());
}

struct EkCase {
  std::string name;
  EkType type;
  EVP_PKEY* (*key)();
  EVP_PKEY* (*other_key)();
};

EVP_PKEY* Rsa2048() { return RsaKey(2048); }
EVP_PKEY* Rsa3072() { return RsaKey(3072); }
EVP_PKEY* P256() { return EcKey("P-256"); }
EVP_PKEY* P384() { return EcKey("P-384"); }
EVP_PKEY* P384b() { return EcKey("P-384#2"); }
EVP_PKEY* P521() { return EcKey("P-521"); }
EVP_PKEY* P521b() { return EcKey("P-521#2"); }

class MakeCredentialTest : public ::testing::TestWithParam<EkCase> {};

TEST_P(MakeCredentialTest, RoundTripAndIntegrity) {
  const EkCase& c = GetParam();
  const TPMT_PUBLIC ek = WithKey(EkTemplate(c.type).publicArea, c.key());
  const size_t hlen = MdSize(ek.nameAlg);
  const Bytes name =
      ObjectName(WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey2())).value();
  const Bytes other_name =
      ObjectName(WithKey(AkTemplate(KeyAlg::kRsa2048).publicArea, RsaKey2())).value();

  for (size_t secret_len : {size_t{1}, size_t{16}, hlen}) {
    SCOPED_TRACE(secret_len);
    Bytes secret(secret_len);
    for (size_t i = 0; i < secret_len; ++i) {
      secret[i] = static_cast<uint8_t>(0xa0 + i);
    }
    absl::StatusOr<Credential> cred = MakeCredential(ek, secret, name);
    ASSERT_THAT(cred, IsOk());
    EXPECT_THAT(ParseIdObject(cred->id_object), IsOk());
    EXPECT_THAT(ParseEncryptedSecret(cred->encrypted_secret), IsOk());
    // id_object = size || hmac size || hmac || AES-CFB(2 + secret)
    EXPECT_EQ(cred->id_object.size(), 2 + 2 + hlen + 2 + secret_len);

    EXPECT_EQ(Activate(c.key(), ek, cred->id_object, cred->encrypted_secret, name).value(), secret);
    // The credential is bound to the object name...
    EXPECT_THAT(Activate(c.key(), ek, cred->id_object, cred->encrypted_secret, other_name),
                StatusIs(StatusCode::kPermissionDenied, "integrity check failed"));
    // ...and to the EK's private key.
    EXPECT_FALSE(Activate(c.other_key(), ek, cred->id_object, cred->encrypted_secret, name).ok());
    // Any change to the blob breaks the integrity HMAC.
    for (size_t pos : {size_t{4}, size_t{4 + hlen - 1}, cred->id_object.size() - 1}) {
      Bytes tampered = cred->id_object;
      tampered[pos] ^= 0x01;
      EXPECT_THAT(Activate(c.key(), ek, tampered, cred->encrypted_secret, name),
                  StatusIs(StatusCode::kPermissionDenied, "")) << pos;
    }
    Bytes tampered_secret = cred->encrypted_secret;
    tampered_secret[tampered_secret.size() - 1] ^= 0x01;
    EXPECT_FALSE(Activate(c.key(), ek, cred->id_object, tampered_secret, name).ok());
  }
}

TEST_P(MakeCredentialTest, FreshSeedEveryCall) {
  const EkCase& c = GetParam();
  const TPMT_PUBLIC ek = WithKey(EkTemplate(c.type).publicArea, c.key());
  const Bytes name = ObjectName(WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey2())).value();
  const Bytes secret(16, 7);
  const Credential a = MakeCredential(ek, secret, name).value();
  const Credential b = MakeCredential(ek, secret, name).value();
  EXPECT_NE(a.encrypted_secret, b.encrypted_secret);
  EXPECT_NE(a.id_object, b.id_object);
}

INSTANTIATE_TEST_SUITE_P(
    Eks, MakeCredentialTest,
    ::testing::ValuesIn(std::vector<EkCase>{
        {"rsa2048_l1", EkType::kRsa2048, &Rsa2048, &RsaKey2},
        {"ecc_p256_l2", EkType::kEccP256, &P256, &EcKey2},
        {"rsa2048_h1", EkType::kRsa2048High, &Rsa2048, &RsaKey2},
        {"ecc_p384_h3_sha384_aes256", EkType::kEccP384High, &P384, &P384b},
        {"ecc_p521_h4_sha512_aes256", EkType::kEccP521High, &P521, &P521b},
        {"rsa3072_h6_sha384_aes256", EkType::kRsa3072High, &Rsa3072, &RsaKey2},
    }),
    [](const ::testing::TestParamInfo<EkCase>& p) { return p.param.name; });

TEST(MakeCredential, RejectsBadInputs) {
  const TPMT_PUBLIC ek = WithKey(EkTemplate(EkType::kEccP256).publicArea, EcKey());
  const Bytes name = ObjectName(WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey2())).value();
  const Bytes secret(32, 1);
  EXPECT_THAT(MakeCredential(ek, Bytes(), name),
              StatusIs(StatusCode::kInvalidArgument, "secret is 0 bytes; it must be 1..32"));
  EXPECT_THAT(MakeCredential(ek, Bytes(33, 1), name),
              StatusIs(StatusCode::kInvalidArgument, "secret is 33 bytes"));
  EXPECT_THAT(MakeCredential(ek, secret, Bytes(name.begin(), name.end() - 1)),
              StatusIs(StatusCode::kInvalidArgument, "object name is 33 bytes"));
  Bytes sm3_name = name;
  sm3_name[1] = 0x12;
  EXPECT_THAT(MakeCredential(ek, secret, sm3_name),
              StatusIs(StatusCode::kInvalidArgument, "unsupported hash"));
  TPMT_PUBLIC not_storage = ek;
  not_storage.objectAttributes &= ~TPMA_OBJECT_DECRYPT;
  EXPECT_THAT(MakeCredential(not_storage, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "not a restricted decryption"));
  TPMT_PUBLIC no_sym = ek;
  no_sym.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  EXPECT_THAT(MakeCredential(no_sym, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "is not aes/cfb"));
  TPMT_PUBLIC aes_512 = ek;
  aes_512.parameters.eccDetail.symmetric.keyBits.aes = 512;
  EXPECT_THAT(MakeCredential(aes_512, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "AES key size 512"));
  TPMT_PUBLIC off_curve = ek;
  off_curve.unique.ecc.y.buffer[0] ^= 1;
  EXPECT_THAT(MakeCredential(off_curve, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "EC public key"));
  TPMT_PUBLIC sha1_ek = ek;
  sha1_ek.nameAlg = TPM2_ALG_SHA1;
  EXPECT_THAT(MakeCredential(sha1_ek, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "must be 1..20"));
  TPMT_PUBLIC keyed = ek;
  keyed.type = TPM2_ALG_KEYEDHASH;
  EXPECT_THAT(MakeCredential(keyed, secret, name),
              StatusIs(StatusCode::kInvalidArgument, "EK type keyedhash"));
}

// tpm2_makecredential -T none (tpm2-tools 5.4) made testdata/mc_{rsa,ecc}.cred for the fixed
// software EKs in mc_{rsa,ecc}_ek.pem, secret mc_secret.bin and the name in mc_name.bin. Opening
// them proves the Activate() oracle above follows the same conventions as tpm2-tools.
class Tpm2ToolsCredentialTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Tpm2ToolsCredentialTest, OracleOpensTpm2ToolsCredential) {
  const std::string kind = GetParam();
  const Bytes pem = ReadTestdata("mc_" + kind + "_ek.pem");
  OsslPtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  OsslPtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_NE(key, nullptr);
  const EkType type = kind == "rsa" ? EkType::kRsa2048 : EkType::kEccP256;
  const TPMT_PUBLIC ek = WithKey(EkTemplate(type).publicArea, key.get());
  const Bytes name = ReadTestdata("mc_name.bin");
  const Bytes secret = ReadTestdata("mc_secret.bin");
  // tpm2-tools credential file: magic BADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
  const Bytes file = ReadTestdata("mc_" + kind + ".cred");
  ASSERT_GT(file.size(), 10u);
  ASSERT_EQ(Bytes(file.begin(), file.begin() + 8), Hex("badcc0de00000001"));
  const ByteSpan rest = ByteSpan(file).subspan(8);
  const size_t id_len = 2 + Be16(rest.data());
  const ByteSpan id_object = rest.subspan(0, id_len);
  const ByteSpan encrypted_secret = rest.subspan(id_len);
  EXPECT_EQ(Activate(key.get(), ek, id_object, encrypted_secret, name).value(), secret);
  // And ours opens with the same oracle for the same EK.
  const Credential ours = MakeCredential(ek, secret, name).value();
  EXPECT_EQ(Activate(key.get(), ek, ours.id_object, ours.encrypted_secret, name).value(), secret);
}

INSTANTIATE_TEST_SUITE_P(Tpm2Tools, Tpm2ToolsCredentialTest,
                         ::testing::Values(std::string("rsa"), std::string("ecc")));

}  // namespace
}  // namespace hwid::wire
