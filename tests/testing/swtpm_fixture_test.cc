// Self-test of the swtpm test fixture: the TPM answers, the template's EKs and EK certificates are
// what swtpm-setup promises (checked with OpenSSL's X509 verification and key comparison), Restart
// keeps NV but drops transients, and two instances are independent.
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "tests/testing/swtpm.h"
#include "tests/testing/run_shell.h"

namespace hwid::testing {
namespace {

namespace fs = std::filesystem;


std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}


// Tool runs a tpm2-tools command against `tcti` (given explicitly with -T).
ShellResult Tool(const std::string& tcti, const std::string& tool, const std::string& args) {
  return RunShell(absl::StrCat(tool, " -T ", ShellQuote(tcti), " ", args));
}

absl::StatusOr<OsslPtr<X509>> ParseDerCert(const Bytes& der) {
  const unsigned char* p = der.data();
  OsslPtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (cert == nullptr) {
    return OpenSslError("d2i_X509 (EK certificate from NV)", absl::StatusCode::kInvalidArgument);
  }
  if (p != der.data() + der.size()) {
    return absl::InvalidArgumentError("trailing bytes after the EK certificate");
  }
  return cert;
}

absl::StatusOr<std::vector<OsslPtr<X509>>> LoadPemCerts(const std::string& path) {
  OsslPtr<BIO> bio(BIO_new_file(path.c_str(), "r"));
  if (bio == nullptr) {
    return OpenSslError(absl::StrCat("BIO_new_file ", path));
  }
  std::vector<OsslPtr<X509>> certs;
  for (;;) {
    OsslPtr<X509> c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (c == nullptr) {
      break;
    }
    certs.push_back(std::move(c));
  }
  ERR_clear_error();  // the end-of-file "no start line" entry
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no PEM certificate in ", path));
  }
  return certs;
}

absl::StatusOr<OsslPtr<EVP_PKEY>> LoadPemPublicKey(const std::string& path) {
  OsslPtr<BIO> bio(BIO_new_file(path.c_str(), "r"));
  if (bio == nullptr) {
    return OpenSslError(absl::StrCat("BIO_new_file ", path));
  }
  OsslPtr<EVP_PKEY> key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return OpenSslError(absl::StrCat("PEM_read_bio_PUBKEY ", path));
  }
  return key;
}

bool IsSelfSigned(X509* c) { return X509_check_issued(c, c) == X509_V_OK; }

// VerifyChain verifies `leaf` with X509_verify_cert: self-signed certificates of `ca` are trust
// anchors, the others are untrusted intermediates.
absl::Status VerifyChain(X509* leaf, const std::vector<OsslPtr<X509>>& ca) {
  OsslPtr<X509_STORE> store(X509_STORE_new());
  OsslPtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  if (store == nullptr || untrusted == nullptr) {
    return OpenSslError("X509_STORE_new");
  }
  for (const auto& c : ca) {
    if (IsSelfSigned(c.get())) {
      if (X509_STORE_add_cert(store.get(), c.get()) != 1) {
        return OpenSslError("X509_STORE_add_cert");
      }
    } else if (X509_up_ref(c.get()) != 1 || sk_X509_push(untrusted.get(), c.get()) <= 0) {
      return OpenSslError("sk_X509_push");
    }
  }
  OsslPtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) != 1) {
    return OpenSslError("X509_STORE_CTX_init");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::PermissionDeniedError(
        absl::StrCat("X509_verify_cert: ", X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

// SelfSignedCa makes a throw-away self-signed P-256 CA certificate (an unrelated trust anchor).
OsslPtr<X509> SelfSignedCa() {
  OsslPtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  OsslPtr<X509> cert(X509_new());
  if (key == nullptr || cert == nullptr) {
    return nullptr;
  }
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("swtpm-localca-rootca"), -1, -1,
                             0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key.get());
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return nullptr;
  }
  return cert;
}

class SwtpmFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "hwid-fixture-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    tmp_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  // ReadNvCert reads an EK certificate from NV `index` of the TPM behind `tcti`.
  absl::StatusOr<OsslPtr<X509>> ReadNvCert(const std::string& tcti, const std::string& index) {
    std::string out = absl::StrCat(tmp_, "/nv-", index, ".der");
    ShellResult r = Tool(tcti, "tpm2_nvread", absl::StrCat(index, " -o ", ShellQuote(out)));
    if (r.exit_code != 0) {
      return absl::NotFoundError(absl::StrCat("tpm2_nvread ", index, ": ", r.output));
    }
    ASSIGN_OR_RETURN(Bytes der, ReadFile(out));
    return ParseDerCert(der);
  }

  absl::StatusOr<OsslPtr<EVP_PKEY>> ReadPublic(const std::string& tcti, const std::string& handle) {
    std::string out = absl::StrCat(tmp_, "/pub-", handle, ".pem");
    ShellResult r =
        Tool(tcti, "tpm2_readpublic", absl::StrCat("-c ", handle, " -f pem -o ", ShellQuote(out)));
    if (r.exit_code != 0) {
      return absl::NotFoundError(absl::StrCat("tpm2_readpublic ", handle, ": ", r.output));
    }
    return LoadPemPublicKey(out);
  }

  std::string tmp_;
};

TEST_F(SwtpmFixtureTest, TpmAnswersAndEnvironmentIsExported) {
  Swtpm& s = GlobalSwtpm();
  EXPECT_EQ(s.tcti(), absl::StrCat("swtpm:host=127.0.0.1,port=", s.port()));
  EXPECT_EQ(s.ctrl_port(), s.port() + 1);
  EXPECT_GT(s.pid(), 0);

  ShellResult r = Tool(s.tcti(), "tpm2_getrandom", "8 --hex");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string hex(absl::StripAsciiWhitespace(r.output));
  ASSERT_EQ(hex.size(), 16u) << r.output;
  EXPECT_TRUE(HexDecode(hex).ok()) << hex;

  // main() exported the TCTI: tpm2-tools work without -T, and the CA paths are set.
  ASSERT_NE(getenv("HWID_TCTI"), nullptr);
  EXPECT_EQ(std::string(getenv("HWID_TCTI")), s.tcti());
  ASSERT_NE(getenv("TPM2TOOLS_TCTI"), nullptr);
  EXPECT_EQ(std::string(getenv("TPM2TOOLS_TCTI")), s.tcti());
  ASSERT_NE(getenv("TPM2OPENSSL_TCTI"), nullptr);
  EXPECT_EQ(std::string(getenv("TPM2OPENSSL_TCTI")), s.tcti());
  ASSERT_NE(getenv("HWID_EK_CA"), nullptr);
  EXPECT_EQ(std::string(getenv("HWID_EK_CA")), s.ek_ca_bundle());
  ShellResult via_env = RunShell("tpm2_getrandom 4 --hex");
  EXPECT_EQ(via_env.exit_code, 0) << via_env.output;
}

TEST_F(SwtpmFixtureTest, BothPcrBanksAreActive) {
  ShellResult r = Tool(GlobalSwtpm().tcti(), "tpm2_pcrread", "sha1:0+sha256:0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // A fresh TPM after Startup(CLEAR): PCR 0 is all zeros in both banks.
  EXPECT_TRUE(absl::StrContains(r.output, "sha1:")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "sha256:")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, absl::StrCat("0x", std::string(40, '0'))))
      << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, absl::StrCat("0x", std::string(64, '0'))))
      << r.output;
  // sha384 is implemented by swtpm but not allocated by our provisioning.
  ShellResult caps = Tool(GlobalSwtpm().tcti(), "tpm2_getcap", "pcrs");
  ASSERT_EQ(caps.exit_code, 0) << caps.output;
  EXPECT_TRUE(absl::StrContains(caps.output, "sha1: [ 0, 1, 2, 3")) << caps.output;
  EXPECT_TRUE(absl::StrContains(caps.output, "sha256: [ 0, 1, 2, 3")) << caps.output;
  EXPECT_FALSE(absl::StrContains(caps.output, "sha384: [ 0")) << caps.output;
}

struct EkCase {
  const char* name;
  const char* nv_index;
  const char* handle;
  int key_type;       // EVP_PKEY_RSA or EVP_PKEY_EC
  const char* group;  // EC curve name, or nullptr
  int bits;
};

void PrintTo(const EkCase& c, std::ostream* os) { *os << c.name; }

class EkTest : public SwtpmFixtureTest, public ::testing::WithParamInterface<EkCase> {};

TEST_P(EkTest, CertChainsToCaBundle) {
  const EkCase& c = GetParam();
  Swtpm& s = GlobalSwtpm();
  absl::StatusOr<OsslPtr<X509>> cert = ReadNvCert(s.tcti(), c.nv_index);
  ASSERT_TRUE(cert.ok()) << cert.status();
  absl::StatusOr<std::vector<OsslPtr<X509>>> bundle = LoadPemCerts(s.ek_ca_bundle());
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  ASSERT_EQ(bundle->size(), 2u) << "ek-ca.pem must hold root + intermediate";

  EXPECT_TRUE(VerifyChain(cert->get(), *bundle).ok()) << VerifyChain(cert->get(), *bundle);

  // The root alone is not enough: the intermediate really is part of the chain.
  absl::StatusOr<std::vector<OsslPtr<X509>>> root_only = LoadPemCerts(s.ek_root());
  ASSERT_TRUE(root_only.ok()) << root_only.status();
  ASSERT_EQ(root_only->size(), 1u);
  EXPECT_TRUE(IsSelfSigned((*root_only)[0].get()));
  EXPECT_EQ(VerifyChain(cert->get(), *root_only).code(), absl::StatusCode::kPermissionDenied);

  // An unrelated anchor (same subject name, different key) is rejected.
  std::vector<OsslPtr<X509>> foreign;
  foreign.push_back(SelfSignedCa());
  ASSERT_NE(foreign[0], nullptr);
  EXPECT_EQ(VerifyChain(cert->get(), foreign).code(), absl::StatusCode::kPermissionDenied);

  // A certificate with a flipped signature bit does not verify.
  unsigned char* der = nullptr;
  int len = i2d_X509(cert->get(), &der);
  ASSERT_GT(len, 0);
  Bytes tampered(der, der + len);
  OPENSSL_free(der);
  tampered[tampered.size() - 3] ^= 0x01;
  absl::StatusOr<OsslPtr<X509>> bad = ParseDerCert(tampered);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(VerifyChain(bad->get(), *bundle).code(), absl::StatusCode::kPermissionDenied);
}

TEST_P(EkTest, CertKeyEqualsPersistentEkPublic) {
  const EkCase& c = GetParam();
  Swtpm& s = GlobalSwtpm();
  absl::StatusOr<OsslPtr<X509>> cert = ReadNvCert(s.tcti(), c.nv_index);
  ASSERT_TRUE(cert.ok()) << cert.status();
  absl::StatusOr<OsslPtr<EVP_PKEY>> tpm_key = ReadPublic(s.tcti(), c.handle);
  ASSERT_TRUE(tpm_key.ok()) << tpm_key.status();
  EVP_PKEY* cert_key = X509_get0_pubkey(cert->get());
  ASSERT_NE(cert_key, nullptr);

  EXPECT_EQ(EVP_PKEY_get_base_id(cert_key), c.key_type);
  EXPECT_EQ(EVP_PKEY_get_bits(cert_key), c.bits);
  if (c.group != nullptr) {
    char group[64] = {0};
    ASSERT_EQ(EVP_PKEY_get_group_name(cert_key, group, sizeof(group), nullptr), 1);
    EXPECT_STREQ(group, c.group);
  }
  EXPECT_EQ(EVP_PKEY_eq(cert_key, tpm_key->get()), 1)
      << c.name << ": cert at " << c.nv_index << " does not match EK " << c.handle;

  // Negative: the certificate's key differs from the other EKs.
  for (const char* other : {"0x81010001", "0x81010016", "0x81010002"}) {
    if (std::string(other) == c.handle) {
      continue;
    }
    absl::StatusOr<OsslPtr<EVP_PKEY>> other_key = ReadPublic(s.tcti(), other);
    ASSERT_TRUE(other_key.ok()) << other_key.status();
    EXPECT_NE(EVP_PKEY_eq(cert_key, other_key->get()), 1) << c.name << " vs " << other;
  }
  ERR_clear_error();
}

INSTANTIATE_TEST_SUITE_P(
    AllEks, EkTest,
    ::testing::Values(EkCase{"rsa2048", "0x01c00002", "0x81010001", EVP_PKEY_RSA, nullptr, 2048},
                      EkCase{"ecc_p384", "0x01c00016", "0x81010016", EVP_PKEY_EC, "secp384r1", 384},
                      EkCase{"ecc_p256", "0x01c0000a", "0x81010002", EVP_PKEY_EC, "prime256v1",
                             256}),
    [](const ::testing::TestParamInfo<EkCase>& p) { return std::string(p.param.name); });

TEST_F(SwtpmFixtureTest, RestartKeepsPersistentStateAndDropsTransients) {
  Swtpm& s = GlobalSwtpm();
  const std::string tcti = s.tcti();
  const int port = s.port();
  const pid_t old_pid = s.pid();

  ShellResult cp = Tool(tcti, "tpm2_createprimary",
                      absl::StrCat("-C o -G ecc -c ", ShellQuote(tmp_ + "/primary.ctx")));
  ASSERT_EQ(cp.exit_code, 0) << cp.output;
  ShellResult before = Tool(tcti, "tpm2_getcap", "handles-transient");
  ASSERT_EQ(before.exit_code, 0) << before.output;
  EXPECT_TRUE(absl::StrContains(before.output, "0x80")) << before.output;

  absl::Status restarted = s.Restart();
  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_EQ(s.tcti(), tcti);
  EXPECT_EQ(s.port(), port);
  EXPECT_GT(s.pid(), 0);
  EXPECT_NE(s.pid(), old_pid);
  EXPECT_NE(kill(old_pid, 0), 0) << "old swtpm pid " << old_pid << " still exists";

  ShellResult rnd = Tool(tcti, "tpm2_getrandom", "8 --hex");
  EXPECT_EQ(rnd.exit_code, 0) << rnd.output;
  ShellResult after = Tool(tcti, "tpm2_getcap", "handles-transient");
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_FALSE(absl::StrContains(after.output, "0x80")) << after.output;
  ShellResult persistent = Tool(tcti, "tpm2_getcap", "handles-persistent");
  ASSERT_EQ(persistent.exit_code, 0) << persistent.output;
  for (const char* h : {"0x81010001", "0x81010002", "0x81010016"}) {
    EXPECT_TRUE(absl::StrContains(persistent.output, h)) << persistent.output;
  }
}

TEST_F(SwtpmFixtureTest, TwoInstancesAreIndependent) {
  Swtpm& a = GlobalSwtpm();
  absl::StatusOr<std::unique_ptr<Swtpm>> started = Swtpm::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<Swtpm> b = std::move(*started);

  EXPECT_NE(a.port(), b->port());
  EXPECT_NE(a.port(), b->ctrl_port());
  EXPECT_NE(a.ctrl_port(), b->port());
  EXPECT_NE(a.tcti(), b->tcti());
  EXPECT_NE(a.dir(), b->dir());
  EXPECT_NE(a.pid(), b->pid());
  EXPECT_TRUE(fs::exists(b->ek_ca_bundle()));
  EXPECT_TRUE(fs::exists(b->ek_root()));

  // Same template: same EK; different state: an NV index defined in b is absent in a.
  absl::StatusOr<OsslPtr<EVP_PKEY>> ek_a = ReadPublic(a.tcti(), "0x81010001");
  absl::StatusOr<OsslPtr<EVP_PKEY>> ek_b = ReadPublic(b->tcti(), "0x81010001");
  ASSERT_TRUE(ek_a.ok()) << ek_a.status();
  ASSERT_TRUE(ek_b.ok()) << ek_b.status();
  EXPECT_EQ(EVP_PKEY_eq(ek_a->get(), ek_b->get()), 1);

  const std::string index = "0x01500020";
  ShellResult def = Tool(b->tcti(), "tpm2_nvdefine",
                       absl::StrCat(index, " -C o -s 8 -a \"ownerread|ownerwrite\""));
  ASSERT_EQ(def.exit_code, 0) << def.output;
  ShellResult in_b = Tool(b->tcti(), "tpm2_nvreadpublic", index);
  EXPECT_EQ(in_b.exit_code, 0) << in_b.output;
  ShellResult in_a = Tool(a.tcti(), "tpm2_nvreadpublic", index);
  EXPECT_NE(in_a.exit_code, 0) << in_a.output;

  // Stop is idempotent, and Restart after Stop brings b back with its NV index.
  ASSERT_TRUE(b->Stop().ok());
  EXPECT_EQ(b->pid(), -1);
  ASSERT_TRUE(b->Stop().ok());
  EXPECT_NE(Tool(b->tcti(), "tpm2_getrandom", "4").exit_code, 0);
  absl::Status restarted = b->Restart();
  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_EQ(Tool(b->tcti(), "tpm2_nvreadpublic", index).exit_code, 0);

  // Destroying b stops exactly its process (reaped: the pid is gone) and removes its directory;
  // a keeps answering.
  const pid_t b_pid = b->pid();
  const std::string b_dir = b->dir();
  const std::string b_tcti = b->tcti();
  b.reset();
  EXPECT_NE(kill(b_pid, 0), 0);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_FALSE(fs::exists(b_dir));
  EXPECT_NE(Tool(b_tcti, "tpm2_getrandom", "4").exit_code, 0);
  ShellResult a_alive = Tool(a.tcti(), "tpm2_getrandom", "4 --hex");
  EXPECT_EQ(a_alive.exit_code, 0) << a_alive.output;
}

TEST(SwtpmStartTest, MissingTemplateIsAClearError) {
  const char* saved = getenv("HWID_SWTPM_TEMPLATE");
  std::optional<std::string> old;
  if (saved != nullptr) {
    old = saved;
  }
  setenv("HWID_SWTPM_TEMPLATE", "/nonexistent/hwid-template", 1);
  absl::StatusOr<std::unique_ptr<Swtpm>> missing = Swtpm::Start();
  unsetenv("HWID_SWTPM_TEMPLATE");
  absl::StatusOr<std::unique_ptr<Swtpm>> unset = Swtpm::Start();
  if (old.has_value()) {
    setenv("HWID_SWTPM_TEMPLATE", old->c_str(), 1);
  }

  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "/nonexistent/hwid-template"))
      << missing.status();
  ASSERT_FALSE(unset.ok());
  EXPECT_EQ(unset.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(unset.status().message(), "HWID_SWTPM_TEMPLATE"))
      << unset.status();
}

}  // namespace
}  // namespace hwid::testing
