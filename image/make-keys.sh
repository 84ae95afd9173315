#!/usr/bin/env bash
# Makes a set of the keys an image is signed with, in a new directory. For development and
# CI only: every run gets keys nobody else has, and they are thrown away with the run. A
# release is signed with keys kept outside the repository (docs/how-to/update-the-appliance.md,
# "The signing keys"); build.sh takes either kind with --keys DIR.
#
#   Secure Boot (UEFI), RSA 2048 X.509, the owner GUID in owner-guid.txt:
#     PK.key PK.crt       the platform key: signs KEK.auth (and itself, PK.auth)
#     KEK.key KEK.crt     the key-exchange key: signs db.auth
#     db.key db.crt       the signature database key: signs systemd-boot and every UKI
#     {PK,KEK,db}.esl     EFI signature lists; {PK,KEK,db}.auth the signed variable updates
#                         systemd-boot enrols from the ESP (\loader\keys\pk-appliance\);
#                         {PK,KEK,db}.cer the certificates in DER, for firmware menus
#   tpm2-pcr-private-key.pem, tpm2-pcr-public-key.pem
#                         RSA 2048: signs each UKI's PCR 11 value (systemd-measure sign),
#                         which is what lets the TPM keyslot open after an update
#   update-key.pem, update-key.pub
#                         Ed25519: signs update bundles (pk-bundle make); the image holds the
#                         public half
#
# Usage: image/make-keys.sh [--check-tools] DIR    (DIR must not exist yet)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

check_only=0
dir=
while [[ $# -gt 0 ]]; do
    case $1 in
        --check-tools) check_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) [[ -z $dir ]] || die "one directory only"; dir=$1; shift ;;
    esac
done
pk_require make-keys.sh openssl=openssl cert-to-efi-sig-list=efitools sign-efi-sig-list=efitools || exit 1
[[ $check_only == 1 ]] && { say "host tools: all present"; exit 0; }
[[ -n $dir ]] || die "usage: make-keys.sh DIR"
[[ ! -e $dir ]] || die "$dir exists already: keys are never overwritten"

umask 077
mkdir -p "$dir"
cd "$dir"
guid=$(cat /proc/sys/kernel/random/uuid)
echo "$guid" > owner-guid.txt
# The signed variable updates carry a timestamp; a fixed one keeps them comparable.
stamp="2025-01-01 00:00:00"

for name in PK KEK db; do
    openssl req -quiet -new -x509 -newkey rsa:2048 -nodes -sha256 -days 7300 \
        -subj "/CN=pk-appliance Secure Boot $name (throwaway, $(date -u +%F))/" \
        -keyout "$name.key" -out "$name.crt" 2>/dev/null
    openssl x509 -in "$name.crt" -outform DER -out "$name.cer"
    cert-to-efi-sig-list -g "$guid" "$name.crt" "$name.esl"
done
sign-efi-sig-list -t "$stamp" -g "$guid" -k PK.key -c PK.crt PK PK.esl PK.auth >/dev/null
sign-efi-sig-list -t "$stamp" -g "$guid" -k PK.key -c PK.crt KEK KEK.esl KEK.auth >/dev/null
sign-efi-sig-list -t "$stamp" -g "$guid" -k KEK.key -c KEK.crt db db.esl db.auth >/dev/null

openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out tpm2-pcr-private-key.pem
openssl pkey -in tpm2-pcr-private-key.pem -pubout -out tpm2-pcr-public-key.pem
openssl genpkey -quiet -algorithm ed25519 -out update-key.pem
openssl pkey -in update-key.pem -pubout -out update-key.pub
chmod 0644 ./*.crt ./*.cer ./*.esl ./*.auth tpm2-pcr-public-key.pem update-key.pub owner-guid.txt
say "throwaway keys in $dir (owner GUID $guid)"
