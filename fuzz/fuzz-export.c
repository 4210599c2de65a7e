/*
 * fuzz-export.c: libFuzzer harness for the reader of map pages of
 * KubeVirt's export server, which any endpoint in a VirtualMachineBackup
 * may answer
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Each run of a page lies inside it, in order, none empty */
static void check_runs(GArray *runs, uint64_t at, uint64_t end)
{
    for (guint i = 0; i < runs->len; i++) {
        const S3cExtent *e = &g_array_index(runs, S3cExtent, i);

        g_assert(e->length > 0);
        g_assert(e->offset >= at && e->offset + e->length <= end);
        at = e->offset + e->length;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int incremental = 0; incremental < 2; incremental++) {
        g_autoptr(GArray) whole = g_array_new(false, false,
                                              sizeof(S3cExtent));
        g_autoptr(GArray) changed = g_array_new(false, false,
                                                sizeof(S3cExtent));
        g_autoptr(GError) err = NULL;
        uint64_t end = 0;
        bool more = false;

        if (s3c_export_parse_page("vda", (const char *)data, size,
                                  incremental, 4096, whole, changed, &end,
                                  &more, &err)) {
            g_assert(end >= 4096);
            g_assert(!more || end > 4096);
            check_runs(whole, 4096, end);
            check_runs(changed, 4096, end);
            g_assert(incremental || !changed->len);
        } else {
            g_assert(err && err->code == S3C_EXIT_DAMAGED);
        }
    }
    return 0;
}
