// PCR selections: the "sha256:0,1,2+sha1:0-7" text form, canonical formatting, and the ordered
// list of (bank, index) pairs a TPM hashes into a quote's pcrDigest.
#ifndef HWID_TPM_WIRE_PCR_H_
#define HWID_TPM_WIRE_PCR_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::wire {

// PcrValues: bank (hash algorithm) -> PCR index -> digest.
using PcrValues = std::map<TPMI_ALG_HASH, std::map<uint32_t, Bytes>>;

// kMaxPcrIndex is the highest PCR index ParsePcrSelection accepts (PC Client TPMs have 24 PCRs).
inline constexpr uint32_t kMaxPcrIndex = 23;

// ParsePcrSelection parses "bank:list[+bank:list...]" where bank is sha1|sha256|sha384|sha512 and
// list is "all" (0-23) or comma-separated indices and ranges ("0,1,4-7"). Spaces around tokens
// are ignored. Banks must not repeat, indices must not repeat and must be <= 23, ranges must be
// ascending. InvalidArgument naming the bad token otherwise. sizeofSelect is always 3.
absl::StatusOr<TPML_PCR_SELECTION> ParsePcrSelection(std::string_view spec);

// FormatPcrSelection returns the canonical text form: banks in selection order, indices
// ascending and comma-separated, banks joined by '+', e.g. "sha256:0,1,2+sha1:7". Banks with no
// selected PCR are omitted; an unknown bank prints as its hex id ("0x0012").
std::string FormatPcrSelection(const TPML_PCR_SELECTION& sel);

// SelectedPcrs lists the selected PCRs in the order a TPM concatenates them for pcrDigest: each
// TPMS_PCR_SELECTION in order, indices ascending within it. Entries beyond count/sizeofSelect
// limits are ignored (use ValidatePcrSelection first on untrusted input).
std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> SelectedPcrs(const TPML_PCR_SELECTION& sel);

// ValidatePcrSelection checks an untrusted selection: count <= TPM2_NUM_PCR_BANKS, sizeofSelect
// <= TPM2_PCR_SELECT_MAX, every bank a supported hash, no bank listed twice. InvalidArgument
// with `what` as prefix otherwise.
absl::Status ValidatePcrSelection(const TPML_PCR_SELECTION& sel, std::string_view what);

// HashAlgName returns "sha1", "sha256", "sha384", "sha512" or "unknown".
const char* HashAlgName(TPMI_ALG_HASH alg);

// ParseHashAlg parses sha1|sha256|sha384|sha512 (case-insensitive); the error lists these.
absl::StatusOr<TPMI_ALG_HASH> ParseHashAlg(std::string_view name);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_PCR_H_
