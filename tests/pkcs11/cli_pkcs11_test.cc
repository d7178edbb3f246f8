// The hwid CLI with pkcs11: URIs, on a real SoftHSM2 token: key create --pkcs11, key list,
// key pub, key sign (verified by OpenSSL's default provider), and the error paths.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pkcs11/uri_pem.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/testing/run_shell.h"

namespace hwid {
namespace {

using ::hwid::testing::SoftHsm;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kPin[] = "cli-pin-4411";

struct Result {
  int rc = -1;
  std::string out;  // stdout + stderr
};

Result RunHwid(const std::string& args) {
  const char* cli = std::getenv("HWID_CLI");
  ::hwid::testing::ShellResult r =
      ::hwid::testing::RunShell(absl::StrCat(cli != nullptr ? cli : "hwid", " ", args));
  return {r.exit_code, r.output};
}

std::string Quote(const std::string& s) { return absl::StrCat("'", s, "'"); }

class CliPkcs11Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!hwid::testing::SoftHsmAvailable()) return;
    auto h = SoftHsm::Start("cli-token", kPin, "so-1");
    if (h.ok()) hsm_ = h->release();
  }
  static void TearDownTestSuite() {
    delete hsm_;
    hsm_ = nullptr;
  }
  void SetUp() override {
    HWID_REQUIRE_SOFTHSM();
    ASSERT_NE(hsm_, nullptr);
  }
  static SoftHsm* hsm_;
};
SoftHsm* CliPkcs11Test::hsm_ = nullptr;

// --out writes a PKCS#11 PROVIDER URI key file naming the new key and its module, never the PIN.
TEST_F(CliPkcs11Test, CreateWritesUriKeyFileWithoutPin) {
  const std::string file = hsm_->dir() + "/wrapped.pem";
  Result c = RunHwid(absl::StrCat("key create --pkcs11 ", Quote(hsm_->uri()),
                                  " --alg ec-p256 --label wrapped --out ", file));
  ASSERT_EQ(c.rc, 0) << c.out;
  absl::StatusOr<Bytes> pem = ReadFile(file);
  ASSERT_TRUE(pem.ok()) << pem.status();
  const std::string text(pem->begin(), pem->end());
  EXPECT_THAT(text, HasSubstr("-----BEGIN PKCS#11 PROVIDER URI-----"));
  absl::StatusOr<std::string> uri = pkcs11::ParseUriFile(*pem);
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_THAT(*uri, HasSubstr("object=wrapped"));
  EXPECT_THAT(*uri, HasSubstr(absl::StrCat("module-path=", SoftHsm::kModule)));
  EXPECT_THAT(*uri, Not(HasSubstr("pin")));
  EXPECT_THAT(text + c.out, Not(HasSubstr(kPin)));
}

TEST_F(CliPkcs11Test, CreateListPubSignVerify) {
  for (const char* alg : {"ec-p256", "ec-p384", "rsa-2048"}) {
    SCOPED_TRACE(alg);
    const std::string label = absl::StrCat("cli-", alg);
    Result c = RunHwid(absl::StrCat("key create --pkcs11 ", Quote(hsm_->uri()), " --alg ", alg,
                                    " --label ", label));
    ASSERT_EQ(c.rc, 0) << c.out;
    // The last line is the key's URI.
    std::string out(absl::StripTrailingAsciiWhitespace(c.out));
    const std::string key_uri = out.substr(out.rfind('\n') + 1);
    EXPECT_THAT(key_uri, StartsWith("pkcs11:"));
    EXPECT_THAT(key_uri, HasSubstr(absl::StrCat("object=", label)));
    EXPECT_THAT(c.out, Not(HasSubstr(kPin)));

    Result l = RunHwid(absl::StrCat("key list ", Quote(hsm_->uri())));
    ASSERT_EQ(l.rc, 0) << l.out;
    EXPECT_THAT(l.out, HasSubstr(key_uri));

    const std::string full = absl::StrCat(key_uri, "?module-path=", SoftHsm::kModule, "&pin-value=", kPin);
    const std::string dir = hsm_->dir();
    ASSERT_TRUE(WriteFile(dir + "/msg", AsSpan(std::string("message for the token"))).ok());
    Result p = RunHwid(absl::StrCat("key pub --key ", Quote(full), " --out ", dir, "/pub.pem"));
    ASSERT_EQ(p.rc, 0) << p.out;
    Result s = RunHwid(absl::StrCat("key sign --key ", Quote(full), " --in ", dir, "/msg --out ",
                                    dir, "/sig"));
    ASSERT_EQ(s.rc, 0) << s.out;

    // Oracle: OpenSSL's default provider verifies the signature over the message.
    absl::StatusOr<Bytes> pub_pem = ReadFile(dir + "/pub.pem");
    absl::StatusOr<Bytes> sig = ReadFile(dir + "/sig");
    ASSERT_TRUE(pub_pem.ok() && sig.ok());
    OsslPtr<BIO> bio(BIO_new_mem_buf(pub_pem->data(), static_cast<int>(pub_pem->size())));
    OsslPtr<EVP_PKEY> pub(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
    ASSERT_NE(pub, nullptr);
    const std::string msg = "message for the token";
    OsslPtr<EVP_MD_CTX> md(EVP_MD_CTX_new());
    const EVP_MD* h = std::string(alg) == "ec-p384" ? EVP_sha384() : EVP_sha256();
    ASSERT_EQ(EVP_DigestVerifyInit(md.get(), nullptr, h, nullptr, pub.get()), 1);
    EXPECT_EQ(EVP_DigestVerify(md.get(), sig->data(), sig->size(),
                               reinterpret_cast<const uint8_t*>(msg.data()), msg.size()), 1);
  }
}

TEST_F(CliPkcs11Test, PssSignatureVerifies) {
  Result c = RunHwid(absl::StrCat("key create --pkcs11 ", Quote(hsm_->uri()),
                                  " --alg rsa-2048 --label cli-pss"));
  ASSERT_EQ(c.rc, 0) << c.out;
  const std::string full =
      absl::StrCat("pkcs11:token=cli-token;object=cli-pss?module-path=", SoftHsm::kModule, "&pin-value=", kPin);
  const std::string dir = hsm_->dir();
  ASSERT_TRUE(WriteFile(dir + "/m2", AsSpan(std::string("pss"))).ok());
  Result s = RunHwid(absl::StrCat("key sign --key ", Quote(full), " --scheme pss --in ", dir,
                                  "/m2 --out ", dir, "/sig2"));
  ASSERT_EQ(s.rc, 0) << s.out;
  EXPECT_THAT(s.out, HasSubstr("pss"));
}

TEST_F(CliPkcs11Test, Errors) {
  // Wrong PIN: exit 1, clear message, PIN not echoed.
  Result w = RunHwid(absl::StrCat("key list ", Quote(absl::StrCat(hsm_->uri_no_pin(), "&pin-value=bad-7755"))));
  EXPECT_EQ(w.rc, 1);
  EXPECT_THAT(w.out, HasSubstr("CKR_PIN_INCORRECT"));
  EXPECT_THAT(w.out, Not(HasSubstr("bad-7755")));
  // Unknown object.
  Result u = RunHwid(absl::StrCat("key pub --key ",
                                  Quote(absl::StrCat("pkcs11:token=cli-token;object=nope?module-path=",
                                                     SoftHsm::kModule, "&pin-value=", kPin))));
  EXPECT_EQ(u.rc, 1);
  EXPECT_THAT(u.out, HasSubstr("no private key"));
  // Module that does not load.
  Result m = RunHwid("key list 'pkcs11:token=x?module-path=/nonexistent/mod.so'");
  EXPECT_EQ(m.rc, 1);
  EXPECT_THAT(m.out, HasSubstr("/nonexistent/mod.so"));
  // Usage errors: missing label, bad algorithm, extra argument.
  EXPECT_EQ(RunHwid(absl::StrCat("key create --pkcs11 ", Quote(hsm_->uri()), " --alg ec-p256")).rc, 2);
  EXPECT_EQ(RunHwid(absl::StrCat("key create --pkcs11 ", Quote(hsm_->uri()), " --alg ed25519 --label x")).rc, 2);
  EXPECT_EQ(RunHwid("key list").rc, 2);
  // Not a pkcs11 URI.
  EXPECT_EQ(RunHwid("key list file:/etc/passwd").rc, 1);
}

}  // namespace
}  // namespace hwid
