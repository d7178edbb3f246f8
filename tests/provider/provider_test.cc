// The hwid provider module loaded into a private OSSL_LIB_CTX, against the binary's swtpm. Every
// signature is verified by OpenSSL's default provider in the global library context (which never
// loads hwid): an independent oracle. The public key used by the oracle comes from the key file
// through tpm/wire, not from the provider, whenever a key file exists.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/wait.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "tests/provider/provider_testing.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tests/testing/run_shell.h"

namespace hwid {
namespace {

using ::hwid::testing::Ctx;
using ::hwid::testing::Errors;
using ::hwid::testing::Handshake;
using ::hwid::testing::SelfSigned;
using ::hwid::testing::ToPem;
using ::testing::HasSubstr;

// Shell runs a shell command (TPM2TOOLS_TCTI/TPM2OPENSSL_TCTI point at the swtpm); returns its
// exit status and combined output.
std::pair<int, std::string> Shell(const std::string& cmd) {
  ::hwid::testing::ShellResult r = ::hwid::testing::RunShell(cmd);
  return {r.exit_code, r.output};
}

std::string ProviderName(const EVP_PKEY* k) {
  const OSSL_PROVIDER* p = EVP_PKEY_get0_provider(k);
  return p == nullptr ? "(legacy)" : OSSL_PROVIDER_get0_name(p);
}

struct Alg {
  const char* name;
  const char* keytype;
  const char* group;  // EC
  int bits;           // RSA
};

OsslPtr<EVP_PKEY> Generate(OSSL_LIB_CTX* ctx, const Alg& alg, const char* auth = nullptr) {
  OsslPtr<EVP_PKEY_CTX> g(EVP_PKEY_CTX_new_from_name(ctx, alg.keytype, "provider=hwid"));
  if (g == nullptr || EVP_PKEY_keygen_init(g.get()) != 1) {
    return nullptr;
  }
  std::vector<OSSL_PARAM> params;
  size_t bits = static_cast<size_t>(alg.bits);
  if (alg.group != nullptr) {
    params.push_back(OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                                      const_cast<char*>(alg.group), 0));
  } else {
    params.push_back(OSSL_PARAM_construct_size_t(OSSL_PKEY_PARAM_RSA_BITS, &bits));
  }
  if (auth != nullptr) {
    params.push_back(OSSL_PARAM_construct_utf8_string("user-auth", const_cast<char*>(auth), 0));
  }
  params.push_back(OSSL_PARAM_construct_end());
  EVP_PKEY* k = nullptr;
  if (EVP_PKEY_CTX_set_params(g.get(), params.data()) != 1 || EVP_PKEY_generate(g.get(), &k) != 1) {
    return nullptr;
  }
  return OsslPtr<EVP_PKEY>(k);
}

int PassCb(char* buf, int size, int, void* u) {
  const auto* s = static_cast<const std::string*>(u);
  if (s == nullptr || static_cast<int>(s->size()) > size) {
    return -1;
  }
  std::copy(s->begin(), s->end(), buf);
  return static_cast<int>(s->size());
}

OsslPtr<EVP_PKEY> FromPem(OSSL_LIB_CTX* ctx, const std::string& pem,
                          const std::string* pass = nullptr) {
  OsslPtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return OsslPtr<EVP_PKEY>(PEM_read_bio_PrivateKey_ex(bio.get(), nullptr, PassCb,
                                                      const_cast<std::string*>(pass), ctx,
                                                      nullptr));
}

// OraclePublicFromFile is the key file's public key, decoded by tpm/wire into the default
// provider (global library context): independent of the provider.
OsslPtr<EVP_PKEY> OraclePublicFromFile(const std::string& pem) {
  auto kf = wire::ParseTpmKeyFile(AsSpan(pem));
  if (!kf.ok()) {
    return nullptr;
  }
  auto pub = wire::ParsePublic(kf->pub);
  if (!pub.ok()) {
    return nullptr;
  }
  auto der = wire::PublicKeyDer(pub->publicArea);
  if (!der.ok()) {
    return nullptr;
  }
  const unsigned char* p = der->data();
  return OsslPtr<EVP_PKEY>(d2i_PUBKEY_ex(nullptr, &p, static_cast<long>(der->size()), nullptr,
                                         nullptr));
}

// OraclePublic re-decodes the provider's SubjectPublicKeyInfo export in the global context.
OsslPtr<EVP_PKEY> OraclePublic(EVP_PKEY* k) {
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(k, &der);
  if (n <= 0) {
    return nullptr;
  }
  const unsigned char* p = der;
  OsslPtr<EVP_PKEY> out(d2i_PUBKEY_ex(nullptr, &p, n, nullptr, nullptr));
  OPENSSL_free(der);
  return out;
}

struct SignOpts {
  const char* md = "SHA256";
  int pad = 0;        // RSA: RSA_PKCS1_PADDING / RSA_PKCS1_PSS_PADDING
  int saltlen = RSA_PSS_SALTLEN_DIGEST;
};

// Sign hashes in software and signs through the key's provider (EVP_DigestSign).
absl::StatusOr<Bytes> Sign(OSSL_LIB_CTX* ctx, EVP_PKEY* k, ByteSpan msg, const SignOpts& o = {}) {
  OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit_ex(m.get(), &pctx, o.md, ctx, nullptr, k, nullptr) != 1) {
    return absl::InternalError(absl::StrCat("DigestSignInit: ", Errors()));
  }
  if (o.pad != 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, o.pad) != 1) {
    return absl::InternalError(absl::StrCat("padding: ", Errors()));
  }
  if (o.pad == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, o.saltlen) != 1) {
    return absl::InternalError(absl::StrCat("saltlen: ", Errors()));
  }
  size_t len = 0;
  if (EVP_DigestSign(m.get(), nullptr, &len, msg.data(), msg.size()) != 1) {
    return absl::InternalError(absl::StrCat("DigestSign(size): ", Errors()));
  }
  Bytes sig(len);
  if (EVP_DigestSign(m.get(), sig.data(), &len, msg.data(), msg.size()) != 1) {
    return absl::InternalError(absl::StrCat("DigestSign: ", Errors()));
  }
  sig.resize(len);
  return sig;
}

// OracleVerify verifies with OpenSSL's default provider (global library context).
bool OracleVerify(EVP_PKEY* pub, ByteSpan msg, ByteSpan sig, const SignOpts& o = {}) {
  if (ProviderName(pub) != "default") {
    ADD_FAILURE() << "oracle key is not a default-provider key: " << ProviderName(pub);
    return false;
  }
  OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestVerifyInit_ex(m.get(), &pctx, o.md, nullptr, nullptr, pub, nullptr) != 1) {
    return false;
  }
  if (o.pad != 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, o.pad) != 1) {
    return false;
  }
  if (o.pad == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, o.saltlen) != 1) {
    return false;
  }
  const bool ok = EVP_DigestVerify(m.get(), sig.data(), sig.size(), msg.data(), msg.size()) == 1;
  ERR_clear_error();
  return ok;
}

size_t TransientCount() {
  auto t = tpm::Tpm::Open(testing::GlobalSwtpm().tcti());
  if (!t.ok()) {
    ADD_FAILURE() << t.status().message();
    return 999;
  }
  auto h = (*t)->TransientHandles();
  return h.ok() ? h->size() : 999;
}

// These tests check the keep-loaded path (one TPM command per signature): keys on the raw swtpm
// must not be released by the idle timer in the middle of a test. The release after idle, per-use
// signing under contention and many processes are provider_shared_tpm_test's.
const bool kKeepKeysLoaded = setenv("HWID_TPM_IDLE_RELEASE_MS", "3600000", 1) == 0;

class ProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Ctx::New();
    ASSERT_NE(ctx_, nullptr) << Errors();
    char tmpl[] = "/tmp/hwid-provtest-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    ctx_.reset();  // provider teardown flushes every key it loaded
    EXPECT_EQ(TransientCount(), 0u) << "the provider left transient objects in the TPM";
    Shell("tpm2_flushcontext -t");
    Shell(absl::StrCat("rm -rf '", dir_, "'"));
  }
  std::unique_ptr<Ctx> ctx_;
  std::string dir_;
};

const Alg kAlgs[] = {
    {"EcP256", "EC", "P-256", 0},
    {"EcP384", "EC", "P-384", 0},
    {"Rsa2048", "RSA", nullptr, 2048},
    {"Rsa3072", "RSA", nullptr, 3072},
};

class GenTest : public ProviderTest, public ::testing::WithParamInterface<Alg> {};

TEST_P(GenTest, GenerateWriteReadSignVerify) {
  const Alg& alg = GetParam();
  OsslPtr<EVP_PKEY> gen = Generate(ctx_->get(), alg);
  ASSERT_NE(gen, nullptr) << Errors();
  EXPECT_EQ(ProviderName(gen.get()), "hwid");
  const std::string pem = ToPem(gen.get());
  ASSERT_THAT(pem, HasSubstr("-----BEGIN TSS2 PRIVATE KEY-----")) << Errors();
  gen.reset();

  OsslPtr<EVP_PKEY> key = FromPem(ctx_->get(), pem);
  ASSERT_NE(key, nullptr) << Errors();
  EXPECT_EQ(ProviderName(key.get()), "hwid");
  EXPECT_EQ(EVP_PKEY_get_bits(key.get()), alg.group != nullptr
                                              ? (std::string(alg.group) == "P-256" ? 256 : 384)
                                              : alg.bits);
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(pem);
  ASSERT_NE(oracle, nullptr);
  OsslPtr<EVP_PKEY> exported = OraclePublic(key.get());
  ASSERT_NE(exported, nullptr) << Errors();
  EXPECT_EQ(EVP_PKEY_eq(oracle.get(), exported.get()), 1);

  const std::string msg = absl::StrCat("message signed by a TPM ", alg.name, " key");
  std::vector<SignOpts> variants;
  if (alg.group != nullptr) {
    variants = {{"SHA256"}, {"SHA384"}, {"SHA512"}};
  } else {
    variants = {{"SHA256", RSA_PKCS1_PADDING},
                {"SHA384", RSA_PKCS1_PADDING},
                {"SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST},
                {"SHA384", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST}};
  }
  for (const SignOpts& o : variants) {
    SCOPED_TRACE(absl::StrCat(o.md, " pad ", o.pad));
    auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg), o);
    ASSERT_TRUE(sig.ok()) << sig.status().message();
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(msg), *sig, o));
    // A different message must not verify (the oracle can fail).
    EXPECT_FALSE(OracleVerify(oracle.get(), AsSpan(msg + "!"), *sig, o));
  }
}

INSTANTIATE_TEST_SUITE_P(Algs, GenTest, ::testing::ValuesIn(kAlgs),
                         [](const auto& tp) { return std::string(tp.param.name); });

TEST_F(ProviderTest, OneTpmCommandPerSignature) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  const std::string msg = "count me";
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  const uint64_t before = ctx_->Commands();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  }
  EXPECT_EQ(ctx_->Commands() - before, 5u);
}

// While another process on this raw TPM found no free object slot (it touched the busy file,
// docs/provider.md), a key holds no slot between signatures: each signature loads the saved
// context, signs and flushes (3 commands); once the signal is old, the key stays loaded again
// (1 command per signature).
TEST_F(ProviderTest, SlotContentionSwitchesToPerUseSigningAndBack) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(ToPem(key.get()));
  const std::string msg = "contention";
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  ASSERT_EQ(TransientCount(), 1u) << "free slots: the key stays loaded";

  const std::string& tcti = testing::GlobalSwtpm().tcti();
  const std::string busy = absl::StrCat(
      "/tmp/hwid-tpm-busy-",
      Sha256Hex(ByteSpan(reinterpret_cast<const uint8_t*>(tcti.data()), tcti.size())).substr(0, 16));
  ASSERT_EQ(Shell(absl::StrCat("touch '", busy, "'")).first, 0);
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());  // flushes the kept key first
  EXPECT_EQ(TransientCount(), 0u) << "busy: no slot held between signatures";
  for (int i = 0; i < 3; ++i) {
    const uint64_t before = ctx_->Commands();
    auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
    ASSERT_TRUE(sig.ok()) << sig.status().message();
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(msg), *sig));
    EXPECT_EQ(ctx_->Commands() - before, 3u) << "ContextLoad, Sign, FlushContext";
    EXPECT_EQ(TransientCount(), 0u);
  }

  // The signal is older than the window: keep the key loaded again.
  ASSERT_EQ(Shell(absl::StrCat("touch -d '-1 minute' '", busy, "'")).first, 0);
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());  // loads the saved context
  const uint64_t before = ctx_->Commands();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  }
  EXPECT_EQ(ctx_->Commands() - before, 3u);
  EXPECT_EQ(TransientCount(), 1u);
  unlink(busy.c_str());
}

// The TPM has no SHA-224: a TPM key refuses it when the digest is set, before any TPM command.
TEST_F(ProviderTest, TpmKeyRefusesSha224AtInit) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  const uint64_t before = ctx_->Commands();
  OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
  EXPECT_NE(EVP_DigestSignInit_ex(m.get(), nullptr, "SHA224", ctx_->get(), nullptr, key.get(),
                                  nullptr),
            1);
  EXPECT_THAT(Errors(), HasSubstr("not supported for TPM signatures"));
  EXPECT_EQ(ctx_->Commands(), before);
}

// Streaming digest-sign (Init, Update..., Final): several chunks, no chunk at all (empty message),
// a context copied mid-stream, and the streaming verify of our own signature.
TEST_F(ProviderTest, StreamingDigestSignAndVerify) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(ToPem(key.get()));
  ASSERT_NE(oracle, nullptr);
  auto stream_sign = [&](const std::vector<std::string>& chunks, EVP_MD_CTX* m) -> Bytes {
    for (const std::string& c : chunks) {
      EXPECT_EQ(EVP_DigestSignUpdate(m, c.data(), c.size()), 1) << Errors();
    }
    size_t len = 0;
    EXPECT_EQ(EVP_DigestSignFinal(m, nullptr, &len), 1) << Errors();
    Bytes sig(len);
    EXPECT_EQ(EVP_DigestSignFinal(m, sig.data(), &len), 1) << Errors();
    sig.resize(len);
    return sig;
  };
  auto new_sign_ctx = [&]() {
    OsslPtr<EVP_MD_CTX> m(EVP_MD_CTX_new());
    EXPECT_EQ(EVP_DigestSignInit_ex(m.get(), nullptr, "SHA256", ctx_->get(), nullptr, key.get(),
                                    nullptr),
              1)
        << Errors();
    return m;
  };
  {
    OsslPtr<EVP_MD_CTX> m = new_sign_ctx();
    const Bytes sig = stream_sign({"streamed ", "in three ", "chunks"}, m.get());
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(std::string("streamed in three chunks")), sig));
  }
  {
    OsslPtr<EVP_MD_CTX> m = new_sign_ctx();
    const Bytes sig = stream_sign({}, m.get());
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(std::string()), sig));
  }
  {
    OsslPtr<EVP_MD_CTX> m = new_sign_ctx();
    ASSERT_EQ(EVP_DigestSignUpdate(m.get(), "common ", 7), 1) << Errors();
    OsslPtr<EVP_MD_CTX> copy(EVP_MD_CTX_new());
    ASSERT_EQ(EVP_MD_CTX_copy_ex(copy.get(), m.get()), 1) << Errors();
    const Bytes a = stream_sign({"prefix, then a"}, m.get());
    const Bytes b = stream_sign({"prefix, then b"}, copy.get());
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(std::string("common prefix, then a")), a));
    EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(std::string("common prefix, then b")), b));

    // Streaming verify through hwid (software, with the key's public half).
    OsslPtr<EVP_MD_CTX> v(EVP_MD_CTX_new());
    ASSERT_EQ(EVP_DigestVerifyInit_ex(v.get(), nullptr, "SHA256", ctx_->get(), nullptr, key.get(),
                                      nullptr),
              1)
        << Errors();
    ASSERT_EQ(EVP_DigestVerifyUpdate(v.get(), "common prefix, ", 15), 1);
    ASSERT_EQ(EVP_DigestVerifyUpdate(v.get(), "then a", 6), 1);
    EXPECT_EQ(EVP_DigestVerifyFinal(v.get(), a.data(), a.size()), 1) << Errors();
    ERR_clear_error();
  }
}

TEST_F(ProviderTest, PreHashedSignWithPkeySign) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  const std::string pem = ToPem(key.get());
  const std::string msg = "pkeyutl -sign";
  auto digest = wire::Hash(TPM2_ALG_SHA256, AsSpan(msg));
  ASSERT_TRUE(digest.ok());
  OsslPtr<EVP_PKEY_CTX> pctx(EVP_PKEY_CTX_new_from_pkey(ctx_->get(), key.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_sign_init(pctx.get()), 1) << Errors();
  size_t len = 0;
  ASSERT_EQ(EVP_PKEY_sign(pctx.get(), nullptr, &len, digest->data(), digest->size()), 1);
  Bytes sig(len);
  ASSERT_EQ(EVP_PKEY_sign(pctx.get(), sig.data(), &len, digest->data(), digest->size()), 1)
      << Errors();
  sig.resize(len);
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(pem).get(), AsSpan(msg), sig));
}

TEST_F(ProviderTest, PublicExportWorksPrivateExportIsRefused) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OSSL_PARAM* pub = nullptr;
  ASSERT_EQ(EVP_PKEY_todata(key.get(), EVP_PKEY_PUBLIC_KEY, &pub), 1) << Errors();
  EXPECT_NE(OSSL_PARAM_locate(pub, OSSL_PKEY_PARAM_PUB_KEY), nullptr);
  OSSL_PARAM_free(pub);
  OSSL_PARAM* all = nullptr;
  EXPECT_NE(EVP_PKEY_todata(key.get(), EVP_PKEY_KEYPAIR, &all), 1);
  OSSL_PARAM_free(all);
  BIGNUM* priv = nullptr;
  EXPECT_NE(EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_PRIV_KEY, &priv), 1);
  BN_free(priv);
  // PKCS#8 through the default provider's encoder is impossible; our encoder writes the TPM
  // key file only (a wrapped blob).
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  ASSERT_EQ(PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr),
            1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  EXPECT_THAT(std::string(data, static_cast<size_t>(n)), ::testing::Not(HasSubstr("BEGIN PRIVATE KEY")));
  ERR_clear_error();
}

TEST_F(ProviderTest, PublicOnlyKeyNeverSignsInSoftware) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OSSL_PARAM* pub = nullptr;
  ASSERT_EQ(EVP_PKEY_todata(key.get(), EVP_PKEY_PUBLIC_KEY, &pub), 1);
  OsslPtr<EVP_PKEY_CTX> fctx(EVP_PKEY_CTX_new_from_name(ctx_->get(), "EC", "provider=hwid"));
  EVP_PKEY* p = nullptr;
  ASSERT_EQ(EVP_PKEY_fromdata_init(fctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_fromdata(fctx.get(), &p, EVP_PKEY_PUBLIC_KEY, pub), 1) << Errors();
  OSSL_PARAM_free(pub);
  OsslPtr<EVP_PKEY> public_only(p);
  const std::string msg = "x";
  auto sig = Sign(ctx_->get(), public_only.get(), AsSpan(msg));
  ASSERT_FALSE(sig.ok());
  EXPECT_THAT(std::string(sig.status().message()), HasSubstr("public key only"));

  // A software private key is not imported into hwid either.
  OsslPtr<EVP_PKEY> sw(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  OSSL_PARAM* swp = nullptr;
  ASSERT_EQ(EVP_PKEY_todata(sw.get(), EVP_PKEY_KEYPAIR, &swp), 1);
  EVP_PKEY* q = nullptr;
  ASSERT_EQ(EVP_PKEY_fromdata_init(fctx.get()), 1);
  EXPECT_NE(EVP_PKEY_fromdata(fctx.get(), &q, EVP_PKEY_KEYPAIR, swp), 1);
  EVP_PKEY_free(q);
  OSSL_PARAM_free(swp);
  EXPECT_THAT(Errors(), HasSubstr("does not import software private keys"));
}

// --- key files from other tools ---

TEST_F(ProviderTest, Tpm2ToolsKeyFileSigns) {
  auto [rc, out] = Shell(absl::StrCat(
      "cd '", dir_, "' && tpm2_createprimary -C o -g sha256 -G ecc256:null:aes128cfb "
      "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' "
      "-c prim.ctx >/dev/null && tpm2_create -C prim.ctx -G ecc256:ecdsa-sha256 -u k.pub -r k.priv "
      ">/dev/null && tpm2_encodeobject -C prim.ctx -u k.pub -r k.priv -o tools.pem && "
      "tpm2_flushcontext -t"));
  ASSERT_EQ(rc, 0) << out;
  auto pem = ReadFile(dir_ + "/tools.pem");
  ASSERT_TRUE(pem.ok());
  const std::string text(pem->begin(), pem->end());
  OsslPtr<EVP_PKEY> key = FromPem(ctx_->get(), text);
  ASSERT_NE(key, nullptr) << Errors();
  const std::string msg = "tpm2-tools key, signed through hwid";
  auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(text).get(), AsSpan(msg), *sig));
}

TEST_F(ProviderTest, Tpm2OpensslKeyFilesInteroperateBothWays) {
  // tpm2-openssl -> hwid
  auto [rc, out] = Shell(absl::StrCat(
      "cd '", dir_, "' && openssl genpkey -provider tpm2 -provider base -algorithm EC "
      "-pkeyopt group:P-256 -out t2.pem && tpm2_flushcontext -t"));
  ASSERT_EQ(rc, 0) << out;
  auto pem = ReadFile(dir_ + "/t2.pem");
  ASSERT_TRUE(pem.ok());
  const std::string text(pem->begin(), pem->end());
  OsslPtr<EVP_PKEY> key = FromPem(ctx_->get(), text);
  ASSERT_NE(key, nullptr) << Errors();
  const std::string msg = "tpm2-openssl key, signed through hwid";
  auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(text).get(), AsSpan(msg), *sig));

  // hwid -> tpm2-openssl: tpm2-openssl signs a digest with our key file.
  OsslPtr<EVP_PKEY> ours = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(ours, nullptr);
  const std::string ours_pem = ToPem(ours.get());
  ASSERT_TRUE(WriteFile(dir_ + "/hwid.pem", AsSpan(ours_pem)).ok());
  // Without a resource manager the two programs share swtpm's 3 object slots: freeing our keys
  // flushes them, leaving room for tpm2-openssl's primary and key.
  key.reset();
  ours.reset();
  ASSERT_EQ(TransientCount(), 0u);
  const std::string msg2 = "hwid key, signed through tpm2-openssl";
  ASSERT_TRUE(WriteFile(dir_ + "/msg", AsSpan(msg2)).ok());
  auto [rc2, out2] = Shell(absl::StrCat(
      "cd '", dir_, "' && openssl dgst -sha256 -binary -out dgst msg && "
      "openssl pkeyutl -provider tpm2 -provider base -sign -inkey hwid.pem -in dgst -out sig; "
      "r=$?; tpm2_flushcontext -t; exit $r"));
  ASSERT_EQ(rc2, 0) << out2;
  auto sig2 = ReadFile(dir_ + "/sig");
  ASSERT_TRUE(sig2.ok());
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(ours_pem).get(), AsSpan(msg2), *sig2));
}

// --- persistent handles ---

TEST_F(ProviderTest, HandleUriLoadsPersistentKey) {
  constexpr uint32_t kHandle = 0x81000123;
  auto t = tpm::Tpm::Open(testing::GlobalSwtpm().tcti());
  ASSERT_TRUE(t.ok());
  static_cast<void>((*t)->EvictPersistent(kHandle));
  auto kf = (*t)->CreateKey(wire::KeyAlg::kEcP256);
  ASSERT_TRUE(kf.ok()) << kf.status().message();
  {
    auto loaded = (*t)->LoadKey(*kf);
    ASSERT_TRUE(loaded.ok());
    ASSERT_TRUE((*t)->Persist(*loaded, kHandle).ok());
  }
  auto pem = wire::EncodeTpmKeyFilePem(*kf);
  ASSERT_TRUE(pem.ok());

  OSSL_STORE_CTX* store = OSSL_STORE_open_ex("handle:0x81000123", ctx_->get(), nullptr, nullptr,
                                             nullptr, nullptr, nullptr, nullptr);
  ASSERT_NE(store, nullptr) << Errors();
  OsslPtr<EVP_PKEY> key;
  while (!OSSL_STORE_eof(store)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(store);
    if (info == nullptr) {
      break;
    }
    if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) {
      key.reset(OSSL_STORE_INFO_get1_PKEY(info));
    }
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(store);
  ASSERT_NE(key, nullptr) << Errors();
  const std::string msg = "signed by a persistent key";
  auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(*pem).get(), AsSpan(msg), *sig));
  key.reset();

  // Absent and malformed handles are clear errors.
  EXPECT_TRUE((*t)->EvictPersistent(kHandle).ok());
  OSSL_STORE_CTX* gone = OSSL_STORE_open_ex("handle:0x81000123", ctx_->get(), nullptr, nullptr,
                                            nullptr, nullptr, nullptr, nullptr);
  if (gone != nullptr) {
    EXPECT_EQ(OSSL_STORE_load(gone), nullptr);
    OSSL_STORE_close(gone);
  }
  EXPECT_THAT(Errors(), HasSubstr("0x81000123"));
  OSSL_STORE_CTX* bad = OSSL_STORE_open_ex("handle:0x40000001", ctx_->get(), nullptr, nullptr,
                                           nullptr, nullptr, nullptr, nullptr);
  if (bad != nullptr) {
    EXPECT_EQ(OSSL_STORE_load(bad), nullptr);
    OSSL_STORE_close(bad);
  }
  EXPECT_THAT(Errors(), HasSubstr("not a persistent key handle"));
}

// --- threads and fork ---

TEST_F(ProviderTest, ManyThreadsOneKey) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(ToPem(key.get()));
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 15; ++i) {
        const std::string msg = absl::StrCat("thread ", t, " message ", i);
        auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
        (sig.ok() && OracleVerify(oracle.get(), AsSpan(msg), *sig) ? good : bad)++;
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(good.load(), 8 * 15);
}

TEST_F(ProviderTest, ManyThreadsSeveralKeysMoreKeysThanTpmSlots) {
  // swtpm has 3 transient slots; 5 keys force the provider to unload and reload keys.
  std::vector<OsslPtr<EVP_PKEY>> keys;
  std::vector<OsslPtr<EVP_PKEY>> oracles;
  for (int i = 0; i < 5; ++i) {
    keys.push_back(Generate(ctx_->get(), kAlgs[i % 2 == 0 ? 0 : 2]));
    ASSERT_NE(keys.back(), nullptr) << Errors();
    oracles.push_back(OraclePublicFromFile(ToPem(keys.back().get())));
  }
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 10; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 8; ++i) {
        const size_t k = static_cast<size_t>(t + i) % keys.size();
        const std::string msg = absl::StrCat("thread ", t, " key ", k, " message ", i);
        auto sig = Sign(ctx_->get(), keys[k].get(), AsSpan(msg));
        if (!sig.ok()) {
          ADD_FAILURE() << sig.status().message();
        }
        (sig.ok() && OracleVerify(oracles[k].get(), AsSpan(msg), *sig) ? good : bad)++;
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(good.load(), 10 * 8);
}

TEST_F(ProviderTest, ForkedChildSignsWithItsOwnConnection) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr) << Errors();
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(ToPem(key.get()));
  const std::string msg = "before fork";
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  const size_t transient_before = TransientCount();

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    for (int i = 0; i < 3; ++i) {
      const std::string m = absl::StrCat("child ", i);
      auto sig = Sign(ctx_->get(), key.get(), AsSpan(m));
      if (!sig.ok() || !OracleVerify(oracle.get(), AsSpan(m), *sig)) {
        code = 1;
      }
    }
    // The child frees what it loaded (provider teardown), never the parent's objects.
    key.reset();
    ctx_.reset();
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the forked child could not sign";
  // The parent flushed its key at fork (it reloads on demand) and the child flushed its own.
  EXPECT_EQ(transient_before, 1u);
  EXPECT_EQ(TransientCount(), 0u) << "the child leaked TPM objects";
  const std::string after = "after fork";
  auto sig = Sign(ctx_->get(), key.get(), AsSpan(after));
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(after), *sig));
}

TEST_F(ProviderTest, ProcessExitingWithoutFreeingItsKeyLeavesNothingInTheTpm) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr);
  const std::string pem = ToPem(key.get());
  key.reset();
  ASSERT_EQ(TransientCount(), 0u);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Load and use a key, then exit() without freeing the key or the library context.
#if defined(__SANITIZE_ADDRESS__)
    __lsan_disable();  // the leak is the point of this child
#endif
    EVP_PKEY* leaked = FromPem(ctx_->get(), pem).release();
    const std::string m = "leak me";
    const bool ok = leaked != nullptr && Sign(ctx_->get(), leaked, AsSpan(m)).ok() &&
                    TransientCount() == 1;
    std::exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(TransientCount(), 0u) << "the exiting process left its key loaded";
}

// --- negative cases ---

TEST_F(ProviderTest, CorruptAndTruncatedKeyFilesAreClearErrors) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr);
  auto kf = wire::ParseTpmKeyFile(AsSpan(ToPem(key.get())));
  ASSERT_TRUE(kf.ok());
  auto der = wire::EncodeTpmKeyFileDer(*kf);
  ASSERT_TRUE(der.ok());
  auto pem_of = [](ByteSpan body) {
    OsslPtr<BIO> b(BIO_new(BIO_s_mem()));
    PEM_write_bio(b.get(), "TSS2 PRIVATE KEY", "", body.data(), static_cast<long>(body.size()));
    char* d = nullptr;
    const long n = BIO_get_mem_data(b.get(), &d);
    return std::string(d, static_cast<size_t>(n));
  };
  // Truncated DER inside a well-formed PEM.
  Bytes truncated(der->begin(), der->begin() + static_cast<std::ptrdiff_t>(der->size() / 2));
  EXPECT_EQ(FromPem(ctx_->get(), pem_of(truncated)), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("bad TPM key file"));
  // Corrupted private blob: parses, the TPM refuses to load it (integrity check).
  Bytes corrupt = *der;
  ASSERT_GT(corrupt.size(), 10u);
  corrupt.at(corrupt.size() - 10) ^= 0x5a;
  EXPECT_EQ(FromPem(ctx_->get(), pem_of(corrupt)), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("TPM key load failed"));
  // Garbage in the TSS2 label.
  const uint8_t junk[] = {0x30, 0x03, 0x02, 0x01, 0x05};
  EXPECT_EQ(FromPem(ctx_->get(), pem_of(junk)), nullptr);
  EXPECT_THAT(Errors(), HasSubstr("bad TPM key file"));
  // A PEM file cut in the middle: OpenSSL's PEM reader rejects it, no crash.
  const std::string full = ToPem(key.get());
  EXPECT_EQ(FromPem(ctx_->get(), full.substr(0, full.size() / 2)), nullptr);
  EXPECT_FALSE(Errors().empty());
}

TEST_F(ProviderTest, WrongAuthValueIsAClearError) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0], "s3cret");
  ASSERT_NE(key, nullptr) << Errors();
  const std::string pem = ToPem(key.get());
  key.reset();
  const std::string wrong = "Xq7-not-it";
  EXPECT_EQ(FromPem(ctx_->get(), pem, &wrong), nullptr);
  const std::string errs = Errors();
  EXPECT_THAT(errs, HasSubstr("TPM authorization failed"));
  EXPECT_THAT(errs, ::testing::Not(HasSubstr(wrong)));  // never echo the value
  const std::string right = "s3cret";
  OsslPtr<EVP_PKEY> ok = FromPem(ctx_->get(), pem, &right);
  ASSERT_NE(ok, nullptr) << Errors();
  const std::string msg = "with auth";
  auto sig = Sign(ctx_->get(), ok.get(), AsSpan(msg));
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(OraclePublicFromFile(pem).get(), AsSpan(msg), *sig));
}

TEST_F(ProviderTest, KeyFromAnotherTpmIsRefused) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr);
  const std::string pem = ToPem(key.get());
  auto other = testing::Swtpm::Start();
  ASSERT_TRUE(other.ok()) << other.status().message();
  // The second swtpm is a copy of the same template: TPM2_Clear gives it a new storage seed, so
  // it is a different TPM as far as the key's parent is concerned.
  auto [rc, out] = Shell(absl::StrCat("TPM2TOOLS_TCTI='", (*other)->tcti(), "' tpm2_clear -c p"));
  ASSERT_EQ(rc, 0) << out;
  auto octx = Ctx::New(absl::StrCat("tcti = ", (*other)->tcti(), "\n"));
  ASSERT_NE(octx, nullptr) << Errors();
  EXPECT_EQ(FromPem(octx->get(), pem), nullptr);
  const std::string errs = Errors();
  EXPECT_THAT(errs, HasSubstr("TPM key load failed"));
  EXPECT_THAT(errs, HasSubstr("created by this TPM"));
}

TEST_F(ProviderTest, UnreachableTpmIsAClearError) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr);
  const std::string pem = ToPem(key.get());
  // A loopback port nobody listens on.
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  const std::string tcti = absl::StrCat("swtpm:host=127.0.0.1,port=", ntohs(a.sin_port));
  auto dctx = Ctx::New(absl::StrCat("tcti = ", tcti, "\n"));
  ASSERT_NE(dctx, nullptr) << "the provider must load even when the TPM is down: " << Errors();
  EXPECT_EQ(FromPem(dctx->get(), pem), nullptr);
  // The reason string ("TPM unreachable") is missing when OpenSSL's 8-bit error library number
  // wrapped around (a process that made more than 127 provider instances); the message is ours.
  const std::string errs = Errors();
  EXPECT_THAT(errs, HasSubstr("cannot open TPM connection"));
  EXPECT_THAT(errs, HasSubstr(tcti));
}

TEST_F(ProviderTest, TpmRestartMidRunNextOperationSucceeds) {
  OsslPtr<EVP_PKEY> key = Generate(ctx_->get(), kAlgs[0]);
  ASSERT_NE(key, nullptr);
  OsslPtr<EVP_PKEY> oracle = OraclePublicFromFile(ToPem(key.get()));
  const std::string msg = "around a restart";
  ASSERT_TRUE(Sign(ctx_->get(), key.get(), AsSpan(msg)).ok());
  ASSERT_TRUE(testing::GlobalSwtpm().Restart().ok());
  auto sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
  if (!sig.ok()) {
    // One failed operation while the connection is re-established is acceptable; the next
    // must succeed.
    EXPECT_THAT(std::string(sig.status().message()), HasSubstr("TPM"));
    sig = Sign(ctx_->get(), key.get(), AsSpan(msg));
  }
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_TRUE(OracleVerify(oracle.get(), AsSpan(msg), *sig));
}

// --- TLS in process: one TPM command per handshake ---

int AcceptAny(int, X509_STORE_CTX*) { return 1; }

struct TlsCase {
  const char* name;
  int version;
  int alg;  // index into kAlgs
  bool mutual;
};

class TlsTest : public ProviderTest, public ::testing::WithParamInterface<TlsCase> {};

TEST_P(TlsTest, HandshakeCostsOneTpmSignaturePerSide) {
  const TlsCase& tc = GetParam();
  OsslPtr<EVP_PKEY> skey = Generate(ctx_->get(), kAlgs[tc.alg]);
  ASSERT_NE(skey, nullptr) << Errors();
  OsslPtr<X509> scert = SelfSigned(ctx_->get(), skey.get(), "server");
  ASSERT_NE(scert, nullptr) << Errors();
  // The server lives in hwid's context; the client in the global context (default provider
  // only), so the client's check of CertificateVerify is the oracle.
  OsslPtr<SSL_CTX> sctx(SSL_CTX_new_ex(ctx_->get(), nullptr, TLS_server_method()));
  OsslPtr<SSL_CTX> cctx(SSL_CTX_new_ex(tc.mutual ? ctx_->get() : nullptr, nullptr,
                                       TLS_client_method()));
  ASSERT_TRUE(sctx && cctx);
  for (SSL_CTX* c : {sctx.get(), cctx.get()}) {
    SSL_CTX_set_min_proto_version(c, tc.version);
    SSL_CTX_set_max_proto_version(c, tc.version);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
  }
  ASSERT_EQ(SSL_CTX_use_certificate(sctx.get(), scert.get()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey(sctx.get(), skey.get()), 1) << Errors();
  SSL_CTX_set_verify(cctx.get(), SSL_VERIFY_PEER, AcceptAny);
  OsslPtr<EVP_PKEY> ckey;
  OsslPtr<X509> ccert;
  if (tc.mutual) {
    ckey = Generate(ctx_->get(), kAlgs[tc.alg]);
    ASSERT_NE(ckey, nullptr);
    ccert = SelfSigned(ctx_->get(), ckey.get(), "client");
    ASSERT_EQ(SSL_CTX_use_certificate(cctx.get(), ccert.get()), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(cctx.get(), ckey.get()), 1) << Errors();
    SSL_CTX_set_verify(sctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, AcceptAny);
  }
  const int sides = tc.mutual ? 2 : 1;
  for (int i = 0; i < 3; ++i) {
    OsslPtr<SSL> s(SSL_new(sctx.get()));
    OsslPtr<SSL> c(SSL_new(cctx.get()));
    const uint64_t before = ctx_->Commands();
    const uint64_t sigs_before = ctx_->Param("hwid-signatures");
    ASSERT_TRUE(Handshake(s.get(), c.get())) << "handshake " << i << ": " << Errors();
    EXPECT_EQ(SSL_version(c.get()), tc.version);
    if (tc.mutual) {
      OsslPtr<X509> peer(SSL_get1_peer_certificate(s.get()));
      EXPECT_NE(peer, nullptr);
    }
    EXPECT_EQ(ctx_->Param("hwid-signatures") - sigs_before, static_cast<uint64_t>(sides));
    EXPECT_EQ(ctx_->Commands() - before, static_cast<uint64_t>(sides))
        << "TPM commands in handshake " << i;
    int nid = 0;
    if (tc.alg >= 2 && tc.version == TLS1_3_VERSION &&
        SSL_get_peer_signature_type_nid(c.get(), &nid) == 1) {
      EXPECT_EQ(nid, EVP_PKEY_RSA_PSS);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, TlsTest,
    ::testing::Values(TlsCase{"Tls13Ec", TLS1_3_VERSION, 0, false},
                      TlsCase{"Tls12Ec", TLS1_2_VERSION, 0, false},
                      TlsCase{"Tls13RsaPss", TLS1_3_VERSION, 2, false},
                      TlsCase{"Tls12Rsa", TLS1_2_VERSION, 2, false},
                      TlsCase{"Tls13EcMutual", TLS1_3_VERSION, 0, true},
                      TlsCase{"Tls12EcMutual", TLS1_2_VERSION, 0, true},
                      TlsCase{"Tls13RsaMutual", TLS1_3_VERSION, 2, true}),
    [](const auto& tp) { return std::string(tp.param.name); });

}  // namespace
}  // namespace hwid
