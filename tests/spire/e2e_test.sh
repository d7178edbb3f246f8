#!/usr/bin/env bash
# hwid_tpm end to end with a REAL SPIRE v1.13.3 server and agent and a real swtpm:
#   1. the agent attests with its TPM (EK certificate chain, credential activation, quote);
#      `spire-server agent list/show` shows the hwid_tpm SPIFFE ID and selectors;
#   2. a registration entry (parent = that agent, selector unix:uid) gives a workload its
#      X509-SVID through the Workload API;
#   3. re-attestation of the same machine (agent state wiped) gives the same agent ID, and the
#      agent plugin reuses its persisted AK;
#   4. a second TPM whose EK certificate chains to another CA is refused (PERMISSION_DENIED,
#      naming the failed check) and never listed.
# usage: e2e_test.sh SERVER_PLUGIN AGENT_PLUGIN HWID_CLI
# SPIRE binaries: $HWID_SPIRE_BIN, else built/cached by tests/spire/build-spire.
# Needs swtpm (swtpm-setup/). Missing SPIRE fails when CI=true, else skips (exit 77).
# HWID_KEEP_WORK=1 keeps the work directory.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"
server_na=$(readlink -f "${1:?usage: $0 SERVER_PLUGIN AGENT_PLUGIN HWID_CLI}")
agent_na=$(readlink -f "${2:?}")
hwid_cli=$(readlink -f "${3:?}")

find_spire

work=$(mktemp -d /tmp/hwid-spire-e2e.XXXXXX)
server_pid="" agent_pid=""
cleanup_pids=(agent_pid server_pid) cleanup_tpms=(tpm1 tpm2) cleanup_show_tails=1
cleanup_logs=(server.log agent.log agent2.log) cleanup_tail=30
trap spire_cleanup EXIT

# ---- TPMs: tpm1 from the provisioned template (EK CA = the one the server trusts); tpm2
# provisioned from scratch, so its EK certificates chain to a CA of its own.
"$root/swtpm-setup/swtpm-up" "$work/tpm1" >/dev/null
# shellcheck disable=SC1091
tpm1_tcti=$(. "$work/tpm1/env"; echo "$HWID_TCTI")
trusted_ca=$(. "$work/tpm1/env"; echo "$HWID_EK_CA")
HWID_SWTPM_TEMPLATE= "$root/swtpm-setup/swtpm-up" "$work/tpm2" >/dev/null
tpm2_tcti=$(. "$work/tpm2/env"; echo "$HWID_TCTI")

port=$(free_port)
sock="$work/server-api.sock"
mkdir -p "$work/server-data"
cat >"$work/server.conf" <<CONF
$(server_block "$work/server-data")
plugins {
$(sql_datastore "$work/server-data")
  KeyManager "memory" {
    plugin_data {}
  }
$(hwid_tpm_server_plugin "$trusted_ca" "clock_state = \"file\"
      clock_state_path = \"$work/clock-state\"")
}
CONF
start_server
ok "spire-server $("$bin/spire-server" --version 2>&1) running with hwid_tpm (server plugin)"
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"

write_agent_conf() {  # write_agent_conf NAME TCTI [EK]
  mkdir -p "$work/$1-data"
  cat >"$work/$1.conf" <<CONF
$(agent_block "$1" "$work/$1-data")
plugins {
$(hwid_tpm_agent_plugin "$2" "" "${3:-auto}")
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
CONF
}

# ---- 1. attestation ---------------------------------------------------------------------
write_agent_conf agent "$tpm1_tcti"
"$bin/spire-agent" run -config "$work/agent.conf" >"$work/agent.out" 2>&1 &
agent_pid=$!
wait_for 90 "spire-agent healthy (attested)" "$bin/spire-agent" healthcheck -socketPath "$work/agent-api.sock"

# The expected agent ID: sha256 of the EK SubjectPublicKeyInfo, computed here with openssl from
# the EK certificate the CLI exports (independently of the plugins).
"$hwid_cli" tpm ek --tcti "$tpm1_tcti" --alg rsa2048 --out-dir "$work" >/dev/null
ek_hash=$(openssl x509 -in "$work/ek-rsa2048.crt.pem" -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)
agent_id="spiffe://example.org/spire/agent/hwid_tpm/$ek_hash"
"$bin/spire-server" agent list -socketPath "$sock" >"$work/agents.txt"
grep -q "$agent_id" "$work/agents.txt" || { cat "$work/agents.txt" >&2; fail "agent list does not show $agent_id"; }
"$bin/spire-server" agent show -socketPath "$sock" -spiffeID "$agent_id" >"$work/agent-show.txt"
for sel in "hwid_tpm:ek_pubhash:$ek_hash" "hwid_tpm:ek_model:swtpm" "hwid_tpm:ek_manufacturer:id:00001014" \
           "hwid_tpm:ek_issuer_cn:" "hwid_tpm:pcr:sha256:7:"; do
  grep -q "$sel" "$work/agent-show.txt" || { cat "$work/agent-show.txt" >&2; fail "selector $sel missing"; }
done
ok "agent attested as $agent_id with selectors: $(grep -c 'hwid_tpm:' "$work/agent-show.txt")"
grep -q '"agent attested"\|agent attested' "$work/server.log" || fail "server plugin log line not in SPIRE's log"

# ---- 2. a workload gets its X509-SVID -------------------------------------------------------
"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" \
  -spiffeID spiffe://example.org/workload -selector "unix:uid:$(id -u)" >/dev/null
mkdir -p "$work/svid"
fetch_svid() { "$bin/spire-agent" api fetch x509 -socketPath "$work/agent-api.sock" -write "$work/svid"; }
wait_for 60 "the workload's X509-SVID" fetch_svid
openssl x509 -in "$work/svid/svid.0.pem" -noout -ext subjectAltName | grep -q "URI:spiffe://example.org/workload" ||
  fail "the fetched SVID does not carry spiffe://example.org/workload"
openssl verify -CAfile "$work/svid/bundle.0.pem" "$work/svid/svid.0.pem" >/dev/null || fail "the SVID does not chain to the bundle"
ok "workload received its X509-SVID (spiffe://example.org/workload) through the Workload API"

# ---- 3. re-attestation ----------------------------------------------------------------------
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
ak_before=$(tpm2_readpublic -T "$tpm1_tcti" -c 0x81000100 2>/dev/null | awk '/^name:/{print $2}')
rm -rf "$work/agent-data" && mkdir -p "$work/agent-data"
"$bin/spire-agent" run -config "$work/agent.conf" >"$work/agent.out" 2>&1 &
agent_pid=$!
wait_for 90 "spire-agent healthy after re-attestation" "$bin/spire-agent" healthcheck -socketPath "$work/agent-api.sock"
ak_after=$(tpm2_readpublic -T "$tpm1_tcti" -c 0x81000100 2>/dev/null | awk '/^name:/{print $2}')
[[ -n $ak_before && $ak_before == "$ak_after" ]] || fail "the AK changed across re-attestation ($ak_before -> $ak_after)"
n=$("$bin/spire-server" agent list -socketPath "$sock" | grep -c "spiffe://example.org/spire/agent/hwid_tpm/")
[[ $n == 1 ]] || fail "expected exactly one hwid_tpm agent after re-attestation, got $n"
[[ $(grep -c '"agent attested"\|agent attested' "$work/server.log") -ge 2 ]] || fail "no second attestation in the server log"
wait_for 60 "the workload's X509-SVID after re-attestation" fetch_svid
# The clock state (issue 13): the record of this EK moved once per verified attestation.
clock_version=$(sed -n 's/^version=//p' "$work/clock-state/$ek_hash.clock" 2>/dev/null || true)
[[ -n $clock_version ]] && ((clock_version >= 2)) ||
  fail "clock state record of $ek_hash not moved by both attestations (version '${clock_version}')"
ok "re-attestation: same agent ID, same persisted AK, workload still served, clock state recorded twice"
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""

# ---- 4. a TPM whose EK chains to an untrusted CA is refused ---------------------------------
write_agent_conf agent2 "$tpm2_tcti"
set +e
timeout 60 "$bin/spire-agent" run -config "$work/agent2.conf" >"$work/agent2.out" 2>&1
rc=$?
set -e
((rc != 0 && rc != 124)) || fail "spire-agent with the untrusted TPM: expected an attestation failure exit, got $rc"
grep -q "PermissionDenied\|PERMISSION_DENIED\|permission denied" "$work/agent2.log" "$work/agent2.out" ||
  fail "the refusal of the untrusted TPM is not PERMISSION_DENIED"
grep -q "chain verification failed" "$work/agent2.log" "$work/agent2.out" "$work/server.log" ||
  fail "the refusal does not name the failed check (EK certificate chain)"
n=$("$bin/spire-server" agent list -socketPath "$sock" | grep -c "spiffe://example.org/spire/agent/hwid_tpm/")
[[ $n == 1 ]] || fail "the untrusted TPM was listed as an agent"
ok "a TPM with an EK certificate from an untrusted CA is refused (PERMISSION_DENIED, chain verification failed)"

# ---- 5. one identity per TPM: the same TPM's ECC EK is refused by the default ek_algs -------
write_agent_conf agent3 "$tpm1_tcti" ecc
set +e
timeout 60 "$bin/spire-agent" run -config "$work/agent3.conf" >"$work/agent3.out" 2>&1
rc=$?
set -e
((rc != 0 && rc != 124)) || fail "spire-agent with the ECC EK: expected an attestation failure exit, got $rc"
grep -q "not in the configured ek_algs" "$work/agent3.log" "$work/agent3.out" "$work/server.log" ||
  fail "the refusal of the second EK type does not name ek_algs"
n=$("$bin/spire-server" agent list -socketPath "$sock" | grep -c "spiffe://example.org/spire/agent/hwid_tpm/")
[[ $n == 1 ]] || fail "the same TPM got a second agent ID through its ECC EK"
ok "the same TPM presenting its ECC EK is refused (default ek_algs = rsa-2048: one identity per TPM)"

# ---- 6. a failed PCR policy: the golden value stays in the server's log ----------------------
golden=$(printf '5a%.0s' {1..32})
stop_server
cat >"$work/server.conf" <<CONF
$(server_block "$work/server-data")
plugins {
$(sql_datastore "$work/server-data")
  KeyManager "memory" {
    plugin_data {}
  }
$(hwid_tpm_server_plugin "$trusted_ca" "expected_pcrs { \"sha256:7\" = \"$golden\" }")
}
CONF
start_server
# The memory KeyManager made a new CA at the restart: the agent needs the new bundle.
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"
write_agent_conf agent4 "$tpm1_tcti"
set +e
timeout 60 "$bin/spire-agent" run -config "$work/agent4.conf" >"$work/agent4.out" 2>&1
rc=$?
set -e
((rc != 0 && rc != 124)) || fail "spire-agent against a PCR policy it does not meet: expected a failure exit, got $rc"
grep -q "PCR policy: sha256 PCR 7 is" "$work/agent4.log" "$work/agent4.out" ||
  fail "the agent's refusal does not name the failed PCR: $(tail -3 "$work/agent4.out")"
! grep -q "$golden" "$work/agent4.log" "$work/agent4.out" || fail "the configured PCR value reached the agent"
grep -q "server_detail.*$golden" "$work/server.log" || fail "the server log does not hold the expected PCR value"
ok "a failed PCR policy names the PCR to the agent; the golden value is only in the server log"
echo "spire e2e: 6 passed, 0 failed"
