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
#include <cstdlib>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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
