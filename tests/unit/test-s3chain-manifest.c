/*
 * Tests of the manifest codec of s3chain's chunked images
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "../../block/s3chain.h"

static const S3chainChunkRef ref_a = {
    .md5 = {
        0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04,
        0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e,
    },
    .has_crc32 = true,
    .crc32 = 0x0a1b2c3d,
};

/* 16 block sums, of a 1 MiB chunk in 64 KiB blocks */
#define SUMS_16 "0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d" \
    "0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d0a1b2c3d" \
    "0a1b2c3d0a1b2c3d"

static void set(S3chainManifest *m, uint64_t index, const char *tag,
                bool has_crc32, uint64_t block_size, const char *block_sums)
{
    S3chainChunkRef ref = ref_a;

    ref.tag = (char *)tag;
    ref.has_crc32 = has_crc32;
    ref.block_size = block_size;
    ref.block_sums = (char *)block_sums;
    s3chain_manifest_set(m, index, &ref);
}

static void test_round_trip(void)
{
    g_autoptr(S3chainManifest) m = s3chain_manifest_new(10 * MiB + 3,
                                                        1 * MiB);
    g_autoptr(S3chainManifest) back = NULL;
    g_autofree char *json = NULL;
    g_autofree char *again = NULL;
    S3chainChunkRef *ref;

    m->generation = 7;
    set(m, 10, "7.1", true, 0, NULL);
    set(m, 0, "3.2a", false, 0, NULL);
    set(m, 4, "5.1", true, 0, NULL);
    set(m, 4, "7.2", true, 64 * KiB, SUMS_16);
    set(m, 6, "6.1", true, 64 * KiB, NULL);
    s3chain_manifest_remove(m, 9);

    json = s3chain_manifest_encode(m);
    g_assert_cmpstr(json, ==,
        "{\"format\": \"s3chain-chunked\", \"version\": 4, "
        "\"size\": 10485763, \"chunk-size\": 1048576, \"generation\": 7, "
        "\"chunks\": [[0, \"3.2a\", \"d41d8cd98f00b204e9800998ecf8427e\"], "
        "[4, \"7.2\", \"d41d8cd98f00b204e9800998ecf8427e\", \"0a1b2c3d\", "
        "65536, \"" SUMS_16 "\"], "
        "[6, \"6.1\", \"d41d8cd98f00b204e9800998ecf8427e\", \"0a1b2c3d\", "
        "65536], "
        "[10, \"7.1\", \"d41d8cd98f00b204e9800998ecf8427e\", "
        "\"0a1b2c3d\"]]}\n");

    back = s3chain_manifest_decode(json, &error_abort);
    g_assert_cmpuint(back->size, ==, 10 * MiB + 3);
    g_assert_cmpuint(back->chunk_size, ==, 1 * MiB);
    g_assert_cmpuint(back->generation, ==, 7);
    g_assert_cmpint(g_tree_nnodes(back->chunks), ==, 4);
    ref = s3chain_manifest_lookup(back, 4);
    g_assert_nonnull(ref);
    g_assert_cmpstr(ref->tag, ==, "7.2");
    g_assert_cmpmem(ref->md5, 16, ref_a.md5, 16);
    g_assert_true(ref->has_crc32);
    g_assert_cmphex(ref->crc32, ==, 0x0a1b2c3d);
    g_assert_cmpuint(ref->block_size, ==, 64 * KiB);
    g_assert_cmpstr(ref->block_sums, ==, SUMS_16);
    /* a version 3 writer's chunk: its sums are in its object */
    g_assert_null(s3chain_manifest_lookup(back, 6)->block_sums);
    g_assert_cmpuint(s3chain_manifest_lookup(back, 10)->block_size, ==, 0);
    g_assert_false(s3chain_manifest_lookup(back, 0)->has_crc32);
    g_assert_null(s3chain_manifest_lookup(back, 5));

    again = s3chain_manifest_encode(back);
    g_assert_cmpstr(again, ==, json);
}

/* A chunk with patches makes the manifest version 5; without, it is 4 */
static void test_patches(void)
{
    g_autoptr(S3chainManifest) m = s3chain_manifest_new(2 * MiB, 1 * MiB);
    g_autoptr(S3chainManifest) back = NULL;
    g_autofree char *json = NULL;
    g_autofree char *again = NULL;
    S3chainChunkRef ref = ref_a;
    S3chainChunkRef *got;

    ref.tag = (char *)"1.1";
    ref.block_size = 64 * KiB;
    ref.block_sums = (char *)SUMS_16;
    ref.n_patches = 2;
    ref.patches[0] = (S3chainPatchRef) { .tag = (char *)"2.1",
                                         .blocks = 0x8001 };
    ref.patches[1] = (S3chainPatchRef) { .tag = (char *)"3.a",
                                         .blocks = 0x10 };
    memcpy(ref.patches[0].md5, ref_a.md5, 16);
    s3chain_manifest_set(m, 1, &ref);
    json = s3chain_manifest_encode(m);
    g_assert_cmpstr(json, ==,
        "{\"format\": \"s3chain-chunked\", \"version\": 5, "
        "\"size\": 2097152, \"chunk-size\": 1048576, \"generation\": 0, "
        "\"chunks\": [[1, \"1.1\", \"d41d8cd98f00b204e9800998ecf8427e\", "
        "\"0a1b2c3d\", 65536, \"" SUMS_16 "\", "
        "[[\"2.1\", \"d41d8cd98f00b204e9800998ecf8427e\", "
        "\"0000000000008001\"], "
        "[\"3.a\", \"00000000000000000000000000000000\", "
        "\"0000000000000010\"]]]]}\n");

    back = s3chain_manifest_decode(json, &error_abort);
    got = s3chain_manifest_lookup(back, 1);
    g_assert_cmpuint(got->n_patches, ==, 2);
    g_assert_cmpstr(got->patches[0].tag, ==, "2.1");
    g_assert_cmpmem(got->patches[0].md5, 16, ref_a.md5, 16);
    g_assert_cmphex(got->patches[0].blocks, ==, 0x8001);
    g_assert_cmpstr(got->patches[1].tag, ==, "3.a");
    g_assert_cmphex(got->patches[1].blocks, ==, 0x10);
    again = s3chain_manifest_encode(back);
    g_assert_cmpstr(again, ==, json);

    /* patches gone, the version is 4 again */
    ref.n_patches = 0;
    s3chain_manifest_set(back, 1, &ref);
    g_free(again);
    again = s3chain_manifest_encode(back);
    g_assert_nonnull(strstr(again, "\"version\": 4,"));
}

/* A compressed image's manifest is version 6, with each block's length */
static void test_compressed(void)
{
    g_autoptr(S3chainManifest) m = s3chain_manifest_new(2 * MiB, 128 * KiB);
    g_autoptr(S3chainManifest) back = NULL;
    g_autofree char *json = NULL;
    g_autofree char *again = NULL;
    S3chainChunkRef ref = ref_a;
    S3chainChunkRef *got;
    uint32_t lengths[2];

    m->compressed = true;
    ref.tag = (char *)"1.1";
    ref.block_size = 64 * KiB;
    ref.block_sums = (char *)"0a1b2c3d00000000";
    ref.stored_lengths = (char *)"00000abc00000000";
    s3chain_manifest_set(m, 3, &ref);
    json = s3chain_manifest_encode(m);
    g_assert_cmpstr(json, ==,
        "{\"format\": \"s3chain-chunked\", \"version\": 6, "
        "\"compress\": \"zstd\", "
        "\"size\": 2097152, \"chunk-size\": 131072, \"generation\": 0, "
        "\"chunks\": [[3, \"1.1\", \"d41d8cd98f00b204e9800998ecf8427e\", "
        "\"0a1b2c3d\", 65536, \"0a1b2c3d00000000\", "
        "\"00000abc00000000\"]]}\n");
    back = s3chain_manifest_decode(json, &error_abort);
    g_assert_true(back->compressed);
    got = s3chain_manifest_lookup(back, 3);
    g_assert_cmpstr(got->stored_lengths, ==, "00000abc00000000");
    g_assert_true(s3chain_stored_lengths_from_hex(got->stored_lengths,
                                                  128 * KiB, 64 * KiB,
                                                  true, false, lengths));
    g_assert_cmpuint(lengths[0], ==, 0xabc);
    g_assert_cmpuint(lengths[1], ==, 0);
    again = s3chain_manifest_encode(back);
    g_assert_cmpstr(again, ==, json);
}

/* The user's key and an image id of the known answers (test-s3chain-seal) */
static const uint8_t user_key[S3CHAIN_KEY_LEN] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
};

/*
 * An encrypted image's manifest is version 7, with the key id, the image
 * id, and a MAC over every byte before it (computed by another HMAC, of
 * Python's cryptography)
 */
static void test_encrypted(void)
{
    g_autoptr(S3chainManifest) m = s3chain_manifest_new(2 * MiB, 128 * KiB);
    g_autoptr(S3chainManifest) back = NULL;
    g_autofree char *json = NULL;
    g_autofree char *again = NULL;
    S3chainImageKeys keys;
    S3chainChunkRef ref = ref_a;

    m->encrypted = true;
    for (int i = 0; i < S3CHAIN_ID_LEN; i++) {
        m->image_id[i] = i;
    }
    g_assert_true(s3chain_key_id(user_key, m->key_id));
    m->keys = g_new(S3chainImageKeys, 1);
    g_assert_true(s3chain_image_keys(user_key, m->image_id, m->keys));
    json = s3chain_manifest_encode(m);
    g_assert_cmpstr(json, ==,
        "{\"format\": \"s3chain-chunked\", \"version\": 7, "
        "\"encrypt\": \"aes-256-gcm\", "
        "\"key-id\": \"511ee7cad0d86d93a4242b4e1be2d0f7\", "
        "\"image-id\": \"000102030405060708090a0b0c0d0e0f\", "
        "\"size\": 2097152, \"chunk-size\": 131072, \"generation\": 0, "
        "\"chunks\": [], \"mac\": "
        "\"862b1cad034a5a922ff56216134488fcf7d01eff547ba405b63b6d26c33f2b94\"}"
        "\n");

    /* a chunk of sealed blocks: each stored length has the seal's bytes */
    ref.tag = (char *)"1.1";
    ref.block_size = 64 * KiB;
    ref.block_sums = (char *)"0a1b2c3d00000000";
    ref.stored_lengths = (char *)"0001001c00000000";
    s3chain_manifest_set(m, 3, &ref);
    g_free(json);
    json = s3chain_manifest_encode(m);
    back = s3chain_manifest_decode(json, &error_abort);
    g_assert_true(back->encrypted);
    g_assert_false(back->compressed);
    g_assert_cmpmem(back->image_id, 16, m->image_id, 16);
    g_assert_cmpmem(back->key_id, 16, m->key_id, 16);
    g_assert_true(s3chain_image_keys(user_key, back->image_id, &keys));
    g_assert_true(s3chain_manifest_mac_matches(&keys, json, back->mac_covered,
                                               back->mac_hex));
    /* a byte changed is not what the MAC covers */
    json[back->mac_covered - 20] ^= 1;
    g_assert_false(s3chain_manifest_mac_matches(&keys, json,
                                                back->mac_covered,
                                                back->mac_hex));
    json[back->mac_covered - 20] ^= 1;
    back->keys = g_memdup2(&keys, sizeof(keys));
    again = s3chain_manifest_encode(back);
    g_assert_cmpstr(again, ==, json);
    s3chain_image_keys_clear(&keys);

    /* uncompressed, a sealed block's length is the block's and the seal's */
    g_assert_false(s3chain_stored_lengths_from_hex("0001000000000000",
                                                   128 * KiB, 64 * KiB,
                                                   false, true, NULL));
    g_assert_false(s3chain_stored_lengths_from_hex("0000001c00000000",
                                                   128 * KiB, 64 * KiB,
                                                   true, true, NULL));
    g_assert_true(s3chain_stored_lengths_from_hex("0000001d0001001c",
                                                  128 * KiB, 64 * KiB,
                                                  true, true, NULL));
}

/* What a version 1 writer stored still reads */
static void test_version_1(void)
{
    g_autoptr(S3chainManifest) m = s3chain_manifest_decode(
        "{\"format\": \"s3chain-chunked\", \"version\": 1, "
        "\"size\": 2097152, \"chunk-size\": 1048576, \"generation\": 3, "
        "\"chunks\": [[1, \"2.1\", \"d41d8cd98f00b204e9800998ecf8427e\"]]}",
        &error_abort);
    S3chainChunkRef *ref = s3chain_manifest_lookup(m, 1);

    g_assert_nonnull(ref);
    g_assert_cmpstr(ref->tag, ==, "2.1");
    g_assert_cmpmem(ref->md5, 16, ref_a.md5, 16);
    g_assert_false(ref->has_crc32);
}

static void test_chunk_key(void)
{
    g_autofree char *key = s3chain_chunk_key("vm1/disk0.qcow2", 0x2a, "3.1f");

    g_assert_cmpstr(key, ==, "vm1/disk0.qcow2.d/000000000000002a.3.1f");
}

static void decode_fails(const char *json, const char *message_part)
{
    Error *err = NULL;
    S3chainManifest *m = s3chain_manifest_decode(json, &err);

    g_assert_null(m);
    g_assert_nonnull(err);
    if (!strstr(error_get_pretty(err), message_part)) {
        g_test_message("got: %s", error_get_pretty(err));
        g_assert_not_reached();
    }
    error_free(err);
}

#define HEAD(version, size, chunk) \
    "{\"format\": \"s3chain-chunked\", \"version\": " #version ", " \
    "\"size\": " #size ", \"chunk-size\": " #chunk ", \"generation\": 1, "
#define MD5 "\"d41d8cd98f00b204e9800998ecf8427e\""
#define CRC32 "\"0a1b2c3d\""
/* The driver says what is wrong; the vectors below say what is refused */
static void test_damaged(void)
{
    decode_fails("not json", "not a JSON object");
    decode_fails("{\"format\": \"qcow2\"}", "format is not s3chain-chunked");
    decode_fails(HEAD(8, 100, 65536) "\"chunks\": []}", "version 8");
    decode_fails(HEAD(7, 100, 65536) "\"chunks\": []}",
                 "no valid 'encrypt'");
    decode_fails(HEAD(6, 100, 65536) "\"compress\": \"zstd\", \"mac\": \"\", "
                 "\"chunks\": []}", "has an encrypted image's members");
    decode_fails(HEAD(6, 100, 65536) "\"chunks\": []}", "no valid 'compress'");
    decode_fails(HEAD(2, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536]]}", "not [index, tag, md5, crc32]");
    decode_fails(HEAD(5, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0a1b2c3d\", [], 1]]}", "not [index, tag, "
                 "md5, crc32, block-size, block-sums[, patches]]");
    decode_fails(HEAD(4, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0A1B2C3D\"]]}", "malformed");
    decode_fails(HEAD(1, 100, 1000) "\"chunks\": []}", "chunk-size 1000");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": {}}", "no chunk list");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[1, \"1.1\", " MD5 "]]}",
                 "beyond the image's end");
    decode_fails(HEAD(1, 200000, 65536) "\"chunks\": [[2, \"1.1\", " MD5
                 "], [1, \"1.2\", " MD5 "]]}", "out of order");
}

/*
 * What test-s3chain-manifest and the command's test both hold to: the
 * shared vectors, each decoded or refused as its line says
 */
static void test_vectors(void)
{
    g_autofree char *path = g_test_build_filename(
        G_TEST_DIST, "s3chain-manifest-vectors.txt", NULL);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    unsigned tested = 0;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (char **line = lines; *line; line++) {
        const char *json = strchr(*line, ' ');
        Error *err = NULL;
        S3chainManifest *m;

        if (!**line || **line == '#') {
            continue;
        }
        g_assert_nonnull(json);
        m = s3chain_manifest_decode(json + 1, &err);
        if (g_str_has_prefix(*line, "valid ")) {
            g_autofree char *again = NULL;
            g_autoptr(S3chainManifest) back = NULL;

            if (!m) {
                g_test_message("%s: %s", *line, error_get_pretty(err));
            }
            g_assert_nonnull(m);
            /* what is read is written back as it was meant */
            if (m->encrypted) {
                /* its writer's keys, to MAC it anew */
                m->keys = g_new(S3chainImageKeys, 1);
                g_assert_true(s3chain_image_keys(user_key, m->image_id,
                                                 m->keys));
            }
            again = s3chain_manifest_encode(m);
            back = s3chain_manifest_decode(again, &error_abort);
            g_assert_cmpint(g_tree_nnodes(back->chunks), ==,
                            g_tree_nnodes(m->chunks));
            s3chain_manifest_free(m);
        } else {
            g_assert_true(g_str_has_prefix(*line, "damaged ") ||
                          g_str_has_prefix(*line, "unsupported "));
            if (m) {
                g_test_message("decoded: %s", *line);
            }
            g_assert_null(m);
            error_free(err);
        }
        tested++;
    }
    g_assert_cmpuint(tested, >, 40);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/s3chain/manifest/round-trip", test_round_trip);
    g_test_add_func("/s3chain/manifest/patches", test_patches);
    g_test_add_func("/s3chain/manifest/compressed", test_compressed);
    g_test_add_func("/s3chain/manifest/encrypted", test_encrypted);
    g_test_add_func("/s3chain/manifest/version-1", test_version_1);
    g_test_add_func("/s3chain/manifest/chunk-key", test_chunk_key);
    g_test_add_func("/s3chain/manifest/damaged", test_damaged);
    g_test_add_func("/s3chain/manifest/vectors", test_vectors);
    return g_test_run();
}
