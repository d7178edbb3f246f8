# shellcheck shell=bash
# Helpers of the SPIRE end-to-end scripts in tests/spire (source it; do not execute it). Sets
# root (the checkout). What the functions use, the scripts set: work (their mktemp -d directory),
# bin (find_spire), port and sock (the server's TCP port and API socket), server_na and agent_na
# (the hwid_tpm node attestor plugins), hwid_cli.

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
# ok MESSAGE: one passed check (counted in passed).
ok() { echo "ok: $*"; passed=$((${passed:-0} + 1)); }
# skip_or_fail MESSAGE: a missing prerequisite fails when CI=true, else skips (exit 77).
skip_or_fail() {
  if [[ ${CI:-} == true ]]; then echo "FAIL: $*" >&2; exit 1; fi
  echo "SKIP: $*" >&2; exit 77
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.3
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# find_spire: sets bin to the directory of spire-server and spire-agent v1.13.3: $HWID_SPIRE_BIN,
# else built/cached by tests/spire/build-spire (skip_or_fail when that fails).
find_spire() {
  bin=${HWID_SPIRE_BIN:-}
  if [[ -z $bin ]]; then
    bin=$("$root/tests/spire/build-spire") || skip_or_fail "cannot build SPIRE v1.13.3"
  fi
  [[ -x $bin/spire-server && -x $bin/spire-agent ]] || { echo "FAIL: no SPIRE binaries in $bin" >&2; exit 1; }
}

# spire_cleanup: the scripts' EXIT trap (trap spire_cleanup EXIT). Stops the processes whose pid
# variables cleanup_pids names (in that order; empty ones are skipped) and the swtpms
# $work/NAME of cleanup_tpms; when the script failed, prints for each $work/FILE of cleanup_logs
# "--- FILE (tail) ---" and, with cleanup_show_tails=1, the file's last cleanup_tail lines (files
# that do not exist are then skipped). Without it only the headers come out, which is what
# e2e_test.sh and keymanager_e2e_test.sh have always printed (their `tail ... 2>/dev/null >&2`
# sent the lines to /dev/null). Removes $work unless HWID_KEEP_WORK is set; exits with the
# script's status.
cleanup_pids=() cleanup_tpms=() cleanup_logs=() cleanup_tail=40 cleanup_show_tails=0
spire_cleanup() {
  local rc=$? v f
  for v in "${cleanup_pids[@]}"; do
    [[ -n ${!v} ]] && kill "${!v}" 2>/dev/null && wait "${!v}" 2>/dev/null
  done
  for v in "${cleanup_tpms[@]}"; do
    "$root/swtpm-setup/swtpm-down" "$work/$v" >/dev/null 2>&1 || true
  done
  if ((rc != 0)); then
    for f in "${cleanup_logs[@]}"; do
      if [[ $cleanup_show_tails != 1 ]]; then echo "--- $f (tail) ---" >&2; continue; fi
      [[ -f $work/$f ]] || continue
      echo "--- $f (tail) ---" >&2
      tail -n "$cleanup_tail" "$work/$f" >&2 || true
    done
  fi
  if [[ -n ${HWID_KEEP_WORK:-} ]]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}

# Public key identity: sha256 of the DER SubjectPublicKeyInfo.
pub_of_pem() { openssl pkey -pubin -in "$1" -outform DER | sha256sum | cut -c1-64; }
pub_of_cert() { openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64; }
keyfile_pub_pem() {  # keyfile_pub_pem KEY.tss2.pem OUT.pem: the public half hwid's CLI reads from the file
  "$hwid_cli" key pub --key "$1" --out "$2" >/dev/null
}
pub_of_keyfile() { keyfile_pub_pem "$1" "$work/tmp-pub.pem" && pub_of_pem "$work/tmp-pub.pem"; }
# agent_svid_pub DATA_DIR: public key hash of the agent SVID SPIRE persisted (agent-data.json:
# "svid" is a list of base64 PEM certificates, leaf first; pkg/agent/storage).
agent_svid_pub() {
  python3 - "$1/agent-data.json" >"$work/agent-svid.pem" <<'PY' || return 1
import base64, json, sys
d = json.load(open(sys.argv[1]))
sys.stdout.write(base64.b64decode(d["svid"][0]).decode())
PY
  pub_of_cert "$work/agent-svid.pem"
}
# lines_after FILE N: the lines of FILE after its first N lines.
lines_after() { tail -n "+$(($2 + 1))" "$1" 2>/dev/null || true; }
nlines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# softhsm_token LABEL: a SoftHSM2 token LABEL (user PIN 1234, SO PIN 0000) in a private
# SOFTHSM2_CONF under $work/softhsm, exported (inherited by spire-server and its plugins).
softhsm_token() {
  mkdir -p "$work/softhsm/tokens"
  cat >"$work/softhsm/softhsm2.conf" <<CONF
directories.tokendir = $work/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
  export SOFTHSM2_CONF=$work/softhsm/softhsm2.conf
  softhsm2-util --init-token --free --label "$1" --pin 1234 --so-pin 0000 >/dev/null
}

# ---- configuration blocks (printed; the scripts assemble server.conf and NAME.conf from them) --
# server_block DATA_DIR [LINE]: spire-server on 127.0.0.1:$port, API socket $sock, trust domain
# example.org, data in DATA_DIR, DEBUG log to $work/server.log; LINE (e.g. agent_ttl) added.
server_block() {
  cat <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$port"
  socket_path = "$sock"
  trust_domain = "example.org"
  data_dir = "$1"
  log_level = "DEBUG"
  log_file = "$work/server.log"
  ${2:-}
}
CONF
}
# sql_datastore DATA_DIR: DataStore "sql" on DATA_DIR/datastore.sqlite3.
sql_datastore() {
  cat <<CONF
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$1/datastore.sqlite3"
    }
  }
CONF
}
# hwid_tpm_server_plugin "CA_FILE..." [LINE]: NodeAttestor "hwid_tpm" ($server_na) trusting the
# EK CA files (space-separated), PCRs 0-7 of the SHA-256 bank; LINE added to its plugin_data.
hwid_tpm_server_plugin() {
  local cas="" ca
  # shellcheck disable=SC2086 # a list of paths without blanks
  for ca in $1; do cas+="${cas:+, }\"$ca\""; done
  cat <<CONF
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$server_na"
    plugin_data {
      ek_ca_bundle_paths = [$cas]
      pcrs = "sha256:0,1,2,3,4,5,6,7"
      ${2:-}
    }
  }
CONF
}
# agent_block NAME DATA_DIR: spire-agent of the server above (bundle $work/bundle.pem), data in
# DATA_DIR, DEBUG log to $work/NAME.log, Workload API socket $work/NAME-api.sock.
agent_block() {
  cat <<CONF
agent {
  data_dir = "$2"
  log_level = "DEBUG"
  log_file = "$work/$1.log"
  server_address = "127.0.0.1"
  server_port = "$port"
  socket_path = "$work/$1-api.sock"
  trust_bundle_path = "$work/bundle.pem"
  trust_domain = "example.org"
}
CONF
}
# hwid_tpm_agent_plugin TCTI [LINE [EK]]: NodeAttestor "hwid_tpm" ($agent_na) on the TPM at TCTI
# (EK chosen automatically unless EK is given, AK persisted at 0x81000100); LINE added to its
# plugin_data.
hwid_tpm_agent_plugin() {
  cat <<CONF
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$agent_na"
    plugin_data {
      tcti = "$1"
      ek = "${3:-auto}"
      ak_handle = "0x81000100"
      ${2:-}
    }
  }
CONF
}

# start_server: spire-server on $work/server.conf (output appended to $work/server.out), pid in
# server_pid, waited for (60 s) until healthy; stop_server: SIGTERM and reaped.
start_server() {
  "$bin/spire-server" run -config "$work/server.conf" >>"$work/server.out" 2>&1 &
  server_pid=$!
  wait_for 60 "spire-server healthy" "$bin/spire-server" healthcheck -socketPath "$sock" -shallow
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
