// RSA-PSS helpers of the provider: measuring the salt length of a PSS signature in software, so the
// provider can detect, at key load, a TPM that signs only with the maximum salt length.
#ifndef HWID_PROVIDER_PSS_H_
#define HWID_PROVIDER_PSS_H_

#include <openssl/evp.h>

#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::provider {

// PssSaltLength recovers the EMSA-PSS encoded message of `sig` with the RSA public key `rsa`
// (raw public operation), checks it against `digest` (hashed with `md`, MGF1 with the same hash)
// and returns the salt length the signer used. PermissionDenied when `sig` is not a valid PSS
// signature of `digest`; InvalidArgument for a non-RSA key or malformed sizes.
absl::StatusOr<int> PssSaltLength(OSSL_LIB_CTX* libctx, EVP_PKEY* rsa, const EVP_MD* md,
                                  ByteSpan digest, ByteSpan sig);

// PssMaxSaltLength is the largest salt length for an RSA key of `modulus_bits` and a digest of
// `digest_len` bytes: emLen - hLen - 2 with emLen = ceil((modBits - 1) / 8).
int PssMaxSaltLength(int modulus_bits, int digest_len);

}  // namespace hwid::provider

#endif  // HWID_PROVIDER_PSS_H_
