/*
 * qemu-img.c: runs qemu-img on the bucket's images, secrets through pipes
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SECRET_ID "s3chain-key"
#define TOKEN_SECRET_ID "s3chain-token"
#define ENCRYPTION_SECRET_ID "s3chain-encryption"

static const S3cSecretIds secret_ids = {
    .access_key = SECRET_ID,
    .token = TOKEN_SECRET_ID,
    .encryption_key = ENCRYPTION_SECRET_ID,
};

/* The options of image @key, a qcow2 on s3chain */
static json_object *image_options(const S3cRepo *repo, const char *key)
{
    json_object *opts = s3c_json_obj(
        "driver", json_object_new_string("qcow2"),
        "file", s3c_json_obj("driver", json_object_new_string("s3chain"),
                             NULL), NULL);
    json_object *file, *loc;

    json_object_object_get_ex(opts, "file", &file);
    loc = s3c_repo_location(repo, key, &secret_ids);
    json_object_object_foreach(loc, k, v) {
        json_object_object_add(file, k, json_object_get(v));
    }
    json_object_put(loc);
    return opts;
}

/* "json:" and @opts, which it drops */
static char *json_filename(json_object *opts)
{
    char *name = g_strconcat("json:", json_object_to_json_string_ext(
                                 opts, JSON_C_TO_STRING_PLAIN |
                                 JSON_C_TO_STRING_NOSLASHESCAPE), NULL);

    json_object_put(opts);
    return name;
}

char *s3c_qemu_img_filename(const S3cRepo *repo, const char *key,
                            bool alone)
{
    json_object *opts = image_options(repo, key);

    if (alone) {
        json_object_object_add(opts, "backing", NULL);
    }
    return json_filename(opts);
}

char *s3c_qemu_img_commit_filename(const S3cRepo *repo, const char *top)
{
    json_object *opts = image_options(repo, top);

    /*
     * Writable at once, for an s3chain node can't become writable; its
     * other options come from @top's header, as when it is read
     */
    json_object_object_add(opts, "backing", s3c_json_obj(
                               "read-only", json_object_new_boolean(false),
                               NULL));
    return json_filename(opts);
}

bool s3c_qemu_img_backing_name(const S3cRepo *repo, const char *key,
                               char **name, GError **err)
{
    g_autofree char *filename = s3c_qemu_img_filename(repo, key, true);
    const char *info[] = { "info", "--output=json", filename, NULL };
    g_autoptr(GString) out = g_string_new(NULL);
    json_object *doc;

    if (!s3c_qemu_img(repo, info, NULL, NULL, out, err)) {
        return false;
    }
    doc = json_tokener_parse(out->str);
    *name = g_strdup(s3c_json_str(doc, "backing-filename"));
    json_object_put(doc);
    return true;
}

/*
 * The backing images keep the options that their child's header names
 * them with; only their plans are added, at "backing.file", under
 * "backing.backing.file" and so on.
 */
char *s3c_qemu_img_planned_filename(const S3cRepo *repo, const char *key,
                                    GPtrArray *plans)
{
    json_object *opts = image_options(repo, key);
    json_object *level = opts, *file;

    for (guint depth = 0; depth < plans->len; depth++) {
        if (depth) {
            json_object *backing = s3c_json_obj(
                "file", json_object_new_object(), NULL);

            json_object_object_add(level, "backing", backing);
            level = backing;
        }
        json_object_object_get_ex(level, "file", &file);
        json_object_object_add(file, "x-read-plan", json_object_new_string(
                                   g_ptr_array_index(plans, depth)));
    }
    return json_filename(opts);
}

/*
 * A pipe holding @value whose read end the child takes: the secret never
 * touches a disk, nor the child's argv
 */
static int secret_pipe(const char *value, GError **err)
{
    int fds[2];
    size_t len = strlen(value);

    if (!g_unix_open_pipe(fds, FD_CLOEXEC, NULL)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL, "pipe: %s",
                    g_strerror(errno));
        return -1;
    }
    if (write(fds[1], value, len) != (ssize_t)len) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "cannot hand qemu-img the secret: %s", g_strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    close(fds[1]);
    return fds[0];
}

/* The last figure of "    (12.34/100%)\r" in @text */
static bool last_percent(const char *text, double *percent)
{
    const char *end = g_strrstr(text, "/100%)");
    const char *start = end;

    while (start && start > text && start[-1] != '(') {
        start--;
    }
    if (!end || start == text) {
        return false;
    }
    *percent = g_ascii_strtod(start, NULL);
    return true;
}

int s3c_driver_exit_code(const char *text, int otherwise, const char **mark)
{
    static const struct {
        const char *mark;
        int code;
    } marks[] = {
        { S3CHAIN_DAMAGED, S3C_EXIT_DAMAGED },
        { S3CHAIN_KEY_REFUSED, S3C_EXIT_KEY },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(marks); i++) {
        const char *at = strstr(text, marks[i].mark);

        if (at) {
            if (mark) {
                *mark = at;
            }
            return marks[i].code;
        }
    }
    return otherwise;
}

/*
 * The line that says why qemu-img failed: the driver's report of damage
 * or of a key it refused (from its mark on), else its first report,
 * which names the object and the cause, rather than the block layer's
 * last line ("Could not read qcow2 header: Input/output error").  *@code
 * is the exit code it means.
 */
static char *failure_line(GString *text, int *code)
{
    g_auto(GStrv) lines = g_strsplit(g_strstrip(text->str), "\n", -1);
    guint n = g_strv_length(lines);
    const char *line = n ? lines[n - 1] : "";

    *code = S3C_EXIT_TRANSIENT;
    for (guint i = 0; i < n; i++) {
        const char *mark;

        *code = s3c_driver_exit_code(lines[i], S3C_EXIT_TRANSIENT, &mark);
        if (*code != S3C_EXIT_TRANSIENT) {
            return g_strdup(mark);
        }
    }
    for (guint i = 0; i < n; i++) {
        if (g_str_has_prefix(lines[i], "qemu-img: s3chain: ")) {
            line = lines[i];
            break;
        }
    }
    if (g_str_has_prefix(line, "qemu-img: ")) {
        line += strlen("qemu-img: ");
    }
    return g_strdup(*line ? line : "qemu-img failed");
}

bool s3c_qemu_img(const S3cRepo *repo, const char *const *args,
                  S3cPercentFn on_percent, void *opaque, GString *output,
                  GError **err)
{
    const char *program = g_getenv("S3CHAIN_QEMU_IMG");
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_autoptr(GString) out = g_string_new(NULL);
    g_autoptr(GString) errors = g_string_new(NULL);
    g_autoptr(GError) spawn_err = NULL;
    g_auto(GStrv) envp = s3c_child_environ();
    g_autofree char *key_base64 = repo && repo->has_key ?
                                  s3c_repo_key_base64(repo) : NULL;
    /* each secret the repository has, its object read from fd 3 on */
    const struct {
        const char *value;
        const char *object;
    } secrets[] = {
        { repo ? repo->secret_access_key : NULL,
          "secret,id=" SECRET_ID ",file=/dev/fd/%d" },
        { repo ? repo->session_token : NULL,
          "secret,id=" TOKEN_SECRET_ID ",file=/dev/fd/%d" },
        { key_base64,
          "secret,id=" ENCRYPTION_SECRET_ID ",file=/dev/fd/%d,format=base64" },
    };
    g_autoptr(GPtrArray) objects = g_ptr_array_new_with_free_func(g_free);
    int source_fds[G_N_ELEMENTS(secrets)];
    int target_fds[G_N_ELEMENTS(secrets)];
    int nfds = 0, out_fd = -1, err_fd = -1, status = 0;
    bool killed = false;
    GPid pid;

    program = program && *program ? program : "qemu-img";
    g_ptr_array_add(argv, (char *)program);
    g_ptr_array_add(argv, (char *)args[0]);
    for (size_t i = 0; i < G_N_ELEMENTS(secrets); i++) {
        if (!secrets[i].value) {
            continue;
        }
        source_fds[nfds] = secret_pipe(secrets[i].value, err);
        if (source_fds[nfds] < 0) {
            for (int j = 0; j < nfds; j++) {
                close(source_fds[j]);
            }
            return false;
        }
        target_fds[nfds] = 3 + nfds;
        g_ptr_array_add(objects, g_strdup_printf(secrets[i].object,
                                                 target_fds[nfds]));
        g_ptr_array_add(argv, "--object");
        g_ptr_array_add(argv, g_ptr_array_index(objects, objects->len - 1));
        nfds++;
    }
    for (int i = 1; args[i]; i++) {
        g_ptr_array_add(argv, (char *)args[i]);
    }
    g_ptr_array_add(argv, NULL);

    if (!g_spawn_async_with_pipes_and_fds(
            NULL, (const char *const *)argv->pdata,
            (const char *const *)envp,
            G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
            s3c_die_with_parent, NULL,
            -1, -1, -1, source_fds, target_fds, nfds, &pid, NULL, &out_fd,
            &err_fd, &spawn_err)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot run %s: %s; set S3CHAIN_QEMU_IMG to the "
                    "qemu-img of s3chain's build", program,
                    spawn_err->message);
        for (int i = 0; i < nfds; i++) {
            close(source_fds[i]);
        }
        return false;
    }
    for (int i = 0; i < nfds; i++) {
        close(source_fds[i]);
    }

    while (out_fd >= 0 || err_fd >= 0) {
        struct pollfd pfd[2] = {
            { .fd = out_fd, .events = POLLIN },
            { .fd = err_fd, .events = POLLIN },
        };
        char buf[4096];

        if (s3c_interrupted && !killed) {
            kill(pid, SIGTERM);
            killed = true;
        }
        if (poll(pfd, 2, 200) <= 0) {
            continue;
        }
        for (int i = 0; i < 2; i++) {
            int *fd = i ? &err_fd : &out_fd;
            ssize_t n;

            if (*fd < 0 || !pfd[i].revents) {
                continue;
            }
            n = read(*fd, buf, sizeof(buf) - 1);
            if (n <= 0) {
                close(*fd);
                *fd = -1;
                continue;
            }
            buf[n] = '\0';
            g_string_append_len(i ? errors : out, buf, n);
            if (!i && on_percent) {
                double percent;

                if (last_percent(buf, &percent)) {
                    on_percent(percent, opaque);
                }
            }
        }
    }
    waitpid(pid, &status, 0);
    if (output) {
        g_string_append_len(output, out->str, out->len);
    }
    if (killed) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                    "interrupted; nothing is complete");
        return false;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        int code;
        g_autofree char *why = failure_line(errors->len ? errors : out,
                                            &code);

        g_set_error(err, S3C_ERROR,
                    code, "%s",
                    why);
        return false;
    }
    return true;
}
