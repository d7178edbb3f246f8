// Certificates as real TPMs and community bundles ship them (issue 14): EK/chain certificates in
// NV with the TCG PC Client header, padding or junk after the DER (wire::ExtractNvCertificate),
// and trust bundles as distributed: a PEM file with comments between blocks, a DER file, a
// directory tree like Microsoft's TrustedTpm.cab extracted (wire::LoadTrustBundle).
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attestor_plugin/attestation/server.h"
#include "common/bytes.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/test_pki.h"
#include "tests/testing/status_assert.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/ekcert.h"

namespace hwid::attestation {
namespace {

namespace fs = std::filesystem;
using ::hwid::attestation::testing::MakeEkCert;
using ::hwid::attestation::testing::MakeIntermediate;
using ::hwid::attestation::testing::MakeRoot;
using ::hwid::attestation::testing::TestCert;
using ::hwid::attestation::testing::ToDer;
using ::hwid::attestation::testing::ToPem;
using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

struct Pki {
  TestCert root = MakeRoot("Trust Test Root");
  TestCert inter = MakeIntermediate("Trust Test Intermediate", root);
  TestCert root2 = MakeRoot("Trust Test Root 2");
  OsslPtr<X509> ek = MakeEkCert(RsaKey(), inter);
};

Pki& SharedPki() {
  static Pki* pki = new Pki();
  return *pki;
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

Bytes TcgHeader(size_t length) {
  return {0x10, 0x01, 0x00, static_cast<uint8_t>(length >> 8), static_cast<uint8_t>(length)};
}

// ---------------------------------------------------------------- ExtractNvCertificate

TEST(ExtractNvCertificateTest, ExactDerHasNoQuirks) {
  const Bytes der = ToDer(SharedPki().ek.get());
  ASSERT_OK_AND_ASSIGN(wire::NvCertificate c, wire::ExtractNvCertificate(der));
  EXPECT_EQ(c.der, der);
  EXPECT_EQ(c.nv_size, der.size());
  EXPECT_FALSE(c.tcg_wrapper);
  EXPECT_EQ(c.padding_bytes, 0u);
  EXPECT_EQ(c.trailing_bytes, 0u);
  EXPECT_THAT(c.quirks, IsEmpty());
}

TEST(ExtractNvCertificateTest, EachQuirkIsReportedNotRefused) {
  const Bytes der = ToDer(SharedPki().ek.get());
  const Bytes junk = {0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
                      0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c};
  const std::string len = std::to_string(der.size());
  struct Row {
    const char* name;
    Bytes nv;
    bool wrapper;
    size_t padding;
    size_t trailing;
    std::vector<std::string> quirks;
  };
  const std::vector<Row> rows = {
      {"0xff padding", Concat({der, Bytes(372, 0xff)}), false, 372, 0,
       {"372 bytes of 0xff padding after the DER certificate"}},
      {"0x00 padding", Concat({der, Bytes(7, 0x00)}), false, 7, 0,
       {"7 bytes of 0x00 padding after the DER certificate"}},
      {"mixed padding", Concat({der, Bytes(3, 0x00), Bytes(2, 0xff)}), false, 5, 0,
       {"5 bytes of 0x00/0xff padding after the DER certificate"}},
      {"junk", Concat({der, junk}), false, 0, 16,
       {"16 bytes after the DER certificate that are not 0x00/0xff padding"}},
      {"junk then padding", Concat({der, junk, Bytes(100, 0xff)}), false, 100, 16,
       {"16 bytes after the DER certificate that are not 0x00/0xff padding",
        "100 bytes of 0xff padding after the DER certificate"}},
      // Padding bytes before junk belong to the junk: only the final run is padding.
      {"padding inside junk", Concat({der, Bytes(4, 0x00), junk}), false, 0, 20,
       {"20 bytes after the DER certificate that are not 0x00/0xff padding"}},
      {"TCG header", Concat({TcgHeader(der.size()), der}), true, 0, 0,
       {"TCG PC Client NV header 10 01 00 (length " + len + ") before the DER"}},
      {"TCG header and padding", Concat({TcgHeader(der.size()), der, Bytes(10, 0xff)}), true, 10,
       0,
       {"TCG PC Client NV header 10 01 00 (length " + len + ") before the DER",
        "10 bytes of 0xff padding after the DER certificate"}},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    ASSERT_OK_AND_ASSIGN(wire::NvCertificate c, wire::ExtractNvCertificate(row.nv));
    EXPECT_EQ(c.der, der);
    EXPECT_EQ(c.nv_size, row.nv.size());
    EXPECT_EQ(c.tcg_wrapper, row.wrapper);
    EXPECT_EQ(c.padding_bytes, row.padding);
    EXPECT_EQ(c.trailing_bytes, row.trailing);
    EXPECT_EQ(c.quirks, row.quirks);
    // The thin wrapper accepts the same and returns only the DER.
    ASSERT_OK_AND_ASSIGN(Bytes plain, wire::ExtractEkCertificateDer(row.nv));
    EXPECT_EQ(plain, der);
  }
}

TEST(ExtractNvCertificateTest, NoCompleteCertificateIsRefusedNamingTheProblem) {
  const Bytes der = ToDer(SharedPki().ek.get());
  Bytes truncated = der;
  truncated.resize(der.size() - 1);
  Bytes not_cert = {0x30, 0x03, 0x02, 0x01, 0x01};  // SEQUENCE { INTEGER 1 }
  struct Row {
    const char* name;
    Bytes nv;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"empty", {}, "empty (no certificate)"},
      {"erased NV (all 0xff)", Bytes(1024, 0xff), "the first byte is 0xff, not 0x30"},
      {"not a SEQUENCE", Concat({Bytes{0x31}, Bytes(der.begin() + 1, der.end())}),
       "the first byte is 0x31, not 0x30"},
      {"truncated", truncated, "truncated: the DER certificate needs"},
      {"header only", {0x30}, "truncated DER SEQUENCE header"},
      {"truncated length field", {0x30, 0x82, 0x01}, "truncated DER length field"},
      {"indefinite length", Concat({Bytes{0x30, 0x80}, Bytes(20, 0x01)}),
       "bad DER length field 0x80"},
      {"4-byte length", Concat({Bytes{0x30, 0x84, 0, 0, 0, 5}, Bytes(5, 0x01)}),
       "bad DER length field 0x84"},
      {"TCG header, nothing after", {0x10, 0x01, 0x00, 0x00, 0x00},
       "after the TCG NV header 10 01 00, nothing follows"},
      {"TCG header length disagrees", Concat({TcgHeader(der.size() + 1), der}),
       "the TCG NV header 10 01 00 gives a certificate length of"},
      {"TCG header, not DER after", Concat({TcgHeader(4), Bytes{0x04, 0x02, 0x00, 0x00}}),
       "after the TCG NV header 10 01 00, the first byte is 0x04"},
      {"a SEQUENCE that is no certificate", not_cert, "is not an X.509 certificate"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    EXPECT_THAT(wire::ExtractNvCertificate(row.nv), StatusIs(kInvalid, row.message));
    EXPECT_THAT(wire::ExtractEkCertificateDer(row.nv), StatusIs(kInvalid, row.message));
  }
}

// ---------------------------------------------------------------- LoadTrustBundle

class TrustBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hwid-trust-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Write(const std::string& rel, const std::string& content) {
    const fs::path p = fs::path(dir_) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  std::string Write(const std::string& rel, const Bytes& content) {
    return Write(rel, std::string(content.begin(), content.end()));
  }
  std::string Path(const std::string& rel = "") const { return (fs::path(dir_) / rel).string(); }

  static std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

  std::string dir_;
};

TEST_F(TrustBundleTest, MicrosoftLayoutOfDerFiles) {
  Pki& pki = SharedPki();
  Write("Vendor A/RootCA/Vendor A Root.cer", ToDer(pki.root.cert.get()));
  Write("Vendor A/IntermediateCA/Vendor A EK CA.CER", ToDer(pki.inter.cert.get()));
  Write("Vendor B/RootCA/root.crt", ToDer(pki.root2.cert.get()));
  Write("Vendor B/readme.txt", "not a certificate");
  Write("version.txt", "1.0");
  Write(".hidden.cer", "garbage that would fail the load if read");
  Write(".git/objects/x.pem", "garbage that would fail the load if read");
  ASSERT_OK_AND_ASSIGN(wire::CaBundle b, wire::LoadTrustBundle(Path()));
  EXPECT_EQ(b.roots.size(), 2u);
  EXPECT_EQ(b.intermediates.size(), 1u);
  EXPECT_EQ(b.files.size(), 3u);
  EXPECT_EQ(b.ignored_files, 4u);  // readme.txt, version.txt, .hidden.cer, .git
  // The EK certificate chains through the loaded intermediate to the loaded root.
  EXPECT_THAT(wire::VerifyEkCertificate(pki.ek.get(), b), IsOk());
}

TEST_F(TrustBundleTest, MixedPemAndDerWithCommentsAndDuplicates) {
  Pki& pki = SharedPki();
  const std::string commented =
      "# Community TPM EK roots\n# vendor: Trust Test\n"
      "subject=CN = Trust Test Root\n" +
      ToPem({pki.root.cert.get()}) + "\n# the intermediate\nissuer=CN = Trust Test Root\n" +
      ToPem({pki.inter.cert.get()}) + "# end\n";
  Write("bundle.pem", commented);
  Write("again/root.der", ToDer(pki.root.cert.get()));      // a duplicate, as DER
  Write("again/root-copy.PEM", ToPem({pki.root.cert.get()}));  // a duplicate, as PEM
  ASSERT_OK_AND_ASSIGN(wire::CaBundle b, wire::LoadTrustBundle(Path()));
  EXPECT_EQ(b.roots.size(), 1u);
  EXPECT_EQ(b.intermediates.size(), 1u);
  EXPECT_EQ(b.files.size(), 3u);
  EXPECT_EQ(b.ignored_files, 0u);
  EXPECT_THAT(wire::VerifyEkCertificate(pki.ek.get(), b), IsOk());

  // The commented PEM alone, as a file; LoadCaBundlePem already ignores text between blocks.
  ASSERT_OK_AND_ASSIGN(wire::CaBundle f, wire::LoadTrustBundle(Path("bundle.pem")));
  EXPECT_EQ(f.roots.size(), 1u);
  EXPECT_EQ(f.intermediates.size(), 1u);
  EXPECT_THAT(f.files, ElementsAre(Path("bundle.pem")));
  EXPECT_THAT(wire::LoadCaBundlePem(AsSpan(commented)), IsOk());
  // One DER file, whatever its name.
  const std::string der = Write("root.bin", ToDer(pki.root.cert.get()));
  ASSERT_OK_AND_ASSIGN(wire::CaBundle d, wire::LoadTrustBundle(der));
  EXPECT_EQ(d.roots.size(), 1u);
}

TEST_F(TrustBundleTest, SymlinkLoopDoesNotHang) {
  Pki& pki = SharedPki();
  Write("a/root.pem", ToPem({pki.root.cert.get()}));
  fs::create_directory_symlink(Path("a"), Path("a/loop"));
  fs::create_directory_symlink(Path(""), Path("a/up"));
  fs::create_symlink(Path("a/root.pem"), Path("link-to-root.pem"));  // a file symlink is read
  ASSERT_OK_AND_ASSIGN(wire::CaBundle b, wire::LoadTrustBundle(Path()));
  EXPECT_EQ(b.roots.size(), 1u);  // the same root twice: one kept
  EXPECT_EQ(b.files.size(), 2u);
  EXPECT_EQ(b.ignored_files, 2u);  // the two directory links
}

TEST_F(TrustBundleTest, StrictFailures) {
  Pki& pki = SharedPki();
  const std::string root_pem = ToPem({pki.root.cert.get()});
  {
    SCOPED_TRACE("an unreadable block names the file and block");
    const std::string bad = Write(
        "bad/vendor/bundle.pem",
        root_pem + "# comment\n-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n");
    Write("bad/other.pem", root_pem);
    EXPECT_THAT(wire::LoadTrustBundle(Path("bad")),
                StatusIs(kInvalid, bad + ": PEM block 2 cannot be read"));
  }
  {
    SCOPED_TRACE("a DER file that does not parse names the file");
    const std::string bad = Write("baddir/RootCA/broken.cer", Bytes{0x30, 0x03, 0x02, 0x01, 0x01});
    Write("baddir/RootCA/good.cer", ToDer(pki.root.cert.get()));
    EXPECT_THAT(wire::LoadTrustBundle(Path("baddir")),
                StatusIs(kInvalid, bad + ": neither PEM nor one DER certificate"));
  }
  {
    SCOPED_TRACE("a DER certificate with trailing bytes");
    const std::string bad =
        Write("trail.der", Str(ToDer(pki.root.cert.get())) + std::string("\0\0", 2));
    EXPECT_THAT(wire::LoadTrustBundle(bad), StatusIs(kInvalid, bad + ": neither PEM nor one DER"));
  }
  {
    SCOPED_TRACE("a PEM file with text only");
    const std::string bad = Write("text.pem", "# nothing here\n");
    EXPECT_THAT(wire::LoadTrustBundle(bad), StatusIs(kInvalid, bad + ": neither PEM nor one DER"));
    const std::string begin_only = Write("begin.pem", "-----BEGIN nothing\n");
    EXPECT_THAT(wire::LoadTrustBundle(begin_only), StatusIs(kInvalid, begin_only + ": no PEM"));
  }
  {
    SCOPED_TRACE("an empty file");
    const std::string bad = Write("empty.pem", "");
    EXPECT_THAT(wire::LoadTrustBundle(bad), StatusIs(kInvalid, bad + ": empty file"));
  }
  {
    SCOPED_TRACE("an empty directory, and one with other files only");
    fs::create_directories(Path("empty"));
    EXPECT_THAT(wire::LoadTrustBundle(Path("empty")),
                StatusIs(kInvalid, "holds no certificate file (.pem .crt .cer .der); 0 other"));
    Write("others/readme.md", "x");
    EXPECT_THAT(wire::LoadTrustBundle(Path("others")),
                StatusIs(kInvalid, "holds no certificate file (.pem .crt .cer .der); 1 other"));
  }
  {
    SCOPED_TRACE("intermediates only");
    Write("inter-only/IntermediateCA/i.cer", ToDer(pki.inter.cert.get()));
    EXPECT_THAT(wire::LoadTrustBundle(Path("inter-only")),
                StatusIs(kInvalid, "holds no self-signed root certificate (1 intermediates"));
  }
  {
    SCOPED_TRACE("a missing path");
    EXPECT_THAT(wire::LoadTrustBundle(Path("missing")),
                StatusIs(absl::StatusCode::kNotFound, "missing"));
  }
}

// ek_ca_bundle_paths: each entry a file or a directory, merged.
TEST_F(TrustBundleTest, EkCaBundlePathsTakeFilesAndDirectories) {
  Pki& pki = SharedPki();
  Write("ms/Vendor A/RootCA/root.cer", ToDer(pki.root.cert.get()));
  Write("ms/Vendor A/IntermediateCA/inter.cer", ToDer(pki.inter.cert.get()));
  Write("ms/Vendor A/notes.txt", "x");
  const std::string file =
      Write("other-root.pem", "# another vendor\n" + ToPem({pki.root2.cert.get()}));
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {Path("ms"), file};
  absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(in);
  ASSERT_THAT(c, IsOk());
  ASSERT_TRUE((*c)->ca.has_value());
  EXPECT_EQ((*c)->ca->roots.size(), 2u);
  EXPECT_EQ((*c)->ca->intermediates.size(), 1u);
  EXPECT_EQ((*c)->ca->files.size(), 3u);
  EXPECT_EQ((*c)->ca->ignored_files, 1u);
  EXPECT_THAT(wire::VerifyEkCertificate(pki.ek.get(), *(*c)->ca), IsOk());

  const std::string bad = Write("ms/Vendor B/RootCA/bad.cer", "not DER");
  EXPECT_THAT(ValidateServerConfig(in),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "hwid_tpm server configuration: ek_ca_bundle_paths: " + bad +
                           ": neither PEM nor one DER certificate"));
}

}  // namespace
}  // namespace hwid::attestation
