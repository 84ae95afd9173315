#!/usr/bin/env bash
# Boots the appliance image under QEMU (TCG, no KVM) with UEFI firmware, inside a new
# network namespace where only loopback exists, and checks that:
#   1. the serial console shows pk-appliance's "console at https://" line, and
#   2. the admin console answers: curl -k https://127.0.0.1:18443/login (QEMU forwards
#      127.0.0.1:18443 to the guest's 8443, and UDP 127.0.0.1:11314 to its 1314), and
#   3. systemd reports "Started pk-appliance.service" (Type=notify: READY=1 was sent).
# The disk and the UEFI variables are copies, so the image itself is never written.
#   amd64: qemu-system-x86_64 -machine q35,smm=on -cpu max, OVMF with Secure Boot (its variable
#          store empty: systemd-boot enrols the image's keys on the first start and restarts;
#          the check fails unless the kernel then reports Secure Boot on), a software TPM
#          (swtpm, tpm-tis).
#   arm64: qemu-system-aarch64 -machine virt -cpu cortex-a72, AAVMF (qemu-efi-aarch64),
#          virtio-rng (a Raspberry Pi has a hardware RNG; cortex-a72 has no RNDR), no TPM:
#          Debian's arm64 kernel has no driver for QEMU's tpm-tis-device, so the appliance
#          offers a passphrase keyslot instead.
#
# Usage: image/boot-test.sh [IMAGE] [--arch amd64|arm64] [--timeout SECONDS] [--workdir DIR] [--check-tools]
#   IMAGE      default target/image/<arch>/pk-appliance-<arch>.img
#   --arch     default: arm64 if IMAGE's file name contains "arm64", else amd64
#   --timeout  how long to wait for the appliance to start (default 300 s; arm64 900 s)
#   --workdir  where the copies, the TPM state and serial.log go
#              (default target/image/boot-test, boot-test-arm64 for arm64); kept
#              afterwards for inspection
#   --check-tools  only check that the host programs and firmware are installed
# Environment: PK_QEMU_SMP (default 2), PK_QEMU_MEM (default 2048).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

check_only=0
img=
arch=
timeout=
work=
while [[ $# -gt 0 ]]; do
    case $1 in
        --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --workdir) work=${2:?--workdir needs a directory}; shift 2 ;;
        --check-tools) check_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) img=$1; shift ;;
    esac
done
if [[ -z $arch ]]; then
    arch=amd64
    [[ ${img##*/} == *arm64* ]] && arch=arm64
fi
case $arch in
    amd64) qemu=qemu-system-x86_64 tpm=1 timeout=${timeout:-300} suffix= ;;
    arm64) qemu=qemu-system-aarch64 tpm=0 timeout=${timeout:-900} suffix=-arm64 ;;
    *) die "unknown architecture '$arch' (amd64 or arm64)" ;;
esac
case $arch in
    amd64) code=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd
           tools=(qemu-system-x86_64=qemu-system-x86 "$code=ovmf" "$vars=ovmf" swtpm=swtpm) ;;
    arm64) code=/usr/share/AAVMF/AAVMF_CODE.fd vars=/usr/share/AAVMF/AAVMF_VARS.fd
           tools=(qemu-system-aarch64=qemu-system-arm "$code=qemu-efi-aarch64" "$vars=qemu-efi-aarch64") ;;
esac
pk_require boot-test.sh "${tools[@]}" curl=curl unshare=util-linux ip=iproute2 || exit 1
[[ $check_only == 1 ]] && { say "host tools for $arch: all present"; exit 0; }
img=${img:-$repo/target/image/$arch/pk-appliance-$arch.img}
work=${work:-$repo/target/image/boot-test$suffix}
[[ -f $img ]] || die "$img not found (build it with image/build.sh --arch $arch)"

# Re-run inside a network namespace of our own: the guest's user-mode network can then
# reach nothing but this namespace's loopback.
if [[ -z ${PK_BOOT_TEST_NETNS:-} ]]; then
    exec env PK_BOOT_TEST_NETNS=1 unshare --net -- "$0" "$img" --arch "$arch" --timeout "$timeout" --workdir "$work"
fi
ip link set lo up


rm -rf "$work"
mkdir -p "$work/tpm"
cp --sparse=always "$img" "$work/disk.img"
cp "$vars" "$work/UEFI_VARS.fd"
serial=$work/serial.log
: > "$serial"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

machine=()
if [[ $tpm == 1 ]]; then
    swtpm socket --tpm2 --tpmstate dir="$work/tpm" --ctrl type=unixio,path="$work/swtpm.sock" \
        --log file="$work/swtpm.log" &
    pids+=($!)
    for _ in $(seq 50); do [[ -S $work/swtpm.sock ]] && break; sleep 0.1; done
    [[ -S $work/swtpm.sock ]] || die "swtpm did not start (see $work/swtpm.log)"
fi
case $arch in
    amd64)
        # The Secure Boot build of OVMF, whose variable store only SMM code may write.
        machine=(-machine q35,smm=on -accel tcg -cpu max -global driver=cfi.pflash01,property=secure,value=on
                 -chardev socket,id=chrtpm,path="$work/swtpm.sock"
                 -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0) ;;
    arm64)
        machine=(-machine virt -accel tcg -cpu cortex-a72 -device virtio-rng-pci) ;;
esac

start=$SECONDS
"$qemu" "${machine[@]}" -smp "${PK_QEMU_SMP:-2}" -m "${PK_QEMU_MEM:-2048}" \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$code" \
    -drive if=pflash,format=raw,unit=1,file="$work/UEFI_VARS.fd" \
    -drive if=virtio,format=raw,file="$work/disk.img" \
    -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:18443-:8443,hostfwd=udp:127.0.0.1:11314-:1314 \
    -serial file:"$serial" -display none -monitor none \
    > "$work/qemu.log" 2>&1 &
qemu=$!
pids+=("$qemu")
say "QEMU ($arch, TCG) started, serial console in $serial"

# 1. The appliance's start line on the serial console.
until grep -q 'console at https://' "$serial"; do
    kill -0 "$qemu" 2>/dev/null || { tail -40 "$serial" >&2; die "QEMU exited before the appliance started (see $work/qemu.log)"; }
    (( SECONDS - start < timeout )) || { tail -40 "$serial" >&2; die "no 'console at https://' on the serial console after $timeout s"; }
    sleep 1
done
say "the appliance started after $((SECONDS - start)) s:"
grep -a -E 'console at https://|setup code|pk-appliance' "$serial" | tr -d '\r' | tail -8 | sed 's/^/  /' >&2

# 2. The console answers through the port forward.
status=000
for _ in $(seq 30); do
    status=$(curl -k -s -o "$work/login.html" -w '%{http_code}' --max-time 10 https://127.0.0.1:18443/login) || true
    [[ $status != 000 ]] && break
    sleep 2
done
[[ $status != 000 ]] || die "https://127.0.0.1:18443/login did not answer"
say "curl -k https://127.0.0.1:18443/login: HTTP $status ($(stat -c %s "$work/login.html") bytes) after $((SECONDS - start)) s"

# 3. systemd's status line for the unit (it prints it when READY=1 arrives). The line is
# cut to the terminal width and has colour escapes: match "Started <...>pk-appliance.serv".
ready=0
for _ in $(seq 60); do
    if sed 's/\x1b\[[0-9;]*m//g' "$serial" | grep -a -q 'Started pk-appliance\.serv'; then ready=1; break; fi
    sleep 1
done
[[ $ready == 1 ]] || die "no 'Started pk-appliance.service' on the serial console: READY=1 was not seen"
say "systemd: Started pk-appliance.service (READY=1) after $((SECONDS - start)) s"
# The firmware starts in setup mode (no keys): systemd-boot enrols the image's Secure Boot
# keys and restarts, and from then on only UKIs signed with them boot.
if grep -a -q 'Custom Secure Boot keys successfully enrolled' "$serial"; then
    say "systemd-boot enrolled the image's Secure Boot keys"
fi
if grep -a -q 'secureboot: Secure boot enabled' "$serial"; then
    say "the kernel booted with Secure Boot on"
elif [[ $arch == amd64 ]]; then
    die "the kernel did not boot with Secure Boot on"
fi

# What the serial console shows besides: failed units, and whether a login prompt is offered.
if grep -a -q 'FAILED' "$serial"; then
    say "warning: units failed during boot:"
    grep -a 'FAILED' "$serial" | tr -d '\r' | sed 's/^/  /' >&2
fi
if grep -a -q -E 'login:|root@' "$serial"; then
    say "the serial console offers a login or a shell (expected only for the debug image)"
fi
[[ $status == 2* || $status == 3* ]] || die "the console answered HTTP $status"
say "PASS"
