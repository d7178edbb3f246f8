// pkcs11_bench: signatures/s on one SoftHSM2 token through hwid's pkcs11/ library, through the
// libp11 ENGINE (Debian's libengine-pkcs11-openssl, MODULE_PATH = SoftHSM) and through raw
// C_SignInit+C_Sign on the same module (the limit); ECDSA P-256 and RSA-2048 (PKCS#1 v1.5,
// SHA-256 digest computed once, outside the timed loop, for every path), with 1 and 2 threads.
// Prints ratios; no assertions.
//
// usage: pkcs11_bench [--seconds S]   (makes its own token in a temporary SOFTHSM2_CONF)
#define OPENSSL_SUPPRESS_DEPRECATED  // the libp11 ENGINE is an OpenSSL 1.x-style engine
#include <dlfcn.h>
#include <openssl/engine.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bytes.h"
#include "pkcs11/pkcs11.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kModule[] = "/usr/lib/softhsm/libsofthsm2.so";
constexpr char kPin[] = "1234";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "pkcs11_bench: %s\n", what.c_str());
  std::exit(1);
}

// Run calls op(thread) from `threads` threads for `seconds`; returns operations per second.
double Run(int threads, double seconds, const std::function<bool(int)>& op) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> total{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> ts;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (!op(t)) {
          failed = true;
          break;
        }
        ++n;
      }
      total += n;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (failed) Die("an operation failed during the run");
  return static_cast<double>(total.load()) / elapsed;
}

const uint8_t kSha256Prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

}  // namespace

int main(int argc, char** argv) {
  double seconds = 2.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--seconds") seconds = std::atof(argv[i + 1]);
  }
  if (access(kModule, R_OK) != 0) Die("SoftHSM2 is not installed (apt-get install softhsm2)");
  // A private token.
  char tmpl[] = "/tmp/hwid-p11bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
  const std::string dir = tmpl;
  std::filesystem::create_directory(dir + "/tokens");
  std::ofstream(dir + "/softhsm2.conf") << "directories.tokendir = " << dir
                                        << "/tokens\nobjectstore.backend = file\nlog.level = ERROR\n";
  setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
  if (std::system(absl::StrCat("softhsm2-util --init-token --free --label bench --pin ", kPin,
                               " --so-pin 5678 >/dev/null").c_str()) != 0) {
    Die("softhsm2-util --init-token failed");
  }
  const std::string token_uri =
      absl::StrCat("pkcs11:token=bench?module-path=", kModule, "&pin-value=", kPin);
  auto token = hwid::pkcs11::Token::Open(token_uri);
  if (!token.ok()) Die(std::string(token.status().message()));
  auto ec = (*token)->GenerateKey(hwid::pkcs11::KeyAlg::kEcP256, "eckey");
  auto rsa = (*token)->GenerateKey(hwid::pkcs11::KeyAlg::kRsa2048, "rsakey");
  if (!ec.ok() || !rsa.ok()) Die("key generation failed");

  hwid::Bytes digest(32, 0x5a);
  hwid::Bytes digest_info(sizeof(kSha256Prefix) + digest.size());
  std::memcpy(digest_info.data(), kSha256Prefix, sizeof(kSha256Prefix));
  std::memcpy(digest_info.data() + sizeof(kSha256Prefix), digest.data(), digest.size());

  // Raw C_Sign on the same (already initialised, logged-in) module: one session per thread.
  void* dl = dlopen(kModule, RTLD_NOW);
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
  CK_FUNCTION_LIST* fl = nullptr;
  if (get == nullptr || get(&fl) != CKR_OK) Die("C_GetFunctionList");
  CK_SLOT_ID slots[8];
  CK_ULONG nslots = 8;
  fl->C_GetSlotList(CK_TRUE, slots, &nslots);
  CK_SLOT_ID slot = 0;
  bool found = false;
  for (CK_ULONG i = 0; i < nslots; ++i) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && std::memcmp(ti.label, "bench ", 6) == 0) {
      slot = slots[i];
      found = true;
    }
  }
  if (!found) Die("raw: token not found");
  auto raw_find = [&](CK_SESSION_HANDLE s, const char* label) {
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, const_cast<char*>(label), std::strlen(label)}};
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG n = 0;
    fl->C_FindObjectsInit(s, t, 2);
    fl->C_FindObjects(s, &h, 1, &n);
    fl->C_FindObjectsFinal(s);
    if (n != 1) Die("raw: key not found");
    return h;
  };
  struct RawCtx {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE ec;
    CK_OBJECT_HANDLE rsa;
  };
  std::vector<RawCtx> raw(2);
  for (auto& r : raw) {
    if (fl->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &r.s) != CKR_OK) Die("raw session");
    r.ec = raw_find(r.s, "eckey");
    r.rsa = raw_find(r.s, "rsakey");
  }
  auto raw_sign = [&](int t, bool is_ec) {
    CK_MECHANISM m{is_ec ? CKM_ECDSA : CKM_RSA_PKCS, nullptr, 0};
    uint8_t sig[512];
    CK_ULONG len = sizeof(sig);
    const hwid::Bytes& in = is_ec ? digest : digest_info;
    return fl->C_SignInit(raw[t].s, &m, is_ec ? raw[t].ec : raw[t].rsa) == CKR_OK &&
           fl->C_Sign(raw[t].s, const_cast<uint8_t*>(in.data()), in.size(), sig, &len) == CKR_OK;
  };

  // libp11 engine.
  ENGINE_load_builtin_engines();
  ENGINE* e = ENGINE_by_id("pkcs11");
  if (e == nullptr) Die("ENGINE_by_id(pkcs11): install libengine-pkcs11-openssl");
  if (!ENGINE_ctrl_cmd_string(e, "MODULE_PATH", kModule, 0) || !ENGINE_init(e)) Die("engine init");
  auto engine_key = [&](const char* label) {
    const std::string u = absl::StrCat("pkcs11:token=bench;object=", label, ";type=private?pin-value=", kPin);
    EVP_PKEY* k = ENGINE_load_private_key(e, u.c_str(), nullptr, nullptr);
    if (k == nullptr) Die(absl::StrCat("engine: load ", label));
    return k;
  };
  EVP_PKEY* eng_ec = engine_key("eckey");
  EVP_PKEY* eng_rsa = engine_key("rsakey");
  auto engine_sign = [&](bool is_ec) {
    EVP_PKEY_CTX* c = EVP_PKEY_CTX_new(is_ec ? eng_ec : eng_rsa, nullptr);
    uint8_t sig[512];
    size_t len = sizeof(sig);
    bool ok = c != nullptr && EVP_PKEY_sign_init(c) == 1 &&
              (is_ec || (EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
                         EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1)) &&
              EVP_PKEY_sign(c, sig, &len, digest.data(), digest.size()) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
  };

  auto hwid_sign = [&](bool is_ec) {
    hwid::pkcs11::SignOptions o;
    o.mechanism = is_ec ? hwid::pkcs11::SignMechanism::kEcdsa : hwid::pkcs11::SignMechanism::kRsaPkcs1;
    return (is_ec ? *ec : *rsa)->Sign(digest, o).ok();
  };

  std::printf("PKCS#11 signing on SoftHSM2 %s, %u cores, %.1f s per cell\n", "2.6.1",
              std::thread::hardware_concurrency(), seconds);
  std::printf("%-14s %-8s %12s %12s %12s %10s %10s\n", "key", "threads", "raw C_Sign/s",
              "engine/s", "hwid/s", "hwid/raw", "hwid/eng");
  // The three paths run interleaved in short slices (kRounds x seconds/kRounds each), so load
  // from other processes on a shared machine hits them alike.
  constexpr int kRounds = 8;
  for (bool is_ec : {true, false}) {
    for (int threads : {1, 2}) {
      double r = 0, g = 0, h = 0;
      for (int round = 0; round < kRounds; ++round) {
        const double slice = seconds / kRounds;
        r += Run(threads, slice, [&](int t) { return raw_sign(t, is_ec); }) / kRounds;
        g += Run(threads, slice, [&](int) { return engine_sign(is_ec); }) / kRounds;
        h += Run(threads, slice, [&](int) { return hwid_sign(is_ec); }) / kRounds;
      }
      std::printf("%-14s %-8d %12.0f %12.0f %12.0f %10.3f %10.3f\n",
                  is_ec ? "ECDSA P-256" : "RSA-2048 v1.5", threads, r, g, h, h / r, h / g);
      std::fflush(stdout);
    }
  }
  for (auto& r : raw) fl->C_CloseSession(r.s);
  EVP_PKEY_free(eng_ec);
  EVP_PKEY_free(eng_rsa);
  ENGINE_finish(e);
  ENGINE_free(e);
  std::filesystem::remove_all(dir);
  return 0;
}
