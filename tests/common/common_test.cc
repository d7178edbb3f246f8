#include <gtest/gtest.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "common/ecdsa_der.h"
#include "common/ossl.h"
#include "common/sign.h"
#include "common/status_macros.h"

namespace hwid {
namespace {

TEST(HexTest, RoundTripAndErrors) {
  Bytes b = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(HexEncode(b), "0001abff");
  EXPECT_EQ(*HexDecode("0001ABff"), b);
  EXPECT_EQ(*HexDecode("0x0001abff"), b);
  EXPECT_FALSE(HexDecode("abc").ok());
  EXPECT_FALSE(HexDecode("zz").ok());
  EXPECT_TRUE(HexDecode("")->empty());
}

// FIPS 180-2 test vector (Sha256Hex hashes in its own library context; the provider-order case
// is covered by provider_shared_tpm_test's sequence-lock test, hwid listed first).
TEST(HexTest, Sha256HexKnownVector) {
  const std::string abc = "abc";
  EXPECT_EQ(Sha256Hex(ByteSpan(reinterpret_cast<const uint8_t*>(abc.data()), abc.size())),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ConstantTimeEqualsTest, ComparesContentAndLength) {
  Bytes a = {1, 2, 3};
  Bytes b = {1, 2, 3};
  Bytes c = {1, 2, 4};
  Bytes d = {1, 2};
  EXPECT_TRUE(ConstantTimeEquals(a, b));
  EXPECT_FALSE(ConstantTimeEquals(a, c));
  EXPECT_FALSE(ConstantTimeEquals(a, d));
  EXPECT_TRUE(ConstantTimeEquals(Bytes{}, Bytes{}));
}

TEST(SecureBytesTest, BehavesLikeAVector) {
  SecureBytes s(16, 0x5a);
  s.push_back(1);
  EXPECT_EQ(s.size(), 17u);
  EXPECT_EQ(AsSpan(s)[16], 1);
}

TEST(FileTest, WriteReadAndErrorsNameThePath) {
  char tmpl[] = "/tmp/hwid-common-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/f";
  Bytes data = {9, 8, 7};
  ASSERT_TRUE(WriteFile(path, data, 0600).ok());
  auto r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, data);
  auto too_big = ReadFile(path, 2);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = ReadFile(path + ".missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find(path + ".missing"), std::string::npos);
  unlink(path.c_str());
  rmdir(tmpl);
}

TEST(OpenSslErrorTest, DrainsTheQueueIntoTheMessage) {
  // Provoke an OpenSSL error: an unknown digest fetch.
  EVP_MD* md = EVP_MD_fetch(nullptr, "NO-SUCH-DIGEST", nullptr);
  ASSERT_EQ(md, nullptr);
  absl::Status st = OpenSslError("fetching digest");
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(st.message()).find("fetching digest: "), std::string::npos);
  EXPECT_TRUE(DrainOpenSslErrors().empty());
}

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) {
    return absl::InvalidArgumentError("odd");
  }
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusMacrosTest, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hwid

namespace hwid {
namespace {

// EcdsaDerFromRS against OpenSSL's own encoder on the edge cases: leading zero bytes (shorter
// INTEGERs), a set top bit (0x00 pad), zero values, r and s of different lengths (TPMs may strip
// leading zeros), and P-521 sizes (long-form SEQUENCE length).
TEST(EcdsaDerTest, MatchesOpenSslEncoder) {
  auto openssl_der = [](const Bytes& r, const Bytes& s) {
    OsslPtr<ECDSA_SIG> sig(ECDSA_SIG_new());
    ECDSA_SIG_set0(sig.get(), BN_bin2bn(r.data(), static_cast<int>(r.size()), nullptr),
                   BN_bin2bn(s.data(), static_cast<int>(s.size()), nullptr));
    unsigned char* der = nullptr;
    const int n = i2d_ECDSA_SIG(sig.get(), &der);
    Bytes out(der, der + n);
    OPENSSL_free(der);
    return out;
  };
  std::vector<std::pair<Bytes, Bytes>> cases;
  for (size_t half : {32u, 48u, 66u}) {
    cases.push_back({Bytes(half, 0x11), Bytes(half, 0x22)});
    cases.push_back({Bytes(half, 0x80), Bytes(half, 0xff)});
    Bytes r(half, 0x33), s(half, 0x44);
    r[0] = r[1] = 0;
    s[0] = 0;
    s[1] = 0x80;
    cases.push_back({r, s});
    cases.push_back({Bytes(half, 0), Bytes(half, 0)});
    cases.push_back({Bytes(half - 3, 0x7f), Bytes(half, 0x01)});
  }
  cases.push_back({Bytes{0x01}, Bytes{0x80}});
  cases.push_back({Bytes{}, Bytes{0x05}});
  for (const auto& [r, s] : cases) {
    EXPECT_EQ(EcdsaDerFromRS(r, s), openssl_der(r, s)) << HexEncode(r) << " " << HexEncode(s);
  }
}

// common/sign.h: one row per HashAlg; every helper agrees with OpenSSL's own view of the digest.
TEST(HashAlgTest, NamesSizesNidsAndDigestsAgree) {
  struct Row {
    HashAlg hash;
    const char* name;
    size_t size;
    int nid;
  };
  const Row rows[] = {
      {HashAlg::kSha1, "SHA1", 20, NID_sha1},       {HashAlg::kSha224, "SHA224", 28, NID_sha224},
      {HashAlg::kSha256, "SHA256", 32, NID_sha256}, {HashAlg::kSha384, "SHA384", 48, NID_sha384},
      {HashAlg::kSha512, "SHA512", 64, NID_sha512},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_STREQ(HashAlgName(r.hash), r.name);
    EXPECT_EQ(HashAlgSize(r.hash), r.size);
    EXPECT_EQ(HashAlgNid(r.hash), r.nid);
    const EVP_MD* md = HashAlgMd(r.hash);
    ASSERT_NE(md, nullptr);
    EXPECT_EQ(static_cast<size_t>(EVP_MD_get_size(md)), r.size);
    EXPECT_EQ(EVP_MD_get_type(md), r.nid);
    absl::StatusOr<HashAlg> back = HashAlgFromNid(r.nid);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, r.hash);
    absl::StatusOr<HashAlg> parsed = ParseHashAlg(r.name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, r.hash);
  }
}

TEST(HashAlgTest, ParseAcceptsTheUsualSpellings) {
  const std::pair<const char*, HashAlg> rows[] = {
      {"SHA256", HashAlg::kSha256},   {"sha256", HashAlg::kSha256},
      {"SHA2-256", HashAlg::kSha256}, {"SHA-256", HashAlg::kSha256},
      {"sha2-384", HashAlg::kSha384}, {"Sha-512", HashAlg::kSha512},
      {"SHA-1", HashAlg::kSha1},      {"sha1", HashAlg::kSha1},
      {"SHA2-224", HashAlg::kSha224},
  };
  for (const auto& [name, hash] : rows) {
    absl::StatusOr<HashAlg> h = ParseHashAlg(name);
    ASSERT_TRUE(h.ok()) << name << ": " << h.status();
    EXPECT_EQ(*h, hash) << name;
  }
}

TEST(HashAlgTest, ParseRefusesEverythingElseAndSaysWhatIsValid) {
  for (const char* name : {"", "MD5", "SHA3-256", "sha512-256", "SHA512/256", "SHA256 ", " SHA256",
                           "SHA 256", "SHA-2-256", "SHA2", "256", "SHA", "shake256"}) {
    absl::StatusOr<HashAlg> h = ParseHashAlg(name);
    ASSERT_FALSE(h.ok()) << "'" << name << "' parsed";
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << name;
    const std::string msg(h.status().message());
    EXPECT_NE(msg.find(absl::StrCat("\"", name, "\"")), std::string::npos) << msg;
    EXPECT_NE(msg.find("SHA1, SHA224, SHA256, SHA384, SHA512"), std::string::npos) << msg;
  }
}

TEST(HashAlgTest, FromNidRefusesOtherDigests) {
  for (int nid : {NID_md5, NID_sha3_256, NID_sha512_256, NID_undef, NID_rsaEncryption}) {
    absl::StatusOr<HashAlg> h = HashAlgFromNid(nid);
    ASSERT_FALSE(h.ok()) << OBJ_nid2sn(nid);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SignSchemeTest, Names) {
  EXPECT_STREQ(SignSchemeName(SignScheme::kEcdsa), "ECDSA");
  EXPECT_STREQ(SignSchemeName(SignScheme::kRsaPkcs1), "RSA-PKCS1");
  EXPECT_STREQ(SignSchemeName(SignScheme::kRsaPss), "RSA-PSS");
}

// CheckSignRequest: the rows a caller can get wrong, and the ones that must pass.
TEST(CheckSignRequestTest, RefusesMismatchesAcceptsTheRest) {
  struct Row {
    const char* name;
    KeyType type;
    size_t digest_len;
    SignParams params;
    bool ok;
    const char* message;  // part of the error when !ok
  };
  const Row rows[] = {
      {"ec ecdsa sha256", KeyType::kEc, 32, {SignScheme::kEcdsa, HashAlg::kSha256, {}}, true, ""},
      {"ec ecdsa sha1", KeyType::kEc, 20, {SignScheme::kEcdsa, HashAlg::kSha1, {}}, true, ""},
      {"rsa pkcs1 sha512", KeyType::kRsa, 64, {SignScheme::kRsaPkcs1, HashAlg::kSha512, {}}, true,
       ""},
      {"rsa pss device salt", KeyType::kRsa, 48, {SignScheme::kRsaPss, HashAlg::kSha384, {}}, true,
       ""},
      {"rsa pss salt 0", KeyType::kRsa, 32, {SignScheme::kRsaPss, HashAlg::kSha256, 0}, true, ""},
      {"rsa pss salt 32", KeyType::kRsa, 32, {SignScheme::kRsaPss, HashAlg::kSha256, 32}, true,
       ""},
      // Digest length.
      {"short digest", KeyType::kEc, 31, {SignScheme::kEcdsa, HashAlg::kSha256, {}}, false,
       "32 bytes, got 31"},
      {"long digest", KeyType::kRsa, 33, {SignScheme::kRsaPkcs1, HashAlg::kSha256, {}}, false,
       "32 bytes, got 33"},
      {"empty digest", KeyType::kEc, 0, {SignScheme::kEcdsa, HashAlg::kSha256, {}}, false,
       "got 0"},
      {"sha256 digest announced as sha384", KeyType::kEc, 32,
       {SignScheme::kEcdsa, HashAlg::kSha384, {}}, false, "48 bytes, got 32"},
      // Scheme vs key type.
      {"ecdsa with rsa key", KeyType::kRsa, 32, {SignScheme::kEcdsa, HashAlg::kSha256, {}}, false,
       "ECDSA does not fit an RSA key"},
      {"pkcs1 with ec key", KeyType::kEc, 32, {SignScheme::kRsaPkcs1, HashAlg::kSha256, {}}, false,
       "RSA-PKCS1 does not fit an EC key"},
      {"pss with ec key", KeyType::kEc, 32, {SignScheme::kRsaPss, HashAlg::kSha256, {}}, false,
       "RSA-PSS does not fit an EC key"},
      // Salt length.
      {"salt with ecdsa", KeyType::kEc, 32, {SignScheme::kEcdsa, HashAlg::kSha256, 32}, false,
       "salt length"},
      {"salt with pkcs1", KeyType::kRsa, 32, {SignScheme::kRsaPkcs1, HashAlg::kSha256, 32}, false,
       "salt length"},
      {"negative pss salt", KeyType::kRsa, 32, {SignScheme::kRsaPss, HashAlg::kSha256, -1}, false,
       "salt length"},
  };
  for (const Row& r : rows) {
    const Bytes digest(r.digest_len, 0xab);
    const absl::Status st = CheckSignRequest(r.type, digest, r.params);
    if (r.ok) {
      EXPECT_TRUE(st.ok()) << r.name << ": " << st;
      continue;
    }
    ASSERT_FALSE(st.ok()) << r.name;
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << r.name;
    EXPECT_NE(st.message().find(r.message), absl::string_view::npos) << r.name << ": " << st;
  }
}

}  // namespace
}  // namespace hwid
