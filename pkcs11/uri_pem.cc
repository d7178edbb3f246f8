#include "pkcs11/uri_pem.h"

#include <openssl/bio.h>
#include <openssl/pem.h>

#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/ossl.h"

namespace hwid::pkcs11 {
namespace {

constexpr uint8_t kTagSequence = 0x30;
constexpr uint8_t kTagVisibleString = 0x1a;
constexpr uint8_t kTagUtf8String = 0x0c;
// A URI longer than this is not a key reference (RFC 7512 URIs are a few hundred bytes).
constexpr size_t kMaxUri = 4096;

absl::Status Malformed(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("PKCS#11 PROVIDER URI file: ", why));
}

void AppendTlv(Bytes& out, uint8_t tag, ByteSpan value) {
  out.push_back(tag);
  const size_t n = value.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else if (n <= 0xff) {
    out.push_back(0x81);
    out.push_back(static_cast<uint8_t>(n));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(n));
  }
  out.insert(out.end(), value.begin(), value.end());
}

// ReadTlv reads one TLV with tag `tag` from the front of `*in` (definite, minimal length of at
// most two bytes) and advances `*in` past it.
absl::StatusOr<ByteSpan> ReadTlv(ByteSpan* in, uint8_t tag, absl::string_view what) {
  if (in->size() < 2) {
    return Malformed(absl::StrCat(what, " is truncated"));
  }
  if ((*in)[0] != tag) {
    return Malformed(absl::StrCat(what, ": unexpected tag 0x", absl::Hex((*in)[0])));
  }
  size_t len = (*in)[1];
  size_t hdr = 2;
  if (len == 0x81) {
    if (in->size() < 3 || (*in)[2] < 0x80) {
      return Malformed(absl::StrCat(what, ": bad length encoding"));
    }
    len = (*in)[2];
    hdr = 3;
  } else if (len == 0x82) {
    if (in->size() < 4 || (*in)[2] == 0) {
      return Malformed(absl::StrCat(what, ": bad length encoding"));
    }
    len = (static_cast<size_t>((*in)[2]) << 8) | (*in)[3];
    hdr = 4;
  } else if (len >= 0x80) {
    return Malformed(absl::StrCat(what, ": unsupported length encoding"));
  }
  if (in->size() - hdr < len) {
    return Malformed(absl::StrCat(what, " is truncated"));
  }
  ByteSpan value = in->subspan(hdr, len);
  *in = in->subspan(hdr + len);
  return value;
}

absl::Status CheckUri(absl::string_view uri) {
  if (!absl::StartsWith(uri, "pkcs11:")) {
    return Malformed("the URI does not start with 'pkcs11:'");
  }
  if (uri.size() > kMaxUri) {
    return Malformed("the URI is longer than 4096 bytes");
  }
  for (char ch : uri) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(ch))) {
      return Malformed("the URI contains a non-printable or non-ASCII character");
    }
  }
  // pin-value belongs in the query part, but refuse it anywhere (any case): a key file is never
  // the place for a PIN, and a strict rule leaves nothing to interpret.
  if (MentionsPinValue(uri)) {
    return Malformed("the URI carries a pin-value; key files must not hold PINs "
                     "(use pin-source, $HWID_PKCS11_PIN or pkcs11-pin-source in openssl.cnf)");
  }
  return absl::OkStatus();
}

}  // namespace

bool MentionsPinValue(absl::string_view uri) {
  return absl::StrContains(absl::AsciiStrToLower(uri), "pin-value");
}

absl::StatusOr<Bytes> EncodeUriDer(absl::string_view uri) {
  absl::Status s = CheckUri(uri);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write a URI key file: ", s.message()));
  }
  Bytes body;
  AppendTlv(body, kTagVisibleString, AsSpan(absl::string_view(kUriPemDescription)));
  AppendTlv(body, kTagUtf8String, AsSpan(uri));
  Bytes out;
  AppendTlv(out, kTagSequence, body);
  return out;
}

absl::StatusOr<std::string> EncodeUriPem(absl::string_view uri) {
  absl::StatusOr<Bytes> der = EncodeUriDer(uri);
  if (!der.ok()) {
    return der.status();
  }
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      PEM_write_bio(bio.get(), kUriPemLabel, "", der->data(), static_cast<long>(der->size())) <= 0) {
    return OpenSslError("writing the PKCS#11 PROVIDER URI PEM");
  }
  char* p = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &p);
  return std::string(p, static_cast<size_t>(n));
}

absl::StatusOr<std::string> ParseUriDer(ByteSpan der) {
  ByteSpan in = der;
  absl::StatusOr<ByteSpan> seq = ReadTlv(&in, kTagSequence, "the outer SEQUENCE");
  if (!seq.ok()) {
    return seq.status();
  }
  if (!in.empty()) {
    return Malformed(absl::StrCat(in.size(), " trailing byte(s) after the SEQUENCE"));
  }
  ByteSpan body = *seq;
  absl::StatusOr<ByteSpan> desc = ReadTlv(&body, kTagVisibleString, "the description");
  if (!desc.ok()) {
    return desc.status();
  }
  if (absl::string_view(reinterpret_cast<const char*>(desc->data()), desc->size()) !=
      kUriPemDescription) {
    return Malformed(absl::StrCat("unknown description (expected '", kUriPemDescription, "')"));
  }
  absl::StatusOr<ByteSpan> uri = ReadTlv(&body, kTagUtf8String, "the URI");
  if (!uri.ok()) {
    return uri.status();
  }
  if (!body.empty()) {
    return Malformed("extra fields after the URI");
  }
  std::string out(reinterpret_cast<const char*>(uri->data()), uri->size());
  absl::Status s = CheckUri(out);
  if (!s.ok()) {
    return s;
  }
  return out;
}

absl::StatusOr<std::string> ParseUriFile(ByteSpan pem_or_der) {
  if (pem_or_der.empty()) {
    return Malformed("empty input");
  }
  if (pem_or_der[0] == kTagSequence) {
    return ParseUriDer(pem_or_der);
  }
  OsslPtr<BIO> bio(BIO_new_mem_buf(pem_or_der.data(), static_cast<int>(pem_or_der.size())));
  if (bio == nullptr) {
    return OpenSslError("reading the PKCS#11 PROVIDER URI PEM");
  }
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
    DrainOpenSslErrors();
    return Malformed("no PEM block found");
  }
  struct Free {
    void operator()(void* p) const noexcept { OPENSSL_free(p); }
  };
  std::unique_ptr<char, Free> n(name), h(header);
  std::unique_ptr<unsigned char, Free> d(data);
  if (std::strcmp(name, kUriPemLabel) != 0) {
    return Malformed(absl::StrCat("PEM label is '", name, "', expected '", kUriPemLabel, "'"));
  }
  if (header != nullptr && header[0] != '\0') {
    return Malformed("PEM headers are not supported");
  }
  return ParseUriDer(ByteSpan(data, static_cast<size_t>(len)));
}

bool LooksLikeUriDer(ByteSpan der) {
  // 30 <len> 1a 19 "PKCS#11 Provider URI v1.0": the description starts within the first 5 bytes.
  if (der.size() < 4 || der[0] != kTagSequence) {
    return false;
  }
  Bytes marker = {kTagVisibleString, static_cast<uint8_t>(std::strlen(kUriPemDescription))};
  marker.insert(marker.end(), kUriPemDescription, kUriPemDescription + std::strlen(kUriPemDescription));
  for (size_t off = 2; off <= 4 && off + marker.size() <= der.size(); ++off) {
    if (std::memcmp(der.data() + off, marker.data(), marker.size()) == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace hwid::pkcs11
