/*
 * verify.c: checks that backups are whole, naming each broken object
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>
#include <string.h>

typedef struct Fault {
    char *vm;
    char *backup;               /* whose image holds the object */
    char *disk;
    char *message;              /* "s3://OBJECT: what" */
    GPtrArray *affected;        /* the backups it keeps from restoring */
} Fault;

typedef struct Verify {
    const S3cVerifyOptions *opts;
    S3cRepo repo;
    GPtrArray *faults;          /* of Fault */
    GHashTable *bad_images;     /* image key -> GPtrArray of its Faults */
    int images;
    int backups;
} Verify;

static void fault_free(Fault *f)
{
    g_free(f->vm);
    g_free(f->backup);
    g_free(f->disk);
    g_free(f->message);
    g_ptr_array_unref(f->affected);
    g_free(f);
}

static Fault *add_fault(Verify *v, const S3cCatalog *cat,
                        const char *backup, const char *disk, char *message)
{
    Fault *f = g_new0(Fault, 1);

    f->vm = g_strdup(cat->vm);
    f->backup = g_strdup(backup);
    f->disk = g_strdup(disk);
    f->message = message;
    f->affected = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(v->faults, f);
    return f;
}

/*
 * qemu-img check of the image alone (its parents get theirs), and its
 * header's link to its parent, which must be the catalog's
 */
static bool check_qcow2(Verify *v, const S3cCatalog *cat, json_object *disk,
                        GPtrArray *faults, GError **err)
{
    const char *key = s3c_json_str(disk, "image");
    g_autofree char *name = s3c_qemu_img_filename(&v->repo, key, true);
    g_autofree char *want = s3c_catalog_backing_name(
        cat, s3c_json_str(disk, "name"), s3c_json_str(disk, "parent"));
    g_autofree char *named = NULL;
    const char *check[] = { "check", name, NULL };
    g_autoptr(GError) local = NULL;

    if (s3c_qemu_img(&v->repo, check, NULL, NULL, NULL, &local) &&
        s3c_qemu_img_backing_name(&v->repo, key, &named, &local)) {
        if (g_strcmp0(named, want)) {
            g_ptr_array_add(faults, g_strdup_printf(
                "s3://%s/%s: its header names parent %s, the catalog %s",
                v->repo.bucket, key, named ? named : "none",
                want ? want : "none"));
        }
        return true;
    }
    if (local->code == S3C_EXIT_INTERRUPTED) {
        g_propagate_error(err, g_steal_pointer(&local));
        return false;
    }
    g_ptr_array_add(faults, g_strdup_printf("s3://%s/%s: qemu-img: %s",
                                            v->repo.bucket, key,
                                            local->message));
    return true;
}

static bool verify_image(Verify *v, const S3cCatalog *cat, const char *id,
                         json_object *disk, GError **err)
{
    const char *key = s3c_json_str(disk, "image");
    g_autoptr(GPtrArray) faults = g_ptr_array_new();

    v->images++;
    if (!s3c_image_verify(&v->repo, key, s3c_json_int(disk, "virtual-size"),
                          v->opts->deep, faults, err) ||
        (v->opts->deep && !faults->len &&
         !check_qcow2(v, cat, disk, faults, err))) {
        return false;
    }
    for (guint i = 0; i < faults->len; i++) {
        Fault *f = add_fault(v, cat, id, s3c_json_str(disk, "name"),
                             g_ptr_array_index(faults, i));
        GPtrArray *of_image = g_hash_table_lookup(v->bad_images, key);

        if (!of_image) {
            of_image = g_ptr_array_new();
            g_hash_table_insert(v->bad_images, g_strdup(key), of_image);
        }
        g_ptr_array_add(of_image, f);
    }
    return true;
}

/* The backups whose chains hold a faulty image or lack a link */
static void find_affected(Verify *v, const S3cCatalog *cat,
                          json_object *backup)
{
    const char *id = s3c_json_str(backup, "id");
    json_object *disks;

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        const char *disk = s3c_json_str(json_object_array_get_idx(disks, i),
                                        "name");
        g_autoptr(GError) broken = NULL;
        g_autoptr(GPtrArray) chain = s3c_catalog_chain(cat, disk, id,
                                                       &broken);

        if (!chain) {
            Fault *f = add_fault(v, cat, id, disk,
                                 g_strdup(broken->message));

            g_ptr_array_add(f->affected, g_strdup(id));
            continue;
        }
        for (guint j = 0; j < chain->len; j++) {
            GPtrArray *of_image = g_hash_table_lookup(
                v->bad_images,
                s3c_json_str(g_ptr_array_index(chain, j), "image"));

            for (guint k = 0; of_image && k < of_image->len; k++) {
                Fault *f = g_ptr_array_index(of_image, k);

                if (!g_ptr_array_find_with_equal_func(f->affected, id,
                                                      g_str_equal, NULL)) {
                    g_ptr_array_add(f->affected, g_strdup(id));
                }
            }
        }
    }
}

static bool verify_vm(Verify *v, const char *vm, GError **err)
{
    S3cCatalog cat;
    json_object *backups, *only = NULL;
    g_autoptr(GHashTable) wanted = g_hash_table_new(g_str_hash, g_str_equal);
    bool ok = s3c_catalog_load(&cat, &v->repo, vm, err);

    if (!ok && (*err)->code == S3C_EXIT_DAMAGED) {
        /* a fault like any other, keeping every backup of the VM back */
        Fault *f = add_fault(v, &cat, NULL, NULL, g_strdup((*err)->message));

        g_ptr_array_add(f->affected, g_strdup("all"));
        g_clear_error(err);
        s3c_catalog_clear(&cat);
        return true;
    }
    ok = ok && s3c_catalog_check_key(&cat, &v->repo, err);
    backups = ok ? s3c_catalog_backups(&cat) : NULL;
    if (ok && v->opts->vm && !json_object_array_length(backups)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "VM %s has no backups in this repository", vm);
        ok = false;
    }
    if (ok && v->opts->backup) {
        only = s3c_catalog_pick(&cat, v->opts->backup, NULL, err);
        ok = only != NULL;
    }
    /* the images to read: every backup's, or those of @only's chains */
    for (size_t i = 0; ok && i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *disks;

        if (only && only != b) {
            continue;
        }
        json_object_object_get_ex(b, "disks", &disks);
        for (size_t j = 0; j < json_object_array_length(disks); j++) {
            g_autoptr(GPtrArray) chain = s3c_catalog_chain(
                &cat, s3c_json_str(json_object_array_get_idx(disks, j),
                                   "name"), s3c_json_str(b, "id"), NULL);

            for (guint k = 0; chain && k < chain->len; k++) {
                g_hash_table_add(wanted, (char *)s3c_json_str(
                                     g_ptr_array_index(chain, k), "image"));
            }
        }
    }
    for (size_t i = 0; ok && i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *disks;

        json_object_object_get_ex(b, "disks", &disks);
        for (size_t j = 0; ok && j < json_object_array_length(disks); j++) {
            json_object *d = json_object_array_get_idx(disks, j);

            if (g_hash_table_contains(wanted, s3c_json_str(d, "image"))) {
                ok = verify_image(v, &cat, s3c_json_str(b, "id"), d, err);
            }
        }
    }
    for (size_t i = 0; ok && i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);

        if (!only || only == b) {
            v->backups++;
            find_affected(v, &cat, b);
        }
    }
    s3c_catalog_clear(&cat);
    return ok;
}

static json_object *fault_json(const Fault *f)
{
    const char *colon = strstr(f->message, ": ");
    json_object *affected = json_object_new_array();

    for (guint i = 0; i < f->affected->len; i++) {
        json_object_array_add(affected, json_object_new_string(
                                  g_ptr_array_index(f->affected, i)));
    }
    return s3c_json_obj(
        "vm", json_object_new_string(f->vm),
        "backup", f->backup ? json_object_new_string(f->backup) : NULL,
        "disk", f->disk ? json_object_new_string(f->disk) : NULL,
        "object", g_str_has_prefix(f->message, "s3://") && colon ?
            json_object_new_string_len(f->message, colon - f->message)
            : NULL,
        "message", json_object_new_string(f->message),
        "affected", affected, NULL);
}

static void report(Verify *v)
{
    json_object *faults = json_object_new_array();

    for (guint i = 0; i < v->faults->len; i++) {
        Fault *f = g_ptr_array_index(v->faults, i);
        g_autofree char *affected = NULL;

        g_ptr_array_add(f->affected, NULL);
        affected = g_strjoinv(", ", (char **)f->affected->pdata);
        g_ptr_array_remove_index(f->affected, f->affected->len - 1);
        if (v->opts->json) {
            json_object_array_add(faults, fault_json(f));
        } else {
            printf("BROKEN  VM %s, backup %s, disk %s: %s\n"
                   "        cannot restore: %s\n", f->vm,
                   f->backup ? f->backup : "-", f->disk ? f->disk : "-",
                   f->message, *affected ? affected : "-");
        }
    }
    if (v->opts->json) {
        s3c_output_result(s3c_json_obj(
            "event", json_object_new_string("result"),
            "deep", json_object_new_boolean(v->opts->deep),
            "backups", json_object_new_int(v->backups),
            "images", json_object_new_int(v->images),
            "intact", json_object_new_boolean(!v->faults->len),
            "faults", faults, NULL));
        return;
    }
    json_object_put(faults);
    printf("%s check of %d images in %d backups: %s\n",
           v->opts->deep ? "deep" : "quick", v->images, v->backups,
           v->faults->len ? "BROKEN" : "intact");
}

int s3c_verify(const S3cVerifyOptions *opts, GError **err)
{
    Verify v = {
        .opts = opts,
        .faults = g_ptr_array_new_with_free_func((GDestroyNotify)fault_free),
        .bad_images = g_hash_table_new_full(
            g_str_hash, g_str_equal, g_free,
            (GDestroyNotify)g_ptr_array_unref),
    };
    g_autoptr(GPtrArray) vms = NULL;
    bool ok = s3c_repo_init(&v.repo, &opts->repo, err) &&
              s3c_s3_check_bucket(&v.repo, err);

    if (ok) {
        vms = s3c_repo_vms(&v.repo, opts->vm, err);
        ok = vms != NULL;
    }
    for (guint i = 0; ok && i < vms->len; i++) {
        ok = verify_vm(&v, g_ptr_array_index(vms, i), err);
    }
    if (ok) {
        report(&v);
    }
    if (ok && v.faults->len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "%u faults: the backups named above cannot be restored "
                    "as they are", v.faults->len);
        ok = false;
    }
    g_ptr_array_unref(v.faults);
    g_hash_table_unref(v.bad_images);
    s3c_repo_clear(&v.repo);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
