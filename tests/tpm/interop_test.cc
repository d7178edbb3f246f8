// Interoperability with Debian's tpm2-tools (the test oracle): key files move both ways.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <openssl/pem.h>

#include "absl/strings/str_cat.h"
#include "common/ossl.h"
#include "common/bytes.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tests/testing/run_shell.h"

namespace hwid::tpm {
namespace {

// Shell executes a shell command with the test's TCTI; returns its exit status and stdout+stderr.
std::pair<int, std::string> Shell(const std::string& cmd) {
  hwid::testing::ShellResult r = hwid::testing::RunShell(
      absl::StrCat("TPM2TOOLS_TCTI='", testing::GlobalSwtpm().tcti(), "' ", cmd));
  return {r.exit_code, r.output};
}

class InteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hwid-interop-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto t = Tpm::Open(testing::GlobalSwtpm().tcti());
    ASSERT_TRUE(t.ok()) << t.status().message();
    tpm_ = std::move(*t);
  }
  void TearDown() override {
    Shell("tpm2_flushcontext -t");
    auto handles = tpm_->TransientHandles();
    ASSERT_TRUE(handles.ok());
    EXPECT_TRUE(handles->empty());
    Shell(absl::StrCat("rm -rf '", dir_, "'"));
  }
  std::string dir_;
  std::unique_ptr<Tpm> tpm_;
};

TEST_F(InteropTest, Tpm2ToolsKeyLoadsAndSignsThroughHwid) {
  // The owner-hierarchy primary from the TSS2 key-file template, then a key under it, encoded
  // with tpm2_encodeobject as a TSS2 PRIVATE KEY.
  auto [rc, out] = Shell(absl::StrCat(
      "cd '", dir_, "' && tpm2_createprimary -C o -g sha256 -G ecc256:null:aes128cfb "
      "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c prim.ctx && "
      "tpm2_create -C prim.ctx -G ecc256:ecdsa-sha256 -u k.pub -r k.priv && "
      "tpm2_encodeobject -C prim.ctx -u k.pub -r k.priv -o tools.pem && tpm2_flushcontext -t"));
  ASSERT_EQ(rc, 0) << out;
  auto pem = ReadFile(dir_ + "/tools.pem");
  ASSERT_TRUE(pem.ok());
  auto kf = wire::ParseTpmKeyFile(*pem);
  ASSERT_TRUE(kf.ok()) << kf.status().message();
  EXPECT_EQ(kf->parent, TPM2_RH_OWNER);
  auto key = tpm_->LoadKey(*kf);
  ASSERT_TRUE(key.ok()) << key.status().message();
  const std::string msg = "signed by a tpm2-tools key";
  auto digest = wire::Hash(TPM2_ALG_SHA256, AsSpan(msg));
  auto sig = tpm_->Sign(*key, *digest, SignScheme::kEcdsa, TPM2_ALG_SHA256);
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(wire::VerifySignature(key->pub.publicArea, AsSpan(msg), *sig).ok());
}

TEST_F(InteropTest, HwidKeyLoadsAndSignsInTpm2Tools) {
  auto kf = tpm_->CreateKey(wire::KeyAlg::kEcP256);
  ASSERT_TRUE(kf.ok()) << kf.status().message();
  auto pem = wire::EncodeTpmKeyFilePem(*kf);
  ASSERT_TRUE(pem.ok());
  ASSERT_TRUE(WriteFile(dir_ + "/hwid.pem", AsSpan(*pem)).ok());
  auto pub = wire::ParsePublic(kf->pub);
  ASSERT_TRUE(pub.ok());
  auto spki = wire::PublicToEvp(pub->publicArea);
  ASSERT_TRUE(spki.ok());
  OsslPtr<BIO> bio(BIO_new_file((dir_ + "/hwid.pub.pem").c_str(), "w"));
  ASSERT_EQ(PEM_write_bio_PUBKEY(bio.get(), spki->get()), 1);
  bio.reset();
  auto name = wire::ObjectName(pub->publicArea);
  ASSERT_TRUE(name.ok());

  auto [rc, out] = Shell(absl::StrCat(
      "cd '", dir_, "' && printf 'hello from tpm2-tools' > msg && "
      "tpm2_load -r hwid.pem -c k.ctx && "
      "tpm2_sign -c k.ctx -g sha256 -s ecdsa -f plain -o sig.der msg && tpm2_flushcontext -t && "
      "openssl dgst -sha256 -verify hwid.pub.pem -signature sig.der msg"));
  ASSERT_EQ(rc, 0) << out;
  // tpm2_load printed the name the TPM computed for our key; it must be ours.
  EXPECT_THAT(out, ::testing::HasSubstr(absl::StrCat("name: ", HexEncode(*name))));
  EXPECT_THAT(out, ::testing::HasSubstr("Verified OK"));
}

}  // namespace
}  // namespace hwid::tpm
