// hwid in real forking servers (issue 12): Debian's nginx 1.22 (master + 2 or 4 workers) and
// HAProxy 2.6 (master-worker, nbthread 2) serve TLS 1.3 and 1.2 with a server key in the binary's
// raw swtpm (no resource manager) or on a private SoftHSM2 token, loaded through the openssl.cnf
// snippet docs/provider.md ships; several curl processes at once are the clients (every request a
// full handshake: no session cache, no tickets). Cases: load with zero failed requests, a reload
// (nginx SIGHUP, HAProxy USR2) in the middle of the load, mutual TLS with curl's client key in
// the TPM or on the token, SIGKILL of an nginx worker followed by new connections, and an nginx
// worker whose uid cannot read the token store.
//
// Every server is a process this test starts on a free loopback port in its own directory and
// stops afterwards (also when the test fails). Certificates come from a software CA; the
// clients check the server's chain and IP with OpenSSL's default provider only (no OPENSSL_CONF),
// except curl with a hardware client key, which needs the provider. No timing assertions: waits
// are bounded polls on logs and ports.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/provider/cli_support.h"
#include "tests/testing/swtpm.h"

namespace hwid {
namespace {

using ::hwid::testing::Background;
using ::hwid::testing::FreePort;
using ::hwid::testing::SoftHsm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kP[] = "-provider default -provider hwid";
constexpr char kReply[] = "hwid server ok";
constexpr char kTokenLabel[] = "servers";
constexpr char kPin[] = "Srv-4410-pin";
constexpr char kSoPin[] = "so-4410";
// Load: kLoops curl processes at once, each kPerLoop requests (one full handshake each); even
// loops TLS 1.3, odd loops TLS 1.2 with an ECDHE suite of the key's type.
constexpr int kLoops = 4;
constexpr int kPerLoop = 60;

enum class Store { kTpm, kToken };

struct ServerCase {
  const char* name;
  Store store;
  bool rsa;
  int workers;  // nginx worker_processes; HAProxy always runs one worker with nbthread 2
};

void PrintTo(const ServerCase& c, std::ostream* os) { *os << c.name; }

// The token (once per binary; SOFTHSM2_CONF is process-wide and inherited by the servers).
SoftHsm* g_hsm = nullptr;

class TokenEnv : public ::testing::Environment {
 public:
  void TearDown() override {
    delete g_hsm;
    g_hsm = nullptr;
  }
};
const auto* const kTokenEnv = ::testing::AddGlobalTestEnvironment(new TokenEnv);

// LoadResult is what the curl processes of one load run saw.
struct LoadResult {
  int ok = 0;                    // answers with kReply
  std::set<std::string> pids;    // server process ids named in the answers
  std::set<std::string> client;  // client subjects named in the answers (mutual TLS)
  std::string errors;            // curl's stderr and non-zero exit codes
};

class ServersTest : public testing::ProviderCliTest {
 protected:
  ServersTest() : ProviderCliTest("hwid-servers") {}

  static void SetUpTestSuite() {
    ProviderCliTest::SetUpTestSuite();
    unsetenv("HWID_PKCS11_MODULE");
    unsetenv("HWID_PKCS11_PIN");
  }

  void SetUp() override {
#ifdef HWID_SANITIZER_PRELOAD
    // curl hangs in its resolver thread with the sanitizer runtimes preloaded (provider_cli_test).
    GTEST_SKIP() << "curl cannot run next to a sanitized hwid.so";
#endif
    HWID_REQUIRE_TOOL("curl");
    ProviderCliTest::SetUp();
    if (HasFatalFailure()) {
      return;
    }
    MustRun("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
            "-subj \"/CN=hwid servers CA\" -days 2 -addext basicConstraints=critical,CA:TRUE "
            "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt 2>/dev/null");
    MustRun("mkdir -p logs tmp");
  }

  // NeedToken starts the binary's SoftHSM2 token on first use (ASSERTs it works).
  void NeedToken() {
    HWID_REQUIRE_SOFTHSM();
    if (g_hsm == nullptr) {
      absl::StatusOr<std::unique_ptr<SoftHsm>> h = SoftHsm::Start(kTokenLabel, kPin, kSoPin);
      ASSERT_TRUE(h.ok()) << h.status();
      g_hsm = h->release();
    }
    Write("pin", absl::StrCat(kPin, "\n"));
  }

  // MakeKey writes `name`.pem, a key file that only the provider can read: a TSS2 PRIVATE KEY
  // made in the swtpm, or the PKCS#11 PROVIDER URI file of a key made on the token with the hwid
  // CLI; then `name`.crt for it, issued by the software CA with subjectAltName `san`.
  void MakeKey(const std::string& name, Store store, bool rsa, const std::string& san) {
    if (store == Store::kTpm) {
      // Key generation in the TPM is asked for explicitly (docs/provider.md).
      MustRun(absl::StrCat("openssl genpkey ", kP, " -propquery provider=hwid ",
                           rsa ? "-algorithm RSA -pkeyopt bits:2048"
                               : "-algorithm EC -pkeyopt group:P-256",
                           " -out ", name, ".pem"),
              120);
    } else {
      NeedToken();
      if (HasFatalFailure()) {
        return;
      }
      const char* cli = std::getenv("HWID_CLI");
      const std::string label = absl::StrCat(name, "-", dir_.substr(dir_.rfind('-') + 1));
      MustRun(absl::StrCat(cli != nullptr ? cli : "hwid", " key create --pkcs11 \"", g_hsm->uri(),
                           "\" --alg ", rsa ? "rsa-2048" : "ec-p256", " --label ", label,
                           " >/dev/null 2>&1"));
      MustRun(absl::StrCat("openssl pkey ", kP, " -in \"pkcs11:token=", kTokenLabel, ";object=", label,
                           "?module-path=", SoftHsm::kModule, "\" -passin pass:", kPin, " -out ",
                           name, ".pem"));
    }
    if (HasFatalFailure()) {
      return;
    }
    const std::string token_env =
        store == Store::kToken
            ? absl::StrCat("HWID_PKCS11_MODULE=", SoftHsm::kModule, " HWID_PKCS11_PIN=", kPin, " ")
            : "";
    MustRun(absl::StrCat(token_env, "openssl req ", kP, " -new -key ", name, ".pem -subj /CN=", name,
                         " -addext subjectAltName=", san, " -out ", name, ".csr"));
    MustRun(absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ca.crt -CAkey ca.key "
                         "-CAcreateserial -copy_extensions copy -days 1 -out ", name,
                         ".crt 2>/dev/null && openssl verify -CAfile ca.crt ", name, ".crt"));
  }

  // Cnf writes openssl.cnf: docs/provider.md's snippet (default, then hwid with the TCTI) plus,
  // for token keys, the module and the PIN file.
  std::string Cnf(Store store) {
    return WriteOpensslCnf(
        "openssl.cnf",
        store == Store::kToken
            ? absl::StrCat("pkcs11-module-path = ", SoftHsm::kModule,
                           "\npkcs11-pin-source = file:", dir_, "/pin\n")
            : "");
  }

  // NginxConf: `workers` workers, no session cache nor tickets (every request is a full
  // handshake), reuseport (the kernel spreads connections over the workers), answers
  // "kReply pid=$pid client=$ssl_client_s_dn". `user` runs the workers as that user
  // ("" = the current one: nginx started as root would otherwise run them as nobody);
  // `mutual` requires a client certificate from ca.crt.
  std::string NginxConf(int workers, int port, const std::string& user, bool mutual) {
    const std::string d = dir_;
    return absl::StrCat(
        "daemon off;\nmaster_process on;\nworker_processes ", workers, ";\n",
        "user ", user.empty() ? (geteuid() == 0 ? "root root" : CurrentUser()) : user,
        ";\nenv SOFTHSM2_CONF;\n",
        "error_log ", d, "/logs/error.log info;\npid ", d, "/logs/nginx.pid;\n",
        "events { worker_connections 256; }\nhttp {\n  access_log off;\n",
        "  client_body_temp_path ", d, "/tmp/body;\n  proxy_temp_path ", d, "/tmp/proxy;\n",
        "  fastcgi_temp_path ", d, "/tmp/fcgi;\n  uwsgi_temp_path ", d, "/tmp/uwsgi;\n",
        "  scgi_temp_path ", d, "/tmp/scgi;\n  ssl_protocols TLSv1.2 TLSv1.3;\n",
        "  ssl_session_cache off;\n  ssl_session_tickets off;\n",
        "  server {\n    listen 127.0.0.1:", port, " ssl reuseport;\n",
        "    ssl_certificate ", d, "/server.crt;\n    ssl_certificate_key ", d, "/server.pem;\n",
        mutual ? absl::StrCat("    ssl_client_certificate ", d, "/ca.crt;\n    ssl_verify_client on;\n")
               : "",
        "    location / { return 200 \"", kReply, " pid=$pid client=$ssl_client_s_dn\\n\"; }\n",
        "  }\n}\n");
  }

  static std::string CurrentUser() {
    return std::string(absl::StripAsciiWhitespace(testing::RunShell("id -un").output));
  }

  // StartNginx starts nginx on `conf` with OPENSSL_CONF=`cnf` and waits for its port.
  std::unique_ptr<Background> StartNginx(const std::string& cnf, int port) {
    auto nginx = std::make_unique<Background>(
        absl::StrCat("env OPENSSL_CONF=", cnf, " nginx -p ", dir_, " -c ", dir_,
                     "/nginx.conf -e ", dir_, "/logs/error.log"),
        dir_ + "/nginx.out");
    EXPECT_TRUE(nginx->WaitForPort(port)) << nginx->Log() << Text("logs/error.log");
    return nginx;
  }

  // HaproxyConf: master-worker, nbthread 2, no session cache nor tickets, one TLS frontend with
  // `crt` dir_/server.bundle.pem (certificate + key file), answering "kReply pid=%pid
  // client=<subject>"; `mutual` requires a client certificate from ca.crt.
  // `global_extra` adds lines to the global section.
  std::string HaproxyConf(int port, bool mutual, const std::string& global_extra = "") {
    return absl::StrCat(
        "global\n  master-worker\n", global_extra, "  nbthread 2\n  pidfile ", dir_,
        "/haproxy.pid\n",
        "  tune.ssl.cachesize 0\n",
        "defaults\n  mode http\n  timeout connect 10s\n  timeout client 60s\n",
        "  timeout server 60s\n",
        "frontend fe\n  bind 127.0.0.1:", port, " ssl crt ", dir_,
        "/server.bundle.pem no-tls-tickets ssl-min-ver TLSv1.2",
        mutual ? absl::StrCat(" ca-file ", dir_, "/ca.crt verify required") : "", "\n",
        "  http-request return status 200 content-type text/plain lf-string \"", kReply,
        " pid=%pid client=%[ssl_c_s_dn]\\n\"\n");
  }

  // StartHaproxy starts HAProxy with `env` ("OPENSSL_CONF=..." or other variables) and waits
  // for its port.
  std::unique_ptr<Background> StartHaproxy(const std::string& env, int port) {
    auto h = std::make_unique<Background>(
        absl::StrCat("env ", env, " haproxy -W -db -f ", dir_, "/haproxy.cfg"),
        dir_ + "/haproxy.out");
    EXPECT_TRUE(h->WaitForPort(port)) << h->Log();
    return h;
  }

  // LoadScript writes load.sh: kLoops curl processes at once against 127.0.0.1:`port`, each
  // kPerLoop requests in one curl run (no session reuse, the server closes each connection),
  // output in load-J.out/.err/.rc; `client_env` and `client_args` add a client key. With
  // `sequential` the curl processes run one after the other (see the token mutual TLS case).
  std::string LoadScript(int port, bool rsa, const std::string& client_env,
                         const std::string& client_args, bool sequential = false) {
    std::string s = absl::StrCat("unset LD_PRELOAD\ncd ", dir_,
                                 "\nrm -f load-*.out load-*.err load-*.rc\n");
    for (int j = 0; j < kLoops; ++j) {
      const std::string version =
          j % 2 == 0 ? "--tlsv1.3"
                     : absl::StrCat("--tlsv1.2 --tls-max 1.2 --ciphers ",
                                    rsa ? "ECDHE-RSA-AES128-GCM-SHA256"
                                        : "ECDHE-ECDSA-AES128-GCM-SHA256");
      absl::StrAppend(&s, "(", client_env, " curl -sS --no-sessionid --max-time 60 --cacert ca.crt ",
                      version, " ", client_args, " -H \"Connection: close\" ",
                      "\"https://127.0.0.1:", port, "/[1-", kPerLoop, "]\" >load-", j,
                      ".out 2>load-", j, ".err; echo $? >load-", j, ".rc)", sequential ? "\n" : " &\n");
    }
    absl::StrAppend(&s, "wait\n");
    Write("load.sh", s);
    return absl::StrCat("sh ", dir_, "/load.sh");
  }

  // Replies counts the answers the load has received so far.
  int Replies() {
    int n = 0;
    for (int j = 0; j < kLoops; ++j) {
      const std::string out = Text(absl::StrCat("load-", j, ".out"));
      for (size_t p = out.find(kReply); p != std::string::npos; p = out.find(kReply, p + 1)) {
        ++n;
      }
    }
    return n;
  }

  // WaitForReplies waits (bounded, generously) until the load has received `n` answers.
  bool WaitForReplies(int n) {
    for (int i = 0; i < 1200 && Replies() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return Replies() >= n;
  }

  LoadResult Collect() {
    LoadResult r;
    for (int j = 0; j < kLoops; ++j) {
      const std::string out = Text(absl::StrCat("load-", j, ".out"));
      for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
        if (!absl::ConsumePrefix(&line, kReply)) {
          continue;
        }
        ++r.ok;
        for (absl::string_view f : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
          if (absl::ConsumePrefix(&f, "pid=")) {
            r.pids.insert(std::string(f));
          } else if (absl::ConsumePrefix(&f, "client=")) {
            r.client.insert(std::string(f));
          }
        }
      }
      const std::string rc(absl::StripAsciiWhitespace(Text(absl::StrCat("load-", j, ".rc"))));
      if (rc != "0") {
        absl::StrAppend(&r.errors, "curl ", j, " exit ", rc, ": ",
                        Text(absl::StrCat("load-", j, ".err")), "\n");
      }
    }
    return r;
  }

  // RunLoad runs one load to completion and EXPECTs zero failed requests.
  LoadResult RunLoad(const std::string& script) {
    testing::ShellResult r = testing::RunShell(absl::StrCat("timeout 900 sh -c '", script, "'"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    LoadResult l = Collect();
    EXPECT_EQ(l.ok, kLoops * kPerLoop) << l.errors;
    EXPECT_EQ(l.errors, "");
    return l;
  }

  // MutualLoad runs RunLoad with every curl process presenting client.crt and the key file
  // client.pem through openssl.cnf `cnf`. SoftHSM2 2.6.1's file store is not safe for processes
  // that open the token at the same moment (softhsm/SoftHSMv2#757, "Token integrity check
  // failed", reproduced with plain pkcs11-tool), so curl processes holding a token client key
  // take turns; the server's workers still sign concurrently.
  LoadResult MutualLoad(int port, const ServerCase& c, const std::string& cnf) {
    return RunLoad(LoadScript(port, c.rsa, absl::StrCat("OPENSSL_CONF=", cnf),
                              "--cert client.crt --key client.pem", c.store == Store::kToken));
  }

  // Pid reads a pid file in dir_, waiting (bounded) until the server has written it; ADDs a
  // failure and returns "0" when it never appears.
  std::string Pid(const std::string& file) {
    for (int i = 0; i < 600; ++i) {
      std::string pid(absl::StripAsciiWhitespace(Text(file)));
      int n = 0;
      if (absl::SimpleAtoi(pid, &n) && n > 0) {
        return pid;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "no pid in " << file;
    return "0";
  }
  // SendSignal sends `sig` to the single process `pid` (never a group: pid must be > 1).
  static bool SendSignal(const std::string& pid, int sig) {
    int n = 0;
    return absl::SimpleAtoi(pid, &n) && n > 1 && kill(n, sig) == 0;
  }
  // Children lists the child processes of `pid`.
  std::vector<std::string> Children(const std::string& pid) {
    testing::ShellResult r = testing::RunShell(absl::StrCat("pgrep -P ", pid));
    return absl::StrSplit(absl::StripAsciiWhitespace(r.output), '\n', absl::SkipEmpty());
  }
  // Workers waits (bounded) until `master` has `n` children (nginx opens its port before it
  // forks the workers) and returns them.
  std::vector<std::string> Workers(const std::string& master, int n) {
    std::vector<std::string> w = Children(master);
    for (int i = 0; i < 600 && w.size() != static_cast<size_t>(n); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      w = Children(master);
    }
    EXPECT_EQ(w.size(), static_cast<size_t>(n)) << "children of " << master;
    return w;
  }

  // ExpectNoThreadTakesSignals EXPECTs that every thread of process `pid` but its main thread
  // blocks the signals a forking server handles itself (nginx and HAProxy run their handlers in
  // the main thread and sleep in sigsuspend: a library thread that accepts SIGCHLD, SIGHUP or
  // SIGQUIT steals them, and the master never reaps, reloads or exits). nginx itself starts no
  // threads here, so any other thread is a library's (hwid's).
  void ExpectNoThreadTakesSignals(const std::string& pid) {
    const std::string tasks = testing::RunShell(absl::StrCat("ls /proc/", pid, "/task")).output;
    for (absl::string_view tid : absl::StrSplit(tasks, '\n', absl::SkipEmpty())) {
      if (tid == pid) {
        continue;
      }
      const std::string status =
          testing::RunShell(absl::StrCat("cat /proc/", pid, "/task/", tid, "/status")).output;
      const size_t at = status.find("SigBlk:");
      ASSERT_NE(at, std::string::npos) << status;
      uint64_t blocked = 0;
      ASSERT_TRUE(absl::SimpleHexAtoi(
          absl::StripAsciiWhitespace(status.substr(at + 7, status.find('\n', at) - at - 7)),
          &blocked))
          << status;
      for (int sig : {SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGCHLD, SIGALRM, SIGIO,
                      SIGWINCH}) {
        EXPECT_NE(blocked & (uint64_t{1} << (sig - 1)), 0u)
            << "thread " << tid << " of process " << pid << " accepts signal " << sig
            << " (SigBlk " << absl::StrCat(absl::Hex(blocked)) << ")";
      }
    }
  }

  // ExpectCleanNginxLog EXPECTs the error log has no worker crash and no TLS key failure.
  void ExpectCleanNginxLog(bool allow_killed_worker) {
    const std::string log = Text("logs/error.log");
    EXPECT_THAT(log, Not(HasSubstr("[emerg]"))) << log;
    EXPECT_THAT(log, Not(HasSubstr("hwid"))) << log;
    EXPECT_THAT(log, Not(HasSubstr("SSL_do_handshake() failed"))) << log;
    if (!allow_killed_worker) {
      EXPECT_THAT(log, Not(HasSubstr("exited on signal"))) << log;
      EXPECT_THAT(log, Not(HasSubstr("[crit]"))) << log;
    }
  }
};

// ---- nginx --------------------------------------------------------------------------------

class NginxTest : public ServersTest, public ::testing::WithParamInterface<ServerCase> {
 protected:
  // Up makes the server key of the case (and a client key when `mutual`), openssl.cnf and
  // nginx.conf, starts nginx and waits for its workers (check HasFatalFailure() after).
  void Up(bool mutual) {
    const ServerCase& c = GetParam();
    MakeKey("server", c.store, c.rsa, "IP:127.0.0.1");
    if (mutual) {
      MakeKey("client", c.store, c.rsa, "URI:spiffe://example.org/curl");
    }
    ASSERT_FALSE(HasFatalFailure());
    cnf_ = Cnf(c.store);
    port_ = FreePort();
    Write("nginx.conf", NginxConf(c.workers, port_, "", mutual));
    nginx_ = StartNginx(cnf_, port_);
    ASSERT_FALSE(HasFailure());
    master_ = Pid("logs/nginx.pid");
    ASSERT_NE(master_, "0");
    workers_ = Workers(master_, c.workers);
  }
  // Down stops nginx gracefully and EXPECTs a clean exit and log.
  void Down(bool allow_killed_worker) {
    EXPECT_EQ(nginx_->Stop(SIGQUIT), 0);
    ExpectCleanNginxLog(allow_killed_worker);
  }
  LoadResult Load() { return RunLoad(LoadScript(port_, GetParam().rsa, "", "")); }
  // LoadThrough runs a load and sends `sig` to `pid` once a quarter of the answers are in;
  // returns what the load saw (not checked: the caller decides).
  LoadResult LoadThrough(const std::string& pid, int sig) {
    Background load(LoadScript(port_, GetParam().rsa, "", ""), dir_ + "/load.log");
    EXPECT_TRUE(WaitForReplies(kLoops * kPerLoop / 4)) << Collect().errors;
    EXPECT_TRUE(SendSignal(pid, sig));
    load.Wait(900);
    return Collect();
  }
  // WaitForNewWorkers waits (bounded) until the master has as many workers as before and none of
  // `old`, and returns them.
  std::vector<std::string> WaitForNewWorkers(const std::vector<std::string>& old) {
    std::vector<std::string> now = Children(master_);
    for (int i = 0; i < 600 && (now.size() != old.size() ||
                                std::any_of(now.begin(), now.end(), [&](const std::string& w) {
                                  return std::find(old.begin(), old.end(), w) != old.end();
                                }));
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      now = Children(master_);
    }
    EXPECT_EQ(now.size(), old.size());
    for (const std::string& w : now) {
      EXPECT_THAT(old, Not(::testing::Contains(w))) << "old worker still running";
    }
    return now;
  }
  static void ExpectAllAnswered(const LoadResult& l, const std::vector<std::string>& workers) {
    for (const std::string& w : workers) {
      EXPECT_TRUE(l.pids.count(w)) << "worker " << w << " answered nothing";
    }
  }

  std::string cnf_;
  int port_ = 0;
  std::unique_ptr<Background> nginx_;
  std::string master_;
  std::vector<std::string> workers_;
};

// Four curl processes at once, TLS 1.3 and 1.2: every request answered, by every worker
// (reuseport spreads the connections over the workers).
TEST_P(NginxTest, LoadZeroFailures) {
  HWID_REQUIRE_TOOL("nginx");
  ASSERT_NO_FATAL_FAILURE(Up(false));
  ExpectAllAnswered(Load(), workers_);
  // The master read the key, the workers signed: neither may have a thread that takes signals.
  ExpectNoThreadTakesSignals(master_);
  for (const std::string& w : workers_) {
    ExpectNoThreadTakesSignals(w);
  }
  Down(false);
}

// SIGHUP while the load runs: the master re-reads the key, starts new workers, the old ones
// finish their connections; no request fails, and the new workers serve the next load.
TEST_P(NginxTest, ReloadUnderLoadZeroFailures) {
  HWID_REQUIRE_TOOL("nginx");
  ASSERT_NO_FATAL_FAILURE(Up(false));
  LoadResult l = LoadThrough(master_, SIGHUP);
  EXPECT_EQ(l.ok, kLoops * kPerLoop) << l.errors;
  EXPECT_EQ(l.errors, "");
  EXPECT_THAT(Text("logs/error.log"), HasSubstr("reconfiguring"));
  ExpectAllAnswered(Load(), WaitForNewWorkers(workers_));
  Down(false);
}

// Mutual TLS: curl (OpenSSL 3.0 through openssl.cnf) signs with a client key in the TPM or on
// the token, given as a plain key file (--key); nginx verifies it. Without the client certificate
// nginx refuses (the control).
TEST_P(NginxTest, MutualTlsClientKeyThroughProvider) {
  HWID_REQUIRE_TOOL("nginx");
  ASSERT_NO_FATAL_FAILURE(Up(true));
  const ServerCase& c = GetParam();
  LoadResult l = MutualLoad(port_, c, cnf_);
  EXPECT_THAT(l.client, ::testing::ElementsAre("CN=client"));
  auto [rc, out] = Run(absl::StrCat("curl -sS --cacert ca.crt https://127.0.0.1:", port_, "/"), 60);
  EXPECT_THAT(out, HasSubstr("No required SSL certificate was sent"));
  EXPECT_THAT(out, Not(HasSubstr(kReply)));
  Down(false);
}

// SIGKILL of a worker while handshakes run: the master starts a new one, and new connections are
// all answered, by every worker (the killed worker's in-flight requests may fail). A killed
// process cannot flush a key it was using: the test reports how many objects stayed and flushes
// them.
TEST_P(NginxTest, KillWorkerMidHandshakeThenNewConnectionsWork) {
  HWID_REQUIRE_TOOL("nginx");
  ASSERT_NO_FATAL_FAILURE(Up(false));
  ASSERT_FALSE(workers_.empty());
  const std::string victim = workers_[0];
  LoadThrough(victim, SIGKILL);
  std::vector<std::string> now = Children(master_);
  for (int i = 0; i < 600 && (now.size() != workers_.size() ||
                              std::find(now.begin(), now.end(), victim) != now.end());
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    now = Children(master_);
  }
  EXPECT_THAT(now, Not(::testing::Contains(victim)));
  EXPECT_EQ(now.size(), workers_.size());
  EXPECT_THAT(Text("logs/error.log"), HasSubstr(absl::StrCat(victim, " exited on signal 9")));
  ExpectAllAnswered(Load(), now);
  Down(true);
  const size_t left = testing::TransientCount();
  RecordProperty("transient_objects_left_by_sigkill", static_cast<int>(left));
  std::printf("transient objects left in the TPM by the killed worker: %zu\n", left);
  testing::RunShell("tpm2_flushcontext -t");
}

INSTANTIATE_TEST_SUITE_P(
    Servers, NginxTest,
    ::testing::Values(ServerCase{"TpmEc2", Store::kTpm, false, 2},
                      ServerCase{"TpmEc4", Store::kTpm, false, 4},
                      ServerCase{"TpmRsa2", Store::kTpm, true, 2},
                      ServerCase{"TpmRsa4", Store::kTpm, true, 4},
                      ServerCase{"TokenEc2", Store::kToken, false, 2},
                      ServerCase{"TokenRsa4", Store::kToken, true, 4}),
    [](const auto& tp) { return std::string(tp.param.name); });

// nginx workers run as nobody and the token store is readable only by root (the master, root,
// read the key): the workers' handshakes fail, and the error log says which uid cannot read which
// path and what to change.
TEST_F(ServersTest, NginxWorkerUidCannotReadTokenStoreSaysSo) {
  HWID_REQUIRE_TOOL("nginx");
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root (nginx switches its workers to nobody)";
  }
  MakeKey("server", Store::kToken, false, "IP:127.0.0.1");
  ASSERT_FALSE(HasFatalFailure());
  const std::string cnf = Cnf(Store::kToken);
  // The token directory is root's alone (mkdtemp 0700).
  struct stat st {};
  ASSERT_EQ(stat(g_hsm->dir().c_str(), &st), 0);
  ASSERT_EQ(st.st_mode & 0077, 0u) << g_hsm->dir();
  const int port = FreePort();
  Write("nginx.conf", NginxConf(2, port, "nobody nogroup", false));
  std::unique_ptr<Background> nginx = StartNginx(cnf, port);
  ASSERT_FALSE(HasFailure());
  auto [rc, out] = Run(absl::StrCat("curl -sS --cacert ca.crt https://127.0.0.1:", port, "/"), 60);
  EXPECT_NE(rc, 0) << out;
  EXPECT_EQ(nginx->Stop(SIGQUIT), 0);
  const std::string log = Text("logs/error.log");
  const std::string nobody_uid =
      std::string(absl::StripAsciiWhitespace(testing::RunShell("id -u nobody").output));
  EXPECT_THAT(log, ::testing::ContainsRegex(absl::StrCat("uid[ =:]*", nobody_uid))) << log;
  EXPECT_THAT(log, HasSubstr(g_hsm->dir())) << log;
}

// ---- HAProxy 2.6 --------------------------------------------------------------------------

class HaproxyTest : public ServersTest, public ::testing::WithParamInterface<ServerCase> {
 protected:
  // Up makes the server key of the case (and a client key when `mutual`), the `crt` bundle
  // (certificate, then key file), openssl.cnf and haproxy.cfg with `global_extra`, and starts
  // HAProxy with `env` ("" = OPENSSL_CONF=openssl.cnf). Check HasFatalFailure() after.
  void Up(bool mutual, const std::string& global_extra = "", const std::string& env = "") {
    const ServerCase& c = GetParam();
    MakeKey("server", c.store, c.rsa, "IP:127.0.0.1");
    if (mutual) {
      MakeKey("client", c.store, c.rsa, "URI:spiffe://example.org/curl");
    }
    ASSERT_FALSE(HasFatalFailure());
    MustRun("cat server.crt server.pem > server.bundle.pem");
    cnf_ = Cnf(c.store);
    port_ = FreePort();
    Write("haproxy.cfg", HaproxyConf(port_, mutual, global_extra));
    h_ = StartHaproxy(env.empty() ? "OPENSSL_CONF=" + cnf_ : env, port_);
    ASSERT_FALSE(HasFailure());
    master_ = Pid("haproxy.pid");
    ASSERT_NE(master_, "0");
  }

  // Down soft-stops HAProxy (SIGUSR1 to the master: workers finish and exit(0), so hwid flushes
  // their TPM objects; SIGTERM kills the workers, see docs/provider.md) and EXPECTs a clean log.
  void Down() {
    EXPECT_EQ(h_->Stop(SIGUSR1), 0) << h_->Log();
    EXPECT_THAT(h_->Log(), Not(HasSubstr("ALERT"))) << h_->Log();
  }
  LoadResult Load() { return RunLoad(LoadScript(port_, GetParam().rsa, "", "")); }

  // Reload sends USR2 to the master and waits (bounded) for the second "Loading success";
  // EXPECTs it.
  void Reload() {
    EXPECT_TRUE(SendSignal(master_, SIGUSR2));
    bool reloaded = false;
    for (int i = 0; i < 600 && !reloaded; ++i) {
      const std::string log = h_->Log();
      const size_t first = log.find("Loading success");
      reloaded = first != std::string::npos &&
                 log.find("Loading success", first + 1) != std::string::npos;
      if (!reloaded && log.find("Loading failure") != std::string::npos) {
        break;
      }
      if (!reloaded) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    EXPECT_TRUE(reloaded) << h_->Log();
  }

  std::string cnf_;
  int port_ = 0;
  std::unique_ptr<Background> h_;
  std::string master_;
};

// HAProxy reads `crt` with PEM_read_bio_PrivateKey: with OPENSSL_CONF activating hwid its
// decoder turns the key file in the bundle into a provider key. Four curl processes, TLS 1.3
// and 1.2, nbthread 2: every request answered.
TEST_P(HaproxyTest, LoadZeroFailures) {
  HWID_REQUIRE_TOOL("haproxy");
  ASSERT_NO_FATAL_FAILURE(Up(false));
  Load();
  Down();
}

// USR2 to the master (master-worker mode) while the load runs: the master re-executes itself,
// reads the key again, starts a new worker; the old worker finishes its connections.
TEST_P(HaproxyTest, ReloadUnderLoadZeroFailures) {
  HWID_REQUIRE_TOOL("haproxy");
  ASSERT_NO_FATAL_FAILURE(Up(false));
  const std::vector<std::string> before = Workers(master_, 1);
  Background load(LoadScript(port_, GetParam().rsa, "", ""), dir_ + "/load.log");
  ASSERT_TRUE(WaitForReplies(kLoops * kPerLoop / 4)) << Collect().errors;
  Reload();
  EXPECT_EQ(load.Wait(900), 0) << load.Log();
  LoadResult l = Collect();
  EXPECT_EQ(l.ok, kLoops * kPerLoop) << l.errors;
  EXPECT_EQ(l.errors, "");
  // The new worker serves the next load.
  LoadResult l2 = Load();
  EXPECT_FALSE(l2.pids.empty());
  for (const std::string& p : l2.pids) {
    EXPECT_THAT(before, Not(::testing::Contains(p))) << "the old worker still answers";
  }
  Down();
}

// Mutual TLS on HAProxy: curl's client key in the TPM or on the token.
TEST_P(HaproxyTest, MutualTlsClientKeyThroughProvider) {
  HWID_REQUIRE_TOOL("haproxy");
  ASSERT_NO_FATAL_FAILURE(Up(true));
  const ServerCase& c = GetParam();
  LoadResult l = MutualLoad(port_, c, cnf_);
  EXPECT_THAT(l.client, ::testing::ElementsAre("/CN=client"));
  auto [rc, out] = Run(absl::StrCat("curl -sS --cacert ca.crt https://127.0.0.1:", port_, "/"), 60);
  EXPECT_NE(rc, 0) << out;
  EXPECT_THAT(out, Not(HasSubstr(kReply)));
  Down();
}

// HAProxy 2.6's own `ssl-provider` directives instead of openssl.cnf: the global section loads
// default and hwid before the `crt` files are read (no OPENSSL_CONF at all); the TCTI, module
// and PIN then come from hwid's environment variables. A USR2 reload re-reads the key.
TEST_P(HaproxyTest, SslProviderDirectiveWithoutOpensslCnf) {
  HWID_REQUIRE_TOOL("haproxy");
  const ServerCase& c = GetParam();
  const std::string env = absl::StrCat(
      "-u OPENSSL_CONF -u OPENSSL_MODULES HWID_TCTI=", testing::GlobalSwtpm().tcti(),
      c.store == Store::kToken
          ? absl::StrCat(" HWID_PKCS11_MODULE=", SoftHsm::kModule, " HWID_PKCS11_PIN=", kPin)
          : "");
  ASSERT_NO_FATAL_FAILURE(Up(false,
                             absl::StrCat("  ssl-provider-path ", HWID_PROVIDER_DIR,
                                          "\n  ssl-provider default\n  ssl-provider hwid\n"),
                             env));
  Load();
  Reload();
  Load();
  Down();
  // The control: without the directives (and without openssl.cnf) HAProxy cannot read the key.
  Write("haproxy.cfg", HaproxyConf(port_, false));
  auto [rc, out] = Run(absl::StrCat("env ", env, " haproxy -c -f haproxy.cfg"), 60);
  EXPECT_NE(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("No Private Key found"));
}

INSTANTIATE_TEST_SUITE_P(
    Servers, HaproxyTest,
    ::testing::Values(ServerCase{"TpmEc", Store::kTpm, false, 1},
                      ServerCase{"TpmRsa", Store::kTpm, true, 1},
                      ServerCase{"TokenEc", Store::kToken, false, 1},
                      ServerCase{"TokenRsa", Store::kToken, true, 1}),
    [](const auto& tp) { return std::string(tp.param.name); });

}  // namespace
}  // namespace hwid
