#!/usr/bin/env bash
# plugin_runtime_spire_test: proves hwid::pluginmain against a REAL SPIRE v1.13.3.
#   1. spire-server loads the fixture plugin (tests/attestor_plugin/test_plugin.cc) as an
#      external NodeAttestor "hwid_tpm": go-plugin handshake, broker (the fixture's Init calls
#      SPIRE's AgentStore host service through it), Init, Configure; the fixture's hclog lines
#      appear in SPIRE's log at the right level with their fields.
#   2. spire-agent loads the fixture in its agent role; its attestation error reaches the agent.
#   3. Stopping the server unloads the plugin: Deinit, Shutdown, exit without SIGKILL.
#   4. A bad plugin_data makes spire-server fail to start with our error naming the key.
# Usage: spire_runtime_test.sh PATH/TO/hwid_test_plugin
# SPIRE binaries: $HWID_SPIRE_BIN, else ${HWID_CACHE:-$HOME/.cache/hwid}/spire-v1.13.3/bin
# (built by tests/spire/build-spire). Missing binaries skip the test (exit 77), or fail it
# when CI=true.
set -euo pipefail

plugin=$(readlink -f "${1:?usage: $0 PATH/TO/hwid_test_plugin}")
bin=${HWID_SPIRE_BIN:-${HWID_CACHE:-$HOME/.cache/hwid}/spire-v1.13.3/bin}
if [[ ! -x $bin/spire-server || ! -x $bin/spire-agent ]]; then
  msg="SPIRE v1.13.3 binaries not found in $bin (build them with tests/spire/build-spire)"
  if [[ ${CI:-} == true ]]; then
    echo "FAIL: $msg" >&2
    exit 1
  fi
  echo "SKIP: $msg" >&2
  exit 77
fi
for tool in python3 timeout; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d /tmp/hwid-spire-rt.XXXXXX)
server_pid=""
agent_pid=""
cleanup() {
  local rc=$?
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  if ((rc != 0)); then
    echo "--- server log (tail) ---" >&2
    tail -n 40 "$work/server.log" 2>/dev/null >&2 || true
    echo "--- server stdout/stderr (tail) ---" >&2
    tail -n 20 "$work/server.out" 2>/dev/null >&2 || true
    echo "--- agent log (tail) ---" >&2
    tail -n 20 "$work/agent.log" 2>/dev/null >&2 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# write_server_conf FILE PLUGIN_DATA_BODY
write_server_conf() {
  cat >"$1" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$port"
  socket_path = "$work/server-api.sock"
  trust_domain = "example.org"
  data_dir = "$work/server-data"
  log_level = "DEBUG"
  log_format = "json"
  log_file = "$work/server.log"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$work/server-data/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$plugin"
    plugin_data {
$2
    }
  }
}
CONF
}

# log_has FILE PY_CONDITION: true when a JSON log line satisfies the condition on `e`.
log_has() {
  python3 - "$1" "$2" <<'PY'
import json, sys
path, cond = sys.argv[1], sys.argv[2]
try:
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
except FileNotFoundError:
    sys.exit(1)
for line in lines:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if eval(cond, {}, {"e": e}):
        sys.exit(0)
sys.exit(1)
PY
}

server_healthy() {
  kill -0 "$server_pid" 2>/dev/null || fail "spire-server exited during startup"
  "$bin/spire-server" healthcheck -socketPath "$work/server-api.sock" -shallow >/dev/null 2>&1
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS < end)) || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.2
  done
}

# ---- 1. good configuration: the server loads and configures the plugin --------------------
mkdir -p "$work/server-data"
write_server_conf "$work/server.conf" '      greeting = "hello from spire"
      count = 7
      verbose = true
      items = ["a", "b"]
      policy {
        "sha256:7" = "00ff"
      }
      nested {
        name = "n"
      }'
HWID_TEST_PLUGIN_PROBE_HOST=agentstore "$bin/spire-server" run -config "$work/server.conf" \
  >"$work/server.out" 2>&1 &
server_pid=$!
wait_for 60 "spire-server healthy" \
  server_healthy
echo "ok: spire-server started with the external hwid_tpm plugin"

log_has "$work/server.log" 'e.get("msg")=="test plugin configured" and e.get("level")=="info" and e.get("plugin_name")=="hwid_tpm" and e.get("external")==True and e.get("greeting")=="hello from spire" and e.get("count")=="7" and e.get("items")=="a,b" and e.get("trust_domain")=="example.org" and e.get("@module")=="hwid_test"' ||
  fail "no info line 'test plugin configured' with its fields in SPIRE's log"
log_has "$work/server.log" 'e.get("msg")=="verbose mode is on" and e.get("level")=="warning"' ||
  fail "the plugin's warn line is not at warning level in SPIRE's log"
log_has "$work/server.log" 'e.get("msg")=="plugin serving" and e.get("level")=="debug"' ||
  fail "the runtime's debug line is not at debug level in SPIRE's log"
log_has "$work/server.log" 'e.get("msg")=="test plugin initialised" and "spire.hostservice.server.agentstore.v1.AgentStore" in e.get("host_services","")' ||
  fail "Init did not report SPIRE's host services"
log_has "$work/server.log" 'e.get("msg")=="host services reachable through the broker" and e.get("probe")=="agentstore"' ||
  fail "the plugin did not reach SPIRE's AgentStore through the broker"
if grep -q '"level":"debug".*"msg":"{' "$work/server.log"; then
  fail "some plugin log line was not parsed as hclog JSON (logged raw)"
fi
echo "ok: plugin log lines appear in SPIRE's log at info/warning/debug with their fields"
plugin_pid=$(ps -o pid= --ppid "$server_pid" | tr -d ' ' | head -n1)
[[ -n $plugin_pid ]] || fail "no plugin child process under spire-server"

# ---- 2. agent role: spire-agent loads the fixture; its attestation error reaches the agent --
mkdir -p "$work/agent-data"
cat >"$work/agent.conf" <<CONF
agent {
  data_dir = "$work/agent-data"
  log_level = "DEBUG"
  log_format = "json"
  log_file = "$work/agent.log"
  server_address = "127.0.0.1"
  server_port = "$port"
  socket_path = "$work/agent-api.sock"
  trust_domain = "example.org"
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$plugin"
    plugin_args = ["agent"]
    plugin_data {
      greeting = "hello from the agent"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
CONF
set +e
timeout 60 "$bin/spire-agent" run -config "$work/agent.conf" >"$work/agent.out" 2>&1
agent_rc=$?
set -e
((agent_rc != 0 && agent_rc != 124)) || fail "spire-agent: expected an attestation failure exit, got $agent_rc"
log_has "$work/agent.log" 'e.get("msg")=="test plugin configured" and e.get("level")=="info" and e.get("greeting")=="hello from the agent"' ||
  fail "spire-agent did not load and configure the fixture in its agent role"
grep -q "runtime test fixture and does not attest" "$work/agent.log" "$work/agent.out" ||
  fail "the plugin's attestation error did not reach spire-agent"
echo "ok: spire-agent loaded the fixture (agent role) and reported its attestation error"

# ---- 3. unload: Deinit + Shutdown, the plugin exits by itself --------------------------------
kill -TERM "$server_pid"
wait_for 30 "spire-server exit" bash -c "! kill -0 $server_pid 2>/dev/null"
wait "$server_pid" 2>/dev/null || true
server_pid=""
! kill -0 "$plugin_pid" 2>/dev/null || fail "plugin process $plugin_pid survived the server"
log_has "$work/server.log" 'e.get("msg")=="test plugin deinitialised"' ||
  fail "SPIRE did not call Deinit (or its log line is missing)"
if grep -q "plugin failed to exit gracefully" "$work/server.log" "$work/server.out"; then
  fail "SPIRE had to kill the plugin (no exit within 2 s of Shutdown)"
fi
echo "ok: unload called Deinit and the plugin exited gracefully"

# ---- 4. bad plugin_data: SPIRE refuses to start, naming the key ------------------------------
rm -rf "$work/server-data" && mkdir -p "$work/server-data"
: >"$work/server.log"
write_server_conf "$work/server-bad.conf" '      greeting = "hi"
      colour = "red"'
set +e
timeout 60 "$bin/spire-server" run -config "$work/server-bad.conf" >"$work/server-bad.out" 2>&1
bad_rc=$?
set -e
((bad_rc != 0 && bad_rc != 124)) || fail "spire-server with a bad plugin_data: expected a failed start, got exit $bad_rc"
grep -q 'unknown key \\*"colour\\*"' "$work/server.log" "$work/server-bad.out" ||
  fail "SPIRE's failure does not carry our error naming the key"
grep -h 'colour' "$work/server-bad.out" "$work/server.log" | head -n 2 | cut -c1-400
echo "ok: bad plugin_data stops spire-server with the error naming the key (exit $bad_rc)"
echo "plugin_runtime_spire_test: 4 passed, 0 failed"
