/*
 * sidecar.c: qemu-storage-daemon, which writes each backup into the bucket
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIDECAR_START_TIMEOUT_MS 15000
/* in the runtime directory: what a sidecar the command started says */
#define SIDECAR_LOG "sidecar.log"

/* Where the sidecar's start script is when none is named */
static char *sidecar_program(void)
{
    const char *env = g_getenv("S3CHAIN_SIDECAR");
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *dir = self ? g_path_get_dirname(self) : NULL;
    const char *relative[] = {
        "../share/s3chain/s3chain-sidecar",     /* installed */
        "../../qsd-config/s3chain-sidecar",     /* build/orchestrator */
    };

    if (env) {
        return g_strdup(env);
    }
    for (size_t i = 0; dir && i < G_N_ELEMENTS(relative); i++) {
        g_autofree char *path = g_build_filename(dir, relative[i], NULL);

        if (g_file_test(path, G_FILE_TEST_IS_EXECUTABLE)) {
            return g_steal_pointer(&path);
        }
    }
    return g_strdup("s3chain-sidecar");
}

/*
 * In the sidecar, before it runs: a sidecar whose command was killed
 * goes with it at once, instead of uploading images that no catalog
 * will name
 */
static void die_with_parent(gpointer unused)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static bool start_sidecar(S3cSidecar *sc, GError **err)
{
    const char *qmp_path = sc->own_qmp;
    g_autofree char *program = sidecar_program();
    g_autofree char *log_path = g_build_filename(sc->runtime_dir,
                                                 SIDECAR_LOG, NULL);
    g_auto(GStrv) envp = s3c_child_environ();
    char *argv[] = { program, NULL };
    g_autoptr(GError) spawn_err = NULL;
    int64_t deadline = g_get_monotonic_time() +
                       SIDECAR_START_TIMEOUT_MS * 1000LL;
    int log_fd;
    bool spawned;

    envp = g_environ_setenv(envp, "S3CHAIN_RUNTIME_DIR", sc->runtime_dir,
                            true);
    envp = g_environ_setenv(envp, "S3CHAIN_SIDECAR_QMP", qmp_path, true);
    unlink(qmp_path);
    /* its output is not ours: stdout carries the command's JSON lines */
    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot write the sidecar's log %s: %s", log_path,
                    g_strerror(errno));
        return false;
    }
    spawned = g_spawn_async_with_fds(NULL, argv, envp,
                                     G_SPAWN_DO_NOT_REAP_CHILD |
                                     G_SPAWN_SEARCH_PATH |
                                     G_SPAWN_STDIN_FROM_DEV_NULL,
                                     die_with_parent, NULL, &sc->pid, -1,
                                     log_fd, log_fd, &spawn_err);
    close(log_fd);
    if (!spawned) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot start the sidecar %s: %s; set S3CHAIN_SIDECAR "
                    "or give --sidecar-qmp", program, spawn_err->message);
        return false;
    }
    while (g_get_monotonic_time() < deadline) {
        g_autoptr(GError) local = NULL;

        if (waitpid(sc->pid, NULL, WNOHANG) == sc->pid) {
            sc->pid = 0;
            break;
        }
        sc->qmp = s3c_qmp_connect(qmp_path, "the sidecar", false, 5000,
                                  &local);
        if (sc->qmp) {
            return true;
        }
        g_usleep(50000);
    }
    g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                "the sidecar %s did not open its QMP socket %s", program,
                qmp_path);
    return false;
}

/*
 * Hands @value to the sidecar as secret object @id through a file only
 * this user may read, removed as soon as the sidecar has read it.
 */
static bool add_secret(S3cSidecar *sc, const char *id, const char *value,
                       GError **err)
{
    g_autofree char *path = g_strdup_printf("%s/%s", sc->runtime_dir, id);
    json_object *ret;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(value);

    if (fd < 0 || write(fd, value, len) != (ssize_t)len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot write a secret file in %s: %s", sc->runtime_dir,
                    g_strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        return false;
    }
    close(fd);
    ret = s3c_qmp_execute(
        sc->qmp, "object-add",
        s3c_json_obj("qom-type", json_object_new_string("secret"),
                     "id", json_object_new_string(id),
                     "file", json_object_new_string(path), NULL), err);
    unlink(path);
    json_object_put(ret);
    return ret != NULL;
}

/* The NBD server's address: "unix:PATH" or "tcp:HOST:PORT" */
static json_object *nbd_address(S3cSidecar *sc, const char *listen,
                                GError **err)
{
    const char *colon;

    if (g_str_has_prefix(listen, "unix:") && listen[5]) {
        sc->nbd_socket = g_strdup(listen + 5);
        unlink(sc->nbd_socket);
        return s3c_json_obj("type", json_object_new_string("unix"),
                            "data", s3c_json_obj(
                                "path", json_object_new_string(
                                    sc->nbd_socket), NULL), NULL);
    }
    colon = strrchr(listen, ':');
    if (g_str_has_prefix(listen, "tcp:") && colon > listen + 4 &&
        colon[1]) {
        sc->nbd_host = g_strndup(listen + 4, colon - listen - 4);
        sc->nbd_port = g_strdup(colon + 1);
        return s3c_json_obj("type", json_object_new_string("inet"),
                            "data", s3c_json_obj(
                                "host", json_object_new_string(sc->nbd_host),
                                "port", json_object_new_string(sc->nbd_port),
                                NULL), NULL);
    }
    g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                "--listen wants unix:PATH or tcp:HOST:PORT, not '%s'", listen);
    return NULL;
}

char *s3c_sidecar_nbd_uri(const S3cSidecar *sc, const char *export)
{
    if (sc->nbd_host) {
        return g_strdup_printf(strchr(sc->nbd_host, ':') ? "nbd://[%s]:%s/%s"
                               : "nbd://%s:%s/%s", sc->nbd_host,
                               sc->nbd_port, export);
    }
    return g_strdup_printf("nbd+unix:///%s?socket=%s", export,
                           sc->nbd_socket);
}

static bool run(S3cSidecar *sc, const char *command, json_object *args,
                GError **err)
{
    return s3c_qmp_run(sc->qmp, command, args, err);
}

/*
 * Its QMP socket serves one client at a time, and each command keeps its
 * connection to the end: whatever a sidecar holds when the command comes
 * in (exports, images, jobs, secrets, an NBD server) was left by a
 * command that was killed.  It goes, so that a killed backup neither
 * keeps uploading nor locks the sidecar out.
 */
static void clear_killed_command(S3cSidecar *sc)
{
    g_autoptr(GPtrArray) done = g_ptr_array_new_with_free_func(g_free);
    json_object *list = s3c_qmp_execute(sc->qmp, "query-jobs", NULL, NULL);
    bool deleted = true;

    for (size_t i = 0; i < s3c_json_len(list); i++) {
        const char *id = s3c_json_str(json_object_array_get_idx(list, i),
                                      "id");

        run(sc, "job-cancel", s3c_json_obj(
                "id", json_object_new_string(id),
                "force", json_object_new_boolean(true), NULL), NULL);
        s3c_job_wait(sc->qmp, id, "ending a killed command's job", NULL);
        g_ptr_array_add(done, g_strdup_printf("ended job %s", id));
    }
    json_object_put(list);
    list = s3c_qmp_execute(sc->qmp, "query-block-exports", NULL, NULL);
    for (size_t i = 0; i < s3c_json_len(list); i++) {
        const char *id = s3c_json_str(json_object_array_get_idx(list, i),
                                      "id");

        s3c_sidecar_unexport(sc, id, true, NULL);
        g_ptr_array_add(done, g_strdup_printf("removed export %s", id));
    }
    json_object_put(list);
    if (run(sc, "nbd-server-stop", NULL, NULL)) {
        g_ptr_array_add(done, g_strdup("stopped its NBD server"));
    }
    /* a node in use by another fails, until its parents have gone */
    while (deleted) {
        deleted = false;
        list = s3c_qmp_execute(sc->qmp, "query-named-block-nodes",
                               s3c_json_obj("flat",
                                            json_object_new_boolean(true),
                                            NULL), NULL);
        for (size_t i = 0; i < s3c_json_len(list); i++) {
            const char *node = s3c_json_str(
                json_object_array_get_idx(list, i), "node-name");

            if (node && node[0] != '#' &&
                run(sc, "blockdev-del", s3c_json_obj(
                        "node-name", json_object_new_string(node), NULL),
                    NULL)) {
                g_ptr_array_add(done, g_strdup_printf("removed node %s", node));
                deleted = true;
            }
        }
        json_object_put(list);
    }
    list = s3c_qmp_execute(sc->qmp, "qom-list", s3c_json_obj(
                               "path", json_object_new_string("/objects"),
                               NULL), NULL);
    for (size_t i = 0; i < s3c_json_len(list); i++) {
        const char *id = s3c_json_str(json_object_array_get_idx(list, i),
                                      "name");

        if (g_str_has_prefix(id, "s3chain-key-") ||
            g_str_has_prefix(id, "s3chain-token-")) {
            run(sc, "object-del", s3c_json_obj(
                    "id", json_object_new_string(id), NULL), NULL);
            g_ptr_array_add(done, g_strdup_printf("removed secret %s", id));
        }
    }
    json_object_put(list);
    s3c_output_cleaned("the sidecar", done);
}

bool s3c_sidecar_open(S3cSidecar *sc, const char *qmp_path,
                      const char *runtime_dir, const char *listen,
                      const S3cRepo *repo, GError **err)
{
    g_autofree char *own_listen = NULL;
    json_object *ret, *addr;

    memset(sc, 0, sizeof(*sc));
    sc->runtime_dir = g_strdup(runtime_dir);
    if (g_mkdir_with_parents(runtime_dir, 0700) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot create the runtime directory %s: %s",
                    runtime_dir, g_strerror(errno));
        return false;
    }
    if (qmp_path) {
        sc->qmp = s3c_qmp_connect(qmp_path, "the sidecar", false, 10000, err);
        if (!sc->qmp) {
            return false;
        }
        clear_killed_command(sc);
    } else {
        sc->own_qmp = g_strdup_printf("%s/qsd-%d.qmp", runtime_dir,
                                      (int)getpid());
        if (!start_sidecar(sc, err)) {
            return false;
        }
    }

    sc->secret_id = g_strdup_printf("s3chain-key-%d", (int)getpid());
    if (!add_secret(sc, sc->secret_id, repo->secret_access_key, err)) {
        g_clear_pointer(&sc->secret_id, g_free);
        return false;
    }
    if (repo->session_token) {
        sc->token_secret_id = g_strdup_printf("s3chain-token-%d",
                                              (int)getpid());
        if (!add_secret(sc, sc->token_secret_id, repo->session_token, err)) {
            g_clear_pointer(&sc->token_secret_id, g_free);
            return false;
        }
    }

    if (!listen) {
        own_listen = g_strdup_printf("unix:%s/nbd-%d.sock", runtime_dir,
                                     (int)getpid());
    }
    addr = nbd_address(sc, listen ? listen : own_listen, err);
    if (!addr) {
        return false;
    }
    ret = s3c_qmp_execute(sc->qmp, "nbd-server-start",
                          s3c_json_obj("addr", addr, NULL), err);
    if (!ret) {
        g_prefix_error(err, "the sidecar must not run an NBD server of its "
                       "own: ");
        g_clear_pointer(&sc->nbd_socket, g_free);
        g_clear_pointer(&sc->nbd_host, g_free);
        return false;
    }
    sc->nbd_started = true;
    json_object_put(ret);

    ret = s3c_qmp_execute(sc->qmp, "query-iothreads", NULL, NULL);
    for (size_t i = 0; i < s3c_json_len(ret); i++) {
        const char *id = s3c_json_str(json_object_array_get_idx(ret, i), "id");

        if (!g_strcmp0(id, "s3chain-io")) {
            sc->iothread = g_strdup(id);
        }
    }
    json_object_put(ret);
    return true;
}

static char *file_node(const S3cTarget *t)
{
    return g_strdup_printf("%s-file", t->export_name);
}

/*
 * Creates the s3chain image @key, empty, and opens it as node @node with
 * @extra options; returns the node's options (a reference) or NULL
 */
static json_object *add_bucket_file(S3cSidecar *sc, const S3cRepo *repo,
                                    const char *key, const char *node,
                                    json_object *extra, GError **err)
{
    g_autofree char *job = g_strdup_printf("%s-create", node);
    json_object *file_opts = s3c_repo_location(repo, key, sc->secret_id,
                                               sc->token_secret_id);

    if (!s3c_job_run(sc->qmp, "blockdev-create", s3c_json_obj(
                         "job-id", json_object_new_string(job),
                         "options", s3c_json_obj(
                             "driver", json_object_new_string("s3chain"),
                             "location", json_object_get(file_opts),
                             "size", json_object_new_int64(0), NULL),
                         NULL), job, err)) {
        json_object_put(file_opts);
        json_object_put(extra);
        return NULL;
    }
    json_object_object_add(file_opts, "driver",
                           json_object_new_string("s3chain"));
    json_object_object_add(file_opts, "node-name",
                           json_object_new_string(node));
    json_object_object_foreach(extra, k, v) {
        json_object_object_add(file_opts, k, json_object_get(v));
    }
    json_object_put(extra);
    if (!run(sc, "blockdev-add", json_object_get(file_opts), err)) {
        json_object_put(file_opts);
        return NULL;
    }
    return file_opts;
}

bool s3c_sidecar_add_target(S3cSidecar *sc, const S3cRepo *repo,
                            S3cTarget *t, GError **err)
{
    g_autofree char *file = file_node(t);
    g_autofree char *job = g_strdup_printf("%s-create", t->export_name);
    json_object *qcow2;

    /*
     * qcow2 flushes its file for each new L2 table, and a flush of an
     * s3chain image is a commit; a backup image is worth nothing until
     * the backup ends, so it commits once, then
     */
    t->file_options = add_bucket_file(sc, repo, t->key, file, s3c_json_obj(
        "buffer-size", json_object_new_int64(t->buffer_size),
        "cache", s3c_json_obj("no-flush", json_object_new_boolean(true),
                              NULL), NULL), err);
    if (!t->file_options) {
        return false;
    }

    qcow2 = s3c_json_obj("driver", json_object_new_string("qcow2"),
                         "file", json_object_new_string(file),
                         "size", json_object_new_int64(t->size),
                         "cluster-size", json_object_new_int64(t->cluster_size),
                         NULL);
    if (t->backing) {
        json_object_object_add(qcow2, "backing-file",
                               json_object_new_string(t->backing));
        json_object_object_add(qcow2, "backing-fmt",
                               json_object_new_string("qcow2"));
    }
    if (!s3c_job_run(sc->qmp, "blockdev-create", s3c_json_obj(
                         "job-id", json_object_new_string(job),
                         "options", qcow2, NULL), job, err) ||
        /* the parent is not opened: the backup writes only changes */
        !run(sc, "blockdev-add", s3c_json_obj(
                 "node-name", json_object_new_string(t->export_name),
                 "driver", json_object_new_string("qcow2"),
                 "file", json_object_new_string(file),
                 "backing", NULL, NULL), err)) {
        return false;
    }

    return s3c_sidecar_export(sc, t->export_name, t->export_name, true, NULL,
                              err);
}

bool s3c_sidecar_export(S3cSidecar *sc, const char *name, const char *node,
                        bool writable, const char *bitmap, GError **err)
{
    json_object *export = s3c_json_obj(
        "type", json_object_new_string("nbd"),
        "id", json_object_new_string(name),
        "node-name", json_object_new_string(node),
        "name", json_object_new_string(name),
        "writable", json_object_new_boolean(writable), NULL);

    if (bitmap) {
        json_object *bitmaps = json_object_new_array();

        json_object_array_add(bitmaps, json_object_new_string(bitmap));
        json_object_object_add(export, "bitmaps", bitmaps);
    }

    if (sc->iothread) {
        json_object_object_add(export, "iothread",
                               json_object_new_string(sc->iothread));
    }
    return run(sc, "block-export-add", export, err);
}

bool s3c_sidecar_unexport(S3cSidecar *sc, const char *name, bool hard,
                          GError **err)
{
    int64_t deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;

    if (!run(sc, "block-export-del", s3c_json_obj(
                 "id", json_object_new_string(name),
                 "mode", json_object_new_string(hard ? "hard" : "safe"),
                 NULL), err)) {
        return false;
    }
    while (g_get_monotonic_time() < deadline) {
        json_object *exports = s3c_qmp_execute(sc->qmp,
                                               "query-block-exports", NULL,
                                               err);
        bool gone = exports && !s3c_json_find_id(exports, name);

        json_object_put(exports);
        if (!exports || gone) {
            return gone;
        }
        json_object_put(s3c_qmp_next_event(sc->qmp, 100));
    }
    g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                "the sidecar did not end export %s", name);
    return false;
}

bool s3c_sidecar_add_image(S3cSidecar *sc, const char *node,
                           const char *path, const char *format,
                           GError **err)
{
    struct stat st;
    bool device = stat(path, &st) == 0 && S_ISBLK(st.st_mode);

    /*
     * Shared: reading must never keep the VM that owns the image from
     * starting, so its writes are not locked out; the caller finds out
     * whether the image changed while it was read
     */
    return run(sc, "blockdev-add", s3c_json_obj(
                   "node-name", json_object_new_string(node),
                   "driver", json_object_new_string(format),
                   "read-only", json_object_new_boolean(true),
                   "force-share", json_object_new_boolean(true),
                   "file", s3c_json_obj(
                       "driver", json_object_new_string(
                           device ? "host_device" : "file"),
                       "filename", json_object_new_string(path), NULL),
                   NULL), err);
}

bool s3c_sidecar_add_point(S3cSidecar *sc, const S3cRepo *repo,
                           const char *key, const char *node, GError **err)
{
    json_object *file = s3c_repo_location(repo, key, sc->secret_id,
                                          sc->token_secret_id);

    json_object_object_add(file, "driver", json_object_new_string("s3chain"));
    /* its parents open with it, in the same bucket, as the same user */
    return run(sc, "blockdev-add", s3c_json_obj(
                   "node-name", json_object_new_string(node),
                   "driver", json_object_new_string("qcow2"),
                   "read-only", json_object_new_boolean(true),
                   "file", file, NULL), err);
}

/* Formats @file as a qcow2 over node @backing and opens it as @node */
static bool add_overlay_qcow2(S3cSidecar *sc, const char *node,
                              const char *file, const char *backing,
                              const char *backing_name, uint64_t size,
                              GError **err)
{
    g_autofree char *job = g_strdup_printf("%s-create", node);
    json_object *qcow2 = s3c_json_obj(
        "driver", json_object_new_string("qcow2"),
        "file", json_object_new_string(file),
        "size", json_object_new_int64(size), NULL);

    if (backing_name) {
        json_object_object_add(qcow2, "backing-file",
                               json_object_new_string(backing_name));
        json_object_object_add(qcow2, "backing-fmt",
                               json_object_new_string("qcow2"));
    }
    return s3c_job_run(sc->qmp, "blockdev-create", s3c_json_obj(
                           "job-id", json_object_new_string(job),
                           "options", qcow2, NULL), job, err) &&
           run(sc, "blockdev-add", s3c_json_obj(
                   "node-name", json_object_new_string(node),
                   "driver", json_object_new_string("qcow2"),
                   "file", json_object_new_string(file),
                   "backing", json_object_new_string(backing), NULL), err);
}

bool s3c_sidecar_add_overlay(S3cSidecar *sc, const char *node,
                             const char *backing, const char *path,
                             uint64_t size, GError **err)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);
    g_autofree char *job = g_strdup_printf("%s-create", node);

    return s3c_job_run(sc->qmp, "blockdev-create", s3c_json_obj(
                           "job-id", json_object_new_string(job),
                           "options", s3c_json_obj(
                               "driver", json_object_new_string("file"),
                               "filename", json_object_new_string(path),
                               "size", json_object_new_int64(0), NULL),
                           NULL), job, err) &&
           run(sc, "blockdev-add", s3c_json_obj(
                   "node-name", json_object_new_string(file),
                   "driver", json_object_new_string("file"),
                   "filename", json_object_new_string(path), NULL), err) &&
           add_overlay_qcow2(sc, node, file, backing, NULL, size, err);
}

bool s3c_sidecar_add_bucket_overlay(S3cSidecar *sc, const S3cRepo *repo,
                                    const char *node, const char *backing,
                                    const char *key, const char *backing_name,
                                    uint64_t size, GError **err)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);
    json_object *file_opts = add_bucket_file(sc, repo, key, file,
                                             json_object_new_object(), err);

    json_object_put(file_opts);
    return file_opts &&
           add_overlay_qcow2(sc, node, file, backing, backing_name, size,
                             err);
}

void s3c_sidecar_del_node(S3cSidecar *sc, const char *node)
{
    run(sc, "blockdev-del", s3c_json_obj(
            "node-name", json_object_new_string(node), NULL), NULL);
}

void s3c_sidecar_del_overlay(S3cSidecar *sc, const char *node)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);

    s3c_sidecar_del_node(sc, node);
    s3c_sidecar_del_node(sc, file);
}

static void delete_nodes(S3cSidecar *sc, const S3cTarget *t)
{
    g_autofree char *file = file_node(t);

    s3c_sidecar_del_node(sc, t->export_name);
    s3c_sidecar_del_node(sc, file);
}

bool s3c_sidecar_commit_target(S3cSidecar *sc, const S3cTarget *t,
                               GError **err)
{
    g_autofree char *file = file_node(t);
    json_object *opts;
    bool ok;

    if (!s3c_sidecar_unexport(sc, t->export_name, false, err)) {
        return false;
    }
    opts = json_object_new_array();
    json_object_object_add(t->file_options, "cache", s3c_json_obj(
                               "no-flush", json_object_new_boolean(false),
                               NULL));
    json_object_array_add(opts, json_object_get(t->file_options));
    if (!run(sc, "blockdev-reopen", s3c_json_obj("options", opts, NULL),
             err)) {
        delete_nodes(sc, t);
        return false;
    }
    /*
     * Reopening read-only flushes, and a flush of an s3chain image
     * uploads its chunks and then its manifest: its error is the commit's
     */
    opts = json_object_new_array();
    json_object_array_add(opts, s3c_json_obj(
        "node-name", json_object_new_string(t->export_name),
        "driver", json_object_new_string("qcow2"),
        "file", json_object_new_string(file),
        "backing", NULL,
        "read-only", json_object_new_boolean(true), NULL));
    ok = run(sc, "blockdev-reopen", s3c_json_obj("options", opts, NULL),
             err);
    if (!ok) {
        g_prefix_error(err, "committing s3://%s: ", t->key);
    }
    delete_nodes(sc, t);
    return ok;
}

void s3c_sidecar_drop_target(S3cSidecar *sc, const S3cTarget *t)
{
    s3c_sidecar_unexport(sc, t->export_name, true, NULL);
    delete_nodes(sc, t);
}

void s3c_sidecar_close(S3cSidecar *sc)
{
    if (sc->qmp) {
        if (sc->nbd_started) {
            run(sc, "nbd-server-stop", NULL, NULL);
        }
        if (sc->secret_id) {
            run(sc, "object-del", s3c_json_obj(
                    "id", json_object_new_string(sc->secret_id), NULL), NULL);
        }
        if (sc->token_secret_id) {
            run(sc, "object-del", s3c_json_obj(
                    "id", json_object_new_string(sc->token_secret_id),
                    NULL), NULL);
        }
        if (sc->pid) {
            run(sc, "quit", NULL, NULL);
        }
    }
    if (sc->pid) {
        int64_t deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;

        while (waitpid(sc->pid, NULL, WNOHANG) != sc->pid) {
            if (g_get_monotonic_time() > deadline) {
                kill(sc->pid, SIGKILL);
                waitpid(sc->pid, NULL, 0);
                break;
            }
            g_usleep(20000);
        }
    }
    if (sc->own_qmp) {
        unlink(sc->own_qmp);
    }
    if (sc->nbd_socket) {
        unlink(sc->nbd_socket);
    }
    s3c_qmp_free(sc->qmp);
    g_free(sc->runtime_dir);
    g_free(sc->own_qmp);
    g_free(sc->secret_id);
    g_free(sc->token_secret_id);
    g_free(sc->nbd_socket);
    g_free(sc->nbd_host);
    g_free(sc->nbd_port);
    g_free(sc->iothread);
    memset(sc, 0, sizeof(*sc));
}
