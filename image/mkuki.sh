#!/usr/bin/env bash
# Builds a unified kernel image (UKI): systemd-boot's EFI stub with the kernel, the
# initrd, the kernel command line and os-release added as PE sections, the way
# systemd-stub expects them (.osrel, .cmdline, .initrd, .linux; each section placed after
# the previous one at the stub's section alignment). objcopy writes the time of the build
# into the PE header's TimeDateStamp; it is set to SOURCE_DATE_EPOCH afterwards and the PE
# checksum recomputed, so that two builds give the same file.
#
#   mkuki.sh STUB KERNEL INITRD OS_RELEASE CMDLINE_TEXT OUT.efi
# Environment: OBJCOPY, OBJDUMP (default objcopy, objdump: the host's binutils, which
# handle x86-64 PE files; an arm64 stub needs aarch64-linux-gnu-objcopy/-objdump);
# PCRPKEY, PCRSIG (optional files): the .pcrpkey section (the PEM public key that signed
# the UKI's PCR 11 value) and the .pcrsig section (systemd-measure sign's JSON), which
# systemd-stub hands to the initrd as /.extra/tpm2-pcr-{public-key.pem,signature.json}.
set -euo pipefail
# shellcheck source=require.sh
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
pk_require mkuki.sh "${OBJCOPY:-objcopy}=binutils" "${OBJDUMP:-objdump}=binutils" od=coreutils stat=coreutils dd=coreutils awk=mawk || exit 1

die() { echo "mkuki.sh: error: $*" >&2; exit 1; }
[[ $# -eq 6 ]] || die "usage: mkuki.sh STUB KERNEL INITRD OS_RELEASE CMDLINE OUT.efi"
stub=$1 kernel=$2 initrd=$3 osrel=$4 cmdline=$5 out=$6
: "${SOURCE_DATE_EPOCH:?SOURCE_DATE_EPOCH must be set}"
for f in "$stub" "$kernel" "$initrd" "$osrel"; do [[ -f $f ]] || die "$f: no such file"; done
objcopy=${OBJCOPY:-objcopy} objdump=${OBJDUMP:-objdump}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s' "$cmdline" > "$work/cmdline"

align=$((16#$("$objdump" -p "$stub" | awk '$1 == "SectionAlignment" { print $2 }')))
(( align > 0 )) || die "cannot read the section alignment of $stub"
# The end of the stub's last section (VMA + size).
end=$("$objdump" -h -w "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }' | while read -r size vma; do
    echo $(( 16#$vma + 16#$size ))
done | sort -n | tail -1)
next=$end
args=()
add_section() { # NAME FILE
    local off=$(( (next + align - 1) / align * align ))
    args+=(--add-section "$1=$2" --change-section-vma "$1=$(printf '0x%x' "$off")")
    next=$(( off + $(stat -Lc %s "$2") ))
}
add_section .osrel "$osrel"
add_section .cmdline "$work/cmdline"
if [[ -n ${PCRPKEY:-} ]]; then
    [[ -f $PCRPKEY ]] || die "$PCRPKEY: no such file"
    add_section .pcrpkey "$PCRPKEY"
fi
if [[ -n ${PCRSIG:-} ]]; then
    [[ -f $PCRSIG ]] || die "$PCRSIG: no such file"
    add_section .pcrsig "$PCRSIG"
fi
add_section .initrd "$initrd"
# .linux last: the kernel may decompress itself into the space after it.
add_section .linux "$kernel"

"$objcopy" "${args[@]}" "$stub" "$work/uki.efi"

# Pin TimeDateStamp (COFF header + 4, i.e. PE signature + 8) and recompute CheckSum
# (optional header + 64) over the file, with the checksum field counted as zero.
le32() { # OFFSET FILE -> the little-endian 32-bit value at OFFSET
    od -An -v -t u4 -j "$1" -N 4 --endian=little "$2" | tr -d ' '
}
put_le32() { # OFFSET VALUE FILE
    local v=$2
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)))" |
        dd of="$3" bs=1 seek="$1" conv=notrunc status=none
}
pe=$(le32 60 "$work/uki.efi")
[[ $(od -An -c -j "$pe" -N 2 "$work/uki.efi" | tr -d ' ') == PE ]] || die "objcopy's output is not a PE file"
put_le32 $((pe + 8)) "$SOURCE_DATE_EPOCH" "$work/uki.efi"
put_le32 $((pe + 24 + 64)) 0 "$work/uki.efi"
size=$(stat -c %s "$work/uki.efi")
# The PE checksum: 16-bit one's-complement-style sum of the file, plus the file length.
sum=$(od -An -v -t u2 --endian=little "$work/uki.efi" | awk '
    { for (i = 1; i <= NF; i++) { s += $i; if (s >= 65536) s = s % 65536 + int(s / 65536) } }
    END { printf "%d\n", s }')
put_le32 $((pe + 24 + 64)) $(( sum + size )) "$work/uki.efi"

mv "$work/uki.efi" "$out"
