#!/bin/bash
# Builds the tools that carry the s3chain driver (qemu-img, qemu-io,
# qemu-nbd, qemu-storage-daemon) and its unit tests again with ASan and
# UBSan, out of tree in build/qemu-sanitised, from the same patched tree
# as scripts/build.sh (which must have run).  No emulator: the tests'
# VMs are not ours.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

QEMU_SANITISED=$BUILD/qemu-sanitised
configure_flags=(
    --python=/usr/bin/python3
    --target-list=
    --enable-tools --enable-curl --enable-gnutls --enable-fuse --enable-zstd
    --enable-asan --enable-ubsan
    --disable-docs --disable-install-blobs --disable-system --disable-user
    --enable-werror
)
configure_qemu "$QEMU_SANITISED" "${configure_flags[@]}"
ninja -C "$QEMU_SANITISED" qemu-img qemu-io qemu-nbd \
    storage-daemon/qemu-storage-daemon tests/unit/test-s3chain-sigv4 \
    tests/unit/test-s3chain-url tests/unit/test-s3chain-manifest \
    tests/unit/test-s3chain-seal tests/unit/test-s3chain-plan
