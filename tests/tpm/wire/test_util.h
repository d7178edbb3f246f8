// Helpers for the tpm/wire unit tests: software keys expressed as TPM public areas, software
// "TPM" signatures, hex and test-vector loading. Independent of the code under test where it
// matters (keys and signatures come straight from OpenSSL).
#ifndef HWID_TESTS_TPM_WIRE_TEST_UTIL_H_
#define HWID_TESTS_TPM_WIRE_TEST_UTIL_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hwid::wire::testing {

// Hex decodes a hex literal or aborts the test binary.
Bytes Hex(std::string_view hex);

// ReadTestdata returns the bytes of tests/tpm/wire/testdata/<name> or aborts.
Bytes ReadTestdata(const std::string& name);

// Cached software keys (generated once per process).
EVP_PKEY* EcKey(const char* group = "P-256");  // "P-256", "P-384", "P-521"
EVP_PKEY* EcKey2();                             // a second, different P-256 key
EVP_PKEY* RsaKey(int bits = 2048);              // 2048 / 3072
EVP_PKEY* RsaKey2();                            // a second, different RSA-2048 key

// RocaModulus returns a big-endian `bits`-bit RSA modulus p*q whose primes have the structure
// of Infineon RSALib keys (ROCA, CVE-2017-15361), made from the published description and
// independently of the detector under test: p = k*M + (65537^a mod M) with random k and a, M the
// product of the first 39 primes (RSALib's M for 512-bit keys, which divides its M for every
// larger size). p and q are real primes, so the modulus is a valid RSA public key. Cached.
const Bytes& RocaModulus(int bits = 2048);

// WithKey returns `tmpl` with its unique field set to the public key of `pkey` (RSA n, exponent
// kept from the template unless it is not 65537; ECC x/y left-padded to the field size).
TPMT_PUBLIC WithKey(TPMT_PUBLIC tmpl, EVP_PKEY* pkey);

// Sign signs `msg` with a software key and returns it as a TPMT_SIGNATURE of `scheme` (ECDSA,
// RSASSA or RSAPSS) with `hash` (the software digest is computed by OpenSSL). PSS uses a salt as
// long as the digest.
TPMT_SIGNATURE Sign(EVP_PKEY* pkey, TPMI_ALG_SIG_SCHEME scheme, TPMI_ALG_HASH hash, ByteSpan msg);

// Marshal* via tss2-mu directly.
Bytes MuMarshalAttest(const TPMS_ATTEST& a);
Bytes MuMarshalSignature(const TPMT_SIGNATURE& s);
Bytes MuMarshalTpmtPublic(const TPMT_PUBLIC& p);

// Sha returns H_alg(data) straight from OpenSSL.
Bytes Sha(TPMI_ALG_HASH alg, ByteSpan data);

// Status matchers.
MATCHER_P2(StatusIs, code, substr,
           std::string("status ") + absl::StatusCodeToString(code) + " containing \"" + substr +
               "\"") {
  const absl::Status& s = [&]() -> const absl::Status& {
    if constexpr (std::is_same_v<std::decay_t<decltype(arg)>, absl::Status>) {
      return arg;
    } else {
      return arg.status();
    }
  }();
  *result_listener << "status is " << s.ToString();
  return s.code() == code && std::string(s.message()).find(substr) != std::string::npos;
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = [&]() -> const absl::Status& {
    if constexpr (std::is_same_v<std::decay_t<decltype(arg)>, absl::Status>) {
      return arg;
    } else {
      return arg.status();
    }
  }();
  *result_listener << "status is " << s.ToString();
  return s.ok();
}

}  // namespace hwid::wire::testing

#endif  // HWID_TESTS_TPM_WIRE_TEST_UTIL_H_
