#!/bin/bash
# Incremental backup of a libvirt domain's 4 GiB qcow2 disk (1.5 GiB of
# data) with 64 MiB and 1 GiB dirty: s3chain --libvirt against
# virtnbdbackup into a local directory plus the upload of what it wrote,
# and against s3chain over QMP on a plain QEMU with the same disk and
# changes, in the same run, to the same radosgw.  Wall time, bytes
# uploaded, local bytes, the scratch's peak and the sidecar's peak RSS.
#
# Usage: bench/libvirt-backup.sh [ROUNDS [DIRTY_MIB...]]   (2; 64 1024)
# Needs scripts/build.sh done; installs virtnbdbackup; starts the S3
# server and libvirtd (scripts/libvirtd.sh).  Writes the table to
# bench/results/libvirt-backup.txt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
BENCH=libvirt-backup
. "$(dirname "$0")/common.sh"

command -v virtnbdbackup >/dev/null ||
    apt-get install -y -q --no-install-recommends virtnbdbackup
"$REPO/scripts/libvirtd.sh" start
rounds=${1:-2}
shift || true
dirty=("$@")
[ ${#dirty[@]} -gt 0 ] || dirty=(64 1024)

{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(virtnbdbackup -V 2>&1 | tail -1)"
    "$QEMU_BUILD/pyvenv/bin/python3" "$REPO/bench/libvirt-backup.py" \
        "$env_file" "$work" "$prefix" "$rounds" "${dirty[@]}"
} | tee "$REPO/bench/results/libvirt-backup.txt"
