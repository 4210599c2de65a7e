/*
 * s3chain: images, their buffer of chunks and reads
 *
 * An image is cut into chunks of chunk-size bytes, which the buffer
 * holds in RAM while they are read or written; s3chain-writeback.c
 * writes and commits.  Where a chunk's blocks are stored, and how what
 * loads is checked, is the image's kind: the objects of a chunked image
 * (s3chain-chunked.c), or ranges of an image stored as one object
 * (s3chain-object.c).  When the buffer is full, a clean chunk that
 * nobody uses is dropped, one read through first, or writers wait for
 * write-back.
 *
 * A small random read, of at most one block (see s3chain_block_size()),
 * loads only the blocks it needs, with a ranged GET per run of them.
 * Other reads load whole chunks, and a sequential reader makes whole
 * chunks ahead of it load in the background, up to readahead bytes, in
 * the room the buffer has free.  With a read plan (s3chain-plan.c), a
 * read that the plan foresaw loads the blocks that the plan has for its
 * chunk, and other reads load just their blocks.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/memalign.h"
#include "s3chain.h"
#include "trace.h"

/* Consecutive near-sequential reads before read-ahead starts */
#define SEQUENTIAL_STREAK 3

/*
 * Buffers kept for the stored bytes of packed chunks: about the loads in
 * flight of a sequential reader, or the uploads of a writer
 */
#define S3CHAIN_STAGING_KEPT 4

/* The blocks of chunk @index that its reader will read, as far as known */
static uint64_t planned_blocks(S3chainImage *img, uint64_t index)
{
    return img->planned ? img->planned[index] : all_blocks(img);
}

bool s3chain_image_takes_patches(S3chainImage *img, const S3chainChunkRef *ref)
{
    return ref && !img->scratch && !ref->stored_lengths && ref->has_crc32 &&
           ref->block_sums &&
           ref->block_size == img->block_size && blocks_per_chunk(img) > 1;
}

uint64_t s3chain_image_bridge_gaps(S3chainImage *img, uint64_t todo,
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

void s3chain_image_report_error(S3chainImage *img, const char *what,
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
void s3chain_image_drop_chunk_locked(S3chainImage *img, CachedChunk *c)
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

void s3chain_image_release_locked(S3chainImage *img, CachedChunk *c)
{
    assert(c->users > 0);
    c->users--;
    if (!c->users) {
        if (c->ret < 0) {
            s3chain_image_drop_chunk_locked(img, c);
        } else {
            qemu_co_queue_restart_all(&img->room);
        }
    }
}

void s3chain_image_supersede_patches_locked(S3chainImage *img, uint64_t index,
                                            const S3chainChunkRef *ref)
{
    for (unsigned i = 0; i < ref->n_patches; i++) {
        g_ptr_array_add(img->superseded, s3chain_chunk_key(
                            img->key, index, ref->patches[i].tag));
    }
}

void s3chain_image_supersede_locked(S3chainImage *img, uint64_t index)
{
    S3chainChunkRef *ref = s3chain_manifest_lookup(img->manifest, index);

    if (ref) {
        g_ptr_array_add(img->superseded,
                        s3chain_chunk_key(img->key, index, ref->tag));
        s3chain_image_supersede_patches_locked(img, index, ref);
        s3chain_manifest_remove(img->manifest, index);
    }
    img->manifest_dirty = true;
}

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
            s3chain_image_drop_chunk_locked(img, c);
            continue;
        }
        if (img->write_back_error) {
            ret = img->write_back_error;
            img->write_back_error = 0;
            return ret;
        }
        img->writing_back = true;
        s3chain_image_maybe_write_back_locked(img);
        trace_s3chain_buffer_full(img->key, img->uploading);
        qemu_co_queue_wait(&img->room, &img->lock);
    }
    return 0;
}

/*
 * Loads blocks @todo of pinned chunk @c: the runs that the image's kind
 * plans, all in parallel, each checked by the kind.  Called and returns
 * with img->lock held; the blocks are marked loading meanwhile.  A
 * failure spoils a clean chunk, but not one holding what was written.
 */
static int coroutine_fn load_blocks_locked(S3chainImage *img, CachedChunk *c,
                                           uint64_t todo)
{
    S3chainLoad load = { .c = c };
    S3chainWaiter waiter = { 0 };
    int ret = 0;

    todo = img->kind->plan_load(img, c, todo, &load);
    c->loading |= todo;
    qemu_co_mutex_unlock(&img->lock);
    for (unsigned i = 0; i < load.n_runs; i++) {
        S3chainBlockRun *run = &load.runs[i];

        if (run->packed) {
            qemu_iovec_init_buf(&run->qiov, run->packed,
                                run->req.range_bytes);
        } else {
            qemu_iovec_init_buf(&run->qiov,
                                c->buf + run->first * img->block_size,
                                run->count * img->block_size);
        }
        run->req.method = "GET";
        run->req.key = run->key;
        run->req.qiov = &run->qiov;
        run->req.waiter = &waiter;
        s3chain_request_submit(img->conn, &run->req);
    }
    s3chain_co_wait(img->conn, &waiter);
    for (unsigned i = 0; i < load.n_runs; i++) {
        S3chainBlockRun *run = &load.runs[i];
        int run_ret = img->kind->check_run(img, &load, run, ret == 0);

        ret = ret ?: run_ret;
        s3chain_request_cleanup(&run->req);
        g_free(run->key);
    }
    s3chain_chunk_ref_clear(&load.ref);
    qemu_co_mutex_lock(&img->lock);
    s3chain_image_give_staging_locked(img, load.staging);
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
 * Makes blocks @need of pinned chunk @c valid, with those that the kind
 * loads along with them: loads those no one is loading yet, and waits
 * for the others.
 */
int coroutine_fn s3chain_image_ensure_blocks_locked(S3chainImage *img,
                                                    CachedChunk *c,
                                                    uint64_t need)
{
    int ret = 0;

    if (!(need & ~c->valid)) {
        return c->ret;
    }
    need = img->kind->loads_with(img, c->index, need);
    while (ret == 0 && c->ret == 0 && (need & ~c->valid)) {
        uint64_t todo = need & ~c->valid & ~c->loading;

        if (todo) {
            ret = load_blocks_locked(img, c, todo);
        } else {
            qemu_co_queue_wait(&c->waiters, &img->lock);
        }
    }
    return ret ?: c->ret;
}

size_t s3chain_image_staging_size(S3chainImage *img)
{
    return chunk_size(img) + blocks_per_chunk(img) * S3CHAIN_SEAL_OVERHEAD;
}

/*
 * A fresh buffer costs a page fault a page, as chunk buffers do (see
 * s3chain_image_drop_chunk_locked()): a restore of packed chunks spent
 * half its CPU time on them
 */
uint8_t *s3chain_image_take_staging_locked(S3chainImage *img)
{
    if (img->staging->len) {
        return g_ptr_array_steal_index_fast(img->staging,
                                            img->staging->len - 1);
    }
    return g_malloc(s3chain_image_staging_size(img));
}

void s3chain_image_give_staging_locked(S3chainImage *img, uint8_t *buf)
{
    if (buf && img->staging->len < S3CHAIN_STAGING_KEPT) {
        g_ptr_array_add(img->staging, buf);
    } else {
        g_free(buf);
    }
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
    s3chain_image_ensure_blocks_locked(img, c, planned_blocks(img, c->index));
    s3chain_image_release_locked(img, c);
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
        s3chain_image_drop_chunk_locked(img, c);
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
            !img->kind->stored(img, index) || !planned_blocks(img, index)) {
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

int coroutine_fn s3chain_image_get_chunk_locked(S3chainImage *img,
                                                uint64_t index,
                                                bool for_write,
                                                bool overwrite,
                                                uint64_t need,
                                                CachedChunk **chunk)
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
        if (overwrite || !img->kind->stored(img, index)) {
            memset(c->buf, 0, chunk_size(img));
            c->valid = all_blocks(img);
        }
    }
    if (for_write && !overwrite &&
        !s3chain_image_takes_patches(
            img, s3chain_manifest_lookup(img->manifest, index))) {
        need = all_blocks(img);
    }
    ret = s3chain_image_ensure_blocks_locked(img, c, need);
    /* a load in flight would land on what the caller writes */
    while (ret == 0 && for_write &&
           (c->state == CHUNK_UPLOADING || c->loading)) {
        qemu_co_queue_wait(&c->waiters, &img->lock);
        ret = c->ret;
    }
    if (ret < 0) {
        s3chain_image_release_locked(img, c);
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
 * Notes a read of @bytes at @offset; true once it continues a run of
 * reads that each start within @slack of where the ones before ended,
 * and that together read at least @min_bytes.
 */
static bool streak_note(S3chainStreak *s, uint64_t offset, uint64_t bytes,
                        uint64_t slack, uint64_t min_bytes)
{
    if (offset + slack >= s->last_end && offset <= s->last_end + slack) {
        s->reads = MIN(s->reads + 1, SEQUENTIAL_STREAK);
        s->bytes = MIN(s->bytes + bytes, min_bytes);
        s->last_end = MAX(offset + bytes, s->last_end);
    } else {
        s->reads = 0;
        s->bytes = bytes;
        s->last_end = offset + bytes;
    }
    return s->reads >= SEQUENTIAL_STREAK && s->bytes >= min_bytes;
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
    sequential = streak_note(&img->streak, offset, bytes, 2 * chunk_size(img),
                             chunk_size(img) / 4);
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
            !img->kind->stored(img, index)) {
            qemu_iovec_memset(qiov, done, 0, n);
        } else {
            uint64_t need = blocks_to_load(img, index, in_chunk, n, whole);

            ret = s3chain_image_get_chunk_locked(img, index, false, false,
                                                 need, &c);
            if (ret < 0) {
                break;
            }
            qemu_iovec_from_buf(qiov, done, c->buf + in_chunk, n);
            c->consumed += n;
            s3chain_image_release_locked(img, c);
        }
        done += n;
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
           img->kind->stored(img, index);
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
    return img->kind->stored_bytes(img);
}

S3chainImage *s3chain_image_new(BlockDriverState *bs, S3chainConn *conn,
                                const S3chainImageKind *kind,
                                const S3chainImageOpen *how,
                                S3chainManifest *manifest)
{
    S3chainImage *img = g_new0(S3chainImage, 1);

    img->bs = bs;
    img->conn = conn;
    img->kind = kind;
    img->key = g_strdup(how->key);
    img->etag = g_strdup(how->etag);
    img->lock_key = g_strconcat(how->key, ".lock", NULL);
    img->manifest = manifest;
    img->writable = how->writable;
    img->session = manifest->generation + 1;
    img->buffer_size = MAX(how->buffer_size, 2 * manifest->chunk_size);
    img->readahead_chunks = how->readahead / manifest->chunk_size;
    img->block_size = s3chain_block_size(manifest->chunk_size);
    img->compress_level = how->compress_level;
    img->spare = g_ptr_array_new_with_free_func(qemu_vfree);
    img->staging = g_ptr_array_new_with_free_func(g_free);
    img->superseded = g_ptr_array_new_with_free_func(g_free);
    qemu_co_mutex_init(&img->lock);
    img->cache = g_hash_table_new(g_int64_hash, g_int64_equal);
    QTAILQ_INIT(&img->lru);
    qemu_co_queue_init(&img->room);
    return img;
}

void s3chain_image_free(S3chainImage *img)
{
    GHashTableIter iter;
    CachedChunk *c;

    g_hash_table_iter_init(&iter, img->cache);
    while (g_hash_table_iter_next(&iter, NULL, (gpointer *)&c)) {
        chunk_free(c);
    }
    g_hash_table_destroy(img->cache);
    g_ptr_array_unref(img->spare);
    g_ptr_array_unref(img->staging);
    g_ptr_array_unref(img->superseded);
    s3chain_manifest_free(img->manifest);
    g_free(img->planned);
    g_free(img->key);
    g_free(img->etag);
    g_free(img->lock_key);
    g_free(img);
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
        s3chain_image_delete_superseded_locked(img);
        qemu_co_mutex_unlock(&img->lock);
    } else if (img->writable && s3chain_image_co_flush(img) < 0) {
        error_report("s3chain: closing s3://%s/%s lost what was written "
                     "since its last commit (generation %" PRIu64 ")",
                     bucket(img), img->key, img->manifest->generation);
    }
    s3chain_image_co_unlock(img);
    s3chain_image_free(img);
}
