#!/usr/bin/env bash
# hwid KeyManager plugins end to end with a REAL SPIRE v1.13.3 server and agent, a real swtpm
# and a real SoftHSM2 token:
#   agent (KeyManager "hwid", backend tpm; NodeAttestor hwid_tpm):
#     1. attestation: key_dir holds agent-svid-A.tss2.pem (a TSS2 PRIVATE KEY, no plaintext key
#        anywhere), the agent SVID's public key is that key's, and the TPM signs with it;
#     2. restart: the agent loads its SVID (no new node attestation) and still serves workloads;
#     3. rotation (agent_ttl 40s): agent-svid-B.tss2.pem appears and the new SVID uses it;
#     4. kill -9 during a rotation, restart: the agent comes back and serves workloads;
#   server (KeyManager "hwid"):
#     5. backend pkcs11: the bundle's X.509 CA public key is the token key <prefix>/x509-CA-A
#        (read with pkcs11-tool), which is sensitive and never extractable;
#     6. restart: same bundle, same token objects, no new CA key; new workload SVIDs chain to it;
#     7. the same (5, 6) with backend tpm (key files in the server's key_dir).
# usage: keymanager_e2e_test.sh SERVER_NODEATTESTOR AGENT_NODEATTESTOR KM_AGENT KM_SERVER HWID_CLI
# SPIRE binaries: $HWID_SPIRE_BIN, else built/cached by tests/spire/build-spire.
# Needs swtpm (swtpm-setup/), softhsm2 and opensc (pkcs11-tool). Missing SPIRE or tools fail
# when CI=true, else skip (exit 77).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"
usage="usage: $0 SERVER_NODEATTESTOR AGENT_NODEATTESTOR KM_AGENT KM_SERVER HWID_CLI"
server_na=$(readlink -f "${1:?$usage}")
agent_na=$(readlink -f "${2:?$usage}")
km_agent=$(readlink -f "${3:?$usage}")
km_server=$(readlink -f "${4:?$usage}")
hwid_cli=$(readlink -f "${5:?$usage}")

softhsm_module=${HWID_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
for tool in softhsm2-util pkcs11-tool openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || skip_or_fail "$tool not found (apt-get install softhsm2 opensc)"
done
[[ -f $softhsm_module ]] || skip_or_fail "no SoftHSM2 module at $softhsm_module"

find_spire

work=$(mktemp -d /tmp/hwid-km-e2e.XXXXXX)
server_pid="" agent_pid=""
cleanup_pids=(agent_pid server_pid) cleanup_tpms=(tpm1) cleanup_show_tails=1
cleanup_logs=(server.log server.out agent.log agent.out)
trap spire_cleanup EXIT
count() { grep -c -- "$1" 2>/dev/null || true; }  # count PATTERN < input: 0 when none

# ---- devices: one swtpm (agent keys, AK/EK, and later the server's keys: the TPM is shared)
# and one SoftHSM2 token in a private SOFTHSM2_CONF (inherited by spire-server and its plugins).
"$root/swtpm-setup/swtpm-up" "$work/tpm1" >/dev/null
# shellcheck disable=SC1091
tcti=$(. "$work/tpm1/env"; echo "$HWID_TCTI")
trusted_ca=$(. "$work/tpm1/env"; echo "$HWID_EK_CA")
softhsm_token spire
token_uri="pkcs11:token=spire?module-path=$softhsm_module&pin-value=1234"
p11() { pkcs11-tool --module "$softhsm_module" --token-label spire --login --pin 1234 "$@" 2>/dev/null; }
# token_pub LABEL: the public key object's hash, read independently of hwid with pkcs11-tool.
token_pub() {
  rm -f "$work/tok-pub.der"
  p11 --read-object --type pubkey --label "$1" -o "$work/tok-pub.der" >/dev/null &&
    openssl pkey -pubin -inform DER -in "$work/tok-pub.der" -outform DER | sha256sum | cut -c1-64
}

port=$(free_port)
sock="$work/server-api.sock"
# write_server_conf DATA_DIR AGENT_TTL KEYMANAGER_PLUGIN_DATA
write_server_conf() {
  mkdir -p "$1"
  cat >"$work/server.conf" <<CONF
$(server_block "$1" "agent_ttl = \"$2\"")
plugins {
$(sql_datastore "$1")
  KeyManager "hwid" {
    plugin_cmd = "$km_server"
    plugin_data {
$3
    }
  }
$(hwid_tpm_server_plugin "$trusted_ca")
}
CONF
}
# bundle_pub FILE: the bundle has exactly one X.509 authority; prints its public key hash.
bundle_pub() {
  local n
  n=$(grep -c 'BEGIN CERTIFICATE' "$1")
  [[ $n == 1 ]] || fail "expected one X.509 authority in the bundle, got $n"
  pub_of_cert "$1"
}

# write_agent_conf DATA_DIR KEY_DIR
write_agent_conf() {
  mkdir -p "$1"
  cat >"$work/agent.conf" <<CONF
$(agent_block agent "$1")
plugins {
$(hwid_tpm_agent_plugin "$tcti")
  KeyManager "hwid" {
    plugin_cmd = "$km_agent"
    plugin_data {
      backend = "tpm"
      tcti = "$tcti"
      key_dir = "$2"
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
CONF
}
start_agent() {
  "$bin/spire-agent" run -config "$work/agent.conf" >>"$work/agent.out" 2>&1 &
  agent_pid=$!
  wait_for "${1:-90}" "spire-agent healthy" "$bin/spire-agent" healthcheck -socketPath "$work/agent-api.sock"
}
stop_agent() { kill "${1:--TERM}" "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; agent_pid=""; }
svid_dir=$work/svid
# fetch_svid ID: the workload API hands out an X509-SVID for ID; its file goes to $work/got.pem.
fetch_svid() {
  rm -rf "$svid_dir" && mkdir -p "$svid_dir"
  "$bin/spire-agent" api fetch x509 -socketPath "$work/agent-api.sock" -write "$svid_dir" >/dev/null 2>&1 || return 1
  local f
  for f in "$svid_dir"/svid.*.pem; do
    if openssl x509 -in "$f" -noout -ext subjectAltName 2>/dev/null | grep -q "URI:$1\$"; then
      cp "$f" "$work/got.pem"
      return 0
    fi
  done
  return 1
}
# verify_svid ID BUNDLE: $work/got.pem (ID's SVID) chains to BUNDLE.
verify_svid() {
  openssl verify -CAfile "$2" "$work/got.pem" >/dev/null || fail "the SVID of $1 does not chain to $2"
}
agent_id_of() { "$bin/spire-server" agent list -socketPath "$sock" | sed -n 's/.*SPIFFE ID *: *\(spiffe:[^ ]*hwid_tpm[^ ]*\).*/\1/p' | head -n1; }

# ==== server, PKCS#11 backend =================================================================
pkcs11_data="      backend = \"pkcs11\"
      uri = \"$token_uri\""
write_server_conf "$work/server-data" 40s "$pkcs11_data"
start_server
ok "spire-server $("$bin/spire-server" --version 2>&1) running with KeyManager hwid (pkcs11, SoftHSM2)"

# ---- 5. the bundle's CA key is the token's key --------------------------------------------
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"
ca_pub=$(bundle_pub "$work/bundle.pem")
tok_ca_pub=$(token_pub example.org/x509-CA-A) || fail "no public key 'example.org/x509-CA-A' on the token"
[[ $ca_pub == "$tok_ca_pub" ]] || fail "bundle CA key $ca_pub is not the token key example.org/x509-CA-A ($tok_ca_pub)"
token_pub example.org/JWT-Signer-A >/dev/null || fail "no public key 'example.org/JWT-Signer-A' on the token"
p11 --list-objects --type privkey >"$work/privkeys.txt"
grep -A4 'label: *example.org/x509-CA-A$' "$work/privkeys.txt" | grep -q 'never extractable' ||
  { cat "$work/privkeys.txt" >&2; fail "the CA private key on the token is not sensitive/never extractable"; }
! grep -rqs 'PRIVATE KEY' "$work/server-data" || fail "a private key in PEM form in the server's data_dir"
ok "bundle X.509 CA public key = token key example.org/x509-CA-A (pkcs11-tool; sensitive, never extractable); JWT-Signer-A on the token"
p11 --list-objects >"$work/objects-before.txt"

# ==== agent, TPM backend ======================================================================
agent_keys=$work/agent-keys
write_agent_conf "$work/agent-data" "$agent_keys"

# ---- 1. attestation with the SVID key in the TPM --------------------------------------------
start_agent
agent_id=$(agent_id_of)
[[ -n $agent_id ]] || fail "no hwid_tpm agent listed after attestation"
[[ -f $agent_keys/agent-svid-A.tss2.pem ]] || { ls -la "$agent_keys" >&2; fail "no agent-svid-A.tss2.pem in key_dir"; }
head -n1 "$agent_keys/agent-svid-A.tss2.pem" | grep -qx -- '-----BEGIN TSS2 PRIVATE KEY-----' ||
  fail "agent-svid-A.tss2.pem is not a TSS2 PRIVATE KEY"
# TPMKey ::= SEQUENCE { type OID (2.23.133.10.1.3 loadable key), ... }
openssl asn1parse -in "$agent_keys/agent-svid-A.tss2.pem" 2>/dev/null | head -n3 | grep -q '2\.23\.133\.10\.1\.3' ||
  fail "agent-svid-A.tss2.pem is not a TPM loadable key (OID 2.23.133.10.1.3)"
! grep -rqsE 'BEGIN (EC |RSA )?PRIVATE KEY' "$agent_keys" "$work/agent-data" ||
  fail "a plaintext private key in key_dir or the agent's data_dir"
for f in "$agent_keys"/*; do
  [[ $(basename "$f") == agent-svid-[AB].tss2.pem ]] || fail "unexpected file in key_dir: $(basename "$f")"
done
svid_pub=$(agent_svid_pub "$work/agent-data") || fail "no agent SVID in $work/agent-data/agent-data.json"
key_a_pub=$(pub_of_keyfile "$agent_keys/agent-svid-A.tss2.pem") || fail "hwid key pub failed on agent-svid-A.tss2.pem"
[[ $svid_pub == "$key_a_pub" ]] || fail "agent SVID key $svid_pub is not agent-svid-A ($key_a_pub)"
# The private half is in this TPM: it signs, and the SVID's public key verifies the signature.
echo "hwid keymanager e2e" >"$work/msg"
"$hwid_cli" key sign --key "$agent_keys/agent-svid-A.tss2.pem" --tcti "$tcti" --in "$work/msg" --out "$work/msg.sig" >/dev/null ||
  fail "the TPM cannot sign with agent-svid-A.tss2.pem"
openssl x509 -in "$work/agent-svid.pem" -pubkey -noout >"$work/agent-svid-pub.pem"
openssl dgst -sha256 -verify "$work/agent-svid-pub.pem" -signature "$work/msg.sig" "$work/msg" >/dev/null ||
  fail "a TPM signature with agent-svid-A does not verify with the agent SVID's public key"
attests=$(count '"agent attested"\|agent attested' <"$work/server.log")
ok "agent attested as $agent_id; its SVID key is agent-svid-A.tss2.pem (TSS2 PRIVATE KEY, signs in the TPM; no plaintext key)"

"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" \
  -spiffeID spiffe://example.org/workload -selector "unix:uid:$(id -u)" >/dev/null
wait_for 60 "the workload's X509-SVID" fetch_svid spiffe://example.org/workload
verify_svid workload "$work/bundle.pem"

# ---- 2. restart: the SVID is loaded, no node attestation ------------------------------------
stop_agent
agent_mark=$(nlines "$work/agent.log")
server_mark=$(nlines "$work/server.log")
start_agent
wait_for 60 "the workload's X509-SVID after the agent restart" fetch_svid spiffe://example.org/workload
lines_after "$work/agent.log" "$agent_mark" >"$work/agent-run2.log"
grep -q 'SVID loaded' "$work/agent-run2.log" || fail "the restarted agent did not log 'SVID loaded'"
! grep -q 'SVID is not found. Starting node attestation\|Generating new keypair' "$work/agent-run2.log" ||
  fail "the restarted agent attested again / made a new key instead of loading its SVID"
# Every attestation the server saw since the restart must be a rotation the agent started
# (hwid_tpm is re-attestable, so rotations re-attest and log 'Reattesting node').
new_attests=$(lines_after "$work/server.log" "$server_mark" | count 'agent attested')
reattests=$(lines_after "$work/agent.log" "$agent_mark" | count 'Reattesting node')
((new_attests <= reattests)) || fail "the server attested the agent $new_attests time(s) after the restart, $reattests by rotation"
ok "agent restart: 'SVID loaded' with its TPM key, no new attestation ($new_attests by rotation), workload served"

# ---- 3. rotation: agent-svid-B ----------------------------------------------------------
# agent_ttl 40s: an SVID lives 50s (SPIRE backdates NotBefore by 10s) and rotates at half.
svid_uses_b() {
  [[ -f $agent_keys/agent-svid-B.tss2.pem ]] || return 1
  local b s
  b=$(pub_of_keyfile "$agent_keys/agent-svid-B.tss2.pem") && s=$(agent_svid_pub "$work/agent-data") && [[ $s == "$b" ]]
}
wait_for 75 "a rotated agent SVID on agent-svid-B" svid_uses_b
grep -q 'Successfully reattested node\|Successfully rotated agent SVID' "$work/agent.log" || fail "no rotation in the agent log"
wait_for 60 "the workload's X509-SVID after rotation" fetch_svid spiffe://example.org/workload
ok "rotation: key_dir holds agent-svid-B.tss2.pem and the new agent SVID's key is it"

# ---- 4. kill -9 during a rotation ---------------------------------------------------------
# The next rotation writes the key slot the current SVID does not use: kill the agent as soon
# as that key's temp file or the renamed key file shows up (best effort: mid-write, or during
# the re-attestation that follows).
svid_pub=$(agent_svid_pub "$work/agent-data")
next=A
[[ $svid_pub == "$(pub_of_keyfile "$agent_keys/agent-svid-A.tss2.pem")" ]] && next=B
next_file=$agent_keys/agent-svid-$next.tss2.pem
touch "$work/ref"
mark=$(nlines "$work/agent.log")
end=$((SECONDS + 75))
until [[ $next_file -nt $work/ref ]] || compgen -G "$agent_keys/.tmp-*" >/dev/null; do
  ((SECONDS < end)) || fail "timed out waiting for the next rotation"
  sleep 0.01
done
kill -9 "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
if compgen -G "$agent_keys/.tmp-*" >/dev/null; then
  killed_at="while agent-svid-$next was being written"
else
  killed_at="after agent-svid-$next was written"
fi
if lines_after "$work/agent.log" "$mark" | grep -q 'Successfully reattested node\|Successfully rotated agent SVID'; then
  killed_at+=", after the new SVID"
else
  killed_at+=", before the new SVID"
fi
agent_mark=$(nlines "$work/agent.log")
start_agent
wait_for 60 "the workload's X509-SVID after kill -9" fetch_svid spiffe://example.org/workload
verify_svid workload "$work/bundle.pem"
lines_after "$work/agent.log" "$agent_mark" | grep -q 'SVID loaded' ||
  fail "after kill -9 the agent did not load its SVID (its key is gone from key_dir?)"
svid_pub=$(agent_svid_pub "$work/agent-data")
[[ $svid_pub == "$(pub_of_keyfile "$agent_keys/agent-svid-A.tss2.pem")" ||
   $svid_pub == "$(pub_of_keyfile "$agent_keys/agent-svid-B.tss2.pem")" ]] ||
  fail "after kill -9 the agent SVID's key is in no key file"
# ... and rotates again afterwards (new key written next to whatever the kill left behind).
svid_on_key_file() {
  local s
  s=$(agent_svid_pub "$work/agent-data") || return 1
  [[ $s == "$(pub_of_keyfile "$agent_keys/agent-svid-A.tss2.pem")" ||
     $s == "$(pub_of_keyfile "$agent_keys/agent-svid-B.tss2.pem")" ]]
}
rotated_again() {
  lines_after "$work/agent.log" "$agent_mark" | grep -q 'Successfully reattested node\|Successfully rotated agent SVID' &&
    [[ $(agent_svid_pub "$work/agent-data") != "$svid_pub" ]] && svid_on_key_file
}
wait_for 75 "a rotation after the kill -9 restart" rotated_again
stale=$(compgen -G "$agent_keys/.tmp-*" | wc -l || true)
ok "kill -9 during a rotation ($killed_at), restart: SVID loaded, workload served, rotates again (stale temp files left in key_dir: $stale)"

# ---- 6. server restart: same CA key, same token objects -----------------------------------
server_mark=$(nlines "$work/server.log")
stop_server
start_server
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle2.pem"
[[ $(bundle_pub "$work/bundle2.pem") == "$ca_pub" ]] || fail "the CA public key changed across the server restart"
p11 --list-objects >"$work/objects-after.txt"
diff "$work/objects-before.txt" "$work/objects-after.txt" >&2 || fail "the token objects changed across the server restart"
lines_after "$work/server.log" "$server_mark" >"$work/server-run2.log"
! grep -q 'X509 CA prepared\|generated key' "$work/server-run2.log" || fail "the restarted server made a new CA key"
"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" \
  -spiffeID spiffe://example.org/workload2 -selector "unix:uid:$(id -u)" >/dev/null
wait_for 60 "a new workload's X509-SVID after the server restart" fetch_svid spiffe://example.org/workload2
verify_svid workload2 "$work/bundle.pem"
ok "server restart (pkcs11): same bundle, token objects unchanged, no new CA key; a new SVID chains to the bundle"
stop_agent
stop_server

# ==== 7. server, TPM backend (same swtpm as the agent) ========================================
server_keys=$work/server-keys
tpm_data="      backend = \"tpm\"
      tcti = \"$tcti\"
      key_dir = \"$server_keys\""
write_server_conf "$work/server2-data" 1h "$tpm_data"
server_mark=$(nlines "$work/server.log")
start_server
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"
ca_pub=$(bundle_pub "$work/bundle.pem")
[[ -f $server_keys/x509-CA-A.tss2.pem && -f $server_keys/JWT-Signer-A.tss2.pem ]] ||
  { ls -la "$server_keys" >&2; fail "no x509-CA-A / JWT-Signer-A key files in the server's key_dir"; }
[[ $ca_pub == "$(pub_of_keyfile "$server_keys/x509-CA-A.tss2.pem")" ]] ||
  fail "bundle CA key is not x509-CA-A.tss2.pem's"
! grep -rqsE 'BEGIN (EC |RSA )?PRIVATE KEY' "$server_keys" "$work/server2-data" || fail "a plaintext private key on the server"
ok "server (tpm): bundle X.509 CA public key = x509-CA-A.tss2.pem (TSS2 PRIVATE KEY in key_dir)"
keys_sum=$(cd "$server_keys" && sha256sum -- * | sort)
write_agent_conf "$work/agent3-data" "$work/agent3-keys"
start_agent
agent_id=$(agent_id_of)
"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" \
  -spiffeID spiffe://example.org/workload -selector "unix:uid:$(id -u)" >/dev/null
wait_for 60 "the workload's X509-SVID (tpm server)" fetch_svid spiffe://example.org/workload
verify_svid workload "$work/bundle.pem"
server_mark=$(nlines "$work/server.log")
stop_server
start_server
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle2.pem"
[[ $(bundle_pub "$work/bundle2.pem") == "$ca_pub" ]] || fail "the CA public key changed across the server restart (tpm)"
[[ $(cd "$server_keys" && sha256sum -- * | sort) == "$keys_sum" ]] || fail "the server's key files changed across the restart"
! lines_after "$work/server.log" "$server_mark" | grep -q 'X509 CA prepared\|generated key' ||
  fail "the restarted server (tpm) made a new CA key"
"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" \
  -spiffeID spiffe://example.org/workload2 -selector "unix:uid:$(id -u)" >/dev/null
wait_for 60 "a new workload's X509-SVID after the server restart (tpm)" fetch_svid spiffe://example.org/workload2
verify_svid workload2 "$work/bundle.pem"
ok "server restart (tpm): same bundle, key files unchanged, no new CA key; a new SVID chains to the bundle"
echo "spire keymanager e2e: 7 passed, 0 failed (${SECONDS}s)"
