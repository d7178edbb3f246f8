// ECDSA signatures from devices to DER: TPMs return r and s as separate big-endian buffers,
// PKCS#11 CKM_ECDSA returns r || s. OpenSSL wants an ECDSA-Sig-Value
// SEQUENCE { INTEGER r, INTEGER s }. This is on every signature's path, so it is a few lines
// of byte copying instead of two heap BIGNUMs and an ECDSA_SIG.
#ifndef HWID_COMMON_ECDSA_DER_H_
#define HWID_COMMON_ECDSA_DER_H_

#include "common/bytes.h"

namespace hwid {

// EcdsaDerFromRS encodes r and s (unsigned big-endian, any leading zeros, at most 127 bytes each;
// empty means 0) as a DER ECDSA-Sig-Value with minimal non-negative INTEGERs. Same bytes as
// OpenSSL's i2d_ECDSA_SIG.
Bytes EcdsaDerFromRS(ByteSpan r, ByteSpan s);

}  // namespace hwid

#endif  // HWID_COMMON_ECDSA_DER_H_
