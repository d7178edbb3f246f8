// hwid: command-line access to the TPM for operators, hardware teams and the demo.
// Exit codes: 0 success, 1 operational error, 2 usage error.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/ascii.h"
#include "cli/args.h"
#if HWID_WITH_TPM_CHECK
#include "cli/tpm_check.h"
#endif
#include "common/bytes.h"
#include "common/ossl.h"
#include "common/sign.h"
#include "common/status_macros.h"
#if HWID_WITH_PKCS11
#include "pkcs11/pkcs11.h"
#include "pkcs11/uri_pem.h"
#endif
#include "tpm/tpm.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/credential.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

constexpr char kUsagePayload[] = "hwid.cli/usage";

// UsageError marks a Status as a usage error (exit code 2, usage text printed).
absl::Status UsageError(absl::string_view message) {
  absl::Status st = absl::InvalidArgumentError(message);
  st.SetPayload(kUsagePayload, absl::Cord("1"));
  return st;
}

bool IsUsageError(const absl::Status& st) { return st.GetPayload(kUsagePayload).has_value(); }

struct Command {
  std::string usage;  // full help text
  std::set<std::string> value_opts;
  std::set<std::string> flag_opts;
  std::function<absl::Status(const Args&)> run;
  size_t max_positional = 0;
};

absl::StatusOr<std::unique_ptr<tpm::Tpm>> OpenTpm(const Args& a) {
  return tpm::Tpm::Open(a.GetOr("tcti", ""));
}

std::string PemPublicKey(EVP_PKEY* pkey) {
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(bio.get(), pkey);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string PemCertificate(X509* cert) {
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string FormatAsn1Time(const ASN1_TIME* t) {
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(bio.get(), t);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<SecureBytes> AuthFromArgs(const Args& a) {
  SecureBytes auth;
  if (auto var = a.Get("auth-env")) {
    const char* v = std::getenv(var->c_str());
    if (v == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-env ", *var, ": the environment variable is not set"));
    }
    auth.assign(v, v + std::strlen(v));
  }
  return auth;
}

// OpenKey loads a key named by a TSS2 PRIVATE KEY file path or "handle:0x81xxxxxx".
absl::StatusOr<tpm::LoadedKey> OpenKey(tpm::Tpm& t, const std::string& ref, ByteSpan auth) {
  if (absl::StartsWith(ref, "handle:")) {
    ASSIGN_OR_RETURN(uint32_t h, tpm::ParseHandle(ref.substr(7)));
    return t.LoadPersistentKey(h, auth);
  }
  ASSIGN_OR_RETURN(Bytes data, ReadFile(ref));
  absl::StatusOr<wire::TpmKeyFile> kf = wire::ParseTpmKeyFile(data);
  if (!kf.ok()) {
    return absl::Status(kf.status().code(), absl::StrCat(ref, ": ", kf.status().message()));
  }
  return t.LoadKey(*kf, auth);
}

std::string PcrList(const std::vector<uint32_t>& pcrs) {
  if (pcrs.empty()) {
    return "none";
  }
  // Compress runs: 0-23.
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < pcrs.size()) {
    size_t j = i;
    while (j + 1 < pcrs.size() && pcrs[j + 1] == pcrs[j] + 1) {
      ++j;
    }
    parts.push_back(j > i ? absl::StrCat(pcrs[i], "-", pcrs[j]) : absl::StrCat(pcrs[i]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

// ---------------------------------------------------------------------------------------------

absl::Status CmdTpmInfo(const Args& a) {
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(tpm::TpmInfo info, t->GetInfo());
  std::cout << absl::StrFormat("TPM:              %s\n", t->tcti());
  std::cout << absl::StrFormat("Manufacturer:     %s (0x%08x)\n", info.manufacturer, info.manufacturer_id);
  std::cout << absl::StrFormat("Vendor:           %s\n", info.vendor);
  std::cout << absl::StrFormat("Firmware:         %s\n", info.firmware_version);
  std::cout << absl::StrFormat("Specification:    %s\n", info.spec);
  std::vector<std::string> banks;
  for (const auto& b : info.pcr_banks) {
    banks.push_back(absl::StrCat(wire::HashAlgName(b.alg), " [", PcrList(b.pcrs), "]"));
  }
  std::cout << absl::StrFormat("PCR banks:        %s\n", absl::StrJoin(banks, ", "));
  std::cout << absl::StrFormat(
      "Lockout:          %s, failures %u of %u, interval %u s, recovery %u s\n",
      info.in_lockout ? "IN LOCKOUT" : "not in lockout", info.lockout_counter,
      info.max_auth_fail, info.lockout_interval, info.lockout_recovery);
  std::cout << absl::StrFormat("Transient slots:  %u (%u in use)\n", info.transient_slots,
                               info.loaded_transient);
  return absl::OkStatus();
}

absl::Status CmdTpmFlushTransient(const Args& a) {
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(std::vector<uint32_t> flushed, t->FlushTransientObjects());
  std::vector<std::string> names;
  for (uint32_t h : flushed) {
    names.push_back(tpm::FormatHandle(h));
  }
  std::cout << absl::StrFormat("Flushed %u transient object(s)%s%s\n", flushed.size(),
                               flushed.empty() ? "" : ": ", absl::StrJoin(names, " "));
  return absl::OkStatus();
}

bool EkTypeSelected(const std::string& sel, const wire::EkSpec& spec) {
  if (sel == "all") {
    return true;
  }
  const bool rsa = absl::StartsWith(spec.name, "rsa");
  if (sel == "rsa") {
    return rsa;
  }
  if (sel == "ecc") {
    return !rsa;
  }
  return sel == spec.name;
}

absl::Status CmdTpmEk(const Args& a) {
  const std::string sel = a.GetOr("alg", "all");
  std::vector<std::string> names = {"all", "rsa", "ecc"};
  bool known = false;
  for (const auto& s : wire::AllEkSpecs()) {
    names.push_back(s.name);
    known = known || EkTypeSelected(sel, s);
  }
  if (!known) {
    return UsageError(absl::StrCat("--alg ", sel, ": expected one of ", absl::StrJoin(names, ", ")));
  }
  std::optional<wire::CaBundle> ca;
  if (auto path = a.Get("ca")) {
    ASSIGN_OR_RETURN(ca, wire::LoadTrustBundle(*path));
  }
  const std::string out_dir = a.GetOr("out-dir", "");
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(std::vector<tpm::EkCertificate> certs, t->ReadEkCertificates());
  std::map<wire::EkType, const tpm::EkCertificate*> by_type;
  for (const auto& c : certs) {
    by_type[c.type] = &c;
  }
  int failures = 0;
  int shown = 0;
  for (const wire::EkSpec& spec : wire::AllEkSpecs()) {
    if (!EkTypeSelected(sel, spec)) {
      continue;
    }
    auto it = by_type.find(spec.type);
    const bool low_range = spec.persistent_handle != 0;
    if (it == by_type.end() && !low_range) {
      continue;  // high-range template without a certificate: nothing to show
    }
    ++shown;
    std::cout << absl::StrFormat("EK %s\n", spec.name);
    absl::StatusOr<tpm::Ek> ek = t->LoadEk(spec.type);
    OsslPtr<EVP_PKEY> ek_key;
    if (ek.ok()) {
      auto key = wire::PublicToEvp(ek->pub.publicArea);
      auto der = wire::PublicKeyDer(ek->pub.publicArea);
      if (key.ok() && der.ok()) {
        ek_key = std::move(*key);
        ASSIGN_OR_RETURN(Bytes h, wire::Hash(TPM2_ALG_SHA256, *der));
        std::cout << absl::StrFormat("  public key:     %s, %s, sha256(SPKI) %s\n",
                                     ek->persistent_handle != 0
                                         ? absl::StrCat("persistent ", tpm::FormatHandle(ek->persistent_handle))
                                         : std::string("created from the TCG template"),
                                     spec.name, HexEncode(h));
      }
    } else {
      std::cout << absl::StrFormat("  public key:     unavailable: %s\n", ek.status().message());
      ++failures;
    }
    if (it == by_type.end()) {
      std::cout << absl::StrFormat("  certificate:    none at NV %s\n", tpm::FormatHandle(spec.cert_nv_index));
    } else if (!it->second->error.ok()) {
      std::cout << absl::StrFormat("  certificate:    %s\n", it->second->error.message());
      ++failures;
    } else {
      ASSIGN_OR_RETURN(OsslPtr<X509> cert, wire::ParseCertificateDer(it->second->der));
      std::cout << absl::StrFormat("  certificate:    NV %s, %u bytes\n",
                                   tpm::FormatHandle(spec.cert_nv_index), it->second->der.size());
      std::cout << absl::StrFormat("    subject:      %s\n", wire::SubjectString(cert.get()));
      std::cout << absl::StrFormat("    issuer:       %s\n", wire::IssuerString(cert.get()));
      std::cout << absl::StrFormat("    valid:        %s .. %s\n",
                                   FormatAsn1Time(X509_get0_notBefore(cert.get())),
                                   FormatAsn1Time(X509_get0_notAfter(cert.get())));
      absl::StatusOr<wire::TcgDeviceInfo> dev = wire::ParseTcgDeviceInfo(cert.get());
      if (dev.ok()) {
        std::cout << absl::StrFormat("    TPM:          manufacturer %s, model %s, version %s\n",
                                     dev->manufacturer, dev->model, dev->version);
      }
      if (ca.has_value()) {
        absl::Status v = wire::VerifyEkCertificate(cert.get(), *ca);
        std::cout << absl::StrFormat("    chain:        %s\n", v.ok() ? "OK (verified against the CA bundle)"
                                                                      : absl::StrCat("FAILED: ", v.message()));
        failures += v.ok() ? 0 : 1;
      }
      if (ek.ok()) {
        absl::Status m = wire::CheckCertificateMatchesPublic(cert.get(), ek->pub.publicArea);
        std::cout << absl::StrFormat("    key match:    %s\n", m.ok() ? "OK (certificate key == EK public key)"
                                                                      : absl::StrCat("FAILED: ", m.message()));
        failures += m.ok() ? 0 : 1;
      }
      if (!out_dir.empty()) {
        std::string pem = PemCertificate(cert.get());
        RETURN_IF_ERROR(WriteFile(absl::StrCat(out_dir, "/ek-", spec.name, ".crt.pem"), AsSpan(pem)));
      }
    }
    if (!out_dir.empty() && ek_key) {
      std::string pem = PemPublicKey(ek_key.get());
      RETURN_IF_ERROR(WriteFile(absl::StrCat(out_dir, "/ek-", spec.name, ".pub.pem"), AsSpan(pem)));
    }
  }
  if (shown == 0) {
    return absl::NotFoundError(absl::StrCat("no EK of type '", sel, "' found"));
  }
  if (failures > 0) {
    return absl::PermissionDeniedError(absl::StrCat(failures, " EK check(s) failed (see above)"));
  }
  return absl::OkStatus();
}

absl::Status CmdPcrRead(const Args& a) {
  ASSIGN_OR_RETURN(TPML_PCR_SELECTION sel, wire::ParsePcrSelection(a.GetOr("pcrs", "sha256:0,1,2,3,4,5,6,7")));
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(wire::PcrValues values, t->PcrRead(sel));
  for (const auto& [alg, idx] : wire::SelectedPcrs(sel)) {
    std::cout << absl::StrFormat("%-10s %s\n", absl::StrCat(wire::HashAlgName(alg), ":", idx),
                                 HexEncode(values[alg][idx]));
  }
  return absl::OkStatus();
}

absl::StatusOr<wire::EkType> ParseEkArg(const std::string& s) {
  if (s == "rsa") return wire::EkType::kRsa2048;
  if (s == "ecc") return wire::EkType::kEccP256;
  for (const auto& spec : wire::AllEkSpecs()) {
    if (s == spec.name) return spec.type;
  }
  return UsageError(absl::StrCat("--ek ", s, ": expected rsa, ecc or an EK name shown by `hwid tpm ek`"));
}

absl::Status CmdAttestSelftest(const Args& a) {
  ASSIGN_OR_RETURN(wire::EkType ek_type, ParseEkArg(a.GetOr("ek", "rsa")));
  absl::StatusOr<wire::KeyAlg> ak_alg = wire::ParseKeyAlg(a.GetOr("ak-alg", "ec-p256"));
  if (!ak_alg.ok()) return UsageError(std::string(ak_alg.status().message()));
  absl::StatusOr<uint32_t> ak_handle = tpm::ParseHandle(a.GetOr("ak-handle", "0x81000010"));
  if (!ak_handle.ok()) return UsageError(std::string(ak_handle.status().message()));
  absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(a.GetOr("pcrs", "sha256:0,1,2,3,4,5,6,7"));
  if (!sel.ok()) return UsageError(std::string(sel.status().message()));

  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  const auto start = std::chrono::steady_clock::now();
  const uint64_t cmds0 = t->command_count();
  ASSIGN_OR_RETURN(tpm::LoadedKey ak, t->EnsureAk(*ak_alg, *ak_handle));
  RETURN_IF_ERROR(wire::CheckAkAttributes(ak.pub.publicArea));
  ASSIGN_OR_RETURN(Bytes ak_name, wire::ObjectName(ak.pub.publicArea));
  std::cout << absl::StrFormat("[agent]  AK %s at %s, name %s (restricted signing key: OK)\n",
                               wire::KeyAlgName(*ak_alg), tpm::FormatHandle(*ak_handle), HexEncode(ak_name));
  ASSIGN_OR_RETURN(tpm::Ek ek, t->LoadEk(ek_type));
  std::cout << absl::StrFormat("[agent]  EK %s: %s\n", a.GetOr("ek", "rsa"),
                               ek.persistent_handle != 0 ? absl::StrCat("persistent ", tpm::FormatHandle(ek.persistent_handle))
                                                         : std::string("created from the TCG template"));
  // Verifier side, in software.
  SecureBytes secret(32);
  Bytes nonce(32);
  if (RAND_bytes(secret.data(), 32) != 1 || RAND_bytes(nonce.data(), 32) != 1) {
    return OpenSslError("RAND_bytes");
  }
  ASSIGN_OR_RETURN(wire::Credential cred, wire::MakeCredential(ek.pub.publicArea, AsSpan(secret), ak_name));
  std::cout << absl::StrFormat("[server] MakeCredential in software: credential blob %u B, encrypted seed %u B\n",
                               cred.id_object.size(), cred.encrypted_secret.size());
  ASSIGN_OR_RETURN(SecureBytes recovered, t->ActivateCredential(ak, ek, cred.id_object, cred.encrypted_secret));
  if (!ConstantTimeEquals(AsSpan(recovered), AsSpan(secret))) {
    return absl::PermissionDeniedError("ActivateCredential returned a different secret");
  }
  std::cout << "[agent]  ActivateCredential (PolicySecret on the endorsement hierarchy): secret recovered\n";
  std::cout << "[server] secret matches (constant-time compare): OK\n";
  ASSIGN_OR_RETURN(tpm::Quote q, t->QuotePcrs(ak, nonce, *sel));
  const uint64_t cmds = t->command_count() - cmds0;
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << absl::StrFormat("[agent]  TPM2_Quote over %s with a fresh 32-byte nonce: attest %u B, signature %u B\n",
                               wire::FormatPcrSelection(*sel), q.attest.size(), q.signature.size());
  ASSIGN_OR_RETURN(wire::VerifiedQuote v, wire::VerifyQuote(ak.pub.publicArea, q.attest, q.signature, nonce, q.pcrs));
  std::cout << "[server] quote verified in software: magic, type, nonce, PCR selection, PCR digest, AK signature: OK\n";
  for (const auto& [alg, idx] : wire::SelectedPcrs(*sel)) {
    std::cout << absl::StrFormat("           %-10s %s\n", absl::StrCat(wire::HashAlgName(alg), ":", idx),
                                 HexEncode(v.pcrs[alg][idx]));
  }
  std::cout << absl::StrFormat("attestation round: %u TPM commands, %.1f ms\n", cmds, ms);
  return absl::OkStatus();
}

// ParseSchemeArg parses --scheme: ecdsa, pkcs1 (rsassa) or pss (rsapss).
absl::StatusOr<SignScheme> ParseSchemeArg(const std::string& s) {
  if (s == "ecdsa") return SignScheme::kEcdsa;
  if (s == "pkcs1" || s == "rsassa") return SignScheme::kRsaPkcs1;
  if (s == "pss" || s == "rsapss") return SignScheme::kRsaPss;
  return UsageError(absl::StrCat("--scheme ", s, ": expected ecdsa, pkcs1 or pss"));
}

#if HWID_WITH_PKCS11
bool IsPkcs11Uri(absl::string_view ref) { return absl::StartsWith(ref, "pkcs11:"); }

// CmdKeyCreatePkcs11 generates a non-extractable key on a PKCS#11 token and prints its URI.
absl::Status CmdKeyCreatePkcs11(const Args& a, const std::string& uri) {
  absl::StatusOr<pkcs11::KeyAlg> alg = pkcs11::ParseKeyAlg(a.GetOr("alg", ""));
  if (!alg.ok()) return UsageError(std::string(alg.status().message()));
  auto label = a.Get("label");
  if (!label.has_value() || label->empty()) return UsageError("--label NAME is required with --pkcs11");
  if (a.Get("persist") || a.Get("auth-env")) {
    return UsageError("--persist and --auth-env are for TPM keys, not with --pkcs11");
  }
  ASSIGN_OR_RETURN(pkcs11::Pkcs11Uri parsed, pkcs11::ParseUri(uri));
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, pkcs11::Token::Open(parsed));
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> key, token->GenerateKey(*alg, *label));
  std::cerr << absl::StrFormat("created %s key '%s' on %s (CKA_SENSITIVE, not extractable)\n",
                               pkcs11::KeyAlgName(*alg), *label, token->Describe());
  if (auto out = a.Get("out")) {
    // The key file names the key (and the module when the URI gave one), never the PIN.
    const std::string key_uri = pkcs11::FormatObjectUri(
        token->fields(), key->label(), key->id(), "private", parsed.module_path.value_or(""));
    ASSIGN_OR_RETURN(std::string pem, pkcs11::EncodeUriPem(key_uri));
    RETURN_IF_ERROR(WriteFile(*out, AsSpan(pem), 0644));
    std::cerr << absl::StrFormat("wrote %s (PKCS#11 PROVIDER URI: usable as a key file by the "
                                 "hwid provider, nginx and curl)\n", *out);
  }
  std::cout << key->uri() << "\n";
  return absl::OkStatus();
}

absl::Status CmdKeyList(const Args& a) {
  if (a.positional().size() != 1) return UsageError("expected one pkcs11: URI");
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, pkcs11::Token::Open(a.positional()[0]));
  ASSIGN_OR_RETURN(std::vector<pkcs11::KeyInfo> keys, token->ListKeys());
  if (keys.empty()) {
    std::cerr << "no private keys visible on " << token->Describe()
              << (token->logged_in() ? "" : " (not logged in: give a PIN to see private keys)") << "\n";
  }
  for (const pkcs11::KeyInfo& k : keys) {
    std::cout << absl::StrFormat("%-3s %-24s %s\n", k.type == KeyType::kEc ? "EC" : "RSA",
                                 k.label, k.uri);
  }
  return absl::OkStatus();
}

absl::Status CmdKeyPubPkcs11(const Args& a, const std::string& uri) {
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> key, pkcs11::LoadKey(uri));
  std::string pem = PemPublicKey(key->public_key());
  if (auto out = a.Get("out")) {
    return WriteFile(*out, AsSpan(pem));
  }
  std::cout << pem;
  return absl::OkStatus();
}

absl::Status CmdKeySignPkcs11(const Args& a, const std::string& uri) {
  if (a.Get("auth-env")) return UsageError("--auth-env is for TPM keys; put the PIN in the URI or HWID_PKCS11_PIN");
  ASSIGN_OR_RETURN(Bytes msg, ReadFile(*a.Get("in"), 1u << 30));
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Key> key, pkcs11::LoadKey(uri));
  const bool ec = key->type() == KeyType::kEc;
  const std::string hash = a.GetOr("hash", ec && key->bits() == 384 ? "sha384" : "sha256");
  absl::StatusOr<HashAlg> alg = ParseHashAlg(hash);
  if (!alg.ok() || (*alg != HashAlg::kSha256 && *alg != HashAlg::kSha384 && *alg != HashAlg::kSha512)) {
    return UsageError(absl::StrCat("--hash ", hash, ": expected sha256, sha384 or sha512"));
  }
  const std::string s = a.GetOr("scheme", ec ? "ecdsa" : "pkcs1");
  SignParams params;
  params.hash = *alg;
  ASSIGN_OR_RETURN(params.scheme, ParseSchemeArg(s));
  const EVP_MD* md = HashAlgMd(*alg);
  Bytes digest(EVP_MAX_MD_SIZE);
  unsigned int dlen = 0;
  if (EVP_Digest(msg.data(), msg.size(), digest.data(), &dlen, md, nullptr) != 1) {
    return OpenSslError("hashing the input");
  }
  digest.resize(dlen);
  ASSIGN_OR_RETURN(Bytes sig, key->Sign(digest, params));
  // Check our own output with the public key before handing it out.
  OsslPtr<EVP_PKEY_CTX> vctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key->public_key(), nullptr));
  if (vctx == nullptr || EVP_PKEY_verify_init(vctx.get()) != 1 ||
      EVP_PKEY_CTX_set_signature_md(vctx.get(), md) != 1 ||
      (!ec && EVP_PKEY_CTX_set_rsa_padding(vctx.get(), params.scheme == SignScheme::kRsaPss
                                                           ? RSA_PKCS1_PSS_PADDING
                                                           : RSA_PKCS1_PADDING) != 1) ||
      EVP_PKEY_verify(vctx.get(), sig.data(), sig.size(), digest.data(), digest.size()) != 1) {
    return OpenSslError("the token's signature does not verify with its public key");
  }
  RETURN_IF_ERROR(WriteFile(*a.Get("out"), sig));
  std::cout << absl::StrFormat("signed %u bytes (%s, %s) with %s: %u-byte signature written to %s\n",
                               msg.size(), s, hash, key->Describe(), sig.size(), *a.Get("out"));
  return absl::OkStatus();
}
#endif  // HWID_WITH_PKCS11

absl::Status CmdKeyCreate(const Args& a) {
#if HWID_WITH_PKCS11
  if (auto uri = a.Get("pkcs11")) {
    return CmdKeyCreatePkcs11(a, *uri);
  }
#endif
  absl::StatusOr<wire::KeyAlg> alg = wire::ParseKeyAlg(a.GetOr("alg", ""));
  if (!alg.ok()) return UsageError(std::string(alg.status().message()));
  auto out = a.Get("out");
  if (!out.has_value()) return UsageError("--out FILE is required");
  std::optional<uint32_t> persist;
  if (auto h = a.Get("persist")) {
    absl::StatusOr<uint32_t> ph = tpm::ParseHandle(*h);
    if (!ph.ok()) return UsageError(std::string(ph.status().message()));
    persist = *ph;
  }
  ASSIGN_OR_RETURN(SecureBytes auth, AuthFromArgs(a));
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(wire::TpmKeyFile key, t->CreateKey(*alg, AsSpan(auth)));
  if (auto d = a.Get("description")) {
    key.description = *d;
  }
  ASSIGN_OR_RETURN(std::string pem, wire::EncodeTpmKeyFilePem(key));
  RETURN_IF_ERROR(WriteFile(*out, AsSpan(pem), 0600));
  std::cout << absl::StrFormat("created %s key in the TPM, written to %s (TSS2 PRIVATE KEY)\n",
                               wire::KeyAlgName(*alg), *out);
  if (persist.has_value()) {
    ASSIGN_OR_RETURN(tpm::LoadedKey loaded, t->LoadKey(key, AsSpan(auth)));
    RETURN_IF_ERROR(t->Persist(loaded, *persist));
    std::cout << absl::StrFormat("persisted at %s (use handle:%s)\n", tpm::FormatHandle(*persist),
                                 tpm::FormatHandle(*persist));
  }
  return absl::OkStatus();
}

absl::Status CmdKeyFile(const Args& a) {
  auto h = a.Get("persistent");
  if (!h.has_value()) return UsageError("--persistent 0x81xxxxxx is required");
  absl::StatusOr<uint32_t> handle = tpm::ParseHandle(*h);
  if (!handle.ok()) return UsageError(std::string(handle.status().message()));
  if ((*handle >> 24) != TPM2_HT_PERSISTENT) {
    return UsageError(absl::StrCat(*h, " is not a persistent handle (0x81xxxxxx)"));
  }
  auto out = a.Get("out");
  if (!out.has_value()) return UsageError("--out FILE is required");
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, t->ReadPublic(*handle));
  if ((pub.publicArea.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) == 0 ||
      (pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the object at ", tpm::FormatHandle(*handle),
        " is not an unrestricted signing key; the hwid provider could not sign with it"));
  }
  wire::TpmKeyFile key;
  key.persistent_handle = *handle;
  ASSIGN_OR_RETURN(key.pub, wire::MarshalPublic(pub));
  key.empty_auth = !a.Flag("auth");
  if (auto d = a.Get("description")) {
    key.description = *d;
  }
  ASSIGN_OR_RETURN(std::string pem, wire::EncodeTpmKeyFilePem(key));
  RETURN_IF_ERROR(WriteFile(*out, AsSpan(pem), 0600));
  std::cout << absl::StrFormat("wrote %s: a TSS2 PRIVATE KEY naming the persistent key %s\n", *out,
                               tpm::FormatHandle(*handle));
  return absl::OkStatus();
}

absl::Status CmdKeyPub(const Args& a) {
  auto ref = a.Get("key");
  if (!ref.has_value()) return UsageError("--key FILE|handle:0x81xxxxxx|pkcs11:URI is required");
#if HWID_WITH_PKCS11
  if (IsPkcs11Uri(*ref)) return CmdKeyPubPkcs11(a, *ref);
#endif
  TPM2B_PUBLIC pub;
  if (absl::StartsWith(*ref, "handle:")) {
    ASSIGN_OR_RETURN(uint32_t h, tpm::ParseHandle(ref->substr(7)));
    ASSIGN_OR_RETURN(auto t, OpenTpm(a));
    ASSIGN_OR_RETURN(pub, t->ReadPublic(h));
  } else {
    // The public half is in the key file: no TPM needed.
    ASSIGN_OR_RETURN(Bytes data, ReadFile(*ref));
    ASSIGN_OR_RETURN(wire::TpmKeyFile kf, wire::ParseTpmKeyFile(data));
    ASSIGN_OR_RETURN(pub, wire::ParsePublic(kf.pub));
  }
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> key, wire::PublicToEvp(pub.publicArea));
  std::string pem = PemPublicKey(key.get());
  if (auto out = a.Get("out")) {
    RETURN_IF_ERROR(WriteFile(*out, AsSpan(pem)));
  } else {
    std::cout << pem;
  }
  return absl::OkStatus();
}

absl::Status CmdKeySign(const Args& a) {
  auto ref = a.Get("key");
  auto in = a.Get("in");
  auto out = a.Get("out");
  if (!ref || !in || !out) return UsageError("--key, --in and --out are required");
#if HWID_WITH_PKCS11
  if (IsPkcs11Uri(*ref)) return CmdKeySignPkcs11(a, *ref);
#endif
  std::optional<TPMI_ALG_HASH> hash;
  if (auto h = a.Get("hash")) {
    // One digest-name parser (common/sign.h); the TPM knows SHA-1 and SHA-2 256/384/512.
    absl::StatusOr<HashAlg> parsed = ParseHashAlg(*h);
    if (!parsed.ok()) return UsageError(std::string(parsed.status().message()));
    absl::StatusOr<TPMI_ALG_HASH> tpm_hash = wire::TpmHashAlg(*parsed);
    if (!tpm_hash.ok()) {
      return UsageError(absl::StrCat("--hash ", *h, ": ", tpm_hash.status().message()));
    }
    hash = *tpm_hash;
  }
  ASSIGN_OR_RETURN(SecureBytes auth, AuthFromArgs(a));
  ASSIGN_OR_RETURN(Bytes msg, ReadFile(*in, 1u << 30));
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  ASSIGN_OR_RETURN(tpm::LoadedKey key, OpenKey(*t, *ref, AsSpan(auth)));
  if (!hash.has_value()) {
    // Default: SHA-384 for P-384 keys, SHA-256 otherwise.
    const TPMT_PUBLIC& p = key.pub.publicArea;
    hash = (p.type == TPM2_ALG_ECC && p.parameters.eccDetail.curveID == TPM2_ECC_NIST_P384)
               ? TPM2_ALG_SHA384
               : TPM2_ALG_SHA256;
  }
  ASSIGN_OR_RETURN(Bytes digest, wire::Hash(*hash, msg));
  const std::string s = a.GetOr("scheme", key.pub.publicArea.type == TPM2_ALG_ECC ? "ecdsa" : "pkcs1");
  ASSIGN_OR_RETURN(SignScheme scheme, ParseSchemeArg(s));
  ASSIGN_OR_RETURN(TPMT_SIGNATURE sig, t->Sign(key, digest, scheme, *hash));
  // Check our own output with the public key before handing it out.
  RETURN_IF_ERROR(wire::VerifySignature(key.pub.publicArea, msg, sig));
  ASSIGN_OR_RETURN(Bytes der, wire::SignatureToDer(sig));
  RETURN_IF_ERROR(WriteFile(*out, der));
  std::cout << absl::StrFormat("signed %u bytes (%s, %s): %u-byte signature written to %s\n", msg.size(),
                               s, wire::HashAlgName(*hash), der.size(), *out);
  return absl::OkStatus();
}

absl::Status CmdKeyEvict(const Args& a) {
  auto h = a.Get("handle");
  if (!h) return UsageError("--handle 0x81xxxxxx is required");
  absl::StatusOr<uint32_t> handle = tpm::ParseHandle(*h);
  if (!handle.ok()) return UsageError(std::string(handle.status().message()));
  ASSIGN_OR_RETURN(auto t, OpenTpm(a));
  RETURN_IF_ERROR(t->EvictPersistent(*handle));
  std::cout << "evicted " << tpm::FormatHandle(*handle) << "\n";
  return absl::OkStatus();
}

#if HWID_WITH_TPM_CHECK
absl::Status CmdTpmCheck(const Args& a) {
  TpmCheckOptions o;
  o.tcti = a.GetOr("tcti", "");
  if (auto ca = a.Get("ca")) {
    if (ca->empty()) return UsageError("--ca needs a file or directory");
    o.ca_path = *ca;
  }
  o.pcrs = a.GetOr("pcrs", o.pcrs);
  if (absl::StatusOr<TPML_PCR_SELECTION> sel = wire::ParsePcrSelection(o.pcrs); !sel.ok()) {
    return UsageError(absl::StrCat("--pcrs: ", sel.status().message()));
  }
  if (auto h = a.Get("ak-handle")) {
    absl::StatusOr<uint32_t> handle = tpm::ParseHandle(*h);
    if (!handle.ok()) return UsageError(std::string(handle.status().message()));
    if ((*handle >> 24) != 0x81) return UsageError("--ak-handle must be a persistent handle (0x81xxxxxx)");
    o.ak_handle = *handle;
  }
  if (auto runs = a.Get("runs")) {
    int n = 0;
    if (!absl::SimpleAtoi(*runs, &n) || n < 1 || n > 1000) {
      return UsageError("--runs must be a number from 1 to 1000");
    }
    o.perf_runs = n;
  }
  o.quick = a.Flag("quick");
  const std::optional<std::string> json_path = a.Get("json");
  if (json_path.has_value() && json_path->empty()) return UsageError("--json needs a file name (or -)");

  TpmCheckReport report = RunTpmCheck(o);
  const std::string json = CheckReportJson(report);
  if (json_path.has_value() && *json_path == "-") {
    std::cout << json;
  } else {
    std::cout << FormatCheckTable(report);
    if (json_path.has_value()) {
      RETURN_IF_ERROR(WriteFile(*json_path, AsSpan(json), 0644));
      std::cout << "JSON report: " << *json_path << "\n";
    }
  }
  if (report.ExitCode() != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        report.Count(CheckResult::kFail), " check(s) failed; each failed line says what to do"));
  }
  return absl::OkStatus();
}
#endif

const char kTopUsage[] =
    "usage: hwid <group> <command> [options]\n"
    "\n"
    "  hwid tpm info                 TPM identity, firmware, PCR banks, lockout state\n"
    "  hwid tpm ek                   EK certificates and public keys (--ca verifies the chain)\n"
    "  hwid tpm check                qualification report: EK certificates, keys, capabilities,\n"
    "                                the hwid_tpm attestation, timings (table and JSON)\n"
    "  hwid tpm pcrread              read PCR values\n"
    "  hwid tpm flush-transient      free object slots leaked by killed processes (no RM)\n"
    "  hwid attest selftest          AK + credential activation + quote, verified in software\n"
    "  hwid key create               create a TPM signing key (TSS2 PRIVATE KEY file)\n"
    "  hwid key file                 write a key file naming a persistent key\n"
    "  hwid key pub                  export a key's public half (PEM)\n"
    "  hwid key sign                 sign a file with a TPM or PKCS#11 key\n"
    "  hwid key list URI             list the keys on a PKCS#11 token\n"
    "  hwid key evict                remove a persistent key\n"
    "\n"
    "Every command takes --tcti T (default $HWID_TCTI, else device:/dev/tpmrm0) and --help.\n"
    "Exit status: 0 success, 1 operational error, 2 usage error.\n";

std::map<std::string, Command> Commands() {
  std::map<std::string, Command> c;
  c["tpm info"] = {"usage: hwid tpm info [--tcti T]\n  Prints manufacturer, vendor, firmware, spec, PCR banks, lockout state.\n",
                   {"tcti"}, {}, CmdTpmInfo};
  c["tpm flush-transient"] = {
      "usage: hwid tpm flush-transient [--tcti T]\n"
      "  Flushes every transient object loaded in the TPM. On a TPM without a resource manager\n"
      "  (swtpm, /dev/tpm0) a process killed while it had keys loaded leaks their object slots\n"
      "  until the TPM restarts; when every slot is leaked, signatures fail with TPM_RC_OBJECT_MEMORY\n"
      "  (0x902). Run this only when no other program is using the TPM: it also flushes objects\n"
      "  that live processes hold (hwid's provider reloads its keys, other software may not).\n",
      {"tcti"}, {}, CmdTpmFlushTransient};
  c["tpm ek"] = {
      "usage: hwid tpm ek [--alg all|rsa|ecc|NAME] [--ca BUNDLE.pem] [--out-dir DIR] [--tcti T]\n"
      "  Reads every EK certificate from NV (low and high range), shows the EK public keys,\n"
      "  checks that each certificate's key equals the EK public key, and with --ca verifies\n"
      "  each certificate chain against BUNDLE (self-signed roots + intermediates).\n"
      "  --out-dir writes ek-NAME.crt.pem and ek-NAME.pub.pem. Exit 1 when a check fails.\n",
      {"tcti", "alg", "ca", "out-dir"}, {}, CmdTpmEk};
#if HWID_WITH_TPM_CHECK
  c["tpm check"] = {
      "usage: hwid tpm check [--ca BUNDLE] [--json FILE|-] [--pcrs sha256:0-7] [--quick]\n"
      "                      [--ak-handle 0x81000100] [--runs N] [--tcti T]\n"
      "  Checks whether this TPM will work with SPIRE (hwid_tpm) and your PKI, and if not, why:\n"
      "  identity and clock; capabilities (algorithms, curves, PCR banks, slots, NV, dictionary-\n"
      "  attack state); every EK certificate in NV (encoding quirks, TCG EK profile, validity,\n"
      "  chain to BUNDLE with intermediates from the bundle or NV, key == the template EK); key\n"
      "  hygiene (RSA size, ROCA, EC point); the attestation exactly as the hwid_tpm plugins run\n"
      "  it (AK at --ak-handle, created and persisted if absent; credential activation; quote\n"
      "  verified in software; the server's verdict); and median timings of TPM2_Sign, Quote,\n"
      "  CreatePrimary and ActivateCredential (--runs each; --quick skips them).\n"
      "  BUNDLE: a PEM file, a DER certificate or a directory of them. --json writes the report\n"
      "  as JSON (schema hwid.tpm-check/v1, docs/tpm-check.md; '-' prints only the JSON).\n"
      "  Exit status: 0 when no check failed, 1 when one did, 2 usage error.\n",
      {"tcti", "ca", "json", "pcrs", "ak-handle", "runs"}, {"quick"}, CmdTpmCheck};
#endif
  c["tpm pcrread"] = {"usage: hwid tpm pcrread [--pcrs sha256:0,1,2+sha1:0] [--tcti T]\n",
                      {"tcti", "pcrs"}, {}, CmdPcrRead};
  c["attest selftest"] = {
      "usage: hwid attest selftest [--ek rsa|ecc|NAME] [--ak-alg ec-p256|ec-p384|rsa-2048|rsa-3072]\n"
      "                            [--ak-handle 0x81000010] [--pcrs sha256:0-7] [--tcti T]\n"
      "  Creates (first time) and persists a restricted attestation key, runs software\n"
      "  MakeCredential + TPM ActivateCredential with the EK, quotes the PCRs over a fresh nonce\n"
      "  and verifies the quote in software, as the hwid attestation server does.\n",
      {"tcti", "ek", "ak-alg", "ak-handle", "pcrs"}, {}, CmdAttestSelftest};
  c["key create"] = {
      "usage: hwid key create --alg ec-p256|ec-p384|rsa-2048|rsa-3072 --out KEY.pem\n"
      "                       [--persist 0x81xxxxxx] [--auth-env VAR] [--description TEXT] [--tcti T]\n"
      "  Creates a signing key in the TPM (under the owner-hierarchy SRK) and writes it as a\n"
      "  TSS2 PRIVATE KEY PEM (readable by tpm2-openssl and tpm2-tools). The private key never\n"
      "  leaves the TPM unencrypted. --auth-env names an environment variable holding the key's\n"
      "  password.\n"
      "   or: hwid key create --pkcs11 URI --alg ec-p256|ec-p384|rsa-2048|rsa-3072|rsa-4096 --label NAME\n"
      "                       [--out KEY.pem]\n"
      "  Generates the key on the PKCS#11 token URI names (CKA_SENSITIVE, CKA_EXTRACTABLE false)\n"
      "  and prints its pkcs11: URI; --out also writes a PKCS#11 PROVIDER URI key file (no PIN)\n"
      "  that the hwid provider, nginx and curl accept as a key file. The PIN comes from the URI (pin-value, pin-source) or\n"
      "  $HWID_PKCS11_PIN; the module from module-path, $HWID_PKCS11_MODULE or p11-kit's proxy.\n",
      {"tcti", "alg", "out", "persist", "auth-env", "description", "pkcs11", "label"}, {}, CmdKeyCreate};
  c["key file"] = {
      "usage: hwid key file --persistent 0x81xxxxxx --out KEY.pem [--auth] [--description TEXT]\n"
      "                     [--tcti T]\n"
      "  Writes a TSS2 PRIVATE KEY file that names the persistent signing key at the handle (its\n"
      "  privkey is the 4-byte handle, as proposed in tpm2-openssl PR #165), for programs that\n"
      "  take only key file paths (nginx, curl, HAProxy). The file holds the key's public area;\n"
      "  the hwid provider refuses it when the handle holds another key. --auth marks the key as\n"
      "  needing its authorization value (asked through the program's passphrase callback).\n",
      {"tcti", "persistent", "out", "description"}, {"auth"}, CmdKeyFile};
  c["key pub"] = {"usage: hwid key pub --key KEY.pem|handle:0x81xxxxxx|pkcs11:URI [--out PUB.pem] [--tcti T]\n",
                  {"tcti", "key", "out"}, {}, CmdKeyPub};
  c["key sign"] = {
      "usage: hwid key sign --key KEY.pem|handle:0x81xxxxxx|pkcs11:URI --in FILE --out SIG\n"
      "                     [--hash sha256|sha384|sha512] [--scheme ecdsa|pkcs1|pss] [--auth-env VAR]\n"
      "  The hash defaults to sha384 for P-384 keys and sha256 otherwise.\n"
      "  Hashes FILE in software and signs the digest in the TPM (one TPM2_Sign). Writes a DER\n"
      "  ECDSA signature or a raw RSA signature, as `openssl dgst -verify` expects.\n",
      {"tcti", "key", "in", "out", "hash", "scheme", "auth-env"}, {}, CmdKeySign};
#if HWID_WITH_PKCS11
  c["key list"] = {"usage: hwid key list pkcs11:URI\n"
                   "  Lists the private keys on the token URI names, one line each: type, label, URI.\n",
                   {}, {}, CmdKeyList, 1};
#endif
  c["key evict"] = {"usage: hwid key evict --handle 0x81xxxxxx [--tcti T]\n", {"tcti", "handle"}, {}, CmdKeyEvict};
  return c;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kTopUsage;
    return args.empty() ? kExitUsage : kExitOk;
  }
  auto commands = Commands();
  if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
    bool group = false;
    for (const auto& [name, cmd] : commands) {
      if (absl::StartsWith(name, args[0] + " ")) {
        std::cout << cmd.usage;
        group = true;
      }
    }
    if (!group) {
      std::cerr << "hwid: unknown command group '" << args[0] << "'\n" << kTopUsage;
      return kExitUsage;
    }
    return args.size() < 2 ? kExitUsage : kExitOk;
  }
  const std::string name = args[0] + " " + args[1];
  auto it = commands.find(name);
  if (it == commands.end()) {
    std::cerr << "hwid: unknown command '" << name << "'\n" << kTopUsage;
    return kExitUsage;
  }
  absl::StatusOr<Args> parsed = Args::Parse({args.begin() + 2, args.end()}, it->second.value_opts,
                                            it->second.flag_opts);
  if (!parsed.ok()) {
    std::cerr << "hwid " << name << ": " << parsed.status().message() << "\n" << it->second.usage;
    return kExitUsage;
  }
  if (parsed->help()) {
    std::cout << it->second.usage;
    return kExitOk;
  }
  if (parsed->positional().size() > it->second.max_positional) {
    std::cerr << "hwid " << name << ": unexpected argument '" << parsed->positional()[0] << "'\n"
              << it->second.usage;
    return kExitUsage;
  }
  absl::Status st = it->second.run(*parsed);
  if (IsUsageError(st)) {
    std::cerr << "hwid " << name << ": " << st.message() << "\n" << it->second.usage;
    return kExitUsage;
  }
  if (!st.ok()) {
    std::cerr << "hwid " << name << ": error: " << st.message() << "\n";
    return kExitError;
  }
  return kExitOk;
}

}  // namespace
}  // namespace hwid::cli

int main(int argc, char** argv) { return hwid::cli::Main(argc, argv); }
