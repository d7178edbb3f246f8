#include "provider/tpm_backend.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "provider/provider.h"
#include "provider/pss.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::provider {

// TpmDevice is the process' connection to one TPM, re-opened in a forked child.
class TpmDevice {
 public:
  explicit TpmDevice(std::string tcti)
      : tcti_(std::move(tcti)),
        shared_(!absl::StartsWith(tcti_, "device:/dev/tpmrm") && !absl::StartsWith(tcti_, "tabrmd")),
        busy_path_(absl::StrCat("/tmp/hwid-tpm-busy-", TctiHash())),
        lock_path_(absl::StrCat("/tmp/hwid-tpm-lock-", TctiHash())) {}
  TpmDevice(const TpmDevice&) = delete;
  TpmDevice& operator=(const TpmDevice&) = delete;

  // Get returns the connection of the calling process, opening it on first use or after a fork
  // (the parent's connection and objects are abandoned, never flushed: they are the parent's).
  // `generation` identifies the connection so keys know when their handles went stale.
  absl::StatusOr<tpm::Tpm*> Get(uint64_t* generation) {
    std::lock_guard<std::mutex> lock(mu_);
    const pid_t pid = getpid();
    if (tpm_ != nullptr && pid_ != pid) {
      // Abandoned, never destroyed: finalizing it could touch the connection it shares with the
      // parent. Kept reachable so leak checkers see it as intentional.
      static auto* abandoned = new std::vector<std::unique_ptr<tpm::Tpm>>;
      abandoned->push_back(std::move(tpm_));
    }
    if (tpm_ == nullptr) {
      ASSIGN_OR_RETURN(tpm_, tpm::Tpm::Open(tcti_));
      pid_ = pid;
      ++generation_;
      if (shared_) {
        // While a signature waits for a free object slot, the processes holding the slots need
        // the sequence lock to give them back.
        tpm_->set_wait_hook([this](bool waiting) { SequenceLockWaiting(waiting); });
      }
    }
    *generation = generation_;
    return tpm_.get();
  }

  // ResetIfBroken retires connection `generation` after an error that can leave the TCTI or the
  // ESAPI context unusable (the TPM went away or restarted mid-command: kUnavailable, or an ESAPI
  // sequence error: kInternal), so the next operation opens a fresh connection and reloads its
  // keys. The retired connection is kept (not destroyed) until the device goes away: keys may
  // still hold objects of it, which are released, never flushed, through a stale context.
  void ResetIfBroken(uint64_t generation, const absl::Status& s) {
    if (!absl::IsUnavailable(s) && !absl::IsInternal(s)) {
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (tpm_ != nullptr && generation == generation_ && pid_ == getpid()) {
      retired_.push_back(std::move(tpm_));
    }
  }

  // Owns is true when `generation` is this process' current connection.
  bool Owns(uint64_t generation) {
    std::lock_guard<std::mutex> lock(mu_);
    return tpm_ != nullptr && generation == generation_ && pid_ == getpid();
  }

  uint64_t CommandCount() {
    std::lock_guard<std::mutex> lock(mu_);
    if (tpm_ == nullptr || pid_ != getpid()) {
      return 0;
    }
    return tpm_->command_count();
  }

  const std::string& tcti() const { return tcti_; }

  // shared is true when the TPM has no resource manager in front of it (swtpm, mssim,
  // /dev/tpm0): every process on the machine shares its few object slots (swtpm: 3), and a
  // process killed while holding one leaks it until the TPM restarts. Keys then hold a slot only
  // while in use (see TpmKey). /dev/tpmrm* and tpm2-abrmd virtualise the slots per connection.
  bool shared() const { return shared_; }

  // Contention signal between the processes of a shared TPM: a process that finds every object
  // slot taken touches a file named after the TCTI (its mtime is the signal, the file is empty);
  // a process that keeps a key loaded checks it before each signature and gives the slot back
  // while the TPM was recently short (kBusyWindow). Anyone may touch it (mode 0666): a local
  // user can make the processes release slots (3 TPM commands per signature instead of 1), not
  // make anything fail. Best effort: without /tmp access the keys just keep the default policy.
  void SignalBusy() {
    const int fd = OpenSharedFile(busy_path_, O_WRONLY);
    if (fd < 0) {
      return;
    }
    (void)futimens(fd, nullptr);
    close(fd);
  }
  bool RecentlyBusy() const {
    struct stat st;
    if (stat(busy_path_.c_str(), &st) != 0) {
      return false;
    }
    const absl::Time touched = absl::TimeFromTimespec(st.st_mtim);
    const absl::Time now = absl::Now();
    return touched <= now + absl::Seconds(1) && now - touched < kBusyWindow;
  }
  static constexpr absl::Duration kBusyWindow = absl::Seconds(2);

  // Sequence lock: on a shared TPM only one process at a time runs a TPM command sequence (a
  // signature, ContextLoad + Sign + FlushContext, a key load, a key creation). Without it every
  // process sends its commands at once: swtpm serves one TCP connection at a time with a small
  // listen backlog, and libtss2-tcti-swtpm opens a connection per command, so the extra SYNs are
  // dropped and the kernel resends them after its 1 s initial retransmission timeout: a few
  // handshakes/s with 4 nginx workers (docs/benchmarks.md). A physical /dev/tpm0 serialises its
  // users too (one open at a time). The lock is flock(2) on /tmp/hwid-tpm-lock-<hash of the
  // TCTI>, opened by each process itself (a forked child reopens it: flock locks belong to the
  // open file description, which fork shares); the kernel drops it when its holder dies, kill -9
  // included. Anyone may take it (mode 0666, like the busy file): a local user who holds it
  // delays each TPM command sequence by up to kLockWait (then it runs unserialised, see
  // AcquireLock), never makes it fail. When the file cannot be opened, TPM access goes on
  // unserialised (said once with HWID_PROVIDER_DEBUG). Callers hold op_mu (depth and fd are guarded by it; fork happens
  // only with op_mu held by ForkPrepare, so the lock is never held across fork). Re-entrant.
  void LockSequence() {
    if (!shared_ || lock_depth_++ > 0) {
      return;
    }
    const int fd = LockFd();
    if (fd >= 0) {
      AcquireLock(fd);
    }
  }
  void UnlockSequence() {
    if (!shared_ || lock_depth_ == 0 || --lock_depth_ > 0) {
      return;
    }
    if (lock_fd_ >= 0 && lock_pid_ == getpid()) {
      (void)flock(lock_fd_, LOCK_UN);
    }
  }

 private:
  // OpenSharedFile opens one of the files in /tmp that every process on this TPM shares, creating
  // it mode 0666 when missing; never through a symlink. An existing file is opened without O_CREAT
  // first: with fs.protected_regular (systemd's default) an O_CREAT open of another user's file
  // in sticky /tmp fails even when its mode allows it. -1 with errno set on failure.
  static int OpenSharedFile(const std::string& path, int access) {
    int fd = open(path.c_str(), access | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      fd = open(path.c_str(), access | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
      if (fd >= 0) {
        (void)fchmod(fd, 0666);  // the creator's umask must not lock other users out
      } else if (errno == EEXIST) {
        fd = open(path.c_str(), access | O_NOFOLLOW | O_CLOEXEC);  // another process won the race
      }
    }
    return fd;
  }

  std::string TctiHash() const {
    return Sha256Hex(ByteSpan(reinterpret_cast<const uint8_t*>(tcti_.data()), tcti_.size()))
        .substr(0, 16);
  }

  // LockFd returns this process' descriptor of the lock file (-1 when it cannot be opened).
  int LockFd() {
    const pid_t pid = getpid();
    if (lock_pid_ != pid) {
      if (lock_fd_ >= 0) {
        close(lock_fd_);  // the parent's open file description: its lock is not ours
      }
      lock_fd_ = -1;
      lock_pid_ = pid;
      const int fd = OpenSharedFile(lock_path_, O_RDWR);
      if (fd < 0) {
        const int err = errno;
        if (!lock_warned_) {
          lock_warned_ = true;
          Debug("cannot open the TPM sequence lock %s (%s): TPM commands of this process are "
                "not serialised with other processes on %s",
                lock_path_.c_str(), strerror(err), tcti_.c_str());
        }
        return -1;
      }
      lock_fd_ = fd;
    }
    return lock_fd_;
  }

  // SequenceLockWaiting: the Tpm's wait hook (see LockSequence).
  void SequenceLockWaiting(bool waiting) {
    if (lock_depth_ == 0 || lock_fd_ < 0 || lock_pid_ != getpid()) {
      return;
    }
    if (waiting) {
      (void)flock(lock_fd_, LOCK_UN);
    } else {
      AcquireLock(lock_fd_);
    }
  }

  // AcquireLock takes the lock, waiting at most kLockWait: a holder that never lets go (a
  // stopped process, or a local user who took it on purpose) must not hang the TLS server, so
  // after that the sequence runs unserialised, as without the lock (HWID_PROVIDER_DEBUG says so).
  // Polls with a short backoff rather than blocking in flock: a blocking wait cannot be bounded
  // without a signal, and signals belong to the host program.
  void AcquireLock(int fd) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      return;
    }
    Debug("waiting for the TPM sequence lock %s", lock_path_.c_str());
    const absl::Time deadline = absl::Now() + kLockWait;
    absl::Duration backoff = absl::Microseconds(20);
    while (absl::Now() < deadline) {
      absl::SleepFor(backoff);
      if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        return;
      }
      backoff = std::min(backoff * 2, absl::Microseconds(500));
    }
    Debug("the TPM sequence lock %s stayed taken for %s: going on unserialised",
          lock_path_.c_str(), absl::FormatDuration(kLockWait).c_str());
  }
  static constexpr absl::Duration kLockWait = absl::Seconds(5);

  std::mutex mu_;
  const std::string tcti_;
  const bool shared_;
  const std::string busy_path_;
  const std::string lock_path_;
  int lock_fd_ = -1;
  pid_t lock_pid_ = 0;
  int lock_depth_ = 0;
  bool lock_warned_ = false;
  std::unique_ptr<tpm::Tpm> tpm_;
  std::vector<std::unique_ptr<tpm::Tpm>> retired_;
  pid_t pid_ = 0;
  uint64_t generation_ = 0;
};

namespace {

// SequenceGuard holds a device's sequence lock for its scope (needs op_mu).
class SequenceGuard {
 public:
  explicit SequenceGuard(TpmDevice* device) : device_(device) { device_->LockSequence(); }
  ~SequenceGuard() { device_->UnlockSequence(); }
  SequenceGuard(const SequenceGuard&) = delete;
  SequenceGuard& operator=(const SequenceGuard&) = delete;

 private:
  TpmDevice* const device_;
};

class TpmKey;

// Registry: every live key of the process. `op_mu` serialises every TPM operation on keys (load,
// sign, flush); the TPM executes one command at a time anyway (tpm::Tpm has its own lock, and
// hashing happens before this lock), so nothing is lost, and eviction when the TPM is out of
// object slots can unload other keys without racing their users. Lock order: op_mu, then mu.
struct Registry {
  std::mutex op_mu;
  std::mutex mu;
  std::set<TpmKey*> keys;
  uint64_t clock = 0;  // for least-recently-used eviction
};

Registry& Reg() {
  static Registry* r = new Registry;  // never destroyed: used from static destructors
  return *r;
}

// How long a key on a shared TPM (no resource manager) stays loaded after its last use:
// $HWID_TPM_IDLE_RELEASE_MS, default 50 ms; 0 releases the slot after every signature.
absl::Duration IdleRelease() {
  static const absl::Duration d = [] {
    const char* env = std::getenv("HWID_TPM_IDLE_RELEASE_MS");
    int64_t ms = 50;
    if (env != nullptr && env[0] != '\0' && (!absl::SimpleAtoi(env, &ms) || ms < 0)) {
      ms = 50;
    }
    return absl::Milliseconds(ms);
  }();
  return d;
}

// How long a signature waits for a free object slot on a shared TPM before it fails.
constexpr absl::Duration kSlotWait = absl::Seconds(5);

// IdleReaper: one thread per process (started on first need, again in a forked child) that
// flushes keys on a shared TPM once they have been idle for IdleRelease(), so an idle process
// (an nginx worker between requests) holds no object slot another process needs, and a process
// killed while idle leaks none. Blocks while no key is loaded.
void ReleaseIdleKeys(bool* any_loaded);
struct IdleReaper {
  std::mutex mu;
  std::condition_variable cv;
  pid_t pid = 0;  // the process whose thread runs
  bool work = false;
};
IdleReaper*& Reaper() {
  static IdleReaper* r = new IdleReaper;  // replaced (leaked) in a forked child
  return r;
}
void ReaperLoop(IdleReaper* r) {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(r->mu);
      r->cv.wait(lock, [r] { return r->work; });
      r->work = false;
    }
    bool any_loaded = true;
    while (any_loaded) {
      absl::SleepFor(IdleRelease() / 2);
      if (Reaper() != r) {
        return;  // not reached in practice: a forked child has no copy of this thread
      }
      ReleaseIdleKeys(&any_loaded);
    }
  }
}
// WakeReaper makes sure the reaper runs (needs op_mu: fork cannot happen meanwhile).
void WakeReaper() {
  IdleReaper* r = Reaper();
  std::lock_guard<std::mutex> lock(r->mu);
  if (r->pid != getpid()) {
    r->pid = getpid();
    // The reaper must never take the host program's signals: nginx and HAProxy handle SIGCHLD,
    // SIGHUP, SIGQUIT ... in their main thread, and a library thread that accepts them makes the
    // master miss worker exits. A new thread inherits the creating thread's mask.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    std::thread(ReaperLoop, r).detach();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  r->work = true;
  r->cv.notify_one();
}

absl::StatusOr<KeyType> CheckSigningPublic(const TPMT_PUBLIC& pub, absl::string_view what) {
  if ((pub.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a signing key (sign attribute clear)"));
  }
  if ((pub.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is a restricted key (an attestation key); it cannot sign externally hashed data"));
  }
  if (pub.type == TPM2_ALG_ECC) {
    return KeyType::kEc;
  }
  if (pub.type == TPM2_ALG_RSA) {
    return KeyType::kRsa;
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " has unsupported type 0x",
                                                 absl::Hex(pub.type), " (RSA or ECC expected)"));
}

absl::StatusOr<OsslPtr<EVP_PKEY>> PublicInLibctx(OSSL_LIB_CTX* libctx, const TPMT_PUBLIC& pub) {
  ASSIGN_OR_RETURN(Bytes der, wire::PublicKeyDer(pub));
  const unsigned char* p = der.data();
  OsslPtr<EVP_PKEY> key(d2i_PUBKEY_ex(nullptr, &p, static_cast<long>(der.size()), libctx, nullptr));
  if (key == nullptr) {
    return OpenSslError("decoding the TPM key's public part");
  }
  return key;
}

// UnloadAllExceptLocked flushes every loaded key but `except` (true when there was one);
// EvictOneLocked flushes the least recently used loaded key other than `except` (false when
// there is none). Both need op_mu.
bool UnloadAllExceptLocked(TpmKey* except);
bool EvictOneLocked(TpmKey* except);

class TpmKey final : public Key {
 public:
  TpmKey(OSSL_LIB_CTX* libctx, std::shared_ptr<TpmDevice> device, KeyType type,
         OsslPtr<EVP_PKEY> pub,
         std::optional<wire::TpmKeyFile> file, uint32_t handle, SecureBytes auth,
         std::string description)
      : libctx_(libctx),
        device_(std::move(device)),
        type_(type),
        pub_(std::move(pub)),
        file_(std::move(file)),
        handle_(handle),
        auth_(std::move(auth)),
        description_(std::move(description)) {
    if (file_.has_value() && device_->shared()) {
      slot_key_.emplace();
      slot_key_->blob = *file_;
      slot_key_->auth = auth_;
      if (absl::StatusOr<TPM2B_PUBLIC> p = wire::ParsePublic(file_->pub); p.ok()) {
        slot_key_->pub = *p;
      }
    }
    std::lock_guard<std::mutex> lock(Reg().mu);
    Reg().keys.insert(this);
  }

  ~TpmKey() override {
    std::lock_guard<std::mutex> op(Reg().op_mu);
    {
      std::lock_guard<std::mutex> lock(Reg().mu);
      Reg().keys.erase(this);
    }
    DropLocked();
  }

  KeyType type() const override { return type_; }
  Device device() const override { return Device::kTpm; }
  EVP_PKEY* public_key() const override { return pub_.get(); }
  std::string Describe() const override { return description_; }
  PssSaltMode pss_salt_mode() const override { return pss_mode_; }

  absl::StatusOr<std::string> EncodePem() const override {
    ASSIGN_OR_RETURN(const wire::TpmKeyFile* f, KeyFile());
    return wire::EncodeTpmKeyFilePem(*f);
  }
  absl::StatusOr<Bytes> EncodeDer() const override {
    ASSIGN_OR_RETURN(const wire::TpmKeyFile* f, KeyFile());
    return wire::EncodeTpmKeyFileDer(*f);
  }
  // set_reference_file: the key file that named this persistent key (written back by Encode*).
  void set_reference_file(wire::TpmKeyFile f) { reference_file_ = std::move(f); }

  absl::StatusOr<Bytes> Sign(ByteSpan digest, const SignParams& params) override {
    if (absl::Status st = CheckSignRequest(type_, digest, params); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat(st.message(), "; key: ", description_));
    }
    ASSIGN_OR_RETURN(TPMI_ALG_HASH hash, wire::TpmHashAlg(params.hash));
    if (params.scheme == SignScheme::kRsaPss && params.pss_salt_len.has_value()) {
      const int hlen = static_cast<int>(digest.size());
      const int device_salt = pss_mode_ == PssSaltMode::kDigestLength
                                  ? hlen
                                  : PssMaxSaltLength(EVP_PKEY_get_bits(pub_.get()), hlen);
      if (*params.pss_salt_len != device_salt) {
        return absl::FailedPreconditionError(absl::StrCat(
            "RSA-PSS with salt length ", *params.pss_salt_len, " requested, but this TPM signs ",
            "RSA-PSS only with salt length ", device_salt,
            pss_mode_ == PssSaltMode::kMaximum
                ? " (the maximum, TPM 2.0 Part 1 B.7); TLS 1.3 needs salt = digest length: use an "
                  "ECDSA key or RSA PKCS#1 v1.5 (TLS 1.2) with this TPM"
                : " (the digest length)",
            "; key: ", description_));
      }
    }
    std::lock_guard<std::mutex> lock(Reg().op_mu);
    SequenceGuard sequence(device_.get());
    uint64_t gen = 0;
    ASSIGN_OR_RETURN(tpm::Tpm * tpm, device_->Get(&gen));
    absl::StatusOr<TPMT_SIGNATURE> sig = SignLocked(tpm, gen, digest, params.scheme, hash);
    if (!sig.ok()) {
      device_->ResetIfBroken(gen, sig.status());
      return sig.status();
    }
    return wire::SignatureToDer(*sig);
  }

  // SignLocked: one TPM2_Sign with the key kept loaded; on a shared TPM that was recently short
  // of object slots, the slot is given back first and the signature loads the saved context,
  // signs and flushes (3 commands, the slot held only during the signature).
  absl::StatusOr<TPMT_SIGNATURE> SignLocked(tpm::Tpm* tpm, uint64_t gen, ByteSpan digest,
                                            SignScheme scheme, TPMI_ALG_HASH hash) {
    if (slot_key_.has_value() && (device_->RecentlyBusy() || IdleRelease() == absl::ZeroDuration())) {
      DropLocked();
      last_use_ = ++Reg().clock;
      absl::StatusOr<TPMT_SIGNATURE> sig = tpm->SignSlotFree(
          *slot_key_, digest, scheme, hash, kSlotWait, [this] { return OnBusyLocked(); });
      busy_since_ = absl::InfiniteFuture();
      if (!sig.ok()) {
        return absl::Status(sig.status().code(),
                            absl::StrCat("signing with ", description_, ": ", sig.status().message()));
      }
      return sig;
    }
    RETURN_IF_ERROR(EnsureLoadedLocked(tpm, gen));
    absl::StatusOr<TPMT_SIGNATURE> sig = tpm->Sign(*loaded_, digest, scheme, hash);
    idle_since_ = absl::Now();
    return sig;
  }

  // ReleaseIfIdleLocked flushes the key when it is kept on a shared TPM and idle since `cutoff`;
  // true when it is (still) loaded afterwards.
  bool ReleaseIfIdleLocked(absl::Time cutoff) {
    if (loaded_.has_value() && slot_key_.has_value() && idle_since_ <= cutoff) {
      DropLocked();
    }
    return loaded_.has_value() && slot_key_.has_value();
  }

  // LoadNow loads the key (proving it belongs to this TPM) and, for RSA keys and keys with an
  // authorization value, signs a self-test digest: it checks the auth value and measures the
  // TPM's RSA-PSS salt length.
  absl::Status Activate() override {
    std::lock_guard<std::mutex> lock(Reg().op_mu);
    if (activated_) {
      return absl::OkStatus();
    }
    SequenceGuard sequence(device_.get());
    absl::Status st = ActivateLocked();
    if (!st.ok()) {
      device_->ResetIfBroken(last_gen_, st);
      return st;
    }
    activated_ = true;
    return absl::OkStatus();
  }

  absl::Status ActivateLocked() {
    uint64_t gen = 0;
    ASSIGN_OR_RETURN(tpm::Tpm * tpm, device_->Get(&gen));
    last_gen_ = gen;
    RETURN_IF_ERROR(EnsureLoadedLocked(tpm, gen));
    if (type_ != KeyType::kRsa && auth_.empty()) {
      return absl::OkStatus();
    }
    static constexpr uint8_t kSelfTest[] = "hwid provider key self-test";
    ASSIGN_OR_RETURN(Bytes digest, wire::Hash(TPM2_ALG_SHA256, ByteSpan(kSelfTest, sizeof(kSelfTest))));
    const SignScheme scheme = type_ == KeyType::kRsa ? SignScheme::kRsaPss : SignScheme::kEcdsa;
    absl::StatusOr<TPMT_SIGNATURE> sig = tpm->Sign(*loaded_, digest, scheme, TPM2_ALG_SHA256);
    idle_since_ = absl::Now();
    if (!sig.ok()) {
      if (absl::IsPermissionDenied(sig.status())) {
        return absl::PermissionDeniedError(absl::StrCat(
            "wrong authorization value for ", description_, ": ", sig.status().message()));
      }
      return sig.status();
    }
    ASSIGN_OR_RETURN(Bytes der, wire::SignatureToDer(*sig));
    if (type_ == KeyType::kEc) {
      return absl::OkStatus();
    }
    OsslPtr<EVP_MD> md(EVP_MD_fetch(libctx_, "SHA256", nullptr));
    if (md == nullptr) {
      return OpenSslError("fetching SHA256");
    }
    absl::StatusOr<int> salt = PssSaltLength(libctx_, pub_.get(), md.get(), digest, der);
    if (!salt.ok()) {
      return absl::InternalError(absl::StrCat("self-test RSA-PSS signature of ", description_,
                                              " does not verify: ", salt.status().message()));
    }
    if (*salt == static_cast<int>(digest.size())) {
      pss_mode_ = PssSaltMode::kDigestLength;
    } else if (*salt == PssMaxSaltLength(EVP_PKEY_get_bits(pub_.get()), 32)) {
      pss_mode_ = PssSaltMode::kMaximum;
    } else {
      return absl::InternalError(absl::StrCat("the TPM signed RSA-PSS with salt length ", *salt,
                                              ", neither the digest length nor the maximum"));
    }
    return absl::OkStatus();
  }

  // UnloadLocked flushes the key if it is loaded (needs op_mu); it reloads on next use.
  void UnloadLocked() { DropLocked(); }
  bool loaded() const { return loaded_.has_value(); }
  uint64_t last_use() const { return last_use_; }

 private:
  absl::Status EnsureLoadedLocked(tpm::Tpm* tpm, uint64_t gen) {
    if (loaded_.has_value() && loaded_gen_ != gen) {
      // Loaded through a connection this process no longer uses (fork): abandon the handle.
      loaded_->object.Release();
      loaded_.reset();
    }
    last_use_ = ++Reg().clock;
    if (loaded_.has_value()) {
      return absl::OkStatus();
    }
    while (true) {
      absl::StatusOr<tpm::LoadedKey> k =
          slot_key_.has_value()
              ? tpm->LoadSlotFree(*slot_key_, kSlotWait, [this] { return OnBusyLocked(); })
          : file_.has_value() ? tpm->LoadKey(*file_, AsSpan(auth_))
                              : tpm->LoadPersistentKey(handle_, AsSpan(auth_));
      busy_since_ = absl::InfiniteFuture();
      if (k.ok()) {
        loaded_ = std::move(*k);
        loaded_gen_ = gen;
        idle_since_ = absl::Now();
        if (slot_key_.has_value()) {
          WakeReaper();
        }
        return absl::OkStatus();
      }
      // Out of TPM object slots: unload this process' least recently used key and retry.
      if (absl::IsResourceExhausted(k.status()) && EvictOneLocked(this)) {
        continue;
      }
      absl::Status s = k.status();
      if (file_.has_value() && (absl::IsPermissionDenied(s) || absl::IsInvalidArgument(s) ||
                                absl::IsFailedPrecondition(s) || absl::IsNotFound(s))) {
        // The TPM reports a foreign or altered blob as an integrity/authorization failure of the
        // Load command: that is a key that does not belong here, not a wrong auth value.
        return absl::InvalidArgumentError(absl::StrCat(
            "loading ", description_, ": ", s.message(),
            "; check that the key was created by this TPM and under this parent"));
      }
      return absl::Status(s.code(), absl::StrCat("loading ", description_, ": ", s.message()));
    }
  }

  absl::StatusOr<const wire::TpmKeyFile*> KeyFile() const {
    if (file_.has_value()) {
      return &*file_;
    }
    if (reference_file_.has_value()) {
      return &*reference_file_;
    }
    return absl::UnimplementedError(absl::StrCat(
        description_, " has no key file; refer to it as handle:", tpm::FormatHandle(handle_),
        " or write one with `hwid key file --persistent ", tpm::FormatHandle(handle_), "`"));
  }

  // OnBusyLocked runs when the shared TPM has no free object slot: give back this process' own
  // slots and retry (true); when it holds none, other processes do: wait (false), and when the
  // slots stay taken for kSignalAfter (longer than another process needs to load a key), tell
  // them: they give theirs back at their next signature.
  bool OnBusyLocked() {
    if (UnloadAllExceptLocked(this)) {
      return true;
    }
    const absl::Time now = absl::Now();
    if (busy_since_ == absl::InfiniteFuture() || now - busy_since_ > kSlotWait) {
      busy_since_ = now;  // the first refusal of this wait
    } else if (now - busy_since_ >= kSignalAfter) {
      device_->SignalBusy();
    }
    return false;
  }
  static constexpr absl::Duration kSignalAfter = absl::Milliseconds(20);

  void DropLocked() {
    if (!loaded_.has_value()) {
      return;
    }
    SequenceGuard sequence(device_.get());  // the flush
    if (!device_->Owns(loaded_gen_)) {
      loaded_->object.Release();
    }
    loaded_.reset();
  }

  OSSL_LIB_CTX* const libctx_;
  const std::shared_ptr<TpmDevice> device_;
  const KeyType type_;
  const OsslPtr<EVP_PKEY> pub_;
  const std::optional<wire::TpmKeyFile> file_;
  const uint32_t handle_;
  const SecureBytes auth_;
  const std::string description_;
  PssSaltMode pss_mode_ = PssSaltMode::kDigestLength;

  // For a key file on a shared TPM (no resource manager): the saved-context form used to load it
  // per use, and when it was last used (for IdleReaper).
  std::optional<tpm::SlotFreeKey> slot_key_;
  std::optional<wire::TpmKeyFile> reference_file_;  // for a persistent key named by a file
  absl::Time idle_since_ = absl::InfinitePast();
  absl::Time busy_since_ = absl::InfiniteFuture();  // when the current wait for a slot began
  uint64_t last_use_ = 0;
  uint64_t last_gen_ = 0;
  bool activated_ = false;
  std::optional<tpm::LoadedKey> loaded_;
  uint64_t loaded_gen_ = 0;
};

bool UnloadAllExceptLocked(TpmKey* except) {
  std::lock_guard<std::mutex> lock(Reg().mu);
  bool any = false;
  for (TpmKey* k : Reg().keys) {
    if (k != except && k->loaded()) {
      k->UnloadLocked();
      any = true;
    }
  }
  return any;
}

bool EvictOneLocked(TpmKey* except) {
  std::lock_guard<std::mutex> lock(Reg().mu);
  TpmKey* victim = nullptr;
  for (TpmKey* k : Reg().keys) {
    if (k != except && k->loaded() && (victim == nullptr || k->last_use() < victim->last_use())) {
      victim = k;
    }
  }
  if (victim == nullptr) {
    return false;
  }
  victim->UnloadLocked();
  return true;
}

void ReleaseIdleKeys(bool* any_loaded) {
  std::lock_guard<std::mutex> op(Reg().op_mu);
  std::lock_guard<std::mutex> lock(Reg().mu);
  const absl::Time cutoff = absl::Now() - IdleRelease();
  *any_loaded = false;
  for (TpmKey* k : Reg().keys) {
    *any_loaded = k->ReleaseIfIdleLocked(cutoff) || *any_loaded;
  }
}

void UnloadAllExcept(TpmKey* except) {
  std::lock_guard<std::mutex> op(Reg().op_mu);
  UnloadAllExceptLocked(except);
}

// At exit() flush whatever keys the application did not free (the module is linked with
// -z nodelete, so this runs at exit, never at an early dlclose).
struct ExitFlusher {
  ~ExitFlusher() { UnloadAllExcept(nullptr); }
};
ExitFlusher g_exit_flusher;

// Fork: before fork() the parent flushes its loaded keys (they reload on its next signature) and
// holds op_mu across the fork, so the child starts with no key operation in flight and no TPM
// object of its parent that it could neither use nor free. Without a resource manager this is
// what keeps a forking server's master (nginx) from pinning TPM object slots its workers need.
// The reaper's mutex is held across fork too (order: op_mu, then the reaper's), so the child
// never inherits it locked; the child gets a fresh reaper (its thread was not copied).
void ForkPrepare() {
  Reg().op_mu.lock();
  UnloadAllExceptLocked(nullptr);
  Reaper()->mu.lock();
}
void ForkParent() {
  Reaper()->mu.unlock();
  Reg().op_mu.unlock();
}
void ForkChild() {
  Reaper()->mu.unlock();
  static auto* inherited = new std::vector<IdleReaper*>;  // kept reachable, never used again
  inherited->push_back(Reaper());
  Reaper() = new IdleReaper;
  Reg().op_mu.unlock();
}
struct ForkHandlers {
  ForkHandlers() { pthread_atfork(ForkPrepare, ForkParent, ForkChild); }
};
ForkHandlers g_fork_handlers;

absl::StatusOr<std::shared_ptr<Key>> MakeInactive(std::shared_ptr<TpmKey> key) {
  return std::shared_ptr<Key>(std::move(key));
}

}  // namespace

void UnloadAllTpmKeys() { UnloadAllExcept(nullptr); }

TpmBackend::TpmBackend(OSSL_LIB_CTX* libctx, std::shared_ptr<TpmDevice> device)
    : libctx_(libctx), device_(std::move(device)) {}

TpmBackend::~TpmBackend() = default;

absl::StatusOr<std::unique_ptr<TpmBackend>> TpmBackend::New(OSSL_LIB_CTX* libctx,
                                                            std::string tcti) {
  if (libctx == nullptr) {
    return absl::InvalidArgumentError("TpmBackend needs a library context");
  }
  if (tcti.empty()) {
    tcti = tpm::DefaultTcti();
  }
  return std::unique_ptr<TpmBackend>(
      new TpmBackend(libctx, std::make_shared<TpmDevice>(std::move(tcti))));
}

absl::StatusOr<bool> TpmBackend::KeyFileNeedsAuth(ByteSpan pem_or_der) {
  ASSIGN_OR_RETURN(wire::TpmKeyFile file, wire::ParseTpmKeyFile(pem_or_der));
  return !file.empty_auth;
}

absl::StatusOr<std::shared_ptr<Key>> TpmBackend::LoadKeyFile(ByteSpan pem_or_der, ByteSpan auth) {
  absl::StatusOr<wire::TpmKeyFile> file = wire::ParseTpmKeyFile(pem_or_der);
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat("TSS2 PRIVATE KEY file: ", file.status().message()));
  }
  if (file->persistent_handle.has_value()) {
    return LoadPersistentKeyFile(std::move(*file), auth);
  }
  ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, wire::ParsePublic(file->pub));
  std::string what = absl::StrCat("TPM key file (parent ", tpm::FormatHandle(file->parent),
                                  file->description.has_value() ? ", " : "",
                                  file->description.value_or(""), ")");
  ASSIGN_OR_RETURN(KeyType type, CheckSigningPublic(pub.publicArea, what));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> evp, PublicInLibctx(libctx_, pub.publicArea));
  auto key = std::make_shared<TpmKey>(libctx_, device_, type, std::move(evp), std::move(*file), 0,
                                      SecureBytes(auth.begin(), auth.end()), std::move(what));
  return MakeInactive(std::move(key));
}

// A key file that names a persistent key: the key is used in place (no slot, no load), and the
// file's public area must be the one the TPM holds at that handle (a reused handle is refused).
absl::StatusOr<std::shared_ptr<Key>> TpmBackend::LoadPersistentKeyFile(wire::TpmKeyFile file,
                                                                       ByteSpan auth) {
  const uint32_t handle = *file.persistent_handle;
  std::string what = absl::StrCat("TPM persistent key ", tpm::FormatHandle(handle), " (key file",
                                  file.description.has_value() ? ", " : "",
                                  file.description.value_or(""), ")");
  uint64_t gen = 0;
  ASSIGN_OR_RETURN(tpm::Tpm * tpm, device_->Get(&gen));
  absl::StatusOr<TPM2B_PUBLIC> pub = tpm->ReadPublic(handle);
  if (!pub.ok()) {
    device_->ResetIfBroken(gen, pub.status());
    return absl::Status(pub.status().code(),
                        absl::StrCat("reading ", what, ": ", pub.status().message()));
  }
  RETURN_IF_ERROR(tpm::CheckPersistentKeyFile(file, *pub));
  ASSIGN_OR_RETURN(KeyType type, CheckSigningPublic(pub->publicArea, what));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> evp, PublicInLibctx(libctx_, pub->publicArea));
  auto key = std::make_shared<TpmKey>(libctx_, device_, type, std::move(evp), std::nullopt, handle,
                                      SecureBytes(auth.begin(), auth.end()), std::move(what));
  key->set_reference_file(std::move(file));
  return MakeInactive(std::move(key));
}

absl::StatusOr<std::shared_ptr<Key>> TpmBackend::LoadUri(absl::string_view uri,
                                                         const PassphraseFn& ask) {
  absl::string_view u = uri;
  if (!absl::ConsumePrefix(&u, "handle:")) {
    return absl::InvalidArgumentError(absl::StrCat("'", uri, "' is not a handle: URI"));
  }
  const bool ask_pass = absl::ConsumeSuffix(&u, "?pass");
  ASSIGN_OR_RETURN(uint32_t handle, tpm::ParseHandle(u));
  SecureBytes auth;
  if (ask_pass && ask) {
    auth = ask();
  }
  return LoadHandle(handle, AsSpan(auth));
}

absl::StatusOr<std::shared_ptr<Key>> TpmBackend::LoadHandle(uint32_t handle, ByteSpan auth) {
  if ((handle >> 24) != TPM2_HT_PERSISTENT) {
    return absl::InvalidArgumentError(absl::StrCat(
        "handle:", tpm::FormatHandle(handle), " is not a persistent key handle (0x81xxxxxx)"));
  }
  uint64_t gen = 0;
  ASSIGN_OR_RETURN(tpm::Tpm * tpm, device_->Get(&gen));
  std::string what = absl::StrCat("TPM persistent key ", tpm::FormatHandle(handle));
  absl::StatusOr<TPM2B_PUBLIC> pub = tpm->ReadPublic(handle);
  if (!pub.ok()) {
    return absl::Status(pub.status().code(),
                        absl::StrCat("reading ", what, ": ", pub.status().message()));
  }
  ASSIGN_OR_RETURN(KeyType type, CheckSigningPublic(pub->publicArea, what));
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> evp, PublicInLibctx(libctx_, pub->publicArea));
  auto key = std::make_shared<TpmKey>(libctx_, device_, type, std::move(evp), std::nullopt, handle,
                                      SecureBytes(auth.begin(), auth.end()), std::move(what));
  return MakeInactive(std::move(key));
}

absl::StatusOr<std::shared_ptr<Key>> TpmBackend::Generate(KeyAlg alg, ByteSpan auth) {
  absl::StatusOr<wire::TpmKeyFile> file = absl::UnknownError("not created");
  {
    std::lock_guard<std::mutex> op(Reg().op_mu);
    SequenceGuard sequence(device_.get());
    uint64_t gen = 0;
    ASSIGN_OR_RETURN(tpm::Tpm * tpm, device_->Get(&gen));
    file = tpm->CreateKey(alg, auth);
    if (absl::IsResourceExhausted(file.status())) {
      UnloadAllExceptLocked(nullptr);
      file = tpm->CreateKey(alg, auth);
    }
  }
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat("creating a ", wire::KeyAlgName(alg), " key in the TPM: ",
                                     file.status().message()));
  }
  ASSIGN_OR_RETURN(Bytes der, wire::EncodeTpmKeyFileDer(*file));
  ASSIGN_OR_RETURN(std::shared_ptr<Key> key, LoadKeyFile(der, auth));
  RETURN_IF_ERROR(key->Activate());
  return key;
}

uint64_t TpmBackend::CommandCount() { return device_->CommandCount(); }

void TpmBackend::UnloadAll() { UnloadAllExcept(nullptr); }

}  // namespace hwid::provider
