# hwid-svid for a client (curl) on node1: the key is made on a PKCS#11 token (here SoftHSM2) on
# first use; the PIN comes from a file (never from this configuration, never written out).
#   hwid-svid run --config /etc/hwid/svid-client.hcl
agent_address  = "/run/spire/agent/public/api.sock"
server_address = "spire-server.example.org:8081"
trust_domain   = "example.org"
spiffe_id      = "spiffe://example.org/hw/node1/client"

key_type   = "pkcs11"
pkcs11_uri = "pkcs11:token=svid;object=client?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/hwid/svid.pin"

cert_dir              = "/var/lib/hwid/client"
svid_file_name        = "client.pem"
svid_key_file_name    = "client_key.pem"
svid_bundle_file_name = "bundle.pem"
ttl                   = 1800
