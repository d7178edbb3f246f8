// Small helpers shared by the decoder, encoder and store: core BIO I/O and key references.
#ifndef HWID_PROVIDER_IO_H_
#define HWID_PROVIDER_IO_H_

#include <openssl/core.h>
#include <openssl/core_object.h>

#include <string>

#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "provider/provider.h"

namespace hwid::provider {

// ReadAllFromCoreBio reads the whole input (at most `max` bytes) of a core BIO.
absl::StatusOr<Bytes> ReadAllFromCoreBio(ProvCtx* prov, OSSL_CORE_BIO* in, size_t max = 1 << 20);
// WriteToCoreBio writes `data` to a core BIO; false on a short write.
bool WriteToCoreBio(ProvCtx* prov, OSSL_CORE_BIO* out, ByteSpan data);

// PassKeyReference hands an (inactive) key to OpenSSL's object callback as a reference (the
// keymgmt's load() activates it and takes ownership); frees the key when nobody took it. Returns
// the callback's result. With `by_value` (the key file DER) the object also carries the data and
// its type is left unknown: OpenSSL's file: store cannot use a reference from another provider's
// decoder, so it re-decodes the data through OSSL_DECODER_CTX_new_for_pkey, whose constructor
// prefers this provider's keymgmt; decoder chains for EVP_PKEY use the reference directly.
// `structure` names the DER structure of `by_value` ("TSS2", "pk11-uri").
int PassKeyReference(std::shared_ptr<Key> key, ProvCtx* prov, OSSL_CALLBACK* cb, void* cbarg,
                     ByteSpan by_value = {}, const char* structure = "TSS2");

// RaiseKeyLoadError raises a failed key activation like RaiseStatus and remembers it for the
// calling thread. OpenSSL 3.0's file: STORE drops every error raised while it turns decoded key
// data into a key (ossl_store_handle_load_result pops back to its mark and reports only
// "STORE routines::unsupported"), so `openssl pkeyutl -inkey key.pem` and `s_server -key` would
// never show why. RaisePendingKeyLoadError raises the remembered error again from the first
// frame of this provider outside that (the PEM decoder that handed the data to the STORE),
// unless it is still the newest error on the queue (decoder paths that keep errors, such as
// PEM_read_bio_PrivateKey); ForgetKeyLoadError drops it.
void RaiseKeyLoadError(const ProvCtx* prov, int fallback, const char* what, const absl::Status& s,
                       Device device);
void RaisePendingKeyLoadError();
void ForgetKeyLoadError();

// AskPassphrase asks the application (pw_cb) for a key's authorization value; empty when no
// callback is given or it returns nothing.
SecureBytes AskPassphrase(OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_cbarg, const std::string& what);

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_IO_H_
