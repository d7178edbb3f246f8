// The TPM device via ESAPI. One Tpm object owns the TCTI context, the ESYS context and the mutex
// that serialises every call (ESAPI contexts are not thread-safe). Everything it loads is owned by
// a TpmObject that flushes (transient objects, sessions) or closes (persistent objects) it, so a
// TPM without a resource manager (3 transient slots on swtpm) never leaks a slot.
#ifndef HWID_TPM_TPM_H_
#define HWID_TPM_TPM_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/bytes.h"
#include "common/sign.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::tpm {

class Tpm;

// DefaultTcti returns $HWID_TCTI when set and non-empty, else "device:/dev/tpmrm0".
std::string DefaultTcti();

// TpmObject owns one ESYS_TR. Transient objects and sessions are flushed on destruction,
// persistent objects and NV indices are closed (Esys_TR_Close). Move-only.
class TpmObject {
 public:
  enum class Kind { kTransient, kPersistent, kSession, kNv };
  TpmObject() = default;
  TpmObject(Tpm* tpm, uint32_t tr, Kind kind, std::string label);
  TpmObject(TpmObject&& other) noexcept;
  TpmObject& operator=(TpmObject&& other) noexcept;
  TpmObject(const TpmObject&) = delete;
  TpmObject& operator=(const TpmObject&) = delete;
  ~TpmObject();

  uint32_t tr() const { return tr_; }
  Kind kind() const { return kind_; }
  bool valid() const { return tpm_ != nullptr; }
  const std::string& label() const { return label_; }
  // Release gives up ownership without flushing (used after EvictControl makes it persistent).
  uint32_t Release();
  // Reset flushes/closes now.
  void Reset();

 private:
  Tpm* tpm_ = nullptr;
  uint32_t tr_ = 0;
  Kind kind_ = Kind::kTransient;
  std::string label_;
};

struct PcrBankInfo {
  TPMI_ALG_HASH alg;
  std::vector<uint32_t> pcrs;  // allocated PCR indices in this bank
};

struct TpmInfo {
  std::string manufacturer;  // e.g. "IBM"
  uint32_t manufacturer_id = 0;
  std::string vendor;  // TPM2_PT_VENDOR_STRING_1..4
  std::string firmware_version;  // "major.minor.x.y" from TPM2_PT_FIRMWARE_VERSION_1/2
  std::string spec;  // e.g. "2.0 level 0 revision 164 (2019-23)"
  std::vector<PcrBankInfo> pcr_banks;
  bool in_lockout = false;
  uint32_t lockout_counter = 0;
  uint32_t max_auth_fail = 0;
  uint32_t lockout_interval = 0;
  uint32_t lockout_recovery = 0;
  uint32_t transient_slots = 0;  // TPM2_PT_HR_TRANSIENT_MIN
  uint32_t loaded_transient = 0;  // transient objects currently loaded (visible to us)
  // Every TPM2_PT_FIXED and TPM2_PT_VAR property the TPM reported (TPM2_PT_* -> value), for
  // reports that need more than the fields above (NV, sessions, persistent slots).
  std::map<uint32_t, uint32_t> properties;
  // Property returns properties[pt], 0 when the TPM did not report it.
  uint32_t Property(uint32_t pt) const {
    auto it = properties.find(pt);
    return it == properties.end() ? 0 : it->second;
  }
};

// ClockInfo: TPM2_ReadClock's TPMS_TIME_INFO.
struct ClockInfo {
  uint64_t time_ms = 0;   // time since the last TPM _TPM_Init (or power-on), ms
  uint64_t clock_ms = 0;  // the TPM's Clock: ms the TPM has been powered, advances monotonically
  uint32_t reset_count = 0;    // TPM Resets (power cycles / Startup(CLEAR)) since TPM2_Clear
  uint32_t restart_count = 0;  // TPM Restarts / Resumes since the last reset
  bool safe = false;           // no Clock value was lost (TPMS_CLOCK_INFO.safe)
};

// AlgorithmInfo: one entry of TPM2_GetCapability(TPM_CAP_ALGS).
struct AlgorithmInfo {
  uint16_t alg;         // TPM2_ALG_ID
  uint32_t attributes;  // TPMA_ALGORITHM
};

// EkCertificate: the content of one EK certificate NV index that exists and was written.
struct EkCertificate {
  wire::EkType type;
  std::string name;
  uint32_t nv_index;
  Bytes der;  // the certificate DER, NV header and padding removed (empty when !error.ok())
  // What the NV index held around the certificate (wire::NvCertificate).
  size_t nv_size = 0;
  bool tcg_wrapper = false;
  size_t padding_bytes = 0;
  size_t trailing_bytes = 0;
  std::vector<std::string> quirks;
  // OK when the certificate was found; otherwise why this index holds none (unreadable, no DER
  // certificate), already naming the index.
  absl::Status error;
};

// NvChainCertificate: one certificate of the EK certificate chain stored in NV
// (0x01c00100-0x01c001ff, TCG EK Credential Profile).
struct NvChainCertificate {
  uint32_t nv_index;
  Bytes der;  // empty when !error.ok()
  std::vector<std::string> quirks;
  absl::Status error;  // naming the index
};

struct Ek {
  TpmObject object;
  TPM2B_PUBLIC pub;
  wire::EkType type;
  uint32_t persistent_handle = 0;  // 0 when created transiently from the template
};

// An attestation key or signing key loaded in the TPM.
struct LoadedKey {
  TpmObject object;
  TPM2B_PUBLIC pub;
  uint32_t persistent_handle = 0;  // 0 for transient
  SecureBytes auth;                // the key's authValue (empty for emptyAuth keys)
  std::optional<wire::TpmKeyFile> blob;  // for transient keys: the blob to reload from
};

// Certification: TPM2_Certify output (TPMS_ATTEST bytes and a marshalled TPMT_SIGNATURE).
struct Certification {
  Bytes attest;
  Bytes signature;
};

struct Quote {
  Bytes attest;     // TPMS_ATTEST bytes (the content of TPM2B_ATTEST)
  Bytes signature;  // marshalled TPMT_SIGNATURE
  wire::PcrValues pcrs;
};

using ::hwid::SignScheme;  // common/sign.h: one scheme vocabulary for TPM and PKCS#11 keys

// SlotFreeKey: a signing key that holds no TPM object slot between signatures, for processes
// that share a TPM without a resource manager (swtpm, /dev/tpm0: 3 transient slots for all of
// them). Its context is saved (TPM2_ContextSave) once after the first load and the object
// flushed; every signature then loads the saved context (TPM2_ContextLoad), signs and flushes:
// three commands and one slot for the duration of one signature, never a CreatePrimary. After a
// TPM restart the TPM refuses the saved context and the key is loaded from its blob again.
// Not thread-safe on its own; Tpm::SignSlotFree serialises on the Tpm mutex.
struct SlotFreeKey {
  wire::TpmKeyFile blob;
  TPM2B_PUBLIC pub = {};
  SecureBytes auth;
  // The saved context (ESAPI appends the object's metadata to the blob); empty until the first
  // signature and after the TPM refused it.
  std::optional<TPMS_CONTEXT> saved_context;
  uint64_t reloads = 0;  // how often the key had to be loaded from its blob (restarts + first)
};

class Tpm {
 public:
  // Open connects to the TPM named by `tcti` ("" => DefaultTcti()). Accepts the tctildr forms
  // "device:/dev/tpmrm0", "tabrmd:", "swtpm:host=...,port=...", "mssim:...".
  static absl::StatusOr<std::unique_ptr<Tpm>> Open(const std::string& tcti = "");
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  const std::string& tcti() const { return tcti_; }

  // set_wait_hook installs a hook that SignSlotFree/LoadSlotFree call around each wait for a free
  // object slot: hook(true) before sleeping, hook(false) after (outside the Tpm lock). A caller
  // that holds a cross-process lock around its command sequences releases it there, so that the
  // processes holding the slots can take the lock and give them back.
  void set_wait_hook(std::function<void(bool waiting)> hook) { wait_hook_ = std::move(hook); }

  absl::StatusOr<TpmInfo> GetInfo();
  absl::StatusOr<Bytes> GetRandom(size_t n);

  // NV and EK certificates.
  absl::StatusOr<Bytes> NvRead(uint32_t nv_index);
  // ReadEkCertificates reads every standard EK certificate NV index (low and high range) that
  // exists; absent (or never written) indices are skipped. An index that cannot be read or holds
  // no DER certificate yields an entry with a non-OK `error` (and no DER) instead of failing the
  // whole read; only a TPM that stops answering (Unavailable) fails it.
  absl::StatusOr<std::vector<EkCertificate>> ReadEkCertificates();
  // ReadEkChainCertificates reads every defined NV index of the EK certificate chain range
  // 0x01c00100-0x01c001ff (enumerated with TPM2_GetCapability, not probed), in index order, each
  // parsed with wire::ExtractNvCertificate; a bad index yields an entry with a non-OK `error`.
  absl::StatusOr<std::vector<NvChainCertificate>> ReadEkChainCertificates();
  // ListNvIndices returns the defined NV indices in [first, last], ascending
  // (TPM2_GetCapability(TPM2_CAP_HANDLES), following "more data").
  absl::StatusOr<std::vector<uint32_t>> ListNvIndices(uint32_t first, uint32_t last);

  // LoadEk returns the EK of `type`: the persistent one (0x81010001 RSA / 0x81010002 ECC) when
  // present and it matches the TCG template (unless allow_persistent is false), else one created
  // with TPM2_CreatePrimary from the TCG default template (a transient object, flushed when the
  // returned Ek is destroyed).
  absl::StatusOr<Ek> LoadEk(wire::EkType type, bool allow_persistent = true);

  // LoadSrk returns the storage primary: persistent 0x81000001 when present and it matches the
  // TCG ECC template, else created under the owner hierarchy (transient).
  absl::StatusOr<LoadedKey> LoadSrk(bool allow_persistent = true);

  // EnsureAk returns the attestation key persisted at `handle`, creating it (under the SRK,
  // restricted signing template for `alg`) and persisting it (EvictControl) on first use. An
  // existing object at `handle` must be a restricted signing key of `alg`, else an error.
  absl::StatusOr<LoadedKey> EnsureAk(wire::KeyAlg alg, uint32_t handle);

  // ReadPublic of a persistent handle; NotFound when absent.
  absl::StatusOr<TPM2B_PUBLIC> ReadPublic(uint32_t persistent_handle);
  // EvictPersistent removes a persistent object (owner authorization). NotFound when absent.
  absl::Status EvictPersistent(uint32_t persistent_handle);

  absl::StatusOr<wire::PcrValues> PcrRead(const TPML_PCR_SELECTION& selection);
  // QuotePcrs quotes `selection` with `ak` over `nonce` and returns the quote and the PCR values
  // it covers (retried if a PCR changes between the read and the quote).
  absl::StatusOr<Quote> QuotePcrs(LoadedKey& ak, ByteSpan nonce,
                                  const TPML_PCR_SELECTION& selection);
  // Certify has `ak` certify that `key_file` (a signing key loaded under the SRK for the call and
  // flushed again) lives in this TPM, with `qualifying` as the extraData (TPM2_Certify). The key
  // must have an empty authValue (KeyManager keys do). The result is checked with
  // wire::VerifyCertify before it is returned.
  absl::StatusOr<Certification> Certify(LoadedKey& ak, const wire::TpmKeyFile& key_file,
                                        ByteSpan qualifying);
  // CertifyAll certifies several key files the same way, loading their storage parent once (not
  // once per key): one result per file, in order.
  std::vector<absl::StatusOr<Certification>> CertifyAll(
      LoadedKey& ak, const std::vector<wire::TpmKeyFile>& key_files, ByteSpan qualifying);
  // ActivateCredential recovers the secret bound by MakeCredential to `ak`'s name under `ek`,
  // authorising the EK with its policy (PolicySecret on the endorsement hierarchy, plus
  // PolicyOR for high-range templates).
  absl::StatusOr<SecureBytes> ActivateCredential(LoadedKey& ak, Ek& ek, ByteSpan id_object,
                                                 ByteSpan encrypted_secret);

  // Signing keys. CreateKey makes an unrestricted signing key under the SRK and returns its blob
  // (TSS2 PRIVATE KEY fields). `auth` empty => emptyAuth.
  absl::StatusOr<wire::TpmKeyFile> CreateKey(wire::KeyAlg alg, ByteSpan auth = {});
  absl::StatusOr<LoadedKey> LoadKey(const wire::TpmKeyFile& key, ByteSpan auth = {});
  absl::StatusOr<LoadedKey> LoadPersistentKey(uint32_t handle, ByteSpan auth = {});
  // Persist makes a loaded transient key persistent at `handle`; `key` then refers to it.
  absl::Status Persist(LoadedKey& key, uint32_t handle);
  // Sign signs `digest` (already hashed with `hash`) with one TPM2_Sign. For a transient key
  // whose handle was lost (TPM restart), the key is reloaded from its blob and the call retried.
  absl::StatusOr<TPMT_SIGNATURE> Sign(LoadedKey& key, ByteSpan digest, SignScheme scheme,
                                      TPMI_ALG_HASH hash);

  // SignSlotFree signs like Sign with a SlotFreeKey (see there). When the TPM has no free object
  // slot (others hold them: TPM_RC_OBJECT_MEMORY) it retries with backoff for up to
  // `slot_wait`, then fails with ResourceExhausted naming the cause.
  // `on_busy`, when set, runs (under the Tpm lock) each time the TPM answers
  // TPM_RC_OBJECT_MEMORY, before waiting: the caller can release its own objects there and
  // return true to retry at once (false: nothing freed, wait as usual).
  absl::StatusOr<TPMT_SIGNATURE> SignSlotFree(SlotFreeKey& key, ByteSpan digest,
                                              SignScheme scheme, TPMI_ALG_HASH hash,
                                              absl::Duration slot_wait = absl::Seconds(5),
                                              const std::function<bool()>& on_busy = nullptr);
  // LoadSlotFree loads a SlotFreeKey the same way (saved context, else the blob; waits for a
  // free slot like SignSlotFree) and hands the loaded object to the caller, who may keep it for
  // several signatures (Sign) and must flush it (destroy it) to give the slot back.
  absl::StatusOr<LoadedKey> LoadSlotFree(SlotFreeKey& key,
                                         absl::Duration slot_wait = absl::Seconds(5),
                                         const std::function<bool()>& on_busy = nullptr);

  // CheckKeyAlg asks the TPM (TPM2_TestParms) whether it can make signing keys of `alg`;
  // InvalidArgument naming the algorithm when it cannot, Unavailable when the TPM is unreachable.
  absl::Status CheckKeyAlg(wire::KeyAlg alg);

  // TransientHandles lists the transient object handles currently loaded in the TPM.
  absl::StatusOr<std::vector<uint32_t>> TransientHandles();
  // FlushTransientObjects flushes every transient object loaded in the TPM, whoever loaded it,
  // and returns their handles: the operator's way to free slots leaked by processes killed on a
  // TPM without a resource manager. Behind a resource manager it sees only this connection's.
  absl::StatusOr<std::vector<uint32_t>> FlushTransientObjects();
  // GetAlgorithms lists the algorithms the TPM implements (TPM_CAP_ALGS).
  absl::StatusOr<std::vector<AlgorithmInfo>> GetAlgorithms();
  // GetEccCurves lists the ECC curves the TPM implements (TPM_CAP_ECC_CURVES; TPM2_ECC_*).
  absl::StatusOr<std::vector<uint16_t>> GetEccCurves();
  // ReadClock returns the TPM's time and clock information (TPM2_ReadClock).
  absl::StatusOr<ClockInfo> ReadClock();

  // CommandCount is the number of TPM commands this object has sent (for benchmarks).
  uint64_t command_count() const { return commands_; }

 private:
  friend class TpmObject;
  struct Impl;
  Tpm(std::string tcti, std::unique_ptr<Impl> impl);
  void FlushOrClose(uint32_t tr, TpmObject::Kind kind);  // takes the lock
  absl::StatusOr<TpmObject> CreatePrimaryLocked(uint32_t hierarchy, const TPM2B_PUBLIC& tmpl,
                                                TPM2B_PUBLIC* out_pub, const std::string& label);
  // CreateLocked runs TPM2_Create under the loaded `parent` (an ESYS_TR); `auth` becomes the
  // new object's authValue (wiped from the command buffer afterwards).
  absl::Status CreateLocked(uint32_t parent, const TPM2B_PUBLIC& tmpl, ByteSpan auth,
                            const std::string& label, TPM2B_PRIVATE* out_priv,
                            TPM2B_PUBLIC* out_pub);
  absl::StatusOr<LoadedKey> LoadKeyLocked(const wire::TpmKeyFile& key, ByteSpan auth);
  // LoadParentLocked loads the storage parent a key file names (the ECC or RSA SRK of the owner
  // hierarchy, or a persistent handle); LoadKeyUnderLocked runs TPM2_Load of `key` under it and
  // sets `auth`. LoadKeyLocked is the two in a row.
  absl::StatusOr<LoadedKey> LoadParentLocked(const wire::TpmKeyFile& key);
  absl::StatusOr<LoadedKey> LoadKeyUnderLocked(const LoadedKey& parent,
                                               const wire::TpmKeyFile& key, ByteSpan auth);
  // SetAuthLocked sets an object's authValue in ESAPI (nothing for an empty one); the copy is
  // wiped.
  absl::Status SetAuthLocked(uint32_t tr, ByteSpan auth);
  absl::StatusOr<Certification> CertifyLoadedLocked(LoadedKey& ak, LoadedKey& key,
                                                    const wire::TpmKeyFile& key_file,
                                                    ByteSpan qualifying);
  absl::StatusOr<LoadedKey> LoadSrkLocked(bool allow_persistent);
  absl::StatusOr<TpmObject> FromPersistentLocked(uint32_t handle, TPM2B_PUBLIC* out_pub);
  absl::StatusOr<wire::PcrValues> PcrReadLocked(const TPML_PCR_SELECTION& selection);
  // AuthFailureLocked turns a failed command that used an object's authorization into a Status;
  // for TPM_RC_LOCKOUT it reads the dictionary-attack state (counter, max tries, interval) and
  // says when to retry (FailedPrecondition), otherwise it is TssError.
  absl::Status AuthFailureLocked(TSS2_RC rc, absl::string_view operation, absl::string_view object);
  // SignLocked: one TPM2_Sign with an ESYS_TR (no retry).
  TSS2_RC SignLocked(uint32_t tr, ByteSpan digest, SignScheme scheme, TPMI_ALG_HASH hash,
                     TPMT_SIGNATURE* out);
  // LoadSlotFreeLocked loads `key` from its saved context, else from its blob (then saves the
  // context); retries while the TPM has no free object slot, until `deadline`.
  absl::StatusOr<TpmObject> LoadSlotFreeLocked(SlotFreeKey& key, absl::Time deadline,
                                               const std::function<bool()>& on_busy);

  std::string tcti_;
  std::unique_ptr<Impl> impl_;
  std::recursive_mutex mu_;
  uint64_t commands_ = 0;
  std::function<void(bool)> wait_hook_;
};

// CheckPersistentKeyFile checks that the persistent key the TPM holds (its public area
// `actual`) is the one a persistent-key file names (same TPMT_PUBLIC): FailedPrecondition
// naming the handle when the handle now holds another object.
absl::Status CheckPersistentKeyFile(const wire::TpmKeyFile& file, const TPM2B_PUBLIC& actual);

// FormatHandle renders a TPM handle as "0x81010001".
std::string FormatHandle(uint32_t handle);
// ParseHandle parses "0x81000001" / "81000001"; errors name the input.
absl::StatusOr<uint32_t> ParseHandle(absl::string_view s);

}  // namespace hwid::tpm

#endif  // HWID_TPM_TPM_H_
