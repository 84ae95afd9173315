# Sourced by build.sh and make-bundle.sh: what makes one root slot, the same way for the
# image's first slot and for an update bundle.
#
#   slot_arch ARCH            per-architecture names (below)
#   slot_make TREE BOOT OUT   from the root tree TREE and BOOT/{vmlinuz,initrd.img}, into OUT:
#                             root.erofs, root.verity (verity.txt), uki.efi (signed), and
#                             its inputs cmdline.txt, stub.sbat, pcrsig.json, systemd-boot.efi
#                             (signed); sets roothash, data_blocks, hash_offset, root_uuid
#   slot_bundle OUT VERSION ARCH FILE [pk-bundle options]
#                             OUT's slot as a signed update bundle
#
# The caller sets: here (image/), keys (the key directory, make-keys.sh), bundle_tool (the
# host's pk-bundle), SOURCE_DATE_EPOCH, and image.conf's variables; die and say.

slot_arch() { # ARCH
    case $1 in
        amd64)
            efi_name=BOOTX64.EFI efi_arch=x64 console=ttyS0 cross= elf_machine=62 qemu_binfmt=
            bin_pkg=binutils ;;
        arm64)
            efi_name=BOOTAA64.EFI efi_arch=aa64 console=ttyAMA0 cross=aarch64-linux-gnu- elf_machine=183
            qemu_binfmt=qemu-aarch64 bin_pkg=binutils-aarch64-linux-gnu ;;
        *) die "unknown architecture '$1' (amd64 or arm64)" ;;
    esac
    slot_for=$1
}

# systemd-measure of the tree's own systemd (the version of its stub), run from the tree:
# through its dynamic loader on the same architecture, qemu-user on another.
slot_measure() { # TREE ARGS...
    local r=$1
    shift
    if [[ -n $qemu_binfmt && $(dpkg --print-architecture) != "$slot_for" ]]; then
        "/usr/bin/$qemu_binfmt-static" -L "$r" "$r/usr/lib/systemd/systemd-measure" "$@"
    else
        local libs=$r/usr/lib/x86_64-linux-gnu
        "$r/usr/lib64/ld-linux-x86-64.so.2" --library-path "$libs:$libs/systemd" \
            "$r/usr/lib/systemd/systemd-measure" "$@"
    fi
}

slot_make() { # TREE BOOT OUT
    local tree=$1 boot=$2 out=$3
    local stub=$tree/usr/lib/systemd/boot/efi/linux$efi_arch.efi.stub
    local sdboot=$tree/usr/lib/systemd/boot/efi/systemd-boot$efi_arch.efi
    for f in "$stub" "$sdboot"; do
        [[ -f $f ]] || die "$f not found (packages.$slot_for.txt must list systemd-boot-efi)"
    done
    # The read-only root and its dm-verity hash tree (fixed salt and UUID: reproducible).
    say "mkfs.erofs, veritysetup format"
    rm -f "$out/root.erofs" "$out/root.verity"
    mkfs.erofs --quiet -zlz4hc -T"$SOURCE_DATE_EPOCH" -U"$PK_EROFS_UUID" "$out/root.erofs" "$tree"
    veritysetup format --data-block-size=4096 --hash-block-size=4096 --salt="$PK_VERITY_SALT" \
        --uuid="$PK_VERITY_UUID" "$out/root.erofs" "$out/root.verity" > "$out/verity.txt"
    roothash=$(awk '$1 == "Root" && $2 == "hash:" { print $3 }' "$out/verity.txt")
    [[ $roothash =~ ^[0-9a-f]{64}$ ]] || die "no root hash in veritysetup's output ($out/verity.txt)"
    data_blocks=$(( $(stat -c %s "$out/root.erofs") / 4096 ))
    hash_offset=$(( data_blocks * 4096 ))
    # The slot's PARTUUID: the root hash's first 128 bits (what the initrd looks for).
    root_uuid=$(sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/' <<<"$roothash")

    # The UKI: its PCR 11 signature, then the Secure Boot signatures.
    local cmdline="roothash=$roothash systemd.verity_root_options=hash-offset=$hash_offset,data-blocks=$data_blocks root=/dev/mapper/root rootfstype=erofs ro console=$console,115200 systemd.gpt_auto=0 panic=30"
    say "UKI, command line: $cmdline"
    printf '%s' "$cmdline" > "$out/cmdline.txt"
    "${cross}objcopy" -O binary --only-section=.sbat "$stub" "$out/stub.sbat"
    # systemd-stub measures these sections (and its own .sbat) into PCR 11; the phase is
    # empty because the image masks systemd-pcrphase (customize.sh): PCR 11 keeps the
    # stub's value.
    slot_measure "$tree" sign --bank=sha256 --phase=: --linux="$boot/vmlinuz" \
        --osrel="$tree/usr/lib/os-release" --cmdline="$out/cmdline.txt" --initrd="$boot/initrd.img" \
        --sbat="$out/stub.sbat" --pcrpkey="$keys/tpm2-pcr-public-key.pem" \
        --private-key="$keys/tpm2-pcr-private-key.pem" --public-key="$keys/tpm2-pcr-public-key.pem" \
        > "$out/pcrsig.json"
    PCRPKEY=$keys/tpm2-pcr-public-key.pem PCRSIG=$out/pcrsig.json OBJCOPY=${cross}objcopy \
        OBJDUMP=${cross}objdump "$here/mkuki.sh" "$stub" "$boot/vmlinuz" "$boot/initrd.img" \
        "$tree/usr/lib/os-release" "$cmdline" "$out/uki.unsigned.efi"
    # sbsign puts the time of signing into the signature: a frozen clock (faketime) at
    # SOURCE_DATE_EPOCH keeps two builds' signatures the same bytes. Firmware does not
    # check a signature's time.
    local when
    when=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')
    faketime -f "$when" sbsign --key "$keys/db.key" --cert "$keys/db.crt" --output "$out/uki.efi" \
        "$out/uki.unsigned.efi" 2>/dev/null
    faketime -f "$when" sbsign --key "$keys/db.key" --cert "$keys/db.crt" --output "$out/systemd-boot.efi" \
        "$sdboot" 2>/dev/null
    rm -f "$out/uki.unsigned.efi"
}

slot_bundle() { # OUT VERSION ARCH FILE [pk-bundle make options]
    local out=$1 version=$2 arch=$3 file=$4
    shift 4
    "$bundle_tool" make --key "$keys/update-key.pem" --version "$version" --arch "$arch" \
        --roothash "$roothash" --data-blocks "$data_blocks" --hash-offset "$hash_offset" \
        --root "$out/root.erofs" --verity "$out/root.verity" --uki "$out/uki.efi" --out "$file" "$@"
}
