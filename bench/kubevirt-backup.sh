#!/bin/bash
# Backups through KubeVirt's pull-mode export endpoints: a full pull of a
# 4 GiB disk full of data by s3chain --kubevirt against one curl stream of
# the data endpoint and against s3chain over QMP; incrementals of 64 MiB
# and 1 GiB dirty against OADP's push pipeline (a push-mode qcow2 written
# locally, then uploaded whole), in the same run, to the same radosgw.
# Wall time, bytes uploaded, local bytes, peak RSS of the command and the
# sidecar.  The export server is the tests' stand-in (kubevirt_export.py)
# in front of a real libvirt pull backup.
#
# Usage: [S3CHAIN_BENCH_GIB=4] bench/kubevirt-backup.sh [DIRTY_MIB...]   (64 1024)
# Needs scripts/build.sh done; starts the S3 server and libvirtd
# (scripts/libvirtd.sh).  Writes the table to
# bench/results/kubevirt-backup.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
BENCH=kubevirt-backup
# three copies of a 4 GiB disk and more: memstore would hold them in RAM
export S3CHAIN_S3_STORE=${S3CHAIN_S3_STORE:-bluestore}
export S3CHAIN_S3_BYTES=${S3CHAIN_S3_BYTES:-48G}
. "$(dirname "$0")/common.sh"

"$REPO/scripts/libvirtd.sh" start
dirty=("$@")
[ ${#dirty[@]} -gt 0 ] || dirty=(64 1024)
version=$(git -C "$REPO" describe --always --dirty)

{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, s3chain $version"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/kubevirt-backup.py" \
        "$env_file" "$work" "$prefix" "${dirty[@]}"
} | tee "$REPO/bench/results/kubevirt-backup.txt"
