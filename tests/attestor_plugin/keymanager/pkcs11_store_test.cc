// Pkcs11KeyStore against a real SoftHSM2 token: the KeyManager contract, key_prefix isolation,
// crash-safe replacement (every interrupted state), key protection attributes, wrong PIN.
// Every signature is verified by OpenSSL's default provider.
#include "attestor_plugin/keymanager/pkcs11_key_store.h"

#include <atomic>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "pkcs11/pkcs11.h"
#include "tests/attestor_plugin/keymanager/verify.h"
#include "tests/pkcs11/softhsm.h"
#include "tests/testing/status_assert.h"

namespace hwid::keymanager {
namespace {

using testing::Digest;
using testing::Sha256Hex;
using testing::VerifyDigest;
using ::hwid::testing::SoftHsm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPin[] = "Km-4711-pin";

SoftHsm* g_hsm = nullptr;
class HsmEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    delete g_hsm;
    g_hsm = nullptr;
  }
};
const auto* const kHsmEnv = ::testing::AddGlobalTestEnvironment(new HsmEnvironment);

SoftHsm* Hsm() {
  if (g_hsm == nullptr) {
    absl::StatusOr<std::unique_ptr<SoftHsm>> h = SoftHsm::Start("hwid-km", kPin, "so-9876");
    g_hsm = h.ok() ? h->release() : nullptr;
  }
  return g_hsm;
}

class Pkcs11StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HWID_REQUIRE_SOFTHSM();
    ASSERT_NE(Hsm(), nullptr);
    prefix_ = absl::StrCat("td-", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    store_ = Open(prefix_);
    ASSERT_NE(store_, nullptr);
  }
  static std::unique_ptr<Pkcs11KeyStore> Open(const std::string& prefix) {
    Pkcs11KeyStore::Options o;
    o.uri = Hsm()->uri();
    o.key_prefix = prefix;
    absl::StatusOr<std::unique_ptr<Pkcs11KeyStore>> s = Pkcs11KeyStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  std::shared_ptr<pkcs11::Token> Token() {
    absl::StatusOr<std::shared_ptr<pkcs11::Token>> t = pkcs11::Token::Open(Hsm()->uri());
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : nullptr;
  }
  std::vector<std::string> Labels() {
    std::vector<std::string> out;
    auto keys = Token()->ListKeys();
    EXPECT_TRUE(keys.ok()) << keys.status();
    for (const auto& k : *keys) {
      if (k.label.rfind(prefix_, 0) == 0) out.push_back(k.label);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  void SignAndVerify(const PublicKeyInfo& info, HashAlg hash, bool pss = false, int salt = 0) {
    SCOPED_TRACE(absl::StrCat(info.id, " ", HashAlgName(hash), pss ? " PSS " : " ", salt));
    const Bytes digest = Digest(hash, "message for " + info.id);
    SignRequest r{hash, pss, salt};
    ASSERT_OK_AND_ASSIGN(Signature sig, store_->Sign(info.id, digest, r));
    EXPECT_EQ(sig.fingerprint, info.fingerprint);
    EXPECT_TRUE(VerifyDigest(info.pkix_der, hash, digest, sig.signature, pss, salt));
    if (pss && salt == 0) {
      // Go's PSSSaltLengthAuto signs with the largest salt: a verifier expecting the digest
      // length must reject it (proves the salt really is the maximum).
      EXPECT_FALSE(VerifyDigest(info.pkix_der, hash, digest, sig.signature, true, -1));
    }
  }

  std::string prefix_;
  std::unique_ptr<Pkcs11KeyStore> store_;
};

TEST_F(Pkcs11StoreTest, EveryKeyTypeAndHash) {
  for (KeyAlg alg : {KeyAlg::kEcP256, KeyAlg::kEcP384, KeyAlg::kRsa2048, KeyAlg::kRsa4096}) {
    ASSERT_OK_AND_ASSIGN(PublicKeyInfo info, store_->Generate(KeyAlgName(alg), alg));
    EXPECT_EQ(info.alg, alg);
    EXPECT_EQ(info.fingerprint, Sha256Hex(info.pkix_der));
    const bool rsa = alg == KeyAlg::kRsa2048 || alg == KeyAlg::kRsa4096;
    for (HashAlg h : {HashAlg::kSha256, HashAlg::kSha384, HashAlg::kSha512}) {
      SignAndVerify(info, h);
      if (rsa) {
        SignAndVerify(info, h, true, -1);  // PSSSaltLengthEqualsHash
        SignAndVerify(info, h, true, 0);   // PSSSaltLengthAuto = maximum salt
        SignAndVerify(info, h, true, 17);  // exact
      }
    }
  }
}

TEST_F(Pkcs11StoreTest, KeysAreSensitiveNonExtractableAndLabelledWithThePrefix) {
  ASSERT_OK(store_->Generate("agent-svid-A", KeyAlg::kEcP256).status());
  EXPECT_EQ(Labels(), std::vector<std::string>{prefix_ + "/agent-svid-A"});
  pkcs11::Pkcs11Uri want;
  want.object = prefix_ + "/agent-svid-A";
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<pkcs11::Key> k, Token()->FindKey(want));
  ASSERT_OK_AND_ASSIGN(pkcs11::KeyAttributes a, k->ReadAttributes());
  EXPECT_TRUE(a.token);
  EXPECT_TRUE(a.is_private);
  EXPECT_TRUE(a.sensitive);
  EXPECT_FALSE(a.extractable);
  EXPECT_TRUE(a.never_extractable);
  EXPECT_TRUE(a.always_sensitive);
}

TEST_F(Pkcs11StoreTest, OverwriteReplacesOnlyThatKeyAndLeavesNoPendingObject) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a1, store_->Generate("agent-svid-A", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo b, store_->Generate("agent-svid-B", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a2, store_->Generate("agent-svid-A", KeyAlg::kEcP256));
  EXPECT_NE(a1.fingerprint, a2.fingerprint);
  EXPECT_EQ(Labels(), (std::vector<std::string>{prefix_ + "/agent-svid-A",
                                                prefix_ + "/agent-svid-B"}));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo b2, store_->Get("agent-svid-B"));
  EXPECT_EQ(b2.fingerprint, b.fingerprint);
  SignAndVerify(a2, HashAlg::kSha256);
}

TEST_F(Pkcs11StoreTest, FingerprintsAreStableAcrossRestarts) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("x509-CA-A", KeyAlg::kEcP384));
  store_ = Open(prefix_);
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].fingerprint, a.fingerprint);
  EXPECT_EQ(all[0].alg, KeyAlg::kEcP384);
  SignAndVerify(all[0], HashAlg::kSha384);
}

TEST_F(Pkcs11StoreTest, PrefixesIsolateInstancesOnOneToken) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo mine, store_->Generate("agent-svid-A", KeyAlg::kEcP256));
  std::unique_ptr<Pkcs11KeyStore> other = Open(prefix_ + "-other");
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> none, other->List());
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(other->Get("agent-svid-A").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(other->Sign("agent-svid-A", Digest(HashAlg::kSha256, "m"), SignRequest{})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo theirs, other->Generate("agent-svid-A", KeyAlg::kEcP256));
  EXPECT_NE(theirs.fingerprint, mine.fingerprint);
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo still, store_->Get("agent-svid-A"));
  EXPECT_EQ(still.fingerprint, mine.fingerprint);
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> one, store_->List());
  EXPECT_EQ(one.size(), 1u);
}

TEST_F(Pkcs11StoreTest, CrashBeforeTheOldKeyWasDestroyedKeepsTheOldKey) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo old, store_->Generate("k", KeyAlg::kEcP256));
  // What a crash right after step 1 leaves: a pending key next to the live one.
  ASSERT_OK(Token()->GenerateKey(KeyAlg::kEcP256, store_->PendingLabel("k")).status());
  store_ = Open(prefix_);
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].fingerprint, old.fingerprint);
  EXPECT_EQ(Labels(), std::vector<std::string>{prefix_ + "/k"});
}

TEST_F(Pkcs11StoreTest, CrashAfterTheOldKeyWasDestroyedFinishesTheNewKey) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo old, store_->Generate("k", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<pkcs11::Key> pending,
                       Token()->GenerateKey(KeyAlg::kEcP256, store_->PendingLabel("k")));
  pkcs11::Pkcs11Uri live;
  live.object = prefix_ + "/k";
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<pkcs11::Key> old_key, Token()->FindKey(live));
  ASSERT_OK(Token()->DestroyKey(*old_key));
  store_ = Open(prefix_);
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_NE(all[0].fingerprint, old.fingerprint);
  EXPECT_EQ(Labels(), std::vector<std::string>{prefix_ + "/k"});
  SignAndVerify(all[0], HashAlg::kSha256);
}

TEST_F(Pkcs11StoreTest, BadRequests) {
  ASSERT_OK(store_->Generate("ec", KeyAlg::kEcP256).status());
  const Bytes d = Digest(HashAlg::kSha256, "m");
  EXPECT_EQ(store_->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Sign("nope", d, SignRequest{}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Generate("", KeyAlg::kEcP256).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Sign("ec", d, SignRequest{HashAlg::kSha512, false, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Sign("ec", d, SignRequest{HashAlg::kSha256, true, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs11StoreTest, ConcurrentSignatures) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("a", KeyAlg::kEcP256));
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const Bytes d = Digest(HashAlg::kSha256, absl::StrCat(t, "/", i));
        absl::StatusOr<Signature> s = store_->Sign("a", d, SignRequest{});
        if (s.ok() && VerifyDigest(a.pkix_der, HashAlg::kSha256, d, s->signature)) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 100);
}

TEST_F(Pkcs11StoreTest, PinSourceFile) {
  const std::string pin_file = Hsm()->dir() + "/pin.txt";
  std::ofstream(pin_file) << kPin << "\n";
  Pkcs11KeyStore::Options o;
  o.uri = absl::StrCat("pkcs11:token=", Hsm()->label(), "?module-path=", SoftHsm::kModule,
                       "&pin-source=file:", pin_file);
  o.key_prefix = prefix_;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Pkcs11KeyStore> s, Pkcs11KeyStore::Open(o));
  ASSERT_OK(s->Generate("p", KeyAlg::kEcP256).status());
  EXPECT_THAT(s->Describe(), Not(HasSubstr(kPin)));
}

TEST_F(Pkcs11StoreTest, MissingTokenIsUnavailableNotFatal) {
  Pkcs11KeyStore::Options o;
  o.uri = absl::StrCat("pkcs11:token=no-such-token?module-path=", SoftHsm::kModule,
                       "&pin-value=s3cret-pin");
  o.key_prefix = prefix_;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Pkcs11KeyStore> s, Pkcs11KeyStore::Open(o));
  absl::StatusOr<std::vector<PublicKeyInfo>> l = s->List();
  EXPECT_EQ(l.status().code(), absl::StatusCode::kUnavailable) << l.status();
  EXPECT_THAT(l.status().message(), Not(HasSubstr("s3cret-pin")));
  EXPECT_THAT(s->Describe(), Not(HasSubstr("s3cret-pin")));
}

// Runs last in this binary (it logs the process out; PKCS#11 login state is per process).
TEST_F(Pkcs11StoreTest, ZzWrongPinIsFailedPreconditionWithoutThePin) {
  store_.reset();
  ASSERT_OK(Hsm()->LogOutThisProcess());
  Pkcs11KeyStore::Options o;
  o.uri = absl::StrCat("pkcs11:token=", Hsm()->label(), "?module-path=", SoftHsm::kModule,
                       "&pin-value=wrong-pin-0000");
  o.key_prefix = prefix_;
  absl::StatusOr<std::unique_ptr<Pkcs11KeyStore>> s = Pkcs11KeyStore::Open(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_NE(s.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.status().message(), Not(HasSubstr("wrong-pin-0000")));
  EXPECT_THAT(s.status().message(), HasSubstr("PIN"));
}

}  // namespace
}  // namespace hwid::keymanager
