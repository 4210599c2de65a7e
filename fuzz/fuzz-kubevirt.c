/*
 * fuzz-kubevirt.c: libFuzzer harness for the reader of a
 * VirtualMachineBackup (`backup --kubevirt FILE`), which a controller
 * passes on from the cluster's API
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(S3cKubevirtBackup) kv = s3c_kubevirt_parse(
        "fuzz.json", (const char *)data, size, &err);

    if (kv) {
        const char *vm = s3c_kubevirt_vm(kv);

        /* the repository's name of the VM: never a path */
        g_assert(!err);
        g_assert(!vm || (!strchr(vm, '/') && vm[0] != '.'));
    } else {
        g_assert(err && err->message && !strchr(err->message, '\n'));
        g_assert(err->code == S3C_EXIT_USAGE ||
                 err->code == S3C_EXIT_VM_UNREACHABLE);
    }
    return 0;
}
