#!/bin/bash
# What deleting a backup (merging its successor into it), incremental
# forever against a new full every 10, and gc of 10,000 objects cost:
# bench/lifecycle.py says how each is measured.
#
# Usage: bench/lifecycle.sh [merge] [forever] [gc]   (all by default)
# Needs scripts/build.sh done; starts the S3 server.
# Writes bench/results/lifecycle.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
# Over 12 GiB are stored at a time: on disk, not in memstore's RAM (a
# running S3 server is used as it is)
export S3CHAIN_S3_STORE=${S3CHAIN_S3_STORE:-bluestore}
export S3CHAIN_S3_BYTES=${S3CHAIN_S3_BYTES:-48G}
BENCH=lifecycle
. "$(dirname "$0")/common.sh"

# before tee truncates the results file, which would make the tree dirty
tree=$(git -C "$REPO" describe --always --dirty)
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1, $tree"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/lifecycle.py" \
        "$env_file" "$work" "$prefix" "$@"
} | tee "$REPO/bench/results/lifecycle${1:+-$(IFS=-; echo "$*")}.txt"
