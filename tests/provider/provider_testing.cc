#include "tests/provider/provider_testing.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace hwid::testing {

std::string Errors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  unsigned long e;
  while ((e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, buf, (flags & ERR_TXT_STRING) != 0 && data != nullptr ? " | " : "",
                    (flags & ERR_TXT_STRING) != 0 && data != nullptr ? data : "", "\n");
  }
  return out;
}

std::unique_ptr<Ctx> Ctx::New(const std::string& hwid_section_extra) {
  auto c = std::unique_ptr<Ctx>(new Ctx);
  c->ctx_ = OSSL_LIB_CTX_new();
  if (!hwid_section_extra.empty()) {
    char path[] = "/tmp/hwid-prov-cnf-XXXXXX";
    const int fd = mkstemp(path);
    const std::string cnf = absl::StrCat(
        "openssl_conf = init\n[init]\nproviders = provs\n[provs]\ndefault = dflt\nhwid = hw\n"
        "[dflt]\nactivate = 1\n[hw]\nmodule = ", HWID_PROVIDER_DIR, "/hwid.so\n",
        hwid_section_extra, "activate = 1\n");
    const bool written = write(fd, cnf.data(), cnf.size()) == static_cast<ssize_t>(cnf.size());
    close(fd);
    const int ok = written ? OSSL_LIB_CTX_load_config(c->ctx_, path) : 0;
    unlink(path);
    if (ok != 1) {
      return nullptr;
    }
  } else {
    OSSL_PROVIDER_set_default_search_path(c->ctx_, HWID_PROVIDER_DIR);
  }
  c->default_ = OSSL_PROVIDER_load(c->ctx_, "default");
  c->hwid_ = OSSL_PROVIDER_load(c->ctx_, "hwid");
  if (c->default_ == nullptr || c->hwid_ == nullptr) {
    return nullptr;
  }
  return c;
}

Ctx::~Ctx() {
  OSSL_PROVIDER_unload(hwid_);
  OSSL_PROVIDER_unload(default_);
  OSSL_LIB_CTX_free(ctx_);
}

uint64_t Ctx::Param(const char* name) const {
  uint64_t v = 0;
  OSSL_PARAM p[] = {OSSL_PARAM_uint64(name, &v), OSSL_PARAM_END};
  EXPECT_EQ(OSSL_PROVIDER_get_params(hwid_, p), 1);
  return v;
}

OsslPtr<X509> SelfSigned(OSSL_LIB_CTX* ctx, EVP_PKEY* key, const char* cn, long serial) {
  OsslPtr<X509> x(X509_new_ex(ctx, nullptr));
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                             -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  X509_set_pubkey(x.get(), key);
  if (X509_sign(x.get(), key, EVP_sha256()) <= 0) {
    return nullptr;
  }
  return x;
}

bool Handshake(SSL* server, SSL* client) {
  BIO* sb = nullptr;
  BIO* cb = nullptr;
  BIO_new_bio_pair(&sb, 0, &cb, 0);
  SSL_set_bio(server, sb, sb);
  SSL_set_bio(client, cb, cb);
  SSL_set_accept_state(server);
  SSL_set_connect_state(client);
  bool sdone = false, cdone = false;
  for (int i = 0; i < 100 && !(sdone && cdone); ++i) {
    if (!cdone) {
      const int r = SSL_do_handshake(client);
      if (r == 1) {
        cdone = true;
      } else if (SSL_get_error(client, r) != SSL_ERROR_WANT_READ) {
        return false;
      }
    }
    if (!sdone) {
      const int r = SSL_do_handshake(server);
      if (r == 1) {
        sdone = true;
      } else if (SSL_get_error(server, r) != SSL_ERROR_WANT_READ) {
        return false;
      }
    }
  }
  return sdone && cdone;
}

std::string ToPem(EVP_PKEY* k) {
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return "";
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

}  // namespace hwid::testing
