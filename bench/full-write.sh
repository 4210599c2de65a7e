#!/bin/bash
# Full-write throughput: qemu-img convert of a 2 GiB local qcow2 image of
# incompressible data into an s3chain qcow2 in the bucket, against a
# parallel multipart upload of the same file (boto3: 8 MiB parts, 4 in
# parallel) to the same server, in the same run; with the chunk-size and
# parallelism sweep that chose the defaults.
#
# Usage: bench/full-write.sh [RUNS]   (default 3; medians are reported)
# S3CHAIN_BENCH_BEFORE=QEMU-IMG runs each variant with that build too.
# Needs scripts/build.sh done; starts the local S3 server if needed.
# Writes the table to bench/results/full-write.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
runs=${1:-3}
BENCH=full-write
. "$(dirname "$0")/common.sh"

head -c 2G /dev/urandom >"$work/disk.raw"
"$img" convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm "$work/disk.raw"
bytes=$(stat -c %s "$work/disk.qcow2")
cat "$work/disk.qcow2" >/dev/null

n=0

s3chain_convert() {
    local label=$1 chunk=$2 opts=$3 key t0 t1
    n=$((n + 1))
    key=$prefix/s3chain-$n.qcow2
    t0=$(now)
    "$(img_of "$label")" convert --object "secret,id=s3key,file=$work/secret" -O qcow2 \
        -o "chunk-size=$chunk" "$work/disk.qcow2" \
        "$url_base$opts/$S3CHAIN_BUCKET/$key"
    t1=$(now)
    python3 "$REPO/scripts/s3obj.py" "$env_file" rm-prefix "$key" >/dev/null
    elapsed "$t0" "$t1"
}

multipart_upload() {
    local key t0 t1
    n=$((n + 1))
    key=$prefix/upload-$n.qcow2
    t0=$(now)
    python3 "$REPO/scripts/s3obj.py" "$env_file" put "$work/disk.qcow2" "$key"
    t1=$(now)
    python3 "$REPO/scripts/s3obj.py" "$env_file" rm-prefix "$key" >/dev/null
    elapsed "$t0" "$t1"
}

# "label|chunk-size|driver options"
variants=("baseline: multipart upload (boto3)||"
          "s3chain convert (defaults)|4194304|"
          "s3chain, chunk-size=1M|1048576|"
          "s3chain, chunk-size=8M|8388608|"
          "s3chain, chunk-size=16M|16777216|;buffer-size=134217728"
          "s3chain, max-requests=4|4194304|;max-requests=4"
          "s3chain, max-requests=16|4194304|;max-requests=16"
          "s3chain, buffer-size=256M|4194304|;buffer-size=268435456")
add_before_variants
declare -A times=()
for r in $(seq 0 $((runs - 1))); do
    for k in $(seq 0 $((${#variants[@]} - 1))); do
        IFS='|' read -r label chunk opts \
            <<<"${variants[$(( (r + k) % ${#variants[@]} ))]}"
        if [ -z "$chunk" ]; then
            times[$label]+="$(multipart_upload) "
        else
            times[$label]+="$(s3chain_convert "$label" "$chunk" "$opts") "
        fi
    done
done

out=$REPO/bench/results/full-write.txt
mkdir -p "$(dirname "$out")"
base_label="baseline: multipart upload (boto3)"
base=$(median_time "$base_label")
{
    echo "# full-write: 2 GiB qcow2 of random data, $bytes bytes;" \
        "$runs rotated runs, medians"
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1"
    [ -z "$before_img" ] || echo "# \"(before)\": run with $before_img"
    printf '%-44s %8s %8s %8s\n' "what" "seconds" "MB/s" "ratio"
    variant_rows "$bytes" "$base"
} | tee "$out"
