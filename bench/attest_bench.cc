// attest_bench: the hwid_tpm SPIRE node attestor, measured (issue 5, docs/benchmarks.md).
//
// 1. Agent on a real TPM (swtpm): wall time and TPM command count of a first attestation
//    (the AK is evicted first, so it is created) and of re-attestations (same process, and a new
//    agent process as after a restart), for an ECC P-256 EK and an RSA-2048 EK. The proof that
//    re-attestation creates no key: the AK name is unchanged, and, when --swtpm-log names swtpm's
//    level-5 log (bench/run-attest-bench sets it up), a per-command histogram read from the
//    commands swtpm itself received shows TPM2_Create/CreatePrimary/CreateLoaded = 0.
// 2. Server, software only: full verifications per second on one core from recorded vectors.
//    N real (payload, response) pairs are recorded from the swtpm once per run; each timed
//    verification is a complete ServerSession (payload decoding, EK certificate chain, EK key
//    match, AK policy, MakeCredential, response decoding, secret compare, quote verification,
//    PCR selection, PCR policy, selectors). The session's secret and nonce are fixed to the
//    recorded ones through ServerSession::NewWithFixedRandomnessForBenchmark (the plugin never
//    uses it). Prints the rate, the ratio to the target (2,000/s per core) and a per-step
//    breakdown. No assertions on timing; any verification failure aborts the run.
// 3. Protocol version 2 (agent-key binding, docs/agent-key-binding.md), same run, ECC EK: the
//    agent's re-attestation (same process, median) with keymanager_key_dir holding 0 (= v1), 1
//    and 2 KeyManager keys (EC P-256 TSS2 files made with Tpm::CreateKey, as the hwid KeyManager
//    makes agent-svid-A/-B), i.e. the extra TPM commands and ms per attestation; and the server's
//    full verifications/s per core on recorded v2 vectors (1 and 2 certified keys) next to v1.
//    For v2 the benchmark session derives the certify nonce from the fixed nonce (server.cc), so
//    the vectors replay. The hand-off record the server plugin then writes per key (a file in
//    certified_keys_dir, attestor_plugin/composer/handoff.h) is not part of ServerSession and
//    not timed here.
//
// usage: attest_bench [--tcti T] [--ek-ca PEM] [--swtpm-log FILE] [--vectors N] [--seconds S]
//                     [--rounds R]
// Defaults: $HWID_TCTI, $HWID_EK_CA, $HWID_SWTPM_LOG, 8 vectors, 2 s per measurement, 3 rounds
// (median reported). Run it through bench/run-attest-bench, which starts a private swtpm.
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <time.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "tpm/tpm.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"

namespace {

using hwid::Bytes;
using hwid::ByteSpan;
using namespace hwid::attestation;  // NOLINT(build/namespaces): a benchmark driver.
namespace wire = hwid::wire;
using Clock = std::chrono::steady_clock;

constexpr double kTargetPerSecond = 2000.0;
constexpr char kPcrs[] = "sha256:0,1,2,3,4,5,6,7";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "attest_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    Die(absl::StrCat(what, ": ", v.status().ToString()));
  }
  return std::move(*v);
}

void Must(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    Die(absl::StrCat(what, ": ", s.ToString()));
  }
}

double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// ---- swtpm's own command log (an oracle independent of hwid's counters) ----

const char* CommandName(uint32_t cc) {
  static const std::map<uint32_t, const char*> kNames = {
      {0x120, "EvictControl"},   {0x131, "CreatePrimary"},     {0x147, "ActivateCredential"},
      {0x14e, "NV_Read"},        {0x151, "PolicySecret"},      {0x153, "Create"},
      {0x157, "Load"},           {0x158, "Quote"},             {0x161, "ContextLoad"},
      {0x162, "ContextSave"},    {0x165, "FlushContext"},      {0x169, "NV_ReadPublic"},
      {0x16b, "PolicyCommandCode"}, {0x171, "PolicyOR"},       {0x173, "ReadPublic"},
      {0x176, "StartAuthSession"}, {0x17a, "GetCapability"},   {0x17b, "GetRandom"},
      {0x17e, "PCR_Read"},       {0x18a, "TestParms"},         {0x191, "CreateLoaded"},
      {0x148, "Certify"},
      {0x144, "Startup"},        {0x143, "SelfTest"},
  };
  auto it = kNames.find(cc);
  return it == kNames.end() ? nullptr : it->second;
}

// SwtpmLog reads the commands swtpm logged (--log level>=5 prints " SWTPM_IO_Read: length N"
// followed by the command bytes in hex; bytes 6..9 are the command code).
class SwtpmLog {
 public:
  explicit SwtpmLog(std::string path) : path_(std::move(path)) {}
  bool enabled() const { return !path_.empty(); }
  void Mark() { offset_ = Size(); }
  // CommandsSinceMark returns command name -> count for the commands logged since Mark().
  std::map<std::string, int> CommandsSinceMark() const {
    std::map<std::string, int> out;
    std::ifstream in(path_);
    in.seekg(static_cast<std::streamoff>(offset_));
    std::string line;
    bool next_is_command = false;
    while (std::getline(in, line)) {
      if (line.find("SWTPM_IO_Read:") != std::string::npos) {
        next_is_command = true;
        continue;
      }
      if (!next_is_command) {
        continue;
      }
      next_is_command = false;
      std::istringstream hex(line);
      std::vector<unsigned> b;
      unsigned v = 0;
      while (b.size() < 10 && (hex >> std::hex >> v)) {
        b.push_back(v);
      }
      if (b.size() < 10) {
        ++out["<unparsed>"];
        continue;
      }
      const uint32_t cc = (b[6] << 24) | (b[7] << 16) | (b[8] << 8) | b[9];
      const char* name = CommandName(cc);
      ++out[name != nullptr ? name : absl::StrFormat("cc=0x%x", cc)];
    }
    return out;
  }

 private:
  size_t Size() const {
    std::ifstream in(path_, std::ios::ate | std::ios::binary);
    return in ? static_cast<size_t>(in.tellg()) : 0;
  }
  std::string path_;
  size_t offset_ = 0;
};

std::string Histogram(const std::map<std::string, int>& h) {
  std::string s;
  int total = 0;
  for (const auto& [name, n] : h) {
    absl::StrAppend(&s, s.empty() ? "" : ", ", name, " ", n);
    total += n;
  }
  return absl::StrCat(total, " (", s, ")");
}

int KeyCreations(const std::map<std::string, int>& h) {
  int n = 0;
  for (const char* c : {"Create", "CreatePrimary", "CreateLoaded"}) {
    auto it = h.find(c);
    n += it == h.end() ? 0 : it->second;
  }
  return n;
}

// ---- Recording on the TPM ----

struct Vector {
  Bytes payload;
  Bytes response;
  Bytes secret;
  Bytes nonce;
};

Bytes Random32() {
  Bytes b(32);
  if (RAND_bytes(b.data(), 32) != 1) {
    Die("RAND_bytes");
  }
  return b;
}

std::unique_ptr<AgentResponder> NewAgent(const std::string& tcti, const char* ek,
                                         uint32_t ak_handle,
                                         const std::string& keymanager_key_dir = "") {
  AgentConfigInput in;
  in.tcti = tcti;
  in.ek = ek;
  in.ak_alg = "ec-p256";
  in.ak_handle = absl::StrFormat("0x%08x", ak_handle);
  in.keymanager_key_dir = keymanager_key_dir;
  AgentConfig config = Must(ValidateAgentConfig(in), "ValidateAgentConfig");
  return Must(AgentResponder::New(config), "AgentResponder::New");
}

// Attest runs one attestation: agent on the TPM, server with a fixed-randomness session (so the
// transcript can be replayed by the server benchmark). Returns the vector; `agent_ms` gets the
// agent's share of the wall time (MakePayload + RespondToChallenge).
Vector Attest(AgentResponder& agent, const std::shared_ptr<const ServerConfig>& config,
              double* agent_ms) {
  Vector v;
  v.secret = Random32();
  v.nonce = Random32();
  auto session = Must(ServerSession::NewWithFixedRandomnessForBenchmark(config, v.secret, v.nonce),
                      "benchmark session");
  const auto t0 = Clock::now();
  v.payload = Must(agent.MakePayload(), "agent MakePayload");
  const auto t1 = Clock::now();
  Bytes challenge = Must(session->HandlePayload(v.payload), "server HandlePayload");
  const auto t2 = Clock::now();
  v.response = Must(agent.RespondToChallenge(challenge), "agent RespondToChallenge");
  const auto t3 = Clock::now();
  Must(session->HandleChallengeResponse(v.response), "server HandleChallengeResponse");
  *agent_ms = std::chrono::duration<double, std::milli>((t1 - t0) + (t3 - t2)).count();
  return v;
}

struct AgentRun {
  std::string label;
  double agent_ms = 0;
  uint64_t commands = 0;
  std::map<std::string, int> swtpm;  // from swtpm's log
  Bytes ak_name;
};

void PrintRun(const AgentRun& r, bool have_log) {
  std::printf("  %-38s agent %8.1f ms | hwid TPM commands %3llu", r.label.c_str(), r.agent_ms,
              static_cast<unsigned long long>(r.commands));
  if (have_log) {
    std::printf(" | swtpm saw %s | key creations %d", Histogram(r.swtpm).c_str(),
                KeyCreations(r.swtpm));
  }
  std::printf("\n");
}

// RecordAgent measures the agent paths for one EK type and records `n` vectors.
std::vector<Vector> RecordAgent(const std::string& tcti, const char* ek, uint32_t ak_handle,
                                const std::shared_ptr<const ServerConfig>& config, int n,
                                SwtpmLog& log) {
  {  // Start from a TPM without this AK, so the first attestation creates it.
    auto tpm = Must(hwid::tpm::Tpm::Open(tcti), "Tpm::Open");
    if (tpm->ReadPublic(ak_handle).ok()) {
      Must(tpm->EvictPersistent(ak_handle), "EvictPersistent(AK)");
    }
  }
  std::vector<AgentRun> runs;
  std::vector<Vector> vectors;

  log.Mark();
  auto t_new = Clock::now();
  auto agent = NewAgent(tcti, ek, ak_handle);
  double new_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_new).count();
  AgentRun first{"first attestation (creates the AK)"};
  vectors.push_back(Attest(*agent, config, &first.agent_ms));
  first.agent_ms += new_ms;
  first.commands = agent->tpm_command_count();
  first.swtpm = log.CommandsSinceMark();
  first.ak_name = Must(agent->AkName(), "AkName");
  runs.push_back(first);

  std::vector<double> same_ms;
  AgentRun same{"re-attestation, same agent process"};
  for (int i = 1; i < n; ++i) {
    const uint64_t before = agent->tpm_command_count();
    log.Mark();
    double ms = 0;
    vectors.push_back(Attest(*agent, config, &ms));
    same_ms.push_back(ms);
    same.commands = agent->tpm_command_count() - before;
    same.swtpm = log.CommandsSinceMark();  // the last one
  }
  same.agent_ms = Median(same_ms);
  same.ak_name = Must(agent->AkName(), "AkName");
  runs.push_back(same);
  agent.reset();  // swtpm serves one connection at a time

  log.Mark();
  t_new = Clock::now();
  agent = NewAgent(tcti, ek, ak_handle);
  new_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_new).count();
  AgentRun restart{"re-attestation, new agent process"};
  vectors.push_back(Attest(*agent, config, &restart.agent_ms));
  restart.agent_ms += new_ms;
  restart.commands = agent->tpm_command_count();
  restart.swtpm = log.CommandsSinceMark();
  restart.ak_name = Must(agent->AkName(), "AkName");
  runs.push_back(restart);
  agent.reset();

  std::printf("%s EK, P-256 AK, %s (median of %d for the same-process re-attestation):\n", ek,
              kPcrs, n - 1);
  for (const AgentRun& r : runs) {
    PrintRun(r, log.enabled());
  }
  const bool same_ak = runs[0].ak_name == runs[1].ak_name && runs[0].ak_name == runs[2].ak_name;
  std::printf("  AK name %s across all three paths (%s...)\n", same_ak ? "UNCHANGED" : "CHANGED",
              hwid::HexEncode(runs[0].ak_name).substr(0, 16).c_str());
  if (!same_ak) {
    Die("the AK changed on re-attestation");
  }
  if (log.enabled() && (KeyCreations(runs[1].swtpm) != 0 || KeyCreations(runs[2].swtpm) != 0)) {
    Die("a re-attestation path created a key");
  }
  return vectors;
}

// ---- Server benchmark ----

void VerifyOnce(const std::shared_ptr<const ServerConfig>& config, const Vector& v) {
  auto session = ServerSession::NewWithFixedRandomnessForBenchmark(config, v.secret, v.nonce);
  if (!session.ok()) {
    Die(session.status().ToString());
  }
  auto challenge = (*session)->HandlePayload(v.payload);
  if (!challenge.ok()) {
    Die(absl::StrCat("server HandlePayload: ", challenge.status().ToString()));
  }
  auto result = (*session)->HandleChallengeResponse(v.response);
  if (!result.ok()) {
    Die(absl::StrCat("server HandleChallengeResponse: ", result.status().ToString()));
  }
}

struct Rate {
  double wall_per_s = 0;
  double cpu_per_s = 0;
};

// Measure runs `fn` for `seconds`; returns calls per wall second and per CPU second.
Rate Measure(double seconds, const std::function<void(size_t)>& fn) {
  const auto start = Clock::now();
  const double cpu0 = CpuSeconds();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  size_t n = 0;
  while (Clock::now() < deadline) {
    for (int k = 0; k < 8; ++k) {
      fn(n++);
    }
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = CpuSeconds() - cpu0;
  return Rate{static_cast<double>(n) / wall, static_cast<double>(n) / cpu};
}

double MicrosPerCall(double seconds, const std::function<void()>& fn) {
  Rate r = Measure(seconds, [&](size_t) { fn(); });
  return 1e6 / r.cpu_per_s;
}

template <typename T>
void Keep(const T& v) {
  if (!v.ok()) {
    Die(absl::StrCat("step failed: ", v.status().ToString()));
  }
}
void Keep(const absl::Status& s) {
  if (!s.ok()) {
    Die(absl::StrCat("step failed: ", s.ToString()));
  }
}

// Breakdown times each verification step the session runs, on the first vector, in CPU
// microseconds per call.
void Breakdown(const std::shared_ptr<const ServerConfig>& config, const Vector& v,
               double full_us, double seconds) {
  const AttestationPayload p = Must(DecodePayload(v.payload), "DecodePayload");
  const ChallengeResponse r = Must(DecodeResponse(v.response), "DecodeResponse");
  const TPMT_PUBLIC ek = Must(wire::ParsePublic(p.ek_public), "ParsePublic(EK)").publicArea;
  const TPMT_PUBLIC ak = Must(wire::ParsePublic(p.ak_public), "ParsePublic(AK)").publicArea;
  const Bytes ak_name = Must(wire::ObjectName(ak), "ObjectName");
  const wire::PcrValues pcrs = Must(DecodePcrValues(r.pcrs), "DecodePcrValues");
  const wire::VerifiedQuote q =
      Must(wire::VerifyQuote(ak, r.quote_attest, r.quote_signature, v.nonce, pcrs), "VerifyQuote");
  const double s = seconds / 4;
  struct Step {
    const char* name;
    double us;
  };
  std::vector<Step> steps;
  steps.push_back({"decode payload + parse EK/AK public areas", MicrosPerCall(s, [&] {
                     Keep(DecodePayload(v.payload));
                     Keep(wire::ParsePublic(p.ek_public));
                     Keep(wire::ParsePublic(p.ak_public));
                   })});
  steps.push_back({"EK public area policy", MicrosPerCall(s, [&] { Keep(CheckEkPublicArea(ek)); })});
  steps.push_back({"EK strength (SHA-1, RSA size, ROCA) + ek_algs", MicrosPerCall(s, [&] {
                     Keep(CheckEkStrength(ek));
                     Keep(CheckEkAlgorithm(*config, ek));
                   })});
  hwid::OsslPtr<EVP_PKEY> ek_key = Must(wire::PublicToEvp(ek), "PublicToEvp(EK)");
  steps.push_back({"EK to EVP_PKEY with OpenSSL's public-key check (once)", MicrosPerCall(s, [&] {
                     Keep(wire::PublicToEvp(ek));
                   })});
  steps.push_back({"EK trust (hash, cert chain, key match, TCG info)", MicrosPerCall(s, [&] {
                     Keep(VerifyEkTrust(*config, ek_key.get(), p.ek_certificate,
                                        p.ek_intermediates));
                   })});
  if (!p.ek_certificate.empty() && config->ca.has_value()) {
    auto cert = Must(wire::ParseCertificateDer(p.ek_certificate), "ParseCertificateDer");
    steps.push_back({"  of which: parse EK certificate", MicrosPerCall(s, [&] {
                       Keep(wire::ParseCertificateDer(p.ek_certificate));
                     })});
    steps.push_back({"  of which: chain verification (X509_verify_cert)", MicrosPerCall(s, [&] {
                       Keep(wire::VerifyEkCertificate(cert.get(), *config->ca,
                                                      config->verification_time));
                     })});
    steps.push_back({"  of which: EK-certificate profile (in the chain step)",
                     MicrosPerCall(s, [&] {
                       Keep(wire::CheckEkCertificateProfile(cert.get()));
                     })});
    steps.push_back({"  of which: EK public key hash", MicrosPerCall(s, [&] {
                       Keep(EkPublicKeyHash(ek_key.get()));
                     })});
    steps.push_back({"  of which: certificate key == EK key", MicrosPerCall(s, [&] {
                       Keep(wire::CheckCertificateMatchesKey(cert.get(), ek_key.get()));
                     })});
  }
  steps.push_back({"AK policy + AK name", MicrosPerCall(s, [&] {
                     Keep(CheckAkPolicy(*config, ak));
                     Keep(wire::ObjectName(ak));
                   })});
  steps.push_back({"MakeCredential (seed to the EK, KDFa, AES-CFB, HMAC)", MicrosPerCall(s, [&] {
                     Keep(wire::MakeCredential(ek, ek_key.get(), v.secret, ak_name));
                   })});
  steps.push_back({"decode response + secret compare + PCR values", MicrosPerCall(s, [&] {
                     Keep(DecodeResponse(v.response));
                     Keep(CheckActivationSecret(v.secret, v.secret));
                     Keep(DecodePcrValues(r.pcrs));
                   })});
  steps.push_back({"quote verification (AK signature, magic, nonce, digest)", MicrosPerCall(s, [&] {
                     Keep(wire::VerifyQuote(ak, r.quote_attest, r.quote_signature, v.nonce,
                                            pcrs));
                   })});
  steps.push_back({"PCR selection + PCR policy", MicrosPerCall(s, [&] {
                     Keep(CheckQuotedSelection(q.attest.attested.quote.pcrSelect,
                                               config->required_pcrs));
                     Keep(CheckPcrPolicy(config->expected_pcrs, q.pcrs));
                   })});
  double sum = 0;
  for (const Step& st : steps) {
    if (st.name[0] != ' ') {
      sum += st.us;
    }
    std::printf("    %-58s %8.1f us  %5.1f%%\n", st.name, st.us, 100 * st.us / full_us);
  }
  std::printf("    %-58s %8.1f us  %5.1f%%\n",
              "rest (challenge encoding, selectors, session, allocation)",
              std::max(0.0, full_us - sum), 100 * std::max(0.0, full_us - sum) / full_us);
  std::printf("    %-58s %8.1f us\n", "full verification (measured as a whole)", full_us);
}

// ---- Protocol version 2 (agent-key binding) ----

// KeyDir is a temporary KeyManager key_dir with `count` EC P-256 TSS2 key files made in the TPM
// (agent-svid-A.tss2.pem, agent-svid-B.tss2.pem, ...). The keys are transient blobs: nothing is
// left in the TPM; the files are removed with the object.
class KeyDir {
 public:
  KeyDir(const std::string& tcti, int count) {
    char tmpl[] = "/tmp/hwid-attest-bench-keys.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      Die("mkdtemp for the KeyManager key_dir");
    }
    dir_ = tmpl;
    if (count == 0) {
      return;
    }
    auto tpm = Must(hwid::tpm::Tpm::Open(tcti), "Tpm::Open");
    for (int i = 0; i < count; ++i) {
      wire::TpmKeyFile kf = Must(tpm->CreateKey(wire::KeyAlg::kEcP256), "CreateKey(ec-p256)");
      const std::string pem = Must(wire::EncodeTpmKeyFilePem(kf), "EncodeTpmKeyFilePem");
      const std::string path = absl::StrCat(dir_, "/agent-svid-", std::string(1, 'A' + i),
                                            ".tss2.pem");
      Must(hwid::WriteFile(path, hwid::AsSpan(pem), 0600), "WriteFile(key file)");
      files_.push_back(path);
    }
  }
  ~KeyDir() {
    for (const std::string& f : files_) {
      unlink(f.c_str());
    }
    rmdir(dir_.c_str());
  }
  KeyDir(const KeyDir&) = delete;
  KeyDir& operator=(const KeyDir&) = delete;
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::string> files_;
};

struct V2Run {
  int keys = 0;
  double agent_ms = 0;     // median, re-attestation in the same agent process
  uint64_t commands = 0;   // hwid's count, per re-attestation
  std::map<std::string, int> swtpm;  // the last re-attestation, from swtpm's log
  std::vector<Vector> vectors;
};

// MeasureAgentV2 runs n attestations of one agent process whose keymanager_key_dir holds `keys`
// key files (0 = no keymanager_key_dir, protocol v1): the first loads the EK and the AK (which
// exists already: RecordAgent created it), the n-1 others are timed.
V2Run MeasureAgentV2(const std::string& tcti, const char* ek, uint32_t ak_handle,
                     const std::shared_ptr<const ServerConfig>& config, int n, int keys,
                     SwtpmLog& log) {
  KeyDir dir(tcti, keys);
  V2Run run;
  run.keys = keys;
  auto agent = NewAgent(tcti, ek, ak_handle, keys == 0 ? "" : dir.path());
  double ms = 0;
  run.vectors.push_back(Attest(*agent, config, &ms));
  std::vector<double> times;
  for (int i = 1; i < n; ++i) {
    const uint64_t before = agent->tpm_command_count();
    log.Mark();
    run.vectors.push_back(Attest(*agent, config, &ms));
    times.push_back(ms);
    run.commands = agent->tpm_command_count() - before;
    run.swtpm = log.CommandsSinceMark();
  }
  run.agent_ms = Median(times);
  for (const Vector& v : run.vectors) {
    const ChallengeResponse r = Must(DecodeResponse(v.response), "DecodeResponse");
    if (static_cast<int>(r.certified_keys.size()) != keys) {
      Die(absl::StrCat("expected ", keys, " certified keys in a response, got ",
                       r.certified_keys.size()));
    }
  }
  return run;
}

// CertifyNonce is the certify nonce a benchmark session derives from its fixed quote nonce
// (attestor_plugin/attestation/server.cc, HandlePayloadImpl).
Bytes CertifyNonce(const Bytes& nonce) {
  Bytes out = nonce;
  for (uint8_t& b : out) {
    b ^= 0x5c;
  }
  return out;
}

// ClockStateCost (issue 13 gap 5): full verifications of one recorded ECC vector with the clock
// state off, in a file store (fsync'd atomic rename per attestation) and, when the environment
// variable HWID_BENCH_PG_CONNINFO holds a libpq connection string (bench/run-attest-bench starts a
// private PostgreSQL and sets it), in PostgreSQL. One vector so that every replay carries the same
// clock info: equal is a legal successor, so each verification loads, checks and writes the
// record. Wall and CPU rates both: the store's cost is mostly I/O and another process.
void ClockStateCost(ServerConfigInput in, const Vector& v, double seconds, int rounds) {
  std::printf("\n-- clock state (memory across attestations): full verifications of one ECC "
              "vector, one thread, %d rounds of %.1f s (median) --\n",
              rounds, seconds);
  char dir_template[] = "/tmp/hwid-bench-clock-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    Die("mkdtemp");
  }
  struct Store {
    const char* name;
    const char* kind;
  };
  std::vector<Store> stores = {{"none", "none"}, {"file", "file"}};
  if (std::getenv("HWID_BENCH_PG_CONNINFO") != nullptr) {
    stores.push_back({"postgres", "postgres"});
  } else {
    std::printf("  (postgres skipped: HWID_BENCH_PG_CONNINFO not set)\n");
  }
  double none_wall = 0;
  for (const Store& st : stores) {
    in.clock_state = st.kind;
    in.clock_state_path = std::string(st.kind) == "file" ? absl::StrCat(dir_template, "/records")
                                                         : "";
    in.clock_state_conninfo_env =
        std::string(st.kind) == "postgres" ? "HWID_BENCH_PG_CONNINFO" : "";
    auto config = Must(ValidateServerConfig(in), "ValidateServerConfig (clock state)");
    VerifyOnce(config, v);
    std::vector<double> wall;
    std::vector<double> cpu;
    for (int round = 0; round < rounds; ++round) {
      Rate r = Measure(seconds, [&](size_t) { VerifyOnce(config, v); });
      wall.push_back(r.wall_per_s);
      cpu.push_back(r.cpu_per_s);
    }
    if (none_wall == 0) {
      none_wall = Median(wall);
    }
    std::printf("  %-9s %8.1f verifications/s per wall second (%5.2fx none) | %8.1f per "
                "CPU-second of this process\n",
                st.name, Median(wall), Median(wall) / none_wall, Median(cpu));
  }
  std::string rm = absl::StrCat("rm -rf ", dir_template);
  if (std::system(rm.c_str()) != 0) {
    std::printf("  (could not remove %s)\n", dir_template);
  }
}

void AgentKeyBinding(const std::string& tcti, uint32_t ak_handle,
                     const std::shared_ptr<const ServerConfig>& recording_config,
                     const std::shared_ptr<const ServerConfig>& config, int n, double seconds,
                     int rounds, SwtpmLog& log) {
  std::printf("\n-- protocol v2 (agent-key binding): agent on swtpm, ecc EK, P-256 AK, %s, "
              "re-attestation in the same agent process (median of %d) --\n",
              kPcrs, n - 1);
  std::vector<V2Run> runs;
  for (int keys : {0, 1, 2}) {
    runs.push_back(MeasureAgentV2(tcti, "ecc", ak_handle, recording_config, n, keys, log));
  }
  const V2Run& v1 = runs[0];
  std::printf("  %-26s %9s %10s %14s %12s\n", "keymanager keys certified", "agent ms",
              "TPM cmds", "extra cmds", "extra ms");
  for (const V2Run& r : runs) {
    std::printf("  %-26s %9.1f %10llu %14lld %12.1f\n",
                r.keys == 0 ? "0 (protocol v1)" : absl::StrCat(r.keys, " (protocol v2)").c_str(),
                r.agent_ms, static_cast<unsigned long long>(r.commands),
                static_cast<long long>(r.commands) - static_cast<long long>(v1.commands),
                r.agent_ms - v1.agent_ms);
  }
  if (log.enabled()) {
    std::printf("  swtpm saw (one re-attestation):\n");
    for (const V2Run& r : runs) {
      std::printf("    %d key(s): %s\n", r.keys, Histogram(r.swtpm).c_str());
    }
  }

  std::printf("\n-- protocol v2: server, software only, full verifications (check 14 included) "
              "from %d recorded vectors each, one thread, %d rounds of %.1f s (median) --\n",
              n, rounds, seconds);
  for (const V2Run& r : runs) {
    for (const Vector& v : r.vectors) {
      VerifyOnce(config, v);
    }
  }
  std::vector<double> us;
  for (const V2Run& r : runs) {
    std::vector<double> wall;
    std::vector<double> cpu;
    for (int round = 0; round < rounds; ++round) {
      Rate rate = Measure(seconds, [&](size_t i) {
        VerifyOnce(config, r.vectors[i % r.vectors.size()]);
      });
      wall.push_back(rate.wall_per_s);
      cpu.push_back(rate.cpu_per_s);
    }
    const double cpu_rate = Median(cpu);
    us.push_back(1e6 / cpu_rate);
    std::printf("  %-26s %8.1f verifications/s per CPU-second (%8.1f per wall second) | "
                "%6.1f us | vs v1 %+6.1f us (%.2fx the rate) | ratio to target %.2fx\n",
                r.keys == 0 ? "v1 (0 keys)" : absl::StrCat("v2, ", r.keys, " certified key",
                                                         r.keys == 1 ? "" : "s").c_str(),
                cpu_rate, Median(wall), us.back(), us.back() - us[0], us[0] / us.back(),
                cpu_rate / kTargetPerSecond);
  }
  // Check 14 alone, on the 2-key vector (us per call, i.e. for both keys).
  const Vector& v = runs[2].vectors[0];
  const AttestationPayload p = Must(DecodePayload(v.payload), "DecodePayload");
  const ChallengeResponse r = Must(DecodeResponse(v.response), "DecodeResponse");
  const TPMT_PUBLIC ak = Must(wire::ParsePublic(p.ak_public), "ParsePublic(AK)").publicArea;
  const Bytes certify_nonce = CertifyNonce(v.nonce);
  const double check14 = MicrosPerCall(seconds / 2, [&] {
    Keep(VerifyCertifiedKeys(ak, r.certified_keys, certify_nonce));
  });
  std::printf("  check 14 alone (VerifyCertifiedKeys: AK signature, magic, type, nonce, name, "
              "attributes): %.1f us for 2 keys, %.1f us per key, of which:\n",
              check14, check14 / 2);
  const CertifiedKey& k = r.certified_keys[0];
  const TPMT_PUBLIC key = Must(wire::ParsePublic(k.key_public), "ParsePublic(key)").publicArea;
  const TPMT_SIGNATURE sig = Must(wire::ParseSignature(k.signature), "ParseSignature");
  const double sig_us = MicrosPerCall(seconds / 4, [&] {
    Keep(wire::VerifySignature(ak, k.certify_info, sig));
  });
  const double der_us = MicrosPerCall(seconds / 4, [&] { Keep(wire::PublicKeyDer(key)); });
  std::printf("    AK signature (VerifySignature: AK to EVP_PKEY, hash, ECDSA verify) %.1f us | "
              "certified key to SPKI DER (PublicKeyDer: to EVP_PKEY, key check, encode) %.1f us\n",
              sig_us, der_us);
}

std::string Flag(int argc, char** argv, const char* name, const char* env, const char* def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == name) {
      return argv[i + 1];
    }
  }
  const char* e = env != nullptr ? std::getenv(env) : nullptr;
  return e != nullptr ? e : def;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf(
          "usage: attest_bench [--tcti T] [--ek-ca PEM] [--swtpm-log FILE] [--vectors N] "
          "[--seconds S] [--rounds R]\n");
      return 0;
    }
  }
  const std::string tcti = Flag(argc, argv, "--tcti", "HWID_TCTI", "");
  const std::string ca = Flag(argc, argv, "--ek-ca", "HWID_EK_CA", "");
  SwtpmLog log(Flag(argc, argv, "--swtpm-log", "HWID_SWTPM_LOG", ""));
  const int n = std::max(2, std::atoi(Flag(argc, argv, "--vectors", nullptr, "8").c_str()));
  const double seconds = std::atof(Flag(argc, argv, "--seconds", nullptr, "2").c_str());
  const int rounds = std::max(1, std::atoi(Flag(argc, argv, "--rounds", nullptr, "3").c_str()));
  if (tcti.empty() || ca.empty()) {
    Die("need --tcti and --ek-ca (or HWID_TCTI / HWID_EK_CA); use bench/run-attest-bench");
  }

  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {ca};
  in.pcrs = kPcrs;
  in.ek_algs = {"ecc-p256", "rsa-2048"};  // both EK types are measured
  auto recording_config = Must(ValidateServerConfig(in), "ValidateServerConfig");

  std::printf("== hwid_tpm attestation benchmark (TCTI %s) ==\n", tcti.c_str());
  std::printf("-- agent on swtpm: wall time and TPM commands%s --\n",
              log.enabled() ? " (and the commands swtpm logged)" : "");
  struct Set {
    const char* ek;
    std::vector<Vector> vectors;
  };
  std::vector<Set> sets = {{"ecc", {}}, {"rsa", {}}};
  sets[0].vectors = RecordAgent(tcti, "ecc", 0x81000110, recording_config, n, log);
  sets[1].vectors = RecordAgent(tcti, "rsa", 0x81000111, recording_config, n, log);

  // The server configuration timed: certificate mode plus a PCR policy over all 8 quoted PCRs
  // (the values the swtpm reported), so that every step does real work.
  {
    ChallengeResponse r = Must(DecodeResponse(sets[0].vectors[0].response), "DecodeResponse");
    for (const PcrValue& pv : r.pcrs) {
      in.expected_pcrs[absl::StrCat(wire::HashAlgName(static_cast<TPMI_ALG_HASH>(pv.bank)), ":",
                                    pv.index)] = hwid::HexEncode(pv.digest);
    }
  }
  auto config = Must(ValidateServerConfig(in), "ValidateServerConfig (with expected_pcrs)");

  std::printf("\n-- server, software only: full verifications from %d recorded vectors per EK, "
              "one thread, %d rounds of %.1f s (median) --\n",
              n + 1, rounds, seconds);
  for (Set& set : sets) {
    for (const Vector& v : set.vectors) {
      VerifyOnce(config, v);  // every vector verifies before anything is timed
    }
  }
  std::map<std::string, double> full_us;
  for (Set& set : sets) {
    std::vector<double> wall;
    std::vector<double> cpu;
    for (int round = 0; round < rounds; ++round) {
      Rate r = Measure(seconds, [&](size_t i) {
        VerifyOnce(config, set.vectors[i % set.vectors.size()]);
      });
      wall.push_back(r.wall_per_s);
      cpu.push_back(r.cpu_per_s);
    }
    const double cpu_rate = Median(cpu);
    full_us[set.ek] = 1e6 / cpu_rate;
    std::printf(
        "%s EK: %8.1f verifications/s per CPU-second (%8.1f per wall second) | target %.0f/s | "
        "ratio to target %.2fx\n",
        set.ek, cpu_rate, Median(wall), kTargetPerSecond, cpu_rate / kTargetPerSecond);
  }

  std::printf("\n-- per-step CPU cost (us per call; %% of the full verification) --\n");
  for (Set& set : sets) {
    std::printf("  %s EK:\n", set.ek);
    Breakdown(config, set.vectors[0], full_us[set.ek], seconds);
  }

  // Context for the fix in tpm/wire PublicToEvp: OpenSSL's full public-key check (RSA: modulus
  // primality/smoothness tests) against the quick check now used, on the recorded RSA EK.
  {
    const AttestationPayload p = Must(DecodePayload(sets[1].vectors[0].payload), "DecodePayload");
    const TPMT_PUBLIC ek = Must(wire::ParsePublic(p.ek_public), "ParsePublic").publicArea;
    hwid::OsslPtr<EVP_PKEY> key = Must(wire::PublicToEvp(ek), "PublicToEvp");
    auto check_us = [&](bool quick) {
      return MicrosPerCall(seconds / 4, [&] {
        hwid::OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
        const int ok = quick ? EVP_PKEY_public_check_quick(ctx.get())
                             : EVP_PKEY_public_check(ctx.get());
        if (ok != 1) {
          Die("EVP_PKEY_public_check failed on the recorded EK");
        }
      });
    };
    const double full = check_us(false);
    const double quick = check_us(true);
    std::printf(
        "\nRSA-2048 EK public-key check: EVP_PKEY_public_check %.1f us | "
        "EVP_PKEY_public_check_quick %.1f us | ratio %.0fx\n",
        full, quick, full / quick);
  }

  AgentKeyBinding(tcti, 0x81000110, recording_config, config, n, seconds, rounds, log);
  ClockStateCost(in, sets[0].vectors[0], seconds, rounds);
  return 0;
}
