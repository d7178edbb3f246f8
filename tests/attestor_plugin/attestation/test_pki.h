// A software PKI for attestation tests: roots, intermediates and EK certificates (TCG SAN, EK EKU)
// made with OpenSSL, with controllable validity, so that every certificate pitfall (untrusted CA,
// expired CA or certificate, intermediate-only trust, wrong EKU, key mismatch) is testable without
// a TPM.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_TEST_PKI_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_TEST_PKI_H_

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>
#include <initializer_list>
#include <string>

#include "common/bytes.h"
#include "common/ossl.h"

namespace hwid::attestation::testing {

struct TestCert {
  OsslPtr<EVP_PKEY> key;  // the subject's private key (null for EK certs of external keys)
  OsslPtr<X509> cert;
};

struct CertOptions {
  // Offsets in seconds from now.
  long not_before = -86400;
  long not_after = 10L * 365 * 86400;
  // EK certificate options (ignored for CA certificates).
  bool tcg_san = true;
  bool san_critical = true;
  const char* eku_oid = "2.23.133.8.1";  // nullptr: no EKU extension
  const char* manufacturer = "id:58595A00";
  const char* model = "hwid-test";
  const char* version = "id:00010002";
  // Extension overrides in openssl x509v3_config syntax; nullptr = the default (CA certificates:
  // "critical,CA:TRUE" and "critical,keyCertSign,cRLSign"; EK certificates: "critical,CA:FALSE"
  // and the TCG profile's key usage for the key type, keyEncipherment for RSA, keyAgreement for
  // ECC); "" = leave the extension out.
  const char* basic_constraints = nullptr;
  const char* key_usage = nullptr;
};

// MakeRoot makes a self-signed P-256 CA.
TestCert MakeRoot(const std::string& cn, const CertOptions& o = {});
// MakeIntermediate makes a P-256 CA issued by `issuer`.
TestCert MakeIntermediate(const std::string& cn, const TestCert& issuer, const CertOptions& o = {});
// MakeEkCert certifies `ek_key` (public key only is used) with `issuer`.
OsslPtr<X509> MakeEkCert(EVP_PKEY* ek_key, const TestCert& issuer, const CertOptions& o = {});

Bytes ToDer(X509* cert);
std::string ToPem(std::initializer_list<X509*> certs);

// WriteTemp writes `content` to a new file in a per-process temporary directory and returns its
// path.
std::string WriteTemp(const std::string& name, const std::string& content);

// SpkiSha256Hex: hex SHA-256 of the DER SubjectPublicKeyInfo of `key` (OpenSSL only; an oracle
// independent of the code under test).
std::string SpkiSha256Hex(EVP_PKEY* key);

}  // namespace hwid::attestation::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_TEST_PKI_H_
