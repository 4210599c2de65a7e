#!/bin/bash
# Restore-read throughput: qemu-img convert -O raw of a 2 GiB qcow2 image
# (about half allocated, incompressible data) from the bucket through
# s3chain to a local file, against a plain S3 download of the same object
# with 4 parallel ranged GETs (curl on a presigned URL), in the same run.
#
# Usage: bench/restore-read.sh [RUNS]   (default 5; medians are reported)
# S3CHAIN_BENCH_BEFORE=QEMU-IMG runs each variant with that build too.
# Runs of all variants are interleaved, and each starts after a sync, so
# that writeback of the previous output weighs on none of them.
# Needs scripts/build.sh done; starts the local S3 server if needed.
# Prints a table and writes it to bench/results/restore-read.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
runs=${1:-5}
BENCH=restore-read
. "$(dirname "$0")/common.sh"

# Every other MiB holds random data: 1 GiB allocated of 2 GiB
python3 - "$work/disk.raw" <<'PY'
import os, sys
MiB = 1 << 20
with open(sys.argv[1], 'wb') as f:
    f.truncate(2048 * MiB)
    for i in range(0, 2048, 2):
        f.seek(i * MiB)
        f.write(os.urandom(MiB))
PY
"$img" convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm "$work/disk.raw"
python3 "$REPO/scripts/s3obj.py" "$env_file" put "$work/disk.qcow2" "$prefix/disk.qcow2"
object_bytes=$(stat -c %s "$work/disk.qcow2")
rm "$work/disk.qcow2"



s3chain_convert() {
    local label=$1 dir=$2 opts=$3 convert_opts=$4
    rm -f "$dir/out.raw"
    sync
    local t0 t1
    t0=$(now)
    # shellcheck disable=SC2086
    "$(img_of "$label")" convert $convert_opts --object "secret,id=s3key,file=$work/secret" \
        -O raw "$url_base$opts/$S3CHAIN_BUCKET/$prefix/disk.qcow2" "$dir/out.raw"
    t1=$(now)
    rm -f "$dir/out.raw"
    elapsed "$t0" "$t1"
}

parallel_get() {
    local dir=$1 url size part t0 t1
    url=$(python3 "$REPO/scripts/s3obj.py" "$env_file" presign "$prefix/disk.qcow2")
    size=$object_bytes
    part=$(( (size + 3) / 4 ))
    rm -f "$dir"/part.*
    sync
    t0=$(now)
    for i in 0 1 2 3; do
        local from=$(( i * part )) to=$(( (i + 1) * part - 1 ))
        [ "$to" -ge "$size" ] && to=$(( size - 1 ))
        curl -sf -r "$from-$to" -o "$dir/part.$i" "$url" &
    done
    wait
    t1=$(now)
    rm -f "$dir"/part.*
    elapsed "$t0" "$t1"
}


# Each variant: "label|driver options|qemu-img convert options"
variants=("s3chain convert (defaults)||"
          "s3chain convert -m 16||-m 16"
          "s3chain convert -t none -m 16 -W (restore's)||-t none -m 16 -W"
          "s3chain convert, readahead=0|;readahead=0|"
          "s3chain convert, request-size=1M|;request-size=1048576|"
          "s3chain convert, request-size=8M|;request-size=8388608|"
          "s3chain convert, max-requests=16|;max-requests=16|")
add_before_variants
# The output on disk, and on tmpfs, where the local file system's
# writeback does not blur the network side
targets=("$work" "/dev/shm")

out=$REPO/bench/results/restore-read.txt
mkdir -p "$(dirname "$out")"
{
    echo "# restore-read: 2 GiB qcow2, $object_bytes bytes in the bucket;" \
        "$runs interleaved runs, medians"
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1," \
        "$(curl --version | head -1 | cut -d' ' -f1-2)"
    [ -z "$before_img" ] || echo "# \"(before)\": run with $before_img"
} >"$out"
for dir in "${targets[@]}"; do
    declare -A times=()
    # The order rotates from run to run, so that no variant always follows
    # the same one (deleting a 1 GiB output has after-effects on ext4)
    all=("baseline||" "${variants[@]}")
    for r in $(seq 0 $((runs - 1))); do
        for k in $(seq 0 $((${#all[@]} - 1))); do
            IFS='|' read -r label opts convert_opts \
                <<<"${all[$(( (r + k) % ${#all[@]} ))]}"
            if [ "$label" = baseline ]; then
                times[baseline]+="$(parallel_get "$dir") "
            else
                times[$label]+="$(s3chain_convert "$label" "$dir" "$opts" "$convert_opts") "
            fi
        done
    done
    base=$(median_time baseline)
    {
        echo
        echo "output in $(df --output=fstype "$dir" | tail -1) ($dir)"
        printf '%-44s %8s %8s %8s\n' "what" "seconds" "MB/s" "ratio"
        printf '%-44s %8s %8.0f %8s\n' "baseline: 4 parallel ranged GETs (curl)" \
            "$base" "$(awk -v b="$object_bytes" -v t="$base" 'BEGIN { print b / t / 1e6 }')" \
            "1.00"
        variant_rows "$object_bytes" "$base"
    } | tee -a "$out"
    unset times
done
