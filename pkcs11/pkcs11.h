// PKCS#11 tokens and their non-extractable keys: module loading, token lookup by RFC 7512 URI,
// login, key generation, attribute reads and signing over a session pool.
//
// Built on libp11 (module load + C_Initialize, slot enumeration) plus direct calls into the same
// module's CK_FUNCTION_LIST for what libp11 0.4.12 does not offer: session handles (our session
// pool), login on a session of our own, key generation with an exact attribute template,
// C_GetAttributeValue, C_FindObjects by CKA_ID/CKA_LABEL (also for listing: libp11 caches the keys
// it listed once), C_DestroyObject, C_SetAttributeValue, and CKM_RSA_PKCS_PSS.
//
// Thread safety: Token and Key are thread-safe; concurrent Sign calls run on different PKCS#11
// sessions (the pool grows on demand and keeps up to kMaxIdleSessions idle ones).
// Fork safety: in a forked child the first call re-runs C_Initialize (with CKF_OS_LOCKING_OK),
// logs in again with the cached PIN, forgets the parent's session handles and finds the key
// objects again. PINs are kept only in zeroizing buffers and never appear in messages.
//
// Session copies: a Key signs with a session-object copy of its token object (C_CopyObject with
// CKA_TOKEN false, CKA_SENSITIVE true, CKA_EXTRACTABLE false, checked on the copy), made on first
// use inside the token and held by the Token's own session. Tokens such as SoftHSM2 sign faster
// with session objects. The copy is never weaker than the token object (else it is destroyed and
// the token object signs), is destroyed with the Key (or with the Token's session, or by the
// token on logout and process exit), is made again after a logout or a fork, and a token that
// refuses copies (CKA_COPYABLE false, CKR_ACTION_PROHIBITED, ...) signs with the token object.
// HWID_PKCS11_SESSION_COPY=0 in the environment (read at Token::Open) turns copies off.
#ifndef HWID_PKCS11_PKCS11_H_
#define HWID_PKCS11_PKCS11_H_

#include <openssl/evp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/bytes.h"
#include "common/key_alg.h"
#include "common/ossl.h"
#include "common/sign.h"
#include "pkcs11/uri.h"

namespace hwid::pkcs11 {

// The module used when neither the URI's module-path nor $HWID_PKCS11_MODULE names one.
absl::string_view DefaultModulePath();

using ::hwid::KeyAlg;  // common/key_alg.h: shared with tpm/wire and the CLI
using ::hwid::KeyAlgName;
using ::hwid::ParseKeyAlg;

// KeyAttributes are the protection attributes of a private key object as the token reports them.
struct KeyAttributes {
  bool token = false;              // CKA_TOKEN
  bool is_private = false;         // CKA_PRIVATE
  bool sensitive = false;          // CKA_SENSITIVE
  bool extractable = true;         // CKA_EXTRACTABLE
  bool always_sensitive = false;   // CKA_ALWAYS_SENSITIVE
  bool never_extractable = false;  // CKA_NEVER_EXTRACTABLE
  bool sign = false;               // CKA_SIGN
};

// SessionCopyKeepsProtection is true when a session copy with attributes `copy` protects the key
// at least as well as its token object with attributes `source`: the copy is a session object
// (CKA_TOKEN false) that may sign, is CKA_SENSITIVE and not CKA_EXTRACTABLE, and is CKA_PRIVATE,
// CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE wherever the source is.
bool SessionCopyKeepsProtection(const KeyAttributes& source, const KeyAttributes& copy);

// KeyInfo describes one private key in a listing.
struct KeyInfo {
  std::string label;
  Bytes id;
  hwid::KeyType type = hwid::KeyType::kEc;
  std::string uri;  // names the key; never contains a PIN
};

class Ck;  // pkcs11/call.h
class Key;
class Module;

// OpenOptions are the caller's fallbacks for what a URI does not say (the provider fills them from
// openssl.cnf). Precedence: the URI, then the environment ($HWID_PKCS11_MODULE, $HWID_PKCS11_PIN),
// then these, then p11-kit's proxy module / no login.
struct OpenOptions {
  std::string module_path;  // "" = none
  std::string pin_source;   // "file:/path" or "/path"; "" = none
  // ask_pin, when set, is called last for a token that needs a login (e.g. OpenSSL's passphrase
  // callback); an empty result means "no PIN".
  std::function<SecureBytes()> ask_pin;
};

class Token : public std::enable_shared_from_this<Token> {
 public:
  // kMaxIdleSessions bounds the idle sessions kept in the pool.
  static constexpr size_t kMaxIdleSessions = 16;

  // Open parses `uri`, loads its module (module-path, else $HWID_PKCS11_MODULE, else
  // DefaultModulePath(); one instance per module path per process, shared), finds exactly one
  // initialised token matching the URI's token attributes and logs in when a PIN is available
  // (pin-value, else pin-source, else $HWID_PKCS11_PIN). Never retries a failed login.
  // Errors: InvalidArgument (bad URI, several tokens match), FailedPrecondition (module does not
  // load, PIN in its final try), NotFound (no token matches), PermissionDenied (wrong/locked PIN).
  static absl::StatusOr<std::shared_ptr<Token>> Open(absl::string_view uri);
  static absl::StatusOr<std::shared_ptr<Token>> Open(const Pkcs11Uri& uri,
                                                     const OpenOptions& options = {});

  ~Token();
  Token(const Token&) = delete;
  Token& operator=(const Token&) = delete;

  // FindKey finds the one private key matching the URI's object attributes (object=, id=) and
  // reads its public half (from the key object for RSA, the public key object with the same
  // CKA_ID for EC). NotFound when none matches, InvalidArgument when several do.
  absl::StatusOr<std::shared_ptr<Key>> FindKey(const Pkcs11Uri& uri);
  absl::StatusOr<std::shared_ptr<Key>> FindKey(absl::string_view uri);

  // ListKeys lists the EC and RSA private keys visible in this session state (needs login on most
  // tokens), read from the token on every call (C_FindObjects; a destroyed or relabelled key is
  // never listed from a cache). Keys of other types are left out.
  absl::StatusOr<std::vector<KeyInfo>> ListKeys();

  // GenerateKey makes a key pair on the token: the private key with CKA_TOKEN, CKA_PRIVATE,
  // CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_SIGN true (nothing else); the public key with
  // CKA_TOKEN true. CKA_ID is 16 random bytes, CKA_LABEL is `label` (must be new on the token:
  // AlreadyExists otherwise). Needs a logged-in token (FailedPrecondition otherwise).
  absl::StatusOr<std::shared_ptr<Key>> GenerateKey(KeyAlg alg, absl::string_view label);

  // DestroyKey destroys `key` on the token: first its private key object, then the public key
  // object(s) with the same CKA_ID (C_DestroyObject in a read/write session). Objects are found
  // by the key's CKA_ID and CKA_LABEL, as a Key finds itself again after a fork; a public object
  // is matched by CKA_ID alone, or by CKA_LABEL too when the key has an empty CKA_ID. Afterwards
  // FindKey for the key fails with NotFound, and so does signing with any Key object for it.
  // Errors: NotFound when the private key is already gone (nothing else is touched then),
  // FailedPrecondition when the token is not logged in, InvalidArgument when `key` was found
  // through another slot or module; otherwise the CK_RV's status (CkrError) naming the object.
  // If destroying the public object fails the private key is already gone; the error says so.
  absl::Status DestroyKey(const Key& key);

  // RelabelKey sets CKA_LABEL to `new_label` on `key`'s private key object and its public key
  // object(s) (matched as in DestroyKey; C_SetAttributeValue in a read/write session) and returns a
  // fresh Key for the relabelled key: its label() and uri() show `new_label`. `key` itself keeps
  // its old label and uri (it signs until it must find its object again); use the returned Key.
  // Relabelling a key to its own label changes nothing. Errors: AlreadyExists when another private
  // key already has `new_label`, InvalidArgument for an empty label or a key of another slot or
  // module, NotFound when the key is gone, FailedPrecondition when the token is not logged in;
  // otherwise the CK_RV's status. When the public object cannot be relabelled the private object
  // gets its old label back (best effort) and the error is returned. PKCS#11 has no transactions:
  // the label check and the update are two steps, so callers must not relabel concurrently onto
  // the same label.
  absl::StatusOr<std::shared_ptr<Key>> RelabelKey(const Key& key, absl::string_view new_label);

  bool logged_in() const { return logged_in_; }
  // Describe is "token 'LABEL' (slot N, module PATH)".
  std::string Describe() const;
  const TokenFields& fields() const { return fields_; }
  const std::string& module_path() const;
  // command_count is the number of PKCS#11 calls made through this token object.
  uint64_t command_count() const { return commands_.load(std::memory_order_relaxed); }
  // sessions_opened is how many sessions this token object has opened (pool growth).
  uint64_t sessions_opened() const { return sessions_opened_.load(std::memory_order_relaxed); }
  // CloseIdleSessions closes the pooled sessions (they reopen on demand).
  void CloseIdleSessions();
  // session_copies is whether keys found through this token sign with session copies (see the
  // file comment; false when HWID_PKCS11_SESSION_COPY=0 was set at Open).
  bool session_copies() const { return session_copies_; }

 private:
  friend class Key;
  class Lease;

  Token(std::shared_ptr<Module> module, void* slot, unsigned long slot_id, TokenFields fields,
        SecureBytes pin);

  // Login logs in with pin_ unless the process is logged in already (one C_Login, never
  // retried). Callers hold mu_ or own the token exclusively (Open).
  absl::Status Login();
  // Relogin runs Login under mu_ after the process was logged out underneath us.
  absl::Status Relogin();
  bool HasPin() const { return !pin_.empty(); }
  // ck calls the module through the chokepoint (pkcs11/call.h), charged to command_count().
  Ck ck();
  // CheckFork re-initialises this token after a fork (see the file comment); cheap otherwise.
  absl::Status CheckFork();
  absl::StatusOr<unsigned long> AcquireSession();
  void ReleaseSession(unsigned long session, bool reusable);
  // OwnSession returns login_session_, opening it first if needed. Callers hold mu_ or own the
  // token exclusively (Open).
  absl::StatusOr<unsigned long> OwnSession();
  absl::StatusOr<std::shared_ptr<Key>> MakeKey(unsigned long session, unsigned long handle);
  // OpenWriteSession opens a read/write session for a token-object change (key generation,
  // destruction, relabelling) after checking the fork state and the login; the caller closes it.
  absl::StatusOr<unsigned long> OpenWriteSession(absl::string_view operation);
  // CheckSameToken is InvalidArgument unless `key` was found through this slot of this module.
  absl::Status CheckSameToken(const Key& key, absl::string_view operation) const;
  // DestroySessionCopies destroys the session copies of `key` in this process (any Key's).
  absl::Status DestroySessionCopies(unsigned long session, const Key& key);
  // FindPublicKeyHandles finds the public key objects of `key` (see DestroyKey), at most 16.
  absl::StatusOr<std::vector<unsigned long>> FindPublicKeyHandles(unsigned long session,
                                                                  const Key& key);
  absl::StatusOr<unsigned long> FindPrivateKeyHandle(unsigned long session,
                                                     const std::optional<std::string>& label,
                                                     const std::optional<Bytes>& id,
                                                     absl::string_view what);

  std::shared_ptr<Module> module_;
  void* slot_;  // PKCS11_SLOT* owned by module_
  unsigned long slot_id_;
  TokenFields fields_;
  SecureBytes pin_;
  bool logged_in_ = false;
  std::atomic<uint64_t> generation_;
  std::mutex mu_;  // guards idle_ and re-initialisation; never held across a C_Sign
  std::vector<unsigned long> idle_;
  // The token object's own session (CK_INVALID_HANDLE = 0 until opened): kept open for the
  // Token's life, used only under mu_ (or while Open owns the token). Login runs on it (closing
  // an application's last session logs it out) and it holds the keys' session copies (session
  // objects die with the session that made them).
  unsigned long login_session_ = 0;
  bool session_copies_ = true;
  std::atomic<uint64_t> commands_{0};
  std::atomic<uint64_t> sessions_opened_{0};
};

// Key is one private key object on a token (and its public half, read once at load). It is the
// PKCS#11 implementation of hwid::SigningKey (common/sign.h).
class Key : public hwid::SigningKey {
 public:
  Key(const Key&) = delete;
  Key& operator=(const Key&) = delete;

  hwid::KeyType type() const override { return type_; }
  int bits() const { return bits_; }
  // public_key is the public half as an OpenSSL key (default provider), never null; owned by the
  // Key.
  EVP_PKEY* public_key() const override { return public_key_.get(); }
  const std::string& label() const { return label_; }
  const Bytes& id() const { return id_; }
  // uri names this key (token + id + object + type=private); never contains a PIN.
  const std::string& uri() const { return uri_; }
  // Describe is "PKCS#11 key 'LABEL' (id HEX) on token 'T'".
  std::string Describe() const override;
  const std::shared_ptr<Token>& token() const { return token_; }

  // Sign signs `digest` (computed in software with params.hash) on the token: CKM_ECDSA (the
  // token's r || s converted to a DER ECDSA-Sig-Value), CKM_RSA_PKCS over the DER DigestInfo, or
  // CKM_RSA_PKCS_PSS with MGF1 over params.hash and a salt of params.pss_salt_len bytes (nullopt:
  // the digest length, what TLS 1.3 requires). InvalidArgument when hwid::CheckSignRequest refuses
  // the request or the salt does not fit the modulus; otherwise the CK_RV's status (CkrError),
  // naming the mechanism and the key. Logs in again once if the process was logged out underneath.
  absl::StatusOr<Bytes> Sign(ByteSpan digest, const hwid::SignParams& params) override;

  // ReadAttributes reads the protection attributes of the private key object (the token object,
  // never the session copy).
  absl::StatusOr<KeyAttributes> ReadAttributes();

  // signs_with_session_copy is true when the last signature (in this process) used a session copy
  // of the key rather than the token object.
  bool signs_with_session_copy() const;

  // ~Key destroys the key's session copy (if this process made one and can still reach it).
  ~Key() override;

 private:
  friend class Token;
  Key(std::shared_ptr<Token> token, unsigned long handle, hwid::KeyType type, int bits,
      OsslPtr<EVP_PKEY> public_key, std::string label, Bytes id, std::string uri);
  // Handle returns the token object's handle, finding the key again after a fork.
  absl::StatusOr<unsigned long> Handle(unsigned long session, bool refind);
  // SigningHandle returns the handle to sign with: the session copy when there is one (making it
  // on first use in this process), else the token object (Handle). Copy failures are not errors.
  absl::StatusOr<unsigned long> SigningHandle(unsigned long session);
  // MakeSessionCopy makes (under the Token's mutex) the session copy for this fork generation,
  // or records that the token object signs; returns the handle to sign with.
  absl::StatusOr<unsigned long> MakeSessionCopy(unsigned long session);
  // ForgetSessionCopy drops the copy `handle` after the token reported it gone (logout, session
  // loss); the next signature makes a new one. The handle is not destroyed (it may be reused).
  void ForgetSessionCopy(unsigned long handle);

  std::shared_ptr<Token> token_;
  std::atomic<unsigned long> handle_;
  std::atomic<uint64_t> generation_;
  hwid::KeyType type_;
  int bits_;
  OsslPtr<EVP_PKEY> public_key_;
  std::string label_;
  Bytes id_;
  std::string uri_;
  // The session copy: copy_ is its handle (0: none, the token object signs), valid for the fork
  // generation copy_generation_ (0: not decided yet). Written under token_->mu_.
  std::atomic<unsigned long> copy_{0};
  std::atomic<uint64_t> copy_generation_{0};
};

// LoadKey opens the token a URI names and finds the key it names (Token::Open + FindKey).
absl::StatusOr<std::shared_ptr<Key>> LoadKey(absl::string_view uri);

}  // namespace hwid::pkcs11

#endif  // HWID_PKCS11_PKCS11_H_
