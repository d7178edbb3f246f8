// tpm/ against a real swtpm (one private swtpm per test binary, see tests/testing/).
#include "tpm/tpm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <atomic>
#include <thread>

#include "common/ossl.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/run_shell.h"
#include "tests/testing/swtpm.h"
#include "tests/testing/swtpm_nv.h"
#include "tpm/error.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::tpm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;


// VerifyWithOpenSsl checks a signature with OpenSSL's default provider only (an oracle
// independent of hwid's own verification code).
bool VerifyWithOpenSsl(const TPMT_PUBLIC& pub, ByteSpan msg, ByteSpan sig, const EVP_MD* md, bool pss) {
  absl::StatusOr<Bytes> spki = wire::PublicKeyDer(pub);
  if (!spki.ok()) {
    return false;
  }
  const unsigned char* p = spki->data();
  OsslPtr<EVP_PKEY> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki->size())));
  OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!key || EVP_DigestVerifyInit_ex(ctx.get(), &pctx, EVP_MD_get0_name(md), nullptr, "provider=default",
                                      key.get(), nullptr) != 1) {
    return false;
  }
  if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
              EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_AUTO) != 1)) {
    return false;
  }
  const int ok = EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size());
  DrainOpenSslErrors();
  return ok == 1;
}

class TpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tpm::Open(testing::GlobalSwtpm().tcti());
    ASSERT_TRUE(t.ok()) << t.status().message();
    tpm_ = std::move(*t);
  }
  void TearDown() override {
    // No leak: every test leaves the TPM without transient objects.
    if (tpm_) {
      auto handles = tpm_->TransientHandles();
      ASSERT_TRUE(handles.ok()) << handles.status().message();
      EXPECT_TRUE(handles->empty()) << handles->size() << " transient object(s) leaked";
    }
  }
  std::unique_ptr<Tpm> tpm_;
};

TEST_F(TpmTest, InfoReportsIdentityBanksAndSlots) {
  ASSERT_OK_AND_ASSIGN(TpmInfo info, tpm_->GetInfo());
  EXPECT_EQ(info.manufacturer, "IBM");  // libtpms reports IBM
  EXPECT_FALSE(info.firmware_version.empty());
  EXPECT_THAT(info.spec, HasSubstr("2.0"));
  bool sha256 = false;
  for (const auto& b : info.pcr_banks) {
    if (b.alg == TPM2_ALG_SHA256) {
      sha256 = true;
      EXPECT_EQ(b.pcrs.size(), 24u);
    }
  }
  EXPECT_TRUE(sha256);
  EXPECT_FALSE(info.in_lockout);
  EXPECT_GE(info.transient_slots, 3u);
  EXPECT_EQ(info.loaded_transient, 0u);
}

TEST(TpmOpenTest, UnreachableTpmIsUnavailableWithHint) {
  absl::StatusOr<std::unique_ptr<Tpm>> t = Tpm::Open("swtpm:host=127.0.0.1,port=1");
  absl::Status st = t.ok() ? (*t)->GetInfo().status() : t.status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st.message();
  EXPECT_THAT(std::string(st.message()), HasSubstr("TPM"));
}

TEST(TpmOpenTest, UnknownTctiIsUnavailable) {
  absl::StatusOr<std::unique_ptr<Tpm>> t = Tpm::Open("nosuchtcti:foo");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nosuchtcti:foo"));
}

TEST(ErrorTest, DecodesTpmCodes) {
  absl::Status st = TssError(TPM2_RC_AUTH_FAIL | TPM2_RC_S | TPM2_RC_1, "TPM2_Sign", "key 0x81000001");
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), HasSubstr("TPM2_Sign on key 0x81000001 failed: 0x98e"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("authorization"));
  EXPECT_EQ(TssError(TPM2_RC_OBJECT_MEMORY, "TPM2_Load").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(TssError(TPM2_RC_HANDLE | TPM2_RC_P | TPM2_RC_1, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(TssError(TSS2_RC_SUCCESS, "x").ok());
}

TEST_F(TpmTest, GetRandom) {
  ASSERT_OK_AND_ASSIGN(Bytes a, tpm_->GetRandom(48));
  ASSERT_OK_AND_ASSIGN(Bytes b, tpm_->GetRandom(48));
  EXPECT_EQ(a.size(), 48u);
  EXPECT_NE(a, b);
}

TEST_F(TpmTest, EkCertificatesChainAndMatchTheirEks) {
  ASSERT_OK_AND_ASSIGN(std::vector<EkCertificate> certs, tpm_->ReadEkCertificates());
  ASSERT_OK_AND_ASSIGN(wire::CaBundle ca, wire::LoadTrustBundle(testing::GlobalSwtpm().ek_ca_bundle()));
  std::set<uint32_t> indices;
  for (const EkCertificate& c : certs) {
    SCOPED_TRACE(c.name);
    indices.insert(c.nv_index);
    ASSERT_OK_AND_ASSIGN(OsslPtr<X509> cert, wire::ParseCertificateDer(c.der));
    ASSERT_OK(wire::VerifyEkCertificate(cert.get(), ca));
    ASSERT_OK_AND_ASSIGN(Ek ek, tpm_->LoadEk(c.type));
    ASSERT_OK(wire::CheckCertificateMatchesPublic(cert.get(), ek.pub.publicArea));
    ASSERT_OK_AND_ASSIGN(wire::TcgDeviceInfo dev, wire::ParseTcgDeviceInfo(cert.get()));
    EXPECT_EQ(dev.model, "swtpm");
  }
  EXPECT_TRUE(indices.count(0x01c00002)) << "RSA-2048 EK certificate missing";
  EXPECT_TRUE(indices.count(0x01c0000a)) << "ECC P-256 EK certificate missing";
  EXPECT_TRUE(indices.count(0x01c00016)) << "ECC P-384 (high range) EK certificate missing";
}

TEST_F(TpmTest, EkCertificateOfOtherEkDoesNotMatch) {
  ASSERT_OK_AND_ASSIGN(Bytes nv, tpm_->NvRead(0x01c00002));
  ASSERT_OK_AND_ASSIGN(Bytes der, wire::ExtractEkCertificateDer(nv));
  ASSERT_OK_AND_ASSIGN(OsslPtr<X509> rsa_cert, wire::ParseCertificateDer(der));
  ASSERT_OK_AND_ASSIGN(Ek ecc, tpm_->LoadEk(wire::EkType::kEccP256));
  absl::Status st = wire::CheckCertificateMatchesPublic(rsa_cert.get(), ecc.pub.publicArea);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(TpmTest, EkCertificateRejectedByUnrelatedCa) {
  // A self-signed root that did not issue the EK certificate.
  OsslPtr<EVP_PKEY> k(EVP_EC_gen("P-256"));
  OsslPtr<X509> root(X509_new());
  X509_set_version(root.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(root.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(root.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(root.get()), 3600);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(root.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("not the EK CA"), -1, -1, 0);
  X509_set_issuer_name(root.get(), X509_get_subject_name(root.get()));
  X509_set_pubkey(root.get(), k.get());
  ASSERT_GT(X509_sign(root.get(), k.get(), EVP_sha256()), 0);
  wire::CaBundle ca;
  ca.roots.push_back(std::move(root));
  ASSERT_OK_AND_ASSIGN(Bytes nv, tpm_->NvRead(0x01c00002));
  ASSERT_OK_AND_ASSIGN(Bytes der, wire::ExtractEkCertificateDer(nv));
  ASSERT_OK_AND_ASSIGN(OsslPtr<X509> cert, wire::ParseCertificateDer(der));
  absl::Status st = wire::VerifyEkCertificate(cert.get(), ca);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), HasSubstr("chain verification failed"));
  // The intermediate alone is never an anchor.
  ASSERT_OK_AND_ASSIGN(wire::CaBundle good, wire::LoadTrustBundle(testing::GlobalSwtpm().ek_ca_bundle()));
  wire::CaBundle only_intermediate;
  for (auto& i : good.intermediates) {
    only_intermediate.roots.push_back(OsslPtr<X509>(X509_dup(i.get())));
  }
  ASSERT_FALSE(only_intermediate.roots.empty());
  EXPECT_FALSE(wire::VerifyEkCertificate(cert.get(), only_intermediate).ok());
  // Expired at verification time.
  EXPECT_EQ(wire::VerifyEkCertificate(cert.get(), good, time_t{86400}).code(),
            absl::StatusCode::kPermissionDenied);
}

// ---------------------------------------------------------------- certificates as vendors ship
// them (issue 14): each on a private swtpm, written with tpm2-tools.

class NvCertificateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HaveTpm2Tools()) {
      if (testing::RunningInCi()) {
        FAIL() << "tpm2-tools (tpm2_nvdefine, tpm2_nvwrite, tpm2_nvundefine) are required when "
                  "CI=true";
      }
      GTEST_SKIP() << "tpm2-tools not installed";
    }
    ASSERT_OK_AND_ASSIGN(swtpm_, testing::Swtpm::Start());
    ASSERT_OK_AND_ASSIGN(wire::CaBundle ca, wire::LoadTrustBundle(swtpm_->ek_ca_bundle()));
    ASSERT_EQ(ca.intermediates.size(), 1u);
    intermediate_der_ = Der(ca.intermediates[0].get());
    // The template's RSA EK certificate, exactly as DER.
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tpm> t, Tpm::Open(swtpm_->tcti()));
    ASSERT_OK_AND_ASSIGN(Bytes nv, t->NvRead(kRsaNv));
    ASSERT_OK_AND_ASSIGN(rsa_der_, wire::ExtractEkCertificateDer(nv));
  }
  static Bytes Der(X509* cert) {
    unsigned char* buf = nullptr;
    const int n = i2d_X509(cert, &buf);
    Bytes out(buf, buf + (n > 0 ? n : 0));
    OPENSSL_free(buf);
    return out;
  }
  absl::Status Write(uint32_t index, const Bytes& data) {
    return testing::WriteNvIndex(swtpm_->tcti(), swtpm_->dir(), index, data);
  }
  // ReadAll opens the TPM, reads the EK certificates and closes it (swtpm serves one client).
  std::vector<EkCertificate> ReadAll() {
    absl::StatusOr<std::unique_ptr<Tpm>> t = Tpm::Open(swtpm_->tcti());
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) {
      return {};
    }
    absl::StatusOr<std::vector<EkCertificate>> certs = (*t)->ReadEkCertificates();
    EXPECT_TRUE(certs.ok()) << certs.status();
    return certs.ok() ? *std::move(certs) : std::vector<EkCertificate>{};
  }
  static Bytes Concat(std::initializer_list<Bytes> parts) {
    size_t n = 0;
    for (const Bytes& p : parts) {
      n += p.size();
    }
    Bytes out;
    out.reserve(n);
    for (const Bytes& p : parts) {
      out.insert(out.end(), p.begin(), p.end());
    }
    return out;
  }
  static const EkCertificate* Find(const std::vector<EkCertificate>& certs, uint32_t index) {
    for (const EkCertificate& c : certs) {
      if (c.nv_index == index) {
        return &c;
      }
    }
    return nullptr;
  }

  static constexpr uint32_t kRsaNv = 0x01c00002;
  static constexpr uint32_t kEccNv = 0x01c0000a;
  std::unique_ptr<testing::Swtpm> swtpm_;
  Bytes rsa_der_;
  Bytes intermediate_der_;
};

TEST_F(NvCertificateTest, EkCertificateQuirksAreReported) {
  const Bytes header = {0x10, 0x01, 0x00, static_cast<uint8_t>(rsa_der_.size() >> 8),
                        static_cast<uint8_t>(rsa_der_.size())};
  const Bytes junk = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  struct Row {
    const char* name;
    Bytes nv;
    bool wrapper;
    size_t padding;
    size_t trailing;
    std::vector<std::string> quirks;
  };
  const std::vector<Row> rows = {
      {"exact DER", rsa_der_, false, 0, 0, {}},
      {"TCG header", Concat({header, rsa_der_}), true, 0, 0,
       {absl::StrCat("TCG PC Client NV header 10 01 00 (length ", rsa_der_.size(),
                     ") before the DER")}},
      {"junk and padding", Concat({rsa_der_, junk, Bytes(64, 0xff)}), false, 64, 16,
       {"16 bytes after the DER certificate that are not 0x00/0xff padding",
        "64 bytes of 0xff padding after the DER certificate"}},
      {"zero padding", Concat({rsa_der_, Bytes(100, 0x00)}), false, 100, 0,
       {"100 bytes of 0x00 padding after the DER certificate"}},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    ASSERT_OK(Write(kRsaNv, row.nv));
    std::vector<EkCertificate> certs = ReadAll();
    const EkCertificate* c = Find(certs, kRsaNv);
    ASSERT_NE(c, nullptr);
    ASSERT_OK(c->error);
    EXPECT_EQ(c->der, rsa_der_);
    EXPECT_EQ(c->nv_size, row.nv.size());
    EXPECT_EQ(c->tcg_wrapper, row.wrapper);
    EXPECT_EQ(c->padding_bytes, row.padding);
    EXPECT_EQ(c->trailing_bytes, row.trailing);
    EXPECT_EQ(c->quirks, row.quirks);
  }
}

TEST_F(NvCertificateTest, IndexWithoutCertificateDoesNotAbortTheRead) {
  ASSERT_OK(Write(kEccNv, Bytes(300, 0xff)));  // an erased NV: defined, written, no certificate
  std::vector<EkCertificate> certs = ReadAll();
  const EkCertificate* bad = Find(certs, kEccNv);
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(bad->error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad->error.message()),
              HasSubstr("NV 0x01c0000a (ecc-p256 EK certificate) exists but holds no DER "
                        "certificate: "));
  EXPECT_TRUE(bad->der.empty());
  // The other indices are still read.
  const EkCertificate* rsa = Find(certs, kRsaNv);
  ASSERT_NE(rsa, nullptr);
  EXPECT_OK(rsa->error);
  EXPECT_EQ(rsa->der, rsa_der_);
  EXPECT_NE(Find(certs, 0x01c00016), nullptr);
}

TEST_F(NvCertificateTest, ChainCertificatesFromNv) {
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tpm> t, Tpm::Open(swtpm_->tcti()));
    ASSERT_OK_AND_ASSIGN(std::vector<NvChainCertificate> none, t->ReadEkChainCertificates());
    EXPECT_TRUE(none.empty()) << "the template has no chain certificate in NV";
  }
  ASSERT_OK(Write(0x01c00100, intermediate_der_));
  // A TCG header and padding are tolerated in the chain range too; garbage yields an entry.
  const Bytes wrapped = Concat({Bytes{0x10, 0x01, 0x00,
                                      static_cast<uint8_t>(intermediate_der_.size() >> 8),
                                      static_cast<uint8_t>(intermediate_der_.size())},
                                intermediate_der_, Bytes(8, 0xff)});
  ASSERT_OK(Write(0x01c00101, Bytes(64, 0x5a)));
  ASSERT_OK(Write(0x01c001ff, wrapped));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tpm> t, Tpm::Open(swtpm_->tcti()));
  ASSERT_OK_AND_ASSIGN(std::vector<uint32_t> ek_indices, t->ListNvIndices(0x01c00000, 0x01c000ff));
  EXPECT_THAT(ek_indices, ::testing::IsSupersetOf({0x01c00002u, 0x01c0000au, 0x01c00016u}));
  EXPECT_THAT(ek_indices, Not(::testing::Contains(0x01c00100u)));
  EXPECT_TRUE(std::is_sorted(ek_indices.begin(), ek_indices.end()));
  ASSERT_OK_AND_ASSIGN(std::vector<uint32_t> chain_indices,
                       t->ListNvIndices(0x01c00100, 0x01c001ff));
  EXPECT_THAT(chain_indices, ::testing::ElementsAre(0x01c00100u, 0x01c00101u, 0x01c001ffu));
  ASSERT_OK_AND_ASSIGN(std::vector<uint32_t> one, t->ListNvIndices(0x01c00101, 0x01c00101));
  EXPECT_THAT(one, ::testing::ElementsAre(0x01c00101u));

  ASSERT_OK_AND_ASSIGN(std::vector<NvChainCertificate> chain, t->ReadEkChainCertificates());
  ASSERT_EQ(chain.size(), 3u);
  EXPECT_EQ(chain[0].nv_index, 0x01c00100u);
  EXPECT_OK(chain[0].error);
  EXPECT_EQ(chain[0].der, intermediate_der_);
  EXPECT_TRUE(chain[0].quirks.empty());
  EXPECT_EQ(chain[1].nv_index, 0x01c00101u);
  EXPECT_EQ(chain[1].error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(chain[1].error.message()),
              HasSubstr("NV 0x01c00101 (EK certificate chain) exists but holds no DER "
                        "certificate: "));
  EXPECT_TRUE(chain[1].der.empty());
  EXPECT_EQ(chain[2].nv_index, 0x01c001ffu);
  EXPECT_OK(chain[2].error);
  EXPECT_EQ(chain[2].der, intermediate_der_);
  EXPECT_EQ(chain[2].quirks.size(), 2u);
}

TEST_F(TpmTest, NvReadOfAbsentIndexIsNotFound) {
  absl::StatusOr<Bytes> nv = tpm_->NvRead(0x01c0fff0);
  EXPECT_EQ(nv.status().code(), absl::StatusCode::kNotFound) << nv.status().message();
  EXPECT_THAT(std::string(nv.status().message()), HasSubstr("0x01c0fff0"));
}

TEST_F(TpmTest, PersistentAndDerivedEksAreTheSameKey) {
  for (auto [type, handle] : {std::pair{wire::EkType::kRsa2048, 0x81010001u},
                              std::pair{wire::EkType::kEccP256, 0x81010002u}}) {
    ASSERT_OK_AND_ASSIGN(Ek persistent, tpm_->LoadEk(type, /*allow_persistent=*/true));
    EXPECT_EQ(persistent.persistent_handle, handle);
    ASSERT_OK_AND_ASSIGN(Ek derived, tpm_->LoadEk(type, /*allow_persistent=*/false));
    EXPECT_EQ(derived.persistent_handle, 0u);
    ASSERT_OK_AND_ASSIGN(Bytes a, wire::ObjectName(persistent.pub.publicArea));
    ASSERT_OK_AND_ASSIGN(Bytes b, wire::ObjectName(derived.pub.publicArea));
    EXPECT_EQ(a, b);
  }
}

class AkTest : public TpmTest {
 protected:
  void TearDown() override {
    for (uint32_t h : evict_) {
      (void)tpm_->EvictPersistent(h);
    }
    TpmTest::TearDown();
  }
  std::vector<uint32_t> evict_;
};

TEST_F(AkTest, EnsureAkCreatesPersistsAndReuses) {
  evict_ = {0x81000100};
  ASSERT_OK_AND_ASSIGN(LoadedKey ak, tpm_->EnsureAk(wire::KeyAlg::kEcP256, 0x81000100));
  ASSERT_OK(wire::CheckAkAttributes(ak.pub.publicArea));
  ASSERT_OK_AND_ASSIGN(Bytes name1, wire::ObjectName(ak.pub.publicArea));
  const uint64_t before = tpm_->command_count();
  ASSERT_OK_AND_ASSIGN(LoadedKey again, tpm_->EnsureAk(wire::KeyAlg::kEcP256, 0x81000100));
  ASSERT_OK_AND_ASSIGN(Bytes name2, wire::ObjectName(again.pub.publicArea));
  EXPECT_EQ(name1, name2);
  EXPECT_LE(tpm_->command_count() - before, 2u) << "reuse must not create keys";
  // Asking for another algorithm at the same handle is refused, not silently replaced.
  EXPECT_EQ(tpm_->EnsureAk(wire::KeyAlg::kRsa2048, 0x81000100).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(AkTest, EnsureAkRefusesAnUnrestrictedKey) {
  evict_ = {0x81000101};
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadKey(kf));
  ASSERT_OK(tpm_->Persist(k, 0x81000101));
  absl::StatusOr<LoadedKey> ak = tpm_->EnsureAk(wire::KeyAlg::kEcP256, 0x81000101);
  EXPECT_EQ(ak.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ak.status().message()), HasSubstr("restricted"));
}

struct QuoteCase {
  wire::KeyAlg alg;
  const char* pcrs;
};

class QuoteTest : public AkTest, public ::testing::WithParamInterface<QuoteCase> {};

TEST_P(QuoteTest, QuoteVerifiesInSoftwareAndRejectsTampering) {
  const uint32_t handle = 0x81000110 + static_cast<uint32_t>(GetParam().alg);
  evict_ = {handle};
  ASSERT_OK_AND_ASSIGN(LoadedKey ak, tpm_->EnsureAk(GetParam().alg, handle));
  ASSERT_OK_AND_ASSIGN(TPML_PCR_SELECTION sel, wire::ParsePcrSelection(GetParam().pcrs));
  Bytes nonce(32);
  ASSERT_EQ(RAND_bytes(nonce.data(), 32), 1);
  ASSERT_OK_AND_ASSIGN(Quote q, tpm_->QuotePcrs(ak, nonce, sel));
  ASSERT_OK_AND_ASSIGN(wire::VerifiedQuote v, wire::VerifyQuote(ak.pub.publicArea, q.attest, q.signature, nonce, q.pcrs));
  EXPECT_EQ(v.pcrs.size(), q.pcrs.size());
  ASSERT_OK_AND_ASSIGN(wire::PcrValues direct, tpm_->PcrRead(sel));
  EXPECT_EQ(direct, q.pcrs);

  Bytes other_nonce = nonce;
  other_nonce[0] ^= 1;
  EXPECT_EQ(wire::VerifyQuote(ak.pub.publicArea, q.attest, q.signature, other_nonce, q.pcrs).status().code(),
            absl::StatusCode::kPermissionDenied);
  wire::PcrValues tampered = q.pcrs;
  tampered.begin()->second.begin()->second[0] ^= 1;
  EXPECT_EQ(wire::VerifyQuote(ak.pub.publicArea, q.attest, q.signature, nonce, tampered).status().code(),
            absl::StatusCode::kPermissionDenied);
  // A quote by another AK does not verify under this one.
  const uint32_t other_handle = handle + 0x10;
  evict_.push_back(other_handle);
  ASSERT_OK_AND_ASSIGN(LoadedKey other, tpm_->EnsureAk(GetParam().alg, other_handle));
  ASSERT_OK_AND_ASSIGN(Quote q2, tpm_->QuotePcrs(other, nonce, sel));
  EXPECT_EQ(wire::VerifyQuote(ak.pub.publicArea, q2.attest, q2.signature, nonce, q2.pcrs).status().code(),
            absl::StatusCode::kPermissionDenied);
}

INSTANTIATE_TEST_SUITE_P(Algs, QuoteTest,
                         ::testing::Values(QuoteCase{wire::KeyAlg::kEcP256, "sha256:0,1,2,3,4,5,6,7"},
                                           QuoteCase{wire::KeyAlg::kRsa2048, "sha256:0-7+sha1:0,16"},
                                           QuoteCase{wire::KeyAlg::kEcP384, "sha1:0-23+sha256:0-23"}));

class CredentialTest : public AkTest, public ::testing::WithParamInterface<wire::EkType> {};

TEST_P(CredentialTest, SoftwareMakeCredentialActivatesInTpm) {
  evict_ = {0x81000120};
  ASSERT_OK_AND_ASSIGN(LoadedKey ak, tpm_->EnsureAk(wire::KeyAlg::kEcP256, 0x81000120));
  ASSERT_OK_AND_ASSIGN(Ek ek, tpm_->LoadEk(GetParam()));
  ASSERT_OK_AND_ASSIGN(Bytes name, wire::ObjectName(ak.pub.publicArea));
  SecureBytes secret(32);
  ASSERT_EQ(RAND_bytes(secret.data(), 32), 1);
  ASSERT_OK_AND_ASSIGN(wire::Credential cred, wire::MakeCredential(ek.pub.publicArea, AsSpan(secret), name));
  ASSERT_OK_AND_ASSIGN(SecureBytes got, tpm_->ActivateCredential(ak, ek, cred.id_object, cred.encrypted_secret));
  EXPECT_TRUE(ConstantTimeEquals(AsSpan(got), AsSpan(secret)));

  // A credential bound to another object's name does not activate for this AK.
  Bytes wrong_name = name;
  wrong_name.back() ^= 1;
  ASSERT_OK_AND_ASSIGN(wire::Credential bad, wire::MakeCredential(ek.pub.publicArea, AsSpan(secret), wrong_name));
  absl::StatusOr<SecureBytes> r = tpm_->ActivateCredential(ak, ek, bad.id_object, bad.encrypted_secret);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status().message();
  // Garbage blobs are rejected before reaching the TPM.
  EXPECT_EQ(tpm_->ActivateCredential(ak, ek, Bytes{1, 2, 3}, cred.encrypted_secret).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(EkTypes, CredentialTest,
                         ::testing::Values(wire::EkType::kRsa2048, wire::EkType::kEccP256,
                                           wire::EkType::kEccP384High),
                         [](const auto& param_info) {
                           for (const auto& s : wire::AllEkSpecs()) {
                             if (s.type == param_info.param) {
                               std::string n = s.name;
                               for (char& c : n) {
                                 if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                               }
                               return n;
                             }
                           }
                           return std::string("unknown");
                         });

struct SignCase {
  wire::KeyAlg alg;
  SignScheme scheme;
  TPMI_ALG_HASH hash;
};

class SignTest : public AkTest, public ::testing::WithParamInterface<SignCase> {};

TEST_P(SignTest, CreateEncodeLoadSignVerifyWithOpenSsl) {
  const SignCase c = GetParam();
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(c.alg));
  ASSERT_OK_AND_ASSIGN(std::string pem, wire::EncodeTpmKeyFilePem(kf));
  EXPECT_THAT(pem, HasSubstr("-----BEGIN TSS2 PRIVATE KEY-----"));
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile parsed, wire::ParseTpmKeyFile(AsSpan(pem)));
  ASSERT_OK_AND_ASSIGN(LoadedKey key, tpm_->LoadKey(parsed));
  const EVP_MD* md = c.hash == TPM2_ALG_SHA384 ? EVP_sha384() : EVP_sha256();
  for (int i = 0; i < 3; ++i) {
    std::string msg = "message " + std::to_string(i);
    ASSERT_OK_AND_ASSIGN(Bytes digest, wire::Hash(c.hash, AsSpan(msg)));
    ASSERT_OK_AND_ASSIGN(TPMT_SIGNATURE sig, tpm_->Sign(key, digest, c.scheme, c.hash));
    ASSERT_OK_AND_ASSIGN(Bytes der, wire::SignatureToDer(sig));
    EXPECT_TRUE(VerifyWithOpenSsl(key.pub.publicArea, AsSpan(msg), der, md, c.scheme == SignScheme::kRsaPss));
    std::string other = msg + "!";
    EXPECT_FALSE(VerifyWithOpenSsl(key.pub.publicArea, AsSpan(other), der, md, c.scheme == SignScheme::kRsaPss));
  }
  // The key is non-exportable: the template has fixedTPM|fixedParent and sensitiveDataOrigin.
  const TPMA_OBJECT attrs = key.pub.publicArea.objectAttributes;
  EXPECT_TRUE(attrs & TPMA_OBJECT_FIXEDTPM);
  EXPECT_TRUE(attrs & TPMA_OBJECT_FIXEDPARENT);
  EXPECT_TRUE(attrs & TPMA_OBJECT_SENSITIVEDATAORIGIN);
  EXPECT_TRUE(attrs & TPMA_OBJECT_NODA);
  EXPECT_FALSE(attrs & TPMA_OBJECT_RESTRICTED);
}

INSTANTIATE_TEST_SUITE_P(
    Keys, SignTest,
    ::testing::Values(SignCase{wire::KeyAlg::kEcP256, SignScheme::kEcdsa, TPM2_ALG_SHA256},
                      SignCase{wire::KeyAlg::kEcP384, SignScheme::kEcdsa, TPM2_ALG_SHA384},
                      SignCase{wire::KeyAlg::kRsa2048, SignScheme::kRsaPkcs1, TPM2_ALG_SHA256},
                      SignCase{wire::KeyAlg::kRsa2048, SignScheme::kRsaPss, TPM2_ALG_SHA256},
                      SignCase{wire::KeyAlg::kRsa3072, SignScheme::kRsaPss, TPM2_ALG_SHA384}));

TEST_F(AkTest, KeyWithAuthValueNeedsIt) {
  const std::string pw = "correct horse";
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(wire::KeyAlg::kEcP256, AsSpan(pw)));
  EXPECT_FALSE(kf.empty_auth);
  ASSERT_OK_AND_ASSIGN(Bytes digest, wire::Hash(TPM2_ALG_SHA256, AsSpan(pw)));
  {
    const std::string wrong = "Tr0ub4dor&3";
    ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadKey(kf, AsSpan(wrong)));
    absl::StatusOr<TPMT_SIGNATURE> sig = tpm_->Sign(k, digest, SignScheme::kEcdsa, TPM2_ALG_SHA256);
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kPermissionDenied) << sig.status().message();
    EXPECT_THAT(std::string(sig.status().message()), Not(HasSubstr(wrong)));
  }
  ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadKey(kf, AsSpan(pw)));
  ASSERT_OK(tpm_->Sign(k, digest, SignScheme::kEcdsa, TPM2_ALG_SHA256).status());
}

TEST_F(AkTest, PersistLoadByHandleSignAndEvict) {
  evict_ = {0x81000130};
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  {
    ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadKey(kf));
    ASSERT_OK(tpm_->Persist(k, 0x81000130));
    EXPECT_EQ(k.persistent_handle, 0x81000130u);
  }
  ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadPersistentKey(0x81000130));
  ASSERT_OK_AND_ASSIGN(Bytes digest, wire::Hash(TPM2_ALG_SHA256, AsSpan(std::string("x"))));
  ASSERT_OK_AND_ASSIGN(TPMT_SIGNATURE sig, tpm_->Sign(k, digest, SignScheme::kEcdsa, TPM2_ALG_SHA256));
  ASSERT_OK(wire::VerifySignature(k.pub.publicArea, AsSpan(std::string("x")), sig));
  // Persisting on an occupied handle fails with a clear error.
  ASSERT_OK_AND_ASSIGN(LoadedKey k2, tpm_->LoadKey(kf));
  EXPECT_EQ(tpm_->Persist(k2, 0x81000130).code(), absl::StatusCode::kAlreadyExists);
  k2.object.Reset();
  ASSERT_OK(tpm_->EvictPersistent(0x81000130));
  evict_.clear();
  EXPECT_EQ(tpm_->ReadPublic(0x81000130).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tpm_->LoadPersistentKey(0x81000130).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AkTest, KeyFromAnotherTpmOrTamperedBlobIsRejected) {
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  wire::TpmKeyFile bad = kf;
  bad.priv[bad.priv.size() / 2] ^= 0x40;
  absl::StatusOr<LoadedKey> k = tpm_->LoadKey(bad);
  EXPECT_FALSE(k.ok());
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("TPM2_Load"));
}

TEST_F(AkTest, ThreadsSignConcurrentlyWithOneAndSeveralKeys) {
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf1, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf2, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(LoadedKey k1, tpm_->LoadKey(kf1));
  ASSERT_OK_AND_ASSIGN(LoadedKey k2, tpm_->LoadKey(kf2));
  std::atomic<int> good{0};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      LoadedKey& key = (t % 2 == 0) ? k1 : k2;
      for (int i = 0; i < 25; ++i) {
        std::string msg = "t" + std::to_string(t) + "/" + std::to_string(i);
        auto digest = wire::Hash(TPM2_ALG_SHA256, AsSpan(msg));
        auto sig = tpm_->Sign(key, *digest, SignScheme::kEcdsa, TPM2_ALG_SHA256);
        auto der = sig.ok() ? wire::SignatureToDer(*sig) : absl::StatusOr<Bytes>(sig.status());
        if (der.ok() && VerifyWithOpenSsl(key.pub.publicArea, AsSpan(msg), *der, EVP_sha256(), false)) {
          ++good;
        } else {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(good.load(), 100);
  EXPECT_EQ(bad.load(), 0);
}

// Runs last in this binary (gtest runs tests in definition order within a file).
TEST_F(AkTest, SigningSurvivesTpmRestart) {
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, tpm_->CreateKey(wire::KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(LoadedKey k, tpm_->LoadKey(kf));
  ASSERT_OK_AND_ASSIGN(Bytes digest, wire::Hash(TPM2_ALG_SHA256, AsSpan(std::string("before"))));
  ASSERT_OK(tpm_->Sign(k, digest, SignScheme::kEcdsa, TPM2_ALG_SHA256).status());
  ASSERT_OK(testing::GlobalSwtpm().Restart());
  ASSERT_OK_AND_ASSIGN(TPMT_SIGNATURE sig, tpm_->Sign(k, digest, SignScheme::kEcdsa, TPM2_ALG_SHA256));
  ASSERT_OK_AND_ASSIGN(Bytes der, wire::SignatureToDer(sig));
  EXPECT_TRUE(VerifyWithOpenSsl(k.pub.publicArea, AsSpan(std::string("before")), der, EVP_sha256(), false));
}

}  // namespace
}  // namespace hwid::tpm
