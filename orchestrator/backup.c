/*
 * backup.c: one full or incremental backup of a VM's disks, any source
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>
#include <unistd.h>

#define DEFAULT_GRANULARITY (64 * 1024)

typedef struct Backup {
    S3cBackupRun run;
    S3cRepo repo;
    S3cCatalog cat;
    S3cLease *lease;            /* held from prepare() to the end */
    S3cSource *source;
    S3cSidecar sidecar;
    bool sidecar_open;
    bool prepared;              /* the source has work to undo */
    int compress_level;         /* its images', zstd's; 0: uncompressed */
    int64_t start_us;
} Backup;

static void disk_backup_free(gpointer p)
{
    S3cDiskBackup *d = p;

    g_free(d->reason);
    g_free(d->parent);
    g_free(d->old_bitmap);
    g_free(d->checkpoint);
    g_free(d->target.key);
    g_free(d->target.backing);
    g_free(d->target.export_name);
    json_object_put(d->target.file_options);
    g_free(d);
}

/*
 * S3CHAIN_TEST_TIME_OFFSET (seconds, test-only, s3chain(1)) moves the
 * times a backup records, so that tests of prune's calendar rules can
 * make backups days apart
 */
static char *utc_now(const char *fmt)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    const char *offset = g_getenv("S3CHAIN_TEST_TIME_OFFSET");
    g_autoptr(GDateTime) then = g_date_time_add_seconds(
        now, offset ? g_ascii_strtod(offset, NULL) : 0);

    return g_date_time_format(then, fmt);
}

/* Full or incremental, and why: the catalog and the source must agree */
static void decide(Backup *b, S3cDiskBackup *d)
{
    json_object *last_backup = NULL;
    json_object *last = s3c_catalog_last_disk(&b->cat, d->disk->name,
                                              &last_backup);
    const char *last_id = last ? s3c_json_str(last_backup, "id") : NULL;
    g_autofree char *old = s3c_catalog_checkpoint(&b->cat, d->disk->name);
    const S3cBitmap *bitmap = old ? s3c_disk_bitmap(d->disk, old) : NULL;
    const char *serial = last ? s3c_json_str(last, "serial") : NULL;
    int length;

    d->granularity = DEFAULT_GRANULARITY;
    if (bitmap && !bitmap->inconsistent && !bitmap->busy && !bitmap->broken) {
        d->old_bitmap = g_strdup(old);
    }
    if (!last) {
        d->reason = g_strdup("first backup of this disk");
        return;
    }
    if (b->run.opts->full) {
        d->reason = g_strdup("--full was given");
        return;
    }
    length = s3c_catalog_chain_length(&b->cat, d->disk->name, last_id);
    /* with --merge-after, chains are kept short in the bucket instead */
    if (!b->run.opts->merge_after && length >= b->run.opts->chain_limit) {
        d->reason = g_strdup_printf("the chain holds %d images, the limit "
                                    "(--chain-limit)", length);
        return;
    }
    if ((uint64_t)s3c_json_int(last, "virtual-size") != d->disk->size) {
        d->reason = g_strdup_printf(
            "the disk's size changed from %" G_GINT64_FORMAT " to %"
            G_GUINT64_FORMAT, s3c_json_int(last, "virtual-size"),
            d->disk->size);
        return;
    }
    if (serial && *serial && *d->disk->serial &&
        strcmp(serial, d->disk->serial)) {
        d->reason = g_strdup_printf("the disk's serial changed from %s to "
                                    "%s", serial, d->disk->serial);
        return;
    }
    if (d->disk->no_checkpoint) {
        d->reason = g_strdup(d->disk->no_checkpoint);
        return;
    }
    if (!old) {
        d->reason = g_strdup_printf("backup %s left no checkpoint to follow "
                                    "(it read the disk of a shut-off VM "
                                    "that had none)", last_id);
        return;
    }
    if (!bitmap) {
        d->reason = g_strdup_printf("bitmap %s of the last checkpoint is "
                                    "missing on node %s%s", old,
                                    d->disk->format_node,
                                    s3c_catalog_deleted_since(&b->cat, last_id) ?
                                    " (the newer backups were deleted, and "
                                    "their checkpoints with them)" : "");
        return;
    }
    if (bitmap->broken) {
        d->reason = g_strdup_printf("checkpoint %s can't be used: %s", old,
                                    bitmap->broken);
        return;
    }
    if (bitmap->inconsistent) {
        d->reason = g_strdup_printf("bitmap %s is inconsistent (QEMU did "
                                    "not close the image cleanly)", old);
        return;
    }
    if (bitmap->busy || !bitmap->recording) {
        d->reason = g_strdup_printf("bitmap %s is %s", old,
                                    bitmap->busy ? "in use by another job"
                                                 : "disabled");
        return;
    }
    d->incremental = true;
    d->parent = g_strdup(last_id);
    d->granularity = bitmap->granularity;
    d->reason = g_strdup_printf("bitmap %s matches checkpoint %s", old,
                                last_id);
}

static bool select_disks(Backup *b, GError **err)
{
    char *const *names = b->run.opts->disks;

    b->run.all_disks = b->source->ops->disks(b->source, &b->run, err);
    if (!b->run.all_disks) {
        return false;
    }
    b->run.disks = g_ptr_array_new_with_free_func(disk_backup_free);
    for (guint i = 0; i < b->run.all_disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(b->run.all_disks, i);

        if (!names || g_strv_contains((const char *const *)names,
                                      disk->name)) {
            S3cDiskBackup *d = g_new0(S3cDiskBackup, 1);

            d->disk = disk;
            d->checkpoint = g_strdup(b->run.checkpoint);
            g_ptr_array_add(b->run.disks, d);
        }
    }
    for (size_t i = 0; names && names[i]; i++) {
        bool found = false;

        for (guint j = 0; j < b->run.disks->len && !found; j++) {
            S3cDiskBackup *d = g_ptr_array_index(b->run.disks, j);

            found = !strcmp(d->disk->name, names[i]);
        }
        if (!found) {
            GString *known = g_string_new(NULL);

            for (guint j = 0; j < b->run.all_disks->len; j++) {
                S3cDisk *disk = g_ptr_array_index(b->run.all_disks, j);

                g_string_append_printf(known, "%s%s", j ? ", " : "",
                                       disk->name);
            }
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "the VM has no writable disk '%s'; its disks: %s",
                        names[i], known->len ? known->str : "none");
            g_string_free(known, true);
            return false;
        }
    }
    if (!b->run.disks->len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "the VM has no writable disk to back up");
        return false;
    }
    return true;
}

/* Each disk's new image in the bucket, exported by the sidecar */
static bool add_targets(Backup *b, GError **err)
{
    int pid = getpid();

    for (guint i = 0; i < b->run.disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(b->run.disks, i);

        d->target.key = s3c_catalog_image_key(&b->cat, d->disk->name,
                                              b->run.id);
        d->target.backing = s3c_catalog_backing_name(&b->cat, d->disk->name,
                                                     d->parent);
        d->target.size = d->disk->size;
        d->target.cluster_size = d->granularity;
        d->target.buffer_size = b->run.opts->buffer_size;
        d->target.compress_level = b->compress_level;
        d->target.export_name = g_strdup_printf("s3c%u-%d", i, pid);
        d->target.scratch = b->source->scratch;
        if (!s3c_sidecar_add_target(&b->sidecar, &b->repo, &d->target, err)) {
            return false;
        }
        d->target_added = true;
    }
    return true;
}

void s3c_backup_drop_targets(S3cBackupRun *run)
{
    for (guint i = 0; run->disks && i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);

        if (d->target_added) {
            s3c_sidecar_drop_target(run->sidecar, &d->target);
            d->target_added = false;
        }
    }
}

static void emit_started(Backup *b)
{
    json_object *disks = json_object_new_array();

    for (guint i = 0; i < b->run.disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(b->run.disks, i);

        json_object_array_add(disks, s3c_json_obj(
            "name", json_object_new_string(d->disk->name),
            "type", json_object_new_string(d->incremental ? "incremental"
                                                          : "full"),
            "reason", json_object_new_string(d->reason), NULL));
        s3c_output_info("%s: %s backup (%s)", d->disk->name,
                        d->incremental ? "incremental" : "full", d->reason);
    }
    s3c_output_event(s3c_json_obj(
        "event", json_object_new_string("started"),
        "backup", json_object_new_string(b->run.id),
        "vm", json_object_new_string(b->cat.vm),
        "time", json_object_new_string(b->run.instant),
        "disks", disks, NULL));
}

char *s3c_backup_now(void)
{
    return utc_now("%Y-%m-%dT%H:%M:%S.%fZ");
}

static bool commit_targets(Backup *b, GError **err)
{
    for (guint i = 0; i < b->run.disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(b->run.disks, i);

        d->target_added = false;
        if (!s3c_sidecar_commit_target(&b->sidecar, &d->target, err) ||
            !s3c_image_stored_bytes(&b->repo, d->target.key, &d->bytes_stored,
                                    err)) {
            return false;
        }
    }
    return true;
}

static json_object *catalog_entry(Backup *b)
{
    json_object *disks = json_object_new_array();
    g_autofree char *completed = utc_now("%Y-%m-%dT%H:%M:%SZ");
    bool any_incremental = false;
    json_object *entry;

    for (guint i = 0; i < b->run.disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(b->run.disks, i);

        any_incremental |= d->incremental;
        json_object_array_add(disks, s3c_json_obj(
            "name", json_object_new_string(d->disk->name),
            "node", json_object_new_string(d->disk->node),
            "serial", json_object_new_string(d->disk->serial),
            "type", json_object_new_string(d->incremental ? "incremental"
                                                          : "full"),
            "reason", json_object_new_string(d->reason),
            "parent", d->parent ? json_object_new_string(d->parent) : NULL,
            "checkpoint", d->checkpoint ? json_object_new_string(d->checkpoint)
                                        : NULL,
            "image", json_object_new_string(d->target.key),
            "virtual-size", json_object_new_int64(d->disk->size),
            "cluster-size", json_object_new_int64(d->granularity),
            "bytes-copied", json_object_new_int64(d->bytes_copied),
            "bytes-stored", json_object_new_int64(d->bytes_stored),
            "duration", s3c_json_seconds(d->duration), NULL));
    }
    entry = s3c_json_obj(
        "id", json_object_new_string(b->run.id),
        "time", json_object_new_string(b->run.instant),
        "completed", json_object_new_string(completed),
        "type", json_object_new_string(any_incremental ? "incremental"
                                                       : "full"),
        "source", json_object_new_string(b->run.opts->kubevirt ? "kubevirt"
                                         : b->run.opts->libvirt_domain
                                         ? "libvirt" : "qmp"),
        "offline", json_object_new_boolean(b->run.offline),
        "duration", s3c_json_seconds(
            (g_get_monotonic_time() - b->start_us) / 1e6),
        "disks", disks, NULL);
    if (b->run.has_scratch) {
        json_object_object_add(entry, "scratch-bytes",
                               json_object_new_int64(b->run.scratch_bytes));
    }
    return entry;
}

static json_object *result_of(json_object *entry, const char *vm)
{
    json_object *disks, *scratch, *result;
    json_object *out = json_object_new_array();

    json_object_object_get_ex(entry, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        json_object *v;
        json_object *r = json_object_new_object();

        for (const char *const *k = (const char *const[]){
                 "name", "type", "reason", "parent", "checkpoint",
                 "bytes-copied",
                 "bytes-stored", "duration",
                 NULL }; *k; k++) {
            if (json_object_object_get_ex(d, *k, &v)) {
                json_object_object_add(r, *k, json_object_get(v));
            }
        }
        json_object_array_add(out, r);
    }
    result = s3c_json_obj(
        "event", json_object_new_string("result"),
        "backup", json_object_new_string(s3c_json_str(entry, "id")),
        "vm", json_object_new_string(vm),
        "time", json_object_new_string(s3c_json_str(entry, "time")),
        "disks", out, NULL);
    if (json_object_object_get_ex(entry, "scratch-bytes", &scratch)) {
        json_object_object_add(result, "scratch-bytes",
                               json_object_get(scratch));
    }
    return result;
}

/*
 * With --merge-after: the backups past that length in the chain of a
 * disk just backed up, each once (s3c_lifecycle_finish() deletes them
 * oldest first)
 */
static GPtrArray *past_merge_limit(Backup *b)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    GPtrArray *ids = g_ptr_array_new();

    for (guint i = 0; i < b->run.disks->len; i++) {
        const char *disk = ((S3cDiskBackup *)g_ptr_array_index(
                                b->run.disks, i))->disk->name;
        int depth = 0;

        for (const char *at = b->run.id; at; depth++) {
            if (depth >= b->run.opts->merge_after &&
                g_hash_table_add(seen, (char *)at)) {
                g_ptr_array_add(ids, (char *)at);
            }
            at = s3c_json_str(s3c_backup_disk(s3c_catalog_find(&b->cat, at),
                                              disk), "parent");
        }
    }
    return ids;
}

/*
 * After the commit, under the same lock: finishes what a killed delete
 * left, and with --merge-after deletes the backups past the limit,
 * merging them away.  The backup stands whatever happens here; what
 * fails is finished by the next command.
 */
static void maintain(Backup *b, json_object *result)
{
    S3cLifecycle lc = {
        .repo = &b->repo, .cat = &b->cat, .lease = b->lease,
    };
    g_autoptr(GPtrArray) past = NULL;
    g_autoptr(GError) err = NULL;

    if (s3c_lifecycle_finish(&lc, &err) && b->run.opts->merge_after) {
        past = past_merge_limit(b);
        if (s3c_lifecycle_mark(&lc, past, &err)) {
            s3c_lifecycle_finish(&lc, &err);
        }
    }
    json_object_object_add(result, "maintenance",
                           s3c_merge_stats_json(&lc.stats));
    if (err) {
        s3c_output_warning("backup %s is committed, but deleting older "
                           "backups failed: %s; the next backup, delete, "
                           "prune or gc finishes it", b->run.id,
                           err->message);
        json_object_object_add(result, "maintenance-error",
                               json_object_new_string(err->message));
    }
}

/*
 * Whether the run's images are compressed, into b->compress_level: as
 * the VM's catalog says, which its first backup decides; a chain never
 * mixes, so --compress against backups stored plain is refused
 */
static bool decide_compression(Backup *b, GError **err)
{
    int asked = b->run.opts->compress_level;

    if (s3c_catalog_compressed(&b->cat)) {
        b->compress_level = asked ? asked : S3CHAIN_DEFAULT_COMPRESS_LEVEL;
        return true;
    }
    if (asked && json_object_array_length(s3c_catalog_backups(&b->cat))) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "VM %s's backups in this repository are stored "
                    "uncompressed, and its chains cannot mix: back it up "
                    "without --compress, or into another repository "
                    "(another --repo prefix)", b->cat.vm);
        return false;
    }
    if (asked) {
        /* saved with the run's entry: a run that fails leaves nothing */
        s3c_catalog_set_compressed(&b->cat);
    }
    b->compress_level = asked;
    return true;
}

/*
 * Whether the run's images are encrypted: as the VM's catalog says, with
 * --key-file's key, which must be the one its backups have; the VM's
 * first backup is encrypted if --key-file gives a key (--encrypt says
 * so, and refuses to run without one)
 */
static bool decide_encryption(Backup *b, GError **err)
{
    if (b->run.opts->encrypt && !b->repo.has_key) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "--encrypt needs the key: give --key-file FILE, a file "
                    "of mode 0600 holding 32 bytes, or 64 hex digits");
        return false;
    }
    if (b->run.opts->encrypt && !s3c_catalog_key_id(&b->cat) &&
        json_object_array_length(s3c_catalog_backups(&b->cat))) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "VM %s's backups in this repository are stored "
                    "unencrypted, and its chains cannot mix: back it up "
                    "without --encrypt, or into another repository "
                    "(another --repo prefix)", b->cat.vm);
        return false;
    }
    if (!s3c_catalog_check_key(&b->cat, &b->repo, err)) {
        return false;
    }
    if (b->repo.has_key && !s3c_catalog_key_id(&b->cat)) {
        /* saved with the run's entry: a run that fails leaves nothing */
        s3c_catalog_set_key_id(&b->cat, b->repo.key_id);
    }
    return true;
}

static bool prepare(Backup *b, GError **err)
{
    const S3cBackupOptions *opts = b->run.opts;

    if (!s3c_repo_init(&b->repo, &opts->repo, err) ||
        !s3c_s3_check_bucket(&b->repo, err) ||
        !s3c_catalog_load(&b->cat, &b->repo, opts->vm, err) ||
        !decide_encryption(b, err) || !decide_compression(b, err)) {
        return false;
    }
    /*
     * Before the source looks at the VM: a VM's QMP socket serves one
     * client, and libvirt runs one backup job per domain
     */
    b->lease = s3c_lease_acquire(&b->repo, &b->cat, &opts->lock, err);
    if (!b->lease) {
        return false;
    }
    if (!select_disks(b, err)) {
        return false;
    }
    for (guint i = 0; i < b->run.disks->len; i++) {
        decide(b, g_ptr_array_index(b->run.disks, i));
    }
    if (b->source->ops->prepare &&
        !b->source->ops->prepare(b->source, &b->run, err)) {
        return false;
    }
    b->prepared = true;
    return true;
}

static bool run_backup(Backup *b, GError **err)
{
    const S3cBackupOptions *opts = b->run.opts;

    if (!s3c_sidecar_open(&b->sidecar, opts->sidecar_qmp, opts->runtime_dir,
                          NULL, &b->repo, err)) {
        return false;
    }
    b->sidecar_open = true;
    if (!add_targets(b, err)) {
        return false;
    }
    if (s3c_interrupted) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                    "interrupted by a signal before the backup started");
        return false;
    }
    if (!b->source->ops->start(b->source, &b->run, err)) {
        return false;
    }
    emit_started(b);
    return b->source->ops->copy(b->source, &b->run, err);
}

static bool finish(Backup *b, GError **err)
{
    json_object *entry, *result;

    if ((b->source->ops->finish &&
         !b->source->ops->finish(b->source, &b->run, err)) ||
        !commit_targets(b, err)) {
        return false;
    }
    /* a signal before the catalog's commit cancels the backup */
    if (s3c_interrupted) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                    "interrupted by a signal; the backup was cancelled");
        return false;
    }
    /* a command that may have lost the VM to another commits nothing */
    if (!s3c_lease_check(b->lease, err)) {
        return false;
    }
    entry = catalog_entry(b);
    s3c_catalog_append(&b->cat, json_object_get(entry));
    if (!s3c_catalog_save(&b->cat, &b->repo, err)) {
        json_object_put(entry);
        return false;
    }
    if (b->source->ops->committed) {
        b->source->ops->committed(b->source, &b->run);
    }
    result = result_of(entry, b->cat.vm);
    maintain(b, result);
    if (b->run.opts->json) {
        s3c_output_result(result);
    } else {
        json_object_put(result);
        s3c_output_info("backup %s of VM %s done", b->run.id, b->cat.vm);
    }
    json_object_put(entry);
    return true;
}

int s3c_backup(const S3cBackupOptions *opts, GError **err)
{
    Backup b = { .run.opts = opts, .start_us = g_get_monotonic_time() };
    g_autofree char *stamp = utc_now("%Y%m%dT%H%M%SZ");
    g_autofree char *id = g_strdup_printf("%s-%04x", stamp,
                                          g_random_int_range(0, 0x10000));
    g_autofree char *checkpoint = g_strconcat(S3C_CHECKPOINT_PREFIX, id, NULL);
    bool ok;

    b.run.id = id;
    b.run.catalog = &b.cat;
    b.run.checkpoint = checkpoint;
    b.run.sidecar = &b.sidecar;
    /* a source that can't be reached is told before anything is locked */
    b.source = opts->kubevirt ? s3c_source_kubevirt_new(opts)
               : opts->libvirt_domain ? s3c_source_libvirt_new(opts, err)
               : s3c_source_qmp_new(opts);
    ok = b.source && prepare(&b, err) && run_backup(&b, err) &&
         finish(&b, err);
    if (!ok && b.prepared && b.source->ops->abandon) {
        b.source->ops->abandon(b.source, &b.run);
    }
    if (!ok) {
        s3c_backup_drop_targets(&b.run);
    }
    if (b.sidecar_open) {
        s3c_sidecar_close(&b.sidecar);
    }
    if (b.lease) {
        s3c_lease_release(b.lease);
    }
    if (b.source) {
        b.source->ops->free(b.source);
    }
    if (b.run.disks) {
        g_ptr_array_unref(b.run.disks);
    }
    if (b.run.all_disks) {
        g_ptr_array_unref(b.run.all_disks);
    }
    s3c_catalog_clear(&b.cat);
    s3c_repo_clear(&b.repo);
    g_free(b.run.instant);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
