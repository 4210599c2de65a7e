/*
 * image.c: what the command reads of s3chain images: manifests and chunks
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>
#include <zlib.h>

/* Deep checks read this many chunks at once */
#define VERIFY_READERS 8

/* docs/object-layout.rst: the CRC-32 of each block of a chunk */
#define BLOCK_SUMS_META "x-amz-meta-s3chain-block-crc32"

static void chunk_free(S3cChunk *c)
{
    g_free(c->key);
    g_free(c->md5);
    g_free(c);
}

void s3c_manifest_free(S3cManifest *m)
{
    if (m) {
        g_free(m->key);
        g_ptr_array_unref(m->chunks);
        g_free(m);
    }
}

static bool is_hex(const char *s, size_t len)
{
    return s && strlen(s) == len && strspn(s, "0123456789abcdefABCDEF") == len;
}

/*
 * docs/object-layout.rst: {"version", "size", "chunk-size",
 * "chunks": [[INDEX, TAG, MD5, CRC32, BLOCK_SIZE], ...]}, no CRC32 in
 * version 1, no BLOCK_SIZE before version 3
 */
static S3cManifest *parse_manifest(const char *key, const char *text)
{
    g_autoptr(S3cManifest) m = g_new0(S3cManifest, 1);
    json_object *doc = json_tokener_parse(text);
    json_object *chunks;

    m->key = g_strdup(key);
    m->chunks = g_ptr_array_new_with_free_func((GDestroyNotify)chunk_free);
    m->size = s3c_json_int(doc, "size");
    m->chunk_size = s3c_json_int(doc, "chunk-size");
    if (!doc || g_strcmp0(s3c_json_str(doc, "format"), "s3chain-chunked") ||
        s3c_json_int(doc, "version") < 1 || s3c_json_int(doc, "version") > 3 ||
        !m->chunk_size || (m->chunk_size & (m->chunk_size - 1)) ||
        !json_object_object_get_ex(doc, "chunks", &chunks) ||
        !json_object_is_type(chunks, json_type_array)) {
        json_object_put(doc);
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(chunks); i++) {
        json_object *entry = json_object_array_get_idx(chunks, i);
        const char *tag = json_object_get_string(
            json_object_array_get_idx(entry, 1));
        const char *md5 = json_object_get_string(
            json_object_array_get_idx(entry, 2));
        const char *crc32 = json_object_get_string(
            json_object_array_get_idx(entry, 3));
        int64_t block_size = json_object_get_int64(
            json_object_array_get_idx(entry, 4));
        S3cChunk *c;

        if (!json_object_is_type(entry, json_type_array) || !tag ||
            !is_hex(md5, 32) || (crc32 && !is_hex(crc32, 8)) ||
            block_size < 0 || (block_size && (!crc32 ||
                (block_size & (block_size - 1)) ||
                block_size > (int64_t)m->chunk_size))) {
            json_object_put(doc);
            return NULL;
        }
        c = g_new0(S3cChunk, 1);
        c->index = json_object_get_int64(json_object_array_get_idx(entry, 0));
        c->key = g_strdup_printf("%s.d/%016" G_GINT64_MODIFIER "x.%s", key,
                                 c->index, tag);
        c->md5 = g_ascii_strdown(md5, -1);
        c->has_crc32 = crc32 != NULL;
        c->crc32 = crc32 ? g_ascii_strtoull(crc32, NULL, 16) : 0;
        c->block_size = block_size;
        g_ptr_array_add(m->chunks, c);
    }
    json_object_put(doc);
    return g_steal_pointer(&m);
}

S3cManifest *s3c_manifest_load(const S3cRepo *repo, const char *key,
                               GError **err)
{
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    S3cManifest *m;

    if (!s3c_s3_get(repo, key, &body, &local)) {
        if (local) {
            g_propagate_error(err, g_steal_pointer(&local));
        } else {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "s3://%s/%s: missing (the image's manifest)",
                        repo->bucket, key);
        }
        return NULL;
    }
    m = parse_manifest(key, body->str);
    if (!m) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "s3://%s/%s: not a valid s3chain image manifest",
                    repo->bucket, key);
    }
    return m;
}

uint64_t s3c_manifest_stored_bytes(const S3cManifest *m)
{
    uint64_t bytes = 0;

    for (size_t i = 0; i < m->chunks->len; i++) {
        const S3cChunk *c = g_ptr_array_index(m->chunks, i);
        uint64_t start = c->index * m->chunk_size;

        bytes += start < m->size ? MIN(m->chunk_size, m->size - start) : 0;
    }
    return bytes;
}

bool s3c_image_stored_bytes(const S3cRepo *repo, const char *key,
                            uint64_t *bytes, GError **err)
{
    g_autoptr(S3cManifest) m = s3c_manifest_load(repo, key, err);

    if (m) {
        *bytes = s3c_manifest_stored_bytes(m);
    }
    return m != NULL;
}

/*
 * The CRC-32 of @body, and with a @block_size, in *@block_sums, what
 * BLOCK_SUMS_META must hold for it: the whole's is combined from the
 * blocks', not computed twice.
 */
static uint32_t crc32_of(const GString *body, uint64_t block_size,
                         char **block_sums)
{
    GString *hex;
    uint32_t crc32 = 0;

    if (!block_size) {
        return crc32_z(0, (const Bytef *)body->str, body->len);
    }
    hex = g_string_new(NULL);
    for (size_t at = 0; at < body->len; at += block_size) {
        size_t len = MIN(block_size, body->len - at);
        uint32_t block = crc32_z(0, (const Bytef *)body->str + at, len);

        g_string_append_printf(hex, "%08" PRIx32, block);
        crc32 = crc32_combine(crc32, block, len);
    }
    *block_sums = g_string_free(hex, false);
    return crc32;
}

typedef struct DeepCheck {
    const S3cRepo *repo;
    GMutex lock;
    GPtrArray *faults;
    GError *error;              /* the first failure to read at all */
} DeepCheck;

static void read_chunk(gpointer data, gpointer opaque)
{
    const S3cChunk *c = data;
    DeepCheck *dc = opaque;
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    g_autofree char *md5 = NULL;
    g_autofree char *block_sums = NULL;
    char *fault = NULL;

    if (!s3c_s3_get_meta(dc->repo, c->key, BLOCK_SUMS_META, &body,
                         &block_sums, &local)) {
        if (!local) {
            fault = g_strdup_printf("s3://%s/%s: missing", dc->repo->bucket,
                                    c->key);
        }
    } else {
        g_autofree char *want = NULL;
        uint32_t crc32 = crc32_of(body, c->block_size, &want);

        md5 = g_compute_checksum_for_data(G_CHECKSUM_MD5,
                                          (const guchar *)body->str,
                                          body->len);
        if (strcmp(md5, c->md5)) {
            fault = g_strdup_printf("s3://%s/%s: its bytes have MD5 %s, the "
                                    "manifest says %s", dc->repo->bucket,
                                    c->key, md5, c->md5);
        } else if (c->has_crc32 && crc32 != c->crc32) {
            fault = g_strdup_printf("s3://%s/%s: its bytes have CRC-32 %08x, "
                                    "the manifest says %08x", dc->repo->bucket,
                                    c->key, crc32, c->crc32);
        } else if (c->block_size && g_strcmp0(block_sums, want)) {
            fault = g_strdup_printf("s3://%s/%s: its block sums (%s) are "
                                    "not those of its bytes",
                                    dc->repo->bucket, c->key,
                                    block_sums ? "metadata "
                                    BLOCK_SUMS_META : "none");
        }
    }
    g_mutex_lock(&dc->lock);
    if (fault) {
        g_ptr_array_add(dc->faults, fault);
    }
    if (local && !dc->error) {
        dc->error = g_steal_pointer(&local);
    }
    g_mutex_unlock(&dc->lock);
}

/* Reads every chunk of @m and checks its MD5 and CRC-32 */
static bool read_all_chunks(const S3cRepo *repo, const S3cManifest *m,
                            GPtrArray *faults, GError **err)
{
    DeepCheck dc = { .repo = repo, .faults = faults };
    GThreadPool *pool = g_thread_pool_new(read_chunk, &dc, VERIFY_READERS,
                                          false, NULL);

    g_mutex_init(&dc.lock);
    for (size_t i = 0; i < m->chunks->len; i++) {
        g_thread_pool_push(pool, g_ptr_array_index(m->chunks, i), NULL);
    }
    g_thread_pool_free(pool, false, true);
    g_mutex_clear(&dc.lock);
    if (dc.error) {
        g_propagate_error(err, dc.error);
        return false;
    }
    return true;
}

bool s3c_image_verify(const S3cRepo *repo, const char *key, bool deep,
                      GPtrArray *faults, GError **err)
{
    g_autoptr(GError) local = NULL;
    g_autoptr(S3cManifest) m = s3c_manifest_load(repo, key, &local);
    g_autoptr(GPtrArray) objects = NULL;
    g_autoptr(GHashTable) etags = NULL;
    g_autofree char *dir = g_strconcat(key, ".d/", NULL);

    if (!m) {
        if (local->code != S3C_EXIT_DAMAGED) {
            g_propagate_error(err, g_steal_pointer(&local));
            return false;
        }
        g_ptr_array_add(faults, g_strdup(local->message));
        return true;
    }
    if (deep) {
        return read_all_chunks(repo, m, faults, err);
    }
    /*
     * A chunk is stored with Content-MD5 in one PUT, so its ETag is the
     * MD5 of its bytes: one listing checks every chunk of the image
     */
    if (!s3c_s3_list(repo, dir, false, &objects, NULL, err)) {
        return false;
    }
    etags = g_hash_table_new(g_str_hash, g_str_equal);
    for (size_t i = 0; i < objects->len; i++) {
        S3cObject *o = g_ptr_array_index(objects, i);

        g_hash_table_insert(etags, o->key, o->etag ? o->etag : "");
    }
    for (size_t i = 0; i < m->chunks->len; i++) {
        const S3cChunk *c = g_ptr_array_index(m->chunks, i);
        const char *etag = g_hash_table_lookup(etags, c->key);

        if (!etag) {
            g_ptr_array_add(faults, g_strdup_printf(
                "s3://%s/%s: missing", repo->bucket, c->key));
        } else if (strcmp(etag, c->md5)) {
            g_ptr_array_add(faults, g_strdup_printf(
                "s3://%s/%s: its ETag is %s, the manifest's MD5 %s",
                repo->bucket, c->key, etag, c->md5));
        }
    }
    return true;
}
