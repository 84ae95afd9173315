#!/usr/bin/env bash
# mmdebstrap --extract-hook of build.sh --from-manifest: fails the build, naming them, if
# package versions of the pinned manifest are no longer offered by the mirror (apt would
# otherwise quietly take the newer version that replaced them). Debian's mirror keeps only
# the newest version of each package in the suite, -updates and -security, so an old
# manifest stops building at the next point release or security update; rebuild it
# without --from-manifest to take the new versions, and commit the new manifest.
#
#   check-manifest-available.sh MANIFEST   (MMDEBSTRAP_APT_CONFIG set by mmdebstrap)
set -euo pipefail
# shellcheck source=require.sh
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
pk_require check-manifest-available.sh apt-cache=apt comm=coreutils awk=mawk || exit 1
manifest=${1:?usage: check-manifest-available.sh MANIFEST}
: "${MMDEBSTRAP_APT_CONFIG:?run as an mmdebstrap hook}"

# "name version" of every version the mirror offers for the manifest's packages.
names=$(grep -v '^#' "$manifest" | awk 'NF >= 2 { print $1 }' | sort -u)
offered=$(APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-cache madison $names 2>/dev/null |
    awk -F'|' '{ gsub(/ /, "", $1); gsub(/ /, "", $2); print $1, $2 }' | sort -u)
missing=$(grep -v '^#' "$manifest" | awk 'NF >= 2 { print $1, $2 }' | sort -u |
    comm -23 - <(echo "$offered"))
if [[ -n $missing ]]; then
    echo "check-manifest-available.sh: error: the mirror no longer has these pinned versions:" >&2
    echo "$missing" | sed 's/^/  /' >&2
    echo "check-manifest-available.sh: build without --from-manifest to take the current versions" >&2
    exit 1
fi
echo "check-manifest-available.sh: all $(echo "$names" | wc -l) pinned versions are on the mirror" >&2
