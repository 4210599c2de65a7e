#!/bin/bash
# Restore reads of the 4 GiB disk of bench/encryption.py (half random, a
# quarter text, a quarter zeroes written out), stored plain, compressed,
# encrypted and both: qemu-img convert -O raw from the bucket to a local
# file, each output checked, ratios to plain, in the same run.
#
# Usage: bench/encryption-read.sh [RUNS]   (default 3; medians)
# Needs scripts/build.sh done; starts the S3 server.
# Writes bench/results/encryption-read.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
runs=${1:-3}
BENCH=encryption-read
. "$(dirname "$0")/common.sh"

python3 - "$work/disk.raw" <<'PY'
import os, sys
MiB = 1 << 20
with open(sys.argv[1], 'wb') as f:
    for _ in range(2048):
        f.write(os.urandom(MiB))
    text, line = bytearray(), 0
    while len(text) < 1024 * MiB:
        text += (f'{line:09d} 2026-12-02T01:{line % 60:02d}:00Z kernel: eth0: '
                 f'link up, 1000 Mbps, full duplex ({line % 977})\n').encode()
        line += 1
    f.write(text[:1024 * MiB])
    for _ in range(1024):
        f.write(bytes(MiB))
PY
want=$(sha256sum <"$work/disk.raw" | cut -d' ' -f1)
head -c 32 /dev/urandom >"$work/key"
chmod 600 "$work/key"
objects=(--object "secret,id=s3key,file=$work/secret"
         --object "secret,id=ek,file=$work/key")

# Each variant: "label|driver options|creation options"
variants=("plain||"
          "compressed||-o compress=zstd"
          "encrypted|;encrypt-key-secret=ek|"
          "encrypted + compressed|;encrypt-key-secret=ek|-o compress=zstd")
for v in "${variants[@]}"; do
    IFS='|' read -r label opts create <<<"$v"
    # shellcheck disable=SC2086
    "$img" convert "${objects[@]}" -f raw -O raw $create "$work/disk.raw" \
        "$url_base$opts/$S3CHAIN_BUCKET/$prefix/${label// /-}.raw"
done
rm "$work/disk.raw"

declare -A times=()
for r in $(seq 0 $((runs - 1))); do
    for k in $(seq 0 $((${#variants[@]} - 1))); do
        IFS='|' read -r label opts _ <<<"${variants[$(( (r + k) % ${#variants[@]} ))]}"
        rm -f "$work/out.raw"
        sync
        t0=$(now)
        "$img" convert "${objects[@]}" -O raw \
            "$url_base$opts/$S3CHAIN_BUCKET/$prefix/${label// /-}.raw" \
            "$work/out.raw"
        t1=$(now)
        [ "$(sha256sum <"$work/out.raw" | cut -d' ' -f1)" = "$want" ] ||
            { echo "$label: the restore differs" >&2; exit 1; }
        times[$label]+="$(elapsed "$t0" "$t1") "
    done
done
rm -f "$work/out.raw"

base=$(median_time plain)
{
    echo "# encryption-read: 4 GiB raw (half random, a quarter text, a quarter"
    echo "# zeroes), qemu-img convert -O raw from the bucket; $runs interleaved runs, medians"
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1, $(git -C "$REPO" describe --always --dirty)"
    printf '%-44s %8s %8s %8s\n' "what" "seconds" "MB/s" "ratio"
    variant_rows $((4 << 30)) "$base"
} | tee "$REPO/bench/results/encryption-read.txt"
