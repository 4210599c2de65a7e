/*
 * point.c: one backup of a VM to read back, its disks' chains checked
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

bool s3c_point_open(S3cPoint *p, const S3cPointOptions *opts, GError **err)
{
    memset(p, 0, sizeof(*p));
    if (!s3c_repo_init(&p->repo, &opts->repo, err) ||
        !s3c_s3_check_bucket(&p->repo, err) ||
        !s3c_catalog_load(&p->cat, &p->repo, opts->vm, err) ||
        !s3c_catalog_check_key(&p->cat, &p->repo, err)) {
        return false;
    }
    p->backup = s3c_catalog_pick(&p->cat, opts->backup ? opts->backup
                                 : "latest", opts->before, err);
    if (p->backup) {
        p->id = s3c_json_str(p->backup, "id");
    }
    return p->backup != NULL;
}

static char *disk_names(json_object *backup)
{
    json_object *disks;
    g_autoptr(GString) names = g_string_new(NULL);

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        g_string_append_printf(names, "%s%s", i ? ", " : "",
                               s3c_json_str(json_object_array_get_idx(disks,
                                                                      i),
                                            "name"));
    }
    return g_string_free(g_steal_pointer(&names), false);
}

json_object *s3c_point_disk(const S3cPoint *p, const char *disk,
                            GError **err)
{
    json_object *d;
    g_autofree char *names = NULL;

    if (disk) {
        d = s3c_backup_disk(p->backup, disk);
        if (!d) {
            names = disk_names(p->backup);
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "backup %s of VM %s has no disk %s; it has %s",
                        p->id, p->cat.vm, disk, names);
        }
        return d;
    }
    names = disk_names(p->backup);
    if (strchr(names, ',')) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "backup %s of VM %s has disks %s: name the disk", p->id,
                    p->cat.vm, names);
        return NULL;
    }
    return s3c_backup_disk(p->backup, names);
}

bool s3c_point_check(const S3cPoint *p, const char *disk, GError **err)
{
    g_autoptr(GPtrArray) chain = s3c_catalog_chain(&p->cat, disk, p->id,
                                                   err);
    g_autoptr(GPtrArray) faults = g_ptr_array_new_with_free_func(g_free);

    if (!chain) {
        return false;
    }
    for (guint i = 0; i < chain->len && !faults->len; i++) {
        json_object *image = g_ptr_array_index(chain, i);

        if (!s3c_image_verify(&p->repo, s3c_json_str(image, "image"),
                              s3c_json_int(image, "virtual-size"), false,
                              faults, err)) {
            return false;
        }
    }
    if (faults->len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "backup %s of disk %s is damaged: "
                    "%s%s", p->id, disk,
                    (char *)g_ptr_array_index(faults, 0),
                    faults->len > 1 ? " (and more: see s3chain verify)" : "");
        return false;
    }
    return true;
}

void s3c_point_clear(S3cPoint *p)
{
    s3c_catalog_clear(&p->cat);
    s3c_repo_clear(&p->repo);
    memset(p, 0, sizeof(*p));
}
