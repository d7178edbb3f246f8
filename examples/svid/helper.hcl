# hwid-svid for nginx on node1: the key is made in the TPM on first use and stays there;
# the SVID is renewed at half of its lifetime and nginx reloads it (SIGHUP via its pid file).
#   hwid-svid run --config /etc/hwid/svid-web.hcl      (as the uid of the helper's entry)
# Server side: examples/svid/policy.rego + policy_data.json; see docs/svid.md.
agent_address  = "/run/spire/agent/public/api.sock"
server_address = "spire-server.example.org:8081"
trust_domain   = "example.org"
spiffe_id      = "spiffe://example.org/hw/node1/web"

key_type = "tpm"
key_file = "/var/lib/hwid/svid/web.tss2.pem"
tcti     = "device:/dev/tpmrm0"
key_alg  = "ec-p256"

cert_dir = "/etc/nginx/svid"   # svid.pem, svid_key.pem (key reference), svid_bundle.pem
ttl      = 3600                # 1 .. policy_data.json max_ttl; 0 is refused by the policy

renew_signal  = "SIGHUP"
pid_file_name = "/run/nginx.pid"
