/*
 * fuzz-catalog.c: libFuzzer harness for the catalog reader: any bytes
 * as a VM's catalog.json, then what list, restore and backup do with a
 * catalog that passed (chains, picks, checkpoints)
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
    S3cCatalog cat = {
        .vm = g_strdup("vm1"),
        .dir = g_strdup("p/s3chain/vms/vm1/"),
    };

    if (s3c_catalog_parse(&cat, "s3://b/p/s3chain/vms/vm1/catalog.json",
                          text, &err)) {
        json_object *backups = s3c_catalog_backups(&cat);
        g_autoptr(GError) pick_err = NULL;
        json_object *latest = s3c_catalog_pick(&cat, "latest", NULL,
                                               &pick_err);

        for (size_t i = 0; i < json_object_array_length(backups); i++) {
            json_object *b = json_object_array_get_idx(backups, i);
            json_object *disks = NULL;

            json_object_object_get_ex(b, "disks", &disks);
            for (size_t j = 0; j < json_object_array_length(disks); j++) {
                const char *disk = s3c_json_str(
                    json_object_array_get_idx(disks, j), "name");
                g_autoptr(GError) chain_err = NULL;
                g_autoptr(GPtrArray) chain = s3c_catalog_chain(
                    &cat, disk, s3c_json_str(b, "id"), &chain_err);

                /* a catalog that passed has every link of its chains */
                g_assert(chain);
                g_assert(s3c_catalog_chain_length(
                             &cat, disk, s3c_json_str(b, "id")) ==
                         (int)chain->len);
                g_free(s3c_catalog_checkpoint(&cat, disk));
            }
        }
        g_assert(latest || pick_err || !json_object_array_length(backups));
    } else {
        /* every fault is named, as damaged or as not ours */
        g_assert(err && (err->code == S3C_EXIT_DAMAGED ||
                         err->code == S3C_EXIT_INTERNAL));
        /* and never "(null)" unless the input said it */
        g_assert(!strstr(err->message, "(null)") ||
                 memmem(data, size, "(null)", 6));
    }
    s3c_catalog_clear(&cat);
    return 0;
}
