// TpmKeyStore against a real swtpm: the KeyManager contract SPIRE relies on (generate, overwrite,
// fingerprints, every hash and key type, restarts, concurrency), sharing the TPM's 3 object
// slots with other processes, and the TPM going away and coming back. Every signature is
// verified by OpenSSL's default provider.
#include "attestor_plugin/keymanager/tpm_key_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/attestor_plugin/keymanager/verify.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/swtpm.h"
#include "tpm/tpm.h"

namespace hwid::keymanager {
namespace {

namespace fs = std::filesystem;
using testing::Digest;
using testing::Sha256Hex;
using testing::VerifyDigest;
using ::testing::HasSubstr;

class TpmStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hwid-km-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    store_ = Open(dir_);
    ASSERT_NE(store_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
    // The store keeps nothing loaded in the TPM between calls.
    auto tpm = tpm::Tpm::Open(hwid::testing::GlobalSwtpm().tcti());
    if (tpm.ok()) {
      auto handles = (*tpm)->TransientHandles();
      if (handles.ok()) {
        EXPECT_TRUE(handles->empty()) << handles->size() << " transient objects left";
      }
    }
  }
  static std::unique_ptr<TpmKeyStore> Open(const std::string& dir,
                                           absl::Duration slot_wait = absl::Seconds(10)) {
    TpmKeyStore::Options o;
    o.tcti = hwid::testing::GlobalSwtpm().tcti();
    o.key_dir = dir;
    o.slot_wait = slot_wait;
    absl::StatusOr<std::unique_ptr<TpmKeyStore>> s = TpmKeyStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  // SignAndVerify signs "msg" with `id` and checks the signature with OpenSSL.
  void SignAndVerify(const PublicKeyInfo& info, HashAlg hash, bool pss = false, int salt = 0) {
    SCOPED_TRACE(absl::StrCat(info.id, " ", HashAlgName(hash), pss ? " PSS " : " ", salt));
    const Bytes digest = Digest(hash, "message for " + info.id);
    SignRequest r;
    r.hash = hash;
    r.pss = pss;
    r.go_pss_salt = salt;
    ASSERT_OK_AND_ASSIGN(Signature sig, store_->Sign(info.id, digest, r));
    EXPECT_EQ(sig.fingerprint, info.fingerprint);
    EXPECT_TRUE(VerifyDigest(info.pkix_der, hash, digest, sig.signature, pss, salt));
    Bytes other = digest;
    other[0] ^= 1;
    EXPECT_FALSE(VerifyDigest(info.pkix_der, hash, other, sig.signature, pss, salt));
  }

  std::string dir_;
  std::unique_ptr<TpmKeyStore> store_;
};

TEST_F(TpmStoreTest, EcKeysSignEveryHashAsDer) {
  for (KeyAlg alg : {KeyAlg::kEcP256, KeyAlg::kEcP384}) {
    ASSERT_OK_AND_ASSIGN(PublicKeyInfo info, store_->Generate(KeyAlgName(alg), alg));
    EXPECT_EQ(info.alg, alg);
    EXPECT_EQ(info.fingerprint, Sha256Hex(info.pkix_der));
    for (HashAlg h : {HashAlg::kSha256, HashAlg::kSha384, HashAlg::kSha512}) {
      SignAndVerify(info, h);
    }
  }
}

TEST_F(TpmStoreTest, RsaKeysSignPkcs1AndPssWithGoSaltSemantics) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo info, store_->Generate("rsa", KeyAlg::kRsa2048));
  EXPECT_EQ(info.alg, KeyAlg::kRsa2048);
  for (HashAlg h : {HashAlg::kSha256, HashAlg::kSha384, HashAlg::kSha512}) {
    SignAndVerify(info, h);                // PKCS#1 v1.5
    SignAndVerify(info, h, true, 0);       // PSSSaltLengthAuto: any salt verifies
  }
  // PSSSaltLengthEqualsHash (what Go's x509 uses): swtpm (libtpms) salts with the digest length.
  SignAndVerify(info, HashAlg::kSha256, true, -1);
  SignAndVerify(info, HashAlg::kSha256, true, 32);
  // An exact salt the TPM does not use is refused, not answered with a signature that fails.
  SignRequest r;
  r.hash = HashAlg::kSha256;
  r.pss = true;
  r.go_pss_salt = 20;
  absl::StatusOr<Signature> s = store_->Sign("rsa", Digest(HashAlg::kSha256, "m"), r);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("salt"));
}

TEST_F(TpmStoreTest, Rsa4096IsRefusedByNameWhereTheTpmCannotMakeIt) {
  // swtpm (libtpms 0.9) supports RSA up to 3072 bits: TPM2_TestParms says no, and SPIRE gets an
  // INVALID_ARGUMENT naming the type instead of a TPM error code.
  absl::StatusOr<PublicKeyInfo> info = store_->Generate("big", KeyAlg::kRsa4096);
  if (info.ok()) {
    SignAndVerify(*info, HashAlg::kSha256);  // a TPM that can: the key must work
    return;
  }
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << info.status();
  EXPECT_THAT(info.status().message(), HasSubstr("rsa-4096"));
  EXPECT_FALSE(fs::exists(dir_ + "/big.tss2.pem"));
}

TEST_F(TpmStoreTest, KeyFilesAreTss2PrivateKeysWrittenPrivately) {
  ASSERT_OK(store_->Generate("agent-svid-A", KeyAlg::kEcP256).status());
  const std::string path = dir_ + "/agent-svid-A.tss2.pem";
  struct stat st = {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream in(path);
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(pem.rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().rfind(".tmp-", 0), std::string::npos)
        << "temp file left behind: " << e.path();
  }
}

TEST_F(TpmStoreTest, OverwriteChangesOnlyThatKey) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a1, store_->Generate("agent-svid-A", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo b, store_->Generate("agent-svid-B", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a2, store_->Generate("agent-svid-A", KeyAlg::kEcP384));
  EXPECT_NE(a1.fingerprint, a2.fingerprint);
  EXPECT_EQ(a2.alg, KeyAlg::kEcP384);
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo b_again, store_->Get("agent-svid-B"));
  EXPECT_EQ(b_again.fingerprint, b.fingerprint);
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a_now, store_->Get("agent-svid-A"));
  EXPECT_EQ(a_now.fingerprint, a2.fingerprint);
  // Signatures come from the new key, not the old one.
  const Bytes d = Digest(HashAlg::kSha256, "x");
  ASSERT_OK_AND_ASSIGN(Signature sig, store_->Sign("agent-svid-A", d, SignRequest{}));
  EXPECT_EQ(sig.fingerprint, a2.fingerprint);
  EXPECT_TRUE(VerifyDigest(a2.pkix_der, HashAlg::kSha256, d, sig.signature));
  EXPECT_FALSE(VerifyDigest(a1.pkix_der, HashAlg::kSha256, d, sig.signature));
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, "agent-svid-A");
  EXPECT_EQ(all[1].id, "agent-svid-B");
}

TEST_F(TpmStoreTest, KeysAndFingerprintsSurviveARestartOfThePluginAndOfTheTpm) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("x509-CA-A", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo r, store_->Generate("JWT-Signer-A", KeyAlg::kRsa2048));
  SignAndVerify(a, HashAlg::kSha256);  // a saved context now exists
  store_ = Open(dir_);                 // plugin restart
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, "JWT-Signer-A");
  EXPECT_EQ(all[0].fingerprint, r.fingerprint);
  EXPECT_EQ(all[1].fingerprint, a.fingerprint);
  SignAndVerify(a, HashAlg::kSha256);
  // TPM restart: the saved context is refused and the key is loaded from its file again.
  ASSERT_OK(hwid::testing::GlobalSwtpm().Restart());
  SignAndVerify(a, HashAlg::kSha384);
  SignAndVerify(r, HashAlg::kSha256);
}

TEST_F(TpmStoreTest, ListShowsOnlyThisKeyDirAndSkipsForeignAndDamagedFiles) {
  ASSERT_OK(store_->Generate("mine", KeyAlg::kEcP256).status());
  std::ofstream(dir_ + "/notes.txt") << "not a key";
  std::ofstream(dir_ + "/.tmp-mine.tss2.pem-abc123") << "interrupted write";
  std::ofstream(dir_ + "/damaged.tss2.pem") << "-----BEGIN TSS2 PRIVATE KEY-----\nAAAA\n";
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> all, store_->List());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, "mine");
  absl::StatusOr<PublicKeyInfo> d = store_->Get("damaged");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(d.status().message(), HasSubstr("damaged.tss2.pem"));

  char tmpl[] = "/tmp/hwid-km-other-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::unique_ptr<TpmKeyStore> other = Open(tmpl);
  ASSERT_OK_AND_ASSIGN(std::vector<PublicKeyInfo> none, other->List());
  // A crash leftover of an interrupted key write is removed when the plugin starts.
  EXPECT_TRUE(fs::exists(dir_ + "/.tmp-mine.tss2.pem-abc123"));
  store_ = Open(dir_);
  EXPECT_FALSE(fs::exists(dir_ + "/.tmp-mine.tss2.pem-abc123"));
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(other->Get("mine").status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(tmpl);
}

TEST_F(TpmStoreTest, BadRequests) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo ec, store_->Generate("ec", KeyAlg::kEcP256));
  const Bytes d256 = Digest(HashAlg::kSha256, "m");
  SignRequest sha256;
  EXPECT_EQ(store_->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Sign("nope", d256, sha256).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Generate("", KeyAlg::kEcP256).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Sign("", d256, sha256).status().code(), absl::StatusCode::kInvalidArgument);
  SignRequest sha384;
  sha384.hash = HashAlg::kSha384;
  absl::StatusOr<Signature> s = store_->Sign("ec", d256, sha384);  // digest length mismatch
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("48"));
  SignRequest pss;
  pss.pss = true;
  s = store_->Sign("ec", d256, pss);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("EC key"));
  SignRequest sha224;
  sha224.hash = HashAlg::kSha224;
  s = store_->Sign("ec", Digest(HashAlg::kSha224, "m"), sha224);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("SHA224"));
}

TEST_F(TpmStoreTest, KeyDirThatIsAFileIsAClearError) {
  const std::string file = dir_ + "/plain-file";
  std::ofstream(file) << "x";
  TpmKeyStore::Options o;
  o.tcti = hwid::testing::GlobalSwtpm().tcti();
  o.key_dir = file;
  absl::StatusOr<std::unique_ptr<TpmKeyStore>> s = TpmKeyStore::Open(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("not a directory"));
}

TEST_F(TpmStoreTest, ConcurrentSignatures) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("a", KeyAlg::kEcP256));
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo b, store_->Generate("b", KeyAlg::kEcP256));
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const PublicKeyInfo& k = t % 2 == 0 ? a : b;
      for (int i = 0; i < 10; ++i) {
        const Bytes d = Digest(HashAlg::kSha256, absl::StrCat(t, "/", i));
        absl::StatusOr<Signature> s = store_->Sign(k.id, d, SignRequest{});
        (s.ok() && VerifyDigest(k.pkix_der, HashAlg::kSha256, d, s->signature) ? good : bad)++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 40);
  EXPECT_EQ(bad.load(), 0);
}

TEST_F(TpmStoreTest, SharesTheTpmWithProcessesThatHoldEverySlot) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("a", KeyAlg::kEcP256));
  SignAndVerify(a, HashAlg::kSha256);  // from now on one slot per signature suffices
  // Another TPM user (its own connection, like another process) fills every object slot.
  ASSERT_OK_AND_ASSIGN(auto other, tpm::Tpm::Open(hwid::testing::GlobalSwtpm().tcti()));
  std::vector<tpm::LoadedKey> hogs;
  while (true) {
    absl::StatusOr<tpm::LoadedKey> k = other->LoadSrk(/*allow_persistent=*/false);
    if (!k.ok()) {
      ASSERT_EQ(k.status().code(), absl::StatusCode::kResourceExhausted) << k.status();
      break;
    }
    hogs.push_back(*std::move(k));
    ASSERT_LT(hogs.size(), 64u);
  }
  // While they are all held: a bounded wait, then UNAVAILABLE (busy device, retry later).
  std::unique_ptr<TpmKeyStore> impatient = Open(dir_, absl::Milliseconds(300));
  const Bytes d = Digest(HashAlg::kSha256, "busy");
  absl::StatusOr<Signature> s = impatient->Sign("a", d, SignRequest{});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("slot"));
  // A signature that starts while they are held completes once one is released.
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(300));
    hogs.pop_back();
  });
  s = store_->Sign("a", d, SignRequest{});
  release.join();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(VerifyDigest(a.pkix_der, HashAlg::kSha256, d, s->signature));
  hogs.clear();
}

TEST_F(TpmStoreTest, TpmGoneAndBack) {
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo a, store_->Generate("a", KeyAlg::kEcP256));
  SignAndVerify(a, HashAlg::kSha256);
  ASSERT_OK(hwid::testing::GlobalSwtpm().Stop());
  const Bytes d = Digest(HashAlg::kSha256, "gone");
  absl::StatusOr<Signature> s = store_->Sign("a", d, SignRequest{});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_EQ(store_->Generate("b", KeyAlg::kEcP256).status().code(),
            absl::StatusCode::kUnavailable);
  // Reading public keys needs no TPM.
  ASSERT_OK_AND_ASSIGN(PublicKeyInfo again, store_->Get("a"));
  EXPECT_EQ(again.fingerprint, a.fingerprint);
  ASSERT_OK(hwid::testing::GlobalSwtpm().Restart());
  SignAndVerify(a, HashAlg::kSha256);
  ASSERT_OK(store_->Generate("b", KeyAlg::kEcP256).status());
}

}  // namespace
}  // namespace hwid::keymanager
