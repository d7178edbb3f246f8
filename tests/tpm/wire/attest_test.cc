// VerifyQuote / CheckAkAttributes: table-driven, with a negative row for every verifier pitfall.
// Quotes are built in software (TPMS_ATTEST marshalled with tss2-mu) and signed by software keys
// expressed as restricted AK public areas; two real swtpm quotes pin interoperability.
#include "tpm/wire/attest.h"

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

}  // namespace
}  // namespace hwid::wire
