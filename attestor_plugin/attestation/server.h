// The hwid_tpm attestation server, transport-free: configuration validation, one ServerSession per
// node attestation, and each verification step as a small named function.
//
// Software only: links hwid::tpm_wire, hwid::common, OpenSSL and protobuf, never tpm/ or ESAPI.
// Error codes (the gRPC adapter passes them through unchanged):
//   INVALID_ARGUMENT     malformed input (bad encoding, sizes, TPM structures, protocol order);
//   PERMISSION_DENIED    a failed proof or policy (untrusted EK, AK attributes, wrong secret,
//                        quote signature/nonce/digest, PCR selection or values);
//   FAILED_PRECONDITION  the server is not (validly) configured.
// Messages name the failed check; they never contain the secret, the nonce or credential blobs.
// Detail meant for the server's log only (e.g. the configured golden value of a failed PCR
// policy) travels as the Status payload kServerLogDetail, never in the message.
#ifndef HWID_ATTESTOR_PLUGIN_ATTESTATION_SERVER_H_
#define HWID_ATTESTOR_PLUGIN_ATTESTATION_SERVER_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attestor_plugin/attestation/clock_state.h"
#include "attestor_plugin/attestation/messages.h"
#include "common/bytes.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::attestation {

// kServerLogDetail is the type URL of a Status payload with detail for the server's log only.
// The plugin logs it next to the refusal and never sends it to the agent (the gRPC status
// carries the message alone).
inline constexpr char kServerLogDetail[] = "type.hwid.dev/hwid.attestation.ServerLogDetail";

// ServerLogDetail returns the kServerLogDetail payload of `s` ("" when there is none).
std::string ServerLogDetail(const absl::Status& s);

// ServerConfigInput is what the plugin adapter fills from the HCL plugin_data (keys named in
// comments). Plain data; ValidateServerConfig turns it into a ServerConfig or fails closed.
struct ServerConfigInput {
  // SPIRE's trust domain (from the Configure core configuration), e.g. "example.org".
  std::string trust_domain;
  // ek_ca_bundle_paths: each a file (PEM bundle, text between blocks allowed, or one DER
  // certificate) or a directory read recursively (wire::LoadTrustBundle); self-signed
  // certificates are trust anchors, the others intermediates (path-building helpers only).
  std::vector<std::string> ek_ca_bundle_paths;
  // ek_allowlist: hex SHA-256 of EK SubjectPublicKeyInfo DER (64 hex digits, any case).
  std::vector<std::string> ek_allowlist;
  // ek_allowlist_path: a file with one such hash per line ('#' comments and blank lines allowed).
  std::string ek_allowlist_path;
  // ek_algs: the EK key types accepted ("rsa-2048", "rsa-3072", "rsa-4096", "ecc-p256",
  // "ecc-p384", "ecc-p521"; the ek_alg selector's spelling). Empty = the default, exactly
  // {"rsa-2048"}: a TPM that holds several EKs (RSA and ECC) would otherwise get one agent ID per
  // EK. More than one type is for migrating a fleet (each TPM then has one ID per accepted type).
  std::vector<std::string> ek_algs;
  // pcrs: the PCR selection every quote must cover exactly, e.g. "sha256:0-7".
  std::string pcrs = "sha256:0,1,2,3,4,5,6,7";
  // expected_pcrs: "<bank>:<index>" -> hex digest; each PCR must be in `pcrs`.
  std::map<std::string, std::string> expected_pcrs;
  // ak_algs: accepted AK algorithms ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072"); empty = all.
  std::vector<std::string> ak_algs;
  // certified_keys_dir: where the plugin hands agent keys certified in an attestation to the
  // hwid_tpm CredentialComposer (attestor_plugin/composer/handoff.h); empty = no hand-off.
  std::string certified_keys_dir;
  // verification_time: check certificate validity at this time instead of now (tests only; the
  // plugin never sets it).
  std::optional<time_t> verification_time;
  // clock_state: where the last verified TPMS_CLOCK_INFO per agent is kept (clock_state.h):
  // "none" (default), "file" (one server; clock_state_path is a directory) or "postgres"
  // (several servers; the libpq connection string is read from clock_state_conninfo_file or from
  // the environment variable named by clock_state_conninfo_env, never from plugin_data).
  std::string clock_state = "none";
  std::string clock_state_path;
  std::string clock_state_conninfo_file;
  std::string clock_state_conninfo_env;
  // on_store_unavailable: "fail_closed" (default) or "fail_open".
  std::string on_store_unavailable = "fail_closed";
  // attestation_timeout_seconds: the plugin ends an attestation stream (DEADLINE_EXCEEDED) when the
  // agent has not sent its payload and challenge response this long after the stream began
  // (1-3600; default 60).
  int64_t attestation_timeout_seconds = 60;
};

// ServerConfig is a validated, immutable configuration snapshot shared by sessions.
struct ServerConfig {
  std::string trust_domain;
  std::optional<wire::CaBundle> ca;   // certificate mode when set
  std::set<std::string> allowlist;    // lower-case hex; allowlist mode when non-empty
  std::set<std::string> ek_algs;      // never empty after validation (default {"rsa-2048"})
  TPML_PCR_SELECTION required_pcrs{};
  std::string required_pcrs_text;     // canonical form, sent in the challenge
  wire::PcrValues expected_pcrs;
  std::set<wire::KeyAlg> ak_algs;     // never empty after validation
  std::optional<time_t> verification_time;
  std::string certified_keys_dir;
  std::shared_ptr<ClockStateChecker> clock_state;  // null: clock_state = "none"
  int64_t attestation_timeout_seconds = 60;
};

// ValidateServerConfig checks every key and loads the CA bundles and the allowlist file. Fails
// closed with FAILED_PRECONDITION naming the key: missing or invalid trust domain; neither CA
// bundle nor allowlist; unreadable/invalid bundle or allowlist file; a malformed hash; an empty or
// invalid PCR selection; an expected PCR value outside the selection or of the wrong length; two
// expected_pcrs keys naming the same PCR (e.g. "sha256:7" and "SHA256:07"); an unknown or
// repeated EK or AK algorithm.
absl::StatusOr<std::shared_ptr<const ServerConfig>> ValidateServerConfig(
    const ServerConfigInput& in);

// AttestationResult is what SPIRE gets for an attested node.
struct AttestationResult {
  std::string spiffe_id;  // spiffe://<td>/spire/agent/hwid_tpm/<ek_pubhash>
  // Selector values without the plugin-name type ("ek_pubhash:<hex>", "pcr:sha256:7:<hex>", ...),
  // sorted and unique. SPIRE shows them as hwid_tpm:<value>.
  std::vector<std::string> selectors;
  bool can_reattest = true;
  // Protocol version 2: the DER SubjectPublicKeyInfo of every agent key the AK certified in this
  // session (selector agent_key:tpm when non-empty). For the CredentialComposer hand-off.
  std::vector<Bytes> certified_keys;
  std::string ek_pubhash;
  std::string ek_trust;  // "certificate" or "allowlist"
  // "recorded", "not configured", or "unchecked (store unavailable, fail_open)": for the log.
  std::string clock_state;
};

// ---- Verification steps (each with its own negative tests) ----

// EkPublicKeyHash returns the lower-case hex SHA-256 of the EK's SubjectPublicKeyInfo DER.
absl::StatusOr<std::string> EkPublicKeyHash(const TPMT_PUBLIC& ek);

// EkPublicKeyHash of `ek_key`, the EK already converted (and checked) by wire::PublicToEvp.
absl::StatusOr<std::string> EkPublicKeyHash(const EVP_PKEY* ek_key);

// CheckEkPublicArea: the EK must be an RSA or ECC restricted decryption key (decrypt set, sign
// clear) with fixedTPM and fixedParent. PERMISSION_DENIED naming the attribute.
absl::Status CheckEkPublicArea(const TPMT_PUBLIC& ek);

// EkAlgName names the EK's key type as ek_algs and the ek_alg selector spell it ("rsa-2048",
// "ecc-p256", ...). The type and size are those of the key itself, which the EK certificate (or
// the allowlisted hash) and credential activation prove.
std::string EkAlgName(const TPMT_PUBLIC& ek);

// CheckEkAlgorithm (one identity per TPM): the EK's key type must be in the configured ek_algs.
// PERMISSION_DENIED naming the type and the setting.
absl::Status CheckEkAlgorithm(const ServerConfig& config, const TPMT_PUBLIC& ek);

// CheckEkStrength: wire::CheckKeyStrength for the EK (no SHA-1 nameAlg, RSA >= 2048 bits, no
// ROCA fingerprint). PERMISSION_DENIED with the reason.
absl::Status CheckEkStrength(const TPMT_PUBLIC& ek);

// EkTrust is how an EK was admitted and the validated certificate facts.
struct EkTrust {
  std::string pubhash;
  bool via_certificate = false;
  std::optional<wire::TcgDeviceInfo> device;  // only from a verified certificate
  std::string issuer_cn;                      // only from a verified certificate
};

// VerifyEkTrust admits the EK by certificate (chain to a configured root, validity, EK EKU,
// certificate key == EK public key) or by allowlist; both modes may be configured, either one
// suffices. When a certificate is presented but fails and the EK hash is not allowlisted, the
// certificate's error is returned. INVALID_ARGUMENT for an unparsable certificate;
// PERMISSION_DENIED for a failed check (the message names it and, for an unknown EK, gives its
// hash so an operator can enrol it).
absl::StatusOr<EkTrust> VerifyEkTrust(const ServerConfig& config, const TPMT_PUBLIC& ek,
                                      ByteSpan certificate_der,
                                      absl::Span<const Bytes> intermediates_der);

// VerifyEkTrust with the EK already converted: `ek_key` must be wire::PublicToEvp(ek). The
// session converts (and checks) the EK once and uses this overload, so the costly RSA public-key
// check runs once per attestation instead of once per step.
absl::StatusOr<EkTrust> VerifyEkTrust(const ServerConfig& config, const EVP_PKEY* ek_key,
                                      ByteSpan certificate_der,
                                      absl::Span<const Bytes> intermediates_der);

// CheckAkPolicy: wire::CheckAkAttributes (restricted, sign, fixedTPM, fixedParent,
// sensitiveDataOrigin, no decrypt, name algorithm, key type/size, scheme), wire::CheckKeyStrength
// (no SHA-1 nameAlg, RSA >= 2048 bits, no ROCA fingerprint) and the configured algorithm list.
// Returns the AK's algorithm; PERMISSION_DENIED naming the failed attribute or weakness.
absl::StatusOr<wire::KeyAlg> CheckAkPolicy(const ServerConfig& config, const TPMT_PUBLIC& ak);

// CheckActivationSecret compares in constant time; PERMISSION_DENIED on mismatch.
absl::Status CheckActivationSecret(ByteSpan expected, ByteSpan presented);

// DecodePcrValues converts the response's PCR list: supported bank, index <= 23, the bank's digest
// length, no duplicate. INVALID_ARGUMENT naming the PCR.
absl::StatusOr<wire::PcrValues> DecodePcrValues(absl::Span<const PcrValue> values);

// CheckQuotedSelection: the quote's PCR selection must equal the required one (no PCR missing, no
// extra PCR). PERMISSION_DENIED naming both selections.
absl::Status CheckQuotedSelection(const TPML_PCR_SELECTION& quoted,
                                  const TPML_PCR_SELECTION& required);

// CheckPcrPolicy: every expected value must equal the quoted one. PERMISSION_DENIED naming the
// first mismatching PCR (bank and index) and the quoted value; the configured (golden) value is
// only in the kServerLogDetail payload, for the server's log, never in the message that reaches
// the agent. A PCR expected but not quoted also fails.
absl::Status CheckPcrPolicy(const wire::PcrValues& expected, const wire::PcrValues& quoted);

// VerifyCertifiedKeys (protocol version 2) verifies each certification with wire::VerifyCertify
// against the session's AK and certify nonce and returns the certified keys' DER
// SubjectPublicKeyInfo, in order. INVALID_ARGUMENT for malformed input, PERMISSION_DENIED for a
// failed proof (another AK, a stale or replayed nonce, a swapped public area, a duplicable or
// imported key); the message names the key's position.
absl::StatusOr<std::vector<Bytes>> VerifyCertifiedKeys(const TPMT_PUBLIC& ak,
                                                       absl::Span<const CertifiedKey> keys,
                                                       ByteSpan certify_nonce);

// ---- The session ----

// ServerSession runs one node attestation: exactly one payload, one challenge, one response.
// Any failure ends the session (later calls fail). Not thread-safe (one per stream).
class ServerSession {
 public:
  // New fails with FAILED_PRECONDITION when `config` is null (the plugin is not configured).
  static absl::StatusOr<std::unique_ptr<ServerSession>> New(
      std::shared_ptr<const ServerConfig> config);

  // NewWithFixedRandomnessForBenchmark is a BENCHMARK AND TEST SEAM that the plugin never uses
  // (the server adapter calls New only; tests/attestor_plugin/attestation prove that New draws a
  // fresh secret and nonce per session). The session uses `secret` as the credential-activation
  // secret and `nonce` as the quote nonce instead of drawing them from RAND_bytes, so that a
  // (payload, response) pair recorded once from a real TPM can be verified again, in full, by
  // bench/attest_bench. Everything else is unchanged: every check runs, and MakeCredential still
  // draws its own seed (RSA-OAEP) or ephemeral key (ECDH). A server that fixed these values would
  // accept replayed responses: never call this outside benchmarks and tests.
  // FAILED_PRECONDITION when `config` is null; INVALID_ARGUMENT unless `secret` and `nonce` are
  // 32 bytes each (the sizes New draws).
  static absl::StatusOr<std::unique_ptr<ServerSession>> NewWithFixedRandomnessForBenchmark(
      std::shared_ptr<const ServerConfig> config, ByteSpan secret, ByteSpan nonce);

  // HandlePayload decodes and verifies the agent's payload (EK trust, AK policy), binds a fresh
  // 32-byte secret to the server-computed AK name under the EK (MakeCredential) and returns the
  // encoded Challenge with a fresh 32-byte nonce and the required PCR selection.
  absl::StatusOr<Bytes> HandlePayload(ByteSpan payload);

  // HandleChallengeResponse verifies the activation secret, the quote (AK signature, magic, type,
  // nonce, PCR selection both ways, digest), the required selection and the PCR policy, then, when
  // a clock state store is configured, that the quote's clock info can follow the recorded one
  // (ClockStateChecker::Advance), and returns the node's identity.
  absl::StatusOr<AttestationResult> HandleChallengeResponse(ByteSpan response);

 private:
  enum class State { kAwaitingPayload, kAwaitingResponse, kDone, kFailed };
  explicit ServerSession(std::shared_ptr<const ServerConfig> config);
  absl::StatusOr<Bytes> HandlePayloadImpl(ByteSpan payload);
  absl::StatusOr<AttestationResult> HandleResponseImpl(ByteSpan response);

  std::shared_ptr<const ServerConfig> config_;
  State state_ = State::kAwaitingPayload;
  TPMT_PUBLIC ek_{};
  TPMT_PUBLIC ak_{};
  wire::KeyAlg ak_alg_ = wire::KeyAlg::kEcP256;
  EkTrust ek_trust_;
  SecureBytes secret_;
  Bytes nonce_;
  uint32_t version_ = kProtocolVersion;  // the payload's; the challenge and response carry it
  Bytes certify_nonce_;                  // version 2 only
  // Set only by NewWithFixedRandomnessForBenchmark; the plugin's sessions leave them empty.
  std::optional<SecureBytes> fixed_secret_for_benchmark_;
  std::optional<Bytes> fixed_nonce_for_benchmark_;
};

}  // namespace hwid::attestation

#endif  // HWID_ATTESTOR_PLUGIN_ATTESTATION_SERVER_H_
