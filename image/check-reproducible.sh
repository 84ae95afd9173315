#!/usr/bin/env bash
# Checks that the image build is reproducible: builds the image twice into separate
# directories and compares every artifact's sha256. The second build installs from the
# first build's manifest (build.sh --from-manifest), so this also checks that a pinned
# build gives the same image as the build that wrote the manifest.
#
# Usage: image/check-reproducible.sh [--arch amd64|arm64] [--debug] [--bin PATH]
#   Output: target/image/repro-a/ and target/image/repro-b/ (repro-a-arm64/, repro-b-arm64/
#   for arm64; kept for inspection); both builds use one copy of the binary
#   (target/image/repro-pk-appliance[-arm64]). The default binary is build.sh's: the
#   release build.
#   Exit 0 if the two disk images are identical; otherwise the differing artifacts and
#   files of the two root file systems are listed and it exits 1.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
pk_require check-reproducible.sh cp=coreutils diff=diffutils cmp=diffutils find=findutils || exit 1

args=()
arch=amd64
while [[ $# -gt 0 ]]; do
    case $1 in
        --arch|--bin|--update-bin|--keys|--version) args+=("$1" "${2:?$1 needs a value}"); [[ $1 == --arch ]] && arch=$2; shift 2 ;;
        --debug) args+=(--debug); shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

sfx=; [[ $arch == amd64 ]] || sfx=-$arch
a=$repo/target/image/repro-a$sfx b=$repo/target/image/repro-b$sfx
start=$SECONDS
# Both builds take the same copy of the binary, even if target/debug is rebuilt meanwhile.
if [[ $arch == arm64 ]]; then
    bin=${PK_APPLIANCE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/aarch64-unknown-linux-gnu/release/pk-appliance}
else
    bin=${PK_APPLIANCE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/pk-appliance}
fi
for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --bin ]] && bin=${args[i + 1]}; done
[[ -f $bin ]] || die "pk-appliance binary $bin not found"
mkdir -p "$repo/target/image"
snapshot=$repo/target/image/repro-pk-appliance$sfx
cp "$bin" "$snapshot"
args+=(--bin "$snapshot")
say "build A (current package versions) into $a"
"$here/build.sh" "${args[@]}" --out "$a"
say "build B (pinned to A's manifest) into $b"
"$here/build.sh" "${args[@]}" --out "$b" --from-manifest "$a/manifest.txt"

if diff -u "$a/SHA256SUMS" "$b/SHA256SUMS"; then
    say "REPRODUCIBLE: identical images after $((SECONDS - start)) s:"
    grep -E '\.img$' "$a/SHA256SUMS" >&2
    exit 0
fi
say "NOT REPRODUCIBLE: the artifacts above differ. Files that differ between the root file systems:"
( cd "$a/rootfs" && find . -type f -print0 | LC_ALL=C sort -z ) | while IFS= read -r -d '' f; do
    cmp -s "$a/rootfs/$f" "$b/rootfs/$f" || echo "  $f"
done >&2
diff <(cd "$a/rootfs" && find . | LC_ALL=C sort) <(cd "$b/rootfs" && find . | LC_ALL=C sort) >&2 || true
exit 1
