#!/bin/bash
# Fetches the pinned QEMU 10.0.2 source tarball from Debian's archive,
# checks its SHA256 and unpacks it as a pristine git tree.
#
# Usage: fetch-qemu.sh DESTDIR
# The tarball is cached in $S3CHAIN_CACHE (default /var/cache/s3chain).
# DESTDIR gets one commit, "v10.0.2", with fixed dates so that the patch
# series generated against it is byte-for-byte reproducible.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

QEMU_TARBALL=qemu_10.0.2+ds.orig.tar.xz
QEMU_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
QEMU_URL=http://deb.debian.org/debian/pool/main/q/qemu/qemu_10.0.2%2bds.orig.tar.xz

dest=${1:?usage: fetch-qemu.sh DESTDIR}
cache=${S3CHAIN_CACHE:-/var/cache/s3chain}
mkdir -p "$cache"
tarball=$cache/$QEMU_TARBALL

if ! echo "$QEMU_SHA256  $tarball" | sha256sum -c --status 2>/dev/null; then
    rm -f "$tarball.part"
    curl -fsSL --retry 3 -o "$tarball.part" "$QEMU_URL"
    if ! echo "$QEMU_SHA256  $tarball.part" | sha256sum -c --status; then
        echo "fetch-qemu: $QEMU_TARBALL does not match its pinned SHA256; refusing to use it" >&2
        rm -f "$tarball.part"
        exit 1
    fi
    mv "$tarball.part" "$tarball"
fi

if [ -d "$dest/.git" ]; then
    exit 0
fi
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
tar -xJf "$tarball" -C "$dest.tmp" --strip-components=1
(
    cd "$dest.tmp"
    export GIT_AUTHOR_NAME=s3chain GIT_AUTHOR_EMAIL=s3chain@localhost
    export GIT_COMMITTER_NAME=s3chain GIT_COMMITTER_EMAIL=s3chain@localhost
    export GIT_AUTHOR_DATE='2025-01-01T00:00:00Z' GIT_COMMITTER_DATE='2025-01-01T00:00:00Z'
    git init -q -b pristine
    git -c core.autocrlf=false add -A -f
    git commit -q -m v10.0.2
    git tag v10.0.2
)
mv "$dest.tmp" "$dest"
