/*
 * fuzz-qmp.c: libFuzzer harness for what the command reads from a VM's
 * QMP socket: the input is what the VM sends (greeting, replies,
 * events, one per line), read by the QMP client while the command looks
 * for a killed backup's leftovers and lists the disks and their bitmaps
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
/* memmem() */
#define _GNU_SOURCE
#include "s3chain.h"

#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CATALOG "{\"format\": 1, \"vm\": \"vm1\", \"backups\": []}"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GString) catalog_text = g_string_new(CATALOG);
    g_autoptr(GError) err = NULL;
    S3cCatalog cat = {
        .vm = g_strdup("vm1"),
        .dir = g_strdup("p/s3chain/vms/vm1/"),
    };
    GPtrArray *disks = NULL;
    S3cQmp *vm;
    int fds[2];

    g_assert(s3c_catalog_parse(&cat, "catalog", catalog_text, NULL));
    g_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    /* all the VM will say, then its end; beyond the socket's room, less */
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    if (size && write(fds[1], data, size) < 0) {
        size = 0;
    }
    shutdown(fds[1], SHUT_WR);

    vm = s3c_qmp_open_fd(fds[0], "the VM", false, 1000, &err);
    if (vm && s3c_vm_clear_leftovers(vm, &err)) {
        disks = s3c_vm_disks(vm, &err);
    }
    for (guint i = 0; disks && i < disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(disks, i);

        g_assert(disk->name && disk->node && disk->format_node);
        s3c_vm_clear_dead_bitmaps(vm, disk, &cat);
    }
    g_assert(disks || err);
    g_assert(!err || !strstr(err->message, "(null)") ||
             memmem(data, size, "(null)", 6));
    if (disks) {
        g_ptr_array_unref(disks);
    }
    /* fds[0] is the client's, closed with it or by its failure */
    s3c_qmp_free(vm);
    close(fds[1]);
    s3c_catalog_clear(&cat);
    return 0;
}
