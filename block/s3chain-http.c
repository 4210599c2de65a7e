/*
 * s3chain: signed requests to the bucket over libcurl's multi interface,
 * driven from the node's AioContext, with retries
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/lockable.h"
#include "qemu/units.h"
#include "s3chain.h"
#include "trace.h"

/* SHA-256 of an empty payload */
#define EMPTY_SHA256 \
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/*
 * Uploads are not hashed for the signature: Content-MD5, which the server
 * checks, protects their bytes, and SHA-256 over every chunk would cost
 * more CPU than the upload itself.
 */
#define UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

#define ERROR_BODY_MAX (4 * KiB)
/* curl's default of 16 KiB costs a recv() and a poll() per 8 KiB */
#define RECEIVE_BUFFER_SIZE (512L * KiB)

typedef struct S3chainSocket {
    int fd;
    S3chainConn *conn;
} S3chainSocket;

struct S3chainConn {
    S3chainConnSettings settings;
    char *host;                 /* host[:port], as sent in Host */
    AioContext *ctx;
    CURLM *multi;
    QEMUTimer timer;
    GHashTable *sockets;        /* fd -> S3chainSocket */
    GSList *idle_handles;
    QemuMutex mutex;
    int64_t active;             /* requests holding a slot */
    QTAILQ_HEAD(, S3chainRequest) queue;
};

static void conn_multi_do(void *opaque);

const S3chainConnSettings *s3chain_conn_settings(S3chainConn *conn)
{
    return &conn->settings;
}

static void drop_socket(gpointer value)
{
    S3chainSocket *socket = value;

    aio_set_fd_handler(socket->conn->ctx, socket->fd,
                       NULL, NULL, NULL, NULL, NULL);
    g_free(socket);
}

/*
 * curl's socket callback.  Its state comes through CURLMOPT_SOCKETDATA:
 * CURLINFO_PRIVATE is NULL for the easy handles curl makes on its own.
 */
static int conn_socket_cb(CURL *easy, curl_socket_t fd, int action,
                          void *userp, void *socketp)
{
    S3chainConn *conn = userp;
    S3chainSocket *socket = g_hash_table_lookup(conn->sockets,
                                                GINT_TO_POINTER(fd));
    IOHandler *on_read = NULL, *on_write = NULL;

    trace_s3chain_socket(fd, action);
    if (action == CURL_POLL_REMOVE) {
        g_hash_table_remove(conn->sockets, GINT_TO_POINTER(fd));
        return 0;
    }
    if (!socket) {
        socket = g_new0(S3chainSocket, 1);
        socket->fd = fd;
        socket->conn = conn;
        g_hash_table_insert(conn->sockets, GINT_TO_POINTER(fd), socket);
    }
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) {
        on_read = conn_multi_do;
    }
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) {
        on_write = conn_multi_do;
    }
    aio_set_fd_handler(conn->ctx, fd, on_read, on_write, NULL, NULL, socket);
    return 0;
}

static int conn_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    S3chainConn *conn = userp;

    if (timeout_ms < 0) {
        timer_del(&conn->timer);
    } else {
        timer_mod(&conn->timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  timeout_ms);
    }
    return 0;
}

static const char *hint_for(S3chainOutcome outcome, const char *code)
{
    if (code && (!strcmp(code, "SignatureDoesNotMatch") ||
                 !strcmp(code, "InvalidAccessKeyId"))) {
        return "check the access key id and its secret";
    }
    if (code && !strcmp(code, "NoSuchBucket")) {
        return "check the bucket name and the endpoint";
    }
    switch (outcome) {
    case S3CHAIN_OUTCOME_DENIED:
        return "check the credentials and the bucket's policy";
    case S3CHAIN_OUTCOME_NOT_FOUND:
        return "check the bucket and key";
    case S3CHAIN_OUTCOME_PRECONDITION:
        return "a precondition failed: the object changed, or exists";
    case S3CHAIN_OUTCOME_UNSUPPORTED:
        return "the server does not implement this request";
    default:
        return "see the server's logs";
    }
}

static int errno_for(S3chainOutcome outcome)
{
    switch (outcome) {
    case S3CHAIN_OUTCOME_DENIED:
        return -EACCES;
    case S3CHAIN_OUTCOME_NOT_FOUND:
        return -ENOENT;
    case S3CHAIN_OUTCOME_PRECONDITION:
        return -ESTALE;
    case S3CHAIN_OUTCOME_RANGE:
        return -EINVAL;
    case S3CHAIN_OUTCOME_UNSUPPORTED:
        return -ENOTSUP;
    default:
        return -EIO;
    }
}

/*
 * Decides how @req ended and says why in req->error_text; returns true if
 * it should be tried again.
 */
static bool classify_locked(S3chainRequest *req, CURLcode result)
{
    S3chainOutcome outcome;
    const char *curl_text;

    g_clear_pointer(&req->error_code, g_free);
    g_clear_pointer(&req->error_text, g_free);

    if (result == CURLE_OK && req->status >= 200 && req->status < 300) {
        if (req->qiov && req->received != req->range_bytes &&
            !(req->may_end_early && req->object_size &&
              req->received == MIN(req->range_bytes,
                                   req->object_size - req->range_offset))) {
            req->error_text = g_strdup_printf(
                "short read: %zu of %" PRIu64 " bytes", req->received,
                req->range_bytes);
            req->ret = -EIO;
            return true;
        }
        req->ret = 0;
        return false;
    }

    if (result != CURLE_OK) {
        curl_text = req->curl_error[0] ? req->curl_error
                                       : curl_easy_strerror(result);
        req->ret = -EIO;
        if (s3chain_curl_error_is_tls(result)) {
            req->error_text = g_strdup_printf(
                "TLS failure: %s; check the endpoint's scheme, cafile and "
                "sslverify", curl_text);
            return false;
        }
        req->error_text = g_strdup(curl_text);
        return s3chain_curl_error_is_transient(result);
    }

    req->error_code = s3chain_error_code(req->error_body
                                         ? req->error_body->str : NULL);
    outcome = s3chain_outcome_of(req->status, req->error_code);
    req->ret = errno_for(outcome);
    req->error_text = g_strdup_printf(
        "HTTP %ld%s%s: %s", req->status,
        req->error_code ? " " : "", req->error_code ? req->error_code : "",
        hint_for(outcome, req->error_code));
    return outcome == S3CHAIN_OUTCOME_TRANSIENT;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *opaque)
{
    S3chainRequest *req = opaque;
    size_t len = size * nmemb;
    long status = 0;

    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300) {
        if (!req->error_body) {
            req->error_body = g_string_new(NULL);
        }
        if (req->error_body->len < ERROR_BODY_MAX) {
            g_string_append_len(req->error_body, data,
                                MIN(len, ERROR_BODY_MAX -
                                         req->error_body->len));
        }
        return len;
    }
    if (!req->qiov) {
        return len;
    }
    if (req->received + len > req->range_bytes) {
        /* The server ignored our Range; fail rather than overflow */
        return 0;
    }
    qemu_iovec_from_buf(req->qiov, req->qiov_offset + req->received, data,
                        len);
    req->received += len;
    return len;
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *opaque)
{
    S3chainRequest *req = opaque;
    size_t len = size * nmemb;
    g_autofree char *line = g_strstrip(g_strndup(data, len));
    char *value = strchr(line, ':');

    if (g_str_has_prefix(line, "HTTP/")) {
        /* a new response, after a 100 Continue or a redirect */
        g_clear_pointer(&req->etag, g_free);
        g_clear_pointer(&req->content_type_received, g_free);
        g_clear_pointer(&req->block_sums_received, g_free);
        req->object_size = 0;
        return len;
    }
    if (!value) {
        return len;
    }
    *value++ = '\0';
    value = g_strstrip(value);
    if (!g_ascii_strcasecmp(line, "ETag")) {
        g_free(req->etag);
        req->etag = g_strdup(value);
    } else if (!g_ascii_strcasecmp(line, "Content-Type")) {
        g_free(req->content_type_received);
        req->content_type_received = g_strdup(value);
    } else if (!g_ascii_strcasecmp(line, S3CHAIN_BLOCK_SUMS_META)) {
        g_free(req->block_sums_received);
        req->block_sums_received = g_strdup(value);
    } else if (!g_ascii_strcasecmp(line, "Content-Range")) {
        const char *slash = strrchr(value, '/');

        if (slash && slash[1] != '*') {
            req->object_size = g_ascii_strtoull(slash + 1, NULL, 10);
        }
    } else if (!g_ascii_strcasecmp(line, "Content-Length") &&
               !req->range_bytes) {
        req->object_size = g_ascii_strtoull(value, NULL, 10);
    }
    return len;
}

static char *object_url(S3chainConn *conn, const char *key)
{
    g_autofree char *bucket = s3chain_uri_encode(conn->settings.bucket, false);
    g_autofree char *path = s3chain_uri_encode(key, true);

    return g_strdup_printf("%s/%s/%s", conn->settings.endpoint, bucket, path);
}

static struct curl_slist *signed_headers(S3chainRequest *req)
{
    S3chainConn *conn = req->conn;
    const S3chainConnSettings *set = &conn->settings;
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *amz_date = g_date_time_format(now, "%Y%m%dT%H%M%SZ");
    g_autofree char *range = NULL;
    g_autofree char *path = g_strdup_printf("/%s/%s", set->bucket, req->key);
    const char *payload = req->body ? UNSIGNED_PAYLOAD : EMPTY_SHA256;
    S3chainHeader headers[10];
    size_t n = 0;
    struct curl_slist *list = NULL;

    headers[n++] = (S3chainHeader) { "Host", conn->host };
    headers[n++] = (S3chainHeader) { "x-amz-date", amz_date };
    headers[n++] = (S3chainHeader) { "x-amz-content-sha256", payload };
    if (req->content_md5) {
        headers[n++] = (S3chainHeader) { "Content-MD5", req->content_md5 };
    }
    if (req->content_type) {
        headers[n++] = (S3chainHeader) { "Content-Type", req->content_type };
    }
    if (req->if_none_match) {
        headers[n++] = (S3chainHeader) { "If-None-Match", "*" };
    }
    if (req->range_bytes) {
        range = g_strdup_printf("bytes=%" PRIu64 "-%" PRIu64,
                                req->range_offset,
                                req->range_offset + req->range_bytes - 1);
        headers[n++] = (S3chainHeader) { "Range", range };
    }
    if (req->if_match) {
        headers[n++] = (S3chainHeader) { "If-Match", req->if_match };
    }
    if (set->session_token) {
        headers[n++] = (S3chainHeader) { "x-amz-security-token",
                                         set->session_token };
    }

    for (size_t i = 0; i < n; i++) {
        g_autofree char *line = g_strdup_printf("%s: %s", headers[i].name,
                                                headers[i].value);
        list = curl_slist_append(list, line);
    }
    if (set->access_key_id) {
        S3chainSigV4Key key = {
            .access_key_id = set->access_key_id,
            .secret_access_key = set->secret_access_key,
            .region = set->region,
            .service = "s3",
        };
        S3chainSigV4Request sreq = {
            .method = req->method,
            .path = path,
            .headers = headers,
            .nheaders = n,
            .payload_sha256 = payload,
        };
        g_autofree char *auth = s3chain_sigv4_authorization(&key, amz_date,
                                                            &sreq);
        g_autofree char *line = NULL;

        line = g_strdup_printf("Authorization: %s", auth);
        list = curl_slist_append(list, line);
    }
    /* curl would add "Expect: 100-continue" to uploads otherwise */
    return curl_slist_append(list, "Expect:");
}

static CURL *take_handle_locked(S3chainConn *conn)
{
    CURL *easy;

    if (conn->idle_handles) {
        easy = conn->idle_handles->data;
        conn->idle_handles = g_slist_delete_link(conn->idle_handles,
                                                 conn->idle_handles);
        return easy;
    }
    return curl_easy_init();
}

static bool setup_handle_locked(S3chainRequest *req)
{
    S3chainConn *conn = req->conn;
    const S3chainConnSettings *set = &conn->settings;
    g_autofree char *url = object_url(conn, req->key);
    CURL *easy = req->easy;

    req->header_list = signed_headers(req);
    if (curl_easy_setopt(easy, CURLOPT_URL, url) ||
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, req->header_list) ||
        curl_easy_setopt(easy, CURLOPT_PRIVATE, req) ||
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) ||
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->curl_error) ||
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb) ||
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, req) ||
        curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_cb) ||
        curl_easy_setopt(easy, CURLOPT_HEADERDATA, req) ||
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, (long)set->timeout) ||
        curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L) ||
        curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, (long)set->timeout) ||
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, (long)set->sslverify) ||
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST,
                         set->sslverify ? 2L : 0L) ||
        (set->cafile && curl_easy_setopt(easy, CURLOPT_CAINFO, set->cafile)) ||
        curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, RECEIVE_BUFFER_SIZE)) {
        req->ret = -EIO;
        req->error_text = g_strdup("libcurl refused an option");
        return false;
    }
    /*
     * Handles are reused as they are (curl_easy_reset() frees buffers), so
     * each request sets what the last one may have changed.
     */
    if (req->body) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 0L);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
    } else {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(easy, CURLOPT_NOBODY,
                         (long)!strcmp(req->method, "HEAD"));
    }
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
    return true;
}

/* Hands @req to curl; false if it could not be, with req->ret set */
static bool start_locked(S3chainRequest *req)
{
    S3chainConn *conn = req->conn;

    req->attempts++;
    req->received = 0;
    req->status = 0;
    req->curl_error[0] = '\0';
    if (req->error_body) {
        g_string_truncate(req->error_body, 0);
    }
    g_clear_pointer(&req->header_list, curl_slist_free_all);
    if (!req->easy) {
        req->easy = take_handle_locked(conn);
    }
    trace_s3chain_request(req, req->method, conn->settings.bucket, req->key,
                          req->range_offset, req->range_bytes, req->attempts);
    if (!req->easy || !setup_handle_locked(req)) {
        if (!req->error_text) {
            req->ret = -ENOMEM;
            req->error_text = g_strdup("cannot create a libcurl handle");
        }
        return false;
    }
    curl_multi_add_handle(conn->multi, req->easy);
    return true;
}

/* Once one part of a read failed, the rest of it need not be fetched */
static bool is_abandoned(S3chainRequest *req)
{
    return req->waiter && req->waiter->failed;
}

static void abandon(S3chainRequest *req)
{
    req->ret = -ECANCELED;
    g_free(req->error_text);
    req->error_text = g_strdup("not sent: another part of the read failed");
}

/*
 * Tells @req's owner that it ended.  The waiter is woken exactly once,
 * after its last request, through a schedule rather than at once: the
 * woken coroutine may free the connection, which is still in use here.
 */
static void complete_locked(S3chainRequest *req)
{
    S3chainConn *conn = req->conn;
    S3chainWaiter *waiter = req->waiter;

    trace_s3chain_request_done(req, req->status, req->ret, req->attempts);
    if (req->easy) {
        conn->idle_handles = g_slist_prepend(conn->idle_handles, req->easy);
        req->easy = NULL;
    }
    g_clear_pointer(&req->header_list, curl_slist_free_all);
    if (!waiter) {
        return;
    }
    if (req->ret < 0) {
        waiter->failed = true;
    }
    if (--waiter->pending == 0 && waiter->yielded) {
        aio_co_schedule(waiter->ctx, waiter->co);
    }
}

/* Starts queued requests while there are free slots */
static void pump_locked(S3chainConn *conn)
{
    S3chainRequest *req;

    while (conn->active < conn->settings.max_requests &&
           (req = QTAILQ_FIRST(&conn->queue))) {
        QTAILQ_REMOVE(&conn->queue, req, next);
        if (is_abandoned(req)) {
            abandon(req);
            complete_locked(req);
            continue;
        }
        conn->active++;
        if (!start_locked(req)) {
            conn->active--;
            complete_locked(req);
        }
    }
}

/* Ends @req, which holds a slot, and gives the slot to the next one */
static void finish_locked(S3chainRequest *req)
{
    S3chainConn *conn = req->conn;

    conn->active--;
    complete_locked(req);
    pump_locked(conn);
}

static void retry_cb(void *opaque)
{
    S3chainRequest *req = opaque;
    S3chainConn *conn = req->conn;

    QEMU_LOCK_GUARD(&conn->mutex);
    if (is_abandoned(req)) {
        abandon(req);
        finish_locked(req);
    } else if (!start_locked(req)) {
        finish_locked(req);
    }
}

static void schedule_retry_locked(S3chainRequest *req)
{
    int64_t delay = s3chain_retry_delay_ms(req->attempts);

    trace_s3chain_retry(req, req->attempts, delay, req->error_text);
    aio_timer_init(req->conn->ctx, &req->retry_timer, QEMU_CLOCK_REALTIME,
                   SCALE_MS, retry_cb, req);
    timer_mod(&req->retry_timer,
              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + delay);
}

static void check_completion_locked(S3chainConn *conn)
{
    CURLMsg *msg;
    int queued;

    while ((msg = curl_multi_info_read(conn->multi, &queued))) {
        S3chainRequest *req = NULL;
        CURLcode result;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        result = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE,
                          &req->status);
        curl_multi_remove_handle(conn->multi, msg->easy_handle);

        if (classify_locked(req, result) &&
            req->attempts <= conn->settings.retries && !is_abandoned(req)) {
            schedule_retry_locked(req);
            continue;
        }
        if (req->ret < 0 && req->attempts > 1 && req->error_text) {
            g_autofree char *text = req->error_text;

            req->error_text = g_strdup_printf("%s (after %u attempts)", text,
                                              req->attempts);
        }
        finish_locked(req);
    }
}

static void conn_multi_do(void *opaque)
{
    S3chainSocket *socket = opaque;
    S3chainConn *conn = socket->conn;
    int running;

    QEMU_LOCK_GUARD(&conn->mutex);
    if (conn->multi) {
        curl_multi_socket_action(conn->multi, socket->fd, 0, &running);
        check_completion_locked(conn);
    }
}

static void conn_timeout_do(void *opaque)
{
    S3chainConn *conn = opaque;
    int running;

    QEMU_LOCK_GUARD(&conn->mutex);
    if (conn->multi) {
        curl_multi_socket_action(conn->multi, CURL_SOCKET_TIMEOUT, 0,
                                 &running);
        check_completion_locked(conn);
    }
}

void s3chain_request_submit(S3chainConn *conn, S3chainRequest *req)
{
    QEMU_LOCK_GUARD(&conn->mutex);
    req->conn = conn;
    req->ret = -EINPROGRESS;
    if (req->waiter) {
        req->waiter->pending++;
    }
    QTAILQ_INSERT_TAIL(&conn->queue, req, next);
    pump_locked(conn);
}

void coroutine_fn s3chain_co_wait(S3chainConn *conn, S3chainWaiter *waiter)
{
    qemu_mutex_lock(&conn->mutex);
    if (waiter->pending == 0) {
        qemu_mutex_unlock(&conn->mutex);
        return;
    }
    waiter->co = qemu_coroutine_self();
    waiter->ctx = qemu_get_current_aio_context();
    waiter->yielded = true;
    qemu_mutex_unlock(&conn->mutex);
    qemu_coroutine_yield();
    waiter->yielded = false;
}

int coroutine_fn s3chain_co_request(S3chainConn *conn, S3chainRequest *req)
{
    S3chainWaiter waiter = { 0 };

    req->waiter = &waiter;
    s3chain_request_submit(conn, req);
    s3chain_co_wait(conn, &waiter);
    req->waiter = NULL;
    return req->ret;
}

void s3chain_request_cleanup(S3chainRequest *req)
{
    g_clear_pointer(&req->error_code, g_free);
    g_clear_pointer(&req->error_text, g_free);
    g_clear_pointer(&req->etag, g_free);
    g_clear_pointer(&req->content_type_received, g_free);
    g_clear_pointer(&req->block_sums_received, g_free);
    if (req->error_body) {
        g_string_free(req->error_body, true);
        req->error_body = NULL;
    }
}

void s3chain_conn_attach_aio_context(S3chainConn *conn, AioContext *ctx)
{
    QEMU_LOCK_GUARD(&conn->mutex);
    assert(!conn->multi);
    conn->ctx = ctx;
    aio_timer_init(ctx, &conn->timer, QEMU_CLOCK_REALTIME, SCALE_MS,
                   conn_timeout_do, conn);
    conn->multi = curl_multi_init();
    curl_multi_setopt(conn->multi, CURLMOPT_SOCKETFUNCTION, conn_socket_cb);
    curl_multi_setopt(conn->multi, CURLMOPT_SOCKETDATA, conn);
    curl_multi_setopt(conn->multi, CURLMOPT_TIMERFUNCTION, conn_timer_cb);
    curl_multi_setopt(conn->multi, CURLMOPT_TIMERDATA, conn);
}

/* Only called when drained: no request is in flight or waiting to retry */
void s3chain_conn_detach_aio_context(S3chainConn *conn)
{
    QEMU_LOCK_GUARD(&conn->mutex);
    assert(conn->active == 0);
    g_hash_table_remove_all(conn->sockets);
    g_slist_free_full(g_steal_pointer(&conn->idle_handles),
                      curl_easy_cleanup);
    if (conn->multi) {
        curl_multi_cleanup(conn->multi);
        conn->multi = NULL;
    }
    timer_del(&conn->timer);
}

S3chainConn *s3chain_conn_new(const S3chainConnSettings *settings,
                              AioContext *ctx)
{
    S3chainConn *conn = g_new0(S3chainConn, 1);
    const char *host = strstr(settings->endpoint, "://");

    conn->settings = (S3chainConnSettings) {
        .endpoint = g_strdup(settings->endpoint),
        .bucket = g_strdup(settings->bucket),
        .region = g_strdup(settings->region),
        .access_key_id = g_strdup(settings->access_key_id),
        .secret_access_key = g_strdup(settings->secret_access_key),
        .session_token = g_strdup(settings->session_token),
        .sslverify = settings->sslverify,
        .cafile = g_strdup(settings->cafile),
        .timeout = settings->timeout,
        .retries = settings->retries,
        .max_requests = settings->max_requests,
    };
    host = host ? host + 3 : settings->endpoint;
    conn->host = g_strndup(host, strcspn(host, "/"));
    conn->sockets = g_hash_table_new_full(NULL, NULL, NULL, drop_socket);
    qemu_mutex_init(&conn->mutex);
    QTAILQ_INIT(&conn->queue);
    s3chain_conn_attach_aio_context(conn, ctx);
    return conn;
}

void s3chain_conn_free(S3chainConn *conn)
{
    S3chainConnSettings *set;

    if (!conn) {
        return;
    }
    set = &conn->settings;
    s3chain_conn_detach_aio_context(conn);
    g_hash_table_destroy(conn->sockets);
    qemu_mutex_destroy(&conn->mutex);
    g_free(set->endpoint);
    g_free(set->bucket);
    g_free(set->region);
    g_free(set->access_key_id);
    if (set->secret_access_key) {
        memset(set->secret_access_key, 0, strlen(set->secret_access_key));
    }
    g_free(set->secret_access_key);
    g_free(set->session_token);
    g_free(set->cafile);
    g_free(conn->host);
    g_free(conn);
}
