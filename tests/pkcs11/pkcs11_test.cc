// hwid::pkcs11 against a real SoftHSM2 token (private SOFTHSM2_CONF per binary). Every signature
// is checked by OpenSSL's default provider.
#include "pkcs11/pkcs11.h"

#include <dlfcn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pkcs11/error.h"
#include "pkcs11/uri.h"
#include "pkcs11/uri_pem.h"
#include "tests/pkcs11/softhsm.h"

namespace hwid::pkcs11 {
namespace {

using ::hwid::testing::SoftHsm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPin[] = "Ab-771-pin";
constexpr char kSoPin[] = "so-5678";

// One token per binary, removed (directory and all) when the test program ends.
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
    absl::StatusOr<std::unique_ptr<SoftHsm>> h = SoftHsm::Start("hwid-test", kPin, kSoPin);
    g_hsm = h.ok() ? h->release() : nullptr;
  }
  return g_hsm;
}

class Pkcs11Test : public ::testing::Test {
 protected:
  void SetUp() override {
    HWID_REQUIRE_SOFTHSM();
    ASSERT_NE(Hsm(), nullptr) << "SoftHSM token setup failed";
    unsetenv("HWID_PKCS11_PIN");
    unsetenv("HWID_PKCS11_MODULE");
  }

  std::shared_ptr<Token> OpenToken() {
    absl::StatusOr<std::shared_ptr<Token>> t = Token::Open(Hsm()->uri());
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : nullptr;
  }

  std::shared_ptr<Key> Generate(KeyAlg alg, const std::string& label) {
    std::shared_ptr<Token> t = OpenToken();
    if (t == nullptr) return nullptr;
    absl::StatusOr<std::shared_ptr<Key>> k = t->GenerateKey(alg, label);
    EXPECT_TRUE(k.ok()) << k.status();
    return k.ok() ? *k : nullptr;
  }
};

Bytes Sha(const std::string& name, absl::string_view msg) {
  Bytes d(EVP_MAX_MD_SIZE);
  unsigned int n = 0;
  EVP_Digest(msg.data(), msg.size(), d.data(), &n, EVP_get_digestbyname(name.c_str()), nullptr);
  d.resize(n);
  return d;
}

// Verify with the default provider: ECDSA, PKCS#1 v1.5, or PSS with the given salt length.
bool OracleVerify(EVP_PKEY* pub, const std::string& md, ByteSpan digest, ByteSpan sig,
                  SignScheme mech, int salt = RSA_PSS_SALTLEN_DIGEST) {
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pub, "provider=default"));
  if (ctx == nullptr || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  if (EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_get_digestbyname(md.c_str())) != 1) return false;
  if (mech == SignScheme::kRsaPkcs1) {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING);
  } else if (mech == SignScheme::kRsaPss) {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), salt);
  }
  const int ok = EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), digest.data(), digest.size());
  DrainOpenSslErrors();
  return ok == 1;
}

// CountObjects counts the token objects of class `cls` labelled `label`, asking the module
// directly (not through hwid::pkcs11): the oracle for what DestroyKey and RelabelKey changed.
// -1 when the module cannot be asked. Private objects are visible only while the process is
// logged in.
int CountObjects(CK_OBJECT_CLASS cls, const std::string& label) {
  void* dl = dlopen(SoftHsm::kModule, RTLD_NOW | RTLD_NOLOAD);
  if (dl == nullptr) return -1;
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
  CK_FUNCTION_LIST* fl = nullptr;
  CK_SLOT_ID slots[8];
  CK_ULONG nslots = 8;
  if (get == nullptr || get(&fl) != CKR_OK || fl->C_GetSlotList(CK_TRUE, slots, &nslots) != CKR_OK) {
    dlclose(dl);
    return -1;
  }
  int count = 0;
  for (CK_ULONG i = 0; i < nslots; ++i) {
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    if (fl->C_OpenSession(slots[i], CKF_SERIAL_SESSION, nullptr, nullptr, &s) != CKR_OK) continue;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    CK_OBJECT_HANDLE found[8];
    CK_ULONG n = 0;
    if (fl->C_FindObjectsInit(s, t, 2) == CKR_OK) {
      if (fl->C_FindObjects(s, found, 8, &n) == CKR_OK) count += static_cast<int>(n);
      fl->C_FindObjectsFinal(s);
    }
    fl->C_CloseSession(s);
  }
  dlclose(dl);
  return count;
}

TEST(UriTest, ParsesAttributesAndRedactsPin) {
  absl::StatusOr<Pkcs11Uri> u = ParseUri(
      "pkcs11:token=my%20tok;object=k1;id=%01%02;type=private?module-path=/x/y.so&pin-value=s3cr3t");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->token, "my tok");
  EXPECT_EQ(u->object, "k1");
  EXPECT_EQ(u->id, (Bytes{1, 2}));
  EXPECT_EQ(u->type, "private");
  EXPECT_EQ(u->module_path, "/x/y.so");
  ASSERT_TRUE(u->pin_value.has_value());
  EXPECT_EQ(std::string(u->pin_value->begin(), u->pin_value->end()), "s3cr3t");
  EXPECT_THAT(u->redacted, Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(u->redacted, HasSubstr("pin-value=***"));
}

TEST(UriTest, RejectsBadUris) {
  EXPECT_EQ(ParseUri("file:/etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseUri("pkcs11:id=%zz").status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<Pkcs11Uri> u = ParseUri("pkcs11:token=a;bogus-attr=1?pin-value=zz9");
  ASSERT_FALSE(u.ok());
  EXPECT_THAT(std::string(u.status().message()), Not(HasSubstr("zz9")));
}

TEST(UriTest, FormatRoundTrips) {
  TokenFields f{"tok en", "SoftHSM project", "SoftHSM v2", "abc123"};
  const std::string s = FormatObjectUri(f, "my;key", Bytes{0xde, 0xad}, "private");
  absl::StatusOr<Pkcs11Uri> u = ParseUri(s);
  ASSERT_TRUE(u.ok()) << u.status() << " " << s;
  EXPECT_TRUE(MatchesToken(*u, f));
  EXPECT_EQ(u->object, "my;key");
  EXPECT_EQ(u->id, (Bytes{0xde, 0xad}));
  EXPECT_FALSE(MatchesToken(*u, TokenFields{"other", "SoftHSM project", "SoftHSM v2", "abc123"}));
}

TEST(UriPemTest, RoundTripsAndRefusesPins) {
  const std::string uri = "pkcs11:token=t;object=k;type=private?module-path=/m.so";
  absl::StatusOr<std::string> pem = EncodeUriPem(uri);
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_THAT(*pem, HasSubstr("-----BEGIN PKCS#11 PROVIDER URI-----"));
  absl::StatusOr<std::string> back = ParseUriFile(AsSpan(*pem));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, uri);
  absl::StatusOr<Bytes> der = EncodeUriDer(uri);
  ASSERT_TRUE(der.ok());
  EXPECT_TRUE(LooksLikeUriDer(*der));
  EXPECT_EQ(*ParseUriFile(*der), uri);
  // A PIN never goes into (or comes out of) a key file.
  EXPECT_EQ(EncodeUriDer("pkcs11:token=t?pin-value=1234").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeUriDer("pkcs11:token=t?module-path=/m.so&pin-value=1234").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeUriDer("file:/etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UriPemTest, RejectsMalformedFiles) {
  absl::StatusOr<Bytes> good = EncodeUriDer("pkcs11:token=t;object=k");
  ASSERT_TRUE(good.ok());
  struct Row {
    const char* name;
    Bytes der;
    const char* message;
  };
  Bytes trailing = *good;
  trailing.push_back(0);
  Bytes truncated(good->begin(), good->end() - 3);
  Bytes bad_desc = *good;
  bad_desc[4] ^= 0x01;  // a byte inside the description
  Bytes bad_tag = *good;
  bad_tag[2] = 0x0c;  // description as UTF8String instead of VisibleString
  Bytes long_len = *good;
  long_len.insert(long_len.begin() + 1, 0x81);  // non-minimal length (0x81 with a short value)
  Bytes pin_in_file = {0x30, 0x00};
  {
    const std::string desc = kUriPemDescription;
    const std::string u = "pkcs11:token=t?pin-value=1234";
    Bytes body = {0x1a, static_cast<uint8_t>(desc.size())};
    body.insert(body.end(), desc.begin(), desc.end());
    body.push_back(0x0c);
    body.push_back(static_cast<uint8_t>(u.size()));
    body.insert(body.end(), u.begin(), u.end());
    pin_in_file = {0x30, static_cast<uint8_t>(body.size())};
    pin_in_file.insert(pin_in_file.end(), body.begin(), body.end());
  }
  const Row rows[] = {
      {"empty", Bytes{}, "empty input"},
      {"trailing", trailing, "trailing"},
      {"truncated", truncated, "truncated"},
      {"description", bad_desc, "unknown description"},
      {"tag", bad_tag, "unexpected tag"},
      {"length", long_len, "length"},
      {"pin", pin_in_file, "pin-value"},
  };
  for (const Row& r : rows) {
    absl::StatusOr<std::string> u = ParseUriFile(r.der);
    ASSERT_FALSE(u.ok()) << r.name;
    EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument) << r.name;
    EXPECT_THAT(std::string(u.status().message()), HasSubstr(r.message)) << r.name;
    EXPECT_THAT(std::string(u.status().message()), Not(HasSubstr("1234"))) << r.name;
  }
  const std::string wrong_label =
      "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
  EXPECT_THAT(std::string(ParseUriFile(AsSpan(wrong_label)).status().message()),
              HasSubstr("PEM label"));
}

TEST(CkrErrorTest, NamesCodeAndHint) {
  absl::Status st = CkrError(CKR_PIN_INCORRECT, "C_Login", "token 't'");
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), HasSubstr("CKR_PIN_INCORRECT (0xa0)"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("C_Login on token 't'"));
  EXPECT_EQ(CkrError(0x12345, "x", "").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(CkrName(0x12345), "CKR_0x12345");
  EXPECT_TRUE(CkrError(CKR_OK, "x", "y").ok());
}

struct AlgCase {
  KeyAlg alg;
  int bits;
};

class GenerateTest : public Pkcs11Test, public ::testing::WithParamInterface<AlgCase> {};

TEST_P(GenerateTest, NonExtractableKeySignsAndVerifies) {
  const AlgCase c = GetParam();
  std::shared_ptr<Key> key = Generate(c.alg, absl::StrCat("gen-", KeyAlgName(c.alg)));
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(key->bits(), c.bits);
  absl::StatusOr<KeyAttributes> attrs = key->ReadAttributes();
  ASSERT_TRUE(attrs.ok()) << attrs.status();
  EXPECT_TRUE(attrs->token);
  EXPECT_TRUE(attrs->is_private);
  EXPECT_TRUE(attrs->sensitive);
  EXPECT_FALSE(attrs->extractable);
  EXPECT_TRUE(attrs->always_sensitive);
  EXPECT_TRUE(attrs->never_extractable);
  EXPECT_TRUE(attrs->sign);

  const bool ec = key->type() == KeyType::kEc;
  std::vector<std::pair<SignScheme, HashAlg>> cases;
  if (ec) {
    cases = {{SignScheme::kEcdsa, HashAlg::kSha256}, {SignScheme::kEcdsa, HashAlg::kSha384}};
  } else {
    cases = {{SignScheme::kRsaPkcs1, HashAlg::kSha256}, {SignScheme::kRsaPkcs1, HashAlg::kSha512},
             {SignScheme::kRsaPss, HashAlg::kSha256}, {SignScheme::kRsaPss, HashAlg::kSha384}};
  }
  for (const auto& [mech, hash] : cases) {
    const std::string md = HashAlgName(hash);
    SCOPED_TRACE(md);
    Bytes digest = Sha(md, "hello token");
    absl::StatusOr<Bytes> sig = key->Sign(digest, {mech, hash, std::nullopt});
    ASSERT_TRUE(sig.ok()) << sig.status();
    EXPECT_TRUE(OracleVerify(key->public_key(), md, digest, *sig, mech));
    // A different message must not verify (the oracle is not vacuous).
    Bytes other = Sha(md, "hello tokeN");
    EXPECT_FALSE(OracleVerify(key->public_key(), md, other, *sig, mech));
  }
  // The key is found again by the URI it reports (plus module and PIN).
  absl::StatusOr<std::shared_ptr<Key>> again = LoadKey(
      absl::StrCat(key->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(EVP_PKEY_eq((*again)->public_key(), key->public_key()), 1);
}

INSTANTIATE_TEST_SUITE_P(Algs, GenerateTest,
                         ::testing::Values(AlgCase{KeyAlg::kEcP256, 256},
                                           AlgCase{KeyAlg::kEcP384, 384},
                                           AlgCase{KeyAlg::kRsa2048, 2048},
                                           AlgCase{KeyAlg::kRsa3072, 3072},
                                           AlgCase{KeyAlg::kRsa4096, 4096}),
                         [](const auto& param_info) {
                           std::string n = KeyAlgName(param_info.param.alg);
                           n.erase(std::remove(n.begin(), n.end(), '-'), n.end());
                           return n;
                         });

TEST_F(Pkcs11Test, PssWithExplicitSaltAndBadSalt) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kRsa2048, "pss-salt");
  ASSERT_NE(key, nullptr);
  Bytes digest = Sha("SHA256", "m");
  absl::StatusOr<Bytes> sig = key->Sign(digest, {SignScheme::kRsaPss, HashAlg::kSha256, 20});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(OracleVerify(key->public_key(), "SHA256", digest, *sig, SignScheme::kRsaPss, 20));
  EXPECT_FALSE(OracleVerify(key->public_key(), "SHA256", digest, *sig, SignScheme::kRsaPss, 32));
  EXPECT_EQ(key->Sign(digest, {SignScheme::kRsaPss, HashAlg::kSha256, 400}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs11Test, RejectsWrongDigestLengthAndMechanism) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "bad-input");
  ASSERT_NE(key, nullptr);
  Bytes short_digest(31, 1);
  absl::Status st = key->Sign(short_digest, {SignScheme::kEcdsa, HashAlg::kSha256, std::nullopt}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("32 bytes, got 31"));
  EXPECT_EQ(key->Sign(Bytes(32), {SignScheme::kRsaPkcs1, HashAlg::kSha256, std::nullopt}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A SHA-256-sized digest announced as SHA-384.
  EXPECT_EQ(key->Sign(Bytes(32), {SignScheme::kEcdsa, HashAlg::kSha384, std::nullopt}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A salt length is meaningless for ECDSA.
  EXPECT_EQ(key->Sign(Bytes(32), {SignScheme::kEcdsa, HashAlg::kSha256, 32}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs11Test, ListsGeneratedKeys) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "listed");
  ASSERT_NE(key, nullptr);
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  absl::StatusOr<std::vector<KeyInfo>> keys = t->ListKeys();
  ASSERT_TRUE(keys.ok()) << keys.status();
  bool found = false;
  for (const KeyInfo& k : *keys) {
    if (k.label == "listed") {
      found = true;
      EXPECT_EQ(k.id, key->id());
      EXPECT_EQ(k.type, KeyType::kEc);
      EXPECT_EQ(k.uri, key->uri());
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(Pkcs11Test, DuplicateLabelIsRefused) {
  ASSERT_NE(Generate(KeyAlg::kEcP256, "dup"), nullptr);
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->GenerateKey(KeyAlg::kEcP256, "dup").status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(Pkcs11Test, DestroyKeyRemovesBothObjectsAndNothingElse) {
  std::shared_ptr<Key> doomed = Generate(KeyAlg::kEcP256, "doomed");
  std::shared_ptr<Key> bystander = Generate(KeyAlg::kEcP256, "bystander");
  ASSERT_NE(doomed, nullptr);
  ASSERT_NE(bystander, nullptr);
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(CountObjects(CKO_PRIVATE_KEY, "doomed"), 1);
  ASSERT_EQ(CountObjects(CKO_PUBLIC_KEY, "doomed"), 1);
  Bytes digest = Sha("SHA256", "last words");
  ASSERT_TRUE(doomed->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).ok());
  ASSERT_TRUE(t->ListKeys().ok());  // a listing before the change must not be served again

  ASSERT_TRUE(t->DestroyKey(*doomed).ok());
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "doomed"), 0);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "doomed"), 0);
  absl::StatusOr<std::shared_ptr<Key>> found = t->FindKey("pkcs11:object=doomed");
  EXPECT_EQ(found.status().code(), absl::StatusCode::kNotFound) << found.status();
  EXPECT_EQ(t->FindKey(doomed->uri()).status().code(), absl::StatusCode::kNotFound);
  // The Key object that still exists cannot sign any more, and says why.
  absl::Status st = doomed->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  // Twice: NotFound, nothing else touched.
  st = t->DestroyKey(*doomed);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  // The other key is untouched: both objects there, it is found and signs.
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "bystander"), 1);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "bystander"), 1);
  absl::StatusOr<std::shared_ptr<Key>> other = t->FindKey("pkcs11:object=bystander");
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Bytes> sig = (*other)->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(OracleVerify((*other)->public_key(), "SHA256", digest, *sig, SignScheme::kEcdsa));
  // A listing no longer shows it.
  absl::StatusOr<std::vector<KeyInfo>> keys = t->ListKeys();
  ASSERT_TRUE(keys.ok()) << keys.status();
  for (const KeyInfo& k : *keys) {
    EXPECT_NE(k.label, "doomed");
  }
  // The label is free again.
  EXPECT_NE(Generate(KeyAlg::kEcP256, "doomed"), nullptr);
}

TEST_F(Pkcs11Test, DestroyRsaKey) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kRsa2048, "doomed-rsa");
  ASSERT_NE(key, nullptr);
  ASSERT_TRUE(key->token()->DestroyKey(*key).ok());
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "doomed-rsa"), 0);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "doomed-rsa"), 0);
}

TEST_F(Pkcs11Test, RelabelKeyRenamesBothObjects) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "old-name");
  ASSERT_NE(key, nullptr);
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(t->ListKeys().ok());  // a listing before the change must not be served again
  absl::StatusOr<std::shared_ptr<Key>> renamed = t->RelabelKey(*key, "new-name");
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  EXPECT_EQ((*renamed)->label(), "new-name");
  EXPECT_THAT((*renamed)->uri(), HasSubstr("object=new-name"));
  EXPECT_THAT((*renamed)->uri(), Not(HasSubstr("old-name")));
  EXPECT_EQ((*renamed)->id(), key->id());
  EXPECT_EQ(EVP_PKEY_eq((*renamed)->public_key(), key->public_key()), 1);
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "new-name"), 1);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "new-name"), 1);
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "old-name"), 0);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "old-name"), 0);

  absl::StatusOr<std::shared_ptr<Key>> by_new = t->FindKey("pkcs11:object=new-name");
  ASSERT_TRUE(by_new.ok()) << by_new.status();
  EXPECT_EQ(EVP_PKEY_eq((*by_new)->public_key(), key->public_key()), 1);
  EXPECT_EQ(t->FindKey("pkcs11:object=old-name").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<KeyInfo>> keys = t->ListKeys();
  ASSERT_TRUE(keys.ok()) << keys.status();
  int listed = 0;
  for (const KeyInfo& k : *keys) {
    EXPECT_NE(k.label, "old-name");
    if (k.id == key->id()) {
      ++listed;
      EXPECT_EQ(k.label, "new-name");
      EXPECT_EQ(k.uri, (*renamed)->uri());
    }
  }
  EXPECT_EQ(listed, 1);
  absl::StatusOr<std::shared_ptr<Key>> by_uri = LoadKey(
      absl::StrCat((*renamed)->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin));
  ASSERT_TRUE(by_uri.ok()) << by_uri.status();
  Bytes digest = Sha("SHA256", "renamed");
  absl::StatusOr<Bytes> sig = (*renamed)->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(OracleVerify(key->public_key(), "SHA256", digest, *sig, SignScheme::kEcdsa));
  // The same label again changes nothing.
  absl::StatusOr<std::shared_ptr<Key>> same = t->RelabelKey(**renamed, "new-name");
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ((*same)->label(), "new-name");
  EXPECT_EQ(t->RelabelKey(**renamed, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs11Test, RelabelOntoAnExistingLabelIsRefused) {
  std::shared_ptr<Key> a = Generate(KeyAlg::kEcP256, "taken-a");
  std::shared_ptr<Key> b = Generate(KeyAlg::kRsa2048, "taken-b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  absl::StatusOr<std::shared_ptr<Key>> r = t->RelabelKey(*a, "taken-b");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("taken-b"));
  // Nothing changed.
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "taken-a"), 1);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "taken-a"), 1);
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "taken-b"), 1);
  EXPECT_EQ(CountObjects(CKO_PUBLIC_KEY, "taken-b"), 1);
  // Changes need a logged-in token object (the process is logged in; this object has no PIN).
  absl::StatusOr<std::shared_ptr<Token>> no_pin = Token::Open(Hsm()->uri_no_pin());
  ASSERT_TRUE(no_pin.ok()) << no_pin.status();
  EXPECT_EQ((*no_pin)->DestroyKey(*a).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*no_pin)->RelabelKey(*a, "taken-c").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "taken-a"), 1);
  // A destroyed key cannot be relabelled.
  ASSERT_TRUE(t->DestroyKey(*a).ok());
  EXPECT_EQ(t->RelabelKey(*a, "taken-c").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(Pkcs11Test, WrongPinIsClearAndNotRetried) {
  // Login state is per process: log out, so the token checks the next PIN.
  ASSERT_TRUE(Hsm()->LogOutThisProcess().ok());
  const std::string uri = absl::StrCat(Hsm()->uri_no_pin(), "&pin-value=wrong-9931");
  absl::StatusOr<std::shared_ptr<Token>> t = Token::Open(uri);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kPermissionDenied);
  const std::string msg(t.status().message());
  EXPECT_THAT(msg, HasSubstr("CKR_PIN_INCORRECT"));
  EXPECT_THAT(msg, HasSubstr("hwid-test"));
  EXPECT_THAT(msg, Not(HasSubstr("wrong-9931")));
  // The right PIN still works: the failure did not lock the token.
  EXPECT_NE(OpenToken(), nullptr);
}

// Another user of the module logs the process out under a loaded key: the next signature logs in
// again with the key's PIN (once) instead of failing.
TEST_F(Pkcs11Test, SignLogsInAgainAfterAnExternalLogout) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "relogin");
  ASSERT_NE(key, nullptr);
  ASSERT_TRUE(Hsm()->LogOutThisProcess().ok());
  Bytes digest = Sha("SHA256", "after logout");
  absl::StatusOr<Bytes> sig = key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(OracleVerify(key->public_key(), "SHA256", digest, *sig, SignScheme::kEcdsa));
}

TEST_F(Pkcs11Test, PinFromSourceFileAndEnvironment) {
  ASSERT_NE(Generate(KeyAlg::kEcP256, "pinsrc"), nullptr);
  const std::string pin_file = Hsm()->dir() + "/pin.txt";
  ASSERT_TRUE(WriteFile(pin_file, AsSpan(absl::StrCat(kPin, "\n")), 0600).ok());
  absl::StatusOr<std::shared_ptr<Key>> k1 =
      LoadKey(absl::StrCat("pkcs11:token=hwid-test;object=pinsrc?module-path=", SoftHsm::kModule,
                           "&pin-source=file:", pin_file));
  EXPECT_TRUE(k1.ok()) << k1.status();
  setenv("HWID_PKCS11_PIN", kPin, 1);
  setenv("HWID_PKCS11_MODULE", SoftHsm::kModule, 1);
  absl::StatusOr<std::shared_ptr<Key>> k2 = LoadKey("pkcs11:token=hwid-test;object=pinsrc");
  EXPECT_TRUE(k2.ok()) << k2.status();
  unsetenv("HWID_PKCS11_PIN");
  // Login state is per process and outlives our token objects (modules are never finalised):
  // log the process out. Without a PIN the private key is then invisible, and the error says why.
  k1 = absl::UnknownError("released");
  k2 = absl::UnknownError("released");
  ASSERT_TRUE(Hsm()->LogOutThisProcess().ok());
  absl::StatusOr<std::shared_ptr<Key>> k3 = LoadKey("pkcs11:token=hwid-test;object=pinsrc");
  ASSERT_FALSE(k3.ok());
  EXPECT_EQ(k3.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(k3.status().message()), HasSubstr("not logged in"));
  unsetenv("HWID_PKCS11_MODULE");
  // A pin-source that does not exist names the path.
  absl::StatusOr<std::shared_ptr<Token>> t = Token::Open(
      absl::StrCat(Hsm()->uri_no_pin(), "&pin-source=file:/nonexistent/pin"));
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("/nonexistent/pin"));
}

TEST_F(Pkcs11Test, UnknownTokenAndObject) {
  absl::StatusOr<std::shared_ptr<Token>> t = Token::Open(
      absl::StrCat("pkcs11:token=no-such-token?module-path=", SoftHsm::kModule, "&pin-value=1"));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("'hwid-test'"));  // lists what exists
  std::shared_ptr<Token> tok = OpenToken();
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<std::shared_ptr<Key>> k = tok->FindKey("pkcs11:object=no-such-key");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("no-such-key"));
  EXPECT_EQ(tok->FindKey("pkcs11:token=x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->FindKey("pkcs11:object=a;type=cert").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs11Test, ModuleThatDoesNotLoad) {
  absl::StatusOr<std::shared_ptr<Token>> t =
      Token::Open("pkcs11:token=x?module-path=/nonexistent/libnothing.so");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("/nonexistent/libnothing.so"));
  // A shared library that is not a PKCS#11 module.
  t = Token::Open("pkcs11:token=x?module-path=libz.so.1");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("C_GetFunctionList"));
}

TEST_F(Pkcs11Test, ConcurrentSignersUseSeveralSessions) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "threads");
  ASSERT_NE(key, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 300;
  std::atomic<int> good{0};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int j = 0; j < kPerThread; ++j) {
        Bytes digest = Sha("SHA256", absl::StrCat("msg ", i, " ", j));
        absl::StatusOr<Bytes> sig = key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
        if (sig.ok() && OracleVerify(key->public_key(), "SHA256", digest, *sig,
                                     SignScheme::kEcdsa)) {
          ++good;
        } else {
          ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  EXPECT_EQ(bad.load(), 0);
  // More than one session was in use at once; the pool bounds how many it keeps.
  EXPECT_GE(key->token()->sessions_opened(), 2u);
  EXPECT_LE(key->token()->sessions_opened(), static_cast<uint64_t>(kThreads + 1));
}

// Every call goes through the chokepoint and is counted: a signature on a warm session is exactly
// C_SignInit + C_Sign (the hwid-pkcs11-calls contract of the provider and the benchmarks).
TEST_F(Pkcs11Test, WarmSignatureCostsTwoCalls) {
  for (KeyAlg alg : {KeyAlg::kEcP256, KeyAlg::kRsa2048}) {
    std::shared_ptr<Key> key = Generate(alg, absl::StrCat("two-calls-", KeyAlgName(alg)));
    ASSERT_NE(key, nullptr);
    const SignParams params{key->type() == KeyType::kEc ? SignScheme::kEcdsa
                                                        : SignScheme::kRsaPkcs1,
                            HashAlg::kSha256, std::nullopt};
    Bytes digest = Sha("SHA256", "warm");
    ASSERT_TRUE(key->Sign(digest, params).ok());
    const uint64_t before = key->token()->command_count();
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(key->Sign(digest, params).ok());
    }
    EXPECT_EQ(key->token()->command_count() - before, 10u) << KeyAlgName(alg);
    // A refused request never reaches the token.
    EXPECT_FALSE(key->Sign(Bytes(7), params).ok());
    EXPECT_EQ(key->token()->command_count() - before, 10u) << KeyAlgName(alg);
  }
}

TEST_F(Pkcs11Test, ForkedChildReinitialisesAndSigns) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "fork");
  ASSERT_NE(key, nullptr);
  Bytes digest = Sha("SHA256", "before fork");
  ASSERT_TRUE(key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).ok());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int rc = 0;
    for (int i = 0; i < 20 && rc == 0; ++i) {
      Bytes d = Sha("SHA256", absl::StrCat("child ", i));
      absl::StatusOr<Bytes> sig = key->Sign(d, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
      if (!sig.ok()) {
        fprintf(stderr, "child sign: %s\n", std::string(sig.status().message()).c_str());
        rc = 1;
      } else if (!OracleVerify(key->public_key(), "SHA256", d, *sig, SignScheme::kEcdsa)) {
        rc = 2;
      }
    }
    // The parent's copy handle means nothing here: the child made its own.
    if (rc == 0 && !key->signs_with_session_copy()) rc = 3;
    _exit(rc);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The parent is unaffected.
  absl::StatusOr<Bytes> sig = key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(OracleVerify(key->public_key(), "SHA256", digest, *sig, SignScheme::kEcdsa));
}

// ----------------------------------------------------------------------------------------------
// Session copies (pkcs11.h): keys sign with a C_CopyObject(CKA_TOKEN false) copy of the token
// object. The oracle is the module itself, asked through a session of the test's own.

// RawSession is a read/write session of the test's own on the SoftHSM2 module this process has
// loaded (test-side PKCS#11 calls, not through hwid::pkcs11). Session objects are visible to
// every session of the process, and so is the login.
class RawSession {
 public:
  RawSession() {
    dl_ = dlopen(SoftHsm::kModule, RTLD_NOW | RTLD_NOLOAD);
    auto get = dl_ != nullptr
                   ? reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl_, "C_GetFunctionList"))
                   : nullptr;
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    if (get == nullptr || get(&fl_) != CKR_OK || fl_->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
      return;
    }
    for (CK_ULONG i = 0; i < n && s_ == CK_INVALID_HANDLE; ++i) {
      CK_TOKEN_INFO ti;
      if (fl_->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
          std::string(reinterpret_cast<const char*>(ti.label), 10) == "hwid-test ") {
        (void)fl_->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                                 &s_);
      }
    }
  }
  ~RawSession() {
    if (s_ != CK_INVALID_HANDLE) fl_->C_CloseSession(s_);
    if (dl_ != nullptr) dlclose(dl_);
  }
  RawSession(const RawSession&) = delete;
  RawSession& operator=(const RawSession&) = delete;

  bool ok() const { return s_ != CK_INVALID_HANDLE; }
  CK_FUNCTION_LIST* fl() const { return fl_; }
  CK_SESSION_HANDLE s() const { return s_; }

  std::vector<CK_OBJECT_HANDLE> Find(std::vector<CK_ATTRIBUTE> t) const {
    std::vector<CK_OBJECT_HANDLE> out(64);
    CK_ULONG n = 0;
    if (fl_->C_FindObjectsInit(s_, t.data(), t.size()) != CKR_OK) return {};
    if (fl_->C_FindObjects(s_, out.data(), out.size(), &n) != CKR_OK) n = 0;
    fl_->C_FindObjectsFinal(s_);
    out.resize(n);
    return out;
  }
  // Copies finds the private key objects with `id` that are session objects (CKA_TOKEN false).
  std::vector<CK_OBJECT_HANDLE> Copies(const Bytes& id) const {
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_BBOOL no = CK_FALSE;
    return Find({{CKA_CLASS, &cls, sizeof(cls)},
                 {CKA_TOKEN, &no, sizeof(no)},
                 {CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}});
  }
  CK_BBOOL Bool(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type) const {
    CK_BBOOL v = 0xff;
    CK_ATTRIBUTE a{type, &v, sizeof(v)};
    return fl_->C_GetAttributeValue(s_, o, &a, 1) == CKR_OK ? v : 0xff;
  }
  // GenerateEc makes an EC P-256 key pair on the token, CKA_LABEL and CKA_ID = `label`, whose
  // private key has CKA_TOKEN, CKA_PRIVATE, CKA_SIGN true plus the boolean attributes `flags`.
  // Returns the private key's handle (CK_INVALID_HANDLE on failure).
  CK_OBJECT_HANDLE GenerateEc(
      const std::string& label,
      const std::vector<std::pair<CK_ATTRIBUTE_TYPE, CK_BBOOL>>& flags) const {
    static CK_BBOOL yes = CK_TRUE;
    static uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    char* l = const_cast<char*>(label.data());
    CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof(p256)},
                          {CKA_ID, l, label.size()}, {CKA_LABEL, l, label.size()}};
    std::vector<CK_BBOOL> values;
    values.reserve(flags.size());
    std::vector<CK_ATTRIBUTE> priv = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},
                                      {CKA_SIGN, &yes, 1},  {CKA_ID, l, label.size()},
                                      {CKA_LABEL, l, label.size()}};
    for (const auto& [type, value] : flags) {
      values.push_back(value);
      priv.push_back({type, &values.back(), 1});
    }
    CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_OBJECT_HANDLE ph = CK_INVALID_HANDLE, kh = CK_INVALID_HANDLE;
    return fl_->C_GenerateKeyPair(s_, &mech, pub, 4, priv.data(), priv.size(), &ph, &kh) == CKR_OK
               ? kh
               : CK_INVALID_HANDLE;
  }
  // Secret asks for the private value itself (CKA_VALUE for EC, CKA_PRIVATE_EXPONENT for RSA).
  CK_RV Secret(CK_OBJECT_HANDLE o, bool ec) const {
    uint8_t buf[1024];
    CK_ATTRIBUTE a{ec ? CKA_VALUE : CKA_PRIVATE_EXPONENT, buf, sizeof(buf)};
    return fl_->C_GetAttributeValue(s_, o, &a, 1);
  }

 private:
  void* dl_ = nullptr;
  CK_FUNCTION_LIST* fl_ = nullptr;
  CK_SESSION_HANDLE s_ = CK_INVALID_HANDLE;
};

bool SignsAndVerifies(Key& key, absl::string_view msg) {
  const bool ec = key.type() == KeyType::kEc;
  const SignScheme scheme = ec ? SignScheme::kEcdsa : SignScheme::kRsaPkcs1;
  Bytes digest = Sha("SHA256", msg);
  absl::StatusOr<Bytes> sig = key.Sign(digest, {scheme, HashAlg::kSha256, std::nullopt});
  EXPECT_TRUE(sig.ok()) << sig.status();
  return sig.ok() && OracleVerify(key.public_key(), "SHA256", digest, *sig, scheme);
}

TEST(SessionCopyCheck, CopyMayNeverBeWeakerThanTheTokenObject) {
  KeyAttributes strong;
  strong.token = true;
  strong.is_private = true;
  strong.sensitive = true;
  strong.extractable = false;
  strong.always_sensitive = true;
  strong.never_extractable = true;
  strong.sign = true;
  KeyAttributes copy = strong;
  copy.token = false;
  EXPECT_TRUE(SessionCopyKeepsProtection(strong, copy));
  struct Row {
    const char* what;
    void (*weaken)(KeyAttributes&);
  };
  const Row rows[] = {
      {"token object, not a session object", [](KeyAttributes& a) { a.token = true; }},
      {"not sensitive", [](KeyAttributes& a) { a.sensitive = false; }},
      {"extractable", [](KeyAttributes& a) { a.extractable = true; }},
      {"not private", [](KeyAttributes& a) { a.is_private = false; }},
      {"not always sensitive", [](KeyAttributes& a) { a.always_sensitive = false; }},
      {"not never extractable", [](KeyAttributes& a) { a.never_extractable = false; }},
      {"cannot sign", [](KeyAttributes& a) { a.sign = false; }},
  };
  for (const Row& r : rows) {
    KeyAttributes weak = copy;
    r.weaken(weak);
    EXPECT_FALSE(SessionCopyKeepsProtection(strong, weak)) << r.what;
  }
  // A source made elsewhere without the history flags or login: a copy as strong as it is
  // enough, but sensitive and non-extractable are always required.
  KeyAttributes plain = strong;
  plain.is_private = plain.always_sensitive = plain.never_extractable = false;
  plain.sensitive = false;
  plain.extractable = true;
  KeyAttributes plain_copy = plain;
  plain_copy.token = false;
  EXPECT_FALSE(SessionCopyKeepsProtection(plain, plain_copy));
  plain_copy.sensitive = true;
  plain_copy.extractable = false;
  EXPECT_TRUE(SessionCopyKeepsProtection(plain, plain_copy));
}

TEST_F(Pkcs11Test, SessionCopyIsSensitiveNonExtractableAndSigns) {
  for (KeyAlg alg : {KeyAlg::kEcP256, KeyAlg::kRsa2048}) {
    SCOPED_TRACE(KeyAlgName(alg));
    std::shared_ptr<Key> key = Generate(alg, absl::StrCat("copy-", KeyAlgName(alg)));
    ASSERT_NE(key, nullptr);
    RawSession raw;
    ASSERT_TRUE(raw.ok());
    EXPECT_FALSE(key->signs_with_session_copy());
    EXPECT_TRUE(raw.Copies(key->id()).empty());  // made on first use, not at load
    for (int i = 0; i < 5; ++i) {
      EXPECT_TRUE(SignsAndVerifies(*key, absl::StrCat("copy ", i)));
    }
    EXPECT_TRUE(key->signs_with_session_copy());
    const std::vector<CK_OBJECT_HANDLE> copies = raw.Copies(key->id());
    ASSERT_EQ(copies.size(), 1u);
    const CK_OBJECT_HANDLE c = copies[0];
    EXPECT_EQ(raw.Bool(c, CKA_TOKEN), CK_FALSE);
    EXPECT_EQ(raw.Bool(c, CKA_SENSITIVE), CK_TRUE);
    EXPECT_EQ(raw.Bool(c, CKA_EXTRACTABLE), CK_FALSE);
    EXPECT_EQ(raw.Bool(c, CKA_PRIVATE), CK_TRUE);
    EXPECT_EQ(raw.Bool(c, CKA_ALWAYS_SENSITIVE), CK_TRUE);
    EXPECT_EQ(raw.Bool(c, CKA_NEVER_EXTRACTABLE), CK_TRUE);
    EXPECT_EQ(raw.Secret(c, alg == KeyAlg::kEcP256), CKR_ATTRIBUTE_SENSITIVE);
    // The key's own attributes are still the token object's.
    absl::StatusOr<KeyAttributes> attrs = key->ReadAttributes();
    ASSERT_TRUE(attrs.ok()) << attrs.status();
    EXPECT_TRUE(attrs->token);
    // Listing and finding see only the token object.
    absl::StatusOr<std::shared_ptr<Key>> again = key->token()->FindKey(key->uri());
    ASSERT_TRUE(again.ok()) << again.status();
    absl::StatusOr<std::vector<KeyInfo>> keys = key->token()->ListKeys();
    ASSERT_TRUE(keys.ok()) << keys.status();
    EXPECT_EQ(std::count_if(keys->begin(), keys->end(),
                            [&](const KeyInfo& k) { return k.id == key->id(); }),
              1);
  }
}

// A key that was not sensitive at all still signs only with a sensitive, non-extractable copy:
// hwid sets the attributes on the copy and reads them back.
TEST_F(Pkcs11Test, SessionCopyOfAnUnprotectedKeyIsProtected) {
  std::shared_ptr<Token> t = OpenToken();  // logged in while it lives (its session stays open)
  ASSERT_NE(t, nullptr);
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  const CK_OBJECT_HANDLE kh =
      raw.GenerateEc("unprotected", {{CKA_SENSITIVE, CK_FALSE}, {CKA_EXTRACTABLE, CK_TRUE}});
  ASSERT_NE(kh, CK_INVALID_HANDLE);
  absl::StatusOr<std::shared_ptr<Key>> key = t->FindKey("pkcs11:object=unprotected");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(SignsAndVerifies(**key, "unprotected"));
  ASSERT_TRUE((*key)->signs_with_session_copy());
  const std::vector<CK_OBJECT_HANDLE> copies = raw.Copies((*key)->id());
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(raw.Bool(copies[0], CKA_SENSITIVE), CK_TRUE);
  EXPECT_EQ(raw.Bool(copies[0], CKA_EXTRACTABLE), CK_FALSE);
  EXPECT_EQ(raw.Secret(copies[0], true), CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_EQ(raw.Bool(kh, CKA_SENSITIVE), CK_FALSE);  // the token object is left as it was
}

// CKA_MODIFIABLE false on an unprotected key: SoftHSM2 refuses every attribute in the copy's
// template (CKR_ATTRIBUTE_READ_ONLY), the protected one and CKA_TOKEN alone; hwid tries both and
// signs with the token object. (SoftHSM2 never hands out a copy weaker than asked for; the check
// that would refuse one is SessionCopyKeepsProtection, tested above.)
TEST_F(Pkcs11Test, UnmodifiableKeyIsNotCopiedAndTheTokenObjectSigns) {
  std::shared_ptr<Token> t = OpenToken();
  ASSERT_NE(t, nullptr);
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  const CK_OBJECT_HANDLE kh = raw.GenerateEc(
      "weak-fixed",
      {{CKA_SENSITIVE, CK_FALSE}, {CKA_EXTRACTABLE, CK_TRUE}, {CKA_MODIFIABLE, CK_FALSE}});
  ASSERT_NE(kh, CK_INVALID_HANDLE);
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  // What the token does with both templates hwid tries.
  CK_ATTRIBUTE strong[] = {
      {CKA_TOKEN, &no, 1}, {CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
  CK_OBJECT_HANDLE probe = 0;
  ASSERT_EQ(raw.fl()->C_CopyObject(raw.s(), kh, strong, 3, &probe), CKR_ATTRIBUTE_READ_ONLY);
  ASSERT_EQ(raw.fl()->C_CopyObject(raw.s(), kh, strong, 1, &probe), CKR_ATTRIBUTE_READ_ONLY);

  absl::StatusOr<std::shared_ptr<Key>> key = t->FindKey("pkcs11:object=weak-fixed");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(SignsAndVerifies(**key, "weak"));
  EXPECT_FALSE((*key)->signs_with_session_copy());
  EXPECT_TRUE(raw.Copies((*key)->id()).empty());
}

// CKA_COPYABLE false: SoftHSM2 refuses C_CopyObject (CKR_ACTION_PROHIBITED); the key signs with
// its token object, without an error.
TEST_F(Pkcs11Test, TokenThatRefusesTheCopySignsWithTheTokenObject) {
  std::shared_ptr<Token> t = OpenToken();  // logged in while it lives (its session stays open)
  ASSERT_NE(t, nullptr);
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  const CK_OBJECT_HANDLE kh = raw.GenerateEc(
      "not-copyable",
      {{CKA_SENSITIVE, CK_TRUE}, {CKA_EXTRACTABLE, CK_FALSE}, {CKA_COPYABLE, CK_FALSE}});
  ASSERT_NE(kh, CK_INVALID_HANDLE);
  CK_BBOOL no = CK_FALSE;
  CK_OBJECT_HANDLE probe = 0;
  CK_ATTRIBUTE session_tmpl{CKA_TOKEN, &no, 1};
  ASSERT_EQ(raw.fl()->C_CopyObject(raw.s(), kh, &session_tmpl, 1, &probe), CKR_ACTION_PROHIBITED);

  absl::StatusOr<std::shared_ptr<Key>> key = t->FindKey("pkcs11:object=not-copyable");
  ASSERT_TRUE(key.ok()) << key.status();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(SignsAndVerifies(**key, absl::StrCat("refused ", i)));
  }
  EXPECT_FALSE((*key)->signs_with_session_copy());
  EXPECT_TRUE(raw.Copies((*key)->id()).empty());
  // The refusal is remembered: a warm signature is C_SignInit + C_Sign, no copy attempt.
  const uint64_t before = t->command_count();
  EXPECT_TRUE(SignsAndVerifies(**key, "warm"));
  EXPECT_EQ(t->command_count() - before, 2u);
}

TEST_F(Pkcs11Test, SessionCopiesCanBeTurnedOff) {
  std::shared_ptr<Key> made = Generate(KeyAlg::kEcP256, "copy-off");
  ASSERT_NE(made, nullptr);
  setenv("HWID_PKCS11_SESSION_COPY", "0", 1);
  absl::StatusOr<std::shared_ptr<Key>> key =
      LoadKey(absl::StrCat(made->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin));
  unsetenv("HWID_PKCS11_SESSION_COPY");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_FALSE((*key)->token()->session_copies());
  EXPECT_TRUE(SignsAndVerifies(**key, "off"));
  EXPECT_FALSE((*key)->signs_with_session_copy());
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  EXPECT_TRUE(raw.Copies((*key)->id()).empty());
}

// One copy per Key, shared by every thread; releasing the Key destroys it; each Key (here: two
// loads of the same key through two Token objects) has its own.
TEST_F(Pkcs11Test, SessionCopyIsSharedByThreadsAndDestroyedWithTheKey) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "copy-life");
  ASSERT_NE(key, nullptr);
  const Bytes id = key->id();
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int j = 0; j < 50; ++j) {
        if (!SignsAndVerifies(*key, absl::StrCat("t", i, " ", j))) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(raw.Copies(id).size(), 1u);

  absl::StatusOr<std::shared_ptr<Key>> second =
      LoadKey(absl::StrCat(key->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(SignsAndVerifies(**second, "second"));
  EXPECT_EQ(raw.Copies(id).size(), 2u);
  key.reset();
  EXPECT_EQ(raw.Copies(id).size(), 1u);
  EXPECT_TRUE(SignsAndVerifies(**second, "still"));
  second = absl::UnknownError("released");
  EXPECT_TRUE(raw.Copies(id).empty());
  // The token object is untouched.
  EXPECT_EQ(CountObjects(CKO_PRIVATE_KEY, "copy-life"), 1);
}

// A logout destroys private session objects: the next signature logs in again and makes a new
// copy. DestroyKey destroys the copies with the token object: the Key cannot sign any more.
TEST_F(Pkcs11Test, SessionCopyIsMadeAgainAfterLogoutAndDiesWithTheKey) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "copy-logout");
  ASSERT_NE(key, nullptr);
  RawSession raw;
  ASSERT_TRUE(raw.ok());
  ASSERT_TRUE(SignsAndVerifies(*key, "before"));
  ASSERT_EQ(raw.Copies(key->id()).size(), 1u);
  ASSERT_TRUE(Hsm()->LogOutThisProcess().ok());
  EXPECT_TRUE(raw.Copies(key->id()).empty());
  EXPECT_TRUE(SignsAndVerifies(*key, "after"));
  EXPECT_TRUE(key->signs_with_session_copy());
  EXPECT_EQ(raw.Copies(key->id()).size(), 1u);

  // A second Key for the same key (another Token object) has a copy of its own; DestroyKey
  // destroys every copy of the key in this process, so neither Key can sign any more.
  absl::StatusOr<std::shared_ptr<Key>> second =
      LoadKey(absl::StrCat(key->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(SignsAndVerifies(**second, "second"));
  ASSERT_EQ(raw.Copies(key->id()).size(), 2u);
  ASSERT_TRUE(key->token()->DestroyKey(*key).ok());
  EXPECT_TRUE(raw.Copies(key->id()).empty());
  for (const std::shared_ptr<Key>& k : {key, *second}) {
    absl::Status st =
        k->Sign(Sha("SHA256", "gone"), {SignScheme::kEcdsa, HashAlg::kSha256, {}}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  }
}

// CountTokenFiles counts the files of the token's file object store (one per token object).
int CountTokenFiles() {
  int n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(Hsm()->dir() + "/tokens")) {
    if (e.is_regular_file()) ++n;
  }
  return n;
}

// Helper for NothingPersistsAfterTheProcessExits, run in a new process: logs in and writes the
// number of private and public key objects labelled $HWID_TEST_COUNT_LABEL to $HWID_TEST_COUNT_OUT.
TEST(Pkcs11Helper, DISABLED_CountObjectsInANewProcess) {
  const char* uri = std::getenv("HWID_TEST_COUNT_URI");
  const char* label = std::getenv("HWID_TEST_COUNT_LABEL");
  const char* out = std::getenv("HWID_TEST_COUNT_OUT");
  ASSERT_TRUE(uri != nullptr && label != nullptr && out != nullptr);
  absl::StatusOr<std::shared_ptr<Token>> t = Token::Open(uri);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string counts = absl::StrCat(CountObjects(CKO_PRIVATE_KEY, label), " ",
                                          CountObjects(CKO_PUBLIC_KEY, label));
  ASSERT_TRUE(WriteFile(out, AsSpan(counts), 0600).ok());
}

// A process killed while it signs with session copies leaves nothing on the token: a new process
// sees exactly the key's two token objects, and the token's object store has no new file.
TEST_F(Pkcs11Test, NothingPersistsAfterTheProcessExits) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "copy-exit");
  ASSERT_NE(key, nullptr);
  const int files_before = CountTokenFiles();
  const std::string uri =
      absl::StrCat(key->uri(), "?module-path=", SoftHsm::kModule, "&pin-value=", kPin);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    absl::StatusOr<std::shared_ptr<Key>> k = LoadKey(uri);
    if (!k.ok()) _exit(10);
    for (int i = 0; i < 20; ++i) {
      if (!(*k)->Sign(Sha("SHA256", absl::StrCat(i)), {SignScheme::kEcdsa, HashAlg::kSha256, {}})
               .ok()) {
        _exit(11);
      }
    }
    if (!(*k)->signs_with_session_copy() || RawSession().Copies((*k)->id()).size() != 1) _exit(12);
    raise(SIGKILL);  // killed while holding the copy
    _exit(13);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exit code " << WEXITSTATUS(status);
  EXPECT_EQ(CountTokenFiles(), files_before);

  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  const std::string out = Hsm()->dir() + "/counts.txt";
  setenv("HWID_TEST_COUNT_URI", Hsm()->uri().c_str(), 1);
  setenv("HWID_TEST_COUNT_LABEL", "copy-exit", 1);
  setenv("HWID_TEST_COUNT_OUT", out.c_str(), 1);
  const int rc = std::system(absl::StrCat("'", self, "' --gtest_also_run_disabled_tests "
                                          "--gtest_filter=Pkcs11Helper.* >/dev/null 2>&1").c_str());
  unsetenv("HWID_TEST_COUNT_URI");
  unsetenv("HWID_TEST_COUNT_LABEL");
  unsetenv("HWID_TEST_COUNT_OUT");
  EXPECT_EQ(rc, 0);
  absl::StatusOr<Bytes> counts = ReadFile(out);
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(std::string(counts->begin(), counts->end()), "1 1");
  // This process's key still signs with its token object's copy of its own.
  EXPECT_TRUE(SignsAndVerifies(*key, "parent"));
}

TEST_F(Pkcs11Test, ModuleFinalisedMidRunGivesClearError) {
  std::shared_ptr<Key> key = Generate(KeyAlg::kEcP256, "finalised");
  ASSERT_NE(key, nullptr);
  Bytes digest = Sha("SHA256", "x");
  ASSERT_TRUE(key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).ok());
  // In a child, so the parent's module stays usable for the other tests.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Let the child re-initialise first (as a real child would), then pull the module away.
    if (!key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).ok()) _exit(10);
    void* dl = dlopen(SoftHsm::kModule, RTLD_NOW | RTLD_NOLOAD);
    if (dl == nullptr) _exit(11);
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
    CK_FUNCTION_LIST* fl = nullptr;
    if (get == nullptr || get(&fl) != CKR_OK || fl->C_Finalize(nullptr) != CKR_OK) _exit(12);
    absl::Status st = key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).status();
    if (st.ok()) _exit(13);
    if (st.code() != absl::StatusCode::kUnavailable) _exit(14);
    if (!absl::StrContains(st.message(), "CKR_CRYPTOKI_NOT_INITIALIZED")) _exit(15);
    // And again (no crash, same clear error).
    st = key->ReadAttributes().status();
    if (st.code() != absl::StatusCode::kUnavailable) _exit(16);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child crashed";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(key->Sign(digest, {SignScheme::kEcdsa, HashAlg::kSha256, {}}).ok());
}

}  // namespace
}  // namespace hwid::pkcs11
