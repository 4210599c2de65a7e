/*
 * merge.c: deleting backups, crash-safe: a point's child is merged into
 * its image, the chain repointed, and what no point needs deleted
 * (docs/design.rst, "Deleting a backup")
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

/*
 * Test-only (s3chain(1)): S3CHAIN_TEST_KILL_AT=STEP makes the command
 * SIGKILL itself at that step of a deletion, as a crash there would
 */
static void crash_point(const char *step)
{
    if (!g_strcmp0(g_getenv("S3CHAIN_TEST_KILL_AT"), step)) {
        kill(getpid(), SIGKILL);
    }
}

/* Whether @key is object @image itself or one of its own */
static bool of_image(const char *key, const char *image)
{
    size_t len = strlen(image);

    if (strncmp(key, image, len)) {
        return false;
    }
    key += len;
    return !*key || !strcmp(key, ".lock") || g_str_has_prefix(key, ".d/") ||
           g_str_has_prefix(key, ".scratch.d/");
}

bool s3c_image_delete(const S3cRepo *repo, const char *key,
                      S3cMergeStats *stats, GError **err)
{
    g_autoptr(GPtrArray) objects = NULL;
    g_autoptr(GPtrArray) rest = g_ptr_array_new();
    uint64_t rest_bytes = 0;

    if (!s3c_s3_list(repo, key, false, &objects, NULL, err)) {
        return false;
    }
    /* the manifest first: what is left is no image, only objects */
    for (guint i = 0; i < objects->len; i++) {
        S3cObject *o = g_ptr_array_index(objects, i);

        if (!of_image(o->key, key)) {
            continue;
        }
        if (strcmp(o->key, key)) {
            g_ptr_array_add(rest, o->key);
            rest_bytes += o->size;
            continue;
        }
        if (!s3c_s3_delete(repo, o->key, err)) {
            return false;
        }
        stats->objects_deleted++;
        stats->bytes_deleted += o->size;
    }
    crash_point("unlinked");
    if (!s3c_s3_delete_many(repo, rest, err)) {
        return false;
    }
    stats->objects_deleted += rest->len;
    stats->bytes_deleted += rest_bytes;
    crash_point("emptied");
    return true;
}

/*
 * Under the VM's lease no other command writes its images: a lock on one
 * was left by a killed command (its qemu-img died with it)
 */
static bool clear_image_lock(const S3cRepo *repo, const char *key,
                             GError **err)
{
    g_autofree char *lock = g_strconcat(key, ".lock", NULL);
    g_autoptr(GString) body = NULL;

    if (!s3c_s3_get(repo, lock, &body, err)) {
        return !*err;
    }
    s3c_output_warning("removing s3://%s/%s, left by a killed command "
                       "(this command holds the VM's lock)", repo->bucket,
                       lock);
    return s3c_s3_delete(repo, lock, err);
}

static void on_merge_percent(double percent, void *opaque)
{
    uint64_t total = *(uint64_t *)opaque;

    /* qemu-img says 0% once both images are open, writers locked in */
    if (percent < 100) {
        crash_point("merging");
    }
    s3c_output_progress(total * percent / 100, total);
}

/*
 * Writes image @top's clusters into image @base, its parent, leaving
 * @top as it is
 */
static bool commit_into(S3cLifecycle *lc, const char *top, const char *base,
                        uint64_t top_bytes, GError **err)
{
    g_autofree char *name = s3c_qemu_img_commit_filename(lc->repo, top);
    g_autofree char *want = g_path_get_basename(base);
    g_autofree char *named = NULL;
    const char *args[] = { "commit", "-p", "-d", name, NULL };

    if (!s3c_qemu_img_backing_name(lc->repo, top, &named, err)) {
        return false;
    }
    /* what qemu-img commits into is what the header names */
    if (g_strcmp0(named, want)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "s3://%s/%s names parent %s in its header, the catalog "
                    "%s; nothing was merged (s3chain verify --deep)",
                    lc->repo->bucket, top, named ? named : "none", want);
        return false;
    }
    return clear_image_lock(lc->repo, top, err) &&
           clear_image_lock(lc->repo, base, err) &&
           s3c_qemu_img(lc->repo, args, on_merge_percent, &top_bytes, NULL,
                        err);
}

/* Names @backing in image @key's header, touching nothing else */
static bool rebase(S3cLifecycle *lc, const char *key, const char *backing,
                   GError **err)
{
    g_autofree char *name = s3c_qemu_img_filename(lc->repo, key, true);
    const char *args[] = { "rebase", "-u", "-F", "qcow2", "-b", backing,
                           name, NULL };

    return clear_image_lock(lc->repo, key, err) &&
           s3c_qemu_img(lc->repo, args, NULL, NULL, NULL, err);
}

static void add_garbage(S3cLifecycle *lc, const char *key)
{
    json_object_array_add(s3c_catalog_garbage(lc->cat),
                           json_object_new_string(key));
}

/* A backup's type, from its disks' */
static void retype(json_object *backup)
{
    json_object *disks;
    bool incremental = false;

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        incremental |= !g_strcmp0(s3c_json_str(json_object_array_get_idx(
                                                   disks, i), "type"),
                                  "incremental");
    }
    json_object_object_add(backup, "type", json_object_new_string(
                               incremental ? "incremental" : "full"));
}

/*
 * Disk @dp of going backup @id, whose child backup @child holds it as
 * @dc: @dc's clusters go into @dp's image, which then holds @dc's point,
 * @dc's own image staying exact over it throughout; the grandchild's
 * header is pointed at @dp's image.  Redone whole after a crash.
 */
static bool merge_child(S3cLifecycle *lc, const char *id, json_object *dp,
                        json_object *child, json_object *dc, GError **err)
{
    const char *disk = s3c_json_str(dp, "name");
    const char *base = s3c_json_str(dp, "image");
    json_object *grandchild;
    g_autofree char *backing = g_path_get_basename(base);

    s3c_output_info("merging backup %s of disk %s into the image of %s",
                    s3c_json_str(child, "id"), disk, id);
    if (!commit_into(lc, s3c_json_str(dc, "image"), base,
                     s3c_json_int(dc, "bytes-stored"), err)) {
        g_prefix_error(err, "merging backup %s of disk %s into %s: ",
                       s3c_json_str(child, "id"), disk, id);
        return false;
    }
    crash_point("merged");
    lc->stats.merges++;
    lc->stats.bytes_merged += s3c_json_int(dc, "bytes-stored");
    grandchild = s3c_catalog_child(lc->cat, disk, s3c_json_str(child, "id"),
                                   err);
    if (!grandchild && *err) {
        return false;
    }
    if (grandchild &&
        !rebase(lc, s3c_json_str(s3c_backup_disk(grandchild, disk),
                                 "image"), backing, err)) {
        return false;
    }
    crash_point("rebased");
    return true;
}

/* Backup @backup's catalog entries once its merges are done */
static bool repoint(S3cLifecycle *lc, json_object *backup, GError **err)
{
    const char *id = s3c_json_str(backup, "id");
    json_object *disks;

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *dp = json_object_array_get_idx(disks, i);
        const char *disk = s3c_json_str(dp, "name");
        json_object *child = s3c_catalog_child(lc->cat, disk, id, err);
        json_object *dc, *parent;
        uint64_t stored;

        if (!child) {
            if (*err) {
                return false;
            }
            add_garbage(lc, s3c_json_str(dp, "image"));
            continue;
        }
        dc = s3c_backup_disk(child, disk);
        if (!s3c_image_stored_bytes(lc->repo, s3c_json_str(dp, "image"),
                                    &stored, err)) {
            return false;
        }
        add_garbage(lc, s3c_json_str(dc, "image"));
        json_object_object_add(dc, "image", json_object_get(
                                   json_object_object_get(dp, "image")));
        json_object_object_add(dc, "type", json_object_get(
                                   json_object_object_get(dp, "type")));
        parent = json_object_object_get(dp, "parent");
        json_object_object_add(dc, "parent", json_object_get(parent));
        json_object_object_add(dc, "bytes-stored",
                               json_object_new_int64(stored));
        retype(child);
    }
    return true;
}

static bool finish_point(S3cLifecycle *lc, json_object *backup, GError **err)
{
    g_autofree char *id = g_strdup(s3c_json_str(backup, "id"));
    g_autofree char *now = s3c_backup_now();
    json_object *disks;

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *dp = json_object_array_get_idx(disks, i);
        json_object *child = s3c_catalog_child(lc->cat,
                                               s3c_json_str(dp, "name"), id,
                                               err);

        if (!child && *err) {
            return false;
        }
        if (child &&
            !merge_child(lc, id, dp, child,
                         s3c_backup_disk(child, s3c_json_str(dp, "name")),
                         err)) {
            return false;
        }
    }
    if (!repoint(lc, backup, err)) {
        return false;
    }
    s3c_catalog_remove(lc->cat, id);
    s3c_catalog_note_deleted(lc->cat, id, now);
    lc->stats.points_deleted++;
    if (!s3c_lease_check(lc->lease, err) ||
        !s3c_catalog_save(lc->cat, lc->repo, err)) {
        return false;
    }
    crash_point("repointed");
    s3c_output_event(s3c_json_obj(
        "event", json_object_new_string("deleted"),
        "vm", json_object_new_string(lc->cat->vm),
        "backup", json_object_new_string(id), NULL));
    s3c_output_info("backup %s of VM %s deleted", id, lc->cat->vm);
    return true;
}

/* Deletes the images the catalog lists as garbage, and forgets them */
static bool drain_garbage(S3cLifecycle *lc, GError **err)
{
    json_object *garbage = s3c_catalog_garbage(lc->cat);
    size_t done = 0;
    bool ok = true;

    while (ok && done < json_object_array_length(garbage)) {
        ok = s3c_image_delete(lc->repo, json_object_get_string(
                                  json_object_array_get_idx(garbage, done)),
                              &lc->stats, err);
        done += ok;
        crash_point("collecting");
    }
    if (!done) {
        return ok;
    }
    json_object_array_del_idx(garbage, 0, done);
    if (!json_object_array_length(garbage)) {
        json_object_object_del(lc->cat->doc, "garbage");
    }
    /* what was deleted is saved as deleted, even after a failure */
    if (ok) {
        return s3c_lease_check(lc->lease, err) &&
               s3c_catalog_save(lc->cat, lc->repo, err);
    }
    if (s3c_lease_check(lc->lease, NULL)) {
        s3c_catalog_save(lc->cat, lc->repo, NULL);
    }
    return false;
}

bool s3c_lifecycle_finish(S3cLifecycle *lc, GError **err)
{
    json_object *backups = s3c_catalog_backups(lc->cat);

    for (size_t i = 0; i < json_object_array_length(backups);) {
        json_object *b = json_object_array_get_idx(backups, i);

        if (s3c_interrupted) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                        "interrupted by a signal; the backups marked going "
                        "are deleted by the next delete, prune, gc or "
                        "backup");
            return false;
        }
        if (!s3c_backup_going(b)) {
            i++;
        } else if (!finish_point(lc, b, err)) {
            return false;
        }
    }
    return drain_garbage(lc, err);
}

/*
 * Whether the bucket lets this command delete at all: a DELETE of an
 * object that isn't there is refused by a policy that denies deletes,
 * and otherwise changes nothing (on a versioned bucket, it adds a delete
 * marker to that one name)
 */
static bool may_delete(S3cLifecycle *lc, GError **err)
{
    g_autofree char *probe = g_strconcat(lc->cat->dir, "delete-probe", NULL);

    if (lc->may_delete) {
        return true;
    }
    if (s3c_s3_delete(lc->repo, probe, err)) {
        lc->may_delete = true;
        return true;
    }
    g_prefix_error(err, "nothing was changed: ");
    return false;
}

bool s3c_lifecycle_mark(S3cLifecycle *lc, GPtrArray *ids, GError **err)
{
    if (ids->len && !may_delete(lc, err)) {
        return false;
    }
    for (guint i = 0; i < ids->len; i++) {
        json_object *b = s3c_catalog_find(lc->cat,
                                          g_ptr_array_index(ids, i));

        json_object_object_add(b, "state",
                               json_object_new_string(S3C_STATE_GOING));
    }
    if (ids->len && (!s3c_lease_check(lc->lease, err) ||
                     !s3c_catalog_save(lc->cat, lc->repo, err))) {
        return false;
    }
    crash_point("marked");
    return true;
}

json_object *s3c_merge_stats_json(const S3cMergeStats *stats)
{
    return s3c_json_obj(
        "backups-deleted", json_object_new_int(stats->points_deleted),
        "merges", json_object_new_int(stats->merges),
        "bytes-merged", json_object_new_int64(stats->bytes_merged),
        "objects-deleted", json_object_new_int64(stats->objects_deleted),
        "bytes-deleted", json_object_new_int64(stats->bytes_deleted), NULL);
}

bool s3c_lifecycle_open(S3cLifecycle *lc, const S3cRepo *repo,
                        const char *vm, const S3cLeaseOptions *lock,
                        bool must_exist, GError **err)
{
    memset(lc, 0, sizeof(*lc));
    lc->repo = repo;
    lc->cat = &lc->own_cat;
    if (!s3c_catalog_load(lc->cat, repo, vm, err) ||
        !s3c_catalog_check_key(lc->cat, repo, err)) {
        return false;
    }
    if (must_exist && !lc->cat->etag) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "VM %s has no backups in this repository; s3chain list "
                    "shows the VMs that have", vm);
        return false;
    }
    /* before the lock, which a bucket that refuses deletes would keep */
    if (!may_delete(lc, err)) {
        return false;
    }
    lc->lease = s3c_lease_acquire(repo, lc->cat, lock, err);
    /* what an interrupted command left is finished first */
    return lc->lease && s3c_lifecycle_finish(lc, err);
}

void s3c_lifecycle_close(S3cLifecycle *lc)
{
    if (lc->lease) {
        s3c_lease_release(lc->lease);
    }
    if (lc->cat == &lc->own_cat) {
        s3c_catalog_clear(&lc->own_cat);
    }
    memset(lc, 0, sizeof(*lc));
}

bool s3c_each_vm(const S3cRepo *repo, const char *only, S3cVmFn fn,
                 void *opaque, GError **locked, GError **err)
{
    g_autoptr(GPtrArray) vms = s3c_repo_vms(repo, only, err);

    for (guint i = 0; vms && i < vms->len; i++) {
        g_autoptr(GError) one = NULL;

        if (fn(g_ptr_array_index(vms, i), opaque, &one)) {
            continue;
        }
        if (only || one->code != S3C_EXIT_LOCKED) {
            g_propagate_error(err, g_steal_pointer(&one));
            return false;
        }
        s3c_output_warning("%s", one->message);
        g_clear_error(locked);
        *locked = g_steal_pointer(&one);
    }
    return vms != NULL;
}
