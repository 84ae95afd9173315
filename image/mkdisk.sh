#!/usr/bin/env bash
# Assembles the appliance's GPT disk image from three file-system images, without loop
# devices or mounts:
#
#   1 MiB   GPT header and table
#   p1      ESP      FAT32, \EFI\BOOT\BOOTX64.EFI (or BOOTAA64.EFI) = the UKI
#   p2      root     erofs, read-only (mounted by the initrd: root=PARTUUID=...)
#   p3      data     ext4, /data: the persistent /var (see customize.sh, /etc/fstab)
#   1 MiB   backup GPT
#
# Partition and disk GUIDs come from image.conf, so sfdisk writes the same bytes each time.
#
#   mkdisk.sh ARCH ESP.img ROOT.erofs DATA.ext4 OUT.img
set -euo pipefail
# shellcheck source=require.sh
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
pk_require mkdisk.sh sfdisk=fdisk truncate=coreutils dd=coreutils stat=coreutils || exit 1

die() { echo "mkdisk.sh: error: $*" >&2; exit 1; }
[[ $# -eq 5 ]] || die "usage: mkdisk.sh ARCH ESP.img ROOT.erofs DATA.ext4 OUT.img"
arch=$1 esp=$2 rootfs=$3 data=$4 out=$5
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=image.conf
source "$here/image.conf"
case $arch in
    amd64) root_type=$PK_TYPE_ROOT_AMD64 ;;
    arm64) root_type=$PK_TYPE_ROOT_ARM64 ;;
    *) die "unknown architecture $arch" ;;
esac

mib=$((1024 * 1024))
sectors() { echo $(( $1 * mib / 512 )); }
mib_of() { local s; s=$(stat -c %s "$1"); echo $(( (s + mib - 1) / mib )); }

esp_mib=$(mib_of "$esp")
root_mib=$(( $(mib_of "$rootfs") + PK_ROOT_HEADROOM_MIB ))
data_mib=$(mib_of "$data")
total_mib=$(( 1 + esp_mib + root_mib + data_mib + 1 ))

esp_start=1
root_start=$(( esp_start + esp_mib ))
data_start=$(( root_start + root_mib ))

rm -f "$out"
truncate -s $(( total_mib * mib )) "$out"
sfdisk --quiet --no-reread --no-tell-kernel "$out" <<EOF
label: gpt
label-id: $PK_DISK_GUID
unit: sectors
sector-size: 512
first-lba: 2048

start=$(sectors $esp_start), size=$(sectors "$esp_mib"), type=$PK_TYPE_ESP, uuid=$PK_ESP_PARTUUID, name="esp"
start=$(sectors $root_start), size=$(sectors "$root_mib"), type=$root_type, uuid=$PK_ROOT_PARTUUID, name="root-$arch"
start=$(sectors $data_start), size=$(sectors "$data_mib"), type=$PK_TYPE_DATA, uuid=$PK_DATA_PARTUUID, name="pk-data"
EOF

put() { # IMAGE START_MIB
    dd if="$1" of="$out" bs=1M seek="$2" conv=notrunc,sparse status=none
}
put "$esp" $esp_start
put "$rootfs" $root_start
put "$data" $data_start
echo "mkdisk.sh: $out: ${total_mib} MiB (ESP ${esp_mib}, root ${root_mib}, data ${data_mib})" >&2
