// pkcs11_bench: on one SoftHSM2 token, in one run:
//  * signatures/s on the same key through: raw C_SignInit+C_Sign on the token object and raw on a
//    session copy of it (C_CopyObject, CKA_TOKEN false: the two limits; SoftHSM2 signs faster with
//    session objects), hwid's pkcs11/ library (which signs with a session copy) and the same with
//    copies off (HWID_PKCS11_SESSION_COPY=0: the token object), the hwid provider (EVP_PKEY_sign
//    on a key loaded from its pkcs11: URI in a library context with default + hwid), the libp11
//    ENGINE (Debian's libengine-pkcs11-openssl, MODULE_PATH = SoftHSM, token object) and
//    latchset's pkcs11-provider when $HWID_BENCH_PKCS11_PROVIDER names its pkcs11.so (not in
//    Debian 12; never built by this project; "not installed" otherwise); ECDSA P-256 and RSA-2048
//    (PKCS#1 v1.5; the SHA-256 digest is computed once, outside the timed loop, for every path);
//    1, 2 and 8 threads;
//  * TLS 1.3 handshakes/s with the server key on the token (through hwid) vs a software key of the
//    same type (in-process, BIO pair, client verifying with the default provider only), 1 and 2
//    threads, and PKCS#11 calls per handshake (hwid's "hwid-pkcs11-calls" counter).
// Prints ratios; no assertions.
//
// usage: pkcs11_bench [--seconds S] [--module-dir DIR] [--no-tls]
//        (makes its own token in a temporary SOFTHSM2_CONF)
// env:   HWID_BENCH_PKCS11_PROVIDER=/path/to/pkcs11.so adds pkcs11-provider to the signing table.
#define OPENSSL_SUPPRESS_DEPRECATED  // the libp11 ENGINE is an OpenSSL 1.x-style engine
#include <dlfcn.h>
#include <openssl/engine.h>
#include <openssl/err.h>
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
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

// Run calls op(thread) from `threads` threads for `seconds`; returns operations per second.
// `what` names the path in the message when an operation fails; with fatal = false a failure
// returns -1 instead of ending the program.
double Run(int threads, double seconds, const std::function<bool(int)>& op,
           const char* what = "an operation", bool fatal = true) {
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
  if (failed && fatal) Die(absl::StrCat(what, " failed during the run (", threads, " threads)"));
  if (failed) return -1;
  return static_cast<double>(total.load()) / elapsed;
}

// StoreKey loads the first private key OSSL_STORE finds at `uri` in `libctx` (null if none).
EVP_PKEY* StoreKey(OSSL_LIB_CTX* libctx, const std::string& uri) {
  OSSL_STORE_CTX* sc = OSSL_STORE_open_ex(uri.c_str(), libctx, nullptr, nullptr, nullptr, nullptr,
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
  return k;
}

const uint8_t kSha256Prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

}  // namespace

int main(int argc, char** argv) {
  double seconds = 2.0;
  std::string module_dir = HWID_PROVIDER_DIR;
  bool tls = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-tls") {
      tls = false;
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--module-dir" && i + 1 < argc) {
      module_dir = argv[++i];
    } else {
      Die(absl::StrCat("unknown argument '", a, "' (see the file comment)"));
    }
  }
  constexpr int kThreadCounts[] = {1, 2, 8};
  constexpr int kMaxThreads = 8;
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
  std::vector<RawCtx> raw(kMaxThreads);
  for (auto& r : raw) {
    if (fl->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &r.s) != CKR_OK) Die("raw session");
    r.ec = raw_find(r.s, "eckey");
    r.rsa = raw_find(r.s, "rsakey");
  }
  // One session copy per key (what pkcs11-provider and hwid sign with), made on the first raw
  // session and visible to all of them: session objects belong to the application.
  auto raw_copy = [&](CK_OBJECT_HANDLE source) {
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE t{CKA_TOKEN, &no, sizeof(no)};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    if (fl->C_CopyObject(raw[0].s, source, &t, 1, &h) != CKR_OK) Die("raw: C_CopyObject");
    return h;
  };
  const CK_OBJECT_HANDLE copy_ec = raw_copy(raw[0].ec);
  const CK_OBJECT_HANDLE copy_rsa = raw_copy(raw[0].rsa);
  auto raw_sign = [&](int t, bool is_ec, bool copy) {
    CK_MECHANISM m{is_ec ? CKM_ECDSA : CKM_RSA_PKCS, nullptr, 0};
    uint8_t sig[512];
    CK_ULONG len = sizeof(sig);
    const hwid::Bytes& in = is_ec ? digest : digest_info;
    const CK_OBJECT_HANDLE k =
        copy ? (is_ec ? copy_ec : copy_rsa) : (is_ec ? raw[t].ec : raw[t].rsa);
    return fl->C_SignInit(raw[t].s, &m, k) == CKR_OK &&
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

  // hwid's library on a second token object opened with session copies off: the token object.
  setenv("HWID_PKCS11_SESSION_COPY", "0", 1);
  auto token_nocopy = hwid::pkcs11::Token::Open(token_uri);
  unsetenv("HWID_PKCS11_SESSION_COPY");
  if (!token_nocopy.ok()) Die(std::string(token_nocopy.status().message()));
  auto ec_nocopy = (*token_nocopy)->FindKey("pkcs11:object=eckey");
  auto rsa_nocopy = (*token_nocopy)->FindKey("pkcs11:object=rsakey");
  if (!ec_nocopy.ok() || !rsa_nocopy.ok()) Die("finding the keys with copies off");
  auto lib_sign = [&](bool is_ec, bool copy) {
    hwid::SignParams o;
    o.scheme = is_ec ? hwid::SignScheme::kEcdsa : hwid::SignScheme::kRsaPkcs1;
    const auto& k = copy ? (is_ec ? *ec : *rsa) : (is_ec ? *ec_nocopy : *rsa_nocopy);
    return k->Sign(digest, o).ok();
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
    EVP_PKEY* k = StoreKey(pctx, u);
    if (k == nullptr) Die(absl::StrCat("provider: load ", u));
    return k;
  };
  EVP_PKEY* prov_ec = prov_key("eckey");
  EVP_PKEY* prov_rsa = prov_key("rsakey");
  auto prov_sign = [&](bool is_ec) { return evp_sign(pctx, is_ec ? prov_ec : prov_rsa, is_ec); };

  // latchset's pkcs11-provider, when the environment names its module: default + pkcs11 in a
  // library context of its own, the module from PKCS11_PROVIDER_MODULE, keys from pkcs11: URIs
  // with pin-value (the provider's own URI parser).
  OSSL_LIB_CTX* p11ctx = nullptr;
  OSSL_PROVIDER* p11def = nullptr;
  OSSL_PROVIDER* p11prov = nullptr;
  EVP_PKEY* p11_ec = nullptr;
  EVP_PKEY* p11_rsa = nullptr;
  std::string p11_note = "not installed (set HWID_BENCH_PKCS11_PROVIDER=/path/to/pkcs11.so)";
  if (const char* path = std::getenv("HWID_BENCH_PKCS11_PROVIDER"); path != nullptr && *path != 0) {
    setenv("PKCS11_PROVIDER_MODULE", kModule, 1);
    p11ctx = OSSL_LIB_CTX_new();
    p11def = OSSL_PROVIDER_load(p11ctx, "default");
    p11prov = OSSL_PROVIDER_load(p11ctx, path);
    if (p11def == nullptr || p11prov == nullptr) {
      p11_note = absl::StrCat("cannot load ", path);
    } else {
      auto load = [&](const char* label) {
        return StoreKey(p11ctx, absl::StrCat("pkcs11:token=bench;object=", label,
                                             ";type=private?pin-value=", kPin));
      };
      p11_ec = load("eckey");
      p11_rsa = load("rsakey");
      p11_note = p11_ec != nullptr && p11_rsa != nullptr
                     ? absl::StrCat("pkcs11-provider ", path)
                     : absl::StrCat("pkcs11-provider ", path, " loaded but found no key");
    }
    ERR_clear_error();
  }
  const bool have_p11 = p11_ec != nullptr && p11_rsa != nullptr;
  // pkcs11-provider 1.2.0 fails a few signatures with more threads than cores (OpenSSL reports
  // "asn1_item_embed_d2i: too small"): an operation is one *successful* signature, the failed
  // attempts are counted and shown next to the rate.
  std::atomic<uint64_t> p11_failed{0};
  auto p11_sign = [&](bool is_ec) {
    for (int attempt = 0; attempt < 10; ++attempt) {
      if (evp_sign(p11ctx, is_ec ? p11_ec : p11_rsa, is_ec)) return true;
      if (p11_failed.fetch_add(1, std::memory_order_relaxed) == 0) {
        ERR_print_errors_fp(stderr);  // the first failure's reason, from the failing thread
      }
      ERR_clear_error();
    }
    return false;
  };

  std::printf("PKCS#11 signing on SoftHSM2 %s, %u cores, %.1f s per cell; pkcs11-provider: %s\n",
              "2.6.1", std::thread::hardware_concurrency(), seconds, p11_note.c_str());
  std::printf("columns: raw C_SignInit+C_Sign on the token object | raw on a session copy | libp11 "
              "engine | hwid pkcs11/ with copies off (token object) | hwid pkcs11/ | hwid provider "
              "| pkcs11-provider; sig/s\n");
  std::printf("%-14s %-3s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "key", "thr", "raw tok",
              "raw copy", "engine", "lib tok", "lib", "provider", "p11prov", "lib/rtok",
              "lib/rcopy", "prov/rcpy", "prov/p11p");
  // The paths run interleaved in short slices (kRounds x seconds/kRounds each), so load from
  // other processes on a shared machine hits them alike.
  constexpr int kRounds = 8;
  for (bool is_ec : {true, false}) {
    for (int threads : kThreadCounts) {
      double rt = 0, rc = 0, g = 0, ht = 0, h = 0, p = 0, q = 0;
      p11_failed = 0;
      for (int round = 0; round < kRounds; ++round) {
        const double slice = seconds / kRounds;
        rt += Run(threads, slice, [&](int t) { return raw_sign(t, is_ec, false); },
                  "raw token") / kRounds;
        rc += Run(threads, slice, [&](int t) { return raw_sign(t, is_ec, true); },
                  "raw copy") / kRounds;
        g += Run(threads, slice, [&](int) { return engine_sign(is_ec); }, "engine") / kRounds;
        ht += Run(threads, slice, [&](int) { return lib_sign(is_ec, false); }, "lib tok") / kRounds;
        h += Run(threads, slice, [&](int) { return lib_sign(is_ec, true); }, "lib") / kRounds;
        p += Run(threads, slice, [&](int) { return prov_sign(is_ec); }, "provider") / kRounds;
        if (have_p11) {
          const double r = Run(threads, slice, [&](int) { return p11_sign(is_ec); },
                               "pkcs11-provider", false);
          q = q < 0 || r < 0 ? -1 : q + r / kRounds;
        }
      }
      // "failed": pkcs11-provider failed 10 attempts in a row in this cell.
      const std::string p11 = !have_p11 ? absl::StrFormat("%9s", "-")
                              : q < 0   ? absl::StrFormat("%9s", "failed")
                                        : absl::StrFormat("%9.0f", q);
      const std::string p11r = have_p11 && q > 0 ? absl::StrFormat("%9.3f", p / q)
                                                 : absl::StrFormat("%9s", "-");
      const std::string p11f =
          p11_failed.load() == 0 ? "" : absl::StrCat("  (pkcs11-provider: ", p11_failed.load(),
                                                     " failed signatures retried)");
      std::printf("%-14s %-3d %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %s %9.3f %9.3f %9.3f %s%s\n",
                  is_ec ? "ECDSA P-256" : "RSA-2048 v1.5", threads, rt, rc, g, ht, h, p,
                  p11.c_str(), h / rt, h / rc, p / rc, p11r.c_str(), p11f.c_str());
      std::fflush(stdout);
    }
  }
  if (!tls) {
    std::filesystem::remove_all(dir);
    return 0;
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
  EVP_PKEY_free(p11_ec);
  EVP_PKEY_free(p11_rsa);
  OSSL_PROVIDER_unload(p11prov);
  OSSL_PROVIDER_unload(p11def);
  OSSL_LIB_CTX_free(p11ctx);
  for (auto& r : raw) fl->C_CloseSession(r.s);
  EVP_PKEY_free(eng_ec);
  EVP_PKEY_free(eng_rsa);
  ENGINE_finish(e);
  ENGINE_free(e);
  std::filesystem::remove_all(dir);
  return 0;
}
