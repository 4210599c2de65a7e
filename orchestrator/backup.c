/* backup.c: one full or incremental backup of a running VM's disks */
#include "s3chain.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

#define BITMAP_PREFIX "s3chain-"
#define DEFAULT_GRANULARITY (64 * 1024)
#define AGENT_TIMEOUT_MS 5000
#define POLL_MS 200

typedef struct DiskBackup {
    S3cDisk *disk;
    bool incremental;
    char *reason;
    char *parent;               /* backup id of the parent image */
    char *old_bitmap;           /* the last checkpoint's, when usable */
    uint32_t granularity;
    S3cTarget target;
    char *nbd_node;             /* in the VM: the NBD client of the export */
    char *cbw_node;
    char *access_node;
    char *snap_bitmap;          /* the old bitmap frozen at the instant */
    char *job;
    bool target_added;
    bool nbd_added;
    bool new_bitmap_added;
    bool snap_added;
    bool cbw_added;
    bool redirected;
    bool access_added;
    uint64_t bytes_copied;      /* what the job went through */
    uint64_t bytes_stored;      /* what the image's chunks hold */
    double duration;
} DiskBackup;

typedef struct Backup {
    const S3cBackupOptions *opts;
    S3cRepo repo;
    S3cCatalog cat;
    bool locked;
    S3cQmp *vm;
    S3cSidecar sidecar;
    bool sidecar_open;
    GPtrArray *all_disks;
    GPtrArray *disks;           /* of DiskBackup */
    char *id;
    char *bitmap;               /* the new checkpoint's */
    char *instant;              /* ISO 8601, UTC */
    bool vm_paused;
    bool jobs_started;
    int64_t start_us;
} Backup;

static void disk_backup_free(gpointer p)
{
    DiskBackup *d = p;

    g_free(d->reason);
    g_free(d->parent);
    g_free(d->old_bitmap);
    g_free(d->target.key);
    g_free(d->target.backing);
    g_free(d->target.export_name);
    json_object_put(d->target.file_options);
    g_free(d->nbd_node);
    g_free(d->cbw_node);
    g_free(d->access_node);
    g_free(d->snap_bitmap);
    g_free(d->job);
    g_free(d);
}

static char *utc_now(const char *fmt)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();

    return g_date_time_format(now, fmt);
}

static bool vm_run(Backup *b, const char *command, json_object *args,
                   GError **err)
{
    return s3c_qmp_run(b->vm, command, args, err);
}

static json_object *node_bitmap(const char *node, const char *name)
{
    return s3c_json_obj("node", json_object_new_string(node),
                        "name", json_object_new_string(name), NULL);
}

static json_object *action(const char *type, json_object *data)
{
    return s3c_json_obj("type", json_object_new_string(type),
                        "data", data, NULL);
}

/* Full or incremental, and why: the catalog and the VM must agree */
static void decide(Backup *b, DiskBackup *d)
{
    json_object *last_backup = NULL;
    json_object *last = s3c_catalog_last_disk(&b->cat, d->disk->name,
                                              &last_backup);
    const char *last_id = last ? s3c_json_str(last_backup, "id") : NULL;
    g_autofree char *old = last ? g_strconcat(BITMAP_PREFIX, last_id, NULL)
                                : NULL;
    const S3cBitmap *bitmap = old ? s3c_disk_bitmap(d->disk, old) : NULL;
    const char *serial = last ? s3c_json_str(last, "serial") : NULL;
    int length;

    d->granularity = DEFAULT_GRANULARITY;
    if (bitmap && !bitmap->inconsistent && !bitmap->busy) {
        d->old_bitmap = g_strdup(old);
    }
    if (!last) {
        d->reason = g_strdup("first backup of this disk");
        return;
    }
    if (b->opts->full) {
        d->reason = g_strdup("--full was given");
        return;
    }
    length = s3c_catalog_chain_length(&b->cat, d->disk->name, last_id);
    if (length >= b->opts->chain_limit) {
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
    if (!bitmap) {
        d->reason = g_strdup_printf("bitmap %s of the last checkpoint is "
                                    "missing on node %s", old, d->disk->node);
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
    char *const *names = b->opts->disks;

    b->all_disks = s3c_vm_disks(b->vm, err);
    if (!b->all_disks) {
        return false;
    }
    b->disks = g_ptr_array_new_with_free_func(disk_backup_free);
    for (guint i = 0; i < b->all_disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(b->all_disks, i);

        if (!names || g_strv_contains((const char *const *)names,
                                      disk->name)) {
            DiskBackup *d = g_new0(DiskBackup, 1);

            d->disk = disk;
            g_ptr_array_add(b->disks, d);
        }
    }
    for (size_t i = 0; names && names[i]; i++) {
        bool found = false;

        for (guint j = 0; j < b->disks->len && !found; j++) {
            DiskBackup *d = g_ptr_array_index(b->disks, j);

            found = !strcmp(d->disk->name, names[i]);
        }
        if (!found) {
            GString *known = g_string_new(NULL);

            for (guint j = 0; j < b->all_disks->len; j++) {
                S3cDisk *disk = g_ptr_array_index(b->all_disks, j);

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
    if (!b->disks->len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "the VM has no writable disk to back up");
        return false;
    }
    return true;
}

/* Every node and export this backup adds, named after it */
static void name_parts(Backup *b, DiskBackup *d, guint index)
{
    int pid = getpid();

    d->target.key = s3c_catalog_image_key(&b->cat, d->disk->name, b->id);
    d->target.backing = d->parent ? s3c_catalog_image_name(d->parent) : NULL;
    d->target.size = d->disk->size;
    d->target.cluster_size = d->granularity;
    d->target.buffer_size = b->opts->buffer_size;
    d->target.export_name = g_strdup_printf("s3c%u-%d", index, pid);
    d->nbd_node = g_strdup_printf("s3c%u-%d-target", index, pid);
    d->cbw_node = g_strdup_printf("s3c%u-%d-cbw", index, pid);
    d->access_node = g_strdup_printf("s3c%u-%d-access", index, pid);
    d->snap_bitmap = g_strdup_printf("s3c-%d-snapshot", pid);
    d->job = g_strdup_printf("s3c%u-%d-backup", index, pid);
}

static bool add_targets(Backup *b, GError **err)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        name_parts(b, d, i);
        if (!s3c_sidecar_add_target(&b->sidecar, &b->repo, &d->target, err)) {
            return false;
        }
        d->target_added = true;
        if (!vm_run(b, "blockdev-add", s3c_json_obj(
                        "driver", json_object_new_string("nbd"),
                        "node-name", json_object_new_string(d->nbd_node),
                        "server", s3c_json_obj(
                            "type", json_object_new_string("unix"),
                            "path", json_object_new_string(
                                b->sidecar.nbd_socket), NULL),
                        "export", json_object_new_string(
                            d->target.export_name),
                        "reconnect-delay", json_object_new_int(0), NULL),
                    err)) {
            return false;
        }
        d->nbd_added = true;
    }
    return true;
}

/*
 * The instant of the backup.  With the VM paused, the new checkpoint's
 * bitmap starts and the old one is frozen; then each disk's device
 * writes through a copy-before-write filter whose target is the backup
 * image itself in the sidecar.  The filter breaks the snapshot, never a
 * guest write, when that target fails or is slower than cbw-timeout.
 */
static bool take_snapshot(Backup *b, GError **err)
{
    json_object *actions = json_object_new_array();

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        json_object *add = node_bitmap(d->disk->node, b->bitmap);

        json_object_object_add(add, "granularity",
                               json_object_new_int64(d->granularity));
        /* only qcow2 can keep a bitmap across restarts */
        json_object_object_add(add, "persistent", json_object_new_boolean(
                                   !g_strcmp0(d->disk->format, "qcow2")));
        json_object_array_add(actions,
                              action("block-dirty-bitmap-add", add));
        if (d->incremental) {
            json_object *snap = node_bitmap(d->disk->node, d->snap_bitmap);

            json_object_object_add(snap, "granularity",
                                   json_object_new_int64(d->granularity));
            json_object_object_add(snap, "disabled",
                                   json_object_new_boolean(true));
            json_object_array_add(actions,
                                  action("block-dirty-bitmap-add", snap));
            json_object *merge = s3c_json_obj(
                "node", json_object_new_string(d->disk->node),
                "target", json_object_new_string(d->snap_bitmap),
                "bitmaps", json_object_new_array(), NULL);
            json_object *sources;

            json_object_object_get_ex(merge, "bitmaps", &sources);
            json_object_array_add(sources,
                                  json_object_new_string(d->old_bitmap));
            json_object_array_add(actions,
                                  action("block-dirty-bitmap-merge", merge));
        }
    }
    if (!vm_run(b, "transaction", s3c_json_obj("actions", actions, NULL),
                err)) {
        return false;
    }
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        d->new_bitmap_added = true;
        d->snap_added = d->incremental;
    }

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        json_object *cbw = s3c_json_obj(
            "driver", json_object_new_string("copy-before-write"),
            "node-name", json_object_new_string(d->cbw_node),
            "file", json_object_new_string(d->disk->node),
            "target", json_object_new_string(d->nbd_node),
            "on-cbw-error", json_object_new_string("break-snapshot"),
            "cbw-timeout", json_object_new_int(b->opts->cbw_timeout), NULL);

        if (d->incremental) {
            json_object_object_add(cbw, "bitmap", node_bitmap(
                                       d->disk->node, d->snap_bitmap));
        }
        if (!vm_run(b, "blockdev-add", cbw, err)) {
            return false;
        }
        d->cbw_added = true;
        if (!vm_run(b, "qom-set", s3c_json_obj(
                        "path", json_object_new_string(d->disk->qdev),
                        "property", json_object_new_string("drive"),
                        "value", json_object_new_string(d->cbw_node), NULL),
                    err)) {
            return false;
        }
        d->redirected = true;
        if (!vm_run(b, "blockdev-add", s3c_json_obj(
                        "driver", json_object_new_string("snapshot-access"),
                        "node-name", json_object_new_string(d->access_node),
                        "file", json_object_new_string(d->cbw_node), NULL),
                    err)) {
            return false;
        }
        d->access_added = true;
        if (d->incremental) {
            /* a backup job takes its bitmap from its source node */
            json_object *copy = node_bitmap(d->access_node, d->snap_bitmap);
            json_object *sources = json_object_new_array();

            json_object_object_add(copy, "granularity",
                                   json_object_new_int64(d->granularity));
            json_object_object_add(copy, "disabled",
                                   json_object_new_boolean(true));
            json_object_array_add(sources, node_bitmap(d->disk->node,
                                                       d->snap_bitmap));
            if (!vm_run(b, "block-dirty-bitmap-add", copy, err) ||
                !vm_run(b, "block-dirty-bitmap-merge", s3c_json_obj(
                            "node", json_object_new_string(d->access_node),
                            "target", json_object_new_string(d->snap_bitmap),
                            "bitmaps", sources, NULL), err)) {
                return false;
            }
        }
    }
    return true;
}

static S3cQmp *freeze_guest(Backup *b)
{
    g_autoptr(GError) local = NULL;
    S3cQmp *agent;
    json_object *ret;

    if (!b->opts->guest_agent) {
        return NULL;
    }
    agent = s3c_qmp_connect(b->opts->guest_agent, "the guest agent", true,
                            AGENT_TIMEOUT_MS, &local);
    if (agent) {
        ret = s3c_qmp_execute_timeout(agent, "guest-fsfreeze-freeze", NULL,
                                      60000, &local);
        json_object_put(ret);
        if (ret) {
            s3c_output_info("guest filesystems frozen");
            return agent;
        }
        /* a freeze that timed out may still happen: thaw in any case */
        json_object_put(s3c_qmp_execute_timeout(
            agent, "guest-fsfreeze-thaw", NULL, AGENT_TIMEOUT_MS, NULL));
        s3c_qmp_free(agent);
    }
    g_printerr("s3chain: warning: backing up without freezing the guest's "
               "filesystems: %s\n", local->message);
    return NULL;
}

static void thaw_guest(S3cQmp *agent)
{
    g_autoptr(GError) local = NULL;
    json_object *ret;

    if (!agent) {
        return;
    }
    ret = s3c_qmp_execute_timeout(agent, "guest-fsfreeze-thaw", NULL, 60000,
                                  &local);
    if (!ret) {
        g_printerr("s3chain: warning: could not thaw the guest's "
                   "filesystems: %s\n", local->message);
    }
    json_object_put(ret);
    s3c_qmp_free(agent);
}

static bool pause_vm(Backup *b, GError **err)
{
    json_object *status = s3c_qmp_execute(b->vm, "query-status", NULL, err);
    bool running;

    if (!status) {
        return false;
    }
    running = !g_strcmp0(s3c_json_str(status, "status"), "running");
    json_object_put(status);
    if (running && !vm_run(b, "stop", NULL, err)) {
        return false;
    }
    b->vm_paused = running;
    return true;
}

static void resume_vm(Backup *b)
{
    g_autoptr(GError) local = NULL;

    if (b->vm_paused && !vm_run(b, "cont", NULL, &local)) {
        g_printerr("s3chain: error: could not resume the VM: %s\n",
                   local->message);
    }
    b->vm_paused = false;
}

static bool start_jobs(Backup *b, GError **err)
{
    json_object *actions = json_object_new_array();

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        json_object *job = s3c_json_obj(
            "job-id", json_object_new_string(d->job),
            "device", json_object_new_string(d->access_node),
            "target", json_object_new_string(d->nbd_node),
            "sync", json_object_new_string(d->incremental ? "bitmap"
                                                          : "full"),
            "auto-dismiss", json_object_new_boolean(false), NULL);

        if (d->incremental) {
            /* the bitmaps are ours to keep or drop, after the catalog */
            json_object_object_add(job, "bitmap",
                                   json_object_new_string(d->snap_bitmap));
            json_object_object_add(job, "bitmap-mode",
                                   json_object_new_string("never"));
        }
        json_object_array_add(actions, action("blockdev-backup", job));
    }
    if (!vm_run(b, "transaction", s3c_json_obj(
                    "actions", actions,
                    "properties", s3c_json_obj(
                        "completion-mode", json_object_new_string("grouped"),
                        NULL), NULL), err)) {
        return false;
    }
    b->jobs_started = true;
    return true;
}

static void emit_started(Backup *b)
{
    json_object *disks = json_object_new_array();

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

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
        "backup", json_object_new_string(b->id),
        "vm", json_object_new_string(b->cat.vm),
        "time", json_object_new_string(b->instant),
        "disks", disks, NULL));
}

/* Waits for every job to end; false if any failed or we were stopped */
static bool wait_jobs(Backup *b, GError **err)
{
    g_autofree S3cJobProgress *jobs = g_new0(S3cJobProgress,
                                             b->disks->len);
    g_autoptr(GString) errors = g_string_new(NULL);
    bool ok;

    for (guint i = 0; i < b->disks->len; i++) {
        jobs[i].id = ((DiskBackup *)g_ptr_array_index(b->disks, i))->job;
    }
    ok = s3c_jobs_follow(b->vm, jobs, b->disks->len, false,
                         "interrupted by a signal; the backup was cancelled",
                         err);
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        d->duration = jobs[i].seconds;
        d->bytes_copied = jobs[i].total;
        if (jobs[i].error) {
            g_string_append_printf(errors, "%s%s: %s",
                                   errors->len ? "; " : "", d->disk->name,
                                   jobs[i].error);
        }
        g_free(jobs[i].error);
    }
    if (ok && errors->len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                    "the backup job failed: %s", errors->str);
        ok = false;
    }
    return ok;
}

/* Ends the exports at once, closing their images unfinished */
static void drop_targets(Backup *b)
{
    for (guint i = 0; b->disks && i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        if (d->target_added) {
            s3c_sidecar_drop_target(&b->sidecar, &d->target);
            d->target_added = false;
        }
    }
}

/* Cancels the jobs and cuts them off from the sidecar, then waits */
static void stop_jobs(Backup *b)
{
    int64_t deadline = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        vm_run(b, "job-cancel", s3c_json_obj(
                   "id", json_object_new_string(d->job), NULL), NULL);
    }
    /* requests stuck in the sidecar would keep the jobs from ending */
    drop_targets(b);
    while (g_get_monotonic_time() < deadline) {
        json_object *jobs = s3c_qmp_execute(b->vm, "query-jobs", NULL, NULL);
        bool all_done = true;

        for (guint i = 0; jobs && i < b->disks->len; i++) {
            DiskBackup *d = g_ptr_array_index(b->disks, i);
            json_object *job = s3c_json_find_id(jobs, d->job);

            if (job && strcmp(s3c_json_str(job, "status"), "concluded")) {
                all_done = false;
            }
        }
        json_object_put(jobs);
        if (!jobs || all_done) {
            return;
        }
        json_object_put(s3c_qmp_next_event(b->vm, POLL_MS));
    }
}

/* Where a step of an undo reports: the first failure is the one to tell */
static GError **unless_failed(GError **first)
{
    return *first ? NULL : first;
}

/* Deletes @node if this backup added it */
static void delete_node(Backup *b, bool *added, const char *node,
                        GError **first)
{
    if (*added &&
        vm_run(b, "blockdev-del", s3c_json_obj(
                   "node-name", json_object_new_string(node), NULL),
               unless_failed(first))) {
        *added = false;
    }
}

/* Gives the VM back its block graph as it was, whatever happened */
static void restore_vm_graph(Backup *b, GError **err)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        g_autoptr(GError) local = NULL;

        if (b->jobs_started) {
            vm_run(b, "job-dismiss", s3c_json_obj(
                       "id", json_object_new_string(d->job), NULL), NULL);
        }
        delete_node(b, &d->access_added, d->access_node, &local);
        if (d->redirected &&
            vm_run(b, "qom-set", s3c_json_obj(
                       "path", json_object_new_string(d->disk->qdev),
                       "property", json_object_new_string("drive"),
                       "value", json_object_new_string(d->disk->node), NULL),
                   unless_failed(&local))) {
            d->redirected = false;
        }
        delete_node(b, &d->cbw_added, d->cbw_node, &local);
        delete_node(b, &d->nbd_added, d->nbd_node, &local);
        if (d->snap_added &&
            vm_run(b, "block-dirty-bitmap-remove",
                   node_bitmap(d->disk->node, d->snap_bitmap),
                   unless_failed(&local))) {
            d->snap_added = false;
        }
        if (local && err && !*err) {
            g_propagate_prefixed_error(err, g_steal_pointer(&local),
                                       "restoring disk %s's block graph: ",
                                       d->disk->name);
        }
    }
}

/*
 * After a failure the next backup must still see every change since the
 * last committed one: fold the new bitmap back into the old.
 */
static void keep_changes(Backup *b)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        g_autoptr(GError) local = NULL;

        if (!d->new_bitmap_added) {
            continue;
        }
        if (d->old_bitmap) {
            json_object *sources = json_object_new_array();

            json_object_array_add(sources, json_object_new_string(b->bitmap));
            if (!vm_run(b, "block-dirty-bitmap-merge", s3c_json_obj(
                            "node", json_object_new_string(d->disk->node),
                            "target", json_object_new_string(d->old_bitmap),
                            "bitmaps", sources, NULL), &local)) {
                /* keep the new one then: it is better than nothing */
                g_printerr("s3chain: warning: disk %s: %s\n", d->disk->name,
                           local->message);
                continue;
            }
        }
        vm_run(b, "block-dirty-bitmap-remove",
               node_bitmap(d->disk->node, b->bitmap), NULL);
    }
}

/* Once the catalog holds the backup, older checkpoints are of no use */
static void drop_old_bitmaps(Backup *b)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        for (guint j = 0; j < d->disk->bitmaps->len; j++) {
            const S3cBitmap *bm = g_ptr_array_index(d->disk->bitmaps, j);

            if (g_str_has_prefix(bm->name, BITMAP_PREFIX)) {
                vm_run(b, "block-dirty-bitmap-remove",
                       node_bitmap(d->disk->node, bm->name), NULL);
            }
        }
    }
}

static bool commit_targets(Backup *b, GError **err)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

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

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        any_incremental |= d->incremental;
        json_object_array_add(disks, s3c_json_obj(
            "name", json_object_new_string(d->disk->name),
            "node", json_object_new_string(d->disk->node),
            "serial", json_object_new_string(d->disk->serial),
            "type", json_object_new_string(d->incremental ? "incremental"
                                                          : "full"),
            "reason", json_object_new_string(d->reason),
            "parent", d->parent ? json_object_new_string(d->parent) : NULL,
            "checkpoint", json_object_new_string(b->bitmap),
            "image", json_object_new_string(d->target.key),
            "virtual-size", json_object_new_int64(d->disk->size),
            "cluster-size", json_object_new_int64(d->granularity),
            "bytes-copied", json_object_new_int64(d->bytes_copied),
            "bytes-stored", json_object_new_int64(d->bytes_stored),
            "duration", s3c_json_seconds(d->duration), NULL));
    }
    return s3c_json_obj(
        "id", json_object_new_string(b->id),
        "time", json_object_new_string(b->instant),
        "completed", json_object_new_string(completed),
        "type", json_object_new_string(any_incremental ? "incremental"
                                                       : "full"),
        "duration", s3c_json_seconds(
            (g_get_monotonic_time() - b->start_us) / 1e6),
        "disks", disks, NULL);
}

static json_object *result_of(json_object *entry, const char *vm)
{
    json_object *disks, *out = json_object_new_array();

    json_object_object_get_ex(entry, "disks", &disks);
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        json_object *v;
        json_object *r = json_object_new_object();

        for (const char *const *k = (const char *const[]){
                 "name", "type", "reason", "parent", "bytes-copied",
                 "bytes-stored", "duration",
                 NULL }; *k; k++) {
            if (json_object_object_get_ex(d, *k, &v)) {
                json_object_object_add(r, *k, json_object_get(v));
            }
        }
        json_object_array_add(out, r);
    }
    return s3c_json_obj(
        "event", json_object_new_string("result"),
        "backup", json_object_new_string(s3c_json_str(entry, "id")),
        "vm", json_object_new_string(vm),
        "time", json_object_new_string(s3c_json_str(entry, "time")),
        "disks", out, NULL);
}

static bool prepare(Backup *b, GError **err)
{
    const S3cBackupOptions *opts = b->opts;

    if (!s3c_repo_init(&b->repo, &opts->repo, err) ||
        !s3c_s3_check_bucket(&b->repo, err) ||
        !s3c_catalog_load(&b->cat, &b->repo, opts->vm, err)) {
        return false;
    }
    /* first: a VM's QMP socket serves one client, a concurrent backup */
    if (!s3c_lock_acquire(&b->repo, &b->cat, opts->lock_stale_after,
                          opts->break_lock, err)) {
        return false;
    }
    b->locked = true;
    b->vm = s3c_qmp_connect(opts->vm_qmp, "the VM", false, 10000, err);
    if (!b->vm || !select_disks(b, err)) {
        return false;
    }
    for (guint i = 0; i < b->disks->len; i++) {
        decide(b, g_ptr_array_index(b->disks, i));
    }
    return true;
}

static bool run_backup(Backup *b, GError **err)
{
    S3cQmp *agent;
    bool ok;

    if (!s3c_sidecar_open(&b->sidecar, b->opts->sidecar_qmp,
                          b->opts->runtime_dir, NULL, &b->repo, err)) {
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

    agent = freeze_guest(b);
    ok = pause_vm(b, err) && take_snapshot(b, err);
    b->instant = utc_now("%Y-%m-%dT%H:%M:%S.%fZ");
    resume_vm(b);
    thaw_guest(agent);
    if (!ok || !start_jobs(b, err)) {
        return false;
    }
    emit_started(b);
    return wait_jobs(b, err);
}

static bool finish(Backup *b, GError **err)
{
    g_autoptr(GError) graph_err = NULL;
    json_object *entry;

    restore_vm_graph(b, &graph_err);
    if (graph_err) {
        g_propagate_error(err, g_steal_pointer(&graph_err));
        return false;
    }
    if (!commit_targets(b, err)) {
        return false;
    }
    entry = catalog_entry(b);
    s3c_catalog_append(&b->cat, json_object_get(entry));
    if (!s3c_catalog_save(&b->cat, &b->repo, err)) {
        json_object_put(entry);
        return false;
    }
    drop_old_bitmaps(b);
    if (b->opts->json) {
        s3c_output_result(result_of(entry, b->cat.vm));
    } else {
        s3c_output_info("backup %s of VM %s done", b->id, b->cat.vm);
    }
    json_object_put(entry);
    return true;
}

static void abandon(Backup *b)
{
    g_autoptr(GError) local = NULL;

    if (b->jobs_started) {
        stop_jobs(b);
    }
    resume_vm(b);
    restore_vm_graph(b, &local);
    if (local) {
        g_printerr("s3chain: error: %s\n", local->message);
    }
    keep_changes(b);
    drop_targets(b);
}

int s3c_backup(const S3cBackupOptions *opts, GError **err)
{
    Backup b = { .opts = opts, .start_us = g_get_monotonic_time() };
    g_autofree char *stamp = utc_now("%Y%m%dT%H%M%SZ");
    bool ok;

    b.id = g_strdup_printf("%s-%04x", stamp, g_random_int_range(0, 0x10000));
    b.bitmap = g_strconcat(BITMAP_PREFIX, b.id, NULL);

    ok = prepare(&b, err) && run_backup(&b, err) && finish(&b, err);
    if (!ok && b.vm) {
        abandon(&b);
    }
    if (b.sidecar_open) {
        s3c_sidecar_close(&b.sidecar);
    }
    if (b.locked) {
        s3c_lock_release(&b.repo, &b.cat);
    }
    s3c_qmp_free(b.vm);
    if (b.disks) {
        g_ptr_array_unref(b.disks);
    }
    if (b.all_disks) {
        g_ptr_array_unref(b.all_disks);
    }
    s3c_catalog_clear(&b.cat);
    s3c_repo_clear(&b.repo);
    g_free(b.id);
    g_free(b.bitmap);
    g_free(b.instant);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
