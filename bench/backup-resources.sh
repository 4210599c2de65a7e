#!/bin/bash
# Sidecar resources during a backup into the bucket: peak RSS against the
# buffer setting, and bytes written to local disk (the target is 0).
# Usage: bench/backup-resources.sh [BUFFER_MIB...]   (default: 64 256)
# Needs scripts/build.sh done; writes bench/results/backup-resources.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"

env_file=$("$REPO/scripts/s3-server.sh" start)
out=$REPO/bench/results/backup-resources.txt
mkdir -p "$(dirname "$out")"
{
    echo "# backup-resources: blockdev-backup sync=full of an 8 GiB disk with" \
        "2 GiB of random data, stock qemu-system -> NBD -> qemu-storage-daemon" \
        "-> qcow2 on s3chain"
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1"
    buffers=("$@")
    [ ${#buffers[@]} -gt 0 ] || buffers=(64 256)
    for mib in "${buffers[@]}"; do
        "$REPO/bench/backup-resources.py" "$env_file" "$QEMU_BUILD" "$mib"
    done
} | tee "$out"
