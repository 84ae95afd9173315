#!/usr/bin/env bash
# mmdebstrap --customize-hook for the pk appliance image: turns the freshly installed
# Debian tree ($1) into the appliance's root file system. build.sh runs it through
# mmdebstrap (so /proc, /dev and the apt cache are still there) with these variables set:
#
#   PK_IMAGE_DIR      this directory (image/), for rootfs/ and rootfs-debug/
#   PK_APPLIANCE_BIN  the pk-appliance binary to install as /usr/bin/pk-appliance
#   PK_UNIT           the unit file to install as is (appliance/systemd/pk-appliance.service)
#   PK_IMAGE_DEBUG    1: the debug variant (root shell on the serial console)
#   PK_IMAGE_ARCH     the image's architecture (default amd64): rootfs-<arch>/ is added if
#                     it exists
#   PK_SERIAL_TTY     the serial console (default ttyS0; ttyAMA0 on arm64), for the debug
#                     variant's shell
#   PK_STRIP          the strip for the binary's architecture (default strip)
#   PK_MANIFEST_OUT   where to write the manifest of installed packages
#   PK_MANIFEST_PIN   (optional) the manifest this build must reproduce exactly
#   PK_DATA_PARTUUID  the data partition (for /etc/fstab); the rest of image.conf too
#   PK_ESP_PARTUUID   the ESP (for /etc/fstab: /efi, where systemd-bless-boot and pk-update
#                     find the boot entries)
#   PK_IMAGE_VERSION  the image's version: IMAGE_VERSION in os-release
#   PK_UPDATE_BIN     the pk-update installer; PK_UPDATE_UNITS its units (update/systemd/)
#   PK_IMAGE_KEYS     the signing keys' directory: the image gets the public halves of the
#                     update-signing key and the PCR-signing key
#
# Steps: write the package manifest (and compare it with the pinned one), install the
# appliance, its configuration and the system configuration from rootfs/, check the
# binary's shared libraries inside the image, enable and mask units, rebuild the initrd.
set -euo pipefail
# shellcheck source=require.sh
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
pk_require customize.sh chroot=coreutils install=coreutils sha256sum=coreutils find=findutils systemctl=systemd diff=diffutils "${PK_STRIP:-strip}=binutils" || exit 1

root=${1:?usage: customize.sh CHROOT}
die() { echo "customize.sh: error: $*" >&2; exit 1; }
say() { echo "customize.sh: $*" >&2; }

for v in PK_IMAGE_DIR PK_APPLIANCE_BIN PK_UNIT PK_MANIFEST_OUT PK_DATA_PARTUUID PK_ESP_PARTUUID \
         PK_IMAGE_VERSION PK_IMAGE_KEYS PK_UPDATE_BIN PK_UPDATE_UNITS SOURCE_DATE_EPOCH; do
    [[ -n ${!v:-} ]] || die "$v is not set (run image/build.sh, not this hook)"
done

# --- 1. The manifest: every installed package, its version and the sha256 of its .deb.
# build.sh keeps the downloaded .debs (--skip=essential/unlink) until mmdebstrap's cleanup.
say "writing the package manifest"
{
    echo "# pk appliance image: installed Debian packages (package version architecture sha256-of-.deb)"
    chroot "$root" dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' | LC_ALL=C sort |
        while read -r pkg ver arch; do
            deb="$root/var/cache/apt/archives/${pkg}_${ver//:/%3a}_${arch}.deb"
            [[ -f $deb ]] || die "no downloaded .deb for $pkg $ver ($deb)"
            sum=$(sha256sum "$deb") && echo "$pkg $ver $arch ${sum%% *}"
        done
} > "$PK_MANIFEST_OUT.tmp"
mv "$PK_MANIFEST_OUT.tmp" "$PK_MANIFEST_OUT"

if [[ -n ${PK_MANIFEST_PIN:-} ]]; then
    if ! diff -u <(grep -v '^#' "$PK_MANIFEST_PIN") <(grep -v '^#' "$PK_MANIFEST_OUT") >&2; then
        die "the installed packages differ from the pinned manifest $PK_MANIFEST_PIN (diff above: - pinned, + installed)"
    fi
    rm -f "$root/etc/apt/preferences.d/pk-manifest.pref"
    say "installed packages match the pinned manifest"
fi

# --- 2. Files. Modes are set here, not taken from the checkout (umask differs).
install_tree() { # SRC_DIR: copy every file below SRC_DIR into the image, 0644, dirs 0755
    local src=$1 f rel
    while IFS= read -r -d '' f; do
        rel=${f#"$src"/}
        install -D -m 0644 -o root -g root "$f" "$root/$rel"
    done < <(find "$src" -type f -print0 | LC_ALL=C sort -z)
}
say "installing pk-appliance and the configuration"
install -D -m 0755 -o root -g root "$PK_APPLIANCE_BIN" "$root/usr/bin/pk-appliance"
# Debug information stays on the build host; stripping is deterministic.
"${PK_STRIP:-strip}" --strip-debug "$root/usr/bin/pk-appliance"
install -D -m 0644 -o root -g root "$PK_UNIT" "$root/usr/lib/systemd/system/pk-appliance.service"
# The update installer (docs/reference/pk-update.md): root, socket-activated; members of
# pk-update (the daemon) talk to it.
install -D -m 0755 -o root -g root "$PK_UPDATE_BIN" "$root/usr/bin/pk-update"
"${PK_STRIP:-strip}" --strip-debug "$root/usr/bin/pk-update"
for unit in pk-update.socket pk-update@.service; do
    install -D -m 0644 -o root -g root "$PK_UPDATE_UNITS/$unit" "$root/usr/lib/systemd/system/$unit"
done
install -D -m 0644 -o root -g root "$PK_UPDATE_UNITS/pk-update.sysusers" "$root/usr/lib/sysusers.d/pk-update.conf"
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/pk-update.conf" >&2
install -D -m 0644 -o root -g root "$PK_IMAGE_DIR/README.md" "$root/usr/share/doc/pk-appliance/image.md"
install_tree "$PK_IMAGE_DIR/rootfs"
# pk-data: the daemon's group for handing setup's recovery code to the data partition.
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/pk-data.conf" >&2
# The initramfs-tools hook and scripts must be executable.
chmod 0755 "$root/etc/initramfs-tools/hooks/pk-verity" "$root/etc/initramfs-tools/scripts/local-top/pk-verity" \
    "$root/etc/initramfs-tools/scripts/init-bottom/pk-boot"
# What the image trusts: update bundles signed by this key (pk-update), and PCR 11 values
# signed by this one (the TPM keyslot's policy; the same key is in every UKI's .pcrpkey).
install -D -m 0644 -o root -g root "$PK_IMAGE_KEYS/update-key.pub" "$root/usr/share/pk-appliance/update-key.pub"
install -D -m 0644 -o root -g root "$PK_IMAGE_KEYS/tpm2-pcr-public-key.pem" \
    "$root/usr/share/pk-appliance/tpm2-pcr-public-key.pem"
# The version, for systemd-boot (which sorts the UKIs by it), pk-update and the console.
grep -q '^IMAGE_' "$root/usr/lib/os-release" && die "os-release has IMAGE_ fields already"
printf 'IMAGE_ID=pk-appliance\nIMAGE_VERSION=%s\n' "$PK_IMAGE_VERSION" >> "$root/usr/lib/os-release"
# Per-architecture additions (rootfs-arm64/: the Raspberry Pi storage drivers in the initrd).
if [[ -d $PK_IMAGE_DIR/rootfs-${PK_IMAGE_ARCH:-amd64} ]]; then
    install_tree "$PK_IMAGE_DIR/rootfs-${PK_IMAGE_ARCH:-amd64}"
fi
chmod 0755 "$root/etc/nftables.conf"
tty=${PK_SERIAL_TTY:-ttyS0}
if [[ ${PK_IMAGE_DEBUG:-0} == 1 ]]; then
    install_tree "$PK_IMAGE_DIR/rootfs-debug"
    # rootfs-debug/ has the autologin drop-in for ttyS0; other consoles get the same one.
    if [[ $tty != ttyS0 ]]; then
        mv "$root/etc/systemd/system/serial-getty@ttyS0.service.d" "$root/etc/systemd/system/serial-getty@$tty.service.d"
    fi
fi

# /etc/fstab: the data partition at /data, and /var as an overlay of the image's /var
# (read-only, lower) and /data/var (upper): all of /var is writable and persistent,
# including /var/lib/private/pk-appliance (the unit's DynamicUser= state directory, which
# /var/lib/pk-appliance points to) and /var/log/journal.
# /data is the encrypted data partition, opened by pk-data-open.service
# (docs/theory/data-at-rest.md). Both are nofail: when the partition stays locked, the
# boot goes on without them and the locked data console (pk-data-gate.service) waits for
# the recovery code. The mapper device appears only once pk-data-open.service has opened
# the volume, which on a slow machine (a first boot under emulation, a TPM the firmware
# announces but that never comes) is long after systemd's 90 s device timeout: no timeout,
# the mount follows pk-data-open.service's outcome.
cat > "$root/etc/fstab" <<EOF
# The root file system (erofs, read-only) is mounted by the initrd: root= on the kernel
# command line. Written by image/customize.sh.
/dev/mapper/pk-data  /data  ext4  defaults,nosuid,nodev,noexec,nofail,x-systemd.requires=pk-data-open.service,x-systemd.device-timeout=0,x-systemd.growfs  0  2
overlay  /var  overlay  lowerdir=/var,upperdir=/data/var,workdir=/data/.var-work,nosuid,nodev,nofail,x-systemd.requires=pk-data-setup.service  0  0
PARTUUID=$PK_ESP_PARTUUID  /efi  vfat  umask=0077,nosuid,nodev,noexec  0  0
EOF
chmod 0644 "$root/etc/fstab"
printf '# The data partition, for the pk-data-*.service units. Written by image/customize.sh.\nPK_DATA_DEVICE=/dev/disk/by-partuuid/%s\n' \
    "$PK_DATA_PARTUUID" > "$root/etc/pk-appliance/data.env"
chmod 0644 "$root/etc/pk-appliance/data.env"
install -d -m 0700 "$root/data" "$root/efi"
# systemd-logind needs it on a read-only root (before /var is mounted over it, too).
install -d -m 0755 "$root/var/lib/systemd/linger"
# No DNS configured yet: nothing in the image resolves names (and mmdebstrap copied the
# build host's file, which would make the image depend on the host).
printf '# The appliance resolves no names yet (image/README.md).\n' > "$root/etc/resolv.conf"
# /tmp is a tmpfs: Debian 13's systemd enables tmp.mount by itself.
[[ -e $root/usr/lib/systemd/system/local-fs.target.wants/tmp.mount ]] ||
    die "tmp.mount is not enabled by the image's systemd: /tmp would be on the read-only root"

# --- 3. The binary's shared libraries must all be in the image.
say "checking pk-appliance's shared libraries inside the image"
if ! libs=$(chroot "$root" ldd /usr/bin/pk-appliance); then
    die "ldd /usr/bin/pk-appliance failed inside the image (is it a ${PK_IMAGE_ARCH:-amd64} binary?)"
fi
echo "$libs" | sed 's/^/  /' >&2
if grep -q 'not found' <<<"$libs"; then
    missing=$(grep 'not found' <<<"$libs" | awk '{print $1}' | tr '\n' ' ')
    die "libraries missing from the image: $missing- add the Debian packages providing them to packages.<arch>.txt"
fi
[[ -e $root/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 || -e $root/usr/lib/aarch64-linux-gnu/libtss2-tcti-device.so.0 ]] ||
    die "libtss2-tcti-device.so.0 (opened by libtss2-tctildr at run time) is missing: add libtss2-tcti-device0"
chroot "$root" getent group tss >/dev/null || die "there is no tss group in the image (package tpm-udev)"
chroot "$root" getent group pk-update >/dev/null || die "there is no pk-update group in the image (sysusers)"
chroot "$root" getent group pk-data >/dev/null || die "there is no pk-data group in the image (sysusers)"

# --- 4. Units.
say "enabling and masking units"
systemctl --root="$root" enable pk-appliance.service pk-appliance-screen.service systemd-networkd.service \
    nftables.service pk-appliance-health.service pk-update.socket pk-data-enrol.socket >&2
systemctl --root="$root" enable pcscd.socket >&2
systemctl --root="$root" set-default multi-user.target >&2
# No login on any console, no shell on Ctrl-Alt-Del or a key combination.
mask=(getty@.service autovt@.service console-getty.service container-getty@.service
      ctrl-alt-del.target debug-shell.service)
if [[ ${PK_IMAGE_DEBUG:-0} == 1 ]]; then
    # The debug variant: root shell on the serial console (rootfs-debug/).
    systemctl --root="$root" enable "serial-getty@$tty.service" >&2
else
    mask+=(serial-getty@.service)
fi
systemctl --root="$root" mask "${mask[@]}" >&2
# PCR 11 keeps what systemd-stub measured: the UKI's signed PCR 11 value is for that
# (systemd-measure --phase=:). With an initramfs-tools initrd there is no enter-initrd
# phase to sign for anyway; the unlock happens in the full system.
systemctl --root="$root" mask systemd-pcrphase.service systemd-pcrphase-sysinit.service \
    systemd-pcrphase-initrd.service >&2
# Nothing that talks to the outside by itself but network time (none of these is installed
# today; the mask keeps them off if a dependency ever brings one in).
systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer man-db.timer >&2
# Network time, on by default: the owner's servers come from the settings
# (pk-appliance config apply, before each start of pk-appliance), Debian's pool otherwise.
systemctl --root="$root" enable systemd-timesyncd.service >&2

# --- 5. The initrd, with rootfs/etc/initramfs-tools (SOURCE_DATE_EPOCH: reproducible).
say "rebuilding the initrd"
chroot "$root" update-initramfs -u -k all >&2

# --- 6. Leftovers that differ between builds or are useless on a read-only root.
rm -f "$root/var/cache/ldconfig/aux-cache" "$root/etc/.pwd.lock" \
      "$root/var/lib/dpkg/status-old" "$root/var/lib/dpkg/diversions-old" \
      "$root"/var/cache/debconf/*-old "$root"/etc/*-
say "done"
