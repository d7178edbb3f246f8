#include "provider/io.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "common/ossl.h"

namespace hwid::provider {

absl::StatusOr<Bytes> ReadAllFromCoreBio(ProvCtx* prov, OSSL_CORE_BIO* in, size_t max) {
  OsslPtr<BIO> bio(BIO_new_from_core_bio(prov->libctx, in));
  if (bio == nullptr) {
    return OpenSslError("wrapping the input BIO");
  }
  Bytes out;
  uint8_t buf[4096];
  while (true) {
    size_t n = 0;
    const int r = BIO_read_ex(bio.get(), buf, sizeof(buf), &n);
    if (r != 1 || n == 0) {
      break;
    }
    out.insert(out.end(), buf, buf + n);
    if (out.size() > max) {
      return absl::InvalidArgumentError("input larger than 1 MiB");
    }
  }
  return out;
}

bool WriteToCoreBio(ProvCtx* prov, OSSL_CORE_BIO* out, ByteSpan data) {
  OsslPtr<BIO> bio(BIO_new_from_core_bio(prov->libctx, out));
  if (bio == nullptr) {
    return false;
  }
  size_t written = 0;
  return BIO_write_ex(bio.get(), data.data(), data.size(), &written) == 1 &&
         written == data.size();
}

namespace {

struct PendingLoadError {
  const ProvCtx* prov = nullptr;
  int fallback = 0;
  std::string what;
  absl::Status status;
  Device device = Device::kTpm;
};
thread_local std::optional<PendingLoadError> t_pending_load_error;

}  // namespace

void RaiseKeyLoadError(const ProvCtx* prov, int fallback, const char* what, const absl::Status& s,
                       Device device) {
  RaiseStatus(prov, fallback, what, s, device);
  t_pending_load_error = PendingLoadError{prov, fallback, what, s, device};
}

void RaisePendingKeyLoadError() {
  if (!t_pending_load_error.has_value()) {
    return;
  }
  const PendingLoadError e = std::move(*t_pending_load_error);
  t_pending_load_error.reset();
  const char* data = nullptr;
  int flags = 0;
  if (ERR_peek_last_error_data(&data, &flags) != 0 && data != nullptr &&
      absl::StartsWith(data, e.what) && absl::EndsWith(data, e.status.message())) {
    return;  // still on the queue: nobody dropped it
  }
  RaiseStatus(e.prov, e.fallback, e.what.c_str(), e.status, e.device);
}

void ForgetKeyLoadError() { t_pending_load_error.reset(); }

int PassKeyReference(std::shared_ptr<Key> key, ProvCtx* prov, OSSL_CALLBACK* cb, void* cbarg,
                     ByteSpan by_value, const char* structure) {
  auto* k = new ProvKey;
  k->prov = prov;
  k->type = key->type();
  EVP_PKEY_up_ref(key->public_key());
  k->pub.reset(key->public_key());
  k->priv = std::move(key);
  int object_type = by_value.empty() ? OSSL_OBJECT_PKEY : OSSL_OBJECT_UNKNOWN;
  OSSL_PARAM params[] = {
      OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &object_type),
      OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_DATA, const_cast<uint8_t*>(by_value.data()),
                              by_value.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE, const_cast<char*>(structure), 0),
      OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, const_cast<char*>(KeymgmtName(k->type)), 0),
      OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &k, sizeof(k)),
      OSSL_PARAM_END,
  };
  if (by_value.empty()) {
    params[1] = params[3];  // by reference only
    params[2] = params[4];
    params[3] = OSSL_PARAM_construct_end();
  }
  const int r = cb(params, cbarg);
  Debug("key reference %s: callback returned %d", k == nullptr ? "taken" : "not taken", r);
  delete k;  // null when the keymgmt's load() took it
  return r;
}

SecureBytes AskPassphrase(OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_cbarg, const std::string& what) {
  SecureBytes out;
  if (pw_cb == nullptr) {
    return out;
  }
  char buf[256];
  size_t len = 0;
  OSSL_PARAM info[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PASSPHRASE_PARAM_INFO, const_cast<char*>(what.c_str()), 0),
      OSSL_PARAM_END,
  };
  if (pw_cb(buf, sizeof(buf), &len, info, pw_cbarg) == 1 && len <= sizeof(buf)) {
    out.assign(buf, buf + len);
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  return out;
}

}  // namespace hwid::provider
