// The "PKCS#11 PROVIDER URI" key file: a PEM wrapper that names a token key by its pkcs11: URI, so
// programs that only take a key *file* (nginx 1.22 `ssl_certificate_key`, curl 7.88 `--key`) can
// use a token key once the hwid provider is active. The format is the one latchset's
// pkcs11-provider reads and writes, so files move between the two providers:
//
//   -----BEGIN PKCS#11 PROVIDER URI-----   (base64 of the DER below)
//   PKCS11ProviderURI ::= SEQUENCE {
//     desc  VisibleString,   -- "PKCS#11 Provider URI v1.0"
//     uri   UTF8String }     -- the RFC 7512 URI
//
// The file holds no secret: writers never put a pin-value into it, and readers refuse one (a PIN
// belongs in pin-source, $HWID_PKCS11_PIN or openssl.cnf, not in a world-readable key file).
#ifndef HWID_PKCS11_URI_PEM_H_
#define HWID_PKCS11_URI_PEM_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"

namespace hwid::pkcs11 {

inline constexpr char kUriPemLabel[] = "PKCS#11 PROVIDER URI";
inline constexpr char kUriPemDescription[] = "PKCS#11 Provider URI v1.0";

// EncodeUriDer / EncodeUriPem wrap `uri` (must be a pkcs11: URI without pin-value).
absl::StatusOr<Bytes> EncodeUriDer(absl::string_view uri);
absl::StatusOr<std::string> EncodeUriPem(absl::string_view uri);

// ParseUriDer returns the URI of a wrapper DER. Strict: one SEQUENCE of exactly the two fields,
// definite minimal lengths, no trailing bytes, the known description, a URI that starts with
// "pkcs11:", is printable ASCII and has no pin-value. InvalidArgument naming the defect otherwise.
absl::StatusOr<std::string> ParseUriDer(ByteSpan der);

// ParseUriFile accepts the PEM form (label above, no headers) or the DER form.
absl::StatusOr<std::string> ParseUriFile(ByteSpan pem_or_der);

// MentionsPinValue is true when "pin-value" appears anywhere in `uri`, in any case (key files
// refuse such URIs).
bool MentionsPinValue(absl::string_view uri);

// LooksLikeUriDer is a cheap prefix test (SEQUENCE, then a VisibleString with the description)
// used by decoders to tell "ours but broken" from "someone else's input".
bool LooksLikeUriDer(ByteSpan der);

}  // namespace hwid::pkcs11

#endif  // HWID_PKCS11_URI_PEM_H_
