/*
 * fuzz-lock.c: libFuzzer harness for the reader of a VM's lock object
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
    g_autoptr(GString) body = g_string_new_len((const char *)data, size);
    g_autoptr(GError) err = NULL;
    json_object *doc = NULL;
    S3cLockHolder holder;

    if (s3c_lock_parse("s3://b/p/s3chain/vms/vm1/lock", "vm1", body, &doc,
                       &holder, &err)) {
        g_assert(holder.host && *holder.host);
        g_assert(holder.pid > 0 && holder.since > 0);
        g_assert(holder.lease_s >= 0 && holder.lease_s <= 7 * 86400);
        g_assert(!holder.lease_s || holder.owner);
        json_object_put(doc);
    } else {
        g_assert(err && err->code == S3C_EXIT_DAMAGED && !doc);
        /* and never "(null)" unless the input said it */
        g_assert(!strstr(err->message, "(null)") ||
                 memmem(data, size, "(null)", 6));
    }
    return 0;
}
