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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIDECAR_START_TIMEOUT_MS 15000
/*
 * How long a command waits for its turn at a running sidecar's QMP
 * socket: a turn may be another command's commit, which uploads what its
 * write-back buffer holds
 */
#define SIDECAR_TURN_TIMEOUT_MS (5 * 60 * 1000)
/* next to a running sidecar's QMP socket: one file per command using it */
#define OWNERS_SUFFIX ".owners"
/* next to a running sidecar's QMP socket: the NBD server commands share */
#define SHARED_NBD_SOCKET "s3chain-nbd.sock"
/* ... and where it listens, as --listen gives it */
#define NBD_NOTE_SUFFIX ".nbd"
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
                                     s3c_die_with_parent, NULL, &sc->pid, -1,
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
 * A running sidecar (--sidecar-qmp) serves one QMP client at a time and
 * several commands at once: each holds the socket only for one step
 * (adding a target, committing it), nested steps on one connection.
 * Its own sidecar a command keeps connected from start to end.
 */
static bool session_begin(S3cSidecar *sc, GError **err)
{
    if (!sc->shared_qmp || sc->session_depth++) {
        return true;
    }
    sc->qmp = s3c_qmp_connect(sc->shared_qmp, "the sidecar", false,
                              SIDECAR_TURN_TIMEOUT_MS, err);
    return sc->qmp != NULL;
}

static void session_end(S3cSidecar *sc)
{
    if (sc->shared_qmp && sc->session_depth && !--sc->session_depth) {
        g_clear_pointer(&sc->qmp, s3c_qmp_free);
    }
}

/*
 * Notes, before it exists, what this command adds to a running sidecar
 * (@kind: job, export, node or object), so that whoever finds this
 * command dead removes it (clear_dead_commands)
 */
static void own(S3cSidecar *sc, const char *kind, const char *id)
{
    g_autofree char *line = NULL;

    if (!sc->owner_path || !id) {
        return;
    }
    line = g_strdup_printf("%s %s\n", kind, id);
    if (write(sc->owner_fd, line, strlen(line)) != (ssize_t)strlen(line)) {
        s3c_output_warning("cannot note %s %s in %s: %s; if this command is "
                           "killed, remove it from the sidecar by hand",
                           kind, id, sc->owner_path, g_strerror(errno));
    }
}

/* Runs @command, noting what it adds to the sidecar */
static bool run(S3cSidecar *sc, const char *command, json_object *args,
                GError **err)
{
    static const struct {
        const char *command, *kind, *id_key;
    } adds[] = {
        { "blockdev-add", "node", "node-name" },
        { "block-export-add", "export", "id" },
        { "object-add", "object", "id" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(adds); i++) {
        if (!strcmp(command, adds[i].command)) {
            own(sc, adds[i].kind, s3c_json_str(args, adds[i].id_key));
        }
    }
    return s3c_qmp_run(sc->qmp, command, args, err);
}

static bool run_job(S3cSidecar *sc, const char *command, json_object *args,
                    const char *id, GError **err)
{
    own(sc, "job", id);
    return s3c_job_run(sc->qmp, command, args, id, err);
}

/*
 * Hands @value to the sidecar as secret object @id, in @format (NULL:
 * raw), through a file only this user may read, removed as soon as the
 * sidecar has read it.
 */
static bool add_secret(S3cSidecar *sc, const char *id, const char *value,
                       const char *format, GError **err)
{
    g_autofree char *path = g_strdup_printf("%s/%s", sc->runtime_dir, id);
    bool ok;
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
    ok = run(sc, "object-add",
             s3c_json_obj("qom-type", json_object_new_string("secret"),
                          "id", json_object_new_string(id),
                          "file", json_object_new_string(path),
                          "format", json_object_new_string(format ? format
                                                           : "raw"),
                          NULL), err);
    unlink(path);
    return ok;
}

/* The NBD server's address: "unix:PATH" or "tcp:HOST:PORT" */
static json_object *nbd_address(S3cSidecar *sc, const char *listen,
                                GError **err)
{
    const char *colon;

    if (g_str_has_prefix(listen, "unix:") && listen[5]) {
        sc->nbd_socket = g_strdup(listen + 5);
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

static bool export_node_in(S3cSidecar *sc, const char *name,
                           const char *node, bool writable,
                           const char *bitmap, const char *iothread,
                           GError **err)
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
    if (iothread) {
        json_object_object_add(export, "iothread",
                               json_object_new_string(iothread));
    }
    return run(sc, "block-export-add", export, err);
}

static bool export_node(S3cSidecar *sc, const char *name, const char *node,
                        bool writable, const char *bitmap, GError **err)
{
    return export_node_in(sc, name, node, writable, bitmap, sc->iothread, err);
}

static bool unexport(S3cSidecar *sc, const char *name, bool hard,
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

/* The ID in line @line of an owner file if it notes a @kind, else NULL */
static const char *noted_id(const char *line, const char *kind)
{
    size_t len = strlen(kind);

    return !strncmp(line, kind, len) && line[len] == ' ' ? line + len + 1
                                                         : NULL;
}

/* Removes what a dead command noted in @note (its owner file's lines) */
static void clear_dead_command(S3cSidecar *sc, const char *note)
{
    g_auto(GStrv) lines = g_strsplit(note, "\n", -1);
    g_autoptr(GPtrArray) done = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) nodes = g_ptr_array_new();
    bool deleted = true;

    /* jobs first: they use the nodes; then what uses nodes, then nodes */
    for (size_t i = g_strv_length(lines); i-- > 0;) {
        const char *id = noted_id(lines[i], "job");

        if (id && run(sc, "job-cancel", s3c_json_obj(
                          "id", json_object_new_string(id),
                          "force", json_object_new_boolean(true), NULL),
                      NULL)) {
            s3c_job_wait(sc->qmp, id, "ending a killed command's job", NULL);
            g_ptr_array_add(done, g_strdup_printf("ended job %s", id));
        }
    }
    for (size_t i = g_strv_length(lines); i-- > 0;) {
        const char *export = noted_id(lines[i], "export");
        const char *object = noted_id(lines[i], "object");
        const char *node = noted_id(lines[i], "node");

        if (export && unexport(sc, export, true, NULL)) {
            g_ptr_array_add(done, g_strdup_printf("removed export %s",
                                                  export));
        } else if (object && run(sc, "object-del", s3c_json_obj(
                                     "id", json_object_new_string(object),
                                     NULL), NULL)) {
            g_ptr_array_add(done, g_strdup_printf("removed secret %s",
                                                  object));
        } else if (node) {
            g_ptr_array_add(nodes, (char *)node);
        }
    }
    /* a node in use by another fails, until its parents have gone */
    while (deleted) {
        deleted = false;
        for (guint i = 0; i < nodes->len; i++) {
            const char *node = g_ptr_array_index(nodes, i);

            if (run(sc, "blockdev-del", s3c_json_obj(
                        "node-name", json_object_new_string(node), NULL),
                    NULL)) {
                g_ptr_array_add(done, g_strdup_printf("removed node %s",
                                                      node));
                g_ptr_array_remove_index(nodes, i--);
                deleted = true;
            }
        }
    }
    s3c_output_cleaned("the sidecar", done);
}

/*
 * Each command using a running sidecar holds a lock on its owner file
 * while it lives: a file whose lock is free is a killed command's, and
 * what it notes goes, so that a killed backup neither keeps uploading
 * nor holds names that a later one needs.  Called in a session: one
 * client at a time, so two commands never clear the same file.
 */
static void clear_dead_commands(S3cSidecar *sc)
{
    g_autofree char *dir_path = g_path_get_dirname(sc->owner_path);
    g_autoptr(GDir) dir = g_dir_open(dir_path, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(dir_path, name, NULL);
        g_autofree char *note = NULL;
        struct stat st;
        int fd;

        if (name[0] == '.' || !strcmp(path, sc->owner_path)) {
            continue;
        }
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        /* still held, or already cleared and unlinked by another */
        if (flock(fd, LOCK_EX | LOCK_NB) < 0 || fstat(fd, &st) < 0 ||
            !st.st_nlink) {
            close(fd);
            continue;
        }
        if (g_file_get_contents(path, &note, NULL, NULL)) {
            clear_dead_command(sc, note);
        }
        unlink(path);
        close(fd);
    }
}

/*
 * Creates and locks this command's owner file next to @qmp_path: locked
 * under a name that cleaners skip, then named, so that none ever finds
 * it unlocked
 */
static bool own_file(S3cSidecar *sc, const char *qmp_path, GError **err)
{
    g_autofree char *dir = g_strconcat(qmp_path, OWNERS_SUFFIX, NULL);
    g_autofree char *hidden = g_strdup_printf("%s/.%d-XXXXXX", dir,
                                              (int)getpid());
    g_autofree char *path = NULL;
    int fd;

    if (g_mkdir_with_parents(dir, 0700) < 0 ||
        (fd = g_mkstemp_full(hidden, O_RDWR | O_APPEND | O_CLOEXEC,
                             0600)) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot write in %s, where commands using the sidecar "
                    "note what they add to it: %s", dir, g_strerror(errno));
        return false;
    }
    path = g_strdup_printf("%s/%s", dir, strrchr(hidden, '/') + 2);
    if (flock(fd, LOCK_EX) < 0 || rename(hidden, path) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot lock %s: %s", path, g_strerror(errno));
        close(fd);
        unlink(hidden);
        return false;
    }
    sc->owner_fd = fd;
    sc->owner_path = g_steal_pointer(&path);
    return true;
}

/*
 * The NBD server, at @given (--listen) or else a socket of the command's
 * own: a command's own sidecar starts it.  A running sidecar has one
 * (QEMU runs one), which the first command starts, by default next to
 * the QMP socket, and all share: where it listens is noted there too,
 * so that a later command, serve's --listen in particular, knows its
 * address instead of guessing it.
 */
static bool start_nbd_server(S3cSidecar *sc, const char *given,
                             GError **err)
{
    g_autofree char *note_path = NULL;
    g_autofree char *noted = NULL;
    g_autofree char *fallback = NULL;
    g_autoptr(GError) local = NULL;
    const char *listen = given;
    json_object *addr, *ret;

    if (sc->shared_qmp) {
        g_autofree char *dir = g_path_get_dirname(sc->shared_qmp);

        note_path = g_strconcat(sc->shared_qmp, NBD_NOTE_SUFFIX, NULL);
        fallback = g_strdup_printf("unix:%s/" SHARED_NBD_SOCKET, dir);
    } else {
        fallback = g_strdup_printf("unix:%s/nbd-%d.sock", sc->runtime_dir,
                                   (int)getpid());
    }
    if (!listen) {
        listen = fallback;
    }
    addr = nbd_address(sc, listen, err);
    if (!addr) {
        return false;
    }
    ret = s3c_qmp_execute(sc->qmp, "nbd-server-start",
                          s3c_json_obj("addr", addr, NULL), &local);
    json_object_put(ret);
    if (ret && note_path &&
        !g_file_set_contents(note_path, listen, -1, &local)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot note the sidecar's NBD address: %s",
                    local->message);
        return false;
    }
    if (ret) {
        return true;
    }
    if (!note_path || !strstr(local->message, "already running")) {
        g_propagate_prefixed_error(err, g_steal_pointer(&local),
                                   "the sidecar's NBD server at %s: ",
                                   listen);
        return false;
    }
    if (!g_file_get_contents(note_path, &noted, NULL, NULL)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "the sidecar at %s runs an NBD server that no s3chain "
                    "command started; stop it (nbd-server-stop), or give "
                    "the sidecar to s3chain alone", sc->shared_qmp);
        return false;
    }
    if (given && strcmp(given, noted)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "the sidecar's NBD server already listens at %s, for "
                    "the commands sharing it; give --listen %s, or another "
                    "sidecar", noted, noted);
        return false;
    }
    g_clear_pointer(&sc->nbd_socket, g_free);
    g_clear_pointer(&sc->nbd_host, g_free);
    g_clear_pointer(&sc->nbd_port, g_free);
    addr = nbd_address(sc, noted, err);
    json_object_put(addr);
    return addr != NULL;
}

static bool open_sidecar(S3cSidecar *sc, const char *qmp_path,
                         const char *listen, const S3cRepo *repo,
                         GError **err)
{
    json_object *ret;

    if (qmp_path) {
        if (!own_file(sc, qmp_path, err) || !session_begin(sc, err)) {
            return false;
        }
        clear_dead_commands(sc);
    } else if (!start_sidecar(sc, err)) {
        return false;
    }

    sc->secret_id = g_strdup_printf("s3chain-key-%d", (int)getpid());
    if (!add_secret(sc, sc->secret_id, repo->secret_access_key, NULL, err)) {
        g_clear_pointer(&sc->secret_id, g_free);
        return false;
    }
    if (repo->session_token) {
        sc->token_secret_id = g_strdup_printf("s3chain-token-%d",
                                              (int)getpid());
        if (!add_secret(sc, sc->token_secret_id, repo->session_token, NULL,
                        err)) {
            g_clear_pointer(&sc->token_secret_id, g_free);
            return false;
        }
    }
    if (repo->has_key) {
        g_autofree char *key = s3c_repo_key_base64(repo);

        sc->encryption_secret_id = g_strdup_printf("s3chain-encryption-%d",
                                                   (int)getpid());
        if (!add_secret(sc, sc->encryption_secret_id, key, "base64", err)) {
            g_clear_pointer(&sc->encryption_secret_id, g_free);
            return false;
        }
    }

    sc->ids = (S3cSecretIds) {
        .access_key = sc->secret_id,
        .token = sc->token_secret_id,
        .encryption_key = sc->encryption_secret_id,
    };

    if (!start_nbd_server(sc, listen, err)) {
        return false;
    }

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

bool s3c_sidecar_open(S3cSidecar *sc, const char *qmp_path,
                      const char *runtime_dir, const char *listen,
                      const S3cRepo *repo, GError **err)
{
    bool ok;

    memset(sc, 0, sizeof(*sc));
    sc->owner_fd = -1;
    sc->runtime_dir = g_strdup(runtime_dir);
    sc->shared_qmp = g_strdup(qmp_path);
    if (!qmp_path) {
        sc->own_qmp = g_strdup_printf("%s/qsd-%d.qmp", runtime_dir,
                                      (int)getpid());
    }
    if (g_mkdir_with_parents(runtime_dir, 0700) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot create the runtime directory %s: %s",
                    runtime_dir, g_strerror(errno));
        s3c_sidecar_close(sc);
        return false;
    }
    ok = open_sidecar(sc, qmp_path, listen, repo, err);
    session_end(sc);
    if (!ok) {
        /* what it added goes: the caller closes only what opened */
        s3c_sidecar_close(sc);
    }
    return ok;
}

static char *file_node(const S3cTarget *t)
{
    return g_strdup_printf("%s-file", t->export_name);
}

/*
 * Creates the s3chain image @key, empty (compressed, when
 * @compress_level is zstd's level for its writes), and opens it as node
 * @node with @extra options; returns the node's options (a reference) or
 * NULL
 */
static json_object *add_bucket_file(S3cSidecar *sc, const S3cRepo *repo,
                                    const char *key, const char *node,
                                    int compress_level, json_object *extra,
                                    GError **err)
{
    g_autofree char *job = g_strdup_printf("%s-create", node);
    json_object *file_opts = s3c_repo_location(repo, key, &sc->ids);
    json_object *create = s3c_json_obj(
        "driver", json_object_new_string("s3chain"),
        "location", json_object_get(file_opts),
        "size", json_object_new_int64(0), NULL);

    if (compress_level) {
        json_object_object_add(create, "compress",
                               json_object_new_string(S3CHAIN_COMPRESS_ZSTD));
        json_object_object_add(extra, "compress-level",
                               json_object_new_int(compress_level));
    }
    if (!run_job(sc, "blockdev-create", s3c_json_obj(
                         "job-id", json_object_new_string(job),
                         "options", create, NULL), job, err)) {
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

char *s3c_target_scratch_export(const S3cTarget *t)
{
    return g_strdup_printf("%s-scratch", t->export_name);
}

/*
 * The target of the VM's copy-before-write filter for @t: a scratch
 * s3chain image of the disk's size in RAM, so that a guest write waits
 * for a copy into RAM over a connection of its own, never behind the
 * backup job's writes or for the bucket.  The job reads the scratch
 * through its snapshot-access node and discards what it copied, which
 * frees it.  Only past @t->buffer_size does it spill to the bucket,
 * under the target's key with ".scratch" added, and its node's close
 * deletes what spilled.
 */
static bool add_scratch(S3cSidecar *sc, const S3cRepo *repo,
                        const S3cTarget *t, GError **err)
{
    g_autofree char *name = s3c_target_scratch_export(t);
    g_autofree char *key = g_strconcat(t->key, ".scratch", NULL);
    json_object *opts = s3c_repo_location(repo, key, &sc->ids);

    json_object_object_add(opts, "driver", json_object_new_string("s3chain"));
    json_object_object_add(opts, "node-name", json_object_new_string(name));
    json_object_object_add(opts, "scratch", json_object_new_boolean(true));
    json_object_object_add(opts, "buffer-size",
                           json_object_new_int64(t->buffer_size));
    json_object_object_add(opts, "discard", json_object_new_string("unmap"));
    return run(sc, "blockdev-add", opts, err) &&
           run(sc, "block_resize", s3c_json_obj(
                   "node-name", json_object_new_string(name),
                   "size", json_object_new_int64(t->size), NULL), err) &&
           /* in the main loop: the iothread is busy with the job's writes */
           export_node_in(sc, name, name, true, NULL, NULL, err);
}

static bool add_target(S3cSidecar *sc, const S3cRepo *repo, S3cTarget *t,
                       GError **err)
{
    g_autofree char *file = file_node(t);
    g_autofree char *job = g_strdup_printf("%s-create", t->export_name);
    json_object *qcow2;

    /*
     * qcow2 flushes its file for each new L2 table, and a flush of an
     * s3chain image is a commit; a backup image is worth nothing until
     * the backup ends, so it ignores flushes and commits once, when
     * commit_target() turns them back on
     */
    t->file_options = add_bucket_file(sc, repo, t->key, file,
                                      t->compress_level, s3c_json_obj(
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
    if (!run_job(sc, "blockdev-create", s3c_json_obj(
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

    return export_node(sc, t->export_name, t->export_name, true, NULL,
                       err) &&
           (!t->scratch || add_scratch(sc, repo, t, err));
}

static bool add_image(S3cSidecar *sc, const char *node, const char *path,
                      const char *format, GError **err)
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

static bool add_point(S3cSidecar *sc, const S3cRepo *repo, const char *key,
                      const char *node, GError **err)
{
    json_object *file = s3c_repo_location(repo, key, &sc->ids);

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
    return run_job(sc, "blockdev-create", s3c_json_obj(
                           "job-id", json_object_new_string(job),
                           "options", qcow2, NULL), job, err) &&
           run(sc, "blockdev-add", s3c_json_obj(
                   "node-name", json_object_new_string(node),
                   "driver", json_object_new_string("qcow2"),
                   "file", json_object_new_string(file),
                   "backing", json_object_new_string(backing), NULL), err);
}

static bool add_overlay(S3cSidecar *sc, const char *node,
                        const char *backing, const char *path, uint64_t size,
                        GError **err)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);
    g_autofree char *job = g_strdup_printf("%s-create", node);

    return run_job(sc, "blockdev-create", s3c_json_obj(
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

static bool add_bucket_overlay(S3cSidecar *sc, const S3cRepo *repo,
                               const char *node, const char *backing,
                               const char *key, const char *backing_name,
                               uint64_t size, GError **err)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);
    json_object *file_opts = add_bucket_file(sc, repo, key, file, 0,
                                             json_object_new_object(), err);

    json_object_put(file_opts);
    return file_opts &&
           add_overlay_qcow2(sc, node, file, backing, backing_name, size,
                             err);
}

static void del_node(S3cSidecar *sc, const char *node)
{
    run(sc, "blockdev-del", s3c_json_obj(
            "node-name", json_object_new_string(node), NULL), NULL);
}

static void del_overlay(S3cSidecar *sc, const char *node)
{
    g_autofree char *file = g_strdup_printf("%s-file", node);

    del_node(sc, node);
    del_node(sc, file);
}

static void drop_scratch(S3cSidecar *sc, const S3cTarget *t)
{
    g_autofree char *name = s3c_target_scratch_export(t);

    if (t->scratch) {
        unexport(sc, name, true, NULL);
        del_node(sc, name);
    }
}

static void delete_nodes(S3cSidecar *sc, const S3cTarget *t)
{
    g_autofree char *file = file_node(t);

    drop_scratch(sc, t);
    del_node(sc, t->export_name);
    del_node(sc, file);
}

static bool commit_target(S3cSidecar *sc, const S3cTarget *t, GError **err)
{
    g_autofree char *file = file_node(t);
    json_object *opts;
    bool ok;

    if (!unexport(sc, t->export_name, false, err)) {
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

static void drop_target(S3cSidecar *sc, const S3cTarget *t)
{
    unexport(sc, t->export_name, true, NULL);
    delete_nodes(sc, t);
}

/*
 * Each step on a running sidecar is one turn at its QMP socket, however
 * many commands it takes
 */

bool s3c_sidecar_add_target(S3cSidecar *sc, const S3cRepo *repo,
                            S3cTarget *t, GError **err)
{
    bool ok = session_begin(sc, err) && add_target(sc, repo, t, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_export(S3cSidecar *sc, const char *name, const char *node,
                        bool writable, const char *bitmap, GError **err)
{
    bool ok = session_begin(sc, err) &&
              export_node(sc, name, node, writable, bitmap, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_unexport(S3cSidecar *sc, const char *name, bool hard,
                          GError **err)
{
    bool ok = session_begin(sc, err) && unexport(sc, name, hard, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_add_image(S3cSidecar *sc, const char *node,
                           const char *path, const char *format,
                           GError **err)
{
    bool ok = session_begin(sc, err) &&
              add_image(sc, node, path, format, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_add_point(S3cSidecar *sc, const S3cRepo *repo,
                           const char *key, const char *node, GError **err)
{
    bool ok = session_begin(sc, err) && add_point(sc, repo, key, node, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_add_overlay(S3cSidecar *sc, const char *node,
                             const char *backing, const char *path,
                             uint64_t size, GError **err)
{
    bool ok = session_begin(sc, err) &&
              add_overlay(sc, node, backing, path, size, err);

    session_end(sc);
    return ok;
}

bool s3c_sidecar_add_bucket_overlay(S3cSidecar *sc, const S3cRepo *repo,
                                    const char *node, const char *backing,
                                    const char *key, const char *backing_name,
                                    uint64_t size, GError **err)
{
    bool ok = session_begin(sc, err) &&
              add_bucket_overlay(sc, repo, node, backing, key, backing_name,
                                 size, err);

    session_end(sc);
    return ok;
}

void s3c_sidecar_del_node(S3cSidecar *sc, const char *node)
{
    if (session_begin(sc, NULL)) {
        del_node(sc, node);
    }
    session_end(sc);
}

void s3c_sidecar_del_overlay(S3cSidecar *sc, const char *node)
{
    if (session_begin(sc, NULL)) {
        del_overlay(sc, node);
    }
    session_end(sc);
}

bool s3c_sidecar_commit_target(S3cSidecar *sc, const S3cTarget *t,
                               GError **err)
{
    bool ok = session_begin(sc, err) && commit_target(sc, t, err);

    session_end(sc);
    return ok;
}

void s3c_sidecar_drop_target(S3cSidecar *sc, const S3cTarget *t)
{
    if (session_begin(sc, NULL)) {
        drop_target(sc, t);
    }
    session_end(sc);
}

bool s3c_sidecar_wait(S3cSidecar *sc, int timeout_ms, GError **err)
{
    json_object *ret = NULL;

    if (!sc->shared_qmp) {
        json_object_put(s3c_qmp_next_event(sc->qmp, timeout_ms));
    } else {
        poll(NULL, 0, timeout_ms);
    }
    if (session_begin(sc, err)) {
        ret = s3c_qmp_execute(sc->qmp, "query-block-exports", NULL, err);
    }
    session_end(sc);
    json_object_put(ret);
    return ret != NULL;
}

void s3c_sidecar_close(S3cSidecar *sc)
{
    /* a running sidecar keeps its NBD server for the other commands */
    if ((sc->secret_id || sc->token_secret_id || sc->encryption_secret_id ||
         sc->pid) &&
        session_begin(sc, NULL) && sc->qmp) {
        const char *secrets[] = {
            sc->secret_id, sc->token_secret_id, sc->encryption_secret_id,
        };

        for (size_t i = 0; i < G_N_ELEMENTS(secrets); i++) {
            if (secrets[i]) {
                run(sc, "object-del", s3c_json_obj(
                        "id", json_object_new_string(secrets[i]), NULL),
                    NULL);
            }
        }
        if (sc->pid) {
            run(sc, "quit", NULL, NULL);
        }
    }
    session_end(sc);
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
        if (sc->nbd_socket) {
            unlink(sc->nbd_socket);
        }
    }
    if (sc->owner_path) {
        unlink(sc->owner_path);
        close(sc->owner_fd);
    }
    s3c_qmp_free(sc->qmp);
    g_free(sc->runtime_dir);
    g_free(sc->own_qmp);
    g_free(sc->shared_qmp);
    g_free(sc->owner_path);
    g_free(sc->secret_id);
    g_free(sc->token_secret_id);
    g_free(sc->encryption_secret_id);
    g_free(sc->nbd_socket);
    g_free(sc->nbd_host);
    g_free(sc->nbd_port);
    g_free(sc->iothread);
    memset(sc, 0, sizeof(*sc));
}
