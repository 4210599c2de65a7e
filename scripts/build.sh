#!/bin/bash
# Builds everything on a fresh Debian 12: installs the dependencies, makes
# the patched QEMU tree and builds QEMU's tools, x86_64-softmmu and the
# unit tests out of tree in build/qemu, then the s3chain command in
# build/orchestrator.  Rerunning it after editing block/ or orchestrator/
# recompiles only what changed.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

if [ -z "${S3CHAIN_SKIP_DEPS:-}" ]; then
    "$REPO/scripts/install-deps.sh"
fi
"$REPO/scripts/prepare-qemu.sh"

# --enable-fuse: qemu-storage-daemon's FUSE export shows a served
# backup as a file (docs/restore.rst, file-level restore); --enable-zstd:
# s3chain's compressed images
configure_flags=(
    --python=/usr/bin/python3
    --target-list=x86_64-softmmu
    --enable-tools --enable-curl --enable-gnutls --enable-fuse --enable-zstd
    --disable-docs --disable-install-blobs
    --disable-gtk --disable-sdl --disable-opengl --disable-spice
    --disable-vnc --disable-xen --disable-user
    --enable-werror
)
configure_qemu "$QEMU_BUILD" "${configure_flags[@]}"
ninja -C "$QEMU_BUILD"
# Debian's QEMU source has no firmware blobs: the build's qemu-system,
# which QEMU's generic iotests start, uses Debian's, as the stock one does
# (run from the build tree, it looks in qemu-bundle for the prefix's)
datadir=$QEMU_BUILD/qemu-bundle/usr/local/share/qemu
for blob in /usr/share/seabios/*.bin /usr/share/qemu/*.bin; do
    [ -e "$datadir/${blob##*/}" ] || ln -s "$blob" "$datadir/${blob##*/}"
done

if [ ! -f "$BUILD/orchestrator/build.ninja" ]; then
    meson setup "$BUILD/orchestrator" "$REPO" >/dev/null
fi
ninja -C "$BUILD/orchestrator"
# the tests' tiny Linux guest (tests/guest/writer.c and Debian's kernel)
"$REPO/scripts/guest.py" >/dev/null
