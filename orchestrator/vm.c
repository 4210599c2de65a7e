/*
 * vm.c: the VM's writable disks and their dirty bitmaps, from QMP
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

void s3c_bitmap_free(gpointer p)
{
    S3cBitmap *b = p;

    g_free(b->name);
    g_free(b->broken);
    g_free(b);
}

void s3c_disk_free(S3cDisk *disk)
{
    g_free(disk->name);
    g_free(disk->qdev);
    g_free(disk->node);
    g_free(disk->format_node);
    g_free(disk->format);
    g_free(disk->serial);
    g_free(disk->no_checkpoint);
    g_free(disk->path);
    g_ptr_array_unref(disk->bitmaps);
    g_free(disk);
}

S3cDisk *s3c_disk_new(void)
{
    S3cDisk *disk = g_new0(S3cDisk, 1);

    disk->bitmaps = g_ptr_array_new_with_free_func(s3c_bitmap_free);
    return disk;
}

const S3cBitmap *s3c_disk_bitmap(const S3cDisk *disk, const char *name)
{
    for (guint i = 0; i < disk->bitmaps->len; i++) {
        const S3cBitmap *b = g_ptr_array_index(disk->bitmaps, i);

        if (!strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

/* "/machine/peripheral/vd0/virtio-backend" is device "vd0" */
static char *device_id(const char *qdev)
{
    g_auto(GStrv) parts = g_strsplit(qdev, "/", -1);
    guint n = g_strv_length(parts);

    if (n >= 2 && !strcmp(parts[n - 1], "virtio-backend")) {
        return g_strdup(parts[n - 2]);
    }
    return g_strdup(n ? parts[n - 1] : qdev);
}

static void add_bitmaps(S3cDisk *disk, json_object *node)
{
    json_object *list;

    if (!json_object_object_get_ex(node, "dirty-bitmaps", &list)) {
        return;
    }
    for (size_t i = 0; i < s3c_json_len(list); i++) {
        json_object *b = json_object_array_get_idx(list, i);
        S3cBitmap *bitmap;

        /* QEMU names every bitmap: one without is nothing to follow */
        if (!s3c_json_str(b, "name")) {
            continue;
        }
        bitmap = g_new0(S3cBitmap, 1);
        bitmap->name = g_strdup(s3c_json_str(b, "name"));
        bitmap->granularity = s3c_json_int(b, "granularity");
        bitmap->persistent = s3c_json_bool(b, "persistent");
        bitmap->inconsistent = s3c_json_bool(b, "inconsistent");
        bitmap->recording = s3c_json_bool(b, "recording");
        bitmap->busy = s3c_json_bool(b, "busy");
        g_ptr_array_add(disk->bitmaps, bitmap);
    }
}

static char *serial_of(S3cQmp *vm, const char *qdev)
{
    g_autoptr(GError) ignored = NULL;
    json_object *v = s3c_qmp_execute(
        vm, "qom-get",
        s3c_json_obj("path", json_object_new_string(qdev),
                     "property", json_object_new_string("serial"), NULL),
        &ignored);
    char *serial = g_strdup(v && json_object_is_type(v, json_type_string) ?
                            json_object_get_string(v) : "");

    json_object_put(v);
    return serial;
}

/*
 * Drivers that only pass requests down to their "file" child: the
 * copy-before-write filter of a backup, a throttle group, and the like
 */
static const char *const filter_drivers[] = {
    "copy-before-write", "throttle", "copy-on-read", "preallocate",
    "compress", "blkreplay", NULL
};

static json_object *named_node(json_object *nodes, const char *name)
{
    for (size_t i = 0; i < s3c_json_len(nodes); i++) {
        json_object *node = json_object_array_get_idx(nodes, i);

        if (!g_strcmp0(s3c_json_str(node, "node-name"), name)) {
            return node;
        }
    }
    return NULL;
}

json_object *s3c_vm_block_graph(S3cQmp *vm, GError **err)
{
    /*
     * The only QMP command that names a node's children; stable in
     * shape since QEMU 4.0, though marked experimental
     */
    return s3c_qmp_execute(vm, "x-debug-query-block-graph", NULL, err);
}

static const char *graph_node_name(json_object *graph, int64_t id)
{
    json_object *nodes;

    if (!json_object_object_get_ex(graph, "nodes", &nodes)) {
        return NULL;
    }
    for (size_t i = 0; i < s3c_json_len(nodes); i++) {
        json_object *n = json_object_array_get_idx(nodes, i);

        if (s3c_json_int(n, "id") == id) {
            return s3c_json_str(n, "name");
        }
    }
    return NULL;
}

const char *s3c_block_graph_child(json_object *graph, const char *node,
                                  const char *child)
{
    json_object *edges;

    if (!json_object_object_get_ex(graph, "edges", &edges)) {
        return NULL;
    }
    for (size_t i = 0; i < s3c_json_len(edges); i++) {
        json_object *e = json_object_array_get_idx(edges, i);

        if (!g_strcmp0(s3c_json_str(e, "name"), child) &&
            !g_strcmp0(graph_node_name(graph, s3c_json_int(e, "parent")),
                       node)) {
            return graph_node_name(graph, s3c_json_int(e, "child"));
        }
    }
    return NULL;
}

/* The node under @root's filters that holds the format and the bitmaps */
static json_object *format_node(json_object *graph, json_object *nodes,
                                const char *root)
{
    json_object *node = named_node(nodes, root);

    while (node && g_strv_contains(filter_drivers,
                                   s3c_json_str(node, "drv"))) {
        const char *child = s3c_block_graph_child(
            graph, s3c_json_str(node, "node-name"), "file");

        node = child ? named_node(nodes, child) : NULL;
    }
    return node;
}

/* The local file or device under format node @fmt, or NULL */
static char *local_path(json_object *graph, json_object *nodes,
                        json_object *fmt)
{
    const char *child = s3c_block_graph_child(
        graph, s3c_json_str(fmt, "node-name"), "file");
    json_object *proto = child ? named_node(nodes, child) : NULL;
    const char *drv = proto ? s3c_json_str(proto, "drv") : NULL;

    if (!g_strcmp0(drv, "file") || !g_strcmp0(drv, "host_device")) {
        return g_strdup(s3c_json_str(proto, "file"));
    }
    return NULL;
}

GPtrArray *s3c_vm_disks(S3cQmp *vm, GError **err)
{
    g_autoptr(GPtrArray) disks =
        g_ptr_array_new_with_free_func((GDestroyNotify)s3c_disk_free);
    json_object *blocks = s3c_qmp_execute_list(vm, "query-block", NULL,
                                               err);
    json_object *nodes = NULL, *graph = NULL;

    if (blocks) {
        nodes = s3c_qmp_execute_list(
            vm, "query-named-block-nodes",
            s3c_json_obj("flat", json_object_new_boolean(true), NULL), err);
    }
    if (nodes) {
        graph = s3c_vm_block_graph(vm, err);
    }
    if (!graph) {
        json_object_put(blocks);
        json_object_put(nodes);
        return NULL;
    }

    for (size_t i = 0; i < s3c_json_len(blocks); i++) {
        json_object *blk = json_object_array_get_idx(blocks, i);
        json_object *inserted, *image, *fmt;
        const char *qdev = s3c_json_str(blk, "qdev");
        S3cDisk *disk;

        if (!qdev || !json_object_object_get_ex(blk, "inserted", &inserted) ||
            s3c_json_bool(inserted, "ro")) {
            continue;
        }
        if (!s3c_json_str(inserted, "node-name")) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                        "%s: query-block names no node for device %s: is "
                        "it QEMU?", vm->peer, qdev);
            json_object_put(blocks);
            json_object_put(nodes);
            json_object_put(graph);
            return NULL;
        }
        disk = s3c_disk_new();
        disk->qdev = g_strdup(qdev);
        disk->name = device_id(qdev);
        disk->node = g_strdup(s3c_json_str(inserted, "node-name"));
        fmt = format_node(graph, nodes, disk->node);
        disk->format_node = g_strdup(fmt ? s3c_json_str(fmt, "node-name")
                                         : disk->node);
        disk->format = g_strdup(fmt ? s3c_json_str(fmt, "drv")
                                    : s3c_json_str(inserted, "drv"));
        disk->serial = serial_of(vm, qdev);
        if (json_object_object_get_ex(inserted, "image", &image)) {
            disk->size = s3c_json_int(image, "virtual-size");
        }
        if (fmt) {
            add_bitmaps(disk, fmt);
            disk->path = local_path(graph, nodes, fmt);
        }
        g_ptr_array_add(disks, disk);
    }
    json_object_put(blocks);
    json_object_put(nodes);
    json_object_put(graph);
    return g_steal_pointer(&disks);
}
