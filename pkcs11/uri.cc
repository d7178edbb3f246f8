#include "pkcs11/uri.h"

#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace hwid::pkcs11 {
namespace {

struct UriDeleter {
  void operator()(P11KitUri* u) const noexcept { p11_kit_uri_free(u); }
};
using UriPtr = std::unique_ptr<P11KitUri, UriDeleter>;

// Blank-padded CK_TOKEN_INFO field -> string without the padding.
std::string Field(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) {
    s.pop_back();
  }
  return s;
}

// True when the blank-padded field was present in the URI (p11-kit leaves absent fields zeroed).
bool Present(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) {
      return true;
    }
  }
  return false;
}

bool IsUnreserved(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// PercentEncode encodes everything outside RFC 3986 unreserved characters.
std::string PercentEncode(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (IsUnreserved(c)) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out;
}

std::string Redact(absl::string_view uri) {
  const size_t q = uri.find('?');
  if (q == absl::string_view::npos) {
    return std::string(uri);
  }
  std::vector<std::string> parts;
  for (absl::string_view p : absl::StrSplit(uri.substr(q + 1), '&')) {
    parts.push_back(absl::StartsWith(p, "pin-value=") ? std::string("pin-value=***")
                                                      : std::string(p));
  }
  return absl::StrCat(uri.substr(0, q), "?", absl::StrJoin(parts, "&"));
}

}  // namespace

absl::StatusOr<Pkcs11Uri> ParseUri(absl::string_view text) {
  Pkcs11Uri out;
  out.redacted = Redact(text);
  if (!absl::StartsWith(text, "pkcs11:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", out.redacted, "' is not a pkcs11: URI (RFC 7512)"));
  }
  UriPtr uri(p11_kit_uri_new());
  if (uri == nullptr) {
    return absl::ResourceExhaustedError("p11_kit_uri_new: out of memory");
  }
  const std::string s(text);
  const int rc = p11_kit_uri_parse(s.c_str(), P11_KIT_URI_FOR_ANY, uri.get());
  if (rc != P11_KIT_URI_OK) {
    return absl::InvalidArgumentError(absl::StrCat("parsing PKCS#11 URI '", out.redacted,
                                                   "' failed: ", p11_kit_uri_message(rc)));
  }
  if (p11_kit_uri_any_unrecognized(uri.get())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PKCS#11 URI '", out.redacted,
        "' has attributes hwid does not understand (RFC 7512 path/query attributes only)"));
  }
  CK_TOKEN_INFO* ti = p11_kit_uri_get_token_info(uri.get());
  if (Present(ti->label, sizeof(ti->label))) {
    out.token = Field(ti->label, sizeof(ti->label));
  }
  if (Present(ti->manufacturerID, sizeof(ti->manufacturerID))) {
    out.manufacturer = Field(ti->manufacturerID, sizeof(ti->manufacturerID));
  }
  if (Present(ti->model, sizeof(ti->model))) {
    out.model = Field(ti->model, sizeof(ti->model));
  }
  if (Present(ti->serialNumber, sizeof(ti->serialNumber))) {
    out.serial = Field(ti->serialNumber, sizeof(ti->serialNumber));
  }
  const CK_SLOT_ID slot = p11_kit_uri_get_slot_id(uri.get());
  if (slot != static_cast<CK_SLOT_ID>(-1)) {
    out.slot_id = slot;
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_LABEL); a != nullptr) {
    out.object = std::string(static_cast<const char*>(a->pValue), a->ulValueLen);
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_ID); a != nullptr) {
    const auto* p = static_cast<const uint8_t*>(a->pValue);
    out.id = Bytes(p, p + a->ulValueLen);
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_CLASS);
      a != nullptr && a->ulValueLen == sizeof(CK_OBJECT_CLASS)) {
    CK_OBJECT_CLASS c;
    std::memcpy(&c, a->pValue, sizeof(c));
    switch (c) {
      case CKO_PRIVATE_KEY:
        out.type = "private";
        break;
      case CKO_PUBLIC_KEY:
        out.type = "public";
        break;
      case CKO_CERTIFICATE:
        out.type = "cert";
        break;
      case CKO_SECRET_KEY:
        out.type = "secret-key";
        break;
      default:
        out.type = "data";
        break;
    }
  }
  if (const char* m = p11_kit_uri_get_module_path(uri.get()); m != nullptr) {
    out.module_path = m;
  }
  if (const char* p = p11_kit_uri_get_pin_value(uri.get()); p != nullptr) {
    out.pin_value = SecureBytes(p, p + std::strlen(p));
  }
  if (const char* p = p11_kit_uri_get_pin_source(uri.get()); p != nullptr) {
    out.pin_source = p;
  }
  return out;
}

bool MatchesToken(const Pkcs11Uri& uri, const TokenFields& t) {
  return (!uri.token || *uri.token == t.label) &&
         (!uri.manufacturer || *uri.manufacturer == t.manufacturer) &&
         (!uri.model || *uri.model == t.model) && (!uri.serial || *uri.serial == t.serial);
}

std::string FormatObjectUri(const TokenFields& token, absl::string_view label, ByteSpan id,
                            absl::string_view type, absl::string_view module_path) {
  std::string id_enc;
  for (uint8_t b : id) {
    absl::StrAppendFormat(&id_enc, "%%%02X", b);
  }
  std::string out = absl::StrCat(
      "pkcs11:model=", PercentEncode(token.model), ";manufacturer=",
      PercentEncode(token.manufacturer), ";serial=", PercentEncode(token.serial),
      ";token=", PercentEncode(token.label));
  if (!id.empty()) {
    absl::StrAppend(&out, ";id=", id_enc);
  }
  if (!label.empty()) {
    absl::StrAppend(&out, ";object=", PercentEncode(label));
  }
  if (!type.empty()) {
    absl::StrAppend(&out, ";type=", type);
  }
  if (!module_path.empty()) {
    std::string mp;
    for (char c : module_path) {
      mp += (IsUnreserved(c) || c == '/') ? std::string(1, c)
                                          : absl::StrFormat("%%%02X", static_cast<unsigned char>(c));
    }
    absl::StrAppend(&out, "?module-path=", mp);
  }
  return out;
}

absl::StatusOr<SecureBytes> ReadPinSource(absl::string_view source) {
  std::string path(source);
  if (absl::StartsWith(path, "file:")) {
    path = path.substr(5);
    if (absl::StartsWith(path, "//")) {
      path = path.substr(2);
    }
  }
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "pin-source '", source, "': expected file:/absolute/path or /absolute/path"));
  }
  absl::StatusOr<Bytes> data = ReadFile(path, 4096);
  if (!data.ok()) {
    return absl::Status(data.status().code(),
                        absl::StrCat("reading the PIN from pin-source: ", data.status().message()));
  }
  SecureBytes pin(data->begin(), data->end());
  internal::Cleanse(data->data(), data->size());
  size_t n = 0;
  while (n < pin.size() && pin[n] != '\n' && pin[n] != '\r') {
    ++n;
  }
  pin.resize(n);
  return pin;
}

}  // namespace hwid::pkcs11
