#!/usr/bin/env bash
# Cross-builds pk-appliance (and the update installer pk-update, which build.sh takes from
# the same directory) for arm64 (aarch64-unknown-linux-gnu) on an amd64 Debian 12
# host, for `image/build.sh --arch arm64 --bin <path>`. Prints the binary's path on stdout
# (the last line); everything else goes to stderr.
#
# What it sets up (each step is skipped when already done):
#   1. the Rust target: rustup target add aarch64-unknown-linux-gnu;
#   2. an arm64 sysroot with the C libraries the hsm crate links (tss2-esys, -sys, -mu,
#      -tctildr for tss-esapi-sys; libpcsclite for pcsc-sys) and their .pc files:
#      `mmdebstrap --variant=extract --arch=arm64` unpacks libtss2-dev, libpcsclite-dev
#      and their dependencies from the Debian mirror into <target dir>/aarch64-sysroot
#      (no dpkg --add-architecture, nothing installed on the host: the host's amd64
#      packages are left as they are);
#   3. the build: cargo build --release --locked -p appliance --bin pk-appliance -p pk-update --bin pk-update
#      --target aarch64-unknown-linux-gnu, linked by aarch64-linux-gnu-gcc, with
#      pkg-config pointed at the sysroot (target-scoped PKG_CONFIG_*_aarch64_unknown_linux_gnu
#      variables, so build scripts probing for the host are unaffected).
#
# Usage: image/cross-build-arm64.sh [--refresh-sysroot] [--check-tools]
#   CARGO_TARGET_DIR is honoured (default <repo>/target); the sysroot lives in it.
#   --refresh-sysroot   unpack the sysroot again (newer library versions from the mirror)
#   --check-tools       only check that the host programs are installed
# Host packages (host-packages.txt): gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
# mmdebstrap, pkgconf; and rustup. mmdebstrap runs as root, or in unshare mode otherwise.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=image.conf
source "$here/image.conf"

refresh=0
check_only=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --refresh-sysroot) refresh=1; shift ;;
        --check-tools) check_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

triple=aarch64-unknown-linux-gnu
triple_env=${triple//-/_}                 # aarch64_unknown_linux_gnu
TRIPLE_ENV=${triple_env^^}                # AARCH64_UNKNOWN_LINUX_GNU
linker=aarch64-linux-gnu-gcc
# The -dev packages the build needs; apt brings in the libraries they depend on.
sysroot_packages=libtss2-dev,libpcsclite-dev

for tool in cargo rustup; do
    command -v "$tool" >/dev/null || die "$tool not found: install the Rust toolchain with rustup (https://rustup.rs)"
done
pk_require cross-build-arm64.sh "$linker=gcc-aarch64-linux-gnu" aarch64-linux-gnu-ar=binutils-aarch64-linux-gnu \
    /usr/aarch64-linux-gnu/include/stdio.h=libc6-dev-arm64-cross mmdebstrap=mmdebstrap \
    pkg-config=pkgconf file=file realpath=coreutils || exit 1
[[ $check_only == 1 ]] && { say "host tools: all present"; exit 0; }

target_dir=$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")
sysroot=$target_dir/aarch64-sysroot
start=$SECONDS

# --- 1. The Rust standard library for the target.
if ! rustup target list --installed | grep -qx "$triple"; then
    say "rustup target add $triple"
    rustup target add "$triple" >&2
fi

# --- 2. The arm64 sysroot (headers, .so links and .pc files of the C libraries).
stamp="$PK_BUILD_SUITE $sysroot_packages"
if [[ $refresh == 1 || ! -f $sysroot/.pk-sysroot || $(cat "$sysroot/.pk-sysroot") != "$stamp" ]]; then
    say "unpacking $sysroot_packages ($PK_BUILD_SUITE, arm64) into $sysroot"
    rm -rf "$sysroot"
    mkdir -p "$target_dir"
    mmdebstrap --quiet --variant=extract --arch=arm64 --include="$sysroot_packages" \
        "$PK_BUILD_SUITE" "$sysroot" >&2
    echo "$stamp" > "$sysroot/.pk-sysroot"
fi
libdir=$sysroot/usr/lib/aarch64-linux-gnu
[[ -f $libdir/pkgconfig/tss2-esys.pc && -f $libdir/pkgconfig/libpcsclite.pc ]] ||
    die "the sysroot $sysroot has no tss2-esys.pc or libpcsclite.pc (try --refresh-sysroot)"

# --- 3. The build.
# pkg-config: the .pc files say /usr/...; PKG_CONFIG_SYSROOT_DIR puts the sysroot in front.
export "PKG_CONFIG_ALLOW_CROSS_$triple_env=1"
export "PKG_CONFIG_SYSROOT_DIR_$triple_env=$sysroot"
export "PKG_CONFIG_LIBDIR_$triple_env=$libdir/pkgconfig:$sysroot/usr/share/pkgconfig"
export "PKG_CONFIG_PATH_$triple_env="
export "CARGO_TARGET_${TRIPLE_ENV}_LINKER=$linker"
# The cross linker resolves the libraries' own dependencies (libtss2-esys needs libcrypto,
# libtss2-mu, ...) through -rpath-link; the binary itself gets no rpath.
# (RUSTFLAGS, when set, takes precedence over the target's rustflags: add to it then.)
link_flags="-C link-arg=-Wl,-rpath-link,$libdir -C link-arg=-Wl,-rpath-link,$sysroot/lib/aarch64-linux-gnu"
[[ -z ${CARGO_ENCODED_RUSTFLAGS:-} ]] || die "CARGO_ENCODED_RUSTFLAGS is set: use RUSTFLAGS instead"
if [[ -n ${RUSTFLAGS:-} ]]; then
    export RUSTFLAGS="$RUSTFLAGS $link_flags"
else
    export "CARGO_TARGET_${TRIPLE_ENV}_RUSTFLAGS=$link_flags"
fi
# The cc crate (ring's C and assembly) picks aarch64-linux-gnu-gcc by itself; say it anyway.
export "CC_$triple_env=$linker" "AR_$triple_env=aarch64-linux-gnu-ar"

say "cargo build --release --locked -p appliance --bin pk-appliance -p pk-update --bin pk-update --target $triple (target dir $target_dir)"
(cd "$repo" && CARGO_TARGET_DIR=$target_dir cargo build --release --locked -p appliance \
    --bin pk-appliance -p pk-update --bin pk-update --target "$triple" >&2)
bin=$target_dir/$triple/release/pk-appliance
[[ -x $bin ]] || die "cargo did not produce $bin"
file_out=$(file -b "$bin" 2>/dev/null || true)
[[ -z $file_out || $file_out == *aarch64* ]] || die "$bin is not an arm64 binary: $file_out"
say "built in $((SECONDS - start)) s: $bin ($(du -h "$bin" | cut -f1))"
echo "$bin"
