// The agent-key binding hand-off (attestor_plugin/composer/handoff.h) and the hwid_tpm
// CredentialComposer's decision (composer::CheckAgentSvidKey) and configuration, without SPIRE:
// a record made by the node attestor admits exactly that (agent, key) until it expires; anything
// else about an hwid_tpm agent is PERMISSION_DENIED; other agents and trust domains pass
// untouched; the directory must be private (0700, ours).
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "attestor_plugin/composer/composer.h"
#include "attestor_plugin/composer/handoff.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hwid::composer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr char kAgent[] =
    "spiffe://example.org/spire/agent/hwid_tpm/"
    "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
constexpr char kOtherAgent[] =
    "spiffe://example.org/spire/agent/hwid_tpm/"
    "1111111111111111111111111111111111111111111111111111111111111111";

// Status matchers (code and a substring of the message).
MATCHER_P2(StatusIs, code, substr, "") {
  *result_listener << "status is " << arg.ToString();
  return arg.code() == code && std::string(arg.message()).find(substr) != std::string::npos;
}
MATCHER(IsOk, "") {
  *result_listener << "status is " << arg.ToString();
  return arg.ok();
}

constexpr auto kDenied = absl::StatusCode::kPermissionDenied;
constexpr auto kPrecondition = absl::StatusCode::kFailedPrecondition;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

// Spki: the DER SubjectPublicKeyInfo of a fresh P-256 key (what SPIRE passes as public_key).
Bytes Spki() {
  OsslPtr<EVP_PKEY> k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(k.get(), &der);
  EXPECT_GT(len, 0);
  Bytes out(der, der + (len > 0 ? len : 0));
  OPENSSL_free(der);
  return out;
}

std::string Sha256Hex(ByteSpan b) {
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256(b.data(), b.size(), d);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (uint8_t c : d) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

// RecordFile: where the hand-off format (handoff.h) says the record of (agent, key) lives.
std::string RecordFile(const std::string& dir, const std::string& agent, const Bytes& spki) {
  Bytes in(agent.begin(), agent.end());
  in.push_back(0);
  in.insert(in.end(), spki.begin(), spki.end());
  return absl::StrCat(dir, "/", Sha256Hex(in));
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void Spit(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::trunc);
  f << content;
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/hwid-composer-test-XXXXXX";
    EXPECT_NE(mkdtemp(t), nullptr);  // mode 0700
    root_ = t;
    path_ = root_ + "/certified-keys";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  // path: a not yet existing directory inside the private temporary one.
  const std::string& path() const { return path_; }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  std::string path_;
};

const absl::Time kT0 = absl::FromUnixSeconds(1800000000);

// ---------------------------------------------------------------- hand-off

TEST(HandoffTest, RecordThenCheck) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Seconds(59)), IsOk());

  // The directory was created private; the record is where and what handoff.h says, 0600.
  struct stat st = {};
  ASSERT_EQ(stat(d.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  const std::string file = RecordFile(d.path(), kAgent, key);
  ASSERT_EQ(stat(file.c_str(), &st), 0) << file;
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(Slurp(file), absl::StrCat("hwid-certified-key 1\n", kAgent, "\n", Sha256Hex(key),
                                      "\n", absl::ToUnixSeconds(kT0) + 60, "\n"));
  EXPECT_THAT(Entries(d.path()), UnorderedElementsAre(fs::path(file).filename().string()));

  // Recording the same pair again (re-attestation) is idempotent and extends the expiry.
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0 + absl::Seconds(30)),
              IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Seconds(80)), IsOk());
  EXPECT_EQ(Entries(d.path()).size(), 1u);
}

TEST(HandoffTest, UnknownAgent) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(CheckHandoffDir(d.path()), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0),
              StatusIs(kDenied, "was not certified by that agent's TPM in this attestation"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0),
              StatusIs(kDenied, absl::StrCat("SPKI sha256 ", Sha256Hex(key), ") of ", kAgent)));
}

TEST(HandoffTest, RightAgentOtherKey) {
  TempDir d;
  const Bytes certified = Spki();
  const Bytes other = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, certified, absl::Seconds(60), kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, other, kT0),
              StatusIs(kDenied, "was not certified by that agent's TPM"));
  // A key that differs in one byte of the DER is another key.
  Bytes flipped = certified;
  flipped.back() ^= 1;
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, flipped, kT0), StatusIs(kDenied, "not certified"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, Bytes{}, kT0), StatusIs(kDenied, "not certified"));
}

TEST(HandoffTest, RecordForOneAgentDoesNotAdmitAnother) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kOtherAgent, key, kT0),
              StatusIs(kDenied, absl::StrCat("of ", kOtherAgent, " was not certified")));
  // Prefix/suffix variations of the agent ID are other agents too.
  EXPECT_THAT(CheckCertifiedKey(d.path(), absl::StrCat(kAgent, "0"), key, kT0),
              StatusIs(kDenied, "not certified"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), std::string(kAgent).substr(0, 60), key, kT0),
              StatusIs(kDenied, "not certified"));
}

TEST(HandoffTest, Expiry) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Seconds(60)),
              StatusIs(kDenied, "its certification expired"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Hours(24)),
              StatusIs(kDenied, "its certification expired"));
  // The default TTL is 60 s from `now`.
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, kDefaultTtl, kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Seconds(59)), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0 + absl::Seconds(61)),
              StatusIs(kDenied, "expired"));
  // A zero TTL never admits.
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::ZeroDuration(), kT0), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), StatusIs(kDenied, "expired"));
}

TEST(HandoffTest, DamagedRecords) {
  TempDir d;
  const Bytes key = Spki();
  const Bytes other = Spki();
  const std::string exp = absl::StrCat(absl::ToUnixSeconds(kT0) + 60);
  const std::string good = absl::StrCat("hwid-certified-key 1\n", kAgent, "\n", Sha256Hex(key),
                                        "\n", exp, "\n");
  struct Row {
    const char* name;
    std::string content;
  };
  const std::vector<Row> rows = {
      {"empty", ""},
      {"garbage", "\x01\x02 not a record"},
      {"other version", absl::StrCat("hwid-certified-key 2\n", kAgent, "\n", Sha256Hex(key), "\n",
                                     exp, "\n")},
      {"other key hash", absl::StrCat("hwid-certified-key 1\n", kAgent, "\n", Sha256Hex(other),
                                      "\n", exp, "\n")},
      {"other agent", absl::StrCat("hwid-certified-key 1\n", kOtherAgent, "\n", Sha256Hex(key),
                                   "\n", exp, "\n")},
      {"no final newline", good.substr(0, good.size() - 1)},
      {"extra line", good + "extra\n"},
      {"expiry not a number", absl::StrCat("hwid-certified-key 1\n", kAgent, "\n", Sha256Hex(key),
                                           "\nsoon\n")},
      {"upper-case hash", absl::StrCat("hwid-certified-key 1\n", kAgent, "\n",
                                       absl::AsciiStrToUpper(Sha256Hex(key)), "\n", exp, "\n")},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
    ASSERT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), IsOk());
    Spit(RecordFile(d.path(), kAgent, key), row.content);
    EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0),
                StatusIs(kDenied, "the hand-off record is damaged"));
  }
  // The genuine content written back is accepted again (the rows differ only as named).
  Spit(RecordFile(d.path(), kAgent, key), good);
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), IsOk());
}

TEST(HandoffTest, DirectoryModeMustBe0700) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
  for (mode_t mode : {0755, 0750, 0705, 0701, 0710, 0777}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(d.path().c_str(), mode), 0);
    EXPECT_THAT(CheckHandoffDir(d.path()),
                StatusIs(kPrecondition, absl::StrFormat("has mode %04o; it must be 0700", mode)));
    // A valid record in a directory others can reach proves nothing.
    EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0),
                StatusIs(kDenied, absl::StrFormat("has mode %04o", mode)));
    EXPECT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0),
                StatusIs(kPrecondition, "it must be 0700"));
  }
  ASSERT_EQ(chmod(d.path().c_str(), 0700), 0);
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), IsOk());
}

TEST(HandoffTest, DirectoryOwnedByAnotherUser) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to chown the directory to nobody";
  }
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0), IsOk());
  ASSERT_EQ(chown(d.path().c_str(), 65534, 65534), 0);
  EXPECT_THAT(CheckHandoffDir(d.path()),
              StatusIs(kPrecondition, "is owned by uid 65534, not by this process (uid 0)"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), StatusIs(kDenied, "owned by uid 65534"));
  EXPECT_THAT(RecordCertifiedKey(d.path(), kAgent, key, absl::Seconds(60), kT0),
              StatusIs(kPrecondition, "owned by uid 65534"));
  ASSERT_EQ(chown(d.path().c_str(), 0, 0), 0);
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, key, kT0), IsOk());
}

TEST(HandoffTest, DirectoryPathRules) {
  TempDir d;
  EXPECT_THAT(CheckHandoffDir(""), StatusIs(kPrecondition, "must be an absolute path"));
  EXPECT_THAT(CheckHandoffDir("relative/dir"),
              StatusIs(kPrecondition, "must be an absolute path, got 'relative/dir'"));
  // Missing: created 0700.
  ASSERT_THAT(CheckHandoffDir(d.path()), IsOk());
  struct stat st = {};
  ASSERT_EQ(stat(d.path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  // A regular file, or a symlink to a good directory, is not accepted.
  const std::string file = d.root() + "/a-file";
  Spit(file, "x");
  EXPECT_THAT(CheckHandoffDir(file), StatusIs(kPrecondition, "is not a directory"));
  const std::string link = d.root() + "/a-link";
  ASSERT_EQ(symlink(d.path().c_str(), link.c_str()), 0);
  EXPECT_THAT(CheckHandoffDir(link), StatusIs(kPrecondition, "is not a directory"));
  // A parent that does not exist.
  EXPECT_THAT(CheckHandoffDir(d.root() + "/no/such/parent"),
              StatusIs(kPrecondition, "cannot be created"));
}

TEST(HandoffTest, RecordPrunesExpiredRecords) {
  TempDir d;
  const Bytes a = Spki();
  const Bytes b = Spki();
  const Bytes c = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, a, absl::Seconds(10), kT0), IsOk());
  ASSERT_THAT(RecordCertifiedKey(d.path(), kOtherAgent, b, absl::Seconds(100), kT0), IsOk());
  const std::string file_a = fs::path(RecordFile(d.path(), kAgent, a)).filename().string();
  const std::string file_b = fs::path(RecordFile(d.path(), kOtherAgent, b)).filename().string();
  ASSERT_THAT(Entries(d.path()), UnorderedElementsAre(file_a, file_b));
  // Leftovers: a stale unparsable file (an interrupted write long ago) and a fresh one (a write
  // in progress in another process) — only the stale one is removed.
  const std::string stale = d.path() + "/.tmp-interrupted-XXXXXX";
  const std::string fresh = d.path() + "/.tmp-in-progress-XXXXXX";
  Spit(stale, "hwid-certified-key 1\n");
  Spit(fresh, "hwid-certified-key 1\n");
  const struct timespec old[2] = {{absl::ToUnixSeconds(kT0) - 3600, 0},
                                  {absl::ToUnixSeconds(kT0) - 3600, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, stale.c_str(), old, 0), 0);
  const struct timespec now[2] = {{absl::ToUnixSeconds(kT0) + 10, 0},
                                  {absl::ToUnixSeconds(kT0) + 10, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, fresh.c_str(), now, 0), 0);

  // Nothing is pruned by a check; a new record at T0+11 prunes a (expired at T0+10).
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, a, kT0 + absl::Seconds(11)),
              StatusIs(kDenied, "expired"));
  EXPECT_EQ(Entries(d.path()).size(), 4u);
  const std::string file_c = fs::path(RecordFile(d.path(), kAgent, c)).filename().string();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, c, absl::Seconds(60), kT0 + absl::Seconds(11)),
              IsOk());
  EXPECT_THAT(Entries(d.path()),
              UnorderedElementsAre(file_b, file_c, fs::path(fresh).filename().string()));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, a, kT0 + absl::Seconds(11)),
              StatusIs(kDenied, "was not certified"));
  EXPECT_THAT(CheckCertifiedKey(d.path(), kOtherAgent, b, kT0 + absl::Seconds(11)), IsOk());
  EXPECT_THAT(CheckCertifiedKey(d.path(), kAgent, c, kT0 + absl::Seconds(11)), IsOk());
}

// ---------------------------------------------------------------- the decision

ComposerConfig Config(const std::string& dir, bool require = true) {
  ComposerConfig c;
  c.trust_domain = "example.org";
  c.certified_keys_dir = dir;
  c.require_tpm_agent_key = require;
  return c;
}

TEST(CheckAgentSvidKeyTest, CertifiedKeyOfAnHwidTpmAgent) {
  TempDir d;
  const Bytes key = Spki();
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key), IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), kAgent, key), IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), kAgent, Spki()),
              StatusIs(kDenied, "agent key binding: the agent SVID key"));
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), kOtherAgent, key),
              StatusIs(kDenied, "was not certified by that agent's TPM"));
}

TEST(CheckAgentSvidKeyTest, UnknownHwidTpmAgentIsDenied) {
  TempDir d;
  ASSERT_THAT(CheckHandoffDir(d.path()), IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), kAgent, Spki()),
              StatusIs(kDenied, "was not certified by that agent's TPM in this attestation"));
  // Even an hwid_tpm agent ID with an empty or odd tail is an hwid_tpm agent.
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), "spiffe://example.org/spire/agent/hwid_tpm/",
                                Spki()),
              StatusIs(kDenied, "not certified"));
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()),
                                "spiffe://example.org/spire/agent/hwid_tpm/x/y", Spki()),
              StatusIs(kDenied, "not certified"));
}

TEST(CheckAgentSvidKeyTest, OtherAgentsAndTrustDomainsPassUntouched) {
  TempDir d;
  ASSERT_THAT(CheckHandoffDir(d.path()), IsOk());
  for (const char* id : {
           "spiffe://example.org/spire/agent/join_token/x",
           "spiffe://example.org/spire/agent/x509pop/abc",
           "spiffe://example.org/spire/agent/tpm_devid/abc",
           "spiffe://example.org/spire/agent/hwid_tpmx/abc",
           "spiffe://example.org/spire/agent/hwid_tpm",
           "spiffe://other.org/spire/agent/hwid_tpm/abc",
           "spiffe://example.org.evil/spire/agent/hwid_tpm/abc",
       }) {
    SCOPED_TRACE(id);
    EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), id, Spki()), IsOk());
  }
  EXPECT_THAT(Entries(d.path()), IsEmpty());
}

TEST(CheckAgentSvidKeyTest, RequireTpmAgentKeyFalseAllowsUncertifiedKeys) {
  TempDir d;
  ASSERT_THAT(CheckHandoffDir(d.path()), IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path(), false), kAgent, Spki()), IsOk());
  // ...and an unusable directory too (it only logs).
  ASSERT_EQ(chmod(d.path().c_str(), 0755), 0);
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path(), false), kAgent, Spki()), IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path(), true), kAgent, Spki()),
              StatusIs(kDenied, "has mode 0755"));
}

TEST(CheckAgentSvidKeyTest, ExpiredRecordIsDenied) {
  TempDir d;
  const Bytes key = Spki();
  // Recorded two minutes ago with the default TTL.
  ASSERT_THAT(RecordCertifiedKey(d.path(), kAgent, key, kDefaultTtl,
                                 absl::Now() - absl::Minutes(2)),
              IsOk());
  EXPECT_THAT(CheckAgentSvidKey(Config(d.path()), kAgent, key), StatusIs(kDenied, "expired"));
}

// ---------------------------------------------------------------- configuration

TEST(ParseComposerConfigTest, Rows) {
  TempDir d;
  pluginmain::CoreConfig core;
  core.trust_domain = "example.org";
  const std::string dir_line = absl::StrCat("certified_keys_dir = \"", d.path(), "\"\n");

  absl::StatusOr<ComposerConfig> ok = ParseComposerConfig(core, dir_line);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->trust_domain, "example.org");
  EXPECT_EQ(ok->certified_keys_dir, d.path());
  EXPECT_TRUE(ok->require_tpm_agent_key);
  ok = ParseComposerConfig(core, dir_line + "require_tpm_agent_key = false\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->require_tpm_agent_key);

  struct Row {
    const char* name;
    std::string hcl;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"empty", "", "certified_keys_dir"},
      {"missing certified_keys_dir", "require_tpm_agent_key = true\n", "certified_keys_dir"},
      {"unknown key", dir_line + "color = \"blue\"\n", "color"},
      {"dir not a string", "certified_keys_dir = 5\n", "certified_keys_dir"},
      {"require not a bool", dir_line + "require_tpm_agent_key = \"yes\"\n",
       "require_tpm_agent_key"},
      {"relative dir", "certified_keys_dir = \"keys\"\n", "must be an absolute path"},
      {"syntax error", "certified_keys_dir = \n", "plugin_data"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    absl::StatusOr<ComposerConfig> c = ParseComposerConfig(core, row.hcl);
    EXPECT_THAT(c.status(), StatusIs(kInvalid, row.message));
  }
  // The directory must be private.
  ASSERT_EQ(chmod(d.path().c_str(), 0755), 0);
  EXPECT_THAT(ParseComposerConfig(core, dir_line).status(), StatusIs(kInvalid, "has mode 0755"));
  ASSERT_EQ(chmod(d.path().c_str(), 0700), 0);
  // SPIRE always sends the trust domain.
  EXPECT_THAT(ParseComposerConfig(pluginmain::CoreConfig{}, dir_line).status(),
              StatusIs(kInvalid, "trust domain"));
}

}  // namespace
}  // namespace hwid::composer
