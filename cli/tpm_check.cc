// `hwid tpm check`: see tpm_check.h. Every check appends exactly one CheckItem; ids are stable
// and listed in docs/tpm-check.md.
#include "cli/tpm_check.h"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/server.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "tpm/tpm.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keystrength.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kCheckTrustDomain[] = "tpm-check.hwid.invalid";
// An EK certificate that expires within this many days is a warning.
constexpr int64_t kExpiryWarningDays = 30;

class Report {
 public:
  explicit Report(TpmCheckReport* r) : r_(r) {}
  CheckItem& Add(std::string id, std::string group, CheckResult result, std::string detail,
                 std::string action = "") {
    CheckItem item;
    item.id = std::move(id);
    item.group = std::move(group);
    item.result = result;
    item.detail = std::move(detail);
    if (result == CheckResult::kWarn || result == CheckResult::kFail) {
      item.action = std::move(action);
    }
    r_->checks.push_back(std::move(item));
    return r_->checks.back();
  }

 private:
  TpmCheckReport* r_;
};

std::string StatusText(const absl::Status& s) { return std::string(s.message()); }

std::string CurveName(uint16_t curve) {
  switch (curve) {
    case TPM2_ECC_NIST_P192: return "nist-p192";
    case TPM2_ECC_NIST_P224: return "nist-p224";
    case TPM2_ECC_NIST_P256: return "nist-p256";
    case TPM2_ECC_NIST_P384: return "nist-p384";
    case TPM2_ECC_NIST_P521: return "nist-p521";
    case TPM2_ECC_BN_P256: return "bn-p256";
    case TPM2_ECC_BN_P638: return "bn-p638";
    case TPM2_ECC_SM2_P256: return "sm2-p256";
    default: return absl::StrFormat("0x%04x", curve);
  }
}

std::string Rfc3339(time_t t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromTimeT(t), absl::UTCTimeZone());
}

std::optional<time_t> AsnTimeToTimeT(const ASN1_TIME* t) {
  struct tm tm = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    return std::nullopt;
  }
  return timegm(&tm);
}

// Timings: min, median (mean of the middle two for an even count) and max of runs in ms. The
// table line and the JSON metrics show the same numbers.
struct Timings {
  double min_ms = 0, median_ms = 0, max_ms = 0;
  size_t runs = 0;
};

Timings Summarize(std::vector<double> ms) {
  Timings t;
  if (ms.empty()) {
    return t;
  }
  std::sort(ms.begin(), ms.end());
  t.median_ms =
      ms.size() % 2 == 1 ? ms[ms.size() / 2] : (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
  t.min_ms = ms.front();
  t.max_ms = ms.back();
  t.runs = ms.size();
  return t;
}

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---- identity --------------------------------------------------------------------------------

void CheckIdentity(tpm::Tpm& t, const tpm::TpmInfo& info, TpmCheckReport& rep) {
  Report r(&rep);
  rep.tpm.reachable = true;
  rep.tpm.manufacturer = info.manufacturer;
  rep.tpm.manufacturer_id = info.manufacturer_id;
  rep.tpm.vendor = info.vendor;
  rep.tpm.firmware = info.firmware_version;
  rep.tpm.spec = info.spec;
  r.Add("identity.manufacturer", "identity", CheckResult::kPass,
        absl::StrFormat("%s (0x%08x), vendor string '%s'", info.manufacturer, info.manufacturer_id,
                        info.vendor));
  r.Add("identity.firmware", "identity", CheckResult::kPass, info.firmware_version);
  const uint32_t family = info.Property(TPM2_PT_FAMILY_INDICATOR);
  if (family != 0x322e3000) {  // "2.0\0"
    r.Add("identity.spec", "identity", CheckResult::kFail,
          absl::StrCat("family indicator ", info.spec, " is not TPM 2.0"),
          "hwid supports TPM 2.0 only; check that the TPM is not a TPM 1.2 part or in 1.2 mode "
          "(firmware setting)");
  } else {
    r.Add("identity.spec", "identity", CheckResult::kPass, info.spec);
  }
  absl::StatusOr<tpm::ClockInfo> clock = t.ReadClock();
  if (!clock.ok()) {
    r.Add("identity.clock", "identity", CheckResult::kFail,
          absl::StrCat("TPM2_ReadClock failed: ", StatusText(clock.status())),
          "the verifier's clock-state check reads the same values from every quote; check the "
          "TPM's firmware");
    return;
  }
  rep.tpm.clock_ms = clock->clock_ms;
  rep.tpm.reset_count = clock->reset_count;
  rep.tpm.restart_count = clock->restart_count;
  rep.tpm.safe = clock->safe;
  // safe = NO is normal after a start without an orderly TPM2_Shutdown (swtpm, power loss): the
  // clock may have lost updates since its last NV write. Reported, not judged.
  CheckItem& item = r.Add(
      "identity.clock", "identity", CheckResult::kPass,
      absl::StrFormat("resetCount %u, restartCount %u, clock %u ms, safe %s", clock->reset_count,
                      clock->restart_count, clock->clock_ms,
                      clock->safe ? "yes" : "no (no orderly shutdown since the clock was saved)"));
  item.metrics["reset_count"] = clock->reset_count;
  item.metrics["restart_count"] = clock->restart_count;
  item.metrics["clock_ms"] = static_cast<double>(clock->clock_ms);
}

// ---- capabilities ----------------------------------------------------------------------------

void CheckCapabilities(tpm::Tpm& t, const tpm::TpmInfo& info, const TPML_PCR_SELECTION* pcrs,
                       const std::string& pcrs_text, TpmCheckReport& rep) {
  Report r(&rep);

  // Algorithms the hwid_tpm flow and the provider use.
  absl::StatusOr<std::vector<tpm::AlgorithmInfo>> algs = t.GetAlgorithms();
  if (!algs.ok()) {
    r.Add("capabilities.algorithms", "capabilities", CheckResult::kFail,
          absl::StrCat("TPM2_GetCapability(ALGS) failed: ", StatusText(algs.status())),
          "check the TPM connection and firmware");
  } else {
    std::set<uint16_t> have;
    for (const auto& a : *algs) {
      have.insert(a.alg);
    }
    // Required: EK templates (RSA/ECC, SHA-256, AES-128-CFB), credential activation (OAEP for RSA
    // EKs, ECDH for ECC EKs, HMAC/KDFs), AK quotes (ECDSA), provider keys (RSASSA, RSA-PSS).
    const std::vector<std::pair<uint16_t, const char*>> required = {
        {TPM2_ALG_RSA, "RSA EKs and keys"},       {TPM2_ALG_ECC, "ECC EKs, AKs and keys"},
        {TPM2_ALG_SHA256, "name algorithm"},      {TPM2_ALG_AES, "EK templates (AES-128-CFB)"},
        {TPM2_ALG_CFB, "EK templates"},           {TPM2_ALG_HMAC, "credential activation"},
        {TPM2_ALG_OAEP, "RSA EK activation"},     {TPM2_ALG_ECDH, "ECC EK activation"},
        {TPM2_ALG_ECDSA, "quotes with ECC AKs"},  {TPM2_ALG_RSASSA, "RSA signatures"},
        {TPM2_ALG_KEYEDHASH, "sealed objects"},   {TPM2_ALG_KDF1_SP800_108, "credentials"}};
    const std::vector<std::pair<uint16_t, const char*>> recommended = {
        {TPM2_ALG_SHA384, "P-384 keys and SHA-384 signatures"},
        {TPM2_ALG_RSAPSS, "TLS 1.3 with RSA keys"},
        {TPM2_ALG_KDF1_SP800_56A, "ECC EK activation"}};
    std::vector<std::string> missing, missing_rec, names;
    for (const auto& [alg, why] : required) {
      if (have.count(alg) == 0) {
        missing.push_back(absl::StrCat(wire::AlgName(alg), " (", why, ")"));
      }
    }
    for (const auto& [alg, why] : recommended) {
      if (have.count(alg) == 0) {
        missing_rec.push_back(absl::StrCat(wire::AlgName(alg), " (", why, ")"));
      }
    }
    for (uint16_t a : have) {
      names.push_back(wire::AlgName(a));
    }
    if (!missing.empty()) {
      r.Add("capabilities.algorithms", "capabilities", CheckResult::kFail,
            absl::StrCat("missing: ", absl::StrJoin(missing, ", ")),
            "this TPM cannot run the hwid_tpm attestation; check the firmware version or the "
            "algorithm configuration (some parts disable algorithms by region)");
    } else if (!missing_rec.empty()) {
      r.Add("capabilities.algorithms", "capabilities", CheckResult::kWarn,
            absl::StrCat("missing recommended: ", absl::StrJoin(missing_rec, ", ")),
            "keys of those kinds will be refused; prefer ECC P-256 keys");
    } else {
      r.Add("capabilities.algorithms", "capabilities", CheckResult::kPass,
            absl::StrCat(have.size(), " algorithms: ", absl::StrJoin(names, " ")));
    }
  }

  absl::StatusOr<std::vector<uint16_t>> curves = t.GetEccCurves();
  if (!curves.ok()) {
    r.Add("capabilities.ecc-curves", "capabilities", CheckResult::kFail,
          absl::StrCat("TPM2_GetCapability(ECC_CURVES) failed: ", StatusText(curves.status())),
          "check the TPM connection and firmware");
  } else {
    std::vector<std::string> names;
    bool p256 = false, p384 = false;
    for (uint16_t c : *curves) {
      names.push_back(CurveName(c));
      p256 = p256 || c == TPM2_ECC_NIST_P256;
      p384 = p384 || c == TPM2_ECC_NIST_P384;
    }
    const std::string list = names.empty() ? "none" : absl::StrJoin(names, " ");
    if (!p256) {
      r.Add("capabilities.ecc-curves", "capabilities", CheckResult::kFail,
            absl::StrCat("NIST P-256 not implemented (curves: ", list, ")"),
            "the hwid_tpm AK (ak_alg = ec-p256) and ECC EKs need P-256; use ak_alg = rsa-2048");
    } else if (!p384) {
      r.Add("capabilities.ecc-curves", "capabilities", CheckResult::kWarn,
            absl::StrCat("NIST P-384 not implemented (curves: ", list, ")"),
            "P-384 keys (ak_alg = ec-p384, KeyManager EC_P384) will be refused");
    } else {
      r.Add("capabilities.ecc-curves", "capabilities", CheckResult::kPass, list);
    }
  }

  // PCR banks: the sha256 bank must be allocated for the default policy; the requested selection
  // must be quotable.
  std::vector<std::string> banks;
  std::map<TPMI_ALG_HASH, std::set<uint32_t>> allocated;
  for (const auto& b : info.pcr_banks) {
    allocated[b.alg].insert(b.pcrs.begin(), b.pcrs.end());
    banks.push_back(b.pcrs.empty()
                        ? absl::StrCat(wire::HashAlgName(b.alg), " (not allocated)")
                        : absl::StrCat(wire::HashAlgName(b.alg), " (", b.pcrs.size(), " PCRs)"));
  }
  const std::string bank_text = banks.empty() ? "none" : absl::StrJoin(banks, ", ");
  std::vector<std::string> not_allocated;
  if (pcrs != nullptr) {
    for (const auto& [alg, idx] : wire::SelectedPcrs(*pcrs)) {
      if (allocated[alg].count(idx) == 0) {
        not_allocated.push_back(absl::StrCat(wire::HashAlgName(alg), ":", idx));
      }
    }
  }
  if (allocated[TPM2_ALG_SHA256].size() < 24) {
    r.Add("capabilities.pcr-banks", "capabilities",
          not_allocated.empty() && pcrs != nullptr ? CheckResult::kWarn : CheckResult::kFail,
          absl::StrCat("the sha256 bank is not allocated (allocated: ", bank_text, ")"),
          "hwid_tpm's default pcrs = \"sha256:0-7\" cannot be quoted; allocate the sha256 bank "
          "(firmware setup, or tpm2_pcrallocate sha256:all then reboot); quoting sha1 PCRs "
          "(pcrs = \"sha1:0-7\") works but SHA-1 PCRs are weaker evidence");
  } else if (!not_allocated.empty()) {
    r.Add("capabilities.pcr-banks", "capabilities", CheckResult::kFail,
          absl::StrCat("requested PCRs not allocated: ", absl::StrJoin(not_allocated, ","),
                       " (allocated: ", bank_text, ")"),
          absl::StrCat("--pcrs ", pcrs_text, " names PCRs this TPM does not have; allocate the "
                       "bank or change the selection"));
  } else {
    r.Add("capabilities.pcr-banks", "capabilities", CheckResult::kPass, bank_text);
  }

  // Object slots: the TPM spec's minimum is 3 (TPM2_PT_HR_TRANSIENT_MIN).
  CheckItem* slots = nullptr;
  if (info.transient_slots < 3) {
    slots = &r.Add("capabilities.transient-slots", "capabilities", CheckResult::kFail,
                   absl::StrCat(info.transient_slots, " transient object slots (TPM 2.0 requires "
                                "at least 3)"),
                   "the attestation needs the EK, the SRK and a key loaded at once");
  } else if (info.loaded_transient > 0) {
    slots = &r.Add("capabilities.transient-slots", "capabilities", CheckResult::kWarn,
                   absl::StrCat(info.transient_slots, " slots, ", info.loaded_transient,
                                " already loaded by other programs or leaked"),
                   "without a resource manager leaked objects stay until the TPM restarts; when no "
                   "other program uses the TPM run `hwid tpm flush-transient`");
  } else {
    slots = &r.Add("capabilities.transient-slots", "capabilities", CheckResult::kPass,
                   absl::StrCat(info.transient_slots, " slots, none loaded"));
  }
  slots->metrics["slots"] = info.transient_slots;
  slots->metrics["loaded"] = info.loaded_transient;

  const uint32_t sessions_loaded = info.Property(TPM2_PT_HR_LOADED_MIN);
  const uint32_t sessions_active = info.Property(TPM2_PT_ACTIVE_SESSIONS_MAX);
  const uint32_t sessions_avail = info.Property(TPM2_PT_HR_LOADED_AVAIL);
  CheckItem& sess = r.Add(
      "capabilities.sessions", "capabilities",
      sessions_loaded >= 3 ? CheckResult::kPass : CheckResult::kFail,
      absl::StrFormat("%u loaded session slots (%u free), %u active sessions at most",
                      sessions_loaded, sessions_avail, sessions_active),
      "credential activation needs two sessions at once (policy + HMAC); TPM 2.0 requires 3 "
      "loaded session slots");
  sess.metrics["loaded_min"] = sessions_loaded;
  sess.metrics["loaded_free"] = sessions_avail;

  const uint32_t persistent = info.Property(TPM2_PT_HR_PERSISTENT);
  const uint32_t persistent_avail = info.Property(TPM2_PT_HR_PERSISTENT_AVAIL);
  const uint32_t nv_indices = info.Property(TPM2_PT_HR_NV_INDEX);
  const uint32_t nv_index_max = info.Property(TPM2_PT_NV_INDEX_MAX);
  const std::string nv_detail = absl::StrFormat(
      "%u persistent objects, room for about %u more; %u NV indices defined; largest NV index %u "
      "bytes",
      persistent, persistent_avail, nv_indices, nv_index_max);
  CheckItem* nv = nullptr;
  if (persistent_avail == 0) {
    nv = &r.Add("capabilities.nv", "capabilities", CheckResult::kWarn, nv_detail,
                "no room for another persistent object: the hwid_tpm agent cannot persist its AK "
                "(unless it already exists); evict unused persistent objects (tpm2_getcap "
                "handles-persistent, hwid key evict)");
  } else if (nv_index_max != 0 && nv_index_max < 1024) {
    nv = &r.Add("capabilities.nv", "capabilities", CheckResult::kWarn, nv_detail,
                "NV indices under 1024 bytes cannot hold a typical EK certificate");
  } else {
    nv = &r.Add("capabilities.nv", "capabilities", CheckResult::kPass, nv_detail);
  }
  nv->metrics["persistent"] = persistent;
  nv->metrics["persistent_free"] = persistent_avail;
  nv->metrics["nv_indices"] = nv_indices;

  const std::string da = absl::StrFormat(
      "failed authorizations %u of %u, one forgiven every %u s, lockout-auth recovery %u s",
      info.lockout_counter, info.max_auth_fail, info.lockout_interval, info.lockout_recovery);
  if (info.in_lockout) {
    r.Add("capabilities.dictionary-attack", "capabilities", CheckResult::kFail,
          absl::StrCat("IN LOCKOUT: ", da),
          absl::StrFormat("keys with authorization values cannot be used; wait about %u s (one "
                          "failure is forgiven per interval) or reset with the lockout "
                          "authorization (tpm2_dictionarylockout --clear-lockout)",
                          info.lockout_interval));
  } else if (info.lockout_counter > 0) {
    r.Add("capabilities.dictionary-attack", "capabilities", CheckResult::kWarn, da,
          "some program has been sending wrong authorization values; find it before the TPM "
          "locks out (every key with an auth value is then refused)");
  } else {
    r.Add("capabilities.dictionary-attack", "capabilities", CheckResult::kPass, da);
  }
}

// ---- EK certificates and keys ------------------------------------------------------------------

struct EkFinding {
  const wire::EkSpec* spec = nullptr;
  bool has_cert = false;
  bool cert_ok = false;  // parsed, profile, validity, chain (when checked), key
  std::optional<TPMT_PUBLIC> ek_pub;  // the EK made from the template
};

std::string KeyDescription(const TPMT_PUBLIC& pub) {
  if (pub.type == TPM2_ALG_RSA) {
    return absl::StrFormat("RSA %u bits", pub.parameters.rsaDetail.keyBits);
  }
  if (pub.type == TPM2_ALG_ECC) {
    return absl::StrCat("ECC ", CurveName(pub.parameters.eccDetail.curveID));
  }
  return "unknown key type";
}

// CheckKeyHygiene: RSA size and ROCA, EC point on the curve (PublicToEvp refuses a point off the
// curve), name algorithm.
CheckResult KeyHygiene(const TPMT_PUBLIC& pub, const char* role, std::string* detail) {
  absl::Status strength = wire::CheckKeyStrength(pub, role);
  if (!strength.ok()) {
    *detail = StatusText(strength);
    return CheckResult::kFail;
  }
  absl::StatusOr<OsslPtr<EVP_PKEY>> key = wire::PublicToEvp(pub);
  if (!key.ok()) {
    *detail = StatusText(key.status());
    return CheckResult::kFail;
  }
  if (pub.type == TPM2_ALG_RSA) {
    *detail = absl::StrFormat("%s, exponent %u, no ROCA fingerprint, nameAlg %s",
                              KeyDescription(pub),
                              pub.parameters.rsaDetail.exponent == 0
                                  ? 65537u
                                  : pub.parameters.rsaDetail.exponent,
                              wire::HashAlgName(pub.nameAlg));
  } else {
    *detail = absl::StrFormat("%s, point on the curve, nameAlg %s", KeyDescription(pub),
                              wire::HashAlgName(pub.nameAlg));
  }
  return CheckResult::kPass;
}

// CertKeyHygiene: the certified key itself (it is what a verifier trusts): RSA size and ROCA.
absl::Status CertKeyHygiene(X509* cert) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) {
    return absl::InvalidArgumentError("the certificate's public key cannot be decoded");
  }
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
    BIGNUM* n = nullptr;
    if (EVP_PKEY_get_bn_param(key, "n", &n) != 1 || n == nullptr) {
      DrainOpenSslErrors();
      return absl::InvalidArgumentError("the certificate's RSA modulus cannot be read");
    }
    Bytes mod(static_cast<size_t>(BN_num_bytes(n)));
    BN_bn2bin(n, mod.data());
    const int bits = BN_num_bits(n);
    BN_free(n);
    if (bits < wire::kMinRsaBits) {
      return absl::PermissionDeniedError(
          absl::StrCat("the certificate's RSA key has ", bits, " bits (at least ",
                       wire::kMinRsaBits, " required)"));
    }
    if (wire::HasRocaFingerprint(mod)) {
      return absl::PermissionDeniedError(
          "the certificate's RSA modulus has the ROCA fingerprint (CVE-2017-15361): the key is "
          "factorable");
    }
  } else if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC) {
    OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
    if (!ctx || EVP_PKEY_public_check(ctx.get()) != 1) {
      DrainOpenSslErrors();
      return absl::PermissionDeniedError("the certificate's EC point is not on its curve");
    }
  }
  return absl::OkStatus();
}

void CheckEkCertificates(tpm::Tpm& t, const std::optional<wire::CaBundle>& bundle,
                         const std::string& ca_note, std::vector<EkFinding>& findings,
                         TpmCheckReport& rep) {
  Report r(&rep);
  absl::StatusOr<std::vector<tpm::EkCertificate>> certs = t.ReadEkCertificates();
  if (!certs.ok()) {
    r.Add("ekcert.present", "ekcert", CheckResult::kFail,
          absl::StrCat("reading the EK certificate NV indices failed: ",
                       StatusText(certs.status())),
          "check that the owner hierarchy can read NV (ownerread) and the TPM connection");
    return;
  }
  // Intermediates stored in the TPM (TCG EK certificate chain range).
  std::vector<OsslPtr<X509>> nv_intermediates;
  absl::StatusOr<std::vector<tpm::NvChainCertificate>> chain = t.ReadEkChainCertificates();
  if (!chain.ok()) {
    r.Add("ekcert.nv-chain", "ekcert", CheckResult::kWarn,
          absl::StrCat("reading the EK chain NV range 0x01c00100-0x01c001ff failed: ",
                       StatusText(chain.status())),
          "intermediates stored in the TPM cannot be used; put them in the trust bundle");
  } else if (chain->empty()) {
    r.Add("ekcert.nv-chain", "ekcert", CheckResult::kPass,
          "no certificates in the EK chain NV range 0x01c00100-0x01c001ff (none needed when the "
          "bundle has the intermediates)");
  } else {
    std::vector<std::string> good, bad;
    for (const auto& c : *chain) {
      if (!c.error.ok() || c.der.empty()) {
        bad.push_back(absl::StrCat(tpm::FormatHandle(c.nv_index), ": ", StatusText(c.error)));
        continue;
      }
      absl::StatusOr<OsslPtr<X509>> x = wire::ParseCertificateDer(c.der);
      if (!x.ok()) {
        bad.push_back(absl::StrCat(tpm::FormatHandle(c.nv_index), ": ", StatusText(x.status())));
        continue;
      }
      good.push_back(absl::StrCat(tpm::FormatHandle(c.nv_index), " '", wire::SubjectString(x->get()),
                                  "'", c.quirks.empty() ? "" : " (", absl::StrJoin(c.quirks, "; "),
                                  c.quirks.empty() ? "" : ")"));
      nv_intermediates.push_back(std::move(*x));
    }
    if (!bad.empty()) {
      r.Add("ekcert.nv-chain", "ekcert", CheckResult::kWarn,
            absl::StrCat("unreadable: ", absl::StrJoin(bad, "; "),
                         good.empty() ? "" : absl::StrCat("; usable: ", absl::StrJoin(good, "; "))),
            "the hwid_tpm agent sends only the readable ones; fix the provisioning of these NV "
            "indices");
    } else {
      r.Add("ekcert.nv-chain", "ekcert", CheckResult::kPass,
            absl::StrCat(good.size(), " intermediate(s) in NV: ", absl::StrJoin(good, "; ")));
    }
  }

  // The bundle the chains are verified against: the trust bundle plus the NV intermediates
  // (untrusted helpers, never anchors).
  wire::CaBundle with_nv;
  if (bundle.has_value()) {
    for (const auto& root : bundle->roots) {
      X509_up_ref(root.get());
      with_nv.roots.emplace_back(root.get());
    }
    for (const auto& inter : bundle->intermediates) {
      X509_up_ref(inter.get());
      with_nv.intermediates.emplace_back(inter.get());
    }
    for (OsslPtr<X509>& inter : nv_intermediates) {
      with_nv.intermediates.push_back(std::move(inter));
    }
  }

  std::vector<std::string> present;
  for (const auto& c : *certs) {
    present.push_back(absl::StrCat(c.name, " (NV ", tpm::FormatHandle(c.nv_index), ")"));
  }
  bool has_rsa2048 = false;
  for (const auto& c : *certs) {
    has_rsa2048 = has_rsa2048 || c.type == wire::EkType::kRsa2048;
  }
  if (certs->empty()) {
    r.Add("ekcert.present", "ekcert", CheckResult::kFail,
          "no EK certificate at any TCG EK certificate NV index (low range 0x01c00002.. and high "
          "range 0x01c00012..)",
          "the hwid_tpm server can admit this TPM only by ek_allowlist (hashes in "
          "attestation.plugin.* below); ask the vendor or provisioning line for EK certificates");
  } else if (!has_rsa2048) {
    r.Add("ekcert.present", "ekcert", CheckResult::kWarn,
          absl::StrCat("no RSA-2048 EK certificate; present: ", absl::StrJoin(present, ", ")),
          "the hwid_tpm server's default ek_algs is [\"rsa-2048\"]: set ek_algs to this TPM's "
          "type (e.g. [\"ecc-p256\"]) for the whole fleet (docs/plugin-protocol.md, one identity "
          "per TPM)");
  } else {
    r.Add("ekcert.present", "ekcert", CheckResult::kPass, absl::StrJoin(present, ", "));
  }

  for (const tpm::EkCertificate& c : *certs) {
    EkFinding f;
    f.spec = &wire::EkSpecFor(c.type);
    f.has_cert = true;
    const std::string base = absl::StrCat("ekcert.", c.name, ".");
    const std::string where = absl::StrCat("NV ", tpm::FormatHandle(c.nv_index));
    // Encoding.
    if (!c.error.ok() || c.der.empty()) {
      r.Add(base + "encoding", "ekcert", CheckResult::kFail,
            absl::StrCat(where, " holds no DER certificate: ", StatusText(c.error)),
            "the NV index is defined but its content is not an X.509 certificate; re-provision it");
      findings.push_back(f);
      continue;
    }
    absl::StatusOr<OsslPtr<X509>> cert = wire::ParseCertificateDer(c.der);
    if (!cert.ok()) {
      r.Add(base + "encoding", "ekcert", CheckResult::kFail,
            absl::StrCat(where, ": ", StatusText(cert.status())),
            "the certificate is not strict DER; verifiers (hwid, Go's x509) refuse it; ask the "
            "vendor for a corrected certificate");
      findings.push_back(f);
      continue;
    }
    if (!c.quirks.empty()) {
      r.Add(base + "encoding", "ekcert", c.trailing_bytes > 0 || c.tcg_wrapper ? CheckResult::kWarn
                                                                               : CheckResult::kPass,
            absl::StrCat(where, ": ", c.der.size(), "-byte DER certificate; ",
                         absl::StrJoin(c.quirks, "; ")),
            "hwid's agent extracts the DER and sends only it; tools that read the NV index whole "
            "(openssl x509 -inform DER on tpm2_nvread output, some attestors) refuse it; fix the "
            "provisioning to write exactly the DER");
    } else {
      r.Add(base + "encoding", "ekcert", CheckResult::kPass,
            absl::StrCat(where, ": ", c.der.size(), "-byte DER certificate, nothing after it"));
    }
    X509* x = cert->get();
    bool ok = true;
    // Profile.
    absl::Status profile = wire::CheckEkCertificateProfile(x);
    if (!profile.ok()) {
      ok = false;
      r.Add(base + "profile", "ekcert", CheckResult::kFail, StatusText(profile),
            "the hwid_tpm server refuses this certificate (TCG EK Credential Profile: an end "
            "entity, keyUsage fit for the key, EK EKU or TCG SAN attributes); ask the issuer for a "
            "conforming certificate");
    } else {
      absl::StatusOr<wire::TcgDeviceInfo> dev = wire::ParseTcgDeviceInfo(x);
      r.Add(base + "profile", "ekcert", CheckResult::kPass,
            dev.ok() ? absl::StrFormat("end entity; TCG SAN manufacturer %s, model %s, version %s",
                                       dev->manufacturer, dev->model, dev->version)
                     : "end entity with the EK extended key usage");
    }
    // Validity.
    const time_t now = std::time(nullptr);
    std::optional<time_t> not_before = AsnTimeToTimeT(X509_get0_notBefore(x));
    std::optional<time_t> not_after = AsnTimeToTimeT(X509_get0_notAfter(x));
    bool chain_check_time = true;
    if (!not_before || !not_after) {
      ok = false;
      r.Add(base + "validity", "ekcert", CheckResult::kFail, "the validity dates cannot be parsed",
            "re-issue the certificate");
    } else if (now > *not_after) {
      ok = false;
      chain_check_time = false;
      r.Add(base + "validity", "ekcert", CheckResult::kFail,
            absl::StrCat("expired on ", Rfc3339(*not_after), " (valid from ",
                         Rfc3339(*not_before), ")"),
            "the hwid_tpm server refuses expired EK certificates; ask the vendor or provisioning "
            "line for a renewed certificate, or admit the TPM by ek_allowlist");
    } else if (now < *not_before) {
      ok = false;
      chain_check_time = false;
      r.Add(base + "validity", "ekcert", CheckResult::kFail,
            absl::StrCat("not valid before ", Rfc3339(*not_before)),
            "check this machine's clock, or the issuer's");
    } else if (*not_after - now < kExpiryWarningDays * 86400) {
      r.Add(base + "validity", "ekcert", CheckResult::kWarn,
            absl::StrCat("expires on ", Rfc3339(*not_after)),
            "renew the EK certificate before it expires, or plan to admit the TPM by ek_allowlist");
    } else {
      r.Add(base + "validity", "ekcert", CheckResult::kPass,
            absl::StrCat(Rfc3339(*not_before), " to ", Rfc3339(*not_after)));
    }
    // Chain.
    if (!bundle.has_value()) {
      r.Add(base + "chain", "ekcert", CheckResult::kSkip,
            absl::StrCat("no trust bundle given (--ca); issuer '", wire::IssuerString(x), "'"));
    } else {
      std::vector<std::string> path;
      absl::Status st = wire::VerifyCertificateChain(x, with_nv, std::nullopt, &path, chain_check_time);
      if (!st.ok()) {
        ok = false;
        r.Add(base + "chain", "ekcert", CheckResult::kFail,
              absl::StrCat(StatusText(st), "; issuer '", wire::IssuerString(x), "'"),
              absl::StrCat("add the issuer's root (and intermediates) to the trust bundle ", ca_note,
                           "; the hwid_tpm server uses the same bundle (ek_ca_bundle_paths)"));
      } else {
        r.Add(base + "chain", "ekcert", CheckResult::kPass,
              absl::StrCat(absl::StrJoin(path, " <- "),
                           chain_check_time ? "" : " (signatures and CA constraints only: the "
                                                   "validity check is the line above)"));
      }
    }
    // Certificate key == the EK made from the TCG template.
    absl::StatusOr<tpm::Ek> ek = t.LoadEk(c.type, /*allow_persistent=*/false);
    if (!ek.ok()) {
      ok = false;
      r.Add(base + "key", "ekcert", CheckResult::kFail,
            absl::StrCat("creating the ", c.name, " EK from the TCG template failed: ",
                         StatusText(ek.status())),
            "the TPM cannot make the EK its certificate is for; check the endorsement hierarchy "
            "(enabled, empty auth or set HWID auth)");
    } else {
      f.ek_pub = ek->pub.publicArea;
      absl::Status match = wire::CheckCertificateMatchesPublic(x, ek->pub.publicArea);
      if (!match.ok()) {
        ok = false;
        r.Add(base + "key", "ekcert", CheckResult::kFail,
              absl::StrCat("the certificate's key is not the EK the TPM makes from the TCG ",
                           c.name, " template: ", StatusText(match)),
              "the certificate belongs to another TPM or another template; the hwid_tpm server "
              "refuses it; re-provision the certificate for this TPM's EK");
      } else {
        r.Add(base + "key", "ekcert", CheckResult::kPass,
              absl::StrCat("the certificate's key equals the ", c.name,
                           " EK made from the TCG template"));
      }
      // Persistent EK at the TCG handle must be the same key (the agent prefers it).
      if (f.spec->persistent_handle != 0) {
        absl::StatusOr<TPM2B_PUBLIC> persisted = t.ReadPublic(f.spec->persistent_handle);
        if (persisted.ok()) {
          absl::StatusOr<Bytes> a = wire::ObjectName(persisted->publicArea);
          absl::StatusOr<Bytes> b = wire::ObjectName(ek->pub.publicArea);
          if (a.ok() && b.ok() && *a != *b) {
            r.Add(base + "persistent", "ekcert", CheckResult::kWarn,
                  absl::StrCat("the persistent object at ", tpm::FormatHandle(f.spec->persistent_handle),
                               " is not the template EK"),
                  "hwid uses the template EK; other tools that take the persistent handle get "
                  "another key; evict it or re-create the EK there");
          }
        }
      }
    }
    // Key hygiene of the certified key.
    absl::Status hygiene = CertKeyHygiene(x);
    if (!hygiene.ok()) {
      ok = false;
      r.Add(base + "cert-key", "keys", CheckResult::kFail, StatusText(hygiene),
            "a weak EK is impersonation: do not enrol this TPM; ask the vendor for a firmware "
            "update and new EKs (ROCA: Infineon advisory for CVE-2017-15361)");
    }
    f.cert_ok = ok;
    findings.push_back(f);
  }
}

void CheckKeys(tpm::Tpm& t, std::vector<EkFinding>& findings, TpmCheckReport& rep) {
  Report r(&rep);
  // The EKs hwid uses: every type with a certificate, plus the two low-range templates.
  std::set<wire::EkType> types;
  for (const auto& f : findings) {
    types.insert(f.spec->type);
  }
  types.insert(wire::EkType::kRsa2048);
  types.insert(wire::EkType::kEccP256);
  for (wire::EkType type : types) {
    const wire::EkSpec& spec = wire::EkSpecFor(type);
    std::optional<TPMT_PUBLIC> pub;
    for (const auto& f : findings) {
      if (f.spec->type == type && f.ek_pub) {
        pub = f.ek_pub;
      }
    }
    if (!pub) {
      absl::StatusOr<tpm::Ek> ek = t.LoadEk(type, /*allow_persistent=*/false);
      if (!ek.ok()) {
        r.Add(absl::StrCat("keys.ek.", spec.name), "keys", CheckResult::kFail,
              absl::StrCat("creating the ", spec.name, " EK from the TCG template failed: ",
                           StatusText(ek.status())),
              "check the endorsement hierarchy and the algorithm capabilities above");
        continue;
      }
      pub = ek->pub.publicArea;
    }
    if (findings.empty() && type == wire::EkType::kRsa2048) {
      // No certificate at all: the agent presents this EK; the plugin flow admits it by hash.
      EkFinding f;
      f.spec = &spec;
      f.ek_pub = pub;
      findings.push_back(f);
    }
    std::string detail;
    CheckResult res = KeyHygiene(*pub, "EK", &detail);
    r.Add(absl::StrCat("keys.ek.", spec.name), "keys", res, detail,
          "a weak EK cannot be trusted: the hwid_tpm server refuses it; ask the vendor for a "
          "firmware update and new EK certificates");
  }
}

// ---- attestation -----------------------------------------------------------------------------

void CheckAttestationInTpm(tpm::Tpm& t, const TpmCheckOptions& o, const TPML_PCR_SELECTION* sel,
                           std::vector<EkFinding>& findings, TpmCheckReport& rep) {
  Report r(&rep);
  const std::string handle = tpm::FormatHandle(o.ak_handle);
  const bool existed = t.ReadPublic(o.ak_handle).ok();
  absl::StatusOr<tpm::LoadedKey> ak = t.EnsureAk(wire::KeyAlg::kEcP256, o.ak_handle);
  if (!ak.ok()) {
    r.Add("attestation.ak", "attestation", CheckResult::kFail,
          absl::StrCat("AK at ", handle, ": ", StatusText(ak.status())),
          absl::StrCat("the hwid_tpm agent keeps its AK at ak_handle (default 0x81000100); if ",
                       handle, " holds another object choose another handle (--ak-handle and the "
                       "agent's ak_handle) or evict it"));
    r.Add("attestation.quote", "attestation", CheckResult::kSkip, "no AK");
    return;
  }
  std::string detail;
  CheckResult hyg = KeyHygiene(ak->pub.publicArea, "AK", &detail);
  absl::Status attrs = wire::CheckAkAttributes(ak->pub.publicArea);
  if (!attrs.ok()) {
    hyg = CheckResult::kFail;
    detail = StatusText(attrs);
  }
  r.Add("attestation.ak", "attestation", hyg,
        absl::StrCat(existed ? "reused the AK persisted at " : "created and persisted an AK at ",
                     handle, ": ", detail),
        "the object at the AK handle is not a usable restricted signing key; evict it (hwid key "
        "evict) and run again");
  if (hyg == CheckResult::kFail) {
    return;
  }
  absl::StatusOr<Bytes> ak_name = wire::ObjectName(ak->pub.publicArea);
  // Credential activation against each EK with a certificate (and the low-range RSA-2048 EK).
  std::set<wire::EkType> types;
  for (const auto& f : findings) {
    types.insert(f.spec->type);
  }
  if (types.empty()) {
    types.insert(wire::EkType::kRsa2048);
  }
  for (wire::EkType type : types) {
    const wire::EkSpec& spec = wire::EkSpecFor(type);
    const std::string id = absl::StrCat("attestation.activate.", spec.name);
    absl::StatusOr<tpm::Ek> ek = t.LoadEk(type, /*allow_persistent=*/false);
    if (!ek.ok() || !ak_name.ok()) {
      r.Add(id, "attestation", CheckResult::kFail,
            absl::StrCat("loading the EK: ", StatusText(ek.ok() ? ak_name.status() : ek.status())),
            "see keys.ek.* above");
      continue;
    }
    SecureBytes secret(32);
    if (RAND_bytes(secret.data(), 32) != 1) {
      r.Add(id, "attestation", CheckResult::kFail, "RAND_bytes failed", "check OpenSSL");
      continue;
    }
    absl::StatusOr<wire::Credential> cred =
        wire::MakeCredential(ek->pub.publicArea, AsSpan(secret), *ak_name);
    if (!cred.ok()) {
      r.Add(id, "attestation", CheckResult::kFail,
            absl::StrCat("MakeCredential in software: ", StatusText(cred.status())),
            "the EK public area cannot be used for MakeCredential");
      continue;
    }
    const auto t0 = Clock::now();
    absl::StatusOr<SecureBytes> got =
        t.ActivateCredential(*ak, *ek, cred->id_object, cred->encrypted_secret);
    const double ms = MsSince(t0);
    if (!got.ok()) {
      r.Add(id, "attestation", CheckResult::kFail,
            absl::StrCat("TPM2_ActivateCredential: ", StatusText(got.status())),
            "the TPM cannot prove that the AK and this EK are in the same TPM; check the "
            "endorsement hierarchy auth (must be empty for hwid) and the EK policy");
    } else if (!ConstantTimeEquals(AsSpan(*got), AsSpan(secret))) {
      r.Add(id, "attestation", CheckResult::kFail, "the TPM returned a different secret",
            "this TPM's credential activation is broken; report it to the vendor");
    } else {
      CheckItem& item = r.Add(id, "attestation", CheckResult::kPass,
                              absl::StrFormat("secret recovered with the %s EK (%.1f ms)",
                                              spec.name, ms));
      item.metrics["ms"] = ms;
    }
  }
  if (sel == nullptr) {
    r.Add("attestation.quote", "attestation", CheckResult::kSkip, "invalid --pcrs");
    return;
  }
  Bytes nonce(32);
  if (RAND_bytes(nonce.data(), 32) != 1) {
    r.Add("attestation.quote", "attestation", CheckResult::kFail, "RAND_bytes failed",
          "check OpenSSL");
    return;
  }
  const auto t0 = Clock::now();
  absl::StatusOr<tpm::Quote> q = t.QuotePcrs(*ak, nonce, *sel);
  const double ms = MsSince(t0);
  if (!q.ok()) {
    r.Add("attestation.quote", "attestation", CheckResult::kFail,
          absl::StrCat("TPM2_Quote over ", wire::FormatPcrSelection(*sel), ": ",
                       StatusText(q.status())),
          "see capabilities.pcr-banks; quote a selection of allocated PCRs");
    return;
  }
  absl::StatusOr<wire::VerifiedQuote> v =
      wire::VerifyQuote(ak->pub.publicArea, q->attest, q->signature, nonce, q->pcrs);
  if (!v.ok()) {
    r.Add("attestation.quote", "attestation", CheckResult::kFail,
          absl::StrCat("the quote does not verify in software: ", StatusText(v.status())),
          "the TPM produced a quote hwid's verifier refuses; report it to the vendor with this "
          "output");
    return;
  }
  CheckItem& item = r.Add(
      "attestation.quote", "attestation", CheckResult::kPass,
      absl::StrFormat("quote over %s with a fresh nonce verified in software (signature, nonce, "
                      "PCR digest); quoted clock %u ms",
                      wire::FormatPcrSelection(*sel), v->attest.clockInfo.clock));
  item.metrics["ms"] = ms;
}

// RunPluginFlow runs one hwid_tpm attestation with the plugins' own cores (agent responder and
// server session) in this process: the verdict SPIRE would get.
absl::Status RunPluginFlow(const TpmCheckOptions& o, const std::string& agent_ek,
                           const attestation::ServerConfigInput& server_in,
                           attestation::AttestationResult* result) {
  ASSIGN_OR_RETURN(std::shared_ptr<const attestation::ServerConfig> config,
                   attestation::ValidateServerConfig(server_in));
  attestation::AgentConfigInput agent_in;
  agent_in.tcti = o.tcti.empty() ? tpm::DefaultTcti() : o.tcti;
  agent_in.ek = agent_ek;
  agent_in.ak_handle = tpm::FormatHandle(o.ak_handle);
  agent_in.ak_alg = "ec-p256";
  ASSIGN_OR_RETURN(attestation::AgentConfig agent_config,
                   attestation::ValidateAgentConfig(agent_in));
  ASSIGN_OR_RETURN(std::unique_ptr<attestation::AgentResponder> agent,
                   attestation::AgentResponder::New(agent_config));
  ASSIGN_OR_RETURN(std::unique_ptr<attestation::ServerSession> session,
                   attestation::ServerSession::New(config));
  ASSIGN_OR_RETURN(Bytes payload, agent->MakePayload());
  ASSIGN_OR_RETURN(Bytes challenge, session->HandlePayload(payload));
  ASSIGN_OR_RETURN(Bytes response, agent->RespondToChallenge(challenge));
  ASSIGN_OR_RETURN(*result, session->HandleChallengeResponse(response));
  return absl::OkStatus();
}

void CheckPluginFlow(const TpmCheckOptions& o, const std::vector<EkFinding>& findings,
                     TpmCheckReport& rep) {
  Report r(&rep);
  attestation::ServerConfigInput base;
  base.trust_domain = kCheckTrustDomain;
  base.pcrs = o.pcrs;
  std::vector<const EkFinding*> candidates;
  for (const auto& f : findings) {
    candidates.push_back(&f);
  }
  std::vector<std::string> admitted;  // EK types admitted in certificate mode
  for (const EkFinding* f : candidates) {
    const std::string id = absl::StrCat("attestation.plugin.", f->spec->name);
    attestation::ServerConfigInput in = base;
    std::string mode;
    if (o.ca_path.has_value() && f->has_cert) {
      in.ek_ca_bundle_paths = {*o.ca_path};
      mode = absl::StrCat("certificate mode, ek_ca_bundle_paths = [\"", *o.ca_path, "\"]");
    } else if (f->ek_pub.has_value() || !f->has_cert) {
      // Allowlist mode with the EK's own hash: proves everything but the certificate.
      std::optional<TPMT_PUBLIC> pub = f->ek_pub;
      if (!pub) {
        r.Add(id, "attestation", CheckResult::kSkip, "the EK could not be created (see keys.ek.*)");
        continue;
      }
      absl::StatusOr<std::string> hash = attestation::EkPublicKeyHash(*pub);
      if (!hash.ok()) {
        r.Add(id, "attestation", CheckResult::kFail, StatusText(hash.status()),
              "see keys.ek.*");
        continue;
      }
      in.ek_allowlist = {*hash};
      mode = absl::StrCat("allowlist mode, ek_allowlist = [\"", *hash, "\"]");
    } else {
      r.Add(id, "attestation", CheckResult::kSkip, "the EK could not be created (see ekcert.*.key)");
      continue;
    }
    // ek_algs names this EK's type (the server's default is rsa-2048 only).
    if (f->ek_pub.has_value()) {
      in.ek_algs = {attestation::EkAlgName(*f->ek_pub)};
    }
    attestation::AttestationResult result;
    const auto t0 = Clock::now();
    absl::Status st = RunPluginFlow(o, f->spec->name, in, &result);
    const double ms = MsSince(t0);
    if (!st.ok()) {
      r.Add(id, "attestation", CheckResult::kFail,
            absl::StrCat("refused (", mode, "): ", absl::StatusCodeToString(st.code()), ": ",
                         StatusText(st)),
            "the hwid_tpm server would refuse this agent the same way; fix the cause named here "
            "(see the ekcert.* and capabilities.* checks)");
    } else {
      CheckItem& item = r.Add(
          id, "attestation",
          o.ca_path.has_value() || !f->has_cert ? CheckResult::kPass : CheckResult::kWarn,
          absl::StrFormat("admitted (%s, ek_algs = [\"%s\"]) as %s, %u selectors, %.0f ms", mode,
                          in.ek_algs.empty() ? "rsa-2048" : in.ek_algs[0],
                          result.spiffe_id, result.selectors.size(), ms),
          "admitted by allowlist only: give --ca with the manufacturer's bundle to check the EK "
          "certificate the way the server will");
      item.metrics["ms"] = ms;
      if (o.ca_path.has_value() && f->has_cert && f->ek_pub.has_value()) {
        admitted.push_back(attestation::EkAlgName(*f->ek_pub));
      }
    }
  }
  // The default configuration: agent ek = "auto", server ek_algs default, the given bundle.
  if (o.ca_path.has_value()) {
    attestation::ServerConfigInput in = base;
    in.ek_ca_bundle_paths = {*o.ca_path};
    attestation::AttestationResult result;
    absl::Status st = RunPluginFlow(o, "auto", in, &result);
    if (!st.ok() && !admitted.empty()) {
      // Works, but only with a setting changed: a warning that names the setting.
      r.Add("attestation.plugin.default", "attestation", CheckResult::kWarn,
            absl::StrCat("refused with the default settings (agent ek = \"auto\", server ek_algs "
                         "= [\"rsa-2048\"], pcrs = \"", o.pcrs, "\"): ", StatusText(st)),
            absl::StrCat("set the server's ek_algs = [\"", admitted.front(),
                         "\"] (for the whole fleet: one identity per TPM) and the agent's ek to "
                         "match; the attestation.plugin.* line above passed with it"));
    } else if (!st.ok()) {
      r.Add("attestation.plugin.default", "attestation", CheckResult::kFail,
            absl::StrCat("refused with the default settings (agent ek = \"auto\", server ek_algs "
                         "= [\"rsa-2048\"], pcrs = \"", o.pcrs, "\"): ", StatusText(st)),
            "no EK of this TPM is admitted in certificate mode; fix the failures above (or "
            "admit the TPM by ek_allowlist)");
    } else {
      r.Add("attestation.plugin.default", "attestation", CheckResult::kPass,
            absl::StrCat("admitted with the default settings as ", result.spiffe_id));
    }
  } else {
    r.Add("attestation.plugin.default", "attestation", CheckResult::kSkip,
          "no trust bundle given (--ca): the default server configuration needs one");
  }
}

// ---- performance -----------------------------------------------------------------------------

void CheckPerformance(tpm::Tpm& t, const TpmCheckOptions& o, const TPML_PCR_SELECTION* sel,
                      TpmCheckReport& rep) {
  Report r(&rep);
  const int runs = std::max(1, o.perf_runs);
  auto perf = [&](const std::string& id, const std::string& what,
                  const std::function<absl::Status()>& prepare,
                  const std::function<absl::Status()>& op) {
    std::vector<double> ms;
    if (prepare) {
      absl::Status st = prepare();
      if (!st.ok()) {
        r.Add(id, "performance", CheckResult::kFail, absl::StrCat(what, ": ", StatusText(st)),
              "see the capability checks above");
        return;
      }
    }
    for (int i = 0; i < runs; ++i) {
      const auto t0 = Clock::now();
      absl::Status st = op();
      if (!st.ok()) {
        r.Add(id, "performance", CheckResult::kFail, absl::StrCat(what, ": ", StatusText(st)),
              "see the capability checks above");
        return;
      }
      ms.push_back(MsSince(t0));
    }
    const Timings tm = Summarize(std::move(ms));
    CheckItem& item = r.Add(id, "performance", CheckResult::kPass,
                            absl::StrFormat("%s: median %.1f ms (min %.1f, max %.1f, %u runs)",
                                            what, tm.median_ms, tm.min_ms, tm.max_ms, tm.runs));
    item.metrics["median_ms"] = tm.median_ms;
    item.metrics["min_ms"] = tm.min_ms;
    item.metrics["max_ms"] = tm.max_ms;
    item.metrics["runs"] = static_cast<double>(tm.runs);
  };
  Bytes digest(32, 0x5a);
  for (wire::KeyAlg alg : {wire::KeyAlg::kEcP256, wire::KeyAlg::kRsa2048}) {
    std::optional<tpm::LoadedKey> key;
    const SignScheme scheme =
        alg == wire::KeyAlg::kEcP256 ? SignScheme::kEcdsa : SignScheme::kRsaPkcs1;
    perf(absl::StrCat("performance.sign.", wire::KeyAlgName(alg)),
         absl::StrCat("TPM2_Sign ", wire::KeyAlgName(alg), " SHA-256"),
         [&]() -> absl::Status {
           ASSIGN_OR_RETURN(wire::TpmKeyFile kf, t.CreateKey(alg));
           ASSIGN_OR_RETURN(tpm::LoadedKey k, t.LoadKey(kf));
           key.emplace(std::move(k));
           return absl::OkStatus();
         },
         [&]() -> absl::Status {
           return t.Sign(*key, digest, scheme, TPM2_ALG_SHA256).status();
         });
  }
  if (sel != nullptr) {
    std::optional<tpm::LoadedKey> ak;
    Bytes nonce(32, 0x11);
    perf("performance.quote", absl::StrCat("TPM2_Quote ", wire::FormatPcrSelection(*sel)),
         [&]() -> absl::Status {
           ASSIGN_OR_RETURN(tpm::LoadedKey k, t.EnsureAk(wire::KeyAlg::kEcP256, o.ak_handle));
           ak.emplace(std::move(k));
           return absl::OkStatus();
         },
         [&]() -> absl::Status { return t.QuotePcrs(*ak, nonce, *sel).status(); });
  }
  for (wire::EkType type : {wire::EkType::kRsa2048, wire::EkType::kEccP256}) {
    const wire::EkSpec& spec = wire::EkSpecFor(type);
    perf(absl::StrCat("performance.createprimary.", spec.name),
         absl::StrCat("TPM2_CreatePrimary ", spec.name, " EK template"), nullptr,
         [&]() -> absl::Status { return t.LoadEk(type, /*allow_persistent=*/false).status(); });
  }
  {
    std::optional<tpm::LoadedKey> ak;
    std::optional<tpm::Ek> ek;
    Bytes name;
    perf("performance.activatecredential", "TPM2_ActivateCredential with the rsa2048 EK",
         [&]() -> absl::Status {
           ASSIGN_OR_RETURN(tpm::LoadedKey k, t.EnsureAk(wire::KeyAlg::kEcP256, o.ak_handle));
           ak.emplace(std::move(k));
           ASSIGN_OR_RETURN(tpm::Ek e, t.LoadEk(wire::EkType::kRsa2048, false));
           ek.emplace(std::move(e));
           ASSIGN_OR_RETURN(name, wire::ObjectName(ak->pub.publicArea));
           return absl::OkStatus();
         },
         [&]() -> absl::Status {
           SecureBytes secret(32, 0x33);
           ASSIGN_OR_RETURN(wire::Credential cred,
                            wire::MakeCredential(ek->pub.publicArea, AsSpan(secret), name));
           return t.ActivateCredential(*ak, *ek, cred.id_object, cred.encrypted_secret).status();
         });
  }
}

}  // namespace

const char* CheckResultName(CheckResult r) {
  switch (r) {
    case CheckResult::kPass: return "pass";
    case CheckResult::kWarn: return "warn";
    case CheckResult::kFail: return "fail";
    case CheckResult::kSkip: return "skip";
  }
  return "fail";
}

size_t TpmCheckReport::Count(CheckResult r) const {
  return static_cast<size_t>(std::count_if(checks.begin(), checks.end(),
                                           [r](const CheckItem& c) { return c.result == r; }));
}

TpmCheckReport RunTpmCheck(const TpmCheckOptions& o) {
  TpmCheckReport rep;
  rep.tcti = o.tcti.empty() ? tpm::DefaultTcti() : o.tcti;
  rep.time = Rfc3339(std::time(nullptr));
  rep.ca_path = o.ca_path.value_or("");
  rep.pcrs = o.pcrs;
  rep.quick = o.quick;
  Report r(&rep);

  absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(o.pcrs);
  const TPML_PCR_SELECTION* selp = sel.ok() ? &*sel : nullptr;

  std::optional<wire::CaBundle> bundle;
  std::string ca_note;
  if (o.ca_path.has_value()) {
    absl::StatusOr<wire::CaBundle> b = wire::LoadTrustBundle(*o.ca_path);
    if (!b.ok()) {
      r.Add("ekcert.trust-bundle", "ekcert", CheckResult::kFail,
            absl::StrCat(*o.ca_path, ": ", StatusText(b.status())),
            "give a PEM bundle, a DER certificate or a directory of them (e.g. the vendor's root "
            "and intermediate CA certificates)");
    } else {
      r.Add("ekcert.trust-bundle", "ekcert", CheckResult::kPass,
            absl::StrFormat("%s: %u root(s), %u intermediate(s) from %u file(s)", *o.ca_path,
                            b->roots.size(), b->intermediates.size(), b->files.size()));
      ca_note = *o.ca_path;
      bundle = std::move(*b);
    }
  }

  std::vector<EkFinding> findings;
  {
    absl::StatusOr<std::unique_ptr<tpm::Tpm>> t = tpm::Tpm::Open(rep.tcti);
    if (!t.ok()) {
      r.Add("identity.connect", "identity", CheckResult::kFail,
            absl::StrCat("cannot open the TPM at '", rep.tcti, "': ", StatusText(t.status())),
            "check --tcti / $HWID_TCTI, that the device exists and this user may open it "
            "(group tss for /dev/tpmrm0)");
      return rep;
    }
    absl::StatusOr<tpm::TpmInfo> info = (*t)->GetInfo();
    if (!info.ok()) {
      r.Add("identity.connect", "identity", CheckResult::kFail,
            absl::StrCat("TPM2_GetCapability failed on '", rep.tcti, "': ",
                         StatusText(info.status())),
            "the device answers but not as a TPM 2.0; check the TCTI and the TPM's state");
      return rep;
    }
    r.Add("identity.connect", "identity", CheckResult::kPass, rep.tcti);
    CheckIdentity(**t, *info, rep);
    CheckCapabilities(**t, *info, selp, o.pcrs, rep);
    CheckEkCertificates(**t, bundle, ca_note, findings, rep);
    CheckKeys(**t, findings, rep);
    CheckAttestationInTpm(**t, o, selp, findings, rep);
  }
  // The plugin flow opens its own connection (swtpm serves one at a time).
  if (!bundle.has_value() && o.ca_path.has_value()) {
    TpmCheckOptions no_ca = o;
    no_ca.ca_path.reset();
    CheckPluginFlow(no_ca, findings, rep);
  } else {
    CheckPluginFlow(o, findings, rep);
  }
  if (o.quick) {
    r.Add("performance", "performance", CheckResult::kSkip, "skipped (--quick)");
  } else {
    absl::StatusOr<std::unique_ptr<tpm::Tpm>> t = tpm::Tpm::Open(rep.tcti);
    if (!t.ok()) {
      r.Add("performance", "performance", CheckResult::kFail,
            absl::StrCat("cannot reopen the TPM: ", StatusText(t.status())),
            "check the TPM connection");
    } else {
      CheckPerformance(**t, o, selp, rep);
    }
  }
  return rep;
}

std::string FormatCheckTable(const TpmCheckReport& rep) {
  size_t width = 5;
  for (const auto& c : rep.checks) {
    width = std::max(width, c.id.size());
  }
  std::string out;
  if (rep.tpm.reachable) {
    absl::StrAppendFormat(&out, "TPM %s (0x%08x) '%s', firmware %s, %s\n", rep.tpm.manufacturer,
                          rep.tpm.manufacturer_id, rep.tpm.vendor, rep.tpm.firmware,
                          rep.tpm.spec);
  }
  absl::StrAppendFormat(&out, "at %s, %s (hwid %s)\n\n", rep.tcti, rep.time, HWID_VERSION);
  absl::StrAppendFormat(&out, "%-*s  %-6s %s\n", static_cast<int>(width), "CHECK", "RESULT",
                        "DETAIL");
  for (const auto& c : rep.checks) {
    absl::StrAppendFormat(&out, "%-*s  %-6s %s\n", static_cast<int>(width), c.id,
                          CheckResultName(c.result), c.detail);
    if (!c.action.empty()) {
      absl::StrAppendFormat(&out, "%-*s  %-6s fix: %s\n", static_cast<int>(width), "", "",
                            c.action);
    }
  }
  absl::StrAppendFormat(&out, "\n%u pass, %u warn, %u fail, %u skip: %s\n",
                        rep.Count(CheckResult::kPass), rep.Count(CheckResult::kWarn),
                        rep.Count(CheckResult::kFail), rep.Count(CheckResult::kSkip),
                        rep.ExitCode() == 0 ? "no check failed (exit 0)"
                                            : "at least one check FAILED (exit 1)");
  return out;
}

std::string CheckReportJson(const TpmCheckReport& rep) {
  using Json = nlohmann::ordered_json;
  Json j;
  j["schema"] = kTpmCheckSchema;
  j["tool"] = absl::StrCat("hwid ", HWID_VERSION);
  j["time"] = rep.time;
  j["tcti"] = rep.tcti;
  j["options"] = {{"ca", rep.ca_path.empty() ? Json(nullptr) : Json(rep.ca_path)},
                  {"pcrs", rep.pcrs},
                  {"quick", rep.quick}};
  if (rep.tpm.reachable) {
    j["tpm"] = {{"manufacturer", rep.tpm.manufacturer},
                {"manufacturer_id", absl::StrFormat("0x%08x", rep.tpm.manufacturer_id)},
                {"vendor", rep.tpm.vendor},
                {"firmware", rep.tpm.firmware},
                {"spec", rep.tpm.spec},
                {"clock_ms", rep.tpm.clock_ms},
                {"reset_count", rep.tpm.reset_count},
                {"restart_count", rep.tpm.restart_count},
                {"safe", rep.tpm.safe}};
  } else {
    j["tpm"] = nullptr;
  }
  Json checks = Json::array();
  for (const auto& c : rep.checks) {
    Json item = {{"id", c.id},
                 {"group", c.group},
                 {"result", CheckResultName(c.result)},
                 {"detail", c.detail},
                 {"action", c.action}};
    Json metrics = Json::object();
    for (const auto& [k, v] : c.metrics) {
      metrics[k] = v;
    }
    item["metrics"] = metrics;
    checks.push_back(std::move(item));
  }
  j["checks"] = std::move(checks);
  j["summary"] = {{"pass", rep.Count(CheckResult::kPass)},
                  {"warn", rep.Count(CheckResult::kWarn)},
                  {"fail", rep.Count(CheckResult::kFail)},
                  {"skip", rep.Count(CheckResult::kSkip)},
                  {"exit_code", rep.ExitCode()}};
  // Replace invalid UTF-8 (vendor strings are raw bytes) instead of throwing.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace hwid::cli
