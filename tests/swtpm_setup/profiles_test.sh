#!/usr/bin/env bash
# swtpm-setup profiles: for every profile, start a swtpm with `swtpm-up --profile NAME` (copying
# the profile template from $HWID_SWTPM_PROFILES/NAME when set, as CTest's fixture swtpm_profiles
# provides; otherwise provisioning from scratch) and check with tpm2-tools and openssl, against the
# running swtpm, exactly the property the profile promises. Also: an unknown profile exits 2, a
# template of another profile is not used, and swtpm-up on a DIR of another profile re-provisions.
#
# usage: profiles_test.sh [PROFILE...]   (default: all)
# Missing tools fail the test when CI=true; otherwise they skip it (exit 77).
set -uo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
SETUP=${HWID_SWTPM_SETUP_DIR:-$HERE/../../swtpm-setup}
# shellcheck source=../../swtpm-setup/swtpm-lib.sh
source "$SETUP/swtpm-lib.sh"

for t in swtpm swtpm_setup swtpm_localca swtpm_ioctl tpm2_getcap tpm2_nvread tpm2_nvreadpublic \
  tpm2_readpublic openssl od cmp; do
  if ! command -v "$t" >/dev/null 2>&1; then
    if [[ ${CI:-} == true ]]; then
      echo "FAIL: $t is missing (install swtpm swtpm-tools tpm2-tools openssl)" >&2
      exit 1
    fi
    echo "SKIP: $t is missing" >&2
    exit 77
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hwid-profiles-test.XXXXXX")
RUNNING=()
cleanup() {
  local d
  for d in "${RUNNING[@]}"; do
    "$SETUP/swtpm-down" "$d" >/dev/null 2>&1 || true
  done
  [[ -n ${HWID_KEEP_TEST_DIR:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

FAILS=0
CHECKS=0
CURRENT=
pass() { CHECKS=$((CHECKS + 1)); }
fail() {
  CHECKS=$((CHECKS + 1))
  FAILS=$((FAILS + 1))
  echo "FAIL [$CURRENT]: $*" >&2
}
# check DESCRIPTION CMD...: CMD must succeed.
check() {
  local what=$1
  shift
  if "$@" >"$WORK/last.out" 2>&1; then pass; else fail "$what ($(tail -n 3 "$WORK/last.out" | tr '\n' ' '))"; fi
}
# check_not DESCRIPTION CMD...: CMD must fail.
check_not() {
  local what=$1
  shift
  if "$@" >"$WORK/last.out" 2>&1; then fail "$what (succeeded but must not)"; else pass; fi
}

hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
nv_indices() { tpm2_getcap handles-nv-index | sed -n 's/^- //p' | while read -r h; do printf '0x%08x\n' "$h"; done; }
persistent() { tpm2_getcap handles-persistent | sed -n 's/^- //p' | while read -r h; do printf '0x%08x\n' "$h"; done; }
has_line() { grep -qx -- "$2" <<<"$1"; }
spki_der() { # spki_der PEMFILE(cert|pubkey) OUT
  if grep -q 'BEGIN CERTIFICATE' "$1"; then
    openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER -out "$2"
  else
    openssl pkey -pubin -in "$1" -outform DER -out "$2"
  fi
}
# der_len HEX: total length of the DER TLV (SEQUENCE, long form) at the start of HEX.
der_len() {
  case ${1:0:4} in
    3082) echo $((4 + 16#${1:4:4})) ;;
    3081) echo $((3 + 16#${1:4:2})) ;;
    *) echo 0 ;;
  esac
}
# cert_ext_text CERT: the extension values that make the TCG EK profile, as text.
cert_ext_text() {
  openssl x509 -in "$1" -noout -ext basicConstraints,keyUsage,extendedKeyUsage,subjectAltName 2>&1
  openssl x509 -in "$1" -noout -subject -nameopt RFC2253
}

EKS=("0x81010001:0x01c00002:ek-rsa2048" "0x81010016:0x01c00016:ek-ecc-p384"
  "0x81010002:0x01c0000a:ek-ecc-p256")

# read_nv NV OUT: the raw NV content.
read_nv() { tpm2_nvread "$1" -o "$2" >/dev/null 2>&1; }

# ek_pub HANDLE OUT: the TPM's EK public key (SubjectPublicKeyInfo DER).
ek_pub() { tpm2_readpublic -c "$1" -f pem -o "$2.pem" >/dev/null 2>&1 && spki_der "$2.pem" "$2"; }

# check_ek_state DIR WANT_HANDLES WANT_NVS: exactly these EK handles / EK cert NV indices exist
# (the lists are space-separated among the three EKs' handles / NVs).
check_ek_state() {
  local dir=$1 want_h=" $2 " want_nv=" $3 " handles nvs e h nv name
  handles=$(persistent)
  nvs=$(nv_indices)
  for e in "${EKS[@]}"; do
    IFS=: read -r h nv name <<<"$e"
    if [[ $want_h == *" $h "* ]]; then
      has_line "$handles" "$h" && pass || fail "persistent EK $h ($name) missing"
    else
      has_line "$handles" "$h" && fail "persistent EK $h ($name) exists but must not" || pass
    fi
    if [[ $want_nv == *" $nv "* ]]; then
      has_line "$nvs" "$nv" && pass || fail "EK certificate NV $nv ($name) missing"
      [[ -f $dir/certs/$name.pem ]] && pass || fail "$dir/certs/$name.pem missing"
    else
      has_line "$nvs" "$nv" && fail "EK certificate NV $nv ($name) exists but must not" || pass
      [[ ! -e $dir/certs/$name.pem ]] && pass || fail "$dir/certs/$name.pem exists without NV $nv"
    fi
  done
}

# check_cert_matches_nv DIR NAME NV: certs/NAME.pem is exactly the DER stored in NV.
check_cert_matches_nv() {
  local dir=$1 name=$2 nv=$3
  read_nv "$nv" "$WORK/nv.bin" || { fail "tpm2_nvread $nv failed"; return; }
  openssl x509 -in "$dir/certs/$name.pem" -outform DER -out "$WORK/cert.der"
  check "NV $nv holds exactly certs/$name.pem" cmp "$WORK/nv.bin" "$WORK/cert.der"
}

# check_key_is_ek DIR NAME HANDLE: the certificate's public key is the TPM's EK at HANDLE.
check_key_is_ek() {
  ek_pub "$3" "$WORK/ek.der" || { fail "tpm2_readpublic $3 failed"; return; }
  spki_der "$1/certs/$2.pem" "$WORK/certkey.der"
  check "certs/$2.pem key == EK $3" cmp "$WORK/certkey.der" "$WORK/ek.der"
}

check_chain() { # check_chain CERT CAFILE [UNTRUSTED]
  if [[ -n ${3:-} ]]; then
    openssl verify -CAfile "$2" -untrusted "$3" "$1"
  else
    openssl verify -CAfile "$2" "$1"
  fi
}

check_banks() { # check_banks "sha1 sha256": exactly these banks have PCRs allocated
  local want=" $1 " caps bank pcrs
  caps=$(tpm2_getcap pcrs) || { fail "tpm2_getcap pcrs failed"; return; }
  for bank in sha1 sha256 sha384 sha512; do
    pcrs=$(sed -n "s/^  - $bank: \[\(.*\)\]\$/\1/p" <<<"$caps" | tr -d ' ')
    if [[ $want == *" $bank "* ]]; then
      [[ $pcrs == 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23 ]] && pass ||
        fail "PCR bank $bank must be allocated with PCRs 0-23 (tpm2_getcap pcrs: '$pcrs')"
    else
      [[ -z $pcrs ]] && pass || fail "PCR bank $bank must not be allocated (has '$pcrs')"
    fi
  done
}

check_common_files() { # DIR PROFILE
  local f
  for f in ek-ca.pem ek-root.pem certs state/tpm2-00.permall profile; do
    [[ -e $1/$f ]] && pass || fail "$1/$f missing"
  done
  [[ $(cat "$1/profile" 2>/dev/null) == "$2" ]] && pass || fail "$1/profile is not '$2'"
  [[ $(grep -c 'BEGIN CERTIFICATE' "$1/ek-ca.pem") == 2 ]] && pass ||
    fail "ek-ca.pem must hold root + intermediate"
  [[ $(grep -c 'BEGIN CERTIFICATE' "$1/ek-root.pem") == 1 ]] && pass ||
    fail "ek-root.pem must hold the root only"
  check "ek-root.pem is the local root" cmp "$1/ek-root.pem" "$1/localca/swtpm-localca-rootca-cert.pem"
}

# The good certificates of this run (extension text to compare re-issued certificates against).
GOOD_DIR=

check_profile() {
  local p=$1 dir=$2 e h nv name raw len n tail_hex
  local root=$dir/ek-root.pem ca=$dir/ek-ca.pem inter=$dir/localca/issuercert.pem
  check_common_files "$dir" "$p"
  case $p in
    good)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" "0x01c00002 0x01c00016 0x01c0000a"
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        check_cert_matches_nv "$dir" "$name" "$nv"
        check_key_is_ek "$dir" "$name" "$h"
        check "good $name chains to ek-ca.pem" check_chain "$dir/certs/$name.pem" "$ca"
      done
      check_banks "sha1 sha256"
      has_line "$(nv_indices)" 0x01c00100 && fail "good must not have NV 0x01c00100" || pass
      [[ ! -e $dir/other-ca.pem ]] && pass || fail "good must not have other-ca.pem"
      ;;
    no-ekcert)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" ""
      # No certificate anywhere in the TCG EK certificate ranges (low, high, chain).
      n=$(nv_indices | while read -r i; do ((i >= 0x01c00000 && i <= 0x01c001ff)) && echo "$i"; done)
      [[ -z $n ]] && pass || fail "EK credential NV indices left: $n"
      [[ -z $(ls -A "$dir/certs") ]] && pass || fail "certs/ must be empty"
      ;;
    ecc-only | rsa-only)
      if [[ $p == ecc-only ]]; then
        check_ek_state "$dir" "0x81010016 0x81010002" "0x01c00016 0x01c0000a"
      else
        check_ek_state "$dir" "0x81010001" "0x01c00002"
      fi
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        [[ -f $dir/certs/$name.pem ]] || continue
        check_cert_matches_nv "$dir" "$name" "$nv"
        check_key_is_ek "$dir" "$name" "$h"
        check "$name chains to ek-ca.pem" check_chain "$dir/certs/$name.pem" "$ca"
      done
      ;;
    expired-ekcert | wrong-ca | cert-key-mismatch)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" "0x01c00002 0x01c00016 0x01c0000a"
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        local c=$dir/certs/$name.pem
        check_cert_matches_nv "$dir" "$name" "$nv"
        if [[ -n $GOOD_DIR ]]; then
          [[ $(cert_ext_text "$c") == "$(cert_ext_text "$GOOD_DIR/certs/$name.pem")" ]] && pass ||
            fail "$name: subject/extensions differ from the good profile's: $(cert_ext_text "$c" | tr '\n' ' ')"
        fi
        case $p in
          expired-ekcert)
            check_key_is_ek "$dir" "$name" "$h"
            [[ $(openssl x509 -in "$c" -noout -startdate -enddate | tr '\n' ' ') == \
              "notBefore=Jan  1 00:00:00 2015 GMT notAfter=Jan  1 00:00:00 2020 GMT " ]] && pass ||
              fail "$name validity is not 2015-01-01..2020-01-01"
            check_not "$name: notAfter must be in the past" openssl x509 -in "$c" -noout -checkend 0
            openssl verify -CAfile "$ca" "$c" >"$WORK/v.out" 2>&1 && fail "$name verifies today"
            grep -q 'certificate has expired' "$WORK/v.out" && pass ||
              fail "$name: verify must fail with 'certificate has expired': $(cat "$WORK/v.out")"
            check "$name chains to ek-ca.pem (signatures, no time check)" \
              openssl verify -no_check_time -CAfile "$ca" "$c"
            [[ $(openssl x509 -in "$c" -noout -issuer) == "$(openssl x509 -in "$inter" -noout -subject | sed 's/^subject/issuer/')" ]] &&
              pass || fail "$name: issuer is not the local intermediate"
            ;;
          wrong-ca)
            check_key_is_ek "$dir" "$name" "$h"
            check_not "$name must not chain to ek-ca.pem" check_chain "$c" "$ca"
            check "$name chains to other-ca.pem" check_chain "$c" "$dir/other-ca.pem"
            ;;
          cert-key-mismatch)
            check "$name chains to ek-ca.pem" check_chain "$c" "$ca"
            ek_pub "$h" "$WORK/ek.der" || fail "tpm2_readpublic $h failed"
            spki_der "$c" "$WORK/certkey.der"
            check_not "$name: certificate key must differ from EK $h" cmp -s "$WORK/certkey.der" "$WORK/ek.der"
            # Same type: same algorithm and size/curve.
            [[ $(openssl pkey -pubin -inform DER -in "$WORK/certkey.der" -noout -text | head -n 1) == \
              "$(openssl pkey -pubin -inform DER -in "$WORK/ek.der" -noout -text | head -n 1)" ]] &&
              [[ $(openssl pkey -pubin -inform DER -in "$WORK/certkey.der" -noout -text | grep -E 'NIST CURVE|^Public-Key') == \
                "$(openssl pkey -pubin -inform DER -in "$WORK/ek.der" -noout -text | grep -E 'NIST CURVE|^Public-Key')" ]] &&
              pass || fail "$name: the certificate key is not of the EK's type"
            ;;
        esac
      done
      if [[ $p == wrong-ca ]]; then
        check_not "other-ca.pem must differ from ek-ca.pem" cmp -s "$dir/other-ca.pem" "$ca"
        check "ek-ca.pem is still the local CA" check_chain "$inter" "$root"
        check_not "other-ca.pem's intermediate is not under the local root" \
          check_chain "$dir/otherca/intermediate.pem" "$root"
      else
        [[ ! -e $dir/other-ca.pem ]] && pass || fail "$p must not have other-ca.pem"
      fi
      ;;
    trailing-bytes)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" "0x01c00002 0x01c00016 0x01c0000a"
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        check_key_is_ek "$dir" "$name" "$h"
        check "$name chains to ek-ca.pem" check_chain "$dir/certs/$name.pem" "$ca"
        read_nv "$nv" "$WORK/nv.bin" || { fail "tpm2_nvread $nv failed"; continue; }
        raw=$(hex "$WORK/nv.bin")
        openssl x509 -in "$dir/certs/$name.pem" -outform DER -out "$WORK/cert.der"
        local der
        der=$(hex "$WORK/cert.der")
        case $name in
          ek-rsa2048) # 10 01 00 <len16 BE> DER, nothing after
            [[ ${raw:0:6} == 100100 ]] && pass || fail "NV $nv must start with 10 01 00 (has ${raw:0:6})"
            len=$((16#${raw:6:4}))
            [[ $len == $((${#der} / 2)) ]] && pass ||
              fail "NV $nv wrapper length $len != DER length $((${#der} / 2))"
            [[ ${raw:10} == "$der" ]] && pass || fail "NV $nv after the wrapper is not exactly the DER"
            ;;
          ek-ecc-p256) # DER + 16 junk bytes, none 00/ff
            [[ ${raw:0:${#der}} == "$der" ]] && pass || fail "NV $nv does not start with the DER"
            tail_hex=${raw:${#der}}
            [[ ${#tail_hex} == 32 ]] && pass || fail "NV $nv: $((${#tail_hex} / 2)) bytes after the DER, want 16"
            [[ $(der_len "$raw") == $((${#der} / 2)) ]] && pass || fail "NV $nv: DER length wrong"
            for ((n = 0; n < ${#tail_hex}; n += 2)); do
              [[ ${tail_hex:n:2} != 00 && ${tail_hex:n:2} != ff ]] ||
                { fail "NV $nv: junk byte $((n / 2)) is padding (${tail_hex:n:2})"; break; }
            done
            pass
            ;;
          ek-ecc-p384) # DER + 0xff padding
            [[ ${raw:0:${#der}} == "$der" ]] && pass || fail "NV $nv does not start with the DER"
            tail_hex=${raw:${#der}}
            [[ -n $tail_hex && -z ${tail_hex//f/} ]] && pass ||
              fail "NV $nv: after the DER must come 0xff padding only ($((${#tail_hex} / 2)) bytes: ${tail_hex:0:16}...)"
            ;;
        esac
        # A strict parser that takes the NV content as one certificate must not accept it.
        [[ $raw != "$der" ]] && pass || fail "NV $nv holds the plain DER (no quirk)"
      done
      ;;
    intermediate-in-nv)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" "0x01c00002 0x01c00016 0x01c0000a"
      has_line "$(nv_indices)" 0x01c00100 && pass || fail "NV 0x01c00100 (EK chain) missing"
      read_nv 0x01c00100 "$WORK/chain.der" || fail "tpm2_nvread 0x01c00100 failed"
      openssl x509 -in "$inter" -outform DER -out "$WORK/inter.der"
      check "NV 0x01c00100 holds the local intermediate (DER)" cmp "$WORK/chain.der" "$WORK/inter.der"
      openssl x509 -inform DER -in "$WORK/chain.der" -out "$WORK/chain.pem" 2>/dev/null
      [[ $(tpm2_nvreadpublic 0x01c00100 2>/dev/null | grep -m1 'value: 0x6') == \
        "$(tpm2_nvreadpublic 0x01c00002 | grep -m1 'value: 0x6')" ]] && pass ||
        fail "NV 0x01c00100 attributes differ from the EK certificate index's"
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        check_cert_matches_nv "$dir" "$name" "$nv"
        check_key_is_ek "$dir" "$name" "$h"
        check "$name chains to ek-root.pem with the NV intermediate" \
          check_chain "$dir/certs/$name.pem" "$root" "$WORK/chain.pem"
        check_not "$name does not chain to ek-root.pem alone" check_chain "$dir/certs/$name.pem" "$root"
      done
      ;;
    sha1-only-pcrs)
      check_ek_state "$dir" "0x81010001 0x81010016 0x81010002" "0x01c00002 0x01c00016 0x01c0000a"
      check_banks "sha1"
      for e in "${EKS[@]}"; do
        IFS=: read -r h nv name <<<"$e"
        check_key_is_ek "$dir" "$name" "$h"
        check "$name chains to ek-ca.pem" check_chain "$dir/certs/$name.pem" "$ca"
      done
      ;;
    *) fail "no checks for profile $p" ;;
  esac
}

# up PROFILE DIR [TEMPLATE]: swtpm-up --profile PROFILE DIR; exports its env.
up() {
  local out
  out=$(HWID_SWTPM_TEMPLATE=${3:-} "$SETUP/swtpm-up" --profile "$1" "$2" 2>"$WORK/up.err") || {
    fail "swtpm-up --profile $1 $2 failed: $(tail -n 5 "$WORK/up.err")"
    return 1
  }
  RUNNING+=("$2")
  eval "$out"
  export TPM2TOOLS_TCTI
}

PROFILES=("$@")
((${#PROFILES[@]})) || PROFILES=("${HWID_SWTPM_PROFILE_NAMES[@]}")
for p in "${PROFILES[@]}"; do
  CURRENT=$p
  tmpl=
  if [[ -n ${HWID_SWTPM_PROFILES:-} ]]; then
    tmpl=$HWID_SWTPM_PROFILES/$p
    [[ -f $tmpl/.provisioned ]] || fail "fixture template $tmpl is not provisioned"
  fi
  up "$p" "$WORK/$p" "$tmpl" || continue
  if [[ -n $tmpl ]]; then
    grep -q "from template" "$WORK/up.err" && pass || fail "swtpm-up did not copy the template $tmpl"
  fi
  [[ $p == good ]] && GOOD_DIR=$WORK/$p
  before=$FAILS
  check_profile "$p" "$WORK/$p"
  "$SETUP/swtpm-down" "$WORK/$p" 2>/dev/null || fail "swtpm-down $WORK/$p failed"
  echo "profile $p: $([[ $FAILS == "$before" ]] && echo OK || echo "$((FAILS - before)) failures")" >&2
done

CURRENT=cli
# Unknown profile: exit 2 and the list of profiles.
"$SETUP/swtpm-up" --profile bogus "$WORK/bogus" >/dev/null 2>"$WORK/bogus.err"
rc=$?
[[ $rc == 2 ]] && pass || fail "swtpm-up --profile bogus exited $rc, want 2"
grep -q 'intermediate-in-nv' "$WORK/bogus.err" && grep -q 'bogus' "$WORK/bogus.err" && pass ||
  fail "swtpm-up --profile bogus must name the profile and list the profiles: $(cat "$WORK/bogus.err")"
"$SETUP/swtpm-provision-template" --profile bogus "$WORK/bogus" >/dev/null 2>&1
rc=$?
[[ $rc == 2 ]] && pass || fail "swtpm-provision-template --profile bogus exited $rc, want 2"
[[ ! -e $WORK/bogus/state ]] && pass || fail "an unknown profile must provision nothing"

# A DIR of another profile is re-provisioned; a template of another profile is not used.
if [[ -d $WORK/good/state ]]; then
  CURRENT=reprovision
  if up rsa-only "$WORK/good" "${HWID_SWTPM_PROFILES:+$HWID_SWTPM_PROFILES/good}"; then
    grep -q "from template" "$WORK/up.err" && fail "swtpm-up used a template of profile good for rsa-only" || pass
    check_profile rsa-only "$WORK/good"
    # Already running with rsa-only: asking for another profile must not touch it.
    HWID_SWTPM_TEMPLATE= "$SETUP/swtpm-up" --profile good "$WORK/good" >/dev/null 2>&1 &&
      fail "swtpm-up --profile good on a running rsa-only DIR must fail" || pass
    [[ $(cat "$WORK/good/profile") == rsa-only ]] && pass || fail "running DIR was re-provisioned"
    "$SETUP/swtpm-down" "$WORK/good" 2>/dev/null
  fi
fi

echo "$CHECKS checks, $FAILS failures" >&2
((FAILS == 0))
