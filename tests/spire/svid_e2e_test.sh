#!/usr/bin/env bash
# hwid-svid end to end with a REAL SPIRE v1.13.3 server (OPA policy engine with
# examples/svid/policy.rego + policy_data.json), a real agent attested with hwid_tpm on swtpm,
# a SoftHSM2 token, nginx and curl:
#   a. hwid-svid mints node1's X509-SVIDs: spiffe://example.org/hw/node1/web with its key in the
#      TPM (nginx) and .../node1/curl with its key on the token (curl). nginx and curl talk mutual
#      TLS 1.3 and 1.2 with them: nginx verifies the client against svid_bundle.pem
#      (ssl_verify_client on) and returns the client certificate, whose URI SAN is checked; curl's
#      verification of the server against svid_bundle.pem passes the chain and stops at the host
#      name (an SVID has none), so curl pins the server's SVID key after openssl s_client checked
#      that certificate against the bundle and its SPIFFE ID. The key files are references only.
#   b. hwid-svid run (ttl 30 s) renews at half-life and reloads nginx (SIGHUP via its pid file)
#      while curl requests run: at least two renewals, new serials served, zero failed requests.
#      With cmd: started once after the first SVID, SIGHUP after each renewal, stopped with run.
#   c. refusals: an ID outside /hw/node1/, node2's helper asking for node1's ID, CSRs with two
#      URI SANs / a DNS name / no TTL / a TTL over the cap (PERMISSION_DENIED from the policy,
#      exit 1); no agent socket, unreachable server (exit 1); configuration errors (exit 2).
#   d. TPM gone (swtpm stopped): exit 1 naming the TPM; `run` recovers after the agent, the
#      server and the TPM come back, writing a new SVID each time.
# usage: svid_e2e_test.sh HWID_SVID SVID_MINT_TOOL SERVER_NODEATTESTOR AGENT_NODEATTESTOR PROVIDER_DIR
# SPIRE binaries: $HWID_SPIRE_BIN, else built/cached by tests/spire/build-spire. Needs swtpm
# (swtpm-setup/), softhsm2, nginx, curl, openssl, python3. Missing SPIRE or tools fail when
# CI=true, else skip (exit 77). HWID_KEEP_WORK=1 keeps the work directory.
set -euo pipefail

root=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
usage="usage: $0 HWID_SVID SVID_MINT_TOOL SERVER_NODEATTESTOR AGENT_NODEATTESTOR PROVIDER_DIR"
hwid_svid=$(readlink -f "${1:?$usage}")
mint_tool=$(readlink -f "${2:?$usage}")
server_na=$(readlink -f "${3:?$usage}")
agent_na=$(readlink -f "${4:?$usage}")
provider_dir=$(readlink -f "${5:?$usage}")
[[ -f $provider_dir/hwid.so ]] || { echo "FAIL: no hwid.so in $provider_dir" >&2; exit 1; }

skip_or_fail() {
  if [[ ${CI:-} == true ]]; then echo "FAIL: $*" >&2; exit 1; fi
  echo "SKIP: $*" >&2; exit 77
}
softhsm_module=${HWID_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
for tool in softhsm2-util nginx curl openssl python3 swtpm; do
  command -v "$tool" >/dev/null 2>&1 || skip_or_fail "$tool not found (apt-get install softhsm2 nginx-light curl swtpm)"
done
[[ -f $softhsm_module ]] || skip_or_fail "no SoftHSM2 module at $softhsm_module"
bin=${HWID_SPIRE_BIN:-}
if [[ -z $bin ]]; then
  bin=$("$root/tests/spire/build-spire") || skip_or_fail "cannot build SPIRE v1.13.3"
fi
[[ -x $bin/spire-server && -x $bin/spire-agent ]] || { echo "FAIL: no SPIRE binaries in $bin" >&2; exit 1; }

work=$(mktemp -d /tmp/hwid-svid-e2e.XXXXXX)
server_pid="" agent_pid="" nginx_pid="" run_pid=""
stop_pid() {  # stop_pid PID [SIGNAL]: stops one process this script started and reaps it
  [[ -n $1 ]] || return 0
  kill "-${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_pid "$run_pid"
  stop_pid "$nginx_pid" QUIT
  stop_pid "$agent_pid"
  stop_pid "$server_pid"
  "$root/swtpm-setup/swtpm-down" "$work/tpm1" >/dev/null 2>&1 || true
  if ((rc != 0)); then
    for f in server.log agent.log run.log nginx/logs/error.log; do
      echo "--- $f (tail) ---" >&2
      tail -n 30 "$work/$f" >&2 2>/dev/null || true
    done
  fi
  if [[ -n ${HWID_KEEP_WORK:-} ]]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
passed=0
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; passed=$((passed + 1)); }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.3
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# expect_exit RC PATTERN OUT COMMAND...: COMMAND exits with RC and its output (in OUT) matches
# the extended regular expression PATTERN.
expect_exit() {
  local want=$1 pattern=$2 out=$3 rc=0; shift 3
  "$@" >"$out" 2>&1 || rc=$?
  [[ $rc == "$want" ]] || { cat "$out" >&2; fail "$* exited $rc, expected $want"; }
  grep -Eq -- "$pattern" "$out" || { cat "$out" >&2; fail "$* did not say /$pattern/"; }
}
uri_sans() { openssl x509 -in "$1" -noout -ext subjectAltName | sed -n 's/^ *//p' | grep -v 'Subject Alternative Name'; }
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
pub_of_cert() { openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64; }
pin_of_cert() { openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64; }

# ---- devices: swtpm (the agent's TPM, also holding nginx's key) and a SoftHSM2 token (curl) --
"$root/swtpm-setup/swtpm-up" "$work/tpm1" >/dev/null
# shellcheck disable=SC1091
tcti=$(. "$work/tpm1/env"; echo "$HWID_TCTI")
trusted_ca=$(. "$work/tpm1/env"; echo "$HWID_EK_CA")
swtpm_port=$(. "$work/tpm1/env"; echo "$HWID_SWTPM_PORT")
mkdir -p "$work/softhsm/tokens"
cat >"$work/softhsm/softhsm2.conf" <<CONF
directories.tokendir = $work/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF=$work/softhsm/softhsm2.conf
softhsm2-util --init-token --free --label svid --pin 1234 --so-pin 0000 >/dev/null
printf '1234\n' >"$work/pin"
chmod 600 "$work/pin"
export OPENSSL_MODULES=$provider_dir

# ---- SPIRE: server with the policy engine, agent attested with hwid_tpm ----------------------
port=$(free_port)
sock="$work/server-api.sock"
mkdir -p "$work/server-data"
cat >"$work/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$port"
  socket_path = "$sock"
  trust_domain = "example.org"
  data_dir = "$work/server-data"
  log_level = "DEBUG"
  log_file = "$work/server.log"
  experimental {
    auth_opa_policy_engine {
      local {
        rego_path = "$root/examples/svid/policy.rego"
        policy_data_path = "$root/examples/svid/policy_data.json"
      }
    }
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$work/server-data/datastore.sqlite3"
    }
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = "$work/server-data/keys.json"
    }
  }
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$server_na"
    plugin_data {
      ek_ca_bundle_paths = ["$trusted_ca"]
    }
  }
}
CONF
start_server() {
  "$bin/spire-server" run -config "$work/server.conf" >>"$work/server.out" 2>&1 &
  server_pid=$!
  wait_for 60 "spire-server healthy" "$bin/spire-server" healthcheck -socketPath "$sock" -shallow
}
start_server
grep -q "Experimental features have been enabled" "$work/server.log" ||
  fail "the server did not take the experimental auth_opa_policy_engine block"
"$bin/spire-server" bundle show -socketPath "$sock" >"$work/bundle.pem"
ok "spire-server $("$bin/spire-server" --version 2>&1) running with the OPA policy examples/svid/policy.rego"

mkdir -p "$work/agent-data"
cat >"$work/agent.conf" <<CONF
agent {
  data_dir = "$work/agent-data"
  log_level = "DEBUG"
  log_file = "$work/agent.log"
  server_address = "127.0.0.1"
  server_port = "$port"
  socket_path = "$work/agent-api.sock"
  trust_bundle_path = "$work/bundle.pem"
  trust_domain = "example.org"
}
plugins {
  NodeAttestor "hwid_tpm" {
    plugin_cmd = "$agent_na"
    plugin_data {
      tcti = "$tcti"
      ek = "auto"
      ak_handle = "0x81000100"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
CONF
start_agent() {
  "$bin/spire-agent" run -config "$work/agent.conf" >>"$work/agent.out" 2>&1 &
  agent_pid=$!
  wait_for 90 "spire-agent healthy" "$bin/spire-agent" healthcheck -socketPath "$work/agent-api.sock"
}
start_agent
agent_id=$("$bin/spire-server" agent list -socketPath "$sock" | sed -n 's/.*SPIFFE ID *: *\(spiffe:[^ ]*hwid_tpm[^ ]*\).*/\1/p' | head -n1)
[[ -n $agent_id ]] || fail "no hwid_tpm agent listed"

# Helper identities. Two "nodes" on one agent: node1's helper is this build's hwid-svid (and the
# test's mint tool), node2's helper a copy of hwid-svid elsewhere; unix:path tells them apart.
mkdir -p "$work/node2-bin"
cp "$hwid_svid" "$work/node2-bin/hwid-svid"
node2_svid=$work/node2-bin/hwid-svid
uid=$(id -u)
entry() {  # entry SPIFFE_ID PATH
  "$bin/spire-server" entry create -socketPath "$sock" -parentID "$agent_id" -spiffeID "$1" \
    -selector "unix:uid:$uid" -selector "unix:path:$2" >/dev/null
}
entry spiffe://example.org/hwid-helper/node1 "$hwid_svid"
entry spiffe://example.org/hwid-helper/node1 "$mint_tool"
entry spiffe://example.org/hwid-helper/node2 "$node2_svid"
"$bin/spire-server" entry show -socketPath "$sock" >"$work/entries.txt"
! grep -qi 'admin *: *true' "$work/entries.txt" || fail "a registration entry is an admin"
ok "agent $agent_id attested (hwid_tpm); helper entries for node1 and node2 (no admin, no downstream)"

# helper_conf NAME ID KEY_LINES [EXTRA]: a hwid-svid configuration in $work/NAME.hcl writing to
# $work/NAME/.
helper_conf() {
  cat >"$work/$1.hcl" <<CONF
agent_address = "$work/agent-api.sock"
server_address = "127.0.0.1:$port"
trust_domain = "example.org"
spiffe_id = "$2"
$3
cert_dir = "$work/$1"
provider_dir = "$provider_dir"
ttl = 3600
${4:-}
CONF
}
tpm_key() { printf 'key_type = "tpm"\nkey_file = "%s"\ntcti = "%s"\n' "$work/keys/$1.tss2.pem" "$tcti"; }
token_key() {
  printf 'key_type = "pkcs11"\npkcs11_uri = "pkcs11:token=svid;object=%s?module-path=%s&pin-source=%s"\n' \
    "$1" "$softhsm_module" "$work/pin"
}
mkdir -p "$work/keys"

# ==== a. nginx (TPM key) and curl (token key) in mutual TLS on hwid-svid SVIDs ===============
helper_conf web spiffe://example.org/hw/node1/web "$(tpm_key web)"
helper_conf curl spiffe://example.org/hw/node1/curl "$(token_key curl)"
# The agent syncs new entries every 5 s: the first mint waits for the helper's own SVID.
wait_for 60 "hwid-svid's own SVID (first mint)" "$hwid_svid" mint --config "$work/web.hcl"
t0=$(date +%s%N)
"$hwid_svid" mint --config "$work/curl.hcl" >"$work/mint-curl.out" 2>&1 || { cat "$work/mint-curl.out" >&2; fail "minting node1/curl"; }
t1=$(date +%s%N)
grep -q "made a new ec-p256 key on token 'svid'" "$work/mint-curl.out" || fail "no new token key reported"
for n in web curl; do
  d=$work/$n
  for f in svid.pem svid_key.pem svid_bundle.pem; do [[ -s $d/$f ]] || fail "$n: $f missing"; done
  [[ $(uri_sans "$d/svid.pem") == "URI:spiffe://example.org/hw/node1/$n" ]] ||
    fail "$n: the SVID's SANs are '$(uri_sans "$d/svid.pem")', expected exactly URI:spiffe://example.org/hw/node1/$n"
  openssl verify -CAfile "$d/svid_bundle.pem" "$d/svid.pem" >/dev/null || fail "$n: the SVID does not chain to svid_bundle.pem"
  openssl verify -CAfile "$work/bundle.pem" "$d/svid.pem" >/dev/null || fail "$n: the SVID does not chain to the server's bundle"
  [[ $(stat -c %a "$d/svid_key.pem") == 600 ]] || fail "$n: svid_key.pem is not mode 0600"
  ! grep -Eq 'BEGIN (ENCRYPTED |EC |RSA )?PRIVATE KEY' "$d/svid_key.pem" || fail "$n: svid_key.pem holds a private key"
done
grep -q 'BEGIN TSS2 PRIVATE KEY' "$work/web/svid_key.pem" || fail "web: svid_key.pem is not a TSS2 key file"
grep -q 'BEGIN PKCS#11 PROVIDER URI' "$work/curl/svid_key.pem" || fail "curl: svid_key.pem is not a PKCS#11 URI file"
openssl asn1parse -in "$work/curl/svid_key.pem" | grep -q 'pkcs11:.*token=svid.*object=curl' || fail "curl: the URI file names another key"
! openssl asn1parse -in "$work/curl/svid_key.pem" | grep -qi 'pin-value' || fail "curl: the URI file holds a PIN"
# openssl reads the references through hwid: public key only, the private key stays in the device.
HWID_TCTI=$tcti openssl pkey -provider default -provider hwid -in "$work/web/svid_key.pem" -noout -text >"$work/pkey-web.txt" 2>&1
openssl pkey -provider default -provider hwid -passin "file:$work/pin" -in "$work/curl/svid_key.pem" -noout -text >"$work/pkey-curl.txt" 2>&1
for n in web curl; do
  grep -q "not exportable" "$work/pkey-$n.txt" || { cat "$work/pkey-$n.txt" >&2; fail "$n: openssl pkey does not say the key is not exportable"; }
  ! grep -q '^priv:' "$work/pkey-$n.txt" || fail "$n: openssl pkey printed private key material"
done
HWID_TCTI=$tcti openssl pkey -provider default -provider hwid -in "$work/web/svid_key.pem" -pubout -out "$work/web.pub"
[[ $(openssl pkey -pubin -in "$work/web.pub" -outform DER | sha256sum | cut -c1-64) == $(pub_of_cert "$work/web/svid.pem") ]] ||
  fail "web: the SVID's public key is not the TPM key's"
ok "hwid-svid minted node1/web (TPM key) and node1/curl (token key, $(((t1 - t0) / 1000000)) ms): one URI SAN each, chain to the bundle, key files are references (openssl pkey: not exportable, no private material)"

# nginx: the SVID and key reference from hwid-svid, clients verified against svid_bundle.pem;
# it answers with the TLS version and the client certificate (URL-escaped PEM).
mkdir -p "$work/nginx/logs" "$work/nginx/tmp"
cat >"$work/nginx/openssl.cnf" <<CONF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = evp_properties
[provider_sect]
default = default_sect
hwid = hwid_sect
[default_sect]
activate = 1
[hwid_sect]
module = $provider_dir/hwid.so
tcti = $tcti
activate = 1
[evp_properties]
default_properties = ?provider!=hwid
CONF
cat >"$work/curl.cnf" <<CONF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = evp_properties
[provider_sect]
default = default_sect
hwid = hwid_sect
[default_sect]
activate = 1
[hwid_sect]
module = $provider_dir/hwid.so
pkcs11-pin-source = file:$work/pin
activate = 1
[evp_properties]
default_properties = ?provider!=hwid
CONF
nport=$(free_port)
user_line=""
[[ $uid == 0 ]] && user_line="user root root;"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
$user_line
error_log $work/nginx/logs/error.log info;
pid $work/nginx/logs/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nport ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $work/web/svid.pem;
    ssl_certificate_key $work/web/svid_key.pem;
    ssl_client_certificate $work/web/svid_bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    location / { return 200 "\$ssl_protocol \$ssl_client_verify \$ssl_client_escaped_cert\n"; }
  }
}
CONF
OPENSSL_CONF=$work/nginx/openssl.cnf nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" >"$work/nginx.out" 2>&1 &
nginx_pid=$!
wait_for 30 "nginx listening" bash -c "echo >/dev/tcp/127.0.0.1/$nport"
wait_for 10 "nginx pid file" test -s "$work/nginx/logs/nginx.pid"

# The server's certificate as a client sees it, checked like a SPIFFE client would: chain to
# svid_bundle.pem and SPIFFE ID (openssl s_client with curl's token key, through hwid).
printf 'GET / HTTP/1.0\r\n\r\n' | OPENSSL_CONF=$work/curl.cnf openssl s_client -connect "127.0.0.1:$nport" \
  -CAfile "$work/curl/svid_bundle.pem" -verify_return_error -cert "$work/curl/svid.pem" \
  -key "$work/curl/svid_key.pem" -showcerts -ign_eof >"$work/s_client.txt" 2>&1 || { cat "$work/s_client.txt" >&2; fail "openssl s_client to nginx"; }
grep -q "Verify return code: 0 (ok)" "$work/s_client.txt" || fail "s_client: nginx's chain does not verify against svid_bundle.pem"
sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p;/-----END CERTIFICATE-----/q' "$work/s_client.txt" >"$work/server-seen.pem"
[[ $(uri_sans "$work/server-seen.pem") == "URI:spiffe://example.org/hw/node1/web" ]] || fail "nginx presents '$(uri_sans "$work/server-seen.pem")'"
grep -q "HTTP/1.1 200" "$work/s_client.txt" || fail "s_client: no 200 from nginx"
server_pin=$(pin_of_cert "$work/server-seen.pem")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/rogue.key" -subj /O=rogue \
  -addext subjectAltName=URI:spiffe://example.org/hw/node1/curl -days 1 -out "$work/rogue.crt" 2>/dev/null
# curl's own verification against the bundle gets through the chain and stops at the host name:
# an X509-SVID carries a SPIFFE ID, not a DNS name or CN (a wrong CA file fails earlier).
expect_exit 60 "unable to obtain common name|no alternative certificate subject name" "$work/curl-cacert.out" \
  env OPENSSL_CONF="$work/curl.cnf" curl -sS --cacert "$work/curl/svid_bundle.pem" \
  --cert "$work/curl/svid.pem" --key "$work/curl/svid_key.pem" "https://127.0.0.1:$nport/"
expect_exit 60 "SSL certificate problem" "$work/curl-wrongca.out" \
  env OPENSSL_CONF="$work/curl.cnf" curl -sS --cacert "$work/rogue.crt" \
  --cert "$work/curl/svid.pem" --key "$work/curl/svid_key.pem" "https://127.0.0.1:$nport/"
# curl_get OUT [curl args]: a mutual-TLS GET with curl's token key, the server pinned to the SVID
# key checked above (-k only lifts curl's host name rule; --pinnedpubkey decides).
curl_get() {
  local out=$1; shift
  OPENSSL_CONF=$work/curl.cnf curl -sS -k --pinnedpubkey "sha256//$server_pin" \
    --cert "$work/curl/svid.pem" --key "$work/curl/svid_key.pem" "$@" "https://127.0.0.1:$nport/" >"$out" 2>&1
}
for v in 1.3 1.2; do
  curl_get "$work/curl-$v.out" "--tlsv$v" --tls-max "$v" -w '\n%{http_code} %{certs}' || { cat "$work/curl-$v.out" >&2; fail "curl TLS $v"; }
  read -r proto verify escaped <"$work/curl-$v.out"
  [[ $proto == "TLSv$v" && $verify == SUCCESS ]] || fail "TLS $v: nginx says '$proto $verify'"
  python3 -c 'import sys, urllib.parse; print(urllib.parse.unquote(sys.argv[1]))' "$escaped" >"$work/client-seen-$v.pem"
  [[ $(uri_sans "$work/client-seen-$v.pem") == "URI:spiffe://example.org/hw/node1/curl" ]] ||
    fail "TLS $v: nginx saw client '$(uri_sans "$work/client-seen-$v.pem")'"
  openssl verify -CAfile "$work/web/svid_bundle.pem" "$work/client-seen-$v.pem" >/dev/null || fail "TLS $v: client cert does not chain"
  [[ $(pub_of_cert "$work/client-seen-$v.pem") == $(pub_of_cert "$work/curl/svid.pem") ]] || fail "TLS $v: not curl's SVID"
  grep -q "^200 " "$work/curl-$v.out" || fail "TLS $v: no 200"
done
# Controls: nginx refuses a client without a certificate and one from another CA; curl refuses
# a server key other than the pinned one.
expect_exit 0 "400 No required SSL certificate" "$work/curl-nocert.out" \
  curl -sS -k "https://127.0.0.1:$nport/"
expect_exit 0 "400 The SSL certificate error" "$work/curl-rogue.out" \
  curl -sS -k --cert "$work/rogue.crt" --key "$work/rogue.key" "https://127.0.0.1:$nport/"
expect_exit 90 "pinned public key|SSL: public key does not match" "$work/curl-badpin.out" \
  env OPENSSL_CONF="$work/curl.cnf" curl -sS -k --pinnedpubkey "sha256//$(pin_of_cert "$work/rogue.crt")" \
  --cert "$work/curl/svid.pem" --key "$work/curl/svid_key.pem" "https://127.0.0.1:$nport/"
ok "nginx (TPM key) and curl (token key) in mutual TLS 1.3 and 1.2 on hwid-svid SVIDs: nginx verified curl's SVID against svid_bundle.pem (URI SAN node1/curl checked); the server's chain verified against svid_bundle.pem and its SPIFFE ID node1/web checked, curl pinned its key; no-cert, foreign-CA and wrong-pin clients refused"

# ==== b. hwid-svid run: renewal at half-life, nginx reloaded, no failed request ==============
# run_writes: how many SVIDs `hwid-svid run` has written (run.log); run_writes_ge N.
run_writes() { grep -c '^hwid-svid: wrote ' "$work/run.log" || true; }
run_writes_ge() { (($(run_writes) >= $1)); }
helper_conf run spiffe://example.org/hw/node1/web "$(tpm_key web)" \
  "renew_signal = \"SIGHUP\"
pid_file_name = \"$work/nginx/logs/nginx.pid\""
sed -i 's/^ttl = 3600$/ttl = 30/; s#^cert_dir = .*#cert_dir = "'"$work"'/web"#' "$work/run.hcl"
first_serial=$(serial_of "$work/web/svid.pem")
first_pub=$(pub_of_cert "$work/web/svid.pem")
"$hwid_svid" run --config "$work/run.hcl" >"$work/run.log" 2>&1 &
run_pid=$!
requests=0 failed=0
: >"$work/serials.txt"
end=$((SECONDS + 75))
while ((SECONDS < end)); do
  v=1.3
  ((requests % 2)) && v=1.2
  requests=$((requests + 1))
  if curl_get "$work/loop.out" "--tlsv$v" --tls-max "$v" -w '\n%{http_code}\n%{certs}' && grep -q '^200$' "$work/loop.out"; then
    sed -n 's/^Serial Number: *//p' "$work/loop.out" | head -n1 >>"$work/serials.txt"
  else
    failed=$((failed + 1))
    cp "$work/loop.out" "$work/loop-failed-$failed.out"
  fi
  run_writes_ge 3 && [[ -z ${renewed_at:-} ]] && renewed_at=$SECONDS
  [[ -n ${renewed_at:-} ]] && ((SECONDS >= renewed_at + 2)) && break
done
stop_pid "$run_pid"
run_pid=""
writes=$(run_writes)
((writes >= 3)) || fail "hwid-svid run wrote $writes SVIDs in 75 s (ttl 30 s), expected >= 3"
((failed == 0)) || { cat "$work/loop-failed-1.out" >&2; fail "$failed of $requests requests failed during renewals"; }
distinct=$(sort -u "$work/serials.txt" | wc -l)
((distinct >= 3)) || fail "curl saw $distinct server serials, expected >= 3 (first + two renewals)"
grep -q "signal 1 (SIGHUP) received" "$work/nginx/logs/error.log" || fail "nginx was not signalled"
[[ $(pub_of_cert "$work/web/svid.pem") == "$first_pub" ]] || fail "the renewed SVID has another key"
[[ $(serial_of "$work/web/svid.pem") != "$first_serial" ]] || fail "svid.pem was not renewed"
curl_get "$work/last.out" -w '\n%{http_code}\n%{certs}' || fail "curl after the renewals"
last_seen=$(sed -n 's/^Serial Number: *//p' "$work/last.out" | head -n1 | tr -d ':' | tr 'a-f' 'A-F' | sed 's/^0*//')
[[ $last_seen == $(serial_of "$work/web/svid.pem" | sed 's/^0*//') ]] || fail "nginx serves $last_seen, svid.pem is $(serial_of "$work/web/svid.pem")"
ok "hwid-svid run (ttl 30 s): $((writes - 1)) renewals at half-life, nginx reloaded by SIGHUP via its pid file, $requests requests (TLS 1.3/1.2) with 0 failures, $distinct server serials seen, same TPM key"
stop_pid "$nginx_pid" QUIT
nginx_pid=""
# cmd mode: run starts cmd once after the first SVID, signals it after each renewal, and stops
# it on SIGTERM.
cat >"$work/cmd.sh" <<'SH'
#!/bin/sh
echo "started $$" >>"$1"
trap 'echo HUP >>"$1"' HUP
while :; do sleep 0.2; done
SH
chmod +x "$work/cmd.sh"
helper_conf cmdrun spiffe://example.org/hw/node1/cmd "$(token_key cmd)" \
  "cmd = \"$work/cmd.sh\"
cmd_args = \"'$work/cmd.log'\"
renew_signal = \"SIGHUP\""
sed -i 's/^ttl = 3600$/ttl = 10/' "$work/cmdrun.hcl"
"$hwid_svid" run --config "$work/cmdrun.hcl" >"$work/cmdrun.log" 2>&1 &
run_pid=$!
hups_ge() { (($(grep -c '^HUP$' "$work/cmd.log" 2>/dev/null || true) >= $1)); }
wait_for 60 "cmd started and signalled after two renewals" hups_ge 2
cmd_pid=$(sed -n 's/^started //p' "$work/cmd.log")
[[ $(grep -c '^started ' "$work/cmd.log") == 1 ]] || fail "cmd was started more than once"
grep -q "started $work/cmd.sh (pid $cmd_pid)" "$work/cmdrun.log" || fail "run did not report cmd's pid"
stop_pid "$run_pid"
run_pid=""
! kill -0 "$cmd_pid" 2>/dev/null || fail "cmd (pid $cmd_pid) still runs after run stopped"
ok "run with cmd: started once after the first SVID (pid $cmd_pid), SIGHUP after each renewal, stopped with run"

# ==== c. refusals ===============================================================================
# Another node's ID, another path, and no TTL: the policy refuses, the helper exits 1, no files.
helper_conf other spiffe://example.org/hw/node2/web "$(tpm_key other)"
expect_exit 1 "MintX509SVID at 127.0.0.1:$port: PERMISSION_DENIED: authorization denied for method /spire.api.server.svid.v1.SVID/MintX509SVID" \
  "$work/deny-node2id.out" "$hwid_svid" mint --config "$work/other.hcl"
helper_conf other2 spiffe://example.org/app/node1/web "$(tpm_key other)"
expect_exit 1 "PERMISSION_DENIED: authorization denied" "$work/deny-path.out" "$hwid_svid" mint --config "$work/other2.hcl"
helper_conf nottl spiffe://example.org/hw/node1/web "$(tpm_key web)"
sed -i 's/^ttl = 3600$/ttl = 0/' "$work/nottl.hcl"
expect_exit 1 "PERMISSION_DENIED: authorization denied" "$work/deny-ttl0.out" "$hwid_svid" mint --config "$work/nottl.hcl"
[[ ! -e $work/other/svid.pem && ! -e $work/other2/svid.pem && ! -e $work/nottl/svid.pem ]] || fail "files written after a refusal"
grep -q "spiffe://example.org/hwid-helper/node1" "$work/deny-node2id.out" || fail "the refusal does not name the helper's identity"
ok "node1's helper refused (exit 1, PERMISSION_DENIED from the policy, no files) for hw/node2/web, app/node1/web and ttl 0"
# node2's helper: its own node's IDs yes, node1's no.
helper_conf n2own spiffe://example.org/hw/node2/web "$(tpm_key n2own)"
wait_for 30 "node2's helper mints hw/node2/web" "$node2_svid" mint --config "$work/n2own.hcl"
[[ $(uri_sans "$work/n2own/svid.pem") == "URI:spiffe://example.org/hw/node2/web" ]] || fail "node2's SVID"
helper_conf n2steal spiffe://example.org/hw/node1/web "$(tpm_key n2steal)"
expect_exit 1 "PERMISSION_DENIED: authorization denied.*hwid-helper/node2" "$work/deny-n2.out" "$node2_svid" mint --config "$work/n2steal.hcl"
ok "node2's helper mints hw/node2/web but is refused node1's hw/node1/web (exit 1)"
# CSRs hwid-svid never makes, sent with node1's helper identity by the mint tool.
csr() {  # csr NAME SUBJECT SAN
  openssl req -new -key "$work/sw.key" -subj "$2" -addext "subjectAltName=$3" -out "$work/$1.csr" 2>/dev/null
}
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/sw.key" 2>/dev/null
csr one / URI:spiffe://example.org/hw/node1/tool
csr two / "URI:spiffe://example.org/hw/node1/a,URI:spiffe://example.org/hw/node1/b"
csr dns / "URI:spiffe://example.org/hw/node1/a,DNS:web.example.org"
csr cn /CN=admin URI:spiffe://example.org/hw/node1/a
wait_for 30 "the mint tool's helper SVID" "$mint_tool" --config "$work/web.hcl" --csr "$work/one.csr" --ttl 60
expect_exit 0 "^ok spiffe://example.org/hw/node1/tool$" "$work/tool-one.out" "$mint_tool" --config "$work/web.hcl" --csr "$work/one.csr" --ttl 3600
# SPIRE's lower bound for MintX509SVID's ttl: none; NotBefore is backdated 10 s.
expect_exit 0 "^ok spiffe://example.org/hw/node1/tool$" "$work/tool-ttl1.out" "$mint_tool" --config "$work/web.hcl" --csr "$work/one.csr" --ttl 1 --out "$work/ttl1.pem"
lifetime=$(($(date -d "$(openssl x509 -in "$work/ttl1.pem" -noout -enddate | cut -d= -f2)" +%s) - $(date -d "$(openssl x509 -in "$work/ttl1.pem" -noout -startdate | cut -d= -f2)" +%s)))
((lifetime == 11)) || fail "ttl 1: the SVID is valid $lifetime s, expected 11 (1 + 10 s backdating)"
for c in two dns cn; do
  expect_exit 1 "^PERMISSION_DENIED: .*authorization denied" "$work/tool-$c.out" "$mint_tool" --config "$work/web.hcl" --csr "$work/$c.csr" --ttl 60
done
expect_exit 1 "^PERMISSION_DENIED" "$work/tool-ttl.out" "$mint_tool" --config "$work/web.hcl" --csr "$work/one.csr" --ttl 3601
expect_exit 1 "^PERMISSION_DENIED" "$work/tool-ttl0.out" "$mint_tool" --config "$work/web.hcl" --csr "$work/one.csr" --ttl 0
grep -c "authorization denied for method /spire.api.server.svid.v1.SVID/MintX509SVID" "$work/server.log" >"$work/denials.txt"
(($(cat "$work/denials.txt") >= 9)) || fail "the server logged $(cat "$work/denials.txt") denials, expected >= 9"
ok "the policy refuses CSRs with two URI SANs, a DNS name or a subject, and TTLs 0 and 3601 (3600 and 1 accepted; ttl 1 gives an 11 s SVID): PERMISSION_DENIED"
# Local failures.
helper_conf noagent spiffe://example.org/hw/node1/web "$(tpm_key web)"
sed -i "s#^agent_address = .*#agent_address = \"$work/no-such-agent.sock\"#" "$work/noagent.hcl"
expect_exit 1 "fetching the helper's own SVID: Workload API at $work/no-such-agent.sock: UNAVAILABLE: .*No such file.*is the SPIRE agent running" \
  "$work/noagent.out" "$hwid_svid" mint --config "$work/noagent.hcl"
helper_conf noserver spiffe://example.org/hw/node1/web "$(tpm_key web)"
dead_port=$(free_port)
sed -i "s#^server_address = .*#server_address = \"127.0.0.1:$dead_port\"#" "$work/noserver.hcl"
expect_exit 1 "MintX509SVID at 127.0.0.1:$dead_port: UNAVAILABLE: .*(Connection refused|failed to connect).*is the SPIRE server" \
  "$work/noserver.out" "$hwid_svid" mint --config "$work/noserver.hcl"
printf 'ttl = "30"\n' >>"$work/noserver.hcl"
expect_exit 2 'config: .*duplicate key "ttl"' "$work/conf1.out" "$hwid_svid" mint --config "$work/noserver.hcl"
helper_conf badconf spiffe://example.org/hw/node1/web "$(tpm_key web)" 'renew_signal = "SIGKILL"'
expect_exit 2 'config: renew_signal "SIGKILL"' "$work/conf2.out" "$hwid_svid" run --config "$work/badconf.hcl"
helper_conf badconf2 spiffe://other.org/hw/node1/web "$(tpm_key web)"
expect_exit 2 'config: spiffe_id "spiffe://other.org/hw/node1/web"' "$work/conf3.out" "$hwid_svid" mint --config "$work/badconf2.hcl"
expect_exit 2 "usage: hwid-svid" "$work/usage.out" "$hwid_svid" renew --config "$work/web.hcl"
ok "no agent socket and an unreachable server: exit 1 with the step and what to check; configuration errors: exit 2 naming the key"

# ==== d. TPM gone; run recovers from agent, server and TPM outages ===========================
run_log_has() { grep -Eq -- "$1" "$work/run.log"; }
# Agent down: the first mints fail at step 1, the helper retries; the agent comes back.
stop_pid "$agent_pid"
agent_pid=""
"$hwid_svid" run --config "$work/run.hcl" >"$work/run.log" 2>&1 &
run_pid=$!
wait_for 30 "run: agent outage reported" run_log_has "fetching the helper's own SVID: Workload API at .*retrying in"
start_agent
wait_for 60 "run: SVID written after the agent came back" run_writes_ge 1
ok "run: agent down -> '$(grep -m1 -o "fetching the helper's own SVID: Workload API at [^:]*" "$work/run.log")...; retrying', SVID written once the agent is back"
# Server down: the next renewal fails at MintX509SVID; the server comes back.
serial=$(serial_of "$work/web/svid.pem")
stop_pid "$server_pid"
server_pid=""
wait_for 40 "run: server outage reported" run_log_has "minting spiffe://example.org/hw/node1/web: MintX509SVID at .*retrying in"
start_server
w=$(run_writes)
wait_for 60 "run: SVID written after the server came back" run_writes_ge $((w + 1))
[[ $(serial_of "$work/web/svid.pem") != "$serial" ]] || fail "no new SVID after the server outage"
openssl verify -CAfile "$work/web/svid_bundle.pem" "$work/web/svid.pem" >/dev/null || fail "SVID after the server outage does not verify"
ok "run: server down -> 'MintX509SVID ... retrying', new SVID once the server is back"
# TPM down: mint exits 1 naming the TPM; run reports it and recovers when swtpm is back on the
# same port with the same state.
stop_pid "$run_pid"
run_pid=""
"$root/swtpm-setup/swtpm-down" "$work/tpm1" >/dev/null 2>&1
expect_exit 1 "loading the hardware key: cannot open TPM connection 'swtpm:host=127.0.0.1,port=$swtpm_port'" \
  "$work/notpm.out" "$hwid_svid" mint --config "$work/web.hcl"
: >"$work/run.log"
"$hwid_svid" run --config "$work/run.hcl" >>"$work/run.log" 2>&1 &
run_pid=$!
wait_for 30 "run: TPM outage reported" run_log_has "cannot open TPM connection.*retrying in"
serial=$(serial_of "$work/web/svid.pem")
swtpm socket --tpm2 --server "type=tcp,port=$swtpm_port,bindaddr=127.0.0.1" \
  --ctrl "type=tcp,port=$((swtpm_port + 1)),bindaddr=127.0.0.1" --tpmstate "dir=$work/tpm1/state" \
  --flags not-need-init,startup-clear --pid "file=$work/tpm1/swtpm.pid" \
  --log "file=$work/tpm1/swtpm.log,level=1" --daemon </dev/null >/dev/null 2>&1 || fail "restarting swtpm on port $swtpm_port"
wait_for 60 "run: SVID written after the TPM came back" run_writes_ge 1
[[ $(serial_of "$work/web/svid.pem") != "$serial" ]] || fail "no new SVID after the TPM outage"
[[ $(pub_of_cert "$work/web/svid.pem") == "$first_pub" ]] || fail "a new key after the TPM outage"
stop_pid "$run_pid"
run_pid=""
ok "TPM down: mint exits 1 ('cannot open TPM connection ...'); run retries and writes a new SVID (same TPM key) once swtpm is back"
echo "svid e2e: $passed passed, 0 failed"
