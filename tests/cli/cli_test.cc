// The hwid CLI as a user runs it: exit codes, output, and signatures checked by `openssl dgst`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testing/swtpm.h"
#include "tests/testing/run_shell.h"

namespace {

using ::testing::HasSubstr;

struct Result {
  int code;
  std::string out;
};

Result RunCli(const std::string& args) {
  const char* cli = std::getenv("HWID_CLI");
  hwid::testing::ShellResult r = hwid::testing::RunShell(
      absl::StrCat("HWID_TCTI='", hwid::testing::GlobalSwtpm().tcti(), "' ",
                   cli != nullptr ? cli : "hwid", " ", args));
  return {r.exit_code, r.output};
}

int Shell(const std::string& cmd) {
  int st = system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hwid-cli-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { Shell(absl::StrCat("rm -rf '", dir_, "'")); }
  std::string dir_;
};

TEST_F(CliTest, HelpAndUsageErrors) {
  EXPECT_EQ(RunCli("--help").code, 0);
  EXPECT_EQ(RunCli("").code, 2);
  EXPECT_EQ(RunCli("tpm info --help").code, 0);
  EXPECT_EQ(RunCli("key create --help").code, 0);
  Result r = RunCli("tpm info --no-such-option");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("unknown option --no-such-option"));
  r = RunCli("key create --alg ec-p999 --out x.pem");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("ec-p256"));
  EXPECT_EQ(RunCli("nosuch thing").code, 2);
  EXPECT_EQ(RunCli("key create --alg ec-p256").code, 2);  // --out missing
}

TEST_F(CliTest, InfoShowsManufacturerAndBanks) {
  Result r = RunCli("tpm info");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("Manufacturer:     IBM"));
  EXPECT_THAT(r.out, HasSubstr("sha256 [0-23]"));
}

TEST_F(CliTest, EkChainVerifiesAndWrongCaFails) {
  Result r = RunCli(absl::StrCat("tpm ek --ca '", hwid::testing::GlobalSwtpm().ek_ca_bundle(), "' --out-dir '", dir_, "'"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("chain:        OK"));
  EXPECT_THAT(r.out, HasSubstr("key match:    OK"));
  EXPECT_EQ(Shell(absl::StrCat("test -s '", dir_, "/ek-rsa2048.crt.pem' && test -s '", dir_, "/ek-ecc-p256.pub.pem'")), 0);
  // A bundle holding only an unrelated self-signed root: exit 1 and a chain failure.
  ASSERT_EQ(Shell(absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=other "
                               "-keyout '", dir_, "/o.key' -out '", dir_, "/other.pem' -days 1 >/dev/null 2>&1")), 0);
  r = RunCli(absl::StrCat("tpm ek --alg rsa --ca '", dir_, "/other.pem'"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("chain:        FAILED"));
  // A missing bundle is an operational error naming the path.
  r = RunCli(absl::StrCat("tpm ek --ca '", dir_, "/missing.pem'"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("missing.pem"));
}

TEST_F(CliTest, KeyCreateSignVerifyWithOpenssl) {
  for (const char* alg : {"ec-p256", "rsa-2048"}) {
    SCOPED_TRACE(alg);
    const std::string k = absl::StrCat(dir_, "/", alg);
    ASSERT_EQ(RunCli(absl::StrCat("key create --alg ", alg, " --out '", k, ".pem'")).code, 0);
    ASSERT_EQ(RunCli(absl::StrCat("key pub --key '", k, ".pem' --out '", k, ".pub'")).code, 0);
    ASSERT_EQ(Shell(absl::StrCat("printf 'hello hwid' > '", k, ".msg'")), 0);
    Result r = RunCli(absl::StrCat("key sign --key '", k, ".pem' --in '", k, ".msg' --out '", k, ".sig'"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(Shell(absl::StrCat("openssl dgst -sha256 -verify '", k, ".pub' -signature '", k, ".sig' '", k,
                                 ".msg' >/dev/null")), 0);
    // A different message does not verify.
    ASSERT_EQ(Shell(absl::StrCat("printf 'hello hwid!' > '", k, ".msg2'")), 0);
    EXPECT_NE(Shell(absl::StrCat("openssl dgst -sha256 -verify '", k, ".pub' -signature '", k, ".sig' '", k,
                                 ".msg2' >/dev/null 2>&1")), 0);
  }
  const std::string k = dir_ + "/rsa-2048";
  ASSERT_EQ(RunCli(absl::StrCat("key sign --scheme pss --key '", k, ".pem' --in '", k, ".msg' --out '", k, ".pss'")).code, 0);
  EXPECT_EQ(Shell(absl::StrCat("openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-2 -verify '", k,
                               ".pub' -signature '", k, ".pss' '", k, ".msg' >/dev/null")), 0);
}

TEST_F(CliTest, PersistSignByHandleEvict) {
  const std::string k = dir_ + "/p";
  ASSERT_EQ(RunCli(absl::StrCat("key create --alg ec-p256 --out '", k, ".pem' --persist 0x81000040")).code, 0);
  ASSERT_EQ(Shell(absl::StrCat("printf data > '", k, ".msg'")), 0);
  ASSERT_EQ(RunCli(absl::StrCat("key sign --key handle:0x81000040 --in '", k, ".msg' --out '", k, ".sig'")).code, 0);
  ASSERT_EQ(RunCli(absl::StrCat("key pub --key handle:0x81000040 --out '", k, ".pub'")).code, 0);
  EXPECT_EQ(Shell(absl::StrCat("openssl dgst -sha256 -verify '", k, ".pub' -signature '", k, ".sig' '", k, ".msg' >/dev/null")), 0);
  EXPECT_EQ(RunCli("key evict --handle 0x81000040").code, 0);
  Result r = RunCli("key evict --handle 0x81000040");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("0x81000040"));
  EXPECT_THAT(r.out, HasSubstr("does not exist"));
}

TEST_F(CliTest, CorruptKeyFileIsAClearError) {
  ASSERT_EQ(Shell(absl::StrCat("printf -- '-----BEGIN TSS2 PRIVATE KEY-----\\nAAAA\\n-----END TSS2 PRIVATE KEY-----\\n' > '",
                               dir_, "/bad.pem'; printf x > '", dir_, "/m'")), 0);
  Result r = RunCli(absl::StrCat("key sign --key '", dir_, "/bad.pem' --in '", dir_, "/m' --out '", dir_, "/s'"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("bad.pem"));
}

TEST_F(CliTest, AttestSelftestRsaAndEccEks) {
  Result r = RunCli("attest selftest --ek rsa --ak-alg ec-p256 --ak-handle 0x81000050 --pcrs sha256:0-7+sha1:0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("secret matches"));
  EXPECT_THAT(r.out, HasSubstr("quote verified in software"));
  r = RunCli("attest selftest --ek ecc --ak-alg rsa-2048 --ak-handle 0x81000051");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(RunCli("key evict --handle 0x81000050").code, 0);
  EXPECT_EQ(RunCli("key evict --handle 0x81000051").code, 0);
}

TEST_F(CliTest, UnreachableTpmExitsOneWithHint) {
  Result r = RunCli("tpm info --tcti swtpm:host=127.0.0.1,port=1");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("check"));
}

}  // namespace
