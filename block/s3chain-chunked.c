/*
 * s3chain: chunked images, their objects, lock and creation
 *
 * A chunked image is a manifest (see s3chain-manifest.c) naming an
 * object per stored chunk, and for some chunks patches: objects with
 * some of its blocks, newer than the whole object's.  A load reads each
 * block from the newest object holding it, and checks what came: a
 * whole chunk against its CRC-32 in the manifest, blocks against their
 * block sums, themselves checked against it.  Chunks stored before their
 * objects had block sums load whole.
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
#include "s3chain.h"
#include "trace.h"

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

static bool chunked_stored(S3chainImage *img, uint64_t index)
{
    return s3chain_manifest_lookup(img->manifest, index) != NULL;
}

/*
 * A chunk stored without block sums loads whole: only its whole sum
 * checks it
 */
static uint64_t chunked_loads_with(S3chainImage *img, uint64_t index,
                                   uint64_t need)
{
    S3chainChunkRef *ref = s3chain_manifest_lookup(img->manifest, index);

    /* only a chunk with an object has blocks that are not valid */
    assert(ref);
    return ref->block_size == img->block_size && ref->has_crc32 ?
           need : all_blocks(img);
}

/*
 * A packed chunk's runs: its blocks lie packed in its one object,
 * each run a ranged GET of their stored bytes, unpacked by check_run.
 * Blocks that store nothing (all zeroes) need no request.
 */
static uint64_t packed_plan_load(S3chainImage *img, CachedChunk *c,
                                 uint64_t todo, S3chainLoad *load)
{
    const S3chainChunkRef *ref = &load->ref;
    uint32_t lengths[S3CHAIN_MAX_BLOCKS];
    uint64_t offsets[S3CHAIN_MAX_BLOCKS + 1] = { 0 };
    unsigned n = blocks_per_chunk(img);

    /* the manifest's decoding checked them */
    s3chain_words_from_hex(ref->stored_lengths, n, lengths);
    for (unsigned i = 0; i < n; i++) {
        offsets[i + 1] = offsets[i] + lengths[i];
    }
    todo = s3chain_image_bridge_gaps(img, todo, ~(c->valid | c->loading));
    for (uint64_t rest = todo, at = 0; rest;) {
        S3chainBlockRun *run = &load->runs[load->n_runs];
        unsigned first = ctz64(rest);
        unsigned count = cto64(rest >> first);
        uint64_t bytes = offsets[first + count] - offsets[first];

        rest &= ~MAKE_64BIT_MASK(first, count);
        if (!bytes) {
            memset(c->buf + first * img->block_size, 0,
                   count * img->block_size);
            continue;
        }
        if (!load->staging) {
            load->staging = s3chain_image_take_staging_locked(img);
        }
        run->first = first;
        run->count = count;
        run->key = s3chain_chunk_key(img->key, c->index, ref->tag);
        /* the runs' bytes are at most the chunk's stored bytes in all */
        run->packed = load->staging + at;
        at += bytes;
        run->req = (S3chainRequest) {
            .range_offset = offsets[first],
            .range_bytes = bytes,
        };
        load->n_runs++;
    }
    return todo;
}

/*
 * A ranged GET per run of blocks in one of the chunk's objects: its whole
 * object's or a patch's, the newest holding each block
 */
static uint64_t chunked_plan_load(S3chainImage *img, CachedChunk *c,
                                  uint64_t todo, S3chainLoad *load)
{
    S3chainChunkRef *ref = &load->ref;

    /* a copy: a commit may replace the entry while the lock is dropped */
    s3chain_chunk_ref_copy(ref, s3chain_manifest_lookup(img->manifest,
                                                        c->index));
    if (ref->stored_lengths) {
        return packed_plan_load(img, c, todo, load);
    }
    /* a gap's blocks may lie in other objects than its ends */
    if (!ref->n_patches) {
        todo = s3chain_image_bridge_gaps(img, todo, ~(c->valid | c->loading));
    }
    for (uint64_t rest = todo; rest; load->n_runs++) {
        S3chainBlockRun *run = &load->runs[load->n_runs];
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
        run->key = s3chain_chunk_key(img->key, c->index, source < 0 ?
                                     ref->tag : ref->patches[source].tag);
        run->req = (S3chainRequest) {
            .range_offset = at,
            .range_bytes = run->count * img->block_size,
        };
    }
    return todo;
}

/*
 * Whether @run of chunk @c, just loaded, holds what @ref says: a whole
 * chunk is checked against the manifest's sum, part of one against the
 * block sums of the manifest (or, stored by a version 3 writer, those
 * that came with it), themselves checked against that sum.
 */
static bool coroutine_fn run_is_intact(S3chainImage *img, CachedChunk *c,
                                       const S3chainChunkRef *ref,
                                       S3chainBlockRun *run)
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
 * Unpacks packed @run of chunk @c, stored as @ref, into the chunk, if its
 * blocks match their sums and unpack whole; else says why (damage)
 */
static int coroutine_fn unpack_run(S3chainImage *img, CachedChunk *c,
                                   const S3chainChunkRef *ref,
                                   S3chainBlockRun *run)
{
    uint32_t lengths[S3CHAIN_MAX_BLOCKS], want[S3CHAIN_MAX_BLOCKS];
    unsigned n = blocks_per_chunk(img);
    S3chainUnpackFault fault = { 0 };
    int ret;

    s3chain_words_from_hex(ref->stored_lengths, n, lengths);
    if (!s3chain_block_sums_parse(ref->block_sums, ref, n, want)) {
        error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s: its block sums in "
                     "the manifest do not make up its checksum", bucket(img),
                     run->key);
        return -EIO;
    }
    ret = s3chain_co_unpack(run->packed, lengths + run->first,
                            want + run->first, run->first, run->count,
                            img->block_size, img->manifest->keys, c->index,
                            ref->tag, c->buf + run->first * img->block_size,
                            &fault);
    if (ret == -EIO && fault.kind == S3CHAIN_UNPACK_FRAME) {
        error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s: block %" PRIu64
                     " does not unpack to %" PRIu64 " bytes", bucket(img),
                     run->key, run->first + fault.block, img->block_size);
    } else if (ret == -EIO && fault.kind == S3CHAIN_UNPACK_SEAL) {
        trace_s3chain_chunk_corrupt(bucket(img), run->key);
        error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s: block %" PRIu64
                     " was not sealed there by this image's key: the object "
                     "was altered, moved or replaced", bucket(img), run->key,
                     run->first + fault.block);
    } else if (ret == -EIO) {
        trace_s3chain_chunk_corrupt(bucket(img), run->key);
        error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s does not match its "
                     "checksum in the manifest", bucket(img), run->key);
    } else if (ret < 0) {
        error_report("s3chain: cannot unpack chunk s3://%s/%s: %s",
                     bucket(img), run->key, strerror(-ret));
    }
    return ret;
}

/*
 * An object that the committed manifest names was there: one missing, or
 * one that does not match its sums, is damage
 */
static int coroutine_fn chunked_check_run(S3chainImage *img, S3chainLoad *load,
                                          S3chainBlockRun *run, bool report)
{
    if (run->req.ret == -ENOENT) {
        if (report) {
            error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s, which the "
                         "manifest names, is missing", bucket(img), run->key);
        }
        return -EIO;
    }
    if (run->req.ret < 0) {
        if (report && run->req.ret != -ECANCELED) {
            s3chain_image_report_error(img, "read of", run->key, &run->req);
        }
        return run->req.ret;
    }
    if (report && run->packed) {
        return unpack_run(img, load->c, &load->ref, run);
    }
    if (report && !run_is_intact(img, load->c, &load->ref, run)) {
        trace_s3chain_chunk_corrupt(bucket(img), run->key);
        error_report(S3CHAIN_DAMAGED "chunk s3://%s/%s does not match its "
                     "checksum in the manifest", bucket(img), run->key);
        return -EIO;
    }
    return 0;
}

/* Adds the bytes that packed chunk @value stores to *@opaque */
static gboolean add_packed_bytes(gpointer key, gpointer value, gpointer opaque)
{
    const S3chainChunkRef *ref = value;
    uint32_t lengths[S3CHAIN_MAX_BLOCKS];
    unsigned n = strlen(ref->stored_lengths) / 8;

    s3chain_words_from_hex(ref->stored_lengths, n, lengths);
    for (unsigned i = 0; i < n; i++) {
        *(uint64_t *)opaque += lengths[i];
    }
    return false;
}

static uint64_t chunked_stored_bytes(S3chainImage *img)
{
    uint64_t bytes = 0;

    if (!s3chain_manifest_packed(img->manifest)) {
        return (uint64_t)g_tree_nnodes(img->manifest->chunks) *
               chunk_size(img);
    }
    g_tree_foreach(img->manifest->chunks, add_packed_bytes, &bytes);
    return bytes;
}

static const S3chainImageKind chunked_kind = {
    .name = "a chunked image",
    .stored = chunked_stored,
    .loads_with = chunked_loads_with,
    .plan_load = chunked_plan_load,
    .check_run = chunked_check_run,
    .stored_bytes = chunked_stored_bytes,
};

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

void coroutine_fn s3chain_image_co_unlock(S3chainImage *img)
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

/*
 * Checks @m, the manifest @json of image @key, against @user_key, the
 * key given (NULL: none), and keeps the image's keys in it.  An
 * encrypted image opens with its own key only; given a key, an image
 * that is not encrypted is refused rather than read as plain text: its
 * manifest may have been replaced by one that says so.
 */
static int open_sealed_manifest(S3chainConn *conn, const char *key,
                                const char *json, const uint8_t *user_key,
                                S3chainManifest *m, Error **errp)
{
    const char *name = s3chain_conn_settings(conn)->bucket;
    g_autofree char *want = NULL;
    g_autofree char *have = NULL;
    uint8_t key_id[S3CHAIN_ID_LEN];
    S3chainImageKeys *keys;

    if (!m->encrypted) {
        if (user_key) {
            error_setg(errp, S3CHAIN_KEY_REFUSED "s3://%s/%s is not "
                       "encrypted, but encrypt-key-secret gives a key: not "
                       "reading it as plain text; open it without a key if "
                       "it never was encrypted", name, key);
            return -EACCES;
        }
        return 0;
    }
    if (!s3chain_seal_available()) {
        error_setg(errp, "s3chain: s3://%s/%s is encrypted, and this QEMU "
                   "was built without GnuTLS", name, key);
        return -ENOTSUP;
    }
    want = s3chain_id_to_hex(m->key_id);
    if (!user_key) {
        error_setg(errp, S3CHAIN_KEY_REFUSED "s3://%s/%s is encrypted (key "
                   "id %s): give its key with encrypt-key-secret", name, key,
                   want);
        return -EACCES;
    }
    if (!s3chain_key_id(user_key, key_id)) {
        error_setg(errp, "s3chain: cannot derive the key id");
        return -EIO;
    }
    if (memcmp(key_id, m->key_id, sizeof(key_id))) {
        have = s3chain_id_to_hex(key_id);
        error_setg(errp, S3CHAIN_KEY_REFUSED "s3://%s/%s is encrypted with "
                   "key id %s, and the key given has key id %s: give the "
                   "key it was written with", name, key, want, have);
        return -EACCES;
    }
    keys = g_new0(S3chainImageKeys, 1);
    if (!s3chain_image_keys(user_key, m->image_id, keys) ||
        !s3chain_manifest_mac_matches(keys, json, m->mac_covered,
                                      m->mac_hex)) {
        s3chain_image_keys_clear(keys);
        g_free(keys);
        error_setg(errp, S3CHAIN_DAMAGED "manifest s3://%s/%s does not "
                   "match its MAC: it was altered", name, key);
        return -EIO;
    }
    m->keys = keys;
    return 0;
}

/*
 * The manifest, @how->key, is @how->object_bytes long with ETag
 * @how->etag, and starts with the @how->head_len bytes at @how->head
 */
int coroutine_fn s3chain_chunked_co_open(BlockDriverState *bs,
                                         S3chainConn *conn,
                                         const S3chainImageOpen *how,
                                         S3chainImage **image, Error **errp)
{
    const char *key = how->key;
    uint64_t manifest_bytes = how->object_bytes;
    uint64_t head_len = how->head_len;
    g_autofree char *json = g_malloc0(manifest_bytes + 1);
    S3chainImageOpen chunked = *how;
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
    if (manifest->compressed && !s3chain_compress_available()) {
        error_setg(errp, "s3chain: s3://%s/%s is compressed with zstd, and "
                   "this QEMU was built without zstd",
                   s3chain_conn_settings(conn)->bucket, key);
        s3chain_manifest_free(manifest);
        return -ENOTSUP;
    }
    ret = open_sealed_manifest(conn, key, json, how->encryption_key,
                               manifest, errp);
    if (ret < 0) {
        s3chain_manifest_free(manifest);
        return ret;
    }
    /*
     * Most of the buffer is for the chunks that the reader's own requests
     * in flight are reading: qemu-img convert -m 16 reads 32 MiB at once.
     * Beyond an eighth, chunks loaded ahead pushed out chunks still being
     * read, which then loaded twice (6% of a restore's GETs at a quarter).
     */
    chunked.readahead = MIN(how->readahead,
                            MAX(how->buffer_size, 2 * manifest->chunk_size) /
                            8);
    img = s3chain_image_new(bs, conn, &chunked_kind, &chunked,
                            manifest);
    if (how->writable) {
        ret = take_lock(img, errp);
        if (ret < 0) {
            s3chain_image_free(img);
            return ret;
        }
    }
    trace_s3chain_image_open(key, manifest->size, manifest->chunk_size,
                             manifest->generation, how->writable);
    *image = img;
    return 0;
}

/*
 * Makes @m, a new image's manifest, encrypted under @user_key: a random
 * image id, and the keys derived for it
 */
static int seal_new_manifest(S3chainManifest *m, const uint8_t *user_key,
                             Error **errp)
{
    if (!s3chain_seal_available()) {
        error_setg(errp, "s3chain: this QEMU was built without GnuTLS, "
                   "which encrypted images need");
        return -ENOTSUP;
    }
    m->encrypted = true;
    m->keys = g_new0(S3chainImageKeys, 1);
    if (!s3chain_key_id(user_key, m->key_id) ||
        !s3chain_new_image_id(m->image_id) ||
        !s3chain_image_keys(user_key, m->image_id, m->keys)) {
        error_setg(errp, "s3chain: cannot derive the keys of a new image");
        return -EIO;
    }
    return 0;
}

int s3chain_image_new_scratch(BlockDriverState *bs, S3chainConn *conn,
                              const char *key, uint64_t buffer_size,
                              const uint8_t *user_key, S3chainImage **image,
                              Error **errp)
{
    const S3chainImageOpen how = {
        .key = key, .writable = true, .buffer_size = buffer_size,
    };
    S3chainManifest *manifest = s3chain_manifest_new(
        0, S3CHAIN_SCRATCH_CHUNK_SIZE);
    int ret = user_key ? seal_new_manifest(manifest, user_key, errp) : 0;

    if (ret < 0) {
        s3chain_manifest_free(manifest);
        return ret;
    }
    *image = s3chain_image_new(bs, conn, &chunked_kind, &how, manifest);
    (*image)->scratch = true;
    return 0;
}

int coroutine_fn s3chain_image_co_create(S3chainConn *conn, const char *key,
                                         uint64_t size, uint64_t chunk_size,
                                         bool compressed,
                                         const uint8_t *user_key,
                                         Error **errp)
{
    g_autoptr(S3chainManifest) manifest = s3chain_manifest_new(size,
                                                               chunk_size);
    S3chainRequest req = { 0 };
    int ret;

    if (compressed && !s3chain_compress_available()) {
        error_setg(errp, "s3chain: cannot create s3://%s/%s compressed: this "
                   "QEMU was built without zstd",
                   s3chain_conn_settings(conn)->bucket, key);
        return -ENOTSUP;
    }
    manifest->compressed = compressed;
    if (user_key) {
        ret = seal_new_manifest(manifest, user_key, errp);
        if (ret < 0) {
            return ret;
        }
    }

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
