// Software TPM2_MakeCredential (TPM 2.0 Library Part 1 §24 "Credential Protection", §11.4.10
// KDFa/KDFe, Part 3 TPM2_MakeCredential): wraps a secret so that only the TPM holding the EK's
// private key, with the named object loaded, can recover it with TPM2_ActivateCredential.
#ifndef HWID_TPM_WIRE_CREDENTIAL_H_
#define HWID_TPM_WIRE_CREDENTIAL_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::wire {

struct Credential {
  Bytes id_object;         // marshalled TPM2B_ID_OBJECT (credentialBlob), including its size
  Bytes encrypted_secret;  // marshalled TPM2B_ENCRYPTED_SECRET (secret), including its size
};

// MakeCredential protects `secret` (1..digest size of ek.nameAlg bytes) for the object whose Name
// is `object_name` (normally ObjectName(ak), computed from an AK public area the caller has
// checked — never a name the client supplied), under the endorsement key `ek`.
//
// The EK must be a restricted decryption RSA or ECC (P-256/P-384/P-521) key with nameAlg
// SHA-1/256/384/512 and an AES-CFB symmetric definition (its parameters decide the KDF hash and the
// AES key size, so high-range templates with SHA-384 / AES-256 work). Seed: RSA-OAEP with label
// "IDENTITY\0" and the EK's nameAlg, or ephemeral ECDH on the EK's curve with
// seed = KDFe(nameAlg, Z.x, "IDENTITY", ephemeral.x, ek.x). A fresh seed (and ephemeral key) is
// drawn from OpenSSL's RNG on every call. InvalidArgument for unusable inputs.
absl::StatusOr<Credential> MakeCredential(const TPMT_PUBLIC& ek, ByteSpan secret,
                                          ByteSpan object_name);

// MakeCredential with the EK already converted: `ek_key` must be PublicToEvp(ek) (the caller
// converted and checked it once per attestation; this overload does not convert `ek` again).
// InvalidArgument when `ek_key` is null or not of the EK's type.
absl::StatusOr<Credential> MakeCredential(const TPMT_PUBLIC& ek, EVP_PKEY* ek_key, ByteSpan secret,
                                          ByteSpan object_name);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_CREDENTIAL_H_
