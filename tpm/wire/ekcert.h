// EK certificates in software: extraction from NV contents, chain verification against a local CA
// bundle, the EK-certificate-key == EK-public check, and the TCG device attributes in the SAN.
// Used by the CLI, the tpm/ layer and (later) the attestation server.
#ifndef HWID_TPM_WIRE_EKCERT_H_
#define HWID_TPM_WIRE_EKCERT_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "common/ossl.h"

namespace hwid::wire {

// NvCertificate: one certificate as found in an NV index (an EK certificate or a certificate of
// the EK chain), with what the NV held around it.
struct NvCertificate {
  Bytes der;                  // exactly one DER certificate (what verifiers get)
  size_t nv_size = 0;         // bytes read from the NV index
  bool tcg_wrapper = false;   // the NV held the 10 01 00 LL LL header before the DER
  size_t padding_bytes = 0;   // 0x00/0xff bytes after the certificate
  size_t trailing_bytes = 0;  // other bytes after the certificate (not padding)
  // Quirks: one line per quirk for operators, e.g. "TCG PC Client NV header 10 01 00 (length
  // 1234) before the DER", "16 bytes after the DER certificate that are not 0x00/0xff padding",
  // "372 bytes of 0xff padding after the DER certificate". Empty when the NV holds exactly the DER.
  std::vector<std::string> quirks;
};

// ExtractNvCertificate finds the DER certificate in NV contents: an optional TCG PC Client NV
// header (10 01 00, then the certificate length as 2 bytes big-endian), then a DER SEQUENCE whose
// length fits and that parses as exactly one X.509 certificate, then padding (0x00/0xff) or other
// trailing bytes, which are reported in the result, not refused. After the certificate, the
// trailing bytes are those up to the last byte that is not 0x00/0xff; the padding is the run of
// 0x00/0xff after them. InvalidArgument naming the problem when no complete DER certificate is
// there (empty, not 0x30, bad length field, truncated, header length disagreeing with the DER
// length, not a certificate).
absl::StatusOr<NvCertificate> ExtractNvCertificate(ByteSpan nv_contents);

// ExtractEkCertificateDer returns ExtractNvCertificate(nv_contents)->der: the quirks are accepted
// and dropped (the agent only extracts; the server parses exactly one DER certificate).
absl::StatusOr<Bytes> ExtractEkCertificateDer(ByteSpan nv_contents);

// ParseCertificateDer parses exactly one DER certificate (no trailing bytes).
absl::StatusOr<OsslPtr<X509>> ParseCertificateDer(ByteSpan der);

// CaBundle: trust anchors (self-signed) and intermediates.
struct CaBundle {
  std::vector<OsslPtr<X509>> roots;
  std::vector<OsslPtr<X509>> intermediates;
  // Informative, filled by LoadTrustBundle: the certificate files read (in the order read) and
  // the number of files skipped in a directory (other extensions, dot-files).
  std::vector<std::string> files;
  size_t ignored_files = 0;
};
// LoadCaBundlePem fails (InvalidArgument naming the block) when the data holds no certificate or
// no self-signed root, or when any PEM block is unreadable (bad base64, no END line), is not a
// CERTIFICATE, has PEM headers, or is not exactly one DER certificate: a bundle is taken whole or
// not at all, never silently cut at a bad block. Text outside the blocks (comments, "subject="
// lines as community bundles carry) is ignored.
absl::StatusOr<CaBundle> LoadCaBundlePem(ByteSpan pem);

// LoadTrustBundle loads trust anchors and intermediates from `path`: a file (PEM bundle, possibly
// with text or '#' comment lines between blocks as community bundles have; or one DER
// certificate) or a directory, read recursively (files ending .pem .crt .cer .der, any case; PEM
// or DER sniffed by content; other files and dot-files ignored and counted; symbolic links to
// directories are not followed, so a link loop cannot hang it; depth at most 16), e.g.
// Microsoft's TrustedTpm.cab extracted (<Vendor>/RootCA/*.cer, <Vendor>/IntermediateCA/*.cer,
// DER). Files are read in path order. Self-signed certificates are roots, the rest
// intermediates; exact duplicates (same DER) are dropped. Strict like LoadCaBundlePem: an
// unreadable PEM block or a certificate file that does not parse fails the whole load naming the
// file (and block number); a directory or file with no certificate fails; no root at all fails.
// All failures are InvalidArgument (NotFound when `path` does not exist).
absl::StatusOr<CaBundle> LoadTrustBundle(const std::string& path);

// VerifyEkCertificate checks that `cert` chains to a root of `ca` (intermediates are untrusted
// helpers, never anchors; every certificate above the leaf must be a CA by basicConstraints and
// respect its issuers' pathLenConstraint, which X509_verify_cert enforces), is valid at `at` (now
// when unset) and passes CheckEkCertificateProfile. Failures are PermissionDenied and name the
// certificate and the X509 verification error or the profile rule.
absl::Status VerifyEkCertificate(X509* cert, const CaBundle& ca,
                                 std::optional<time_t> at = std::nullopt);

// VerifyCertificateChain is the chain part of VerifyEkCertificate alone (no profile check): for
// reports that judge the chain and the profile separately. `chain_subjects`, when set, receives
// the verified path, leaf first, root last. `check_time` false skips every validity-period check
// (X509_V_FLAG_NO_CHECK_TIME): for judging the path of a certificate already known to be expired.
absl::Status VerifyCertificateChain(X509* cert, const CaBundle& ca, std::optional<time_t> at,
                                    std::vector<std::string>* chain_subjects,
                                    bool check_time = true);

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
