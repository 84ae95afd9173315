#!/usr/bin/env bash
# Assembles the appliance's GPT disk image from its partition images, without loop devices
# or mounts:
#
#   1 MiB   GPT header and table
#   p1      esp      FAT32: systemd-boot, the slot's UKI, loader.conf, the Secure Boot keys
#   p2      root-a   slot A: the erofs root, then its dm-verity hash tree (4 KiB aligned);
#                    PARTUUID = the first 128 bits of the root hash
#   p3      root-b   slot B: empty (zeros) until the first update; PARTUUID = the empty value
#   p4      pk-data  empty; encrypted (LUKS2) by the box at its first boot, then /data: the
#                    persistent /var (see customize.sh, /etc/fstab, pk-data-open.service)
#   1 MiB   backup GPT
#
# Partition and disk GUIDs come from image.conf (and the root hash), so sfdisk writes the
# same bytes each time.
#
#   mkdisk.sh ARCH ESP.img ROOT.erofs ROOT.verity ROOT_PARTUUID DATA.img OUT.img
set -euo pipefail
# shellcheck source=require.sh
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
pk_require mkdisk.sh sfdisk=fdisk truncate=coreutils dd=coreutils stat=coreutils || exit 1

die() { echo "mkdisk.sh: error: $*" >&2; exit 1; }
[[ $# -eq 7 ]] || die "usage: mkdisk.sh ARCH ESP.img ROOT.erofs ROOT.verity ROOT_PARTUUID DATA.img OUT.img"
arch=$1 esp=$2 erofs=$3 verity=$4 root_uuid=$5 data=$6 out=$7
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
slot_mib=$PK_ROOT_SLOT_MIB
data_mib=$(mib_of "$data")
erofs_bytes=$(stat -c %s "$erofs")
(( erofs_bytes % 4096 == 0 )) || die "$erofs is not a whole number of 4 KiB blocks"
(( erofs_bytes + $(stat -c %s "$verity") <= slot_mib * mib )) ||
    die "the root and its hash tree do not fit a ${slot_mib} MiB slot (PK_ROOT_SLOT_MIB)"
total_mib=$(( 1 + esp_mib + 2 * slot_mib + data_mib + 1 ))

esp_start=1
a_start=$(( esp_start + esp_mib ))
b_start=$(( a_start + slot_mib ))
data_start=$(( b_start + slot_mib ))

rm -f "$out"
truncate -s $(( total_mib * mib )) "$out"
sfdisk --quiet --no-reread --no-tell-kernel "$out" <<EOT
label: gpt
label-id: $PK_DISK_GUID
unit: sectors
sector-size: 512
first-lba: 2048

start=$(sectors $esp_start), size=$(sectors "$esp_mib"), type=$PK_TYPE_ESP, uuid=$PK_ESP_PARTUUID, name="esp"
start=$(sectors $a_start), size=$(sectors "$slot_mib"), type=$root_type, uuid=$root_uuid, name="root-a"
start=$(sectors $b_start), size=$(sectors "$slot_mib"), type=$root_type, uuid=$PK_EMPTY_SLOT_B_PARTUUID, name="root-b"
start=$(sectors $data_start), size=$(sectors "$data_mib"), type=$PK_TYPE_DATA, uuid=$PK_DATA_PARTUUID, name="pk-data"
EOT

put() { # IMAGE BYTE_OFFSET
    dd if="$1" of="$out" bs=4096 seek=$(( $2 / 4096 )) conv=notrunc,sparse status=none
}
put "$esp" $(( esp_start * mib ))
put "$erofs" $(( a_start * mib ))
put "$verity" $(( a_start * mib + erofs_bytes ))
put "$data" $(( data_start * mib ))
echo "mkdisk.sh: $out: ${total_mib} MiB (ESP ${esp_mib}, slots A and B ${slot_mib} each, data ${data_mib})" >&2
