#include "attestor_plugin/attestation/server.h"

#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keystrength.h"
#include "tpm/wire/marshal.h"

namespace hwid::attestation {
namespace {

constexpr size_t kSecretBytes = 32;
constexpr size_t kNonceBytes = 32;
constexpr size_t kMaxSelectorValueChars = 128;

// Annotate prefixes a status message with the step that failed, keeping the code.
absl::Status Annotate(const absl::Status& s, absl::string_view step) {
  if (s.ok()) {
    return s;
  }
  return absl::Status(s.code(), absl::StrCat(step, ": ", s.message()));
}

absl::Status ConfigError(absl::string_view key, absl::string_view detail) {
  return absl::FailedPreconditionError(
      absl::StrCat("hwid_tpm server configuration: ", key, ": ", detail));
}

// ValidTrustDomain follows the SPIFFE ID specification: lower-case letters, digits, '.', '-' and
// '_', at most 255 characters.
bool ValidTrustDomain(absl::string_view td) {
  if (td.empty() || td.size() > 255) {
    return false;
  }
  return std::all_of(td.begin(), td.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
  });
}

absl::StatusOr<std::string> ParseHash(absl::string_view text) {
  std::string h = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (h.size() != 64 || !std::all_of(h.begin(), h.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text.substr(0, 80),
                     "' is not a SHA-256 hash in hex (64 hex digits of the EK public key DER)"));
  }
  return h;
}

// ParsePcrKey parses "sha256:7".
absl::StatusOr<std::pair<TPMI_ALG_HASH, uint32_t>> ParsePcrKey(absl::string_view key) {
  std::vector<absl::string_view> parts = absl::StrSplit(key, ':');
  uint32_t index = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &index) || index > wire::kMaxPcrIndex) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' is not <bank>:<index> (e.g. sha256:7, index 0-23)"));
  }
  ASSIGN_OR_RETURN(TPMI_ALG_HASH bank, wire::ParseHashAlg(std::string(parts[0])));
  return std::make_pair(bank, index);
}

std::string PcrLabel(TPMI_ALG_HASH bank, uint32_t index) {
  return absl::StrCat(wire::HashAlgName(bank), " PCR ", index);
}

std::set<std::pair<TPMI_ALG_HASH, uint32_t>> SelectionSet(const TPML_PCR_SELECTION& sel) {
  std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> v = wire::SelectedPcrs(sel);
  return std::set<std::pair<TPMI_ALG_HASH, uint32_t>>(v.begin(), v.end());
}

// SelectorSafe: selector values from certificates are emitted only when they are short printable
// ASCII (no control characters that could confuse logs or SPIRE's selector parsing).
bool SelectorSafe(absl::string_view v) {
  if (v.empty() || v.size() > kMaxSelectorValueChars) {
    return false;
  }
  return std::all_of(v.begin(), v.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

absl::StatusOr<wire::KeyAlg> AkKeyAlg(const TPMT_PUBLIC& ak) {
  if (ak.type == TPM2_ALG_RSA) {
    switch (ak.parameters.rsaDetail.keyBits) {
      case 2048:
        return wire::KeyAlg::kRsa2048;
      case 3072:
        return wire::KeyAlg::kRsa3072;
      default:
        break;
    }
  } else if (ak.type == TPM2_ALG_ECC) {
    switch (ak.parameters.eccDetail.curveID) {
      case TPM2_ECC_NIST_P256:
        return wire::KeyAlg::kEcP256;
      case TPM2_ECC_NIST_P384:
        return wire::KeyAlg::kEcP384;
      default:
        break;
    }
  }
  return absl::PermissionDeniedError(
      "AK policy: the AK key type/size is not one of ec-p256, ec-p384, rsa-2048, rsa-3072");
}

// UpRef returns a new owner of `cert` (shares the certificate).
OsslPtr<X509> UpRef(X509* cert) {
  X509_up_ref(cert);
  return OsslPtr<X509>(cert);
}

absl::StatusOr<Bytes> RandomBytes(size_t n, absl::string_view what) {
  Bytes out(n);
  if (RAND_bytes(out.data(), static_cast<int>(n)) != 1) {
    return OpenSslError(absl::StrCat("RAND_bytes for the ", what));
  }
  return out;
}

// kEkAlgNames are the EK types ek_algs accepts (EkAlgName's spelling of the keys PublicToEvp
// converts, RSA >= 2048 bits).
constexpr const char* kEkAlgNames[] = {"rsa-2048", "rsa-3072", "rsa-4096",
                                       "ecc-p256", "ecc-p384", "ecc-p521"};
constexpr char kDefaultEkAlg[] = "rsa-2048";

}  // namespace

std::string ServerLogDetail(const absl::Status& s) {
  absl::optional<absl::Cord> detail = s.GetPayload(kServerLogDetail);
  return detail.has_value() ? std::string(*detail) : std::string();
}

std::string EkAlgName(const TPMT_PUBLIC& ek) {
  if (ek.type == TPM2_ALG_RSA) {
    return absl::StrCat("rsa-", ek.parameters.rsaDetail.keyBits);
  }
  switch (ek.parameters.eccDetail.curveID) {
    case TPM2_ECC_NIST_P256:
      return "ecc-p256";
    case TPM2_ECC_NIST_P384:
      return "ecc-p384";
    case TPM2_ECC_NIST_P521:
      return "ecc-p521";
    default:
      return absl::StrCat("ecc-0x", absl::Hex(ek.parameters.eccDetail.curveID));
  }
}

absl::Status CheckEkAlgorithm(const ServerConfig& config, const TPMT_PUBLIC& ek) {
  const std::string alg = EkAlgName(ek);
  if (!config.ek_algs.count(alg)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "EK policy: the EK is ", alg, ", which is not in the configured ek_algs (",
        absl::StrJoin(config.ek_algs, ", "),
        "); one identity per TPM: the server accepts only these EK types (set the agent's ek "
        "to one of them, or add the type to ek_algs during a migration)"));
  }
  return absl::OkStatus();
}

absl::Status CheckEkStrength(const TPMT_PUBLIC& ek) { return wire::CheckKeyStrength(ek, "EK"); }

absl::StatusOr<std::shared_ptr<const ServerConfig>> ValidateServerConfig(
    const ServerConfigInput& in) {
  auto config = std::make_shared<ServerConfig>();
  if (!ValidTrustDomain(in.trust_domain)) {
    return ConfigError("trust_domain",
                       absl::StrCat("'", in.trust_domain.substr(0, 80),
                                    "' is not a SPIFFE trust domain name (lower-case letters, "
                                    "digits, '.', '-', '_'; 1-255 characters)"));
  }
  config->trust_domain = in.trust_domain;

  if (!in.ek_ca_bundle_paths.empty()) {
    wire::CaBundle merged;
    for (const std::string& path : in.ek_ca_bundle_paths) {
      absl::StatusOr<wire::CaBundle> b = wire::LoadTrustBundle(path);
      if (!b.ok()) {
        return ConfigError("ek_ca_bundle_paths", b.status().message());
      }
      for (auto& c : b->roots) {
        merged.roots.push_back(std::move(c));
      }
      for (auto& c : b->intermediates) {
        merged.intermediates.push_back(std::move(c));
      }
      merged.files.insert(merged.files.end(), b->files.begin(), b->files.end());
      merged.ignored_files += b->ignored_files;
    }
    config->ca = std::move(merged);
  }
  for (const std::string& h : in.ek_allowlist) {
    absl::StatusOr<std::string> parsed = ParseHash(h);
    if (!parsed.ok()) {
      return ConfigError("ek_allowlist", parsed.status().message());
    }
    config->allowlist.insert(*parsed);
  }
  if (!in.ek_allowlist_path.empty()) {
    absl::StatusOr<Bytes> data = ReadFile(in.ek_allowlist_path, 4u << 20);
    if (!data.ok()) {
      return ConfigError("ek_allowlist_path", data.status().message());
    }
    std::string text(data->begin(), data->end());
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      ++line_no;
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') {
        continue;
      }
      absl::StatusOr<std::string> parsed = ParseHash(line);
      if (!parsed.ok()) {
        return ConfigError("ek_allowlist_path", absl::StrCat(in.ek_allowlist_path, " line ",
                                                             line_no, ": ",
                                                             parsed.status().message()));
      }
      config->allowlist.insert(*parsed);
    }
    if (config->allowlist.empty()) {
      return ConfigError("ek_allowlist_path",
                         absl::StrCat(in.ek_allowlist_path, " holds no EK public key hash"));
    }
  }
  if (!config->ca.has_value() && config->allowlist.empty()) {
    return ConfigError("ek_ca_bundle_paths/ek_allowlist",
                       "neither an EK CA bundle nor an EK allowlist is configured: no TPM could "
                       "ever be trusted");
  }

  for (const std::string& a : in.ek_algs) {
    if (std::find(std::begin(kEkAlgNames), std::end(kEkAlgNames), a) == std::end(kEkAlgNames)) {
      return ConfigError("ek_algs", absl::StrCat("'", a.substr(0, 80), "' is not one of ",
                                                 absl::StrJoin(kEkAlgNames, ", ")));
    }
    if (!config->ek_algs.insert(a).second) {
      return ConfigError("ek_algs", absl::StrCat("'", a, "' is listed twice"));
    }
  }
  if (config->ek_algs.empty()) {
    config->ek_algs = {kDefaultEkAlg};
  }

  if (in.pcrs.empty()) {
    return ConfigError("pcrs", "the PCR selection is empty (e.g. sha256:0-7)");
  }
  absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(in.pcrs);
  if (!sel.ok()) {
    return ConfigError("pcrs", sel.status().message());
  }
  if (wire::SelectedPcrs(*sel).empty()) {
    return ConfigError("pcrs", absl::StrCat("'", in.pcrs, "' selects no PCR"));
  }
  config->required_pcrs = *sel;
  config->required_pcrs_text = wire::FormatPcrSelection(*sel);
  const auto selected = SelectionSet(*sel);

  for (const auto& [key, hex] : in.expected_pcrs) {
    absl::StatusOr<std::pair<TPMI_ALG_HASH, uint32_t>> pcr = ParsePcrKey(key);
    if (!pcr.ok()) {
      return ConfigError("expected_pcrs", pcr.status().message());
    }
    if (!selected.count(*pcr)) {
      return ConfigError("expected_pcrs",
                         absl::StrCat("'", key, "' is not in the quoted selection pcrs = '",
                                      config->required_pcrs_text,
                                      "', so it could never be checked"));
    }
    absl::StatusOr<Bytes> value = HexDecode(hex);
    if (!value.ok() || value->size() != wire::DigestSize(pcr->first)) {
      return ConfigError("expected_pcrs",
                         absl::StrCat("'", key, "': the value must be ",
                                      wire::DigestSize(pcr->first), " bytes in hex"));
    }
    // Keys are free text ("sha256:7", "SHA256:07"): two spellings of one PCR would make the
    // policy depend on map order, so they are refused.
    if (!config->expected_pcrs[pcr->first].emplace(pcr->second, std::move(*value)).second) {
      return ConfigError("expected_pcrs",
                         absl::StrCat("'", key, "' names ", PcrLabel(pcr->first, pcr->second),
                                      ", which another key already sets (one value per PCR)"));
    }
  }

  if (in.ak_algs.empty()) {
    config->ak_algs = {wire::KeyAlg::kEcP256, wire::KeyAlg::kEcP384, wire::KeyAlg::kRsa2048,
                       wire::KeyAlg::kRsa3072};
  }
  for (const std::string& a : in.ak_algs) {
    absl::StatusOr<wire::KeyAlg> alg = wire::ParseKeyAlg(a);
    if (!alg.ok()) {
      return ConfigError("ak_algs", alg.status().message());
    }
    config->ak_algs.insert(*alg);
  }
  config->verification_time = in.verification_time;
  config->certified_keys_dir = in.certified_keys_dir;
  ASSIGN_OR_RETURN(config->clock_state,
                   NewClockStateChecker({in.clock_state, in.clock_state_path,
                                         in.clock_state_conninfo_file, in.clock_state_conninfo_env,
                                         in.on_store_unavailable}));
  if (in.attestation_timeout_seconds < 1 || in.attestation_timeout_seconds > 3600) {
    return ConfigError("attestation_timeout_seconds",
                       absl::StrCat(in.attestation_timeout_seconds, " is not within 1-3600"));
  }
  config->attestation_timeout_seconds = in.attestation_timeout_seconds;
  return std::shared_ptr<const ServerConfig>(std::move(config));
}

absl::StatusOr<std::string> EkPublicKeyHash(const TPMT_PUBLIC& ek) {
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> key, wire::PublicToEvp(ek));
  return EkPublicKeyHash(key.get());
}

absl::StatusOr<std::string> EkPublicKeyHash(const EVP_PKEY* ek_key) {
  ASSIGN_OR_RETURN(Bytes der, wire::PublicKeyDer(ek_key));
  ASSIGN_OR_RETURN(Bytes h, wire::Hash(TPM2_ALG_SHA256, der));
  return HexEncode(h);
}

absl::Status CheckEkPublicArea(const TPMT_PUBLIC& ek) {
  if (ek.type != TPM2_ALG_RSA && ek.type != TPM2_ALG_ECC) {
    return absl::PermissionDeniedError(absl::StrCat(
        "EK policy: the EK type is ", wire::AlgName(ek.type), ", not rsa or ecc"));
  }
  struct Want {
    TPMA_OBJECT bit;
    bool set;
    const char* name;
  };
  static constexpr Want kWant[] = {
      {TPMA_OBJECT_FIXEDTPM, true, "fixedTPM"},
      {TPMA_OBJECT_FIXEDPARENT, true, "fixedParent"},
      {TPMA_OBJECT_RESTRICTED, true, "restricted"},
      {TPMA_OBJECT_DECRYPT, true, "decrypt"},
      {TPMA_OBJECT_SIGN_ENCRYPT, false, "sign"},
  };
  for (const Want& w : kWant) {
    const bool is_set = (ek.objectAttributes & w.bit) != 0;
    if (is_set != w.set) {
      return absl::PermissionDeniedError(
          absl::StrCat("EK policy: attribute ", w.name, w.set ? " is not set" : " is set",
                       " (an EK is a fixedTPM restricted decryption key)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EkTrust> VerifyEkTrust(const ServerConfig& config, const TPMT_PUBLIC& ek,
                                      ByteSpan certificate_der,
                                      absl::Span<const Bytes> intermediates_der) {
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> key, wire::PublicToEvp(ek));
  return VerifyEkTrust(config, key.get(), certificate_der, intermediates_der);
}

absl::StatusOr<EkTrust> VerifyEkTrust(const ServerConfig& config, const EVP_PKEY* ek_key,
                                      ByteSpan certificate_der,
                                      absl::Span<const Bytes> intermediates_der) {
  EkTrust trust;
  ASSIGN_OR_RETURN(trust.pubhash, EkPublicKeyHash(ek_key));
  const bool allowlisted = config.allowlist.count(trust.pubhash) > 0;

  absl::Status cert_status = absl::PermissionDeniedError(absl::StrCat(
      "EK trust: no EK certificate was presented and the EK public key hash ", trust.pubhash,
      " is not in the allowlist"));
  if (!certificate_der.empty() && config.ca.has_value()) {
    cert_status = [&]() -> absl::Status {
      absl::StatusOr<OsslPtr<X509>> cert = wire::ParseCertificateDer(certificate_der);
      if (!cert.ok()) {
        return Annotate(cert.status(), "EK certificate");
      }
      wire::CaBundle bundle;
      for (const auto& r : config.ca->roots) {
        bundle.roots.push_back(UpRef(r.get()));
      }
      for (const auto& i : config.ca->intermediates) {
        bundle.intermediates.push_back(UpRef(i.get()));
      }
      for (const Bytes& der : intermediates_der) {
        absl::StatusOr<OsslPtr<X509>> inter = wire::ParseCertificateDer(der);
        if (!inter.ok()) {
          return Annotate(inter.status(), "EK intermediate certificate from the agent");
        }
        bundle.intermediates.push_back(std::move(*inter));
      }
      RETURN_IF_ERROR(wire::VerifyEkCertificate(cert->get(), bundle, config.verification_time));
      RETURN_IF_ERROR(wire::CheckCertificateMatchesKey(cert->get(), ek_key));
      absl::StatusOr<wire::TcgDeviceInfo> device = wire::ParseTcgDeviceInfo(cert->get());
      if (device.ok()) {
        trust.device = std::move(*device);
      }
      trust.issuer_cn = wire::IssuerCommonName(cert->get());
      return absl::OkStatus();
    }();
    if (cert_status.ok()) {
      trust.via_certificate = true;
      return trust;
    }
  } else if (!certificate_der.empty()) {
    cert_status = absl::PermissionDeniedError(absl::StrCat(
        "EK trust: an EK certificate was presented but no EK CA bundle is configured, and the EK "
        "public key hash ",
        trust.pubhash, " is not in the allowlist"));
  }
  if (allowlisted) {
    trust.device.reset();
    trust.issuer_cn.clear();
    return trust;
  }
  return cert_status;
}

absl::StatusOr<wire::KeyAlg> CheckAkPolicy(const ServerConfig& config, const TPMT_PUBLIC& ak) {
  absl::Status attrs = wire::CheckAkAttributes(ak);
  if (!attrs.ok()) {
    // A well-formed public area that is not acceptable as an attestation key: a failed policy.
    return absl::PermissionDeniedError(absl::StrCat("AK policy: ", attrs.message()));
  }
  RETURN_IF_ERROR(wire::CheckKeyStrength(ak, "AK"));
  ASSIGN_OR_RETURN(wire::KeyAlg alg, AkKeyAlg(ak));
  if (!config.ak_algs.count(alg)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "AK policy: AK algorithm ", wire::KeyAlgName(alg), " is not in the configured ak_algs"));
  }
  return alg;
}

absl::Status CheckActivationSecret(ByteSpan expected, ByteSpan presented) {
  if (expected.empty() || !ConstantTimeEquals(expected, presented)) {
    return absl::PermissionDeniedError(
        "credential activation: the returned secret does not match the one bound to the AK (the "
        "AK is not resident in the TPM of this EK, or the response belongs to another session)");
  }
  return absl::OkStatus();
}

absl::StatusOr<wire::PcrValues> DecodePcrValues(absl::Span<const PcrValue> values) {
  wire::PcrValues out;
  for (const PcrValue& v : values) {
    const auto bank = static_cast<TPMI_ALG_HASH>(v.bank);
    const size_t size = v.bank <= 0xffff ? wire::DigestSize(bank) : 0;
    if (size == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("PCR values: bank 0x", absl::Hex(v.bank), " is not a supported hash"));
    }
    if (v.index > wire::kMaxPcrIndex) {
      return absl::InvalidArgumentError(
          absl::StrCat("PCR values: ", wire::HashAlgName(bank), " PCR index ", v.index,
                       " is out of range 0-", wire::kMaxPcrIndex));
    }
    if (v.digest.size() != size) {
      return absl::InvalidArgumentError(absl::StrCat("PCR values: ", PcrLabel(bank, v.index),
                                                     " has ", v.digest.size(),
                                                     " bytes, the bank's digest has ", size));
    }
    if (!out[bank].emplace(v.index, v.digest).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("PCR values: ", PcrLabel(bank, v.index), " is listed twice"));
    }
  }
  return out;
}

absl::Status CheckQuotedSelection(const TPML_PCR_SELECTION& quoted,
                                  const TPML_PCR_SELECTION& required) {
  if (SelectionSet(quoted) != SelectionSet(required)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "PCR selection: the quote covers '", wire::FormatPcrSelection(quoted),
        "' but the server requires exactly '", wire::FormatPcrSelection(required), "'"));
  }
  return absl::OkStatus();
}

absl::Status CheckPcrPolicy(const wire::PcrValues& expected, const wire::PcrValues& quoted) {
  for (const auto& [bank, pcrs] : expected) {
    for (const auto& [index, want] : pcrs) {
      auto b = quoted.find(bank);
      if (b == quoted.end() || !b->second.count(index)) {
        return absl::PermissionDeniedError(absl::StrCat(
            "PCR policy: ", PcrLabel(bank, index), " has an expected value but was not quoted"));
      }
      const Bytes& got = b->second.at(index);
      if (got != want) {
        // The golden value is the operator's, not the agent's: log only (see server.h).
        absl::Status st = absl::PermissionDeniedError(
            absl::StrCat("PCR policy: ", PcrLabel(bank, index), " is ", HexEncode(got),
                         ", which is not the configured expected value"));
        st.SetPayload(kServerLogDetail,
                      absl::Cord(absl::StrCat("expected_pcrs ", wire::HashAlgName(bank), ":",
                                              index, " = ", HexEncode(want))));
        return st;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerSession>> ServerSession::New(
    std::shared_ptr<const ServerConfig> config) {
  if (config == nullptr) {
    return absl::FailedPreconditionError(
        "hwid_tpm server plugin is not configured (Configure has not succeeded)");
  }
  return std::unique_ptr<ServerSession>(new ServerSession(std::move(config)));
}

absl::StatusOr<std::unique_ptr<ServerSession>> ServerSession::NewWithFixedRandomnessForBenchmark(
    std::shared_ptr<const ServerConfig> config, ByteSpan secret, ByteSpan nonce) {
  if (secret.size() != kSecretBytes || nonce.size() != kNonceBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "benchmark session: the fixed secret and nonce must be ", kSecretBytes, " and ",
        kNonceBytes, " bytes (got ", secret.size(), " and ", nonce.size(), ")"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ServerSession> session, New(std::move(config)));
  session->fixed_secret_for_benchmark_ = SecureBytes(secret.begin(), secret.end());
  session->fixed_nonce_for_benchmark_ = Bytes(nonce.begin(), nonce.end());
  return session;
}

ServerSession::ServerSession(std::shared_ptr<const ServerConfig> config)
    : config_(std::move(config)) {}

absl::StatusOr<Bytes> ServerSession::HandlePayload(ByteSpan payload) {
  if (state_ != State::kAwaitingPayload) {
    state_ = State::kFailed;
    return absl::InvalidArgumentError(
        "attestation protocol: unexpected second attestation payload (one payload and one "
        "challenge round per attestation)");
  }
  absl::StatusOr<Bytes> challenge = HandlePayloadImpl(payload);
  state_ = challenge.ok() ? State::kAwaitingResponse : State::kFailed;
  return challenge;
}

absl::StatusOr<AttestationResult> ServerSession::HandleChallengeResponse(ByteSpan response) {
  if (state_ != State::kAwaitingResponse) {
    const bool before = state_ == State::kAwaitingPayload;
    state_ = State::kFailed;
    return absl::InvalidArgumentError(
        before ? "attestation protocol: challenge response before the attestation payload"
               : "attestation protocol: unexpected extra challenge response (the attestation "
                 "already ended; one challenge round per attestation)");
  }
  absl::StatusOr<AttestationResult> result = HandleResponseImpl(response);
  state_ = result.ok() ? State::kDone : State::kFailed;
  // The secret and nonce are single-use whatever the outcome.
  secret_.clear();
  secret_.shrink_to_fit();
  nonce_.clear();
  certify_nonce_.clear();
  return result;
}

absl::StatusOr<std::vector<Bytes>> VerifyCertifiedKeys(const TPMT_PUBLIC& ak,
                                                       absl::Span<const CertifiedKey> keys,
                                                       ByteSpan certify_nonce) {
  std::vector<Bytes> out;
  if (keys.empty()) {
    return out;
  }
  RETURN_IF_ERROR(wire::CheckAkAttributes(ak));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> ak_key, wire::PublicToEvp(ak));  // once for all keys
  for (size_t i = 0; i < keys.size(); ++i) {
    absl::StatusOr<wire::VerifiedCertify> v =
        wire::VerifyCertify(ak, ak_key.get(), keys[i].key_public, keys[i].certify_info,
                            keys[i].signature, certify_nonce);
    if (!v.ok()) {
      return absl::Status(v.status().code(), absl::StrCat("agent key binding: certified key ", i,
                                                          ": ", v.status().message()));
    }
    out.push_back(std::move(v->pkix_der));
  }
  return out;
}

absl::StatusOr<Bytes> ServerSession::HandlePayloadImpl(ByteSpan payload) {
  ASSIGN_OR_RETURN(AttestationPayload p, DecodePayload(payload));
  version_ = p.version;
  absl::StatusOr<TPM2B_PUBLIC> ek = wire::ParsePublic(p.ek_public);
  if (!ek.ok()) {
    return Annotate(ek.status(), "EK public area");
  }
  absl::StatusOr<TPM2B_PUBLIC> ak = wire::ParsePublic(p.ak_public);
  if (!ak.ok()) {
    return Annotate(ak.status(), "AK public area");
  }
  ek_ = ek->publicArea;
  ak_ = ak->publicArea;
  RETURN_IF_ERROR(CheckEkPublicArea(ek_));
  RETURN_IF_ERROR(CheckEkStrength(ek_));
  RETURN_IF_ERROR(CheckEkAlgorithm(*config_, ek_));
  // The EK is converted to an OpenSSL key (with OpenSSL's public-key check) once per session and
  // shared by the EK hash, the certificate key match and MakeCredential.
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> ek_key, wire::PublicToEvp(ek_));
  ASSIGN_OR_RETURN(ek_trust_,
                   VerifyEkTrust(*config_, ek_key.get(), p.ek_certificate, p.ek_intermediates));
  ASSIGN_OR_RETURN(ak_alg_, CheckAkPolicy(*config_, ak_));
  ASSIGN_OR_RETURN(Bytes ak_name, wire::ObjectName(ak_));

  const size_t secret_size = std::min(kSecretBytes, wire::DigestSize(ek_.nameAlg));
  if (fixed_secret_for_benchmark_.has_value()) {
    // Benchmark seam only (NewWithFixedRandomnessForBenchmark); see server.h.
    if (fixed_secret_for_benchmark_->size() != secret_size) {
      return absl::FailedPreconditionError(
          "benchmark session: the fixed secret does not fit this EK's name algorithm");
    }
    secret_ = *fixed_secret_for_benchmark_;
    nonce_ = *fixed_nonce_for_benchmark_;
    if (version_ == kProtocolVersionCertify) {
      // Deterministic too (recorded vectors), and never equal to the quote nonce.
      certify_nonce_ = nonce_;
      for (uint8_t& b : certify_nonce_) b ^= 0x5c;
    }
  } else {
    secret_.assign(secret_size, 0);
    if (secret_size == 0 || RAND_bytes(secret_.data(), static_cast<int>(secret_size)) != 1) {
      return OpenSslError("RAND_bytes for the credential secret");
    }
    ASSIGN_OR_RETURN(nonce_, RandomBytes(kNonceBytes, "quote nonce"));
    if (version_ == kProtocolVersionCertify) {
      ASSIGN_OR_RETURN(certify_nonce_, RandomBytes(kNonceBytes, "certify nonce"));
    }
  }
  absl::StatusOr<wire::Credential> cred = wire::MakeCredential(ek_, ek_key.get(), AsSpan(secret_), ak_name);
  if (!cred.ok()) {
    return Annotate(cred.status(), "credential activation challenge for the EK");
  }
  Challenge c;
  c.version = version_;
  c.certify_nonce = certify_nonce_;
  c.credential_blob = std::move(cred->id_object);
  c.encrypted_secret = std::move(cred->encrypted_secret);
  c.nonce = nonce_;
  c.pcr_selection = config_->required_pcrs_text;
  return EncodeChallenge(c);
}

absl::StatusOr<AttestationResult> ServerSession::HandleResponseImpl(ByteSpan response) {
  ASSIGN_OR_RETURN(ChallengeResponse r, DecodeResponse(response));
  if (r.version != version_) {
    return absl::InvalidArgumentError(absl::StrCat("challenge response: protocol version ",
                                                   r.version, " in a version ", version_,
                                                   " session"));
  }
  RETURN_IF_ERROR(CheckActivationSecret(AsSpan(secret_), AsSpan(r.secret)));
  ASSIGN_OR_RETURN(wire::PcrValues pcrs, DecodePcrValues(r.pcrs));
  absl::StatusOr<wire::VerifiedQuote> quote =
      wire::VerifyQuote(ak_, r.quote_attest, r.quote_signature, nonce_, pcrs);
  if (!quote.ok()) {
    return quote.status().code() == absl::StatusCode::kPermissionDenied ||
                   quote.status().code() == absl::StatusCode::kInvalidArgument
               ? quote.status()
               : Annotate(quote.status(), "quote");
  }
  RETURN_IF_ERROR(
      CheckQuotedSelection(quote->attest.attested.quote.pcrSelect, config_->required_pcrs));
  RETURN_IF_ERROR(CheckPcrPolicy(config_->expected_pcrs, quote->pcrs));
  // The AK is proven to be this TPM's (activation) before its certifications mean anything.
  ASSIGN_OR_RETURN(std::vector<Bytes> certified,
                   VerifyCertifiedKeys(ak_, r.certified_keys, certify_nonce_));

  AttestationResult out;
  out.clock_state = "not configured";
  if (config_->clock_state != nullptr) {
    // Last: the record moves only for an attestation that passed every other check.
    bool stored = false;
    ASSIGN_OR_RETURN(ClockRecord clock, ClockRecordFromQuote(ak_, quote->attest));
    RETURN_IF_ERROR(config_->clock_state->Advance(ek_trust_.pubhash, clock, &stored));
    out.clock_state = stored ? "recorded" : "unchecked (store unavailable, fail_open)";
  }
  out.certified_keys = std::move(certified);
  out.ek_pubhash = ek_trust_.pubhash;
  out.ek_trust = ek_trust_.via_certificate ? "certificate" : "allowlist";
  out.spiffe_id = absl::StrCat("spiffe://", config_->trust_domain, "/spire/agent/hwid_tpm/",
                               ek_trust_.pubhash);
  std::set<std::string> selectors;
  selectors.insert(absl::StrCat("ek_pubhash:", ek_trust_.pubhash));
  selectors.insert(absl::StrCat("ek_trust:", out.ek_trust));
  selectors.insert(absl::StrCat("ek_alg:", EkAlgName(ek_)));
  if (ek_trust_.via_certificate) {
    if (ek_trust_.device.has_value()) {
      const wire::TcgDeviceInfo& d = *ek_trust_.device;
      if (SelectorSafe(d.manufacturer)) {
        selectors.insert(absl::StrCat("ek_manufacturer:", d.manufacturer));
      }
      if (SelectorSafe(d.model)) {
        selectors.insert(absl::StrCat("ek_model:", d.model));
      }
      if (SelectorSafe(d.version)) {
        selectors.insert(absl::StrCat("ek_version:", d.version));
      }
    }
    if (SelectorSafe(ek_trust_.issuer_cn)) {
      selectors.insert(absl::StrCat("ek_issuer_cn:", ek_trust_.issuer_cn));
    }
  }
  selectors.insert(absl::StrCat("ak_alg:", wire::KeyAlgName(ak_alg_)));
  if (!out.certified_keys.empty()) {
    selectors.insert("agent_key:tpm");
  }
  selectors.insert(absl::StrCat("pcr_selection:", config_->required_pcrs_text));
  for (const auto& [bank, values] : quote->pcrs) {
    for (const auto& [index, digest] : values) {
      selectors.insert(
          absl::StrCat("pcr:", wire::HashAlgName(bank), ":", index, ":", HexEncode(digest)));
    }
  }
  out.selectors.assign(selectors.begin(), selectors.end());
  out.can_reattest = true;
  return out;
}

}  // namespace hwid::attestation
