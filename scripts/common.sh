# Paths and names shared by s3chain's scripts; sourced, not run.
#
# SPDX-License-Identifier: GPL-2.0-or-later
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${S3CHAIN_BUILD:-$REPO/build}
QEMU_PRISTINE=$BUILD/qemu-pristine
QEMU_SRC=$BUILD/qemu-src
QEMU_BUILD=$BUILD/qemu

# Configures a QEMU build in directory $1 from $QEMU_SRC with the flags
# that follow, unless it already was with the same ones
configure_qemu() {
    local dir=$1
    shift
    local stamp=$dir/s3chain-configure-flags
    if [ ! -f "$dir/build.ninja" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$*" ]; then
        mkdir -p "$dir"
        (cd "$dir" && "$QEMU_SRC/configure" "$@")
        echo "$*" >"$stamp"
    fi
}

# Files of ours that the QEMU tree carries, at the same paths
our_qemu_files() {
    (cd "$REPO" && ls block/s3chain*.[ch] tests/unit/test-s3chain-*.c \
        tests/qemu-iotests/tests/s3chain-* 2>/dev/null)
    (cd "$REPO" && ls tests/unit/s3chain-*-vectors.txt 2>/dev/null)
    (cd "$REPO" && ls tests/qemu-iotests/s3chain.py 2>/dev/null)
}

git_identity() {
    export GIT_AUTHOR_NAME="s3chain authors" GIT_AUTHOR_EMAIL=s3chain@localhost
    export GIT_COMMITTER_NAME="s3chain authors" GIT_COMMITTER_EMAIL=s3chain@localhost
    export GIT_AUTHOR_DATE='2026-01-01T00:00:00Z'
    export GIT_COMMITTER_DATE='2026-01-01T00:00:00Z'
}
