/*
 * delete.c: s3chain delete, one or more backups of a VM, idempotently
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>

int s3c_delete(const S3cDeleteOptions *opts, GError **err)
{
    S3cRepo repo = { 0 };
    S3cLifecycle lc = { 0 };
    g_autoptr(GPtrArray) going = g_ptr_array_new();
    json_object *gone = json_object_new_array();
    json_object *deleted = json_object_new_array();
    bool ok = s3c_repo_init(&repo, &opts->repo, err) &&
              s3c_s3_check_bucket(&repo, err) &&
              s3c_lifecycle_open(&lc, &repo, opts->vm, &opts->lock, true,
                                 err);

    /* every id is checked before anything changes */
    for (size_t i = 0; ok && opts->backups[i]; i++) {
        const char *id = opts->backups[i];
        const char *when = s3c_catalog_deleted_at(lc.cat, id);

        if (s3c_catalog_find(lc.cat, id)) {
            g_ptr_array_add(going, (char *)id);
            json_object_array_add(deleted, json_object_new_string(id));
        } else if (when) {
            s3c_output_info("backup %s of VM %s was deleted already, at %s",
                            id, opts->vm, when);
            json_object_array_add(gone, s3c_json_obj(
                "id", json_object_new_string(id),
                "time", json_object_new_string(when), NULL));
        } else {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "VM %s has no backup %s, and deleted none of that "
                        "id lately; s3chain list --vm %s shows its backups",
                        opts->vm, id, opts->vm);
            ok = false;
        }
    }
    ok = ok && s3c_lifecycle_mark(&lc, going, err) &&
         s3c_lifecycle_finish(&lc, err);
    if (ok && opts->json) {
        json_object *result = s3c_merge_stats_json(&lc.stats);

        json_object_object_add(result, "event",
                               json_object_new_string("result"));
        json_object_object_add(result, "vm",
                               json_object_new_string(opts->vm));
        json_object_object_add(result, "deleted", json_object_get(deleted));
        json_object_object_add(result, "already-deleted",
                               json_object_get(gone));
        s3c_output_result(result);
    }
    json_object_put(gone);
    json_object_put(deleted);
    s3c_lifecycle_close(&lc);
    s3c_repo_clear(&repo);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
