#include <gtest/gtest.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/ecdsa_der.h"
#include "common/ossl.h"
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

}  // namespace
}  // namespace hwid
