// keymanager_bench: SignData/s of the hwid KeyManager plugins over gRPC (as SPIRE calls them)
// against the raw device limit on the same key, in one run:
//   TPM (swtpm): plugin (agent binary, TPM backend) vs the key store in-process vs raw Esys_Sign
//                with the key kept loaded;
//   PKCS#11 (SoftHSM2): plugin (server binary, PKCS#11 backend) vs raw C_SignInit+C_Sign.
// EC P-256, SHA-256 digests; 1 and 2 client threads. Usage (bench/run-keymanager-bench sets it up):
//   keymanager_bench --tcti TCTI --agent BIN --server BIN [--seconds S]
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/keymanager/tpm_key_store.h"
#include "bench/raw_esys_signer.h"
#include "spire/plugin/agent/keymanager/v1/keymanager.grpc.pb.h"
#include "spire/plugin/server/keymanager/v1/keymanager.grpc.pb.h"
#include "tests/attestor_plugin/plugin_client.h"
#include "tpm/wire/keyfile.h"

namespace {

namespace akm = ::spire::plugin::agent::keymanager::v1;
namespace skm = ::spire::plugin::server::keymanager::v1;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& m) {
  std::fprintf(stderr, "keymanager_bench: %s\n", m.c_str());
  std::exit(1);
}

// Rate runs `fn` on `threads` threads for `seconds` and returns calls/s (dies on a failure).
template <typename Fn>
double Rate(int threads, double seconds, Fn fn) {
  std::atomic<long> n{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        if (!fn(t)) Die("a signature failed");
        n.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  return n.load() / std::chrono::duration<double>(Clock::now() - start).count();
}

using ::hwid::testing::PluginClient;

// StartPlugin: the plugin binary started and configured as SPIRE does (dies on a failure).
std::unique_ptr<PluginClient> StartPlugin(const std::string& bin, const std::string& hcl) {
  absl::StatusOr<std::unique_ptr<PluginClient>> p = PluginClient::Start(bin, "KeyManager");
  if (!p.ok()) Die(bin + ": " + std::string(p.status().message()));
  grpc::Status st = (*p)->Configure(hcl);
  if (!st.ok()) Die("Configure: " + st.error_message());
  return *std::move(p);
}

#define HWID_KM(NAME, NSP)                                          \
  struct NAME {                                                     \
    using KeyManager = NSP::KeyManager;                             \
    using GenerateKeyRequest = NSP::GenerateKeyRequest;             \
    using GenerateKeyResponse = NSP::GenerateKeyResponse;           \
    using SignDataRequest = NSP::SignDataRequest;                   \
    using SignDataResponse = NSP::SignDataResponse;                 \
    static constexpr NSP::KeyType EC_P256 = NSP::EC_P256;           \
    static constexpr NSP::HashAlgorithm SHA256 = NSP::SHA256;       \
  }
HWID_KM(AgentKm, akm);
HWID_KM(ServerKm, skm);
#undef HWID_KM

template <typename NS>
double PluginRate(PluginClient& p, const std::string& id, int threads, double secs) {
  auto stub = NS::KeyManager::NewStub(p.channel());
  {
    typename NS::GenerateKeyRequest g;
    g.set_key_id(id);
    g.set_key_type(NS::EC_P256);
    typename NS::GenerateKeyResponse r;
    grpc::ClientContext ctx;
    grpc::Status st = stub->GenerateKey(&ctx, g, &r);
    if (!st.ok()) Die("GenerateKey: " + st.error_message());
  }
  const std::string digest(32, 'd');
  return Rate(threads, secs, [&](int) {
    typename NS::SignDataRequest s;
    s.set_key_id(id);
    s.set_data(digest);
    s.set_hash_algorithm(NS::SHA256);
    typename NS::SignDataResponse r;
    grpc::ClientContext ctx;
    return stub->SignData(&ctx, s, &r).ok() && !r.signature().empty();
  });
}

void Row(const char* what, int threads, double v, double raw) {
  std::printf("  %-44s %2d thr %9.1f /s   %.3f of raw\n", what, threads, v, v / raw);
}

}  // namespace

int main(int argc, char** argv) {
  std::string tcti, agent, server;
  double secs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tcti") tcti = argv[i + 1];
    else if (k == "--agent") agent = argv[i + 1];
    else if (k == "--server") server = argv[i + 1];
    else if (k == "--seconds") secs = std::atof(argv[i + 1]);
    else Die("unknown argument " + k);
  }
  if (tcti.empty() || agent.empty() || server.empty()) {
    Die("usage: keymanager_bench --tcti TCTI --agent BIN --server BIN [--seconds S]");
  }
  char tmpl[] = "/tmp/hwid-km-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
  const std::string dir = tmpl;

  // ---- TPM ----
  std::printf("TPM (swtpm %s), EC P-256 SignData, SHA-256\n", tcti.c_str());
  const std::string key_dir = dir + "/keys";
  double plugin1, plugin2;
  {
    auto p = StartPlugin(agent, absl::StrCat("backend = \"tpm\"\ntcti = \"", tcti,
                                             "\"\nkey_dir = \"", key_dir, "\"\n"));
    plugin1 = PluginRate<AgentKm>(*p, "agent-svid-A", 1, secs);
    plugin2 = PluginRate<AgentKm>(*p, "agent-svid-A", 2, secs);
    p->Shutdown();
  }
  double store1;
  {
    hwid::keymanager::TpmKeyStore::Options o;
    o.tcti = tcti;
    o.key_dir = key_dir;
    auto s = hwid::keymanager::TpmKeyStore::Open(o);
    if (!s.ok()) Die(std::string(s.status().message()));
    const hwid::Bytes d(32, 0x5a);
    store1 = Rate(1, secs, [&](int) {
      return (*s)->Sign("agent-svid-A", d, hwid::keymanager::SignRequest{}).ok();
    });
  }
  double raw;
  {
    std::ifstream in(key_dir + "/agent-svid-A.tss2.pem");
    std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto kf = hwid::wire::ParseTpmKeyFile(hwid::AsSpan(pem));
    if (!kf.ok()) Die("key file");
    hwid::bench::RawEsysSigner rs(tcti, *kf, TPM2_ALG_ECDSA);
    TPM2B_DIGEST d = {};
    d.size = 32;
    raw = Rate(1, secs, [&](int) {
      rs.Sign(d);
      return true;
    });
  }
  Row("raw Esys_Sign (key kept loaded, 1 command)", 1, raw, raw);
  Row("key store in-process (load-sign-flush)", 1, store1, raw);
  Row("plugin over gRPC (as SPIRE calls it)", 1, plugin1, raw);
  Row("plugin over gRPC (as SPIRE calls it)", 2, plugin2, raw);

  // ---- PKCS#11 ----
  const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";
  std::filesystem::create_directories(dir + "/tokens");
  std::ofstream(dir + "/softhsm2.conf") << "directories.tokendir = " << dir
                                        << "/tokens\nobjectstore.backend = file\nlog.level = ERROR\n";
  setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
  if (std::system("softhsm2-util --init-token --free --label kmbench --pin 1234 --so-pin 5678 "
                  ">/dev/null") != 0) {
    Die("softhsm2-util --init-token failed");
  }
  std::printf("PKCS#11 (SoftHSM2), EC P-256 SignData, SHA-256\n");
  double p11_1, p11_2;
  auto sp = StartPlugin(server, absl::StrCat("backend = \"pkcs11\"\nuri = \"pkcs11:token=kmbench?"
                                             "module-path=", kModule, "&pin-value=1234\"\n"));
  p11_1 = PluginRate<ServerKm>(*sp, "x509-CA-A", 1, secs);
  p11_2 = PluginRate<ServerKm>(*sp, "x509-CA-A", 2, secs);
  // Raw C_Sign on the plugin's own key (found by its label) from this process.
  void* dl = dlopen(kModule, RTLD_NOW);
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
  CK_FUNCTION_LIST* fl = nullptr;
  if (get == nullptr || get(&fl) != CKR_OK) Die("C_GetFunctionList");
  CK_C_INITIALIZE_ARGS args = {};
  args.flags = CKF_OS_LOCKING_OK;
  fl->C_Initialize(&args);
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  fl->C_GetSlotList(CK_TRUE, slots, &n);
  CK_SLOT_ID slot = 0;
  for (CK_ULONG i = 0; i < n; ++i) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && std::memcmp(ti.label, "kmbench ", 8) == 0) {
      slot = slots[i];
    }
  }
  struct RawCtx {
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE k = 0;
  };
  std::vector<RawCtx> raw_ctx(2);
  const char* label = "example.org/x509-CA-A";
  for (auto& r : raw_ctx) {
    if (fl->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &r.s) != CKR_OK) Die("session");
    CK_UTF8CHAR pin[] = "1234";
    fl->C_Login(r.s, CKU_USER, pin, 4);  // once per process; later calls say already logged in
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, const_cast<char*>(label), std::strlen(label)}};
    CK_ULONG found = 0;
    fl->C_FindObjectsInit(r.s, t, 2);
    fl->C_FindObjects(r.s, &r.k, 1, &found);
    fl->C_FindObjectsFinal(r.s);
    if (found != 1) Die("raw: plugin key not found on the token");
  }
  uint8_t digest[32];
  std::memset(digest, 0x5a, sizeof(digest));
  auto raw_sign = [&](int t) {
    CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
    uint8_t sig[128];
    CK_ULONG len = sizeof(sig);
    return fl->C_SignInit(raw_ctx[t].s, &m, raw_ctx[t].k) == CKR_OK &&
           fl->C_Sign(raw_ctx[t].s, digest, 32, sig, &len) == CKR_OK;
  };
  const double raw1 = Rate(1, secs, raw_sign);
  const double raw2 = Rate(2, secs, raw_sign);
  Row("raw C_SignInit+C_Sign", 1, raw1, raw1);
  Row("raw C_SignInit+C_Sign", 2, raw2, raw2);
  Row("plugin over gRPC (as SPIRE calls it)", 1, p11_1, raw1);
  Row("plugin over gRPC (as SPIRE calls it)", 2, p11_2, raw2);
  sp->Shutdown();
  sp.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
