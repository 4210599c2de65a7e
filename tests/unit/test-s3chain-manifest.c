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
/* A version 5 manifest of a chunk of two blocks with @patches */
#define PATCHED(patches) \
    HEAD(5, 200000, 131072) "\"chunks\": [[0, \"1.1\", " MD5 ", " CRC32 \
    ", 65536, \"0a1b2c3d0a1b2c3d\", " patches "]]}"

static void test_damaged(void)
{
    decode_fails("not json", "not a JSON object");
    decode_fails("{\"format\": \"qcow2\"}", "format is not s3chain-chunked");
    decode_fails(HEAD(6, 100, 65536) "\"chunks\": []}", "version 6");
    decode_fails(HEAD(0, 100, 65536) "\"chunks\": []}", "version 0");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 "]]}", "not [index, tag, md5]");
    decode_fails(HEAD(2, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536]]}", "not [index, tag, md5, crc32]");
    decode_fails(HEAD(3, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, 1]]}", "not [index, tag, md5, crc32, "
                 "block-size]");
    decode_fails(HEAD(4, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0a1b2c3d\", 1]]}", "not [index, tag, md5, "
                 "crc32, block-size, block-sums]");
    decode_fails(HEAD(3, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0a1b2c3d\"]]}", "not [index, tag, md5, "
                 "crc32, block-size]");
    decode_fails(HEAD(5, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0a1b2c3d\", [], 1]]}", "not [index, tag, "
                 "md5, crc32, block-size, block-sums[, patches]]");
    /* patches: [tag, md5, blocks], 1 to 4, of blocks the chunk has */
    decode_fails(PATCHED("[]"), "malformed");
    /* patches only over the blocks writers use, a 64th of this chunk */
    decode_fails(HEAD(5, 8388608, 8388608) "\"chunks\": [[0, \"1.1\", "
                 MD5 ", " CRC32 ", 262144, \"" SUMS_16 SUMS_16 "\", "
                 "[[\"2.1\", " MD5 ", \"0000000000000001\"]]]]}",
                 "malformed");
    decode_fails(PATCHED("[[\"2.1\", " MD5 ", \"0000000000000004\"]]"),
                 "malformed");
    decode_fails(PATCHED("[[\"2.1\", " MD5 ", \"0000000000000000\"]]"),
                 "malformed");
    decode_fails(PATCHED("[[\"2.1\", " MD5 ", \"1\"]]"), "malformed");
    decode_fails(PATCHED("[[\"../2\", " MD5 ", \"0000000000000001\"]]"),
                 "malformed");
    decode_fails(PATCHED("[[\"2.1\", " MD5 "]]"), "malformed");
    decode_fails(PATCHED("[[\"2.1\", " MD5 ", \"0000000000000001\"], "
                         "[\"2.2\", " MD5 ", \"0000000000000001\"], "
                         "[\"2.3\", " MD5 ", \"0000000000000001\"], "
                         "[\"2.4\", " MD5 ", \"0000000000000001\"], "
                         "[\"2.5\", " MD5 ", \"0000000000000001\"]]"),
                 "malformed");
    /* one sum of 8 lower-case hex digits per block */
    decode_fails(HEAD(4, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0a1b2c3\"]]}", "malformed");
    decode_fails(HEAD(4, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, \"0A1B2C3D\"]]}", "malformed");
    decode_fails(HEAD(4, 100, 131072) "\"chunks\": [[0, \"1.1\", " MD5
                 ", " CRC32 ", 65536, \"0a1b2c3d\"]]}", "malformed");
    decode_fails(HEAD(4, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 65536, 1]]}", "malformed");
    /* blocks must divide the chunk, in at most 64 */
    decode_fails(HEAD(3, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 CRC32 ", 131072]]}", "malformed");
    decode_fails(HEAD(3, 100, 1048576) "\"chunks\": [[0, \"1.1\", " MD5
                 ", " CRC32 ", 12288]]}", "malformed");
    decode_fails(HEAD(3, 100, 1048576) "\"chunks\": [[0, \"1.1\", " MD5
                 ", " CRC32 ", 8192]]}", "malformed");
    decode_fails(HEAD(3, 100, 1048576) "\"chunks\": [[0, \"1.1\", " MD5
                 ", " CRC32 ", \"65536\"]]}", "malformed");
    decode_fails(HEAD(2, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 "\"0a1b2c3\"]]}", "malformed");
    decode_fails(HEAD(2, 100, 65536) "\"chunks\": [[0, \"1.1\", " MD5 ", "
                 "\"0A1B2C3D\"]]}", "malformed");
    decode_fails(HEAD(1, 100, 1000) "\"chunks\": []}", "chunk-size 1000");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": {}}", "no chunk list");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[0, \"1.1\"]]}",
                 "not [index, tag, md5]");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[0, \"1.1\", \"xyz\"]]}",
                 "malformed");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[0, \"../x\", " MD5 "]]}",
                 "malformed");
    decode_fails(HEAD(1, 100, 65536) "\"chunks\": [[1, \"1.1\", " MD5 "]]}",
                 "beyond the image's end");
    decode_fails(HEAD(1, 200000, 65536) "\"chunks\": [[2, \"1.1\", " MD5
                 "], [1, \"1.2\", " MD5 "]]}", "out of order");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/s3chain/manifest/round-trip", test_round_trip);
    g_test_add_func("/s3chain/manifest/patches", test_patches);
    g_test_add_func("/s3chain/manifest/version-1", test_version_1);
    g_test_add_func("/s3chain/manifest/chunk-key", test_chunk_key);
    g_test_add_func("/s3chain/manifest/damaged", test_damaged);
    return g_test_run();
}
