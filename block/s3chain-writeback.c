/*
 * s3chain: writes to chunked images, their uploads and commits
 *
 * Writes land in chunk buffers in RAM (s3chain-image.c) and are
 * acknowledged from there; a flush uploads the dirty chunks, each as a
 * new object with Content-MD5, and then the manifest, which is the commit
 * point.  Past half the buffer dirty, the least recently written chunks
 * are uploaded in the background: they only become part of the image
 * with the next manifest.  All-zero chunks are never stored.
 *
 * A write of part of a stored chunk loads only the blocks it does not
 * cover whole.  Its upload is a patch, an object with just the blocks
 * written, while the chunk's patches stay few and small (see
 * patch_blocks()); else the whole chunk goes up again.  Rewriting a
 * scattered few clusters of a large image, as a merge of backups does,
 * then moves about what was written rather than every chunk touched.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/host-utils.h"
#include <zlib.h>
#include "s3chain.h"
#include "trace.h"

/* The tag of the newest object of chunk @ref */
static const char *newest_tag(const S3chainChunkRef *ref)
{
    return ref->n_patches ? ref->patches[ref->n_patches - 1].tag : ref->tag;
}

typedef struct Upload {
    CachedChunk *chunk;
    uint64_t patch;             /* blocks of a patch; 0: the whole chunk */
    bool replaces;              /* the patch takes the place of the others */
    uint8_t *body;              /* what goes up */
    size_t len;
    uint8_t *packed;            /* a patch's blocks one after the other */
    uint8_t *staging;           /* a packed chunk's stored bytes */
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
    if (!s3chain_image_takes_patches(img, ref) ||
        !s3chain_block_sums_parse(ref->block_sums, ref, blocks_per_chunk(img),
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
        ret = s3chain_image_ensure_blocks_locked(img, c, need);
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
        s3chain_image_supersede_patches_locked(img, index, &ref);
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
    ref.block_sums = s3chain_words_to_hex(sums, n);
    s3chain_manifest_set(img->manifest, index, &ref);
    s3chain_chunk_ref_clear(&ref);
    img->manifest_dirty = true;
}

/*
 * A compressed or encrypted image's chunk goes up whole, its blocks
 * packed (never as a patch): @u's body becomes the packed blocks, with
 * their sums
 */
static int coroutine_fn pack_upload(S3chainImage *img, Upload *u)
{
    S3chainManifest *m = img->manifest;
    S3chainPacked packed;
    int ret;

    assert(!u->patch && u->staging);
    ret = s3chain_co_pack(u->body, chunk_size(img), img->block_size,
                          m->compressed ? img->compress_level : 0, m->keys,
                          u->chunk->index, u->tag, u->staging, &packed);
    if (ret < 0) {
        return ret;
    }
    u->body = u->staging;
    u->len = packed.len;
    memcpy(u->block_crcs, packed.block_crcs, sizeof(u->block_crcs));
    memcpy(u->sums.md5, packed.md5, sizeof(u->sums.md5));
    u->sums.crc32 = packed.crc32;
    u->sums.has_crc32 = true;
    u->sums.stored_lengths = s3chain_words_to_hex(packed.lengths,
                                                  blocks_per_chunk(img));
    return 0;
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
            s3chain_image_supersede_locked(img, c->index);
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
        if (s3chain_manifest_packed(img->manifest)) {
            u->staging = s3chain_image_take_staging_locked(img);
        }
    }

    qemu_co_mutex_unlock(&img->lock);
    /* Each chunk is hashed while those before it are on the wire */
    for (size_t i = 0; i < n; i++) {
        Upload *u = &uploads[i];

        if (!u->key) {
            continue;
        }
        u->req.ret = s3chain_manifest_packed(img->manifest)
            ? pack_upload(img, u)
            : s3chain_co_sums_of(u->body, u->len, true, !u->patch,
                                 img->block_size, u->block_crcs, &u->sums);
        if (u->req.ret < 0) {
            continue;
        }
        u->sums.block_size = img->block_size;
        u->md5_b64 = g_base64_encode(u->sums.md5, 16);
        if (!u->patch) {
            u->sums.block_sums = s3chain_words_to_hex(u->block_crcs,
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
                    s3chain_image_report_error(img, "upload of", u->key,
                                               &u->req);
                }
                u->chunk->state = CHUNK_DIRTY;
                ret = ret ? ret : u->req.ret;
            } else {
                if (u->patch) {
                    add_patch_locked(img, u->chunk->index, u);
                } else {
                    s3chain_image_supersede_locked(img, u->chunk->index);
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
        s3chain_image_give_staging_locked(img, u->staging);
        g_free(u->tag);
        g_free(u->key);
        g_free(u->md5_b64);
        g_free(u->sums.block_sums);
        g_free(u->sums.stored_lengths);
    }
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
    s3chain_image_release_locked(img, uc->chunk);
    img->uploading--;
    if (ret < 0) {
        /* writers waiting for room get the error; nothing retries alone */
        img->write_back_error = ret;
        img->writing_back = false;
    }
    qemu_co_queue_restart_all(&img->room);
    s3chain_image_maybe_write_back_locked(img);
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
void s3chain_image_maybe_write_back_locked(S3chainImage *img)
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
                s3chain_image_drop_chunk_locked(img, c);
            }
            s3chain_image_supersede_locked(img, index);
            done += n;
            continue;
        }
        /* the blocks written in part are loaded first */
        ret = s3chain_image_get_chunk_locked(img, index, true, whole,
                                             touched & ~covered, &c);
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
        s3chain_image_release_locked(img, c);
        done += n;
    }
    s3chain_image_maybe_write_back_locked(img);
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

int coroutine_fn s3chain_image_put_manifest(S3chainConn *conn,
                                            const char *key,
                                            const S3chainManifest *manifest,
                                            bool create_only,
                                            S3chainRequest *req)
{
    g_autofree char *json = s3chain_manifest_encode(manifest);
    g_autofree char *md5_b64 = NULL;
    uint8_t md5[16];

    if (s3chain_md5_of((uint8_t *)json, strlen(json), md5) < 0) {
        req->ret = -EIO;
        return -EIO;
    }
    md5_b64 = g_base64_encode(md5, 16);
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
    ret = s3chain_image_put_manifest(img->conn, img->key, img->manifest,
                                     false, &req);
    if (ret < 0) {
        s3chain_image_report_error(img, "commit of", img->key, &req);
        img->manifest->generation--;
    }
    s3chain_request_cleanup(&req);
    return ret;
}

void coroutine_fn s3chain_image_delete_superseded_locked(S3chainImage *img)
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
        s3chain_image_release_locked(img, g_ptr_array_index(dirty, i));
    }
    if (ret == 0 && img->manifest_dirty) {
        ret = put_manifest_locked(img);
        if (ret == 0) {
            img->manifest_dirty = false;
            s3chain_image_delete_superseded_locked(img);
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
                s3chain_image_drop_chunk_locked(img, c);
            }
            s3chain_image_supersede_locked(img, i);
        }
    }
    if (ret == 0) {
        img->manifest->size = size;
        img->manifest_dirty = true;
    }
    qemu_co_mutex_unlock(&img->lock);
    return ret;
}
