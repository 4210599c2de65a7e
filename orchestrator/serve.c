/*
 * serve.c: a backup's disk exported over NBD by the sidecar, read-only or not
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* How often serving checks that the sidecar still lives */
#define SERVE_POLL_MS 500

typedef struct Serve {
    const S3cServeOptions *opts;
    S3cPoint point;
    S3cSidecar sidecar;
    bool sidecar_open;
    const char *disk;
    char *overlay;              /* a local overlay file, when writable */
    S3cRepo overlay_repo;       /* or one in this bucket: the repo's own */
    char *overlay_bucket;       /* settings but the bucket */
    char *overlay_key;
    bool own_overlay;           /* transient: removed at the end */
    bool point_added, overlay_added, exported;
    /* the sidecar's nodes: this command's, when others share it */
    char *point_node;
    char *overlay_node;
} Serve;

/*
 * An overlay in a bucket: a new key, on the repository's endpoint and
 * credentials, outside the repository so that the backups never change
 */
static bool check_bucket_overlay(Serve *s, GError **err)
{
    const S3cRepo *repo = &s->point.repo;
    const char *url = s->opts->overlay;
    const char *slash = strchr(url + strlen("s3://"), '/');
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;

    if (!slash || slash == url + strlen("s3://") || !slash[1] ||
        g_str_has_suffix(url, "/")) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "--overlay %s is not s3://BUCKET/KEY", url);
        return false;
    }
    s->overlay_bucket = g_strndup(url + strlen("s3://"),
                                  slash - url - strlen("s3://"));
    s->overlay_key = g_strdup(slash + 1);
    if (!strcmp(s->overlay_bucket, repo->bucket) &&
        g_str_has_prefix(s->overlay_key, repo->prefix)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "overlay %s is inside the repository s3://%s/%s; give a "
                    "key outside it", url, repo->bucket, repo->prefix);
        return false;
    }
    s->overlay_repo = *repo;
    s->overlay_repo.bucket = s->overlay_bucket;
    if (s3c_s3_get(&s->overlay_repo, s->overlay_key, &body, &local)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_TARGET,
                    "overlay %s exists; give a new key", url);
        return false;
    }
    if (local) {
        g_propagate_error(err, g_steal_pointer(&local));
        return false;
    }
    return true;
}

static bool check_overlay(Serve *s, GError **err)
{
    const S3cServeOptions *opts = s->opts;

    if (!opts->writable) {
        return true;
    }
    if (opts->overlay && g_str_has_prefix(opts->overlay, "s3://")) {
        return check_bucket_overlay(s, err);
    }
    if (opts->overlay) {
        s->overlay = g_strdup(opts->overlay);
        if (g_file_test(s->overlay, G_FILE_TEST_EXISTS)) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TARGET,
                        "overlay %s exists; give a new file", s->overlay);
            return false;
        }
        return true;
    }
    s->overlay = g_strdup_printf("%s/overlay-%d-%s.qcow2", opts->runtime_dir,
                                 (int)getpid(), s->disk);
    s->own_overlay = true;
    return true;
}

static json_object *ready_event(Serve *s, json_object *entry)
{
    g_autofree char *uri = s3c_sidecar_nbd_uri(&s->sidecar, s->disk);

    return s3c_json_obj(
        "event", json_object_new_string("ready"),
        "vm", json_object_new_string(s->point.cat.vm),
        "backup", json_object_new_string(s->point.id),
        "time", json_object_new_string(s3c_json_str(s->point.backup, "time")),
        "disk", json_object_new_string(s->disk),
        "virtual-size", json_object_new_int64(
            s3c_json_int(entry, "virtual-size")),
        "uri", json_object_new_string(uri),
        "writable", json_object_new_boolean(s->opts->writable),
        "overlay", (s->overlay && !s->own_overlay) || s->overlay_key
            ? json_object_new_string(s->opts->overlay) : NULL, NULL);
}

static bool start(Serve *s, GError **err)
{
    const S3cServeOptions *opts = s->opts;
    json_object *entry;
    json_object *ready;

    if (!s3c_point_open(&s->point, &opts->point, err)) {
        return false;
    }
    entry = s3c_point_disk(&s->point, opts->disk, err);
    if (!entry) {
        return false;
    }
    s->disk = s3c_json_str(entry, "name");
    if (!check_overlay(s, err) ||
        !s3c_point_check(&s->point, s->disk, err)) {
        return false;
    }
    if (!s3c_sidecar_open(&s->sidecar, opts->sidecar_qmp, opts->runtime_dir,
                          opts->listen, &s->point.repo, err)) {
        return false;
    }
    s->sidecar_open = true;
    if (!s3c_sidecar_add_point(&s->sidecar, &s->point.repo,
                               s3c_json_str(entry, "image"), s->point_node,
                               err)) {
        return false;
    }
    s->point_added = true;
    if (s->overlay_key) {
        g_autofree char *backing_name = s3c_qemu_img_filename(
            &s->point.repo, s3c_json_str(entry, "image"), false);

        s->overlay_added = true;
        if (!s3c_sidecar_add_bucket_overlay(
                &s->sidecar, &s->overlay_repo, s->overlay_node, s->point_node,
                s->overlay_key, backing_name,
                s3c_json_int(entry, "virtual-size"), err)) {
            return false;
        }
    } else if (s->overlay) {
        s->overlay_added = true;
        if (!s3c_sidecar_add_overlay(&s->sidecar, s->overlay_node,
                                     s->point_node, s->overlay,
                                     s3c_json_int(entry, "virtual-size"),
                                     err)) {
            return false;
        }
    }
    if (!s3c_sidecar_export(&s->sidecar, s->disk,
                            s->overlay_added ? s->overlay_node : s->point_node,
                            opts->writable, NULL, err)) {
        return false;
    }
    s->exported = true;
    ready = ready_event(s, entry);
    s3c_output_result(json_object_get(ready));
    s3c_output_info("serving disk %s of backup %s at %s until interrupted",
                    s->disk, s->point.id, s3c_json_str(ready, "uri"));
    json_object_put(ready);
    return true;
}

/* Serves until a signal, or until the sidecar goes */
static bool serve(Serve *s, GError **err)
{
    while (!s3c_interrupted) {
        if (!s3c_sidecar_wait(&s->sidecar, SERVE_POLL_MS, err)) {
            g_prefix_error(err, "serving stopped: ");
            return false;
        }
    }
    return true;
}

static void stop(Serve *s)
{
    if (s->exported) {
        s3c_sidecar_unexport(&s->sidecar, s->disk, true, NULL);
    }
    if (s->overlay_added) {
        s3c_sidecar_del_overlay(&s->sidecar, s->overlay_node);
    }
    if (s->point_added) {
        s3c_sidecar_del_node(&s->sidecar, s->point_node);
    }
    if (s->sidecar_open) {
        s3c_sidecar_close(&s->sidecar);
    }
    if (s->own_overlay) {
        unlink(s->overlay);
    }
}

int s3c_serve(const S3cServeOptions *opts, GError **err)
{
    Serve s = {
        .opts = opts,
        .point_node = g_strdup_printf("s3c-point-%d", (int)getpid()),
        .overlay_node = g_strdup_printf("s3c-overlay-%d", (int)getpid()),
    };
    bool ok = start(&s, err) && serve(&s, err);

    stop(&s);
    if (ok && opts->json) {
        s3c_output_result(s3c_json_obj(
            "event", json_object_new_string("result"),
            "vm", json_object_new_string(s.point.cat.vm),
            "backup", json_object_new_string(s.point.id),
            "disk", json_object_new_string(s.disk), NULL));
    }
    g_free(s.overlay);
    g_free(s.overlay_bucket);
    g_free(s.overlay_key);
    g_free(s.point_node);
    g_free(s.overlay_node);
    s3c_point_clear(&s.point);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
