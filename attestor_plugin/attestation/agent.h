// The hwid_tpm attestation agent side, transport-free: builds the attestation payload from the
// TPM's EK (certificate or public key) and a persistent AK, and answers the server's challenge
// with TPM2_ActivateCredential and TPM2_Quote.
#ifndef HWID_ATTESTOR_PLUGIN_ATTESTATION_AGENT_H_
#define HWID_ATTESTOR_PLUGIN_ATTESTATION_AGENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "attestor_plugin/attestation/messages.h"
#include "tpm/tpm.h"
#include "tpm/wire/templates.h"

namespace hwid::attestation {

// kDefaultAkHandle is the owner-hierarchy persistent handle of the AK unless configured.
inline constexpr uint32_t kDefaultAkHandle = 0x81000100;

// AgentConfigInput is what the plugin adapter fills from the HCL plugin_data.
struct AgentConfigInput {
  std::string tcti = "device:/dev/tpmrm0";  // tcti
  // ek: "auto" (the first EK that has a certificate, RSA-2048 then ECC P-256 then the others —
  // a fixed order, RSA-2048 first because it is the server's default ek_algs; RSA-2048 without a
  // certificate when none has one), "rsa" (= rsa2048), "ecc" (= ecc-p256), or
  // an exact template name ("rsa2048", "ecc-p256", "ecc-p384-h3", ...).
  std::string ek = "auto";
  // pcrs: the PCRs the agent agrees to quote; the server's request must be a subset. Empty means
  // whatever the server asks for.
  std::string pcrs;
  std::string ak_handle = "0x81000100";  // ak_handle: persistent handle of the AK
  std::string ak_alg = "ec-p256";        // ak_alg: ec-p256 | ec-p384 | rsa-2048 | rsa-3072
  // keymanager_key_dir: the hwid KeyManager's key_dir; when set the agent speaks protocol
  // version 2 and certifies every key file there (*.tss2.pem) with the AK.
  std::string keymanager_key_dir;
};

struct AgentConfig {
  std::string tcti;
  std::optional<wire::EkType> ek;  // nullopt = auto
  std::optional<TPML_PCR_SELECTION> pcrs;
  uint32_t ak_handle = kDefaultAkHandle;
  wire::KeyAlg ak_alg = wire::KeyAlg::kEcP256;
  std::string keymanager_key_dir;  // empty: protocol version 1
};

// ReadKeyManagerKeys reads the TSS2 key files of an hwid KeyManager key_dir (*.tss2.pem, not
// starting with '.'): the newest kMaxCertifiedKeys by modification time. Files that do not parse
// are skipped (the KeyManager skips them too). FAILED_PRECONDITION when the directory cannot be
// read.
absl::StatusOr<std::vector<wire::TpmKeyFile>> ReadKeyManagerKeys(const std::string& dir);

// ValidateAgentConfig fails with FAILED_PRECONDITION naming the key.
absl::StatusOr<AgentConfig> ValidateAgentConfig(const AgentConfigInput& in);

// AgentResponder owns the TPM connection. The first MakePayload selects the EK, reads its
// certificate and creates the AK at its persistent handle if it does not exist yet (EnsureAk);
// later attestations (re-attestation, SPIRE's renewal path) reuse the loaded EK and AK: no key
// is ever generated again. Not thread-safe; the adapter serialises calls.
class AgentResponder {
 public:
  static absl::StatusOr<std::unique_ptr<AgentResponder>> New(const AgentConfig& config);

  // MakePayload returns the encoded AttestationPayload (EK public, EK certificate if any, AK
  // public). Errors name the TPM operation.
  absl::StatusOr<Bytes> MakePayload();

  // RespondToChallenge decodes the challenge (strict, bounded), activates the credential with the
  // AK and EK, quotes the requested PCRs with the nonce and returns the encoded response.
  // INVALID_ARGUMENT for a malformed challenge; PERMISSION_DENIED when the TPM refuses the
  // credential (not bound to this AK/EK) or the server asks for PCRs outside `pcrs`;
  // FAILED_PRECONDITION when called before MakePayload.
  absl::StatusOr<Bytes> RespondToChallenge(ByteSpan challenge);

  // For tests and benchmarks: the AK's TPM name, the EK type used, and the number of TPM
  // commands sent so far.
  absl::StatusOr<Bytes> AkName() const;
  std::optional<wire::EkType> ek_type() const;
  uint64_t tpm_command_count() const { return tpm_->command_count(); }
  // TakeWarnings returns (and clears) what the last MakePayload skipped and why, for the plugin's
  // log: EK certificate NV indices that hold no usable certificate (the server then sees no
  // certificate for that EK type).
  std::vector<std::string> TakeWarnings() { return std::move(warnings_); }

 private:
  AgentResponder(AgentConfig config, std::unique_ptr<tpm::Tpm> tpm);
  absl::Status EnsureKeys();

  AgentConfig config_;
  std::unique_ptr<tpm::Tpm> tpm_;
  std::optional<tpm::Ek> ek_;
  std::optional<tpm::LoadedKey> ak_;
  Bytes ek_certificate_;
  std::vector<std::string> warnings_;
  std::vector<Bytes> ek_intermediates_;  // from NV 0x01c00100.., at most kMaxIntermediates
  bool awaiting_challenge_ = false;
  uint32_t version_ = kProtocolVersion;
};

}  // namespace hwid::attestation

#endif  // HWID_ATTESTOR_PLUGIN_ATTESTATION_AGENT_H_
