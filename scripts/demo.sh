#!/bin/bash
# The main job, end to end on a fresh machine: build, start the local S3
# server, start a VM (a stock qemu-system with two disks; no guest OS is
# needed, HMP's qemu-io writes to its disks), write data, run a full
# backup with `s3chain backup`, write more, run an incremental one, list
# and verify them, then restore both points from the bucket with
# `s3chain restore` and prove them bit-exact.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

"$REPO/scripts/build.sh"
env_file=$("$REPO/scripts/s3-server.sh" start)
# shellcheck disable=SC1090
. "$env_file"

work=$(mktemp -d /tmp/s3chain-demo.XXXXXX)
vm_pid=
cleanup() {
    [ -n "$vm_pid" ] && kill "$vm_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
img=$QEMU_BUILD/qemu-img
s3chain=$BUILD/orchestrator/s3chain
hmp() { python3 "$REPO/scripts/hmp.py" "$work/hmp.qmp" "$@"; }
prefix=demo/$(date +%Y%m%dT%H%M%S)-$$
declare -A size=([vd0]=1G [vd1]=512M)

echo "== starting a VM with two disks, vd0 (${size[vd0]}) and vd1 (${size[vd1]})"
for d in vd0 vd1; do
    "$img" create -q -f qcow2 "$work/$d.qcow2" "${size[$d]}"
done
/usr/bin/qemu-system-x86_64 -nodefaults -display none -accel tcg \
    -qmp "unix:$work/vm.qmp,server=on,wait=off" \
    -qmp "unix:$work/hmp.qmp,server=on,wait=off" \
    -device virtio-scsi-pci,id=scsi0 \
    -blockdev "driver=qcow2,node-name=disk0,file.driver=file,file.filename=$work/vd0.qcow2" \
    -device scsi-hd,id=vd0,drive=disk0,serial=demo-vd0 \
    -blockdev "driver=qcow2,node-name=disk1,file.driver=file,file.filename=$work/vd1.qcow2" \
    -device scsi-hd,id=vd1,drive=disk1,serial=demo-vd1 \
    -daemonize -pidfile "$work/vm.pid"
vm_pid=$(cat "$work/vm.pid")

echo "== the guest writes data all over both disks"
writes=()
for mib in 0 97 210 333 480 611 777 901; do
    writes+=("qemu-io -d vd0 \"write -P $((mib % 200 + 1)) ${mib}M 24M\"")
done
for mib in 0 150 300 450; do
    writes+=("qemu-io -d vd1 \"write -P $((mib % 200 + 7)) ${mib}M 16M\"")
done
hmp "${writes[@]}"

# the guest's view of a disk now: what a backup taken now must restore
snapshot() {
    hmp "qemu-io -d $1 \"flush\""
    "$img" convert -U -O raw "$work/$1.qcow2" "$work/$1.$2.raw"
}

export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL=$S3CHAIN_ENDPOINT
export S3CHAIN_QSD=$QEMU_BUILD/storage-daemon/qemu-storage-daemon
backup() {
    "$s3chain" backup --vm demo --qmp "$work/vm.qmp" \
        --repo "s3://$S3CHAIN_BUCKET/$prefix" --runtime-dir "$work/run" \
        --json --progress "$([ -t 2 ] && echo bar || echo none)" "$@" |
        tail -n 1
}

echo "== full backup into s3://$S3CHAIN_BUCKET/$prefix"
full=$(backup)
snapshot vd0 full
snapshot vd1 full

echo "== the guest writes more: rewrites, zeroes, discards"
hmp 'qemu-io -d vd0 "write -P 0x33 100M 16M"' 'qemu-io -d vd0 "write -z 215M 3M"' \
    'qemu-io -d vd0 "discard 779M 2M"' 'qemu-io -d vd0 "write -P 0x55 1023M 1M"' \
    'qemu-io -d vd1 "write -P 0x44 500M 12M"'

echo "== incremental backup"
inc=$(backup)
snapshot vd0 inc
snapshot vd1 inc

export S3CHAIN_QEMU_IMG=$img
repo=(--repo "s3://$S3CHAIN_BUCKET/$prefix")
echo "== the backups in the bucket"
"$s3chain" list "${repo[@]}"
echo "== verify: every manifest and chunk, read and hashed"
"$s3chain" verify "${repo[@]}" --vm demo --deep

result=bit-exact
echo "== restoring both points of both disks from the bucket"
for point in full inc; do
    id=$(jq -r .backup <<<"${!point}")
    "$s3chain" restore "${repo[@]}" --vm demo --backup "$id" \
        --target "vd0=$work/vd0.restored" --target "vd1=$work/vd1.restored" \
        --progress "$([ -t 2 ] && echo bar || echo none)"
    for d in vd0 vd1; do
        if cmp -s "$work/$d.restored" "$work/$d.$point.raw"; then
            echo "$point backup $id, $d: bit-exact"
        else
            echo "$point backup $id, $d: DIFFERENT"
            result=DIFFERENT
        fi
        rm "$work/$d.restored"
    done
done
python3 "$REPO/scripts/s3obj.py" "$env_file" rm-prefix "$prefix/"

echo
echo "== summary"
for point in full inc; do
    jq -r '"backup \(.backup): " + ([.disks[] | "\(.name) \(.type), \(.["bytes-stored"] / 1048576 | floor) MiB stored in \(.duration) s"] | join("; "))' <<<"${!point}"
done
echo "local temporary files: none (the sidecar wrote straight into the bucket)"
echo "result: every restored point is $result with the guest's disk at its instant"
[ "$result" = bit-exact ]
