// CLI-driven tests of the hwid provider: unmodified Debian programs (openssl, curl, nginx) use TPM
// keys through hwid.so, against the binary's swtpm, on loopback ports picked free. Every server
// and client is a process this test starts and stops itself, bounded in time. Signatures are
// checked by programs running with OpenSSL's default provider only (no -provider flags).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "tests/provider/cli_support.h"

namespace hwid {
namespace {

using ::hwid::testing::Background;
using ::hwid::testing::FreePort;
using ::testing::HasSubstr;

constexpr char kP[] = "-provider default -provider hwid";
// genpkey must reach hwid's key generation: hwid first (or -propquery provider=hwid).
constexpr char kGen[] = "-provider hwid -provider default";

class CliTest : public testing::ProviderCliTest {
 protected:
  CliTest() : ProviderCliTest("hwid-provcli") {}

  // GenKey writes a TPM key `name`.pem and its public key `name`.pub.
  void GenKey(const std::string& name, const std::string& alg) {
    const std::string opt = alg == "EC" || alg == "P-256" ? "-algorithm EC -pkeyopt group:P-256"
                            : alg == "P-384"             ? "-algorithm EC -pkeyopt group:P-384"
                            : alg == "RSA3072" ? "-algorithm RSA -pkeyopt bits:3072"
                                               : "-algorithm RSA -pkeyopt bits:2048";
    MustRun(absl::StrCat("openssl genpkey ", kGen, " ", opt, " -out ", name, ".pem"), 120);
    MustRun(absl::StrCat("openssl pkey ", kP, " -in ", name, ".pem -pubout -out ", name, ".pub"));
  }

  // MakeCa makes a CA whose key is in the TPM (ca.pem, ca.crt) and certificates signed by it.
  void MakeCa(const std::string& alg) {
    GenKey("ca", alg);
    MustRun(absl::StrCat("openssl req ", kP, " -new -x509 -key ca.pem -subj \"/CN=hwid test CA\" "
                         "-days 2 -addext basicConstraints=critical,CA:TRUE "
                         "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt"));
  }
  void MakeCert(const std::string& name, const std::string& alg, const std::string& san) {
    GenKey(name, alg);
    MustRun(absl::StrCat("openssl req ", kP, " -new -key ", name, ".pem -subj /CN=", name,
                         " -addext subjectAltName=", san, " -out ", name, ".csr"));
    MustRun(absl::StrCat("openssl req -verify -noout -in ", name, ".csr"));
    MustRun(absl::StrCat("openssl x509 ", kP, " -req -in ", name, ".csr -CA ca.crt -CAkey ca.pem "
                         "-CAcreateserial -copy_extensions copy -days 1 -out ", name, ".crt"));
    MustRun(absl::StrCat("openssl verify -CAfile ca.crt ", name, ".crt"));
  }
};

TEST_F(CliTest, GenpkeyEveryAlgorithmThenDgstAndPkeyutlSign) {
  for (const char* alg : {"P-256", "P-384", "RSA2048", "RSA3072"}) {
    SCOPED_TRACE(alg);
    GenKey("k", alg);
    auto pem = ReadFile(dir_ + "/k.pem");
    ASSERT_TRUE(pem.ok());
    EXPECT_THAT(std::string(pem->begin(), pem->end()), HasSubstr("BEGIN TSS2 PRIVATE KEY"));
    MustRun(absl::StrCat("printf \"message for %s\" ", alg, " > msg && openssl dgst ", kP,
                         " -sha256 -sign k.pem -out sig msg"));
    auto [rc, out] = Run("openssl dgst -sha256 -verify k.pub -signature sig msg");
    EXPECT_EQ(rc, 0) << out;
    EXPECT_THAT(out, HasSubstr("Verified OK"));
    // The oracle can say no.
    auto [rc2, out2] = Run("echo tampered >> msg && openssl dgst -sha256 -verify k.pub "
                           "-signature sig msg");
    EXPECT_NE(rc2, 0) << out2;
    MustRun(absl::StrCat("openssl dgst -sha384 -binary -out dgst msg && openssl pkeyutl ", kP,
                         " -sign -inkey k.pem -in dgst -out sig2 -pkeyopt digest:sha384 && "
                         "openssl pkeyutl -verify -pubin -inkey k.pub -in dgst -sigfile sig2 "
                         "-pkeyopt digest:sha384"));
  }
}

TEST_F(CliTest, PrivateKeyNeverExportsToSoftware) {
  GenKey("k", "EC");
  // pkey -traditional / -outform DER still writes only the TPM key file, never key material.
  auto [rc, out] = Run(absl::StrCat("openssl pkey ", kP, " -in k.pem -text -noout"));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("private key in the TPM, not exportable"));
  EXPECT_THAT(out, HasSubstr("pub:"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("priv:")));
  auto [rc2, out2] = Run(absl::StrCat("openssl pkey ", kP, " -in k.pem -out re.pem && cat re.pem"));
  EXPECT_EQ(rc2, 0) << out2;
  EXPECT_THAT(out2, HasSubstr("BEGIN TSS2 PRIVATE KEY"));
  EXPECT_THAT(out2, ::testing::Not(HasSubstr("BEGIN PRIVATE KEY")));
}

TEST_F(CliTest, CsrWithSpiffeIdSignedByTpmCa) {
  MakeCa("EC");
  MakeCert("workload", "EC", "URI:spiffe://example.org/workload");
  auto [rc, out] = Run("openssl x509 -in workload.crt -noout -ext subjectAltName");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("URI:spiffe://example.org/workload"));
  // An RSA CA signing an EC workload and the other way round.
  MustRun("rm -f ca.*");
  MakeCa("RSA2048");
  MakeCert("w2", "EC", "URI:spiffe://example.org/w2");
}

struct TlsCliCase {
  const char* name;
  const char* alg;
  const char* version;  // s_client flag
  bool mutual;
  const char* expect_sig;  // in s_client -brief output ("" = no check)
};

class TlsCliTest : public CliTest, public ::testing::WithParamInterface<TlsCliCase> {};

TEST_P(TlsCliTest, SServerSClient) {
  const TlsCliCase& tc = GetParam();
  MakeCa("EC");
  MakeCert("server", tc.alg, "IP:127.0.0.1");
  if (tc.mutual) {
    MakeCert("client", tc.alg, "URI:spiffe://example.org/client");
  }
  const int port = FreePort();
  Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port,
                                 " -cert ", dir_, "/server.crt -key ", dir_, "/server.pem -CAfile ",
                                 dir_, "/ca.crt -naccept 1 -www ",
                                 tc.mutual ? "-Verify 1 -verify_return_error" : ""),
                    dir_ + "/server.log");
  ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
  const testing::ShellResult r = Run(
      testing::SClientGetCommand(
          tc.mutual ? absl::StrCat(kP, " -cert client.crt -key client.pem ") : "", port,
          tc.version),
      30);
  EXPECT_EQ(server.Wait(), 0) << server.Log();
  testing::ExpectSClientGetOk(r, tc.version, tc.expect_sig);
  if (tc.mutual) {
    // The server (-Verify 1 -verify_return_error) verified the client's TPM-signed handshake.
    EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
    EXPECT_THAT(server.Log(), HasSubstr("1 server accepts that finished"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, TlsCliTest,
    ::testing::Values(
        TlsCliCase{"Tls13Ec", "EC", "-tls1_3", false, "Signature type: ECDSA"},
        TlsCliCase{"Tls12Ec", "EC", "-tls1_2", false, "Signature type: ECDSA"},
        TlsCliCase{"Tls13RsaPss", "RSA2048", "-tls1_3", false, "Signature type: RSA-PSS"},
        TlsCliCase{"Tls12Rsa", "RSA2048", "-tls1_2", false, "Signature type: RSA"},
        TlsCliCase{"Tls13EcMutual", "EC", "-tls1_3", true, "Signature type: ECDSA"},
        TlsCliCase{"Tls12EcMutual", "EC", "-tls1_2", true, "Signature type: ECDSA"},
        TlsCliCase{"Tls13RsaMutual", "RSA2048", "-tls1_3", true, "Signature type: RSA-PSS"}),
    [](const auto& tp) { return std::string(tp.param.name); });

TEST_F(CliTest, HandleUriInEveryCommand) {
  GenKey("k", "EC");
  constexpr char kHandle[] = "0x81000201";
  Run(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null 2>&1"));  // leftovers
  MustRun(absl::StrCat("tpm2_load -r k.pem -c k.ctx >/dev/null && tpm2_evictcontrol -c k.ctx ",
                       kHandle, " >/dev/null && tpm2_flushcontext -t"));
  const std::string uri = absl::StrCat("handle:", kHandle);
  MustRun(absl::StrCat("openssl pkey ", kP, " -in ", uri, " -pubout -out h.pub && cmp h.pub k.pub"));
  MustRun(absl::StrCat("echo hi > msg && openssl dgst ", kP, " -sha256 -sign ", uri,
                       " -out sig msg && openssl dgst -sha256 -verify k.pub -signature sig msg"));
  MustRun(absl::StrCat("openssl req ", kP, " -new -key ", uri, " -subj /CN=persistent "
                       "-addext subjectAltName=URI:spiffe://example.org/persistent -out p.csr && "
                       "openssl req -verify -noout -in p.csr"));
  auto [rc, out] = Run(absl::StrCat("openssl pkey ", kP, " -in handle:0x81000299 -pubout"));
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("0x81000299"));
  MustRun(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null"));
}

TEST_F(CliTest, CurlClientKeyFromOpensslCnf) {
  HWID_REQUIRE_TOOL("curl");
#ifdef HWID_SANITIZER_PRELOAD
  // curl hangs in its resolver thread with the sanitizer runtimes preloaded (needed to dlopen the
  // sanitized hwid.so into the uninstrumented curl); the regular build runs this test.
  GTEST_SKIP() << "curl cannot load a sanitized hwid.so";
#endif
  MakeCa("EC");
  MakeCert("server", "EC", "IP:127.0.0.1");
  MakeCert("client", "EC", "URI:spiffe://example.org/curl");
  for (const testing::ProviderOrder order :
       {testing::ProviderOrder::kDefaultFirst, testing::ProviderOrder::kHwidFirst}) {
    const std::string cnf = WriteOpensslCnf("openssl.cnf", "", order);
    for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
      SCOPED_TRACE(absl::StrCat(
          v, order == testing::ProviderOrder::kHwidFirst ? " hwid first" : " default first"));
      const int port = FreePort();
      const std::string log = absl::StrCat(dir_, "/server-", port, ".log");
      Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port,
                                     " -cert ", dir_, "/server.crt -key ", dir_,
                                     "/server.pem -CAfile ", dir_,
                                     "/ca.crt -naccept 1 -www -Verify 1 -verify_return_error"),
                        log);
      ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
      auto [rc, out] = Run(absl::StrCat("OPENSSL_CONF=", cnf, " curl -sS ", v,
                                        " --cacert ca.crt --cert client.crt --key client.pem "
                                        "https://127.0.0.1:", port, "/"), 30);
      EXPECT_EQ(server.Wait(), 0) << server.Log();
      EXPECT_EQ(rc, 0) << out;
      EXPECT_THAT(out, HasSubstr("Ciphers supported in s_server"));
      EXPECT_THAT(server.Log(), HasSubstr("depth=0 CN = client"));
    }
  }
}

struct NginxCase {
  const char* name;
  const char* alg;
  int workers;
  testing::ProviderOrder order;  // in openssl.cnf
};

class NginxTest : public CliTest, public ::testing::WithParamInterface<NginxCase> {};

// nginx 1.22 reads ssl_certificate_key with PEM_read_bio_PrivateKey; openssl.cnf activates hwid.
// Without a resource manager all processes share swtpm's 3 object slots: the master flushes its
// keys at fork (pthread_atfork), each worker loads the key on its first handshake and keeps it.
TEST_P(NginxTest, ServesWithTpmKeyAndCurlVerifies) {
  HWID_REQUIRE_TOOL("nginx");
  HWID_REQUIRE_TOOL("curl");
  const NginxCase& nc = GetParam();
  MakeCa("EC");
  MakeCert("server", nc.alg, "IP:127.0.0.1");
  const std::string cnf = WriteOpensslCnf("openssl.cnf", "", nc.order);
  const int port = FreePort();
  MustRun("mkdir -p logs tmp");
  const std::string conf =
      testing::NginxConf(dir_, nc.workers, port, dir_ + "/server.pem", "hwid nginx ok");
  ASSERT_TRUE(WriteFile(dir_ + "/nginx.conf", AsSpan(conf)).ok());
  Background nginx(absl::StrCat("env OPENSSL_CONF=", cnf, " nginx -p ", dir_, " -c ", dir_,
                                "/nginx.conf -e ", dir_, "/logs/error.log"),
                   dir_ + "/nginx.out");
  ASSERT_TRUE(nginx.WaitForPort(port)) << nginx.Log();
  // Several requests, so that every worker (forked after the master read the key) signs.
  for (int i = 0; i < 8; ++i) {
    for (const char* v : {"--tlsv1.3", "--tlsv1.2 --tls-max 1.2"}) {
      auto [rc, out] = Run(absl::StrCat("curl -sS ", v, " --cacert ca.crt https://127.0.0.1:",
                                        port, "/"), 30);
      EXPECT_EQ(rc, 0) << v << " " << out;
      EXPECT_THAT(out, HasSubstr("hwid nginx ok"));
    }
  }
  // Graceful shutdown: workers and master exit normally and flush their TPM objects.
  EXPECT_EQ(nginx.Stop(SIGQUIT), 0);
  auto log = ReadFile(dir_ + "/logs/error.log");
  const std::string text = log.ok() ? std::string(log->begin(), log->end()) : "";
  EXPECT_THAT(text, ::testing::Not(HasSubstr("[crit]"))) << text;
  EXPECT_THAT(text, ::testing::Not(HasSubstr("[emerg]"))) << text;
}

INSTANTIATE_TEST_SUITE_P(Keys, NginxTest,
                         ::testing::Values(
                             NginxCase{"EcTwoWorkers", "EC", 2,
                                       testing::ProviderOrder::kDefaultFirst},
                             NginxCase{"RsaOneWorker", "RSA2048", 1,
                                       testing::ProviderOrder::kDefaultFirst},
                             // TLS 1.2 ECDHE-ECDSA needs libssl's NIST groups: see "Provider
                             // order" in docs/provider.md.
                             NginxCase{"EcTwoWorkersHwidFirst", "EC", 2,
                                       testing::ProviderOrder::kHwidFirst},
                             NginxCase{"RsaOneWorkerHwidFirst", "RSA2048", 1,
                                       testing::ProviderOrder::kHwidFirst}),
                         [](const auto& tp) { return std::string(tp.param.name); });

}  // namespace
}  // namespace hwid
