// RFC 7512 "pkcs11:" URIs, parsed with p11-kit: which module, token, object and PIN they name.
#ifndef HWID_PKCS11_URI_H_
#define HWID_PKCS11_URI_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"

namespace hwid::pkcs11 {

// Pkcs11Uri is a parsed "pkcs11:" URI. Absent attributes match anything.
struct Pkcs11Uri {
  // Token attributes (path part): token=, manufacturer=, model=, serial=, slot-id=.
  std::optional<std::string> token;
  std::optional<std::string> manufacturer;
  std::optional<std::string> model;
  std::optional<std::string> serial;
  std::optional<unsigned long> slot_id;
  // Object attributes: object= (CKA_LABEL), id= (CKA_ID), type= (private, public, cert, ...).
  std::optional<std::string> object;
  std::optional<Bytes> id;
  std::optional<std::string> type;
  // Query attributes: module-path=, pin-value=, pin-source=.
  std::optional<std::string> module_path;
  std::optional<SecureBytes> pin_value;
  std::optional<std::string> pin_source;
  // redacted is the URI for messages: pin-value replaced by "***".
  std::string redacted;
};

// ParseUri parses an RFC 7512 URI. InvalidArgument (naming the p11-kit reason) when it is not a
// "pkcs11:" URI or is malformed. The PIN (if any) lands in a zeroizing buffer.
absl::StatusOr<Pkcs11Uri> ParseUri(absl::string_view uri);

// TokenFields are a token's identifying CK_TOKEN_INFO fields, trailing blanks removed.
struct TokenFields {
  std::string label;
  std::string manufacturer;
  std::string model;
  std::string serial;
};

// MatchesToken is true when every token attribute the URI has equals the token's.
bool MatchesToken(const Pkcs11Uri& uri, const TokenFields& token);

// FormatObjectUri formats a URI that names one object on a token:
// "pkcs11:model=..;manufacturer=..;serial=..;token=..;id=%..;object=..;type=private".
// Never contains a PIN. `module_path` (optional) is added as a module-path query attribute.
std::string FormatObjectUri(const TokenFields& token, absl::string_view label, ByteSpan id,
                            absl::string_view type, absl::string_view module_path = "");

// ReadPinSource reads a PIN from an RFC 7512 pin-source ("file:/path" or "/path"): the first
// line, without its line ending. The error names the path, never the content.
absl::StatusOr<SecureBytes> ReadPinSource(absl::string_view source);

}  // namespace hwid::pkcs11

#endif  // HWID_PKCS11_URI_H_
