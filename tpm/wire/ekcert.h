// EK certificates in software: extraction from NV contents, chain verification against a local CA
// bundle, the EK-certificate-key == EK-public check, and the TCG device attributes in the SAN.
// Used by the CLI, the tpm/ layer and (later) the attestation server.
#ifndef HWID_TPM_WIRE_EKCERT_H_
#define HWID_TPM_WIRE_EKCERT_H_

#include <tss2/tss2_tpm2_types.h>

#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "common/ossl.h"

namespace hwid::wire {

// ExtractEkCertificateDer returns the DER certificate stored in an EK certificate NV index. NV
// indices are often larger than the certificate; only 0x00 or 0xff padding may follow it.
absl::StatusOr<Bytes> ExtractEkCertificateDer(ByteSpan nv_contents);

// ParseCertificateDer parses exactly one DER certificate (no trailing bytes).
absl::StatusOr<OsslPtr<X509>> ParseCertificateDer(ByteSpan der);

// CaBundle splits a PEM bundle into trust anchors (self-signed) and intermediates.
struct CaBundle {
  std::vector<OsslPtr<X509>> roots;
  std::vector<OsslPtr<X509>> intermediates;
};
// LoadCaBundlePem fails (InvalidArgument naming the block) when the data holds no certificate or
// no self-signed root, or when any PEM block is unreadable (bad base64, no END line), is not a
// CERTIFICATE, has PEM headers, or is not exactly one DER certificate: a bundle is taken whole or
// not at all, never silently cut at a bad block.
absl::StatusOr<CaBundle> LoadCaBundlePem(ByteSpan pem);
absl::StatusOr<CaBundle> LoadCaBundleFile(const std::string& path);

// VerifyEkCertificate checks that `cert` chains to a root of `ca` (intermediates are untrusted
// helpers, never anchors; every certificate above the leaf must be a CA by basicConstraints and
// respect its issuers' pathLenConstraint, which X509_verify_cert enforces), is valid at `at` (now
// when unset) and passes CheckEkCertificateProfile. Failures are PermissionDenied and name the
// certificate and the X509 verification error or the profile rule.
absl::Status VerifyEkCertificate(X509* cert, const CaBundle& ca,
                                 std::optional<time_t> at = std::nullopt);

// VerifyCertificateChain is the chain part of VerifyEkCertificate alone (no profile check): for
// reports that judge the chain and the profile separately. `chain_subjects`, when set, receives
// the verified path, leaf first, root last.
absl::Status VerifyCertificateChain(X509* cert, const CaBundle& ca, std::optional<time_t> at,
                                    std::vector<std::string>* chain_subjects);

// CheckEkCertificateProfile applies the TCG EK Credential Profile to the leaf:
//   1. not a CA: basicConstraints absent or cA FALSE;
//   2. keyUsage, when present: keyEncipherment for an RSA key, keyAgreement for an ECC key, and
//      neither keyCertSign nor cRLSign;
//   3. an EKU, when present, includes tcg-kp-EKCertificate (2.23.133.8.1); without an EKU, the
//      subjectAltName must carry the TCG TPM manufacturer, model and version (2.23.133.2.1/2/3).
// PermissionDenied naming the rule; InvalidArgument for malformed extensions.
absl::Status CheckEkCertificateProfile(X509* cert);

// CheckCertificateMatchesPublic: PermissionDenied unless the certificate's key equals `pub`.
absl::Status CheckCertificateMatchesPublic(X509* cert, const TPMT_PUBLIC& pub);

// CheckCertificateMatchesKey: the same check against `key`, the PublicToEvp result of the EK
// public area (converted and checked once by the caller). PermissionDenied when they differ or
// `key` is null.
absl::Status CheckCertificateMatchesKey(X509* cert, const EVP_PKEY* key);

// TCG device attributes from the EK certificate's subjectAltName directoryName
// (2.23.133.2.1 manufacturer, 2.23.133.2.2 model, 2.23.133.2.3 version).
struct TcgDeviceInfo {
  std::string manufacturer;
  std::string model;
  std::string version;
};
absl::StatusOr<TcgDeviceInfo> ParseTcgDeviceInfo(X509* cert);

// NameString renders a certificate's subject or issuer in one line (RFC 2253).
std::string SubjectString(X509* cert);
std::string IssuerString(X509* cert);
// IssuerCommonName returns the issuer's CN ("" when absent).
std::string IssuerCommonName(X509* cert);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_EKCERT_H_
