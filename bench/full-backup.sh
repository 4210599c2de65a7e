#!/bin/bash
# Full backups of a running VM (8 GiB raw disk, 2 GiB of random data)
# against a boto3 multipart upload of the same 2 GiB, interleaved in the
# same run against the same radosgw: wall time, the guest's write latency
# during the backup against idle, CPU seconds per process, PUTs and GETs;
# then a 1 GiB-dirty incremental against the OADP temp-volume pipeline.
#
# Usage: bench/full-backup.sh [ROUNDS]   (default 3)
# Needs scripts/build.sh done; starts the S3 server.
# Writes bench/results/full-backup.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
BENCH=full-backup
. "$(dirname "$0")/common.sh"

# before tee truncates the results file, which would make the tree dirty
tree=$(git -C "$REPO" describe --always --dirty)
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1, $tree"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/full-backup.py" \
        "$env_file" "$work" "$prefix" "${1:-3}"
} | tee "$REPO/bench/results/full-backup.txt"
