// hwid-svid configuration (HCL, strict; keys named after spiffe-helper's where they mean the same).
//
//   agent_address         = "/run/spire/agent/public/api.sock"   Workload API socket (required)
//   server_address        = "spire-server.example:8081"          SPIRE server (required)
//   trust_domain          = "example.org"                        (required)
//   spiffe_id             = "spiffe://example.org/hw/node-1/web" ID to mint (required)
//   server_spiffe_id      = "spiffe://example.org/spire/server"  (default)
//   key_type              = "tpm" | "pkcs11"                     (required)
//   key_file              = "/var/lib/hwid/web.tss2.pem"         tpm: made in the TPM if absent
//   tcti                  = "device:/dev/tpmrm0"                 tpm (default $HWID_TCTI)
//   pkcs11_uri            = "pkcs11:token=T;object=web?module-path=...&pin-source=/etc/pin"
//                                                                pkcs11: made on the token if absent
//   key_alg               = "ec-p256"                            for new keys
//   cert_dir              = "/etc/nginx/svid"                    output directory (required)
//   svid_file_name        = "svid.pem"                           certificate chain, leaf first
//   svid_key_file_name    = "svid_key.pem"                       key reference (never a private key)
//   svid_bundle_file_name = "svid_bundle.pem"                    trust bundle
//   ttl                   = 3600                                 seconds; 0 = the server's default
//   cmd, cmd_args         = "/usr/sbin/nginx", "-g 'daemon off;'" started after the first SVID
//   renew_signal          = "SIGHUP"                             sent on renewal to cmd or pid file
//   pid_file_name         = "/run/nginx.pid"
//   provider_dir          = "/usr/local/lib/ossl-modules"        where hwid.so is (default: beside)
#ifndef HWID_SVID_CONFIG_H_
#define HWID_SVID_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/key_alg.h"

namespace hwid::svid {

struct Config {
  std::string agent_address;
  std::string server_address;
  std::string trust_domain;
  std::string spiffe_id;
  std::string server_spiffe_id;
  std::string key_type;
  std::string key_file;
  std::string tcti;
  std::string pkcs11_uri;
  KeyAlg key_alg = KeyAlg::kEcP256;
  std::string cert_dir;
  std::string svid_file_name = "svid.pem";
  std::string svid_key_file_name = "svid_key.pem";
  std::string svid_bundle_file_name = "svid_bundle.pem";
  int64_t ttl = 0;
  std::string cmd;
  std::vector<std::string> cmd_args;
  int renew_signal = 0;  // 0 = none
  std::string pid_file_name;
  std::string provider_dir;
};

// ParseConfig: INVALID_ARGUMENT "config: ..." naming the key for anything wrong: HCL syntax,
// unknown or duplicate key, wrong type, missing required key, ttl outside 0..365 days, an
// agent_address that is not a unix socket path, a trust_domain or spiffe_id /
// server_spiffe_id that is not a SPIFFE name in that trust domain, key_type other than "tpm" /
// "pkcs11", a key of the other key_type, a relative key_file, a pkcs11_uri that does not parse
// or names no object, an unknown key_alg, relative cert_dir / cmd / pid_file_name /
// provider_dir, output file names that are not plain names or not distinct, cmd_args without cmd
// or with an unterminated quote, an unknown renew_signal, renew_signal with nobody to signal,
// pid_file_name without renew_signal.
absl::StatusOr<Config> ParseConfig(absl::string_view hcl);

}  // namespace hwid::svid

#endif  // HWID_SVID_CONFIG_H_
