#include "svid/helper.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

#include <grpc/support/log.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "pkcs11/pkcs11.h"
#include "pkcs11/uri.h"
#include "pkcs11/uri_pem.h"
#include "spiffe/workload/workload.grpc.pb.h"
#include "spire/api/server/svid/v1/svid.grpc.pb.h"
#include "tpm/tpm.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/keyfile.h"

#ifndef HWID_BUILD_PROVIDER_DIR
#define HWID_BUILD_PROVIDER_DIR ""
#endif

namespace hwid::svid {
namespace {

void Log(const std::string& m) { std::fprintf(stderr, "hwid-svid: %s\n", m.c_str()); }

absl::Status Step(absl::string_view step, const absl::Status& st) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat(step, ": ", st.message()));
}

absl::StatusOr<std::vector<Bytes>> SplitDer(absl::string_view der, absl::string_view what) {
  std::vector<Bytes> out;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* end = p + der.size();
  while (p < end) {
    const unsigned char* start = p;
    OsslPtr<X509> cert(d2i_X509(nullptr, &p, end - p));
    if (cert == nullptr) {
      return OpenSslError(absl::StrCat(what, ": certificate ", out.size() + 1, " is not DER"),
                          absl::StatusCode::kInvalidArgument);
    }
    out.emplace_back(start, p);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no certificate"));
  return out;
}

std::string Pem(const std::vector<Bytes>& certs) {
  std::string out;
  for (const Bytes& der : certs) {
    const unsigned char* p = der.data();
    OsslPtr<X509> c(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509(bio.get(), c.get());
    char* data = nullptr;
    long n = BIO_get_mem_data(bio.get(), &data);
    out.append(data, static_cast<size_t>(n));
  }
  return out;
}

// ---- The SPIRE server's identity check for gRPC TLS ----
class SpiffeIdVerifier : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit SpiffeIdVerifier(std::string want) : want_(std::move(want)) {}
  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)>, grpc::Status* sync_status) override {
    std::vector<grpc::string_ref> uris = request->uri_names();
    if (uris.size() == 1 && std::string(uris[0].data(), uris[0].size()) == want_) {
      *sync_status = grpc::Status::OK;
    } else {
      std::string got;
      for (const auto& u : uris) absl::StrAppend(&got, got.empty() ? "" : ", ", std::string(u.data(), u.size()));
      *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                  absl::StrCat("the server presented SPIFFE ID [", got,
                                               "], expected ", want_));
    }
    return true;
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {}

 private:
  std::string want_;
};

// ---- Hardware keys ----
struct HardwareKey {
  std::string key_ref_pem;   // TSS2 PRIVATE KEY or PKCS#11 PROVIDER URI file
  std::string store_uri;     // what OSSL_STORE opens: the key file path or the pkcs11: URI
  std::string description;
  SecureBytes pin;           // PKCS#11 only: handed to the provider by passphrase callback
};

absl::StatusOr<HardwareKey> EnsureTpmKey(const Config& c) {
  HardwareKey k;
  k.store_uri = c.key_file;
  k.description = absl::StrCat("TPM key file ", c.key_file);
  struct stat st = {};
  if (stat(c.key_file.c_str(), &st) == 0) {
    ASSIGN_OR_RETURN(Bytes pem, ReadFile(c.key_file, 64 << 10));
    absl::StatusOr<wire::TpmKeyFile> kf = wire::ParseTpmKeyFile(pem);
    if (!kf.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "key_file ", c.key_file, " is not a TSS2 PRIVATE KEY: ", kf.status().message()));
    }
    k.key_ref_pem.assign(pem.begin(), pem.end());
    return k;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> tpm, tpm::Tpm::Open(c.tcti));
  ASSIGN_OR_RETURN(wire::TpmKeyFile kf, tpm->CreateKey(c.key_alg));
  kf.description = absl::StrCat("hwid-svid ", c.spiffe_id);
  ASSIGN_OR_RETURN(k.key_ref_pem, wire::EncodeTpmKeyFilePem(kf));
  RETURN_IF_ERROR(WriteFile(c.key_file, AsSpan(k.key_ref_pem), 0600));
  Log(absl::StrCat("made a new ", KeyAlgName(c.key_alg), " key in the TPM: ", c.key_file));
  return k;
}

absl::StatusOr<HardwareKey> EnsurePkcs11Key(const Config& c) {
  ASSIGN_OR_RETURN(pkcs11::Pkcs11Uri uri, pkcs11::ParseUri(c.pkcs11_uri));
  if (!uri.object.has_value() || uri.object->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pkcs11_uri ", uri.redacted, " names no key (add object=<label>)"));
  }
  HardwareKey k;
  if (uri.pin_value.has_value()) {
    k.pin = *uri.pin_value;
  } else if (uri.pin_source.has_value()) {
    ASSIGN_OR_RETURN(k.pin, pkcs11::ReadPinSource(*uri.pin_source));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<pkcs11::Token> token, pkcs11::Token::Open(uri));
  absl::StatusOr<std::shared_ptr<pkcs11::Key>> key = token->FindKey(uri);
  if (absl::IsNotFound(key.status())) {
    key = token->GenerateKey(c.key_alg, *uri.object);
    if (key.ok()) {
      Log(absl::StrCat("made a new ", KeyAlgName(c.key_alg), " key on ", token->Describe(),
                       ": '", *uri.object, "'"));
    }
  }
  RETURN_IF_ERROR(key.status());
  const std::string key_uri = pkcs11::FormatObjectUri(token->fields(), (*key)->label(),
                                                      (*key)->id(), "private",
                                                      uri.module_path.value_or(""));
  ASSIGN_OR_RETURN(k.key_ref_pem, pkcs11::EncodeUriPem(key_uri));
  k.store_uri = key_uri;
  k.description = (*key)->Describe();
  return k;
}

// DiagnoseTpmKey: why the provider could not load a TPM key file. OpenSSL's store reports only
// "unsupported" (the decoders' own errors are popped), so the same load is repeated through
// hwid::tpm, whose errors name the TCTI, the TPM return code and what to check. Returns
// `provider_error` when that load works.
absl::Status DiagnoseTpmKey(const Config& c, const HardwareKey& k,
                            const absl::Status& provider_error) {
  absl::StatusOr<std::unique_ptr<tpm::Tpm>> t = tpm::Tpm::Open(c.tcti);
  if (!t.ok()) return t.status();
  absl::StatusOr<wire::TpmKeyFile> kf = wire::ParseTpmKeyFile(AsSpan(k.key_ref_pem));
  if (!kf.ok()) return kf.status();
  absl::StatusOr<tpm::LoadedKey> loaded = (*t)->LoadKey(*kf);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("key_file ", c.key_file, " does not load in the TPM ",
                                     "(made by another TPM, or the TPM was cleared?): ",
                                     loaded.status().message()));
  }
  return provider_error;
}

// ---- The hwid provider ----
class ProviderContext {
 public:
  static absl::StatusOr<std::unique_ptr<ProviderContext>> New(const Config& c) {
    auto p = std::unique_ptr<ProviderContext>(new ProviderContext());
    p->libctx_ = OSSL_LIB_CTX_new();
    std::string dir = c.provider_dir;
    if (dir.empty()) {
      char self[4096] = {};
      const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
      std::string exe_dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : "";
      exe_dir = exe_dir.substr(0, exe_dir.rfind('/'));
      for (const std::string& d : {absl::StrCat(exe_dir, "/../lib/ossl-modules"),
                                   absl::StrCat(exe_dir, "/../lib/x86_64-linux-gnu/ossl-modules"),
                                   std::string(HWID_BUILD_PROVIDER_DIR)}) {
        if (!d.empty() && access(absl::StrCat(d, "/hwid.so").c_str(), R_OK) == 0) {
          dir = d;
          break;
        }
      }
    }
    if (!dir.empty()) OSSL_PROVIDER_set_default_search_path(p->libctx_, dir.c_str());
    p->default_ = OSSL_PROVIDER_load(p->libctx_, "default");
    p->hwid_ = OSSL_PROVIDER_load(p->libctx_, "hwid");
    if (p->default_ == nullptr || p->hwid_ == nullptr) {
      return OpenSslError(absl::StrCat("loading the hwid OpenSSL provider (hwid.so in ",
                                       dir.empty() ? "OpenSSL's module directory" : dir,
                                       "; set provider_dir)"),
                          absl::StatusCode::kFailedPrecondition);
    }
    return p;
  }
  ~ProviderContext() {
    if (hwid_ != nullptr) OSSL_PROVIDER_unload(hwid_);
    if (default_ != nullptr) OSSL_PROVIDER_unload(default_);
    OSSL_LIB_CTX_free(libctx_);
  }
  OSSL_LIB_CTX* libctx() const { return libctx_; }

  // LoadKey opens the key through OSSL_STORE, as nginx or openssl would.
  absl::StatusOr<OsslPtr<EVP_PKEY>> LoadKey(const HardwareKey& k) {
    UI_METHOD* ui = UI_UTIL_wrap_read_pem_callback(
        [](char* buf, int size, int, void* u) -> int {
          const SecureBytes* pin = static_cast<const SecureBytes*>(u);
          if (pin == nullptr || pin->empty() || static_cast<int>(pin->size()) > size) return -1;
          std::memcpy(buf, pin->data(), pin->size());
          return static_cast<int>(pin->size());
        },
        0);
    OSSL_STORE_CTX* store = OSSL_STORE_open_ex(k.store_uri.c_str(), libctx_, nullptr, ui,
                                               const_cast<SecureBytes*>(&k.pin), nullptr, nullptr,
                                               nullptr);
    OsslPtr<EVP_PKEY> key;
    if (store != nullptr) {
      OSSL_STORE_expect(store, OSSL_STORE_INFO_PKEY);
      while (key == nullptr && !OSSL_STORE_eof(store)) {
        OSSL_STORE_INFO* info = OSSL_STORE_load(store);
        if (info == nullptr) break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) {
          key.reset(OSSL_STORE_INFO_get1_PKEY(info));
        }
        OSSL_STORE_INFO_free(info);
      }
      OSSL_STORE_close(store);
    }
    UI_destroy_method(ui);
    if (key == nullptr) {
      return OpenSslError(absl::StrCat("loading ", k.description, " through the hwid provider"),
                          absl::StatusCode::kUnavailable);
    }
    return key;
  }

 private:
  ProviderContext() = default;
  OSSL_LIB_CTX* libctx_ = nullptr;
  OSSL_PROVIDER* default_ = nullptr;
  OSSL_PROVIDER* hwid_ = nullptr;
};

// MakeCsr: PKCS#10 with an empty subject and exactly one URI SAN, signed by `key` (in the
// hardware, through the provider).
absl::StatusOr<Bytes> MakeCsr(OSSL_LIB_CTX* libctx, EVP_PKEY* key, const std::string& id) {
  OsslPtr<X509_REQ> req(X509_REQ_new_ex(libctx, nullptr));
  if (req == nullptr || X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key) != 1) {
    return OpenSslError("building the CSR");
  }
  GENERAL_NAMES* names = GENERAL_NAMES_new();
  GENERAL_NAME* uri = GENERAL_NAME_new();
  ASN1_IA5STRING* s = ASN1_IA5STRING_new();
  ASN1_STRING_set(s, id.data(), static_cast<int>(id.size()));
  GENERAL_NAME_set0_value(uri, GEN_URI, s);
  sk_GENERAL_NAME_push(names, uri);
  X509_EXTENSION* ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, names);
  GENERAL_NAMES_free(names);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  sk_X509_EXTENSION_push(exts, ext);
  const int added = X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  if (added != 1) return OpenSslError("adding the URI SAN to the CSR");
  const bool p384 = EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 384;
  OsslPtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  if (EVP_DigestSignInit_ex(mctx.get(), nullptr, p384 ? "SHA384" : "SHA256", libctx, nullptr, key,
                            nullptr) != 1 ||
      X509_REQ_sign_ctx(req.get(), mctx.get()) <= 0) {
    return OpenSslError("signing the CSR with the hardware key", absl::StatusCode::kUnavailable);
  }
  unsigned char* der = nullptr;
  const int n = i2d_X509_REQ(req.get(), &der);
  if (n <= 0) return OpenSslError("encoding the CSR");
  Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

class GrpcMintClient : public MintClient {
 public:
  GrpcMintClient(const Config& c, std::string self_id,
                 std::unique_ptr<spire::api::server::svid::v1::SVID::Stub> stub)
      : server_address_(c.server_address), self_id_(std::move(self_id)), stub_(std::move(stub)) {}

  absl::StatusOr<std::vector<Bytes>> MintX509Svid(const Bytes& csr, int64_t ttl) override {
    spire::api::server::svid::v1::MintX509SVIDRequest req;
    req.set_csr(csr.data(), csr.size());
    req.set_ttl(static_cast<int32_t>(ttl));
    spire::api::server::svid::v1::MintX509SVIDResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status st = stub_->MintX509SVID(&ctx, req, &resp);
    if (!st.ok()) {
      std::string hint;
      if (st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
        hint = absl::StrCat(" (the server's policy refused this request from ", self_id_,
                            ": see docs/svid.md for the policy)");
      } else if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
        hint = absl::StrCat(" (is the SPIRE server at ", server_address_,
                            " up, and is it the one whose bundle the agent gave us?)");
      }
      const auto code = static_cast<absl::StatusCode>(st.error_code());
      return absl::Status(code, absl::StrCat("MintX509SVID at ", server_address_, ": ",
                                             absl::StatusCodeToString(code), ": ",
                                             st.error_message(), hint));
    }
    std::vector<Bytes> chain;
    for (const std::string& der : resp.svid().cert_chain()) {
      chain.emplace_back(der.begin(), der.end());
    }
    if (chain.empty()) return absl::InternalError("MintX509SVID returned no certificate");
    return chain;
  }

 private:
  std::string server_address_;
  std::string self_id_;
  std::unique_ptr<spire::api::server::svid::v1::SVID::Stub> stub_;
};

// CheckMinted: the chain verifies against the bundle, the leaf has exactly the requested URI
// SAN and the hardware key's public key.
absl::Status CheckMinted(const Config& c, const std::vector<Bytes>& chain,
                         const std::vector<Bytes>& bundle, const Bytes& hardware_spki,
                         MintResult* out) {
  ASSIGN_OR_RETURN(OsslPtr<X509> leaf, wire::ParseCertificateDer(chain[0]));
  ASSIGN_OR_RETURN(Bytes leaf_spki, wire::PublicKeyDer(X509_get0_pubkey(leaf.get())));
  if (leaf_spki != hardware_spki) {
    return absl::InternalError("the minted SVID's public key is not the hardware key's");
  }
  OsslPtr<GENERAL_NAMES> sans(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(leaf.get(), NID_subject_alt_name, nullptr, nullptr)));
  int uris = 0;
  bool match = false;
  for (int i = 0; sans != nullptr && i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
    if (gn->type == GEN_URI) {
      ++uris;
      const ASN1_IA5STRING* s = gn->d.uniformResourceIdentifier;
      match = std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                          ASN1_STRING_length(s)) == c.spiffe_id;
    }
  }
  if (uris != 1 || !match) {
    return absl::InternalError(absl::StrCat("the minted SVID does not carry exactly ", c.spiffe_id));
  }
  OsslPtr<X509_STORE> store(X509_STORE_new());
  for (const Bytes& der : bundle) {
    ASSIGN_OR_RETURN(OsslPtr<X509> ca, wire::ParseCertificateDer(der));
    X509_STORE_add_cert(store.get(), ca.get());
  }
  OsslPtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    ASSIGN_OR_RETURN(OsslPtr<X509> ic, wire::ParseCertificateDer(chain[i]));
    sk_X509_push(untrusted.get(), ic.release());
  }
  OsslPtr<X509_STORE_CTX> vctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(vctx.get(), store.get(), leaf.get(), untrusted.get());
  if (X509_verify_cert(vctx.get()) != 1) {
    return absl::InternalError(absl::StrCat(
        "the minted SVID does not chain to the trust bundle: ",
        X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx.get()))));
  }
  struct tm tm = {};
  ASN1_TIME_to_tm(X509_get0_notBefore(leaf.get()), &tm);
  out->not_before = absl::FromTM(tm, absl::UTCTimeZone());
  ASN1_TIME_to_tm(X509_get0_notAfter(leaf.get()), &tm);
  out->not_after = absl::FromTM(tm, absl::UTCTimeZone());
  return absl::OkStatus();
}

std::atomic<bool> g_stop{false};

}  // namespace

absl::StatusOr<WorkloadSvid> FetchWorkloadSvid(const std::string& socket_path,
                                               absl::Duration timeout) {
  auto channel = grpc::CreateChannel("unix:" + socket_path, grpc::InsecureChannelCredentials());
  auto stub = SpiffeWorkloadAPI::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata("workload.spiffe.io", "true");
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  std::unique_ptr<grpc::ClientReader<X509SVIDResponse>> reader =
      stub->FetchX509SVID(&ctx, X509SVIDRequest());
  X509SVIDResponse resp;
  if (!reader->Read(&resp)) {
    grpc::Status st = reader->Finish();
    std::string hint = st.error_code() == grpc::StatusCode::PERMISSION_DENIED
                           ? " (no registration entry matches this process: see docs/svid.md)"
                           : absl::StrCat(" (is the SPIRE agent running with its Workload API at ",
                                          socket_path, "?)");
    const auto code = static_cast<absl::StatusCode>(st.error_code());
    return absl::Status(code, absl::StrCat("Workload API at ", socket_path, ": ",
                                           absl::StatusCodeToString(code), ": ",
                                           st.error_message(), hint));
  }
  ctx.TryCancel();
  reader->Finish();  // CANCELLED: we asked for one response only
  if (resp.svids_size() == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("Workload API at ", socket_path, " gave this process no X509-SVID"));
  }
  const X509SVID& s = resp.svids(0);
  WorkloadSvid out;
  out.spiffe_id = s.spiffe_id();
  ASSIGN_OR_RETURN(out.chain, SplitDer(s.x509_svid(), "Workload API x509_svid"));
  ASSIGN_OR_RETURN(out.bundle, SplitDer(s.bundle(), "Workload API bundle"));
  out.key_pkcs8.assign(s.x509_svid_key().begin(), s.x509_svid_key().end());
  std::string* key = resp.mutable_svids(0)->mutable_x509_svid_key();
  OPENSSL_cleanse(key->data(), key->size());
  return out;
}

void QuietGrpcLogs() {
  if (std::getenv("HWID_SVID_DEBUG") != nullptr) return;
  gpr_set_log_function([](gpr_log_func_args*) {});
}

absl::StatusOr<std::unique_ptr<MintClient>> MintClient::New(const Config& c,
                                                            const WorkloadSvid& self) {
  std::string key_pem;
  {
    const unsigned char* p = self.key_pkcs8.data();
    OsslPtr<EVP_PKEY> k(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(self.key_pkcs8.size())));
    if (k == nullptr) {
      return OpenSslError("the helper's own SVID key from the Workload API",
                          absl::StatusCode::kInvalidArgument);
    }
    OsslPtr<BIO> bio(BIO_new(BIO_s_secmem()));
    PEM_write_bio_PrivateKey(bio.get(), k.get(), nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio.get(), &data);
    key_pem.assign(data, static_cast<size_t>(n));
  }
  auto provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
      Pem(self.bundle), std::vector<grpc::experimental::IdentityKeyCertPair>{
                            {key_pem, Pem(self.chain)}});
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  grpc::experimental::TlsChannelCredentialsOptions opts;
  opts.set_certificate_provider(provider);
  opts.watch_root_certs();
  opts.watch_identity_key_cert_pairs();
  opts.set_verify_server_certs(true);
  opts.set_check_call_host(false);  // the server is identified by its SPIFFE ID, not a host name
  opts.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<SpiffeIdVerifier>(c.server_spiffe_id));
  auto channel = grpc::CreateChannel(c.server_address, grpc::experimental::TlsCredentials(opts));
  return std::unique_ptr<MintClient>(new GrpcMintClient(
      c, self.spiffe_id, spire::api::server::svid::v1::SVID::NewStub(channel)));
}

absl::StatusOr<MintResult> MintOnce(const Config& c) {
  if (!c.tcti.empty()) setenv("HWID_TCTI", c.tcti.c_str(), 1);
  // 1. Our own identity.
  absl::StatusOr<WorkloadSvid> self = FetchWorkloadSvid(c.agent_address);
  RETURN_IF_ERROR(Step("fetching the helper's own SVID", self.status()));
  // 2. The hardware key.
  absl::StatusOr<HardwareKey> hk = c.key_type == "tpm" ? EnsureTpmKey(c) : EnsurePkcs11Key(c);
  RETURN_IF_ERROR(Step("preparing the hardware key", hk.status()));
  // 3. The CSR, signed in the hardware through the hwid provider.
  ASSIGN_OR_RETURN(std::unique_ptr<ProviderContext> prov, ProviderContext::New(c));
  absl::StatusOr<OsslPtr<EVP_PKEY>> key = prov->LoadKey(*hk);
  if (!key.ok() && c.key_type == "tpm") key = DiagnoseTpmKey(c, *hk, key.status());
  RETURN_IF_ERROR(Step("loading the hardware key", key.status()));
  absl::StatusOr<Bytes> csr = MakeCsr(prov->libctx(), key->get(), c.spiffe_id);
  RETURN_IF_ERROR(Step(absl::StrCat("signing the CSR with ", hk->description), csr.status()));
  ASSIGN_OR_RETURN(Bytes spki, wire::PublicKeyDer(key->get()));
  // 4. The SVID from the SPIRE server.
  absl::StatusOr<std::unique_ptr<MintClient>> client = MintClient::New(c, *self);
  RETURN_IF_ERROR(Step("minting the SVID", client.status()));
  absl::StatusOr<std::vector<Bytes>> chain = (*client)->MintX509Svid(*csr, c.ttl);
  RETURN_IF_ERROR(Step(absl::StrCat("minting ", c.spiffe_id), chain.status()));
  // 5. Check it, then write the files (the key reference first: a reload never sees a new
  //    certificate with an old key).
  MintResult out;
  out.spiffe_id = c.spiffe_id;
  out.key_description = hk->description;
  RETURN_IF_ERROR(Step("checking the minted SVID", CheckMinted(c, *chain, self->bundle, spki, &out)));
  if (mkdir(c.cert_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cert_dir ", c.cert_dir, " cannot be created: ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(WriteFile(absl::StrCat(c.cert_dir, "/", c.svid_key_file_name),
                            AsSpan(hk->key_ref_pem), 0600));
  RETURN_IF_ERROR(WriteFile(absl::StrCat(c.cert_dir, "/", c.svid_file_name),
                            AsSpan(Pem(*chain)), 0644));
  RETURN_IF_ERROR(WriteFile(absl::StrCat(c.cert_dir, "/", c.svid_bundle_file_name),
                            AsSpan(Pem(self->bundle)), 0644));
  return out;
}

namespace {

absl::Status SignalPidFile(const Config& c) {
  absl::StatusOr<Bytes> b = ReadFile(c.pid_file_name, 64);
  if (!b.ok()) return b.status();
  int pid = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(
                            reinterpret_cast<const char*>(b->data()), b->size())),
                        &pid) ||
      pid <= 1) {
    return absl::FailedPreconditionError(absl::StrCat("pid_file_name ", c.pid_file_name,
                                                      " holds no process id"));
  }
  if (kill(pid, c.renew_signal) != 0) {
    return absl::UnavailableError(
        absl::StrCat("signalling pid ", pid, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// StartCmd forks and execs `cmd`. Everything the child needs is prepared before fork(): the
// process has gRPC threads, so the child may only make async-signal-safe calls until execv.
// Returns the child's pid, or -1 (errno set) when fork fails.
pid_t StartCmd(const Config& c) {
  std::vector<std::string> args = {c.cmd};
  args.insert(args.end(), c.cmd_args.begin(), c.cmd_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string failed = absl::StrCat("hwid-svid: cannot run ", c.cmd, "\n");
  sigset_t none;
  sigemptyset(&none);
  const pid_t pid = fork();
  if (pid == 0) {
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    (void)!write(STDERR_FILENO, failed.data(), failed.size());
    _exit(127);
  }
  return pid;
}

// SleepUnlessStopped sleeps in short steps so SIGTERM ends it; false when asked to stop.
bool SleepUnlessStopped(absl::Duration d) {
  const absl::Time end = absl::Now() + d;
  while (!g_stop.load()) {
    const absl::Duration left = end - absl::Now();
    if (left <= absl::ZeroDuration()) return true;
    absl::SleepFor(std::min(left, absl::Milliseconds(100)));
  }
  return false;
}

}  // namespace

int Run(const Config& c) {
  struct sigaction sa = {};
  sa.sa_handler = [](int) { g_stop.store(true); };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  pid_t child = 0;
  absl::Duration backoff = absl::Seconds(1);
  while (!g_stop.load()) {
    absl::StatusOr<MintResult> r = MintOnce(c);
    if (!r.ok()) {
      Log(absl::StrCat(r.status().message(), "; retrying in ", absl::FormatDuration(backoff)));
      if (!SleepUnlessStopped(backoff)) break;
      backoff = std::min(backoff * 2, absl::Seconds(60));
      continue;
    }
    backoff = absl::Seconds(1);
    const absl::Time renew = r->not_before + (r->not_after - r->not_before) / 2;
    Log(absl::StrCat("wrote ", r->spiffe_id, " (key: ", r->key_description, ", expires ",
                     absl::FormatTime(r->not_after), ", renewing at ", absl::FormatTime(renew),
                     ")"));
    if (!c.cmd.empty() && child == 0) {
      child = StartCmd(c);
      if (child < 0) {
        Log(absl::StrCat("cannot start ", c.cmd, ": fork: ", std::strerror(errno),
                         "; trying again at the next renewal"));
        child = 0;
      } else {
        Log(absl::StrCat("started ", c.cmd, " (pid ", child, ")"));
      }
    } else if (c.renew_signal != 0) {
      if (child > 0 && kill(child, c.renew_signal) != 0) {
        Log(absl::StrCat("signalling ", c.cmd, ": ", std::strerror(errno)));
      }
      if (!c.pid_file_name.empty()) {
        absl::Status st = SignalPidFile(c);
        if (!st.ok()) Log(absl::StrCat("reload: ", st.message()));
      }
    }
    if (child > 0) {
      int status = 0;
      if (waitpid(child, &status, WNOHANG) == child) {
        Log(absl::StrCat(c.cmd, " exited (status ", status, ")"));
        child = 0;
      }
    }
    if (!SleepUnlessStopped(std::max(renew - absl::Now(), absl::Seconds(1)))) break;
  }
  if (child > 0) {
    kill(child, SIGTERM);
    waitpid(child, nullptr, 0);
  }
  return 0;
}

}  // namespace hwid::svid
