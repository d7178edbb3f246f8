#!/usr/bin/env bash
# Agent-key binding (docs/agent-key-binding.md) end to end with a REAL SPIRE v1.13.3 server and
# agents on real swtpms. The server runs NodeAttestor hwid_tpm (certified_keys_dir) and
# CredentialComposer hwid_tpm (require_tpm_agent_key = true):
#   a. agent 1 (KeyManager "hwid", backend tpm; hwid_tpm with keymanager_key_dir = its key_dir):
#      attests; `agent show` lists hwid_tpm:agent_key:tpm; its SVID key is agent-svid-A's and the
#      hand-off holds a record for exactly that key; a workload gets an X509-SVID; rotation
#      (agent_ttl 40s) re-attests with agent-svid-B and the composer lets it through;
#   b. agent 2 (another TPM whose EK the server trusts; built-in KeyManager "disk"; hwid_tpm
#      without keymanager_key_dir) is refused: the server log shows the composer's
#      PERMISSION_DENIED ("agent key binding ... was not certified"), the agent log the failure,
#      and it is never listed;
#   c. agent 2 with keymanager_key_dir = a directory holding an unrelated TPM key (hwid key
#      create) but still the disk KeyManager: the node attestor certifies that key, the composer
#      still refuses the SVID key (a different SPKI);
#   d. server restarted with require_tpm_agent_key = false: the same disk-KeyManager agent attests
#      and the server log warns; it gets no agent_key:tpm selector;
#   end: the hand-off directory is 0700, its records 0600, and right after a record write it holds
#      no record older than 60 s (expired ones are pruned) and no temp file.
# Agent 2's TPM is provisioned from scratch (its own EK, so its own agent ID) and the server
# trusts both EK CAs.
# usage: binding_e2e_test.sh SERVER_NODEATTESTOR AGENT_NODEATTESTOR KM_AGENT COMPOSER HWID_CLI
# SPIRE binaries: $HWID_SPIRE_BIN, else built/cached by tests/spire/build-spire. Needs swtpm
# (swtpm-setup/). Missing SPIRE or tools fail when CI=true, else skip (exit 77).
# HWID_KEEP_WORK=1 keeps the work directory (logs, configs, key files).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"
usage="usage: $0 SERVER_NODEATTESTOR AGENT_NODEATTESTOR KM_AGENT COMPOSER HWID_CLI"
server_na=$(readlink -f "${1:?$usage}")
agent_na=$(readlink -f "${2:?$usage}")
km_agent=$(readlink -f "${3:?$usage}")
composer=$(readlink -f "${4:?$usage}")
hwid_cli=$(readlink -f "${5:?$usage}")

for tool in openssl python3 sha256sum swtpm; do
  command -v "$tool" >/dev/null 2>&1 || skip_or_fail "$tool not found"
done
find_spire

work=$(mktemp -d /tmp/hwid-binding-e2e.XXXXXX)
server_pid="" agent1_pid="" agent2_pid=""
cleanup_pids=(agent2_pid agent1_pid server_pid) cleanup_tpms=(tpm1 tpm2) cleanup_show_tails=1
cleanup_logs=(server.log server.out agent1.log agent1.out agent2b.log agent2c.log agent2d.log agent2d.out)
trap spire_cleanup EXIT
# record_name AGENT_ID KEY.tss2.pem: the hand-off record file name, computed here from its
# definition (SHA-256 of agent ID || 0 || SPKI DER), not by hwid code.
record_name() {
  keyfile_pub_pem "$2" "$work/tmp-rec.pem" || return 1
  { printf '%s\0' "$1"; openssl pkey -pubin -in "$work/tmp-rec.pem" -outform DER; } | sha256sum | cut -c1-64
}
ek_agent_id() {  # ek_agent_id TCTI OUTDIR: the hwid_tpm agent ID from the RSA-2048 EK certificate (ek = "auto")
  mkdir -p "$2"
  "$hwid_cli" tpm ek --tcti "$1" --alg rsa2048 --out-dir "$2" >/dev/null
  echo "spiffe://example.org/spire/agent/hwid_tpm/$(pub_of_cert "$2/ek-rsa2048.crt.pem")"
}

# ---- TPMs: tpm1 from the template (if any); tpm2 provisioned from scratch (own EK and EK CA).
"$root/swtpm-setup/swtpm-up" "$work/tpm1" >/dev/null
# shellcheck disable=SC1091
tpm1_tcti=$(. "$work/tpm1/env"; echo "$HWID_TCTI")
ca1=$(. "$work/tpm1/env"; echo "$HWID_EK_CA")
HWID_SWTPM_TEMPLATE= "$root/swtpm-setup/swtpm-up" "$work/tpm2" >/dev/null
tpm2_tcti=$(. "$work/tpm2/env"; echo "$HWID_TCTI")
ca2=$(. "$work/tpm2/env"; echo "$HWID_EK_CA")
agent1_id=$(ek_agent_id "$tpm1_tcti" "$work/ek1")
agent2_id=$(ek_agent_id "$tpm2_tcti" "$work/ek2")
[[ $agent1_id != "$agent2_id" ]] || fail "the two TPMs have the same EK"

# ---- server ---------------------------------------------------------------------------------
port=$(free_port)
sock="$work/server-api.sock"
handoff="$work/server-data/hwid-certified-keys"
mkdir -p "$work/server-data"
write_server_conf() {  # write_server_conf REQUIRE_TPM_AGENT_KEY
  cat >"$work/server.conf" <<CONF
$(server_block "$work/server-data" 'agent_ttl = "40s"')
plugins {
$(sql_datastore "$work/server-data")
  KeyManager "disk" {
    plugin_data {
      keys_path = "$work/server-data/keys.json"
    }
  }
$(hwid_tpm_server_plugin "$ca1 $ca2" "certified_keys_dir = \"$handoff\"")
  CredentialComposer "hwid_tpm" {
    plugin_cmd = "$composer"
    plugin_data {
      certified_keys_dir = "$handoff"
      require_tpm_agent_key = $1
    }
  }
}
CONF
}
write_server_conf true
start_server
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"
[[ $(stat -c %a "$handoff") == 700 ]] || fail "certified_keys_dir was created with mode $(stat -c %a "$handoff"), not 0700"
ok "spire-server $("$bin/spire-server" --version 2>&1): hwid_tpm (certified_keys_dir) + CredentialComposer hwid_tpm (require_tpm_agent_key = true)"

# ---- agents ---------------------------------------------------------------------------------
# write_agent_conf NAME TCTI KEYMANAGER_BLOCK KEYMANAGER_KEY_DIR (empty: protocol v1)
write_agent_conf() {
  local kmdir=""
  [[ -n $4 ]] && kmdir="keymanager_key_dir = \"$4\""
  mkdir -p "$work/$1-data"
  cat >"$work/$1.conf" <<CONF
$(agent_block "$1" "$work/$1-data")
plugins {
$(hwid_tpm_agent_plugin "$2" "$kmdir")
$3
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
CONF
}
disk_km() {  # disk_km DIR: SPIRE's built-in disk KeyManager block (DIR created)
  mkdir -p "$1"
  cat <<KM
  KeyManager "disk" {
    plugin_data {
      directory = "$1"
    }
  }
KM
}
start_agent() {  # start_agent NAME PIDVAR
  "$bin/spire-agent" run -config "$work/$1.conf" >>"$work/$1.out" 2>&1 &
  printf -v "$2" '%s' "$!"
}
agent_healthy() { "$bin/spire-agent" healthcheck -socketPath "$work/$1-api.sock"; }
# (Pipelines end in `grep >/dev/null`, not `grep -q`: with pipefail, a writer killed by SIGPIPE
# when grep -q exits early would turn a match into a failure.)
listed() { "$bin/spire-server" agent list -socketPath "$sock" | grep -F "$1" >/dev/null; }
# server_lines_for AGENT_ID MARK PATTERN: server log lines after MARK naming AGENT_ID and PATTERN.
server_lines_for() { lines_after "$work/server.log" "$2" | grep -F -- "$1" | grep -- "$3" || true; }
# check_record AGENT_ID KEYFILE: the hand-off holds a well-formed, unexpired record for the key.
check_record() {
  local name f
  name=$(record_name "$1" "$2") || fail "cannot read the public key of $2"
  f="$handoff/$name"
  [[ -f $f ]] || { ls -la "$handoff" >&2; fail "no hand-off record $name for $1 and $(basename "$2")"; }
  [[ $(stat -c %a "$f") == 600 ]] || fail "hand-off record $name has mode $(stat -c %a "$f"), not 0600"
  mapfile -t rec <"$f"
  [[ ${rec[0]} == "hwid-certified-key 1" && ${rec[1]} == "$1" && ${rec[2]} == "$(pub_of_keyfile "$2")" ]] ||
    fail "hand-off record $name does not name $1 and the SPKI sha256 of $(basename "$2"): $(cat "$f")"
  ((rec[3] > $(date +%s))) || fail "hand-off record $name for $(basename "$2") has already expired"
}

# ==== a. agent 1: hwid TPM KeyManager + keymanager_key_dir =====================================
keys1=$work/agent1-keys
write_agent_conf agent1 "$tpm1_tcti" "  KeyManager \"hwid\" {
    plugin_cmd = \"$km_agent\"
    plugin_data {
      backend = \"tpm\"
      tcti = \"$tpm1_tcti\"
      key_dir = \"$keys1\"
    }
  }" "$keys1"
start_agent agent1 agent1_pid
wait_for 90 "agent 1 healthy (attested)" agent_healthy agent1
listed "$agent1_id" || fail "agent list does not show $agent1_id"
"$bin/spire-server" agent show -socketPath "$sock" -spiffeID "$agent1_id" >"$work/agent1-show.txt"
grep -q 'hwid_tpm:agent_key:tpm' "$work/agent1-show.txt" ||
  { cat "$work/agent1-show.txt" >&2; fail "agent 1 lacks the selector hwid_tpm:agent_key:tpm"; }
attested=$(server_lines_for "$agent1_id" 0 'agent attested')
[[ -n $attested ]] || fail "no 'agent attested' line for $agent1_id in the server log"
grep -q 'certified_agent_keys=1' <<<"$attested" || fail "first attestation did not certify one key: $attested"
[[ -f $keys1/agent-svid-A.tss2.pem ]] || { ls -la "$keys1" >&2; fail "no agent-svid-A.tss2.pem in key_dir"; }
svid_pub=$(agent_svid_pub "$work/agent1-data") || fail "no agent SVID in agent-data.json"
[[ $svid_pub == "$(pub_of_keyfile "$keys1/agent-svid-A.tss2.pem")" ]] ||
  fail "agent 1's SVID key $svid_pub is not agent-svid-A.tss2.pem's"
check_record "$agent1_id" "$keys1/agent-svid-A.tss2.pem"
ok "agent 1 attested (protocol v2, 1 key certified); selector hwid_tpm:agent_key:tpm; its SVID key = agent-svid-A.tss2.pem = the hand-off record's key"

"$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent1_id" \
  -spiffeID spiffe://example.org/workload -selector "unix:uid:$(id -u)" >/dev/null
fetch_svid() {
  rm -rf "$work/svid" && mkdir -p "$work/svid"
  "$bin/spire-agent" api fetch x509 -socketPath "$work/agent1-api.sock" -write "$work/svid" >/dev/null 2>&1 &&
    openssl x509 -in "$work/svid/svid.0.pem" -noout -ext subjectAltName | grep 'URI:spiffe://example.org/workload$' >/dev/null &&
    openssl verify -CAfile "$work/bundle.pem" "$work/svid/svid.0.pem" >/dev/null
}
wait_for 60 "the workload's X509-SVID" fetch_svid
ok "a workload under agent 1 received its X509-SVID, chained to the bundle"

# Rotation: agent_ttl 40s (an SVID lives 50s, SPIRE backdates NotBefore by 10s), rotated at
# half life by re-attestation; the new key agent-svid-B must be certified and pass the composer.
svid_uses_b() {
  [[ -f $keys1/agent-svid-B.tss2.pem ]] &&
    [[ $(agent_svid_pub "$work/agent1-data") == "$(pub_of_keyfile "$keys1/agent-svid-B.tss2.pem")" ]]
}
wait_for 75 "agent 1's rotated SVID on agent-svid-B" svid_uses_b
reattested=$(server_lines_for "$agent1_id" 0 'agent attested' | grep 'certified_agent_keys=2' || true)
[[ -n $reattested ]] || fail "the rotation's re-attestation did not certify agent-svid-A and -B"
check_record "$agent1_id" "$keys1/agent-svid-B.tss2.pem"
[[ -z $(server_lines_for "$agent1_id" 0 'agent SVID refused') ]] || fail "the composer refused an SVID of agent 1"
wait_for 30 "the workload's X509-SVID after rotation" fetch_svid
ok "rotation: agent 1 re-attested certifying 2 keys, its new SVID key = agent-svid-B.tss2.pem, composer passed it"

# ==== b. agent 2: disk KeyManager, hwid_tpm without keymanager_key_dir: refused ================
# expect_refused NAME WHAT: waits for the composer's refusal of agent 2 after the server-log mark,
# then stops the agent; it must never be listed.
expect_refused() {
  local name=$1 what=$2 refusal
  refused_seen() {
    [[ -n $(server_lines_for "$agent2_id" "$mark" 'agent SVID refused') ]] &&
      grep -q 'agent key binding' "$work/$name.log"
  }
  wait_for 60 "the refusal of agent 2 ($what)" refused_seen
  kill "$agent2_pid" 2>/dev/null || true; wait "$agent2_pid" 2>/dev/null || true; agent2_pid=""
  refusal=$(server_lines_for "$agent2_id" "$mark" 'agent SVID refused' | sed -n 1p)
  grep -q 'agent key binding: the agent SVID key (SPKI sha256 [0-9a-f]\{64\}) of .* was not certified' <<<"$refusal" ||
    fail "the composer's refusal does not give the reason: $refusal"
  lines_after "$work/server.log" "$mark" | grep 'Failed to sign X509 SVID' | grep -F "$agent2_id" |
    grep 'PermissionDenied.*agent key binding' >/dev/null ||
    fail "the server log has no PERMISSION_DENIED 'Failed to sign X509 SVID' for agent 2"
  grep -q 'attestation.*failed to sign X509 SVID: credentialcomposer(hwid_tpm): agent key binding' "$work/$name.log" ||
    fail "the agent log does not show the attestation failure with the composer's reason"
  ! listed "$agent2_id" || fail "the refused agent 2 is listed"
  refused_key=$(sed -n 's/.*SPKI sha256 \([0-9a-f]\{64\}\).*/\1/p' <<<"$refusal")
}
mark=$(nlines "$work/server.log")
write_agent_conf agent2b "$tpm2_tcti" "$(disk_km "$work/agent2b-km")" ""
start_agent agent2b agent2_pid
expect_refused agent2b "disk KeyManager, protocol v1"
v1_lines=$(server_lines_for "$agent2_id" "$mark" 'agent attested')
grep -q 'certified_agent_keys=0' <<<"$v1_lines" || fail "agent 2 (v1) was not attested with 0 certified keys: $v1_lines"
ok "agent 2 (disk KeyManager, no keymanager_key_dir) refused: PERMISSION_DENIED 'agent key binding ... was not certified' (server and agent logs), never listed"

# ==== c. agent 2 with keymanager_key_dir holding an unrelated TPM key, still disk KeyManager ====
mkdir -p "$work/agent2c-tpmkeys"
"$hwid_cli" key create --alg ec-p256 --tcti "$tpm2_tcti" --out "$work/agent2c-tpmkeys/unrelated.tss2.pem" >/dev/null ||
  fail "hwid key create on tpm2 failed"
unrelated_pub=$(pub_of_keyfile "$work/agent2c-tpmkeys/unrelated.tss2.pem")
mark=$(nlines "$work/server.log")
write_agent_conf agent2c "$tpm2_tcti" "$(disk_km "$work/agent2c-km")" "$work/agent2c-tpmkeys"
start_agent agent2c agent2_pid
expect_refused agent2c "disk KeyManager, an unrelated key certified"
v2_lines=$(server_lines_for "$agent2_id" "$mark" 'agent attested')
grep -q 'certified_agent_keys=1' <<<"$v2_lines" || fail "agent 2 (v2) did not certify its unrelated key: $v2_lines"
[[ $refused_key != "$unrelated_pub" ]] || fail "the refused SVID key is the certified key itself"
check_record "$agent2_id" "$work/agent2c-tpmkeys/unrelated.tss2.pem"
unrelated_record=$(record_name "$agent2_id" "$work/agent2c-tpmkeys/unrelated.tss2.pem")
unrelated_expiry=$(sed -n 4p "$handoff/$unrelated_record")
ok "agent 2 (disk KeyManager, keymanager_key_dir with an unrelated TPM key) refused: the certified key ${unrelated_pub:0:12}... is not the SVID key ${refused_key:0:12}..."

# ==== d. require_tpm_agent_key = false: the disk-KeyManager agent attests, with a warning =======
stop_server
write_server_conf false
mark=$(nlines "$work/server.log")
start_server
write_agent_conf agent2d "$tpm2_tcti" "$(disk_km "$work/agent2d-km")" ""
start_agent agent2d agent2_pid
wait_for 90 "agent 2 healthy with require_tpm_agent_key = false" agent_healthy agent2d
listed "$agent2_id" || fail "agent 2 is not listed with require_tpm_agent_key = false"
warn=$(server_lines_for "$agent2_id" "$mark" 'agent SVID key not bound to the TPM')
[[ -n $warn ]] || fail "no warning for agent 2's uncertified SVID key in the server log"
grep -q 'level=warn' <<<"$warn" || fail "the uncertified-key line is not a warning: $warn"
[[ -z $(server_lines_for "$agent2_id" "$mark" 'agent SVID refused') ]] || fail "agent 2 refused with require_tpm_agent_key = false"
"$bin/spire-server" agent show -socketPath "$sock" -spiffeID "$agent2_id" >"$work/agent2-show.txt"
! grep -q 'agent_key:tpm' "$work/agent2-show.txt" || fail "agent 2 (no key certified) has the selector agent_key:tpm"
kill "$agent2_pid" 2>/dev/null || true; wait "$agent2_pid" 2>/dev/null || true; agent2_pid=""
ok "require_tpm_agent_key = false: agent 2 (disk KeyManager) attested, server log warns 'agent SVID key not bound to the TPM', no agent_key:tpm selector"

# ==== end: the hand-off directory ==============================================================
# Records are pruned when a record is written. Once the record of c. (never rewritten: agent 2
# is gone) has expired, agent 1's next re-attestation (it keeps rotating, across the server
# restart) must remove it, and right after that write no record may be older than 60 s.
expired() { (($(date +%s) > unrelated_expiry)); }
wait_for 90 "the expiry of the record certified in c." expired
# A record write in the expiry's own second may already have pruned it (the server compares in
# finer time than `date +%s`): then a record written at or after the expiry must exist.
if [[ ! -f $handoff/$unrelated_record ]]; then
  newest=$(stat -c %Y "$handoff"/* 2>/dev/null | sort -n | tail -n 1)
  ((${newest:-0} >= unrelated_expiry)) ||
    fail "the record of c. vanished before any record write (newest record written at ${newest:-none}, expiry $unrelated_expiry)"
fi
mark=$(nlines "$work/server.log")
wait_for 75 "a re-attestation of agent 1 after the server restart" \
  bash -c "tail -n +$((mark + 1)) '$work/server.log' | grep -F '$agent1_id' | grep 'agent attested' >/dev/null"
now=$(date +%s)
[[ ! -e $handoff/$unrelated_record ]] ||
  fail "the expired record of c. ($unrelated_record, expiry $unrelated_expiry, now $now) was not pruned by a later record write"
[[ $(stat -c '%a %u' "$handoff") == "700 $(id -u)" ]] || fail "the hand-off directory is $(stat -c '%a uid %u' "$handoff"), not 0700 owned by uid $(id -u)"
n=0 oldest=0
for f in "$handoff"/* "$handoff"/.[!.]*; do
  [[ -e $f ]] || continue
  base=$(basename "$f")
  [[ $base =~ ^[0-9a-f]{64}$ ]] || fail "unexpected file in the hand-off directory: $base"
  [[ $(stat -c %a "$f") == 600 ]] || fail "hand-off record $base has mode $(stat -c %a "$f")"
  age=$((now - $(stat -c %Y "$f")))
  ((age > oldest)) && oldest=$age
  ((age <= 61)) || fail "hand-off record $base is ${age}s old after a record write (expired records not pruned): $(cat "$f")"
  n=$((n + 1))
done
((n >= 2)) || fail "expected agent 1's records (agent-svid-A and -B) in the hand-off directory, found $n"
[[ -z $(server_lines_for "$agent1_id" 0 'agent SVID refused') ]] || fail "the composer refused an SVID of agent 1"
wait_for 30 "agent 1's workload X509-SVID at the end" fetch_svid
ok "hand-off directory 0700 (uid $(id -u)): expired record of c. pruned by the next write; $n records, all 0600, oldest ${oldest}s, no temp files; agent 1 never refused"
echo "spire binding e2e: 5 passed, 0 failed (${SECONDS}s)"
