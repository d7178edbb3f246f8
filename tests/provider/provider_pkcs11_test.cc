// The hwid provider with PKCS#11 token keys: hwid.so loaded into a private OSSL_LIB_CTX, keys on a
// real SoftHSM2 token (private SOFTHSM2_CONF for this binary). Keys are made and their public
// halves read with hwid::pkcs11 directly; every signature the provider makes is verified with that
// public key by OpenSSL's default provider in the global library context (never loads hwid).
//
// HWID_TCTI points at a closed port: a token-key operation that touched the TPM would fail.
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "pkcs11/pkcs11.h"
#include "pkcs11/uri_pem.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/provider/provider_testing.h"

namespace hwid {
namespace {

using ::hwid::testing::Ctx;
using ::hwid::testing::Errors;
using ::hwid::testing::SoftHsm;
using ::hwid::testing::ToPem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPin[] = "Tk-4411-pin";
constexpr char kSoPin[] = "so-9911";

// The token and its keys, made once per binary.
struct Fixture {
  std::unique_ptr<SoftHsm> hsm;
  std::shared_ptr<pkcs11::Token> token;
  std::shared_ptr<pkcs11::Key> ec256, ec384, rsa2048, rsa3072;
};
Fixture* g_fix = nullptr;

class FixtureEnv : public ::testing::Environment {
 public:
  void TearDown() override {
    delete g_fix;
    g_fix = nullptr;
  }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new FixtureEnv);

Fixture* Fix() {
  if (g_fix != nullptr) {
    return g_fix;
  }
  auto f = std::make_unique<Fixture>();
  absl::StatusOr<std::unique_ptr<SoftHsm>> h = SoftHsm::Start("hwid-prov", kPin, kSoPin);
  if (!h.ok()) {
    ADD_FAILURE() << h.status();
    return nullptr;
  }
  f->hsm = std::move(*h);
  absl::StatusOr<std::shared_ptr<pkcs11::Token>> t = pkcs11::Token::Open(f->hsm->uri());
  if (!t.ok()) {
    ADD_FAILURE() << t.status();
    return nullptr;
  }
  f->token = *t;
  auto gen = [&](pkcs11::KeyAlg alg, const char* label) -> std::shared_ptr<pkcs11::Key> {
    absl::StatusOr<std::shared_ptr<pkcs11::Key>> k = f->token->GenerateKey(alg, label);
    EXPECT_TRUE(k.ok()) << k.status();
    return k.ok() ? *k : nullptr;
  };
  f->ec256 = gen(pkcs11::KeyAlg::kEcP256, "ec256");
  f->ec384 = gen(pkcs11::KeyAlg::kEcP384, "ec384");
  f->rsa2048 = gen(pkcs11::KeyAlg::kRsa2048, "rsa2048");
  f->rsa3072 = gen(pkcs11::KeyAlg::kRsa3072, "rsa3072");
  if (!f->ec256 || !f->ec384 || !f->rsa2048 || !f->rsa3072) {
    return nullptr;
  }
  g_fix = f.release();
  return g_fix;
}

// A UI_METHOD that answers every prompt with `g_pin_answer` (OpenSSL's passphrase path).
std::string g_pin_answer;
int UiRead(UI* ui, UI_STRING* uis) {
  if (UI_get_string_type(uis) == UIT_PROMPT || UI_get_string_type(uis) == UIT_VERIFY) {
    return UI_set_result(ui, uis, g_pin_answer.c_str()) == 0 ? 1 : 0;
  }
  return 1;
}
UI_METHOD* PinUi() {
  static UI_METHOD* m = [] {
    UI_METHOD* u = UI_create_method("hwid test PIN");
    UI_method_set_reader(u, UiRead);
    return u;
  }();
  return m;
}

// LoadUri loads a key through the store (pkcs11: URI). With `pin` non-null, the store's
// passphrase prompt is answered with it.
OsslPtr<EVP_PKEY> LoadUri(OSSL_LIB_CTX* ctx, const std::string& uri, const char* pin = nullptr) {
  g_pin_answer = pin == nullptr ? "" : pin;
  OSSL_STORE_CTX* sc = OSSL_STORE_open_ex(uri.c_str(), ctx, nullptr, pin ? PinUi() : nullptr,
                                          nullptr, nullptr, nullptr, nullptr);
  OsslPtr<EVP_PKEY> k;
  while (sc != nullptr && k == nullptr && !OSSL_STORE_eof(sc)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(sc);
    if (info != nullptr && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) {
      k.reset(OSSL_STORE_INFO_get1_PKEY(info));
    }
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(sc);
  return k;
}

// FromPem reads a key file the way nginx and curl do (PEM_read_bio_PrivateKey).
OsslPtr<EVP_PKEY> FromPem(OSSL_LIB_CTX* ctx, const std::string& pem, const char* pass = nullptr) {
  OsslPtr<BIO> b(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return OsslPtr<EVP_PKEY>(PEM_read_bio_PrivateKey_ex(b.get(), nullptr, nullptr,
                                                      const_cast<char*>(pass), ctx, nullptr));
}

struct SignCase {
  const char* md;
  int padding;  // 0 = ECDSA
  int salt;     // PSS only
};

// SignAndVerify signs with the provider key and verifies with `oracle` (default provider, global
// context). Returns an empty string on success, else what failed.
std::string SignAndVerify(OSSL_LIB_CTX* ctx, EVP_PKEY* key, EVP_PKEY* oracle, const SignCase& c,
                          const std::string& msg = "hwid token message") {
  OsslPtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit_ex(mctx.get(), &pctx, c.md, ctx, nullptr, key, nullptr) != 1) {
    return "DigestSignInit: " + Errors();
  }
  if (c.padding != 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, c.padding) != 1) {
    return "padding: " + Errors();
  }
  if (c.padding == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, c.salt) != 1) {
    return "salt: " + Errors();
  }
  size_t len = 0;
  const auto* m = reinterpret_cast<const unsigned char*>(msg.data());
  if (EVP_DigestSign(mctx.get(), nullptr, &len, m, msg.size()) != 1) {
    return "DigestSign(size): " + Errors();
  }
  Bytes sig(len);
  if (EVP_DigestSign(mctx.get(), sig.data(), &len, m, msg.size()) != 1) {
    return "DigestSign: " + Errors();
  }
  sig.resize(len);
  OsslPtr<EVP_MD_CTX> vctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* vp = nullptr;
  if (EVP_DigestVerifyInit_ex(vctx.get(), &vp, c.md, nullptr, "provider=default", oracle,
                              nullptr) != 1) {
    return "DigestVerifyInit: " + Errors();
  }
  if (c.padding != 0) {
    EVP_PKEY_CTX_set_rsa_padding(vp, c.padding);
  }
  if (c.padding == RSA_PKCS1_PSS_PADDING) {
    // Verify with the exact salt length asked for (RSA_PSS_SALTLEN_MAX is resolved by OpenSSL).
    EVP_PKEY_CTX_set_rsa_pss_saltlen(vp, c.salt);
  }
  if (EVP_DigestVerify(vctx.get(), sig.data(), sig.size(), m, msg.size()) != 1) {
    return "oracle rejected the signature: " + Errors();
  }
  return "";
}

class ProviderPkcs11Test : public ::testing::Test {
 protected:
  void SetUp() override {
    HWID_REQUIRE_SOFTHSM();
    ASSERT_NE(Fix(), nullptr);
    setenv("HWID_TCTI", "swtpm:host=127.0.0.1,port=1", 1);  // the TPM must not be needed
    setenv("HWID_PKCS11_MODULE", SoftHsm::kModule, 1);
    setenv("HWID_PKCS11_PIN", kPin, 1);
    ctx_ = Ctx::New();
    ASSERT_NE(ctx_, nullptr) << Errors();
    ERR_clear_error();
  }
  void TearDown() override {
    ctx_.reset();
    unsetenv("HWID_PKCS11_PIN");
    unsetenv("HWID_PKCS11_MODULE");
  }
  static std::string Uri(const char* label) {
    return absl::StrCat("pkcs11:token=hwid-prov;object=", label);
  }
  std::unique_ptr<Ctx> ctx_;
};

TEST_F(ProviderPkcs11Test, SignsEveryMechanismThroughTheStore) {
  struct Row {
    const char* label;
    std::shared_ptr<pkcs11::Key> key;
    std::vector<SignCase> cases;
  };
  const std::vector<Row> rows = {
      {"ec256", Fix()->ec256, {{"SHA256", 0, 0}, {"SHA384", 0, 0}, {"SHA224", 0, 0}}},
      {"ec384", Fix()->ec384, {{"SHA384", 0, 0}, {"SHA256", 0, 0}}},
      {"rsa2048",
       Fix()->rsa2048,
       {{"SHA256", RSA_PKCS1_PADDING, 0},
        {"SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST},
        {"SHA384", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_MAX},
        {"SHA512", RSA_PKCS1_PSS_PADDING, 20},
        // SHA-224 and SHA-1: every HashAlg reaches the token (CKM_RSA_PKCS DigestInfo, PSS MGF1).
        {"SHA224", RSA_PKCS1_PADDING, 0},
        {"SHA2-224", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST},
        {"SHA1", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST}}},
      {"rsa3072",
       Fix()->rsa3072,
       {{"SHA384", RSA_PKCS1_PADDING, 0},
        {"SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST}}},
  };
  for (const Row& r : rows) {
    OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri(r.label));
    ASSERT_NE(k, nullptr) << r.label << ": " << Errors();
    // The provider's public half is the token's.
    EXPECT_EQ(EVP_PKEY_eq(k.get(), r.key->public_key()), 1) << r.label;
    EXPECT_EQ(EVP_PKEY_get_bits(k.get()), r.key->bits()) << r.label;
    for (const SignCase& c : r.cases) {
      EXPECT_EQ(SignAndVerify(ctx_->get(), k.get(), r.key->public_key(), c), "")
          << r.label << " " << c.md << " padding " << c.padding << " salt " << c.salt;
    }
  }
}

TEST_F(ProviderPkcs11Test, KeyFileWrapperRoundTripsWithoutSecrets) {
  OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri("ec256"));
  ASSERT_NE(k, nullptr) << Errors();
  const std::string pem = ToPem(k.get());
  ASSERT_THAT(pem, HasSubstr("-----BEGIN PKCS#11 PROVIDER URI-----")) << Errors();
  EXPECT_THAT(pem, Not(HasSubstr("BEGIN PRIVATE KEY")));
  absl::StatusOr<std::string> uri = pkcs11::ParseUriFile(AsSpan(pem));
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_THAT(*uri, HasSubstr("object=ec256"));
  EXPECT_THAT(*uri, Not(HasSubstr(kPin)));
  EXPECT_THAT(*uri, Not(HasSubstr("pin-")));
  // Read back the way nginx/curl read key files, and sign.
  OsslPtr<EVP_PKEY> back = FromPem(ctx_->get(), pem);
  ASSERT_NE(back, nullptr) << Errors();
  EXPECT_EQ(SignAndVerify(ctx_->get(), back.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0}),
            "");
  // The DER form through OSSL_DECODER, RSA this time.
  OsslPtr<EVP_PKEY> rk = LoadUri(ctx_->get(), Uri("rsa2048"));
  ASSERT_NE(rk, nullptr) << Errors();
  OsslPtr<BIO> b(BIO_new(BIO_s_mem()));
  ASSERT_EQ(i2d_PrivateKey_bio(b.get(), rk.get()), 1) << Errors();
  char* d = nullptr;
  const long n = BIO_get_mem_data(b.get(), &d);
  Bytes der(d, d + n);
  EXPECT_TRUE(pkcs11::LooksLikeUriDer(der));
  EVP_PKEY* raw = nullptr;
  OSSL_DECODER_CTX* dctx = OSSL_DECODER_CTX_new_for_pkey(&raw, "DER", nullptr, nullptr, 0,
                                                         ctx_->get(), nullptr);
  const unsigned char* p = der.data();
  size_t left = der.size();
  ASSERT_EQ(OSSL_DECODER_from_data(dctx, &p, &left), 1) << Errors();
  OSSL_DECODER_CTX_free(dctx);
  OsslPtr<EVP_PKEY> rback(raw);
  EXPECT_EQ(SignAndVerify(ctx_->get(), rback.get(), Fix()->rsa2048->public_key(),
                          {"SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST}),
            "");
}

TEST_F(ProviderPkcs11Test, PrivatePartsNeverExport) {
  for (const char* label : {"ec256", "rsa2048"}) {
    OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri(label));
    ASSERT_NE(k, nullptr) << Errors();
    OSSL_PARAM* params = nullptr;
    EXPECT_NE(EVP_PKEY_todata(k.get(), EVP_PKEY_KEYPAIR, &params), 1) << label;
    OSSL_PARAM_free(params);
    params = nullptr;
    EXPECT_EQ(EVP_PKEY_todata(k.get(), EVP_PKEY_PUBLIC_KEY, &params), 1) << label;
    OSSL_PARAM_free(params);
    BIGNUM* bn = nullptr;
    EXPECT_NE(EVP_PKEY_get_bn_param(k.get(), OSSL_PKEY_PARAM_PRIV_KEY, &bn), 1) << label;
    EXPECT_NE(EVP_PKEY_get_bn_param(k.get(), OSSL_PKEY_PARAM_RSA_D, &bn), 1) << label;
    BN_free(bn);
    // Forcing the default provider's signature (what a software fallback would need) fails: the
    // private half cannot be exported to it.
    OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
    EXPECT_NE(EVP_DigestSignInit_ex(m.get(), nullptr, "SHA256", ctx_->get(), "provider=default",
                                    k.get(), nullptr),
              1)
        << label;
    ERR_clear_error();
  }
  // The token reports the key as sensitive and not extractable.
  absl::StatusOr<pkcs11::KeyAttributes> a = Fix()->ec256->ReadAttributes();
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->sensitive);
  EXPECT_FALSE(a->extractable);
}

// One TLS 1.3 (and 1.2) handshake over a BIO pair; the server key on the token, the client in the
// global context (default provider only) verifying the CertificateVerify.
bool Handshake(SSL_CTX* sctx, SSL_CTX* cctx, std::string* sigalg) {
  OsslPtr<SSL> s(SSL_new(sctx));
  OsslPtr<SSL> c(SSL_new(cctx));
  const bool ok = testing::Handshake(s.get(), c.get());
  if (sigalg != nullptr && ok) {
    int nid = NID_undef;
    SSL_get_peer_signature_type_nid(c.get(), &nid);
    *sigalg = OBJ_nid2sn(nid);
  }
  return ok;
}

TEST_F(ProviderPkcs11Test, TlsHandshakesCostOneTokenSignature) {
  for (const char* label : {"ec256", "rsa2048"}) {
    for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
      OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri(label));
      ASSERT_NE(k, nullptr) << Errors();
      OsslPtr<X509> cert = testing::SelfSigned(ctx_->get(), k.get(), "token", 7);
      ASSERT_NE(cert, nullptr) << Errors();
      OsslPtr<SSL_CTX> srv(SSL_CTX_new_ex(ctx_->get(), nullptr, TLS_server_method()));
      SSL_CTX_set_min_proto_version(srv.get(), version);
      SSL_CTX_set_max_proto_version(srv.get(), version);
      SSL_CTX_set_options(srv.get(), SSL_OP_NO_TICKET);
      ASSERT_EQ(SSL_CTX_use_certificate(srv.get(), cert.get()), 1);
      ASSERT_EQ(SSL_CTX_use_PrivateKey(srv.get(), k.get()), 1) << Errors();
      OsslPtr<SSL_CTX> cli(SSL_CTX_new_ex(nullptr, nullptr, TLS_client_method()));
      SSL_CTX_set_session_cache_mode(cli.get(), SSL_SESS_CACHE_OFF);
      OsslPtr<X509_STORE> trust(X509_STORE_new());
      X509_STORE_add_cert(trust.get(), cert.get());
      SSL_CTX_set1_verify_cert_store(cli.get(), trust.get());
      SSL_CTX_set_verify(cli.get(), SSL_VERIFY_PEER, nullptr);
      constexpr int kHandshakes = 5;
      const uint64_t before = ctx_->Param("hwid-pkcs11-calls");
      const uint64_t sigs_before = ctx_->Param("hwid-signatures");
      std::string sigalg;
      for (int i = 0; i < kHandshakes; ++i) {
        ASSERT_TRUE(Handshake(srv.get(), cli.get(), &sigalg))
            << label << " version " << version << ": " << Errors();
      }
      // One token signature (C_SignInit + C_Sign) per handshake, nothing else.
      EXPECT_EQ(ctx_->Param("hwid-signatures") - sigs_before, static_cast<uint64_t>(kHandshakes));
      EXPECT_EQ(ctx_->Param("hwid-pkcs11-calls") - before, static_cast<uint64_t>(2 * kHandshakes))
          << label << " version " << version;
      if (std::string(label) == "rsa2048") {
        EXPECT_EQ(sigalg, "RSASSA-PSS") << "TLS " << version;
      }
    }
  }
}

TEST_F(ProviderPkcs11Test, MutualTlsBothKeysOnTheToken) {
  OsslPtr<EVP_PKEY> sk = LoadUri(ctx_->get(), Uri("ec384"));
  OsslPtr<EVP_PKEY> ck = LoadUri(ctx_->get(), Uri("rsa3072"));
  ASSERT_NE(sk, nullptr) << Errors();
  ASSERT_NE(ck, nullptr) << Errors();
  OsslPtr<X509> scert = testing::SelfSigned(ctx_->get(), sk.get(), "token", 7);
  OsslPtr<X509> ccert = testing::SelfSigned(ctx_->get(), ck.get(), "token", 7);
  ASSERT_NE(scert, nullptr);
  ASSERT_NE(ccert, nullptr);
  OsslPtr<SSL_CTX> srv(SSL_CTX_new_ex(ctx_->get(), nullptr, TLS_server_method()));
  OsslPtr<SSL_CTX> cli(SSL_CTX_new_ex(ctx_->get(), nullptr, TLS_client_method()));
  ASSERT_EQ(SSL_CTX_use_certificate(srv.get(), scert.get()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey(srv.get(), sk.get()), 1);
  ASSERT_EQ(SSL_CTX_use_certificate(cli.get(), ccert.get()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey(cli.get(), ck.get()), 1);
  OsslPtr<X509_STORE> strust(X509_STORE_new());
  X509_STORE_add_cert(strust.get(), ccert.get());
  SSL_CTX_set1_verify_cert_store(srv.get(), strust.get());
  SSL_CTX_set_verify(srv.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  OsslPtr<X509_STORE> ctrust(X509_STORE_new());
  X509_STORE_add_cert(ctrust.get(), scert.get());
  SSL_CTX_set1_verify_cert_store(cli.get(), ctrust.get());
  SSL_CTX_set_verify(cli.get(), SSL_VERIFY_PEER, nullptr);
  const uint64_t sigs = ctx_->Param("hwid-signatures");
  ASSERT_TRUE(Handshake(srv.get(), cli.get(), nullptr)) << Errors();
  EXPECT_EQ(ctx_->Param("hwid-signatures") - sigs, 2u);  // one per side
}

TEST_F(ProviderPkcs11Test, ConcurrentSignersWithOneAndSeveralKeys) {
  OsslPtr<EVP_PKEY> ec = LoadUri(ctx_->get(), Uri("ec256"));
  OsslPtr<EVP_PKEY> rsa = LoadUri(ctx_->get(), Uri("rsa2048"));
  ASSERT_NE(ec, nullptr) << Errors();
  ASSERT_NE(rsa, nullptr) << Errors();
  constexpr int kThreads = 6;
  constexpr int kPerThread = 40;
  std::atomic<int> good{0};
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      const bool use_rsa = t % 3 == 2;  // four threads share the EC key, two the RSA key
      for (int i = 0; i < kPerThread; ++i) {
        const std::string msg = absl::StrCat("thread ", t, " message ", i);
        const std::string err =
            use_rsa ? SignAndVerify(ctx_->get(), rsa.get(), Fix()->rsa2048->public_key(),
                                    {"SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST}, msg)
                    : SignAndVerify(ctx_->get(), ec.get(), Fix()->ec256->public_key(),
                                    {"SHA256", 0, 0}, msg);
        if (err.empty()) {
          ++good;
        } else if (failures[t].empty()) {
          failures[t] = err;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  for (const std::string& f : failures) {
    EXPECT_EQ(f, "");
  }
}

TEST_F(ProviderPkcs11Test, ForkedChildSignsWithTheParentsKey) {
  OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri("ec256"));
  ASSERT_NE(k, nullptr) << Errors();
  ASSERT_EQ(SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0}), "");
  fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int bad = 0;
    for (int i = 0; i < 5; ++i) {
      const std::string err = SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(),
                                            {"SHA256", 0, 0}, absl::StrCat("child ", i));
      if (!err.empty()) {
        std::fprintf(stderr, "child: %s\n", err.c_str());
        ++bad;
      }
    }
    _exit(bad == 0 ? 0 : 10);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The parent still signs after the child's re-initialisation.
  EXPECT_EQ(SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0}), "");
}

TEST_F(ProviderPkcs11Test, ModuleAndPinFromOpensslCnf) {
  unsetenv("HWID_PKCS11_PIN");
  unsetenv("HWID_PKCS11_MODULE");
  const std::string pin_file = Fix()->hsm->dir() + "/pin.txt";
  ASSERT_TRUE(WriteFile(pin_file, AsSpan(absl::StrCat(kPin, "\n")), 0600).ok());
  std::unique_ptr<Ctx> c = Ctx::New(absl::StrCat("pkcs11-module-path = ", SoftHsm::kModule,
                                                 "\npkcs11-pin-source = file:", pin_file, "\n"));
  ASSERT_NE(c, nullptr) << Errors();
  OsslPtr<EVP_PKEY> k = LoadUri(c->get(), Uri("rsa2048"));
  ASSERT_NE(k, nullptr) << Errors();
  EXPECT_EQ(SignAndVerify(c->get(), k.get(), Fix()->rsa2048->public_key(),
                          {"SHA256", RSA_PKCS1_PADDING, 0}),
            "");
  // A pin-source that names a missing file is an error naming the setting, not a silent no-login.
  std::unique_ptr<Ctx> bad = Ctx::New(absl::StrCat("pkcs11-module-path = ", SoftHsm::kModule,
                                                   "\npkcs11-pin-source = file:/nonexistent/pin\n"));
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(LoadUri(bad->get(), Uri("ec256")), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("pkcs11-pin-source"));
}

TEST_F(ProviderPkcs11Test, PinFromThePassphraseCallback) {
  unsetenv("HWID_PKCS11_PIN");
  OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri("ec256"), kPin);
  ASSERT_NE(k, nullptr) << Errors();
  EXPECT_EQ(SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0}), "");
}

TEST_F(ProviderPkcs11Test, BadInputGivesClearErrors) {
  struct Row {
    std::string uri;
    const char* pin;  // answered to the passphrase prompt (with HWID_PKCS11_PIN unset)
    std::vector<std::string> expect;
  };
  const std::vector<Row> rows = {
      {Uri("no-such-key"), nullptr, {"PKCS#11 key load failed", "no-such-key"}},
      {"pkcs11:token=no-such-token;object=k", nullptr, {"no token matches", "hwid-prov"}},
      {"pkcs11:token=hwid-prov", nullptr, {"names no key"}},
      {"pkcs11:token=hwid-prov;object=ec256;type=cert", nullptr, {"type=cert"}},
      {"pkcs11:token=hwid-prov;object=ec256?module-path=/nonexistent/libnothing.so", nullptr,
       {"/nonexistent/libnothing.so"}},
      {"pkcs11:token=hwid-prov;id=%zz", nullptr, {"bad PKCS#11 URI"}},
  };
  for (const Row& r : rows) {
    if (r.pin != nullptr) {
      unsetenv("HWID_PKCS11_PIN");
    } else {
      setenv("HWID_PKCS11_PIN", kPin, 1);
    }
    ERR_clear_error();
    EXPECT_EQ(LoadUri(ctx_->get(), r.uri, r.pin), nullptr) << r.uri;
    const std::string errs = Errors();
    for (const std::string& e : r.expect) {
      EXPECT_THAT(errs, HasSubstr(e)) << r.uri;
    }
    EXPECT_THAT(errs, Not(HasSubstr(kPin))) << r.uri;
  }
  // Key files: broken wrapper, pin-value inside, a URI naming another token.
  const std::string broken =
      "-----BEGIN PKCS#11 PROVIDER URI-----\nMAMaAQA=\n-----END PKCS#11 PROVIDER URI-----\n";
  EXPECT_EQ(FromPem(ctx_->get(), broken), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("bad PKCS#11 URI or URI key file"));
  absl::StatusOr<std::string> other = pkcs11::EncodeUriPem("pkcs11:token=elsewhere;object=ec256");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(FromPem(ctx_->get(), *other), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("no token matches"));
}

// A wrong PIN is a clear error, tried once (never a retry loop that locks the token), and the
// right PIN works afterwards. In a child that logs the process out first.
TEST_F(ProviderPkcs11Test, WrongPinIsClearAndNotRetried) {
  fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    unsetenv("HWID_PKCS11_PIN");
    // Finish the post-fork re-initialisation (and automatic re-login) first, then log out.
    OsslPtr<EVP_PKEY> warm = LoadUri(ctx_->get(), Uri("rsa2048") + ";type=private", kPin);
    if (warm == nullptr) _exit(19);
    if (!Fix()->hsm->LogOutThisProcess().ok()) _exit(20);
    // Distinct spellings of the URI, so nothing loaded before is reused.
    ERR_clear_error();
    if (LoadUri(ctx_->get(), Uri("ec256") + ";type=private", "000000") != nullptr) _exit(21);
    std::string errs = Errors();
    std::fprintf(stderr, "wrong PIN (store): %s\n", errs.c_str());
    if (errs.find("PKCS#11 login failed") == std::string::npos) _exit(22);
    if (errs.find("CKR_PIN_INCORRECT") == std::string::npos) _exit(23);
    if (errs.find(kPin) != std::string::npos || errs.find("000000") != std::string::npos) _exit(24);
    absl::StatusOr<std::string> file = pkcs11::EncodeUriPem(Uri("ec384"));
    if (!file.ok()) _exit(25);
    if (FromPem(ctx_->get(), *file, "111111") != nullptr) _exit(26);
    errs = Errors();
    std::fprintf(stderr, "wrong PIN (file): %s\n", errs.c_str());
    if (errs.find("CKR_PIN_INCORRECT") == std::string::npos) _exit(27);
    // Two failures so far; SoftHSM2 would lock only after many. The right PIN still works.
    OsslPtr<EVP_PKEY> k = FromPem(ctx_->get(), *file, kPin);
    if (k == nullptr) {
      std::fprintf(stderr, "right PIN: %s\n", Errors().c_str());
      _exit(28);
    }
    if (!SignAndVerify(ctx_->get(), k.get(), Fix()->ec384->public_key(), {"SHA384", 0, 0})
             .empty()) {
      _exit(29);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child crashed";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// The module finalised under the provider (a token removed, another library calling C_Finalize):
// the next signature fails with a clear error and no crash. In a child, so the module stays usable
// for the other tests.
TEST_F(ProviderPkcs11Test, ModuleFinalisedMidRunGivesClearError) {
  OsslPtr<EVP_PKEY> k = LoadUri(ctx_->get(), Uri("ec256"));
  ASSERT_NE(k, nullptr) << Errors();
  fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Sign once in the child first (re-initialises the module after fork), then pull it away.
    if (!SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0}).empty()) {
      _exit(11);
    }
    void* dl = dlopen(SoftHsm::kModule, RTLD_NOW | RTLD_NOLOAD);
    auto get = dl ? reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList")) : nullptr;
    CK_FUNCTION_LIST* fl = nullptr;
    if (get == nullptr || get(&fl) != CKR_OK || fl->C_Finalize(nullptr) != CKR_OK) _exit(12);
    const std::string err =
        SignAndVerify(ctx_->get(), k.get(), Fix()->ec256->public_key(), {"SHA256", 0, 0});
    std::fprintf(stderr, "after C_Finalize: %s\n", err.c_str());
    if (err.find("CKR_CRYPTOKI_NOT_INITIALIZED") == std::string::npos) _exit(13);
    if (err.find("PKCS#11") == std::string::npos) _exit(14);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child crashed (signal " << WTERMSIG(status) << ")";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace hwid
