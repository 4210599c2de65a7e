/*
 * source-qmp.c: push mode over a plain QEMU's QMP socket: the fleecing
 * graph, its copy-before-write target a scratch in the sidecar's RAM,
 * and one grouped transaction of backup jobs into the images
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AGENT_TIMEOUT_MS 5000
#define POLL_MS 200

/* What this source adds to the VM for one disk, named after the backup */
typedef struct DiskBackup {
    S3cDiskBackup *backup;
    S3cDisk *disk;              /* the same as backup->disk */
    char *nbd_node;             /* in the VM: the NBD client of the export */
    char *scratch_node;         /* and of the scratch, on its own socket */
    char *cbw_node;
    char *access_node;
    char *snap_bitmap;          /* the old bitmap frozen at the instant */
    char *job;
    bool nbd_added;
    bool scratch_added;
    bool new_bitmap_added;
    bool snap_added;
    bool cbw_added;
    bool redirected;
    bool access_added;
} DiskBackup;

typedef struct QmpSource {
    S3cSource source;
    const S3cBackupOptions *opts;
    S3cQmp *vm;
    S3cBackupRun *run;
    GPtrArray *disks;           /* of DiskBackup */
    const char *bitmap;         /* the new checkpoint's */
    bool vm_paused;
    bool jobs_started;
} QmpSource;

static void disk_backup_free(gpointer p)
{
    DiskBackup *d = p;

    g_free(d->nbd_node);
    g_free(d->scratch_node);
    g_free(d->cbw_node);
    g_free(d->access_node);
    g_free(d->snap_bitmap);
    g_free(d->job);
    g_free(d);
}

static bool vm_run(QmpSource *b, const char *command, json_object *args,
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

/* Every node this source adds to the VM, named after it */
static void name_parts(QmpSource *b, DiskBackup *d, guint index)
{
    int pid = getpid();

    d->nbd_node = g_strdup_printf(S3C_QMP_PART_FMT, index, pid, "target");
    d->scratch_node = g_strdup_printf(S3C_QMP_PART_FMT, index, pid,
                                      "scratch");
    d->cbw_node = g_strdup_printf(S3C_QMP_PART_FMT, index, pid, "cbw");
    d->access_node = g_strdup_printf(S3C_QMP_PART_FMT, index, pid, "access");
    d->snap_bitmap = g_strdup_printf(S3C_QMP_SNAPSHOT_FMT, pid);
    d->job = g_strdup_printf(S3C_QMP_PART_FMT, index, pid, "backup");
}

/* In the VM, node @node: an NBD client of the sidecar's @export */
static bool add_nbd_client(QmpSource *b, const char *node, const char *export,
                           bool *added, GError **err)
{
    *added = vm_run(b, "blockdev-add", s3c_json_obj(
                        "driver", json_object_new_string("nbd"),
                        "node-name", json_object_new_string(node),
                        "server", s3c_json_obj(
                            "type", json_object_new_string("unix"),
                            "path", json_object_new_string(
                                b->run->sidecar->nbd_socket), NULL),
                        "export", json_object_new_string(export),
                        "reconnect-delay", json_object_new_int(0),
                        /* the job's discards free the scratch */
                        "discard", json_object_new_string("unmap"), NULL),
                    err);
    return *added;
}

/*
 * In the VM, NBD clients of each disk's target and scratch exports: a
 * connection each, so that copy-before-write never queues behind the
 * job's requests in flight
 */
static bool add_targets(QmpSource *b, GError **err)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        g_autofree char *scratch = s3c_target_scratch_export(
            &d->backup->target);

        name_parts(b, d, i);
        if (!add_nbd_client(b, d->nbd_node, d->backup->target.export_name,
                            &d->nbd_added, err) ||
            !add_nbd_client(b, d->scratch_node, scratch, &d->scratch_added,
                            err)) {
            return false;
        }
    }
    return true;
}

/*
 * The instant of the backup.  With the VM paused, the new checkpoint's
 * bitmap starts and the old one is frozen; then each disk's device
 * writes through a copy-before-write filter whose target is the disk's
 * scratch in the sidecar, and the job reads the instant through a
 * snapshot-access node: the disk where the guest has not written since,
 * the scratch where it has.  The filter breaks the snapshot, never a
 * guest write, when the scratch fails or is slower than cbw-timeout.
 */
static bool take_snapshot(QmpSource *b, GError **err)
{
    json_object *actions = json_object_new_array();

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        const char *node = d->disk->format_node;
        int64_t granularity = d->backup->granularity;
        json_object *add = node_bitmap(node, b->bitmap);

        json_object_object_add(add, "granularity",
                               json_object_new_int64(granularity));
        /* only qcow2 can keep a bitmap across restarts */
        json_object_object_add(add, "persistent", json_object_new_boolean(
                                   !g_strcmp0(d->disk->format, "qcow2")));
        json_object_array_add(actions,
                              action("block-dirty-bitmap-add", add));
        if (d->backup->incremental) {
            json_object *snap = node_bitmap(node, d->snap_bitmap);

            json_object_object_add(snap, "granularity",
                                   json_object_new_int64(granularity));
            json_object_object_add(snap, "disabled",
                                   json_object_new_boolean(true));
            json_object_array_add(actions,
                                  action("block-dirty-bitmap-add", snap));
            json_object *merge = s3c_json_obj(
                "node", json_object_new_string(node),
                "target", json_object_new_string(d->snap_bitmap),
                "bitmaps", json_object_new_array(), NULL);
            json_object *sources;

            json_object_object_get_ex(merge, "bitmaps", &sources);
            json_object_array_add(sources, json_object_new_string(
                                               d->backup->old_bitmap));
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
        d->snap_added = d->backup->incremental;
    }

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        json_object *cbw = s3c_json_obj(
            "driver", json_object_new_string("copy-before-write"),
            "node-name", json_object_new_string(d->cbw_node),
            "file", json_object_new_string(d->disk->node),
            "target", json_object_new_string(d->scratch_node),
            "on-cbw-error", json_object_new_string("break-snapshot"),
            "cbw-timeout", json_object_new_int(b->opts->cbw_timeout), NULL);

        if (d->backup->incremental) {
            json_object_object_add(cbw, "bitmap", node_bitmap(
                                       d->disk->format_node, d->snap_bitmap));
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
                        "file", json_object_new_string(d->cbw_node),
                        "discard", json_object_new_string("unmap"), NULL),
                    err)) {
            return false;
        }
        d->access_added = true;
        if (d->backup->incremental) {
            /* a backup job takes its bitmap from its source node */
            json_object *copy = node_bitmap(d->access_node, d->snap_bitmap);
            json_object *sources = json_object_new_array();

            json_object_object_add(copy, "granularity", json_object_new_int64(
                                       d->backup->granularity));
            json_object_object_add(copy, "disabled",
                                   json_object_new_boolean(true));
            json_object_array_add(sources, node_bitmap(d->disk->format_node,
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

static S3cQmp *freeze_guest(QmpSource *b)
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
    s3c_output_warning("backing up without freezing the guest's "
                       "filesystems: %s", local->message);
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
        s3c_output_warning("could not thaw the guest's "
                           "filesystems: %s", local->message);
    }
    json_object_put(ret);
    s3c_qmp_free(agent);
}

/* Whether @st is what a disk's page cache can be written back for */
static bool holds_a_disk(const struct stat *st)
{
    return S_ISREG(st->st_mode) || S_ISBLK(st->st_mode);
}

/*
 * Writes back what the host's page cache holds of each disk's file,
 * with the VM still running.  QEMU's stop flushes the disks while the
 * guest is paused: with 320 MiB just written to a disk's file, the pause
 * lasted 0.6 s, and 14 ms after this.  Best effort: a file the command
 * may not open is flushed by the stop, as before.  The path comes from
 * the VM's QMP peer: only a regular file or a block device is opened,
 * and without blocking, so that a FIFO or a terminal named there can't
 * hang the command.
 */
static void write_back_host_cache(QmpSource *b)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        struct stat st;
        int fd;

        if (!d->disk->path || stat(d->disk->path, &st) < 0 ||
            !holds_a_disk(&st)) {
            continue;
        }
        fd = open(d->disk->path,
                  O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd >= 0 && fstat(fd, &st) == 0 && holds_a_disk(&st)) {
            fdatasync(fd);
        }
        if (fd >= 0) {
            close(fd);
        }
    }
}

static bool pause_vm(QmpSource *b, GError **err)
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

static void resume_vm(QmpSource *b)
{
    g_autoptr(GError) local = NULL;

    if (b->vm_paused && !vm_run(b, "cont", NULL, &local)) {
        g_printerr("s3chain: error: could not resume the VM: %s\n",
                   local->message);
    }
    b->vm_paused = false;
}

static bool start_jobs(QmpSource *b, GError **err)
{
    json_object *actions = json_object_new_array();

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        json_object *job = s3c_json_obj(
            "job-id", json_object_new_string(d->job),
            "device", json_object_new_string(d->access_node),
            "target", json_object_new_string(d->nbd_node),
            "sync", json_object_new_string(d->backup->incremental ? "bitmap"
                                                          : "full"),
            /*
             * what the job copied leaves the scratch, and the filter
             * copies no more of it on a guest write
             */
            "discard-source", json_object_new_boolean(true),
            "auto-dismiss", json_object_new_boolean(false), NULL);

        if (d->backup->incremental) {
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

/* Waits for every job to end; false if any failed or we were stopped */
static bool wait_jobs(QmpSource *b, GError **err)
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

        d->backup->duration = jobs[i].seconds;
        d->backup->bytes_copied = jobs[i].total;
        if (jobs[i].error && !strcmp(jobs[i].error, g_strerror(EACCES))) {
            /* what snapshot-access says once copy-before-write broke it */
            g_string_append_printf(
                errors, "%s%s: the snapshot was dropped, for a guest write "
                "waited longer than --cbw-timeout (%d s) for its old data "
                "to reach the sidecar, or that copy failed: the bucket or "
                "the sidecar is failing or too slow",
                errors->len ? "; " : "", d->disk->name,
                b->opts->cbw_timeout);
        } else if (jobs[i].error) {
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

/* Cancels the jobs and cuts them off from the sidecar, then waits */
static void stop_jobs(QmpSource *b)
{
    int64_t deadline = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;

    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        vm_run(b, "job-cancel", s3c_json_obj(
                   "id", json_object_new_string(d->job), NULL), NULL);
    }
    /* requests stuck in the sidecar would keep the jobs from ending */
    s3c_backup_drop_targets(b->run);
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
static void delete_node(QmpSource *b, bool *added, const char *node,
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
static void restore_vm_graph(QmpSource *b, GError **err)
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
        delete_node(b, &d->scratch_added, d->scratch_node, &local);
        if (d->snap_added &&
            vm_run(b, "block-dirty-bitmap-remove",
                   node_bitmap(d->disk->format_node, d->snap_bitmap),
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
static void keep_changes(QmpSource *b)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);
        g_autoptr(GError) local = NULL;

        if (!d->new_bitmap_added) {
            continue;
        }
        if (d->backup->old_bitmap) {
            json_object *sources = json_object_new_array();

            json_object_array_add(sources, json_object_new_string(b->bitmap));
            if (!vm_run(b, "block-dirty-bitmap-merge", s3c_json_obj(
                            "node", json_object_new_string(
                                d->disk->format_node),
                            "target", json_object_new_string(
                                d->backup->old_bitmap),
                            "bitmaps", sources, NULL), &local)) {
                /* keep the new one then: it is better than nothing */
                s3c_output_warning("disk %s: %s", d->disk->name,
                                   local->message);
                continue;
            }
        }
        vm_run(b, "block-dirty-bitmap-remove",
               node_bitmap(d->disk->format_node, b->bitmap), NULL);
    }
}

/* Once the catalog holds the backup, older checkpoints are of no use */
static void drop_old_bitmaps(QmpSource *b)
{
    for (guint i = 0; i < b->disks->len; i++) {
        DiskBackup *d = g_ptr_array_index(b->disks, i);

        for (guint j = 0; j < d->disk->bitmaps->len; j++) {
            const S3cBitmap *bm = g_ptr_array_index(d->disk->bitmaps, j);

            if (g_str_has_prefix(bm->name, S3C_CHECKPOINT_PREFIX)) {
                vm_run(b, "block-dirty-bitmap-remove",
                       node_bitmap(d->disk->format_node, bm->name), NULL);
            }
        }
    }
}

static QmpSource *qmp_source(S3cSource *src)
{
    /* the S3cSource is the first member */
    return (QmpSource *)src;
}

/*
 * The VM's QMP socket serves one client and the VM's lock is ours: what
 * earlier runs left in the VM is a killed run's, to undo first
 */
static GPtrArray *qmp_disks(S3cSource *src, S3cBackupRun *run, GError **err)
{
    QmpSource *b = qmp_source(src);
    GPtrArray *disks;

    b->vm = s3c_qmp_connect(b->opts->vm_qmp, "the VM", false, 10000, err);
    if (!b->vm || !s3c_vm_clear_leftovers(b->vm, err)) {
        return NULL;
    }
    disks = s3c_vm_disks(b->vm, err);
    for (guint i = 0; disks && i < disks->len; i++) {
        s3c_vm_clear_dead_bitmaps(b->vm, g_ptr_array_index(disks, i),
                                  run->catalog);
    }
    return disks;
}

static bool qmp_start(S3cSource *src, S3cBackupRun *run, GError **err)
{
    QmpSource *b = qmp_source(src);
    S3cQmp *agent;
    bool ok;

    b->run = run;
    b->bitmap = run->checkpoint;
    b->disks = g_ptr_array_new_with_free_func(disk_backup_free);
    for (guint i = 0; i < run->disks->len; i++) {
        DiskBackup *d = g_new0(DiskBackup, 1);

        d->backup = g_ptr_array_index(run->disks, i);
        d->disk = d->backup->disk;
        g_ptr_array_add(b->disks, d);
    }
    if (!add_targets(b, err)) {
        return false;
    }
    agent = freeze_guest(b);
    write_back_host_cache(b);
    ok = pause_vm(b, err) && take_snapshot(b, err);
    run->instant = s3c_backup_now();
    resume_vm(b);
    thaw_guest(agent);
    return ok && start_jobs(b, err);
}

static bool qmp_copy(S3cSource *src, S3cBackupRun *run, GError **err)
{
    return wait_jobs(qmp_source(src), err);
}

static bool qmp_finish(S3cSource *src, S3cBackupRun *run, GError **err)
{
    g_autoptr(GError) graph_err = NULL;

    restore_vm_graph(qmp_source(src), &graph_err);
    if (graph_err) {
        g_propagate_error(err, g_steal_pointer(&graph_err));
        return false;
    }
    return true;
}

static void qmp_committed(S3cSource *src, S3cBackupRun *run)
{
    drop_old_bitmaps(qmp_source(src));
}

static void qmp_abandon(S3cSource *src, S3cBackupRun *run)
{
    QmpSource *b = qmp_source(src);
    g_autoptr(GError) local = NULL;

    if (!b->vm || !b->disks) {
        return;
    }
    if (b->vm->closed) {
        /* the VM is gone, and its graph and bitmaps with it */
        s3c_backup_drop_targets(run);
        return;
    }
    if (b->jobs_started) {
        stop_jobs(b);
    }
    resume_vm(b);
    restore_vm_graph(b, &local);
    if (local) {
        g_printerr("s3chain: error: %s\n", local->message);
    }
    keep_changes(b);
}

static void qmp_free(S3cSource *src)
{
    QmpSource *b = qmp_source(src);

    s3c_qmp_free(b->vm);
    if (b->disks) {
        g_ptr_array_unref(b->disks);
    }
    g_free(b);
}

static const S3cSourceOps qmp_ops = {
    .disks = qmp_disks,
    .start = qmp_start,
    .copy = qmp_copy,
    .finish = qmp_finish,
    .committed = qmp_committed,
    .abandon = qmp_abandon,
    .free = qmp_free,
};

S3cSource *s3c_source_qmp_new(const S3cBackupOptions *opts)
{
    QmpSource *b = g_new0(QmpSource, 1);

    b->source.ops = &qmp_ops;
    b->source.scratch = true;
    b->opts = opts;
    return &b->source;
}
