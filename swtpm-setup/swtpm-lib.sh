# shellcheck shell=bash
# Shared helpers for swtpm-up, swtpm-down and swtpm-provision-template. Sourced, not executed.
#
# Layout of a swtpm directory DIR (all paths absolute):
#   DIR/.lock            flock(1) lock serialising every script working on DIR
#   DIR/.provisioned     marker written last by provisioning (layout version and profile)
#   DIR/cfg/             private swtpm_setup.conf + swtpm-localca.{conf,options}
#   DIR/localca/         the private local CA (root + intermediate, their keys, serial)
#   DIR/state/           the TPM state (tpm2-00.permall)
#   DIR/ekcerts/         EK certificates (DER) as written by swtpm_setup / swtpm_localca
#   DIR/certs/           the EK certificates in PEM as read back from NV (those that exist)
#   DIR/ek-ca.pem        PEM bundle: local root CA + intermediate
#   DIR/ek-root.pem      PEM: local root CA only
#   DIR/profile          the profile name (see swtpm_profile_apply and README.md "Profiles")
#   DIR/otherca/, DIR/other-ca.pem   (profile wrong-ca only) the second, untrusted CA
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
# TCG EK Credential Profile: first index of the EK certificate chain range 0x01c00100-0x01c001ff.
HWID_EK_CHAIN_NV=0x01c00100
# NV attributes of every certificate index we define (the same as swtpm_setup's).
HWID_EK_NV_ATTRS="ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate"
# The three EKs: persistent handle, certificate NV index, file name under DIR/certs.
HWID_EKS=("$HWID_EK_RSA_HANDLE:$HWID_EK_RSA_NV:ek-rsa2048"
  "$HWID_EK_P384_HANDLE:$HWID_EK_P384_NV:ek-ecc-p384"
  "$HWID_EK_P256_HANDLE:$HWID_EK_P256_NV:ek-ecc-p256")

# Provisioning profiles: TPMs as they come out of a factory, including broken ones (README.md).
HWID_SWTPM_PROFILE_NAMES=(good no-ekcert ecc-only rsa-only expired-ekcert wrong-ca
  cert-key-mismatch trailing-bytes intermediate-in-nv sha1-only-pcrs)

# swtpm_marker PROFILE: the content of DIR/.provisioned for PROFILE.
swtpm_marker() { printf '%s profile=%s' "$HWID_SWTPM_LAYOUT" "$1"; }

# swtpm_check_profile NAME: exits 2 with the list of profiles when NAME is not one.
swtpm_check_profile() {
  local p
  for p in "${HWID_SWTPM_PROFILE_NAMES[@]}"; do
    [[ $p == "$1" ]] && return 0
  done
  printf '%s: unknown profile "%s"; profiles: %s\n' "${0##*/}" "$1" \
    "${HWID_SWTPM_PROFILE_NAMES[*]}" >&2
  exit 2
}

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

# swtpm_write_cfg DIR [BANKS]: writes the private swtpm_setup / swtpm_localca configuration
# (BANKS: swtpm_setup's active_pcr_banks, default sha256,sha1).
swtpm_write_cfg() {
  local dir=$1 banks=${2:-sha256,sha1}
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
active_pcr_banks = $banks
EOF
}

# swtpm_is_provisioned DIR PROFILE: DIR holds a complete provisioning of PROFILE.
swtpm_is_provisioned() {
  [[ -f $1/.provisioned && $(cat "$1/.provisioned") == "$(swtpm_marker "$2")" &&
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
  local dir=$1 tcti=$2 x y
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
  swtpm_nv_put "$tcti" "$HWID_EK_P256_NV" "$dir/ekcerts/ek-secp256r1.crt"
  timeout 10 tpm2_flushcontext -T "$tcti" -t -l -s || swtpm_die "tpm2_flushcontext failed"
  rm -rf "$tmp"
  swtpm_say "  added ECC P-256 EK at $HWID_EK_P256_HANDLE, cert at NV $HWID_EK_P256_NV"
}
# ---- Profiles: mutations of the good provisioning on the temporary swtpm (README.md "Profiles") --

# swtpm_hex FILE: the bytes of FILE as one line of lower-case hex.
swtpm_hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
# swtpm_unhex HEX: the bytes HEX stands for, on stdout.
swtpm_unhex() { printf '%b' "$(sed 's/../\\x&/g' <<<"$1")"; }

# swtpm_nv_exists TCTI NV: NV is a defined index (from the capability list: tpm2_nvreadpublic
# 5.4 crashes on an undefined index).
swtpm_nv_exists() {
  local list
  list=$(timeout 10 tpm2_getcap -T "$1" handles-nv-index) || swtpm_die "tpm2_getcap handles-nv-index failed"
  local h
  for h in $(sed -n 's/^- //p' <<<"$list"); do
    (($h == $2)) && return 0
  done
  return 1
}

# swtpm_nv_undefine TCTI NV: undefines NV with platform auth (empty on swtpm).
swtpm_nv_undefine() {
  timeout 10 tpm2_nvundefine -T "$1" -C p "$2" >/dev/null ||
    swtpm_die "tpm2_nvundefine $2 (platform auth) failed"
}

# swtpm_nv_put TCTI NV FILE: (re)defines NV with exactly FILE's size and the EK certificate NV
# attributes, then writes FILE into it.
swtpm_nv_put() {
  local tcti=$1 nv=$2 file=$3 size
  size=$(stat -c %s "$file")
  if swtpm_nv_exists "$tcti" "$nv"; then
    swtpm_nv_undefine "$tcti" "$nv"
  fi
  timeout 10 tpm2_nvdefine -T "$tcti" "$nv" -C p -s "$size" -a "$HWID_EK_NV_ATTRS" >/dev/null ||
    swtpm_die "tpm2_nvdefine $nv ($size bytes, platform auth) failed"
  timeout 10 tpm2_nvwrite -T "$tcti" "$nv" -C p -i "$file" ||
    swtpm_die "tpm2_nvwrite $nv ($size bytes from $file) failed"
}

# swtpm_evict TCTI HANDLE: removes the persistent object HANDLE (owner auth, empty on swtpm).
swtpm_evict() {
  timeout 10 tpm2_evictcontrol -T "$1" -C o -c "$2" >/dev/null ||
    swtpm_die "tpm2_evictcontrol $2 (evict the persistent EK) failed"
}

# swtpm_ext_value CERT NAME: "critical,DER:HEX" or "DER:HEX" for the extension that
# `openssl asn1parse` calls NAME in the PEM certificate CERT; empty when CERT has none.
swtpm_ext_value() {
  openssl asn1parse -in "$1" | awk -v n=":$2" '
    /OBJECT/ && substr($0, length($0) - length(n) + 1) == n { f = 1; crit = ""; next }
    f && /BOOLEAN/ { crit = "critical,"; next }
    f && /OCTET STRING/ { sub(/.*\[HEX DUMP\]:/, ""); print crit "DER:" $0; exit }'
}

# swtpm_ek_extfile GOOD OUT: an openssl extension file (section [ek]) giving a new certificate the
# extensions of GOOD, an EK certificate from swtpm_localca, byte for byte: EKU 2.23.133.8.1, the
# critical SAN directoryName with the TCG TPM manufacturer/model/version, critical basicConstraints
# CA:FALSE, subject directory attributes (TPM spec), critical keyUsage (keyEncipherment for RSA,
# keyAgreement for ECC). The authority key identifier is computed for the new issuer; no SKI, as
# in GOOD.
swtpm_ek_extfile() {
  local good=$1 out=$2 e name v
  echo "[ek]" >"$out"
  for e in "X509v3 Extended Key Usage=2.5.29.37" "X509v3 Subject Alternative Name=2.5.29.17" \
    "X509v3 Basic Constraints=2.5.29.19" "X509v3 Subject Directory Attributes=2.5.29.9" \
    "X509v3 Key Usage=2.5.29.15"; do
    name=${e%=*}
    v=$(swtpm_ext_value "$good" "$name")
    if [[ -z $v ]]; then
      case $name in
        *"Basic Constraints" | *"Key Usage" | *"Alternative Name")
          swtpm_die "EK certificate $good has no '$name' extension to mirror" ;;
      esac
      continue
    fi
    echo "${e#*=} = $v" >>"$out"
  done
  printf 'authorityKeyIdentifier = keyid\nsubjectKeyIdentifier = none\n' >>"$out"
}

# swtpm_backdate DER CAKEY OUT: DER with its validity rewritten to 2015-01-01 00:00:00Z ..
# 2020-01-01 00:00:00Z (both UTCTime, same length as before, so no ASN.1 length changes) and the
# TBSCertificate re-signed with CAKEY (the RSA key that signed DER: the signature keeps its
# length). Needed because OpenSSL 3.0's `x509` cannot set dates and `ca` wants a request signed by
# the subject key, which the TPM's EK cannot give.
swtpm_backdate() {
  local der=$1 key=$2 out=$3 re='170d(3[0-9]){12}5a' nb na hex hl len siglen total
  nb=170d$(printf '150101000000Z' | od -An -tx1 | tr -d ' \n')
  na=170d$(printf '200101000000Z' | od -An -tx1 | tr -d ' \n')
  # The 2nd UTCTime (notAfter) first, then the 1st (notBefore): both replacements match $re too.
  hex=$(swtpm_hex "$der" | sed -E "s/$re/$na/2; s/$re/$nb/")
  swtpm_unhex "$hex" >"$der.dated"
  read -r hl len < <(openssl asn1parse -inform DER -in "$der.dated" |
    sed -En '2s/.*hl= *([0-9]+) +l= *([0-9]+) +cons: SEQUENCE.*/\1 \2/p')
  [[ -n $hl && -n $len ]] || swtpm_die "cannot find the TBSCertificate in $der"
  tail -c +5 "$der.dated" | head -c $((hl + len)) >"$der.tbs"
  openssl dgst -sha256 -sign "$key" -out "$der.sig" "$der.tbs" ||
    swtpm_die "signing the back-dated TBSCertificate with $key failed"
  siglen=$(stat -c %s "$der.sig")
  total=$(stat -c %s "$der.dated")
  head -c $((total - siglen)) "$der.dated" >"$out"
  cat "$der.sig" >>"$out"
  rm -f "$der.dated" "$der.tbs" "$der.sig"
  [[ $(openssl x509 -inform DER -in "$out" -noout -startdate -enddate 2>/dev/null | tr '\n' ' ') == \
    "notBefore=Jan  1 00:00:00 2015 GMT notAfter=Jan  1 00:00:00 2020 GMT " ]] ||
    swtpm_die "back-dating $der did not give 2015-01-01..2020-01-01"
}

# swtpm_issue_ek_cert PUB GOOD CACERT CAKEY OUT [past]: OUT (DER) certifies the public key PUB (PEM)
# with GOOD's subject (CN=unknown) and extensions, issued by CACERT/CAKEY with sha256 and a random
# serial, valid from now for 100 years or, with "past", from 2015-01-01 to 2020-01-01.
swtpm_issue_ek_cert() {
  local pub=$1 good=$2 cacert=$3 cakey=$4 out=$5 past=${6:-} tmp days=36500
  tmp=$(mktemp -d "$(dirname "$out")/issue.XXXXXX")
  swtpm_ek_extfile "$good" "$tmp/ext.cnf"
  [[ -z $past ]] || days=365 # < 2050: both dates UTCTime, as swtpm_backdate needs
  openssl x509 -new -subj /CN=unknown -force_pubkey "$pub" -CA "$cacert" -CAkey "$cakey" \
    -set_serial "0x7$(openssl rand -hex 9)" -days "$days" -sha256 \
    -extfile "$tmp/ext.cnf" -extensions ek -outform DER -out "$tmp/cert.der" 2>"$tmp/err" ||
    swtpm_die "openssl x509 -new (EK certificate for $pub by $cacert) failed: $(cat "$tmp/err")"
  if [[ -n $past ]]; then
    swtpm_backdate "$tmp/cert.der" "$cakey" "$out"
  else
    mv "$tmp/cert.der" "$out"
  fi
  rm -rf "$tmp"
}

# swtpm_make_other_ca DIR: a second CA unrelated to the local one: DIR/otherca/{root,intermediate}
# .{pem,key} (RSA-2048) and DIR/other-ca.pem (root + intermediate).
swtpm_make_other_ca() {
  local d=$1/otherca
  rm -rf "$d"
  mkdir -p "$d"
  printf '[v]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n' >"$d/ca.ext"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$d/root.key" -sha256 -days 36500 \
    -subj /CN=hwid-otherca-rootca -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$d/root.pem" 2>"$d/err" &&
    openssl req -new -newkey rsa:2048 -nodes -keyout "$d/intermediate.key" -subj /CN=hwid-otherca \
      -out "$d/intermediate.csr" 2>"$d/err" &&
    openssl x509 -req -in "$d/intermediate.csr" -CA "$d/root.pem" -CAkey "$d/root.key" -sha256 \
      -set_serial "0x7$(openssl rand -hex 9)" -days 36500 -extfile "$d/ca.ext" -extensions v \
      -out "$d/intermediate.pem" 2>"$d/err" ||
    swtpm_die "creating the second CA in $d failed: $(cat "$d/err")"
  rm -f "$d/err" "$d/intermediate.csr"
  cat "$d/root.pem" "$d/intermediate.pem" >"$1/other-ca.pem"
}

# swtpm_reissue_ek_certs DIR TCTI WORK MODE: replaces the certificate in every EK certificate NV
# index. MODE expired: same local intermediate, validity in the past; wrong-ca: issued by the
# intermediate of DIR/otherca; mismatch: local intermediate, but for a fresh key of the same type
# (not the TPM's EK). WORK holds the good certificates (good-NAME.pem).
swtpm_reissue_ek_certs() {
  local dir=$1 tcti=$2 work=$3 mode=$4 e handle nv name cacert cakey past=
  cacert=$dir/localca/issuercert.pem
  cakey=$dir/localca/signkey.pem
  case $mode in
    expired) past=past ;;
    wrong-ca)
      cacert=$dir/otherca/intermediate.pem
      cakey=$dir/otherca/intermediate.key
      ;;
  esac
  for e in "${HWID_EKS[@]}"; do
    IFS=: read -r handle nv name <<<"$e"
    if [[ $mode == mismatch ]]; then
      case $name in
        ek-rsa2048) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/$name.key" ;;
        ek-ecc-p384) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/$name.key" ;;
        ek-ecc-p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$name.key" ;;
      esac 2>/dev/null || swtpm_die "openssl genpkey for the $name stand-in key failed"
      openssl pkey -in "$work/$name.key" -pubout -out "$work/$name.pub.pem" ||
        swtpm_die "openssl pkey -pubout $work/$name.key failed"
      rm -f "$work/$name.key"
    else
      timeout 10 tpm2_readpublic -T "$tcti" -c "$handle" -f pem -o "$work/$name.pub.pem" >/dev/null ||
        swtpm_die "tpm2_readpublic $handle (EK $name) failed"
    fi
    swtpm_issue_ek_cert "$work/$name.pub.pem" "$work/good-$name.pem" "$cacert" "$cakey" \
      "$work/$name.der" ${past:+"$past"}
    swtpm_nv_put "$tcti" "$nv" "$work/$name.der"
    swtpm_say "  NV $nv ($name): certificate re-issued ($mode)"
  done
}

# swtpm_trailing_bytes DIR TCTI WORK: the NV quirks real vendors ship (README.md "Profiles").
swtpm_trailing_bytes() {
  local tcti=$2 work=$3 size
  # RSA: TCG PC Client (TPM 1.2 era) NV wrapper: tag 0x1001, 0x00, 2-byte big-endian DER length.
  openssl x509 -in "$work/good-ek-rsa2048.pem" -outform DER -out "$work/rsa.der"
  size=$(stat -c %s "$work/rsa.der")
  { swtpm_unhex "$(printf '100100%04x' "$size")"; cat "$work/rsa.der"; } >"$work/rsa.nv"
  swtpm_nv_put "$tcti" "$HWID_EK_RSA_NV" "$work/rsa.nv"
  swtpm_say "  NV $HWID_EK_RSA_NV (ek-rsa2048): 10 01 00 + length wrapper"
  # P-256: the DER, then 16 bytes of junk (no 0x00/0xff padding).
  openssl x509 -in "$work/good-ek-ecc-p256.pem" -outform DER -out "$work/p256.der"
  { cat "$work/p256.der"; printf 'HWID-JUNK-BYTES!'; } >"$work/p256.nv"
  swtpm_nv_put "$tcti" "$HWID_EK_P256_NV" "$work/p256.nv"
  swtpm_say "  NV $HWID_EK_P256_NV (ek-ecc-p256): DER + 16 junk bytes"
  # P-384: index larger than the DER, the rest 0xff (as erased flash reads).
  openssl x509 -in "$work/good-ek-ecc-p384.pem" -outform DER -out "$work/p384.der"
  { cat "$work/p384.der"; head -c 256 /dev/zero | tr '\0' '\377'; } >"$work/p384.nv"
  swtpm_nv_put "$tcti" "$HWID_EK_P384_NV" "$work/p384.nv"
  swtpm_say "  NV $HWID_EK_P384_NV (ek-ecc-p384): DER + 256 bytes of 0xff padding"
}

# swtpm_profile_apply DIR TCTI PROFILE: mutates the good provisioning on the running swtpm.
swtpm_profile_apply() {
  local dir=$1 tcti=$2 profile=$3 work=$1/tmp-profile e handle nv name
  rm -rf "$work"
  mkdir -p "$work"
  for e in "${HWID_EKS[@]}"; do
    IFS=: read -r handle nv name <<<"$e"
    cp "$dir/certs/$name.pem" "$work/good-$name.pem"
  done
  case $profile in
    good | sha1-only-pcrs) ;;
    no-ekcert)
      for e in "${HWID_EKS[@]}"; do
        IFS=: read -r handle nv name <<<"$e"
        swtpm_nv_undefine "$tcti" "$nv"
      done
      ;;
    ecc-only)
      swtpm_nv_undefine "$tcti" "$HWID_EK_RSA_NV"
      swtpm_evict "$tcti" "$HWID_EK_RSA_HANDLE"
      ;;
    rsa-only)
      swtpm_nv_undefine "$tcti" "$HWID_EK_P384_NV"
      swtpm_nv_undefine "$tcti" "$HWID_EK_P256_NV"
      swtpm_evict "$tcti" "$HWID_EK_P384_HANDLE"
      swtpm_evict "$tcti" "$HWID_EK_P256_HANDLE"
      ;;
    expired-ekcert) swtpm_reissue_ek_certs "$dir" "$tcti" "$work" expired ;;
    wrong-ca)
      swtpm_make_other_ca "$dir"
      swtpm_reissue_ek_certs "$dir" "$tcti" "$work" wrong-ca
      ;;
    cert-key-mismatch) swtpm_reissue_ek_certs "$dir" "$tcti" "$work" mismatch ;;
    trailing-bytes) swtpm_trailing_bytes "$dir" "$tcti" "$work" ;;
    intermediate-in-nv)
      openssl x509 -in "$dir/localca/issuercert.pem" -outform DER -out "$work/intermediate.der"
      swtpm_nv_put "$tcti" "$HWID_EK_CHAIN_NV" "$work/intermediate.der"
      swtpm_say "  NV $HWID_EK_CHAIN_NV: the local intermediate CA certificate (DER)"
      ;;
    *) swtpm_die "internal: no mutation for profile $profile" ;;
  esac
  timeout 10 tpm2_flushcontext -T "$tcti" -t -l -s || swtpm_die "tpm2_flushcontext failed"
  rm -rf "$work"
}

# swtpm_nv_cert_der RAW OUT: the certificate in the raw content RAW of an EK certificate NV index:
# skips the TCG PC Client wrapper (10 01 00 + 2-byte length) when present, and drops whatever
# follows the DER's own length (junk, 0xff padding). Fails when RAW holds no DER SEQUENCE.
swtpm_nv_cert_der() {
  local hex len
  hex=$(swtpm_hex "$1")
  [[ $hex == 100100* ]] && hex=${hex:10}
  case ${hex:0:4} in
    3082) len=$((4 + 16#${hex:4:4})) ;;
    3081) len=$((3 + 16#${hex:4:2})) ;;
    *) return 1 ;;
  esac
  ((2 * len <= ${#hex})) || return 1
  swtpm_unhex "${hex:0:$((2 * len))}" >"$2"
}

# swtpm_read_back_certs DIR TCTI: DIR/certs/NAME.pem for every EK certificate NV index that exists,
# plus DIR/certs/ek-chain-intermediate.pem when NV 0x01c00100 exists.
swtpm_read_back_certs() {
  local dir=$1 tcti=$2 e handle nv name
  rm -rf "$dir/certs"
  mkdir -p "$dir/certs"
  for e in "${HWID_EKS[@]}" "-:$HWID_EK_CHAIN_NV:ek-chain-intermediate"; do
    IFS=: read -r handle nv name <<<"$e"
    swtpm_nv_exists "$tcti" "$nv" || continue
    timeout 10 tpm2_nvread -T "$tcti" "$nv" -o "$dir/certs/$name.nv" 2>/dev/null ||
      swtpm_die "tpm2_nvread $nv ($name) failed"
    swtpm_nv_cert_der "$dir/certs/$name.nv" "$dir/certs/$name.der" ||
      swtpm_die "NV $nv ($name) holds no DER certificate"
    openssl x509 -inform DER -in "$dir/certs/$name.der" -out "$dir/certs/$name.pem" ||
      swtpm_die "NV $nv ($name): openssl cannot parse the certificate"
    rm -f "$dir/certs/$name.nv" "$dir/certs/$name.der"
  done
}

# swtpm_profile_check DIR TCTI PROFILE: a quick check that the state is what PROFILE promises
# (tests/swtpm_setup/profiles_test.sh checks every property in detail).
swtpm_profile_check() {
  local dir=$1 tcti=$2 profile=$3 e handle nv name handles want_h want_nv
  local root=$dir/ek-root.pem inter=$dir/localca/issuercert.pem
  handles=$(timeout 10 tpm2_getcap -T "$tcti" handles-persistent) ||
    swtpm_die "tpm2_getcap handles-persistent failed"
  for e in "${HWID_EKS[@]}"; do
    IFS=: read -r handle nv name <<<"$e"
    want_h=yes want_nv=yes
    case $profile:$name in
      no-ekcert:*) want_nv= ;;
      ecc-only:ek-rsa2048 | rsa-only:ek-ecc-*) want_h= want_nv= ;;
    esac
    if grep -qi -- "- $handle\$" <<<"$handles"; then
      [[ -n $want_h ]] || swtpm_die "profile $profile: persistent EK $handle must not exist"
    else
      [[ -z $want_h ]] || swtpm_die "profile $profile: persistent EK $handle missing"
    fi
    if [[ -f $dir/certs/$name.pem ]]; then
      [[ -n $want_nv ]] || swtpm_die "profile $profile: NV $nv ($name) must not exist"
    else
      [[ -z $want_nv ]] || swtpm_die "profile $profile: NV $nv ($name) missing"
      continue
    fi
    case $profile in
      expired-ekcert)
        # The local CA itself was made today, so "valid in 2018" cannot be checked as a chain:
        # the chain without time checks, and the certificate itself expired.
        ! openssl verify -CAfile "$root" -untrusted "$inter" "$dir/certs/$name.pem" >/dev/null 2>&1 &&
          ! openssl x509 -in "$dir/certs/$name.pem" -noout -checkend 0 >/dev/null &&
          openssl verify -no_check_time -CAfile "$root" -untrusted "$inter" \
            "$dir/certs/$name.pem" >/dev/null ||
          swtpm_die "profile $profile: $name is not a certificate that expired before today"
        ;;
      wrong-ca)
        ! openssl verify -CAfile "$root" -untrusted "$inter" "$dir/certs/$name.pem" >/dev/null 2>&1 &&
          openssl verify -CAfile "$dir/otherca/root.pem" -untrusted "$dir/otherca/intermediate.pem" \
            "$dir/certs/$name.pem" >/dev/null ||
          swtpm_die "profile $profile: $name does not chain to the second CA only"
        ;;
      intermediate-in-nv)
        openssl verify -CAfile "$root" -untrusted "$dir/certs/ek-chain-intermediate.pem" \
          "$dir/certs/$name.pem" >/dev/null ||
          swtpm_die "profile $profile: $name does not chain to the root via the NV intermediate"
        ;;
      *)
        openssl verify -CAfile "$root" -untrusted "$inter" "$dir/certs/$name.pem" >/dev/null ||
          swtpm_die "profile $profile: $name does not chain to the local CA"
        ;;
    esac
  done
}

# swtpm_provision_full DIR PROFILE: manufactures a TPM state of PROFILE in DIR from scratch: the
# good provisioning, then the profile's mutations (swtpm not left running).
swtpm_provision_full() {
  local dir=$1 profile=$2 t0=$SECONDS banks=sha256,sha1
  [[ $profile != sha1-only-pcrs ]] || banks=sha1
  swtpm_say "provisioning $dir, profile $profile (swtpm_setup, banks $banks, RSA-2048 + P-384 EKs, certs)"
  rm -rf "$dir/state" "$dir/localca" "$dir/ekcerts" "$dir/certs" "$dir/cfg" "$dir/tmp-p256" \
    "$dir/tmp-profile" "$dir/otherca" "$dir/other-ca.pem" "$dir/profile" \
    "$dir/ek-ca.pem" "$dir/ek-root.pem" "$dir/.provisioned" "$dir/swtpm_setup.log"
  mkdir -p "$dir/state" "$dir/ekcerts"
  swtpm_write_cfg "$dir" "$banks"
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
  rm -f "$dir/persistent-handles.txt"
  if [[ $profile != good ]]; then
    swtpm_profile_apply "$dir" "$tcti" "$profile"
    swtpm_read_back_certs "$dir" "$tcti"
    swtpm_profile_check "$dir" "$tcti" "$profile"
  fi
  swtpm_stop_fg
  trap - EXIT
  echo "$profile" >"$dir/profile"
  swtpm_marker "$profile" >"$dir/.provisioned"
  swtpm_say "provisioned $dir (profile $profile) in $((SECONDS - t0)) s"
}

# swtpm_provision_from_template DIR TEMPLATE PROFILE: copies a provisioned template's state and CA.
swtpm_provision_from_template() {
  local dir=$1 tmpl=$2 profile=$3 tfd banks=sha256,sha1
  [[ $profile != sha1-only-pcrs ]] || banks=sha1
  exec {tfd}<"$tmpl/.lock"
  flock -s -w 180 "$tfd" || swtpm_die "timed out waiting for the template lock $tmpl/.lock"
  swtpm_is_provisioned "$tmpl" "$profile" ||
    swtpm_die "template $tmpl is not provisioned with profile $profile"
  rm -rf "$dir/state" "$dir/localca" "$dir/ekcerts" "$dir/certs" "$dir/cfg" "$dir/otherca" \
    "$dir/other-ca.pem" "$dir/profile" "$dir/ek-ca.pem" "$dir/ek-root.pem" "$dir/.provisioned"
  cp -a "$tmpl/state" "$tmpl/localca" "$tmpl/ekcerts" "$tmpl/certs" "$tmpl/ek-ca.pem" \
    "$tmpl/ek-root.pem" "$dir/"
  if [[ -d $tmpl/otherca ]]; then
    cp -a "$tmpl/otherca" "$tmpl/other-ca.pem" "$dir/"
  fi
  cp -a "$tmpl/swtpm_setup.log" "$dir/" 2>/dev/null || true
  exec {tfd}<&-
  swtpm_write_cfg "$dir" "$banks"
  echo "$profile" >"$dir/profile"
  swtpm_marker "$profile" >"$dir/.provisioned"
  swtpm_say "provisioned $dir (profile $profile) from template $tmpl"
}

# swtpm_ensure_provisioned DIR PROFILE [allow_template]: idempotent provisioning. The template
# ($HWID_SWTPM_TEMPLATE) is used only when it was provisioned with PROFILE.
swtpm_ensure_provisioned() {
  local dir=$1 profile=$2 allow_template=${3:-yes} tmpl=${HWID_SWTPM_TEMPLATE:-}
  if swtpm_is_provisioned "$dir" "$profile"; then
    return 0
  fi
  if [[ $allow_template == yes && -n $tmpl ]]; then
    tmpl=$(realpath -m "$tmpl")
    if [[ $tmpl != "$dir" ]] && swtpm_is_provisioned "$tmpl" "$profile"; then
      swtpm_provision_from_template "$dir" "$tmpl" "$profile"
      return 0
    fi
    swtpm_say "HWID_SWTPM_TEMPLATE=$tmpl is not a template of profile $profile; provisioning from scratch"
  fi
  swtpm_provision_full "$dir" "$profile"
}
