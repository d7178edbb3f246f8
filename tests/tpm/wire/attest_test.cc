// VerifyQuote / CheckAkAttributes / VerifyCertify / CheckCertifiedKeyAttributes: table-driven,
// with a negative row for every verifier pitfall. Quotes and certifications are built in software
// (TPMS_ATTEST marshalled with tss2-mu) and signed by software keys expressed as restricted AK
// public areas; two real swtpm quotes pin interoperability (real certifications from swtpm are in
// tests/attestor_plugin/attestation/certify_test.cc).
#include "tpm/wire/attest.h"

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::EcKey2;
using ::hwid::wire::testing::Hex;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::MuMarshalAttest;
using ::hwid::wire::testing::MuMarshalSignature;
using ::hwid::wire::testing::MuMarshalTpmtPublic;
using ::hwid::wire::testing::ReadTestdata;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::RsaKey2;
using ::hwid::wire::testing::Sha;
using ::hwid::wire::testing::Sign;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using ::testing::ValuesIn;

struct Signer {
  std::string name;
  KeyAlg alg;
  TPMI_ALG_SIG_SCHEME scheme;
  EVP_PKEY* (*key)();
  EVP_PKEY* (*other)();  // A different key of the same kind ("wrong AK").
};

TPMT_PUBLIC AkFor(const Signer& s) {
  TPMT_PUBLIC ak = WithKey(AkTemplate(s.alg).publicArea, s.key());
  if (s.scheme == TPM2_ALG_RSAPSS) {
    ak.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSAPSS;
    ak.parameters.rsaDetail.scheme.details.rsapss.hashAlg = TPM2_ALG_SHA256;
  }
  return ak;
}

TPMI_ALG_HASH AkHash(const TPMT_PUBLIC& ak) {
  return ak.type == TPM2_ALG_RSA ? ak.parameters.rsaDetail.scheme.details.anySig.hashAlg
                                 : ak.parameters.eccDetail.scheme.details.anySig.hashAlg;
}

// Inputs of one VerifyQuote call, built in software.
struct Quote {
  TPMT_PUBLIC ak;
  TPMS_ATTEST attest;
  Bytes nonce;
  PcrValues pcrs;
};

void SetSelection(TPMS_PCR_SELECTION* s, TPMI_ALG_HASH bank, std::vector<uint32_t> indices) {
  std::memset(s, 0, sizeof(*s));
  s->hash = bank;
  s->sizeofSelect = 3;
  for (uint32_t i : indices) {
    s->pcrSelect[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

void SetDigest(TPM2B_DIGEST* d, const Bytes& v) {
  d->size = static_cast<UINT16>(v.size());
  std::memcpy(d->buffer, v.data(), v.size());
}

// Baseline: a valid quote over sha256:0,1,2,3 + sha1:7 with a 32-byte nonce.
Quote Baseline(const Signer& s) {
  Quote q;
  q.ak = AkFor(s);
  const TPMI_ALG_HASH hash = AkHash(q.ak);
  q.nonce = Sha(TPM2_ALG_SHA256, AsSpan("server nonce"));
  for (uint32_t i = 0; i < 4; ++i) {
    q.pcrs[TPM2_ALG_SHA256][i] = Sha(TPM2_ALG_SHA256, AsSpan("pcr" + std::to_string(i)));
  }
  q.pcrs[TPM2_ALG_SHA1][7] = Sha(TPM2_ALG_SHA1, AsSpan("pcr7"));

  TPMS_ATTEST& a = q.attest;
  std::memset(&a, 0, sizeof(a));
  a.magic = TPM2_GENERATED_VALUE;
  a.type = TPM2_ST_ATTEST_QUOTE;
  const Bytes signer_name = Concat({Hex("000b"), Sha(TPM2_ALG_SHA256, AsSpan("ak"))});
  a.qualifiedSigner.size = static_cast<UINT16>(signer_name.size());
  std::memcpy(a.qualifiedSigner.name, signer_name.data(), signer_name.size());
  a.extraData.size = static_cast<UINT16>(q.nonce.size());
  std::memcpy(a.extraData.buffer, q.nonce.data(), q.nonce.size());
  a.clockInfo.clock = 123456789;
  a.clockInfo.resetCount = 3;
  a.clockInfo.restartCount = 1;
  a.clockInfo.safe = TPM2_YES;
  a.firmwareVersion = 0x2019102300000000ull;
  TPML_PCR_SELECTION& sel = a.attested.quote.pcrSelect;
  sel.count = 2;
  SetSelection(&sel.pcrSelections[0], TPM2_ALG_SHA256, {0, 1, 2, 3});
  SetSelection(&sel.pcrSelections[1], TPM2_ALG_SHA1, {7});
  const auto& p = q.pcrs;
  SetDigest(&a.attested.quote.pcrDigest,
            Sha(hash, Concat({p.at(TPM2_ALG_SHA256).at(0), p.at(TPM2_ALG_SHA256).at(1),
                              p.at(TPM2_ALG_SHA256).at(2), p.at(TPM2_ALG_SHA256).at(3),
                              p.at(TPM2_ALG_SHA1).at(7)})));
  return q;
}

struct Case {
  std::string name;
  std::function<void(TPMS_ATTEST&)> attest_fn;          // before marshalling
  std::function<void(Bytes&)> attest_bytes_fn;          // after marshalling, before signing
  bool sign_with_other_key = false;
  TPMI_ALG_HASH sign_hash = 0;                           // 0: the AK's scheme hash
  TPMI_ALG_SIG_SCHEME sign_scheme = 0;                   // 0: the AK's scheme
  std::function<void(Bytes&)> after_sign_attest_fn;     // tamper with signed bytes
  std::function<void(Bytes&)> sig_bytes_fn;
  std::function<void(Quote&)> inputs_fn;                 // nonce / pcrs / ak seen by the verifier
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string substr;
};

std::vector<Case> Cases() {
  using absl::StatusCode;
  std::vector<Case> c;
  c.push_back({.name = "good"});
  c.push_back({.name = "wrong_nonce",
               .inputs_fn = [](Quote& q) { q.nonce[5] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match the nonce"});
  c.push_back({.name = "shorter_nonce",
               .inputs_fn = [](Quote& q) { q.nonce.pop_back(); },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match the nonce"});
  c.push_back({.name = "empty_nonce",
               .inputs_fn = [](Quote& q) { q.nonce.clear(); },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match the nonce"});
  c.push_back({.name = "wrong_magic",
               .attest_fn = [](TPMS_ATTEST& a) { a.magic = 0xff544348; },
               .code = StatusCode::kPermissionDenied,
               .substr = "magic 0xff544348 is not TPM_GENERATED_VALUE"});
  c.push_back({.name = "type_certify",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     a.type = TPM2_ST_ATTEST_CERTIFY;
                     std::memset(&a.attested, 0, sizeof(a.attested));
                     a.attested.certify.name.size = 2;
                     a.attested.certify.qualifiedName.size = 2;
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "attestation type 0x8017 is not TPM_ST_ATTEST_QUOTE"});
  c.push_back({.name = "type_nv",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     a.type = TPM2_ST_ATTEST_NV;
                     std::memset(&a.attested, 0, sizeof(a.attested));
                     a.attested.nv.indexName.size = 2;
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "attestation type 0x8014"});
  c.push_back({.name = "tampered_pcr_value",
               .inputs_fn = [](Quote& q) { q.pcrs[TPM2_ALG_SHA256][2][0] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "pcrDigest does not match"});
  c.push_back({.name = "pcr_missing",
               .inputs_fn = [](Quote& q) { q.pcrs[TPM2_ALG_SHA256].erase(3); },
               .code = StatusCode::kInvalidArgument,
               .substr = "selected PCR sha256:3 has no supplied value"});
  c.push_back({.name = "bank_missing",
               .inputs_fn = [](Quote& q) { q.pcrs.erase(TPM2_ALG_SHA1); },
               .code = StatusCode::kInvalidArgument,
               .substr = "selected PCR sha1:7 has no supplied value"});
  c.push_back({.name = "extra_pcr",
               .inputs_fn =
                   [](Quote& q) { q.pcrs[TPM2_ALG_SHA256][10] = Bytes(32, 0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "supplied PCR sha256:10 is not in the quoted selection"});
  c.push_back({.name = "extra_bank",
               .inputs_fn = [](Quote& q) { q.pcrs[TPM2_ALG_SHA384][0] = Bytes(48, 0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "supplied PCR sha384:0 is not in the quoted selection"});
  c.push_back({.name = "wrong_length_pcr",
               .inputs_fn = [](Quote& q) { q.pcrs[TPM2_ALG_SHA1][7] = Bytes(32, 0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "PCR sha1:7 value is 32 bytes; a sha1 PCR is 20"});
  c.push_back({.name = "tampered_pcr_digest",
               .attest_fn = [](TPMS_ATTEST& a) { a.attested.quote.pcrDigest.buffer[0] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "pcrDigest does not match"});
  c.push_back({.name = "pcr_digest_wrong_hash",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     const TPM2B_DIGEST& d = a.attested.quote.pcrDigest;
                     SetDigest(&a.attested.quote.pcrDigest,
                               Sha(TPM2_ALG_SHA1, ByteSpan(d.buffer, d.size)));
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "pcrDigest does not match"});
  c.push_back({.name = "selection_bank_twice",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     TPML_PCR_SELECTION& s = a.attested.quote.pcrSelect;
                     SetSelection(&s.pcrSelections[s.count++], TPM2_ALG_SHA256, {5});
                   },
               .code = StatusCode::kInvalidArgument,
               .substr = "PCR bank sha256 selected twice"});
  c.push_back({.name = "selection_unknown_bank",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     TPML_PCR_SELECTION& s = a.attested.quote.pcrSelect;
                     SetSelection(&s.pcrSelections[s.count++], TPM2_ALG_SM3_256, {5});
                   },
               .code = StatusCode::kInvalidArgument,
               .substr = "unsupported bank 0x0012"});
  c.push_back({.name = "truncated_attest",
               .attest_bytes_fn = [](Bytes& b) { b.pop_back(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMS_ATTEST: malformed"});
  c.push_back({.name = "trailing_attest",
               .attest_bytes_fn = [](Bytes& b) { b.push_back(0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMS_ATTEST: 1 trailing bytes after the structure"});
  c.push_back({.name = "empty_attest",
               .attest_bytes_fn = [](Bytes& b) { b.clear(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMS_ATTEST: empty input"});
  c.push_back({.name = "truncated_signature",
               .sig_bytes_fn = [](Bytes& b) { b.pop_back(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMT_SIGNATURE: malformed"});
  c.push_back({.name = "trailing_signature",
               .sig_bytes_fn = [](Bytes& b) { b.push_back(0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMT_SIGNATURE: 1 trailing bytes"});
  c.push_back({.name = "signature_by_other_key",
               .sign_with_other_key = true,
               .code = StatusCode::kPermissionDenied,
               .substr = "signature does not verify with the AK"});
  c.push_back({.name = "attest_modified_after_signing",
               .after_sign_attest_fn = [](Bytes& b) { b[76] ^= 1; },  // clockInfo.clock
               .code = StatusCode::kPermissionDenied,
               .substr = "signature does not verify with the AK"});
  c.push_back({.name = "signature_hash_not_ak_scheme",
               .sign_hash = TPM2_ALG_SHA512,
               .code = StatusCode::kPermissionDenied,
               .substr = "does not match the AK's scheme"});
  c.push_back({.name = "unrestricted_ak",
               .inputs_fn =
                   [](Quote& q) { q.ak.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; },
               .code = StatusCode::kInvalidArgument,
               .substr = "AK: attribute restricted is not set"});
  return c;
}

class VerifyQuoteTest : public ::testing::TestWithParam<Signer> {};

TEST_P(VerifyQuoteTest, Table) {
  const Signer& s = GetParam();
  for (const Case& c : Cases()) {
    SCOPED_TRACE(s.name + "/" + c.name);
    Quote q = Baseline(s);
    if (c.attest_fn) {
      c.attest_fn(q.attest);
    }
    Bytes attest = MuMarshalAttest(q.attest);
    if (c.attest_bytes_fn) {
      c.attest_bytes_fn(attest);
    }
    const TPMI_ALG_HASH hash = c.sign_hash != 0 ? c.sign_hash : AkHash(q.ak);
    const TPMI_ALG_SIG_SCHEME scheme = c.sign_scheme != 0 ? c.sign_scheme : s.scheme;
    Bytes signature =
        MuMarshalSignature(Sign(c.sign_with_other_key ? s.other() : s.key(), scheme, hash, attest));
    if (c.after_sign_attest_fn) {
      c.after_sign_attest_fn(attest);
    }
    if (c.sig_bytes_fn) {
      c.sig_bytes_fn(signature);
    }
    if (c.inputs_fn) {
      c.inputs_fn(q);
    }
    absl::StatusOr<VerifiedQuote> r = VerifyQuote(q.ak, attest, signature, q.nonce, q.pcrs);
    if (c.code == absl::StatusCode::kOk) {
      ASSERT_THAT(r, IsOk());
      EXPECT_EQ(r->pcrs, q.pcrs);
      EXPECT_EQ(r->attest.type, TPM2_ST_ATTEST_QUOTE);
      const TPM2B_DATA& extra = r->attest.extraData;
      EXPECT_EQ(Bytes(extra.buffer, extra.buffer + extra.size), q.nonce);
      EXPECT_EQ(r->attest.clockInfo.resetCount, 3u);
    } else {
      EXPECT_THAT(r, StatusIs(c.code, c.substr));
    }
  }
}

TEST_P(VerifyQuoteTest, EmptySelectionCoversNothing) {
  const Signer& s = GetParam();
  Quote q = Baseline(s);
  q.attest.attested.quote.pcrSelect.count = 0;
  SetDigest(&q.attest.attested.quote.pcrDigest, Sha(AkHash(q.ak), ByteSpan()));
  const Bytes attest = MuMarshalAttest(q.attest);
  const Bytes sig = MuMarshalSignature(Sign(s.key(), s.scheme, AkHash(q.ak), attest));
  // With no PCR values the quote only proves freshness...
  absl::StatusOr<VerifiedQuote> r = VerifyQuote(q.ak, attest, sig, q.nonce, PcrValues());
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->pcrs.empty());
  // ...and any supplied value is unauthenticated, so it is rejected.
  EXPECT_THAT(VerifyQuote(q.ak, attest, sig, q.nonce, q.pcrs),
              StatusIs(absl::StatusCode::kInvalidArgument, "is not in the quoted selection"));
}

EVP_PKEY* P256() { return EcKey("P-256"); }
EVP_PKEY* P384() { return EcKey("P-384"); }
EVP_PKEY* P384Other() { return EcKey("P-384#2"); }
EVP_PKEY* Rsa() { return RsaKey(2048); }

// An RSASSA AK must not accept an RSAPSS signature over the quote, and vice versa.
TEST(VerifyQuote, RsaPaddingMustMatchTheAkScheme) {
  for (const Signer& s : {Signer{"rsassa", KeyAlg::kRsa2048, TPM2_ALG_RSASSA, &Rsa, &RsaKey2},
                          Signer{"rsapss", KeyAlg::kRsa2048, TPM2_ALG_RSAPSS, &Rsa, &RsaKey2}}) {
    SCOPED_TRACE(s.name);
    Quote q = Baseline(s);
    const Bytes attest = MuMarshalAttest(q.attest);
    const TPMI_ALG_SIG_SCHEME other =
        s.scheme == TPM2_ALG_RSASSA ? TPM2_ALG_RSAPSS : TPM2_ALG_RSASSA;
    const Bytes sig = MuMarshalSignature(Sign(s.key(), other, AkHash(q.ak), attest));
    EXPECT_THAT(VerifyQuote(q.ak, attest, sig, q.nonce, q.pcrs),
                StatusIs(absl::StatusCode::kPermissionDenied, "does not match the AK's scheme"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Signers, VerifyQuoteTest,
    ValuesIn(std::vector<Signer>{
        {"ecdsa_p256", KeyAlg::kEcP256, TPM2_ALG_ECDSA, &P256, &EcKey2},
        {"ecdsa_p384_sha384", KeyAlg::kEcP384, TPM2_ALG_ECDSA, &P384, &P384Other},
        {"rsassa_2048", KeyAlg::kRsa2048, TPM2_ALG_RSASSA, &Rsa, &RsaKey2},
        {"rsapss_2048", KeyAlg::kRsa2048, TPM2_ALG_RSAPSS, &Rsa, &RsaKey2},
    }),
    [](const ::testing::TestParamInfo<Signer>& p) { return p.param.name; });

// Real quotes from swtpm (tpm2_createak + tpm2_quote), see testdata/README.md.
PcrValues SwtpmPcrs() {
  PcrValues pcrs;
  const Bytes text = ReadTestdata("quote_pcrs.txt");
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(reinterpret_cast<const char*>(text.data()), text.size()),
                      '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::vector<std::string> kv = absl::StrSplit(line, absl::ByAnyChar(":="));
    const TPMI_ALG_HASH bank = kv[0] == "sha1" ? TPM2_ALG_SHA1 : TPM2_ALG_SHA256;
    pcrs[bank][static_cast<uint32_t>(std::stoul(kv[1]))] = Hex(kv[2]);
  }
  return pcrs;
}

class SwtpmQuoteTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SwtpmQuoteTest, VerifiesAndRejectsTampering) {
  const std::string kind = GetParam();
  absl::StatusOr<TPM2B_PUBLIC> ak = ParsePublic(ReadTestdata("ak_" + kind + ".pub"));
  ASSERT_THAT(ak, IsOk());
  ASSERT_THAT(CheckAkAttributes(ak->publicArea), IsOk());
  const Bytes attest = ReadTestdata("quote_" + kind + ".msg");
  const Bytes sig = ReadTestdata("quote_" + kind + ".sig");
  Bytes nonce = Hex("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  PcrValues pcrs = SwtpmPcrs();
  ASSERT_EQ(pcrs.size(), 2u);

  absl::StatusOr<VerifiedQuote> r = VerifyQuote(ak->publicArea, attest, sig, nonce, pcrs);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->pcrs, pcrs);
  EXPECT_EQ(r->attest.magic, TPM2_GENERATED_VALUE);

  Bytes bad_nonce = nonce;
  bad_nonce[0] ^= 0x80;
  EXPECT_THAT(VerifyQuote(ak->publicArea, attest, sig, bad_nonce, pcrs),
              StatusIs(absl::StatusCode::kPermissionDenied, "extraData"));
  PcrValues bad_pcrs = pcrs;
  bad_pcrs[TPM2_ALG_SHA256][16][31] ^= 1;
  EXPECT_THAT(VerifyQuote(ak->publicArea, attest, sig, nonce, bad_pcrs),
              StatusIs(absl::StatusCode::kPermissionDenied, "pcrDigest"));
  Bytes bad_attest = attest;
  bad_attest[bad_attest.size() - 1] ^= 1;
  EXPECT_THAT(VerifyQuote(ak->publicArea, bad_attest, sig, nonce, pcrs),
              StatusIs(absl::StatusCode::kPermissionDenied, "signature does not verify"));
}

INSTANTIATE_TEST_SUITE_P(Swtpm, SwtpmQuoteTest, ValuesIn(std::vector<std::string>{"ecc", "rsa"}));

// --- CheckAkAttributes ---

struct AkCase {
  std::string name;
  std::function<void(TPMT_PUBLIC&)> mutate;
  std::string substr;  // empty: must pass
};

TEST(CheckAkAttributes, Table) {
  const std::vector<AkCase> cases = {
      {"ak_template", [](TPMT_PUBLIC&) {}, ""},
      {"no_restricted", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; },
       "attribute restricted is not set"},
      {"no_sign", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; },
       "attribute sign is not set"},
      {"no_fixedtpm", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; },
       "attribute fixedTPM is not set"},
      {"no_fixedparent", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; },
       "attribute fixedParent is not set"},
      {"no_sensitivedataorigin",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; },
       "attribute sensitiveDataOrigin is not set"},
      {"decrypt_set", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; },
       "attribute decrypt is set"},
      {"noda_clear_is_fine", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_NODA; }, ""},
      {"namealg_sha1", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; }, "nameAlg sha1"},
      {"curve_p521", [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P521; },
       "is not NIST P-256 or P-384"},
      {"ecc_scheme_null",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL; },
       "ECC signing scheme null is not ecdsa"},
      {"ecc_scheme_ecdaa",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDAA; },
       "ECC signing scheme ecdaa is not ecdsa"},
      {"ecdsa_sha1",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA1; },
       "signing scheme hash sha1"},
      {"type_keyedhash", [](TPMT_PUBLIC& p) { p.type = TPM2_ALG_KEYEDHASH; },
       "type keyedhash is not rsa or ecc"},
  };
  for (const AkCase& c : cases) {
    SCOPED_TRACE(c.name);
    TPMT_PUBLIC ak = WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey());
    c.mutate(ak);
    if (c.substr.empty()) {
      EXPECT_THAT(CheckAkAttributes(ak), IsOk());
    } else {
      EXPECT_THAT(CheckAkAttributes(ak), StatusIs(absl::StatusCode::kInvalidArgument, c.substr));
    }
  }
}

TEST(CheckAkAttributes, RsaRows) {
  const std::vector<AkCase> cases = {
      {"ak_template", [](TPMT_PUBLIC&) {}, ""},
      {"rsapss", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSAPSS; },
       ""},
      {"rsa_1024", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.keyBits = 1024; },
       "RSA keyBits 1024 is below 2048"},
      {"rsaes", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSAES; },
       "RSA signing scheme rsaes is not rsassa or rsapss"},
      {"rsa_null", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL; },
       "RSA signing scheme null"},
      {"namealg_null", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_NULL; }, "nameAlg null"},
  };
  for (const AkCase& c : cases) {
    SCOPED_TRACE(c.name);
    TPMT_PUBLIC ak = WithKey(AkTemplate(KeyAlg::kRsa2048).publicArea, RsaKey());
    c.mutate(ak);
    if (c.substr.empty()) {
      EXPECT_THAT(CheckAkAttributes(ak), IsOk());
    } else {
      EXPECT_THAT(CheckAkAttributes(ak), StatusIs(absl::StatusCode::kInvalidArgument, c.substr));
    }
  }
}

TEST(CheckAkAttributes, AcceptsOurTemplatesAndRejectsSigningKeys) {
  for (KeyAlg a : {KeyAlg::kEcP256, KeyAlg::kEcP384, KeyAlg::kRsa2048, KeyAlg::kRsa3072}) {
    SCOPED_TRACE(KeyAlgName(a));
    EXPECT_THAT(CheckAkAttributes(AkTemplate(a).publicArea), IsOk());
    EXPECT_THAT(CheckAkAttributes(SigningKeyTemplate(a).publicArea),
                StatusIs(absl::StatusCode::kInvalidArgument, "restricted"));
  }
  // EKs are restricted decryption keys, never AKs.
  EXPECT_THAT(CheckAkAttributes(EkTemplate(EkType::kRsa2048).publicArea),
              StatusIs(absl::StatusCode::kInvalidArgument, "attribute sign is not set"));
}


// --- VerifyCertify (agent-key binding) ---
//
// Certifications built in software like the quotes above: the TPMS_ATTEST of a TPM2_Certify of a
// key public area (its name computed here with OpenSSL over the tss2-mu marshalling), signed by a
// software key expressed as a restricted AK. Each negative row breaks exactly one property, so
// that only the check named in its message can catch it.

Bytes Tpm2bPublic(const TPMT_PUBLIC& p) {
  const Bytes inner = MuMarshalTpmtPublic(p);
  Bytes out = {static_cast<uint8_t>(inner.size() >> 8), static_cast<uint8_t>(inner.size())};
  out.insert(out.end(), inner.begin(), inner.end());
  return out;
}

// NameOf: nameAlg || H_nameAlg(TPMT_PUBLIC), independent of the code under test.
Bytes NameOf(const TPMT_PUBLIC& p) {
  return Concat({Bytes{static_cast<uint8_t>(p.nameAlg >> 8), static_cast<uint8_t>(p.nameAlg)},
                 Sha(p.nameAlg, MuMarshalTpmtPublic(p))});
}

void SetName(TPM2B_NAME* n, const Bytes& v) {
  n->size = static_cast<UINT16>(v.size());
  std::memcpy(n->name, v.data(), v.size());
}

Bytes SpkiDer(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  EXPECT_GT(len, 0);
  Bytes out(der, der + (len > 0 ? len : 0));
  OPENSSL_free(der);
  return out;
}

// The inputs of one VerifyCertify call.
struct Certification {
  TPMT_PUBLIC ak;
  Bytes key_public;
  Bytes attest;
  Bytes signature;
  Bytes nonce;
};

struct CertifyCase {
  std::string name;
  KeyAlg key_alg = KeyAlg::kEcP256;        // the certified key's template...
  EVP_PKEY* (*key)() = nullptr;            // ...and its software key (nullptr: P-256 "key")
  std::function<void(TPMT_PUBLIC&)> key_fn;  // the public area the "TPM" certified
  std::function<void(TPMS_ATTEST&)> attest_fn;
  std::function<void(Bytes&)> attest_bytes_fn;  // after marshalling, before signing
  bool sign_with_other_key = false;
  TPMI_ALG_HASH sign_hash = 0;  // 0: the AK's scheme hash
  std::function<void(Bytes&)> after_sign_attest_fn;
  std::function<void(Bytes&)> sig_bytes_fn;
  std::function<void(Certification&)> inputs_fn;  // what the verifier is given
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string substr;
};

EVP_PKEY* CertifiedP256() { return EcKey("P-256#certified"); }
EVP_PKEY* OtherP256() { return EcKey("P-256#other-certified"); }

std::vector<CertifyCase> CertifyCases() {
  using absl::StatusCode;
  std::vector<CertifyCase> c;
  c.push_back({.name = "good_p256"});
  c.push_back({.name = "good_p384",
               .key_alg = KeyAlg::kEcP384,
               .key = [] { return EcKey("P-384#certified"); }});
  c.push_back({.name = "good_rsa2048", .key_alg = KeyAlg::kRsa2048, .key = [] { return RsaKey(2048); }});
  c.push_back({.name = "good_rsa3072", .key_alg = KeyAlg::kRsa3072, .key = [] { return RsaKey(3072); }});
  c.push_back({.name = "good_rsa4096", .key_alg = KeyAlg::kRsa4096, .key = [] { return RsaKey(4096); }});
  c.push_back({.name = "good_namealg_sha384",
               .key_fn = [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA384; }});
  c.push_back({.name = "good_namealg_sha512",
               .key_fn = [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA512; }});
  c.push_back({.name = "good_nonce_of_48_bytes",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     a.extraData.size = 48;
                     std::memset(a.extraData.buffer, 0x42, 48);
                   },
               .inputs_fn = [](Certification& x) { x.nonce = Bytes(48, 0x42); }});

  // 3. The signature.
  c.push_back({.name = "signature_by_other_key",
               .sign_with_other_key = true,
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: signature does not verify with the AK"});
  c.push_back({.name = "attest_modified_after_signing",
               .after_sign_attest_fn = [](Bytes& b) { b[b.size() - 40] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: signature does not verify with the AK"});
  c.push_back({.name = "magic_flipped_after_signing",
               .after_sign_attest_fn = [](Bytes& b) { b[3] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: signature does not verify with the AK"});
  c.push_back({.name = "signature_flipped",
               .sig_bytes_fn = [](Bytes& b) { b[b.size() - 5] ^= 0x40; },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: signature does not verify with the AK"});
  c.push_back({.name = "signature_hash_not_ak_scheme",
               .sign_hash = TPM2_ALG_SHA512,
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: signature scheme"});
  // 4. Magic (signed as is: only the magic check can tell).
  c.push_back({.name = "wrong_magic",
               .attest_fn = [](TPMS_ATTEST& a) { a.magic = 0xff544348; },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: magic 0xff544348 is not TPM_GENERATED_VALUE"});
  // 5. Type. TPMS_CREATION_INFO starts with the object's name where TPMS_CERTIFY_INFO has it, so
  // a TPM2_CertifyCreation of the same key over the same nonce passes every other check.
  c.push_back({.name = "type_creation_same_name",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     const Bytes name(a.attested.certify.name.name,
                                      a.attested.certify.name.name + a.attested.certify.name.size);
                     a.type = TPM2_ST_ATTEST_CREATION;
                     std::memset(&a.attested, 0, sizeof(a.attested));
                     SetName(&a.attested.creation.objectName, name);
                     SetDigest(&a.attested.creation.creationHash,
                               Sha(TPM2_ALG_SHA256, AsSpan("creation data")));
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: attestation type 0x801a is not TPM_ST_ATTEST_CERTIFY"});
  c.push_back({.name = "type_quote",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     a.type = TPM2_ST_ATTEST_QUOTE;
                     std::memset(&a.attested, 0, sizeof(a.attested));
                     a.attested.quote.pcrSelect.count = 1;
                     SetSelection(&a.attested.quote.pcrSelect.pcrSelections[0], TPM2_ALG_SHA256,
                                  {0});
                     SetDigest(&a.attested.quote.pcrDigest, Sha(TPM2_ALG_SHA256, AsSpan("pcrs")));
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: attestation type 0x8018 is not TPM_ST_ATTEST_CERTIFY"});
  // 6. Freshness.
  c.push_back({.name = "stale_nonce",
               .inputs_fn = [](Certification& x) { x.nonce[7] ^= 1; },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: extraData does not match this session's certify nonce"});
  c.push_back({.name = "nonce_prefix",
               .inputs_fn = [](Certification& x) { x.nonce.pop_back(); },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match"});
  c.push_back({.name = "empty_session_nonce",
               .inputs_fn = [](Certification& x) { x.nonce.clear(); },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match"});
  c.push_back({.name = "empty_extradata",
               .attest_fn = [](TPMS_ATTEST& a) { a.extraData.size = 0; },
               .code = StatusCode::kPermissionDenied,
               .substr = "extraData does not match"});
  // 7. The presented public area is the certified one.
  c.push_back({.name = "presented_key_swapped",
               .inputs_fn =
                   [](Certification& x) {
                     x.key_public = Tpm2bPublic(
                         WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, OtherP256()));
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "certify: the certified name is not the name of the presented key"});
  c.push_back({.name = "presented_attributes_upgraded",
               // The TPM certified a duplicable key; the agent presents it as fixedTPM.
               .key_fn =
                   [](TPMT_PUBLIC& p) {
                     p.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT);
                   },
               .inputs_fn =
                   [](Certification& x) {
                     x.key_public = Tpm2bPublic(
                         WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, CertifiedP256()));
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "certified name is not the name of the presented key public area"});
  c.push_back({.name = "certified_name_of_other_nameAlg",
               .attest_fn =
                   [](TPMS_ATTEST& a) {
                     // The same digest labelled sha384-long is not the name either.
                     a.attested.certify.name.name[1] = 0x0c;
                   },
               .code = StatusCode::kPermissionDenied,
               .substr = "certified name is not the name"});
  // 8. Attributes of the certified key (the certification itself is genuine).
  const auto attr_row = [&c](const char* name, std::function<void(TPMT_PUBLIC&)> fn,
                             const char* substr) {
    c.push_back({.name = name,
                 .key_fn = std::move(fn),
                 .code = StatusCode::kPermissionDenied,
                 .substr = substr});
  };
  attr_row("duplicable_no_fixedtpm",
           [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; },
           "certified key: attribute fixedTPM");
  attr_row("duplicable_no_fixedparent",
           [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; },
           "certified key: attribute fixedParent");
  attr_row("imported_no_sensitivedataorigin",
           [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; },
           "certified key: attribute sensitiveDataOrigin");
  attr_row("not_sign", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; },
           "certified key: attribute sign is not set");
  attr_row("decrypt", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; },
           "certified key: attribute decrypt is set");
  attr_row("restricted", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_RESTRICTED; },
           "certified key: attribute restricted is set");
  attr_row("namealg_sha1", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; },
           "certified key: nameAlg sha1 is not");
  attr_row("curve_bn_p256",
           [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_BN_P256; },
           "certified key: ECC curve 0x0010 is not P-256 or P-384");
  attr_row("curve_p521",
           [](TPMT_PUBLIC& p) { p = WithKey(p, EcKey("P-521")); },
           "certified key: ECC curve 0x0005");
  attr_row("rsa_1024", [](TPMT_PUBLIC& p) {
             p = WithKey(SigningKeyTemplate(KeyAlg::kRsa2048).publicArea, RsaKey(1024));
           },
           "certified key: RSA keyBits 1024");
  attr_row("keyedhash",
           [](TPMT_PUBLIC& p) {
             p.type = TPM2_ALG_KEYEDHASH;
             std::memset(&p.parameters, 0, sizeof(p.parameters));
             p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
             p.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
             std::memset(&p.unique, 0, sizeof(p.unique));
             SetDigest(&p.unique.keyedHash, Sha(TPM2_ALG_SHA256, AsSpan("hmac key")));
           },
           "certified key: type keyedhash is not rsa or ecc");
  // 2. Strict parsing.
  c.push_back({.name = "key_public_trailing",
               .inputs_fn = [](Certification& x) { x.key_public.push_back(0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "certify: key public area: TPM2B_PUBLIC"});
  c.push_back({.name = "key_public_truncated",
               .inputs_fn = [](Certification& x) { x.key_public.pop_back(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "certify: key public area"});
  c.push_back({.name = "key_public_empty",
               .inputs_fn = [](Certification& x) { x.key_public.clear(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "certify: key public area"});
  c.push_back({.name = "attest_trailing_signed",
               .attest_bytes_fn = [](Bytes& b) { b.push_back(0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMS_ATTEST: 1 trailing bytes after the structure"});
  c.push_back({.name = "attest_truncated_signed",
               .attest_bytes_fn = [](Bytes& b) { b.pop_back(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMS_ATTEST: malformed"});
  c.push_back({.name = "signature_trailing",
               .sig_bytes_fn = [](Bytes& b) { b.push_back(0); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMT_SIGNATURE: 1 trailing bytes"});
  c.push_back({.name = "signature_truncated",
               .sig_bytes_fn = [](Bytes& b) { b.pop_back(); },
               .code = StatusCode::kInvalidArgument,
               .substr = "TPMT_SIGNATURE: malformed"});
  // 1. The AK. INVALID_ARGUMENT like VerifyQuote's (CheckAkAttributes); docs/plugin-protocol.md
  // check 14.1 says PERMISSION_DENIED, but the server rejects such an AK earlier (check 5).
  c.push_back({.name = "unrestricted_ak",
               .inputs_fn =
                   [](Certification& x) { x.ak.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; },
               .code = StatusCode::kInvalidArgument,
               .substr = "AK: attribute restricted is not set"});
  return c;
}

class VerifyCertifyTest : public ::testing::TestWithParam<Signer> {};

TEST_P(VerifyCertifyTest, Table) {
  const Signer& s = GetParam();
  for (const CertifyCase& c : CertifyCases()) {
    SCOPED_TRACE(s.name + "/" + c.name);
    EVP_PKEY* key_pkey = c.key != nullptr ? c.key() : CertifiedP256();
    TPMT_PUBLIC key = WithKey(SigningKeyTemplate(c.key_alg).publicArea, key_pkey);
    if (c.key_fn) {
      c.key_fn(key);
    }
    Certification x;
    x.ak = AkFor(s);
    x.nonce = Sha(TPM2_ALG_SHA256, AsSpan("certify nonce"));
    x.key_public = Tpm2bPublic(key);

    TPMS_ATTEST a;
    std::memset(&a, 0, sizeof(a));
    a.magic = TPM2_GENERATED_VALUE;
    a.type = TPM2_ST_ATTEST_CERTIFY;
    SetName(&a.qualifiedSigner, Concat({Hex("000b"), Sha(TPM2_ALG_SHA256, AsSpan("ak"))}));
    a.extraData.size = static_cast<UINT16>(x.nonce.size());
    std::memcpy(a.extraData.buffer, x.nonce.data(), x.nonce.size());
    a.clockInfo.clock = 987654321;
    a.clockInfo.resetCount = 2;
    a.clockInfo.safe = TPM2_YES;
    a.firmwareVersion = 0x2019102300000000ull;
    SetName(&a.attested.certify.name, NameOf(key));
    SetName(&a.attested.certify.qualifiedName,
            Concat({Hex("000b"), Sha(TPM2_ALG_SHA256, AsSpan("qualified name"))}));
    if (c.attest_fn) {
      c.attest_fn(a);
    }
    x.attest = MuMarshalAttest(a);
    if (c.attest_bytes_fn) {
      c.attest_bytes_fn(x.attest);
    }
    const TPMI_ALG_HASH hash = c.sign_hash != 0 ? c.sign_hash : AkHash(x.ak);
    x.signature = MuMarshalSignature(
        Sign(c.sign_with_other_key ? s.other() : s.key(), s.scheme, hash, x.attest));
    if (c.after_sign_attest_fn) {
      c.after_sign_attest_fn(x.attest);
    }
    if (c.sig_bytes_fn) {
      c.sig_bytes_fn(x.signature);
    }
    if (c.inputs_fn) {
      c.inputs_fn(x);
    }
    absl::StatusOr<VerifiedCertify> r =
        VerifyCertify(x.ak, x.key_public, x.attest, x.signature, x.nonce);
    if (c.code == absl::StatusCode::kOk) {
      ASSERT_THAT(r, IsOk());
      EXPECT_EQ(r->pkix_der, SpkiDer(key_pkey));  // OpenSSL's encoding of the certified key
      EXPECT_EQ(MuMarshalTpmtPublic(r->key), MuMarshalTpmtPublic(key));
    } else {
      EXPECT_THAT(r, StatusIs(c.code, c.substr));
    }
  }
}

TEST(VerifyCertify, RsaPaddingMustMatchTheAkScheme) {
  for (const Signer& s : {Signer{"rsassa", KeyAlg::kRsa2048, TPM2_ALG_RSASSA, &Rsa, &RsaKey2},
                          Signer{"rsapss", KeyAlg::kRsa2048, TPM2_ALG_RSAPSS, &Rsa, &RsaKey2}}) {
    SCOPED_TRACE(s.name);
    const TPMT_PUBLIC ak = AkFor(s);
    const TPMT_PUBLIC key = WithKey(SigningKeyTemplate(KeyAlg::kEcP256).publicArea, CertifiedP256());
    const Bytes nonce(32, 0x17);
    TPMS_ATTEST a;
    std::memset(&a, 0, sizeof(a));
    a.magic = TPM2_GENERATED_VALUE;
    a.type = TPM2_ST_ATTEST_CERTIFY;
    a.extraData.size = 32;
    std::memset(a.extraData.buffer, 0x17, 32);
    SetName(&a.attested.certify.name, NameOf(key));
    const Bytes attest = MuMarshalAttest(a);
    const TPMI_ALG_SIG_SCHEME other =
        s.scheme == TPM2_ALG_RSASSA ? TPM2_ALG_RSAPSS : TPM2_ALG_RSASSA;
    EXPECT_THAT(VerifyCertify(ak, Tpm2bPublic(key), attest,
                              MuMarshalSignature(Sign(s.key(), other, AkHash(ak), attest)), nonce),
                StatusIs(absl::StatusCode::kPermissionDenied, "does not match the AK's scheme"));
    EXPECT_THAT(VerifyCertify(ak, Tpm2bPublic(key), attest,
                              MuMarshalSignature(Sign(s.key(), s.scheme, AkHash(ak), attest)), nonce),
                IsOk());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Signers, VerifyCertifyTest,
    ValuesIn(std::vector<Signer>{
        {"ecdsa_p256", KeyAlg::kEcP256, TPM2_ALG_ECDSA, &P256, &EcKey2},
        {"ecdsa_p384_sha384", KeyAlg::kEcP384, TPM2_ALG_ECDSA, &P384, &P384Other},
        {"rsassa_2048", KeyAlg::kRsa2048, TPM2_ALG_RSASSA, &Rsa, &RsaKey2},
        {"rsapss_2048", KeyAlg::kRsa2048, TPM2_ALG_RSAPSS, &Rsa, &RsaKey2},
    }),
    [](const ::testing::TestParamInfo<Signer>& p) { return p.param.name; });

// --- CheckCertifiedKeyAttributes ---

TEST(CheckCertifiedKeyAttributes, AcceptsEveryKeyManagerTemplate) {
  for (KeyAlg a : {KeyAlg::kEcP256, KeyAlg::kEcP384, KeyAlg::kRsa2048, KeyAlg::kRsa3072,
                   KeyAlg::kRsa4096}) {
    SCOPED_TRACE(KeyAlgName(a));
    EXPECT_THAT(CheckCertifiedKeyAttributes(SigningKeyTemplate(a).publicArea), IsOk());
    // An AK is restricted: not an SVID key.
    if (a != KeyAlg::kRsa4096) {
      EXPECT_THAT(CheckCertifiedKeyAttributes(AkTemplate(a).publicArea),
                  StatusIs(absl::StatusCode::kPermissionDenied, "attribute restricted is set"));
    }
  }
  // EKs and SRKs are decryption keys.
  EXPECT_THAT(CheckCertifiedKeyAttributes(EkTemplate(EkType::kEccP256).publicArea),
              StatusIs(absl::StatusCode::kPermissionDenied, "attribute sign is not set"));
  EXPECT_THAT(CheckCertifiedKeyAttributes(SrkTemplateEcc().publicArea),
              StatusIs(absl::StatusCode::kPermissionDenied, "attribute sign is not set"));
}

struct KeyAttrCase {
  std::string name;
  KeyAlg alg;
  std::function<void(TPMT_PUBLIC&)> mutate;
  std::string substr;  // empty: must pass
};

TEST(CheckCertifiedKeyAttributes, Table) {
  const std::vector<KeyAttrCase> cases = {
      {"template", KeyAlg::kEcP256, [](TPMT_PUBLIC&) {}, ""},
      {"noda_clear_is_fine", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_NODA; }, ""},
      {"userwithauth_clear_is_fine", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_USERWITHAUTH; }, ""},
      {"ecdsa_scheme_is_fine", KeyAlg::kEcP384,
       [](TPMT_PUBLIC& p) {
         p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
         p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA384;
       },
       ""},
      {"no_fixedtpm", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; },
       "attribute fixedTPM (the key could leave this TPM) is not set"},
      {"no_fixedparent", KeyAlg::kRsa2048,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; },
       "attribute fixedParent (the key is duplicable) is not set"},
      {"duplicable", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) {
         p.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT);
       },
       "attribute fixedTPM"},
      {"no_sensitivedataorigin", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; },
       "attribute sensitiveDataOrigin (the private key was imported, not made in the TPM) is not "
       "set"},
      {"no_sign", KeyAlg::kRsa3072,
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; },
       "attribute sign is not set"},
      {"decrypt", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; },
       "attribute decrypt is set"},
      {"restricted", KeyAlg::kRsa2048,
       [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_RESTRICTED; },
       "attribute restricted is set"},
      {"namealg_sha1", KeyAlg::kEcP256, [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; },
       "nameAlg sha1 is not sha256/sha384/sha512"},
      {"namealg_null", KeyAlg::kEcP256, [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_NULL; },
       "nameAlg null"},
      {"namealg_sm3", KeyAlg::kEcP256, [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SM3_256; },
       "nameAlg sm3_256"},
      {"curve_p521", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P521; },
       "ECC curve 0x0005 is not P-256 or P-384"},
      {"curve_p192", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P192; },
       "ECC curve 0x0001"},
      {"curve_bn_p256", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_BN_P256; },
       "ECC curve 0x0010"},
      {"curve_sm2", KeyAlg::kEcP256,
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_SM2_P256; },
       "ECC curve 0x0020"},
      {"rsa_1024", KeyAlg::kRsa2048, [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.keyBits = 1024; },
       "RSA keyBits 1024 is not 2048, 3072 or 4096"},
      {"rsa_2047", KeyAlg::kRsa2048, [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.keyBits = 2047; },
       "RSA keyBits 2047"},
      {"rsa_8192", KeyAlg::kRsa2048, [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.keyBits = 8192; },
       "RSA keyBits 8192"},
      {"type_keyedhash", KeyAlg::kEcP256, [](TPMT_PUBLIC& p) { p.type = TPM2_ALG_KEYEDHASH; },
       "type keyedhash is not rsa or ecc"},
      {"type_symcipher", KeyAlg::kEcP256, [](TPMT_PUBLIC& p) { p.type = TPM2_ALG_SYMCIPHER; },
       "type symcipher is not rsa or ecc"},
  };
  for (const KeyAttrCase& c : cases) {
    SCOPED_TRACE(c.name);
    TPMT_PUBLIC key = SigningKeyTemplate(c.alg).publicArea;
    c.mutate(key);
    if (c.substr.empty()) {
      EXPECT_THAT(CheckCertifiedKeyAttributes(key), IsOk());
    } else {
      EXPECT_THAT(CheckCertifiedKeyAttributes(key),
                  StatusIs(absl::StatusCode::kPermissionDenied, "certified key: " + c.substr));
    }
  }
}

}  // namespace
}  // namespace hwid::wire
