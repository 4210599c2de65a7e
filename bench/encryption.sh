#!/bin/bash
# Full backups of a running VM and their restores, plain, compressed,
# encrypted and both, against each other and against restic on the same
# 4 GiB disk (half random, a quarter text, a quarter zeroes): times,
# throughput, bytes stored, ratios to plain (bench/encryption.py).
#
# Usage: bench/encryption.sh [ROUNDS]   (default 3)
# Needs scripts/build.sh done; starts the S3 server; installs Debian's
# restic if it is missing.  Writes bench/results/encryption.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
BENCH=encryption
. "$(dirname "$0")/common.sh"

command -v restic >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q restic >/dev/null
# before tee truncates the results file, which would make the tree dirty
tree=$(git -C "$REPO" describe --always --dirty)
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, radosgw on 127.0.0.1, $tree, $(restic version | cut -d' ' -f1-2)"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/encryption.py" \
        "$env_file" "$work" "$prefix" "${1:-3}"
} | tee "$REPO/bench/results/encryption.txt"
