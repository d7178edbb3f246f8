// Table tests for hwid-svid's configuration parser (svid/config.cc): accepted examples with
// their defaults and normalisations, and one negative row per validation rule, each checked
// for INVALID_ARGUMENT and for the key (or value) the message must name.
#include "svid/config.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/bytes.h"
#include "tests/testing/status_assert.h"

namespace hwid::svid {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A minimal valid TPM configuration; rows edit it.
constexpr char kTpm[] = R"(agent_address = "/run/spire/agent/public/api.sock"
server_address = "spire-server.example:8081"
trust_domain = "example.org"
spiffe_id = "spiffe://example.org/hw/node1/web"
key_type = "tpm"
key_file = "/var/lib/hwid/web.tss2.pem"
cert_dir = "/etc/nginx/svid"
)";

constexpr char kPkcs11[] = R"(agent_address = "/run/spire/agent/public/api.sock"
server_address = "127.0.0.1:8081"
trust_domain = "example.org"
spiffe_id = "spiffe://example.org/hw/node1/curl"
key_type = "pkcs11"
pkcs11_uri = "pkcs11:token=svid;object=curl?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/hwid/pin"
cert_dir = "/etc/curl/svid"
)";

// Replace: `base` with the line that starts with `key =` replaced by `line` (or removed
// when `line` is empty).
std::string Replace(const std::string& base, const std::string& key, const std::string& line) {
  std::string out;
  for (absl::string_view l : absl::StrSplit(base, '\n')) {
    if (l.empty()) continue;
    if (absl::StartsWith(l, absl::StrCat(key, " ="))) {
      if (!line.empty()) absl::StrAppend(&out, line, "\n");
    } else {
      absl::StrAppend(&out, l, "\n");
    }
  }
  return out;
}

TEST(SvidConfigTest, MinimalTpmConfigAndDefaults) {
  ASSERT_OK_AND_ASSIGN(Config c, ParseConfig(kTpm));
  EXPECT_EQ(c.agent_address, "/run/spire/agent/public/api.sock");
  EXPECT_EQ(c.server_address, "spire-server.example:8081");
  EXPECT_EQ(c.trust_domain, "example.org");
  EXPECT_EQ(c.spiffe_id, "spiffe://example.org/hw/node1/web");
  EXPECT_EQ(c.server_spiffe_id, "spiffe://example.org/spire/server");
  EXPECT_EQ(c.key_type, "tpm");
  EXPECT_EQ(c.key_file, "/var/lib/hwid/web.tss2.pem");
  EXPECT_EQ(c.tcti, "");
  EXPECT_EQ(c.key_alg, KeyAlg::kEcP256);
  EXPECT_EQ(c.cert_dir, "/etc/nginx/svid");
  EXPECT_EQ(c.svid_file_name, "svid.pem");
  EXPECT_EQ(c.svid_key_file_name, "svid_key.pem");
  EXPECT_EQ(c.svid_bundle_file_name, "svid_bundle.pem");
  EXPECT_EQ(c.ttl, 0);
  EXPECT_EQ(c.cmd, "");
  EXPECT_TRUE(c.cmd_args.empty());
  EXPECT_EQ(c.renew_signal, 0);
  EXPECT_EQ(c.pid_file_name, "");
  EXPECT_EQ(c.provider_dir, "");
}

TEST(SvidConfigTest, FullTpmConfig) {
  const std::string text = absl::StrCat(kTpm, R"(server_spiffe_id = "spiffe://example.org/spire/server-2"
tcti = "device:/dev/tpmrm0"
key_alg = "EC-P384"
svid_file_name = "cert.pem"
svid_key_file_name = "key.pem"
svid_bundle_file_name = "ca.pem"
ttl = 3600
cmd = "/usr/sbin/nginx"
cmd_args = "-g 'daemon off;' -c \"/etc/nginx/my conf\"  -q"
renew_signal = "SIGHUP"
pid_file_name = "/run/nginx.pid"
provider_dir = "/usr/local/lib/ossl-modules"
)");
  ASSERT_OK_AND_ASSIGN(Config c, ParseConfig(text));
  EXPECT_EQ(c.server_spiffe_id, "spiffe://example.org/spire/server-2");
  EXPECT_EQ(c.tcti, "device:/dev/tpmrm0");
  EXPECT_EQ(c.key_alg, KeyAlg::kEcP384);
  EXPECT_EQ(c.svid_file_name, "cert.pem");
  EXPECT_EQ(c.svid_key_file_name, "key.pem");
  EXPECT_EQ(c.svid_bundle_file_name, "ca.pem");
  EXPECT_EQ(c.ttl, 3600);
  EXPECT_EQ(c.cmd, "/usr/sbin/nginx");
  EXPECT_THAT(c.cmd_args, ElementsAre("-g", "daemon off;", "-c", "/etc/nginx/my conf", "-q"));
  EXPECT_EQ(c.renew_signal, SIGHUP);
  EXPECT_EQ(c.pid_file_name, "/run/nginx.pid");
  EXPECT_EQ(c.provider_dir, "/usr/local/lib/ossl-modules");
}

TEST(SvidConfigTest, Pkcs11Config) {
  ASSERT_OK_AND_ASSIGN(Config c, ParseConfig(absl::StrCat(kPkcs11, "key_alg = \"rsa-3072\"\n")));
  EXPECT_EQ(c.key_type, "pkcs11");
  EXPECT_THAT(c.pkcs11_uri, StartsWith("pkcs11:token=svid;object=curl?"));
  EXPECT_EQ(c.key_alg, KeyAlg::kRsa3072);
  EXPECT_EQ(c.key_file, "");
}

TEST(SvidConfigTest, AcceptedVariants) {
  struct Row {
    const char* name;
    std::string text;
  };
  const std::vector<Row> rows = {
      {"agent_address unix:// URL",
       Replace(kTpm, "agent_address", "agent_address = \"unix:///run/spire/api.sock\"")},
      {"agent_address unix: URL",
       Replace(kTpm, "agent_address", "agent_address = \"unix:/run/spire/api.sock\"")},
      {"deep ID", Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/a/B-c/d_e/f.g\"")},
      {"one-segment ID", Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/w\"")},
      {"trust domain with digits, dash, underscore",
       Replace(Replace(kTpm, "trust_domain", "trust_domain = \"td-1_x.example\""), "spiffe_id",
               "spiffe_id = \"spiffe://td-1_x.example/hw/n/w\"")},
      {"ttl 0 (server default)", absl::StrCat(kTpm, "ttl = 0\n")},
      {"ttl one year", absl::StrCat(kTpm, "ttl = 31536000\n")},
      {"cmd without signal", absl::StrCat(kTpm, "cmd = \"/bin/true\"\n")},
      {"renew_signal to cmd", absl::StrCat(kTpm, "cmd = \"/bin/true\"\nrenew_signal = \"SIGUSR1\"\n")},
      {"renew_signal to pid file",
       absl::StrCat(kTpm, "renew_signal = \"SIGUSR2\"\npid_file_name = \"/run/x.pid\"\n")},
      {"tcti empty", absl::StrCat(kTpm, "tcti = \"\"\n")},
      {"comments", absl::StrCat("# hwid-svid\n", kTpm, "// end\n")},
      {"pkcs11 pin-value in the URI",
       Replace(kPkcs11, "pkcs11_uri", "pkcs11_uri = \"pkcs11:token=t;object=k?pin-value=1234\"")},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    absl::StatusOr<Config> c = ParseConfig(r.text);
    EXPECT_TRUE(c.ok()) << c.status().message();
  }
  EXPECT_EQ(ParseConfig(rows[0].text)->agent_address, "/run/spire/api.sock");
  EXPECT_EQ(ParseConfig(rows[1].text)->agent_address, "/run/spire/api.sock");
  EXPECT_EQ(ParseConfig(rows[9].text)->renew_signal, SIGUSR2);
}

struct BadRow {
  const char* name;
  std::string text;
  std::string names;  // the message must contain this (the key or the value)
};

TEST(SvidConfigTest, Refusals) {
  const std::vector<BadRow> rows = {
      // HCL and the decoder.
      {"syntax error", absl::StrCat(kTpm, "ttl = = 3\n"), "line 8"},
      {"unknown key", absl::StrCat(kTpm, "tll = 30\n"), "unknown key \"tll\""},
      {"duplicate key", absl::StrCat(kTpm, "ttl = 30\nttl = 40\n"), "duplicate key \"ttl\""},
      {"string for a number", absl::StrCat(kTpm, "ttl = \"30\"\n"), "\"ttl\""},
      {"number for a string", Replace(kTpm, "cert_dir", "cert_dir = 5"), "\"cert_dir\""},
      {"ttl negative", absl::StrCat(kTpm, "ttl = -1\n"), "\"ttl\""},
      {"ttl over a year", absl::StrCat(kTpm, "ttl = 31536001\n"), "\"ttl\""},
      // Required keys.
      {"no agent_address", Replace(kTpm, "agent_address", ""), "\"agent_address\""},
      {"no server_address", Replace(kTpm, "server_address", ""), "\"server_address\""},
      {"no trust_domain", Replace(kTpm, "trust_domain", ""), "\"trust_domain\""},
      {"no spiffe_id", Replace(kTpm, "spiffe_id", ""), "\"spiffe_id\""},
      {"no key_type", Replace(kTpm, "key_type", ""), "\"key_type\""},
      {"no cert_dir", Replace(kTpm, "cert_dir", ""), "\"cert_dir\""},
      // agent_address.
      {"agent_address relative", Replace(kTpm, "agent_address", "agent_address = \"api.sock\""),
       "agent_address"},
      {"agent_address TCP", Replace(kTpm, "agent_address", "agent_address = \"127.0.0.1:8081\""),
       "agent_address"},
      // Names.
      {"trust_domain uppercase", Replace(kTpm, "trust_domain", "trust_domain = \"Example.org\""),
       "trust_domain"},
      {"trust_domain with a path", Replace(kTpm, "trust_domain", "trust_domain = \"example.org/x\""),
       "trust_domain"},
      {"trust_domain with a port", Replace(kTpm, "trust_domain", "trust_domain = \"example.org:1\""),
       "trust_domain"},
      {"trust_domain empty", Replace(kTpm, "trust_domain", "trust_domain = \"\""), "trust_domain"},
      {"spiffe_id in another trust domain",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://other.org/hw/node1/web\""), "spiffe_id"},
      {"spiffe_id without a path", Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/\""),
       "spiffe_id"},
      {"spiffe_id empty segment",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw//web\""), "spiffe_id"},
      {"spiffe_id trailing slash",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw/node1/\""), "spiffe_id"},
      {"spiffe_id dot segment",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw/./web\""), "spiffe_id"},
      {"spiffe_id dot-dot segment",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw/node1/../node2\""),
       "spiffe_id"},
      {"spiffe_id query", Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw?x=1\""),
       "spiffe_id"},
      {"spiffe_id fragment", Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw#x\""),
       "spiffe_id"},
      {"spiffe_id percent-encoded",
       Replace(kTpm, "spiffe_id", "spiffe_id = \"spiffe://example.org/hw/a%2Fb\""), "spiffe_id"},
      {"spiffe_id other scheme", Replace(kTpm, "spiffe_id", "spiffe_id = \"https://example.org/hw\""),
       "spiffe_id"},
      {"server_spiffe_id in another trust domain",
       absl::StrCat(kTpm, "server_spiffe_id = \"spiffe://other.org/spire/server\"\n"),
       "server_spiffe_id"},
      {"server_spiffe_id malformed",
       absl::StrCat(kTpm, "server_spiffe_id = \"spiffe://example.org/spire//server\"\n"),
       "server_spiffe_id"},
      // Keys.
      {"key_type unknown", Replace(kTpm, "key_type", "key_type = \"disk\""), "key_type"},
      {"tpm without key_file", Replace(kTpm, "key_file", ""), "key_file"},
      {"tpm relative key_file", Replace(kTpm, "key_file", "key_file = \"web.tss2.pem\""), "key_file"},
      {"tpm with pkcs11_uri", absl::StrCat(kTpm, "pkcs11_uri = \"pkcs11:token=t;object=k\"\n"),
       "pkcs11_uri"},
      {"pkcs11 without pkcs11_uri", Replace(kPkcs11, "pkcs11_uri", ""), "pkcs11_uri"},
      {"pkcs11 with key_file", absl::StrCat(kPkcs11, "key_file = \"/k.pem\"\n"), "key_file"},
      {"pkcs11 with tcti", absl::StrCat(kPkcs11, "tcti = \"device:/dev/tpmrm0\"\n"), "tcti"},
      {"pkcs11_uri not a URI", Replace(kPkcs11, "pkcs11_uri", "pkcs11_uri = \"token=svid\""),
       "pkcs11_uri"},
      {"pkcs11_uri without object", Replace(kPkcs11, "pkcs11_uri", "pkcs11_uri = \"pkcs11:token=svid\""),
       "object=<label>"},
      {"pkcs11_uri empty object",
       Replace(kPkcs11, "pkcs11_uri", "pkcs11_uri = \"pkcs11:token=svid;object=\""), "object=<label>"},
      {"key_alg unknown", absl::StrCat(kTpm, "key_alg = \"ed25519\"\n"), "key_alg"},
      // Paths and file names.
      {"cert_dir relative", Replace(kTpm, "cert_dir", "cert_dir = \"svid\""), "cert_dir"},
      {"svid_file_name with a slash", absl::StrCat(kTpm, "svid_file_name = \"a/svid.pem\"\n"),
       "svid_file_name \"a/svid.pem\""},
      {"svid_key_file_name dot-dot", absl::StrCat(kTpm, "svid_key_file_name = \"..\"\n"),
       "svid_key_file_name \"..\""},
      {"svid_bundle_file_name empty", absl::StrCat(kTpm, "svid_bundle_file_name = \"\"\n"),
       "svid_bundle_file_name"},
      {"key and cert file the same", absl::StrCat(kTpm, "svid_key_file_name = \"svid.pem\"\n"),
       "must differ"},
      {"bundle and key file the same", absl::StrCat(kTpm, "svid_bundle_file_name = \"svid_key.pem\"\n"),
       "must differ"},
      {"cmd relative", absl::StrCat(kTpm, "cmd = \"nginx\"\n"), "cmd"},
      {"cmd_args without cmd", absl::StrCat(kTpm, "cmd_args = \"-t\"\n"), "cmd_args"},
      {"cmd_args unterminated quote", absl::StrCat(kTpm, "cmd = \"/bin/x\"\ncmd_args = \"-g 'a\"\n"),
       "cmd_args"},
      {"pid_file_name relative",
       absl::StrCat(kTpm, "renew_signal = \"SIGHUP\"\npid_file_name = \"nginx.pid\"\n"),
       "pid_file_name"},
      {"provider_dir relative", absl::StrCat(kTpm, "provider_dir = \"lib\"\n"), "provider_dir"},
      // Signals.
      {"renew_signal unknown", absl::StrCat(kTpm, "cmd = \"/bin/x\"\nrenew_signal = \"SIGKILL\"\n"),
       "SIGKILL"},
      {"renew_signal lowercase", absl::StrCat(kTpm, "cmd = \"/bin/x\"\nrenew_signal = \"sighup\"\n"),
       "renew_signal"},
      {"renew_signal with nobody to signal", absl::StrCat(kTpm, "renew_signal = \"SIGHUP\"\n"),
       "renew_signal"},
      {"pid_file_name without renew_signal", absl::StrCat(kTpm, "pid_file_name = \"/run/x.pid\"\n"),
       "pid_file_name"},
  };
  for (const BadRow& r : rows) {
    SCOPED_TRACE(absl::StrCat(r.name, "\n", r.text));
    absl::StatusOr<Config> c = ParseConfig(r.text);
    ASSERT_FALSE(c.ok());
    if (std::getenv("SVID_PRINT") != nullptr) {  // SVID_PRINT=1: list the messages
      std::printf("%-40s %s\n", r.name, std::string(c.status().message()).c_str());
    }
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), StartsWith("config: "));
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(r.names));
    // The shared HCL decoder's wording for SPIRE plugins never leaks into the helper's messages.
    EXPECT_THAT(std::string(c.status().message()), ::testing::Not(HasSubstr("plugin_data")));
  }
}

// The shipped examples (examples/svid/*.hcl) parse.
TEST(SvidConfigTest, ShippedExamples) {
  for (const char* name : {"helper.hcl", "helper-pkcs11.hcl"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<Bytes> text =
        ReadFile(absl::StrCat(HWID_SOURCE_DIR, "/examples/svid/", name), 1 << 20);
    ASSERT_OK(text.status());
    absl::StatusOr<Config> c =
        ParseConfig(absl::string_view(reinterpret_cast<const char*>(text->data()), text->size()));
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_GT(c->ttl, 0) << "the example policy refuses ttl 0";
  }
}

// The PIN of a pkcs11_uri never appears in a message.
TEST(SvidConfigTest, PinValueNotInMessages) {
  absl::StatusOr<Config> c = ParseConfig(
      Replace(kPkcs11, "pkcs11_uri", "pkcs11_uri = \"pkcs11:token=svid?pin-value=s3cr3t\""));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), ::testing::Not(HasSubstr("s3cr3t")));
}

}  // namespace
}  // namespace hwid::svid
