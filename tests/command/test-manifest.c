/*
 * The command's manifest reader against the vectors the driver's
 * test-s3chain-manifest reads too: one format, one set of rules
 *
 * Usage: test-manifest VECTORS_FILE
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

static const char *vectors_path;

/* The exit code the command gives a manifest of each kind */
static int expected_code(const char *kind)
{
    if (!strcmp(kind, "damaged")) {
        return S3C_EXIT_DAMAGED;
    }
    if (!strcmp(kind, "unsupported")) {
        /* not damaged: a newer s3chain reads it */
        return S3C_EXIT_INTERNAL;
    }
    g_assert_cmpstr(kind, ==, "valid");
    return S3C_EXIT_OK;
}

static void test_vectors(void)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    unsigned tested = 0;

    g_assert_true(g_file_get_contents(vectors_path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (char **line = lines; *line; line++) {
        const char *json = strchr(*line, ' ');
        g_autofree char *kind = NULL;
        g_autoptr(GString) body = NULL;
        g_autoptr(GError) err = NULL;
        g_autoptr(S3cManifest) m = NULL;
        int want;

        if (!**line || **line == '#') {
            continue;
        }
        g_assert_nonnull(json);
        kind = g_strndup(*line, json - *line);
        want = expected_code(kind);
        body = g_string_new(json + 1);
        m = s3c_manifest_parse("vm/disk.qcow2", body, "vector", &err);
        if (want == S3C_EXIT_OK) {
            if (!m) {
                g_test_message("%s: %s", *line, err->message);
            }
            g_assert_nonnull(m);
        } else {
            if (m) {
                g_test_message("read: %s", *line);
            }
            g_assert_null(m);
            g_assert_error(err, S3C_ERROR, want);
            /* one line, saying where */
            g_assert_null(strchr(err->message, '\n'));
            g_assert_true(g_str_has_prefix(err->message, "vector: "));
        }
        tested++;
    }
    g_assert_cmpuint(tested, >, 40);
}

/* The keys of a chunk and of its patches are the driver's */
static void test_chunk_keys(void)
{
    g_autoptr(GString) body = g_string_new(
        "{\"format\": \"s3chain-chunked\", \"version\": 5, "
        "\"size\": 200000, \"chunk-size\": 131072, \"generation\": 1, "
        "\"chunks\": [[1, \"3.1f\", "
        "\"D41D8CD98F00B204E9800998ECF8427E\", \"0a1b2c3d\", 65536, "
        "\"0a1b2c3d0a1b2c3d\", [[\"4.2\", "
        "\"d41d8cd98f00b204e9800998ecf8427e\", \"0000000000000002\"]]]]}");
    g_autoptr(GError) err = NULL;
    g_autoptr(S3cManifest) m = s3c_manifest_parse("vm1/disk0.qcow2", body,
                                                  "vector", &err);
    const S3cChunk *c;

    g_assert_no_error(err);
    g_assert_cmpuint(m->chunks->len, ==, 1);
    c = g_ptr_array_index(m->chunks, 0);
    g_assert_cmpstr(c->key, ==, "vm1/disk0.qcow2.d/0000000000000001.3.1f");
    g_assert_cmpstr(c->md5, ==, "d41d8cd98f00b204e9800998ecf8427e");
    g_assert_cmpuint(c->n_patches, ==, 1);
    g_assert_cmpstr(c->patches[0].key, ==,
                    "vm1/disk0.qcow2.d/0000000000000001.4.2");
    g_assert_cmpuint(c->patches[0].blocks, ==, 2);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    if (argc != 2) {
        g_printerr("usage: test-manifest VECTORS_FILE\n");
        return 2;
    }
    vectors_path = argv[1];
    g_test_add_func("/command/manifest/vectors", test_vectors);
    g_test_add_func("/command/manifest/chunk-keys", test_chunk_keys);
    return g_test_run();
}
