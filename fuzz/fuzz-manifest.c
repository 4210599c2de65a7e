/*
 * fuzz-manifest.c: libFuzzer harness for the command's manifest reader:
 * any bytes as an image's manifest, then the sizes verify computes
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
/* memmem() */
#define _GNU_SOURCE
#include "s3chain.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GString) text = g_string_new_len((const char *)data, size);
    g_autoptr(GError) err = NULL;
    g_autoptr(S3cManifest) m = s3c_manifest_parse(
        "p/disks/vd0/x.qcow2", text, "s3://b/p/disks/vd0/x.qcow2", &err);

    if (m) {
        uint64_t last = 0;

        g_assert(s3c_manifest_stored_bytes(m) <= m->size);
        for (guint i = 0; i < m->chunks->len; i++) {
            const S3cChunk *c = g_ptr_array_index(m->chunks, i);

            /* in order, inside the image, under the image's own key */
            g_assert(!i || c->index > last);
            g_assert(c->index * m->chunk_size < m->size);
            g_assert(g_str_has_prefix(c->key, "p/disks/vd0/x.qcow2.d/"));
            g_assert(!strchr(c->key + strlen("p/disks/vd0/x.qcow2.d/"),
                             '/'));
            /* a sum for each block, or none */
            g_assert(!c->block_sums ||
                     (c->block_size && strlen(c->block_sums) ==
                      8 * (m->chunk_size / c->block_size)));
            /* patches: few, over sums, under the image's key, in blocks */
            g_assert(c->n_patches <= S3CHAIN_MAX_PATCHES);
            g_assert(!c->n_patches || c->block_sums);
            for (unsigned p = 0; p < c->n_patches; p++) {
                g_assert(g_str_has_prefix(c->patches[p].key,
                                          "p/disks/vd0/x.qcow2.d/"));
                g_assert(!strchr(c->patches[p].key +
                                 strlen("p/disks/vd0/x.qcow2.d/"), '/'));
                g_assert(c->patches[p].blocks &&
                         !(m->chunk_size / c->block_size < 64 &&
                           c->patches[p].blocks >>
                           (m->chunk_size / c->block_size)));
            }
            last = c->index;
        }
        /* an encrypted one's MAC covers all but its own member */
        g_assert(!m->encrypted ||
                 (m->mac_covered < size &&
                  !strncmp((const char *)data + m->mac_covered,
                           S3CHAIN_MAC_MEMBER, strlen(S3CHAIN_MAC_MEMBER))));
    } else {
        g_assert(err && (err->code == S3C_EXIT_DAMAGED ||
                         err->code == S3C_EXIT_INTERNAL));
        /* and never "(null)" unless the input said it */
        g_assert(!strstr(err->message, "(null)") ||
                 memmem(data, size, "(null)", 6));
    }
    return 0;
}
