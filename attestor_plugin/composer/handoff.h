// The hand-off between the hwid_tpm server node attestor and the hwid_tpm CredentialComposer:
// "agent A's TPM certified key K moments ago". Both are plugins of the same spire-server, but
// separate processes, and SPIRE signs the agent SVID inside the same AttestAgent RPC, on the same
// server, right after the node attestor answers (pkg/server/api/agent/v1/service.go:
// attestChallengeResponse, then signSvid -> CredentialComposer.ComposeAgentX509SVID). So the
// hand-off is local and short-lived: one small file per (agent ID, key) in a private directory.
//
//   name    = lowercase hex SHA-256( agent SPIFFE ID || 0x00 || key SubjectPublicKeyInfo DER )
//   content = "hwid-certified-key 1\n<agent id>\n<hex SHA-256 of the SPKI>\n<expiry unix s>\n"
//
// Safety: the directory must be owned by this process's user with no group/other access (0700;
// checked on every use, created so when missing), files are 0600 and written atomically, so an
// unprivileged local user can neither read nor forge a record. Bounded: a record lives `ttl`
// (default 60 s; the two RPC steps are milliseconds apart) and every Record() prunes expired
// ones; at most kMaxRecords live records (beyond that Record fails with RESOURCE_EXHAUSTED and
// the attestation is refused rather than the directory growing). Concurrency: names are unique
// per (agent, key); concurrent attestations of different agents never touch the same file, and
// two of the same agent write the same content.
#ifndef HWID_ATTESTOR_PLUGIN_COMPOSER_HANDOFF_H_
#define HWID_ATTESTOR_PLUGIN_COMPOSER_HANDOFF_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/bytes.h"

namespace hwid::composer {

inline constexpr size_t kMaxRecords = 100000;
inline constexpr absl::Duration kDefaultTtl = absl::Seconds(60);

// CheckHandoffDir creates `dir` (0700) when missing and verifies it: a directory, owned by the
// effective user, no group or other permission bits. FAILED_PRECONDITION naming what is wrong.
absl::Status CheckHandoffDir(const std::string& dir);

// RecordCertifiedKey writes the record for (agent_id, pkix_der), valid until now + ttl, and
// prunes expired records.
absl::Status RecordCertifiedKey(const std::string& dir, absl::string_view agent_id,
                                ByteSpan pkix_der, absl::Duration ttl = kDefaultTtl,
                                absl::Time now = absl::Now());

// CheckCertifiedKey: OK when a valid, unexpired record for (agent_id, pkix_der) exists;
// PERMISSION_DENIED naming the agent, the key hash and the reason otherwise.
absl::Status CheckCertifiedKey(const std::string& dir, absl::string_view agent_id,
                               ByteSpan pkix_der, absl::Time now = absl::Now());

}  // namespace hwid::composer

#endif  // HWID_ATTESTOR_PLUGIN_COMPOSER_HANDOFF_H_
