// shared_tpm_bench: N processes signing at once through the hwid provider on one TPM without a
// resource manager (raw swtpm: 3 object slots for all of them). For each process count it
// prints the total signatures/s, the TPM commands per signature (hwid's "hwid-tpm-commands",
// summed over the processes; key loading excluded) and the failed signatures. With one or two
// processes keys stay loaded (1 command per signature); with more, processes find the slots
// taken, signal each other and sign per use (ContextLoad, Sign, FlushContext).
// No assertions: see docs/benchmarks.md ("Many processes on one TPM").
//
// usage: shared_tpm_bench --key KEY.pem [--module-dir D] [--seconds S] [--procs 1,2,4,8]
// The TPM is $HWID_TCTI. Run it through bench/run-shared-tpm-bench, which starts a private swtpm
// and makes the key.
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "shared_tpm_bench: %s\n", what.c_str());
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

struct Result {
  uint64_t signatures = 0;
  uint64_t failures = 0;
  uint64_t commands = 0;  // TPM commands while signing (after the key was loaded)
};

uint64_t TpmCommands(OSSL_PROVIDER* hwid) {
  uint64_t v = 0;
  OSSL_PARAM p[] = {OSSL_PARAM_uint64("hwid-tpm-commands", &v), OSSL_PARAM_END};
  OSSL_PROVIDER_get_params(hwid, p);
  return v;
}

// Child: loads the key through hwid in its own library context, waits for `start`, signs until
// `end`, writes its Result to `fd`.
void Child(const std::string& module_dir, const std::string& pem, Clock::time_point start,
           Clock::time_point end, int fd) {
  OSSL_LIB_CTX* ctx = OSSL_LIB_CTX_new();
  OSSL_PROVIDER_set_default_search_path(ctx, module_dir.c_str());
  OSSL_PROVIDER* def = OSSL_PROVIDER_load(ctx, "default");
  OSSL_PROVIDER* hwid = OSSL_PROVIDER_load(ctx, "hwid");
  if (def == nullptr || hwid == nullptr) {
    Die("cannot load the default and hwid providers");
  }
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey_ex(b, nullptr, nullptr, nullptr, ctx, nullptr);
  BIO_free(b);
  if (key == nullptr) {
    Die("cannot load the key");
  }
  std::this_thread::sleep_until(start);
  Result r;
  const uint64_t c0 = TpmCommands(hwid);
  const std::string msg = "shared TPM benchmark";
  while (Clock::now() < end) {
    EVP_MD_CTX* m = EVP_MD_CTX_new();
    unsigned char sig[1024];
    size_t len = sizeof(sig);
    if (EVP_DigestSignInit_ex(m, nullptr, "SHA256", ctx, nullptr, key, nullptr) == 1 &&
        EVP_DigestSign(m, sig, &len, reinterpret_cast<const unsigned char*>(msg.data()),
                       msg.size()) == 1) {
      ++r.signatures;
    } else {
      ++r.failures;
      ERR_print_errors_fp(stderr);
    }
    EVP_MD_CTX_free(m);
  }
  r.commands = TpmCommands(hwid) - c0;
  const std::string line = absl::StrCat(r.signatures, " ", r.failures, " ", r.commands, "\n");
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    std::_Exit(3);
  }
  EVP_PKEY_free(key);
  OSSL_PROVIDER_unload(hwid);
  OSSL_PROVIDER_unload(def);
  OSSL_LIB_CTX_free(ctx);
}

Result RunProcs(int procs, double seconds, const std::string& module_dir, const std::string& pem) {
  int fds[2];
  if (pipe(fds) != 0) {
    Die("pipe");
  }
  // Children load their keys during the first second, then all sign in the same window.
  const Clock::time_point start = Clock::now() + std::chrono::seconds(1) +
                                  std::chrono::milliseconds(200 * procs);
  const Clock::time_point end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<pid_t> pids;
  for (int i = 0; i < procs; ++i) {
    const pid_t pid = fork();
    if (pid < 0) {
      Die("fork");
    }
    if (pid == 0) {
      close(fds[0]);
      Child(module_dir, pem, start, end, fds[1]);
      std::exit(0);
    }
    pids.push_back(pid);
  }
  close(fds[1]);
  std::string all;
  char buf[256];
  ssize_t n = 0;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) {
    all.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  Result total;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++total.failures;  // a child that died counts as a failure
    }
  }
  std::istringstream in(all);
  Result r;
  while (in >> r.signatures >> r.failures >> r.commands) {
    total.signatures += r.signatures;
    total.failures += r.failures;
    total.commands += r.commands;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::string key_path;
  std::string module_dir = HWID_PROVIDER_DIR;
  double seconds = 5;
  std::vector<int> procs = {1, 2, 3, 4, 8};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const std::string v = argv[i + 1];
    if (a == "--key") {
      key_path = v;
    } else if (a == "--module-dir") {
      module_dir = v;
    } else if (a == "--seconds") {
      if (!absl::SimpleAtod(v, &seconds) || seconds <= 0) Die("--seconds: a positive number");
    } else if (a == "--procs") {
      procs.clear();
      for (absl::string_view p : absl::StrSplit(v, ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(p, &n) || n < 1) Die("--procs: e.g. 1,2,4,8");
        procs.push_back(n);
      }
    } else {
      Die("usage: shared_tpm_bench --key KEY.pem [--module-dir D] [--seconds S] [--procs 1,2,4,8]");
    }
  }
  if (key_path.empty() || std::getenv("HWID_TCTI") == nullptr) {
    Die("needs --key and HWID_TCTI (bench/run-shared-tpm-bench starts a swtpm)");
  }
  std::ifstream f(key_path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string pem = ss.str();
  std::printf("%-10s %12s %14s %10s\n", "processes", "signatures/s", "TPM cmds/sig", "failures");
  std::fflush(stdout);  // before fork: children must not print it again
  for (int p : procs) {
    const Result r = RunProcs(p, seconds, module_dir, pem);
    std::printf("%-10d %12.1f %14.2f %10llu\n", p, static_cast<double>(r.signatures) / seconds,
                r.signatures > 0 ? static_cast<double>(r.commands) / static_cast<double>(r.signatures)
                                 : 0.0,
                static_cast<unsigned long long>(r.failures));
    std::fflush(stdout);
  }
  return 0;
}
