#include "tpm/wire/ekcert.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <set>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"

namespace hwid::wire {
namespace {

std::string NameToString(X509_NAME* name) {
  if (name == nullptr) {
    return "";
  }
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    DrainOpenSslErrors();
    return "<unprintable name>";
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// OpensslFree releases PEM_read_bio's OPENSSL_malloc'd outputs.
struct OpensslFree {
  void operator()(void* p) const noexcept { OPENSSL_free(p); }
};

constexpr char kEkCertificateEku[] = "2.23.133.8.1";
constexpr char kTcgManufacturer[] = "2.23.133.2.1";
constexpr char kTcgModel[] = "2.23.133.2.2";
constexpr char kTcgVersion[] = "2.23.133.2.3";

std::string ObjToText(const ASN1_OBJECT* obj) {
  char buf[128];
  int n = OBJ_obj2txt(buf, sizeof(buf), obj, 1);
  if (n <= 0 || static_cast<size_t>(n) >= sizeof(buf)) {
    return "";
  }
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

absl::StatusOr<NvCertificate> ExtractNvCertificate(ByteSpan nv) {
  NvCertificate out;
  out.nv_size = nv.size();
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("certificate NV contents (", nv.size(),
                                                   " bytes): ", what));
  };
  if (nv.empty()) {
    return invalid("empty (no certificate)");
  }
  // 1. The TCG PC Client NV header (TPM 1.2 era, still shipped): 10 01 00, then the certificate
  //    length, 2 bytes big-endian.
  size_t start = 0;
  std::optional<size_t> header_length;
  if (nv.size() >= 5 && nv[0] == 0x10 && nv[1] == 0x01 && nv[2] == 0x00) {
    header_length = (static_cast<size_t>(nv[3]) << 8) | nv[4];
    out.tcg_wrapper = true;
    start = 5;
  }
  // 2. A DER SEQUENCE whose length fits.
  const ByteSpan rest = nv.subspan(start);
  if (rest.empty() || rest[0] != 0x30) {
    return invalid(absl::StrCat(
        out.tcg_wrapper ? "after the TCG NV header 10 01 00, " : "",
        rest.empty() ? "nothing follows"
                     : absl::StrCat("the first byte is 0x", absl::Hex(rest[0], absl::kZeroPad2),
                                    ", not 0x30 (a DER SEQUENCE)"),
        ": not an X.509 DER certificate"));
  }
  if (rest.size() < 2) {
    return invalid("truncated DER SEQUENCE header");
  }
  size_t header = 2;
  size_t length = 0;
  if ((rest[1] & 0x80) == 0) {
    length = rest[1];
  } else {
    const size_t n = rest[1] & 0x7f;
    if (n == 0 || n > 3) {
      return invalid(absl::StrCat("bad DER length field 0x", absl::Hex(rest[1], absl::kZeroPad2),
                                  " (indefinite or longer than 3 bytes)"));
    }
    if (rest.size() < 2 + n) {
      return invalid("truncated DER length field");
    }
    for (size_t i = 0; i < n; ++i) {
      length = (length << 8) | rest[2 + i];
    }
    header += n;
  }
  const size_t total = header + length;
  if (header_length.has_value() && *header_length != total) {
    return invalid(absl::StrCat("the TCG NV header 10 01 00 gives a certificate length of ",
                                *header_length, " bytes, the DER SEQUENCE after it is ", total,
                                " bytes"));
  }
  if (total > rest.size()) {
    return invalid(absl::StrCat("truncated: the DER certificate needs ", total,
                                " bytes, the NV index holds ", rest.size(),
                                out.tcg_wrapper ? " after the TCG NV header" : ""));
  }
  out.der.assign(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(total));
  absl::StatusOr<OsslPtr<X509>> cert = ParseCertificateDer(out.der);
  if (!cert.ok()) {
    return invalid(absl::StrCat("the DER SEQUENCE of ", total,
                                " bytes is not an X.509 certificate: ", cert.status().message()));
  }
  // 3. What follows: trailing bytes up to the last non-padding byte, then padding.
  const ByteSpan tail = rest.subspan(total);
  size_t pad_start = tail.size();
  while (pad_start > 0 && (tail[pad_start - 1] == 0x00 || tail[pad_start - 1] == 0xff)) {
    --pad_start;
  }
  out.trailing_bytes = pad_start;
  out.padding_bytes = tail.size() - pad_start;
  if (out.tcg_wrapper) {
    out.quirks.push_back(absl::StrCat("TCG PC Client NV header 10 01 00 (length ", total,
                                      ") before the DER"));
  }
  if (out.trailing_bytes > 0) {
    out.quirks.push_back(absl::StrCat(out.trailing_bytes,
                                      " bytes after the DER certificate that are not 0x00/0xff "
                                      "padding"));
  }
  if (out.padding_bytes > 0) {
    bool zeros = false;
    bool ones = false;
    for (size_t i = pad_start; i < tail.size(); ++i) {
      (tail[i] == 0x00 ? zeros : ones) = true;
    }
    out.quirks.push_back(absl::StrCat(out.padding_bytes, " bytes of ",
                                      zeros && ones ? "0x00/0xff" : (zeros ? "0x00" : "0xff"),
                                      " padding after the DER certificate"));
  }
  return out;
}

absl::StatusOr<Bytes> ExtractEkCertificateDer(ByteSpan nv) {
  ASSIGN_OR_RETURN(NvCertificate c, ExtractNvCertificate(nv));
  return std::move(c.der);
}

absl::StatusOr<OsslPtr<X509>> ParseCertificateDer(ByteSpan der) {
  const unsigned char* p = der.data();
  OsslPtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) {
    return OpenSslError("cannot parse DER certificate", absl::StatusCode::kInvalidArgument);
  }
  if (p != der.data() + der.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate DER has ", der.data() + der.size() - p, " trailing bytes"));
  }
  return cert;
}

namespace {

// ReadPemCertificates reads every PEM block of `pem` into `out`. Text outside the blocks is
// ignored (PEM_read_bio skips to the next "-----BEGIN" line). Block by block, so that a garbled
// block or one of another type fails the whole bundle instead of silently ending it
// (PEM_read_bio_X509 stops at the first bad block, and a bundle missing the rest of its roots
// fails later, far from the cause). `what` prefixes the messages ("CA bundle", a file name).
absl::Status ReadPemCertificates(ByteSpan pem, absl::string_view what,
                                 std::vector<OsslPtr<X509>>* out) {
  OsslPtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) {
    return OpenSslError("BIO_new_mem_buf");
  }
  for (int block = 1;; ++block) {
    char* name_raw = nullptr;
    char* header_raw = nullptr;
    unsigned char* data_raw = nullptr;
    long len = 0;
    ERR_clear_error();
    const int ok = PEM_read_bio(bio.get(), &name_raw, &header_raw, &data_raw, &len);
    const std::unique_ptr<char, OpensslFree> name_owner(name_raw), header_owner(header_raw);
    const std::unique_ptr<unsigned char, OpensslFree> data_owner(data_raw);
    const std::string name = name_raw != nullptr ? name_raw : "";
    const std::string header = header_raw != nullptr ? header_raw : "";
    const Bytes der(data_raw, data_raw + (ok == 1 && len > 0 ? len : 0));
    if (ok != 1) {
      const unsigned long err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        DrainOpenSslErrors();  // the end of the data: no further "-----BEGIN" line
        break;
      }
      return OpenSslError(absl::StrCat(what, ": PEM block ", block,
                                       " cannot be read (bad base64, a missing END line or "
                                       "truncated data)"),
                          absl::StatusCode::kInvalidArgument);
    }
    if (name != "CERTIFICATE") {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": PEM block ", block, " is a '", name.substr(0, 40),
          "', not a CERTIFICATE (a CA bundle holds certificates only)"));
    }
    if (!header.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": PEM block ", block, " has PEM headers (encrypted or legacy PEM)"));
    }
    absl::StatusOr<OsslPtr<X509>> cert = ParseCertificateDer(der);
    if (!cert.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": PEM block ", block, ": ", cert.status().message()));
    }
    out->push_back(std::move(*cert));
  }
  return absl::OkStatus();
}

Bytes ToDerBytes(X509* cert) {
  unsigned char* buf = nullptr;
  const int len = i2d_X509(cert, &buf);
  const std::unique_ptr<unsigned char, OpensslFree> owner(buf);
  if (len <= 0) {
    DrainOpenSslErrors();
    return {};
  }
  return Bytes(buf, buf + len);
}

bool SelfSigned(X509* cert) { return X509_check_issued(cert, cert) == X509_V_OK; }

}  // namespace

absl::StatusOr<CaBundle> LoadCaBundlePem(ByteSpan pem) {
  std::vector<OsslPtr<X509>> certs;
  RETURN_IF_ERROR(ReadPemCertificates(pem, "CA bundle", &certs));
  CaBundle out;
  for (OsslPtr<X509>& cert : certs) {
    (SelfSigned(cert.get()) ? out.roots : out.intermediates).push_back(std::move(cert));
  }
  if (out.roots.empty() && out.intermediates.empty()) {
    return absl::InvalidArgumentError("CA bundle holds no PEM certificate");
  }
  if (out.roots.empty()) {
    return absl::InvalidArgumentError(
        "CA bundle holds no self-signed root certificate (intermediates alone are never trust "
        "anchors)");
  }
  return out;
}

namespace {

constexpr int kMaxTrustBundleDepth = 16;

bool IsCertificateFileName(const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const char* ext : {".pem", ".crt", ".cer", ".der"}) {
    if (absl::EndsWith(lower, ext)) {
      return true;
    }
  }
  return false;
}

// ReadCertificateFile reads one file: PEM (it holds a "-----BEGIN" line) or one DER certificate.
absl::Status ReadCertificateFile(const std::string& path, std::vector<OsslPtr<X509>>* out) {
  ASSIGN_OR_RETURN(Bytes data, ReadFile(path));
  const absl::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  if (absl::StrContains(text, "-----BEGIN")) {
    const size_t before = out->size();
    RETURN_IF_ERROR(ReadPemCertificates(data, path, out));
    if (out->size() == before) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no PEM certificate"));
    }
    return absl::OkStatus();
  }
  if (data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": empty file (no certificate)"));
  }
  absl::StatusOr<OsslPtr<X509>> cert = ParseCertificateDer(data);
  if (!cert.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": neither PEM nor one DER certificate: ", cert.status().message()));
  }
  out->push_back(std::move(*cert));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CaBundle> LoadTrustBundle(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat("trust bundle ", path, ": ",
                                            ec ? ec.message() : "no such file or directory"));
  }
  CaBundle out;
  std::vector<std::string> files;
  if (fs::is_directory(st)) {
    // Not following directory symlinks keeps a link loop from hanging the walk; the depth bound
    // guards against a pathological tree.
    fs::recursive_directory_iterator it(path, fs::directory_options::none, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle directory ", path, ": ", ec.message()));
    }
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) {
        return absl::InvalidArgumentError(
            absl::StrCat("trust bundle directory ", path, ": ", ec.message()));
      }
      const fs::directory_entry& entry = *it;
      const std::string name = entry.path().filename().string();
      std::error_code ec2;
      const bool is_dir = entry.is_directory(ec2) && !entry.is_symlink(ec2);
      if (is_dir) {
        if (absl::StartsWith(name, ".") || it.depth() >= kMaxTrustBundleDepth) {
          ++out.ignored_files;
          it.disable_recursion_pending();
        }
        continue;
      }
      if (absl::StartsWith(name, ".") || !IsCertificateFileName(name) ||
          !entry.is_regular_file(ec2)) {
        ++out.ignored_files;
        continue;
      }
      files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust bundle directory ", path,
          " holds no certificate file (.pem .crt .cer .der); ", out.ignored_files,
          " other entries ignored"));
    }
  } else {
    files.push_back(path);
  }
  std::set<Bytes> seen;
  for (const std::string& file : files) {
    std::vector<OsslPtr<X509>> certs;
    RETURN_IF_ERROR(ReadCertificateFile(file, &certs));
    out.files.push_back(file);
    for (OsslPtr<X509>& cert : certs) {
      Bytes der = ToDerBytes(cert.get());
      if (!der.empty() && !seen.insert(std::move(der)).second) {
        continue;  // an exact duplicate
      }
      (SelfSigned(cert.get()) ? out.roots : out.intermediates).push_back(std::move(cert));
    }
  }
  if (out.roots.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust bundle ", path, " holds no self-signed root certificate (",
        out.intermediates.size(),
        " intermediates; intermediates alone are never trust anchors)"));
  }
  return out;
}

absl::Status VerifyCertificateChain(X509* cert, const CaBundle& ca, std::optional<time_t> at,
                                   std::vector<std::string>* chain_subjects, bool check_time) {
  OsslPtr<X509_STORE> store(X509_STORE_new());
  OsslPtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  OsslPtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (!store || !untrusted || !ctx) {
    return OpenSslError("allocating the X509 verification context");
  }
  for (const auto& root : ca.roots) {
    if (X509_STORE_add_cert(store.get(), root.get()) != 1) {
      return OpenSslError("adding a root certificate to the trust store");
    }
  }
  for (const auto& inter : ca.intermediates) {
    if (sk_X509_push(untrusted.get(), inter.get()) <= 0) {
      return OpenSslError("adding an intermediate certificate");
    }
    X509_up_ref(inter.get());
  }
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert, untrusted.get()) != 1) {
    return OpenSslError("X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  if (at.has_value()) {
    X509_VERIFY_PARAM_set_time(param, *at);
  }
  if (!check_time) {
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME);
  }
  // EK certificates are not TLS certificates: no purpose check; the EKU is checked below.
  const int ok = X509_verify_cert(ctx.get());
  if (ok != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
    DrainOpenSslErrors();
    return absl::PermissionDeniedError(absl::StrCat(
        "EK certificate chain verification failed: ", X509_verify_cert_error_string(err),
        " (at depth ", depth, ", certificate '", bad != nullptr ? SubjectString(bad) : "?",
        "'); check that the CA bundle holds the TPM manufacturer's root and intermediates"));
  }
  if (chain_subjects != nullptr) {
    chain_subjects->clear();
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; chain != nullptr && i < sk_X509_num(chain); ++i) {
      chain_subjects->push_back(SubjectString(sk_X509_value(chain, i)));
    }
  }
  return absl::OkStatus();
}

absl::Status VerifyEkCertificate(X509* cert, const CaBundle& ca, std::optional<time_t> at) {
  RETURN_IF_ERROR(VerifyCertificateChain(cert, ca, at, nullptr));
  return CheckEkCertificateProfile(cert);
}

absl::Status CheckEkCertificateProfile(X509* cert) {
  const std::string subject = SubjectString(cert);
  auto denied = [&](absl::string_view what) {
    return absl::PermissionDeniedError(
        absl::StrCat("EK certificate profile: '", subject, "' ", what));
  };
  // 1. An end entity: a CA certificate under a configured root is not an EK certificate.
  int crit = 0;
  OsslPtr<BASIC_CONSTRAINTS> bc(static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(cert, NID_basic_constraints, &crit, nullptr)));
  if (!bc && crit != -1) {
    DrainOpenSslErrors();
    return absl::InvalidArgumentError(
        absl::StrCat("EK certificate profile: '", subject, "' has a malformed basicConstraints"));
  }
  if (bc && bc->ca) {
    return denied("is a CA certificate (basicConstraints cA TRUE); an EK certificate is an end "
                  "entity");
  }
  // 2. keyUsage, when present, fits an EK: keyEncipherment (RSA) or keyAgreement (ECC), and never
  //    certificate or CRL signing.
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) {
    return OpenSslError(
        absl::StrCat("EK certificate profile: '", subject, "' public key cannot be decoded"),
        absl::StatusCode::kInvalidArgument);
  }
  if ((X509_get_extension_flags(cert) & EXFLAG_INVALID) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EK certificate profile: '", subject, "' has malformed or repeated extensions"));
  }
  if ((X509_get_extension_flags(cert) & EXFLAG_KUSAGE) != 0) {
    const uint32_t ku = X509_get_key_usage(cert);
    const bool rsa = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
    const uint32_t need = rsa ? KU_KEY_ENCIPHERMENT : KU_KEY_AGREEMENT;
    if ((ku & need) == 0) {
      return denied(rsa ? "has a keyUsage without keyEncipherment (required for an RSA EK)"
                        : "has a keyUsage without keyAgreement (required for an ECC EK)");
    }
    if ((ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) != 0) {
      return denied("has a keyUsage with keyCertSign or cRLSign (an EK certificate is no CA)");
    }
  }
  // 3. It says it is an EK certificate: the EK extended key usage, or, without an EKU, the TCG
  //    TPM attributes (manufacturer, model and version) in the subjectAltName.
  OsslPtr<EXTENDED_KEY_USAGE> eku(static_cast<EXTENDED_KEY_USAGE*>(
      X509_get_ext_d2i(cert, NID_ext_key_usage, &crit, nullptr)));
  if (eku) {
    for (int i = 0; i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
      if (ObjToText(sk_ASN1_OBJECT_value(eku.get(), i)) == kEkCertificateEku) {
        return absl::OkStatus();
      }
    }
    return denied("has an extended key usage without tcg-kp-EKCertificate (2.23.133.8.1): it is "
                  "not an EK certificate");
  }
  if (crit != -1) {
    DrainOpenSslErrors();
    return absl::InvalidArgumentError(absl::StrCat(
        "EK certificate profile: '", subject, "' has a malformed extended key usage"));
  }
  absl::StatusOr<TcgDeviceInfo> device = ParseTcgDeviceInfo(cert);
  if (!device.ok() || device->manufacturer.empty() || device->model.empty() ||
      device->version.empty()) {
    return denied("has neither the EK extended key usage tcg-kp-EKCertificate (2.23.133.8.1) nor "
                  "the TCG TPM manufacturer, model and version (2.23.133.2.1/2/3) in its "
                  "subjectAltName: it is not an EK certificate");
  }
  return absl::OkStatus();
}

absl::Status CheckCertificateMatchesPublic(X509* cert, const TPMT_PUBLIC& pub) {
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> tpm_key, PublicToEvp(pub));
  return CheckCertificateMatchesKey(cert, tpm_key.get());
}

absl::Status CheckCertificateMatchesKey(X509* cert, const EVP_PKEY* tpm_key) {
  EVP_PKEY* cert_key = X509_get0_pubkey(cert);
  if (cert_key == nullptr) {
    return OpenSslError("EK certificate public key cannot be decoded",
                        absl::StatusCode::kInvalidArgument);
  }
  if (!SamePublicKey(cert_key, tpm_key)) {
    DrainOpenSslErrors();
    return absl::PermissionDeniedError(absl::StrCat(
        "the EK certificate '", SubjectString(cert),
        "' certifies a different key than the EK public key presented"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TcgDeviceInfo> ParseTcgDeviceInfo(X509* cert) {
  OsslPtr<GENERAL_NAMES> names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  DrainOpenSslErrors();
  if (!names) {
    return absl::NotFoundError("EK certificate has no subjectAltName");
  }
  TcgDeviceInfo info;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type != GEN_DIRNAME) {
      continue;
    }
    X509_NAME* dn = gn->d.directoryName;
    for (int j = 0; j < X509_NAME_entry_count(dn); ++j) {
      X509_NAME_ENTRY* e = X509_NAME_get_entry(dn, j);
      const std::string oid = ObjToText(X509_NAME_ENTRY_get_object(e));
      const ASN1_STRING* v = X509_NAME_ENTRY_get_data(e);
      std::string value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                        static_cast<size_t>(ASN1_STRING_length(v)));
      if (oid == kTcgManufacturer) {
        info.manufacturer = value;
      } else if (oid == kTcgModel) {
        info.model = value;
      } else if (oid == kTcgVersion) {
        info.version = value;
      }
    }
  }
  if (info.manufacturer.empty() && info.model.empty() && info.version.empty()) {
    return absl::NotFoundError("EK certificate subjectAltName has no TCG device attributes");
  }
  return info;
}

std::string SubjectString(X509* cert) { return NameToString(X509_get_subject_name(cert)); }
std::string IssuerString(X509* cert) { return NameToString(X509_get_issuer_name(cert)); }

std::string IssuerCommonName(X509* cert) {
  X509_NAME* name = X509_get_issuer_name(cert);
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) {
    return "";
  }
  const ASN1_STRING* v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                     static_cast<size_t>(ASN1_STRING_length(v)));
}

}  // namespace hwid::wire
