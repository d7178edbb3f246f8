#include "tpm/wire/keyfile.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>

#include <cstring>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

constexpr char kPemLabel[] = "TSS2 PRIVATE KEY";
constexpr char kOldPemLabel[] = "TSS2 KEY BLOB";
constexpr char kWhat[] = "TSS2 PRIVATE KEY";

// DER OID contents under id-tpmkey 2.23.133.10.1 (2.23 -> 0x67, 133 -> 0x81 0x05).
constexpr uint8_t kOidLoadable[] = {0x67, 0x81, 0x05, 0x0a, 0x01, 0x03};   // 2.23.133.10.1.3
constexpr uint8_t kOidImportable[] = {0x67, 0x81, 0x05, 0x0a, 0x01, 0x04}; // 2.23.133.10.1.4
constexpr uint8_t kOidSealed[] = {0x67, 0x81, 0x05, 0x0a, 0x01, 0x05};     // 2.23.133.10.1.5
constexpr uint8_t kOidOldKey[] = {0x67, 0x81, 0x05, 0x0a, 0x02};           // 2.23.133.10.2

constexpr uint8_t kTagBoolean = 0x01;
constexpr uint8_t kTagInteger = 0x02;
constexpr uint8_t kTagOctetString = 0x04;
constexpr uint8_t kTagOid = 0x06;
constexpr uint8_t kTagUtf8String = 0x0c;
constexpr uint8_t kTagSequence = 0x30;
constexpr uint8_t kTagContext0 = 0xa0;  // [n] EXPLICIT = context-specific, constructed

struct OpensslFree {
  void operator()(void* p) const noexcept { OPENSSL_free(p); }
};

absl::Status Malformed(std::string_view detail) {
  return absl::InvalidArgumentError(
      absl::StrCat(kWhat, ": ", absl::string_view(detail.data(), detail.size())));
}

bool SpanEquals(ByteSpan a, ByteSpan b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

// DerReader walks a sequence of DER TLVs with single-byte tags and definite, minimally encoded
// lengths that never exceed the remaining input.
class DerReader {
 public:
  explicit DerReader(ByteSpan in) : in_(in) {}

  bool empty() const { return in_.empty(); }
  size_t remaining() const { return in_.size(); }

  // PeekTag returns the next tag, or 0 when the input is exhausted.
  uint8_t PeekTag() const { return in_.empty() ? 0 : in_[0]; }

  // Read consumes one TLV whose tag must be `tag` and returns its contents.
  absl::StatusOr<ByteSpan> Read(uint8_t tag, std::string_view field) {
    if (in_.empty()) {
      return Malformed(absl::StrCat("truncated: ", Sv(field), " is missing"));
    }
    if (in_[0] != tag) {
      return Malformed(absl::StrCat(Sv(field), ": expected tag 0x", absl::Hex(tag, absl::kZeroPad2),
                                    ", found 0x", absl::Hex(in_[0], absl::kZeroPad2)));
    }
    if (in_.size() < 2) {
      return Malformed(absl::StrCat("truncated ", Sv(field), " (no length)"));
    }
    size_t pos = 2;
    size_t len = in_[1];
    if (len == 0x80) {
      return Malformed(absl::StrCat(Sv(field), ": indefinite length is not DER"));
    }
    if (len > 0x80) {
      const size_t n = len & 0x7f;
      if (n > 3) {
        return Malformed(absl::StrCat(Sv(field), ": length field too long"));
      }
      if (in_.size() < 2 + n) {
        return Malformed(absl::StrCat("truncated ", Sv(field), " (length)"));
      }
      if (in_[2] == 0) {
        return Malformed(absl::StrCat(Sv(field), ": non-minimal length encoding"));
      }
      len = 0;
      for (size_t i = 0; i < n; ++i) {
        len = (len << 8) | in_[2 + i];
      }
      if (len < 0x80) {
        return Malformed(absl::StrCat(Sv(field), ": non-minimal length encoding"));
      }
      pos = 2 + n;
    }
    if (len > in_.size() - pos) {
      return Malformed(absl::StrCat("truncated ", Sv(field), ": length ", len, " but only ",
                                    in_.size() - pos, " bytes remain"));
    }
    ByteSpan contents = in_.subspan(pos, len);
    in_ = in_.subspan(pos + len);
    return contents;
  }

 private:
  static absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }
  ByteSpan in_;
};

absl::StatusOr<bool> ReadExplicitBoolean(ByteSpan wrapped, std::string_view field) {
  DerReader inner(wrapped);
  ASSIGN_OR_RETURN(ByteSpan v, inner.Read(kTagBoolean, field));
  if (!inner.empty()) {
    return Malformed(absl::StrCat(absl::string_view(field.data(), field.size()),
                                  ": trailing bytes inside the explicit tag"));
  }
  // DER says TRUE is 0xff, but tpm2-openssl and tpm2-tools (OpenSSL ASN1_BOOLEAN set to 1)
  // write 0x01, so any non-zero octet is TRUE (as OpenSSL's own decoder does).
  if (v.size() != 1) {
    return Malformed(absl::StrCat(absl::string_view(field.data(), field.size()),
                                  ": BOOLEAN must have exactly one content octet"));
  }
  return v[0] != 0x00;
}

bool ValidUtf8(ByteSpan s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = s[i];
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) {
      return false;
    }
    for (size_t k = 1; k <= n; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// DecodeParent reads the DER INTEGER parent handle: positive values up to 0xffffffff, or
// negative values of at most 4 content bytes (a 32-bit handle written as signed), truncated to
// 32 bits.
absl::StatusOr<uint32_t> DecodeParent(ByteSpan v) {
  if (v.empty()) {
    return Malformed("parent: empty INTEGER");
  }
  if (v.size() > 1 && ((v[0] == 0x00 && (v[1] & 0x80) == 0) ||
                       (v[0] == 0xff && (v[1] & 0x80) != 0))) {
    return Malformed("parent: non-minimal INTEGER encoding");
  }
  const bool negative = (v[0] & 0x80) != 0;
  if (negative) {
    if (v.size() > 4) {
      return Malformed("parent: negative INTEGER does not fit a 32-bit handle");
    }
    uint32_t value = 0xffffffffu;  // Sign extension.
    for (uint8_t b : v) {
      value = (value << 8) | b;
    }
    return value;
  }
  ByteSpan digits = v;
  if (digits[0] == 0x00) {
    digits = digits.subspan(1);
  }
  if (digits.size() > 4) {
    return Malformed("parent: INTEGER does not fit a 32-bit handle");
  }
  uint32_t value = 0;
  for (uint8_t b : digits) {
    value = (value << 8) | b;
  }
  return value;
}

absl::StatusOr<TpmKeyFile> ParseDer(ByteSpan der) {
  if (der.empty()) {
    return Malformed("empty input");
  }
  DerReader outer(der);
  ASSIGN_OR_RETURN(ByteSpan body, outer.Read(kTagSequence, "TPMKey SEQUENCE"));
  if (!outer.empty()) {
    return Malformed(absl::StrCat(outer.remaining(), " trailing bytes after the TPMKey SEQUENCE"));
  }
  DerReader seq(body);
  ASSIGN_OR_RETURN(ByteSpan oid, seq.Read(kTagOid, "type"));
  if (SpanEquals(oid, kOidImportable)) {
    return absl::UnimplementedError(
        absl::StrCat(kWhat, ": importable keys (type 2.23.133.10.1.4) are not supported"));
  }
  if (SpanEquals(oid, kOidSealed)) {
    return absl::UnimplementedError(
        absl::StrCat(kWhat, ": sealed data (type 2.23.133.10.1.5) is not supported"));
  }
  if (SpanEquals(oid, kOidOldKey)) {
    return absl::UnimplementedError(absl::StrCat(
        kWhat, ": the old TSS2 KEY BLOB format (type 2.23.133.10.2) is not supported"));
  }
  if (!SpanEquals(oid, kOidLoadable)) {
    return Malformed("type is not the loadable-key OID 2.23.133.10.1.3");
  }

  TpmKeyFile key;
  key.empty_auth = false;  // Absent emptyAuth means "needs auth".
  int last_tag = -1;
  while (!seq.empty() && (seq.PeekTag() & 0xe0) == kTagContext0) {
    const uint8_t tag = seq.PeekTag();
    const int number = tag & 0x1f;
    if (number <= last_tag) {
      return Malformed(absl::StrCat("optional field [", number, "] is repeated or out of order"));
    }
    last_tag = number;
    switch (number) {
      case 0: {
        ASSIGN_OR_RETURN(ByteSpan w, seq.Read(tag, "emptyAuth [0]"));
        ASSIGN_OR_RETURN(key.empty_auth, ReadExplicitBoolean(w, "emptyAuth [0]"));
        break;
      }
      case 1:
        return absl::UnimplementedError(
            absl::StrCat(kWhat, ": the key has a policy [1]; key policies are not supported"));
      case 2:
        return Malformed("secret [2] is only valid for importable keys");
      case 3:
        return absl::UnimplementedError(absl::StrCat(
            kWhat, ": the key has an authPolicy [3]; signed policies are not supported"));
      case 4: {
        ASSIGN_OR_RETURN(ByteSpan w, seq.Read(tag, "description [4]"));
        DerReader inner(w);
        ASSIGN_OR_RETURN(ByteSpan text, inner.Read(kTagUtf8String, "description [4]"));
        if (!inner.empty()) {
          return Malformed("description [4]: trailing bytes inside the explicit tag");
        }
        if (!ValidUtf8(text)) {
          return Malformed("description [4] is not valid UTF-8");
        }
        key.description = std::string(text.begin(), text.end());
        break;
      }
      case 5: {
        ASSIGN_OR_RETURN(ByteSpan w, seq.Read(tag, "rsaParent [5]"));
        ASSIGN_OR_RETURN(key.rsa_parent, ReadExplicitBoolean(w, "rsaParent [5]"));
        break;
      }
      default:
        return Malformed(absl::StrCat("unknown optional field [", number, "]"));
    }
  }
  ASSIGN_OR_RETURN(ByteSpan parent, seq.Read(kTagInteger, "parent"));
  ASSIGN_OR_RETURN(key.parent, DecodeParent(parent));
  if (key.parent == 0) {
    key.parent = TPM2_RH_OWNER;
  }
  ASSIGN_OR_RETURN(ByteSpan pub, seq.Read(kTagOctetString, "pubkey"));
  ASSIGN_OR_RETURN(ByteSpan priv, seq.Read(kTagOctetString, "privkey"));
  if (!seq.empty()) {
    return Malformed(absl::StrCat(seq.remaining(), " unexpected bytes after privkey"));
  }
  if (absl::Status s = ParsePublic(pub).status(); !s.ok()) {
    return Malformed(absl::StrCat("pubkey: ", s.message()));
  }
  key.pub.assign(pub.begin(), pub.end());
  if (priv.size() == 4 && priv[0] == (TPM2_HT_PERSISTENT & 0xff)) {
    key.persistent_handle = (static_cast<uint32_t>(priv[0]) << 24) |
                            (static_cast<uint32_t>(priv[1]) << 16) |
                            (static_cast<uint32_t>(priv[2]) << 8) | priv[3];
    return key;
  }
  if (absl::Status s = ParsePrivate(priv).status(); !s.ok()) {
    return Malformed(absl::StrCat("privkey: ", s.message()));
  }
  key.priv.assign(priv.begin(), priv.end());
  return key;
}

absl::StatusOr<Bytes> PemToDer(ByteSpan pem) {
  if (pem.size() > (1u << 20)) {
    return Malformed("PEM input larger than 1 MiB");
  }
  OsslPtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) {
    return OpenSslError("TSS2 PRIVATE KEY: BIO_new_mem_buf");
  }
  char* name_raw = nullptr;
  char* header_raw = nullptr;
  unsigned char* data_raw = nullptr;
  long len = 0;
  const int ok = PEM_read_bio(bio.get(), &name_raw, &header_raw, &data_raw, &len);
  std::unique_ptr<char, OpensslFree> name(name_raw);
  std::unique_ptr<char, OpensslFree> header(header_raw);
  std::unique_ptr<unsigned char, OpensslFree> data(data_raw);
  if (ok != 1) {
    return OpenSslError("TSS2 PRIVATE KEY: not a valid PEM block",
                        absl::StatusCode::kInvalidArgument);
  }
  if (std::strcmp(name.get(), kOldPemLabel) == 0) {
    return absl::UnimplementedError(
        "TSS2 PRIVATE KEY: the old \"TSS2 KEY BLOB\" format is not supported");
  }
  if (std::strcmp(name.get(), kPemLabel) != 0) {
    return Malformed(absl::StrCat("PEM label \"", name.get(), "\" is not \"", kPemLabel, "\""));
  }
  if (header != nullptr && header.get()[0] != '\0') {
    return Malformed("PEM headers (e.g. encryption) are not supported");
  }
  // Nothing but whitespace may follow the END line.
  char rest[256];
  int n = 0;
  while ((n = BIO_read(bio.get(), rest, sizeof(rest))) > 0) {
    for (int i = 0; i < n; ++i) {
      if (!absl::ascii_isspace(static_cast<unsigned char>(rest[i]))) {
        return Malformed("trailing data after the PEM block");
      }
    }
  }
  DrainOpenSslErrors();
  if (len <= 0) {
    return Malformed("empty PEM body");
  }
  return Bytes(data.get(), data.get() + len);
}

bool LooksLikePem(ByteSpan in) {
  size_t i = 0;
  while (i < in.size() && absl::ascii_isspace(in[i])) {
    ++i;
  }
  static constexpr std::string_view kBegin = "-----BEGIN ";
  return in.size() - i >= kBegin.size() &&
         std::memcmp(in.data() + i, kBegin.data(), kBegin.size()) == 0;
}

void AppendTlv(uint8_t tag, ByteSpan contents, Bytes* out) {
  out->push_back(tag);
  const size_t len = contents.size();
  if (len < 0x80) {
    out->push_back(static_cast<uint8_t>(len));
  } else if (len <= 0xff) {
    out->push_back(0x81);
    out->push_back(static_cast<uint8_t>(len));
  } else if (len <= 0xffff) {
    out->push_back(0x82);
    out->push_back(static_cast<uint8_t>(len >> 8));
    out->push_back(static_cast<uint8_t>(len));
  } else {
    out->push_back(0x83);
    out->push_back(static_cast<uint8_t>(len >> 16));
    out->push_back(static_cast<uint8_t>(len >> 8));
    out->push_back(static_cast<uint8_t>(len));
  }
  out->insert(out->end(), contents.begin(), contents.end());
}

Bytes Tlv(uint8_t tag, ByteSpan contents) {
  Bytes out;
  AppendTlv(tag, contents, &out);
  return out;
}

}  // namespace

absl::StatusOr<TpmKeyFile> ParseTpmKeyFile(ByteSpan pem_or_der) {
  if (pem_or_der.empty()) {
    return Malformed("empty input");
  }
  if (LooksLikePem(pem_or_der)) {
    size_t start = 0;  // PEM_read_bio wants "-----BEGIN" at the start of a line.
    while (absl::ascii_isspace(pem_or_der[start])) {
      ++start;
    }
    ASSIGN_OR_RETURN(Bytes der, PemToDer(pem_or_der.subspan(start)));
    return ParseDer(der);
  }
  return ParseDer(pem_or_der);
}

absl::StatusOr<Bytes> EncodeTpmKeyFileDer(const TpmKeyFile& key) {
  if (absl::Status s = ParsePublic(key.pub).status(); !s.ok()) {
    return Malformed(absl::StrCat("cannot encode: pubkey: ", s.message()));
  }
  Bytes priv = key.priv;
  if (key.persistent_handle.has_value()) {
    const uint32_t h = *key.persistent_handle;
    if ((h >> 24) != TPM2_HT_PERSISTENT) {
      return Malformed(absl::StrCat("cannot encode: 0x", absl::Hex(h, absl::kZeroPad8),
                                    " is not a persistent handle (0x81xxxxxx)"));
    }
    priv = {static_cast<uint8_t>(h >> 24), static_cast<uint8_t>(h >> 16),
            static_cast<uint8_t>(h >> 8), static_cast<uint8_t>(h)};
  } else if (absl::Status s = ParsePrivate(key.priv).status(); !s.ok()) {
    return Malformed(absl::StrCat("cannot encode: privkey: ", s.message()));
  }
  static constexpr uint8_t kTrue[] = {0xff};
  Bytes body;
  AppendTlv(kTagOid, kOidLoadable, &body);
  if (key.empty_auth) {
    AppendTlv(kTagContext0 | 0, Tlv(kTagBoolean, kTrue), &body);
  }
  if (key.description.has_value()) {
    const ByteSpan text = AsSpan(*key.description);
    if (!ValidUtf8(text)) {
      return Malformed("cannot encode: description is not valid UTF-8");
    }
    AppendTlv(kTagContext0 | 4, Tlv(kTagUtf8String, text), &body);
  }
  if (key.rsa_parent) {
    AppendTlv(kTagContext0 | 5, Tlv(kTagBoolean, kTrue), &body);
  }
  const uint32_t parent = key.parent == 0 ? TPM2_RH_OWNER : key.parent;
  Bytes parent_bytes = {0x00, static_cast<uint8_t>(parent >> 24),
                        static_cast<uint8_t>(parent >> 16), static_cast<uint8_t>(parent >> 8),
                        static_cast<uint8_t>(parent)};
  // Minimal positive encoding: drop leading zero bytes unless the next byte has its top bit set.
  size_t skip = 0;
  while (skip + 1 < parent_bytes.size() && parent_bytes[skip] == 0x00 &&
         (parent_bytes[skip + 1] & 0x80) == 0) {
    ++skip;
  }
  AppendTlv(kTagInteger, ByteSpan(parent_bytes).subspan(skip), &body);
  AppendTlv(kTagOctetString, key.pub, &body);
  AppendTlv(kTagOctetString, priv, &body);
  return Tlv(kTagSequence, body);
}

absl::StatusOr<std::string> EncodeTpmKeyFilePem(const TpmKeyFile& key) {
  ASSIGN_OR_RETURN(Bytes der, EncodeTpmKeyFileDer(key));
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      PEM_write_bio(bio.get(), kPemLabel, "", der.data(), static_cast<long>(der.size())) <= 0) {
    return OpenSslError("TSS2 PRIVATE KEY: PEM_write_bio");
  }
  char* mem = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &mem);
  if (len <= 0 || mem == nullptr) {
    return OpenSslError("TSS2 PRIVATE KEY: BIO_get_mem_data");
  }
  return std::string(mem, static_cast<size_t>(len));
}

}  // namespace hwid::wire
