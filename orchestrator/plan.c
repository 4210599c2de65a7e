/*
 * plan.c: what a copy of a backup's chain reads of each image, as read plans
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>
#include <unistd.h>

static void string_free(gpointer string)
{
    g_string_free(string, true);
}

/*
 * The extents of qemu-img map's @map that are data at a known offset of
 * their layer: what a copy reads there, as "OFFSET LENGTH" lines, one
 * string per depth
 */
static GPtrArray *ranges_by_depth(json_object *map)
{
    GPtrArray *depths = g_ptr_array_new_with_free_func(string_free);

    for (size_t i = 0; i < s3c_json_len(map); i++) {
        json_object *extent = json_object_array_get_idx(map, i);
        int64_t depth = s3c_json_int(extent, "depth");
        json_object *offset;

        if (!s3c_json_bool(extent, "data") ||
            !json_object_object_get_ex(extent, "offset", &offset) ||
            depth < 0) {
            continue;
        }
        while (depths->len <= (guint)depth) {
            g_ptr_array_add(depths, g_string_new(NULL));
        }
        g_string_append_printf(g_ptr_array_index(depths, depth),
                               "%" PRId64 " %" PRId64 "\n",
                               json_object_get_int64(offset),
                               s3c_json_int(extent, "length"));
    }
    return depths;
}

bool s3c_read_plans_make(const S3cRepo *repo, const char *key,
                         S3cReadPlans *plans, GError **err)
{
    g_autofree char *source = s3c_qemu_img_filename(repo, key, false);
    const char *args[] = { "map", "--output=json", source, NULL };
    g_autoptr(GString) out = g_string_new(NULL);
    g_autoptr(GPtrArray) depths = NULL;
    g_autoptr(GError) local = NULL;
    json_object *map;

    memset(plans, 0, sizeof(*plans));
    if (!s3c_qemu_img(repo, args, NULL, NULL, out, err)) {
        g_prefix_error(err, "mapping the chain: ");
        return false;
    }
    map = json_tokener_parse(out->str);
    if (!json_object_is_type(map, json_type_array)) {
        json_object_put(map);
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "qemu-img map gave no JSON array for %s", key);
        return false;
    }
    depths = ranges_by_depth(map);
    json_object_put(map);

    plans->dir = g_dir_make_tmp("s3chain-plan-XXXXXX", &local);
    if (!plans->dir) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot make a directory for read plans: %s; set "
                    "TMPDIR to a writable directory", local->message);
        return false;
    }
    plans->files = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < depths->len; i++) {
        GString *ranges = g_ptr_array_index(depths, i);
        char *file = g_strdup_printf("%s/depth-%u", plans->dir, i);

        g_ptr_array_add(plans->files, file);
        if (!g_file_set_contents_full(file, ranges->str, ranges->len,
                                      G_FILE_SET_CONTENTS_NONE, 0600,
                                      &local)) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                        "cannot write a read plan: %s", local->message);
            s3c_read_plans_clear(plans);
            return false;
        }
    }
    return true;
}

void s3c_read_plans_clear(S3cReadPlans *plans)
{
    for (guint i = 0; plans->files && i < plans->files->len; i++) {
        unlink(g_ptr_array_index(plans->files, i));
    }
    if (plans->dir) {
        rmdir(plans->dir);
    }
    g_clear_pointer(&plans->files, g_ptr_array_unref);
    g_clear_pointer(&plans->dir, g_free);
}
