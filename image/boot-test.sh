#!/usr/bin/env bash
# Boots the appliance image under QEMU (TCG, no KVM) with OVMF and a software TPM (swtpm),
# inside a new network namespace where only loopback exists, and checks that:
#   1. the serial console shows pk-appliance's "console at https://" line, and
#   2. the admin console answers: curl -k https://127.0.0.1:18443/login (QEMU forwards
#      127.0.0.1:18443 to the guest's 8443, and UDP 127.0.0.1:11314 to its 1314).
# The disk and the OVMF variables are copies, so the image itself is never written.
#
# Usage: image/boot-test.sh [IMAGE] [--timeout SECONDS] [--workdir DIR]
#   IMAGE      default target/image/amd64/pk-appliance-amd64.img
#   --timeout  how long to wait for the appliance to start (default 300 s)
#   --workdir  where the copies, the TPM state and serial.log go
#              (default target/image/boot-test); kept afterwards for inspection
# Environment: PK_QEMU_SMP (default 2), PK_QEMU_MEM (default 2048).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
die() { echo "boot-test.sh: error: $*" >&2; exit 1; }
say() { echo "boot-test.sh: $*" >&2; }

img=$repo/target/image/amd64/pk-appliance-amd64.img
timeout=300
work=$repo/target/image/boot-test
while [[ $# -gt 0 ]]; do
    case $1 in
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --workdir) work=${2:?--workdir needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) img=$1; shift ;;
    esac
done
[[ -f $img ]] || die "$img not found (build it with image/build.sh)"

# Re-run inside a network namespace of our own: the guest's user-mode network can then
# reach nothing but this namespace's loopback.
if [[ -z ${PK_BOOT_TEST_NETNS:-} ]]; then
    exec env PK_BOOT_TEST_NETNS=1 unshare --net -- "$0" "$img" --timeout "$timeout" --workdir "$work"
fi
ip link set lo up

for tool in qemu-system-x86_64 swtpm curl; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install \$(grep -v '^#' image/host-packages.txt)"
done
code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd
[[ -f $code && -f $vars ]] || die "OVMF firmware not found (package ovmf)"

rm -rf "$work"
mkdir -p "$work/tpm"
cp --sparse=always "$img" "$work/disk.img"
cp "$vars" "$work/OVMF_VARS.fd"
serial=$work/serial.log
: > "$serial"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

swtpm socket --tpm2 --tpmstate dir="$work/tpm" --ctrl type=unixio,path="$work/swtpm.sock" \
    --log file="$work/swtpm.log" &
pids+=($!)
for _ in $(seq 50); do [[ -S $work/swtpm.sock ]] && break; sleep 0.1; done
[[ -S $work/swtpm.sock ]] || die "swtpm did not start (see $work/swtpm.log)"

start=$SECONDS
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp "${PK_QEMU_SMP:-2}" -m "${PK_QEMU_MEM:-2048}" \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$code" \
    -drive if=pflash,format=raw,unit=1,file="$work/OVMF_VARS.fd" \
    -drive if=virtio,format=raw,file="$work/disk.img" \
    -chardev socket,id=chrtpm,path="$work/swtpm.sock" \
    -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
    -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:18443-:8443,hostfwd=udp:127.0.0.1:11314-:1314 \
    -serial file:"$serial" -display none -monitor none -no-reboot \
    > "$work/qemu.log" 2>&1 &
qemu=$!
pids+=("$qemu")
say "QEMU (TCG) started, serial console in $serial"

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
