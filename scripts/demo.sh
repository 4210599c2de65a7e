#!/bin/bash
# The main job, end to end on a fresh machine: build, start a local S3
# server, put a qcow2 chain of three images with real data into the
# bucket (as "aws s3 cp" would), then restore it straight from the bucket
# through s3chain and prove the restored disk bit-exact.
#
# Until "s3chain backup" exists, the chain is made locally with qemu-img
# and qemu-io; what this shows is the restore half of the data path.
set -euo pipefail
. "$(dirname "$0")/common.sh"

"$REPO/scripts/build.sh"
env_file=$("$REPO/scripts/s3-server.sh" start)
# shellcheck disable=SC1090
. "$env_file"

work=$(mktemp -d /tmp/s3chain-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
img=$QEMU_BUILD/qemu-img
io=$QEMU_BUILD/qemu-io
prefix=demo/$(date +%Y%m%dT%H%M%S)-$$
secret=$work/secret
( umask 077; printf '%s' "$AWS_SECRET_ACCESS_KEY" >"$secret" )
size=1G

echo "== making a chain: base (full) <- inc1 <- inc2, $size virtual"
# base: random data in scattered runs, like a used disk
truncate -s "$size" "$work/base.raw"
for mib in 0 97 210 333 480 611 777 901; do
    head -c 24M /dev/urandom | dd of="$work/base.raw" bs=1M seek="$mib" \
        conv=notrunc status=none
done
"$img" convert -f raw -O qcow2 "$work/base.raw" "$work/base.qcow2"
rm "$work/base.raw"
# the increments rewrite, zero and discard parts of what is below them
"$img" create -q -f qcow2 -b base.qcow2 -F qcow2 "$work/inc1.qcow2" "$size"
"$io" -f qcow2 -c "write -P 0x33 100M 16M" -c "write -z 215M 3M" \
    "$work/inc1.qcow2" >/dev/null
"$img" create -q -f qcow2 -b inc1.qcow2 -F qcow2 "$work/inc2.qcow2" "$size"
"$io" -f qcow2 -c "write -P 0x44 500M 40M" -c "discard 779M 2M" \
    -c "write -P 0x55 1023M 1M" "$work/inc2.qcow2" >/dev/null

echo "== uploading to s3://$S3CHAIN_BUCKET/$prefix/ at $S3CHAIN_ENDPOINT"
for f in base inc1 inc2; do
    python3 "$REPO/scripts/s3obj.py" "$env_file" put "$work/$f.qcow2" "$prefix/$f.qcow2"
done

host=${S3CHAIN_ENDPOINT#*://}
tls=on
[ "${S3CHAIN_ENDPOINT%%://*}" = http ] && tls=off
url="s3chain://$host;tls=$tls;access-key-id=$AWS_ACCESS_KEY_ID;key-secret=s3key/$S3CHAIN_BUCKET/$prefix/inc2.qcow2"
obj=(--object "secret,id=s3key,file=$secret")

echo "== the chain, as qemu-img sees it in the bucket"
"$img" info "${obj[@]}" --backing-chain "$url" | grep -E '^(image|backing file|virtual size|disk size):'

echo "== restoring inc2 from the bucket to a raw disk"
start=$(date +%s.%N)
progress=()
[ -t 1 ] && progress=(-p)
"$img" convert "${obj[@]}" "${progress[@]}" -O raw "$url" "$work/restored.raw"
end=$(date +%s.%N)

"$img" convert -O raw "$work/inc2.qcow2" "$work/expected.raw"
if cmp -s "$work/expected.raw" "$work/restored.raw" &&
    "$img" compare -q "${obj[@]}" "$work/inc2.qcow2" "$url"; then
    result="bit-exact"
else
    result="DIFFERENT"
fi
python3 "$REPO/scripts/s3obj.py" "$env_file" rm-prefix "$prefix/"

echo
echo "== summary"
echo "chain:     3 qcow2 images, $size virtual, in s3://$S3CHAIN_BUCKET/$prefix/"
awk -v s="$start" -v e="$end" \
    'BEGIN { printf "restore:   %.2f s from the bucket, no download first\n", e - s }'
echo "result:    restored disk is $result with the local chain"
[ "$result" = bit-exact ]
