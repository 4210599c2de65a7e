/*
 * s3chain: chunked images, their buffer of chunks and reads
 *
 * The image is cut into chunks of chunk-size bytes (see
 * s3chain-manifest.c for the objects), which the buffer holds in RAM
 * while they are read or written; s3chain-writeback.c writes and
 * commits.  When the buffer is full, a clean chunk that nobody uses is
 * dropped, one read through first, or writers wait for write-back.
 *
 * A small random read, of at most one block (see s3chain_block_size()),
 * loads only the blocks it needs with a ranged GET: the block sums of a
 * chunk's entry must make up the chunk's CRC-32 in the manifest.  Other
 * reads load whole chunks, and a sequential reader makes whole chunks
 * ahead of it load in the background, up to readahead bytes but at most
 * an eighth of the buffer, in the room the buffer has free.  With a read
 * plan (s3chain-plan.c), a read that the plan foresaw loads the blocks
 * that the plan has for its chunk, and other reads load just their
 * blocks.  A chunk's blocks come from its whole object or from its
 * patches, the newest holding each.  Chunks stored before their objects
 * had block sums load whole.
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
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/memalign.h"
#include "s3chain.h"
#include "trace.h"

/* The blocks of chunk @index that its reader will read, as far as known */
static uint64_t planned_blocks(S3chainImage *img, uint64_t index)
{
    return img->planned ? img->planned[index] : all_blocks(img);
}

bool s3chain_image_takes_patches(S3chainImage *img, const S3chainChunkRef *ref)
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
    const char *sums = ref->block_sums ?: run->req.block_sums_received;
    S3chainChunkRef got = { 0 };

    if (len == chunk_size(img)) {
        return s3chain_co_sums_of(start, len, !ref->has_crc32,
                                  ref->has_crc32, 0, NULL, &got) == 0 &&
               (ref->has_crc32 ? got.crc32 == ref->crc32
                               : !memcmp(ref->md5, got.md5, sizeof(got.md5)));
    }
    return s3chain_block_sums_parse(sums, ref, blocks_per_chunk(img),
                                    want) &&
           s3chain_co_sums_of(start, len, false, false, img->block_size,
                              got_blocks, &got) == 0 &&
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
                s3chain_image_report_error(img, "read of", run->key, &run->req);
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
int coroutine_fn s3chain_image_ensure_blocks_locked(S3chainImage *img,
                                                    CachedChunk *c,
                                                    uint64_t need)
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
        if (overwrite || !s3chain_manifest_lookup(img->manifest, index)) {
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
        s3chain_image_report_error(img, "unlock of", img->lock_key, &req);
    }
    img->locked = false;
    s3chain_request_cleanup(&req);
}

/* Image @how->key, as @manifest has it; takes @manifest */
static S3chainImage *image_new(BlockDriverState *bs, S3chainConn *conn,
                               const S3chainImageOpen *how,
                               S3chainManifest *manifest)
{
    S3chainImage *img = g_new0(S3chainImage, 1);

    img->bs = bs;
    img->conn = conn;
    img->key = g_strdup(how->key);
    img->lock_key = g_strconcat(how->key, ".lock", NULL);
    img->manifest = manifest;
    img->writable = how->writable;
    img->session = manifest->generation + 1;
    img->buffer_size = MAX(how->buffer_size, 2 * manifest->chunk_size);
    /*
     * Most of the buffer is for the chunks that the reader's own requests
     * in flight are reading: qemu-img convert -m 16 reads 32 MiB at once.
     * Beyond an eighth, chunks loaded ahead pushed out chunks still being
     * read, which then loaded twice (6% of a restore's GETs at a quarter).
     */
    img->readahead_chunks = MIN(how->readahead, img->buffer_size / 8) /
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

/*
 * Opens the chunked image whose manifest, @how->key, is
 * @how->manifest_bytes long with ETag @how->etag, and starts with the
 * @how->head_len bytes at @how->head
 */
int coroutine_fn s3chain_image_co_open(BlockDriverState *bs,
                                       S3chainConn *conn,
                                       const S3chainImageOpen *how,
                                       S3chainImage **image, Error **errp)
{
    const char *key = how->key;
    uint64_t manifest_bytes = how->manifest_bytes;
    uint64_t head_len = how->head_len;
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
        .if_match = how->etag,
        .qiov = &qiov,
    };
    int ret = 0;

    memcpy(json, how->head, head_len);
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
    img = image_new(bs, conn, how, manifest);
    if (how->writable) {
        ret = take_lock(img, errp);
        if (ret < 0) {
            image_free(img);
            return ret;
        }
    }
    trace_s3chain_image_open(key, manifest->size, manifest->chunk_size,
                             manifest->generation, how->writable);
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
        s3chain_image_delete_superseded_locked(img);
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
    const S3chainImageOpen how = {
        .key = key, .writable = true, .buffer_size = buffer_size,
    };
    S3chainImage *img = image_new(bs, conn, &how, s3chain_manifest_new(
                                      0, S3CHAIN_SCRATCH_CHUNK_SIZE));

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

    ret = s3chain_image_put_manifest(conn, key, manifest, true, &req);
    if (req.status == 501) {
        /* no conditional PUT (OpenStack Swift's s3api): look, then put */
        s3chain_request_cleanup(&req);
        req = (S3chainRequest) { .method = "HEAD", .key = key };
        ret = s3chain_co_request(conn, &req);
        if (req.status == 404) {
            s3chain_request_cleanup(&req);
            ret = s3chain_image_put_manifest(conn, key, manifest, false, &req);
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
