# SPIRE server authorization policy for hwid-svid (docs/svid.md), for SPIRE v1.13.x's
# experimental OPA policy engine (Rego v1; SPIRE queries data.spire.result).
#
# 1. SPIRE's default behaviour for every API: policy_data.json "apis" maps each gRPC full method
#    to the callers SPIRE v1.13.3 lets in by default:
#      "any"        anyone (allow)
#      "local"      a caller on the server's local API socket (allow_if_local)
#      "admin"      a caller whose registration entry is an admin, or an admin_ids member
#      "downstream" a caller whose registration entry is downstream
#      "agent"      an attested, non-banned agent
#    SPIRE itself still checks the last four against the caller (socket, entries, datastore).
# 2. One extra rule: the hwid-svid helper of a node may mint X509-SVIDs for that node's
#    workloads. A caller spiffe://TD/<helper_path>/<node> (exactly one path segment after
#    helper_path) may call SVID/MintX509SVID when the CSR in the request
#      - has exactly one URI SAN, spiffe://TD/<workload_path>/<node>/<one or more segments>
#        (the same node; plain segments only, no query, fragment, user or escapes),
#      - has no DNS names, e-mail addresses or IP addresses, and an empty subject (SPIRE copies
#        the CSR's DNS names and subject into the SVID),
#    and the request asks for a TTL of 1 .. max_ttl seconds. A request without a TTL (0: the
#    server's default_x509_svid_ttl) is refused: the policy cannot see the server's default.
#    TD, helper_path, workload_path and max_ttl come from policy_data.json "hwid_svid".
#
# Facts this rests on (SPIRE v1.13.3, OPA v1.9.0, checked against the running server by
# tests/spire/svid_e2e_test.sh):
#   input.caller       the caller's SPIFFE ID from its X509-SVID ("" for local callers)
#   input.full_method  "/spire.api.server.svid.v1.SVID/MintX509SVID"
#   input.req          the request message as Go's encoding/json writes it: "csr" is the DER
#                      CSR in standard base64; "ttl" is absent when 0 (omitempty)
#   crypto.x509.parse_certificate_request(b64) returns Go's x509.CertificateRequest as JSON:
#     "URIs" (each a net/url.URL: "Scheme", "Host", "Path", "RawPath", "User", "Opaque",
#     "RawQuery", "ForceQuery", "Fragment", "RawFragment", "OmitHost"), "DNSNames",
#     "EmailAddresses", "IPAddresses" (null when empty), "Subject" ("Names" null when empty).
#   A CSR that does not parse makes the builtin fail, the rule undefined and the call refused.
package spire

result := {
	"allow": allow,
	"allow_if_admin": allow_if_admin,
	"allow_if_local": allow_if_local,
	"allow_if_downstream": allow_if_downstream,
	"allow_if_agent": allow_if_agent,
}

default allow := false

default allow_if_admin := false

default allow_if_local := false

default allow_if_downstream := false

default allow_if_agent := false

# ---- 1. SPIRE's defaults ----------------------------------------------------------------------

api_allows(kind) if kind in data.apis[input.full_method]

allow if api_allows("any")

allow_if_local if api_allows("local")

allow_if_admin if api_allows("admin")

allow_if_downstream if api_allows("downstream")

allow_if_agent if api_allows("agent")

# ---- 2. hwid-svid helpers mint their own node's workload IDs ---------------------------------

allow if hwid_helper_mint

hwid_helper_mint if {
	input.full_method == "/spire.api.server.svid.v1.SVID/MintX509SVID"
	node := hwid_helper_node
	csr := crypto.x509.parse_certificate_request(input.req.csr)
	hwid_csr_names_ok(csr, node)
	hwid_ttl_ok
}

# hwid_helper_node: <node> of a caller spiffe://TD/<helper_path>/<node>.
hwid_helper_node := node if {
	cfg := data.hwid_svid
	prefix := concat("", ["spiffe://", cfg.trust_domain, "/", cfg.helper_path, "/"])
	startswith(input.caller, prefix)
	node := substring(input.caller, count(prefix), -1)
	hwid_segment(node)
}

# hwid_segment: one SPIFFE ID path segment (letters, digits, ".", "-", "_"; not "." or "..").
hwid_segment(s) if {
	regex.match(`^[A-Za-z0-9._-]+$`, s)
	not s in {".", ".."}
}

hwid_empty(x) if x == null

hwid_empty(x) if count(x) == 0

hwid_csr_names_ok(csr, node) if {
	count(csr.URIs) == 1
	uri := csr.URIs[0]
	uri.Scheme == "spiffe"
	uri.Host == data.hwid_svid.trust_domain
	uri.User == null
	uri.Opaque == ""
	uri.RawPath == ""
	uri.RawQuery == ""
	uri.ForceQuery == false
	uri.Fragment == ""
	uri.RawFragment == ""
	segments := split(uri.Path, "/")
	count(segments) >= 4
	segments[0] == ""
	segments[1] == data.hwid_svid.workload_path
	segments[2] == node
	every s in array.slice(segments, 3, count(segments)) {
		hwid_segment(s)
	}
	hwid_empty(csr.DNSNames)
	hwid_empty(csr.EmailAddresses)
	hwid_empty(csr.IPAddresses)
	hwid_empty(csr.Subject.Names)
}

hwid_ttl_ok if {
	ttl := object.get(input.req, "ttl", 0)
	ttl > 0
	ttl <= data.hwid_svid.max_ttl
}
