#include "tpm/wire/pcr.h"

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace hwid::wire {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr uint8_t kSizeofSelect = 3;  // 24 PCRs.

absl::string_view Trim(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

// ParseIndex parses a decimal PCR index (digits only, <= kMaxPcrIndex).
absl::StatusOr<uint32_t> ParseIndex(absl::string_view token, absl::string_view spec) {
  if (token.empty() || token.size() > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("PCR selection \"", spec, "\": bad PCR index \"", token, "\""));
  }
  uint32_t value = 0;
  for (char c : token) {
    if (c < '0' || c > '9') {
      return absl::InvalidArgumentError(
          absl::StrCat("PCR selection \"", spec, "\": bad PCR index \"", token, "\""));
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > kMaxPcrIndex) {
    return absl::InvalidArgumentError(absl::StrCat("PCR selection \"", spec, "\": PCR index ",
                                                   value, " is out of range (0-", kMaxPcrIndex,
                                                   ")"));
  }
  return value;
}

bool IsSelected(const TPMS_PCR_SELECTION& s, uint32_t index) {
  return index / 8 < s.sizeofSelect && (s.pcrSelect[index / 8] & (1u << (index % 8))) != 0;
}

}  // namespace

const char* HashAlgName(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return "sha1";
    case TPM2_ALG_SHA256:
      return "sha256";
    case TPM2_ALG_SHA384:
      return "sha384";
    case TPM2_ALG_SHA512:
      return "sha512";
    default:
      return "unknown";
  }
}

absl::StatusOr<TPMI_ALG_HASH> ParseHashAlg(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(Sv(name));
  for (TPMI_ALG_HASH alg : {TPM2_ALG_SHA1, TPM2_ALG_SHA256, TPM2_ALG_SHA384, TPM2_ALG_SHA512}) {
    if (lower == HashAlgName(alg)) {
      return alg;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown hash algorithm \"", Sv(name),
                                                 "\" (valid: sha1, sha256, sha384, sha512)"));
}

absl::StatusOr<TPML_PCR_SELECTION> ParsePcrSelection(std::string_view spec_in) {
  const absl::string_view spec = Sv(spec_in);
  TPML_PCR_SELECTION sel;
  std::memset(&sel, 0, sizeof(sel));
  if (Trim(spec).empty()) {
    return absl::InvalidArgumentError("PCR selection is empty (example: \"sha256:0,1,2,3\")");
  }
  for (absl::string_view bank_raw : absl::StrSplit(spec, '+')) {
    const absl::string_view bank = Trim(bank_raw);
    const size_t colon = bank.find(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PCR selection \"", spec, "\": bank \"", bank, "\" needs the form <hash>:<pcrs>"));
    }
    const absl::string_view alg_name = Trim(bank.substr(0, colon));
    const absl::string_view list = Trim(bank.substr(colon + 1));
    auto alg = ParseHashAlg(std::string_view(alg_name.data(), alg_name.size()));
    if (!alg.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("PCR selection \"", spec, "\": ",
                                                     alg.status().message()));
    }
    for (uint32_t i = 0; i < sel.count; ++i) {
      if (sel.pcrSelections[i].hash == *alg) {
        return absl::InvalidArgumentError(absl::StrCat("PCR selection \"", spec, "\": bank ",
                                                       HashAlgName(*alg), " listed twice"));
      }
    }
    if (sel.count >= TPM2_NUM_PCR_BANKS) {
      return absl::InvalidArgumentError(
          absl::StrCat("PCR selection \"", spec, "\": too many banks"));
    }
    TPMS_PCR_SELECTION& s = sel.pcrSelections[sel.count];
    s.hash = *alg;
    s.sizeofSelect = kSizeofSelect;
    if (list.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("PCR selection \"", spec, "\": bank ",
                                                     HashAlgName(*alg), " lists no PCRs"));
    }
    if (absl::AsciiStrToLower(list) == "all") {
      for (uint32_t i = 0; i <= kMaxPcrIndex; ++i) {
        s.pcrSelect[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
      }
    } else {
      for (absl::string_view item_raw : absl::StrSplit(list, ',')) {
        const absl::string_view item = Trim(item_raw);
        const size_t dash = item.find('-');
        uint32_t first = 0;
        uint32_t last = 0;
        if (dash == absl::string_view::npos) {
          ASSIGN_OR_RETURN(first, ParseIndex(item, spec));
          last = first;
        } else {
          ASSIGN_OR_RETURN(first, ParseIndex(Trim(item.substr(0, dash)), spec));
          ASSIGN_OR_RETURN(last, ParseIndex(Trim(item.substr(dash + 1)), spec));
          if (last < first) {
            return absl::InvalidArgumentError(absl::StrCat(
                "PCR selection \"", spec, "\": range \"", item, "\" is descending"));
          }
        }
        for (uint32_t i = first; i <= last; ++i) {
          if (IsSelected(s, i)) {
            return absl::InvalidArgumentError(absl::StrCat(
                "PCR selection \"", spec, "\": PCR ", HashAlgName(*alg), ":", i, " listed twice"));
          }
          s.pcrSelect[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        }
      }
    }
    ++sel.count;
  }
  return sel;
}

std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> SelectedPcrs(const TPML_PCR_SELECTION& sel) {
  std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> out;
  const uint32_t count = sel.count < TPM2_NUM_PCR_BANKS ? sel.count : TPM2_NUM_PCR_BANKS;
  for (uint32_t b = 0; b < count; ++b) {
    const TPMS_PCR_SELECTION& s = sel.pcrSelections[b];
    const uint32_t bytes = s.sizeofSelect < TPM2_PCR_SELECT_MAX ? s.sizeofSelect
                                                                : TPM2_PCR_SELECT_MAX;
    for (uint32_t i = 0; i < bytes * 8; ++i) {
      if ((s.pcrSelect[i / 8] & (1u << (i % 8))) != 0) {
        out.emplace_back(s.hash, i);
      }
    }
  }
  return out;
}

std::string FormatPcrSelection(const TPML_PCR_SELECTION& sel) {
  std::vector<std::string> banks;
  const uint32_t count = sel.count < TPM2_NUM_PCR_BANKS ? sel.count : TPM2_NUM_PCR_BANKS;
  for (uint32_t b = 0; b < count; ++b) {
    TPML_PCR_SELECTION one;
    std::memset(&one, 0, sizeof(one));
    one.count = 1;
    one.pcrSelections[0] = sel.pcrSelections[b];
    std::vector<std::string> indices;
    for (const auto& pcr : SelectedPcrs(one)) {
      indices.push_back(absl::StrCat(pcr.second));
    }
    if (indices.empty()) {
      continue;
    }
    const TPMI_ALG_HASH alg = sel.pcrSelections[b].hash;
    const std::string name = std::strcmp(HashAlgName(alg), "unknown") == 0
                                 ? absl::StrFormat("0x%04x", alg)
                                 : std::string(HashAlgName(alg));
    banks.push_back(absl::StrCat(name, ":", absl::StrJoin(indices, ",")));
  }
  return absl::StrJoin(banks, "+");
}

absl::Status ValidatePcrSelection(const TPML_PCR_SELECTION& sel, std::string_view what) {
  if (sel.count > TPM2_NUM_PCR_BANKS) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": PCR selection has ", sel.count, " banks (max ",
                     TPM2_NUM_PCR_BANKS, ")"));
  }
  for (uint32_t b = 0; b < sel.count; ++b) {
    const TPMS_PCR_SELECTION& s = sel.pcrSelections[b];
    if (s.sizeofSelect > TPM2_PCR_SELECT_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": PCR selection sizeofSelect ",
                                                     s.sizeofSelect, " is out of range"));
    }
    if (std::strcmp(HashAlgName(s.hash), "unknown") == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: PCR selection uses unsupported bank 0x%04x", Sv(what), s.hash));
    }
    for (uint32_t c = 0; c < b; ++c) {
      if (sel.pcrSelections[c].hash == s.hash) {
        return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": PCR bank ",
                                                       HashAlgName(s.hash), " selected twice"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hwid::wire
