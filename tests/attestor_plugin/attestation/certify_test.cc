// Agent-key binding (hwid_tpm protocol version 2) end to end on a real swtpm: an AgentResponder
// with keymanager_key_dir certifies the TSS2 key files there with its AK (TPM2_Certify over the
// server's certify_nonce) and ServerSession verifies them. Positive runs check the certified
// keys' SubjectPublicKeyInfo against a signature made by the TPM key and the agent_key:tpm
// selector; version 1 agents are unaffected.
//
// The negative matrix splices real TPM output into an otherwise genuine version-2 response (built
// by the responder, then certified_keys replaced), so that each row breaks exactly one property:
// another AK (same TPM and another TPM), a swapped public area, keys the TPM really holds but that
// are not SVID keys (duplicable, software-loaded, decrypt, SHA-1 name, BN curve, RSA-1024, HMAC,
// the restricted AK itself), a stale or replayed nonce, a quote and a TPM2_CertifyCreation
// presented as a certification, tampered bytes, and the message-level rules (bounds, versions).
// The certifications the hwid code cannot make (tpm::Tpm::Certify verifies its output) are made
// with raw ESAPI calls here (RawTpm).
//
// swtpm serves one client connection at a time: the agent's connection is closed (agent.reset())
// before this test opens its own.
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "attestor_plugin/attestation/agent.h"
#include "attestor_plugin/attestation/hwid_tpm.pb.h"
#include "attestor_plugin/attestation/messages.h"
#include "attestor_plugin/attestation/server.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/attestation/agent_testing.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/swtpm.h"
#include "tests/tpm/wire/test_util.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/pcr.h"
#include "tpm/wire/templates.h"

namespace hwid::attestation {
namespace {

namespace fs = std::filesystem;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::StatusIs;
using ::testing::Contains;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::UnorderedElementsAreArray;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDenied = absl::StatusCode::kPermissionDenied;
constexpr uint32_t kAkHandle = 0x81000100;       // the agent's AK (default ak_handle, ec-p256)
constexpr uint32_t kOtherAkHandle = 0x81000121;  // a second AK in the same TPM

const std::string& Tcti() { return ::hwid::testing::GlobalSwtpm().tcti(); }

// ---------------------------------------------------------------- raw ESAPI

// RawTpm: the TPM commands the hwid code does not offer (keys of arbitrary templates,
// TPM2_Certify without verification, TPM2_CertifyCreation, TPM2_LoadExternal), with ESAPI
// directly. Transient objects are flushed before each call returns (swtpm has 3 slots).
class RawTpm {
 public:
  struct Created {
    TPM2B_PUBLIC pub = {};
    TPM2B_PRIVATE priv = {};
    TPM2B_DIGEST creation_hash = {};
    TPMT_TK_CREATION ticket = {};
  };

  static absl::StatusOr<std::unique_ptr<RawTpm>> Open(const std::string& tcti) {
    std::unique_ptr<RawTpm> t(new RawTpm());
    RETURN_IF_ERROR(Check(Tss2_TctiLdr_Initialize(tcti.c_str(), &t->tcti_), "TctiLdr_Initialize"));
    RETURN_IF_ERROR(Check(Esys_Initialize(&t->esys_, t->tcti_, nullptr), "Esys_Initialize"));
    return t;
  }
  ~RawTpm() {
    if (esys_ != nullptr) Esys_Finalize(&esys_);
    if (tcti_ != nullptr) Tss2_TctiLdr_Finalize(&tcti_);
  }

  // Create makes a key of `tmpl` under the owner-hierarchy ECC SRK (the parent hwid's key files
  // name: TPM2_RH_OWNER with the SrkTemplateEcc primary). Fails with the TPM's response code.
  absl::StatusOr<Created> Create(TPM2B_PUBLIC tmpl) {
    ASSIGN_OR_RETURN(ESYS_TR srk, Srk());
    TPM2B_SENSITIVE_CREATE sensitive = {};
    TPM2B_DATA outside = {};
    TPML_PCR_SELECTION pcrs = {};
    TPM2B_PRIVATE* priv = nullptr;
    TPM2B_PUBLIC* pub = nullptr;
    TPM2B_CREATION_DATA* data = nullptr;
    TPM2B_DIGEST* hash = nullptr;
    TPMT_TK_CREATION* ticket = nullptr;
    const TSS2_RC rc = Esys_Create(esys_, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                   &sensitive, &tmpl, &outside, &pcrs, &priv, &pub, &data, &hash,
                                   &ticket);
    Esys_FlushContext(esys_, srk);
    Created out;
    if (rc == TSS2_RC_SUCCESS) {
      out.pub = *pub;
      out.priv = *priv;
      out.creation_hash = *hash;
      out.ticket = *ticket;
    }
    for (void* p : {static_cast<void*>(priv), static_cast<void*>(pub), static_cast<void*>(data),
                    static_cast<void*>(hash), static_cast<void*>(ticket)}) {
      Esys_Free(p);
    }
    RETURN_IF_ERROR(Check(rc, "TPM2_Create"));
    return out;
  }

  // Certify: the AK at `ak_handle` certifies `key` (loaded under the SRK for the call).
  absl::StatusOr<tpm::Certification> Certify(uint32_t ak_handle, const Created& key,
                                             ByteSpan qualifying) {
    ASSIGN_OR_RETURN(ESYS_TR obj, Load(key));
    absl::StatusOr<tpm::Certification> c = CertifyObject(ak_handle, obj, qualifying);
    Esys_FlushContext(esys_, obj);
    return c;
  }

  // CertifyPersistent: the AK at `ak_handle` certifies the persistent object `handle`.
  absl::StatusOr<tpm::Certification> CertifyPersistent(uint32_t ak_handle, uint32_t handle,
                                                       ByteSpan qualifying) {
    ASSIGN_OR_RETURN(ESYS_TR obj, Persistent(handle));
    absl::StatusOr<tpm::Certification> c = CertifyObject(ak_handle, obj, qualifying);
    Esys_TR_Close(esys_, &obj);
    return c;
  }

  // CertifyCreation: TPM2_CertifyCreation of `key` by the AK, with its creation ticket.
  absl::StatusOr<tpm::Certification> CertifyCreation(uint32_t ak_handle, const Created& key,
                                                     ByteSpan qualifying) {
    ASSIGN_OR_RETURN(ESYS_TR obj, Load(key));
    absl::StatusOr<ESYS_TR> ak = Persistent(ak_handle);
    if (!ak.ok()) {
      Esys_FlushContext(esys_, obj);
      return ak.status();
    }
    const TPM2B_DATA q = Data(qualifying);
    TPMT_SIG_SCHEME scheme = {};
    scheme.scheme = TPM2_ALG_NULL;
    TPM2B_ATTEST* attest = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    const TSS2_RC rc =
        Esys_CertifyCreation(esys_, *ak, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &q,
                             &key.creation_hash, &scheme, &key.ticket, &attest, &sig);
    Esys_FlushContext(esys_, obj);
    ESYS_TR a = *ak;
    Esys_TR_Close(esys_, &a);
    return Output(rc, "TPM2_CertifyCreation", attest, sig);
  }

  // ClearOwner runs TPM2_Clear with lockout authorization (empty on swtpm): a new storage
  // primary seed, so key files made before no longer load (what a TPM owner clear does).
  absl::Status ClearOwner() {
    return Check(Esys_Clear(esys_, ESYS_TR_RH_LOCKOUT, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE),
                 "TPM2_Clear");
  }

  // CertifyExternal loads a software key with its private part (TPM2_LoadExternal, NULL
  // hierarchy: what an imported key looks like) and has the AK certify it. `pub` is the public
  // area loaded (fixedTPM, fixedParent and sensitiveDataOrigin clear, as LoadExternal requires).
  absl::StatusOr<tpm::Certification> CertifyExternal(uint32_t ak_handle, EVP_PKEY* key,
                                                     TPM2B_PUBLIC* pub, ByteSpan qualifying) {
    TPM2B_PUBLIC p = wire::SigningKeyTemplate(wire::KeyAlg::kEcP256);
    p.publicArea = wire::testing::WithKey(p.publicArea, key);
    p.publicArea.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN);
    TPM2B_SENSITIVE s = {};
    s.sensitiveArea.sensitiveType = TPM2_ALG_ECC;
    BIGNUM* d = nullptr;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &d) != 1) {
      return absl::InternalError("EVP_PKEY_get_bn_param(priv)");
    }
    s.sensitiveArea.sensitive.ecc.size = 32;
    BN_bn2binpad(d, s.sensitiveArea.sensitive.ecc.buffer, 32);
    BN_clear_free(d);
    ESYS_TR obj = ESYS_TR_NONE;
    RETURN_IF_ERROR(Check(Esys_LoadExternal(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &s,
                                            &p, ESYS_TR_RH_NULL, &obj),
                          "TPM2_LoadExternal"));
    *pub = p;
    absl::StatusOr<tpm::Certification> c = CertifyObject(ak_handle, obj, qualifying);
    Esys_FlushContext(esys_, obj);
    return c;
  }

 private:
  RawTpm() = default;

  static absl::Status Check(TSS2_RC rc, const char* what) {
    if (rc == TSS2_RC_SUCCESS) return absl::OkStatus();
    return absl::InternalError(
        absl::StrCat(what, ": 0x", absl::Hex(rc, absl::kZeroPad8), " ", Tss2_RC_Decode(rc)));
  }
  static TPM2B_DATA Data(ByteSpan b) {
    TPM2B_DATA d = {};
    d.size = static_cast<UINT16>(b.size());
    std::memcpy(d.buffer, b.data(), b.size());
    return d;
  }

  absl::StatusOr<ESYS_TR> Srk() {
    TPM2B_SENSITIVE_CREATE sensitive = {};
    const TPM2B_PUBLIC tmpl = wire::SrkTemplateEcc();
    TPM2B_DATA outside = {};
    TPML_PCR_SELECTION pcrs = {};
    ESYS_TR srk = ESYS_TR_NONE;
    TPM2B_PUBLIC* pub = nullptr;
    TPM2B_CREATION_DATA* data = nullptr;
    TPM2B_DIGEST* hash = nullptr;
    TPMT_TK_CREATION* ticket = nullptr;
    const TSS2_RC rc = Esys_CreatePrimary(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                          ESYS_TR_NONE, &sensitive, &tmpl, &outside, &pcrs, &srk,
                                          &pub, &data, &hash, &ticket);
    Esys_Free(pub);
    Esys_Free(data);
    Esys_Free(hash);
    Esys_Free(ticket);
    RETURN_IF_ERROR(Check(rc, "TPM2_CreatePrimary (SRK)"));
    return srk;
  }

  absl::StatusOr<ESYS_TR> Load(const Created& key) {
    ASSIGN_OR_RETURN(ESYS_TR srk, Srk());
    ESYS_TR obj = ESYS_TR_NONE;
    const TSS2_RC rc = Esys_Load(esys_, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                 &key.priv, &key.pub, &obj);
    Esys_FlushContext(esys_, srk);
    RETURN_IF_ERROR(Check(rc, "TPM2_Load"));
    return obj;
  }

  absl::StatusOr<ESYS_TR> Persistent(uint32_t handle) {
    ESYS_TR tr = ESYS_TR_NONE;
    RETURN_IF_ERROR(Check(
        Esys_TR_FromTPMPublic(esys_, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr),
        "Esys_TR_FromTPMPublic"));
    return tr;
  }

  absl::StatusOr<tpm::Certification> CertifyObject(uint32_t ak_handle, ESYS_TR obj,
                                                   ByteSpan qualifying) {
    ASSIGN_OR_RETURN(ESYS_TR ak, Persistent(ak_handle));
    const TPM2B_DATA q = Data(qualifying);
    TPMT_SIG_SCHEME scheme = {};
    scheme.scheme = TPM2_ALG_NULL;
    TPM2B_ATTEST* attest = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    const TSS2_RC rc = Esys_Certify(esys_, obj, ak, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                                    ESYS_TR_NONE, &q, &scheme, &attest, &sig);
    Esys_TR_Close(esys_, &ak);
    return Output(rc, "TPM2_Certify", attest, sig);
  }

  static absl::StatusOr<tpm::Certification> Output(TSS2_RC rc, const char* what,
                                                   TPM2B_ATTEST* attest, TPMT_SIGNATURE* sig) {
    absl::Status st = Check(rc, what);
    tpm::Certification out;
    if (st.ok()) {
      out.attest.assign(attest->attestationData, attest->attestationData + attest->size);
      absl::StatusOr<Bytes> s = wire::MarshalSignature(*sig);
      if (s.ok()) {
        out.signature = *std::move(s);
      } else {
        st = s.status();
      }
    }
    Esys_Free(attest);
    Esys_Free(sig);
    RETURN_IF_ERROR(st);
    return out;
  }

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
};

std::unique_ptr<RawTpm> OpenRaw(const std::string& tcti = Tcti()) {
  absl::StatusOr<std::unique_ptr<RawTpm>> t = RawTpm::Open(tcti);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

Bytes Marshal(const TPM2B_PUBLIC& p) {
  absl::StatusOr<Bytes> b = wire::MarshalPublic(p);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : Bytes{};
}

// KeyFile turns a key made by RawTpm::Create into the TSS2 key file the KeyManager would write.
wire::TpmKeyFile KeyFile(const RawTpm::Created& c) {
  wire::TpmKeyFile kf;
  kf.pub = Marshal(c.pub);
  absl::StatusOr<Bytes> priv = wire::MarshalPrivate(c.priv);
  EXPECT_TRUE(priv.ok()) << priv.status();
  kf.priv = priv.ok() ? *priv : Bytes{};
  return kf;
}

// ---------------------------------------------------------------- helpers

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/hwid-certify-test-XXXXXX";
    EXPECT_NE(mkdtemp(t), nullptr);
    path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// WriteKeyFile writes `kf` as <dir>/<id>.tss2.pem, as the hwid KeyManager does, with the given
// modification time (seconds since the epoch; 0: now).
void WriteKeyFile(const std::string& dir, const std::string& id, const wire::TpmKeyFile& kf,
                  time_t mtime = 0) {
  absl::StatusOr<std::string> pem = wire::EncodeTpmKeyFilePem(kf);
  ASSERT_TRUE(pem.ok()) << pem.status();
  const std::string path = absl::StrCat(dir, "/", id, ".tss2.pem");
  {
    std::ofstream f(path);
    f << *pem;
    ASSERT_TRUE(f.good());
  }
  if (mtime != 0) {
    const struct timespec times[2] = {{mtime, 0}, {mtime, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  }
}

absl::StatusOr<wire::TpmKeyFile> NewTpmKey(wire::KeyAlg alg, const std::string& tcti = Tcti()) {
  ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(tcti));
  return t->CreateKey(alg);
}

// CertifyWithAk: the agent's AK (kAkHandle, or `ak_handle`) certifies `kf` over `nonce` through
// tpm::Tpm (a connection of its own, closed on return).
absl::StatusOr<tpm::Certification> CertifyWithAk(const wire::TpmKeyFile& kf, ByteSpan nonce) {
  ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(Tcti()));
  ASSIGN_OR_RETURN(tpm::LoadedKey ak, t->LoadPersistentKey(kAkHandle));
  return t->Certify(ak, kf, nonce);
}

std::unique_ptr<AgentResponder> NewAgentV2(const std::string& key_dir) {
  AgentConfigInput in;
  in.tcti = Tcti();
  in.ek = "ecc";
  in.keymanager_key_dir = key_dir;
  absl::StatusOr<AgentConfig> c = ValidateAgentConfig(in);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<AgentResponder>> a = AgentResponder::New(*c);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *std::move(a) : nullptr;
}

std::unique_ptr<AgentResponder> NewAgentV1() {
  return ::hwid::attestation::testing::NewAgent(Tcti(), "ecc");
}

ServerConfigInput CertConfig() {
  ServerConfigInput in;
  in.trust_domain = "example.org";
  in.ek_ca_bundle_paths = {::hwid::testing::GlobalSwtpm().ek_ca_bundle()};
  in.pcrs = "sha256:0-7";
  in.ek_algs = {"rsa-2048", "ecc-p256"};  // the agents here use either
  return in;
}

std::unique_ptr<ServerSession> NewSession() {
  absl::StatusOr<std::shared_ptr<const ServerConfig>> c = ValidateServerConfig(CertConfig());
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<ServerSession>> s = ServerSession::New(*c);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

struct Transcript {
  Bytes payload;
  Bytes challenge;
  Bytes response;
  absl::StatusOr<AttestationResult> result = absl::UnknownError("not run");
};

Transcript Attest(AgentResponder& agent, ServerSession& session) {
  Transcript r;
  absl::StatusOr<Bytes> p = agent.MakePayload();
  if (!p.ok()) {
    r.result = p.status();
    return r;
  }
  r.payload = *p;
  absl::StatusOr<Bytes> c = session.HandlePayload(r.payload);
  if (!c.ok()) {
    r.result = c.status();
    return r;
  }
  r.challenge = *c;
  absl::StatusOr<Bytes> resp = agent.RespondToChallenge(r.challenge);
  if (!resp.ok()) {
    r.result = resp.status();
    return r;
  }
  r.response = *resp;
  r.result = session.HandleChallengeResponse(r.response);
  return r;
}

Bytes Reencode(const ChallengeResponse& r) {
  absl::StatusOr<Bytes> b = EncodeResponse(r);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : Bytes{};
}

Bytes Serialize(const google::protobuf::Message& m) {
  const std::string s = m.SerializeAsString();
  return Bytes(s.begin(), s.end());
}

template <typename M>
M ParsePb(const Bytes& b) {
  M m;
  EXPECT_TRUE(m.ParseFromArray(b.data(), static_cast<int>(b.size())));
  return m;
}

// SpkiVerifies: the oracle for a certified key's SubjectPublicKeyInfo, independent of the
// verifier: the TPM signs a digest with the key file's key, OpenSSL verifies it with `spki`.
void ExpectSpkiIsTheTpmKey(const Bytes& spki, const wire::TpmKeyFile& kf) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(Tcti()));
  ASSERT_OK_AND_ASSIGN(tpm::LoadedKey key, t->LoadKey(kf));
  const bool rsa = key.pub.publicArea.type == TPM2_ALG_RSA;
  const Bytes digest = wire::testing::Sha(TPM2_ALG_SHA256, AsSpan("agent SVID CSR"));
  ASSERT_OK_AND_ASSIGN(TPMT_SIGNATURE sig,
                       t->Sign(key, digest, rsa ? tpm::SignScheme::kRsaPkcs1
                                                : tpm::SignScheme::kEcdsa,
                               TPM2_ALG_SHA256));
  ASSERT_OK_AND_ASSIGN(Bytes der, wire::SignatureToDer(sig));
  const unsigned char* p = spki.data();
  OsslPtr<EVP_PKEY> pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  ASSERT_NE(pkey, nullptr);
  ASSERT_EQ(p, spki.data() + spki.size());  // the whole SPKI, nothing after it
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_verify_init(ctx.get()), 1);
  if (rsa) {
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING), 1);
  }
  ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()), 1);
  EXPECT_EQ(EVP_PKEY_verify(ctx.get(), der.data(), der.size(), digest.data(), digest.size()), 1)
      << "the certified SPKI does not verify a signature by the TPM key";
}

bool HasAgentKeySelector(const AttestationResult& r) {
  for (const std::string& s : r.selectors) {
    if (s.rfind("agent_key", 0) == 0) return true;
  }
  return false;
}

// ---------------------------------------------------------------- positive

TEST(CertifyTest, V2AgentCertifiesItsKeyManagerKey) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, NewTpmKey(wire::KeyAlg::kEcP256));
  WriteKeyFile(dir.path(), "agent-svid-A", kf);
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir.path());
  ASSERT_NE(agent, nullptr);
  std::unique_ptr<ServerSession> session = NewSession();
  Transcript run = Attest(*agent, *session);
  ASSERT_THAT(run.result, IsOk());

  // The wire: version 2 throughout, a 32-byte certify nonce distinct from the quote nonce.
  ASSERT_OK_AND_ASSIGN(AttestationPayload p, DecodePayload(run.payload));
  EXPECT_EQ(p.version, kProtocolVersionCertify);
  ASSERT_OK_AND_ASSIGN(Challenge c, DecodeChallenge(run.challenge));
  EXPECT_EQ(c.version, kProtocolVersionCertify);
  EXPECT_EQ(c.certify_nonce.size(), 32u);
  EXPECT_NE(c.certify_nonce, c.nonce);
  ASSERT_OK_AND_ASSIGN(ChallengeResponse r, DecodeResponse(run.response));
  EXPECT_EQ(r.version, kProtocolVersionCertify);
  ASSERT_EQ(r.certified_keys.size(), 1u);
  EXPECT_EQ(r.certified_keys[0].key_public, kf.pub);

  const AttestationResult& res = *run.result;
  ASSERT_EQ(res.certified_keys.size(), 1u);
  ASSERT_OK_AND_ASSIGN(TPM2B_PUBLIC pub, wire::ParsePublic(kf.pub));
  ASSERT_OK_AND_ASSIGN(Bytes want, wire::PublicKeyDer(pub.publicArea));
  EXPECT_EQ(res.certified_keys[0], want);
  EXPECT_THAT(res.selectors, Contains("agent_key:tpm"));
  EXPECT_THAT(res.spiffe_id, ::testing::StartsWith("spiffe://example.org/spire/agent/hwid_tpm/"));
  agent.reset();
  ExpectSpkiIsTheTpmKey(res.certified_keys[0], kf);

  // A version 1 agent on the same TPM: the same identity, no certified keys, no agent_key
  // selector, and no version 2 field on the wire.
  std::unique_ptr<AgentResponder> v1 = NewAgentV1();
  ASSERT_NE(v1, nullptr);
  Transcript run1 = Attest(*v1, *NewSession());
  ASSERT_THAT(run1.result, IsOk());
  EXPECT_EQ(run1.result->spiffe_id, res.spiffe_id);
  EXPECT_THAT(run1.result->certified_keys, IsEmpty());
  EXPECT_FALSE(HasAgentKeySelector(*run1.result));
  ASSERT_OK_AND_ASSIGN(Challenge c1, DecodeChallenge(run1.challenge));
  EXPECT_EQ(c1.version, kProtocolVersion);
  EXPECT_THAT(c1.certify_nonce, IsEmpty());
  const auto pb1 = ParsePb<v1::ChallengeResponse>(run1.response);
  EXPECT_EQ(pb1.version(), 1u);
  EXPECT_EQ(pb1.certified_keys_size(), 0);
  // Apart from the agent_key selector, v1 and v2 results carry the same selectors.
  std::vector<std::string> v2_without = res.selectors;
  v2_without.erase(std::remove(v2_without.begin(), v2_without.end(), "agent_key:tpm"),
                   v2_without.end());
  EXPECT_EQ(v2_without, run1.result->selectors);
}

TEST(CertifyTest, RsaAndEccKeysNewestFourOfFive) {
  TempDir dir;
  struct Made {
    std::string id;
    wire::TpmKeyFile kf;
    time_t mtime;
  };
  std::vector<Made> keys;
  const std::vector<std::pair<const char*, wire::KeyAlg>> specs = {
      {"oldest", wire::KeyAlg::kEcP256},      {"agent-svid-A", wire::KeyAlg::kEcP256},
      {"agent-svid-B", wire::KeyAlg::kEcP384}, {"rsa-key", wire::KeyAlg::kRsa2048},
      {"newest", wire::KeyAlg::kEcP256}};
  time_t t = 1700000000;
  for (const auto& [id, alg] : specs) {
    ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, NewTpmKey(alg));
    WriteKeyFile(dir.path(), id, kf, t);
    keys.push_back({id, kf, t});
    t += 100;
  }
  // Not key files: skipped without failing the attestation.
  std::ofstream(dir.path() + "/notes.txt") << "not a key";
  std::ofstream(dir.path() + "/broken.tss2.pem") << "-----BEGIN TSS2 PRIVATE KEY-----\n";
  WriteKeyFile(dir.path(), ".hidden", keys[0].kf);
  fs::create_directory(dir.path() + "/subdir.tss2.pem");

  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir.path());
  ASSERT_NE(agent, nullptr);
  Transcript run = Attest(*agent, *NewSession());
  ASSERT_THAT(run.result, IsOk());
  agent.reset();
  std::vector<Bytes> want;
  for (size_t i = 1; i < keys.size(); ++i) {  // all but the oldest
    ASSERT_OK_AND_ASSIGN(TPM2B_PUBLIC pub, wire::ParsePublic(keys[i].kf.pub));
    ASSERT_OK_AND_ASSIGN(Bytes der, wire::PublicKeyDer(pub.publicArea));
    want.push_back(der);
  }
  EXPECT_THAT(run.result->certified_keys, UnorderedElementsAreArray(want));
  EXPECT_THAT(run.result->selectors, Contains("agent_key:tpm"));
  // Each returned SPKI is the TPM key's (the RSA one included).
  for (size_t i = 1; i < keys.size(); ++i) {
    SCOPED_TRACE(keys[i].id);
    for (const Bytes& spki : run.result->certified_keys) {
      if (spki == want[i - 1]) ExpectSpkiIsTheTpmKey(spki, keys[i].kf);
    }
  }
}

TEST(CertifyTest, V2AgentWithAnEmptyKeyDirAttestsWithoutTheSelector) {
  TempDir dir;
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir.path());
  ASSERT_NE(agent, nullptr);
  Transcript run = Attest(*agent, *NewSession());
  ASSERT_THAT(run.result, IsOk());
  EXPECT_THAT(run.result->certified_keys, IsEmpty());
  EXPECT_FALSE(HasAgentKeySelector(*run.result));
}

TEST(CertifyTest, AgentFailsWhenItsKeyDirIsMissing) {
  std::unique_ptr<AgentResponder> agent = NewAgentV2("/nonexistent/hwid-keymanager-keys");
  ASSERT_NE(agent, nullptr);
  Transcript run = Attest(*agent, *NewSession());
  EXPECT_THAT(run.result, StatusIs(absl::StatusCode::kFailedPrecondition, "keymanager_key_dir"));
}

TEST(CertifyTest, AgentSkipsAKeyFileThisTpmCannotLoad) {
  // A key file left in key_dir from before a TPM owner clear (or from another TPM): it parses,
  // but the TPM refuses to load it. It cannot be the key of the SVID being requested (SPIRE
  // generates that key in this TPM just before attesting), and certifying fewer keys weakens
  // nothing: the composer refuses any SVID key without a certification. Expected: the agent
  // certifies the keys it can and attests. (Today the whole attestation fails, so an agent whose
  // other SVID slot is stale can never attest again.)
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<::hwid::testing::Swtpm> other,
                       ::hwid::testing::Swtpm::Start());
  {
    std::unique_ptr<RawTpm> raw = OpenRaw(other->tcti());
    ASSERT_NE(raw, nullptr);
    ASSERT_OK(raw->ClearOwner());
  }
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile stale, NewTpmKey(wire::KeyAlg::kEcP256, other->tcti()));
  other.reset();
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(Tcti()));
    EXPECT_FALSE(t->LoadKey(stale).ok()) << "the stale key must not load in this TPM";
  }
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile current, NewTpmKey(wire::KeyAlg::kEcP256));
  WriteKeyFile(dir.path(), "agent-svid-B", stale, 1700000000);
  WriteKeyFile(dir.path(), "agent-svid-A", current, 1700000100);
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir.path());
  ASSERT_NE(agent, nullptr);
  Transcript run = Attest(*agent, *NewSession());
  ASSERT_THAT(run.result, IsOk()) << "a stale key file in keymanager_key_dir blocks attestation";
  ASSERT_OK_AND_ASSIGN(TPM2B_PUBLIC pub, wire::ParsePublic(current.pub));
  ASSERT_OK_AND_ASSIGN(Bytes want, wire::PublicKeyDer(pub.publicArea));
  EXPECT_THAT(run.result->certified_keys, ::testing::ElementsAre(want));
}

// ---------------------------------------------------------------- negative matrix

class CertifyNegativeTest : public ::testing::Test {
 protected:
  // One live version-2 session: the challenge sent and the genuine response the agent made
  // for it (not yet delivered). The agent's TPM connection is closed on return.
  struct Live {
    std::unique_ptr<ServerSession> session;
    Challenge challenge;
    ChallengeResponse genuine;
    Bytes ak_public;
  };

  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(key_, NewTpmKey(wire::KeyAlg::kEcP256));
    WriteKeyFile(dir_.path(), "agent-svid-A", key_);
  }

  Live Begin() {
    Live l;
    std::unique_ptr<AgentResponder> agent = NewAgentV2(dir_.path());
    EXPECT_NE(agent, nullptr);
    if (agent == nullptr) return l;
    l.session = NewSession();
    absl::StatusOr<Bytes> p = agent->MakePayload();
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return l;
    absl::StatusOr<AttestationPayload> payload = DecodePayload(*p);
    EXPECT_TRUE(payload.ok());
    if (payload.ok()) l.ak_public = payload->ak_public;
    absl::StatusOr<Bytes> c = l.session->HandlePayload(*p);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return l;
    absl::StatusOr<Challenge> dc = DecodeChallenge(*c);
    EXPECT_TRUE(dc.ok()) << dc.status();
    if (dc.ok()) l.challenge = *dc;
    absl::StatusOr<Bytes> r = agent->RespondToChallenge(*c);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return l;
    absl::StatusOr<ChallengeResponse> dr = DecodeResponse(*r);
    EXPECT_TRUE(dr.ok()) << dr.status();
    if (dr.ok()) l.genuine = *std::move(dr);
    EXPECT_EQ(l.genuine.certified_keys.size(), 1u);
    return l;
  }

  // Splice: the genuine response with its only certified key replaced.
  static absl::StatusOr<AttestationResult> Deliver(Live& l, const CertifiedKey& k) {
    ChallengeResponse r = l.genuine;
    r.certified_keys = {k};
    return l.session->HandleChallengeResponse(Reencode(r));
  }

  // RawCertification of a key made with `tmpl` (RawTpm::Create) by the session's AK over the
  // session's certify nonce: a genuine TPM certification of that key.
  CertifiedKey RawCertification(const Live& l, TPM2B_PUBLIC tmpl) {
    std::unique_ptr<RawTpm> raw = OpenRaw();
    if (raw == nullptr) return {};
    absl::StatusOr<RawTpm::Created> k = raw->Create(tmpl);
    EXPECT_TRUE(k.ok()) << k.status();
    if (!k.ok()) return {};
    absl::StatusOr<tpm::Certification> c = raw->Certify(kAkHandle, *k, l.challenge.certify_nonce);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return {};
    return CertifiedKey{Marshal(k->pub), c->attest, c->signature};
  }

  TempDir dir_;
  wire::TpmKeyFile key_;
};

TEST_F(CertifyNegativeTest, GenuineSpliceBaselineIsAccepted) {
  // The splice itself (decode, replace certified_keys, re-encode) changes nothing: the same
  // certification, re-made by the session's AK over the session's nonce, passes.
  Live l = Begin();
  ASSERT_OK_AND_ASSIGN(tpm::Certification c, CertifyWithAk(key_, l.challenge.certify_nonce));
  absl::StatusOr<AttestationResult> r = Deliver(l, {key_.pub, c.attest, c.signature});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->certified_keys.size(), 1u);
  EXPECT_THAT(r->selectors, Contains("agent_key:tpm"));
}

TEST_F(CertifyNegativeTest, CertifiedByAnotherAkOfTheSameTpm) {
  Live l = Begin();
  tpm::Certification c;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(Tcti()));
    {
      ASSERT_OK_AND_ASSIGN(tpm::LoadedKey other,
                           t->EnsureAk(wire::KeyAlg::kEcP256, kOtherAkHandle));
      ASSERT_OK_AND_ASSIGN(c, t->Certify(other, key_, l.challenge.certify_nonce));
    }
    ASSERT_THAT(t->EvictPersistent(kOtherAkHandle), IsOk());
  }
  EXPECT_THAT(Deliver(l, {key_.pub, c.attest, c.signature}),
              StatusIs(kDenied, "certified key 0: certify: signature does not verify with the AK"));
}

TEST_F(CertifyNegativeTest, CertifiedByAnotherTpm) {
  // A second swtpm (a clone of the same provisioned template, so even its EK is the same): its own
  // AK certifies its own key over this session's nonce; the session's AK was bound by activation.
  Live l = Begin();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<::hwid::testing::Swtpm> other,
                       ::hwid::testing::Swtpm::Start());
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile kf, NewTpmKey(wire::KeyAlg::kEcP256, other->tcti()));
  tpm::Certification c;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(other->tcti()));
    ASSERT_OK_AND_ASSIGN(tpm::LoadedKey ak, t->EnsureAk(wire::KeyAlg::kEcP256, kAkHandle));
    ASSERT_OK_AND_ASSIGN(c, t->Certify(ak, kf, l.challenge.certify_nonce));
  }
  EXPECT_THAT(Deliver(l, {kf.pub, c.attest, c.signature}),
              StatusIs(kDenied, "signature does not verify with the AK"));
}

TEST_F(CertifyNegativeTest, PublicAreaSwappedForAnotherKey) {
  Live l = Begin();
  ASSERT_OK_AND_ASSIGN(wire::TpmKeyFile other, NewTpmKey(wire::KeyAlg::kEcP256));
  CertifiedKey k = l.genuine.certified_keys.at(0);
  k.key_public = other.pub;  // an unrelated key of the same TPM, with key_'s certification
  EXPECT_THAT(Deliver(l, k),
              StatusIs(kDenied, "certify: the certified name is not the name of the presented"));
}

TEST_F(CertifyNegativeTest, DuplicableKeyReallyInTheTpm) {
  Live l = Begin();
  TPM2B_PUBLIC tmpl = wire::SigningKeyTemplate(wire::KeyAlg::kEcP256);
  tmpl.publicArea.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT);
  const CertifiedKey k = RawCertification(l, tmpl);
  ASSERT_FALSE(k.certify_info.empty());
  EXPECT_THAT(Deliver(l, k), StatusIs(kDenied, "certified key: attribute fixedTPM"));
}

TEST_F(CertifyNegativeTest, AgentRefusesToSendADuplicableKey) {
  // The same key as a file in the agent's key dir: tpm::Tpm::Certify verifies what it made, so
  // the genuine agent fails rather than presenting it.
  std::unique_ptr<RawTpm> raw = OpenRaw();
  ASSERT_NE(raw, nullptr);
  TPM2B_PUBLIC tmpl = wire::SigningKeyTemplate(wire::KeyAlg::kEcP256);
  tmpl.publicArea.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT);
  ASSERT_OK_AND_ASSIGN(RawTpm::Created k, raw->Create(tmpl));
  raw.reset();
  WriteKeyFile(dir_.path(), "agent-svid-B", KeyFile(k));
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir_.path());
  ASSERT_NE(agent, nullptr);
  EXPECT_THAT(Attest(*agent, *NewSession()).result,
              StatusIs(absl::StatusCode::kInternal, "attribute fixedTPM"));
}

TEST_F(CertifyNegativeTest, SoftwareKeyLoadedIntoTheTpm) {
  // An imported key: a software private key loaded with TPM2_LoadExternal and genuinely
  // certified by the AK. The TPM cannot hold such a key with fixedTPM set.
  Live l = Begin();
  std::unique_ptr<RawTpm> raw = OpenRaw();
  ASSERT_NE(raw, nullptr);
  TPM2B_PUBLIC pub = {};
  ASSERT_OK_AND_ASSIGN(
      tpm::Certification c,
      raw->CertifyExternal(kAkHandle, wire::testing::EcKey("P-256#imported"), &pub,
                           l.challenge.certify_nonce));
  raw.reset();
  EXPECT_THAT(Deliver(l, {Marshal(pub), c.attest, c.signature}),
              StatusIs(kDenied, "certified key: attribute fixedTPM"));
}

TEST_F(CertifyNegativeTest, TpmRefusesAFixedKeyWithoutSensitiveDataOrigin) {
  // Why sensitiveDataOrigin can only be tested with a forged public area (tpm_wire_test
  // VerifyCertifyTest "imported_no_sensitivedataorigin", CheckCertifiedKeyAttributes): a TPM
  // does not create an asymmetric key from caller data.
  std::unique_ptr<RawTpm> raw = OpenRaw();
  ASSERT_NE(raw, nullptr);
  TPM2B_PUBLIC tmpl = wire::SigningKeyTemplate(wire::KeyAlg::kEcP256);
  tmpl.publicArea.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN;
  EXPECT_THAT(raw->Create(tmpl),
              StatusIs(absl::StatusCode::kInternal,
                       "TPM2_Create: 0x000002c2 tpm:parameter(2):inconsistent attributes"));
}

struct TpmKeyRow {
  const char* name;
  std::function<void(TPMT_PUBLIC&)> mutate;
  const char* message;
};

class RealKeyAttributeTest : public CertifyNegativeTest,
                             public ::testing::WithParamInterface<TpmKeyRow> {};

TEST_P(RealKeyAttributeTest, GenuineCertificationOfANonSvidKey) {
  Live l = Begin();
  TPM2B_PUBLIC tmpl = wire::SigningKeyTemplate(wire::KeyAlg::kEcP256);
  GetParam().mutate(tmpl.publicArea);
  const CertifiedKey k = RawCertification(l, tmpl);
  ASSERT_FALSE(k.certify_info.empty());
  EXPECT_THAT(Deliver(l, k), StatusIs(kDenied, GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Keys, RealKeyAttributeTest,
    ::testing::Values(
        TpmKeyRow{"decrypt",
                  [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; },
                  "certified key: attribute decrypt is set"},
        TpmKeyRow{"namealg_sha1", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; },
                  "certified key: nameAlg sha1"},
        TpmKeyRow{"curve_bn_p256",
                  [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_BN_P256; },
                  "certified key: ECC curve 0x0010"},
        TpmKeyRow{"rsa_1024",
                  [](TPMT_PUBLIC& p) {
                    p = wire::SigningKeyTemplate(wire::KeyAlg::kRsa2048).publicArea;
                    p.parameters.rsaDetail.keyBits = 1024;
                  },
                  "certified key: RSA keyBits 1024"},
        TpmKeyRow{"hmac",
                  [](TPMT_PUBLIC& p) {
                    p.type = TPM2_ALG_KEYEDHASH;
                    std::memset(&p.parameters, 0, sizeof(p.parameters));
                    p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
                    p.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
                    std::memset(&p.unique, 0, sizeof(p.unique));
                  },
                  "certified key: type keyedhash"}),
    [](const auto& p) { return std::string(p.param.name); });

TEST_F(CertifyNegativeTest, RestrictedKeyTheAkItself) {
  Live l = Begin();
  std::unique_ptr<RawTpm> raw = OpenRaw();
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(tpm::Certification c,
                       raw->CertifyPersistent(kAkHandle, kAkHandle, l.challenge.certify_nonce));
  raw.reset();
  EXPECT_THAT(Deliver(l, {l.ak_public, c.attest, c.signature}),
              StatusIs(kDenied, "certified key: attribute restricted is set"));
}

TEST_F(CertifyNegativeTest, StaleQualifyingData) {
  Live l = Begin();
  Bytes other = l.challenge.certify_nonce;
  other[0] ^= 0x01;
  ASSERT_OK_AND_ASSIGN(tpm::Certification stale, CertifyWithAk(key_, other));
  EXPECT_THAT(Deliver(l, {key_.pub, stale.attest, stale.signature}),
              StatusIs(kDenied, "extraData does not match this session's certify nonce"));
  // The quote nonce of the same session is not the certify nonce either.
  Live l2 = Begin();
  ASSERT_OK_AND_ASSIGN(tpm::Certification quote_nonce, CertifyWithAk(key_, l2.challenge.nonce));
  EXPECT_THAT(Deliver(l2, {key_.pub, quote_nonce.attest, quote_nonce.signature}),
              StatusIs(kDenied, "extraData does not match this session's certify nonce"));
}

TEST_F(CertifyNegativeTest, ReplayedFromAnEarlierAttestation) {
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir_.path());
  ASSERT_NE(agent, nullptr);
  Transcript first = Attest(*agent, *NewSession());
  ASSERT_THAT(first.result, IsOk());
  agent.reset();
  ASSERT_OK_AND_ASSIGN(ChallengeResponse old, DecodeResponse(first.response));
  ASSERT_EQ(old.certified_keys.size(), 1u);
  Live l = Begin();
  EXPECT_THAT(Deliver(l, old.certified_keys[0]),
              StatusIs(kDenied, "certified key 0: certify: extraData does not match this "
                                "session's certify nonce (stale or replayed)"));
}

TEST_F(CertifyNegativeTest, QuotePresentedAsCertification) {
  Live l = Begin();
  tpm::Quote q;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<tpm::Tpm> t, tpm::Tpm::Open(Tcti()));
    ASSERT_OK_AND_ASSIGN(tpm::LoadedKey ak, t->LoadPersistentKey(kAkHandle));
    ASSERT_OK_AND_ASSIGN(TPML_PCR_SELECTION sel, wire::ParsePcrSelection("sha256:0"));
    ASSERT_OK_AND_ASSIGN(q, t->QuotePcrs(ak, l.challenge.certify_nonce, sel));
  }
  EXPECT_THAT(Deliver(l, {key_.pub, q.attest, q.signature}),
              StatusIs(kDenied, "attestation type 0x8018 is not TPM_ST_ATTEST_CERTIFY"));
}

TEST_F(CertifyNegativeTest, CreationCertificationPresentedAsCertification) {
  // TPM2_CertifyCreation of a genuine SVID-shaped key over the certify nonce: signed by the AK,
  // right magic, right nonce, and its TPMS_CREATION_INFO starts with the key's name where
  // TPMS_CERTIFY_INFO has it. Only the type check tells it apart.
  Live l = Begin();
  std::unique_ptr<RawTpm> raw = OpenRaw();
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(RawTpm::Created k,
                       raw->Create(wire::SigningKeyTemplate(wire::KeyAlg::kEcP256)));
  ASSERT_OK_AND_ASSIGN(tpm::Certification c,
                       raw->CertifyCreation(kAkHandle, k, l.challenge.certify_nonce));
  raw.reset();
  ASSERT_OK_AND_ASSIGN(TPMS_ATTEST parsed, wire::ParseAttest(c.attest));
  ASSERT_EQ(parsed.type, TPM2_ST_ATTEST_CREATION);
  EXPECT_THAT(Deliver(l, {Marshal(k.pub), c.attest, c.signature}),
              StatusIs(kDenied, "attestation type 0x801a is not TPM_ST_ATTEST_CERTIFY"));
}

TEST_F(CertifyNegativeTest, TamperedBytes) {
  struct Row {
    const char* name;
    std::function<void(CertifiedKey&)> tamper;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Row> rows = {
      {"magic flipped", [](CertifiedKey& k) { k.certify_info[0] ^= 0x01; }, kDenied,
       "certify: signature does not verify with the AK"},
      {"extraData flipped", [](CertifiedKey& k) { k.certify_info[k.certify_info.size() / 2] ^= 1; },
       kDenied, "signature does not verify with the AK"},
      {"signature flipped", [](CertifiedKey& k) { k.signature[k.signature.size() - 3] ^= 0x10; },
       kDenied, "signature does not verify with the AK"},
      {"certify_info trailing byte", [](CertifiedKey& k) { k.certify_info.push_back(0); },
       kInvalid, "TPMS_ATTEST: 1 trailing bytes"},
      {"signature trailing byte", [](CertifiedKey& k) { k.signature.push_back(0); }, kInvalid,
       "TPMT_SIGNATURE: 1 trailing bytes"},
      {"key_public trailing byte", [](CertifiedKey& k) { k.key_public.push_back(0); }, kInvalid,
       "certify: key public area"},
      {"certify_info truncated", [](CertifiedKey& k) { k.certify_info.pop_back(); }, kInvalid,
       "TPMS_ATTEST"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    Live l = Begin();
    CertifiedKey k = l.genuine.certified_keys.at(0);
    row.tamper(k);
    EXPECT_THAT(Deliver(l, k), StatusIs(row.code, row.message));
  }
}

TEST_F(CertifyNegativeTest, MoreThanFourCertifiedKeys) {
  Live l = Begin();
  v1::ChallengeResponse pb = ParsePb<v1::ChallengeResponse>(Reencode(l.genuine));
  ASSERT_EQ(pb.certified_keys_size(), 1);
  while (pb.certified_keys_size() < static_cast<int>(kMaxCertifiedKeys) + 1) {
    *pb.add_certified_keys() = pb.certified_keys(0);
  }
  EXPECT_THAT(l.session->HandleChallengeResponse(Serialize(pb)),
              StatusIs(kInvalid, "field certified_keys has 5 keys, more than the limit of 4"));
  // The encoder refuses to make such a message, too.
  ChallengeResponse five = l.genuine;
  five.certified_keys.resize(5, l.genuine.certified_keys[0]);
  EXPECT_THAT(EncodeResponse(five), StatusIs(kInvalid, "more than the limit of 4"));
  // Exactly four (here the same certification four times) is within the bound.
  Live l4 = Begin();
  pb = ParsePb<v1::ChallengeResponse>(Reencode(l4.genuine));
  while (pb.certified_keys_size() < static_cast<int>(kMaxCertifiedKeys)) {
    *pb.add_certified_keys() = pb.certified_keys(0);
  }
  absl::StatusOr<AttestationResult> r = l4.session->HandleChallengeResponse(Serialize(pb));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->certified_keys.size(), 4u);
}

TEST_F(CertifyNegativeTest, VersionOneResponseCarryingCertifiedKeys) {
  // A certification made in a version-2 session, then a version-1 session whose genuine
  // response gets it added.
  Live v2 = Begin();
  const v1::CertifiedKey ck = ParsePb<v1::ChallengeResponse>(Reencode(v2.genuine)).certified_keys(0);
  std::unique_ptr<AgentResponder> agent = NewAgentV1();
  ASSERT_NE(agent, nullptr);
  std::unique_ptr<ServerSession> s = NewSession();
  ASSERT_OK_AND_ASSIGN(Bytes payload, agent->MakePayload());
  ASSERT_OK_AND_ASSIGN(Bytes challenge, s->HandlePayload(payload));
  ASSERT_OK_AND_ASSIGN(Bytes response, agent->RespondToChallenge(challenge));
  v1::ChallengeResponse pb = ParsePb<v1::ChallengeResponse>(response);
  ASSERT_EQ(pb.version(), 1u);
  *pb.add_certified_keys() = ck;
  EXPECT_THAT(s->HandleChallengeResponse(Serialize(pb)),
              StatusIs(kInvalid, "field certified_keys is set in a version 1 message"));
}

TEST_F(CertifyNegativeTest, ResponseVersionMustBeTheSessionVersion) {
  {
    // Downgrade: a version-2 session answered with a version-1 response (no certified keys).
    Live l = Begin();
    ChallengeResponse r = l.genuine;
    r.version = kProtocolVersion;
    r.certified_keys.clear();
    EXPECT_THAT(l.session->HandleChallengeResponse(Reencode(r)),
                StatusIs(kInvalid, "protocol version 1 in a version 2 session"));
  }
  {
    // A version-1 session answered with version 2.
    std::unique_ptr<AgentResponder> agent = NewAgentV1();
    ASSERT_NE(agent, nullptr);
    std::unique_ptr<ServerSession> s = NewSession();
    ASSERT_OK_AND_ASSIGN(Bytes payload, agent->MakePayload());
    ASSERT_OK_AND_ASSIGN(Bytes challenge, s->HandlePayload(payload));
    ASSERT_OK_AND_ASSIGN(Bytes response, agent->RespondToChallenge(challenge));
    ASSERT_OK_AND_ASSIGN(ChallengeResponse r, DecodeResponse(response));
    r.version = kProtocolVersionCertify;
    EXPECT_THAT(s->HandleChallengeResponse(Reencode(r)),
                StatusIs(kInvalid, "protocol version 2 in a version 1 session"));
  }
}

TEST_F(CertifyNegativeTest, ChallengeVersionAndCertifyNonceRules) {
  std::unique_ptr<AgentResponder> agent = NewAgentV2(dir_.path());
  ASSERT_NE(agent, nullptr);
  // A version-2 challenge without certify_nonce.
  {
    std::unique_ptr<ServerSession> s = NewSession();
    ASSERT_OK_AND_ASSIGN(Bytes payload, agent->MakePayload());
    ASSERT_OK_AND_ASSIGN(Bytes challenge, s->HandlePayload(payload));
    v1::Challenge pb = ParsePb<v1::Challenge>(challenge);
    ASSERT_EQ(pb.version(), 2u);
    ASSERT_EQ(pb.certify_nonce().size(), 32u);
    pb.clear_certify_nonce();
    EXPECT_THAT(agent->RespondToChallenge(Serialize(pb)),
                StatusIs(kInvalid, "field certify_nonce is missing"));
    EXPECT_THAT(DecodeChallenge(Serialize(pb)), StatusIs(kInvalid, "certify_nonce is missing"));
    Challenge c;
    c.version = kProtocolVersionCertify;
    c.credential_blob = {1};
    c.encrypted_secret = {2};
    c.nonce = Bytes(32, 3);
    c.pcr_selection = "sha256:0";
    EXPECT_THAT(EncodeChallenge(c), StatusIs(kInvalid, "certify_nonce is missing"));
  }
  // A version-1 challenge (a server without agent-key binding) to a version-2 payload.
  {
    std::unique_ptr<ServerSession> s = NewSession();
    ASSERT_OK_AND_ASSIGN(Bytes payload, agent->MakePayload());
    ASSERT_OK_AND_ASSIGN(Bytes challenge, s->HandlePayload(payload));
    v1::Challenge pb = ParsePb<v1::Challenge>(challenge);
    pb.set_version(1);
    pb.clear_certify_nonce();
    EXPECT_THAT(agent->RespondToChallenge(Serialize(pb)),
                StatusIs(kInvalid, "protocol version 1 answers a version 2 payload"));
  }
  agent.reset();
  // A version-1 challenge carrying certify_nonce.
  {
    std::unique_ptr<AgentResponder> a1 = NewAgentV1();
    ASSERT_NE(a1, nullptr);
    std::unique_ptr<ServerSession> s = NewSession();
    ASSERT_OK_AND_ASSIGN(Bytes payload, a1->MakePayload());
    ASSERT_OK_AND_ASSIGN(Bytes challenge, s->HandlePayload(payload));
    v1::Challenge pb = ParsePb<v1::Challenge>(challenge);
    ASSERT_EQ(pb.version(), 1u);
    pb.set_certify_nonce(std::string(32, 'n'));
    EXPECT_THAT(a1->RespondToChallenge(Serialize(pb)),
                StatusIs(kInvalid, "field certify_nonce is set in a version 1 message"));
  }
}

}  // namespace
}  // namespace hwid::attestation
