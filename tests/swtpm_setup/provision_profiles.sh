#!/usr/bin/env bash
# provision_profiles.sh BASEDIR: provisions every swtpm-setup profile as a template in
# BASEDIR/<NAME> (swtpm-provision-template --profile NAME; skips templates already provisioned
# with the current marker). CTest's setup test swtpm_profiles_setup runs it.
set -euo pipefail
SETUP=${HWID_SWTPM_SETUP_DIR:-$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../swtpm-setup}
# shellcheck source=../../swtpm-setup/swtpm-lib.sh
source "$SETUP/swtpm-lib.sh"
if [[ $# -ne 1 ]]; then
  echo "usage: provision_profiles.sh BASEDIR" >&2
  exit 2
fi
mkdir -p "$1"
for p in "${HWID_SWTPM_PROFILE_NAMES[@]}"; do
  "$SETUP/swtpm-provision-template" --profile "$p" "$1/$p"
done
