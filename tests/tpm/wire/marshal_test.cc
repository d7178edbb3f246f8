// Strict parsing of attacker-controlled TPM structures: negative rows for every framing mistake,
// round trips, real swtpm encodings, and a deterministic random/mutation loop that must never
// crash (run under ASan/UBSan with -DHWID_SANITIZE=ON).
#include "tpm/wire/marshal.h"

#include <tss2/tss2_tpm2_types.h>

#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/templates.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::EcKey;
using ::hwid::wire::testing::Hex;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::MuMarshalAttest;
using ::hwid::wire::testing::MuMarshalSignature;
using ::hwid::wire::testing::MuMarshalTpmtPublic;
using ::hwid::wire::testing::ReadTestdata;
using ::hwid::wire::testing::RsaKey;
using ::hwid::wire::testing::Sign;
using ::hwid::wire::testing::StatusIs;
using ::hwid::wire::testing::WithKey;
using absl::StatusCode;

Bytes Cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Bytes Be16(size_t v) { return {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)}; }

// A parser under test, reduced to its status.
struct Parser {
  std::string name;
  std::function<absl::Status(ByteSpan)> parse;
};

std::vector<Parser> AllParsers() {
  return {
      {"TPM2B_PUBLIC", [](ByteSpan b) { return ParsePublic(b).status(); }},
      {"TPMT_PUBLIC", [](ByteSpan b) { return ParseTpmtPublic(b).status(); }},
      {"TPM2B_PRIVATE", [](ByteSpan b) { return ParsePrivate(b).status(); }},
      {"TPMS_ATTEST", [](ByteSpan b) { return ParseAttest(b).status(); }},
      {"TPMT_SIGNATURE", [](ByteSpan b) { return ParseSignature(b).status(); }},
      {"TPM2B_ID_OBJECT", [](ByteSpan b) { return ParseIdObject(b).status(); }},
      {"TPM2B_ENCRYPTED_SECRET", [](ByteSpan b) { return ParseEncryptedSecret(b).status(); }},
  };
}

TEST(Parse, EmptyInputIsRejectedByEveryParser) {
  for (const Parser& p : AllParsers()) {
    SCOPED_TRACE(p.name);
    EXPECT_THAT(p.parse(ByteSpan()), StatusIs(StatusCode::kInvalidArgument, "empty input"));
  }
}

// --- TPM2B_PUBLIC ---

TEST(ParsePublic, RealSwtpmEncodingsRoundTrip) {
  for (const char* file : {"ecc_key.pub", "ek_rsa.pub", "ek_ecc.pub", "ak_ecc.pub", "ak_rsa.pub"}) {
    SCOPED_TRACE(file);
    const Bytes der = ReadTestdata(file);
    absl::StatusOr<TPM2B_PUBLIC> pub = ParsePublic(der);
    ASSERT_THAT(pub, IsOk());
    EXPECT_EQ(pub->size, der.size() - 2);
    absl::StatusOr<Bytes> again = MarshalPublic(*pub);
    ASSERT_THAT(again, IsOk());
    EXPECT_EQ(*again, der);
  }
}

TEST(ParsePublic, Rows) {
  const Bytes good = ReadTestdata("ecc_key.pub");  // 2-byte size 0x0056 + 86-byte TPMT_PUBLIC
  ASSERT_EQ(good.size(), 88u);
  const Bytes tpmt(good.begin() + 2, good.end());
  struct Row {
    std::string name;
    Bytes input;
    std::string substr;  // empty = OK
  };
  Bytes bad_type = good;
  bad_type[2] = 0x00;
  bad_type[3] = 0x10;  // TPM_ALG_NULL: decodes, but is not an object type
  Bytes unknown_type = good;
  unknown_type[3] = 0x99;  // no TPMU_PUBLIC_PARMS member
  Bytes sm3_name = good;
  sm3_name[5] = 0x12;  // nameAlg (offset 4) := SM3_256
  Bytes huge_x = good;  // unique.x.size (offset 20) bigger than TPM2B_ECC_PARAMETER
  ASSERT_EQ(huge_x[21], 0x20);
  huge_x[20] = 0x00;
  huge_x[21] = 0xff;
  const std::vector<Row> rows = {
      {"good", good, ""},
      {"one_byte", Bytes{0x00}, "truncated (1 byte, the size field needs 2)"},
      {"size_zero", Hex("0000"), "size field is 0"},
      {"size_only", Hex("0056"), "size field says 86 bytes but only 0 follow"},
      {"truncated", Bytes(good.begin(), good.end() - 1), "size field says 86 bytes but only 85"},
      {"trailing_bytes", Cat(good, Hex("000000")), "TPM2B_PUBLIC: 3 trailing bytes after"},
      {"size_field_too_small", Cat(Be16(85), Bytes(tpmt.begin(), tpmt.end() - 1)),
       "malformed TPMT_PUBLIC"},
      {"size_field_too_large", Cat(Be16(87), Cat(tpmt, Hex("00"))),
       "the TPMT_PUBLIC is 86 bytes (1 trailing bytes after the structure)"},
      {"type_null", bad_type, "unsupported object type null"},
      {"type_unknown", unknown_type, "malformed TPMT_PUBLIC"},
      {"namealg_sm3", sm3_name, "unsupported nameAlg sm3_256"},
      {"inner_tpm2b_over_capacity", huge_x, "malformed TPMT_PUBLIC"},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    if (r.substr.empty()) {
      EXPECT_THAT(ParsePublic(r.input), IsOk());
    } else {
      EXPECT_THAT(ParsePublic(r.input), StatusIs(StatusCode::kInvalidArgument, r.substr));
    }
  }
}

TEST(ParseTpmtPublic, Rows) {
  const Bytes good = ReadTestdata("ecc_key.pub");
  const Bytes tpmt(good.begin() + 2, good.end());
  EXPECT_THAT(ParseTpmtPublic(tpmt), IsOk());
  EXPECT_THAT(ParseTpmtPublic(Cat(tpmt, Hex("00"))),
              StatusIs(StatusCode::kInvalidArgument, "TPMT_PUBLIC: 1 trailing bytes"));
  EXPECT_THAT(ParseTpmtPublic(Bytes(tpmt.begin(), tpmt.end() - 1)),
              StatusIs(StatusCode::kInvalidArgument, "TPMT_PUBLIC: malformed"));
  // Every strict prefix is rejected.
  for (size_t n = 0; n < tpmt.size(); ++n) {
    EXPECT_FALSE(ParseTpmtPublic(ByteSpan(tpmt.data(), n)).ok()) << n;
  }
}

TEST(MarshalPublic, TemplatesRoundTripAndMatchTss2Mu) {
  std::vector<TPM2B_PUBLIC> all = {SrkTemplateEcc(), SrkTemplateRsa()};
  for (const EkSpec& s : AllEkSpecs()) {
    all.push_back(EkTemplate(s.type));
  }
  for (KeyAlg a : {KeyAlg::kEcP256, KeyAlg::kEcP384, KeyAlg::kRsa2048, KeyAlg::kRsa3072}) {
    all.push_back(AkTemplate(a));
    all.push_back(SigningKeyTemplate(a));
  }
  for (const TPM2B_PUBLIC& t : all) {
    absl::StatusOr<Bytes> m = MarshalPublic(t);
    ASSERT_THAT(m, IsOk());
    const Bytes mu = MuMarshalTpmtPublic(t.publicArea);
    EXPECT_EQ(*m, Cat(Be16(mu.size()), mu));
    EXPECT_EQ(t.size, mu.size());  // templates carry their marshalled size
    absl::StatusOr<TPM2B_PUBLIC> back = ParsePublic(*m);
    ASSERT_THAT(back, IsOk());
    EXPECT_EQ(MarshalPublic(*back).value(), *m);
    EXPECT_EQ(MarshalTpmtPublic(t.publicArea).value(), mu);
  }
}

TEST(MarshalPublic, IgnoresTheStaleSizeField) {
  TPM2B_PUBLIC t = SrkTemplateEcc();
  const Bytes expected = MarshalPublic(t).value();
  t.size = 7;
  EXPECT_EQ(MarshalPublic(t).value(), expected);
}

TEST(MarshalPublic, RejectsOversizedBuffers) {
  TPM2B_PUBLIC t = SrkTemplateEcc();
  t.publicArea.unique.ecc.x.size = 0xffff;
  EXPECT_THAT(MarshalPublic(t), StatusIs(StatusCode::kInvalidArgument, "cannot marshal"));
}

// --- Simple TPM2Bs ---

struct Tpm2bParser {
  std::string name;
  std::function<absl::Status(ByteSpan)> parse;
  std::function<absl::StatusOr<Bytes>(ByteSpan)> reparse_and_marshal;
  size_t capacity;
};

std::vector<Tpm2bParser> Tpm2bParsers() {
  return {
      {"TPM2B_PRIVATE", [](ByteSpan b) { return ParsePrivate(b).status(); },
       [](ByteSpan b) -> absl::StatusOr<Bytes> {
         auto v = ParsePrivate(b);
         if (!v.ok()) {
           return v.status();
         }
         return MarshalPrivate(*v);
       },
       sizeof(TPM2B_PRIVATE::buffer)},
      {"TPM2B_ID_OBJECT", [](ByteSpan b) { return ParseIdObject(b).status(); },
       [](ByteSpan b) -> absl::StatusOr<Bytes> {
         auto v = ParseIdObject(b);
         if (!v.ok()) {
           return v.status();
         }
         return MarshalIdObject(*v);
       },
       sizeof(TPM2B_ID_OBJECT::credential)},
      {"TPM2B_ENCRYPTED_SECRET", [](ByteSpan b) { return ParseEncryptedSecret(b).status(); },
       [](ByteSpan b) -> absl::StatusOr<Bytes> {
         auto v = ParseEncryptedSecret(b);
         if (!v.ok()) {
           return v.status();
         }
         return MarshalEncryptedSecret(*v);
       },
       sizeof(TPM2B_ENCRYPTED_SECRET::secret)},
  };
}

TEST(ParseTpm2b, Rows) {
  for (const Tpm2bParser& p : Tpm2bParsers()) {
    SCOPED_TRACE(p.name);
    const Bytes body(40, 0xab);
    const Bytes good = Cat(Be16(body.size()), body);
    EXPECT_THAT(p.parse(good), IsOk());
    EXPECT_EQ(p.reparse_and_marshal(good).value(), good);
    EXPECT_THAT(p.parse(Bytes{0x00}), StatusIs(StatusCode::kInvalidArgument, "truncated"));
    EXPECT_THAT(p.parse(Hex("0000")), StatusIs(StatusCode::kInvalidArgument, "size field is 0"));
    EXPECT_THAT(p.parse(Bytes(good.begin(), good.end() - 1)),
                StatusIs(StatusCode::kInvalidArgument, "size field says 40 bytes but only 39"));
    EXPECT_THAT(p.parse(Cat(good, Hex("0102"))),
                StatusIs(StatusCode::kInvalidArgument, "2 trailing bytes after the structure"));
    const Bytes over = Cat(Be16(p.capacity + 1), Bytes(p.capacity + 1, 0));
    EXPECT_THAT(p.parse(over), StatusIs(StatusCode::kInvalidArgument, "exceeds the maximum"));
    const Bytes full = Cat(Be16(p.capacity), Bytes(p.capacity, 1));
    EXPECT_THAT(p.parse(full), IsOk());
  }
}

TEST(MarshalTpm2b, RejectsEmptyAndOversized) {
  TPM2B_PRIVATE priv;
  std::memset(&priv, 0, sizeof(priv));
  EXPECT_THAT(MarshalPrivate(priv), StatusIs(StatusCode::kInvalidArgument, "size is 0"));
  priv.size = sizeof(priv.buffer) + 1;
  EXPECT_THAT(MarshalPrivate(priv), StatusIs(StatusCode::kInvalidArgument, "cannot marshal"));
  TPM2B_ID_OBJECT id;
  std::memset(&id, 0, sizeof(id));
  EXPECT_THAT(MarshalIdObject(id), StatusIs(StatusCode::kInvalidArgument, "size is 0"));
  TPM2B_ENCRYPTED_SECRET es;
  std::memset(&es, 0, sizeof(es));
  EXPECT_THAT(MarshalEncryptedSecret(es), StatusIs(StatusCode::kInvalidArgument, "size is 0"));
}

// --- TPMS_ATTEST ---

// A minimal quote: empty qualifiedSigner and extraData, so offsets are fixed:
// magic 0, type 4, signer 6, extraData 8, clockInfo 10 (17 bytes), firmware 27, count 35,
// first selection: hash 39, sizeofSelect 41, select 42..44, then pcrDigest size 45.
TPMS_ATTEST MinimalQuote() {
  TPMS_ATTEST a;
  std::memset(&a, 0, sizeof(a));
  a.magic = TPM2_GENERATED_VALUE;
  a.type = TPM2_ST_ATTEST_QUOTE;
  a.attested.quote.pcrSelect.count = 1;
  a.attested.quote.pcrSelect.pcrSelections[0].hash = TPM2_ALG_SHA256;
  a.attested.quote.pcrSelect.pcrSelections[0].sizeofSelect = 3;
  a.attested.quote.pcrSelect.pcrSelections[0].pcrSelect[0] = 1;
  a.attested.quote.pcrDigest.size = 32;
  return a;
}

TEST(ParseAttest, Rows) {
  const Bytes good = MuMarshalAttest(MinimalQuote());
  ASSERT_EQ(good.size(), 47u + 32u);
  ASSERT_EQ(good[41], 3);
  absl::StatusOr<TPMS_ATTEST> a = ParseAttest(good);
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(MarshalAttest(*a).value(), good);

  Bytes unknown_type = good;
  unknown_type[4] = 0x12;
  unknown_type[5] = 0x34;
  Bytes count_17 = good;
  count_17[38] = 17;
  Bytes huge_count = good;
  huge_count[35] = 0xff;
  Bytes sizeof_select_5 = good;
  sizeof_select_5[41] = 5;
  Bytes digest_over_capacity = good;
  digest_over_capacity[45] = 0x00;
  digest_over_capacity[46] = 0x41;  // 65 > sizeof(TPMU_HA)
  Bytes bad_magic = good;  // structurally fine: magic is VerifyQuote's job
  bad_magic[0] = 0;
  struct Row {
    std::string name;
    Bytes input;
    std::string substr;
  };
  const std::vector<Row> rows = {
      {"unknown_type", unknown_type, "selector is not valid"},
      {"pcr_bank_count_17", count_17, "count or PCR select size is out of range"},
      {"pcr_bank_count_huge", huge_count, "out of range"},
      {"sizeof_select_5", sizeof_select_5, "out of range"},
      {"pcr_digest_over_capacity", digest_over_capacity, "malformed"},
      {"truncated", Bytes(good.begin(), good.end() - 1), "malformed"},
      {"trailing", Cat(good, Hex("00")), "1 trailing bytes"},
      {"magic_not_checked_here", bad_magic, ""},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    if (r.substr.empty()) {
      EXPECT_THAT(ParseAttest(r.input), IsOk());
    } else {
      EXPECT_THAT(ParseAttest(r.input), StatusIs(StatusCode::kInvalidArgument, r.substr));
    }
  }
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(ParseAttest(ByteSpan(good.data(), n)).ok()) << n;
  }
}

TEST(ParseAttest, RealSwtpmQuotes) {
  for (const char* file : {"quote_ecc.msg", "quote_rsa.msg"}) {
    SCOPED_TRACE(file);
    const Bytes msg = ReadTestdata(file);
    absl::StatusOr<TPMS_ATTEST> a = ParseAttest(msg);
    ASSERT_THAT(a, IsOk());
    EXPECT_EQ(a->magic, TPM2_GENERATED_VALUE);
    EXPECT_EQ(a->type, TPM2_ST_ATTEST_QUOTE);
    EXPECT_EQ(a->attested.quote.pcrSelect.count, 2u);
    EXPECT_EQ(MarshalAttest(*a).value(), msg);
  }
}

// --- TPMT_SIGNATURE ---

TEST(ParseSignature, Rows) {
  const Bytes msg = {1, 2, 3};
  const Bytes ecdsa = MuMarshalSignature(Sign(EcKey(), TPM2_ALG_ECDSA, TPM2_ALG_SHA256, msg));
  const Bytes rsassa = MuMarshalSignature(Sign(RsaKey(), TPM2_ALG_RSASSA, TPM2_ALG_SHA256, msg));
  for (const Bytes& good : {ecdsa, rsassa, ReadTestdata("quote_ecc.sig"),
                            ReadTestdata("quote_rsa.sig")}) {
    absl::StatusOr<TPMT_SIGNATURE> s = ParseSignature(good);
    ASSERT_THAT(s, IsOk());
    EXPECT_EQ(MarshalSignature(*s).value(), good);
    EXPECT_THAT(ParseSignature(Cat(good, Hex("00"))),
                StatusIs(StatusCode::kInvalidArgument, "TPMT_SIGNATURE: 1 trailing bytes"));
    for (size_t n = 0; n < good.size(); ++n) {
      EXPECT_FALSE(ParseSignature(ByteSpan(good.data(), n)).ok()) << n;
    }
  }
  Bytes unknown = ecdsa;
  unknown[1] = 0x99;
  EXPECT_THAT(ParseSignature(unknown),
              StatusIs(StatusCode::kInvalidArgument, "selector is not valid"));
  // r claims 0x0100 bytes: larger than TPM2B_ECC_PARAMETER.
  Bytes big_r = ecdsa;
  big_r[4] = 0x01;
  big_r[5] = 0x00;
  EXPECT_THAT(ParseSignature(big_r), StatusIs(StatusCode::kInvalidArgument, "malformed"));
}

// --- Garbage never crashes ---

// Every successful parse must be canonical: re-marshalling gives back the input bytes.
void CheckCanonical(ByteSpan in) {
  if (auto v = ParsePublic(in); v.ok()) {
    EXPECT_EQ(MarshalPublic(*v).value(), Bytes(in.begin(), in.end()));
  }
  if (auto v = ParseTpmtPublic(in); v.ok()) {
    EXPECT_EQ(MarshalTpmtPublic(*v).value(), Bytes(in.begin(), in.end()));
  }
  if (auto v = ParseAttest(in); v.ok()) {
    EXPECT_EQ(MarshalAttest(*v).value(), Bytes(in.begin(), in.end()));
  }
  if (auto v = ParseSignature(in); v.ok()) {
    EXPECT_EQ(MarshalSignature(*v).value(), Bytes(in.begin(), in.end()));
  }
  for (const Parser& p : AllParsers()) {
    (void)p.parse(in);
  }
}

TEST(Garbage, RandomBuffersNeverCrash) {
  std::mt19937 rng(20261123);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<size_t> len(0, 700);
  const TPMT_PUBLIC ak = WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey());
  for (int i = 0; i < 4000; ++i) {
    Bytes buf(len(rng));
    for (uint8_t& b : buf) {
      b = static_cast<uint8_t>(byte(rng));
    }
    // Half of the buffers get a plausible 2-byte size prefix, to get past the first check.
    if (i % 2 == 0 && buf.size() >= 2) {
      buf[0] = static_cast<uint8_t>((buf.size() - 2) >> 8);
      buf[1] = static_cast<uint8_t>(buf.size() - 2);
    }
    CheckCanonical(buf);
    (void)ParseTpmKeyFile(buf);
    (void)VerifyQuote(ak, buf, buf, buf, PcrValues());
  }
}

TEST(Garbage, MutatedValidEncodingsNeverCrash) {
  const TPMT_PUBLIC ak = WithKey(AkTemplate(KeyAlg::kEcP256).publicArea, EcKey());
  const Bytes quote = MuMarshalAttest(MinimalQuote());
  const Bytes quote_sig = MuMarshalSignature(Sign(EcKey(), TPM2_ALG_ECDSA, TPM2_ALG_SHA256, quote));
  const std::vector<Bytes> seeds = {
      ReadTestdata("ecc_key.pub"),     ReadTestdata("ek_rsa.pub"),
      ReadTestdata("quote_ecc.msg"),   ReadTestdata("quote_rsa.sig"),
      ReadTestdata("quote_ecc.sig"),   quote,
      quote_sig,                       MarshalPublic(AkTemplate(KeyAlg::kRsa2048)).value(),
      ReadTestdata("tpm2tools_ecc_key.pem"),
  };
  std::mt19937 rng(7);
  for (const Bytes& seed : seeds) {
    for (int i = 0; i < 1500; ++i) {
      Bytes m = seed;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !m.empty(); ++e) {
        const size_t pos = rng() % m.size();
        switch (rng() % 4) {
          case 0:
            m[pos] = static_cast<uint8_t>(rng());
            break;
          case 1:
            m[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
            break;
          case 2:
            m.resize(pos);
            break;
          default:
            m.insert(m.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<uint8_t>(rng()));
            break;
        }
      }
      CheckCanonical(m);
      (void)ParseTpmKeyFile(m);
      (void)VerifyQuote(ak, m, quote_sig, Bytes(), PcrValues());
      (void)VerifyQuote(ak, quote, m, Bytes(), PcrValues());
    }
  }
}

}  // namespace
}  // namespace hwid::wire
