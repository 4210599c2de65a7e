/*
 * fuzz-listing.c: libFuzzer harness for the reader of ListObjectsV2
 * pages, which any endpoint given to the command may answer
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GPtrArray) objects = g_ptr_array_new_with_free_func(
        (GDestroyNotify)s3c_object_free);
    g_autoptr(GPtrArray) prefixes = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *next_token = NULL;
    bool truncated = false;

    if (s3c_s3_parse_listing((const char *)data, size, objects, prefixes,
                             &truncated, &next_token) == S3C_LISTING_OK) {
        for (guint i = 0; i < objects->len; i++) {
            const S3cObject *o = g_ptr_array_index(objects, i);

            g_assert(o->key);
        }
    }
    return 0;
}
