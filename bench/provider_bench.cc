// provider_bench: the hwid OpenSSL provider on one TPM, in one run, for ECDSA P-256 and RSA-2048:
//   - signatures/s through hwid (EVP_DigestSign: software SHA-256 + one TPM2_Sign), through
//     Debian's tpm2-openssl provider (EVP_DigestSign on its key object), and with raw ESAPI
//     Esys_Sign on a loaded key (the limit);
//   - TLS 1.3 handshakes/s with the server key in the TPM (hwid) vs a software key, in-process
//     (server and client SSL objects over a BIO pair, the client in a default-provider-only
//     library context), and the TPM commands per handshake (hwid's "hwid-tpm-commands");
//   - with --swtpm-pid, where each operation's wall time went: CPU of this process and of swtpm
//     per operation (and how long swtpm waited runnable for a CPU).
// Rounds alternate the contenders and the median is printed with ratios. No assertions: see
// docs/benchmarks.md for targets and recorded results.
//
// usage: provider_bench [--tcti T] [--seconds S] [--rounds R] [--threads N] [--module-dir D]
//                       [--hwid-first] [--swtpm-pid PID] [--only PART]
//                       [--tls-keys tpm|software|both]
// PART selects what runs: ecdsa-sign, rsa-sign, ecdsa-tls, rsa-tls, or a substring ("tls");
// --tls-keys times only one of the two TLS servers (for profiling one side with perf).
// Run it through bench/run-provider-bench, which starts a private swtpm.
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/cpu_account.h"
#include "bench/raw_esys_signer.h"
#include "bench/tls_loop.h"
#include "common/bytes.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "provider_bench: %s\n", what.c_str());
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

// Sample: one timed loop, its rate and per-operation CPU split.
struct Sample {
  double rate = 0;
  hwid::bench::CpuUsage cpu;
};

Sample Measure(const hwid::bench::CpuAccount& acct, double seconds,
               const std::function<void()>& op) {
  int n = 0;
  const hwid::bench::CpuSnapshot a = acct.Take();
  const auto deadline = a.wall + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline || n < 5) {
    op();
    ++n;
  }
  const hwid::bench::CpuSnapshot b = acct.Take();
  Sample s;
  s.cpu = hwid::bench::CpuAccount::PerOp(a, b, n);
  s.rate = 1e6 / s.cpu.wall_us;
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Medians of each field over the rounds.
Sample Median(const std::vector<Sample>& v) {
  auto m = [&](auto field) {
    std::vector<double> x;
    for (const Sample& s : v) {
      x.push_back(field(s));
    }
    return Median(x);
  };
  Sample r;
  r.rate = m([](const Sample& s) { return s.rate; });
  r.cpu.wall_us = m([](const Sample& s) { return s.cpu.wall_us; });
  r.cpu.self_us = m([](const Sample& s) { return s.cpu.self_us; });
  r.cpu.self_sys_us = m([](const Sample& s) { return s.cpu.self_sys_us; });
  r.cpu.other_us = m([](const Sample& s) { return s.cpu.other_us; });
  r.cpu.other_run_us = m([](const Sample& s) { return s.cpu.other_run_us; });
  r.cpu.other_wait_us = m([](const Sample& s) { return s.cpu.other_wait_us; });
  return r;
}

// PrintCpu prints where one operation's wall time went (only with --swtpm-pid).
void PrintCpu(const hwid::bench::CpuAccount& acct, const char* what, const Sample& s) {
  if (acct.other_pid() <= 0) {
    return;
  }
  std::printf("    %-27s per op: wall %7.1f us | bench process CPU %7.1f us (kernel %6.1f) | "
              "swtpm CPU %7.1f us (ran %7.1f, waited for a CPU %6.1f)\n",
              what, s.cpu.wall_us, s.cpu.self_us, s.cpu.self_sys_us, s.cpu.other_us,
              s.cpu.other_run_us, s.cpu.other_wait_us);
}

// A library context with the given providers (in that order).
struct Ctx {
  OSSL_LIB_CTX* ctx = nullptr;
  std::vector<OSSL_PROVIDER*> provs;
  Ctx(const std::string& module_dir, std::initializer_list<const char*> names) {
    ctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER_set_default_search_path(ctx, module_dir.c_str());
    for (const char* n : names) {
      OSSL_PROVIDER* p = OSSL_PROVIDER_load(ctx, n);
      if (p == nullptr) {
        // tpm2.so lives in the system directory.
        OSSL_PROVIDER_set_default_search_path(ctx, nullptr);
        p = OSSL_PROVIDER_load(ctx, n);
        OSSL_PROVIDER_set_default_search_path(ctx, module_dir.c_str());
      }
      if (p == nullptr) {
        Die(absl::StrCat("cannot load provider ", n));
      }
      provs.push_back(p);
    }
  }
  ~Ctx() {
    for (auto it = provs.rbegin(); it != provs.rend(); ++it) {
      OSSL_PROVIDER_unload(*it);
    }
    OSSL_LIB_CTX_free(ctx);
  }
  uint64_t HwidParam(const char* name) {
    uint64_t v = 0;
    OSSL_PARAM p[] = {OSSL_PARAM_uint64(name, &v), OSSL_PARAM_END};
    for (OSSL_PROVIDER* pr : provs) {
      if (std::string(OSSL_PROVIDER_get0_name(pr)) == "hwid") {
        OSSL_PROVIDER_get_params(pr, p);
      }
    }
    return v;
  }
};

EVP_PKEY* ReadKey(OSSL_LIB_CTX* ctx, const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* k = PEM_read_bio_PrivateKey_ex(b, nullptr, nullptr, nullptr, ctx, nullptr);
  BIO_free(b);
  return k;
}

// SignOnce: EVP_DigestSign of `msg` with SHA-256 (RSA: PKCS#1 v1.5).
void SignOnce(OSSL_LIB_CTX* ctx, EVP_PKEY* k, const std::string& msg) {
  EVP_MD_CTX* m = EVP_MD_CTX_new();
  unsigned char sig[1024];
  size_t len = sizeof(sig);
  if (EVP_DigestSignInit_ex(m, nullptr, "SHA256", ctx, nullptr, k, nullptr) != 1 ||
      EVP_DigestSign(m, sig, &len, reinterpret_cast<const unsigned char*>(msg.data()),
                     msg.size()) != 1) {
    Die("EVP_DigestSign failed");
  }
  EVP_MD_CTX_free(m);
}

struct Opts {
  std::string tcti;
  std::string module_dir = HWID_PROVIDER_DIR;
  double seconds = 2;
  int rounds = 3;
  int threads = 4;
  bool hwid_first = false;
  long swtpm_pid = 0;
  std::string only;  // "sign", "tls", "ecdsa-tls", ... : run only the parts whose name contains it
  std::string tls_keys = "both";  // "tpm" or "software": time only that server key (profiling)
};

bool Wanted(const Opts& o, const std::string& part) {
  return o.only.empty() || part.find(o.only) != std::string::npos;
}

// GenerateKeyFile makes a TPM key through hwid and returns its TSS2 PEM.
std::string GenerateKeyFile(const Opts& o, bool ecc) {
  Ctx c(o.module_dir, {"hwid", "default"});
  EVP_PKEY* k = ecc ? EVP_PKEY_Q_keygen(c.ctx, "provider=hwid", "EC", "P-256")
                    : EVP_PKEY_Q_keygen(c.ctx, "provider=hwid", "RSA", static_cast<size_t>(2048));
  if (k == nullptr) {
    Die("key generation through hwid");
  }
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(b, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(b);
  EVP_PKEY_free(k);
  return pem;
}

void BenchSign(const Opts& o, bool ecc) {
  const std::string pem = GenerateKeyFile(o, ecc);
  auto kf = hwid::wire::ParseTpmKeyFile(hwid::AsSpan(pem));
  if (!kf.ok()) {
    Die("parsing our key file");
  }
  const std::string msg = "the quick brown fox signs over the lazy TPM";
  TPM2B_DIGEST d = {};
  d.size = 32;
  std::memset(d.buffer, 0x42, 32);
  const hwid::bench::CpuAccount acct(o.swtpm_pid);
  std::vector<Sample> hwid, tpm2, raw;
  std::string tpm2_note;
  for (int r = 0; r < o.rounds; ++r) {
    {
      hwid::bench::RawEsysSigner s(o.tcti, *kf, ecc ? TPM2_ALG_ECDSA : TPM2_ALG_RSASSA);
      raw.push_back(Measure(acct, o.seconds, [&] { s.Sign(d); }));
    }
    {
      Ctx c(o.module_dir, {"default", "hwid"});
      EVP_PKEY* k = ReadKey(c.ctx, pem);
      if (k == nullptr) {
        Die("hwid cannot read its own key file");
      }
      SignOnce(c.ctx, k, msg);  // warm: first use
      hwid.push_back(Measure(acct, o.seconds, [&] { SignOnce(c.ctx, k, msg); }));
      EVP_PKEY_free(k);
    }
    {
      setenv("TPM2OPENSSL_TCTI", o.tcti.c_str(), 1);
      Ctx c(o.module_dir, {"tpm2", "base"});
      EVP_PKEY* k = ReadKey(c.ctx, pem);
      if (k == nullptr) {
        tpm2_note = "tpm2-openssl could not load the key";
        ERR_clear_error();
      } else {
        tpm2.push_back(Measure(acct, o.seconds, [&] { SignOnce(c.ctx, k, msg); }));
        EVP_PKEY_free(k);
      }
    }
  }
  const Sample hs = Median(hwid), ts = Median(tpm2), ls = Median(raw);
  const double h = hs.rate, t = ts.rate, l = ls.rate;
  std::printf("%-14s | hwid %8.1f sig/s | tpm2-openssl %8.1f sig/s | raw Esys_Sign %8.1f sig/s | "
              "hwid/raw %.3f | hwid/tpm2-openssl %.2fx %s\n",
              ecc ? "ECDSA P-256" : "RSA-2048", h, t, l, l > 0 ? h / l : 0, t > 0 ? h / t : 0,
              tpm2_note.c_str());
  PrintCpu(acct, "hwid EVP_DigestSign", hs);
  PrintCpu(acct, "tpm2-openssl EVP_DigestSign", ts);
  PrintCpu(acct, "raw Esys_Sign", ls);
}

// --- TLS 1.3 handshakes ---

// SelfSigned dies when the certificate cannot be made (bench/tls_loop.h returns null).
X509* SelfSigned(OSSL_LIB_CTX* ctx, EVP_PKEY* key) {
  X509* x = hwid::bench::SelfSigned(ctx, key);
  if (x == nullptr) {
    Die("X509_sign");
  }
  return x;
}

using hwid::bench::Handshake;

void BenchTls(const Opts& o, bool ecc) {
  const std::string pem = GenerateKeyFile(o, ecc);
  // Default first is the documented order (docs/provider.md); --hwid-first measures the cost of
  // OpenSSL 3.0 trying default's signature (and our refused export) before hwid's on every init.
  Ctx c = o.hwid_first ? Ctx(o.module_dir, {"hwid", "default"})
                       : Ctx(o.module_dir, {"default", "hwid"});
  EVP_PKEY* tpm_key = ReadKey(c.ctx, pem);
  EVP_PKEY* sw_key = ecc ? EVP_PKEY_Q_keygen(c.ctx, "provider=default", "EC", "P-256")
                         : EVP_PKEY_Q_keygen(c.ctx, "provider=default", "RSA",
                                             static_cast<size_t>(2048));
  if (tpm_key == nullptr || sw_key == nullptr) {
    Die("TLS keys");
  }
  X509* tpm_cert = SelfSigned(c.ctx, tpm_key);
  X509* sw_cert = SelfSigned(c.ctx, sw_key);
  auto server = [&](EVP_PKEY* k, X509* x) {
    SSL_CTX* s = SSL_CTX_new_ex(c.ctx, nullptr, TLS_server_method());
    SSL_CTX_set_min_proto_version(s, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
    if (SSL_CTX_use_certificate(s, x) != 1 || SSL_CTX_use_PrivateKey(s, k) != 1) {
      Die("server key");
    }
    return s;
  };
  SSL_CTX* tpm_srv = server(tpm_key, tpm_cert);
  SSL_CTX* sw_srv = server(sw_key, sw_cert);
  SSL_CTX* cli = SSL_CTX_new_ex(nullptr, nullptr, TLS_client_method());  // default provider
  SSL_CTX_set_min_proto_version(cli, TLS1_3_VERSION);
  SSL_CTX_set_session_cache_mode(cli, SSL_SESS_CACHE_OFF);
  std::atomic<uint64_t> hs{0};
  const uint64_t cmd0 = c.HwidParam("hwid-tpm-commands");
  if (!Handshake(tpm_srv, cli)) {
    Die("TLS 1.3 handshake with the TPM key");
  }
  ++hs;
  // Throughput of `threads` threads doing handshakes for o.seconds.
  const hwid::bench::CpuAccount acct(o.swtpm_pid);
  auto rate = [&](SSL_CTX* srv, int threads, bool count) {
    std::atomic<uint64_t> n{0};
    const hwid::bench::CpuSnapshot a = acct.Take();
    const auto deadline = a.wall + std::chrono::duration<double>(o.seconds);
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i) {
      ts.emplace_back([&] {
        while (Clock::now() < deadline) {
          if (!Handshake(srv, cli)) {
            Die("handshake");
          }
          ++n;
          if (count) {
            ++hs;
          }
        }
      });
    }
    for (auto& t : ts) {
      t.join();
    }
    Sample s;
    s.cpu = hwid::bench::CpuAccount::PerOp(a, acct.Take(), static_cast<double>(n.load()));
    s.rate = 1e6 / s.cpu.wall_us;
    return s;
  };
  for (int threads : {1, o.threads}) {
    std::vector<Sample> tpm, sw;
    for (int r = 0; r < o.rounds; ++r) {
      if (o.tls_keys != "tpm") {
        sw.push_back(rate(sw_srv, threads, false));
      }
      if (o.tls_keys != "software") {
        tpm.push_back(rate(tpm_srv, threads, true));
      }
    }
    const Sample ts = Median(tpm), ss = Median(sw);
    const double t = ts.rate, s = ss.rate;
    std::printf("%-14s | %d thread(s) | TLS 1.3 TPM key %7.1f hs/s | software key %7.1f hs/s | "
                "ratio %.3f\n",
                ecc ? "ECDSA P-256" : "RSA-2048 (PSS)", threads, t, s, s > 0 ? t / s : 0);
    PrintCpu(acct, "handshake, TPM key", ts);
    PrintCpu(acct, "handshake, software key", ss);
  }
  const uint64_t cmds = c.HwidParam("hwid-tpm-commands") - cmd0;
  std::printf("%-14s | TPM commands per handshake %.3f (%llu commands in %llu handshakes)\n",
              ecc ? "ECDSA P-256" : "RSA-2048 (PSS)",
              static_cast<double>(cmds) / static_cast<double>(hs.load()),
              static_cast<unsigned long long>(cmds), static_cast<unsigned long long>(hs.load()));
  SSL_CTX_free(tpm_srv);
  SSL_CTX_free(sw_srv);
  SSL_CTX_free(cli);
  X509_free(tpm_cert);
  X509_free(sw_cert);
  EVP_PKEY_free(tpm_key);
  EVP_PKEY_free(sw_key);
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  if (const char* t = std::getenv("HWID_TCTI")) {
    o.tcti = t;
  }
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--hwid-first") {
      o.hwid_first = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      Die("missing value for " + a);
    }
    if (a == "--tcti") {
      o.tcti = argv[i + 1];
    } else if (a == "--seconds") {
      o.seconds = std::atof(argv[i + 1]);
    } else if (a == "--rounds") {
      o.rounds = std::atoi(argv[i + 1]);
    } else if (a == "--threads") {
      o.threads = std::atoi(argv[i + 1]);
    } else if (a == "--module-dir") {
      o.module_dir = argv[i + 1];
    } else if (a == "--tls-keys") {
      o.tls_keys = argv[i + 1];
    } else if (a == "--only") {
      o.only = argv[i + 1];
    } else if (a == "--swtpm-pid") {
      o.swtpm_pid = std::atol(argv[i + 1]);
    } else {
      Die("usage: provider_bench [--tcti T] [--seconds S] [--rounds R] [--threads N] [--module-dir D] [--hwid-first] [--swtpm-pid PID] [--only PART] [--tls-keys tpm|software|both]");
    }
  }
  if (o.tcti.empty()) {
    Die("no TCTI: pass --tcti or set HWID_TCTI (bench/run-provider-bench starts a swtpm)");
  }
  setenv("HWID_TCTI", o.tcti.c_str(), 1);
  std::printf("provider_bench: tcti %s, %d rounds x %.1f s, medians\n", o.tcti.c_str(), o.rounds,
              o.seconds);
  std::printf("-- signatures (EVP_DigestSign SHA-256 of a short message; raw = Esys_Sign of a "
              "fixed digest) --\n");
  if (Wanted(o, "ecdsa-sign")) {
    BenchSign(o, true);
  }
  if (Wanted(o, "rsa-sign")) {
    BenchSign(o, false);
  }
  std::printf("-- TLS 1.3 handshakes in one process (server key in the TPM vs in software; each "
              "thread runs server and client, the client with the default provider only) --\n");
  if (Wanted(o, "ecdsa-tls")) {
    BenchTls(o, true);
  }
  if (Wanted(o, "rsa-tls")) {
    BenchTls(o, false);
  }
  return 0;
}
