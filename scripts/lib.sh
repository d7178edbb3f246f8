# shellcheck shell=bash
# Helpers sourced by scripts/test, scripts/demo and CI. Source it; do not execute it.

HWID_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian 12 packages needed to build, test and demo hwid.
HWID_DEB_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libssl-dev openssl
  libtss2-dev libtss2-tcti-swtpm0
  libabsl-dev libgtest-dev libgmock-dev
  swtpm swtpm-tools tpm2-tools tpm2-openssl
  nginx-light haproxy curl procps
  python3 ccache
  libgrpc++-dev protobuf-compiler-grpc clang libclang-rt-14-dev
  libprotobuf-dev protobuf-compiler
  iproute2 util-linux coreutils
  softhsm2 libp11-dev libp11-kit-dev p11-kit-modules libengine-pkcs11-openssl opensc
  postgresql libpq-dev
  nlohmann-json3-dev python3-jsonschema
)

hwid_log() { printf '\n== %s\n' "$*" >&2; }
hwid_fail() {
  printf 'ERROR: %s\n' "$*" >&2
  return 1
}

# hwid_install_deps: installs the missing packages of HWID_DEB_PACKAGES (and only those) with
# apt-get; runs `apt-get update` only when something is missing. Needs root then.
hwid_install_deps() {
  local p status missing=()
  for p in "${HWID_DEB_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    printf 'deps: all %d packages installed\n' "${#HWID_DEB_PACKAGES[@]}" >&2
    return 0
  fi
  if [[ $(id -u) != 0 ]]; then
    hwid_fail "missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}"
    return 1
  fi
  printf 'deps: installing %s\n' "${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q || { hwid_fail "apt-get update failed"; return 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { hwid_fail "apt-get install ${missing[*]} failed"; return 1; }
}

# hwid_build DIR [cmake args...]: configures DIR from the repo root (Ninja when available) and
# builds it with at most 2 jobs (HWID_JOBS); HWID_BUILD_TARGETS (space-separated) limits the
# build to those targets. Re-running only rebuilds what changed.
hwid_build() {
  local dir=$1
  shift
  local -a gen=()
  if [[ ! -f $dir/CMakeCache.txt ]] && command -v ninja >/dev/null 2>&1; then
    gen=(-G Ninja)
  fi
  # ccache (outside the source tree) makes re-runs and CI on the same machine fast; paths are
  # made relative to the checkout so a fresh clone elsewhere still hits the cache.
  local -a launcher=()
  if command -v ccache >/dev/null 2>&1 && [[ ${HWID_NO_CCACHE:-0} != 1 ]]; then
    export CCACHE_DIR=${CCACHE_DIR:-${HWID_CACHE:-$HOME/.cache/hwid}/ccache}
    export CCACHE_BASEDIR=$HWID_ROOT CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$HWID_ROOT" -B "$dir" "${gen[@]}" "${launcher[@]}" "$@" || { hwid_fail "cmake configure of $dir failed"; return 1; }
  local -a targets=()
  if [[ -n ${HWID_BUILD_TARGETS:-} ]]; then
    read -r -a targets <<<"$HWID_BUILD_TARGETS"
    targets=(--target "${targets[@]}")
  fi
  cmake --build "$dir" -j "${HWID_JOBS:-2}" "${targets[@]}" ||
    { hwid_fail "build of $dir failed"; return 1; }
}
