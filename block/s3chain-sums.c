/*
 * s3chain: the checksums of chunks and blocks
 *
 * An upload carries its MD5 as Content-MD5, which the server checks; a
 * load checks CRC-32s, four times cheaper than MD5, or the MD5 of a chunk
 * stored before manifests had CRC-32s.  A chunk's sums are computed in
 * the thread pool, so that hashing one chunk overlaps the transfer of
 * others instead of stalling the AioContext.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "crypto/hash.h"
#include "block/thread-pool.h"
#include <zlib.h>
#include "s3chain.h"

int s3chain_md5_of(const uint8_t *buf, size_t len, uint8_t *md5)
{
    g_autofree uint8_t *result = NULL;
    size_t result_len = 0;

    if (qcrypto_hash_bytes(QCRYPTO_HASH_ALGO_MD5, (const char *)buf, len,
                           &result, &result_len, NULL) < 0) {
        return -EIO;
    }
    memcpy(md5, result, 16);
    return 0;
}

typedef struct SumJob {
    const uint8_t *buf;
    size_t len;
    bool md5;
    bool crc32;
    size_t block_size;          /* with block_crcs: of its blocks */
    uint32_t *block_crcs;
    S3chainChunkRef *sums;
} SumJob;

static int sum_job_run(void *opaque)
{
    SumJob *job = opaque;
    uint32_t crc = 0;

    if (job->block_crcs) {
        for (size_t i = 0; i < job->len / job->block_size; i++) {
            job->block_crcs[i] = crc32_z(0, job->buf + i * job->block_size,
                                         job->block_size);
            if (job->crc32) {
                crc = crc32_combine(crc, job->block_crcs[i], job->block_size);
            }
        }
    } else if (job->crc32) {
        crc = crc32_z(0, job->buf, job->len);
    }
    if (job->crc32) {
        job->sums->crc32 = crc;
        job->sums->has_crc32 = true;
    }
    return job->md5 ? s3chain_md5_of(job->buf, job->len, job->sums->md5) : 0;
}

int coroutine_fn s3chain_co_sums_of(const uint8_t *buf, size_t len, bool md5,
                                    bool crc32, size_t block_size,
                                    uint32_t *block_crcs,
                                    S3chainChunkRef *sums)
{
    SumJob job = {
        .buf = buf, .len = len, .md5 = md5, .crc32 = crc32,
        .block_size = block_size, .block_crcs = block_crcs, .sums = sums,
    };

    return thread_pool_submit_co(sum_job_run, &job);
}

bool s3chain_block_sums_parse(const char *hex, const S3chainChunkRef *ref,
                              unsigned n, uint32_t *crcs)
{
    uint32_t lengths[S3CHAIN_MAX_BLOCKS];
    uint32_t whole = 0;

    if (!s3chain_words_from_hex(hex, n, crcs) ||
        (ref->stored_lengths &&
         !s3chain_words_from_hex(ref->stored_lengths, n, lengths))) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        whole = crc32_combine(whole, crcs[i], ref->stored_lengths ?
                                              lengths[i] : ref->block_size);
    }
    return whole == ref->crc32;
}
