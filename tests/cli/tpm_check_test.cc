// `hwid tpm check` against swtpm provisioned with every swtpm-setup profile (good and the flawed
// ones real TPMs ship with): the verdict of each check, the exit code, the JSON validated against
// docs/tpm-check.schema.json with python3-jsonschema, and a power cycle between two checks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testing/run_shell.h"
#include "tests/testing/swtpm.h"

namespace {

using ::hwid::testing::RunShell;
using ::hwid::testing::ShellResult;
using ::hwid::testing::Swtpm;
using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string SourceDir() {
  const char* d = std::getenv("HWID_SOURCE_DIR");
  return d != nullptr ? d : ".";
}

struct CheckRun {
  int code = -1;
  std::string out;  // the table (stdout + stderr)
  Json json;
  std::map<std::string, Json> by_id;

  std::string Result(const std::string& id) const {
    auto it = by_id.find(id);
    return it == by_id.end() ? "absent" : it->second["result"].get<std::string>();
  }
  std::string Detail(const std::string& id) const {
    auto it = by_id.find(id);
    return it == by_id.end() ? "" : it->second["detail"].get<std::string>();
  }
};

class TpmCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hwid-check-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { RunShell(absl::StrCat("rm -rf '", dir_, "'")); }

  std::unique_ptr<Swtpm> Start(const std::string& profile) {
    absl::StatusOr<std::unique_ptr<Swtpm>> t = Swtpm::StartProfile(profile);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }

  // Check runs `hwid tpm check` with `args` and --json, validates the JSON against the schema.
  CheckRun Check(const std::string& tcti, const std::string& args) {
    CheckRun run;
    const std::string json_path = absl::StrCat(dir_, "/report-", ++runs_, ".json");
    const char* cli = std::getenv("HWID_CLI");
    ShellResult r = RunShell(absl::StrCat(cli != nullptr ? cli : "hwid", " tpm check --tcti '",
                                          tcti, "' --json '", json_path, "' ", args));
    run.code = r.exit_code;
    run.out = r.output;
    std::ifstream in(json_path);
    std::stringstream ss;
    ss << in.rdbuf();
    run.json = Json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(run.json.is_discarded()) << "no JSON report; output:\n" << r.output;
    if (run.json.is_discarded()) {
      return run;
    }
    ExpectSchemaValid(json_path);
    for (const Json& c : run.json["checks"]) {
      run.by_id[c["id"].get<std::string>()] = c;
    }
    EXPECT_EQ(run.json["summary"]["exit_code"].get<int>(), run.code) << run.out;
    return run;
  }

  void ExpectSchemaValid(const std::string& json_path) {
    ShellResult v = RunShell(absl::StrCat(
        "python3 -c 'import json,sys,jsonschema; "
        "jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))' '",
        json_path, "' '", SourceDir(), "/docs/tpm-check.schema.json'"));
    EXPECT_EQ(v.exit_code, 0) << "the report does not match docs/tpm-check.schema.json:\n"
                              << v.output;
  }

  std::string dir_;
  int runs_ = 0;
};

#define EXPECT_CHECK(run, id, result)                                                       \
  EXPECT_EQ((run).Result(id), result) << (id) << ": " << (run).Detail(id) << "\n" << (run).out

TEST_F(TpmCheckTest, SchemaValidatorRejectsAReportThatBreaksIt) {
  // The schema check above must be able to fail: a report with an unknown result value.
  const std::string bad = absl::StrCat(dir_, "/bad.json");
  std::ofstream(bad) << R"({"schema":"hwid.tpm-check/v1","tool":"hwid 0.1.0",)"
                     << R"("time":"2026-01-01T00:00:00Z","tcti":"x",)"
                     << R"("options":{"ca":null,"pcrs":"sha256:0","quick":true},"tpm":null,)"
                     << R"("checks":[{"id":"identity.connect","group":"identity","result":"maybe",)"
                     << R"("detail":"","action":"","metrics":{}}],)"
                     << R"("summary":{"pass":0,"warn":0,"fail":0,"skip":0,"exit_code":0}})";
  ShellResult v = RunShell(absl::StrCat(
      "python3 -c 'import json,sys,jsonschema; "
      "jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))' '",
      bad, "' '", SourceDir(), "/docs/tpm-check.schema.json'"));
  EXPECT_NE(v.exit_code, 0) << v.output;
  EXPECT_THAT(v.output, HasSubstr("maybe"));
}

TEST_F(TpmCheckTest, GoodProfilePassesEverythingIncludingTimings) {
  auto t = Start("good");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--ca '", t->ek_ca_bundle(), "' --runs 3"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_EQ(run.json["summary"]["fail"].get<int>(), 0) << run.out;
  EXPECT_EQ(run.json["tpm"]["manufacturer"], "IBM");
  for (const char* id :
       {"identity.connect", "identity.manufacturer", "identity.spec", "identity.clock",
        "capabilities.algorithms", "capabilities.ecc-curves", "capabilities.pcr-banks",
        "capabilities.transient-slots", "capabilities.sessions", "capabilities.nv",
        "capabilities.dictionary-attack", "ekcert.trust-bundle", "ekcert.present",
        "ekcert.nv-chain", "keys.ek.rsa2048", "keys.ek.ecc-p256", "attestation.ak",
        "attestation.activate.rsa2048", "attestation.activate.ecc-p256", "attestation.quote",
        "attestation.plugin.rsa2048", "attestation.plugin.ecc-p256", "attestation.plugin.default",
        "performance.sign.ec-p256", "performance.sign.rsa-2048", "performance.quote",
        "performance.createprimary.rsa2048", "performance.createprimary.ecc-p256",
        "performance.activatecredential"}) {
    EXPECT_CHECK(run, id, "pass");
  }
  for (const char* ek : {"rsa2048", "ecc-p256", "ecc-p384-h3"}) {
    for (const char* what : {"encoding", "profile", "validity", "chain", "key"}) {
      EXPECT_CHECK(run, absl::StrCat("ekcert.", ek, ".", what), "pass");
    }
  }
  // Timings are numbers, and the table says what the check was.
  const Json& sign = run.by_id["performance.sign.ec-p256"];
  EXPECT_GT(sign["metrics"]["median_ms"].get<double>(), 0.0);
  EXPECT_EQ(sign["metrics"]["runs"].get<double>(), 3.0);
  EXPECT_THAT(run.out, HasSubstr("no check failed (exit 0)"));
  EXPECT_THAT(run.Detail("attestation.plugin.default"), HasSubstr("spiffe://"));
}

TEST_F(TpmCheckTest, NoEkCertFailsButAllowlistModeAdmits) {
  auto t = Start("no-ekcert");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_CHECK(run, "ekcert.present", "fail");
  EXPECT_THAT(run.by_id["ekcert.present"]["action"].get<std::string>(), HasSubstr("ek_allowlist"));
  EXPECT_CHECK(run, "attestation.plugin.rsa2048", "pass");
  EXPECT_THAT(run.Detail("attestation.plugin.rsa2048"), HasSubstr("allowlist mode"));
  EXPECT_CHECK(run, "attestation.plugin.default", "fail");
  EXPECT_CHECK(run, "performance", "skip");
}

TEST_F(TpmCheckTest, EccOnlyWarnsAndNamesTheEkAlgsSetting) {
  auto t = Start("ecc-only");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_CHECK(run, "ekcert.present", "warn");
  EXPECT_CHECK(run, "ekcert.rsa2048.encoding", "absent");
  EXPECT_CHECK(run, "ekcert.ecc-p256.chain", "pass");
  EXPECT_CHECK(run, "attestation.plugin.ecc-p256", "pass");
  EXPECT_CHECK(run, "attestation.plugin.default", "warn");
  EXPECT_THAT(run.Detail("attestation.plugin.default"), HasSubstr("ek_algs"));
  EXPECT_THAT(run.by_id["attestation.plugin.default"]["action"].get<std::string>(),
              HasSubstr("ek_algs = [\"ecc-p256\"]"));
}

TEST_F(TpmCheckTest, RsaOnlyPasses) {
  auto t = Start("rsa-only");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_CHECK(run, "ekcert.present", "pass");
  EXPECT_CHECK(run, "ekcert.ecc-p256.encoding", "absent");
  EXPECT_CHECK(run, "attestation.plugin.default", "pass");
}

TEST_F(TpmCheckTest, ExpiredCertificateFailsValidityNotChain) {
  auto t = Start("expired-ekcert");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_CHECK(run, "ekcert.rsa2048.validity", "fail");
  EXPECT_THAT(run.Detail("ekcert.rsa2048.validity"), HasSubstr("expired on"));
  EXPECT_CHECK(run, "ekcert.rsa2048.chain", "pass");
  EXPECT_CHECK(run, "ekcert.rsa2048.profile", "pass");
  EXPECT_CHECK(run, "ekcert.rsa2048.key", "pass");
  EXPECT_CHECK(run, "attestation.plugin.rsa2048", "fail");
  EXPECT_THAT(run.Detail("attestation.plugin.rsa2048"), HasSubstr("expired"));
}

TEST_F(TpmCheckTest, WrongCaFailsTheChainAndTheRightBundlePasses) {
  auto t = Start("wrong-ca");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_CHECK(run, "ekcert.rsa2048.chain", "fail");
  EXPECT_THAT(run.Detail("ekcert.rsa2048.chain"), HasSubstr("unable to get local issuer"));
  EXPECT_CHECK(run, "ekcert.rsa2048.key", "pass");
  EXPECT_CHECK(run, "attestation.plugin.rsa2048", "fail");
  EXPECT_THAT(run.Detail("attestation.plugin.rsa2048"), HasSubstr("chain"));
  // The CA that did issue them: everything passes.
  CheckRun other = Check(t->tcti(), absl::StrCat("--quick --ca '", t->dir(), "/other-ca.pem'"));
  EXPECT_EQ(other.code, 0) << other.out;
  EXPECT_CHECK(other, "ekcert.rsa2048.chain", "pass");
}

TEST_F(TpmCheckTest, CertificateForAnotherKeyFailsTheKeyCheck) {
  auto t = Start("cert-key-mismatch");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 1) << run.out;
  for (const char* ek : {"rsa2048", "ecc-p256"}) {
    EXPECT_CHECK(run, absl::StrCat("ekcert.", ek, ".chain"), "pass");
    EXPECT_CHECK(run, absl::StrCat("ekcert.", ek, ".key"), "fail");
    EXPECT_CHECK(run, absl::StrCat("attestation.plugin.", ek), "fail");
  }
  EXPECT_THAT(run.Detail("ekcert.rsa2048.key"), HasSubstr("not the EK"));
}

TEST_F(TpmCheckTest, NvQuirksAreWarningsAndTheAttestationStillWorks) {
  auto t = Start("trailing-bytes");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_CHECK(run, "ekcert.rsa2048.encoding", "warn");
  EXPECT_THAT(run.Detail("ekcert.rsa2048.encoding"), HasSubstr("10 01 00"));
  EXPECT_CHECK(run, "ekcert.ecc-p256.encoding", "warn");
  EXPECT_THAT(run.Detail("ekcert.ecc-p256.encoding"), HasSubstr("16 bytes"));
  EXPECT_CHECK(run, "ekcert.ecc-p384-h3.encoding", "pass");
  EXPECT_THAT(run.Detail("ekcert.ecc-p384-h3.encoding"), HasSubstr("padding"));
  EXPECT_CHECK(run, "attestation.plugin.rsa2048", "pass");
  EXPECT_CHECK(run, "attestation.plugin.ecc-p256", "pass");
}

TEST_F(TpmCheckTest, IntermediateFromNvCompletesTheChain) {
  auto t = Start("intermediate-in-nv");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_root(), "'"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_CHECK(run, "ekcert.nv-chain", "pass");
  EXPECT_THAT(run.Detail("ekcert.nv-chain"), HasSubstr("0x01c00100"));
  EXPECT_CHECK(run, "ekcert.rsa2048.chain", "pass");
  EXPECT_CHECK(run, "attestation.plugin.default", "pass");
}

TEST_F(TpmCheckTest, Sha1OnlyBankFailsTheDefaultPcrs) {
  auto t = Start("sha1-only-pcrs");
  ASSERT_NE(t, nullptr);
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", t->ek_ca_bundle(), "'"));
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_CHECK(run, "capabilities.pcr-banks", "fail");
  EXPECT_THAT(run.Detail("capabilities.pcr-banks"), HasSubstr("sha256 bank is not allocated"));
  EXPECT_CHECK(run, "attestation.quote", "fail");
  EXPECT_CHECK(run, "attestation.plugin.default", "fail");
  // Quoting the bank it has works; the missing sha256 bank stays a warning.
  CheckRun sha1 = Check(t->tcti(), absl::StrCat("--quick --pcrs sha1:0-7 --ca '",
                                                t->ek_ca_bundle(), "'"));
  EXPECT_EQ(sha1.code, 0) << sha1.out;
  EXPECT_CHECK(sha1, "capabilities.pcr-banks", "warn");
  EXPECT_CHECK(sha1, "attestation.quote", "pass");
  EXPECT_CHECK(sha1, "attestation.plugin.default", "pass");
}

TEST_F(TpmCheckTest, PowerCycleIncrementsResetCount) {
  auto t = Start("good");
  ASSERT_NE(t, nullptr);
  CheckRun before = Check(t->tcti(), "--quick");
  ASSERT_EQ(before.code, 0) << before.out;
  const int r0 = before.json["tpm"]["reset_count"].get<int>();
  // Power off and on through swtpm's control channel (CMD_INIT), then TPM2_Startup(CLEAR).
  ShellResult cycle = RunShell(absl::StrCat(
      "swtpm_ioctl --tcp 127.0.0.1:", t->ctrl_port(), " -i && tpm2_startup -T '", t->tcti(),
      "' -c"));
  ASSERT_EQ(cycle.exit_code, 0) << cycle.output;
  CheckRun after = Check(t->tcti(), "--quick");
  ASSERT_EQ(after.code, 0) << after.out;
  EXPECT_EQ(after.json["tpm"]["reset_count"].get<int>(), r0 + 1) << after.out;
  EXPECT_THAT(after.Detail("identity.clock"), HasSubstr(absl::StrCat("resetCount ", r0 + 1)));
}

TEST_F(TpmCheckTest, TrustBundleDirectoryOfDerAndPem) {
  auto t = Start("good");
  ASSERT_NE(t, nullptr);
  // The layout community bundles use: roots and intermediates as separate DER and PEM files.
  // ek-ca.pem is the root followed by the intermediate: split it, root as DER, intermediate PEM.
  ShellResult mk = RunShell(absl::StrCat(
      "set -e; cd '", dir_, "'; mkdir -p bundle/Vendor/RootCA bundle/Vendor/IntermediateCA; "
      "awk '/BEGIN CERT/{n++} {print > (\"part\" n \".pem\")}' '", t->ek_ca_bundle(), "'; "
      "openssl x509 -in part1.pem -outform DER -out bundle/Vendor/RootCA/root.cer; "
      "cp part2.pem bundle/Vendor/IntermediateCA/inter.crt; "
      "echo 'not a certificate' > bundle/README.txt"));
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  CheckRun run = Check(t->tcti(), absl::StrCat("--quick --ca '", dir_, "/bundle'"));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_CHECK(run, "ekcert.trust-bundle", "pass");
  EXPECT_THAT(run.Detail("ekcert.trust-bundle"), HasSubstr("1 root(s), 1 intermediate(s)"));
  EXPECT_CHECK(run, "ekcert.rsa2048.chain", "pass");
  // A bundle that cannot be read is a failed check naming it, not a crash.
  CheckRun missing = Check(t->tcti(), absl::StrCat("--quick --ca '", dir_, "/nope.pem'"));
  EXPECT_EQ(missing.code, 1) << missing.out;
  EXPECT_CHECK(missing, "ekcert.trust-bundle", "fail");
  EXPECT_THAT(missing.Detail("ekcert.trust-bundle"), HasSubstr("nope.pem"));
}

TEST_F(TpmCheckTest, UnreachableTpmIsAFailedCheckAndUsageErrorsExit2) {
  CheckRun run = Check("swtpm:host=127.0.0.1,port=1", "--quick");
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_CHECK(run, "identity.connect", "fail");
  EXPECT_TRUE(run.json["tpm"].is_null());
  const char* cli = std::getenv("HWID_CLI");
  const std::string hwid = cli != nullptr ? cli : "hwid";
  EXPECT_EQ(RunShell(hwid + " tpm check --pcrs sha999:1").exit_code, 2);
  EXPECT_EQ(RunShell(hwid + " tpm check --runs 0").exit_code, 2);
  EXPECT_EQ(RunShell(hwid + " tpm check --ak-handle 0x01000000").exit_code, 2);
  EXPECT_EQ(RunShell(hwid + " tpm check --bogus").exit_code, 2);
}

}  // namespace
