#!/bin/bash
# Incremental backup of a running VM's disk with 64 MiB dirty, at disk
# sizes of 2, 8 and 32 GiB (raw, sparse, 512 MiB of data), by s3chain
# against restic (reading the whole raw image, as kopia does in Velero)
# and the OADP temp-volume pipeline (blockdev-backup into a local qcow2,
# then a parallel multipart upload), in the same run, to the same radosgw.
#
# Usage: bench/incremental-backup.sh [SIZE_GIB...]   (default 2 8 32)
# Needs scripts/build.sh done; installs restic; starts the S3 server.
# Writes the table to bench/results/incremental-backup.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
BENCH=incremental-backup
. "$(dirname "$0")/common.sh"

command -v restic >/dev/null || apt-get install -y -q --no-install-recommends restic
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2 8 32)

{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, restic $(restic version | cut -d' ' -f2)"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/incremental-backup.py" \
        "$env_file" "$work" "$prefix" "${sizes[@]}"
} | tee "$REPO/bench/results/incremental-backup.txt"
