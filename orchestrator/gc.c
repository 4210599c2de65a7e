/*
 * gc.c: s3chain gc, deleting the objects of a VM that no backup needs:
 * images of failed backups, superseded chunks, scratch spills, stale locks
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>
#include <string.h>

/* What gc finds under a VM's directory, by kind */
typedef enum Kind {
    KIND_UNREFERENCED,          /* an image no backup names, whole */
    KIND_SUPERSEDED,            /* a chunk its image's manifest doesn't name */
    KIND_SCRATCH,               /* a spilled copy-before-write scratch */
    KIND_LOCK,                  /* an image's writer lock */
    KIND_COUNT,
} Kind;

static const char *const kind_names[KIND_COUNT] = {
    "unreferenced-image-objects", "superseded-chunks", "scratch-objects",
    "stale-image-locks",
};

typedef struct Gc {
    const S3cGcOptions *opts;
    const S3cRepo *repo;
    int64_t now;                /* this host's clock, against Last-Modified */
    uint64_t objects[KIND_COUNT];
    uint64_t bytes[KIND_COUNT];
    uint64_t young;             /* garbage kept for the grace period */
    uint64_t unknown;           /* objects not of s3chain's naming */
} Gc;

/*
 * The image that @key is of, under @disks ("DIR/disks/"): DISK/ID.qcow2,
 * and what of it @key is (the rest after that name)
 */
static char *image_of(const char *disks, const char *key, const char **rest)
{
    const char *slash, *qcow2;

    if (!g_str_has_prefix(key, disks)) {
        return NULL;
    }
    slash = strchr(key + strlen(disks), '/');
    qcow2 = slash ? strstr(slash, ".qcow2") : NULL;
    if (!qcow2) {
        return NULL;
    }
    *rest = qcow2 + strlen(".qcow2");
    return g_strndup(key, *rest - key);
}

/* The chunk objects that image @key's manifest names */
static GHashTable *named_chunks(const S3cRepo *repo, const char *key,
                                GError **err)
{
    g_autoptr(S3cManifest) m = s3c_manifest_load(repo, key, err);
    GHashTable *named;

    if (!m) {
        return NULL;
    }
    named = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    for (guint i = 0; i < m->chunks->len; i++) {
        S3cChunk *c = g_ptr_array_index(m->chunks, i);

        g_hash_table_add(named, g_strdup(c->key));
        for (unsigned p = 0; p < c->n_patches; p++) {
            g_hash_table_add(named, g_strdup(c->patches[p].key));
        }
    }
    return named;
}

static bool collect(Gc *gc, S3cObject *o, Kind kind, GPtrArray *doomed)
{
    if (o->last_modified < 0 ||
        gc->now - o->last_modified < gc->opts->grace_s) {
        gc->young++;
        return false;
    }
    gc->objects[kind]++;
    gc->bytes[kind] += o->size;
    g_ptr_array_add(doomed, o->key);
    return true;
}

/* Sorts the objects of VM @cat's directory, adding garbage to @doomed */
static bool classify(Gc *gc, S3cCatalog *cat, GPtrArray *objects,
                     GPtrArray *doomed, GError **err)
{
    g_autofree char *disks = g_strconcat(cat->dir, "disks/", NULL);
    g_autoptr(GHashTable) images = g_hash_table_new_full(
        g_str_hash, g_str_equal, NULL, (GDestroyNotify)g_hash_table_unref);
    g_autoptr(GHashTable) young_images = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, NULL);
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        json_object *disks_of, *b = json_object_array_get_idx(backups, i);

        json_object_object_get_ex(b, "disks", &disks_of);
        for (size_t j = 0; j < json_object_array_length(disks_of); j++) {
            const char *key = s3c_json_str(json_object_array_get_idx(
                                               disks_of, j), "image");
            GHashTable *named = named_chunks(gc->repo, key, err);

            if (!named) {
                g_prefix_error(err, "gc reads what every backup needs "
                               "first, and can't: ");
                return false;
            }
            g_hash_table_insert(images, (char *)key, named);
        }
    }
    /* an unreferenced image goes whole, or not at all while any is young */
    for (guint i = 0; i < objects->len; i++) {
        S3cObject *o = g_ptr_array_index(objects, i);
        const char *rest;
        g_autofree char *image = image_of(disks, o->key, &rest);

        if (image && !g_hash_table_contains(images, image) &&
            (o->last_modified < 0 ||
             gc->now - o->last_modified < gc->opts->grace_s)) {
            g_hash_table_add(young_images, g_steal_pointer(&image));
        }
    }
    for (guint i = 0; i < objects->len; i++) {
        S3cObject *o = g_ptr_array_index(objects, i);
        const char *rest = NULL;
        g_autofree char *image = image_of(disks, o->key, &rest);
        GHashTable *named = image ? g_hash_table_lookup(images, image) : NULL;

        if (!image) {
            gc->unknown += strcmp(o->key + strlen(cat->dir), "catalog.json") &&
                           strcmp(o->key + strlen(cat->dir), "lock");
        } else if (!named) {
            if (g_hash_table_contains(young_images, image)) {
                gc->young++;
            } else {
                collect(gc, o, KIND_UNREFERENCED, doomed);
            }
        } else if (!strcmp(rest, ".lock")) {
            collect(gc, o, KIND_LOCK, doomed);
        } else if (g_str_has_prefix(rest, ".scratch.d/")) {
            collect(gc, o, KIND_SCRATCH, doomed);
        } else if (g_str_has_prefix(rest, ".d/")) {
            if (!g_hash_table_contains(named, o->key)) {
                collect(gc, o, KIND_SUPERSEDED, doomed);
            }
        } else if (*rest) {
            gc->unknown++;
        }
    }
    return true;
}

static bool gc_vm(Gc *gc, const char *vm, GError **err)
{
    S3cLifecycle lc = { 0 };
    S3cCatalog peek = { 0 };
    S3cCatalog *cat;
    g_autoptr(GPtrArray) objects = NULL;
    g_autoptr(GPtrArray) doomed = g_ptr_array_new();
    bool ok;

    if (gc->opts->dry_run) {
        ok = s3c_catalog_load(&peek, gc->repo, vm, err);
        cat = &peek;
    } else {
        /* no backup of the VM runs while gc holds its lock */
        ok = s3c_lifecycle_open(&lc, gc->repo, vm, &gc->opts->lock, false,
                                err);
        cat = lc.cat;
    }
    ok = ok && s3c_s3_list(gc->repo, cat->dir, false, &objects, NULL, err);
    if (ok) {
        gc->now = g_get_real_time() / G_USEC_PER_SEC;
        ok = classify(gc, cat, objects, doomed, err);
    }
    if (ok && !gc->opts->dry_run) {
        ok = s3c_s3_delete_many(gc->repo, doomed, err);
    }
    s3c_lifecycle_close(&lc);
    s3c_catalog_clear(&peek);
    return ok;
}

static void report(Gc *gc)
{
    json_object *result = s3c_json_obj(
        "event", json_object_new_string("result"),
        "dry-run", json_object_new_boolean(gc->opts->dry_run), NULL);
    uint64_t objects = 0, bytes = 0;

    for (int k = 0; k < KIND_COUNT; k++) {
        g_autofree char *size = g_format_size_full(gc->bytes[k],
                                                   G_FORMAT_SIZE_IEC_UNITS);

        objects += gc->objects[k];
        bytes += gc->bytes[k];
        json_object_object_add(result, kind_names[k], s3c_json_obj(
            "objects", json_object_new_int64(gc->objects[k]),
            "bytes", json_object_new_int64(gc->bytes[k]), NULL));
        if (!gc->opts->json) {
            printf("%-28s %8" G_GUINT64_FORMAT " objects %10s\n",
                   kind_names[k], gc->objects[k], size);
        }
    }
    json_object_object_add(result, "objects", json_object_new_int64(objects));
    json_object_object_add(result, "bytes", json_object_new_int64(bytes));
    json_object_object_add(result, "kept-young",
                           json_object_new_int64(gc->young));
    json_object_object_add(result, "unknown",
                           json_object_new_int64(gc->unknown));
    if (gc->opts->json) {
        s3c_output_result(result);
        return;
    }
    json_object_put(result);
    printf("%s %" G_GUINT64_FORMAT " objects, %" G_GUINT64_FORMAT
           " bytes; kept %" G_GUINT64_FORMAT " younger than the grace "
           "period and %" G_GUINT64_FORMAT " not of s3chain's naming\n",
           gc->opts->dry_run ? "would delete" : "deleted", objects, bytes,
           gc->young, gc->unknown);
}

static bool gc_one(const char *vm, void *opaque, GError **err)
{
    return gc_vm(opaque, vm, err);
}

int s3c_gc(const S3cGcOptions *opts, GError **err)
{
    S3cRepo repo = { 0 };
    Gc gc = { .opts = opts, .repo = &repo };
    g_autoptr(GError) locked = NULL;
    bool ok = s3c_repo_init(&repo, &opts->repo, err) &&
              s3c_s3_check_bucket(&repo, err) &&
              s3c_each_vm(&repo, opts->vm, gc_one, &gc, &locked, err);

    if (ok) {
        report(&gc);
    }
    if (ok && locked) {
        g_propagate_prefixed_error(err, g_steal_pointer(&locked),
                                   "collected the other VMs' garbage; ");
        ok = false;
    }
    s3c_repo_clear(&repo);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
