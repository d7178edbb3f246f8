#include "attestor_plugin/attestation/messages.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/hwid_tpm.pb.h"
#include "common/status_macros.h"

namespace hwid::attestation {
namespace {

namespace pb = ::hwid::attestation::v1;

absl::Status Malformed(absl::string_view message, absl::string_view detail) {
  return absl::InvalidArgumentError(absl::StrCat("malformed ", message, ": ", detail));
}

// CheckField bounds one bytes/string field; `required` fields must be non-empty.
absl::Status CheckField(absl::string_view message, absl::string_view field, size_t size,
                        size_t max, bool required) {
  if (required && size == 0) {
    return Malformed(message, absl::StrCat("field ", field, " is missing"));
  }
  if (size > max) {
    return Malformed(message, absl::StrCat("field ", field, " has ", size,
                                            " bytes, more than the limit of ", max));
  }
  return absl::OkStatus();
}

// ParseBounded checks the size bound before the protobuf parser sees the bytes, then rejects
// parse failures, unknown fields (a different protocol revision must not be half-understood) and
// a wrong version.
template <typename M>
absl::Status ParseBounded(ByteSpan bytes, size_t max, absl::string_view message, M* out) {
  if (bytes.empty()) {
    return Malformed(message, "empty message");
  }
  if (bytes.size() > max) {
    return Malformed(message, absl::StrCat(bytes.size(), " bytes, more than the limit of ", max));
  }
  if (!out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Malformed(message, "not a valid hwid.attestation.v1 protobuf encoding");
  }
  if (!out->GetReflection()->GetUnknownFields(*out).empty()) {
    return Malformed(message, "unknown fields (a different protocol revision?)");
  }
  if (out->version() != kProtocolVersion && out->version() != kProtocolVersionCertify) {
    return Malformed(message, absl::StrCat("protocol version ", out->version(),
                                            " is not supported (this side speaks versions ",
                                            kProtocolVersion, " and ", kProtocolVersionCertify,
                                            ")"));
  }
  return absl::OkStatus();
}

template <typename M>
absl::StatusOr<Bytes> Serialize(const M& m, absl::string_view message) {
  std::string out;
  if (!m.SerializeToString(&out)) {
    return absl::InternalError(absl::StrCat("cannot serialise the ", message));
  }
  return Bytes(out.begin(), out.end());
}

absl::Status CheckVersion(absl::string_view msg, uint32_t version) {
  if (version != kProtocolVersion && version != kProtocolVersionCertify) {
    return Malformed(msg, absl::StrCat("protocol version ", version, " is not supported"));
  }
  return absl::OkStatus();
}

absl::Status CheckPayload(const AttestationPayload& m) {
  constexpr absl::string_view kMsg = "attestation payload";
  RETURN_IF_ERROR(CheckVersion(kMsg, m.version));
  RETURN_IF_ERROR(CheckField(kMsg, "ek_public", m.ek_public.size(), kMaxPublicBytes, true));
  RETURN_IF_ERROR(
      CheckField(kMsg, "ek_certificate", m.ek_certificate.size(), kMaxCertificateBytes, false));
  if (m.ek_intermediates.size() > kMaxIntermediates) {
    return Malformed(kMsg, absl::StrCat("field ek_intermediates has ", m.ek_intermediates.size(),
                                        " certificates, more than the limit of ",
                                        kMaxIntermediates));
  }
  for (const Bytes& c : m.ek_intermediates) {
    RETURN_IF_ERROR(CheckField(kMsg, "ek_intermediates", c.size(), kMaxCertificateBytes, true));
  }
  RETURN_IF_ERROR(CheckField(kMsg, "ak_public", m.ak_public.size(), kMaxPublicBytes, true));
  return absl::OkStatus();
}

absl::Status CheckChallenge(const Challenge& m) {
  constexpr absl::string_view kMsg = "challenge";
  RETURN_IF_ERROR(CheckField(kMsg, "credential_blob", m.credential_blob.size(),
                             kMaxCredentialBlobBytes, true));
  RETURN_IF_ERROR(CheckField(kMsg, "encrypted_secret", m.encrypted_secret.size(),
                             kMaxEncryptedSecretBytes, true));
  RETURN_IF_ERROR(CheckField(kMsg, "nonce", m.nonce.size(), kMaxNonceBytes, true));
  RETURN_IF_ERROR(CheckVersion(kMsg, m.version));
  RETURN_IF_ERROR(CheckField(kMsg, "pcr_selection", m.pcr_selection.size(),
                             kMaxPcrSelectionChars, true));
  if (m.version == kProtocolVersion && !m.certify_nonce.empty()) {
    return Malformed(kMsg, "field certify_nonce is set in a version 1 message");
  }
  RETURN_IF_ERROR(CheckField(kMsg, "certify_nonce", m.certify_nonce.size(), kMaxNonceBytes,
                             m.version == kProtocolVersionCertify));
  for (char ch : m.pcr_selection) {
    if (ch < 0x20 || ch > 0x7e) {
      return Malformed(kMsg, "field pcr_selection is not printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckResponse(const ChallengeResponse& m) {
  constexpr absl::string_view kMsg = "challenge response";
  RETURN_IF_ERROR(CheckField(kMsg, "secret", m.secret.size(), kMaxSecretBytes, true));
  RETURN_IF_ERROR(
      CheckField(kMsg, "quote_attest", m.quote_attest.size(), kMaxAttestBytes, true));
  RETURN_IF_ERROR(
      CheckField(kMsg, "quote_signature", m.quote_signature.size(), kMaxSignatureBytes, true));
  if (m.pcrs.size() > kMaxPcrValues) {
    return Malformed(kMsg, absl::StrCat("field pcrs has ", m.pcrs.size(),
                                        " values, more than the limit of ", kMaxPcrValues));
  }
  for (const PcrValue& v : m.pcrs) {
    RETURN_IF_ERROR(CheckField(kMsg, "pcrs.digest", v.digest.size(), kMaxPcrDigestBytes, true));
  }
  RETURN_IF_ERROR(CheckVersion(kMsg, m.version));
  if (m.version == kProtocolVersion && !m.certified_keys.empty()) {
    return Malformed(kMsg, "field certified_keys is set in a version 1 message");
  }
  if (m.certified_keys.size() > kMaxCertifiedKeys) {
    return Malformed(kMsg, absl::StrCat("field certified_keys has ", m.certified_keys.size(),
                                        " keys, more than the limit of ", kMaxCertifiedKeys));
  }
  for (const CertifiedKey& k : m.certified_keys) {
    RETURN_IF_ERROR(CheckField(kMsg, "certified_keys.key_public", k.key_public.size(),
                               kMaxPublicBytes, true));
    RETURN_IF_ERROR(CheckField(kMsg, "certified_keys.certify_info", k.certify_info.size(),
                               kMaxAttestBytes, true));
    RETURN_IF_ERROR(CheckField(kMsg, "certified_keys.signature", k.signature.size(),
                               kMaxSignatureBytes, true));
  }
  return absl::OkStatus();
}

Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string ToString(ByteSpan b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

absl::StatusOr<Bytes> EncodePayload(const AttestationPayload& m) {
  RETURN_IF_ERROR(CheckPayload(m));
  pb::AttestationPayload p;
  p.set_version(m.version);
  p.set_ek_public(ToString(m.ek_public));
  p.set_ek_certificate(ToString(m.ek_certificate));
  for (const Bytes& c : m.ek_intermediates) {
    p.add_ek_intermediates(ToString(c));
  }
  p.set_ak_public(ToString(m.ak_public));
  return Serialize(p, "attestation payload");
}

absl::StatusOr<Bytes> EncodeChallenge(const Challenge& m) {
  RETURN_IF_ERROR(CheckChallenge(m));
  pb::Challenge p;
  p.set_version(m.version);
  p.set_credential_blob(ToString(m.credential_blob));
  p.set_encrypted_secret(ToString(m.encrypted_secret));
  p.set_nonce(ToString(m.nonce));
  p.set_pcr_selection(m.pcr_selection);
  p.set_certify_nonce(ToString(m.certify_nonce));
  return Serialize(p, "challenge");
}

absl::StatusOr<Bytes> EncodeResponse(const ChallengeResponse& m) {
  RETURN_IF_ERROR(CheckResponse(m));
  pb::ChallengeResponse p;
  p.set_version(m.version);
  p.set_secret(ToString(AsSpan(m.secret)));
  p.set_quote_attest(ToString(m.quote_attest));
  p.set_quote_signature(ToString(m.quote_signature));
  for (const PcrValue& v : m.pcrs) {
    pb::PcrValue* pv = p.add_pcrs();
    pv->set_bank(v.bank);
    pv->set_index(v.index);
    pv->set_digest(ToString(v.digest));
  }
  for (const CertifiedKey& k : m.certified_keys) {
    pb::CertifiedKey* ck = p.add_certified_keys();
    ck->set_key_public(ToString(k.key_public));
    ck->set_certify_info(ToString(k.certify_info));
    ck->set_signature(ToString(k.signature));
  }
  absl::StatusOr<Bytes> out = Serialize(p, "challenge response");
  // The serialised secret lives in protobuf's std::string; wipe it before it is released.
  std::string* secret = p.mutable_secret();
  internal::Cleanse(secret->data(), secret->size());
  return out;
}

absl::StatusOr<AttestationPayload> DecodePayload(ByteSpan bytes) {
  pb::AttestationPayload p;
  RETURN_IF_ERROR(ParseBounded(bytes, kMaxPayloadBytes, "attestation payload", &p));
  AttestationPayload m;
  m.version = p.version();
  m.ek_public = ToBytes(p.ek_public());
  m.ek_certificate = ToBytes(p.ek_certificate());
  if (static_cast<size_t>(p.ek_intermediates_size()) > kMaxIntermediates) {
    return Malformed("attestation payload",
                     absl::StrCat("field ek_intermediates has ", p.ek_intermediates_size(),
                                  " certificates, more than the limit of ", kMaxIntermediates));
  }
  for (const std::string& c : p.ek_intermediates()) {
    m.ek_intermediates.push_back(ToBytes(c));
  }
  m.ak_public = ToBytes(p.ak_public());
  RETURN_IF_ERROR(CheckPayload(m));
  return m;
}

absl::StatusOr<Challenge> DecodeChallenge(ByteSpan bytes) {
  pb::Challenge p;
  RETURN_IF_ERROR(ParseBounded(bytes, kMaxChallengeBytes, "challenge", &p));
  Challenge m;
  m.version = p.version();
  m.certify_nonce = ToBytes(p.certify_nonce());
  m.credential_blob = ToBytes(p.credential_blob());
  m.encrypted_secret = ToBytes(p.encrypted_secret());
  m.nonce = ToBytes(p.nonce());
  m.pcr_selection = p.pcr_selection();
  RETURN_IF_ERROR(CheckChallenge(m));
  return m;
}

absl::StatusOr<ChallengeResponse> DecodeResponse(ByteSpan bytes) {
  pb::ChallengeResponse p;
  absl::Status parsed = ParseBounded(bytes, kMaxResponseBytes, "challenge response", &p);
  if (parsed.ok()) {
    for (const pb::PcrValue& v : p.pcrs()) {
      if (!v.GetReflection()->GetUnknownFields(v).empty()) {
        parsed = Malformed("challenge response", "unknown fields in pcrs");
        break;
      }
    }
    for (const pb::CertifiedKey& k : p.certified_keys()) {
      if (!k.GetReflection()->GetUnknownFields(k).empty()) {
        parsed = Malformed("challenge response", "unknown fields in certified_keys");
        break;
      }
    }
  }
  ChallengeResponse m;
  if (parsed.ok()) {
    m.version = p.version();
    m.secret.assign(p.secret().begin(), p.secret().end());
    if (static_cast<size_t>(p.certified_keys_size()) > kMaxCertifiedKeys) {
      parsed = Malformed("challenge response",
                         absl::StrCat("field certified_keys has ", p.certified_keys_size(),
                                      " keys, more than the limit of ", kMaxCertifiedKeys));
    } else {
      for (const pb::CertifiedKey& k : p.certified_keys()) {
        m.certified_keys.push_back(CertifiedKey{ToBytes(k.key_public()),
                                                ToBytes(k.certify_info()),
                                                ToBytes(k.signature())});
      }
    }
    m.quote_attest = ToBytes(p.quote_attest());
    m.quote_signature = ToBytes(p.quote_signature());
    if (static_cast<size_t>(p.pcrs_size()) > kMaxPcrValues) {
      parsed = Malformed("challenge response",
                         absl::StrCat("field pcrs has ", p.pcrs_size(),
                                      " values, more than the limit of ", kMaxPcrValues));
    } else {
      for (const pb::PcrValue& v : p.pcrs()) {
        m.pcrs.push_back(PcrValue{v.bank(), v.index(), ToBytes(v.digest())});
      }
    }
  }
  std::string* secret = p.mutable_secret();
  internal::Cleanse(secret->data(), secret->size());
  RETURN_IF_ERROR(parsed);
  RETURN_IF_ERROR(CheckResponse(m));
  return m;
}

}  // namespace hwid::attestation
