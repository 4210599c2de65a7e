/*
 * s3chain: the manifest of a chunked image, its commit point
 *
 * A chunked image with key K is the manifest object K (Content-Type
 * S3CHAIN_MANIFEST_TYPE) and one object per stored chunk, K.d/INDEX.TAG.
 * A chunk's object is never rewritten: each upload gets a new TAG, so the
 * last committed manifest always names intact objects.  The manifest is
 * JSON:
 *
 *   {"format": "s3chain-chunked", "version": 4, "size": N,
 *    "chunk-size": C, "generation": G,
 *    "chunks": [[INDEX, "TAG", "MD5 hex", "CRC-32 hex", BLOCK_SIZE,
 *                "BLOCK SUMS hex"], ...]}
 *
 * with chunks in ascending INDEX order.  Chunks that are not listed read
 * as zeroes.  BLOCK SUMS are the CRC-32 of each block of BLOCK_SIZE, 8
 * hex digits each.  Version 1 had no CRC-32, version 2 no block sums,
 * version 3 entries end at BLOCK_SIZE (the sums are in the object's
 * S3CHAIN_BLOCK_SUMS_META); a chunk that an older writer stored keeps
 * its shorter entry when a later writer commits.  Version 5 entries may
 * end with the chunk's patches, [["TAG", "MD5 hex", "BLOCKS hex"], ...]
 * oldest first, BLOCKS a mask of 16 hex digits, in entries whose blocks
 * are s3chain_block_size()'s; the CRC-32 and block sums are then of the
 * chunk as its patches make it.  A manifest says
 * version 5 only when an entry has patches, so that version 4 readers
 * read what needs nothing newer.  Version 6 is a compressed image's:
 * "compress": "zstd", and every entry ends with the length of each
 * block in its object, 8 hex digits each, "STORED LENGTHS hex" (0: the
 * block is all zeroes, the block size: stored as is, else a zstd frame);
 * its MD5, CRC-32 and block sums are of the stored bytes, and it has no
 * patches.  Version 7 is an encrypted image's: "encrypt": "aes-256-gcm",
 * the "key-id" of the user's key and the image's own "image-id", each
 * stored block sealed (s3chain-seal.c), perhaps compressed too, and the
 * manifest ends with its "mac", the HMAC of every byte before it.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qnum.h"
#include "qobject/qstring.h"
#include "s3chain.h"

void s3chain_chunk_ref_copy(S3chainChunkRef *dst, const S3chainChunkRef *src)
{
    *dst = *src;
    dst->tag = g_strdup(src->tag);
    dst->block_sums = g_strdup(src->block_sums);
    dst->stored_lengths = g_strdup(src->stored_lengths);
    for (unsigned i = 0; i < src->n_patches; i++) {
        dst->patches[i].tag = g_strdup(src->patches[i].tag);
    }
}

void s3chain_chunk_ref_clear(S3chainChunkRef *ref)
{
    g_free(ref->tag);
    g_free(ref->block_sums);
    g_free(ref->stored_lengths);
    for (unsigned i = 0; i < ref->n_patches; i++) {
        g_free(ref->patches[i].tag);
    }
    memset(ref, 0, sizeof(*ref));
}

static void chunk_ref_free(gpointer p)
{
    s3chain_chunk_ref_clear(p);
    g_free(p);
}

S3chainManifest *s3chain_manifest_new(uint64_t size, uint64_t chunk_size)
{
    S3chainManifest *m = g_new0(S3chainManifest, 1);

    m->size = size;
    m->chunk_size = chunk_size;
    m->chunks = g_tree_new_full((GCompareDataFunc)s3chain_index_cmp, NULL,
                                g_free, chunk_ref_free);
    return m;
}

void s3chain_manifest_free(S3chainManifest *m)
{
    if (m) {
        if (m->keys) {
            s3chain_image_keys_clear(m->keys);
            g_free(m->keys);
        }
        g_tree_unref(m->chunks);
        g_free(m);
    }
}

gint s3chain_index_cmp(gconstpointer a, gconstpointer b, gpointer unused)
{
    uint64_t ia = *(const uint64_t *)a, ib = *(const uint64_t *)b;

    return ia < ib ? -1 : ia > ib;
}

S3chainChunkRef *s3chain_manifest_lookup(S3chainManifest *m, uint64_t index)
{
    return g_tree_lookup(m->chunks, &index);
}

void s3chain_manifest_set(S3chainManifest *m, uint64_t index,
                          const S3chainChunkRef *ref)
{
    S3chainChunkRef *copy = g_new(S3chainChunkRef, 1);
    uint64_t *key = g_new(uint64_t, 1);

    *key = index;
    s3chain_chunk_ref_copy(copy, ref);
    g_tree_replace(m->chunks, key, copy);
}

void s3chain_manifest_remove(S3chainManifest *m, uint64_t index)
{
    g_tree_remove(m->chunks, &index);
}

/* 16 bytes, an MD5 or an id, in lower-case hex */
static void encode_md5(GString *out, const uint8_t *md5)
{
    for (int i = 0; i < 16; i++) {
        g_string_append_printf(out, "%02x", md5[i]);
    }
}

static gboolean encode_chunk(gpointer key, gpointer value, gpointer opaque)
{
    GString *out = opaque;
    S3chainChunkRef *ref = value;

    g_string_append_printf(out, "%s[%" PRIu64 ", \"%s\", \"",
                           out->str[out->len - 1] == '[' ? "" : ", ",
                           *(uint64_t *)key, ref->tag);
    encode_md5(out, ref->md5);
    if (ref->has_crc32) {
        g_string_append_printf(out, "\", \"%08" PRIx32, ref->crc32);
    }
    g_string_append_c(out, '"');
    if (ref->block_size) {
        g_string_append_printf(out, ", %" PRIu64, ref->block_size);
    }
    if (ref->block_sums) {
        g_string_append_printf(out, ", \"%s\"", ref->block_sums);
    }
    if (ref->stored_lengths) {
        g_string_append_printf(out, ", \"%s\"", ref->stored_lengths);
    }
    for (unsigned i = 0; i < ref->n_patches; i++) {
        g_string_append_printf(out, "%s[\"%s\", \"", i ? ", " : ", [",
                               ref->patches[i].tag);
        encode_md5(out, ref->patches[i].md5);
        g_string_append_printf(out, "\", \"%016" PRIx64 "\"]%s",
                               ref->patches[i].blocks,
                               i + 1 == ref->n_patches ? "]" : "");
    }
    g_string_append_c(out, ']');
    return false;
}

/* Sets *@opaque and stops at the first entry with patches */
static gboolean find_patched(gpointer key, gpointer value, gpointer opaque)
{
    if (((S3chainChunkRef *)value)->n_patches) {
        *(bool *)opaque = true;
        return true;
    }
    return false;
}

char *s3chain_manifest_encode(const S3chainManifest *m)
{
    GString *out = g_string_new(NULL);
    bool patched = false;
    int version = S3CHAIN_MANIFEST_VERSION_UNPATCHED;

    g_tree_foreach(m->chunks, find_patched, &patched);
    if (m->encrypted) {
        version = S3CHAIN_MANIFEST_VERSION_ENCRYPTED;
    } else if (m->compressed) {
        version = S3CHAIN_MANIFEST_VERSION_COMPRESSED;
    } else if (patched) {
        version = S3CHAIN_MANIFEST_VERSION_PATCHED;
    }
    g_string_append_printf(out, "{\"format\": \"%s\", \"version\": %d, ",
                           S3CHAIN_MANIFEST_FORMAT, version);
    if (m->encrypted) {
        g_string_append(out, "\"encrypt\": \"" S3CHAIN_ENCRYPT_AES_256_GCM
                        "\", \"key-id\": \"");
        encode_md5(out, m->key_id);
        g_string_append(out, "\", \"image-id\": \"");
        encode_md5(out, m->image_id);
        g_string_append(out, "\", ");
    }
    if (m->compressed) {
        g_string_append(out, "\"compress\": \"" S3CHAIN_COMPRESS_ZSTD
                        "\", ");
    }
    g_string_append_printf(out, "\"size\": %" PRIu64 ", \"chunk-size\": %"
                           PRIu64 ", \"generation\": %" PRIu64
                           ", \"chunks\": [", m->size, m->chunk_size,
                           m->generation);
    g_tree_foreach(m->chunks, encode_chunk, out);
    g_string_append_c(out, ']');
    if (m->encrypted) {
        char mac[2 * S3CHAIN_MAC_LEN + 1];

        /* only the writer of an image has its keys */
        assert(m->keys);
        s3chain_manifest_mac(m->keys, out->str, out->len, mac);
        g_string_append_printf(out, S3CHAIN_MAC_MEMBER "%s\"", mac);
    }
    g_string_append(out, "}\n");
    return g_string_free(out, false);
}

/* @s's string, or NULL if it is no string */
static const char *string_of(QString *s)
{
    return s ? qstring_get_str(s) : NULL;
}

static bool get_uint(QDict *d, const char *name, uint64_t *value,
                     Error **errp)
{
    QNum *n = qobject_to(QNum, qdict_get(d, name));

    if (!n || !qnum_get_try_uint(n, value)) {
        error_setg(errp, "manifest has no valid '%s'", name);
        return false;
    }
    return true;
}

/*
 * Reads @list, version 5's patches of a chunk of @blocks blocks, into
 * @ref: at most S3CHAIN_MAX_PATCHES of [TAG, MD5, BLOCKS], each holding
 * some of the chunk's blocks
 */
static bool decode_patches(QList *list, uint64_t chunk_size,
                           S3chainChunkRef *ref)
{
    QListEntry *e;

    if (!list || qlist_empty(list)) {
        return false;
    }
    QLIST_FOREACH_ENTRY(list, e) {
        QList *item = qobject_to(QList, qlist_entry_obj(e));
        S3chainPatchRef *p = &ref->patches[ref->n_patches];
        QString *fields[3] = { NULL };
        const QListEntry *f;
        size_t n = 0;

        if (!item || qlist_size(item) != 3 ||
            ref->n_patches == S3CHAIN_MAX_PATCHES) {
            return false;
        }
        for (f = qlist_first(item); f; f = qlist_next(f)) {
            fields[n++] = qobject_to(QString, qlist_entry_obj(f));
        }
        if (!fields[0] || !fields[1] || !fields[2]) {
            return false;
        }
        if (!s3chain_tag_is_valid(qstring_get_str(fields[0])) ||
            !s3chain_md5_from_hex(qstring_get_str(fields[1]), p->md5) ||
            !s3chain_patch_blocks_from_hex(qstring_get_str(fields[2]),
                                           chunk_size, &p->blocks)) {
            return false;
        }
        /* borrowed from @list, as the entry's other strings are */
        p->tag = (char *)qstring_get_str(fields[0]);
        ref->n_patches++;
    }
    return true;
}

/*
 * Reads version 7's members into @m: the encryption, the key id, the
 * image id, and the MAC that ends @json, the manifest's text; an older
 * version must have none of them
 */
static bool decode_encryption(QDict *d, const char *json, uint64_t version,
                              S3chainManifest *m, Error **errp)
{
    const char *encrypt = qdict_get_try_str(d, "encrypt");
    const char *mac_hex;

    if (!m->encrypted) {
        if (qdict_haskey(d, "encrypt") || qdict_haskey(d, "key-id") ||
            qdict_haskey(d, "image-id") || qdict_haskey(d, "mac")) {
            error_setg(errp, "manifest version %" PRIu64 " has an encrypted "
                       "image's members", version);
            return false;
        }
        return true;
    }
    if (!encrypt) {
        error_setg(errp, "manifest has no valid 'encrypt'");
        return false;
    }
    if (!s3chain_encrypt_is_valid(encrypt)) {
        error_setg(errp, "manifest encryption '%s' is not supported; this "
                   "s3chain reads " S3CHAIN_ENCRYPT_AES_256_GCM, encrypt);
        return false;
    }
    if (!s3chain_id_from_hex(qdict_get_try_str(d, "key-id"), m->key_id) ||
        !s3chain_id_from_hex(qdict_get_try_str(d, "image-id"),
                             m->image_id)) {
        error_setg(errp, "manifest has no valid 'key-id' and 'image-id'");
        return false;
    }
    if (!qdict_get_try_str(d, "mac") ||
        !s3chain_manifest_mac_split(json, &m->mac_covered, &mac_hex)) {
        error_setg(errp, "manifest does not end with a valid 'mac'");
        return false;
    }
    memcpy(m->mac_hex, mac_hex, 2 * S3CHAIN_MAC_LEN);
    m->mac_hex[2 * S3CHAIN_MAC_LEN] = '\0';
    return true;
}

S3chainManifest *s3chain_manifest_decode(const char *json, Error **errp)
{
    QObject *obj = qobject_from_json(json, NULL);
    g_autoptr(QDict) d = qobject_to(QDict, obj);
    g_autoptr(S3chainManifest) m = NULL;
    uint64_t size, chunk_size, generation, version, last = 0;
    const char *format, *compress;
    QList *chunks;
    QListEntry *e;

    if (!d) {
        qobject_unref(obj);
        error_setg(errp, "manifest is not a JSON object");
        return NULL;
    }
    format = qdict_get_try_str(d, "format");
    if (!format || strcmp(format, S3CHAIN_MANIFEST_FORMAT)) {
        error_setg(errp, "manifest format is not " S3CHAIN_MANIFEST_FORMAT);
        return NULL;
    }
    if (!get_uint(d, "version", &version, errp)) {
        return NULL;
    }
    if (version < 1 || version > S3CHAIN_MANIFEST_VERSION) {
        error_setg(errp, "manifest version %" PRIu64 " is not supported; "
                   "this s3chain reads versions 1 to %d", version,
                   S3CHAIN_MANIFEST_VERSION);
        return NULL;
    }
    if (!get_uint(d, "size", &size, errp) ||
        !get_uint(d, "chunk-size", &chunk_size, errp) ||
        !get_uint(d, "generation", &generation, errp)) {
        return NULL;
    }
    if (!s3chain_chunk_size_is_valid(chunk_size)) {
        error_setg(errp, "manifest chunk-size %" PRIu64 " is invalid",
                   chunk_size);
        return NULL;
    }
    compress = qdict_haskey(d, "compress") ?
               qdict_get_try_str(d, "compress") ?: "" : NULL;
    if ((version == S3CHAIN_MANIFEST_VERSION_COMPRESSED && !compress) ||
        (version < S3CHAIN_MANIFEST_VERSION_COMPRESSED && compress) ||
        (compress && !*compress)) {
        error_setg(errp, "manifest has no valid 'compress'");
        return NULL;
    }
    if (compress && !s3chain_compress_is_valid(compress)) {
        error_setg(errp, "manifest compression '%s' is not supported; this "
                   "s3chain reads " S3CHAIN_COMPRESS_ZSTD, compress);
        return NULL;
    }
    chunks = qobject_to(QList, qdict_get(d, "chunks"));
    if (!chunks) {
        error_setg(errp, "manifest has no chunk list");
        return NULL;
    }

    m = s3chain_manifest_new(size, chunk_size);
    m->generation = generation;
    m->compressed = compress != NULL;
    m->encrypted = version == S3CHAIN_MANIFEST_VERSION_ENCRYPTED;
    if (!decode_encryption(d, json, version, m, errp)) {
        return NULL;
    }
    QLIST_FOREACH_ENTRY(chunks, e) {
        QList *item = qobject_to(QList, qlist_entry_obj(e));
        QObject *fields[7] = { NULL };
        QNum *index_num, *block_size_num;
        QString *tag, *md5_hex, *crc32_hex, *block_sums, *stored_lengths;
        S3chainChunkRef ref = { 0 };
        uint64_t index;
        size_t n = 0;

        if (item) {
            QListEntry *f;

            QLIST_FOREACH_ENTRY(item, f) {
                if (n < ARRAY_SIZE(fields)) {
                    fields[n] = qlist_entry_obj(f);
                }
                n++;
            }
        }
        if (n < 3 || n > s3chain_entry_fields_max(version) ||
            (s3chain_manifest_packed(m) && n != 7)) {
            error_setg(errp, "manifest chunk entry is not %s",
                       s3chain_entry_shape(version));
            return NULL;
        }
        index_num = qobject_to(QNum, fields[0]);
        tag = qobject_to(QString, fields[1]);
        md5_hex = qobject_to(QString, fields[2]);
        crc32_hex = qobject_to(QString, fields[3]);
        block_size_num = qobject_to(QNum, fields[4]);
        block_sums = qobject_to(QString, fields[5]);
        stored_lengths = s3chain_manifest_packed(m) ?
                         qobject_to(QString, fields[6]) : NULL;
        ref.has_crc32 = n >= 4;
        if (!index_num || !qnum_get_try_uint(index_num, &index) ||
            !s3chain_tag_is_valid(string_of(tag)) ||
            !s3chain_md5_from_hex(string_of(md5_hex), ref.md5) ||
            (ref.has_crc32 &&
             !s3chain_crc32_from_hex(string_of(crc32_hex), &ref.crc32)) ||
            (n >= 5 && (!block_size_num ||
                        !qnum_get_try_uint(block_size_num, &ref.block_size) ||
                        !s3chain_block_size_is_valid(ref.block_size,
                                                     chunk_size))) ||
            (n >= 6 && !s3chain_block_sums_are_valid(string_of(block_sums),
                                                     chunk_size,
                                                     ref.block_size)) ||
            (n == 7 && ref.block_size != s3chain_block_size(chunk_size)) ||
            (n == 7 && !s3chain_manifest_packed(m) &&
             !decode_patches(qobject_to(QList, fields[6]), chunk_size,
                             &ref)) ||
            (s3chain_manifest_packed(m) &&
             !s3chain_stored_lengths_from_hex(string_of(stored_lengths),
                                              chunk_size, ref.block_size,
                                              m->compressed, m->encrypted,
                                              NULL))) {
            error_setg(errp, "manifest chunk entry is malformed");
            return NULL;
        }
        if (!s3chain_chunk_index_is_valid(index, size, chunk_size) ||
            (g_tree_nnodes(m->chunks) && index <= last)) {
            error_setg(errp, "manifest chunk %" PRIu64 " is out of order or "
                       "beyond the image's end", index);
            return NULL;
        }
        last = index;
        ref.tag = (char *)qstring_get_str(tag);
        ref.block_sums = n >= 6 ? (char *)qstring_get_str(block_sums) : NULL;
        ref.stored_lengths = (char *)string_of(stored_lengths);
        s3chain_manifest_set(m, index, &ref);
    }
    return g_steal_pointer(&m);
}
