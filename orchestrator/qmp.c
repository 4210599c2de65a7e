/*
 * qmp.c: QMP over a unix socket, for the VM, the sidecar and guest agents
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* query-named-block-nodes of a VM with a thousand nodes fits many times */
#define QMP_LINE_MAX (64 * 1024 * 1024)

typedef struct UnixQmp {
    S3cQmp base;
    int fd;
    GString *inbuf;
    GQueue events;
    int64_t last_id;            /* of the last command sent */
    bool agent;
} UnixQmp;

static int64_t now_ms(void)
{
    return g_get_monotonic_time() / 1000;
}

/* Reads one line's JSON; NULL on timeout or error, with @err set */
static json_object *read_message(UnixQmp *q, int timeout_ms, GError **err)
{
    int64_t deadline = now_ms() + timeout_ms;

    for (;;) {
        char *nl = memchr(q->inbuf->str, '\n', q->inbuf->len);

        if (nl) {
            size_t len = nl - q->inbuf->str + 1;
            g_autofree char *line = g_strndup(q->inbuf->str, len);
            json_object *msg;

            g_string_erase(q->inbuf, 0, len);
            msg = json_tokener_parse(line);
            if (msg) {
                return msg;
            }
            continue;
        }

        int left = deadline - now_ms();
        struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
        char buf[65536];
        ssize_t n;

        if (left <= 0) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "%s did not answer over QMP within %d s",
                        q->base.peer, timeout_ms / 1000);
            return NULL;
        }
        if (poll(&pfd, 1, MIN(left, 200)) < 0 && errno != EINTR) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "polling %s's QMP socket: %s", q->base.peer,
                        g_strerror(errno));
            return NULL;
        }
        if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            continue;
        }
        n = read(q->fd, buf, sizeof(buf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            q->base.closed = true;
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "%s closed its QMP connection", q->base.peer);
            return NULL;
        }
        g_string_append_len(q->inbuf, buf, n);
        if (q->inbuf->len > QMP_LINE_MAX) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                        "%s sent a QMP message of more than %d MiB",
                        q->base.peer, QMP_LINE_MAX >> 20);
            return NULL;
        }
    }
}

static bool send_message(UnixQmp *q, json_object *msg, GError **err)
{
    const char *text = json_object_to_json_string_ext(msg,
                                                      JSON_C_TO_STRING_PLAIN);
    g_autofree char *line = g_strconcat(text, "\n", NULL);
    size_t len = strlen(line), done = 0;

    while (done < len) {
        ssize_t n = send(q->fd, line + done, len - done, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "writing to %s's QMP socket: %s", q->base.peer,
                        g_strerror(errno));
            return false;
        }
        done += n;
    }
    return true;
}

static json_object *unix_execute(S3cQmp *qmp, const char *command,
                                 json_object *args, int timeout_ms,
                                 GError **err)
{
    UnixQmp *q = (UnixQmp *)qmp;
    int64_t id = ++q->last_id;
    json_object *msg = s3c_json_obj("execute", json_object_new_string(command),
                                    "id", json_object_new_int64(id), NULL);
    int64_t deadline = now_ms() + timeout_ms;
    bool sent;

    if (args) {
        json_object_object_add(msg, "arguments", args);
    }
    sent = send_message(q, msg, err);
    json_object_put(msg);
    if (!sent) {
        return NULL;
    }

    for (;;) {
        json_object *reply = read_message(q, MAX(deadline - now_ms(), 1),
                                          err);
        json_object *value, *error;

        if (!reply) {
            g_prefix_error(err, "%s: ", command);
            return NULL;
        }
        if (json_object_object_get_ex(reply, "event", NULL)) {
            g_queue_push_tail(&q->events, reply);
            continue;
        }
        if (s3c_json_int(reply, "id") != id) {
            json_object_put(reply);     /* a late answer to a timed out one */
            continue;
        }
        if (json_object_object_get_ex(reply, "error", &error)) {
            const char *desc = s3c_json_str(error, "desc");

            desc = desc ? desc : "failed, unsaid why";
            g_set_error(err, S3C_ERROR,
                        s3c_driver_exit_code(desc, S3C_EXIT_TRANSIENT, NULL),
                        "%s: %s: %s", qmp->peer, command, desc);
            json_object_put(reply);
            return NULL;
        }
        value = json_object_object_get_ex(reply, "return", &value) ?
                json_object_get(value) : json_object_new_object();
        json_object_put(reply);
        return value;
    }
}

static json_object *unix_next_event(S3cQmp *qmp, int timeout_ms)
{
    UnixQmp *q = (UnixQmp *)qmp;
    json_object *msg;

    if (!g_queue_is_empty(&q->events)) {
        return g_queue_pop_head(&q->events);
    }
    msg = read_message(q, timeout_ms, NULL);
    while (msg && !json_object_object_get_ex(msg, "event", NULL)) {
        json_object_put(msg);
        msg = read_message(q, 1, NULL);
    }
    return msg;
}

static void put_event(gpointer event)
{
    json_object_put(event);
}

static void unix_free(S3cQmp *qmp)
{
    UnixQmp *q = (UnixQmp *)qmp;

    close(q->fd);
    g_string_free(q->inbuf, true);
    g_queue_clear_full(&q->events, put_event);
}

static const S3cQmpOps unix_qmp_ops = {
    .execute = unix_execute,
    .next_event = unix_next_event,
    .free = unix_free,
};

/* Agents answer guest-sync with its id; what came before is stale */
static bool agent_sync(UnixQmp *q, int timeout_ms, GError **err)
{
    int64_t token = g_random_int_range(1, G_MAXINT32);
    json_object *msg = s3c_json_obj(
        "execute", json_object_new_string("guest-sync"),
        "arguments", s3c_json_obj("id", json_object_new_int64(token), NULL),
        NULL);
    int64_t deadline = now_ms() + timeout_ms;
    bool sent = send_message(q, msg, err);

    json_object_put(msg);
    while (sent) {
        json_object *reply = read_message(q, MAX(deadline - now_ms(), 1),
                                          err);
        bool synced;

        if (!reply) {
            return false;
        }
        synced = s3c_json_int(reply, "return") == token;
        json_object_put(reply);
        if (synced) {
            return true;
        }
    }
    return false;
}

S3cQmp *s3c_qmp_connect(const char *path, const char *peer, bool agent,
                        int timeout_ms, GError **err)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    S3cQmp *qmp;
    int fd;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "%s's QMP socket path is too long: %s", peer, path);
        return NULL;
    }
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_VM_UNREACHABLE,
                    "cannot connect to %s's QMP socket %s: %s; check that "
                    "it runs and that the path is right", peer, path,
                    g_strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    qmp = s3c_qmp_open_fd(fd, peer, agent, timeout_ms, err);
    if (!qmp) {
        g_prefix_error(err, "%s: ", path);
    }
    return qmp;
}

S3cQmp *s3c_qmp_open_fd(int fd, const char *peer, bool agent,
                        int timeout_ms, GError **err)
{
    g_autoptr(S3cQmp) qmp = NULL;
    UnixQmp *q = g_new0(UnixQmp, 1);
    json_object *greeting;

    q->base.ops = &unix_qmp_ops;
    q->base.peer = g_strdup(peer);
    q->inbuf = g_string_new(NULL);
    q->agent = agent;
    q->fd = fd;
    g_queue_init(&q->events);
    qmp = &q->base;

    if (agent) {
        return agent_sync(q, timeout_ms, err) ? g_steal_pointer(&qmp) : NULL;
    }
    greeting = read_message(q, timeout_ms, err);
    if (!greeting || !json_object_object_get_ex(greeting, "QMP", NULL)) {
        json_object_put(greeting);
        g_clear_error(err);
        g_set_error(err, S3C_ERROR, S3C_EXIT_VM_UNREACHABLE,
                    "no QMP greeting from %s: is another client connected "
                    "to its socket, or is it no QMP socket?", peer);
        return NULL;
    }
    json_object_put(greeting);
    greeting = s3c_qmp_execute_timeout(qmp, "qmp_capabilities", NULL,
                                       timeout_ms, err);
    if (!greeting) {
        return NULL;
    }
    json_object_put(greeting);
    return g_steal_pointer(&qmp);
}

json_object *s3c_qmp_execute_timeout(S3cQmp *qmp, const char *command,
                                     json_object *args, int timeout_ms,
                                     GError **err)
{
    return qmp->ops->execute(qmp, command, args, timeout_ms, err);
}

/*
 * Closing an image in the bucket waits for its uploads, which retry for
 * a while when the bucket fails: be patient, but not forever.
 */
#define QMP_TIMEOUT_MS (10 * 60 * 1000)

json_object *s3c_qmp_execute(S3cQmp *qmp, const char *command,
                             json_object *args, GError **err)
{
    return s3c_qmp_execute_timeout(qmp, command, args, QMP_TIMEOUT_MS, err);
}

json_object *s3c_qmp_execute_list(S3cQmp *qmp, const char *command,
                                  json_object *args, GError **err)
{
    json_object *ret = s3c_qmp_execute(qmp, command, args, err);

    if (ret && !json_object_is_type(ret, json_type_array)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s: %s returned no list: is it QEMU?", qmp->peer,
                    command);
        g_clear_pointer(&ret, json_object_put);
    }
    return ret;
}

bool s3c_qmp_run(S3cQmp *qmp, const char *command, json_object *args,
                 GError **err)
{
    json_object *ret = s3c_qmp_execute(qmp, command, args, err);

    json_object_put(ret);
    return ret != NULL;
}

json_object *s3c_qmp_next_event(S3cQmp *qmp, int timeout_ms)
{
    return qmp->ops->next_event(qmp, timeout_ms);
}

void s3c_qmp_free(S3cQmp *qmp)
{
    if (qmp) {
        qmp->ops->free(qmp);
        g_free(qmp->peer);
        g_free(qmp);
    }
}
