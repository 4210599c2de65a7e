#!/bin/bash
# Regenerates patches/, the QEMU 10.0.2 series, from block/, tests/ and
# qemu-glue/.  With --check, fails if patches/ differs from what it would
# write (CI runs that).  Never edit patches/ by hand.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

check=false
if [ "${1:-}" = --check ]; then
    check=true
fi

"$REPO/scripts/fetch-qemu.sh" "$QEMU_PRISTINE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$QEMU_PRISTINE" "$work/qemu"
cd "$work/qemu"
git_identity
glue() { python3 "$REPO/qemu-glue/apply.py" "$work/qemu" "$1"; }
ours() { for f in "$@"; do mkdir -p "$(dirname "$f")"; cp -r "$REPO/$f" "$f"; done; }
commit() { git add -A && git commit -q -F -; }

glue qapi
commit <<'MSG'
qapi: add the s3chain block driver's options

s3chain keeps an image in a bucket of an S3-compatible object store.
Its options name the endpoint, bucket and key, the signing region and
credentials (secrets by QCryptoSecret ID only), TLS verification, and
the timeout, retry and parallelism settings of its requests.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours $(cd "$REPO" && ls block/s3chain*.[ch])
glue build
glue trace
glue maintainers
commit <<'MSG'
block/s3chain: add a driver for images in an S3 bucket

The driver reads a raw or qcow2 image stored as one object, with ranged
GETs over libcurl's multi interface driven from the node's AioContext,
and reads and writes chunked images: fixed-size chunk objects, never
rewritten, and a manifest object (size, chunk size, and per chunk its
object and MD5) that is the image's commit point.  Writes land in a
bounded buffer in RAM and are uploaded in the background, in parallel,
with Content-MD5; flush uploads the rest and then the manifest, so a
crash leaves the last committed image intact.  All-zero chunks are not
stored.  A create-only lock object keeps a second writer out.

Requests are signed with AWS Signature Version 4 in the driver: libcurl
before 8.x signs S3 requests wrongly, and the images that carry
qemu-storage-daemon ship such versions.  Transient failures (5xx,
timeouts, dropped connections) are retried with backoff and a new
signature, up to a budget; everything else fails at once with the
bucket, key and cause.

A relative backing file name opens the key next to the image with the
same connection settings, which s3chain:// URLs carry:

  s3chain://HOST[:PORT][;OPTION=VALUE].../BUCKET/KEY

Secrets are named by their object ID only, so filenames, traces and
image headers never hold one.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours $(cd "$REPO" && ls tests/unit/test-s3chain-*.c)
glue unit
commit <<'MSG'
tests/unit: test s3chain's request signing and URL syntax

test-s3chain-manifest checks the manifest codec of chunked images and
its refusals of damaged manifests, test-s3chain-plan the parser of read
plans (x-read-plan).  test-s3chain-sigv4 checks the signer
against S3's own examples from its
API reference, and against AWS's SigV4 test suite where that is present:
the suite is Apache-2.0, so it is kept outside QEMU's tree, and the test
skips it when absent.  test-s3chain-url checks the s3chain:// URL syntax
both ways.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours tests/qemu-iotests/s3chain.py $(cd "$REPO" && ls tests/qemu-iotests/tests/s3chain-*)
commit <<'MSG'
iotests: test s3chain against an S3 server

The tests run when S3CHAIN_TEST_ENV names an env file with an endpoint,
bucket and keys (such as a local Ceph RADOS Gateway), and are skipped
otherwise.  They read qcow2 chains through s3chain with qemu-img and
qemu-io; check its failures (bad credentials, missing objects and
parents, a server that goes away in the middle of a read) and retries
through a fault-injecting proxy; write chunked images against a local
mirror, with kill -9, corruption, a second writer and a small buffer;
and run blockdev-backup from a separate qemu-system into an NBD export
of qemu-storage-daemon whose target is in the bucket.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

glue docs
commit <<'MSG'
docs: describe the s3chain block driver

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

out=$work/patches
git format-patch -q --zero-commit --no-signature --cover-letter \
    -o "$out" v10.0.2..HEAD
cover=$(ls "$out"/0000-*)
python3 - "$cover" "$REPO/qemu-glue/cover-letter.txt" <<'PY'
import sys
path, letter = sys.argv[1], open(sys.argv[2]).read()
subject, _, body = letter.partition('\n\n')
text = open(path).read()
text = text.replace('*** SUBJECT HERE ***', subject.strip())
text = text.replace('*** BLURB HERE ***', body.strip())
open(path, 'w').write(text)
PY
sed -i 's/^Date: .*/Date: Thu, 1 Jan 2026 00:00:00 +0000/' "$out"/*.patch

if $check; then
    if ! diff -r "$out" "$REPO/patches" >"$work/diff"; then
        head -40 "$work/diff" >&2
        echo "make-patches: patches/ is stale; run scripts/make-patches.sh and commit the result" >&2
        exit 1
    fi
    echo "make-patches: patches/ is up to date"
else
    rm -rf "$REPO/patches"
    cp -r "$out" "$REPO/patches"
fi
