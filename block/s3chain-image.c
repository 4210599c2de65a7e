/*
 * s3chain: chunked images, writable, with a bounded write-back buffer
 *
 * The image is cut into chunks of chunk-size bytes (see
 * s3chain-manifest.c for the objects).  Writes land in chunk buffers in
 * RAM and are acknowledged from there; a flush uploads the dirty chunks,
 * each as a new object with Content-MD5, and then the manifest, which is
 * the commit point.  When the buffer is full, the least recently used
 * dirty chunk is uploaded early to make room: it only becomes part of the
 * image with the next manifest.  All-zero chunks are never stored.
 *
 * A small random read, of at most one block (see s3chain_block_size()),
 * loads only the blocks it needs with a ranged GET: a chunk's object
 * carries the CRC-32 of each block, which together must make up the
 * chunk's CRC-32 in the manifest.  Other reads load whole chunks, and a
 * sequential reader makes whole chunks ahead of it load in the
 * background, up to readahead bytes but at most an eighth of the buffer,
 * in the room the buffer has free.  With a read plan (s3chain-plan.c),
 * a read that the plan foresaw loads the blocks that the plan has for
 * its chunk, and other reads load just their blocks.
 * A write of part of a stored chunk loads only the blocks it does not
 * cover whole.  Its upload is a patch, an object with just the blocks
 * written, while the chunk's patches stay few and small (see
 * patch_blocks()); else the whole chunk goes up again.  Rewriting a
 * scattered few clusters of a large image, as a merge of backups does,
 * then moves about what was written rather than every chunk touched.
 * A chunk's sums are computed in the thread pool, so that hashing one
 * chunk overlaps the transfer of others instead of stalling the
 * AioContext.  An upload carries its MD5 as Content-MD5, which the server
 * checks; a load checks CRC-32s, four times cheaper than MD5, or the MD5
 * of a chunk stored before manifests had CRC-32s.  Chunks stored before
 * their objects had block sums load whole.
 *
 * One writer at a time: a writable open creates KEY.lock with a
 * create-only PUT, and close deletes it.
 *
 * A scratch image (s3chain_image_new_scratch()) is the same buffer with
 * nothing behind it at first: it lives in RAM, is never committed, and
 * spills chunks to the bucket only when its buffer is full; closing it
 * deletes what it spilled.  A discard of a whole chunk frees its buffer.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/memalign.h"
#include "crypto/hash.h"
#include "block/thread-pool.h"
#include <zlib.h>
#include "s3chain.h"
#include "trace.h"

typedef enum ChunkState {
    CHUNK_CLEAN,
    CHUNK_DIRTY,
    CHUNK_UPLOADING,
} ChunkState;

typedef struct CachedChunk {
    S3chainImage *img;
    uint64_t index;
    uint8_t *buf;
    ChunkState state;
    uint64_t valid;             /* blocks loaded, a bit each */
    uint64_t loading;           /* blocks on their way */
    int ret;                    /* of a load; a failed chunk is dropped */
    uint64_t consumed;          /* bytes read from it since it loaded */
    unsigned users;
    uint64_t written;           /* blocks written whole since loaded */
    uint64_t dirty;             /* blocks written since its last upload */
    bool hot;                   /* rewritten since its upload: kept */
    CoQueue waiters;
    QTAILQ_ENTRY(CachedChunk) lru;
} CachedChunk;

struct S3chainImage {
    BlockDriverState *bs;
    S3chainConn *conn;
    char *key;
    char *lock_key;
    S3chainManifest *manifest;
    bool writable;
    bool scratch;               /* in RAM first, never committed */
    bool locked;
    bool manifest_dirty;
    uint64_t session;           /* generation this writer started at */
    uint64_t serial;            /* uploads made in this session */
    GPtrArray *superseded;      /* keys to delete after the next commit */
    uint64_t buffer_size;
    uint64_t readahead_chunks;
    uint64_t block_size;
    uint64_t *planned;          /* per chunk, blocks of the read plan */

    CoMutex lock;
    GHashTable *cache;          /* index -> CachedChunk */
    QTAILQ_HEAD(, CachedChunk) lru;
    uint64_t cached;
    unsigned hot;               /* chunks kept dirty until the commit */
    GPtrArray *spare;           /* buffers of dropped chunks, for reuse */
    S3chainStreak streak;
    CoQueue room;
    bool writing_back;          /* between the high and low water marks */
    unsigned uploading;         /* background uploads in flight */
    int write_back_error;       /* of the last background upload */
};

static uint64_t chunk_size(S3chainImage *img)
{
    return img->manifest->chunk_size;
}

static unsigned blocks_per_chunk(S3chainImage *img)
{
    return chunk_size(img) / img->block_size;
}

static uint64_t all_blocks(S3chainImage *img)
{
    return MAKE_64BIT_MASK(0, blocks_per_chunk(img));
}

/* The blocks of chunk @index that its reader will read, as far as known */
static uint64_t planned_blocks(S3chainImage *img, uint64_t index)
{
    return img->planned ? img->planned[index] : all_blocks(img);
}

/*
 * Whether stored chunk @ref can take a patch: its entry has the sums of
 * the image's blocks, which a patch replaces some of
 */
static bool takes_patches(S3chainImage *img, const S3chainChunkRef *ref)
{
    return ref && !img->scratch && ref->has_crc32 && ref->block_sums &&
           ref->block_size == img->block_size && blocks_per_chunk(img) > 1;
}

/*
 * The object of chunk @ref that holds block @block: its newest patch
 * holding it (its number), or its whole object (-1); *@offset is where
 * the block is in that object.
 */
static int block_source(const S3chainChunkRef *ref, unsigned block,
                        uint64_t block_size, uint64_t *offset)
{
    for (int i = ref->n_patches - 1; i >= 0; i--) {
        uint64_t held = ref->patches[i].blocks;

        if (held & BIT_ULL(block)) {
            *offset = ctpop64(held & (BIT_ULL(block) - 1)) * block_size;
            return i;
        }
    }
    *offset = block * block_size;
    return -1;
}

/* The tag of the newest object of chunk @ref */
static const char *newest_tag(const S3chainChunkRef *ref)
{
    return ref->n_patches ? ref->patches[ref->n_patches - 1].tag : ref->tag;
}

/*
 * @todo with the gaps between its runs that are at most
 * S3CHAIN_BRIDGED_GAP long, and @fillable, filled in
 */
static uint64_t bridge_gaps(S3chainImage *img, uint64_t todo,
                            uint64_t fillable)
{
    unsigned longest = S3CHAIN_BRIDGED_GAP / img->block_size;
    uint64_t bridged = todo;

    while (todo) {
        unsigned start = ctz64(todo);
        unsigned end = start + cto64(todo >> start);
        unsigned next;
        uint64_t gap;

        todo = end < 64 ? todo & ~MAKE_64BIT_MASK(0, end) : 0;
        if (!todo) {
            break;
        }
        next = ctz64(todo);
        gap = MAKE_64BIT_MASK(end, next - end);
        if (next - end <= longest && (gap & fillable) == gap) {
            bridged |= gap;
        }
    }
    return bridged;
}

static const char *bucket(S3chainImage *img)
{
    return s3chain_conn_settings(img->conn)->bucket;
}

static char *base64_md5(const uint8_t *md5)
{
    return g_base64_encode(md5, 16);
}

static int md5_of(const uint8_t *buf, size_t len, uint8_t *md5)
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
    return job->md5 ? md5_of(job->buf, job->len, job->sums->md5) : 0;
}

/*
 * Puts the MD5 and/or the CRC-32 of @buf into @sums, and with
 * @block_crcs the CRC-32 of each of its blocks of @block_size there,
 * computed in a worker thread; @buf must not change until it returns.
 */
static int coroutine_fn co_sums_of(const uint8_t *buf, size_t len, bool md5,
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

static char *block_sums_hex(const uint32_t *crcs, unsigned n)
{
    GString *hex = g_string_sized_new(8 * n);

    for (unsigned i = 0; i < n; i++) {
        g_string_append_printf(hex, "%08" PRIx32, crcs[i]);
    }
    return g_string_free(hex, false);
}

/*
 * Reads @n block sums from @hex, as the manifest (or, from version 3
 * writers, S3CHAIN_BLOCK_SUMS_META) holds them; they must make up @ref's
 * CRC-32, which ties them to the chunk's whole sum.
 */
static bool parse_block_sums(const char *hex, const S3chainChunkRef *ref,
                             unsigned n, uint32_t *crcs)
{
    uint32_t whole = 0;

    if (!hex || strlen(hex) != 8 * n) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        char digits[9] = { 0 };

        memcpy(digits, hex + 8 * i, 8);
        if (!s3chain_crc32_from_hex(digits, &crcs[i])) {
            return false;
        }
        whole = crc32_combine(whole, crcs[i], ref->block_size);
    }
    return whole == ref->crc32;
}

/* What happened to @req, for a message that names the object */
static void report_request_error(S3chainImage *img, const char *what,
                                 const char *key, S3chainRequest *req)
{
    error_report("s3chain: %s s3://%s/%s failed: %s", what, bucket(img), key,
                 req->error_text ?: strerror(-req->ret));
}

static void chunk_free(CachedChunk *c)
{
    qemu_vfree(c->buf);
    g_free(c);
}

/*
 * Keeps the buffer of a dropped chunk for the next one while the buffer
 * setting allows: a fresh allocation of chunk-size bytes costs a page
 * fault per page, more than the copy that fills it.
 */
static void drop_chunk_locked(S3chainImage *img, CachedChunk *c)
{
    img->hot -= c->hot;
    QTAILQ_REMOVE(&img->lru, c, lru);
    g_hash_table_remove(img->cache, &c->index);
    img->cached -= chunk_size(img);
    if (img->cached + (img->spare->len + 1) * chunk_size(img) <=
        img->buffer_size) {
        g_ptr_array_add(img->spare, g_steal_pointer(&c->buf));
    }
    chunk_free(c);
    qemu_co_queue_restart_all(&img->room);
}

static void release_locked(S3chainImage *img, CachedChunk *c)
{
    assert(c->users > 0);
    c->users--;
    if (!c->users) {
        if (c->ret < 0) {
            drop_chunk_locked(img, c);
        } else {
            qemu_co_queue_restart_all(&img->room);
        }
    }
}

/* The patches of chunk @index, stored as @ref, are no longer the image's */
static void supersede_patches_locked(S3chainImage *img, uint64_t index,
                                     const S3chainChunkRef *ref)
{
    for (unsigned i = 0; i < ref->n_patches; i++) {
        g_ptr_array_add(img->superseded, s3chain_chunk_key(
                            img->key, index, ref->patches[i].tag));
    }
}

/* The committed objects of chunk @index are no longer the image's */
static void supersede_locked(S3chainImage *img, uint64_t index)
{
    S3chainChunkRef *ref = s3chain_manifest_lookup(img->manifest, index);

    if (ref) {
        g_ptr_array_add(img->superseded,
                        s3chain_chunk_key(img->key, index, ref->tag));
        supersede_patches_locked(img, index, ref);
        s3chain_manifest_remove(img->manifest, index);
    }
    img->manifest_dirty = true;
}

static int coroutine_fn ensure_blocks_locked(S3chainImage *img,
                                             CachedChunk *c, uint64_t need);

typedef struct Upload {
    CachedChunk *chunk;
    uint64_t patch;             /* blocks of a patch; 0: the whole chunk */
    bool replaces;              /* the patch takes the place of the others */
    uint8_t *body;              /* what goes up */
    size_t len;
    uint8_t *packed;            /* a patch's blocks, one after the other */
    char *tag;
    char *key;
    char *md5_b64;
    uint32_t block_crcs[S3CHAIN_MAX_BLOCKS];  /* of what goes up */
    uint32_t stored_sums[S3CHAIN_MAX_BLOCKS]; /* a patch's chunk's, before */
    S3chainChunkRef sums;
    S3chainRequest req;
} Upload;

/*
 * The blocks of dirty chunk @c to upload as a patch over @ref, as it is
 * stored, or 0 to upload it whole; *@replaces says that the patch also
 * holds the blocks of the chunk's patches, and takes their place, and
 * @sums receive the block sums of @ref, which the patch updates.  A
 * chunk keeps at most S3CHAIN_MAX_PATCHES patches holding at most half
 * its blocks in all: a read of it costs a few more requests at most,
 * and the bucket holds at most half a chunk more than its bytes.
 */
static uint64_t patch_blocks(S3chainImage *img, CachedChunk *c,
                             const S3chainChunkRef *ref, bool *replaces,
                             uint32_t *sums)
{
    unsigned half = blocks_per_chunk(img) / 2;
    uint64_t patched = 0;
    unsigned held = 0;

    *replaces = false;
    if (!takes_patches(img, ref) ||
        !parse_block_sums(ref->block_sums, ref, blocks_per_chunk(img),
                          sums)) {
        return 0;
    }
    for (unsigned i = 0; i < ref->n_patches; i++) {
        patched |= ref->patches[i].blocks;
        held += ctpop64(ref->patches[i].blocks);
    }
    if (ref->n_patches < S3CHAIN_MAX_PATCHES &&
        held + ctpop64(c->dirty) <= half) {
        return c->dirty;
    }
    *replaces = true;
    return ctpop64(patched | c->dirty) <= half ? patched | c->dirty : 0;
}

/*
 * Decides how pinned dirty chunk @c goes up, into @u, and loads what
 * that needs; it ends uploading.  Called and returns with img->lock
 * held, which loading drops: writers wait for a chunk that loads or
 * uploads, so what is decided holds.
 */
static int coroutine_fn prepare_upload_locked(S3chainImage *img,
                                              CachedChunk *c, Upload *u)
{
    for (;;) {
        S3chainChunkRef *ref = s3chain_manifest_lookup(img->manifest,
                                                       c->index);
        uint64_t need;
        int ret;

        u->patch = patch_blocks(img, c, ref, &u->replaces,
                                u->stored_sums);
        need = u->patch ?: all_blocks(img);
        if (!(need & ~c->valid)) {
            break;
        }
        ret = ensure_blocks_locked(img, c, need);
        if (ret < 0) {
            return ret;
        }
    }
    c->state = CHUNK_UPLOADING;
    u->chunk = c;
    if (!u->patch) {
        u->body = c->buf;
        u->len = chunk_size(img);
        return 0;
    }
    u->len = ctpop64(u->patch) * img->block_size;
    u->body = u->packed = g_malloc(u->len);
    for (uint64_t rest = u->patch, at = 0; rest; rest &= rest - 1) {
        memcpy(u->packed + at, c->buf + ctz64(rest) * img->block_size,
               img->block_size);
        at += img->block_size;
    }
    return 0;
}

/*
 * The entry of chunk @index once patch @u is stored: its blocks' sums
 * and the chunk's CRC-32 as the patch makes them
 */
static void add_patch_locked(S3chainImage *img, uint64_t index, Upload *u)
{
    /* the chunk uploaded, so nothing changed its entry meanwhile */
    S3chainChunkRef *stored = s3chain_manifest_lookup(img->manifest, index);
    S3chainChunkRef ref;
    uint32_t *sums = u->stored_sums;
    unsigned n = blocks_per_chunk(img), k = 0;
    S3chainPatchRef *patch;

    assert(stored);
    s3chain_chunk_ref_copy(&ref, stored);
    if (u->replaces) {
        supersede_patches_locked(img, index, &ref);
        for (unsigned i = 0; i < ref.n_patches; i++) {
            g_free(ref.patches[i].tag);
        }
        ref.n_patches = 0;
    }
    assert(ref.n_patches < S3CHAIN_MAX_PATCHES);
    patch = &ref.patches[ref.n_patches++];
    patch->tag = g_strdup(u->tag);
    memcpy(patch->md5, u->sums.md5, sizeof(patch->md5));
    patch->blocks = u->patch;
    ref.crc32 = 0;
    for (unsigned i = 0; i < n; i++) {
        if (u->patch & BIT_ULL(i)) {
            sums[i] = u->block_crcs[k++];
        }
        ref.crc32 = crc32_combine(ref.crc32, sums[i], img->block_size);
    }
    g_free(ref.block_sums);
    ref.block_sums = block_sums_hex(sums, n);
    s3chain_manifest_set(img->manifest, index, &ref);
    s3chain_chunk_ref_clear(&ref);
    img->manifest_dirty = true;
}

/*
 * Uploads @chunks (dirty, pinned by the caller) in parallel.  Called and
 * returns with img->lock held; drops it while the chunks are hashed and
 * sent, which writers wait out since the chunks are uploading.  Each chunk
 * ends clean, or dirty again if its upload failed.
 */
static int coroutine_fn write_back_locked(S3chainImage *img,
                                          CachedChunk **chunks, size_t n)
{
    g_autofree Upload *uploads = g_new0(Upload, n);
    S3chainWaiter waiter = { 0 };
    bool sent = false;
    int ret = 0;

    for (size_t i = 0; i < n; i++) {
        CachedChunk *c = chunks[i];
        Upload *u = &uploads[i];
        int err;

        if (c->valid == all_blocks(img) &&
            buffer_is_zero(c->buf, chunk_size(img))) {
            supersede_locked(img, c->index);
            c->state = CHUNK_CLEAN;
            c->dirty = 0;
            continue;
        }
        err = prepare_upload_locked(img, c, u);
        if (err < 0) {
            c->state = CHUNK_DIRTY;
            ret = ret ? ret : err;
            continue;
        }
        u->tag = g_strdup_printf("%" PRIx64 ".%" PRIx64, img->session,
                                 ++img->serial);
        u->key = s3chain_chunk_key(img->key, c->index, u->tag);
    }

    qemu_co_mutex_unlock(&img->lock);
    /* Each chunk is hashed while those before it are on the wire */
    for (size_t i = 0; i < n; i++) {
        Upload *u = &uploads[i];

        if (!u->key) {
            continue;
        }
        u->req.ret = co_sums_of(u->body, u->len, true, !u->patch,
                                img->block_size, u->block_crcs, &u->sums);
        if (u->req.ret < 0) {
            continue;
        }
        u->sums.block_size = img->block_size;
        u->md5_b64 = base64_md5(u->sums.md5);
        if (!u->patch) {
            u->sums.block_sums = block_sums_hex(u->block_crcs,
                                                blocks_per_chunk(img));
        }
        u->req = (S3chainRequest) {
            .method = "PUT",
            .key = u->key,
            .body = u->body,
            .body_len = u->len,
            .content_md5 = u->md5_b64,
            .waiter = &waiter,
        };
        if (u->patch) {
            trace_s3chain_upload_patch(img->key, u->chunk->index, u->tag,
                                       u->patch);
        } else {
            trace_s3chain_upload_chunk(img->key, u->chunk->index, u->tag);
        }
        s3chain_request_submit(img->conn, &u->req);
        sent = true;
    }
    if (sent) {
        s3chain_co_wait(img->conn, &waiter);
    }
    qemu_co_mutex_lock(&img->lock);

    for (size_t i = 0; i < n; i++) {
        Upload *u = &uploads[i];

        if (u->key) {
            if (u->req.ret < 0) {
                if (u->req.ret != -ECANCELED) {
                    report_request_error(img, "upload of", u->key, &u->req);
                }
                u->chunk->state = CHUNK_DIRTY;
                ret = ret ? ret : u->req.ret;
            } else {
                if (u->patch) {
                    add_patch_locked(img, u->chunk->index, u);
                } else {
                    supersede_locked(img, u->chunk->index);
                    u->sums.tag = u->tag;
                    s3chain_manifest_set(img->manifest, u->chunk->index,
                                         &u->sums);
                }
                u->chunk->state = CHUNK_CLEAN;
                u->chunk->dirty = 0;
            }
            qemu_co_queue_restart_all(&u->chunk->waiters);
            s3chain_request_cleanup(&u->req);
        }
        g_free(u->packed);
        g_free(u->tag);
        g_free(u->key);
        g_free(u->md5_b64);
        g_free(u->sums.block_sums);
    }
    return ret;
}

static void maybe_write_back_locked(S3chainImage *img);

/* Whether a sequential reader, or the one a plan foresaw, is done with @c */
static bool read_through(S3chainImage *img, CachedChunk *c)
{
    uint64_t expected = img->planned ?
        ctpop64(img->planned[c->index]) * img->block_size : chunk_size(img);

    return c->consumed >= MIN(expected, img->manifest->size -
                                        c->index * chunk_size(img));
}

/*
 * A clean chunk that nobody uses, to drop: one read through if there is
 * one, since a sequential reader does not come back, else unless
 * @only_read_through the least recently used.
 */
static CachedChunk *droppable_locked(S3chainImage *img,
                                     bool only_read_through)
{
    CachedChunk *c, *victim = NULL;

    QTAILQ_FOREACH(c, &img->lru, lru) {
        if (c->state != CHUNK_CLEAN || c->users) {
            continue;
        }
        if (read_through(img, c)) {
            return c;
        }
        if (!victim && !only_read_through) {
            victim = c;
        }
    }
    return victim;
}

/*
 * Makes room for one more chunk in the buffer: drops a clean chunk, or
 * waits for the background uploads to clean some.
 */
static int coroutine_fn make_room_locked(S3chainImage *img)
{
    while (img->cached + chunk_size(img) > img->buffer_size) {
        CachedChunk *c = droppable_locked(img, false);
        int ret;

        if (c) {
            drop_chunk_locked(img, c);
            continue;
        }
        if (img->write_back_error) {
            ret = img->write_back_error;
            img->write_back_error = 0;
            return ret;
        }
        img->writing_back = true;
        maybe_write_back_locked(img);
        trace_s3chain_buffer_full(img->key, img->uploading);
        qemu_co_queue_wait(&img->room, &img->lock);
    }
    return 0;
}

/* Blocks of a chunk in one of its objects, loaded by one ranged GET */
typedef struct BlockRun {
    const char *key;            /* the object */
    uint64_t first;             /* block */
    uint64_t count;
    QEMUIOVector qiov;
    S3chainRequest req;
} BlockRun;

/*
 * Whether @run of chunk @c, just loaded, holds what @ref says: a whole
 * chunk is checked against the manifest's sum, part of one against the
 * block sums of the manifest (or, stored by a version 3 writer, those
 * that came with it), themselves checked against that sum.
 */
static bool coroutine_fn run_is_intact(S3chainImage *img, CachedChunk *c,
                                       const S3chainChunkRef *ref,
                                       BlockRun *run)
{
    uint8_t *start = c->buf + run->first * img->block_size;
    uint64_t len = run->count * img->block_size;
    uint32_t want[S3CHAIN_MAX_BLOCKS], got_blocks[S3CHAIN_MAX_BLOCKS];
    S3chainChunkRef got = { 0 };

    if (len == chunk_size(img)) {
        return co_sums_of(start, len, !ref->has_crc32, ref->has_crc32, 0,
                          NULL, &got) == 0 &&
               (ref->has_crc32 ? got.crc32 == ref->crc32
                               : !memcmp(ref->md5, got.md5, sizeof(got.md5)));
    }
    return parse_block_sums(ref->block_sums ?: run->req.block_sums_received,
                            ref, blocks_per_chunk(img), want) &&
           co_sums_of(start, len, false, false, img->block_size, got_blocks,
                      &got) == 0 &&
           !memcmp(want + run->first, got_blocks,
                   run->count * sizeof(uint32_t));
}

/*
 * Loads blocks @todo of pinned chunk @c, stored as @ref: a ranged GET per
 * run of blocks in one of its objects, all in parallel.  Called and
 * returns with img->lock held; the blocks are marked loading meanwhile.
 * A failure spoils a clean chunk, but not one holding what was written.
 */
static int coroutine_fn load_blocks_locked(S3chainImage *img, CachedChunk *c,
                                           const S3chainChunkRef *ref,
                                           uint64_t todo)
{
    /* the whole object's, then each patch's */
    char *keys[1 + S3CHAIN_MAX_PATCHES];
    BlockRun runs[S3CHAIN_MAX_BLOCKS];
    S3chainWaiter waiter = { 0 };
    unsigned n = 0;
    int ret = 0;

    keys[0] = s3chain_chunk_key(img->key, c->index, ref->tag);
    for (unsigned i = 0; i < ref->n_patches; i++) {
        keys[1 + i] = s3chain_chunk_key(img->key, c->index,
                                        ref->patches[i].tag);
    }
    for (uint64_t rest = todo; rest; n++) {
        BlockRun *run = &runs[n];
        uint64_t at, next;
        int source;

        run->first = ctz64(rest);
        source = block_source(ref, run->first, img->block_size, &at);
        run->count = 1;
        while (run->first + run->count < 64 &&
               (rest & BIT_ULL(run->first + run->count)) &&
               block_source(ref, run->first + run->count, img->block_size,
                            &next) == source &&
               next == at + run->count * img->block_size) {
            run->count++;
        }
        rest &= ~MAKE_64BIT_MASK(run->first, run->count);
        run->key = keys[1 + source];
        qemu_iovec_init_buf(&run->qiov, c->buf + run->first * img->block_size,
                            run->count * img->block_size);
        run->req = (S3chainRequest) {
            .method = "GET",
            .key = run->key,
            .range_offset = at,
            .range_bytes = run->count * img->block_size,
            .qiov = &run->qiov,
            .waiter = &waiter,
        };
    }
    c->loading |= todo;
    qemu_co_mutex_unlock(&img->lock);
    for (unsigned i = 0; i < n; i++) {
        s3chain_request_submit(img->conn, &runs[i].req);
    }
    s3chain_co_wait(img->conn, &waiter);
    for (unsigned i = 0; i < n; i++) {
        BlockRun *run = &runs[i];

        if (run->req.ret == -ENOENT) {
            /* the committed manifest names it: it was there */
            if (!ret) {
                error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s, which the "
                             "manifest names, is missing", bucket(img),
                             run->key);
            }
            ret = ret ? ret : -EIO;
        } else if (run->req.ret < 0) {
            if (!ret && run->req.ret != -ECANCELED) {
                report_request_error(img, "read of", run->key, &run->req);
            }
            ret = ret ? ret : run->req.ret;
        } else if (!ret && !run_is_intact(img, c, ref, run)) {
            trace_s3chain_chunk_corrupt(bucket(img), run->key);
            error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s does not match "
                         "its checksum in the manifest", bucket(img),
                         run->key);
            ret = -EIO;
        }
        s3chain_request_cleanup(&run->req);
    }
    for (unsigned i = 0; i <= ref->n_patches; i++) {
        g_free(keys[i]);
    }
    qemu_co_mutex_lock(&img->lock);
    c->loading &= ~todo;
    if (ret == 0) {
        c->valid |= todo;
    } else if (!c->dirty) {
        c->ret = ret;
    }
    qemu_co_queue_restart_all(&c->waiters);
    return ret;
}

/*
 * Makes blocks @need of pinned chunk @c valid: loads those no one is
 * loading yet, and waits for the others.  A chunk stored without block
 * sums loads whole.
 */
static int coroutine_fn ensure_blocks_locked(S3chainImage *img,
                                             CachedChunk *c, uint64_t need)
{
    S3chainChunkRef *stored = s3chain_manifest_lookup(img->manifest,
                                                      c->index);
    S3chainChunkRef ref;
    int ret = 0;

    if (!(need & ~c->valid)) {
        return c->ret;
    }
    /* only a chunk with an object has blocks that are not valid */
    assert(stored);
    /* a copy: a commit may replace the entry while the lock is dropped */
    s3chain_chunk_ref_copy(&ref, stored);
    if (ref.block_size != img->block_size || !ref.has_crc32) {
        need = all_blocks(img);
    }
    while (ret == 0 && c->ret == 0 && (need & ~c->valid)) {
        uint64_t todo = need & ~c->valid & ~c->loading;

        if (todo) {
            /* a gap's blocks may lie in other objects than its ends */
            if (!ref.n_patches) {
                todo = bridge_gaps(img, todo, ~(c->valid | c->loading));
            }
            ret = load_blocks_locked(img, c, &ref, todo);
        } else {
            qemu_co_queue_wait(&c->waiters, &img->lock);
        }
    }
    s3chain_chunk_ref_clear(&ref);
    return ret ?: c->ret;
}

/* Adds chunk @index to the buffer, pinned and empty, in room made */
static CachedChunk *new_chunk_locked(S3chainImage *img, uint64_t index)
{
    CachedChunk *c;
    uint8_t *buf;

    if (img->spare->len) {
        buf = g_ptr_array_steal_index_fast(img->spare, img->spare->len - 1);
    } else {
        buf = qemu_try_blockalign(img->bs, chunk_size(img));
        if (!buf) {
            return NULL;
        }
    }
    c = g_new0(CachedChunk, 1);
    c->img = img;
    c->index = index;
    c->buf = buf;
    c->state = CHUNK_CLEAN;
    c->users = 1;
    qemu_co_queue_init(&c->waiters);
    g_hash_table_insert(img->cache, &c->index, c);
    QTAILQ_INSERT_TAIL(&img->lru, c, lru);
    img->cached += chunk_size(img);
    return c;
}

static void coroutine_fn prefetch_entry(void *opaque)
{
    CachedChunk *c = opaque;
    S3chainImage *img = c->img;

    qemu_co_mutex_lock(&img->lock);
    ensure_blocks_locked(img, c, planned_blocks(img, c->index));
    release_locked(img, c);
    qemu_co_mutex_unlock(&img->lock);
    bdrv_dec_in_flight(img->bs);
}

/*
 * Whether the buffer has room for a chunk loaded ahead, made if need be
 * by dropping a clean chunk that was read through: a sequential reader
 * does not come back.  Read-ahead never waits for room, nor pushes out
 * what is dirty or still to be read.
 */
static bool room_ahead_locked(S3chainImage *img)
{
    CachedChunk *c;

    if (img->cached + chunk_size(img) <= img->buffer_size) {
        return true;
    }
    c = droppable_locked(img, true);
    if (c) {
        drop_chunk_locked(img, c);
    }
    return c != NULL;
}

/* Starts loading chunks @first to @last, while there is room for them */
static void read_ahead_locked(S3chainImage *img, uint64_t first,
                              uint64_t last)
{
    for (uint64_t index = first; index <= last; index++) {
        CachedChunk *c;

        if (g_hash_table_contains(img->cache, &index) ||
            !s3chain_manifest_lookup(img->manifest, index) ||
            !planned_blocks(img, index)) {
            continue;
        }
        if (!room_ahead_locked(img)) {
            return;
        }
        c = new_chunk_locked(img, index);
        if (!c) {
            return;
        }
        trace_s3chain_chunk_readahead(img->key, index);
        bdrv_inc_in_flight(img->bs);
        aio_co_enter(bdrv_get_aio_context(img->bs),
                     qemu_coroutine_create(prefetch_entry, c));
    }
}

/*
 * Returns chunk @index pinned, with blocks @need loaded.  With @for_write,
 * it is not being uploaded, and all of it is loaded unless it can take a
 * patch (@need are then the blocks the caller writes part of); with
 * @overwrite, the caller writes all of it, so nothing is loaded.
 */
static int coroutine_fn get_chunk_locked(S3chainImage *img, uint64_t index,
                                         bool for_write, bool overwrite,
                                         uint64_t need, CachedChunk **chunk)
{
    CachedChunk *c;
    int ret;

retry:
    c = g_hash_table_lookup(img->cache, &index);
    if (c) {
        c->users++;
    } else {
        ret = make_room_locked(img);
        if (ret < 0) {
            return ret;
        }
        if (g_hash_table_contains(img->cache, &index)) {
            /* someone loaded it while we made room */
            goto retry;
        }
        c = new_chunk_locked(img, index);
        if (!c) {
            return -ENOMEM;
        }
        if (overwrite || !s3chain_manifest_lookup(img->manifest, index)) {
            memset(c->buf, 0, chunk_size(img));
            c->valid = all_blocks(img);
        }
    }
    if (for_write && !overwrite &&
        !takes_patches(img, s3chain_manifest_lookup(img->manifest, index))) {
        need = all_blocks(img);
    }
    ret = ensure_blocks_locked(img, c, need);
    /* a load in flight would land on what the caller writes */
    while (ret == 0 && for_write &&
           (c->state == CHUNK_UPLOADING || c->loading)) {
        qemu_co_queue_wait(&c->waiters, &img->lock);
        ret = c->ret;
    }
    if (ret < 0) {
        release_locked(img, c);
        return ret;
    }
    if (overwrite) {
        c->valid = all_blocks(img);
    }
    QTAILQ_REMOVE(&img->lru, c, lru);
    QTAILQ_INSERT_TAIL(&img->lru, c, lru);
    *chunk = c;
    return 0;
}

/*
 * The blocks of chunk @index to load for a read of @bytes at @in_chunk:
 * with a plan, those it has for the chunk if it foresaw the read.
 */
static uint64_t blocks_to_load(S3chainImage *img, uint64_t index,
                               uint64_t in_chunk, uint64_t bytes, bool whole)
{
    uint64_t need = s3chain_blocks_of(img->block_size, in_chunk, bytes);

    if (!img->planned) {
        return whole ? all_blocks(img) : need;
    }
    return need & img->planned[index] ? need | img->planned[index] : need;
}

int coroutine_fn s3chain_image_co_preadv(S3chainImage *img, uint64_t offset,
                                         uint64_t bytes, QEMUIOVector *qiov)
{
    uint64_t done = 0;
    bool sequential, whole;
    int ret = 0;

    bytes = offset < img->manifest->size ?
            MIN(bytes, img->manifest->size - offset) : 0;
    if (!bytes) {
        return 0;
    }
    qemu_co_mutex_lock(&img->lock);
    sequential = s3chain_streak_note(&img->streak, offset, bytes,
                                     2 * chunk_size(img), chunk_size(img) / 4);
    if (sequential && img->readahead_chunks) {
        uint64_t first = offset / chunk_size(img);
        uint64_t last = DIV_ROUND_UP(img->manifest->size, chunk_size(img)) - 1;

        /* this read's own chunks first, so that they load in parallel */
        read_ahead_locked(img, first,
                          MIN(last, (offset + bytes - 1) / chunk_size(img) +
                                    img->readahead_chunks));
    }
    /*
     * A request costs the server as much as a few hundred KiB of transfer:
     * a read of more than a block loads whole chunks, the rest of which
     * its reader is likely to want (qemu-img convert reads a qcow2 in
     * pieces that are out of order but cover its chunks), and only a
     * small random one (qcow2 metadata, a guest's own I/O) loads just the
     * blocks it reads.
     */
    whole = sequential || bytes > img->block_size;
    while (done < bytes) {
        uint64_t pos = offset + done;
        uint64_t index = pos / chunk_size(img);
        uint64_t in_chunk = pos % chunk_size(img);
        uint64_t n = MIN(bytes - done, chunk_size(img) - in_chunk);
        CachedChunk *c;

        if (!g_hash_table_contains(img->cache, &index) &&
            !s3chain_manifest_lookup(img->manifest, index)) {
            qemu_iovec_memset(qiov, done, 0, n);
        } else {
            ret = get_chunk_locked(img, index, false, false,
                                   blocks_to_load(img, index, in_chunk, n,
                                                  whole), &c);
            if (ret < 0) {
                break;
            }
            qemu_iovec_from_buf(qiov, done, c->buf + in_chunk, n);
            c->consumed += n;
            release_locked(img, c);
        }
        done += n;
    }
    qemu_co_mutex_unlock(&img->lock);
    return ret;
}

/* Dirty chunks that write-back may upload: not those kept until the commit */
static unsigned count_dirty_locked(S3chainImage *img)
{
    CachedChunk *c;
    unsigned n = 0;

    QTAILQ_FOREACH(c, &img->lru, lru) {
        n += c->state == CHUNK_DIRTY && !c->hot;
    }
    return n;
}

typedef struct UploadCo {
    S3chainImage *img;
    CachedChunk *chunk;
} UploadCo;

static void coroutine_fn upload_entry(void *opaque)
{
    UploadCo *uc = opaque;
    S3chainImage *img = uc->img;
    int ret;

    qemu_co_mutex_lock(&img->lock);
    ret = write_back_locked(img, &uc->chunk, 1);
    release_locked(img, uc->chunk);
    img->uploading--;
    if (ret < 0) {
        /* writers waiting for room get the error; nothing retries alone */
        img->write_back_error = ret;
        img->writing_back = false;
    }
    qemu_co_queue_restart_all(&img->room);
    maybe_write_back_locked(img);
    qemu_co_mutex_unlock(&img->lock);
    g_free(uc);
    bdrv_dec_in_flight(img->bs);
}

/*
 * The dirty chunk to upload next: the least recently written, but of the
 * max-requests most recent ones only those written whole.  A writer fills
 * a few chunks at once with requests that end out of order (a backup job
 * has many in flight), and a chunk uploaded before they all landed would
 * go up again, after a reload had the writer not been quick enough.
 * With nothing uploading, any will do: the buffer may be all recent.
 */
static CachedChunk *write_back_candidate_locked(S3chainImage *img)
{
    unsigned recent = s3chain_conn_settings(img->conn)->max_requests;
    CachedChunk *c, *old = NULL, *whole = NULL, *any = NULL;

    QTAILQ_FOREACH_REVERSE(c, &img->lru, lru) {
        if (c->state != CHUNK_DIRTY || c->hot) {
            continue;
        }
        if (!c->users) {
            any = c;
        }
        if (recent) {
            recent--;
            if (!c->users && c->written == all_blocks(img)) {
                whole = c;
            }
        } else if (!c->users) {
            old = c;
        }
    }
    return old ?: whole ?: (img->uploading ? NULL : any);
}

/*
 * Past half the buffer dirty, uploads the least recently written chunks
 * in the background, each in a coroutine of its own and up to
 * max-requests at once, until a quarter is left.  Writers keep filling
 * the rest meanwhile, so a stream of writes becomes a stream of parallel
 * uploads rather than one upload at a time when the buffer is full.
 */
static void maybe_write_back_locked(S3chainImage *img)
{
    /* the marks are of the room that chunks kept until the commit leave */
    unsigned chunks = img->buffer_size / chunk_size(img) - img->hot;
    unsigned dirty = count_dirty_locked(img);
    unsigned max = s3chain_conn_settings(img->conn)->max_requests;
    /* a scratch image spills only what does not fit */
    unsigned high = img->scratch ? chunks - 1 : chunks / 2;
    unsigned low = img->scratch ? chunks * 3 / 4 : chunks / 4;
    CachedChunk *c;

    if (dirty > high && !img->write_back_error) {
        img->writing_back = true;
    } else if (dirty <= low) {
        img->writing_back = false;
    }
    while (img->writing_back && img->uploading < max) {
        UploadCo *uc;

        c = write_back_candidate_locked(img);
        if (!c) {
            return;
        }
        /* claimed now: the coroutine runs later */
        c->users++;
        c->state = CHUNK_UPLOADING;
        img->uploading++;
        uc = g_new(UploadCo, 1);
        *uc = (UploadCo) { .img = img, .chunk = c };
        bdrv_inc_in_flight(img->bs);
        aio_co_enter(bdrv_get_aio_context(img->bs),
                     qemu_coroutine_create(upload_entry, uc));
    }
}

/* The blocks of a chunk that bytes @in_chunk to @in_chunk + @bytes cover */
static uint64_t whole_blocks(S3chainImage *img, uint64_t in_chunk,
                             uint64_t bytes)
{
    uint64_t first = DIV_ROUND_UP(in_chunk, img->block_size);
    uint64_t end = (in_chunk + bytes) / img->block_size;

    return end > first ? MAKE_64BIT_MASK(first, end - first) : 0;
}

/* Whether this writer has uploaded chunk @index: its tag is this session's */
static bool uploaded_this_session(S3chainImage *img, uint64_t index)
{
    S3chainChunkRef *ref = s3chain_manifest_lookup(img->manifest, index);

    return ref && g_ascii_strtoull(newest_tag(ref), NULL, 16) == img->session;
}

/*
 * Chunk @c, just written, stays in the buffer until the commit if it was
 * uploaded before in this session: a format's metadata (qcow2's header,
 * L1 and refcounts at the front) is rewritten over and over, and each
 * upload of it before the commit would be wasted, with a reload before
 * the next rewrite.  Up to a quarter of the buffer is kept so, the chunks
 * rewritten least recently giving way.
 */
static void keep_if_rewritten_locked(S3chainImage *img, CachedChunk *c)
{
    unsigned most = img->buffer_size / 4 / chunk_size(img);
    CachedChunk *old;

    if (!most || c->hot || img->scratch ||
        !uploaded_this_session(img, c->index)) {
        return;
    }
    if (img->hot >= most) {
        QTAILQ_FOREACH(old, &img->lru, lru) {
            if (old->hot) {
                old->hot = false;
                img->hot--;
                break;
            }
        }
    }
    c->hot = true;
    img->hot++;
}

/*
 * Writes @qiov at @offset, or zeroes if @qiov is NULL.  Like a file, the
 * image grows when written past its end (format drivers count on it).
 */
static int coroutine_fn write_locked(S3chainImage *img, uint64_t offset,
                                     uint64_t bytes, QEMUIOVector *qiov)
{
    uint64_t done = 0;

    if (offset + bytes > img->manifest->size) {
        img->manifest->size = offset + bytes;
        img->manifest_dirty = true;
    }

    while (done < bytes) {
        uint64_t pos = offset + done;
        uint64_t index = pos / chunk_size(img);
        uint64_t in_chunk = pos % chunk_size(img);
        uint64_t n = MIN(bytes - done, chunk_size(img) - in_chunk);
        bool whole = n == chunk_size(img);
        uint64_t touched = s3chain_blocks_of(img->block_size, in_chunk, n);
        uint64_t covered = whole_blocks(img, in_chunk, n);
        CachedChunk *c;
        int ret;

        c = g_hash_table_lookup(img->cache, &index);
        if (!qiov && whole && (!c || (!c->users &&
                                      c->state != CHUNK_UPLOADING))) {
            /* a whole chunk of zeroes is just no chunk */
            if (c) {
                drop_chunk_locked(img, c);
            }
            supersede_locked(img, index);
            done += n;
            continue;
        }
        /* the blocks written in part are loaded first */
        ret = get_chunk_locked(img, index, true, whole, touched & ~covered,
                               &c);
        if (ret < 0) {
            return ret;
        }
        if (qiov) {
            qemu_iovec_to_buf(qiov, done, c->buf + in_chunk, n);
        } else {
            memset(c->buf + in_chunk, 0, n);
        }
        c->written |= covered;
        c->dirty |= touched;
        c->valid |= touched;
        keep_if_rewritten_locked(img, c);
        c->state = CHUNK_DIRTY;
        release_locked(img, c);
        done += n;
    }
    maybe_write_back_locked(img);
    return 0;
}

int coroutine_fn s3chain_image_co_pwritev(S3chainImage *img, uint64_t offset,
                                          uint64_t bytes, QEMUIOVector *qiov)
{
    int ret;

    qemu_co_mutex_lock(&img->lock);
    ret = write_locked(img, offset, bytes, qiov);
    qemu_co_mutex_unlock(&img->lock);
    return ret;
}

static gboolean collect_dirty(gpointer key, gpointer value, gpointer opaque)
{
    CachedChunk *c = value;

    if (c->state == CHUNK_DIRTY) {
        c->users++;
        g_ptr_array_add(opaque, c);
    }
    return false;
}

/*
 * Puts @manifest as object @key, with Content-MD5 and the Content-Type
 * that marks it; with @create_only, only if @key does not exist.  The
 * caller cleans @req up and reads the outcome from it.
 */
static int coroutine_fn put_manifest(S3chainConn *conn, const char *key,
                                     const S3chainManifest *manifest,
                                     bool create_only, S3chainRequest *req)
{
    g_autofree char *json = s3chain_manifest_encode(manifest);
    g_autofree char *md5_b64 = NULL;
    uint8_t md5[16];

    if (md5_of((uint8_t *)json, strlen(json), md5) < 0) {
        req->ret = -EIO;
        return -EIO;
    }
    md5_b64 = base64_md5(md5);
    *req = (S3chainRequest) {
        .method = "PUT",
        .key = key,
        .body = json,
        .body_len = strlen(json),
        .content_md5 = md5_b64,
        .content_type = S3CHAIN_MANIFEST_TYPE,
        .if_none_match = create_only,
    };
    return s3chain_co_request(conn, req);
}

static int coroutine_fn put_manifest_locked(S3chainImage *img)
{
    S3chainRequest req = { 0 };
    int ret;

    img->manifest->generation++;
    trace_s3chain_commit(img->key, img->manifest->generation,
                         g_tree_nnodes(img->manifest->chunks));
    ret = put_manifest(img->conn, img->key, img->manifest, false, &req);
    if (ret < 0) {
        report_request_error(img, "commit of", img->key, &req);
        img->manifest->generation--;
    }
    s3chain_request_cleanup(&req);
    return ret;
}

/* Deletes what the last commit left unreferenced; failures leave garbage */
static void coroutine_fn delete_superseded_locked(S3chainImage *img)
{
    g_autoptr(GPtrArray) keys = g_steal_pointer(&img->superseded);
    g_autofree S3chainRequest *reqs = g_new0(S3chainRequest, keys->len);
    S3chainWaiter waiter = { 0 };

    img->superseded = g_ptr_array_new_with_free_func(g_free);
    if (!keys->len) {
        return;
    }
    for (guint i = 0; i < keys->len; i++) {
        reqs[i] = (S3chainRequest) {
            .method = "DELETE",
            .key = g_ptr_array_index(keys, i),
            .waiter = &waiter,
        };
        s3chain_request_submit(img->conn, &reqs[i]);
    }
    s3chain_co_wait(img->conn, &waiter);
    for (guint i = 0; i < keys->len; i++) {
        s3chain_request_cleanup(&reqs[i]);
    }
}

int coroutine_fn s3chain_image_co_flush(S3chainImage *img)
{
    g_autoptr(GPtrArray) dirty = g_ptr_array_new();
    int ret;

    if (!img->writable || img->scratch) {
        return 0;
    }
    qemu_co_mutex_lock(&img->lock);
    g_hash_table_foreach(img->cache, (GHFunc)collect_dirty, dirty);
    ret = write_back_locked(img, (CachedChunk **)dirty->pdata, dirty->len);
    for (guint i = 0; i < dirty->len; i++) {
        release_locked(img, g_ptr_array_index(dirty, i));
    }
    if (ret == 0 && img->manifest_dirty) {
        ret = put_manifest_locked(img);
        if (ret == 0) {
            img->manifest_dirty = false;
            delete_superseded_locked(img);
        }
    }
    qemu_co_mutex_unlock(&img->lock);
    return ret;
}

int coroutine_fn s3chain_image_co_truncate(S3chainImage *img, uint64_t size)
{
    uint64_t old_chunks, new_chunks;
    int ret = 0;

    qemu_co_mutex_lock(&img->lock);
    old_chunks = DIV_ROUND_UP(img->manifest->size, chunk_size(img));
    new_chunks = DIV_ROUND_UP(size, chunk_size(img));
    if (size < img->manifest->size) {
        /* what was past the new end must read as zeroes if it grows back */
        ret = write_locked(img, size, new_chunks * chunk_size(img) - size,
                           NULL);
        for (uint64_t i = new_chunks; ret == 0 && i < old_chunks; i++) {
            CachedChunk *c = g_hash_table_lookup(img->cache, &i);

            while (c && c->users) {
                qemu_co_queue_wait(&img->room, &img->lock);
                c = g_hash_table_lookup(img->cache, &i);
            }
            if (c) {
                drop_chunk_locked(img, c);
            }
            supersede_locked(img, i);
        }
    }
    if (ret == 0) {
        img->manifest->size = size;
        img->manifest_dirty = true;
    }
    qemu_co_mutex_unlock(&img->lock);
    return ret;
}

int coroutine_fn s3chain_image_co_block_status(S3chainImage *img,
                                               uint64_t offset,
                                               uint64_t bytes,
                                               int64_t *pnum)
{
    uint64_t index = offset / chunk_size(img);
    uint64_t end = MIN(offset + bytes, (index + 1) * chunk_size(img));
    bool data;

    qemu_co_mutex_lock(&img->lock);
    data = g_hash_table_contains(img->cache, &index) ||
           s3chain_manifest_lookup(img->manifest, index);
    qemu_co_mutex_unlock(&img->lock);
    *pnum = end - offset;
    return data ? BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID
                : BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
}

uint64_t s3chain_image_size(S3chainImage *img)
{
    return img->manifest->size;
}

uint64_t s3chain_image_stored_bytes(S3chainImage *img)
{
    return (uint64_t)g_tree_nnodes(img->manifest->chunks) * chunk_size(img);
}

/* Takes the writer's lock object; explains who holds it if it is taken */
static int coroutine_fn take_lock(S3chainImage *img, Error **errp)
{
    g_autofree char *host = g_strdup(g_get_host_name());
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *when = g_date_time_format_iso8601(now);
    g_autofree char *body = g_strdup_printf(
        "{\"host\": \"%s\", \"pid\": %d, \"since\": \"%s\"}\n", host,
        (int)getpid(), when);
    S3chainRequest req = {
        .method = "PUT",
        .key = img->lock_key,
        .body = body,
        .body_len = strlen(body),
        .if_none_match = true,
    };
    int ret = s3chain_co_request(img->conn, &req);

    if (ret == 0) {
        img->locked = true;
    } else if (req.status == 412) {
        error_setg(errp, "s3chain: s3://%s/%s is open for writing elsewhere "
                   "(s3://%s/%s exists); if that writer is gone, delete "
                   "that lock object and retry", bucket(img), img->key,
                   bucket(img), img->lock_key);
        ret = -EBUSY;
    } else if (req.status == 501) {
        /* The server has no conditional PUT: one writer is on trust */
        warn_report("s3chain: the server cannot create objects "
                    "conditionally; s3://%s/%s is not protected from a "
                    "second writer", bucket(img), img->key);
        ret = 0;
    } else {
        error_setg(errp, "s3chain: cannot lock s3://%s/%s for writing: %s",
                   bucket(img), img->key,
                   req.error_text ?: strerror(-ret));
    }
    s3chain_request_cleanup(&req);
    return ret;
}

static void coroutine_fn drop_lock(S3chainImage *img)
{
    S3chainRequest req = {
        .method = "DELETE",
        .key = img->lock_key,
    };

    if (!img->locked) {
        return;
    }
    if (s3chain_co_request(img->conn, &req) < 0) {
        report_request_error(img, "unlock of", img->lock_key, &req);
    }
    img->locked = false;
    s3chain_request_cleanup(&req);
}

static S3chainImage *image_new(BlockDriverState *bs, S3chainConn *conn,
                               const char *key, S3chainManifest *manifest,
                               bool writable, uint64_t buffer_size,
                               uint64_t readahead)
{
    S3chainImage *img = g_new0(S3chainImage, 1);

    img->bs = bs;
    img->conn = conn;
    img->key = g_strdup(key);
    img->lock_key = g_strconcat(key, ".lock", NULL);
    img->manifest = manifest;
    img->writable = writable;
    img->session = manifest->generation + 1;
    img->buffer_size = MAX(buffer_size, 2 * manifest->chunk_size);
    /*
     * Most of the buffer is for the chunks that the reader's own requests
     * in flight are reading: qemu-img convert -m 16 reads 32 MiB at once.
     * Beyond an eighth, chunks loaded ahead pushed out chunks still being
     * read, which then loaded twice (6% of a restore's GETs at a quarter).
     */
    img->readahead_chunks = MIN(readahead, img->buffer_size / 8) /
                            manifest->chunk_size;
    img->block_size = s3chain_block_size(manifest->chunk_size);
    img->spare = g_ptr_array_new_with_free_func(qemu_vfree);
    img->superseded = g_ptr_array_new_with_free_func(g_free);
    qemu_co_mutex_init(&img->lock);
    img->cache = g_hash_table_new(g_int64_hash, g_int64_equal);
    QTAILQ_INIT(&img->lru);
    qemu_co_queue_init(&img->room);
    return img;
}

static void image_free(S3chainImage *img)
{
    GHashTableIter iter;
    CachedChunk *c;

    g_hash_table_iter_init(&iter, img->cache);
    while (g_hash_table_iter_next(&iter, NULL, (gpointer *)&c)) {
        chunk_free(c);
    }
    g_hash_table_destroy(img->cache);
    g_ptr_array_unref(img->spare);
    g_ptr_array_unref(img->superseded);
    s3chain_manifest_free(img->manifest);
    g_free(img->planned);
    g_free(img->key);
    g_free(img->lock_key);
    g_free(img);
}

int coroutine_fn s3chain_image_co_open(BlockDriverState *bs,
                                       S3chainConn *conn, const char *key,
                                       uint64_t manifest_bytes,
                                       const char *etag, const char *head,
                                       uint64_t head_len, bool writable,
                                       uint64_t buffer_size,
                                       uint64_t readahead,
                                       S3chainImage **image, Error **errp)
{
    g_autofree char *json = g_malloc0(manifest_bytes + 1);
    S3chainManifest *manifest;
    S3chainImage *img;
    QEMUIOVector qiov;
    Error *local_err = NULL;
    /* the rest of the same manifest, not of one committed meanwhile */
    S3chainRequest req = {
        .method = "GET",
        .key = key,
        .range_offset = head_len,
        .range_bytes = manifest_bytes - head_len,
        .if_match = etag,
        .qiov = &qiov,
    };
    int ret = 0;

    memcpy(json, head, head_len);
    qemu_iovec_init_buf(&qiov, json + head_len, manifest_bytes - head_len);
    if (!manifest_bytes) {
        ret = -EINVAL;
    } else if (head_len < manifest_bytes) {
        ret = s3chain_co_request(conn, &req);
    }
    if (ret < 0) {
        error_setg(errp, "s3chain: cannot read the manifest s3://%s/%s: %s",
                   s3chain_conn_settings(conn)->bucket, key,
                   req.error_text ?: strerror(-ret));
        s3chain_request_cleanup(&req);
        return ret;
    }
    s3chain_request_cleanup(&req);

    manifest = s3chain_manifest_decode(json, &local_err);
    if (!manifest) {
        error_setg(errp, S3CHAIN_DAMAGED "manifest s3://%s/%s: %s",
                   s3chain_conn_settings(conn)->bucket, key,
                   error_get_pretty(local_err));
        error_free(local_err);
        return -EINVAL;
    }
    img = image_new(bs, conn, key, manifest, writable, buffer_size,
                    readahead);
    if (writable) {
        ret = take_lock(img, errp);
        if (ret < 0) {
            image_free(img);
            return ret;
        }
    }
    trace_s3chain_image_open(key, manifest->size, manifest->chunk_size,
                             manifest->generation, writable);
    *image = img;
    return 0;
}

int s3chain_image_plan_reads(S3chainImage *img, const char *text,
                             const char *path, Error **errp)
{
    uint64_t *planned = s3chain_read_plan_parse(text, path,
                                                img->manifest->size,
                                                chunk_size(img),
                                                img->block_size, errp);

    if (!planned) {
        return -EINVAL;
    }
    g_free(img->planned);
    img->planned = planned;
    return 0;
}

/* A scratch image's chunk in the bucket goes with the image */
static gboolean supersede_spilled(gpointer key, gpointer value,
                                  gpointer opaque)
{
    S3chainImage *img = opaque;
    const S3chainChunkRef *ref = value;

    g_ptr_array_add(img->superseded, s3chain_chunk_key(
                        img->key, *(uint64_t *)key, ref->tag));
    return false;
}

/*
 * Close commits: with cache=unsafe the block layer never flushes, and what
 * was written must still be in the image once it is closed.
 */
void coroutine_fn s3chain_image_co_close(S3chainImage *img)
{
    if (img->scratch) {
        qemu_co_mutex_lock(&img->lock);
        g_tree_foreach(img->manifest->chunks, supersede_spilled, img);
        delete_superseded_locked(img);
        qemu_co_mutex_unlock(&img->lock);
    } else if (img->writable && s3chain_image_co_flush(img) < 0) {
        error_report("s3chain: closing s3://%s/%s lost what was written "
                     "since its last commit (generation %" PRIu64 ")",
                     bucket(img), img->key, img->manifest->generation);
    }
    drop_lock(img);
    image_free(img);
}

S3chainImage *s3chain_image_new_scratch(BlockDriverState *bs,
                                        S3chainConn *conn, const char *key,
                                        uint64_t buffer_size)
{
    S3chainImage *img = image_new(bs, conn, key,
                                  s3chain_manifest_new(
                                      0, S3CHAIN_SCRATCH_CHUNK_SIZE),
                                  true, buffer_size, 0);

    img->scratch = true;
    return img;
}

int coroutine_fn s3chain_image_co_create(S3chainConn *conn, const char *key,
                                         uint64_t size, uint64_t chunk_size,
                                         Error **errp)
{
    g_autoptr(S3chainManifest) manifest = s3chain_manifest_new(size,
                                                               chunk_size);
    S3chainRequest req = { 0 };
    int ret;

    ret = put_manifest(conn, key, manifest, true, &req);
    if (req.status == 501) {
        /* no conditional PUT (OpenStack Swift's s3api): look, then put */
        s3chain_request_cleanup(&req);
        req = (S3chainRequest) { .method = "HEAD", .key = key };
        ret = s3chain_co_request(conn, &req);
        if (req.status == 404) {
            s3chain_request_cleanup(&req);
            ret = put_manifest(conn, key, manifest, false, &req);
        } else if (ret == 0) {
            req.status = 412;
        }
    }
    if (req.status == 412) {
        error_setg(errp, "s3chain: s3://%s/%s already exists; s3chain never "
                   "overwrites an image: delete it first, or choose another "
                   "key", s3chain_conn_settings(conn)->bucket, key);
        ret = -EEXIST;
    } else if (ret < 0) {
        error_setg(errp, "s3chain: cannot create s3://%s/%s: %s",
                   s3chain_conn_settings(conn)->bucket, key,
                   req.error_text ?: strerror(-ret));
    }
    s3chain_request_cleanup(&req);
    return ret;
}
