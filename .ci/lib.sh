# Shared by .ci/dev and .ci/test: the Debian packages the project needs, and installing
# whichever of them are missing. Sourced, not run.

# pk_require: checks programs are present, naming the package of each missing one.
# shellcheck source=../image/require.sh
source "$(dirname "${BASH_SOURCE[0]}")/../image/require.sh"

# The Rust toolchain is not a Debian package here (rustup); checked by name.
pk_require_rust() {
  command -v cargo >/dev/null 2>&1 && return 0
  echo "error: cargo not found: install the Rust toolchain with rustup (https://rustup.rs)" >&2
  return 1
}

# pk_require_disk WHAT GIB [DIR]: fails, saying how much is free and how much WHAT needs,
# when the file system holding DIR (default: the working directory) has less than GIB GiB
# free. A build that runs out of disk fails far from the cause (the linker dies of SIGBUS).
pk_require_disk() {
  local what=$1 need_gib=$2 dir=${3:-.} avail_kib
  avail_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$avail_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    echo "error: $what needs about $need_gib GiB free on the file system holding $(cd "$dir" && pwd);" \
      "it has $((avail_kib / 1024 / 1024)) GiB free (df -h $dir)" >&2
    return 1
  fi
}

# Building: tss-esapi links libtss2, and the yubikey crate libpcsclite, through pkg-config.
PK_BUILD_PACKAGES=(pkg-config libtss2-dev libpcsclite-dev)
# Running a node with a software TPM (the dev command, and the TPM tests).
PK_TPM_PACKAGES=(swtpm swtpm-tools)
# Tests: tpm2-tools to change PCRs, SoftHSM2 as the PKCS#11 token, opensc's pkcs11-tool
# to ask the token about our key independently of our own code, git to read exported
# bundles, openssl for the benchmark's AEAD reference figure; for the emulated YubiKey,
# pcscd with the vpcd reader driver, and Yubico's own yubico-piv-tool and ykcs11 to
# cross-check the emulated card; iproute2 to bring up loopback in the network namespace
# the mDNS test runs in; systemd for `systemd-analyze security` on the appliance's unit;
# curl to claim the development appliance through its console; Chromium and its
# WebDriver for the console's browser tests.
# g++ builds libFuzzer's C++ sources for the fuzz targets (fuzz/). cryptsetup-bin,
# e2fsprogs and util-linux's blkid for the encrypted data volume's tests.
PK_TEST_PACKAGES=(tpm2-tools softhsm2 opensc git openssl pcscd vsmartcard-vpcd yubico-piv-tool ykcs11 iproute2 systemd curl chromium chromium-driver wrk g++ cryptsetup-bin e2fsprogs util-linux)

# Building the appliance image and booting it in QEMU (image/host-packages.txt, one per
# line, comments after #).
pk_image_packages() {
  grep -v '^[[:space:]]*#' "$(dirname "${BASH_SOURCE[0]}")/../image/host-packages.txt" | sed 's/#.*//' | tr -s ' \n' '\n' | grep -v '^$'
}

pk_install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  pk_require lib.sh dpkg-query=dpkg apt-get=apt || return 1
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
      sudo=(sudo)
    else
      echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
      return 1
    fi
  fi
  echo "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}
