#!/usr/bin/env bash
# Builds the pk appliance OS image: Debian 13 (trixie, -updates, -security) with
# pk-appliance, on a read-only erofs root, booted by a unified kernel image from a GPT
# disk. Reproducible: the same package versions, the same pk-appliance binary and the same
# image.conf give the same bytes (check-reproducible.sh checks that).
#
# Steps and files (all under OUT, default target/image/<arch>[-debug]):
#   1. rootfs/         mmdebstrap --variant=essential + packages.<arch>.txt, then the
#                      customize.sh hook (appliance, configuration, units, initrd);
#      manifest.txt    the installed packages: name, version, arch, sha256 of the .deb
#   2. vmlinuz, initrd.img   taken out of rootfs/boot (the root file system has no /boot)
#   3. root.erofs      mkfs.erofs -zlz4hc, every timestamp SOURCE_DATE_EPOCH, fixed UUID
#      root.verity     its dm-verity hash tree (fixed salt and UUID); verity.txt
#   4. uki.efi         mkuki.sh: stub + kernel + initrd + command line (the root hash) +
#                      os-release + the PCR 11 signature (pcrsig.json, systemd-measure),
#                      signed for Secure Boot (sbsign, the db key); systemd-boot.efi signed
#   5. esp.img         FAT32 (mkfs.vfat, fixed volume id): systemd-boot as
#                      \EFI\BOOT\BOOT<ARCH>.EFI, the UKI in \EFI\Linux\, loader.conf, the
#                      Secure Boot keys to enrol in \loader\keys\auto\
#      data.img        the data partition: empty (zeros); the box encrypts it at first boot
#   6. pk-appliance-<arch>.img   mkdisk.sh: the GPT disk (slot A filled, slot B empty);
#                      SHA256SUMS for everything above
#   7. pk-appliance-<arch>-<version>.pkupdate   the same slot as a signed update bundle
#
# Usage: image/build.sh [--arch amd64|arm64] [--out DIR] [--bin PATH] [--from-manifest FILE] [--debug]
#                       [--check-tools]
#   --arch                    amd64 (default) or arm64 (console ttyAMA0, BOOTAA64.EFI; on an
#                             amd64 host mmdebstrap runs the arm64 tools under qemu-user)
#   --bin, PK_APPLIANCE_BIN   the pk-appliance binary (default: the release build,
#                             ${CARGO_TARGET_DIR:-target}/release/pk-appliance for amd64; for
#                             arm64 the cross-build-arm64.sh output,
#                             ${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/pk-appliance).
#                             A debug binary is taken only when named here.
#   --from-manifest FILE      install exactly the versions in FILE (a manifest.txt of an
#                             earlier build); fails if the mirror no longer has one of them
#   --debug, PK_IMAGE_DEBUG=1 the debug variant: a root shell on the serial console
#   --update-bin, PK_UPDATE_BIN   the pk-update installer for the image's architecture
#                             (default: next to the default --bin, .../release/pk-update)
#   --bundle-tool, PK_BUNDLE_TOOL the build host's pk-bundle, which makes the update bundle
#                             (default ${CARGO_TARGET_DIR:-target}/release/pk-bundle)
#   --keys DIR, PK_IMAGE_KEYS the signing keys (make-keys.sh lists the files). Default:
#                             throwaway keys, made once in ${CARGO_TARGET_DIR:-target}/image/keys
#   --version V, PK_IMAGE_VERSION   the image's version (dot-separated numbers; default
#                             the workspace's version in Cargo.toml)
#   --check-tools             only check that every host program the build needs is
#                             installed (naming the Debian package of each missing one)
# Runs as root (mmdebstrap in root mode, chroot); needs host-packages.txt installed.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=image.conf
source "$here/image.conf"
# shellcheck source=slot.sh
source "$here/slot.sh"

arch=amd64
out=
bin=${PK_APPLIANCE_BIN:-}
pin=
debug=${PK_IMAGE_DEBUG:-0}
check_only=0
keys=${PK_IMAGE_KEYS:-}
version=${PK_IMAGE_VERSION:-}
update_bin=${PK_UPDATE_BIN:-}
bundle_tool=${PK_BUNDLE_TOOL:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --bin) bin=${2:?--bin needs a path}; shift 2 ;;
        --from-manifest) pin=${2:?--from-manifest needs a file}; shift 2 ;;
        --debug) debug=1; shift ;;
        --check-tools) check_only=1; shift ;;
        --keys) keys=${2:?--keys needs a directory}; shift 2 ;;
        --update-bin) update_bin=${2:?--update-bin needs a path}; shift 2 ;;
        --bundle-tool) bundle_tool=${2:?--bundle-tool needs a path}; shift 2 ;;
        --version) version=${2:?--version needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
[[ $debug == 0 || $debug == 1 ]] || die "PK_IMAGE_DEBUG must be 0 or 1"
suffix=; [[ $debug == 1 ]] && suffix=-debug
out=$(realpath -m "${out:-$repo/target/image/$arch$suffix}")

# Per architecture (slot.sh): the ESP file name, the serial console, the binutils that
# handle the stub's PE format, the ELF machine of the binaries. The systemd-boot stub and
# systemd-boot come from the image's own systemd-boot-efi (packages.<arch>.txt), so they
# are the image's systemd version and in the manifest like every package.
slot_arch "$arch"
case $arch in
    amd64)
        bin=${bin:-${CARGO_TARGET_DIR:-$repo/target}/release/pk-appliance}
        update_bin=${update_bin:-${CARGO_TARGET_DIR:-$repo/target}/release/pk-update} ;;
    arm64)
        bin=${bin:-${CARGO_TARGET_DIR:-$repo/target}/aarch64-unknown-linux-gnu/release/pk-appliance}
        update_bin=${update_bin:-${CARGO_TARGET_DIR:-$repo/target}/aarch64-unknown-linux-gnu/release/pk-update} ;;
esac
# Every program this script and its helpers (customize.sh, mkuki.sh, mkdisk.sh,
# check-manifest-available.sh) run on the host, checked before anything starts.
tools=(mmdebstrap=mmdebstrap apt-cache=apt dpkg=dpkg mkfs.erofs=erofs-utils mkfs.vfat=dosfstools
       mkfs.ext4=e2fsprogs mcopy=mtools mmd=mtools sfdisk=fdisk systemctl=systemd systemd-sysusers=systemd
       chroot=coreutils install=coreutils sha256sum=coreutils od=coreutils truncate=coreutils
       realpath=coreutils dd=coreutils comm=coreutils find=findutils gzip=gzip awk=mawk
       diff=diffutils "${cross}objcopy=$bin_pkg" "${cross}objdump=$bin_pkg" "${cross}strip=$bin_pkg"
       veritysetup=cryptsetup-bin sbsign=sbsigntool faketime=faketime openssl=openssl cert-to-efi-sig-list=efitools
       sign-efi-sig-list=efitools)
if [[ -n $qemu_binfmt && $(dpkg --print-architecture 2>/dev/null) != "$arch" ]]; then
    # mmdebstrap refuses a foreign architecture without arch-test (only a Recommends of it);
    # the binfmt handler comes from qemu-user-static, registered by binfmt-support.
    tools+=(arch-test=arch-test "/usr/bin/$qemu_binfmt-static=qemu-user-static"
            update-binfmts=binfmt-support mount=mount)
fi
pk_require build.sh "${tools[@]}" || exit 1
[[ $check_only == 1 ]] && { say "host tools for $arch: all present"; exit 0; }
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap in root mode, chroot, file ownership in the image)"
[[ -f $bin && -x $bin ]] || die "pk-appliance binary $bin not found or not executable (cargo build --release -p appliance --bin pk-appliance, image/cross-build-arm64.sh for arm64, or --bin / PK_APPLIANCE_BIN)"
# The binary must be built for the image's architecture (ELF e_machine, offset 18).
[[ $(od -An -t x4 -N 4 "$bin" | tr -d ' ') == 464c457f ]] || die "$bin is not an ELF file"
for b in "$bin" "$update_bin"; do
    [[ -f $b && -x $b ]] || die "$b not found or not executable (cargo build --release -p pk-update --bin pk-update; image/cross-build-arm64.sh for arm64; or --update-bin)"
    b_machine=$(od -An -t u2 -j 18 -N 2 --endian=little "$b" | tr -d ' ')
    [[ $b_machine == "$elf_machine" ]] || die "$b is for ELF machine $b_machine, not $arch ($elf_machine)"
done
bundle_tool=${bundle_tool:-${CARGO_TARGET_DIR:-$repo/target}/release/pk-bundle}
[[ -x $bundle_tool ]] || die "$bundle_tool not found (cargo build --release -p pk-update --bin pk-bundle, or --bundle-tool)"
# A foreign architecture: mmdebstrap and the chroot steps of customize.sh run its programs
# through qemu-user (qemu-user-static registers qemu-aarch64 with binfmt_misc, flag F).
if [[ -n $qemu_binfmt && $(dpkg --print-architecture) != "$arch" ]]; then
    binfmt=/proc/sys/fs/binfmt_misc
    if [[ ! -e $binfmt/register ]]; then
        mount -t binfmt_misc binfmt_misc "$binfmt" || die "cannot mount $binfmt (needed to run $arch programs)"
    fi
    if [[ ! -e $binfmt/$qemu_binfmt ]]; then
        update-binfmts --enable "$qemu_binfmt" >&2 || true
    fi
    [[ $(head -1 "$binfmt/$qemu_binfmt" 2>/dev/null) == enabled ]] ||
        die "$arch programs cannot run here: no enabled $binfmt/$qemu_binfmt (packages qemu-user-static binfmt-support)"
fi
# The version: IMAGE_VERSION in os-release, the bundle's version; default the workspace's.
if [[ -z $version ]]; then
    version=$(awk -F'"' '/^version *=/ { print $2; exit }' "$repo/Cargo.toml")
fi
[[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "version '$version' is not dot-separated numbers"
# The signing keys (make-keys.sh lists them). Without --keys: throwaway ones, made once
# under target/image/keys; a release passes its own.
if [[ -z $keys ]]; then
    keys=${CARGO_TARGET_DIR:-$repo/target}/image/keys
    if [[ ! -d $keys ]]; then
        say "no --keys: making throwaway signing keys in $keys (never for a release)"
        "$here/make-keys.sh" "$keys"
    fi
fi
keys=$(realpath "$keys")
for k in PK.auth KEK.auth db.auth PK.cer KEK.cer db.cer db.key db.crt tpm2-pcr-private-key.pem \
         tpm2-pcr-public-key.pem update-key.pem update-key.pub; do
    [[ -f $keys/$k ]] || die "the key directory $keys has no $k (image/make-keys.sh makes a set)"
done
pkglist=$here/packages.$arch.txt
[[ -f $pkglist ]] || die "$pkglist not found"
if [[ -n $pin ]]; then
    [[ -f $pin ]] || die "manifest $pin not found"
    pin=$(realpath "$pin")
fi

export SOURCE_DATE_EPOCH=$PK_IMAGE_EPOCH TZ=UTC LC_ALL=C.UTF-8
export PK_IMAGE_DIR=$here PK_APPLIANCE_BIN=$(realpath "$bin") PK_IMAGE_DEBUG=$debug
export PK_UNIT=$repo/appliance/systemd/pk-appliance.service
export PK_MANIFEST_OUT=$out/manifest.txt PK_MANIFEST_PIN=$pin PK_DATA_PARTUUID
export PK_IMAGE_ARCH=$arch PK_SERIAL_TTY=$console PK_STRIP=${cross}strip
export PK_IMAGE_VERSION=$version PK_IMAGE_KEYS=$keys PK_ESP_PARTUUID PK_UPDATE_BIN=$(realpath "$update_bin")
export PK_UPDATE_UNITS=$repo/update/systemd
[[ -f $PK_UNIT ]] || die "$PK_UNIT not found"

start=$SECONDS
mkdir -p "$out"
rm -rf "$out/rootfs" "$out"/*.img "$out"/*.erofs "$out"/*.verity "$out"/*.ext4 "$out"/*.efi \
    "$out"/*.pkupdate "$out/SHA256SUMS"

# --- 1. The root file system.
packages=$(sed 's/#.*//' "$pkglist" | xargs | tr ' ' ',')
[[ -n $packages ]] || die "$pkglist lists no packages"
hooks=()
if [[ -n $pin ]]; then
    say "pinning every package to the version in $pin"
    # Pin-Priority 1001 makes apt take exactly that version (also for the Essential set);
    # the extract hook fails first if a version is gone, customize.sh compares at the end.
    prefs=$out/pk-manifest.pref
    grep -v '^#' "$pin" | awk 'NF >= 2 { printf "Package: %s\nPin: version %s\nPin-Priority: 1001\n\n", $1, $2 }' > "$prefs"
    hooks+=(--setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && cp '$prefs' \"\$1/etc/apt/preferences.d/pk-manifest.pref\"")
    hooks+=(--extract-hook="'$here/check-manifest-available.sh' '$pin'")
fi
say "mmdebstrap $PK_IMAGE_SUITE ($arch) into $out/rootfs"
mmdebstrap --variant=essential --arch="$arch" --format=directory \
    --include="$packages" \
    --skip=essential/unlink \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" && cp '$here/rootfs/etc/initramfs-tools/conf.d/pk-appliance.conf' \"\$1/etc/initramfs-tools/conf.d/\"" \
    "${hooks[@]}" \
    --customize-hook="$here/customize.sh" \
    "$PK_IMAGE_SUITE" "$out/rootfs"
rm -f "$out/pk-manifest.pref"
say "root file system done ($((SECONDS - start)) s)"

# --- 2. Kernel and initrd out of the root file system.
shopt -s nullglob
kernels=("$out"/rootfs/boot/vmlinuz-*)
[[ ${#kernels[@]} == 1 ]] || die "expected one kernel in rootfs/boot, found ${#kernels[@]}"
kver=${kernels[0]##*/vmlinuz-}
[[ -f $out/rootfs/boot/initrd.img-$kver ]] || die "no initrd for kernel $kver"
mv "${kernels[0]}" "$out/vmlinuz"
# systemd-stub starts the kernel as an EFI application: the UKI needs a PE kernel. Debian
# 13's amd64 bzImage and arm64 Image both are; a gzip-compressed arm64 Image (other
# kernels ship those) would not be, so it is decompressed.
if [[ $(od -An -t x1 -N 2 "$out/vmlinuz" | tr -d ' ') == 1f8b ]]; then
    gzip -dc "$out/vmlinuz" > "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
fi
mv "$out/rootfs/boot/initrd.img-$kver" "$out/initrd.img"
find "$out/rootfs/boot" -mindepth 1 -delete
# Kernel and initrd live in the UKI; /vmlinuz, /initrd.img symlinks would dangle.
rm -f "$out"/rootfs/vmlinuz* "$out"/rootfs/initrd.img*
say "kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1)"

# --- 3, 4. The read-only root and its dm-verity hash tree; the UKI (slot.sh).
slot_make "$out/rootfs" "$out" "$out"

# --- 5. The ESP and the data partition.
say "ESP and data partition"
mkfs.vfat -C -F 32 -S 512 -s 1 --invariant -i "$PK_ESP_VOLID" -n ESP "$out/esp.img" $((PK_ESP_MIB * 1024)) >/dev/null
mmd -i "$out/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/Linux ::/loader ::/loader/keys ::/loader/keys/auto
esp_files=("$out/systemd-boot.efi" "$out/uki.efi" "$here/esp/loader/loader.conf")
for k in PK KEK db; do esp_files+=("$keys/$k.auth" "$keys/$k.cer"); done
touch -d "@$SOURCE_DATE_EPOCH" "${esp_files[@]}"
mcopy -m -i "$out/esp.img" "$out/systemd-boot.efi" "::/EFI/BOOT/$efi_name"
# The first slot's entry has no tries counter: it is good from the start (there is no
# other slot to fall back to). Updates install theirs with one (pk-update).
mcopy -m -i "$out/esp.img" "$out/uki.efi" "::/EFI/Linux/pk-appliance-${roothash:0:16}.efi"
mcopy -m -i "$out/esp.img" "$here/esp/loader/loader.conf" ::/loader/loader.conf
for k in PK KEK db; do
    mcopy -m -i "$out/esp.img" "$keys/$k.auth" "$keys/$k.cer" ::/loader/keys/auto/
done
# The data partition is empty (zeros): at its first boot the box makes its encrypted
# volume there, with a key of its own (pk-data-open.service, docs/theory/data-at-rest.md).
rm -f "$out/data.img"
truncate -s $((PK_DATA_MIB * 1024 * 1024)) "$out/data.img"

# --- 6. The disk.
img=$out/pk-appliance-$arch$suffix.img
"$here/mkdisk.sh" "$arch" "$out/esp.img" "$out/root.erofs" "$out/root.verity" "$root_uuid" "$out/data.img" "$img"
( cd "$out" && sha256sum "${img##*/}" uki.efi systemd-boot.efi root.erofs root.verity esp.img data.img \
    vmlinuz initrd.img pcrsig.json manifest.txt > SHA256SUMS )
{
    echo "# pk-appliance binary: $(sha256sum "$PK_APPLIANCE_BIN" | cut -d' ' -f1)"
    echo "# kernel: $kver; SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH; debug=$debug"
    echo "# version: $version; roothash: $roothash; keys: $(sha256sum "$keys/db.crt" | cut -c1-16) (db.crt)"
} >> "$out/SHA256SUMS"
# --- 7. The same slot as a signed update bundle.
bundle=$out/pk-appliance-$arch-$version.pkupdate
slot_bundle "$out" "$version" "$arch" "$bundle"
( cd "$out" && sha256sum "${bundle##*/}" >> SHA256SUMS )
say "done in $((SECONDS - start)) s: $img ($(du -h --apparent-size "$img" | cut -f1)), ${bundle##*/}"
cat "$out/SHA256SUMS" >&2
