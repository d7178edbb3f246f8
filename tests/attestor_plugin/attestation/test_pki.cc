#include "tests/attestor_plugin/attestation/test_pki.h"

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <memory>

#include "gtest/gtest.h"

namespace hwid::attestation::testing {
namespace {

struct NameDeleter {
  void operator()(X509_NAME* n) const { X509_NAME_free(n); }
};
struct ExtDeleter {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "test_pki: %s failed: %s\n", what, DrainOpenSslErrors().c_str());
    std::abort();
  }
}

void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, ExtDeleter> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  Check(ext != nullptr, "X509V3_EXT_conf_nid");
  Check(X509_add_ext(cert, ext.get(), -1) == 1, "X509_add_ext");
}

// AddExtOr adds the extension `nid` with `override_value` when it is set (none when it is ""),
// else with `default_value`.
void AddExtOr(X509* cert, X509* issuer, int nid, const char* override_value,
              const char* default_value) {
  const char* value = override_value != nullptr ? override_value : default_value;
  if (*value != '\0') {
    AddExt(cert, issuer, nid, value);
  }
}

OsslPtr<X509> NewCert(const std::string& cn, EVP_PKEY* subject_key, const CertOptions& o) {
  static long serial = 1000;
  OsslPtr<X509> cert(X509_new());
  Check(cert != nullptr, "X509_new");
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), ++serial);
  X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, o.not_before, nullptr);
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), 0, o.not_after, nullptr);
  X509_NAME* name = X509_get_subject_name(cert.get());
  Check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                   0) == 1,
        "subject CN");
  Check(X509_set_pubkey(cert.get(), subject_key) == 1, "X509_set_pubkey");
  return cert;
}

TestCert MakeCa(const std::string& cn, const TestCert* issuer, const CertOptions& o) {
  TestCert out;
  out.key.reset(EVP_EC_gen("P-256"));
  Check(out.key != nullptr, "EVP_EC_gen");
  out.cert = NewCert(cn, out.key.get(), o);
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : out.cert.get();
  EVP_PKEY* issuer_key = issuer != nullptr ? issuer->key.get() : out.key.get();
  Check(X509_set_issuer_name(out.cert.get(), X509_get_subject_name(issuer_cert)) == 1, "issuer");
  AddExtOr(out.cert.get(), issuer_cert, NID_basic_constraints, o.basic_constraints,
           "critical,CA:TRUE");
  AddExtOr(out.cert.get(), issuer_cert, NID_key_usage, o.key_usage, "critical,keyCertSign,cRLSign");
  AddExt(out.cert.get(), issuer_cert, NID_subject_key_identifier, "hash");
  Check(X509_sign(out.cert.get(), issuer_key, EVP_sha256()) > 0, "X509_sign");
  return out;
}

}  // namespace

TestCert MakeRoot(const std::string& cn, const CertOptions& o) { return MakeCa(cn, nullptr, o); }

TestCert MakeIntermediate(const std::string& cn, const TestCert& issuer, const CertOptions& o) {
  return MakeCa(cn, &issuer, o);
}

OsslPtr<X509> MakeEkCert(EVP_PKEY* ek_key, const TestCert& issuer, const CertOptions& o) {
  OsslPtr<X509> cert = NewCert("hwid test EK", ek_key, o);
  Check(X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer.cert.get())) == 1,
        "issuer");
  AddExtOr(cert.get(), issuer.cert.get(), NID_basic_constraints, o.basic_constraints,
           "critical,CA:FALSE");
  AddExtOr(cert.get(), issuer.cert.get(), NID_key_usage, o.key_usage,
           EVP_PKEY_get_base_id(ek_key) == EVP_PKEY_RSA ? "critical,keyEncipherment"
                                                        : "critical,keyAgreement");
  if (o.eku_oid != nullptr) {
    OsslPtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
    ASN1_OBJECT* obj = OBJ_txt2obj(o.eku_oid, 1);
    Check(eku && obj != nullptr && sk_ASN1_OBJECT_push(eku.get(), obj) > 0, "EKU");
    Check(X509_add1_ext_i2d(cert.get(), NID_ext_key_usage, eku.get(), 0, X509V3_ADD_DEFAULT) == 1,
          "EKU extension");
  }
  if (o.tcg_san) {
    std::unique_ptr<X509_NAME, NameDeleter> dn(X509_NAME_new());
    const std::pair<const char*, const char*> attrs[] = {{"2.23.133.2.1", o.manufacturer},
                                                         {"2.23.133.2.2", o.model},
                                                         {"2.23.133.2.3", o.version}};
    for (const auto& [oid, value] : attrs) {
      OsslPtr<ASN1_OBJECT> obj(OBJ_txt2obj(oid, 1));
      Check(obj != nullptr &&
                X509_NAME_add_entry_by_OBJ(dn.get(), obj.get(), MBSTRING_UTF8,
                                           reinterpret_cast<const unsigned char*>(value), -1, -1,
                                           0) == 1,
            "TCG SAN attribute");
    }
    OsslPtr<GENERAL_NAMES> names(sk_GENERAL_NAME_new_null());
    GENERAL_NAME* gn = GENERAL_NAME_new();
    Check(names && gn != nullptr, "GENERAL_NAME_new");
    gn->type = GEN_DIRNAME;
    gn->d.directoryName = dn.release();
    Check(sk_GENERAL_NAME_push(names.get(), gn) > 0, "SAN push");
    Check(X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names.get(), o.san_critical ? 1 : 0,
                            X509V3_ADD_DEFAULT) == 1,
          "SAN extension");
  }
  Check(X509_sign(cert.get(), issuer.key.get(), EVP_sha256()) > 0, "X509_sign");
  return cert;
}

Bytes ToDer(X509* cert) {
  unsigned char* der = nullptr;
  const int n = i2d_X509(cert, &der);
  Check(n > 0, "i2d_X509");
  Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

std::string ToPem(std::initializer_list<X509*> certs) {
  std::string out;
  for (X509* c : certs) {
    OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
    Check(bio && PEM_write_bio_X509(bio.get(), c) == 1, "PEM_write_bio_X509");
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    out.append(data, static_cast<size_t>(len));
  }
  return out;
}

namespace {
// TempDir is created on first use and removed (with its files) at process exit.
struct TempDir {
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    path = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
           "/hwid-attest-test.XXXXXX";
    Check(mkdtemp(path.data()) != nullptr, "mkdtemp");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};
}  // namespace

std::string WriteTemp(const std::string& name, const std::string& content) {
  static TempDir dir;
  const std::string path = dir.path + "/" + name;
  absl::Status st = WriteFile(path, AsSpan(content));
  Check(st.ok(), "WriteFile");
  return path;
}

std::string SpkiSha256Hex(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key, &der);
  Check(n > 0, "i2d_PUBKEY");
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<size_t>(n), md);
  OPENSSL_free(der);
  return HexEncode(ByteSpan(md, sizeof(md)));
}

}  // namespace hwid::attestation::testing
