#include "attestor_plugin/attestation/agent.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/messages.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"

namespace hwid::attestation {
namespace {

absl::Status ConfigError(absl::string_view key, absl::string_view detail) {
  return absl::FailedPreconditionError(
      absl::StrCat("hwid_tpm agent configuration: ", key, ": ", detail));
}

absl::Status Annotate(const absl::Status& s, absl::string_view step) {
  if (s.ok()) {
    return s;
  }
  return absl::Status(s.code(), absl::StrCat(step, ": ", s.message()));
}

}  // namespace

absl::StatusOr<AgentConfig> ValidateAgentConfig(const AgentConfigInput& in) {
  AgentConfig c;
  c.tcti = in.tcti;
  if (c.tcti.empty()) {
    return ConfigError("tcti", "is empty (e.g. device:/dev/tpmrm0)");
  }
  if (in.ek == "auto") {
    c.ek.reset();
  } else if (in.ek == "rsa") {
    c.ek = wire::EkType::kRsa2048;
  } else if (in.ek == "ecc") {
    c.ek = wire::EkType::kEccP256;
  } else {
    absl::StatusOr<wire::EkType> t = wire::ParseEkType(in.ek);
    if (!t.ok()) {
      return ConfigError("ek", absl::StrCat("'", in.ek, "' is not auto, rsa, ecc or a template "
                                            "name: ", t.status().message()));
    }
    c.ek = *t;
  }
  if (!in.pcrs.empty()) {
    absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(in.pcrs);
    if (!sel.ok()) {
      return ConfigError("pcrs", sel.status().message());
    }
    c.pcrs = *sel;
  }
  absl::StatusOr<uint32_t> handle = tpm::ParseHandle(in.ak_handle);
  if (!handle.ok()) {
    return ConfigError("ak_handle", handle.status().message());
  }
  if (*handle < 0x81000000 || *handle > 0x817fffff) {
    return ConfigError("ak_handle", absl::StrCat(in.ak_handle,
                                                 " is not a persistent object handle "
                                                 "(0x81000000-0x817fffff)"));
  }
  c.ak_handle = *handle;
  absl::StatusOr<wire::KeyAlg> alg = wire::ParseKeyAlg(in.ak_alg);
  if (!alg.ok()) {
    return ConfigError("ak_alg", alg.status().message());
  }
  c.ak_alg = *alg;
  if (!in.keymanager_key_dir.empty() && in.keymanager_key_dir[0] != '/') {
    return ConfigError("keymanager_key_dir",
                       absl::StrCat("must be an absolute path, got '", in.keymanager_key_dir, "'"));
  }
  c.keymanager_key_dir = in.keymanager_key_dir;
  return c;
}

absl::StatusOr<std::vector<wire::TpmKeyFile>> ReadKeyManagerKeys(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (d == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "keymanager_key_dir ", dir, " cannot be read: ", std::strerror(errno),
        " (it must be the key_dir of the agent's hwid KeyManager)"));
  }
  std::vector<std::pair<int64_t, std::string>> files;
  while (struct dirent* de = readdir(d.get())) {
    const absl::string_view name = de->d_name;
    if (name.empty() || name[0] == '.' || !absl::EndsWith(name, ".tss2.pem")) {
      continue;
    }
    const std::string path = absl::StrCat(dir, "/", name);
    struct stat st = {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    files.emplace_back(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                       path);
  }
  std::sort(files.rbegin(), files.rend());  // newest first
  std::vector<wire::TpmKeyFile> out;
  for (const auto& [mtime, path] : files) {
    if (out.size() == kMaxCertifiedKeys) {
      break;
    }
    absl::StatusOr<Bytes> bytes = ReadFile(path, 64 << 10);
    if (!bytes.ok()) {
      continue;
    }
    absl::StatusOr<wire::TpmKeyFile> kf = wire::ParseTpmKeyFile(*bytes);
    if (kf.ok()) {
      out.push_back(*std::move(kf));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<AgentResponder>> AgentResponder::New(const AgentConfig& config) {
  absl::StatusOr<std::unique_ptr<tpm::Tpm>> t = tpm::Tpm::Open(config.tcti);
  if (!t.ok()) {
    return Annotate(t.status(), absl::StrCat("opening the TPM (tcti ", config.tcti, ")"));
  }
  return std::unique_ptr<AgentResponder>(new AgentResponder(config, std::move(*t)));
}

AgentResponder::AgentResponder(AgentConfig config, std::unique_ptr<tpm::Tpm> tpm)
    : config_(std::move(config)), tpm_(std::move(tpm)) {}

absl::Status AgentResponder::EnsureKeys() {
  if (!ek_.has_value()) {
    wire::EkType type = wire::EkType::kRsa2048;
    Bytes cert;
    absl::StatusOr<std::vector<tpm::EkCertificate>> certs = tpm_->ReadEkCertificates();
    if (!certs.ok()) {
      return Annotate(certs.status(), "reading the EK certificates");
    }
    // An EK certificate index that holds no certificate is as good as absent here: the server
    // then decides by its allowlist. The reason goes to the plugin's log (TakeWarnings).
    for (const tpm::EkCertificate& c : *certs) {
      if (!c.error.ok()) {
        warnings_.push_back(absl::StrCat("EK certificate skipped: ", c.error.message(),
                                         " (hwid tpm check shows the details)"));
      }
    }
    certs->erase(std::remove_if(certs->begin(), certs->end(),
                                [](const tpm::EkCertificate& c) { return !c.error.ok(); }),
                 certs->end());
    if (config_.ek.has_value()) {
      type = *config_.ek;
      for (tpm::EkCertificate& c : *certs) {
        if (c.type == type) {
          cert = std::move(c.der);
          break;
        }
      }
    } else {
      // auto: the first EK type with a certificate in a fixed order: RSA-2048 (L-1, the one type
      // every certified TPM ships and the server's default ek_algs), ECC P-256 (L-2), then the
      // high range. Deterministic, so a node keeps its ID; the server refuses a type outside its
      // ek_algs (one identity per TPM), so a fleet on another type sets `ek` explicitly.
      std::vector<wire::EkType> order = {wire::EkType::kRsa2048, wire::EkType::kEccP256};
      for (const wire::EkSpec& s : wire::AllEkSpecs()) {
        if (s.type != wire::EkType::kEccP256 && s.type != wire::EkType::kRsa2048) {
          order.push_back(s.type);
        }
      }
      bool found = false;
      for (wire::EkType t : order) {
        for (tpm::EkCertificate& c : *certs) {
          if (c.type == t) {
            type = t;
            cert = std::move(c.der);
            found = true;
            break;
          }
        }
        if (found) {
          break;
        }
      }
    }
    absl::StatusOr<tpm::Ek> ek = tpm_->LoadEk(type);
    if (!ek.ok()) {
      return Annotate(ek.status(),
                      absl::StrCat("loading the EK (", wire::EkSpecFor(type).name, ")"));
    }
    // The EK certificate chain in NV (0x01c00100-0x01c001ff): untrusted path-building helpers
    // for the server, sent with the certificate. Indices without a certificate are skipped, and
    // so is a chain range the TPM cannot enumerate: the server's bundle may not need them.
    std::vector<Bytes> intermediates;
    if (!cert.empty()) {
      absl::StatusOr<std::vector<tpm::NvChainCertificate>> chain = tpm_->ReadEkChainCertificates();
      if (absl::IsUnavailable(chain.status())) {
        return Annotate(chain.status(), "reading the EK certificate chain from NV");
      }
      if (chain.ok()) {
        for (tpm::NvChainCertificate& c : *chain) {
          if (c.error.ok() && intermediates.size() < kMaxIntermediates) {
            intermediates.push_back(std::move(c.der));
          }
        }
      }
    }
    ek_ = std::move(*ek);
    ek_certificate_ = std::move(cert);
    ek_intermediates_ = std::move(intermediates);
  }
  if (!ak_.has_value()) {
    absl::StatusOr<tpm::LoadedKey> ak = tpm_->EnsureAk(config_.ak_alg, config_.ak_handle);
    if (!ak.ok()) {
      return Annotate(ak.status(), absl::StrCat("loading or creating the AK at ",
                                                tpm::FormatHandle(config_.ak_handle)));
    }
    ak_ = std::move(*ak);
  }
  return absl::OkStatus();
}

absl::StatusOr<Bytes> AgentResponder::MakePayload() {
  RETURN_IF_ERROR(EnsureKeys());
  AttestationPayload p;
  version_ = config_.keymanager_key_dir.empty() ? kProtocolVersion : kProtocolVersionCertify;
  p.version = version_;
  ASSIGN_OR_RETURN(p.ek_public, wire::MarshalPublic(ek_->pub));
  ASSIGN_OR_RETURN(p.ak_public, wire::MarshalPublic(ak_->pub));
  p.ek_certificate = ek_certificate_;
  p.ek_intermediates = ek_intermediates_;
  ASSIGN_OR_RETURN(Bytes out, EncodePayload(p));
  awaiting_challenge_ = true;
  return out;
}

absl::StatusOr<Bytes> AgentResponder::RespondToChallenge(ByteSpan challenge) {
  if (!awaiting_challenge_ || !ek_.has_value() || !ak_.has_value()) {
    return absl::FailedPreconditionError(
        "attestation protocol: a challenge arrived before the attestation payload was sent");
  }
  awaiting_challenge_ = false;  // one challenge per payload
  ASSIGN_OR_RETURN(Challenge c, DecodeChallenge(challenge));
  if (c.version != version_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "challenge: protocol version ", c.version, " answers a version ", version_,
        " payload (a server without agent-key binding? update its hwid_tpm plugin)"));
  }
  absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(c.pcr_selection);
  if (!sel.ok()) {
    return Annotate(sel.status(), "challenge: PCR selection");
  }
  if (config_.pcrs.has_value()) {
    std::vector<std::pair<TPMI_ALG_HASH, uint32_t>> allowed_v = wire::SelectedPcrs(*config_.pcrs);
    std::set<std::pair<TPMI_ALG_HASH, uint32_t>> allowed(allowed_v.begin(), allowed_v.end());
    for (const auto& pcr : wire::SelectedPcrs(*sel)) {
      if (!allowed.count(pcr)) {
        return absl::PermissionDeniedError(absl::StrCat(
            "challenge: the server asks to quote ", wire::HashAlgName(pcr.first), " PCR ",
            pcr.second, ", outside the agent's configured pcrs '",
            wire::FormatPcrSelection(*config_.pcrs), "'"));
      }
    }
  }
  absl::StatusOr<SecureBytes> secret =
      tpm_->ActivateCredential(*ak_, *ek_, c.credential_blob, c.encrypted_secret);
  if (!secret.ok()) {
    return Annotate(secret.status(), "TPM2_ActivateCredential of the server's challenge");
  }
  absl::StatusOr<tpm::Quote> quote = tpm_->QuotePcrs(*ak_, c.nonce, *sel);
  if (!quote.ok()) {
    return Annotate(quote.status(), absl::StrCat("TPM2_Quote of ", c.pcr_selection));
  }
  ChallengeResponse r;
  r.version = version_;
  if (version_ == kProtocolVersionCertify) {
    ASSIGN_OR_RETURN(std::vector<wire::TpmKeyFile> keys,
                     ReadKeyManagerKeys(config_.keymanager_key_dir));
    std::vector<absl::StatusOr<tpm::Certification>> certs =
        tpm_->CertifyAll(*ak_, keys, c.certify_nonce);
    for (size_t i = 0; i < keys.size(); ++i) {
      absl::StatusOr<tpm::Certification>& cert = certs[i];
      if (!cert.ok()) {
        const absl::StatusCode code = cert.status().code();
        if (code == absl::StatusCode::kUnavailable ||
            code == absl::StatusCode::kResourceExhausted ||
            code == absl::StatusCode::kInternal) {
          return Annotate(cert.status(), "TPM2_Certify of a KeyManager key with the AK");
        }
        // A key file this TPM cannot load (left from before a TPM clear, or from another TPM)
        // cannot be the SVID key SPIRE just generated here; certifying the others weakens
        // nothing, since the composer refuses any key without a certification.
        continue;
      }
      r.certified_keys.push_back(
          CertifiedKey{keys[i].pub, std::move(cert->attest), std::move(cert->signature)});
    }
  }
  r.secret = std::move(*secret);
  r.quote_attest = std::move(quote->attest);
  r.quote_signature = std::move(quote->signature);
  for (const auto& [bank, values] : quote->pcrs) {
    for (const auto& [index, digest] : values) {
      r.pcrs.push_back(PcrValue{bank, index, digest});
    }
  }
  return EncodeResponse(r);
}

absl::StatusOr<Bytes> AgentResponder::AkName() const {
  if (!ak_.has_value()) {
    return absl::FailedPreconditionError("the AK is not loaded yet (call MakePayload first)");
  }
  return wire::ObjectName(ak_->pub.publicArea);
}

std::optional<wire::EkType> AgentResponder::ek_type() const {
  if (!ek_.has_value()) {
    return std::nullopt;
  }
  return ek_->type;
}

}  // namespace hwid::attestation
