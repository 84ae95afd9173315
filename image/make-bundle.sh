#!/usr/bin/env bash
# Makes an update bundle from an image build's root tree, with another version and,
# optionally, files replaced: what a new release's build does in one go (build.sh makes
# the bundle of its own slot), and what the QEMU suite uses to make the bundles it installs
# (a newer version; one whose pk-appliance cannot start; a downgrade).
#
# The tree (BUILD/rootfs) is copied, os-release gets the new IMAGE_VERSION, each --replace
# is applied, and the slot is made exactly as build.sh makes it (slot.sh): erofs, dm-verity,
# the UKI with its signed PCR 11 value, signed for Secure Boot, then the signed bundle.
#
# Usage: image/make-bundle.sh --from BUILD --version V --out FILE [--arch amd64|arm64]
#                             [--replace FILE:/PATH/IN/ROOT]... [--allow-downgrade]
#                             [--keys DIR] [--bundle-tool PATH] [--check-tools]
#   --from        an image/build.sh output directory (rootfs/, vmlinuz, initrd.img)
#   --arch        default: the build's (from its SHA256SUMS image name), else amd64
#   --keys        default as build.sh: ${CARGO_TARGET_DIR:-target}/image/keys
# Runs as root (the tree's files are owned by root).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=image.conf
source "$here/image.conf"
# shellcheck source=slot.sh
source "$here/slot.sh"

from= version= file= arch= keys=${PK_IMAGE_KEYS:-} bundle_tool=${PK_BUNDLE_TOOL:-} check_only=0
replace=() extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --from) from=${2:?--from needs a directory}; shift 2 ;;
        --version) version=${2:?--version needs a value}; shift 2 ;;
        --out) file=${2:?--out needs a file}; shift 2 ;;
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --replace) replace+=("${2:?--replace needs FILE:/PATH}"); shift 2 ;;
        --allow-downgrade) extra+=(--allow-downgrade); shift ;;
        --keys) keys=${2:?--keys needs a directory}; shift 2 ;;
        --bundle-tool) bundle_tool=${2:?--bundle-tool needs a path}; shift 2 ;;
        --check-tools) check_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
pk_require make-bundle.sh cp=coreutils mkfs.erofs=erofs-utils veritysetup=cryptsetup-bin \
    sbsign=sbsigntool faketime=faketime objcopy=binutils objdump=binutils awk=mawk sed=sed || exit 1
[[ $check_only == 1 ]] && { say "host tools: all present"; exit 0; }
[[ -n $from && -n $version && -n $file ]] || die "--from, --version and --out are needed (try --help)"
[[ -d $from/rootfs && -f $from/vmlinuz && -f $from/initrd.img ]] ||
    die "$from is not an image/build.sh output (rootfs/, vmlinuz, initrd.img)"
[[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "version '$version' is not dot-separated numbers"
if [[ -z $arch ]]; then
    arch=amd64
    grep -q 'pk-appliance-arm64' "$from/SHA256SUMS" 2>/dev/null && arch=arm64
fi
slot_arch "$arch"
keys=$(realpath "${keys:-${CARGO_TARGET_DIR:-$repo/target}/image/keys}")
bundle_tool=${bundle_tool:-${CARGO_TARGET_DIR:-$repo/target}/release/pk-bundle}
[[ -x $bundle_tool ]] || die "$bundle_tool not found (cargo build --release -p pk-update --bin pk-bundle)"
[[ -f $keys/update-key.pem && -f $keys/db.key ]] || die "$keys holds no signing keys (image/make-keys.sh)"
[[ $(id -u) == 0 ]] || die "run as root (the root tree's files belong to root)"
export SOURCE_DATE_EPOCH=$PK_IMAGE_EPOCH TZ=UTC LC_ALL=C.UTF-8

work=$(mktemp -d "${TMPDIR:-/tmp}/pk-bundle.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "copying $from/rootfs"
cp -a "$from/rootfs" "$work/tree"
sed -i "s/^IMAGE_VERSION=.*/IMAGE_VERSION=$version/" "$work/tree/usr/lib/os-release"
grep -qx "IMAGE_VERSION=$version" "$work/tree/usr/lib/os-release" || die "the tree's os-release has no IMAGE_VERSION"
for r in "${replace[@]}"; do
    src=${r%%:*} dest=${r#*:}
    [[ -f $src && $dest == /* && $dest != *..* ]] || die "--replace $r: needs an existing FILE and an absolute /PATH"
    install -D -m 0644 -o root -g root "$src" "$work/tree$dest"
    touch -h -d "@$SOURCE_DATE_EPOCH" "$work/tree$dest"
    say "replaced $dest"
done
slot_make "$work/tree" "$from" "$work"
slot_bundle "$work" "$version" "$arch" "$file" "${extra[@]}"
say "$file: version $version ($arch), root hash $roothash"
