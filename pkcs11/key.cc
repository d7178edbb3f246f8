// Keys: finding a key object and reading its public half, signing, protection attributes, and
// the token-object changes on an existing key (DestroyKey, RelabelKey).
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/ecdsa_der.h"
#include "common/ossl.h"
#include "common/sign.h"
#include "common/status_macros.h"
#include "pkcs11/call.h"
#include "pkcs11/internal.h"
#include "pkcs11/pkcs11.h"

namespace hwid::pkcs11 {
namespace {

// CkHash is what PKCS#11 needs to know about a digest: the CKM_ hash and CKG_MGF1_ of the PSS
// parameters, and the DER DigestInfo up to the digest octets (CKM_RSA_PKCS signs the DigestInfo).
struct CkHash {
  CK_MECHANISM_TYPE mech;
  CK_RSA_PKCS_MGF_TYPE mgf;
  ByteSpan digest_info_prefix;
};

constexpr uint8_t kDigestInfoSha1[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                       0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
constexpr uint8_t kDigestInfoSha224[] = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x04, 0x05, 0x00, 0x04, 0x1c};
constexpr uint8_t kDigestInfoSha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x01, 0x05, 0x00, 0x04, 0x20};
constexpr uint8_t kDigestInfoSha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x02, 0x05, 0x00, 0x04, 0x30};
constexpr uint8_t kDigestInfoSha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                         0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                         0x03, 0x05, 0x00, 0x04, 0x40};

CkHash CkHashFor(HashAlg hash) {
  switch (hash) {
    case HashAlg::kSha1:
      return {CKM_SHA_1, CKG_MGF1_SHA1, kDigestInfoSha1};
    case HashAlg::kSha224:
      return {CKM_SHA224, CKG_MGF1_SHA224, kDigestInfoSha224};
    case HashAlg::kSha256:
      break;
    case HashAlg::kSha384:
      return {CKM_SHA384, CKG_MGF1_SHA384, kDigestInfoSha384};
    case HashAlg::kSha512:
      return {CKM_SHA512, CKG_MGF1_SHA512, kDigestInfoSha512};
  }
  return {CKM_SHA256, CKG_MGF1_SHA256, kDigestInfoSha256};
}

// GetAttributeBytes reads one variable-length attribute (its length, then its value).
absl::StatusOr<Bytes> GetAttributeBytes(const Ck& ck, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                        CK_ATTRIBUTE_TYPE type, absl::string_view what) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  CkResult r = HWID_CK(ck, C_GetAttributeValue, s, o, &a, 1);
  if (!r.ok()) {
    return r.Status(absl::StrFormat("attribute 0x%lx", type), what);
  }
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    return absl::NotFoundError(
        absl::StrFormat("C_GetAttributeValue(0x%lx) on %s: attribute unavailable", type, what));
  }
  Bytes out(a.ulValueLen);
  a.pValue = out.data();
  r = HWID_CK(ck, C_GetAttributeValue, s, o, &a, 1);
  if (!r.ok()) {
    return r.Status(absl::StrFormat("attribute 0x%lx", type), what);
  }
  out.resize(a.ulValueLen);
  return out;
}

// EcPublicKey builds an EVP_PKEY from CKA_EC_PARAMS (named-curve OID) and CKA_EC_POINT (a DER
// OCTET STRING holding the uncompressed point; raw points are accepted too).
absl::StatusOr<OsslPtr<EVP_PKEY>> EcPublicKey(const Bytes& params, const Bytes& point_attr,
                                              int* bits) {
  const uint8_t* p = params.data();
  OsslPtr<ASN1_OBJECT> oid(d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(params.size())));
  if (oid == nullptr) {
    DrainOpenSslErrors();
    return absl::InvalidArgumentError("CKA_EC_PARAMS is not a named-curve OID");
  }
  const int nid = OBJ_obj2nid(oid.get());
  const char* group = OBJ_nid2sn(nid);
  if (nid == NID_undef || group == nullptr) {
    return absl::UnimplementedError("CKA_EC_PARAMS names a curve OpenSSL does not know");
  }
  Bytes point = point_attr;
  if (!point_attr.empty() && point_attr[0] == 0x04) {
    const uint8_t* q = point_attr.data();
    ASN1_OCTET_STRING* os = d2i_ASN1_OCTET_STRING(nullptr, &q, static_cast<long>(point_attr.size()));
    if (os != nullptr && q == point_attr.data() + point_attr.size()) {
      point.assign(os->data, os->data + os->length);
    }
    ASN1_OCTET_STRING_free(os);
    DrainOpenSslErrors();
  }
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return OpenSslError("building EC public key parameters");
  }
  OsslPtr<OSSL_PARAM> prm(OSSL_PARAM_BLD_to_param(bld.get()));
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (prm == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, prm.get()) <= 0) {
    return OpenSslError("EC public key from CKA_EC_POINT", absl::StatusCode::kInvalidArgument);
  }
  OsslPtr<EVP_PKEY> key(raw);
  *bits = EVP_PKEY_get_bits(key.get());
  return key;
}

absl::StatusOr<OsslPtr<EVP_PKEY>> RsaPublicKey(const Bytes& n, const Bytes& e, int* bits) {
  OsslPtr<BIGNUM> bn(BN_bin2bn(n.data(), static_cast<int>(n.size()), nullptr));
  OsslPtr<BIGNUM> be(BN_bin2bn(e.data(), static_cast<int>(e.size()), nullptr));
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (bn == nullptr || be == nullptr || bld == nullptr ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, be.get())) {
    return OpenSslError("building RSA public key parameters");
  }
  OsslPtr<OSSL_PARAM> prm(OSSL_PARAM_BLD_to_param(bld.get()));
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (prm == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, prm.get()) <= 0) {
    return OpenSslError("RSA public key from CKA_MODULUS", absl::StatusCode::kInvalidArgument);
  }
  OsslPtr<EVP_PKEY> key(raw);
  *bits = EVP_PKEY_get_bits(key.get());
  return key;
}

// ReadProtection reads the protection attributes of object `o` (one C_GetAttributeValue).
absl::StatusOr<KeyAttributes> ReadProtection(const Ck& ck, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                             absl::string_view what) {
  CK_BBOOL v[7] = {};
  CK_ATTRIBUTE a[7] = {
      {CKA_TOKEN, &v[0], 1},     {CKA_PRIVATE, &v[1], 1},
      {CKA_SENSITIVE, &v[2], 1}, {CKA_EXTRACTABLE, &v[3], 1},
      {CKA_ALWAYS_SENSITIVE, &v[4], 1}, {CKA_NEVER_EXTRACTABLE, &v[5], 1},
      {CKA_SIGN, &v[6], 1},
  };
  RETURN_IF_ERROR(
      HWID_CK(ck, C_GetAttributeValue, s, o, a, 7).Status("protection attributes", what));
  KeyAttributes out;
  out.token = v[0] == CK_TRUE;
  out.is_private = v[1] == CK_TRUE;
  out.sensitive = v[2] == CK_TRUE;
  out.extractable = v[3] == CK_TRUE;
  out.always_sensitive = v[4] == CK_TRUE;
  out.never_extractable = v[5] == CK_TRUE;
  out.sign = v[6] == CK_TRUE;
  return out;
}

// CopyTemplateRefused is true for the CK_RVs with which a token refuses the attributes hwid sets
// on a copy (it may still copy with CKA_TOKEN alone; the copy's attributes are checked anyway).
bool CopyTemplateRefused(CK_RV rv) {
  return rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
         rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT;
}

}  // namespace

bool SessionCopyKeepsProtection(const KeyAttributes& source, const KeyAttributes& copy) {
  return !copy.token && copy.sign && copy.sensitive && !copy.extractable &&
         (copy.is_private || !source.is_private) &&
         (copy.always_sensitive || !source.always_sensitive) &&
         (copy.never_extractable || !source.never_extractable);
}

std::string IdHex(const Bytes& id) { return id.empty() ? "(none)" : HexEncode(id); }

absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(const Ck& ck, CK_SESSION_HANDLE s,
                                                          CK_ATTRIBUTE* tmpl, CK_ULONG count,
                                                          size_t max, absl::string_view what) {
  RETURN_IF_ERROR(HWID_CK(ck, C_FindObjectsInit, s, tmpl, count).Status(what));
  std::vector<CK_OBJECT_HANDLE> out;
  CkResult r(CKR_OK, "C_FindObjects");
  while (true) {
    CK_OBJECT_HANDLE chunk[64];
    const CK_ULONG want = max > 0 ? std::min<size_t>(max, 64) : 64;
    CK_ULONG n = 0;
    r = HWID_CK(ck, C_FindObjects, s, chunk, want, &n);
    if (!r.ok()) {
      break;
    }
    out.insert(out.end(), chunk, chunk + n);
    if (n == 0 || max > 0) {
      break;
    }
  }
  (void)HWID_CK(ck, C_FindObjectsFinal, s);
  RETURN_IF_ERROR(r.Status(what));
  return out;
}

absl::StatusOr<unsigned long> Token::FindPrivateKeyHandle(unsigned long session,
                                                          const std::optional<std::string>& label,
                                                          const std::optional<Bytes>& id,
                                                          absl::string_view what) {
  const Ck ck = this->ck();
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_BBOOL on_token = CK_TRUE;  // never a session copy (ours or another key's in this process)
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof(cls)},
                                    {CKA_TOKEN, &on_token, sizeof(on_token)}};
  if (label.has_value()) {
    tmpl.push_back({CKA_LABEL, const_cast<char*>(label->data()), label->size()});
  }
  if (id.has_value()) {
    tmpl.push_back({CKA_ID, const_cast<uint8_t*>(id->data()), id->size()});
  }
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                   FindObjects(ck, session, tmpl.data(), tmpl.size(), 2, Describe()));
  const size_t n = found.size();
  if (n == 0) {
    // Private keys are invisible without a login; ask the token rather than trusting our flag
    // (another user of the module may have logged the process out).
    const bool user = UserLoggedIn(ck, session);
    return absl::NotFoundError(absl::StrCat(
        "no private key ", what, " on ", Describe(),
        user ? "" : "; not logged in: private keys are visible only after login (give "
                    "pin-value/pin-source in the URI, HWID_PKCS11_PIN or pkcs11-pin-source)"));
  }
  if (n > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "several private keys ", what, " on ", Describe(), "; add id= or object= to the URI"));
  }
  return found[0];
}

absl::StatusOr<std::shared_ptr<Key>> Token::MakeKey(unsigned long session, unsigned long handle) {
  const Ck ck = this->ck();
  const std::string what = absl::StrCat("private key object on ", Describe());
  CK_KEY_TYPE kt = 0;
  CK_ATTRIBUTE a{CKA_KEY_TYPE, &kt, sizeof(kt)};
  RETURN_IF_ERROR(HWID_CK(ck, C_GetAttributeValue, session, handle, &a, 1).Status("CKA_KEY_TYPE", what));
  ASSIGN_OR_RETURN(Bytes id, GetAttributeBytes(ck, session, handle, CKA_ID, what));
  absl::StatusOr<Bytes> label_bytes = GetAttributeBytes(ck, session, handle, CKA_LABEL, what);
  std::string label = label_bytes.ok() ? std::string(label_bytes->begin(), label_bytes->end()) : "";
  OsslPtr<EVP_PKEY> pub;
  int bits = 0;
  KeyType type;
  if (kt == CKK_RSA) {
    type = KeyType::kRsa;
    ASSIGN_OR_RETURN(Bytes n, GetAttributeBytes(ck, session, handle, CKA_MODULUS, what));
    ASSIGN_OR_RETURN(Bytes e, GetAttributeBytes(ck, session, handle, CKA_PUBLIC_EXPONENT, what));
    ASSIGN_OR_RETURN(pub, RsaPublicKey(n, e, &bits));
  } else if (kt == CKK_EC) {
    type = KeyType::kEc;
    // The EC point lives in the public key object with the same CKA_ID.
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id.data(), id.size()}};
    ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> pubs, FindObjects(ck, session, t, 2, 1, what));
    if (pubs.empty()) {
      return absl::NotFoundError(absl::StrCat("EC key '", label, "' (id ", IdHex(id), ") on ",
                                              Describe(),
                                              " has no public key object with the same CKA_ID"));
    }
    ASSIGN_OR_RETURN(Bytes params, GetAttributeBytes(ck, session, pubs[0], CKA_EC_PARAMS, what));
    ASSIGN_OR_RETURN(Bytes point, GetAttributeBytes(ck, session, pubs[0], CKA_EC_POINT, what));
    ASSIGN_OR_RETURN(pub, EcPublicKey(params, point, &bits));
  } else {
    return absl::UnimplementedError(absl::StrFormat(
        "key '%s' on %s has key type 0x%lx; hwid supports CKK_EC and CKK_RSA", label, Describe(), kt));
  }
  std::string uri = FormatObjectUri(fields_, label, id, "private");
  return std::shared_ptr<Key>(new Key(shared_from_this(), handle, type, bits, std::move(pub),
                                      std::move(label), std::move(id), std::move(uri)));
}

absl::StatusOr<std::shared_ptr<Key>> Token::FindKey(absl::string_view uri) {
  ASSIGN_OR_RETURN(Pkcs11Uri parsed, ParseUri(uri));
  return FindKey(parsed);
}

absl::StatusOr<std::shared_ptr<Key>> Token::FindKey(const Pkcs11Uri& uri) {
  if (uri.type.has_value() && *uri.type != "private") {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", uri.redacted, "' names type=", *uri.type, "; hwid signs with type=private objects"));
  }
  if (!uri.object.has_value() && !uri.id.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", uri.redacted, "' names no key: add object=LABEL and/or id=%xx"));
  }
  std::string what = "matching";
  if (uri.object) absl::StrAppend(&what, " object='", *uri.object, "'");
  if (uri.id) absl::StrAppend(&what, " id=", HexEncode(*uri.id));
  ASSIGN_OR_RETURN(unsigned long s, AcquireSession());
  Lease lease(this, s);
  absl::StatusOr<unsigned long> h = FindPrivateKeyHandle(s, uri.object, uri.id, what);
  if (!h.ok()) {
    if (h.status().code() == absl::StatusCode::kUnavailable) {
      lease.Discard();
    }
    return h.status();
  }
  return MakeKey(s, *h);
}

absl::Status Token::CheckSameToken(const Key& key, absl::string_view operation) const {
  if (key.token_->module_ != module_ || key.token_->slot_id_ != slot_id_) {
    return absl::InvalidArgumentError(absl::StrCat(operation, ": ", key.Describe(),
                                                   " was found through another slot or module than ",
                                                   Describe()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<unsigned long>> Token::FindPublicKeyHandles(unsigned long session,
                                                                       const Key& key) {
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof(cls)},
                                    {CKA_ID, const_cast<uint8_t*>(key.id_.data()), key.id_.size()}};
  if (key.id_.empty()) {
    // Without a CKA_ID, "the same CKA_ID" would match every public key without one.
    tmpl.push_back({CKA_LABEL, const_cast<char*>(key.label_.data()), key.label_.size()});
  }
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                   FindObjects(ck(), session, tmpl.data(), tmpl.size(), 16,
                               absl::StrCat("the public key objects of ", key.Describe())));
  return std::vector<unsigned long>(found.begin(), found.end());
}

absl::Status Token::DestroyKey(const Key& key) {
  RETURN_IF_ERROR(CheckSameToken(key, "destroying a key"));
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, OpenWriteSession("destroying a key"));
  SessionCloser closer{ck, s};
  ASSIGN_OR_RETURN(unsigned long privh,
                   FindPrivateKeyHandle(s, key.label_.empty() ? std::nullopt
                                                              : std::optional<std::string>(key.label_),
                                        key.id_, absl::StrCat("with id ", IdHex(key.id_))));
  ASSIGN_OR_RETURN(std::vector<unsigned long> pubs, FindPublicKeyHandles(s, key));
  RETURN_IF_ERROR(HWID_CK(ck, C_DestroyObject, s, privh).Status("private key", key.Describe()));
  // The session copies this process signs with go too (copies in other processes die with their
  // sessions; see docs/threat-model.md).
  RETURN_IF_ERROR(DestroySessionCopies(s, key));
  for (unsigned long h : pubs) {
    const CkResult r = HWID_CK(ck, C_DestroyObject, s, h);
    if (!r.ok()) {
      const absl::Status st = r.Status("public key", key.Describe());
      return absl::Status(st.code(), absl::StrCat(st.message(), "; the private key is destroyed, "
                                                  "its public key object remains"));
    }
  }
  return absl::OkStatus();
}

absl::Status Token::DestroySessionCopies(unsigned long session, const Key& key) {
  const Ck ck = this->ck();
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_BBOOL on_token = CK_FALSE;
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof(cls)},
                                    {CKA_TOKEN, &on_token, sizeof(on_token)},
                                    {CKA_ID, const_cast<uint8_t*>(key.id_.data()), key.id_.size()}};
  if (key.id_.empty()) {
    tmpl.push_back({CKA_LABEL, const_cast<char*>(key.label_.data()), key.label_.size()});
  }
  const std::string what = absl::StrCat("the session copies of ", key.Describe());
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> copies,
                   FindObjects(ck, session, tmpl.data(), tmpl.size(), 0, what));
  for (CK_OBJECT_HANDLE h : copies) {
    const CkResult r = HWID_CK(ck, C_DestroyObject, session, h);
    if (!r.ok() && r.rv() != CKR_OBJECT_HANDLE_INVALID) {
      const absl::Status st = r.Status(what);
      return absl::Status(st.code(), absl::StrCat(st.message(), "; the token object is destroyed"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Key>> Token::RelabelKey(const Key& key,
                                                       absl::string_view new_label) {
  if (new_label.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("relabelling ", key.Describe(), ": the new label must not be empty"));
  }
  RETURN_IF_ERROR(CheckSameToken(key, "relabelling a key"));
  const Ck ck = this->ck();
  ASSIGN_OR_RETURN(unsigned long s, OpenWriteSession("relabelling a key"));
  SessionCloser closer{ck, s};
  ASSIGN_OR_RETURN(unsigned long privh,
                   FindPrivateKeyHandle(s, key.label_.empty() ? std::nullopt
                                                              : std::optional<std::string>(key.label_),
                                        key.id_, absl::StrCat("with id ", IdHex(key.id_))));
  const std::string lbl(new_label);
  absl::StatusOr<unsigned long> existing =
      FindPrivateKeyHandle(s, lbl, std::nullopt, absl::StrCat("labelled '", lbl, "'"));
  if ((existing.ok() && *existing != privh) ||
      existing.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::AlreadyExistsError(absl::StrCat("relabelling ", key.Describe(), ": a private key labelled '",
                                                 lbl, "' already exists on ", Describe()));
  }
  if (!existing.ok() && !absl::IsNotFound(existing.status())) {
    return existing.status();
  }
  ASSIGN_OR_RETURN(std::vector<unsigned long> pubs, FindPublicKeyHandles(s, key));
  CK_ATTRIBUTE set{CKA_LABEL, const_cast<char*>(lbl.data()), lbl.size()};
  RETURN_IF_ERROR(HWID_CK(ck, C_SetAttributeValue, s, privh, &set, 1)
                      .Status("CKA_LABEL of the private key", key.Describe()));
  for (unsigned long h : pubs) {
    const CkResult r = HWID_CK(ck, C_SetAttributeValue, s, h, &set, 1);
    if (!r.ok()) {
      CK_ATTRIBUTE undo{CKA_LABEL, const_cast<char*>(key.label_.data()), key.label_.size()};
      const bool undone = HWID_CK(ck, C_SetAttributeValue, s, privh, &undo, 1).ok();
      const absl::Status st = r.Status("CKA_LABEL of the public key", key.Describe());
      return absl::Status(st.code(), absl::StrCat(st.message(), undone
                                                  ? "; the private key keeps its old label"
                                                  : "; the private key is relabelled, its public "
                                                    "key object is not"));
    }
  }
  return MakeKey(s, privh);
}

// ----------------------------------------------------------------------------------------------
// Key.

Key::Key(std::shared_ptr<Token> token, unsigned long handle, hwid::KeyType type, int bits,
         OsslPtr<EVP_PKEY> public_key, std::string label, Bytes id, std::string uri)
    : token_(std::move(token)),
      handle_(handle),
      generation_(ForkGeneration()),
      type_(type),
      bits_(bits),
      public_key_(std::move(public_key)),
      label_(std::move(label)),
      id_(std::move(id)),
      uri_(std::move(uri)) {}

std::string Key::Describe() const {
  return absl::StrFormat("PKCS#11 key '%s' (id %s) on token '%s'", label_, IdHex(id_),
                         token_->fields_.label);
}

absl::StatusOr<unsigned long> Key::Handle(unsigned long session, bool refind) {
  const uint64_t gen = ForkGeneration();
  if (!refind && generation_.load(std::memory_order_acquire) == gen) {
    return handle_.load(std::memory_order_relaxed);
  }
  absl::StatusOr<unsigned long> h = token_->FindPrivateKeyHandle(
      session, label_.empty() ? std::nullopt : std::optional<std::string>(label_), id_,
      absl::StrCat("with id ", IdHex(id_)));
  if (!h.ok()) {
    return absl::Status(h.status().code(),
                        absl::StrCat(Describe(), " is no longer usable: ", h.status().message()));
  }
  handle_.store(*h, std::memory_order_relaxed);
  generation_.store(gen, std::memory_order_release);
  return *h;
}

// ----------------------------------------------------------------------------------------------
// The session copy (pkcs11.h file comment).

absl::StatusOr<unsigned long> Key::SigningHandle(unsigned long session) {
  if (copy_generation_.load(std::memory_order_acquire) == ForkGeneration()) {
    const unsigned long copy = copy_.load(std::memory_order_relaxed);
    return copy != CK_INVALID_HANDLE ? copy : Handle(session, false);
  }
  return MakeSessionCopy(session);
}

absl::StatusOr<unsigned long> Key::MakeSessionCopy(unsigned long session) {
  const uint64_t gen = ForkGeneration();
  ASSIGN_OR_RETURN(const unsigned long source, Handle(session, false));
  std::lock_guard<std::mutex> lock(token_->mu_);
  if (copy_generation_.load() == gen) {  // another thread decided meanwhile
    const unsigned long copy = copy_.load();
    return copy != CK_INVALID_HANDLE ? copy : source;
  }
  // A copy of another fork generation belongs to the parent's handle space: forget it, never
  // destroy it (the handle may name another object here).
  copy_.store(CK_INVALID_HANDLE);
  const auto decide = [&](CK_OBJECT_HANDLE copy) {
    copy_.store(copy, std::memory_order_relaxed);
    copy_generation_.store(gen, std::memory_order_release);
    return copy != CK_INVALID_HANDLE ? copy : source;
  };
  if (!token_->session_copies_ || token_->generation_.load() != gen) {
    return decide(CK_INVALID_HANDLE);
  }
  // The copy belongs to the token's own session: it lives as long as the Token (or the login).
  absl::StatusOr<unsigned long> own = token_->OwnSession();
  if (!own.ok()) {
    return decide(CK_INVALID_HANDLE);
  }
  const Ck ck = token_->ck();
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {{CKA_TOKEN, &no, sizeof(no)},
                         {CKA_SENSITIVE, &yes, sizeof(yes)},
                         {CKA_EXTRACTABLE, &no, sizeof(no)}};
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  CkResult r = HWID_CK(ck, C_CopyObject, *own, source, tmpl, 3, &copy);
  if (CopyTemplateRefused(r.rv())) {
    // Some tokens refuse to set attributes in a copy; the copy is checked below either way.
    r = HWID_CK(ck, C_CopyObject, *own, source, tmpl, 1, &copy);
  }
  if (!r.ok()) {
    // Refused (CKA_COPYABLE false: CKR_ACTION_PROHIBITED; no C_CopyObject; out of memory ...):
    // the token object signs, as it would without copies.
    return decide(CK_INVALID_HANDLE);
  }
  absl::StatusOr<KeyAttributes> src = ReadProtection(ck, *own, source, Describe());
  absl::StatusOr<KeyAttributes> got = ReadProtection(ck, *own, copy, Describe());
  if (!src.ok() || !got.ok() || !SessionCopyKeepsProtection(*src, *got)) {
    (void)HWID_CK(ck, C_DestroyObject, *own, copy);
    return decide(CK_INVALID_HANDLE);
  }
  return decide(copy);
}

void Key::ForgetSessionCopy(unsigned long handle) {
  // `handle` failed: if it was the copy, the copy is gone; if the token object signed (no copy),
  // the reason there was none (e.g. not logged in) may be gone too. Either way decide again,
  // unless another thread already made a new copy.
  const unsigned long copy = copy_.load();
  if (copy != handle && copy != CK_INVALID_HANDLE) {
    return;
  }
  std::lock_guard<std::mutex> lock(token_->mu_);
  if (copy_.load() == copy) {
    copy_generation_.store(0, std::memory_order_release);
    copy_.store(CK_INVALID_HANDLE);
  }
}

bool Key::signs_with_session_copy() const {
  return copy_generation_.load(std::memory_order_acquire) == ForkGeneration() &&
         copy_.load(std::memory_order_relaxed) != CK_INVALID_HANDLE;
}

Key::~Key() {
  const unsigned long copy = copy_.load();
  if (copy == CK_INVALID_HANDLE || copy_generation_.load() != ForkGeneration() ||
      !ModuleUsable()) {
    return;  // no copy of ours, a parent's, or the process is exiting (the token drops it)
  }
  std::lock_guard<std::mutex> lock(token_->mu_);
  const CK_SESSION_HANDLE own = token_->login_session_;
  if (own == CK_INVALID_HANDLE || token_->generation_.load() != ForkGeneration()) {
    return;
  }
  // Destroy only our copy: after a logout destroyed it, its handle may name another object.
  const Ck ck = token_->ck();
  CK_OBJECT_CLASS cls = 0;
  CK_BBOOL on_token = CK_TRUE;
  Bytes id(id_.size());
  CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)},
                      {CKA_TOKEN, &on_token, sizeof(on_token)},
                      {CKA_ID, id.data(), id.size()}};
  if (HWID_CK(ck, C_GetAttributeValue, own, copy, a, 3).ok() && cls == CKO_PRIVATE_KEY &&
      on_token == CK_FALSE && a[2].ulValueLen == id_.size() && id == id_) {
    (void)HWID_CK(ck, C_DestroyObject, own, copy);
  }
}

absl::StatusOr<Bytes> Key::Sign(ByteSpan digest, const hwid::SignParams& params) {
  if (absl::Status st = CheckSignRequest(type_, digest, params); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("signing with ", Describe(), ": ", st.message()));
  }
  const bool is_ec = type_ == KeyType::kEc;
  const CkHash d = CkHashFor(params.hash);
  CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
  CK_RSA_PKCS_PSS_PARAMS pss{};
  Bytes data;
  ByteSpan input = digest;
  const char* mech_name = "CKM_ECDSA";
  if (params.scheme == SignScheme::kRsaPkcs1) {
    mech.mechanism = CKM_RSA_PKCS;
    mech_name = "CKM_RSA_PKCS";
    data.reserve(d.digest_info_prefix.size() + digest.size());
    data.assign(d.digest_info_prefix.begin(), d.digest_info_prefix.end());
    data.insert(data.end(), digest.begin(), digest.end());
    input = data;
  } else if (params.scheme == SignScheme::kRsaPss) {
    const int hlen = static_cast<int>(digest.size());
    const int salt = params.pss_salt_len.value_or(hlen);
    const int max_salt = (bits_ + 7) / 8 - hlen - 2;
    if (salt < 0 || salt > max_salt) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "signing with %s: PSS salt length %d out of range 0..%d", Describe(), salt, max_salt));
    }
    pss.hashAlg = d.mech;
    pss.mgf = d.mgf;
    pss.sLen = static_cast<CK_ULONG>(salt);
    mech = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    mech_name = "CKM_RSA_PKCS_PSS";
  }
  const Ck ck = token_->ck();
  ASSIGN_OR_RETURN(unsigned long s, token_->AcquireSession());
  Token::Lease lease(token_.get(), s);
  ASSIGN_OR_RETURN(unsigned long h, SigningHandle(s));
  Bytes sig(is_ec ? 2 * 66 : static_cast<size_t>((bits_ + 7) / 8));
  CK_ULONG sig_len = sig.size();
  CkResult r = lease.Check(HWID_CK(ck, C_SignInit, s, &mech, h));
  if (r.rv() == CKR_KEY_HANDLE_INVALID || r.rv() == CKR_OBJECT_HANDLE_INVALID ||
      r.rv() == CKR_USER_NOT_LOGGED_IN) {
    // Someone else using the module in this process may have logged it out (private objects
    // then vanish): log in again, once, with the key's PIN. The object may also have been
    // re-created or the module re-initialised: look it up once more. A logout also destroyed the
    // session copy (private session objects die with the login): make a new one.
    ForgetSessionCopy(h);
    if (!UserLoggedIn(ck, s) && token_->HasPin()) {
      RETURN_IF_ERROR(token_->Relogin());
    }
    ASSIGN_OR_RETURN(h, Handle(s, true));
    ASSIGN_OR_RETURN(h, SigningHandle(s));
    r = lease.Check(HWID_CK(ck, C_SignInit, s, &mech, h));
  }
  // Messages are built only on failure: this is the per-signature hot path.
  if (!r.ok()) {
    return r.Status(mech_name, Describe());
  }
  r = lease.Check(HWID_CK(ck, C_Sign, s, const_cast<uint8_t*>(input.data()), input.size(),
                          sig.data(), &sig_len));
  if (!r.ok()) {
    lease.Discard();  // an operation may still be active on it
    return r.Status(mech_name, Describe());
  }
  sig.resize(sig_len);
  if (!is_ec) {
    return sig;
  }
  // CKM_ECDSA returns r || s; OpenSSL wants a DER ECDSA-Sig-Value.
  if (sig_len == 0 || sig_len % 2 != 0) {
    return absl::InternalError(absl::StrFormat("C_Sign (CKM_ECDSA) with %s returned %u bytes",
                                               Describe(), sig_len));
  }
  const ByteSpan rs(sig.data(), sig_len);
  return EcdsaDerFromRS(rs.subspan(0, sig_len / 2), rs.subspan(sig_len / 2));
}

absl::StatusOr<KeyAttributes> Key::ReadAttributes() {
  ASSIGN_OR_RETURN(unsigned long s, token_->AcquireSession());
  Token::Lease lease(token_.get(), s);
  ASSIGN_OR_RETURN(unsigned long h, Handle(s, false));
  absl::StatusOr<KeyAttributes> a = ReadProtection(token_->ck(), s, h, Describe());
  RETURN_IF_ERROR(lease.CheckStatus(a.status()));
  return a;
}

}  // namespace hwid::pkcs11
