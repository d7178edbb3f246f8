// Provider order does not matter (issue 12): with the openssl.cnf of docs/provider.md, hwid
// activated before or after OpenSSL's default provider, programs that use only software keys
// behave as without hwid and send no TPM command (also with no TPM reachable), hwid keys serve
// TLS 1.2 (ECDHE-ECDSA, ECDHE-RSA) and TLS 1.3, and the TPM generates keys only when asked for
// with -propquery provider=hwid. Every program reads the documented openssl.cnf, taken from the
// page itself (DocumentedOpensslCnf); no -provider flags.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "tests/provider/cli_support.h"

namespace hwid {
namespace {

using ::hwid::testing::Background;
using ::hwid::testing::FreePort;
using ::hwid::testing::ProviderOrder;
using ::testing::HasSubstr;
using ::testing::Not;

// A TCTI that reaches nothing: the host has no TPM as far as hwid can tell.
constexpr char kNoTpm[] = "device:/nonexistent/hwid-test-tpm0";

constexpr char kTls12Ecdsa[] = "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256";
constexpr char kTls12Rsa[] = "-tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256";

// StatsLines are the "hwid-provider-stats:" lines (HWID_PROVIDER_STATS=1) in `out`.
std::vector<std::string> StatsLines(const std::string& out) {
  std::vector<std::string> lines;
  for (absl::string_view l : absl::StrSplit(out, '\n')) {
    if (absl::StrContains(l, "hwid-provider-stats:")) {
      lines.emplace_back(l);
    }
  }
  return lines;
}

// ExpectNoTpmCommand checks that hwid was loaded in the processes that wrote `out` (each printed
// its stats line at exit) and that none of them sent a TPM command.
void ExpectNoTpmCommand(const std::string& out) {
  const std::vector<std::string> lines = StatsLines(out);
  EXPECT_FALSE(lines.empty()) << "hwid was not loaded:\n" << out;
  for (const std::string& l : lines) {
    EXPECT_THAT(l, HasSubstr(" tpm_commands=0 ")) << out;
    EXPECT_THAT(l, HasSubstr(" signatures=0")) << out;
  }
}

class OrderTest : public testing::ProviderCliTest,
                  public ::testing::WithParamInterface<ProviderOrder> {
 protected:
  OrderTest() : ProviderCliTest("hwid-order") {}

  // Cnf writes the documented openssl.cnf with the providers in this test's order and the TCTI
  // `tcti` ("" = the swtpm), and returns the prefix that makes a command use it and print hwid's
  // stats line at exit.
  std::string Cnf(const std::string& tcti) {
    const std::string cnf = WriteOpensslCnf("openssl.cnf", "", GetParam(), tcti);
    return absl::StrCat("export OPENSSL_CONF=", cnf, " HWID_PROVIDER_STATS=1 && ");
  }

  // Tls serves GET / once with `key`.pem and server.crt under the openssl.cnf of `env` (Cnf)
  // and connects with s_client under the same openssl.cnf and `client_flags`; returns the
  // client's output with the server's log appended. `mutual`: the server requires a client
  // certificate and the client sends client.crt with the key client.pem. The server runs in the
  // background, stopped when this returns.
  std::string Tls(const std::string& env, const std::string& key, const std::string& client_flags,
                  const std::string& expect_sig, bool mutual = false) {
    const int port = FreePort();
    const std::string log = absl::StrCat(dir_, "/server-", port, ".log");
    Background server(absl::StrCat("sh -c \"", env, "cd ", dir_, " && openssl s_server -accept ",
                                   "127.0.0.1:", port, " -cert server.crt -key ", key,
                                   ".pem -naccept 1 -www",
                                   mutual ? " -CAfile ca.crt -Verify 1 -verify_return_error" : "",
                                   "\""),
                      log);
    EXPECT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
    const std::string version = absl::StrContains(client_flags, "-tls1_3") ? "-tls1_3" : "-tls1_2";
    const testing::ShellResult r =
        Run(absl::StrCat(env, testing::SClientGetCommand(
                                  mutual ? "-cert client.crt -key client.pem " : "", port,
                                  client_flags)),
            30);
    EXPECT_EQ(server.Wait(), 0) << server.Log();
    testing::ExpectSClientGetOk(r, version, expect_sig);
    if (mutual) {
      // The server verified the client's handshake signature.
      EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
      EXPECT_THAT(server.Log(), HasSubstr("1 server accepts that finished"));
    }
    return absl::StrCat(r.output, "\n--- server ---\n", server.Log());
  }

  // Cert writes `name`.crt for `key`.pem (CN `name`, subjectAltName `san`) through a CSR, issued
  // by ca.pem / ca.crt under the openssl.cnf of `env`, and checks the CSR and the chain.
  void Cert(const std::string& env, const std::string& key, const std::string& name = "server",
            const std::string& san = "IP:127.0.0.1") {
    MustRun(absl::StrCat(env, "openssl req -new -key ", key, ".pem -subj /CN=", name,
                         " -addext subjectAltName=", san, " -out ", name, ".csr && openssl req "
                         "-verify -noout -in ", name, ".csr && openssl x509 -req -in ", name,
                         ".csr -CA ca.crt -CAkey ca.pem -CAcreateserial -copy_extensions copy "
                         "-days 1 -out ", name, ".crt && openssl verify -CAfile ca.crt ", name,
                         ".crt"));
  }

  // SoftwareOnly runs key generation, CSRs, certificates and TLS 1.2/1.3 with software keys
  // only, under the openssl.cnf of `env`, and returns everything the programs printed.
  std::string SoftwareOnly(const std::string& env) {
    std::string out;
    auto must = [&](const std::string& cmd) {
      const testing::ShellResult r = Run(env + cmd, 120);
      EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
      absl::StrAppend(&out, r.output, "\n");
    };
    must("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.pem "
         "-subj \"/CN=software CA\" -days 2 -addext basicConstraints=critical,CA:TRUE "
         "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt");
    must("openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa-ca.pem -subj /CN=rsa -days 1 "
         "-out rsa-ca.crt");
    must("openssl genpkey -algorithm EC -pkeyopt group:P-384 -out ec.pem");
    must("openssl genpkey -algorithm RSA -pkeyopt bits:2048 -out rsa.pem");
    for (const char* k : {"ca.pem", "rsa-ca.pem", "ec.pem", "rsa.pem"}) {
      EXPECT_THAT(Text(k), HasSubstr("BEGIN PRIVATE KEY")) << k;
    }
    Cert(env, "ec");
    // ECDHE on a NIST curve makes libssl generate a P-256 ephemeral key with an unqualified
    // fetch: with hwid first and no default_properties it would be hwid's key management.
    absl::StrAppend(&out, Tls(env, "ec", absl::StrCat(kTls12Ecdsa, " -groups P-256:P-384"),
                              "Signature type: ECDSA"));
    absl::StrAppend(&out, Tls(env, "ec", "-tls1_3 -groups P-256", "Signature type: ECDSA"));
    absl::StrAppend(&out, Tls(env, "ec", "-tls1_3", "Signature type: ECDSA"));
    Cert(env, "rsa");
    absl::StrAppend(&out, Tls(env, "rsa", absl::StrCat(kTls12Rsa, " -groups P-384"),
                              "Signature type: RSA"));
    absl::StrAppend(&out, Tls(env, "rsa", "-tls1_3", "Signature type: RSA-PSS"));
    return out;
  }
};

TEST_P(OrderTest, SoftwareOnlyProgramsWithNoTpmReachable) {
  const std::string env = absl::StrCat("export HWID_TCTI=", kNoTpm, " && ", Cnf(kNoTpm));
  const std::string out = SoftwareOnly(env);
  ExpectNoTpmCommand(out);
  EXPECT_THAT(out, Not(HasSubstr("TPM unreachable")));
}

TEST_P(OrderTest, SoftwareOnlyProgramsSendNoTpmCommand) {
  ExpectNoTpmCommand(SoftwareOnly(Cnf("")));
}

TEST_P(OrderTest, HwidKeysServeTls12AndTls13) {
  const std::string env = Cnf("");
  // A software CA, TPM keys made on explicit request.
  MustRun(env + "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                "-keyout ca.pem -subj \"/CN=software CA\" -days 2 "
                "-addext basicConstraints=critical,CA:TRUE -out ca.crt");
  EXPECT_THAT(Text("ca.pem"), HasSubstr("BEGIN PRIVATE KEY"));
  struct Case {
    const char* gen;
    const char* tls12;
    const char* sig12;
    const char* sig13;
  };
  for (const Case& c : {Case{"-algorithm EC -pkeyopt group:P-256", kTls12Ecdsa,
                             "Signature type: ECDSA", "Signature type: ECDSA"},
                        Case{"-algorithm RSA -pkeyopt bits:2048", kTls12Rsa,
                             "Signature type: RSA", "Signature type: RSA-PSS"}}) {
    SCOPED_TRACE(c.gen);
    MustRun(absl::StrCat(env, "openssl genpkey -propquery provider=hwid ", c.gen,
                         " -out tpm.pem"), 120);
    ASSERT_THAT(Text("tpm.pem"), HasSubstr("BEGIN TSS2 PRIVATE KEY"));
    Cert(env, "tpm");
    for (const std::string& flags :
         {absl::StrCat(c.tls12, " -groups P-256"), std::string(c.tls12),
          std::string("-tls1_3"), std::string("-tls1_3 -groups P-384")}) {
      SCOPED_TRACE(flags);
      const std::string out = Tls(env, "tpm", flags,
                                  absl::StrContains(flags, "-tls1_3") ? c.sig13 : c.sig12);
      // The server signed its handshake in the TPM: one hwid signature.
      const std::string server = out.substr(out.find("--- server ---"));
      EXPECT_THAT(server, HasSubstr(" signatures=1")) << out;
    }
    // Mutual TLS: the client's key is a TPM key too (a second TPM key file).
    MustRun(absl::StrCat(env, "openssl genpkey -propquery provider=hwid ", c.gen,
                         " -out client.pem"), 120);
    Cert(env, "client", "client", "URI:spiffe://example.org/client");
    for (const std::string& flags : {std::string(c.tls12), std::string("-tls1_3")}) {
      SCOPED_TRACE(flags);
      Tls(env, "tpm", flags, absl::StrContains(flags, "-tls1_3") ? c.sig13 : c.sig12, true);
    }
  }
}

TEST_P(OrderTest, ExplicitKeyGenerationInTheTpm) {
  const std::string env = Cnf("");
  // req -newkey with the property query: the key is made in the TPM and signs its certificate.
  MustRun(env + "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                "-propquery provider=hwid -nodes -keyout k.pem -subj /CN=tpm -days 1 -out k.crt",
          120);
  EXPECT_THAT(Text("k.pem"), HasSubstr("BEGIN TSS2 PRIVATE KEY"));
  MustRun("openssl x509 -in k.crt -noout -pubkey > k.pub && openssl x509 -in k.crt -noout "
          "-text | grep -q ecdsa-with-SHA256 && openssl verify -CAfile k.crt k.crt");
  MustRun(env + "openssl pkey -in k.pem -pubout | cmp - k.pub");
  // The same command without the query makes a software key, and no TPM command.
  const testing::ShellResult r =
      Run(env + "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                "-keyout s.pem -subj /CN=sw -days 1 -out s.crt");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(Text("s.pem"), HasSubstr("BEGIN PRIVATE KEY"));
  ExpectNoTpmCommand(r.output);
  // The TPM key as a CA key for the software key's CSR; the chain checked without hwid.
  MustRun(env + "openssl req -new -key s.pem -subj /CN=leaf -out s.csr && openssl x509 -req "
                "-in s.csr -CA k.crt -CAkey k.pem -CAcreateserial -days 1 -out leaf.crt");
  MustRun("openssl verify -CAfile k.crt leaf.crt");
}

INSTANTIATE_TEST_SUITE_P(Orders, OrderTest,
                         ::testing::Values(ProviderOrder::kDefaultFirst, ProviderOrder::kHwidFirst),
                         [](const auto& tp) {
                           return std::string(tp.param == ProviderOrder::kHwidFirst
                                                  ? "HwidFirst"
                                                  : "DefaultFirst");
                         });

// The documented openssl.cnf without its default_properties line, hwid first: what the line
// prevents (the test above would pass without it only if the order had no effect).
class WithoutDefaultPropertiesTest : public testing::ProviderCliTest {
 protected:
  WithoutDefaultPropertiesTest() : ProviderCliTest("hwid-order-neg") {}
};

TEST_F(WithoutDefaultPropertiesTest, HwidFirstTakesKeyGenerationAndNistGroups) {
  const std::string cnf =
      WriteOpensslCnf("full.cnf", "", ProviderOrder::kHwidFirst, kNoTpm);
  MustRun(absl::StrCat("grep -v ^default_properties ", cnf, " > openssl.cnf && ! grep -q "
                       "default_properties openssl.cnf && grep -q default_properties ", cnf));
  const std::string env = absl::StrCat("export OPENSSL_CONF=", dir_, "/openssl.cnf && ");
  // An unqualified EC key generation goes to the (unreachable) TPM.
  const std::string out = MustFail(
      env + "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem "
            "-subj /CN=x -out k.crt");
  EXPECT_THAT(out, HasSubstr("generating a TPM key"));
  EXPECT_THAT(out, HasSubstr("default_properties"));  // the hint names the fix
  // libssl lost the NIST groups.
  const std::string groups = MustFail(
      env + "printf Q | openssl s_client -connect 127.0.0.1:1 -groups P-256 -brief");
  EXPECT_THAT(groups, HasSubstr("group 'P-256' cannot be set"));
}

}  // namespace
}  // namespace hwid
