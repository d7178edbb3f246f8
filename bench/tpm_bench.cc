// tpm_bench: hwid's tpm/ signing throughput against raw ESAPI Esys_Sign (the limit) on the same
// TPM in one run, and the cost of a full attestation round (AK reuse + software MakeCredential +
// ActivateCredential + Quote + software verification). Prints ratios; no assertions.
//
// usage: tpm_bench [--tcti T] [--seconds S] [--rounds R]
// The TCTI defaults to $HWID_TCTI. Run it through bench/run-tpm-bench, which starts a swtpm.
#include <openssl/rand.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/raw_esys_signer.h"
#include "common/bytes.h"
#include "tpm/tpm.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "tpm_bench: %s\n", what.c_str());
  std::exit(1);
}

#define CHECK_OK(expr)                                           \
  do {                                                           \
    auto st_ = (expr);                                           \
    if (!st_.ok()) Die(std::string(#expr) + ": " + std::string(st_.message())); \
  } while (false)


template <typename F>
double OpsPerSecond(double seconds, F&& op) {
  int n = 0;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline || n < 5) {
    op(n);
    ++n;
  }
  return n / std::chrono::duration<double>(Clock::now() - start).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void BenchSign(const std::string& tcti, hwid::wire::KeyAlg alg, double seconds, int rounds) {
  auto tpm = hwid::tpm::Tpm::Open(tcti);
  CHECK_OK(tpm.status());
  auto kf = (*tpm)->CreateKey(alg);
  CHECK_OK(kf.status());
  auto key = (*tpm)->LoadKey(*kf);
  CHECK_OK(key.status());
  const bool ecc = alg == hwid::wire::KeyAlg::kEcP256;
  hwid::bench::RawEsysSigner raw(tcti, *kf, ecc ? TPM2_ALG_ECDSA : TPM2_ALG_RSASSA);
  TPM2B_DIGEST d = {};
  d.size = 32;
  std::memset(d.buffer, 0x42, 32);
  const std::string msg = "the quick brown fox signs over the lazy TPM";
  std::vector<double> ours, limit;
  for (int r = 0; r < rounds; ++r) {
    limit.push_back(OpsPerSecond(seconds, [&](int) { raw.Sign(d); }));
    ours.push_back(OpsPerSecond(seconds, [&](int) {
      auto digest = hwid::wire::Hash(TPM2_ALG_SHA256, hwid::AsSpan(msg));
      auto sig = (*tpm)->Sign(*key, *digest,
                              ecc ? hwid::tpm::SignScheme::kEcdsa : hwid::tpm::SignScheme::kRsaPkcs1,
                              TPM2_ALG_SHA256);
      if (!sig.ok()) Die(std::string(sig.status().message()));
    }));
  }
  const double o = Median(ours), l = Median(limit);
  std::printf("%-10s | hwid tpm::Sign (hash+sign) %8.1f sig/s | raw Esys_Sign %8.1f sig/s | ratio %.3f\n",
              hwid::wire::KeyAlgName(alg), o, l, o / l);
}

void BenchAttestRound(const std::string& tcti, hwid::wire::EkType ek_type, int n) {
  auto tpm = hwid::tpm::Tpm::Open(tcti);
  CHECK_OK(tpm.status());
  const uint32_t ak_handle = 0x810000f0;
  auto ak = (*tpm)->EnsureAk(hwid::wire::KeyAlg::kEcP256, ak_handle);
  CHECK_OK(ak.status());
  auto sel = hwid::wire::ParsePcrSelection("sha256:0,1,2,3,4,5,6,7");
  CHECK_OK(sel.status());
  std::vector<double> ms;
  uint64_t cmds = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t c0 = (*tpm)->command_count();
    const auto t0 = Clock::now();
    auto ek = (*tpm)->LoadEk(ek_type);
    CHECK_OK(ek.status());
    auto name = hwid::wire::ObjectName(ak->pub.publicArea);
    hwid::Bytes secret(32), nonce(32);
    RAND_bytes(secret.data(), 32);
    RAND_bytes(nonce.data(), 32);
    auto cred = hwid::wire::MakeCredential(ek->pub.publicArea, secret, *name);
    CHECK_OK(cred.status());
    auto got = (*tpm)->ActivateCredential(*ak, *ek, cred->id_object, cred->encrypted_secret);
    CHECK_OK(got.status());
    auto q = (*tpm)->QuotePcrs(*ak, nonce, *sel);
    CHECK_OK(q.status());
    CHECK_OK(hwid::wire::VerifyQuote(ak->pub.publicArea, q->attest, q->signature, nonce, q->pcrs).status());
    ek->object.Reset();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    cmds = (*tpm)->command_count() - c0;
  }
  std::printf("attestation round (%s EK, P-256 AK, sha256:0-7): median %.2f ms, %llu TPM commands "
              "(incl. PCR read + quote self-check)\n",
              ek_type == hwid::wire::EkType::kRsa2048 ? "RSA-2048" : "ECC P-256", Median(ms),
              static_cast<unsigned long long>(cmds));
  CHECK_OK((*tpm)->EvictPersistent(ak_handle));
}

}  // namespace

int main(int argc, char** argv) {
  std::string tcti = hwid::tpm::DefaultTcti();
  double seconds = 2.0;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--tcti") tcti = argv[i + 1];
    else if (a == "--seconds") seconds = std::atof(argv[i + 1]);
    else if (a == "--rounds") rounds = std::atoi(argv[i + 1]);
    else Die("usage: tpm_bench [--tcti T] [--seconds S] [--rounds R]");
  }
  std::printf("TCTI %s, %d interleaved rounds of %.1f s each, median reported\n", tcti.c_str(), rounds, seconds);
  BenchSign(tcti, hwid::wire::KeyAlg::kEcP256, seconds, rounds);
  BenchSign(tcti, hwid::wire::KeyAlg::kRsa2048, seconds, rounds);
  BenchAttestRound(tcti, hwid::wire::EkType::kRsa2048, 20);
  BenchAttestRound(tcti, hwid::wire::EkType::kEccP256, 20);
  return 0;
}
