/*
 * image.c: what the command reads of s3chain images: manifests and chunks
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdarg.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

/* Deep checks read this many chunks at once */
#define VERIFY_READERS 8

static void chunk_free(S3cChunk *c)
{
    g_free(c->key);
    g_free(c->md5);
    g_free(c->block_sums);
    g_free(c->stored_lengths);
    g_free(c->tag);
    for (unsigned i = 0; i < c->n_patches; i++) {
        g_free(c->patches[i].key);
        g_free(c->patches[i].md5);
    }
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

static bool bad(GError **err, const char *where, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static bool bad(GError **err, const char *where, const char *fmt, ...)
{
    g_autofree char *what = NULL;
    va_list ap;

    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                "%s: not a valid s3chain image manifest: %s", where, what);
    return false;
}

/* Member @i of JSON array @list if it is a string, or NULL */
static const char *string_at(json_object *list, size_t i)
{
    json_object *v = json_object_is_type(list, json_type_array)
                     ? json_object_array_get_idx(list, i) : NULL;

    return json_object_is_type(v, json_type_string)
           ? json_object_get_string(v) : NULL;
}

/* Member @name of @doc, a JSON integer from 0 to @max */
static bool get_uint(json_object *doc, const char *name, uint64_t max,
                     uint64_t *value, const char *where, GError **err)
{
    json_object *v;

    if (!json_object_object_get_ex(doc, name, &v) ||
        !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) < 0 ||
        (uint64_t)json_object_get_int64(v) > max) {
        return bad(err, where, "\"%s\" is not an integer from 0 to %"
                   G_GUINT64_FORMAT, name, max);
    }
    *value = json_object_get_int64(v);
    return true;
}

/*
 * @list, version 5's patches of chunk @c: 1 to S3CHAIN_MAX_PATCHES of
 * [TAG, MD5, BLOCKS], BLOCKS 16 lower-case hex digits, some of the
 * chunk's blocks
 */
static bool parse_patches(json_object *list, const S3cManifest *m,
                          S3cChunk *c, const char *where, GError **err)
{
    size_t n = json_object_is_type(list, json_type_array)
               ? json_object_array_length(list) : 0;
    uint64_t block_size = s3chain_block_size(m->chunk_size);

    if (c->block_size != block_size) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": it has patches "
                   "but not blocks of %" G_GUINT64_FORMAT " bytes", c->index,
                   block_size);
    }
    if (n < 1 || n > S3CHAIN_MAX_PATCHES) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its patches "
                   "are not a list of 1 to %d", c->index,
                   S3CHAIN_MAX_PATCHES);
    }
    for (size_t i = 0; i < n; i++) {
        json_object *p = json_object_array_get_idx(list, i);
        const char *field[3] = { NULL };
        uint8_t md5[16];

        for (size_t f = 0; f < 3 &&
             json_object_is_type(p, json_type_array) &&
             json_object_array_length(p) == 3; f++) {
            field[f] = string_at(p, f);
        }
        if (!s3chain_tag_is_valid(field[0]) ||
            !s3chain_md5_from_hex(field[1], md5)) {
            return bad(err, where, "chunk %" G_GUINT64_FORMAT ": patch %zu "
                       "is not [tag, md5, blocks]", c->index, i);
        }
        if (!s3chain_patch_blocks_from_hex(field[2], m->chunk_size,
                                           &c->patches[i].blocks)) {
            return bad(err, where, "chunk %" G_GUINT64_FORMAT ": patch %zu's "
                       "blocks are not 16 lower-case hex digits of a mask "
                       "of some of the chunk's blocks", c->index, i);
        }
        c->patches[i].key = s3chain_chunk_key(m->key, c->index, field[0]);
        c->patches[i].md5 = g_ascii_strdown(field[1], -1);
        c->n_patches++;
    }
    return true;
}

/* Entry @i of a manifest's chunk list, checked into @c */
static bool parse_chunk(json_object *entry, size_t i, uint64_t version,
                        const S3cManifest *m, uint64_t last, S3cChunk *c,
                        const char *where, GError **err)
{
    size_t n = json_object_is_type(entry, json_type_array)
               ? json_object_array_length(entry) : 0;
    json_object *index = n ? json_object_array_get_idx(entry, 0) : NULL;
    const char *tag = string_at(entry, 1), *md5 = string_at(entry, 2);
    const char *crc32 = n > 3 ? string_at(entry, 3) : NULL;
    const char *sums = n > 5 ? string_at(entry, 5) : NULL;
    uint8_t md5_bytes[16];

    if (n < 3 || n > s3chain_entry_fields_max(version) ||
        ((m->compressed || m->encrypted) && n != 7)) {
        return bad(err, where, "chunk entry %zu is not %s", i,
                   s3chain_entry_shape(version));
    }
    for (size_t f = 1; f < n && f < 4; f++) {
        if (!string_at(entry, f)) {
            return bad(err, where, "chunk entry %zu: field %zu is not a "
                       "string", i, f);
        }
    }
    if (!json_object_is_type(index, json_type_int) ||
        json_object_get_int64(index) < 0) {
        return bad(err, where, "chunk entry %zu: its index is not an "
                   "integer from 0", i);
    }
    c->index = json_object_get_int64(index);
    if (!s3chain_chunk_index_is_valid(c->index, m->size, m->chunk_size) ||
        (i && c->index <= last)) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT " is out of order "
                   "or beyond the image's end", c->index);
    }
    if (!s3chain_tag_is_valid(tag)) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its tag is not "
                   "lower-case hex and dots", c->index);
    }
    if (!s3chain_md5_from_hex(md5, md5_bytes)) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its MD5 is not "
                   "32 hex digits", c->index);
    }
    if (n > 3 && !s3chain_crc32_from_hex(crc32, &c->crc32)) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its CRC-32 is "
                   "not 8 lower-case hex digits", c->index);
    }
    if (n > 4) {
        json_object *bs = json_object_array_get_idx(entry, 4);
        int64_t block_size = json_object_get_int64(bs);

        if (!json_object_is_type(bs, json_type_int) || block_size <= 0 ||
            !s3chain_block_size_is_valid(block_size, m->chunk_size)) {
            return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its block "
                       "size is not a power of two dividing the chunk in "
                       "at most %d", c->index, S3CHAIN_MAX_BLOCKS);
        }
        c->block_size = block_size;
    }
    if (n > 5 && !s3chain_block_sums_are_valid(sums, m->chunk_size,
                                               c->block_size)) {
        return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its block "
                   "sums are not 8 lower-case hex digits a block", c->index);
    }
    if (m->compressed || m->encrypted) {
        c->n_stored = m->chunk_size / MAX(c->block_size, 1);
        c->stored_lengths = g_new(uint32_t, c->n_stored);
        if (c->block_size != s3chain_block_size(m->chunk_size) ||
            !s3chain_stored_lengths_from_hex(string_at(entry, 6),
                                             m->chunk_size, c->block_size,
                                             m->compressed, m->encrypted,
                                             c->stored_lengths)) {
            return bad(err, where, "chunk %" G_GUINT64_FORMAT ": its stored "
                       "lengths are not 8 lower-case hex digits a block, "
                       "each 0 or one a block of this image can have",
                       c->index);
        }
    } else if (n == 7 && !parse_patches(json_object_array_get_idx(entry, 6),
                                        m, c, where, err)) {
        return false;
    }
    c->key = s3chain_chunk_key(m->key, c->index, tag);
    c->tag = g_strdup(tag);
    c->md5 = g_ascii_strdown(md5, -1);
    c->has_crc32 = n > 3;
    c->block_sums = g_strdup(sums);
    return true;
}

/*
 * Version 7's members, into @m: the encryption, the key id, the image id
 * and the MAC that ends @text, the manifest; no other version has them
 */
static bool parse_encryption(json_object *doc, const GString *text,
                             S3cManifest *m, uint64_t version,
                             const char *where, GError **err)
{
    static const char *const members[] = {
        "encrypt", "key-id", "image-id", "mac",
    };
    const char *encrypt = s3c_json_str(doc, "encrypt");
    const char *mac_hex;

    m->encrypted = version == S3CHAIN_MANIFEST_VERSION_ENCRYPTED;
    for (size_t i = 0; !m->encrypted && i < G_N_ELEMENTS(members); i++) {
        if (json_object_object_get_ex(doc, members[i], NULL)) {
            return bad(err, where, "\"%s\" is in version %d only",
                       members[i], S3CHAIN_MANIFEST_VERSION_ENCRYPTED);
        }
    }
    if (!m->encrypted) {
        return true;
    }
    if (!encrypt) {
        return bad(err, where, "\"encrypt\" is not a string");
    }
    if (!s3chain_encrypt_is_valid(encrypt)) {
        /* an encryption of a newer s3chain's */
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s: manifest encryption \"%s\" is not one this "
                    "s3chain reads (%s): use a newer s3chain", where,
                    encrypt, S3CHAIN_ENCRYPT_AES_256_GCM);
        return false;
    }
    if (!s3chain_id_from_hex(s3c_json_str(doc, "key-id"), m->key_id) ||
        !s3chain_id_from_hex(s3c_json_str(doc, "image-id"), m->image_id)) {
        return bad(err, where, "\"key-id\" and \"image-id\" are not 32 "
                   "lower-case hex digits each");
    }
    if (!s3c_json_str(doc, "mac") ||
        !s3chain_manifest_mac_split(text->str, &m->mac_covered, &mac_hex)) {
        return bad(err, where, "it does not end with its \"mac\", 64 "
                   "lower-case hex digits");
    }
    memcpy(m->mac_hex, mac_hex, 2 * S3CHAIN_MAC_LEN);
    m->mac_hex[2 * S3CHAIN_MAC_LEN] = '\0';
    return true;
}

/* The manifest's members but its chunks, into @m */
static bool parse_header(json_object *doc, const GString *text,
                         S3cManifest *m, uint64_t *version,
                         const char *where, GError **err)
{
    json_object *format, *compress = NULL;
    uint64_t generation;

    if (!json_object_object_get_ex(doc, "format", &format) ||
        g_strcmp0(json_object_get_string(format),
                  S3CHAIN_MANIFEST_FORMAT)) {
        return bad(err, where, "\"format\" is not " S3CHAIN_MANIFEST_FORMAT);
    }
    if (!get_uint(doc, "version", G_MAXINT64, version, where, err)) {
        return false;
    }
    if (*version < 1) {
        return bad(err, where, "\"version\" is 0");
    }
    if (*version > S3CHAIN_MANIFEST_VERSION) {
        /* written by a newer s3chain: not damaged, not ours to read */
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s: manifest version %" G_GUINT64_FORMAT " is not one "
                    "this s3chain reads (1 to %d): use a newer s3chain",
                    where, *version, S3CHAIN_MANIFEST_VERSION);
        return false;
    }
    if (!get_uint(doc, "size", G_MAXINT64, &m->size, where, err) ||
        !get_uint(doc, "chunk-size", S3CHAIN_MAX_CHUNK_SIZE, &m->chunk_size,
                  where, err) ||
        !get_uint(doc, "generation", G_MAXINT64, &generation, where, err)) {
        return false;
    }
    if (!s3chain_chunk_size_is_valid(m->chunk_size)) {
        return bad(err, where, "\"chunk-size\" %" G_GUINT64_FORMAT " is not "
                   "a power of two from 64 KiB to 256 MiB", m->chunk_size);
    }
    m->compressed = json_object_object_get_ex(doc, "compress", &compress);
    if ((*version == S3CHAIN_MANIFEST_VERSION_COMPRESSED && !m->compressed) ||
        (*version < S3CHAIN_MANIFEST_VERSION_COMPRESSED && m->compressed) ||
        (m->compressed && !json_object_is_type(compress, json_type_string))) {
        return bad(err, where, "\"compress\" is not a string in versions %d "
                   "and %d only", S3CHAIN_MANIFEST_VERSION_COMPRESSED,
                   S3CHAIN_MANIFEST_VERSION_ENCRYPTED);
    }
    if (m->compressed &&
        !s3chain_compress_is_valid(json_object_get_string(compress))) {
        /* a compression of a newer s3chain's */
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s: manifest compression \"%s\" is not one this "
                    "s3chain reads (%s): use a newer s3chain", where,
                    json_object_get_string(compress), S3CHAIN_COMPRESS_ZSTD);
        return false;
    }
    return parse_encryption(doc, text, m, *version, where, err);
}

/*
 * docs/object-layout.rst: {"format": "s3chain-chunked", "version",
 * "size", "chunk-size", "generation",
 * "chunks": [[INDEX, TAG, MD5, CRC32, BLOCK_SIZE, BLOCK_SUMS, PATCHES],
 * ...]} in ascending INDEX order, no CRC32 in version 1, no BLOCK_SIZE
 * before version 3, no BLOCK_SUMS before version 4 (they were in the
 * object's metadata), PATCHES only in version 5 and only if there are any;
 * version 6 has "compress" and STORED_LENGTHS in place of PATCHES
 */
S3cManifest *s3c_manifest_parse(const char *key, const GString *text,
                                const char *where, GError **err)
{
    g_autoptr(S3cManifest) m = g_new0(S3cManifest, 1);
    json_object *doc, *chunks;
    uint64_t version, last = 0;
    bool ok;

    m->key = g_strdup(key);
    m->chunks = g_ptr_array_new_with_free_func((GDestroyNotify)chunk_free);
    if (text->len > S3CHAIN_MANIFEST_MAX_BYTES) {
        bad(err, where, "it is larger than %d MiB",
            S3CHAIN_MANIFEST_MAX_BYTES >> 20);
        return NULL;
    }
    doc = json_tokener_parse(text->str);
    ok = json_object_is_type(doc, json_type_object) ||
         bad(err, where, "it is not a JSON object");
    ok = ok && parse_header(doc, text, m, &version, where, err);
    if (ok && (!json_object_object_get_ex(doc, "chunks", &chunks) ||
               !json_object_is_type(chunks, json_type_array))) {
        ok = bad(err, where, "\"chunks\" is not a list");
    }
    for (size_t i = 0; ok && i < json_object_array_length(chunks); i++) {
        S3cChunk *c = g_new0(S3cChunk, 1);

        ok = parse_chunk(json_object_array_get_idx(chunks, i), i, version,
                         m, last, c, where, err);
        if (ok) {
            last = c->index;
            g_ptr_array_add(m->chunks, c);
        } else {
            chunk_free(c);
        }
    }
    json_object_put(doc);
    return ok ? g_steal_pointer(&m) : NULL;
}

/*
 * Whether @m, read from @text, is encrypted with the repository's key and
 * matches its MAC
 */
static bool manifest_of_key(const S3cRepo *repo, const S3cManifest *m,
                            const GString *text, const char *where,
                            GError **err)
{
    g_autofree char *key_id = NULL;
    S3chainImageKeys keys;
    bool intact;

    if (!m->encrypted) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_KEY,
                    "%s is not encrypted, but --key-file gives a key: not "
                    "reading it as plain text", where);
        return false;
    }
    key_id = s3chain_id_to_hex(m->key_id);
    if (strcmp(key_id, repo->key_id)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_KEY,
                    "%s is encrypted with key id %s, and --key-file's key "
                    "has key id %s: give the key it was written with",
                    where, key_id, repo->key_id);
        return false;
    }
    intact = s3chain_image_keys(repo->key, m->image_id, &keys) &&
             s3chain_manifest_mac_matches(&keys, text->str, m->mac_covered,
                                          m->mac_hex);
    s3chain_image_keys_clear(&keys);
    if (!intact) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "%s: the manifest does not match its MAC: it was "
                    "altered", where);
    }
    return intact;
}

S3cManifest *s3c_manifest_load(const S3cRepo *repo, const char *key,
                               GError **err)
{
    S3cManifest *m;
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    g_autofree char *where = g_strdup_printf("s3://%s/%s", repo->bucket,
                                             key);

    if (!s3c_s3_get(repo, key, &body, &local)) {
        if (local) {
            g_propagate_error(err, g_steal_pointer(&local));
        } else {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "%s: missing (the image's manifest)", where);
        }
        return NULL;
    }
    m = s3c_manifest_parse(key, body, where, err);
    if (m && repo->has_key && !manifest_of_key(repo, m, body, where, err)) {
        g_clear_pointer(&m, s3c_manifest_free);
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
 * The CRC-32 of @body, chunk @c's bytes, and with a block size, in
 * *@block_sums, what the manifest (or S3CHAIN_BLOCK_SUMS_META) must hold
 * for it: the whole's is combined from the blocks', not computed twice.
 * A compressed chunk's blocks have the lengths the manifest gives.
 */
static uint32_t crc32_of(const S3cChunk *c, const GString *body,
                         char **block_sums)
{
    size_t n = c->stored_lengths ? c->n_stored
               : c->block_size ? (body->len + c->block_size - 1) /
                                 c->block_size : 0;
    GString *hex;
    uint32_t crc32 = 0;

    if (!c->block_size) {
        return crc32_z(0, (const Bytef *)body->str, body->len);
    }
    hex = g_string_new(NULL);
    for (size_t i = 0, at = 0; i < n; i++) {
        size_t len = c->stored_lengths ? c->stored_lengths[i]
                                       : MIN(c->block_size, body->len - at);
        uint32_t block = crc32_z(0, (const Bytef *)body->str + at, len);

        g_string_append_printf(hex, "%08" PRIx32, block);
        crc32 = crc32_combine(crc32, block, len);
        at += len;
    }
    *block_sums = g_string_free(hex, false);
    return crc32;
}

typedef struct DeepCheck {
    const S3cRepo *repo;
    const S3cManifest *m;
    /* an encrypted image's, when the repository has the key */
    bool has_keys;
    S3chainImageKeys keys;
    GMutex lock;
    GPtrArray *faults;
    GError *error;              /* the first failure to read at all */
} DeepCheck;

/*
 * Reads @key into *@body; its bytes must have MD5 @want.  A fault found
 * in them goes in *@fault; a failure to read at all in @err.
 */
static bool get_checked(const DeepCheck *dc, const char *key,
                        const char *want, GString **body, char **meta_sums,
                        char **fault, GError **err)
{
    g_autofree char *md5 = NULL;
    bool ok = meta_sums ? s3c_s3_get_meta(dc->repo, key,
                                          S3CHAIN_BLOCK_SUMS_META, body,
                                          meta_sums, err)
                        : s3c_s3_get(dc->repo, key, body, err);

    if (!ok) {
        if (!*err) {
            *fault = g_strdup_printf("s3://%s/%s: missing", dc->repo->bucket,
                                     key);
        }
        return false;
    }
    md5 = g_compute_checksum_for_data(G_CHECKSUM_MD5,
                                      (const guchar *)(*body)->str,
                                      (*body)->len);
    if (strcmp(md5, want)) {
        *fault = g_strdup_printf("s3://%s/%s: its bytes have MD5 %s, the "
                                 "manifest says %s", dc->repo->bucket, key,
                                 md5, want);
        return false;
    }
    return true;
}

/*
 * Lays the patches of chunk @c over @body, its whole object's bytes: the
 * chunk as a reader sees it
 */
static bool apply_patches(const DeepCheck *dc, const S3cChunk *c,
                          GString *body, char **fault, GError **err)
{
    for (unsigned i = 0; i < c->n_patches; i++) {
        const S3cPatch *p = &c->patches[i];
        g_autoptr(GString) patch = NULL;
        size_t at = 0;

        if (!get_checked(dc, p->key, p->md5, &patch, NULL, fault, err)) {
            return false;
        }
        if (patch->len != __builtin_popcountll(p->blocks) * c->block_size) {
            *fault = g_strdup_printf("s3://%s/%s: %zu bytes, not the %d "
                                     "blocks the manifest says it holds",
                                     dc->repo->bucket, p->key, patch->len,
                                     __builtin_popcountll(p->blocks));
            return false;
        }
        for (uint64_t rest = p->blocks; rest; rest &= rest - 1) {
            size_t to = __builtin_ctzll(rest) * c->block_size;

            if (to + c->block_size > body->len) {
                g_string_set_size(body, to + c->block_size);
            }
            memcpy(body->str + to, patch->str + at, c->block_size);
            at += c->block_size;
        }
    }
    return true;
}

/* Whether @body is as long as compressed chunk @c's blocks, else why not */
static char *stored_length_fault(const DeepCheck *dc, const S3cChunk *c,
                                 const GString *body)
{
    size_t stored = 0;

    for (size_t i = 0; i < c->n_stored; i++) {
        stored += c->stored_lengths[i];
    }
    if (stored == body->len) {
        return NULL;
    }
    return g_strdup_printf("s3://%s/%s: %zu bytes, where its blocks' stored "
                           "lengths add up to %zu", dc->repo->bucket, c->key,
                           body->len, stored);
}

/*
 * Whether each block of packed chunk @c in @body opens (encrypted, when
 * the key is there) and unpacks whole
 */
static char *unpack_fault(const DeepCheck *dc, const S3cChunk *c,
                          const GString *body)
{
    g_autofree uint8_t *block = g_malloc(c->block_size);
    g_autofree uint8_t *plain = g_malloc(c->block_size);
    S3chainSealer *sealer = dc->has_keys ? s3chain_sealer_new(&dc->keys)
                                         : NULL;
    char *fault = NULL;
    size_t at = 0;

    if (dc->m->encrypted && !dc->has_keys) {
        /* nothing to open it with: its sums were all there is to check */
        return NULL;
    }
    for (size_t i = 0; !fault && i < c->n_stored;
         at += c->stored_lengths[i++]) {
        const uint8_t *bytes = (const uint8_t *)body->str + at;
        size_t len = c->stored_lengths[i];

        if (!len) {
            continue;
        }
        if (sealer) {
            len -= S3CHAIN_SEAL_OVERHEAD;
            if (!s3chain_open_block(sealer, c->index, c->tag, i, bytes,
                                    len + S3CHAIN_SEAL_OVERHEAD, plain)) {
                fault = g_strdup_printf("s3://%s/%s: block %zu was not "
                                        "sealed there by this image's key: "
                                        "the object was altered, moved or "
                                        "replaced", dc->repo->bucket, c->key,
                                        i);
                break;
            }
            bytes = plain;
        }
        if (len < c->block_size &&
            ZSTD_decompress(block, c->block_size, bytes, len) !=
            c->block_size) {
            fault = g_strdup_printf("s3://%s/%s: block %zu is not a zstd "
                                    "frame of %" G_GUINT64_FORMAT " bytes",
                                    dc->repo->bucket, c->key, i,
                                    c->block_size);
        }
    }
    s3chain_sealer_free(sealer);
    return fault;
}

static void read_chunk(gpointer data, gpointer opaque)
{
    const S3cChunk *c = data;
    DeepCheck *dc = opaque;
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    g_autofree char *meta_sums = NULL;
    char *fault = NULL;

    if (get_checked(dc, c->key, c->md5, &body, &meta_sums, &fault, &local) &&
        apply_patches(dc, c, body, &fault, &local) &&
        !(c->stored_lengths && (fault = stored_length_fault(dc, c, body)))) {
        g_autofree char *want = NULL;
        uint32_t crc32 = crc32_of(c, body, &want);
        const char *block_sums = c->block_sums ? c->block_sums : meta_sums;

        if (c->has_crc32 && crc32 != c->crc32) {
            fault = g_strdup_printf("s3://%s/%s: its bytes%s have CRC-32 "
                                    "%08x, the manifest says %08x",
                                    dc->repo->bucket, c->key,
                                    c->n_patches ? " with its patches" : "",
                                    crc32, c->crc32);
        } else if (c->block_size && g_strcmp0(block_sums, want)) {
            fault = g_strdup_printf("s3://%s/%s: its block sums (%s) are "
                                    "not those of its bytes",
                                    dc->repo->bucket, c->key,
                                    c->block_sums ? "in the manifest"
                                    : meta_sums ? "metadata "
                                    S3CHAIN_BLOCK_SUMS_META : "none");
        } else if (c->stored_lengths) {
            fault = unpack_fault(dc, c, body);
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
    DeepCheck dc = { .repo = repo, .m = m, .faults = faults };
    GThreadPool *pool;

    dc.has_keys = m->encrypted && repo->has_key &&
                  s3chain_image_keys(repo->key, m->image_id, &dc.keys);
    pool = g_thread_pool_new(read_chunk, &dc, VERIFY_READERS, false, NULL);
    g_mutex_init(&dc.lock);
    for (size_t i = 0; i < m->chunks->len; i++) {
        g_thread_pool_push(pool, g_ptr_array_index(m->chunks, i), NULL);
    }
    g_thread_pool_free(pool, false, true);
    g_mutex_clear(&dc.lock);
    s3chain_image_keys_clear(&dc.keys);
    if (dc.error) {
        g_propagate_error(err, dc.error);
        return false;
    }
    return true;
}

/*
 * The most a qcow2 image of a @virtual_size disk can take: its data, L2
 * and refcount tables (under 1/8 of it at 512-byte clusters) and a
 * handful of 2 MiB metadata clusters
 */
static uint64_t qcow2_size_bound(uint64_t virtual_size)
{
    return virtual_size + virtual_size / 8 + 128 * 1024 * 1024;
}

/* Object @key, stored with MD5 @md5, is in @etags with that ETag */
static void check_etag(const S3cRepo *repo, GHashTable *etags,
                       const char *key, const char *md5, GPtrArray *faults)
{
    const char *etag = g_hash_table_lookup(etags, key);

    if (!etag) {
        g_ptr_array_add(faults, g_strdup_printf("s3://%s/%s: missing",
                                                repo->bucket, key));
    } else if (strcmp(etag, md5)) {
        g_ptr_array_add(faults, g_strdup_printf(
            "s3://%s/%s: its ETag is %s, the manifest's MD5 %s",
            repo->bucket, key, etag, md5));
    }
}

bool s3c_image_verify(const S3cRepo *repo, const char *key,
                      uint64_t virtual_size, bool deep, GPtrArray *faults,
                      GError **err)
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
    if (m->size > qcow2_size_bound(virtual_size)) {
        g_ptr_array_add(faults, g_strdup_printf(
            "s3://%s/%s: its \"size\" %" G_GUINT64_FORMAT " is more than "
            "a qcow2 image of the %" G_GUINT64_FORMAT "-byte disk can be",
            repo->bucket, key, m->size, virtual_size));
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

        check_etag(repo, etags, c->key, c->md5, faults);
        for (unsigned p = 0; p < c->n_patches; p++) {
            check_etag(repo, etags, c->patches[p].key, c->patches[p].md5,
                       faults);
        }
    }
    return true;
}
