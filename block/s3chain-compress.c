/*
 * s3chain: the blocks of compressed and encrypted chunked images, packed
 * and unpacked
 *
 * A compressed image (manifest version 6) stores each block of a chunk
 * as a zstd frame, one after the other in the chunk's object; a block
 * that does not get shorter is stored as it is, and an all-zero one not
 * at all.  An encrypted image (version 7) seals each stored block,
 * compressed or not, with its own nonce and tag (s3chain-seal.c).  The
 * manifest has each block's stored length, so a read of a few blocks
 * still fetches only their bytes, and the sums are of the stored bytes,
 * checked before anything is opened or unpacked.  Packing and unpacking
 * run in the thread pool, as the sums of plain chunks do, off the node's
 * AioContext.
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
    int level;                  /* zstd's; 0: not compressed */
    const S3chainImageKeys *keys;   /* NULL: not sealed */
    uint64_t index;
    const char *tag;
    uint8_t *out;
    S3chainPacked *packed;
} PackJob;

#ifdef CONFIG_ZSTD
/* Compresses block @src into @dst, at most @len bytes: its length */
static size_t compress_block(ZSTD_CCtx *cctx, int level, uint8_t *dst,
                             const uint8_t *src, size_t len)
{
    /* a frame as long as the block or longer is worth nothing */
    size_t ret = ZSTD_compressCCtx(cctx, dst, len - 1, src, len, level);

    if (ZSTD_isError(ret)) {
        memcpy(dst, src, len);
        return len;
    }
    return ret;
}
#endif

/*
 * Block @i of @job's chunk as stored, into @at: nothing if all zeroes,
 * else compressed if that is shorter, then sealed; its length, or -1
 */
static ssize_t pack_block(PackJob *job, void *cctx, S3chainSealer *sealer,
                          uint8_t *frame, unsigned i, uint8_t *at)
{
    const uint8_t *src = job->chunk + i * job->block_size;
    size_t len = job->block_size;

    if (buffer_is_zero(src, len)) {
        return 0;
    }
#ifdef CONFIG_ZSTD
    if (job->level) {
        len = compress_block(cctx, job->level, sealer ? frame : at, src,
                             len);
        src = sealer ? frame : at;
    }
#endif
    if (!sealer) {
        if (src != at) {
            memcpy(at, src, len);
        }
        return len;
    }
    if (!s3chain_seal_block(sealer, job->index, job->tag, i, NULL, src, len,
                            at)) {
        return -1;
    }
    return len + S3CHAIN_SEAL_OVERHEAD;
}

static int pack_job_run(void *opaque)
{
    PackJob *job = opaque;
    S3chainPacked *p = job->packed;
    unsigned n = job->chunk_size / job->block_size;
    g_autofree uint8_t *frame = job->keys && job->level ?
                                g_malloc(job->block_size) : NULL;
    S3chainSealer *sealer = NULL;
    void *cctx = NULL;
    uint32_t crc = 0;
    int ret = 0;

#ifdef CONFIG_ZSTD
    cctx = job->level ? ZSTD_createCCtx() : NULL;
#endif
    sealer = job->keys ? s3chain_sealer_new(job->keys) : NULL;
    if ((job->level && !cctx) || (job->keys && !sealer)) {
        ret = -ENOMEM;
        goto out;
    }
    p->len = 0;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *at = job->out + p->len;
        ssize_t len = pack_block(job, cctx, sealer, frame, i, at);

        if (len < 0) {
            ret = -EIO;
            goto out;
        }
        p->lengths[i] = len;
        p->block_crcs[i] = crc32_z(0, at, len);
        crc = crc32_combine(crc, p->block_crcs[i], len);
        p->len += len;
    }
    p->crc32 = crc;
    ret = s3chain_md5_of(job->out, p->len, p->md5);
out:
#ifdef CONFIG_ZSTD
    ZSTD_freeCCtx(cctx);
#endif
    s3chain_sealer_free(sealer);
    return ret;
}

int coroutine_fn s3chain_co_pack(const uint8_t *chunk, uint64_t chunk_size,
                                 uint64_t block_size, int level,
                                 const S3chainImageKeys *keys, uint64_t index,
                                 const char *tag, uint8_t *out,
                                 S3chainPacked *packed)
{
    PackJob job = {
        .chunk = chunk, .chunk_size = chunk_size, .block_size = block_size,
        .level = level, .keys = keys, .index = index, .tag = tag,
        .out = out, .packed = packed,
    };

    return thread_pool_submit_co(pack_job_run, &job);
}

typedef struct UnpackJob {
    const uint8_t *stored;
    const uint32_t *lengths;
    const uint32_t *crcs;
    unsigned first;
    unsigned count;
    uint64_t block_size;
    const S3chainImageKeys *keys;
    uint64_t index;
    const char *tag;
    uint8_t *out;
    S3chainUnpackFault *fault;
} UnpackJob;

/*
 * Unpacks block @i of @job, stored in @len bytes at @at, into @dst: opens
 * its seal into @plain (a block's room) if it has one, then decompresses
 * it if it is shorter than a block
 */
static S3chainUnpackFaultKind unpack_block(UnpackJob *job, void *dctx,
                                           S3chainSealer *sealer,
                                           uint8_t *plain, unsigned i,
                                           const uint8_t *at, size_t len,
                                           uint8_t *dst)
{
    if (!len) {
        memset(dst, 0, job->block_size);
        return S3CHAIN_UNPACK_OK;
    }
    if (sealer) {
        len -= S3CHAIN_SEAL_OVERHEAD;
        if (!s3chain_open_block(sealer, job->index, job->tag, job->first + i,
                                at, len + S3CHAIN_SEAL_OVERHEAD,
                                len == job->block_size ? dst : plain)) {
            return S3CHAIN_UNPACK_SEAL;
        }
        at = len == job->block_size ? dst : plain;
    }
    if (len == job->block_size) {
        if (at != dst) {
            memcpy(dst, at, len);
        }
        return S3CHAIN_UNPACK_OK;
    }
#ifdef CONFIG_ZSTD
    if (ZSTD_decompressDCtx(dctx, dst, job->block_size, at, len) ==
        job->block_size) {
        return S3CHAIN_UNPACK_OK;
    }
#endif
    return S3CHAIN_UNPACK_FRAME;
}

static int unpack_job_run(void *opaque)
{
    UnpackJob *job = opaque;
    g_autofree uint8_t *plain = job->keys ? g_malloc(job->block_size) : NULL;
    S3chainSealer *sealer = NULL;
    const uint8_t *at = job->stored;
    void *dctx = NULL;
    int ret = 0;

#ifdef CONFIG_ZSTD
    dctx = ZSTD_createDCtx();
    if (!dctx) {
        ret = -ENOMEM;
        goto out;
    }
#endif
    sealer = job->keys ? s3chain_sealer_new(job->keys) : NULL;
    if (job->keys && !sealer) {
        ret = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < job->count && !ret; at += job->lengths[i++]) {
        S3chainUnpackFaultKind kind = S3CHAIN_UNPACK_SUM;

        if (crc32_z(0, at, job->lengths[i]) == job->crcs[i]) {
            kind = unpack_block(job, dctx, sealer, plain, i, at,
                                job->lengths[i],
                                job->out + i * job->block_size);
        }
        if (kind != S3CHAIN_UNPACK_OK) {
            *job->fault = (S3chainUnpackFault) { i, kind };
            ret = -EIO;
        }
    }
out:
#ifdef CONFIG_ZSTD
    ZSTD_freeDCtx(dctx);
#endif
    s3chain_sealer_free(sealer);
    return ret;
}

int coroutine_fn s3chain_co_unpack(const uint8_t *stored,
                                   const uint32_t *lengths,
                                   const uint32_t *crcs, unsigned first,
                                   unsigned count, uint64_t block_size,
                                   const S3chainImageKeys *keys,
                                   uint64_t index, const char *tag,
                                   uint8_t *out, S3chainUnpackFault *fault)
{
    UnpackJob job = {
        .stored = stored, .lengths = lengths, .crcs = crcs, .first = first,
        .count = count, .block_size = block_size, .keys = keys,
        .index = index, .tag = tag, .out = out, .fault = fault,
    };

    return thread_pool_submit_co(unpack_job_run, &job);
}
