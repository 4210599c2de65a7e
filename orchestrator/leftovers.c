/*
 * leftovers.c: what a killed backup left in a VM (its jobs, its filter
 * and NBD nodes, the devices rewired onto them, its bitmaps), found by
 * the names source-qmp.c gives them and undone before the next backup
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>
#include <string.h>

/* @name is what S3C_QMP_PART_FMT makes of @part, for any disk and run */
static bool is_part(const char *name, const char *part)
{
    unsigned index;
    int pid, end = 0;
    char found[16];

    return name &&
           sscanf(name, "s3c%u-%d-%15[a-z]%n", &index, &pid, found,
                  &end) == 3 && !name[end] && !strcmp(found, part);
}

static bool is_snapshot_bitmap(const char *name)
{
    int pid, end = 0;

    return sscanf(name, "s3c-%d-snapshot%n", &pid, &end) == 1 && end &&
           !name[end];
}

static void note(GPtrArray *done, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void note(GPtrArray *done, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_ptr_array_add(done, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

/* A dead run's backup jobs keep writing into its target: end them */
static void end_jobs(S3cQmp *vm, GPtrArray *done)
{
    json_object *jobs = s3c_qmp_execute_list(vm, "query-jobs", NULL, NULL);

    for (size_t i = 0; i < s3c_json_len(jobs); i++) {
        const char *id = s3c_json_str(json_object_array_get_idx(jobs, i),
                                      "id");

        if (!is_part(id, "backup")) {
            continue;
        }
        s3c_qmp_run(vm, "job-cancel", s3c_json_obj(
                        "id", json_object_new_string(id),
                        "force", json_object_new_boolean(true), NULL), NULL);
        /* cancelled, it ends with an error that is no news */
        s3c_job_wait(vm, id, "ending a killed backup's job", NULL);
        note(done, "ended job %s", id);
    }
    json_object_put(jobs);
}

/* Each device writing through a dead run's filter gets its node back */
static bool rewire_devices(S3cQmp *vm, GPtrArray *done, GError **err)
{
    json_object *blocks = s3c_qmp_execute_list(vm, "query-block", NULL,
                                              err);
    json_object *graph = blocks ? s3c_vm_block_graph(vm, err) : NULL;
    bool ok = graph != NULL;

    for (size_t i = 0; ok && i < s3c_json_len(blocks); i++) {
        json_object *blk = json_object_array_get_idx(blocks, i);
        const char *qdev = s3c_json_str(blk, "qdev");
        json_object *inserted;
        const char *filter, *node;

        if (!qdev || !json_object_object_get_ex(blk, "inserted", &inserted)) {
            continue;
        }
        filter = s3c_json_str(inserted, "node-name");
        if (!is_part(filter, "cbw")) {
            continue;
        }
        node = s3c_block_graph_child(graph, filter, "file");
        ok = node && s3c_qmp_run(vm, "qom-set", s3c_json_obj(
                                     "path", json_object_new_string(qdev),
                                     "property", json_object_new_string(
                                         "drive"),
                                     "value", json_object_new_string(node),
                                     NULL), err);
        if (!node) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                        "device %s writes through node %s, which a killed "
                        "backup added, and its file node can't be found",
                        qdev, filter);
        }
        if (ok) {
            note(done, "device %s back on node %s", qdev, node);
        }
    }
    json_object_put(blocks);
    json_object_put(graph);
    return ok;
}

/* Removes the nodes named for @part of any run */
static bool delete_nodes(S3cQmp *vm, const char *part, GPtrArray *done,
                         GError **err)
{
    json_object *nodes = s3c_qmp_execute_list(
        vm, "query-named-block-nodes",
        s3c_json_obj("flat", json_object_new_boolean(true), NULL), err);
    bool ok = nodes != NULL;

    for (size_t i = 0; ok && i < s3c_json_len(nodes); i++) {
        const char *name = s3c_json_str(json_object_array_get_idx(nodes, i),
                                        "node-name");

        if (!is_part(name, part)) {
            continue;
        }
        ok = s3c_qmp_run(vm, "blockdev-del", s3c_json_obj(
                             "node-name", json_object_new_string(name),
                             NULL), err);
        if (ok) {
            note(done, "removed node %s", name);
        } else {
            g_prefix_error(err, "removing node %s: ", name);
        }
    }
    json_object_put(nodes);
    return ok;
}

bool s3c_vm_clear_leftovers(S3cQmp *vm, GError **err)
{
    g_autoptr(GPtrArray) done = g_ptr_array_new_with_free_func(g_free);
    bool ok;

    end_jobs(vm, done);
    /*
     * In the order a backup undoes itself: the snapshot access keeps the
     * filter from sharing writes with the device until it has gone
     */
    ok = delete_nodes(vm, "access", done, err) &&
         rewire_devices(vm, done, err) &&
         delete_nodes(vm, "cbw", done, err) &&
         delete_nodes(vm, "target", done, err) &&
         delete_nodes(vm, "scratch", done, err);
    s3c_output_cleaned("the VM", done);
    if (!ok) {
        g_prefix_error(err, "the VM still holds what a killed backup left: ");
    }
    return ok;
}

/*
 * A dead run's snapshot bitmaps go; its checkpoint, never committed, is
 * folded into the one the catalog names for the disk, so that no change
 * it recorded is lost, and goes too
 */
void s3c_vm_clear_dead_bitmaps(S3cQmp *vm, S3cDisk *disk,
                               const S3cCatalog *cat)
{
    g_autoptr(GPtrArray) done = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *committed = s3c_catalog_checkpoint(cat, disk->name);
    const S3cBitmap *into = committed ? s3c_disk_bitmap(disk, committed)
                                      : NULL;

    for (guint i = disk->bitmaps->len; i-- > 0;) {
        const S3cBitmap *b = g_ptr_array_index(disk->bitmaps, i);
        json_object *sources;

        if (g_str_has_prefix(b->name, S3C_CHECKPOINT_PREFIX)) {
            if (s3c_catalog_find(cat, b->name +
                                 strlen(S3C_CHECKPOINT_PREFIX))) {
                continue;
            }
            if (into && !into->inconsistent) {
                sources = json_object_new_array();
                json_object_array_add(sources,
                                      json_object_new_string(b->name));
                /* the catalog's, recording since, holds them anyway */
                if (s3c_qmp_run(vm, "block-dirty-bitmap-merge", s3c_json_obj(
                                    "node", json_object_new_string(
                                        disk->format_node),
                                    "target", json_object_new_string(
                                        into->name),
                                    "bitmaps", sources, NULL), NULL)) {
                    note(done, "merged bitmap %s into %s on node %s", b->name,
                         into->name, disk->format_node);
                }
            }
        } else if (!is_snapshot_bitmap(b->name)) {
            continue;
        }
        if (s3c_qmp_run(vm, "block-dirty-bitmap-remove", s3c_json_obj(
                            "node", json_object_new_string(disk->format_node),
                            "name", json_object_new_string(b->name), NULL),
                        NULL)) {
            note(done, "removed bitmap %s on node %s", b->name,
                 disk->format_node);
            g_ptr_array_remove_index(disk->bitmaps, i);
        }
    }
    s3c_output_cleaned("the VM", done);
}
