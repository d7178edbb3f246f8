// The "TSS2 PRIVATE KEY" file format (ASN.1 TPMKey of James Bottomley's "ASN.1 Specification for
// TPM 2.0 Key Files", as written by tpm2-openssl, tpm2-tss-engine and tpm2_encodeobject):
//
//   TPMKey ::= SEQUENCE {
//     type        OBJECT IDENTIFIER,                 -- 2.23.133.10.1.3 loadable key
//     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//     description [4] EXPLICIT UTF8String OPTIONAL,
//     rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//     parent      INTEGER,
//     pubkey      OCTET STRING,                      -- marshalled TPM2B_PUBLIC incl. size
//     privkey     OCTET STRING }                     -- marshalled TPM2B_PRIVATE incl. size
//
// A key file may instead name a persistent key (for programs that take only file paths): its
// privkey is the 4-byte big-endian persistent handle 0x81xxxxxx instead of a TPM2B_PRIVATE, its
// pubkey the persistent key's TPM2B_PUBLIC (checked against the TPM on load, so a reused
// handle is refused), its parent the owner hierarchy. This is the encoding of tpm2-openssl's
// proposal (tpm2-openssl PR #165; not part of the draft specification): a TPM2B_PRIVATE of
// 4 bytes cannot hold a key, so the two cannot be confused.
//
// The decoder is a small strict DER reader of our own (definite minimal lengths, no trailing
// bytes, fields in order), safe on arbitrary input. One leniency: a BOOLEAN is TRUE for any
// non-zero octet, because tpm2-openssl and tpm2-tools write TRUE as 0x01.
#ifndef HWID_TPM_WIRE_KEYFILE_H_
#define HWID_TPM_WIRE_KEYFILE_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/bytes.h"

namespace hwid::wire {

struct TpmKeyFile {
  uint32_t parent = TPM2_RH_OWNER;  // persistent handle or hierarchy (0x40000001 = owner)
  bool empty_auth = true;           // true iff the key needs no authorization value
  Bytes pub;                        // marshalled TPM2B_PUBLIC including its size
  Bytes priv;                       // marshalled TPM2B_PRIVATE including its size
  std::optional<std::string> description;
  bool rsa_parent = false;          // parent primary is the RSA-2048 SRK (SrkTemplateRsa)
  // Set for a file that names a persistent key (priv is then empty; see above).
  std::optional<uint32_t> persistent_handle;
};

// ParseTpmKeyFile decodes PEM ("-----BEGIN TSS2 PRIVATE KEY-----", nothing but whitespace around
// it) or DER. Accepts: the loadable-key OID 2.23.133.10.1.3; emptyAuth absent (= false), FALSE or
// TRUE; description; rsaParent; parent encoded positive or as a negative 32-bit value (truncated
// to 32 bits; tpm2-tss-engine wrote such files); parent 0 read as TPM2_RH_OWNER. pub/priv must
// pass ParsePublic/ParsePrivate. Errors:
//   * Unimplemented: importable (2.23.133.10.1.4) or sealed (2.23.133.10.1.5) keys, the old
//     "TSS2 KEY BLOB" format (OID 2.23.133.10.2 or that PEM label), policy [1], authPolicy [3];
//   * InvalidArgument: anything malformed, any other OID or PEM label, secret [2] on a loadable
//     key, unknown fields, trailing bytes.
absl::StatusOr<TpmKeyFile> ParseTpmKeyFile(ByteSpan pem_or_der);

// EncodeTpmKeyFileDer writes the minimal form tpm2-openssl also reads: {type, [0] TRUE only when
// empty_auth, [4] description if set, [5] TRUE only when rsa_parent, parent (positive INTEGER;
// 0 is written as TPM2_RH_OWNER), pubkey, privkey}. pub/priv must pass ParsePublic/ParsePrivate
// (InvalidArgument otherwise); description must be valid UTF-8.
absl::StatusOr<Bytes> EncodeTpmKeyFileDer(const TpmKeyFile& key);

// EncodeTpmKeyFilePem is EncodeTpmKeyFileDer wrapped as "TSS2 PRIVATE KEY" PEM.
absl::StatusOr<std::string> EncodeTpmKeyFilePem(const TpmKeyFile& key);

}  // namespace hwid::wire

#endif  // HWID_TPM_WIRE_KEYFILE_H_
