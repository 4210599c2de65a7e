/*
 * s3chain: the blocks of compressed chunked images, packed and unpacked
 *
 * A compressed image (manifest version 6) stores each block of a chunk
 * as a zstd frame, one after the other in the chunk's object; a block
 * that does not get shorter is stored as it is, and an all-zero one not
 * at all.  The manifest has each block's stored length, so a read of a
 * few blocks still fetches only their bytes, and the sums are of the
 * stored bytes, checked before anything is unpacked.  Packing and
 * unpacking run in the thread pool, as the sums of uncompressed chunks
 * do, off the node's AioContext.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "block/thread-pool.h"
#include <zlib.h>
#ifdef CONFIG_ZSTD
#include <zstd.h>
#endif
#include "s3chain.h"

bool s3chain_compress_available(void)
{
#ifdef CONFIG_ZSTD
    return true;
#else
    return false;
#endif
}

typedef struct PackJob {
    const uint8_t *chunk;
    uint64_t chunk_size;
    uint64_t block_size;
    int level;
    uint8_t *out;               /* chunk_size bytes */
    S3chainPacked *packed;
} PackJob;

#ifdef CONFIG_ZSTD
/* Block @src into @dst, at most @len bytes: its stored length */
static size_t pack_block(ZSTD_CCtx *cctx, int level, uint8_t *dst,
                         const uint8_t *src, size_t len)
{
    size_t ret;

    if (buffer_is_zero(src, len)) {
        return 0;
    }
    /* a frame as long as the block or longer is worth nothing */
    ret = ZSTD_compressCCtx(cctx, dst, len - 1, src, len, level);
    if (ZSTD_isError(ret)) {
        memcpy(dst, src, len);
        return len;
    }
    return ret;
}
#endif

static int pack_job_run(void *opaque)
{
#ifdef CONFIG_ZSTD
    PackJob *job = opaque;
    S3chainPacked *p = job->packed;
    unsigned n = job->chunk_size / job->block_size;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    uint32_t crc = 0;

    if (!cctx) {
        return -ENOMEM;
    }
    p->len = 0;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *at = job->out + p->len;

        p->lengths[i] = pack_block(cctx, job->level, at,
                                   job->chunk + i * job->block_size,
                                   job->block_size);
        p->block_crcs[i] = crc32_z(0, at, p->lengths[i]);
        crc = crc32_combine(crc, p->block_crcs[i], p->lengths[i]);
        p->len += p->lengths[i];
    }
    ZSTD_freeCCtx(cctx);
    p->crc32 = crc;
    return s3chain_md5_of(job->out, p->len, p->md5);
#else
    return -ENOTSUP;
#endif
}

int coroutine_fn s3chain_co_pack(const uint8_t *chunk, uint64_t chunk_size,
                                 uint64_t block_size, int level, uint8_t *out,
                                 S3chainPacked *packed)
{
    PackJob job = {
        .chunk = chunk, .chunk_size = chunk_size, .block_size = block_size,
        .level = level, .out = out, .packed = packed,
    };

    return thread_pool_submit_co(pack_job_run, &job);
}

typedef struct UnpackJob {
    const uint8_t *stored;
    const uint32_t *lengths;
    const uint32_t *crcs;
    unsigned count;
    uint64_t block_size;
    uint8_t *out;
    S3chainUnpackFault *fault;
} UnpackJob;

static int unpack_job_run(void *opaque)
{
#ifdef CONFIG_ZSTD
    UnpackJob *job = opaque;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    const uint8_t *at = job->stored;
    int ret = 0;

    if (!dctx) {
        return -ENOMEM;
    }
    for (unsigned i = 0; i < job->count && !ret; at += job->lengths[i++]) {
        uint8_t *dst = job->out + i * job->block_size;
        uint32_t len = job->lengths[i];

        if (crc32_z(0, at, len) != job->crcs[i]) {
            *job->fault = (S3chainUnpackFault) { i, false };
            ret = -EIO;
        } else if (!len) {
            memset(dst, 0, job->block_size);
        } else if (len == job->block_size) {
            memcpy(dst, at, len);
        } else if (ZSTD_decompressDCtx(dctx, dst, job->block_size, at, len) !=
                   job->block_size) {
            *job->fault = (S3chainUnpackFault) { i, true };
            ret = -EIO;
        }
    }
    ZSTD_freeDCtx(dctx);
    return ret;
#else
    return -ENOTSUP;
#endif
}

int coroutine_fn s3chain_co_unpack(const uint8_t *stored,
                                   const uint32_t *lengths,
                                   const uint32_t *crcs, unsigned count,
                                   uint64_t block_size, uint8_t *out,
                                   S3chainUnpackFault *fault)
{
    UnpackJob job = {
        .stored = stored, .lengths = lengths, .crcs = crcs, .count = count,
        .block_size = block_size, .out = out, .fault = fault,
    };

    return thread_pool_submit_co(unpack_job_run, &job);
}
