// TPM object templates as pure data: TCG EK templates (EK Credential Profile 2.x, low range L-1/L-2
// and high range H-1..H-4, H-6, H-7), the EK policy branches, the storage primary (SRK) templates
// of the TSS2 key-file spec, and hwid's AK and signing-key templates. Every returned TPM2B_PUBLIC
// has .size set to the length of its marshalled publicArea.
#ifndef HWID_TPM_WIRE_TEMPLATES_H_
#define HWID_TPM_WIRE_TEMPLATES_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/bytes.h"
#include "common/key_alg.h"

namespace hwid::wire {

enum class EkType {
  kRsa2048,       // L-1: RSA-2048, SHA-256, PolicyA, AES-128-CFB, cert NV 0x01c00002
  kEccP256,       // L-2: NIST P-256, SHA-256, PolicyA, AES-128-CFB, cert NV 0x01c0000a
  kRsa2048High,   // H-1: RSA-2048, SHA-256, PolicyB, AES-128-CFB, cert NV 0x01c00012
  kEccP256High,   // H-2: NIST P-256, SHA-256, PolicyB, AES-128-CFB, cert NV 0x01c00014
  kEccP384High,   // H-3: NIST P-384, SHA-384, PolicyB, AES-256-CFB, cert NV 0x01c00016
  kEccP521High,   // H-4: NIST P-521, SHA-512, PolicyB, AES-256-CFB, cert NV 0x01c00018
  kRsa3072High,   // H-6: RSA-3072, SHA-384, PolicyB, AES-256-CFB, cert NV 0x01c0001c
  kRsa4096High,   // H-7: RSA-4096, SHA-384, PolicyB, AES-256-CFB, cert NV 0x01c0001e
};

struct EkSpec {
  EkType type;
  const char* name;  // "rsa2048", "ecc-p256", "rsa2048-h1", "ecc-p256-h2", "ecc-p384-h3",
                     // "ecc-p521-h4", "rsa3072-h6", "rsa4096-h7"
  uint32_t cert_nv_index;
  uint32_t persistent_handle;  // 0x81010001 (L-1), 0x81010002 (L-2), else 0 (none defined)
};

// AllEkSpecs lists every supported EK type, low range first, in the enum's order.
absl::Span<const EkSpec> AllEkSpecs();

// EkSpecFor returns the spec of one EK type.
const EkSpec& EkSpecFor(EkType t);

// ParseEkType parses an EkSpec name; the error lists the valid names.
absl::StatusOr<EkType> ParseEkType(std::string_view name);

// EkTemplate returns the exact TCG default template. Low range (L-1/L-2): fixedTPM|fixedParent|
// sensitiveDataOrigin|adminWithPolicy|restricted|decrypt, authPolicy PolicyA (SHA-256), unique
// zero-filled (256-byte RSA modulus or 32-byte x and y). High range: the same plus userWithAuth,
// authPolicy PolicyB of the nameAlg, unique empty.
TPM2B_PUBLIC EkTemplate(EkType t);

// EkPolicy describes how to satisfy an EK's authPolicy (e.g. for ActivateCredential's keyHandle):
// in a policy session with hash `name_alg`, run TPM2_PolicySecret(TPM_RH_ENDORSEMENT); then, if
// `needs_policy_or`, run TPM2_PolicyOR(or_branches). or_branches[secret_branch] is the digest
// after the PolicySecret step (PolicyA); the other branch is PolicyC (PolicyAuthorizeNV). For low
// range templates or_branches == {PolicyA} and no PolicyOR is needed. `policy_digest` is the
// resulting session digest, equal to the template's authPolicy.
struct EkPolicy {
  TPMI_ALG_HASH name_alg;
  bool needs_policy_or;
  std::vector<Bytes> or_branches;
  size_t secret_branch = 0;
  Bytes policy_digest;
};
EkPolicy EkPolicyFor(EkType t);

// SrkTemplateEcc: the TSS2 key-file storage primary (tpm2-openssl primaryEccTemplate): ECC P-256,
// nameAlg SHA-256, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt,
// AES-128-CFB, scheme NULL, kdf NULL, empty authPolicy, unique x/y of size 0.
TPM2B_PUBLIC SrkTemplateEcc();
// SrkTemplateRsa: the RSA-2048 equivalent (tpm2-openssl primaryRsaTemplate; key files with
// rsaParent TRUE): exponent 0, unique of size 0.
TPM2B_PUBLIC SrkTemplateRsa();

using ::hwid::KeyAlg;  // common/key_alg.h: shared with pkcs11/ and the CLI
using ::hwid::KeyAlgName;
using ::hwid::ParseKeyAlg;


// AkTemplate: restricted signing attestation key, nameAlg SHA-256, attributes fixedTPM|
// fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|sign. ECC: ECDSA-SHA256 (P-384:
// ECDSA-SHA384), kdf NULL; RSA: RSASSA-SHA256, exponent 0. Symmetric NULL, unique empty.
// noDA is set (as go-attestation does; tpm2_createak does not): the AK's auth is empty, so there is
// nothing to guess, and noDA stops failed authorisations against it from counting towards — and
// eventually triggering — the TPM-wide dictionary-attack lockout.
TPM2B_PUBLIC AkTemplate(KeyAlg a);

// SigningKeyTemplate: unrestricted signing key, nameAlg SHA-256, attributes fixedTPM|fixedParent|
// sensitiveDataOrigin|userWithAuth|noDA|sign, scheme NULL (the caller picks ECDSA / RSASSA /
// RSAPSS per TPM2_Sign), RSA exponent 0, symmetric NULL, unique empty.
TPM2B_PUBLIC SigningKeyTemplate(KeyAlg a);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_TEMPLATES_H_
