/*
 * s3chain: images stored as one object, read-only
 *
 * A raw or qcow2 image uploaded as one object is read through the same
 * buffer as a chunked image: its chunks are ranges of the object, of
 * request-size bytes, loaded with ranged GETs pinned to the ETag that
 * the open saw, so that an object replaced meanwhile fails the read
 * rather than mixing two images.  There are no sums to check: the
 * object is whatever was uploaded.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "s3chain.h"
#include "trace.h"

/* Every chunk of the object holds bytes, zeroes or not */
static bool object_stored(S3chainImage *img, uint64_t index)
{
    return true;
}

/* The blocks of chunk @index that the object has bytes for */
static uint64_t object_blocks(S3chainImage *img, uint64_t index)
{
    uint64_t start = index * chunk_size(img);

    return s3chain_blocks_of(img->block_size, 0,
                             MIN(chunk_size(img), s3chain_image_size(img) -
                                                  start));
}

/* Nothing lies past the object's end to load */
static uint64_t object_loads_with(S3chainImage *img, uint64_t index,
                                  uint64_t need)
{
    return need & object_blocks(img, index);
}

/* A ranged GET per run of blocks, the object's last one ending early */
static uint64_t object_plan_load(S3chainImage *img, CachedChunk *c,
                                 uint64_t todo, S3chainLoad *load)
{
    uint64_t start = c->index * chunk_size(img);

    todo = s3chain_image_bridge_gaps(img, todo, ~(c->valid | c->loading)) &
           object_blocks(img, c->index);
    for (uint64_t rest = todo; rest; load->n_runs++) {
        S3chainBlockRun *run = &load->runs[load->n_runs];

        run->first = ctz64(rest);
        run->count = cto64(rest >> run->first);
        rest &= ~MAKE_64BIT_MASK(run->first, run->count);
        run->key = g_strdup(img->key);
        run->req = (S3chainRequest) {
            .range_offset = start + run->first * img->block_size,
            .range_bytes = run->count * img->block_size,
            .may_end_early = true,
            .if_match = img->etag,
        };
    }
    return todo;
}

static int coroutine_fn object_check_run(S3chainImage *img, S3chainLoad *load,
                                         S3chainBlockRun *run, bool report)
{
    S3chainRequest *req = &run->req;

    if (req->ret < 0) {
        trace_s3chain_read_error(img->key, req->range_offset, req->range_bytes,
                                 req->ret, req->error_text);
        if (report && req->ret != -ECANCELED) {
            error_report("s3chain: read of s3://%s/%s bytes %" PRIu64 "-%"
                         PRIu64 " failed: %s", bucket(img), img->key,
                         req->range_offset,
                         req->range_offset + req->range_bytes - 1,
                         req->error_text ?: strerror(-req->ret));
        }
    }
    return req->ret;
}

static uint64_t object_stored_bytes(S3chainImage *img)
{
    return s3chain_image_size(img);
}

static const S3chainImageKind object_kind = {
    .name = "an image stored as one object",
    .read_only = true,
    .stored = object_stored,
    .loads_with = object_loads_with,
    .plan_load = object_plan_load,
    .check_run = object_check_run,
    .stored_bytes = object_stored_bytes,
};

S3chainImage *s3chain_object_open(BlockDriverState *bs, S3chainConn *conn,
                                  const S3chainImageOpen *how,
                                  uint64_t request_size)
{
    uint64_t piece = MIN(MAX(pow2ceil(request_size), S3CHAIN_MIN_CHUNK_SIZE),
                         S3CHAIN_MAX_CHUNK_SIZE);
    S3chainImageOpen object = *how;

    /*
     * Nothing in the buffer is ever dirty: it holds what is read ahead,
     * and the chunks of the requests in flight
     */
    object.writable = false;
    object.buffer_size = how->readahead +
                         s3chain_conn_settings(conn)->max_requests * piece;
    return s3chain_image_new(bs, conn, &object_kind, &object,
                             s3chain_manifest_new(how->object_bytes, piece));
}
