# shellcheck shell=bash
# Shared helpers for swtpm-up, swtpm-down and swtpm-provision-template. Sourced, not executed.
#
# Layout of a swtpm directory DIR (all paths absolute):
#   DIR/.lock            flock(1) lock serialising every script working on DIR
#   DIR/.provisioned     marker written last by provisioning (content: layout version)
#   DIR/cfg/             private swtpm_setup.conf + swtpm-localca.{conf,options}
#   DIR/localca/         the private local CA (root + intermediate, their keys, serial)
#   DIR/state/           the TPM state (tpm2-00.permall)
#   DIR/ekcerts/         EK certificates (DER) as written by swtpm_setup / swtpm_localca
#   DIR/certs/           the three EK certificates in PEM as read back from NV
#   DIR/ek-ca.pem        PEM bundle: local root CA + intermediate
#   DIR/ek-root.pem      PEM: local root CA only
#   DIR/swtpm.pid, DIR/swtpm.log, DIR/env   (swtpm-up only)

# Bump when the provisioned content changes, so stale templates are rebuilt.
HWID_SWTPM_LAYOUT="hwid-swtpm-layout-2 banks=sha256,sha1 ek=rsa2048@81010001,p384@81010016,p256@81010002"

# Ports are taken below the kernel's ephemeral range (32768+) so outgoing connections never
# occupy them. The control port is always server port + 1: tcti-swtpm derives it that way.
HWID_SWTPM_PORT_MIN=${HWID_SWTPM_PORT_MIN:-20000}
HWID_SWTPM_PORT_MAX=${HWID_SWTPM_PORT_MAX:-32000}

# TCG EK handles and NV indices we create or rely on.
HWID_EK_RSA_HANDLE=0x81010001
HWID_EK_RSA_NV=0x01c00002
HWID_EK_P384_HANDLE=0x81010016
HWID_EK_P384_NV=0x01c00016
HWID_EK_P256_HANDLE=0x81010002
HWID_EK_P256_NV=0x01c0000a

swtpm_say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
swtpm_die() {
  swtpm_say "ERROR: $*"
  exit 1
}

swtpm_require_tools() {
  local t missing=()
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if ((${#missing[@]})); then
    swtpm_die "missing tools: ${missing[*]} (install swtpm swtpm-tools tpm2-tools openssl)"
  fi
}

# swtpm_lock DIR: takes an exclusive flock on DIR/.lock (fd in SWTPM_LOCK_FD, released at exit).
# Every long-running child must be started with "{SWTPM_LOCK_FD}>&-" so it does not keep the lock.
swtpm_lock() {
  local dir=$1
  exec {SWTPM_LOCK_FD}>"$dir/.lock"
  if ! flock -w 180 "$SWTPM_LOCK_FD"; then
    swtpm_die "timed out after 180 s waiting for the lock $dir/.lock (another swtpm script on $dir?)"
  fi
}

# swtpm_pid_alive PID: true if PID exists and is not a zombie (zombies are dead for us: the
# sandbox's PID 1 may never reap daemonised swtpm processes).
swtpm_pid_alive() {
  local pid=$1 stat
  [[ -n $pid && $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# swtpm_pid_is_ours PID STATEDIR: true if PID is a live swtpm serving STATEDIR (guards against
# pid reuse before we signal anything).
swtpm_pid_is_ours() {
  local pid=$1 statedir=$2 cmdline
  swtpm_pid_alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *swtpm* && $cmdline == *"dir=$statedir "* ]]
}

swtpm_tcti() { printf 'swtpm:host=127.0.0.1,port=%s' "$1"; }

# swtpm_answers PORT: true if the TPM behind PORT answers a TPM2_GetRandom.
swtpm_answers() {
  timeout 5 tpm2_getrandom -T "$(swtpm_tcti "$1")" 8 >/dev/null 2>&1
}

# swtpm_pick_port: sets SWTPM_PORT to a random even server port such that nothing listens on
# port or port+1. Only a hint: the bind itself decides; callers retry with another pair if it fails.
# Not called in $(...): a subshell would not advance this shell's $RANDOM sequence.
swtpm_pick_port() {
  local p i
  for ((i = 0; i < 50; i++)); do
    p=$((HWID_SWTPM_PORT_MIN + (RANDOM * 32768 + RANDOM) % (HWID_SWTPM_PORT_MAX - HWID_SWTPM_PORT_MIN)))
    p=$((p & ~1))
    if ! command -v ss >/dev/null 2>&1 ||
      [[ -z $(ss -Htln "( sport = :$p or sport = :$((p + 1)) )" 2>/dev/null) ]]; then
      SWTPM_PORT=$p
      return 0
    fi
  done
  swtpm_die "no free loopback port pair found in $HWID_SWTPM_PORT_MIN..$HWID_SWTPM_PORT_MAX"
}

# swtpm_wait_answer PORT PID: waits (bounded, ~10 s) until the swtpm PID answers on PORT.
swtpm_wait_answer() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 100; i++)); do
    swtpm_pid_alive "$pid" || return 1
    swtpm_answers "$port" && return 0
    sleep 0.1
  done
  return 1
}

# swtpm_log_since FILE OFFSET: the part of FILE written after byte OFFSET.
swtpm_log_since() { tail -c +"$(($2 + 1))" "$1" 2>/dev/null || true; }
swtpm_file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# swtpm_write_cfg DIR: writes the private swtpm_setup / swtpm_localca configuration.
swtpm_write_cfg() {
  local dir=$1
  mkdir -p "$dir/cfg" "$dir/localca"
  cat >"$dir/cfg/swtpm-localca.conf" <<EOF
statedir = $dir/localca
signingkey = $dir/localca/signkey.pem
issuercert = $dir/localca/issuercert.pem
certserial = $dir/localca/certserial
EOF
  cat >"$dir/cfg/swtpm-localca.options" <<EOF
--platform-manufacturer hwid
--platform-version 2.1
--platform-model swtpm
EOF
  cat >"$dir/cfg/swtpm_setup.conf" <<EOF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $dir/cfg/swtpm-localca.conf
create_certs_tool_options = $dir/cfg/swtpm-localca.options
active_pcr_banks = sha256,sha1
EOF
}

# swtpm_is_provisioned DIR
swtpm_is_provisioned() {
  [[ -f $1/.provisioned && $(cat "$1/.provisioned") == "$HWID_SWTPM_LAYOUT" &&
    -f $1/state/tpm2-00.permall && -f $1/ek-ca.pem && -f $1/ek-root.pem ]]
}

# swtpm_start_fg STATEDIR LOG: starts a foreground swtpm as a background job of this shell on a
# free port pair (retrying on bind races); sets SWTPM_FG_PID and SWTPM_FG_PORT.
swtpm_start_fg() {
  local statedir=$1 log=$2 attempt port off
  for ((attempt = 1; attempt <= 10; attempt++)); do
    swtpm_pick_port
    port=$SWTPM_PORT
    off=$(swtpm_file_size "$log")
    swtpm socket --tpm2 \
      --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
      --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
      --tpmstate "dir=$statedir" --flags not-need-init,startup-clear \
      --log "file=$log,level=1" {SWTPM_LOCK_FD}>&- </dev/null >/dev/null 2>&1 &
    SWTPM_FG_PID=$!
    SWTPM_FG_PORT=$port
    if swtpm_wait_answer "$port" "$SWTPM_FG_PID"; then
      return 0
    fi
    swtpm_stop_fg
    if swtpm_log_since "$log" "$off" | grep -q 'Address already in use'; then
      swtpm_say "port $port or $((port + 1)) taken meanwhile; retrying with another pair"
      continue
    fi
    swtpm_die "temporary swtpm on $statedir did not answer; log $log: $(swtpm_log_since "$log" "$off" | tail -n 5)"
  done
  swtpm_die "could not bind a free port pair after 10 attempts"
}

# swtpm_stop_fg: stops the job started by swtpm_start_fg and reaps it.
swtpm_stop_fg() {
  local i
  [[ -n ${SWTPM_FG_PID:-} ]] || return 0
  if swtpm_pid_alive "$SWTPM_FG_PID"; then
    timeout 5 swtpm_ioctl --tcp "127.0.0.1:$((SWTPM_FG_PORT + 1))" -s >/dev/null 2>&1 || true
    for ((i = 0; i < 50; i++)); do
      swtpm_pid_alive "$SWTPM_FG_PID" || break
      sleep 0.1
    done
    if swtpm_pid_alive "$SWTPM_FG_PID"; then
      kill -TERM "$SWTPM_FG_PID" 2>/dev/null || true
      sleep 1
      kill -KILL "$SWTPM_FG_PID" 2>/dev/null || true
    fi
  fi
  wait "$SWTPM_FG_PID" 2>/dev/null || true
  SWTPM_FG_PID=
}

# swtpm_localca_tpm_args LOGFILE: the --tpm-* arguments swtpm_setup passed to swtpm_localca (so the
# P-256 EK certificate carries the same TPM manufacturer/model/version as the others).
swtpm_localca_tpm_args() {
  local line
  line=$(grep -m1 -- '--type ek' "$1" 2>/dev/null || true)
  if [[ $line =~ (--tpm-spec-family .* --tpm2) ]]; then
    # shellcheck disable=SC2001
    echo "${BASH_REMATCH[1]}" | sed 's/ --dir [^ ]*//; s/ --logfile [^ ]*//'
  else
    echo "--tpm-spec-family 2.0 --tpm-spec-level 0 --tpm-spec-revision 164 --tpm-manufacturer id:00001014 --tpm-model swtpm --tpm-version id:20191023 --tpm2"
  fi
}

# swtpm_verify_ek_certs DIR TCTI: reads every EK certificate from NV, stores it as PEM under
# DIR/certs and checks that it chains to the local CA.
swtpm_verify_ek_certs() {
  local dir=$1 tcti=$2 nv name
  mkdir -p "$dir/certs"
  for nv in "$HWID_EK_RSA_NV:ek-rsa2048" "$HWID_EK_P384_NV:ek-ecc-p384" "$HWID_EK_P256_NV:ek-ecc-p256"; do
    name=${nv#*:}
    nv=${nv%%:*}
    timeout 10 tpm2_nvread -T "$tcti" "$nv" -o "$dir/certs/$name.der" 2>/dev/null ||
      swtpm_die "tpm2_nvread $nv (EK certificate $name) failed"
    openssl x509 -inform DER -in "$dir/certs/$name.der" -out "$dir/certs/$name.pem" ||
      swtpm_die "NV $nv does not hold a DER certificate"
    rm -f "$dir/certs/$name.der"
    openssl verify -CAfile "$dir/ek-root.pem" -untrusted "$dir/localca/issuercert.pem" \
      "$dir/certs/$name.pem" >/dev/null ||
      swtpm_die "EK certificate $name (NV $nv) does not chain to the local CA in $dir/localca"
    swtpm_say "  EK cert NV $nv ($name) chains to the local CA: OK"
  done
}

# swtpm_add_p256_ek DIR TCTI: creates the TCG default (L-2) ECC P-256 EK, persists it at
# 0x81010002, certifies it with the local CA and stores the DER cert at NV 0x01c0000a.
swtpm_add_p256_ek() {
  local dir=$1 tcti=$2 x y size
  local -a tpm_args
  local tmp="$dir/tmp-p256"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  timeout 20 tpm2_createek -T "$tcti" -G ecc -c "$tmp/ek.ctx" >/dev/null ||
    swtpm_die "tpm2_createek -G ecc (TCG P-256 EK) failed"
  timeout 10 tpm2_evictcontrol -T "$tcti" -C o -c "$tmp/ek.ctx" "$HWID_EK_P256_HANDLE" >/dev/null ||
    swtpm_die "tpm2_evictcontrol $HWID_EK_P256_HANDLE (persist P-256 EK) failed"
  timeout 10 tpm2_flushcontext -T "$tcti" -t -l -s ||
    swtpm_die "tpm2_flushcontext failed"
  timeout 10 tpm2_readpublic -T "$tcti" -c "$HWID_EK_P256_HANDLE" >"$tmp/ek.pub.txt" ||
    swtpm_die "tpm2_readpublic $HWID_EK_P256_HANDLE failed"
  x=$(awk '/^x:/{print $2}' "$tmp/ek.pub.txt")
  y=$(awk '/^y:/{print $2}' "$tmp/ek.pub.txt")
  [[ ${#x} == 64 && ${#y} == 64 ]] ||
    swtpm_die "EK $HWID_EK_P256_HANDLE is not a P-256 key (x='$x' y='$y')"
  read -r -a tpm_args <<<"$(swtpm_localca_tpm_args "$dir/swtpm_setup.log")"
  swtpm_localca --type ek --ek "x=$x,y=$y,id=secp256r1" --dir "$tmp" "${tpm_args[@]}" \
    --configfile "$dir/cfg/swtpm-localca.conf" --optsfile "$dir/cfg/swtpm-localca.options" \
    --logfile "$dir/swtpm_setup.log" {SWTPM_LOCK_FD}>&- ||
    swtpm_die "swtpm_localca --type ek (P-256 EK certificate) failed; see $dir/swtpm_setup.log"
  mkdir -p "$dir/ekcerts"
  mv "$tmp/ek.cert" "$dir/ekcerts/ek-secp256r1.crt"
  size=$(stat -c %s "$dir/ekcerts/ek-secp256r1.crt")
  timeout 10 tpm2_nvdefine -T "$tcti" "$HWID_EK_P256_NV" -C p -s "$size" \
    -a "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate" >/dev/null ||
    swtpm_die "tpm2_nvdefine $HWID_EK_P256_NV failed"
  timeout 10 tpm2_nvwrite -T "$tcti" "$HWID_EK_P256_NV" -C p -i "$dir/ekcerts/ek-secp256r1.crt" ||
    swtpm_die "tpm2_nvwrite $HWID_EK_P256_NV failed"
  timeout 10 tpm2_flushcontext -T "$tcti" -t -l -s || swtpm_die "tpm2_flushcontext failed"
  rm -rf "$tmp"
  swtpm_say "  added ECC P-256 EK at $HWID_EK_P256_HANDLE, cert at NV $HWID_EK_P256_NV"
}

# swtpm_provision_full DIR: manufactures a TPM state in DIR from scratch (swtpm not left running).
swtpm_provision_full() {
  local dir=$1 t0=$SECONDS
  swtpm_say "provisioning $dir (swtpm_setup, banks sha256+sha1, RSA-2048 + P-384 EKs, certs)"
  rm -rf "$dir/state" "$dir/localca" "$dir/ekcerts" "$dir/certs" "$dir/cfg" "$dir/tmp-p256" \
    "$dir/ek-ca.pem" "$dir/ek-root.pem" "$dir/.provisioned" "$dir/swtpm_setup.log"
  mkdir -p "$dir/state" "$dir/ekcerts"
  swtpm_write_cfg "$dir"
  if ! swtpm_setup --tpm2 --tpmstate "$dir/state" --create-ek-cert --create-platform-cert \
    --config "$dir/cfg/swtpm_setup.conf" --write-ek-cert-files "$dir/ekcerts" --overwrite \
    --logfile "$dir/swtpm_setup.log" {SWTPM_LOCK_FD}>&- >/dev/null; then
    swtpm_die "swtpm_setup failed; see $dir/swtpm_setup.log: $(tail -n 5 "$dir/swtpm_setup.log" 2>/dev/null)"
  fi
  cp "$dir/localca/swtpm-localca-rootca-cert.pem" "$dir/ek-root.pem"
  cat "$dir/localca/swtpm-localca-rootca-cert.pem" "$dir/localca/issuercert.pem" >"$dir/ek-ca.pem"

  swtpm_start_fg "$dir/state" "$dir/provision-swtpm.log"
  trap 'swtpm_stop_fg' EXIT
  local tcti
  tcti=$(swtpm_tcti "$SWTPM_FG_PORT")
  swtpm_add_p256_ek "$dir" "$tcti"
  swtpm_verify_ek_certs "$dir" "$tcti"
  timeout 10 tpm2_getcap -T "$tcti" handles-persistent >"$dir/persistent-handles.txt" ||
    swtpm_die "tpm2_getcap handles-persistent failed"
  local h
  for h in "$HWID_EK_RSA_HANDLE" "$HWID_EK_P384_HANDLE" "$HWID_EK_P256_HANDLE"; do
    grep -qi -- "- $h\$" "$dir/persistent-handles.txt" || swtpm_die "persistent EK $h missing"
  done
  swtpm_stop_fg
  trap - EXIT
  rm -f "$dir/persistent-handles.txt"
  echo "$HWID_SWTPM_LAYOUT" >"$dir/.provisioned"
  swtpm_say "provisioned $dir in $((SECONDS - t0)) s"
}

# swtpm_provision_from_template DIR TEMPLATE: copies a provisioned template's state and CA.
swtpm_provision_from_template() {
  local dir=$1 tmpl=$2 tfd
  exec {tfd}<"$tmpl/.lock"
  flock -s -w 180 "$tfd" || swtpm_die "timed out waiting for the template lock $tmpl/.lock"
  swtpm_is_provisioned "$tmpl" || swtpm_die "template $tmpl is not provisioned"
  rm -rf "$dir/state" "$dir/localca" "$dir/ekcerts" "$dir/certs" "$dir/cfg" \
    "$dir/ek-ca.pem" "$dir/ek-root.pem" "$dir/.provisioned"
  cp -a "$tmpl/state" "$tmpl/localca" "$tmpl/ekcerts" "$tmpl/certs" "$tmpl/ek-ca.pem" \
    "$tmpl/ek-root.pem" "$dir/"
  cp -a "$tmpl/swtpm_setup.log" "$dir/" 2>/dev/null || true
  exec {tfd}<&-
  swtpm_write_cfg "$dir"
  echo "$HWID_SWTPM_LAYOUT" >"$dir/.provisioned"
  swtpm_say "provisioned $dir from template $tmpl"
}

# swtpm_ensure_provisioned DIR [allow_template]: idempotent provisioning.
swtpm_ensure_provisioned() {
  local dir=$1 allow_template=${2:-yes} tmpl=${HWID_SWTPM_TEMPLATE:-}
  if swtpm_is_provisioned "$dir"; then
    return 0
  fi
  if [[ $allow_template == yes && -n $tmpl ]]; then
    tmpl=$(realpath -m "$tmpl")
    if [[ $tmpl != "$dir" ]] && swtpm_is_provisioned "$tmpl"; then
      swtpm_provision_from_template "$dir" "$tmpl"
      return 0
    fi
    swtpm_say "HWID_SWTPM_TEMPLATE=$tmpl is not a provisioned template; provisioning from scratch"
  fi
  swtpm_provision_full "$dir"
}
