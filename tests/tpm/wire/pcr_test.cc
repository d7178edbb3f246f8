#include "tpm/wire/pcr.h"

#include <string>
#include <utility>
#include <vector>

#include "tests/tpm/wire/test_util.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::StatusIs;
using Pcr = std::pair<TPMI_ALG_HASH, uint32_t>;

struct GoodRow {
  std::string spec;
  std::string canonical;
  std::vector<Pcr> selected;
};

TEST(ParsePcrSelection, GoodRows) {
  std::vector<Pcr> all_sha256;
  for (uint32_t i = 0; i <= 23; ++i) {
    all_sha256.emplace_back(TPM2_ALG_SHA256, i);
  }
  const std::vector<GoodRow> rows = {
      {"sha256:0,1,2,3", "sha256:0,1,2,3",
       {{TPM2_ALG_SHA256, 0}, {TPM2_ALG_SHA256, 1}, {TPM2_ALG_SHA256, 2}, {TPM2_ALG_SHA256, 3}}},
      {"sha1:0-3+sha256:0,16", "sha1:0,1,2,3+sha256:0,16",
       {{TPM2_ALG_SHA1, 0},
        {TPM2_ALG_SHA1, 1},
        {TPM2_ALG_SHA1, 2},
        {TPM2_ALG_SHA1, 3},
        {TPM2_ALG_SHA256, 0},
        {TPM2_ALG_SHA256, 16}}},
      {"sha256:all", "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
       all_sha256},
      {"SHA384:23,7", "sha384:7,23", {{TPM2_ALG_SHA384, 7}, {TPM2_ALG_SHA384, 23}}},
      {" sha256 : 1 , 2-2 + sha512:ALL ", "", {}},  // checked separately below
      {"sha256:16+sha1:16", "sha256:16+sha1:16", {{TPM2_ALG_SHA256, 16}, {TPM2_ALG_SHA1, 16}}},
  };
  for (const GoodRow& r : rows) {
    SCOPED_TRACE(r.spec);
    absl::StatusOr<TPML_PCR_SELECTION> sel = ParsePcrSelection(r.spec);
    ASSERT_THAT(sel, IsOk());
    for (uint32_t b = 0; b < sel->count; ++b) {
      EXPECT_EQ(sel->pcrSelections[b].sizeofSelect, 3);
    }
    if (r.canonical.empty()) {
      continue;
    }
    EXPECT_EQ(FormatPcrSelection(*sel), r.canonical);
    EXPECT_EQ(SelectedPcrs(*sel), r.selected);
    // The canonical form parses back to the same selection.
    absl::StatusOr<TPML_PCR_SELECTION> again = ParsePcrSelection(r.canonical);
    ASSERT_THAT(again, IsOk());
    EXPECT_EQ(SelectedPcrs(*again), r.selected);
  }
  absl::StatusOr<TPML_PCR_SELECTION> spaced = ParsePcrSelection(" sha256 : 1 , 2-2 + sha512:ALL ");
  ASSERT_THAT(spaced, IsOk());
  EXPECT_EQ(spaced->count, 2u);
  EXPECT_EQ(spaced->pcrSelections[0].pcrSelect[0], 0x06);
  EXPECT_EQ(spaced->pcrSelections[1].hash, TPM2_ALG_SHA512);
  EXPECT_EQ(SelectedPcrs(*spaced).size(), 26u);
}

TEST(ParsePcrSelection, BadRows) {
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"", "PCR selection is empty"},
      {"   ", "PCR selection is empty"},
      {"sha256", "bank \"sha256\" needs the form <hash>:<pcrs>"},
      {"sha256:", "bank sha256 lists no PCRs"},
      {"md5:0", "unknown hash algorithm \"md5\""},
      {"sha256:24", "PCR index 24 is out of range (0-23)"},
      {"sha256:1000", "bad PCR index \"1000\""},
      {"sha256:x", "bad PCR index \"x\""},
      {"sha256:-1", "bad PCR index \"\""},
      {"sha256:+1", "bank sha256 lists no PCRs"},
      {"sha256:1+", "bank \"\" needs the form"},
      {"sha256:1,,2", "bad PCR index \"\""},
      {"sha256:7-3", "range \"7-3\" is descending"},
      {"sha256:1-2-3", "bad PCR index \"2-3\""},
      {"sha256:0,0", "PCR sha256:0 listed twice"},
      {"sha256:0-4,3", "PCR sha256:3 listed twice"},
      {"sha256:0+sha256:1", "bank sha256 listed twice"},
      {"sha256:0+", "bank \"\" needs the form"},
      {"sha256:0;sha1:1", "bad PCR index \"0;sha1:1\""},
  };
  for (const auto& [spec, substr] : rows) {
    SCOPED_TRACE(spec);
    EXPECT_THAT(ParsePcrSelection(spec), StatusIs(absl::StatusCode::kInvalidArgument, substr));
  }
}

TEST(FormatPcrSelection, SkipsEmptyBanksAndPrintsUnknownBanksInHex) {
  TPML_PCR_SELECTION sel = {};
  sel.count = 3;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA1;
  sel.pcrSelections[0].sizeofSelect = 3;
  sel.pcrSelections[1].hash = TPM2_ALG_SM3_256;
  sel.pcrSelections[1].sizeofSelect = 4;
  sel.pcrSelections[1].pcrSelect[3] = 0x80;  // PCR 31
  sel.pcrSelections[2].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[2].sizeofSelect = 1;
  sel.pcrSelections[2].pcrSelect[0] = 0x01;
  sel.pcrSelections[2].pcrSelect[1] = 0xff;  // beyond sizeofSelect: ignored
  EXPECT_EQ(FormatPcrSelection(sel), "0x0012:31+sha256:0");
  EXPECT_EQ(SelectedPcrs(sel), (std::vector<Pcr>{{TPM2_ALG_SM3_256, 31}, {TPM2_ALG_SHA256, 0}}));
}

TEST(ValidatePcrSelection, Rows) {
  TPML_PCR_SELECTION sel = ParsePcrSelection("sha256:0+sha1:1").value();
  EXPECT_THAT(ValidatePcrSelection(sel, "x"), IsOk());
  TPML_PCR_SELECTION dup = sel;
  dup.pcrSelections[1].hash = TPM2_ALG_SHA256;
  EXPECT_THAT(ValidatePcrSelection(dup, "quote"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "quote: PCR bank sha256 selected twice"));
  TPML_PCR_SELECTION wide = sel;
  wide.pcrSelections[0].sizeofSelect = 5;
  EXPECT_THAT(ValidatePcrSelection(wide, "q"),
              StatusIs(absl::StatusCode::kInvalidArgument, "sizeofSelect 5 is out of range"));
  TPML_PCR_SELECTION many = sel;
  many.count = 17;
  EXPECT_THAT(ValidatePcrSelection(many, "q"),
              StatusIs(absl::StatusCode::kInvalidArgument, "17 banks"));
}

TEST(HashAlg, NamesRoundTrip) {
  for (TPMI_ALG_HASH alg : {TPM2_ALG_SHA1, TPM2_ALG_SHA256, TPM2_ALG_SHA384, TPM2_ALG_SHA512}) {
    EXPECT_EQ(ParseHashAlg(HashAlgName(alg)).value(), alg);
  }
  EXPECT_EQ(ParseHashAlg("Sha256").value(), TPM2_ALG_SHA256);
  EXPECT_STREQ(HashAlgName(TPM2_ALG_SM3_256), "unknown");
  EXPECT_THAT(ParseHashAlg("sha3-256"),
              StatusIs(absl::StatusCode::kInvalidArgument, "valid: sha1, sha256, sha384, sha512"));
}

}  // namespace
}  // namespace hwid::wire
