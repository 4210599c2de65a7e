#!/bin/bash
# Restore benchmarks (bench/restore.py says what is measured): restore
# throughput against parallel ranged GETs, the cost of a chain's length,
# and the time to the first read of a served backup.
#
# Usage: bench/restore.sh [RUNS]   (default 3; medians are reported)
# S3CHAIN_BENCH_BEFORE=QEMU-IMG restores with that build too.
# Needs scripts/build.sh done; starts the S3 server.  It stores ~13 GiB:
# start the server first with S3CHAIN_S3_STORE=bluestore S3CHAIN_S3_BYTES=40G
# (memstore holds ~2.3x the stored bytes in RAM, more than 24 GiB).
# Writes the table to bench/results/restore.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
runs=${1:-3}
BENCH=restore
. "$(dirname "$0")/common.sh"

{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/restore.py" \
        "$env_file" "$work" "$prefix" "$runs"
} | tee "$REPO/bench/results/restore.txt"
