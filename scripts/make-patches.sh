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
# An earlier state of the driver: block/ with the edits of stages $@
# (qemu-glue/stages.py) applied, in $work/stage; then staged FILE...
# copies its files, and staged_glue AREA glues from its header and trace
# events
stage() {
    rm -rf "$work/stage"
    mkdir "$work/stage"
    cp -r "$REPO/block" "$work/stage/"
    python3 "$REPO/qemu-glue/stages.py" "$work/stage" "$@"
}
staged() { for f in "$@"; do cp "$work/stage/$f" "$f"; done; }
staged_glue() { S3CHAIN_GLUE_SOURCES=$work/stage glue "$1"; }
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

# The driver, a concern a patch, each building and passing its tests on
# its own (scripts/check-series.py): the pure parts with their unit
# tests first, then the transport, then the driver that uses them all.
# The header, build, trace and unit glue follow the files present so far.

ours block/s3chain-sigv4.h block/s3chain-sigv4.c block/s3chain-crypto.c \
    tests/unit/test-s3chain-sigv4.c
glue build
glue unit
glue maintainers
commit <<'MSG'
block/s3chain: sign requests with AWS Signature Version 4

s3chain, a driver for images in an S3-compatible bucket, signs its own
requests: libcurl before 8.x signs S3 requests wrongly, and the images
that carry qemu-storage-daemon ship such versions.  The signer is pure:
canonical request, string to sign and signature over a tiny interface
(SHA-256 and HMAC-SHA-256), which s3chain-crypto.c implements with
QEMU's crypto.

test-s3chain-sigv4 checks it against S3's own examples from its API
reference, and against AWS's SigV4 test suite where that is present:
the suite is Apache-2.0, so it is kept outside QEMU's tree, and the test
skips it when absent.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours block/s3chain-url.c tests/unit/test-s3chain-url.c
glue header
glue build
glue unit
commit <<'MSG'
block/s3chain: parse and build s3chain:// filenames

An image in a bucket is named

  s3chain://HOST[:PORT][;OPTION=VALUE].../BUCKET/KEY

with the driver's options (region, credentials by secret ID, TLS,
timeouts) in the filename, so that a relative backing file name can be
opened with the same connection settings as its child.  Secrets are
named by their object ID only, so filenames, traces and image headers
never hold one.  test-s3chain-url checks the syntax both ways.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours block/s3chain-format.h block/s3chain-format.c \
    block/s3chain-seal.h block/s3chain-seal.c \
    block/s3chain-manifest.c tests/unit/test-s3chain-manifest.c \
    tests/unit/test-s3chain-seal.c \
    tests/unit/s3chain-manifest-vectors.txt
glue header
glue build
glue unit
commit <<'MSG'
block/s3chain: the format of chunked images and their manifest

A chunked image is fixed-size chunk objects, never rewritten, and a
manifest object (size, chunk size, and per chunk its object, MD5, CRC-32
and the CRC-32 of each block) that is the image's commit point.
s3chain-format.c holds the format once, in plain C: names, versions,
limits, chunk keys and the check of every value, so that tools outside
QEMU that read the same bucket apply the same rules; s3chain-manifest.c
is the codec over QObject.

An encrypted image (version 7) seals each stored block with AES-256-GCM
under a key derived with HKDF from the user's, binding the image, the
chunk, the upload and the block into the associated data, and ends its
manifest with an HMAC of it.  s3chain-seal.c holds that once too, over
GnuTLS: QEMU's crypto API has no AEAD cipher and no HKDF.

test-s3chain-manifest checks the codec and its refusals of damaged
manifests, with s3chain-manifest-vectors.txt: manifests each marked
valid, damaged or unsupported, which other readers of the format are
tested against too.  test-s3chain-seal checks the keys, seals and MAC
against known answers computed with another implementation.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours block/s3chain-plan.c tests/unit/test-s3chain-plan.c
glue header
glue build
glue unit
commit <<'MSG'
block/s3chain: read plans

A reader that knows which byte ranges it will read (a restore of a
qcow2 chain reads only the clusters its images map) can hand them to
the driver in a file (x-read-plan), which then loads only those blocks
of each chunk.  test-s3chain-plan checks the parser.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours block/s3chain-retry.h block/s3chain-retry.c block/s3chain-http.c
glue header
glue build
glue trace
commit <<'MSG'
block/s3chain: requests to the bucket over libcurl's multi interface

A connection drives a curl multi handle from the node's AioContext: its
sockets are registered with aio_set_fd_handler and its timer is a QEMU
timer there.  A coroutine waits for a set of requests and is woken once,
in its AioContext, when the last one completes.  Requests beyond
max-requests wait in a queue.

The request policy is s3chain-retry.c: what each status means, which
failures are transient (5xx, 429, 408, timeouts, dropped connections),
and the backoff (100 ms doubling to 5 s, jittered).  A transient failure
is retried up to a budget with a new signature; a TLS failure or any
other status fails at once with the bucket, key and cause.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

# The driver in three patches: the buffer of chunks with images stored
# as one object, then chunked images read, then written.  The first two
# are earlier states of block/, made by qemu-glue/stages.py.
stage writes one-object
staged block/s3chain.c block/s3chain-image.c block/s3chain-object.c
staged_glue header
glue build
staged_glue trace
commit <<'MSG'
block/s3chain: read images stored as one object

s3chain keeps images in an S3-compatible bucket.  This first part of the
driver opens an object of the bucket, a raw or qcow2 image stored
whole, and reads it read-only through a bounded buffer of chunks in RAM
(s3chain-image.c): a chunk is a range of the object, request-size
bytes, fetched with ranged GETs in parallel, all pinned to the ETag
that the open saw so that an object replaced meanwhile fails rather
than mixes (s3chain-object.c).  A small random read loads only the
blocks of a chunk it needs; a sequential reader makes the chunks ahead
of it load in the background, up to readahead bytes.  A read plan
(x-read-plan) narrows the loads to the ranges its reader will read.

Where a chunk's blocks come from, and how what came is checked, is the
image's kind, a table of operations; the next patches add chunked
images as a second kind of the same buffer.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

stage writes
staged block/s3chain.c block/s3chain-image.c block/s3chain-chunked.c
ours block/s3chain-sums.c block/s3chain-compress.c
staged_glue header
glue build
staged_glue trace
commit <<'MSG'
block/s3chain: read chunked images

A chunked image is fixed-size chunk objects and a manifest that names
them (see s3chain-format.c).  The open recognises a manifest by its
content type and reads it whole; a load reads each block from the
newest object that holds it, the chunk's object or a patch of some of
its blocks, and checks what came (s3chain-sums.c, in the thread pool):
a whole chunk against its CRC-32 in the manifest, blocks against their
block sums, themselves checked against it.  A chunk that is not stored
reads as zeroes.

A compressed image (manifest version 6, "compress": "zstd") stores each
block of a chunk as a zstd frame, or as it is if that is no shorter, or
in no bytes if it is all zeroes; the manifest has each block's stored
length, so a read of a few blocks fetches only their bytes.  Their sums
are of the stored bytes, checked before they are unpacked, in the thread
pool (s3chain-compress.c).  A QEMU without zstd refuses such an image.

A damaged image, an object missing or not matching its sums, is
reported with the marker "s3chain: damaged: " and the object, so that
tools can tell it from a failed transfer.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

ours block/s3chain.c block/s3chain-image.c block/s3chain-chunked.c \
    block/s3chain-writeback.c
glue header
glue build
glue trace
commit <<'MSG'
block/s3chain: write and create chunked images

Writes land in the buffer and are uploaded in the background, in
parallel, with Content-MD5, once the buffer passes a high water mark
(s3chain-writeback.c); flush uploads the rest and then the manifest, so
a crash leaves the last committed image intact, and close commits, since
with cache=unsafe the block layer never flushes.  All-zero chunks are
not stored; a small write to a stored chunk is uploaded as a patch of
its blocks.  Objects that a commit replaced are deleted after it.

A writable open takes a create-only lock object, KEY.lock, that keeps a
second writer out.  Migration hands the image over: the source commits
and releases the lock when it becomes inactive, and the destination
reads the image afresh and takes the lock when it becomes active.

blockdev-create and qemu-img create make an empty image, never
overwriting one, compressed with compress=zstd: its chunks then go up
packed at compress-level, whole, never as patches.  A scratch image lives in RAM, spills chunks to the
bucket only when its buffer is full, and is deleted at close: the
target of a copy-before-write filter, for instance.

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

glue iotests
commit <<'MSG'
iotests: add an -s3chain protocol

./check -s3chain runs the generic tests with their images in a bucket,
as -nbd and -ssh run them over those protocols: TEST_IMG is an
s3chain:// filename on the S3 server that the env file named by
S3CHAIN_TEST_ENV describes, keyed by the image's path in TEST_DIR, and
every tool gets the secret key as a secret object read from a 0600
file.  s3chain never overwrites an image, so _make_test_img deletes the
one it replaces, and cleanup deletes the test's keys.  The filters
treat the bucket's TEST_DIR as TEST_DIR.

Python tests keep their images in local files whatever the protocol, so
over s3chain only those that name the protocol run.

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

glue docs
commit <<'MSG'
docs: describe the s3chain block driver

Signed-off-by: s3chain authors <s3chain@localhost>
MSG

# every file of ours is in the series as it is here (the AWS suite's
# vectors are Apache-2.0: they stay out)
for f in $(our_qemu_files | grep -v s3chain-sigv4-vectors.txt); do
    if ! cmp -s "$REPO/$f" "$f"; then
        echo "make-patches: $f is not in the series as it is in the repository; add it to a patch" >&2
        exit 1
    fi
done

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
