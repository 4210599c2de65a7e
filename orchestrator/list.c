/*
 * list.c: a repository's VMs, backups and disks, as a table or as JSON
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>
#include <string.h>

GPtrArray *s3c_repo_vms(const S3cRepo *repo, const char *only, GError **err)
{
    g_autofree char *dir = g_strdup_printf("%ss3chain/vms/", repo->prefix);
    g_autoptr(GPtrArray) objects = NULL;
    GPtrArray *prefixes = NULL;

    if (only) {
        prefixes = g_ptr_array_new_with_free_func(g_free);
        g_ptr_array_add(prefixes, g_strdup(only));
        return prefixes;
    }
    if (!s3c_s3_list(repo, dir, true, &objects, &prefixes, err)) {
        return NULL;
    }
    for (guint i = 0; i < prefixes->len; i++) {
        char *p = g_ptr_array_index(prefixes, i);
        size_t len = strlen(p) - strlen(dir);

        memmove(p, p + strlen(dir), len);
        p[len ? len - 1 : 0] = '\0';
    }
    return prefixes;
}

static char *size_text(int64_t bytes)
{
    return g_format_size_full(bytes, G_FORMAT_SIZE_IEC_UNITS);
}

static void print_vm(const S3cCatalog *cat)
{
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *disks;
        g_autofree char *time = g_strndup(s3c_json_str(b, "time"), 19);

        json_object_object_get_ex(b, "disks", &disks);
        g_strdelimit(time, "T", ' ');
        for (size_t j = 0; j < json_object_array_length(disks); j++) {
            json_object *d = json_object_array_get_idx(disks, j);
            const char *parent = s3c_json_str(d, "parent");
            g_autofree char *size = size_text(s3c_json_int(d,
                                                           "virtual-size"));
            g_autofree char *stored = size_text(s3c_json_int(
                                                    d, "bytes-stored"));

            printf("%-12s %-22s %-19s %-11s %-8s %-22s %10s %10s\n",
                   j ? "" : cat->vm, j ? "" : s3c_json_str(b, "id"),
                   j ? "" : time, s3c_backup_going(b) ? "(going)"
                                                     : s3c_json_str(d, "type"),
                   s3c_json_str(d, "name"), parent ? parent : "-", size,
                   stored);
        }
    }
}

int s3c_list(const S3cListOptions *opts, GError **err)
{
    S3cRepo repo;
    g_autoptr(GPtrArray) vms = NULL;
    json_object *out = json_object_new_array();
    bool ok = s3c_repo_init(&repo, &opts->repo, err) &&
              s3c_s3_check_bucket(&repo, err);

    if (ok) {
        vms = s3c_repo_vms(&repo, opts->vm, err);
        ok = vms != NULL;
    }
    if (ok && !opts->json) {
        printf("%-12s %-22s %-19s %-11s %-8s %-22s %10s %10s\n", "VM",
               "BACKUP", "TIME (UTC)", "TYPE", "DISK", "PARENT", "SIZE",
               "STORED");
    }
    for (guint i = 0; ok && i < vms->len; i++) {
        S3cCatalog cat;

        ok = s3c_catalog_load(&cat, &repo, g_ptr_array_index(vms, i), err);
        if (ok && opts->vm &&
            !json_object_array_length(s3c_catalog_backups(&cat))) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "VM %s has no backups in this repository", opts->vm);
            ok = false;
        }
        if (ok && opts->json) {
            const char *key_id = s3c_catalog_key_id(&cat);

            /* which key, if any, the commands on its backups need */
            json_object_array_add(out, s3c_json_obj(
                "vm", json_object_new_string(cat.vm),
                "key-id", key_id ? json_object_new_string(key_id) : NULL,
                "compress", s3c_catalog_compressed(&cat) ?
                json_object_new_string(S3CHAIN_COMPRESS_ZSTD) : NULL,
                "backups", json_object_get(s3c_catalog_backups(&cat)),
                NULL));
        } else if (ok) {
            print_vm(&cat);
        }
        s3c_catalog_clear(&cat);
    }
    if (ok && opts->json) {
        s3c_output_result(s3c_json_obj(
            "event", json_object_new_string("result"),
            "vms", json_object_get(out), NULL));
    }
    json_object_put(out);
    s3c_repo_clear(&repo);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
