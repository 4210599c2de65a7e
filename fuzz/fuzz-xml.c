/*
 * fuzz-xml.c: libFuzzer harness for the reader of libvirt's XML (domain,
 * checkpoint and backup job documents), and the lookups the libvirt
 * source makes in them
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

/* How deep @node's tree goes; the reader bounds it */
static int depth_of(const S3cXml *node, const char *name, int depth)
{
    g_autoptr(GPtrArray) same = s3c_xml_children(node, name);
    int deepest = depth;

    g_assert(depth <= 64);
    for (guint i = 0; i < same->len; i++) {
        deepest = MAX(deepest, depth_of(g_ptr_array_index(same, i), name,
                                        depth + 1));
    }
    return deepest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autofree char *doc = g_strndup((const char *)data, size);
    g_autoptr(GError) err = NULL;
    g_autoptr(S3cXml) root = s3c_xml_parse(doc, "the domain's XML", &err);
    static const char *const paths[] = {
        "devices", "disks", "server", "target", "driver", "serial",
        "source", "readonly", "label", "devices/disk/target",
    };

    if (!root) {
        g_assert(err && err->code == S3C_EXIT_INTERNAL);
        g_assert(!strstr(err->message, "(null)") ||
                 memmem(data, size, "(null)", 6));
        return 0;
    }
    g_assert(s3c_xml_text(root));
    for (size_t i = 0; i < G_N_ELEMENTS(paths); i++) {
        const S3cXml *at = s3c_xml_find(root, paths[i]);
        g_autoptr(GPtrArray) disks = s3c_xml_children(
            s3c_xml_find(root, "devices"), "disk");

        if (at) {
            g_assert(s3c_xml_text(at));
            s3c_xml_attr(at, "dev");
            s3c_xml_attr(at, "file");
        }
        for (guint j = 0; j < disks->len; j++) {
            const S3cXml *d = g_ptr_array_index(disks, j);

            s3c_xml_attr(s3c_xml_find(d, "target"), "dev");
            s3c_xml_text(s3c_xml_find(d, "serial"));
        }
    }
    depth_of(root, "a", 1);
    return 0;
}
