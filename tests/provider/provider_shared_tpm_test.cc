// Many processes on one TPM without a resource manager (the binary's raw swtpm: 3 object slots
// for everyone): unmodified openssl processes load TPM keys through hwid.so at the same time, are
// killed with SIGKILL while holding keys, and find the TPM's slots taken by another connection.
// Each case starts and stops its own processes; every signature is checked in software.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "tests/provider/cli_support.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"

namespace hwid {
namespace {

using ::hwid::testing::Background;
using ::hwid::testing::FreePort;
using ::hwid::testing::GlobalSwtpm;
using ::hwid::testing::TransientCount;
using ::testing::HasSubstr;

constexpr char kP[] = "-provider default -provider hwid";

// BusyFile is where hwid.so processes on this TPM signal "no free object slot" to each other
// (docs/provider.md, "Many processes on a TPM without a resource manager").
std::string TctiFile(const char* prefix) {
  const std::string& tcti = GlobalSwtpm().tcti();
  return absl::StrCat(prefix, Sha256Hex(ByteSpan(reinterpret_cast<const uint8_t*>(tcti.data()),
                                                 tcti.size()))
                                  .substr(0, 16));
}
std::string BusyFile() { return TctiFile("/tmp/hwid-tpm-busy-"); }
// LockFile is the flock(2) file that lets one process at a time run a TPM command sequence.
std::string LockFile() { return TctiFile("/tmp/hwid-tpm-lock-"); }

// WaitUntil polls `pred` (bounded: 20 s); true when it held.
template <typename Pred>
bool WaitUntil(Pred pred) {
  for (int i = 0; i < 400; ++i) {
    if (pred()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

class SharedTpmTest : public testing::ProviderCliTest {
 protected:
  SharedTpmTest() : ProviderCliTest("hwid-shared") {}

  void SetUp() override {
    ProviderCliTest::SetUp();
    if (HasFatalFailure()) {
      return;
    }
    unlink(BusyFile().c_str());  // no signal left over from an earlier case
    // One TPM key and a self-signed certificate for it; pub.pem checks signatures in software.
    MustRun(absl::StrCat("openssl genpkey -provider hwid -provider default -algorithm EC "
                         "-pkeyopt group:P-256 -out key.pem"), 120);
    MustRun(absl::StrCat("openssl pkey ", kP, " -in key.pem -pubout -out pub.pem"));
    MustRun(absl::StrCat("openssl req ", kP, " -new -x509 -key key.pem -subj /CN=shared "
                         "-addext subjectAltName=IP:127.0.0.1 -days 1 -out cert.pem"));
    MustRun("printf 0123456789abcdef0123456789abcdef > dgst");
  }

  // SignCmd signs dgst with key.pem through hwid.so and checks the signature in software.
  std::string SignCmd() {
    return absl::StrCat("openssl pkeyutl ", kP, " -sign -inkey key.pem -in dgst -out sig "
                        "&& openssl pkeyutl -verify -pubin -inkey pub.pem -in dgst -sigfile sig");
  }

  // Server starts `openssl s_server` with key.pem on a free port (the key is loaded into the TPM
  // when s_server reads it) and waits until it listens.
  std::unique_ptr<Background> Server(int* port, const std::string& env = "") {
    *port = FreePort();
    auto s = std::make_unique<Background>(
        absl::StrCat(env, " openssl s_server ", kP, " -accept 127.0.0.1:", *port, " -cert ", dir_,
                     "/cert.pem -key ", dir_, "/key.pem -naccept 1000 -www"),
        absl::StrCat(dir_, "/server-", *port, ".log"));
    EXPECT_TRUE(s->WaitForLog("ACCEPT")) << s->Log();
    return s;
  }

  // ClientCmd makes `n` TLS 1.3 handshakes with the server on `port` (default provider only),
  // each verified against cert.pem; exits non-zero at the first failure.
  std::string ClientCmd(int port, int n) {
    return absl::StrCat("for i in $(seq ", n, "); do echo | openssl s_client -connect 127.0.0.1:",
                        port, " -tls1_3 -CAfile cert.pem -verify_return_error -verify_ip "
                        "127.0.0.1 -brief >/dev/null 2>client-", port,
                        ".err || { cat client-", port, ".err; exit 1; }; done");
  }
};

// Four servers and four clients at once on three object slots: every handshake succeeds (keys
// that find the slots taken wait, tell the others, and all sign per use until the TPM is free).
TEST_F(SharedTpmTest, FourServersWithClientsAtOnceZeroFailures) {
  std::vector<std::unique_ptr<Background>> servers;
  std::vector<int> ports(4);
  for (int& port : ports) {
    servers.push_back(Server(&port));
  }
  std::string clients = "pids=; ";
  for (int port : ports) {
    clients += absl::StrCat("( ", ClientCmd(port, 15), " ) & pids=\"$pids $!\"; ");
  }
  // Wait for every client loop; the shell fails when any of them did.
  auto [rc, out] = Run(absl::StrCat(clients, "fail=0; for p in $pids; do wait $p || fail=1; "
                                    "done; exit $fail"), 300);
  EXPECT_EQ(rc, 0) << out;
  for (auto& s : servers) {
    s->Stop(SIGTERM);
    EXPECT_THAT(s->Log(), ::testing::Not(HasSubstr("0x902"))) << s->Log();
  }
}

// Idle keys give their slot back (HWID_TPM_IDLE_RELEASE_MS, default 50 ms), so processes killed
// with SIGKILL while they hold keys leave nothing behind and the next process signs.
TEST_F(SharedTpmTest, KilledIdleProcessesLeakNoSlot) {
  std::vector<std::unique_ptr<Background>> servers;
  std::vector<int> ports(4);
  for (int& port : ports) {
    servers.push_back(Server(&port));
    MustRun(ClientCmd(port, 1));
  }
  EXPECT_TRUE(WaitUntil([] { return TransientCount() == 0; }))
      << TransientCount() << " transient objects still loaded by idle servers";
  for (auto& s : servers) {
    s->Stop(SIGKILL);
  }
  EXPECT_EQ(TransientCount(), 0u);
  MustRun(SignCmd());
}

// Processes killed while they keep keys loaded (idle release switched off) leak their slots: the
// next signature waits, then fails naming the cause and the way out, `hwid tpm flush-transient`;
// after it the next process signs. (Loading a key file needs two slots at once, its parent and
// the key: with two leaked of three, no key file loads.)
TEST_F(SharedTpmTest, KilledHoldersLeakSlotsFlushTransientRecovers) {
  const char* cli = std::getenv("HWID_CLI");
  ASSERT_NE(cli, nullptr) << "HWID_CLI must name the hwid binary";
  std::vector<std::unique_ptr<Background>> servers;
  std::vector<int> ports(2);
  for (int& port : ports) {
    servers.push_back(Server(&port, "env HWID_TPM_IDLE_RELEASE_MS=3600000"));
  }
  ASSERT_EQ(TransientCount(), 2u) << "each server keeps its key loaded";
  for (auto& s : servers) {
    s->Stop(SIGKILL);
  }
  ASSERT_EQ(TransientCount(), 2u) << "killed processes leak what they held";
  const std::string out = MustFail(SignCmd());
  EXPECT_THAT(out, HasSubstr("0x902"));
  EXPECT_THAT(out, HasSubstr("hwid tpm flush-transient"));
  EXPECT_THAT(out, HasSubstr("key.pem"));
  // s_server reads its -key the same way (the file: STORE): it names the cause too.
  const std::string srv = MustFail(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:",
                                                FreePort(), " -cert cert.pem -key key.pem "
                                                "-naccept 1"));
  EXPECT_THAT(srv, HasSubstr("0x902"));
  EXPECT_THAT(srv, HasSubstr("hwid tpm flush-transient"));
  auto [rc, flushed] = Run(absl::StrCat(cli, " tpm flush-transient"));
  EXPECT_EQ(rc, 0) << flushed;
  EXPECT_THAT(flushed, HasSubstr("Flushed 2 transient object(s)"));
  EXPECT_EQ(TransientCount(), 0u);
  MustRun(SignCmd());
}

// Another connection (another process, to the TPM) holds every slot: the signing process holds
// none of its own, so it signals the others through the busy file and waits; as soon as slots
// are free (two: the key's parent and the key) it signs.
TEST_F(SharedTpmTest, SignatureWaitsForASlotAndSignalsTheOthers) {
  auto other = tpm::Tpm::Open(GlobalSwtpm().tcti());
  ASSERT_TRUE(other.ok()) << other.status();
  std::vector<tpm::LoadedKey> held;
  for (int i = 0; i < 3; ++i) {
    auto k = (*other)->LoadSrk(/*allow_persistent=*/false);
    ASSERT_TRUE(k.ok()) << k.status();
    held.push_back(std::move(*k));
  }
  ASSERT_EQ(TransientCount(), 3u);
  Background signer(absl::StrCat("sh -c \"cd ", dir_, " && ", SignCmd(), "\""),
                    dir_ + "/signer.log");
  struct stat st;
  ASSERT_TRUE(WaitUntil([&] { return stat(BusyFile().c_str(), &st) == 0; }))
      << "the waiting process did not signal: " << signer.Log();
  held.pop_back();
  held.pop_back();
  EXPECT_EQ(signer.Wait(60), 0) << signer.Log();
  held.clear();
}

// The sequence lock serialises the processes on a TPM without a resource manager: while another
// process holds it, a signature waits for it (HWID_PROVIDER_DEBUG says so); when that holder is
// killed with SIGKILL, the kernel drops its lock and the signature goes through holding it (not
// after the 5 s bound on the wait, which would go on unserialised and say so).
TEST_F(SharedTpmTest, SignerWaitsForTheSequenceLockAndAKilledHolderDoesNotBlockIt) {
  // SetUp's key generation and signatures made the lock file: mode 0666 whatever the umask, so
  // that workers running as another user share it.
  const std::string path = LockFile();
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0) << "hwid made no sequence lock file " << path;
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0666u);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t holder = fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    // Only async-signal-safe calls in the child of a (possibly) threaded process.
    const int fd = open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || flock(fd, LOCK_EX) != 0 || write(ready[1], "1", 1) != 1) {
      _exit(1);
    }
    while (true) {
      pause();
    }
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1) << "the lock holder did not take the lock";
  close(ready[0]);

  // hwid listed before default: the lock file's name (a SHA-256) must not depend on the order
  // (it once did: SHA256() found no provider for it and the name was uninitialised memory).
  Background signer(
      absl::StrCat("sh -c \"cd ", dir_, " && HWID_PROVIDER_DEBUG=1 openssl pkeyutl -provider hwid "
                   "-provider default -sign -inkey key.pem -in dgst -out sig && openssl pkeyutl "
                   "-verify -pubin -inkey pub.pem -in dgst -sigfile sig\""),
      dir_ + "/signer.log");
  EXPECT_TRUE(signer.WaitForLog("waiting for the TPM sequence lock"))
      << "the signer did not wait for the sequence lock: " << signer.Log();
  ASSERT_EQ(kill(holder, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(holder, &status, 0), holder);
  EXPECT_EQ(signer.Wait(60), 0) << signer.Log();
  EXPECT_THAT(signer.Log(), ::testing::Not(HasSubstr("going on unserialised")));
}

// A lock file that cannot be opened (here a symlink planted at its name: refused, O_NOFOLLOW)
// does not break signing: the process signs unserialised and says so with HWID_PROVIDER_DEBUG.
TEST_F(SharedTpmTest, UnopenableSequenceLockFallsBackAndSaysSo) {
  const std::string path = LockFile();
  const std::string target = dir_ + "/planted-target";
  const int t = open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(t, 0);
  close(t);
  unlink(path.c_str());
  ASSERT_EQ(symlink(target.c_str(), path.c_str()), 0);
  auto [rc, out] = Run(absl::StrCat("HWID_PROVIDER_DEBUG=1 ", SignCmd()));
  unlink(path.c_str());
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("cannot open the TPM sequence lock"));
  struct stat st;
  ASSERT_EQ(stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the symlink was followed";
}

// A TSS2 PRIVATE KEY file that names a persistent key (`hwid key file --persistent`) works
// wherever a key file path is taken: openssl pkeyutl, s_server; it holds no slot. When the handle
// is reused for another key, the file is refused with the cause (through the file: STORE).
TEST_F(SharedTpmTest, KeyFileNamingAPersistentKey) {
  const char* cli = std::getenv("HWID_CLI");
  ASSERT_NE(cli, nullptr) << "HWID_CLI must name the hwid binary";
  constexpr char kHandle[] = "0x81000311";
  Run(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null 2>&1"));  // leftovers
  MustRun(absl::StrCat(cli, " key create --alg ec-p256 --out blob.pem --persist ", kHandle));
  MustRun(absl::StrCat(cli, " key file --persistent ", kHandle, " --out p.pem"));
  MustRun(absl::StrCat("openssl pkey ", kP, " -in p.pem -pubout -out p.pub"));
  MustRun(absl::StrCat("openssl pkey ", kP, " -in blob.pem -pubout -out blob.pub && cmp p.pub blob.pub"));
  MustRun(absl::StrCat("openssl pkeyutl ", kP, " -sign -inkey p.pem -in dgst -out psig && "
                       "openssl pkeyutl -verify -pubin -inkey p.pub -in dgst -sigfile psig"));
  EXPECT_EQ(TransientCount(), 0u);
  // s_server with the file as its key, a verified TLS 1.3 handshake.
  MustRun(absl::StrCat("openssl req ", kP, " -new -x509 -key p.pem -subj /CN=persistent "
                       "-addext subjectAltName=IP:127.0.0.1 -days 1 -out pcert.pem"));
  const int port = FreePort();
  Background server(absl::StrCat("openssl s_server ", kP, " -accept 127.0.0.1:", port, " -cert ",
                                 dir_, "/pcert.pem -key ", dir_, "/p.pem -naccept 1 -www"),
                    dir_ + "/pserver.log");
  ASSERT_TRUE(server.WaitForLog("ACCEPT")) << server.Log();
  MustRun(absl::StrCat("echo | openssl s_client -connect 127.0.0.1:", port, " -tls1_3 -CAfile "
                       "pcert.pem -verify_return_error -verify_ip 127.0.0.1 -brief"));
  EXPECT_EQ(server.Wait(), 0) << server.Log();

  // The handle now holds another key: the file is refused, and the error says why.
  MustRun(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null"));
  MustRun(absl::StrCat(cli, " key create --alg ec-p256 --out other.pem --persist ", kHandle));
  const std::string out = MustFail(absl::StrCat("openssl pkeyutl ", kP,
                                                " -sign -inkey p.pem -in dgst -out psig2"));
  EXPECT_THAT(out, HasSubstr("holds another key than the key file names"));
  EXPECT_THAT(out, HasSubstr(kHandle));
  MustRun(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null"));
}

// A key whose authorization value is guessed wrong until the TPM locks out (dictionary-attack
// protection, here 2 tries and 30 s per forgiven failure): the first failures say "wrong
// authorization value", then the error says lockout, the counter, and when to retry.
TEST_F(SharedTpmTest, DictionaryAttackLockoutSaysWhenToRetry) {
  constexpr char kHandle[] = "0x81000321";
  Run(absl::StrCat("tpm2_evictcontrol -c ", kHandle, " >/dev/null 2>&1"));  // leftovers
  // A DA-protected signing key (no noDA attribute) with the auth value "right", persisted.
  MustRun(absl::StrCat(
      "tpm2_createprimary -Q -C o -G ecc -c prim.ctx && tpm2_flushcontext -t && "
      "tpm2_create -Q -C prim.ctx -G ecc -p right -u da.pub -r da.priv "
      "-a \"fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign\" && "
      "tpm2_flushcontext -t && tpm2_load -Q -C prim.ctx -u da.pub -r da.priv -c da.ctx && "
      "tpm2_flushcontext -t && tpm2_evictcontrol -Q -c da.ctx ", kHandle,
      " && tpm2_flushcontext -t"));
  MustRun("tpm2_dictionarylockout -Q -c && tpm2_dictionarylockout -Q -s -n 2 -t 30 -l 30");
  const std::string sign = absl::StrCat("openssl pkeyutl ", kP, " -sign -inkey \"handle:",
                                        kHandle, "?pass\" -in dgst -out dasig -passin pass:");
  MustRun(sign + "right");
  for (int i = 0; i < 2; ++i) {
    const std::string out = MustFail(sign + "wrong");
    EXPECT_THAT(out, HasSubstr("wrong authorization value")) << i;
  }
  const std::string out = MustFail(sign + "right");
  EXPECT_THAT(out, HasSubstr("dictionary-attack lockout"));
  EXPECT_THAT(out, HasSubstr("2 failed authorizations of 2 allowed"));
  EXPECT_THAT(out, HasSubstr("again in about 30 s"));
  EXPECT_THAT(out, HasSubstr(kHandle));
  MustRun("tpm2_dictionarylockout -Q -c && tpm2_dictionarylockout -Q -s -n 1000 -t 1 -l 1");
  MustRun(sign + "right");
  MustRun(absl::StrCat("tpm2_evictcontrol -Q -c ", kHandle));
}

// A process whose uid may not open the TPM device (here a root-only stand-in for /dev/tpm0, used
// by user nobody, as an nginx worker would): the error names the uid, the device, its owner,
// group and mode, and what to change.
TEST_F(SharedTpmTest, UidThatCannotOpenTheTpmDeviceIsNamed) {
  HWID_REQUIRE_TOOL("runuser");
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a command as user nobody";
  }
  MustRun("touch tpm0 && chmod 600 tpm0 && chmod 755 . && chmod 644 key.pem dgst");
  const std::string out = MustFail(absl::StrCat(
      "runuser -u nobody -- env HWID_TCTI=device:", dir_, "/tpm0 openssl pkeyutl ", kP,
      " -sign -inkey key.pem -in dgst -out /dev/null"));
  EXPECT_THAT(out, HasSubstr("uid 65534 (nobody) may not read and write"));
  EXPECT_THAT(out, HasSubstr(absl::StrCat(dir_, "/tpm0 (owner root, group root, mode 0600)")));
  EXPECT_THAT(out, HasSubstr("usermod -aG root"));
  // The same device readable and writable: access is not the problem, so no such hint.
  MustRun("chmod 666 tpm0");
  const std::string out2 = MustFail(absl::StrCat(
      "runuser -u nobody -- env HWID_TCTI=device:", dir_, "/tpm0 openssl pkeyutl ", kP,
      " -sign -inkey key.pem -in dgst -out /dev/null"));
  EXPECT_THAT(out2, ::testing::Not(HasSubstr("may not read and write")));
}

}  // namespace
}  // namespace hwid
