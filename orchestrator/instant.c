/*
 * instant.c: a VM runs at once on a backup while its QEMU copies it home
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VM_POLL_US (200 * 1000)

typedef struct Instant {
    S3cRestorePlan plan;
    S3cSidecar sidecar;
    bool sidecar_open;
    GPtrArray *nodes;           /* the sidecar's point nodes, by disk */
    GPtrArray *created;         /* the targets this command created */
    S3cQmp *vm;
    GPtrArray *vm_nodes;        /* each target's node in the VM */
    bool streaming;
} Instant;

static char *point_node(const S3cRestoreDisk *rd)
{
    /* the command's own, when a running sidecar serves others too */
    return g_strdup_printf("s3c-instant-%s-%d", rd->name, (int)getpid());
}

/* A qcow2 file whose backing is the disk's export in the sidecar */
static bool create_target(Instant *in, S3cRestoreDisk *rd, GError **err)
{
    g_autofree char *export = point_node(rd);
    json_object *backing = s3c_json_obj(
        "driver", json_object_new_string("raw"),
        "file", s3c_json_obj(
            "driver", json_object_new_string("nbd"),
            "server", s3c_json_obj("type", json_object_new_string("unix"),
                                   "path", json_object_new_string(
                                       in->sidecar.nbd_socket), NULL),
            "export", json_object_new_string(export), NULL), NULL);
    g_autofree char *backing_name = g_strconcat(
        "json:", json_object_to_json_string_ext(backing,
                                                JSON_C_TO_STRING_PLAIN),
        NULL);
    g_autofree char *opts = g_strdup_printf(
        "cluster_size=%" G_GINT64_FORMAT,
        s3c_json_int(rd->entry, "cluster-size"));
    g_autofree char *size = g_strdup_printf("%" G_GUINT64_FORMAT, rd->size);
    const char *args[] = {
        "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing_name,
        "-o", opts, rd->target, size, NULL,
    };
    bool ok;

    json_object_put(backing);
    if (rd->replaces) {
        unlink(rd->target);
    }
    ok = s3c_qemu_img(&in->plan.point.repo, args, NULL, NULL, NULL, err);
    if (ok) {
        g_ptr_array_add(in->created, rd->target);
    }
    return ok;
}

static bool serve_points(Instant *in, GError **err)
{
    const S3cRestoreOptions *opts = in->plan.opts;

    if (!s3c_sidecar_open(&in->sidecar, opts->sidecar_qmp, opts->runtime_dir,
                          NULL, &in->plan.point.repo, err)) {
        return false;
    }
    in->sidecar_open = true;
    for (guint i = 0; i < in->plan.disks->len; i++) {
        S3cRestoreDisk *rd = g_ptr_array_index(in->plan.disks, i);
        char *node = point_node(rd);

        if (!s3c_sidecar_add_point(&in->sidecar, &in->plan.point.repo,
                                   s3c_json_str(rd->entry, "image"), node,
                                   err)) {
            g_free(node);
            return false;
        }
        g_ptr_array_add(in->nodes, node);
        if (!s3c_sidecar_export(&in->sidecar, node, node, false, NULL, err) ||
            !create_target(in, rd, err)) {
            return false;
        }
    }
    return true;
}

/* The node of the VM whose image is @path, or NULL */
static char *vm_node_of(json_object *nodes, const char *path)
{
    for (size_t i = 0; i < s3c_json_len(nodes); i++) {
        json_object *n = json_object_array_get_idx(nodes, i);

        if (!g_strcmp0(s3c_json_str(n, "drv"), "qcow2") &&
            !g_strcmp0(s3c_json_str(n, "file"), path)) {
            return g_strdup(s3c_json_str(n, "node-name"));
        }
    }
    return NULL;
}

/* Waits for the VM to be up with every target open */
static bool find_vm(Instant *in, GError **err)
{
    const S3cRestoreOptions *opts = in->plan.opts;
    int64_t deadline = g_get_monotonic_time() +
                       opts->vm_wait * G_USEC_PER_SEC;

    while (!s3c_interrupted && g_get_monotonic_time() < deadline) {
        json_object *nodes;
        bool all = true;

        if (!in->vm) {
            in->vm = s3c_qmp_connect(opts->vm_qmp, "the VM", false, 5000,
                                     NULL);
        }
        nodes = in->vm ? s3c_qmp_execute(
            in->vm, "query-named-block-nodes",
            s3c_json_obj("flat", json_object_new_boolean(true), NULL),
            NULL) : NULL;
        for (guint i = 0; nodes && i < in->plan.disks->len; i++) {
            S3cRestoreDisk *rd = g_ptr_array_index(in->plan.disks, i);
            g_autofree char *path = realpath(rd->target, NULL);
            char *node = vm_node_of(nodes, path);

            all &= node != NULL;
            g_ptr_array_add(in->vm_nodes, node);
        }
        json_object_put(nodes);
        if (nodes && all) {
            return true;
        }
        g_ptr_array_set_size(in->vm_nodes, 0);
        g_usleep(VM_POLL_US);
    }
    g_set_error(err, S3C_ERROR, s3c_interrupted ? S3C_EXIT_INTERRUPTED
                : S3C_EXIT_VM_UNREACHABLE,
                "no VM at %s opened the targets within %d seconds; start it "
                "on them once the ready line is out", opts->vm_qmp,
                opts->vm_wait);
    return false;
}

static char *stream_job(const S3cRestoreDisk *rd)
{
    return g_strdup_printf("s3c-copy-%s", rd->name);
}

/* block-stream in the VM: the backing's data into each target */
static bool start_copies(Instant *in, GError **err)
{
    for (guint i = 0; i < in->plan.disks->len; i++) {
        S3cRestoreDisk *rd = g_ptr_array_index(in->plan.disks, i);
        g_autofree char *job = stream_job(rd);
        json_object *args = s3c_json_obj(
            "job-id", json_object_new_string(job),
            "device", json_object_new_string(g_ptr_array_index(in->vm_nodes,
                                                               i)),
            "auto-dismiss", json_object_new_boolean(false), NULL);

        if (in->plan.opts->copy_speed) {
            json_object_object_add(args, "speed", json_object_new_int64(
                                       in->plan.opts->copy_speed));
        }
        if (!s3c_qmp_run(in->vm, "block-stream", args, err)) {
            return false;
        }
        in->streaming = true;
    }
    return true;
}

/* Follows the copies to their end, reporting their progress */
static bool wait_copies(Instant *in, GError **err)
{
    guint n = in->plan.disks->len;
    g_autofree S3cJobProgress *jobs = g_new0(S3cJobProgress, n);
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    bool ok;

    for (guint i = 0; i < n; i++) {
        g_ptr_array_add(ids, stream_job(g_ptr_array_index(in->plan.disks,
                                                          i)));
        jobs[i].id = g_ptr_array_index(ids, i);
    }
    ok = s3c_jobs_follow(in->vm, jobs, n, true,
                         "interrupted before the copy ended", err);
    for (guint i = 0; i < n; i++) {
        S3cRestoreDisk *rd = g_ptr_array_index(in->plan.disks, i);

        if (ok && jobs[i].error) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "the copy of disk %s failed: %s", rd->name,
                        jobs[i].error);
            ok = false;
        }
        g_free(jobs[i].error);
    }
    return ok;
}

static void end_copies(Instant *in, bool cancel)
{
    for (guint i = 0; in->streaming && i < in->plan.disks->len; i++) {
        g_autofree char *job = stream_job(g_ptr_array_index(in->plan.disks,
                                                            i));

        if (cancel) {
            s3c_qmp_run(in->vm, "job-cancel", s3c_json_obj(
                            "id", json_object_new_string(job), NULL), NULL);
            s3c_job_wait(in->vm, job, "block-stream", NULL);
        } else {
            s3c_qmp_run(in->vm, "job-dismiss", s3c_json_obj(
                            "id", json_object_new_string(job), NULL), NULL);
        }
    }
}

static void stop_serving(Instant *in)
{
    for (guint i = 0; i < in->nodes->len; i++) {
        const char *node = g_ptr_array_index(in->nodes, i);

        s3c_sidecar_unexport(&in->sidecar, node, true, NULL);
        s3c_sidecar_del_node(&in->sidecar, node);
    }
    if (in->sidecar_open) {
        s3c_sidecar_close(&in->sidecar);
    }
}

int s3c_restore_instant(const S3cRestoreOptions *opts, GError **err)
{
    Instant in = {
        .nodes = g_ptr_array_new_with_free_func(g_free),
        .created = g_ptr_array_new(),
        .vm_nodes = g_ptr_array_new_with_free_func(g_free),
    };
    bool ok = s3c_restore_plan(&in.plan, opts, err) &&
              serve_points(&in, err);

    if (ok) {
        /* the controller starts the VM on the targets now */
        s3c_output_result(s3c_restore_event(&in.plan, "ready"));
        s3c_output_info("start the VM on the targets now");
        ok = find_vm(&in, err) && start_copies(&in, err) &&
             wait_copies(&in, err);
        end_copies(&in, !ok);
    }
    if (!ok && !in.vm_nodes->len) {
        /* no VM uses them: nothing is lost */
        for (guint i = 0; i < in.created->len; i++) {
            unlink(g_ptr_array_index(in.created, i));
        }
    } else if (!ok) {
        g_prefix_error(err, "the VM's disks still read from the backup, "
                       "which is no longer served: ");
    }
    stop_serving(&in);
    if (ok && opts->json) {
        s3c_output_result(s3c_restore_event(&in.plan, "result"));
    } else if (ok) {
        s3c_output_info("the VM runs on its own disks now");
    }
    s3c_qmp_free(in.vm);
    g_ptr_array_unref(in.nodes);
    g_ptr_array_unref(in.created);
    g_ptr_array_unref(in.vm_nodes);
    s3c_restore_plan_clear(&in.plan);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
