// CLI-driven tests of the hwid provider with PKCS#11 token keys: unmodified Debian programs
// (openssl, curl, nginx) sign with keys on this binary's private SoftHSM2 token through hwid.so,
// named by a pkcs11: URI or by a "PKCS#11 PROVIDER URI" key file. Keys are made with the hwid CLI
// (`hwid key create --pkcs11`). Mutual TLS pairs a token key with a TPM key on the binary's
// swtpm. Every signature is checked by a program running with OpenSSL's default provider only (no
// -provider flags, no OPENSSL_CONF), and every server and client is a process this test starts
// and stops itself, bounded in time.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/provider/cli_support.h"

namespace hwid {
namespace {

using ::hwid::testing::Background;
using ::hwid::testing::FreePort;
using ::hwid::testing::SoftHsm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kP[] = "-provider default -provider hwid";
// genpkey must reach hwid's key generation (TPM keys): hwid first.
constexpr char kGen[] = "-provider hwid -provider default";
constexpr char kToken[] = "p11cli";
constexpr char kPin[] = "Pc-7301-pin";
constexpr char kSoPin[] = "so-7301";
constexpr char kWrapperBegin[] = "-----BEGIN PKCS#11 PROVIDER URI-----";

// A key made on the token by `hwid key create --pkcs11` (once per binary).
struct TokenKey {
  const char* alg;    // hwid CLI --alg
  const char* label;  // CKA_LABEL
  bool rsa;
  std::string printed_uri;  // the URI the CLI printed (with id=, without module-path or PIN)
};

// The token and its keys, made once for the binary (SOFTHSM2_CONF is process-wide and inherited
// by every program the tests start).
SoftHsm* g_hsm = nullptr;
std::map<std::string, TokenKey>* g_keys = nullptr;

// Removes the token directory after the last test.
class TokenEnv : public ::testing::Environment {
 public:
  void TearDown() override {
    delete g_keys;
    g_keys = nullptr;
    delete g_hsm;
    g_hsm = nullptr;
  }
};
const auto* const kTokenEnv = ::testing::AddGlobalTestEnvironment(new TokenEnv);

class P11CliTest : public testing::ProviderCliTest {
 protected:
  P11CliTest() : ProviderCliTest("hwid-p11cli") {}

  static void SetUpTestSuite() {
    ProviderCliTest::SetUpTestSuite();
    // Module and PIN never come from the environment unless a command sets them itself (the
    // openssl.cnf tests depend on that).
    unsetenv("HWID_PKCS11_MODULE");
    unsetenv("HWID_PKCS11_PIN");
    if (g_hsm != nullptr || !testing::SoftHsmAvailable()) {
      return;
    }
    absl::StatusOr<std::unique_ptr<SoftHsm>> h = SoftHsm::Start(kToken, kPin, kSoPin);
    if (!h.ok()) {
      ADD_FAILURE() << h.status();
      return;
    }
    g_hsm = h->release();
    g_keys = new std::map<std::string, TokenKey>;
    const char* cli = std::getenv("HWID_CLI");
    for (TokenKey k : {TokenKey{"ec-p256", "ec256", false, ""},
                       TokenKey{"ec-p384", "ec384", false, ""},
                       TokenKey{"rsa-2048", "rsa2048", true, ""},
                       TokenKey{"rsa-3072", "rsa3072", true, ""},
                       TokenKey{"ec-p384", "ca", false, ""}}) {
      // stdout only: the last line is the key's URI (the CLI reports on stderr).
      auto [rc, out] = testing::RunShell(
          absl::StrCat(cli != nullptr ? cli : "hwid", " key create --pkcs11 '", g_hsm->uri(),
                       "' --alg ", k.alg, " --label ", k.label, " 2>/dev/null"));
      if (rc != 0) {
        ADD_FAILURE() << "hwid key create --pkcs11 --alg " << k.alg << ": " << out;
        continue;
      }
      std::string last(absl::StripTrailingAsciiWhitespace(out));
      k.printed_uri = last.substr(last.rfind('\n') == std::string::npos ? 0 : last.rfind('\n') + 1);
      (*g_keys)[k.label] = k;
    }
  }
  static void TearDownTestSuite() {}

  void SetUp() override {
    HWID_REQUIRE_SOFTHSM();
    ASSERT_NE(g_hsm, nullptr);
    ASSERT_EQ(g_keys->size(), 5u) << "key creation failed in SetUpTestSuite";
    ProviderCliTest::SetUp();
  }

  // Uri names a token key with module-path (the PIN comes from -passin / -pass), double-quoted.
  static std::string Uri(const std::string& label) {
    return absl::StrCat("\"pkcs11:token=", kToken, ";object=", label,
                        "?module-path=", SoftHsm::kModule, "\"");
  }
  static std::string Passin() { return absl::StrCat("-passin pass:", kPin); }
  // WithModuleEnv prefixes a command reading a URI key file that has no module-path.
  static std::string WithModuleEnv() {
    return absl::StrCat("HWID_PKCS11_MODULE=", SoftHsm::kModule, " ");
  }

  // Export writes `label`.pub (pkey -pubout by URI) and `label`.wrap.pem (pkey -out by URI: the
  // PKCS#11 PROVIDER URI key file the provider's encoder writes).
  void Export(const std::string& label) {
    MustRun(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ", Passin(), " -pubout -out ",
                         label, ".pub"));
    MustRun(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ", Passin(), " -out ", label,
                         ".wrap.pem"));
  }

  // WriteOpensslCnf writes `name` activating default, then hwid with the TCTI, the PKCS#11 module
  // and a PIN file (pkcs11-pin-source = file:`pin_file`).
  std::string WriteOpensslCnf(const std::string& name, const std::string& module,
                              const std::string& pin_file) {
    return ProviderCliTest::WriteOpensslCnf(
        name, absl::StrCat("pkcs11-module-path = ", module, "\npkcs11-pin-source = file:",
                           pin_file, "\n"));
  }

  // MakeCa makes a CA whose key is the token key "ca" (EC P-384): ca.crt, self-signed on the token.
  void MakeCa() {
    MustRun(absl::StrCat("openssl req ", kP, " -new -x509 -key ", Uri("ca"), " ", Passin(),
                         " -subj \"/CN=hwid token CA\" -days 2 "
                         "-addext basicConstraints=critical,CA:TRUE "
                         "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt"));
    MustRun("openssl verify -CAfile ca.crt ca.crt");
  }
  // MakeCert writes `name`.crt for the key `key_arg` (a quoted URI plus its -passin, or a key
  // file, then `env` prefixes the openssl that reads it), issued by the token CA with
  // subjectAltName `san`.
  void MakeCert(const std::string& name, const std::string& key_arg, const std::string& san,
                const std::string& env = "") {
    MustRun(absl::StrCat(env, "openssl req ", kP, " -new -key ", key_arg, " -subj /CN=", name,
                         " -addext subjectAltName=", san, " -out ", name, ".csr"));
    MustRun(absl::StrCat("openssl req -verify -noout -in ", name, ".csr"));
    MustRun(absl::StrCat("openssl x509 ", kP, " -req -in ", name, ".csr -CA ca.crt -CAkey ",
                         Uri("ca"), " ", Passin(), " -CAcreateserial -copy_extensions copy "
                         "-days 1 -out ", name, ".crt"));
    MustRun(absl::StrCat("openssl verify -CAfile ca.crt ", name, ".crt"));
  }
  // TpmKey makes an EC P-256 key in the swtpm: `name`.pem (TSS2 PRIVATE KEY).
  void TpmKey(const std::string& name) {
    MustRun(absl::StrCat("openssl genpkey ", kGen, " -algorithm EC -pkeyopt group:P-256 -out ",
                         name, ".pem"), 120);
  }
};

// ---- Signatures -----------------------------------------------------------------------------

TEST_F(P11CliTest, CliPrintsUriWithoutPin) {
  for (const auto& [label, k] : *g_keys) {
    SCOPED_TRACE(label);
    EXPECT_THAT(k.printed_uri, ::testing::StartsWith("pkcs11:"));
    EXPECT_THAT(k.printed_uri, HasSubstr(absl::StrCat("token=", kToken)));
    EXPECT_THAT(k.printed_uri, HasSubstr(absl::StrCat("object=", label)));
    EXPECT_THAT(k.printed_uri, HasSubstr("id=%"));
    EXPECT_THAT(k.printed_uri, Not(HasSubstr(kPin)));
  }
  // The keys are sensitive and never extractable on the token itself.
  HWID_REQUIRE_TOOL("pkcs11-tool");
  auto [rc, out] = Run(absl::StrCat("pkcs11-tool --module ", SoftHsm::kModule, " --token-label ",
                                    kToken, " --login --pin ", kPin,
                                    " --list-objects --type privkey"));
  ASSERT_EQ(rc, 0) << out;
  for (const auto& [label, k] : *g_keys) {
    EXPECT_THAT(out, HasSubstr(absl::StrCat("label:      ", label)));
  }
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t p = out.find(what); p != std::string::npos; p = out.find(what, p + 1)) {
      ++n;
    }
    return n;
  };
  EXPECT_GE(count("Private Key Object"), g_keys->size()) << out;
  EXPECT_EQ(count("never extractable"), count("Private Key Object")) << out;
  EXPECT_EQ(count("Access:     sensitive, always sensitive"), count("Private Key Object")) << out;
}

TEST_F(P11CliTest, EveryAlgorithmSignsByUriAndByKeyFileVerifiedByDefaultProvider) {
  for (const char* label : {"ec256", "ec384", "rsa2048", "rsa3072"}) {
    SCOPED_TRACE(label);
    const TokenKey& k = g_keys->at(label);
    Export(label);
    ASSERT_THAT(Text(absl::StrCat(label, ".pub")), HasSubstr("BEGIN PUBLIC KEY"));
    const std::string pub = absl::StrCat(label, ".pub");
    const std::string wrap = absl::StrCat(label, ".wrap.pem");
    Write("msg", absl::StrCat("message for ", label));
    // Three ways to name the key: URI with module-path; the CLI's printed URI (id=, token
    // metadata) with the module from $HWID_PKCS11_MODULE; the URI key file.
    const std::string printed = absl::StrCat(WithModuleEnv(), "openssl");
    struct Way {
      const char* name;
      std::string prefix;  // "openssl" with or without environment
      std::string key;
    };
    for (const Way& way :
         {Way{"uri", "openssl", Uri(label)},
          Way{"printed-uri", printed, absl::StrCat("\"", k.printed_uri, "\"")},
          Way{"key-file", printed, wrap}}) {
      SCOPED_TRACE(way.name);
      // dgst -sign: ECDSA, RSA PKCS#1 v1.5.
      MustRun(absl::StrCat("rm -f sig && ", way.prefix, " dgst ", kP, " -sha256 -sign ", way.key,
                           " ", Passin(), " -out sig msg"));
      auto [rc, out] = Run(absl::StrCat("openssl dgst -sha256 -verify ", pub,
                                        " -signature sig msg"));
      EXPECT_EQ(rc, 0) << out;
      EXPECT_THAT(out, HasSubstr("Verified OK"));
      // pkeyutl -sign over a SHA-384 digest.
      MustRun(absl::StrCat("openssl dgst -sha384 -binary -out dgst msg && rm -f sig2 && ",
                           way.prefix, " pkeyutl ", kP, " -sign -inkey ", way.key, " ", Passin(),
                           " -in dgst -out sig2 -pkeyopt digest:sha384 && "
                           "openssl pkeyutl -verify -pubin -inkey ", pub,
                           " -in dgst -sigfile sig2 -pkeyopt digest:sha384"));
      if (k.rsa) {
        // RSA-PSS, salt = digest length, by dgst and by pkeyutl; the verifier insists on PSS.
        MustRun(absl::StrCat("rm -f pss && ", way.prefix, " dgst ", kP, " -sha256 -sign ",
                             way.key, " ", Passin(), " -sigopt rsa_padding_mode:pss "
                             "-sigopt rsa_pss_saltlen:digest -out pss msg && "
                             "openssl dgst -sha256 -verify ", pub, " -sigopt rsa_padding_mode:pss "
                             "-sigopt rsa_pss_saltlen:digest -signature pss msg"));
        MustRun(absl::StrCat("rm -f pss2 && ", way.prefix, " pkeyutl ", kP, " -sign -inkey ",
                             way.key, " ", Passin(), " -in dgst -out pss2 -pkeyopt digest:sha384 "
                             "-pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:digest && "
                             "openssl pkeyutl -verify -pubin -inkey ", pub, " -in dgst -sigfile "
                             "pss2 -pkeyopt digest:sha384 -pkeyopt rsa_padding_mode:pss "
                             "-pkeyopt rsa_pss_saltlen:digest"));
        // A PSS signature is not a PKCS#1 v1.5 one (the oracle checks the padding).
        auto [rc3, out3] = Run(absl::StrCat("openssl dgst -sha256 -verify ", pub,
                                            " -signature pss msg"));
        EXPECT_NE(rc3, 0) << out3;
      }
    }
    // The oracle can say no.
    auto [rc2, out2] = Run(absl::StrCat("echo tampered >> msg && openssl dgst -sha256 -verify ",
                                        pub, " -signature sig msg"));
    EXPECT_NE(rc2, 0) << out2;
  }
}

TEST_F(P11CliTest, CliKeyFileWithModulePathSignsWithoutEnvironment) {
  // `hwid key create --pkcs11 ... --out` writes a URI key file that keeps module-path (never the
  // PIN): openssl signs with it given only the PIN.
  const char* cli = std::getenv("HWID_CLI");
  MustRun(absl::StrCat(cli != nullptr ? cli : "hwid", " key create --pkcs11 \"", g_hsm->uri(),
                       "\" --alg ec-p256 --label cli-file --out cli.pem > cli.uri"));
  const std::string file = Text("cli.pem");
  EXPECT_THAT(file, HasSubstr(kWrapperBegin));
  EXPECT_THAT(file, Not(HasSubstr("PRIVATE KEY")));
  auto [rc, der] = Run("openssl asn1parse -in cli.pem");
  EXPECT_EQ(rc, 0) << der;
  EXPECT_THAT(der, HasSubstr("module-path="));
  EXPECT_THAT(der, Not(HasSubstr(kPin)));
  EXPECT_THAT(der, Not(HasSubstr("pin-value")));
  MustRun(absl::StrCat("openssl pkey ", kP, " -in cli.pem ", Passin(), " -pubout -out cli.pub"));
  MustRun(absl::StrCat("echo hi > msg && openssl dgst ", kP, " -sha256 -sign cli.pem ", Passin(),
                       " -out sig msg && openssl dgst -sha256 -verify cli.pub -signature sig msg"));
}

// ---- Certificates ---------------------------------------------------------------------------

TEST_F(P11CliTest, CsrWithSpiffeIdAndCaOnToken) {
  MakeCa();
  // A CSR signed by a token key (EC P-256), verified by the default provider, issued by the CA
  // whose key is on the token.
  MakeCert("workload", absl::StrCat(Uri("ec256"), " ", Passin()),
           "URI:spiffe://example.org/workload");
  auto [rc, out] = Run("openssl req -in workload.csr -noout -text");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("URI:spiffe://example.org/workload"));
  auto [rc2, out2] = Run("openssl x509 -in workload.crt -noout -ext subjectAltName -issuer");
  EXPECT_EQ(rc2, 0) << out2;
  EXPECT_THAT(out2, HasSubstr("URI:spiffe://example.org/workload"));
  EXPECT_THAT(out2, HasSubstr("CN = hwid token CA"));
  // The certificate carries the token key's public key.
  Export("ec256");
  MustRun("openssl x509 -in workload.crt -noout -pubkey > w.pub && cmp w.pub ec256.pub");
  // An RSA token key's CSR (RSA PKCS#1 signature) through its URI key file, and the chain check
  // says no for a certificate not issued by this CA.
  Export("rsa3072");
  MakeCert("w-rsa", absl::StrCat("rsa3072.wrap.pem ", Passin()), "URI:spiffe://example.org/w-rsa",
           WithModuleEnv());
  MustRun("openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout o.key "
          "-subj /CN=other -days 1 -out other.crt");
  auto [rc3, out3] = Run("openssl verify -CAfile other.crt workload.crt");
  EXPECT_NE(rc3, 0) << out3;
}

// ---- TLS ------------------------------------------------------------------------------------

struct TlsCase {
  const char* name;
  const char* server_key;  // token key label
  const char* version;     // s_client flag
  const char* client;      // "" (server auth only), "tpm" (client key in the swtpm), "token"
  const char* expect_sig;  // in s_client -brief output
};

void PrintTo(const TlsCase& c, std::ostream* os) { *os << c.name; }

class P11TlsTest : public P11CliTest, public ::testing::WithParamInterface<TlsCase> {};

TEST_P(P11TlsTest, SServerKeyOnTokenSClientVerifies) {
  const TlsCase& tc = GetParam();
  const std::string client = tc.client;
  MakeCa();
  MakeCert("server", absl::StrCat(Uri(tc.server_key), " ", Passin()), "IP:127.0.0.1");
  std::string client_args;
  if (client == "tpm") {
    TpmKey("client");
    MakeCert("client", "client.pem", "URI:spiffe://example.org/tpm-client");
    client_args = absl::StrCat(kP, " -cert client.crt -key client.pem ");
  } else if (client == "token") {
    MakeCert("client", absl::StrCat(Uri("ec384"), " ", Passin()),
             "URI:spiffe://example.org/token-client");
    client_args = absl::StrCat(kP, " -cert client.crt -key ", Uri("ec384"), " -pass pass:", kPin,
                               " ");
  }
  const int port = FreePort();
  // The server's command line is not run through Run(): no single quotes to worry about.
  Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port, " -cert ",
                                 dir_, "/server.crt -key '", "pkcs11:token=", kToken, ";object=",
                                 tc.server_key, "?module-path=", SoftHsm::kModule, "' -pass pass:",
                                 kPin, " -CAfile ", dir_, "/ca.crt -naccept 1 -www ",
                                 client.empty() ? "" : "-Verify 1 -verify_return_error"),
                    dir_ + "/server.log");
  ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
  const testing::ShellResult r =
      Run(testing::SClientGetCommand(client_args, port, tc.version), 30);
  EXPECT_EQ(server.Wait(), 0) << server.Log();
  testing::ExpectSClientGetOk(r, tc.version, tc.expect_sig);
  if (!client.empty()) {
    // The server (-Verify 1 -verify_return_error) verified the client's handshake signature.
    EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
    EXPECT_THAT(server.Log(), HasSubstr("1 server accepts that finished"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, P11TlsTest,
    ::testing::Values(
        TlsCase{"Tls13Ec", "ec256", "-tls1_3", "", "Signature type: ECDSA"},
        TlsCase{"Tls12Ec", "ec256", "-tls1_2", "", "Signature type: ECDSA"},
        TlsCase{"Tls13EcP384", "ec384", "-tls1_3", "", "Signature type: ECDSA"},
        TlsCase{"Tls13RsaPss", "rsa2048", "-tls1_3", "", "Signature type: RSA-PSS"},
        TlsCase{"Tls12Rsa", "rsa2048", "-tls1_2", "", "Signature type: RSA"},
        TlsCase{"Tls13Rsa3072Pss", "rsa3072", "-tls1_3", "", "Signature type: RSA-PSS"},
        TlsCase{"Tls13MutualTokenServerTpmClient", "ec256", "-tls1_3", "tpm",
                "Signature type: ECDSA"},
        TlsCase{"Tls12MutualTokenServerTpmClient", "rsa2048", "-tls1_2", "tpm",
                "Signature type: RSA"},
        TlsCase{"Tls13MutualRsaServerTpmClient", "rsa2048", "-tls1_3", "tpm",
                "Signature type: RSA-PSS"},
        TlsCase{"Tls13MutualTokenToToken", "ec256", "-tls1_3", "token",
                "Signature type: ECDSA"}),
    [](const auto& tp) { return std::string(tp.param.name); });

// Provider order does not matter (docs/provider.md "Provider order"): with the documented
// openssl.cnf, hwid before or after default and no TPM reachable, s_server serves TLS 1.2
// (ECDHE-ECDSA and ECDHE-RSA on P-256 ephemeral keys, i.e. libssl's unqualified EC fetch) and TLS
// 1.3 with the token key files; the token signs, the TPM is never asked.
TEST_F(P11CliTest, TokenKeyFileServesTlsInBothProviderOrdersWithNoTpm) {
  MakeCa();
  struct Case {
    const char* label;
    const char* tls12;
    const char* sig12;
    const char* sig13;
  };
  const Case cases[] = {
      {"ec256", "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256", "Signature type: ECDSA",
       "Signature type: ECDSA"},
      {"rsa2048", "-tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256", "Signature type: RSA",
       "Signature type: RSA-PSS"}};
  for (const Case& c : cases) {
    MakeCert(c.label, absl::StrCat(Uri(c.label), " ", Passin()), "IP:127.0.0.1");
    Export(c.label);
  }
  Write("pin", absl::StrCat(kPin, "\n"));
  for (const testing::ProviderOrder order :
       {testing::ProviderOrder::kDefaultFirst, testing::ProviderOrder::kHwidFirst}) {
    SCOPED_TRACE(order == testing::ProviderOrder::kHwidFirst ? "hwid first" : "default first");
    const std::string cnf = ProviderCliTest::WriteOpensslCnf(
        "openssl.cnf",
        absl::StrCat("pkcs11-module-path = ", SoftHsm::kModule, "\npkcs11-pin-source = file:",
                     dir_, "/pin\n"),
        order, "device:/nonexistent/hwid-test-tpm0");
    const std::string env = absl::StrCat("export OPENSSL_CONF=", cnf, " HWID_PROVIDER_STATS=1 && ");
    for (const Case& c : cases) {
      for (const std::string& v :
           {absl::StrCat(c.tls12, " -groups P-256"), std::string("-tls1_3 -groups P-256")}) {
        SCOPED_TRACE(absl::StrCat(c.label, " ", v));
        const int port = FreePort();
        Background server(absl::StrCat("sh -c \"", env, "cd ", dir_, " && openssl s_server ",
                                       "-accept 127.0.0.1:", port, " -cert ", c.label, ".crt ",
                                       "-key ", c.label, ".wrap.pem -naccept 1 -www\""),
                          absl::StrCat(dir_, "/server-", port, ".log"));
        ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
        const testing::ShellResult r =
            Run(absl::StrCat(env, testing::SClientGetCommand("", port, v)), 30);
        EXPECT_EQ(server.Wait(), 0) << server.Log();
        const bool tls13 = absl::StrContains(v, "-tls1_3");
        testing::ExpectSClientGetOk(r, tls13 ? "-tls1_3" : "-tls1_2", tls13 ? c.sig13 : c.sig12);
        EXPECT_THAT(server.Log(), HasSubstr("tpm_commands=0 setup_commands=0 signatures=1"));
        EXPECT_THAT(r.output, HasSubstr("tpm_commands=0 setup_commands=0 signatures=0"));
      }
    }
  }
}

// curl 7.88 takes --key as a file: the URI key file, with module and PIN from openssl.cnf only.
TEST_F(P11CliTest, CurlClientKeyFileModuleAndPinFromOpensslCnf) {
  HWID_REQUIRE_TOOL("curl");
#ifdef HWID_SANITIZER_PRELOAD
  GTEST_SKIP() << "curl cannot load a sanitized hwid.so (see provider_cli_test)";
#endif
  MakeCa();
  MakeCert("server", absl::StrCat(Uri("ec384"), " ", Passin()), "IP:127.0.0.1");
  MakeCert("client", absl::StrCat(Uri("ec256"), " ", Passin()), "URI:spiffe://example.org/curl");
  Export("ec256");
  Write("pin", absl::StrCat(kPin, "\n"));
  Write("wrong-pin", "0000\n");
  const std::string cnf = WriteOpensslCnf("openssl.cnf", SoftHsm::kModule, dir_ + "/pin");
  for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
    SCOPED_TRACE(v);
    const int port = FreePort();
    Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port,
                                   " -cert ", dir_, "/server.crt -key '", "pkcs11:token=", kToken,
                                   ";object=ec384?module-path=", SoftHsm::kModule,
                                   "' -pass pass:", kPin, " -CAfile ", dir_,
                                   "/ca.crt -naccept 1 -www -Verify 1 -verify_return_error"),
                      absl::StrCat(dir_, "/server-", port, ".log"));
    ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
    auto [rc, out] = Run(absl::StrCat("OPENSSL_CONF=", cnf, " curl -sS ", v,
                                      " --cacert ca.crt --cert client.crt --key ec256.wrap.pem "
                                      "https://127.0.0.1:", port, "/"),
                         30);
    EXPECT_EQ(server.Wait(), 0) << server.Log();
    EXPECT_EQ(rc, 0) << out;
    EXPECT_THAT(out, HasSubstr("Ciphers supported in s_server"));
    EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
    EXPECT_THAT(server.Log(), HasSubstr("1 server accepts that finished"));
  }
  // The controls: the same curl with a wrong PIN file, or a module path that does not load, in
  // openssl.cnf fails (so the working runs used openssl.cnf's module and PIN).
  const std::string bad_pin = WriteOpensslCnf("bad-pin.cnf", SoftHsm::kModule,
                                              dir_ + "/wrong-pin");
  const std::string bad_mod = WriteOpensslCnf("bad-module.cnf", "/nonexistent/libp11.so",
                                              dir_ + "/pin");
  MustRun("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout o.key "
          "-subj /CN=other -days 1 -out o.crt");
  for (const std::string& c : {bad_pin, bad_mod}) {
    SCOPED_TRACE(c);
    const int port = FreePort();
    Background server(absl::StrCat("openssl s_server -accept 127.0.0.1:", port, " -cert ", dir_,
                                   "/o.crt -key ", dir_, "/o.key -naccept 1 -www"),
                      absl::StrCat(dir_, "/server-", port, ".log"));
    ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
    auto [rc, out] = Run(absl::StrCat("OPENSSL_CONF=", c, " curl -sS -k --cert client.crt --key "
                                      "ec256.wrap.pem https://127.0.0.1:", port, "/"),
                         30);
    EXPECT_NE(rc, 0) << out;
    EXPECT_LT(rc, 124) << out;
    EXPECT_THAT(out, HasSubstr("unable to set private key file"));
  }
}

struct NginxCase {
  const char* name;
  const char* key;  // token key label
  int workers;
};

void PrintTo(const NginxCase& c, std::ostream* os) { *os << c.name; }

class P11NginxTest : public P11CliTest, public ::testing::WithParamInterface<NginxCase> {};

// nginx 1.22 reads ssl_certificate_key with PEM_read_bio_PrivateKey: the URI key file, decoded by
// the provider that openssl.cnf activates, with the module and the PIN file from openssl.cnf.
TEST_P(P11NginxTest, ServesWithTokenKeyFileAndCurlVerifies) {
  HWID_REQUIRE_TOOL("nginx");
  HWID_REQUIRE_TOOL("curl");
  const NginxCase& nc = GetParam();
  MakeCa();
  MakeCert("server", absl::StrCat(Uri(nc.key), " ", Passin()), "IP:127.0.0.1");
  Export(nc.key);
  Write("pin", absl::StrCat(kPin, "\n"));
  const std::string cnf = WriteOpensslCnf("openssl.cnf", SoftHsm::kModule, dir_ + "/pin");
  const int port = FreePort();
  MustRun("mkdir -p logs tmp");
  const std::string conf = testing::NginxConf(dir_, nc.workers, port,
                                              absl::StrCat(dir_, "/", nc.key, ".wrap.pem"),
                                              "hwid nginx token ok");
  Write("nginx.conf", conf);
  Background nginx(absl::StrCat("env OPENSSL_CONF=", cnf, " nginx -p ", dir_, " -c ", dir_,
                                "/nginx.conf -e ", dir_, "/logs/error.log"),
                   dir_ + "/nginx.out");
  ASSERT_TRUE(nginx.WaitForPort(port)) << nginx.Log() << Text("logs/error.log");
  // Several requests, so that every worker (forked after the master read the key) signs.
  for (int i = 0; i < 6; ++i) {
    for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
      auto [rc, out] = Run(absl::StrCat("curl -sS ", v, " --cacert ca.crt https://127.0.0.1:",
                                        port, "/"),
                           30);
      EXPECT_EQ(rc, 0) << v << " " << out;
      EXPECT_THAT(out, HasSubstr("hwid nginx token ok"));
    }
  }
  // Graceful shutdown: workers and master exit normally (no worker dies on a signal).
  EXPECT_EQ(nginx.Stop(SIGQUIT), 0);
  const std::string text = Text("logs/error.log");
  EXPECT_THAT(text, Not(HasSubstr("[crit]"))) << text;
  EXPECT_THAT(text, Not(HasSubstr("[emerg]"))) << text;
  EXPECT_THAT(text, Not(HasSubstr("exited on signal"))) << text;
}

INSTANTIATE_TEST_SUITE_P(Keys, P11NginxTest,
                         ::testing::Values(NginxCase{"EcTwoWorkers", "ec256", 2},
                                           NginxCase{"RsaOneWorker", "rsa2048", 1}),
                         [](const auto& tp) { return std::string(tp.param.name); });

// ---- The private key never leaves the token ------------------------------------------------

TEST_F(P11CliTest, PrivateKeyNeverLeavesTheToken) {
  for (const char* label : {"ec256", "rsa2048"}) {
    SCOPED_TRACE(label);
    Export(label);
    // pkey -out writes only the URI key file: one PEM block, the wrapper, whose DER is the
    // description and the URI (no PIN, no key material).
    const std::string wrap = Text(absl::StrCat(label, ".wrap.pem"));
    EXPECT_EQ(wrap.find("-----BEGIN"), wrap.rfind("-----BEGIN")) << wrap;
    EXPECT_EQ(wrap.rfind(kWrapperBegin, 0), 0u) << wrap;
    EXPECT_THAT(wrap, Not(HasSubstr("PRIVATE KEY")));
    auto [rc, der] = Run(absl::StrCat("openssl asn1parse -in ", label, ".wrap.pem"));
    EXPECT_EQ(rc, 0) << der;
    EXPECT_THAT(der, HasSubstr("VISIBLESTRING     :PKCS#11 Provider URI v1.0"));
    EXPECT_THAT(der, HasSubstr(absl::StrCat("UTF8STRING        :pkcs11:")));
    EXPECT_THAT(der, HasSubstr(absl::StrCat("object=", label)));
    EXPECT_THAT(der, Not(HasSubstr("pin-value")));
    EXPECT_THAT(der, Not(HasSubstr(kPin)));
    // Exactly three objects: the SEQUENCE and its two strings.
    EXPECT_EQ(std::count(der.begin(), der.end(), '\n'), 3) << der;
    // -outform DER writes the same wrapper as DER, never key material.
    auto [rc2, out2] = Run(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ", Passin(),
                                        " -outform DER -out k.der && openssl asn1parse -inform DER "
                                        "-in k.der"));
    EXPECT_EQ(rc2, 0) << out2;
    EXPECT_THAT(out2, HasSubstr("VISIBLESTRING     :PKCS#11 Provider URI v1.0"));
    EXPECT_THAT(out2, Not(HasSubstr("INTEGER"))) << out2;
    EXPECT_THAT(out2, Not(HasSubstr("OCTET STRING"))) << out2;
    // -traditional needs a legacy key export, which the provider refuses: it fails, writing no
    // PEM block at all.
    const std::string trad = MustFail(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ",
                                                   Passin(), " -traditional"));
    EXPECT_THAT(trad, Not(HasSubstr("-----BEGIN")));
    // pkey -text: where the key lives and its public half, no private components.
    auto [rc3, out3] = Run(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ", Passin(),
                                        " -text -noout"));
    EXPECT_EQ(rc3, 0) << out3;
    EXPECT_THAT(out3, HasSubstr("private key on the token, not exportable"));
    EXPECT_THAT(out3, HasSubstr(std::string(label) == "ec256" ? "pub:" : "Modulus:"));
    EXPECT_THAT(out3, Not(HasSubstr("priv:")));
    EXPECT_THAT(out3, Not(HasSubstr("privateExponent")));
    EXPECT_THAT(out3, Not(HasSubstr("prime1")));
    EXPECT_THAT(out3, Not(HasSubstr("Private-Key")));
    EXPECT_THAT(out3, Not(HasSubstr("Segmentation")));
    auto [rc4, out4] = Run(absl::StrCat("openssl pkey ", kP, " -in ", Uri(label), " ", Passin(),
                                        " -text_pub -noout"));
    EXPECT_EQ(rc4, 0) << out4;
    EXPECT_THAT(out4, HasSubstr(std::string(label) == "ec256" ? "pub:" : "Modulus:"));
    // pkcs8 -topk8 -nocrypt: from the URI (pkcs8 opens its input as a file) and from the URI key
    // file (the provider's key cannot become a PKCS#8 PrivateKeyInfo) it fails, writing nothing.
    const std::string out5 = MustFail(absl::StrCat("rm -f p8.pem && openssl pkcs8 ", kP,
                                                   " -topk8 -nocrypt -in ", Uri(label), " ",
                                                   Passin(), " -out p8.pem"));
    const std::string out6 = MustFail(absl::StrCat(WithModuleEnv(), "openssl pkcs8 ", kP,
                                                   " -topk8 -nocrypt -in ", label, ".wrap.pem ",
                                                   Passin(), " -out p8.pem"));
    EXPECT_THAT(out6, HasSubstr("Error converting key"));
    EXPECT_THAT(Text("p8.pem"), Not(HasSubstr("PRIVATE KEY")));
    EXPECT_EQ(Text("p8.pem"), "");
    EXPECT_THAT(out5 + out6, Not(HasSubstr("-----BEGIN")));
  }
}

// ---- Negatives ------------------------------------------------------------------------------

TEST_F(P11CliTest, WrongPinFailsCleanlyThenTheRightPinWorks) {
  Export("ec256");
  const std::string cmd = absl::StrCat("openssl pkey ", kP, " -in ", Uri("ec256"), " -pubout");
  std::string out = MustFail(absl::StrCat(cmd, " -passin pass:wrong-9876"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 login failed"));
  EXPECT_THAT(out, HasSubstr("CKR_PIN_INCORRECT"));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("token '", kToken, "'")));
  EXPECT_THAT(out, Not(HasSubstr("wrong-9876")));  // the message never echoes the PIN
  // A wrong PIN file in openssl.cnf (no -passin, no environment PIN).
  Write("wrong-pin", "wrong-9876\n");
  Write("pin", absl::StrCat(kPin, "\n"));
  const std::string bad = WriteOpensslCnf("bad.cnf", SoftHsm::kModule, dir_ + "/wrong-pin");
  out = MustFail(absl::StrCat("OPENSSL_CONF=", bad, " openssl pkey -in ec256.wrap.pem -pubout"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 login failed"));
  EXPECT_THAT(out, HasSubstr("CKR_PIN_INCORRECT"));
  // And a wrong pin-source in the URI.
  out = MustFail(absl::StrCat("openssl pkey ", kP, " -in \"pkcs11:token=", kToken,
                              ";object=ec256?module-path=", SoftHsm::kModule,
                              "&pin-source=file:", dir_, "/wrong-pin\" -pubout"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 login failed"));
  EXPECT_THAT(out, HasSubstr("CKR_PIN_INCORRECT"));
  // The right PIN still works, by every route: the token is not locked.
  auto [rc, pub] = Run(absl::StrCat(cmd, " ", Passin()));
  EXPECT_EQ(rc, 0) << pub;
  EXPECT_EQ(pub, Text("ec256.pub"));
  const std::string good = WriteOpensslCnf("good.cnf", SoftHsm::kModule, dir_ + "/pin");
  MustRun(absl::StrCat("OPENSSL_CONF=", good, " openssl pkey -in ec256.wrap.pem -pubout -out "
                       "cnf.pub && cmp cnf.pub ec256.pub"));
  MustRun(absl::StrCat("openssl pkey ", kP, " -in \"pkcs11:token=", kToken,
                       ";object=ec256?module-path=", SoftHsm::kModule, "&pin-source=file:", dir_,
                       "/pin\" -pubout -out ps.pub && cmp ps.pub ec256.pub"));
  if (testing::HaveTool("pkcs11-tool")) {
    auto [rc2, slots] = Run(absl::StrCat("pkcs11-tool --module ", SoftHsm::kModule,
                                         " --list-token-slots"));
    EXPECT_EQ(rc2, 0) << slots;
    EXPECT_THAT(slots, HasSubstr(absl::StrCat("token label        : ", kToken)));
    EXPECT_THAT(slots, Not(HasSubstr("locked"))) << slots;
  }
}

TEST_F(P11CliTest, UnknownTokenObjectOrModuleFailCleanly) {
  std::string out = MustFail(absl::StrCat("openssl pkey ", kP, " -in \"pkcs11:token=no-such-token;"
                                          "object=ec256?module-path=", SoftHsm::kModule, "\" ",
                                          Passin(), " -pubout"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 key load failed"));
  EXPECT_THAT(out, HasSubstr("no token matches"));
  EXPECT_THAT(out, HasSubstr("no-such-token"));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("'", kToken, "'")));  // the tokens that are present
  out = MustFail(absl::StrCat("openssl pkey ", kP, " -in ", Uri("no-such-key"), " ", Passin(),
                              " -pubout"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 key load failed"));
  EXPECT_THAT(out, HasSubstr("object=\x27no-such-key\x27"));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("token '", kToken, "'")));
  out = MustFail(absl::StrCat("openssl dgst ", kP, " -sha256 -sign \"pkcs11:token=", kToken,
                              ";object=ec256?module-path=/nonexistent/libp11.so\" ", Passin(),
                              " /dev/null"));
  EXPECT_THAT(out, HasSubstr("PKCS#11 key load failed"));
  EXPECT_THAT(out, HasSubstr("/nonexistent/libp11.so"));
  // A library that is not a PKCS#11 module.
  out = MustFail(absl::StrCat("openssl pkey ", kP, " -in \"pkcs11:token=", kToken,
                              ";object=ec256?module-path=/lib/x86_64-linux-gnu/libc.so.6\" ",
                              Passin(), " -pubout"));
  EXPECT_THAT(out, HasSubstr("PKCS#11"));
  EXPECT_THAT(out, HasSubstr("C_GetFunctionList"));
}

TEST_F(P11CliTest, BrokenUriKeyFilesAreRefused) {
  Export("ec256");
  const std::string good = Text("ec256.wrap.pem");
  ASSERT_THAT(good, HasSubstr(kWrapperBegin));
  // Truncated: the first base64 line only.
  {
    std::vector<std::string> lines = absl::StrSplit(good, '\n');
    Write("trunc.pem", absl::StrCat(lines[0], "\n", lines[1], "\n",
                                    "-----END PKCS#11 PROVIDER URI-----\n"));
  }
  // Wrong description and a pin-value, built with asn1parse -genconf.
  auto der_file = [&](const std::string& name, const std::string& desc, const std::string& uri) {
    // '#' starts a comment in an OpenSSL config file: escape it.
    Write(name + ".cnf", absl::StrCat("asn1=SEQUENCE:s\n[s]\nd=VISIBLESTRING:",
                                      absl::StrReplaceAll(desc, {{"#", "\\#"}}),
                                      "\nu=UTF8:", uri, "\n"));
    MustRun(absl::StrCat("openssl asn1parse -genconf ", name, ".cnf -noout -out ", name,
                         ".der && { echo \"", kWrapperBegin, "\"; base64 ", name,
                         ".der; echo \"-----END PKCS#11 PROVIDER URI-----\"; } > ", name,
                         ".pem"));
  };
  const std::string obj = absl::StrCat("pkcs11:token=", kToken, ";object=ec256");
  der_file("desc", "PKCS#11 Provider URI v9.9", obj);
  der_file("pin", "PKCS#11 Provider URI v1.0", absl::StrCat(obj, "?pin-value=", kPin));
  der_file("notp11", "PKCS#11 Provider URI v1.0", "file:///etc/passwd");
  // The control: a hand-built file with the right description and URI is accepted.
  der_file("ok", "PKCS#11 Provider URI v1.0", obj);
  MustRun(absl::StrCat(WithModuleEnv(), "openssl pkey ", kP, " -in ok.pem ", Passin(),
                       " -pubout -out ok.pub && cmp ok.pub ec256.pub"));
  struct Bad {
    const char* file;
    const char* why;
  };
  for (const Bad& b : {Bad{"trunc.pem", "truncated"}, Bad{"desc.pem", "description"},
                       Bad{"pin.pem", "pin-value"}, Bad{"notp11.pem", "pkcs11:"}}) {
    SCOPED_TRACE(b.file);
    for (const char* cmd : {"pkey -pubout -in", "dgst -sha256 -out sig -sign"}) {
      const std::string out =
          MustFail(absl::StrCat(WithModuleEnv(), "openssl ", cmd, " ", b.file, " ", kP, " ",
                                Passin(), std::string(cmd).rfind("dgst", 0) == 0 ? " ok.pub" : ""));
      EXPECT_THAT(out, HasSubstr("bad PKCS#11 URI or URI key file"));
      EXPECT_THAT(out, HasSubstr(b.why));
      EXPECT_THAT(out, Not(HasSubstr(kPin)));
    }
  }
}

}  // namespace
}  // namespace hwid
