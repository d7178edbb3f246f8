// hwid-svid: SPIRE-issued X509-SVIDs whose private keys are made and kept in a TPM or on a
// PKCS#11 token. SPIRE's Workload API takes no CSR, so the helper goes around it:
//   1. it gets its own (software) X509-SVID from the local agent's Workload API;
//   2. it makes the workload key in hardware if it is not there yet;
//   3. it signs a CSR with exactly one URI SAN (the configured SPIFFE ID) with that key, through
//      the hwid OpenSSL provider;
//   4. it calls spire.api.server.svid.v1.SVID/MintX509SVID over mutual TLS (its own SVID as the
//      client certificate; the server verified against the trust bundle and its SPIFFE ID),
//      authorised by SPIRE's policy engine (docs/svid.md);
//   5. it checks the answer (chain to the bundle, the URI SAN, the hardware key's public key) and
//      writes the chain, the bundle and the key *reference* (TSS2 PRIVATE KEY or PKCS#11
//      PROVIDER URI file) atomically.
#ifndef HWID_SVID_HELPER_H_
#define HWID_SVID_HELPER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/bytes.h"
#include "svid/config.h"

namespace hwid::svid {

// WorkloadSvid: the helper's own identity from the Workload API.
struct WorkloadSvid {
  std::string spiffe_id;
  std::vector<Bytes> chain;  // DER, leaf first
  SecureBytes key_pkcs8;     // DER
  std::vector<Bytes> bundle;  // DER CA certificates
};

// FetchWorkloadSvid reads the first X509SVIDResponse of the Workload API at `socket_path`.
// UNAVAILABLE naming the socket when the agent does not answer; PERMISSION_DENIED when the
// agent has no identity for this process (no registration entry matches).
absl::StatusOr<WorkloadSvid> FetchWorkloadSvid(const std::string& socket_path,
                                               absl::Duration timeout = absl::Seconds(10));

// MintClient: a mutual-TLS channel to the SPIRE server at config.server_address, with `self` as
// the client certificate; the server must chain to self.bundle and present
// config.server_spiffe_id. One channel serves any number of mints.
class MintClient {
 public:
  // New: INVALID_ARGUMENT when `self` holds no usable key or chain.
  static absl::StatusOr<std::unique_ptr<MintClient>> New(const Config& config,
                                                         const WorkloadSvid& self);
  virtual ~MintClient() = default;
  // MintX509Svid calls SVID/MintX509SVID with the DER `csr` and `ttl_seconds` (0 = the server's
  // default) and returns the chain (DER, leaf first). The gRPC code is kept (PERMISSION_DENIED
  // when the server's policy refuses, UNAVAILABLE when the server cannot be reached); the message
  // names the server and what to check.
  virtual absl::StatusOr<std::vector<Bytes>> MintX509Svid(const Bytes& csr,
                                                          int64_t ttl_seconds) = 0;
};

// QuietGrpcLogs: gRPC's own log lines (e.g. "Handshake failed" on stderr) are dropped unless
// HWID_SVID_DEBUG is set; every failure still reaches the caller as a Status.
void QuietGrpcLogs();

// MintResult: what one mint wrote.
struct MintResult {
  std::string spiffe_id;
  absl::Time not_before;
  absl::Time not_after;
  std::string key_description;  // "TPM key file ..." / "PKCS#11 key 'web' on token 'T'"
};

// MintOnce runs steps 1-5. Errors name the step, the object and what to check.
absl::StatusOr<MintResult> MintOnce(const Config& config);

// Run mints, starts `cmd` after the first success, then renews at half of each SVID's lifetime
// (signalling `cmd` or the pid file), retrying failures with exponential backoff (1 s .. 60 s),
// until SIGTERM or SIGINT (exit status 0).
int Run(const Config& config);

}  // namespace hwid::svid

#endif  // HWID_SVID_HELPER_H_
