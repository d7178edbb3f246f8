// pkcs11_bench: on one SoftHSM2 token, in one run:
//  * signatures/s through the hwid provider (EVP_PKEY_sign on a key loaded from its pkcs11: URI in
//    a library context with default + hwid), through hwid's pkcs11/ library directly, through the
//    libp11 ENGINE (Debian's libengine-pkcs11-openssl, MODULE_PATH = SoftHSM) and raw
//    C_SignInit+C_Sign on the same module (the limit); ECDSA P-256 and RSA-2048 (PKCS#1 v1.5; the
//    SHA-256 digest is computed once, outside the timed loop, for every path); 1 and 2 threads;
//  * TLS 1.3 handshakes/s with the server key on the token (through hwid) vs a software key of the
//    same type (in-process, BIO pair, client verifying with the default provider only), 1 and 2
//    threads, and PKCS#11 calls per handshake (hwid's "hwid-pkcs11-calls" counter).
// Prints ratios; no assertions.
//
// usage: pkcs11_bench [--seconds S] [--module-dir DIR]
//        (makes its own token in a temporary SOFTHSM2_CONF)
#define OPENSSL_SUPPRESS_DEPRECATED  // the libp11 ENGINE is an OpenSSL 1.x-style engine
#include <dlfcn.h>
#include <openssl/engine.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
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
#include "bench/tls_loop.h"
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
  std::string module_dir = HWID_PROVIDER_DIR;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--seconds") seconds = std::atof(argv[i + 1]);
    if (std::string(argv[i]) == "--module-dir") module_dir = argv[i + 1];
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
  // EVP_PKEY_sign over the precomputed digest (RSA: PKCS#1 v1.5 with SHA-256): the engine key in
  // the default library context, the provider key in its own (libctx = null / pctx).
  auto evp_sign = [&](OSSL_LIB_CTX* libctx, EVP_PKEY* key, bool is_ec) {
    EVP_PKEY_CTX* c = libctx == nullptr ? EVP_PKEY_CTX_new(key, nullptr)
                                        : EVP_PKEY_CTX_new_from_pkey(libctx, key, nullptr);
    uint8_t sig[512];
    size_t len = sizeof(sig);
    bool ok = c != nullptr && EVP_PKEY_sign_init(c) == 1 &&
              (is_ec || (EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
                         EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1)) &&
              EVP_PKEY_sign(c, sig, &len, digest.data(), digest.size()) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
  };
  auto engine_sign = [&](bool is_ec) { return evp_sign(nullptr, is_ec ? eng_ec : eng_rsa, is_ec); };

  auto lib_sign = [&](bool is_ec) {
    hwid::SignParams o;
    o.scheme = is_ec ? hwid::SignScheme::kEcdsa : hwid::SignScheme::kRsaPkcs1;
    return (is_ec ? *ec : *rsa)->Sign(digest, o).ok();
  };

  // The hwid provider: default + hwid in a private library context; keys from pkcs11: URIs.
  setenv("HWID_PKCS11_MODULE", kModule, 1);
  setenv("HWID_PKCS11_PIN", kPin, 1);
  OSSL_LIB_CTX* pctx = OSSL_LIB_CTX_new();
  OSSL_PROVIDER_set_default_search_path(pctx, module_dir.c_str());
  OSSL_PROVIDER* pdef = OSSL_PROVIDER_load(pctx, "default");
  OSSL_PROVIDER* phwid = OSSL_PROVIDER_load(pctx, "hwid");
  if (pdef == nullptr || phwid == nullptr) Die(absl::StrCat("cannot load hwid.so from ", module_dir));
  auto prov_key = [&](const char* label) {
    const std::string u = absl::StrCat("pkcs11:token=bench;object=", label);
    OSSL_STORE_CTX* sc = OSSL_STORE_open_ex(u.c_str(), pctx, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr);
    EVP_PKEY* k = nullptr;
    while (sc != nullptr && k == nullptr && !OSSL_STORE_eof(sc)) {
      OSSL_STORE_INFO* info = OSSL_STORE_load(sc);
      if (info != nullptr && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) {
        k = OSSL_STORE_INFO_get1_PKEY(info);
      }
      OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(sc);
    if (k == nullptr) Die(absl::StrCat("provider: load ", u));
    return k;
  };
  EVP_PKEY* prov_ec = prov_key("eckey");
  EVP_PKEY* prov_rsa = prov_key("rsakey");
  auto prov_sign = [&](bool is_ec) { return evp_sign(pctx, is_ec ? prov_ec : prov_rsa, is_ec); };

  std::printf("PKCS#11 signing on SoftHSM2 %s, %u cores, %.1f s per cell\n", "2.6.1",
              std::thread::hardware_concurrency(), seconds);
  std::printf("%-14s %-8s %12s %12s %12s %12s %10s %10s %10s\n", "key", "threads", "raw C_Sign/s",
              "engine/s", "pkcs11 lib/s", "provider/s", "lib/raw", "prov/raw", "prov/eng");
  // The three paths run interleaved in short slices (kRounds x seconds/kRounds each), so load
  // from other processes on a shared machine hits them alike.
  constexpr int kRounds = 8;
  for (bool is_ec : {true, false}) {
    for (int threads : {1, 2}) {
      double r = 0, g = 0, h = 0, p = 0;
      for (int round = 0; round < kRounds; ++round) {
        const double slice = seconds / kRounds;
        r += Run(threads, slice, [&](int t) { return raw_sign(t, is_ec); }) / kRounds;
        g += Run(threads, slice, [&](int) { return engine_sign(is_ec); }) / kRounds;
        h += Run(threads, slice, [&](int) { return lib_sign(is_ec); }) / kRounds;
        p += Run(threads, slice, [&](int) { return prov_sign(is_ec); }) / kRounds;
      }
      std::printf("%-14s %-8d %12.0f %12.0f %12.0f %12.0f %10.3f %10.3f %10.3f\n",
                  is_ec ? "ECDSA P-256" : "RSA-2048 v1.5", threads, r, g, h, p, h / r, p / r, p / g);
      std::fflush(stdout);
    }
  }

  // TLS 1.3 handshakes: token key (through hwid) vs software key, same library context.
  std::printf("\nTLS 1.3 handshakes/s (in-process, BIO pair, no resumption), %.1f s per cell\n",
              seconds);
  std::printf("%-14s %-8s %12s %12s %10s %16s\n", "server key", "threads", "token key/s",
              "software/s", "ratio", "PKCS#11 calls/hs");
  auto calls = [&]() {
    uint64_t v = 0;
    OSSL_PARAM q[] = {OSSL_PARAM_uint64("hwid-pkcs11-calls", &v), OSSL_PARAM_END};
    OSSL_PROVIDER_get_params(phwid, q);
    return v;
  };
  SSL_CTX* cli = SSL_CTX_new_ex(nullptr, nullptr, TLS_client_method());  // default provider only
  SSL_CTX_set_min_proto_version(cli, TLS1_3_VERSION);
  SSL_CTX_set_session_cache_mode(cli, SSL_SESS_CACHE_OFF);
  for (bool is_ec : {true, false}) {
    EVP_PKEY* tok = is_ec ? prov_ec : prov_rsa;
    EVP_PKEY* sw = is_ec ? EVP_PKEY_Q_keygen(pctx, "provider=default", "EC", "P-256")
                         : EVP_PKEY_Q_keygen(pctx, "provider=default", "RSA", static_cast<size_t>(2048));
    X509* tok_cert = hwid::bench::SelfSigned(pctx, tok);
    X509* sw_cert = hwid::bench::SelfSigned(pctx, sw);
    if (sw == nullptr || tok_cert == nullptr || sw_cert == nullptr) Die("TLS keys/certificates");
    auto server = [&](EVP_PKEY* k, X509* x) {
      SSL_CTX* s = SSL_CTX_new_ex(pctx, nullptr, TLS_server_method());
      SSL_CTX_set_min_proto_version(s, TLS1_3_VERSION);
      SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
      SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
      if (SSL_CTX_use_certificate(s, x) != 1 || SSL_CTX_use_PrivateKey(s, k) != 1) Die("server key");
      return s;
    };
    SSL_CTX* tok_srv = server(tok, tok_cert);
    SSL_CTX* sw_srv = server(sw, sw_cert);
    if (!hwid::bench::Handshake(tok_srv, cli)) Die("TLS 1.3 handshake with the token key");
    for (int threads : {1, 2}) {
      double t = 0, w = 0;
      uint64_t hs = 0, c0 = calls();
      for (int round = 0; round < kRounds; ++round) {
        const double slice = seconds / kRounds;
        std::atomic<uint64_t> n{0};
        t += Run(threads, slice, [&](int) {
               ++n;
               return hwid::bench::Handshake(tok_srv, cli);
             }) / kRounds;
        hs += n.load();
        w += Run(threads, slice, [&](int) { return hwid::bench::Handshake(sw_srv, cli); }) / kRounds;
      }
      const double per = hs == 0 ? 0 : static_cast<double>(calls() - c0) / static_cast<double>(hs);
      std::printf("%-14s %-8d %12.0f %12.0f %10.3f %16.3f\n", is_ec ? "ECDSA P-256" : "RSA-2048",
                  threads, t, w, t / w, per);
      std::fflush(stdout);
    }
    SSL_CTX_free(tok_srv);
    SSL_CTX_free(sw_srv);
    X509_free(tok_cert);
    X509_free(sw_cert);
    EVP_PKEY_free(sw);
  }
  SSL_CTX_free(cli);
  EVP_PKEY_free(prov_ec);
  EVP_PKEY_free(prov_rsa);
  OSSL_PROVIDER_unload(phwid);
  OSSL_PROVIDER_unload(pdef);
  OSSL_LIB_CTX_free(pctx);
  for (auto& r : raw) fl->C_CloseSession(r.s);
  EVP_PKEY_free(eng_ec);
  EVP_PKEY_free(eng_rsa);
  ENGINE_finish(e);
  ENGINE_free(e);
  std::filesystem::remove_all(dir);
  return 0;
}
