// KeyManager core without a device: configuration rules, SPIRE's numbers, key file names.
#include "attestor_plugin/keymanager/core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "attestor_plugin/keymanager/tpm_key_store.h"

namespace hwid::keymanager {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

pluginmain::CoreConfig Core(const std::string& td = "example.org") {
  pluginmain::CoreConfig c;
  c.trust_domain = td;
  return c;
}

TEST(ConfigTest, TpmBackend) {
  absl::StatusOr<Config> c =
      ParseConfig(Core(), R"(backend = "tpm"
                             tcti = "swtpm:port=2321"
                             key_dir = "/var/lib/spire/keys")");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->backend, "tpm");
  EXPECT_EQ(c->tcti, "swtpm:port=2321");
  EXPECT_EQ(c->key_dir, "/var/lib/spire/keys");
}

TEST(ConfigTest, Pkcs11BackendDefaultsPrefixToTrustDomain) {
  absl::StatusOr<Config> c = ParseConfig(
      Core("prod.example"), R"(backend = "pkcs11"
                               uri = "pkcs11:token=t?module-path=/m.so&pin-source=/p")");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->key_prefix, "prod.example");
  c = ParseConfig(Core(), R"(backend = "pkcs11"
                            uri = "pkcs11:token=t?module-path=/m.so&pin-source=/p"
                            key_prefix = "agent-7")");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->key_prefix, "agent-7");
}

struct BadRow {
  const char* name;
  const char* hcl;
  const char* want;  // substring of the error
};

class BadConfigTest : public ::testing::TestWithParam<BadRow> {};

TEST_P(BadConfigTest, RefusedNamingTheProblem) {
  absl::StatusOr<Config> c = ParseConfig(Core(), GetParam().hcl);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(GetParam().want));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("s3cret")));
}

INSTANTIATE_TEST_SUITE_P(
    Rows, BadConfigTest,
    ::testing::Values(
        BadRow{"NoBackend", R"(key_dir = "/k")", "backend"},
        BadRow{"UnknownBackend", R"(backend = "disk")", "\"disk\""},
        BadRow{"UnknownKey", R"(backend = "tpm"
                                key_dir = "/k"
                                keydir = "/k")", "keydir"},
        BadRow{"TpmWithoutKeyDir", R"(backend = "tpm")", "key_dir"},
        BadRow{"RelativeKeyDir", R"(backend = "tpm"
                                    key_dir = "keys")", "absolute"},
        BadRow{"TpmWithUri", R"(backend = "tpm"
                                key_dir = "/k"
                                uri = "pkcs11:token=t?pin-value=s3cret")", "\"uri\""},
        BadRow{"TpmWithPrefix", R"(backend = "tpm"
                                   key_dir = "/k"
                                   key_prefix = "x")", "key_prefix"},
        BadRow{"Pkcs11WithoutUri", R"(backend = "pkcs11")", "uri"},
        BadRow{"Pkcs11WithKeyDir", R"(backend = "pkcs11"
                                      uri = "pkcs11:token=t?pin-value=s3cret"
                                      key_dir = "/k")", "key_dir"},
        BadRow{"Pkcs11WithTcti", R"(backend = "pkcs11"
                                    uri = "pkcs11:token=t?pin-value=s3cret"
                                    tcti = "device:/dev/tpm0")", "tcti"},
        BadRow{"WrongType", R"(backend = "tpm"
                               key_dir = ["/k"])", "key_dir"},
        BadRow{"NotHcl", R"(backend = )", "plugin_data"}),
    [](const ::testing::TestParamInfo<BadRow>& i) { return i.param.name; });

TEST(ConfigTest, EmptyPrefixWithoutTrustDomainIsRefused) {
  absl::StatusOr<Config> c = ParseConfig(Core(""), R"(backend = "pkcs11"
                                                      uri = "pkcs11:token=t")");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, Pkcs11UriProblemsNeverShowThePin) {
  // Opening the store parses the URI: every refusal names the URI with the PIN redacted.
  for (const char* uri :
       {"pkcs11:token=t?pin-value=s3cret",  // no module-path
        "pkcs11:token=t;object=k?module-path=/m.so&pin-value=s3cret",  // names an object
        "pkcs11:token=t?module-path=/m.so"}) {  // no PIN at all
    Config c;
    c.backend = "pkcs11";
    c.uri = uri;
    c.key_prefix = "p";
    absl::StatusOr<std::unique_ptr<KeyStore>> s = OpenStore(c);
    ASSERT_FALSE(s.ok()) << uri;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
    EXPECT_THAT(s.status().message(), Not(HasSubstr("s3cret")));
  }
}

TEST(SpireVocabularyTest, KeyTypes) {
  EXPECT_EQ(*KeyAlgFromSpire(1), KeyAlg::kEcP256);
  EXPECT_EQ(*KeyAlgFromSpire(2), KeyAlg::kEcP384);
  EXPECT_EQ(*KeyAlgFromSpire(3), KeyAlg::kRsa2048);
  EXPECT_EQ(*KeyAlgFromSpire(4), KeyAlg::kRsa4096);
  EXPECT_EQ(KeyAlgFromSpire(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyAlgFromSpire(5).status().code(), absl::StatusCode::kInvalidArgument);
  for (int t = 1; t <= 4; ++t) {
    EXPECT_EQ(KeyAlgToSpire(*KeyAlgFromSpire(t)), t);
  }
}

TEST(SpireVocabularyTest, HashAlgorithmsAreGoCryptoHashValues) {
  EXPECT_EQ(*HashAlgFromSpire(4), HashAlg::kSha224);
  EXPECT_EQ(*HashAlgFromSpire(5), HashAlg::kSha256);
  EXPECT_EQ(*HashAlgFromSpire(6), HashAlg::kSha384);
  EXPECT_EQ(*HashAlgFromSpire(7), HashAlg::kSha512);
  for (int h : {0, 1, 3, 8, 10, 11, 12, 13, 14, 15, 99}) {
    absl::StatusOr<HashAlg> r = HashAlgFromSpire(h);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << h;
  }
}

TEST(KeyFileNameTest, RoundTripAndEscaping) {
  EXPECT_EQ(KeyFileName("agent-svid-A"), "agent-svid-A.tss2.pem");
  EXPECT_EQ(KeyFileName("x509-CA-A"), "x509-CA-A.tss2.pem");
  EXPECT_EQ(KeyFileName("../etc/passwd"), "%2E%2E%2Fetc%2Fpasswd.tss2.pem");
  EXPECT_EQ(KeyFileName("."), "%2E.tss2.pem");
  for (const std::string& id : std::vector<std::string>{"agent-svid-A", "JWT-Signer-B", "a b",
                                                          "../x", "/", "é",
                                                          std::string("\0x", 2)}) {
    std::optional<std::string> back = KeyIdFromFileName(KeyFileName(id));
    ASSERT_TRUE(back.has_value()) << id;
    EXPECT_EQ(*back, id);
  }
  for (const char* foreign : {"notes.txt", ".tss2.pem", "a.pem", "%41.tss2.pem", "%2e.tss2.pem",
                              "%2.tss2.pem", "%zz.tss2.pem", "a.b.tss2.pem"}) {
    EXPECT_FALSE(KeyIdFromFileName(foreign).has_value()) << foreign;
  }
}

TEST(CoreTest, EveryCallBeforeConfigureIsFailedPrecondition) {
  keymanager::Core core("agent");
  EXPECT_EQ(core.GenerateKey("k", 1).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core.GetPublicKey("k").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core.GetPublicKeys().status().code(), absl::StatusCode::kFailedPrecondition);
  const uint8_t d[32] = {};
  EXPECT_EQ(core.SignData("k", ByteSpan(d, 32), 5, false, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Validate never opens anything and leaves the plugin unconfigured.
  EXPECT_TRUE(core.Validate(Core(), R"(backend = "tpm"
                                       key_dir = "/nonexistent/x")").ok());
  EXPECT_EQ(core.GetPublicKeys().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace hwid::keymanager
