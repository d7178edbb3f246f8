#!/usr/bin/env bash
# hwid under SPIRE HA (issue 15): a private PostgreSQL 15, two spire-server v1.13.3 sharing it
# (DataStore "sql", one UpstreamAuthority "disk" root, the hwid_tpm server plugin with
# clock_state = "postgres" on the same database), HAProxy (mode tcp, health checks) in front, and
# N agents (default 50, HWID_SCALE_AGENTS), each with its OWN swtpm (distinct EK, certificate from
# one shared CA) and the hwid_tpm agent plugin.
#
#   1. timed batches: N agents started together against one server, then two, with SPIRE's
#      default attestation rate limit and with it disabled;
#   2. with both servers (limit disabled, short agent SVID TTL): every agent ID appears exactly
#      once in `spire-server agent list` on BOTH servers; one registration entry per agent gives
#      one workload per agent its X509-SVID through that agent's Workload API;
#   3. kill -9 of server 1 while the agents re-attest: every agent re-attests through server 2,
#      none is lost (all still listed, all still serve their workload);
#   4. server 1 comes back: both serve again (agent list through each, re-attestations reach
#      server 1 again).
# Prints the report (attestation latency, totals, rates, failures, memory) at the end and, with
# HWID_SCALE_REPORT=FILE, writes it there too.
#
# usage: scale_test.sh SERVER_PLUGIN AGENT_PLUGIN
# Environment: HWID_SCALE_AGENTS (default 50), HWID_SCALE_LANES (swtpm provisioning lanes,
#   default 2), HWID_SCALE_AGENT_TTL (agent SVID TTL of phases 2-4, default 60s),
#   HWID_SPIRE_BIN, HWID_PG_BIN (default /usr/lib/postgresql/15/bin), HWID_KEEP_WORK=1.
# A missing tool fails when CI=true, else skips (exit 77).
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")
# shellcheck source=../spire/lib.sh
source "$here/../spire/lib.sh"
server_na=$(readlink -f "${1:?usage: $0 SERVER_PLUGIN AGENT_PLUGIN}")
agent_na=$(readlink -f "${2:?usage: $0 SERVER_PLUGIN AGENT_PLUGIN}")
[[ -x $server_na && -x $agent_na ]] || fail "plugin binaries not found: $server_na $agent_na"

n=${HWID_SCALE_AGENTS:-50}
lanes=${HWID_SCALE_LANES:-2}
short_ttl=${HWID_SCALE_AGENT_TTL:-60s}
[[ $n =~ ^[1-9][0-9]*$ ]] || fail "HWID_SCALE_AGENTS must be a positive integer, not '$n'"
pg_bin=${HWID_PG_BIN:-/usr/lib/postgresql/15/bin}
run_start=$EPOCHREALTIME

for t in haproxy swtpm swtpm_setup swtpm_localca tpm2_getrandom openssl python3 setsid ss; do
  command -v "$t" >/dev/null 2>&1 || skip_or_fail "missing tool $t (scripts/lib.sh HWID_DEB_PACKAGES)"
done
for t in initdb pg_ctl postgres psql; do
  [[ -x $pg_bin/$t ]] || skip_or_fail "missing $pg_bin/$t (install postgresql-15)"
done
as_pg=()
if [[ $(id -u) == 0 ]]; then
  getent passwd postgres >/dev/null || skip_or_fail "running as root without a postgres user"
  as_pg=(runuser -u postgres --)
fi
find_spire

work=$(mktemp -d /tmp/hwid-scale.XXXXXX)
pgdir=$(mktemp -d /tmp/hwid-scale-pg.XXXXXX)
((${#as_pg[@]} == 0)) || chown postgres: "$pgdir"
report=$work/report.txt
py() { python3 "$here/scale_report.py" "$@"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '%s [%6ss] %s\n' "--" "$(elapsed "$run_start")" "$*"; }
rep() { printf '%s\n' "$*" >>"$report"; }

# ---- processes and cleanup ------------------------------------------------------------------
# Every long-running process is started with setsid: its pid is its process group, which also
# holds the plugin processes SPIRE starts, so one kill of the group stops both.
declare -a agent_pid=() swtpm_pid=() swtpm_port=() server_pid=("" "" "")
haproxy_pid="" pg_running=0
stop_group() { # stop_group PID: SIGTERM to PID (SPIRE then stops its plugins itself), after 10 s
  # SIGTERM to what is left of its group, then SIGKILL; reaped.
  local pid=$1 i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  { wait "$pid"; } 2>/dev/null || true
}
stop_agents() {
  local i
  for i in "${!agent_pid[@]}"; do
    [[ -z ${agent_pid[i]} ]] || kill -TERM "${agent_pid[i]}" 2>/dev/null || true
  done
  for i in "${!agent_pid[@]}"; do stop_group "${agent_pid[i]}"; agent_pid[i]=""; done
}
pg_ctl_() { "${as_pg[@]}" "$pg_bin/pg_ctl" "$@"; }
failure_tails() {
  local f i shown=0
  for f in server1.log server2.log server1.out server2.out haproxy.log; do
    [[ -s $work/$f ]] && { echo "--- $f (tail) ---"; tail -n 25 "$work/$f"; }
  done
  [[ -s $pgdir/postgres.log ]] && { echo "--- postgres.log (tail) ---"; tail -n 15 "$pgdir/postgres.log"; }
  for ((i = 1; i <= n && shown < 3; i++)); do
    f=$(ls -t "$work/agent/$i/"*.log 2>/dev/null | head -n 1 || true)
    [[ -n $f ]] || continue
    if ! grep -q "Node attestation was successful" "$f" || grep -q 'level=error' "$f"; then
      echo "--- agent $i: ${f##*/} (tail) ---"; tail -n 15 "$f"; shown=$((shown + 1))
    fi
  done
}
cleanup() {
  local rc=$? i
  set +e # stop everything, whatever fails on the way
  trap - EXIT
  ((rc == 0)) || failure_tails >&2 || true
  stop_agents
  for i in 1 2; do stop_group "${server_pid[i]}"; done
  stop_group "$haproxy_pid"
  for i in "${!swtpm_pid[@]}"; do kill -TERM "${swtpm_pid[i]}" 2>/dev/null || true; done
  for i in "${!swtpm_pid[@]}"; do { wait "${swtpm_pid[i]}"; } 2>/dev/null || true; done
  ((pg_running == 0)) || pg_ctl_ -D "$pgdir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  if [[ -n ${HWID_KEEP_WORK:-} ]]; then
    echo "work dirs kept: $work $pgdir" >&2
  else
    rm -rf "$work" "$pgdir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- PostgreSQL 15, private -------------------------------------------------------------------
say "PostgreSQL: initdb into $pgdir"
pg_pw=$(openssl rand -hex 16)
"${as_pg[@]}" "$pg_bin/initdb" -D "$pgdir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; fail "initdb failed"; }
for attempt in 1 2 3; do
  pg_port=$(free_port)
  # max_connections: SPIRE's sql datastore opens up to 100 connections per server by default
  # (max_open_conns), hwid_tpm keeps up to 4 idle per server plugin.
  if pg_ctl_ -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 30 \
    -o "-p $pg_port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=250" start >/dev/null; then
    pg_running=1
    break
  fi
done
((pg_running)) || fail "pg_ctl start failed 3 times"
psql_() { "$pg_bin/psql" -X -A -t -q -v ON_ERROR_STOP=1 "host=$pgdir port=$pg_port user=postgres dbname=${2:-postgres}" -c "$1"; }
psql_ "CREATE ROLE spire LOGIN PASSWORD '$pg_pw'"
psql_ "CREATE DATABASE spire OWNER spire"
pg_conn="host=127.0.0.1 port=$pg_port dbname=spire user=spire password=$pg_pw sslmode=disable"
# The hwid_tpm clock-state connection string: a 0600 file, never in plugin_data (same database).
(umask 077 && printf '%s\n' "$pg_conn" >"$work/clock-state.conninfo")
ok "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port (database spire)"

# ---- one upstream CA: the root every server's CA chains to, and the agents' bootstrap bundle --
mkdir -p "$work/upstream"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$work/upstream/root.key" -out "$work/upstream/root.crt" \
  -subj "/O=hwid scale test/CN=hwid scale upstream root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
  fail "cannot create the upstream CA"

# ---- N distinct TPMs, one EK CA --------------------------------------------------------------
say "provisioning $n TPMs ($lanes lanes)"
t0=$EPOCHREALTIME
"$here/provision-tpms" "$work/tpms" "$n" "$lanes" 2>"$work/provision.log" ||
  { cat "$work/provision.log" >&2; fail "TPM provisioning failed"; }
provision_s=$(elapsed "$t0")
ek_ca=$work/tpms/ek-ca.pem
: >"$work/agent-ids"
declare -a agent_id=()
# Serial and EK public key hash of every EK certificate (parsed by scale_report.py, not by hwid),
# then one openssl verify of all of them against the shared CA.
py ekinfo "$work/tpms" "$n" >"$work/ekinfo" || fail "cannot read the EK certificates"
while read -r i serial h; do
  # The expected agent ID: sha256 of the EK SubjectPublicKeyInfo DER.
  agent_id[i]="spiffe://example.org/spire/agent/hwid_tpm/$h"
  echo "${agent_id[i]}" >>"$work/agent-ids"
  echo "$serial" >>"$work/ek-serials"
done <"$work/ekinfo"
[[ $(wc -l <"$work/agent-ids") == "$n" ]] || fail "expected $n EK certificates"
ek_pems=()
for ((i = 1; i <= n; i++)); do ek_pems+=("$work/tpms/tpm/$i/ekcert/ek-rsa2048.pem"); done
verified=$(openssl verify -CAfile "$work/tpms/ek-root.pem" -untrusted "$work/tpms/ekca/issuercert.pem" \
  "${ek_pems[@]}" 2>&1 | grep -c ': OK$' || true)
[[ $verified == "$n" ]] || fail "only $verified of $n EK certificates chain to the shared CA"
[[ $(sort -u "$work/agent-ids" | wc -l) == "$n" ]] || fail "the $n TPMs do not have $n distinct EKs"
[[ $(sort -u "$work/ek-serials" | wc -l) == "$n" ]] || fail "EK certificate serial numbers repeat (shared CA used concurrently)"
ok "$n distinct TPMs (distinct RSA-2048 EKs, distinct certificate serials, one CA) provisioned in ${provision_s} s"

# start_swtpm I: swtpm of TPM I on a free even port pair (control = port + 1).
start_swtpm() {
  local i=$1 p
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    p=$((p & ~1))
    [[ " ${swtpm_port[*]} " == *" $p "* ]] && continue
    [[ -z $(ss -Htln "( sport = :$p or sport = :$((p + 1)) )" 2>/dev/null) ]] || continue
    setsid swtpm socket --tpm2 --server "type=tcp,port=$p,bindaddr=127.0.0.1" \
      --ctrl "type=tcp,port=$((p + 1)),bindaddr=127.0.0.1" --tpmstate "dir=$work/tpms/tpm/$i/state" \
      --flags not-need-init,startup-clear --log "file=$work/tpms/tpm/$i/swtpm.log,level=1" \
      </dev/null >/dev/null 2>&1 &
    swtpm_pid[i]=$!
    swtpm_port[i]=$p
    return 0
  done
  fail "no free port pair for swtpm $i"
}
say "starting $n swtpms"
t0=$EPOCHREALTIME
for ((i = 1; i <= n; i++)); do start_swtpm "$i"; done
for ((i = 1; i <= n; i++)); do
  for ((try = 0; ; try++)); do
    timeout 5 tpm2_getrandom -T "swtpm:host=127.0.0.1,port=${swtpm_port[i]}" 8 >/dev/null 2>&1 && break
    if ! kill -0 "${swtpm_pid[i]}" 2>/dev/null; then # lost a port race: another pair
      wait "${swtpm_pid[i]}" 2>/dev/null || true
      ((try < 5)) || fail "swtpm $i does not start: $(tail -n 3 "$work/tpms/tpm/$i/swtpm.log")"
      start_swtpm "$i"
    fi
    ((try < 100)) || fail "swtpm $i (port ${swtpm_port[i]}) does not answer"
    sleep 0.1
  done
done
swtpm_start_s=$(elapsed "$t0")
ok "$n swtpms started and answering in ${swtpm_start_s} s"

# ---- SPIRE servers and the load balancer -------------------------------------------------------
lb_port=$(free_port)
declare -a srv_port=("" "$(free_port)" "$(free_port)")
[[ ${srv_port[1]} != "${srv_port[2]}" && $lb_port != "${srv_port[1]}" && $lb_port != "${srv_port[2]}" ]] ||
  fail "free_port returned one port twice; re-run"
render() { # render TEMPLATE OUT KEY=VALUE...: @KEY@ -> VALUE (values must not contain '|')
  local tmpl=$1 out=$2 kv args=()
  shift 2
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$tmpl" >"$out"
  ! grep -q '@[A-Z_0-9]*@' "$out" || fail "unfilled placeholder in $out: $(grep -o '@[A-Z_0-9]*@' "$out" | head -n 1)"
}
# write_server_conf I TTL RATELIMIT
write_server_conf() {
  mkdir -p "$work/server$1-data"
  render "$here/conf/server.conf" "$work/server$1.conf" PORT="${srv_port[$1]}" \
    SOCKET="$work/server$1.sock" DATA_DIR="$work/server$1-data" LOG_FILE="$work/server$1.log" \
    AGENT_TTL="$2" RATELIMIT_ATTESTATION="$3" PG_CONNECTION_STRING="$pg_conn" \
    UPSTREAM_KEY="$work/upstream/root.key" UPSTREAM_CERT="$work/upstream/root.crt" \
    SERVER_PLUGIN="$server_na" EK_CA="$ek_ca" CLOCK_CONNINFO_FILE="$work/clock-state.conninfo"
}
srv() { "$bin/spire-server" "$1" "${@:3}" -socketPath "$work/server$2.sock"; } # srv CMD I ARGS...
start_server() { # start_server I
  setsid "$bin/spire-server" run -config "$work/server$1.conf" >>"$work/server$1.out" 2>&1 &
  server_pid[$1]=$!
  wait_for 90 "spire-server $1 healthy" "$bin/spire-server" healthcheck -socketPath "$work/server$1.sock"
}
stop_server() { stop_group "${server_pid[$1]}"; server_pid[$1]=""; }
# lb_state: "server1=UP server2=DOWN" from HAProxy's stats socket.
lb_state() {
  python3 - "$work/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
rows = [l.split(",") for l in data.decode().splitlines() if l and not l.startswith("#")]
print(" ".join(f"{r[1]}={r[17].split()[0]}" for r in rows if r[0] == "spire_servers" and r[1].startswith("server")))
PY
}
lb_is() { [[ $(lb_state) == "$1" ]]; }

render "$here/conf/haproxy.cfg" "$work/haproxy.cfg" STATS_SOCKET="$work/haproxy.sock" LB_PORT="$lb_port" \
  SERVER1_PORT="${srv_port[1]}" SERVER2_PORT="${srv_port[2]}"
haproxy -c -f "$work/haproxy.cfg" >/dev/null || fail "haproxy rejects $work/haproxy.cfg"
setsid haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
wait_for 20 "HAProxy stats socket" lb_state

# ---- agents --------------------------------------------------------------------------------
cp "$work/upstream/root.crt" "$work/trust-bundle.pem"
for ((i = 1; i <= n; i++)); do mkdir -p "$work/agent/$i"; done
# start_batch NAME: starts all N agents (fresh data directories, logs agent/I/NAME.log), their
# start times in batch-NAME.launch.
start_batch() {
  local name=$1 i
  : >"$work/batch-$name.launch"
  for ((i = 1; i <= n; i++)); do
    rm -rf "$work/agent/$i/data"
    mkdir -p "$work/agent/$i/data"
    render "$here/conf/agent.conf" "$work/agent/$i/agent.conf" DATA_DIR="$work/agent/$i/data" \
      LOG_FILE="$work/agent/$i/$name.log" LB_PORT="$lb_port" SOCKET="$work/agent/$i/api.sock" \
      TRUST_BUNDLE="$work/trust-bundle.pem" AGENT_PLUGIN="$agent_na" \
      TCTI="swtpm:host=127.0.0.1,port=${swtpm_port[i]}"
  done
  for ((i = 1; i <= n; i++)); do
    echo "$i $EPOCHREALTIME" >>"$work/batch-$name.launch"
    setsid "$bin/spire-agent" run -config "$work/agent/$i/agent.conf" >>"$work/agent/$i/out" 2>&1 &
    agent_pid[i]=$!
  done
}
attested_count() { # attested_count NAME
  local i c=0
  for ((i = 1; i <= n; i++)); do
    grep -q "Node attestation was successful" "$work/agent/$i/$1.log" 2>/dev/null && c=$((c + 1))
  done
  echo "$c"
}
agents_alive() {
  local i
  for ((i = 1; i <= n; i++)); do
    kill -0 "${agent_pid[i]}" 2>/dev/null || { echo "agent $i (pid ${agent_pid[i]}) exited: $(tail -n 3 "$work/agent/$i/out")" >&2; return 1; }
  done
}
# run_batch NAME BOUND_SECONDS: starts the agents and waits (bounded) until all attested.
declare -A batch_line=()
pg_peak=0
run_batch() {
  local name=$1 bound=$2 end c p
  say "batch $name: starting $n agents (lb: $(lb_state))"
  start_batch "$name"
  end=$((SECONDS + bound))
  while :; do
    c=$(attested_count "$name")
    p=$(psql_ "SELECT count(*) FROM pg_stat_activity WHERE datname = 'spire'" spire || echo 0)
    ((p > pg_peak)) && pg_peak=$p
    ((c == n)) && break
    agents_alive || fail "batch $name: an agent exited before attesting"
    ((SECONDS < end)) || fail "batch $name: only $c of $n agents attested within ${bound} s"
    sleep 0.5
  done
  batch_line[$name]=$(py batch "$work" "$name" "$n" "$work/server1.log" "$work/server2.log") ||
    fail "batch $name: ${batch_line[$name]}"
  say "${batch_line[$name]}"
}

# Rate limit: SPIRE's AttestAgent limit is 1/s per caller IP and every agent reaches the servers
# from HAProxy's 127.0.0.1, so a batch of N takes about N s on one server: the bound allows for it.
limited_bound=$((3 * n + 120))
free_bound=$((2 * n + 120))

# ---- 1. timed batches ------------------------------------------------------------------------
write_server_conf 1 1h true
write_server_conf 2 1h true
start_server 1
wait_for 30 "HAProxy: server1 up, server2 down" lb_is "server1=UP server2=DOWN"
srv bundle 1 show >"$work/bundle-server1.pem"
openssl verify -CAfile "$work/upstream/root.crt" "$work/bundle-server1.pem" >/dev/null ||
  fail "server 1's bundle is not the upstream root"
run_batch one-limited "$limited_bound"
stop_agents
start_server 2
wait_for 30 "HAProxy: both servers up" lb_is "server1=UP server2=UP"
run_batch two-limited "$limited_bound"
stop_agents
stop_server 1
stop_server 2
write_server_conf 1 1h false
write_server_conf 2 1h false
start_server 1
wait_for 30 "HAProxy: server1 up, server2 down" lb_is "server1=UP server2=DOWN"
run_batch one-unlimited "$free_bound"
stop_agents
start_server 2
wait_for 30 "HAProxy: both servers up" lb_is "server1=UP server2=UP"
run_batch two-unlimited "$free_bound"
stop_agents
ok "timed batches done (one/two servers, attestation rate limit on/off)"

# ---- 2. HA: both servers, short agent SVID TTL ---------------------------------------------------
stop_server 1
stop_server 2
write_server_conf 1 "$short_ttl" false
write_server_conf 2 "$short_ttl" false
start_server 1
start_server 2
wait_for 30 "HAProxy: both servers up" lb_is "server1=UP server2=UP"
ha_start=$EPOCHREALTIME
run_batch ha "$free_bound"
ok "all $n agents attested through the load balancer"

check_agent_list() { # check_agent_list I: every expected ID exactly once, nothing else
  local s=$1 id
  srv agent "$s" list >"$work/agents-server$s.txt" || fail "spire-server agent list on server $s failed"
  grep -o 'spiffe://example.org/spire/agent/hwid_tpm/[0-9a-f]*' "$work/agents-server$s.txt" | sort >"$work/agents-server$s.ids"
  [[ $(wc -l <"$work/agents-server$s.ids") == "$n" ]] ||
    fail "server $s lists $(wc -l <"$work/agents-server$s.ids") hwid_tpm agents, expected $n"
  [[ $(sort -u "$work/agents-server$s.ids" | wc -l) == "$n" ]] || fail "server $s lists an agent twice"
  sort "$work/agent-ids" | cmp -s - "$work/agents-server$s.ids" ||
    fail "server $s lists other agent IDs than the $n TPMs' EKs give"
}
check_agent_list 1
check_agent_list 2
ok "every agent ID appears exactly once in 'spire-server agent list' on both servers"

# One registration entry per agent (created through server 1, served by both: shared datastore).
python3 - "$work/agent-ids" "$(id -u)" >"$work/entries.json" <<'PY'
import json, sys
ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]
print(json.dumps({"entries": [{"parent_id": pid, "spiffe_id": f"spiffe://example.org/scale/workload-{i}",
                               "selectors": [{"type": "unix", "value": f"uid:{sys.argv[2]}"}]}
                              for i, pid in enumerate(ids, 1)]}))
PY
srv entry 1 create -data "$work/entries.json" >"$work/entries-created.txt" || fail "entry create failed"
[[ $(grep -c '^Entry ID' "$work/entries-created.txt") == "$n" ]] ||
  fail "expected $n entries created: $(head -n 5 "$work/entries-created.txt")"
# fetch_svid I: agent I's workload gets spiffe://example.org/scale/workload-I, chaining to the root.
fetch_svid() {
  local i=$1 d=$work/agent/$i/svid
  rm -rf "$d" && mkdir -p "$d"
  "$bin/spire-agent" api fetch x509 -socketPath "$work/agent/$i/api.sock" -write "$d" >/dev/null 2>&1 || return 1
  openssl x509 -in "$d/svid.0.pem" -noout -ext subjectAltName 2>/dev/null |
    grep -q "URI:spiffe://example.org/scale/workload-$i\$" || return 1
  openssl verify -CAfile "$work/upstream/root.crt" -untrusted "$d/svid.0.pem" "$d/svid.0.pem" >/dev/null 2>&1
}
check_all_svids() { # check_all_svids WHAT BOUND
  local i
  for ((i = 1; i <= n; i++)); do
    wait_for "$2" "$1: agent $i's workload X509-SVID (spiffe://example.org/scale/workload-$i)" fetch_svid "$i"
  done
}
t0=$EPOCHREALTIME
check_all_svids "after registration" 90
ok "each of the $n workloads received its own X509-SVID through its agent's Workload API ($(elapsed "$t0") s after the entries were created)"

# Re-attestation before the kill: hwid_tpm agents re-attest (not renew) at about half the TTL.
# Wait until every agent has re-attested once, and count which server took them.
reattest_wait() { # reattest_wait SINCE BOUND SERVER_LOG...: every agent has an "agent attested" after SINCE
  local since=$1 bound=$2 end
  shift 2
  end=$((SECONDS + bound))
  until cat "$@" 2>/dev/null | py reattest "$work" "$since" "$work/agent-ids" /dev/stdin >"$work/reattest.out"; do
    ((SECONDS < end)) || fail "not every agent re-attested within ${bound} s: $(head -c 600 "$work/reattest.out")"
    sleep 2
  done
}
ttl_s=$(( $(sed 's/s$//; s/m$/*60/; s/h$/*3600/' <<<"$short_ttl") ))
reattest_bound=$((ttl_s + 120))
before=$EPOCHREALTIME
# Attestations of the ha batch happened before `before`: lines after it are re-attestations.
reattest_wait "$before" "$reattest_bound" "$work/server1.log" "$work/server2.log"
pre_s1=$(py count "$work/server1.log" "$before")
pre_s2=$(py count "$work/server2.log" "$before")
agents_alive || fail "an agent died during re-attestation"
ok "every agent re-attested with both servers up (server1 took $pre_s1, server2 took $pre_s2 attestations)"

# ---- 3. kill -9 server 1 while agents re-attest ------------------------------------------------
ps -o pid=,rss=,comm= --ppid "${server_pid[1]}" >"$work/server1-children.txt" || true
exec {stderr_fd}>&2 2>/dev/null # bash reports the killed job ("Killed") on its own stderr
kill_t=$EPOCHREALTIME
kill -KILL "${server_pid[1]}"
wait "${server_pid[1]}" || true
exec 2>&"$stderr_fd" {stderr_fd}>&-
say "server 1 (pid ${server_pid[1]}) killed with SIGKILL"
wait_for 30 "HAProxy: server1 down" lb_is "server1=DOWN server2=UP"
lb_down_s=$(elapsed "$kill_t")
# Its plugins notice they were re-parented and stop on their own (plugin runtime host watcher).
plugins_alive() {
  local cpid comm alive=""
  while read -r cpid _ comm; do
    [[ -r /proc/$cpid/stat && $(awk '{print $3}' "/proc/$cpid/stat" 2>/dev/null) != Z ]] &&
      alive+="$comm(pid $cpid) "
  done <"$work/server1-children.txt"
  printf '%s' "$alive"
}
no_plugins_alive() { [[ -z $(plugins_alive) ]]; }
wait_for 10 "the killed server's plugins to stop" no_plugins_alive
orphans=$(plugins_alive)
reattest_wait "$kill_t" "$reattest_bound" "$work/server2.log"
reattest_summary=$(tr '\n' ' ' <"$work/reattest.out")
agents_alive || fail "an agent died after server 1 was killed"
check_agent_list 2
check_all_svids "after the kill" 60
ok "after kill -9 of server 1 every agent re-attested through server 2 ($reattest_summary; s after the kill), none lost: $n listed, $n workloads served"
# The killed server's process group (its orphaned plugin, if any) is stopped by its id.
stop_group "${server_pid[1]}"
server_pid[1]=""

# ---- 4. server 1 back ----------------------------------------------------------------------
back_t=$EPOCHREALTIME
start_server 1
wait_for 30 "HAProxy: both servers up again" lb_is "server1=UP server2=UP"
check_agent_list 1
end=$((SECONDS + reattest_bound))
want=$((n < 3 ? n : 3))
until (($(py count "$work/server1.log" "$back_t") >= want)); do
  ((SECONDS < end)) || fail "server 1 took no re-attestation within ${reattest_bound} s after its restart"
  sleep 2
done
server2_attests() { (($(py count "$work/server2.log" "$back_t") >= want)); }
wait_for 60 "server 2 still attesting" server2_attests
back_s1=$(py count "$work/server1.log" "$back_t")
back_s2=$(py count "$work/server2.log" "$back_t")
check_agent_list 2
agents_alive || fail "an agent died after server 1 came back"
ok "server 1 is back: both list all $n agents, both attest again (server1 $back_s1, server2 $back_s2 since its restart)"

# ---- report --------------------------------------------------------------------------------
# Agent-side errors of the ha run, except the test's own Workload API polls that came before the
# registration entries reached the agent ("No identity issued").
cat "$work"/agent/*/ha.log | grep 'level=error' | grep -v 'msg="No identity issued"' >"$work/ha-agent-errors" || true
ha_agent_errors=$(wc -l <"$work/ha-agent-errors")
srv_errors="server1 $(grep -c 'level=error' "$work/server1.log" || true), server2 $(grep -c 'level=error' "$work/server2.log" || true)"
srv_error_kinds=$(cat "$work/server1.log" "$work/server2.log" | grep 'level=error' | grep -o 'msg="[^"]*"' | sort | uniq -c |
  sort -rn | head -n 4 | sed 's/^ *//' | tr '\n' ';' || true)
# Memory (RSS, KiB) of the running processes: agents with their plugin, swtpms, servers.
rss_of() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || true; }
sum_children_rss() { ps -o rss= --ppid "$1" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
a_rss=0 ap_rss=0 t_rss=0
for ((i = 1; i <= n; i++)); do
  a_rss=$((a_rss + $(rss_of "${agent_pid[i]}")))
  ap_rss=$((ap_rss + $(sum_children_rss "${agent_pid[i]}")))
  t_rss=$((t_rss + $(rss_of "${swtpm_pid[i]}")))
done
# CPU (user + system, clock ticks) of the same processes since they started (the ha run).
ticks_of() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
children_ticks() { local c t=0; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do t=$((t + $(ticks_of "$c"))); done; echo "$t"; }
a_cpu=0 ap_cpu=0
for ((i = 1; i <= n; i++)); do
  a_cpu=$((a_cpu + $(ticks_of "${agent_pid[i]}")))
  ap_cpu=$((ap_cpu + $(children_ticks "${agent_pid[i]}")))
done
hz=$(getconf CLK_TCK)
ha_run_s=$(elapsed "$ha_start")
s_rss=$(($(rss_of "${server_pid[2]}") + 0))
sp_rss=$(sum_children_rss "${server_pid[2]}")
pg_main=$(head -n 1 "$pgdir/data/postmaster.pid")
pg_rss=$(($(rss_of "$pg_main") + $(sum_children_rss "$pg_main")))
ha_rss=$(rss_of "$haproxy_pid")
pg_conns=$(psql_ "SELECT count(*) FROM pg_stat_activity WHERE datname = 'spire'" spire)
clock_rows=$(psql_ "SELECT count(*) FROM hwid_tpm_clock_state" spire)
[[ $clock_rows == "$n" ]] || fail "hwid_tpm_clock_state holds $clock_rows records, expected one per agent ($n)"
refused=$(cat "$work/server1.log" "$work/server2.log" | grep -c 'attestation refused' || true)
mib() { awk -v k="$1" -v d="$2" 'BEGIN { printf "%.1f", k / d / 1024 }'; }

rep "hwid SPIRE HA scale report ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
rep "agents: $n, each with its own swtpm; SPIRE $("$bin/spire-server" --version 2>&1); PostgreSQL 15; HAProxy mode tcp"
rep "TPM provisioning: $n distinct TPMs in ${provision_s} s ($lanes lanes of swtpm_setup, one EK CA); $n swtpms started in ${swtpm_start_s} s"
rep ""
rep "attestation latency = agent process start -> its 'Node attestation was successful' log line (seconds)"
rep "total = first agent start -> last agent attested; rate = attestations / total;"
rep "srv rate = the servers' 'agent attested' log lines during the batch: (lines - 1) / (last - first);"
rep "srv1/srv2 = attestations each server verified in the batch"
rep "batch              n   ok   p50    p95    p99    max    total   rate/s  srv rate/s  srv1/srv2"
for b in one-limited two-limited one-unlimited two-unlimited ha; do
  # shellcheck disable=SC2086
  set -- ${batch_line[$b]}
  rep "$(printf '%-16s %4s %4s %6s %6s %6s %6s %7s %7s %10s  %s' "$b" "${2#n=}" "${3#ok=}" "${4#p50=}" "${5#p95=}" "${6#p99=}" "${7#max=}" "${8#total=}" "${9#rate=}" "${10#srv_rate=}" "${11#srv=}")"
done
rep "  (one/two = servers behind HAProxy; limited = SPIRE's default ratelimit.attestation = true,"
rep "   1 AttestAgent/s per caller IP, and every agent arrives from HAProxy's 127.0.0.1; unlimited = false;"
rep "   ha = the run of phases 2-4, two servers, unlimited, agent_ttl $short_ttl)"
rep ""
rep "re-attestation, both servers up: every agent once; server1 took $pre_s1, server2 $pre_s2"
rep "kill -9 of server 1: HAProxy marked it down after ${lb_down_s} s; every agent re-attested through server 2: $reattest_summary"
rep "  agent errors during the ha run (failed attestations, lost server connections; the test's Workload API polls"
rep "  before the entries arrived not counted): $ha_agent_errors$( ((ha_agent_errors == 0)) || printf ', e.g. %s' "$(sed 's/^time="[^"]*" //' "$work/ha-agent-errors" | cut -c1-200 | sort | uniq -c | sort -rn | head -n 3 | tr '\n' ';')")"
rep "  processes of the killed spire-server still running after SIGKILL: ${orphans:-none}"
rep "error lines in the server logs over the whole run (restarts and the kill included): $srv_errors${srv_error_kinds:+: $srv_error_kinds}"
rep "server 1 back: both list all $n agents; attestations since its restart: server1 $back_s1, server2 $back_s2"
rep "failures: agents not attested 0 (every batch complete); attestations refused by hwid_tpm: $refused; agents lost 0"
rep "hwid_tpm clock-state records in PostgreSQL: $clock_rows (one per agent); connections to the spire database: peak $pg_peak (sampled during the batches), $pg_conns at the end"
rep ""
rep "memory (RSS): spire-agent $(mib "$a_rss" "$n") MiB/agent + hwid_tpm agent plugin $(mib "$ap_rss" "$n") MiB/agent; swtpm $(mib "$t_rss" "$n") MiB/TPM"
rep "  spire-server $(mib "$s_rss" 1) MiB + its plugins $(mib "$sp_rss" 1) MiB (server 2); PostgreSQL (postmaster + backends) $(mib "$pg_rss" 1) MiB; HAProxy $(mib "${ha_rss:-0}" 1) MiB"
rep "  total for $n nodes (agent + plugin + swtpm): $(mib $((a_rss + ap_rss + t_rss)) 1) MiB"
rep "CPU over the ${ha_run_s} s of the ha run (attestation, re-attestations every ~half agent_ttl, the server kill):"
rep "  spire-agent $(awk -v t="$a_cpu" -v n="$n" -v hz="$hz" 'BEGIN { printf "%.2f", t / n / hz }') s/agent, hwid_tpm agent plugin $(awk -v t="$ap_cpu" -v n="$n" -v hz="$hz" 'BEGIN { printf "%.2f", t / n / hz }') s/agent"
rep "wall time of this run: $(elapsed "$run_start") s"
echo
cat "$report"
[[ -z ${HWID_SCALE_REPORT:-} ]] || cp "$report" "$HWID_SCALE_REPORT"
((refused == 0)) || fail "hwid_tpm refused $refused attestations (see server logs)"
echo "scale test: ${passed:-0} passed, 0 failed"
