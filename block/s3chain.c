/*
 * s3chain: a block driver for images kept in an S3-compatible bucket
 *
 * This file is the BlockDriver glue; the transport, signing, read-ahead
 * and URL syntax live in s3chain-*.c around s3chain.h.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "block/block_int.h"
#include "block/qdict.h"
#include "crypto/secret.h"
#include "qapi/error.h"
#include "qapi/qapi-visit-block-core.h"
#include "qapi/qobject-input-visitor.h"
#include "qobject/qdict.h"
#include "qemu/cutils.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/units.h"
#include "s3chain.h"
#include "trace.h"

/*
 * A node is an image: a chunked one, writable, or one stored as one
 * object, read-only
 */
typedef struct BDRVS3chainState {
    BlockdevOptionsS3chain *opts;
    char *read_plan;            /* the text of x-read-plan's file */
    S3chainConn *conn;
    S3chainImage *image;
} BDRVS3chainState;

typedef struct S3chainOpenCo {
    BlockDriverState *bs;
    bool writable;
    Error **errp;
    int ret;
} S3chainOpenCo;

static const char *const s3chain_strong_runtime_opts[] = {
    "endpoint", "bucket", "key", "region", "access-key-id", "key-secret",
    "session-token-secret", "sslverify", "cafile", "encrypt-key-secret",
    NULL,
};

static void s3chain_parse_filename(const char *filename, QDict *options,
                                   Error **errp)
{
    s3chain_parse_url(filename, options, errp);
}

static BlockdevOptionsS3chain *s3chain_visit_options(QDict *options,
                                                     Error **errp)
{
    BlockdevOptionsS3chain *opts = NULL;
    const QDictEntry *e;
    Visitor *v;

    v = qobject_input_visitor_new_flat_confused(options, errp);
    if (!v) {
        return NULL;
    }
    visit_type_BlockdevOptionsS3chain(v, NULL, &opts, errp);
    visit_free(v);

    /* The visitor took every option; the block layer wants them gone */
    while ((e = qdict_first(options))) {
        qdict_del(options, e->key);
    }
    return opts;
}

static bool s3chain_check_range(const char *name, int64_t value, int64_t min,
                                int64_t max, Error **errp)
{
    if (value < min || value > max) {
        error_setg(errp, "s3chain: %s must be between %" PRId64 " and %"
                   PRId64 ", not %" PRId64, name, min, max, value);
        return false;
    }
    return true;
}

/* Gives the tuning options that were not set their defaults */
static void s3chain_apply_defaults(BlockdevOptionsS3chain *opts)
{
#define DEFAULT(field, value) \
    do { \
        if (!opts->has_##field) { \
            opts->has_##field = true; \
            opts->field = (value); \
        } \
    } while (0)
    DEFAULT(timeout, S3CHAIN_DEFAULT_TIMEOUT);
    DEFAULT(retries, S3CHAIN_DEFAULT_RETRIES);
    DEFAULT(max_requests, S3CHAIN_DEFAULT_MAX_REQUESTS);
    DEFAULT(request_size, S3CHAIN_DEFAULT_REQUEST_SIZE);
    DEFAULT(readahead, S3CHAIN_DEFAULT_READAHEAD);
    DEFAULT(buffer_size, S3CHAIN_DEFAULT_BUFFER_SIZE);
    DEFAULT(compress_level, S3CHAIN_DEFAULT_COMPRESS_LEVEL);
#undef DEFAULT
}

static bool s3chain_settings_from_opts(BlockdevOptionsS3chain *opts,
                                       S3chainConnSettings *set,
                                       Error **errp)
{
    s3chain_apply_defaults(opts);
    if (!g_str_has_prefix(opts->endpoint, "http://") &&
        !g_str_has_prefix(opts->endpoint, "https://")) {
        error_setg(errp, "s3chain: endpoint '%s' must start with http:// "
                   "or https://", opts->endpoint);
        return false;
    }
    if (!!opts->access_key_id != !!opts->key_secret) {
        error_setg(errp, "s3chain: access-key-id and key-secret go "
                   "together; give both, or neither for anonymous access");
        return false;
    }
    if (!s3chain_check_range("timeout", opts->timeout, 1, 3600, errp) ||
        !s3chain_check_range("retries", opts->retries, 0, 100, errp) ||
        !s3chain_check_range("max-requests", opts->max_requests, 1, 256,
                             errp) ||
        !s3chain_check_range("request-size", opts->request_size, 4 * KiB,
                             1 * GiB, errp) ||
        !s3chain_check_range("readahead", opts->readahead, 0, 4 * GiB,
                             errp) ||
        !s3chain_check_range("compress-level", opts->compress_level, 1,
                             S3CHAIN_MAX_COMPRESS_LEVEL, errp)) {
        return false;
    }

    *set = (S3chainConnSettings) {
        .endpoint = g_strndup(opts->endpoint,
                              strlen(opts->endpoint) -
                              g_str_has_suffix(opts->endpoint, "/")),
        .bucket = opts->bucket,
        .region = opts->region ?: (char *)S3CHAIN_DEFAULT_REGION,
        .access_key_id = opts->access_key_id,
        .sslverify = !opts->has_sslverify || opts->sslverify,
        .cafile = opts->cafile,
        .timeout = opts->timeout,
        .retries = opts->retries,
        .max_requests = opts->max_requests,
    };
    if (opts->key_secret) {
        set->secret_access_key =
            qcrypto_secret_lookup_as_utf8(opts->key_secret, errp);
        if (!set->secret_access_key) {
            goto fail;
        }
    }
    if (opts->session_token_secret) {
        set->session_token =
            qcrypto_secret_lookup_as_utf8(opts->session_token_secret, errp);
        if (!set->session_token) {
            goto fail;
        }
    }
    return true;

fail:
    g_free(set->endpoint);
    g_free(set->secret_access_key);
    return false;
}

/*
 * The user's encryption key, from the secret object that @opts'
 * encrypt-key-secret names, into @key: 1, or 0 if none is named
 */
static int s3chain_lookup_key(BlockdevOptionsS3chain *opts,
                              uint8_t key[S3CHAIN_KEY_LEN], Error **errp)
{
    g_autofree uint8_t *data = NULL;
    size_t len;

    if (!opts->encrypt_key_secret) {
        return 0;
    }
    if (qcrypto_secret_lookup(opts->encrypt_key_secret, &data, &len,
                              errp) < 0) {
        return -EINVAL;
    }
    if (len != S3CHAIN_KEY_LEN) {
        error_setg(errp, "s3chain: the key in secret '%s' is %zu bytes; an "
                   "encryption key is %d bytes (give them raw, or with "
                   "format=base64)", opts->encrypt_key_secret, len,
                   S3CHAIN_KEY_LEN);
        memset(data, 0, len);
        return -EINVAL;
    }
    memcpy(key, data, S3CHAIN_KEY_LEN);
    memset(data, 0, len);
    return 1;
}

/*
 * Reads the start of the object: its size, ETag and kind in one request,
 * and with them a manifest whole unless it is long.  Returns in *@head
 * what it read, @how->head_len bytes, and in *@etag the ETag.
 */
static int coroutine_fn s3chain_co_probe(BlockDriverState *bs, bool *chunked,
                                         S3chainImageOpen *how, char **head,
                                         char **etag, Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    g_autofree char *buf = g_malloc(S3CHAIN_PROBE_BYTES);
    QEMUIOVector qiov;
    S3chainRequest req = {
        .method = "GET",
        .key = s->opts->key,
        .range_offset = 0,
        .range_bytes = S3CHAIN_PROBE_BYTES,
        .may_end_early = true,
        .qiov = &qiov,
    };
    int ret;

    qemu_iovec_init_buf(&qiov, buf, S3CHAIN_PROBE_BYTES);
    ret = s3chain_co_request(s->conn, &req);
    if (ret == -EINVAL && req.status == 416) {
        /* An empty object has no byte 0 */
        ret = 0;
        req.object_size = 0;
    }
    if (ret < 0) {
        error_setg(errp, "s3chain: cannot open s3://%s/%s at %s: %s",
                   s->opts->bucket, s->opts->key, s->opts->endpoint,
                   req.error_text ?: strerror(-ret));
    } else {
        how->object_bytes = req.object_size;
        /* Some servers only match an unquoted ETag in If-Match */
        *etag = req.etag ? g_strdup(req.etag) : NULL;
        if (*etag) {
            g_strdelimit(*etag, "\"", ' ');
            g_strstrip(*etag);
        }
        *chunked = req.content_type_received &&
                   !strcmp(req.content_type_received, S3CHAIN_MANIFEST_TYPE);
        how->head_len = MIN(req.object_size, S3CHAIN_PROBE_BYTES);
        *head = g_steal_pointer(&buf);
    }
    s3chain_request_cleanup(&req);
    return ret;
}

/*
 * Reads the node's image as the bucket holds it now into *@image: a
 * chunked one @writable with the writer's lock or read-only without, or
 * one stored as one object, read-only
 */
static int coroutine_fn s3chain_co_open_image(BlockDriverState *bs,
                                              bool writable,
                                              S3chainImage **image,
                                              Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    g_autofree char *head = NULL;
    g_autofree char *etag = NULL;
    S3chainImageOpen how = {
        .key = s->opts->key,
        .writable = writable,
        .buffer_size = s->opts->buffer_size,
        .compress_level = s->opts->compress_level,
        .readahead = s->opts->readahead,
    };
    uint8_t user_key[S3CHAIN_KEY_LEN];
    bool chunked = false;
    int ret;

    ret = s3chain_lookup_key(s->opts, user_key, errp);
    if (ret < 0) {
        return ret;
    }
    how.encryption_key = ret ? user_key : NULL;
    ret = s3chain_co_probe(bs, &chunked, &how, &head, &etag, errp);
    if (ret < 0) {
        goto out;
    }
    how.head = head;
    how.etag = etag;
    if (!chunked && how.encryption_key) {
        error_setg(errp, S3CHAIN_KEY_REFUSED "s3://%s/%s is stored as one "
                   "object, which is never encrypted, but "
                   "encrypt-key-secret gives a key: not reading it as "
                   "plain text", s->opts->bucket, s->opts->key);
        ret = -EACCES;
        goto out;
    }
    if (chunked) {
        ret = s3chain_chunked_co_open(bs, s->conn, &how, image, errp);
    } else {
        *image = s3chain_object_open(bs, s->conn, &how,
                                     s->opts->request_size);
    }
    if (ret == 0 && s->read_plan) {
        ret = s3chain_image_plan_reads(*image, s->read_plan,
                                       s->opts->x_read_plan, errp);
        if (ret < 0) {
            s3chain_image_co_close(g_steal_pointer(image));
        }
    }
out:
    memset(user_key, 0, sizeof(user_key));
    return ret;
}

static void coroutine_fn s3chain_open_entry(void *opaque)
{
    S3chainOpenCo *oc = opaque;
    BDRVS3chainState *s = oc->bs->opaque;

    oc->ret = s3chain_co_open_image(oc->bs, oc->writable, &s->image,
                                    oc->errp);
}

typedef struct S3chainCloseCo {
    S3chainImage *image;
    bool done;
} S3chainCloseCo;

static void coroutine_fn s3chain_close_entry(void *opaque)
{
    S3chainCloseCo *cc = opaque;

    s3chain_image_co_close(cc->image);
    cc->done = true;
}

static void s3chain_free_state(BDRVS3chainState *s)
{
    s3chain_conn_free(s->conn);
    s->conn = NULL;
    g_free(s->read_plan);
    s->read_plan = NULL;
    qapi_free_BlockdevOptionsS3chain(s->opts);
    s->opts = NULL;
}

/*
 * libcurl's global state, set up by the first connection rather than
 * when the module loads, so that a QEMU that never uses s3chain never
 * pays for it (as curl.c does); opens and creates run in the main loop
 */
static bool s3chain_curl_init(Error **errp)
{
    static bool initialized;
    CURLcode code;

    if (initialized) {
        return true;
    }
    code = curl_global_init(CURL_GLOBAL_ALL);
    if (code != CURLE_OK) {
        error_setg(errp, "s3chain: libcurl initialization failed: %s",
                   curl_easy_strerror(code));
        return false;
    }
    initialized = true;
    return true;
}

static S3chainConn *s3chain_connect(BlockdevOptionsS3chain *opts,
                                    AioContext *ctx, Error **errp)
{
    S3chainConnSettings set;
    S3chainConn *conn;

    if (!s3chain_curl_init(errp) ||
        !s3chain_settings_from_opts(opts, &set, errp)) {
        return NULL;
    }
    conn = s3chain_conn_new(&set, ctx);
    g_free(set.endpoint);
    if (set.secret_access_key) {
        memset(set.secret_access_key, 0, strlen(set.secret_access_key));
    }
    g_free(set.secret_access_key);
    g_free(set.session_token);
    return conn;
}

static int s3chain_open(BlockDriverState *bs, QDict *options, int flags,
                        Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    /*
     * An inactive node (the destination of a migration, until it takes
     * over) reads an image that another QEMU writes
     */
    S3chainOpenCo oc = {
        .bs = bs,
        .writable = (flags & BDRV_O_RDWR) && !(flags & BDRV_O_INACTIVE),
        .errp = errp,
        .ret = -EINPROGRESS,
    };
    int ret;

    s->opts = s3chain_visit_options(options, errp);
    if (!s->opts) {
        return -EINVAL;
    }
    if (s->opts->scratch && !(flags & BDRV_O_RDWR)) {
        error_setg(errp, "s3chain: a scratch image is for writing; open it "
                   "writable");
        ret = -EINVAL;
        goto fail;
    }
    if (s->opts->x_read_plan) {
        g_autoptr(GError) gerr = NULL;

        if (flags & BDRV_O_RDWR) {
            error_setg(errp, "s3chain: x-read-plan is for read-only opens; "
                       "open the image read-only");
            ret = -EINVAL;
            goto fail;
        }
        if (!g_file_get_contents(s->opts->x_read_plan, &s->read_plan, NULL,
                                 &gerr)) {
            error_setg(errp, "s3chain: cannot read the read plan: %s",
                       gerr->message);
            ret = -EINVAL;
            goto fail;
        }
    }
    s->conn = s3chain_connect(s->opts, bdrv_get_aio_context(bs), errp);
    if (!s->conn) {
        ret = -EINVAL;
        goto fail;
    }

    if (s->opts->scratch) {
        uint8_t user_key[S3CHAIN_KEY_LEN];

        /* nothing to read: what the bucket holds at @key is not its own */
        ret = s3chain_lookup_key(s->opts, user_key, errp);
        if (ret >= 0) {
            ret = s3chain_image_new_scratch(bs, s->conn, s->opts->key,
                                            s->opts->buffer_size,
                                            ret ? user_key : NULL, &s->image,
                                            errp);
        }
        memset(user_key, 0, sizeof(user_key));
        if (ret < 0) {
            goto fail;
        }
    } else {
        aio_co_enter(bdrv_get_aio_context(bs),
                     qemu_coroutine_create(s3chain_open_entry, &oc));
        AIO_WAIT_WHILE_UNLOCKED(NULL, oc.ret == -EINPROGRESS);
        if (oc.ret < 0) {
            ret = oc.ret;
            goto fail;
        }
    }

    trace_s3chain_open(s->opts->bucket, s->opts->key,
                       s3chain_image_size(s->image), s->image->kind->name);
    if (s->image->kind->read_only && (flags & BDRV_O_RDWR)) {
        g_autofree char *why = g_strdup_printf("s3chain: %s is read-only",
                                               s->image->kind->name);

        bdrv_graph_rdlock_main_loop();
        ret = bdrv_apply_auto_read_only(bs, why, errp);
        bdrv_graph_rdunlock_main_loop();
        if (ret < 0) {
            /* it holds no lock, and nothing was written */
            s3chain_image_free(g_steal_pointer(&s->image));
            goto fail;
        }
    }
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    return 0;

fail:
    s3chain_free_state(s);
    return ret;
}

static void s3chain_close(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    S3chainCloseCo cc = { .image = g_steal_pointer(&s->image) };

    aio_co_enter(bdrv_get_aio_context(bs),
                 qemu_coroutine_create(s3chain_close_entry, &cc));
    AIO_WAIT_WHILE_UNLOCKED(NULL, !cc.done);
    s3chain_free_state(s);
}

/*
 * Migration hands a chunked image from one QEMU to another: the source
 * commits what it wrote and releases the writer's lock when it becomes
 * inactive, and the destination, inactive until then, reads the image
 * afresh and takes the lock when it becomes active.  Either keeps the
 * image it had if the other cannot be opened: a migration that fails
 * leaves the source as it was.
 */
static void coroutine_fn s3chain_reload_entry(void *opaque)
{
    S3chainOpenCo *oc = opaque;
    BDRVS3chainState *s = oc->bs->opaque;
    S3chainImage *image = NULL;
    int ret;

    ret = s3chain_image_co_flush(s->image);
    if (ret < 0) {
        error_setg_errno(oc->errp, -ret, "s3chain: cannot commit s3://%s/%s",
                         s->opts->bucket, s->opts->key);
        goto out;
    }
    ret = s3chain_co_open_image(oc->bs, oc->writable, &image, oc->errp);
    if (ret == 0 && image->kind != s->image->kind) {
        error_setg(oc->errp, "s3chain: s3://%s/%s is no longer %s",
                   s->opts->bucket, s->opts->key, s->image->kind->name);
        s3chain_image_co_close(image);
        ret = -EINVAL;
    }
    if (ret == 0) {
        s3chain_image_co_close(s->image);
        s->image = image;
    }
out:
    oc->ret = ret;
}

static int GRAPH_RDLOCK s3chain_inactivate(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;
    Error *local_err = NULL;
    S3chainOpenCo oc = {
        .bs = bs,
        .writable = false,
        .errp = &local_err,
        .ret = -EINPROGRESS,
    };

    /* only what can be written is handed over */
    if (s->opts->scratch || s->image->kind->read_only) {
        return 0;
    }
    aio_co_enter(bdrv_get_aio_context(bs),
                 qemu_coroutine_create(s3chain_reload_entry, &oc));
    AIO_WAIT_WHILE_UNLOCKED(NULL, oc.ret == -EINPROGRESS);
    if (oc.ret < 0) {
        error_report_err(local_err);
    }
    return oc.ret;
}

static void coroutine_fn GRAPH_RDLOCK
s3chain_co_invalidate_cache(BlockDriverState *bs, Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    S3chainOpenCo oc = {
        .bs = bs,
        .writable = bs->open_flags & BDRV_O_RDWR,
        .errp = errp,
    };

    if (!s->opts->scratch && !s->image->kind->read_only) {
        s3chain_reload_entry(&oc);
    }
}

static int s3chain_reopen_prepare(BDRVReopenState *state,
                                  BlockReopenQueue *queue, Error **errp)
{
    BDRVS3chainState *s = state->bs->opaque;
    bool to_writable = (state->flags & BDRV_O_RDWR) &&
                       !(state->bs->open_flags & BDRV_O_RDWR);

    if (to_writable) {
        error_setg(errp, "s3chain: %s cannot become writable while open; "
                   "open it writable", s->image->kind->name);
        return -EACCES;
    }
    return 0;
}

static void s3chain_refresh_limits(BlockDriverState *bs, Error **errp)
{
    bs->bl.request_alignment = 1;
}

static int coroutine_fn GRAPH_RDLOCK
s3chain_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                  QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVS3chainState *s = bs->opaque;

    trace_s3chain_preadv(bs, offset, bytes);
    return s3chain_image_co_preadv(s->image, offset, bytes, qiov);
}

static int coroutine_fn GRAPH_RDLOCK
s3chain_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                   QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVS3chainState *s = bs->opaque;

    trace_s3chain_pwritev(bs, offset, bytes);
    if (!s->image->writable) {
        return -EACCES;
    }
    return s3chain_image_co_pwritev(s->image, offset, bytes, qiov);
}

static int coroutine_fn GRAPH_RDLOCK
s3chain_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                         BdrvRequestFlags flags)
{
    BDRVS3chainState *s = bs->opaque;

    if (!s->image->writable) {
        return -EACCES;
    }
    return s3chain_image_co_pwritev(s->image, offset, bytes, NULL);
}

/* A discarded range reads as zeroes: whole chunks are dropped */
static int coroutine_fn GRAPH_RDLOCK
s3chain_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return s3chain_co_pwrite_zeroes(bs, offset, bytes, BDRV_REQ_MAY_UNMAP);
}

static int coroutine_fn GRAPH_RDLOCK s3chain_co_flush(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    return s3chain_image_co_flush(s->image);
}

static int coroutine_fn GRAPH_RDLOCK
s3chain_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                    PreallocMode prealloc, BdrvRequestFlags flags,
                    Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    int ret;

    if (!s->image->writable) {
        error_setg(errp, "s3chain: cannot resize s3://%s/%s, %s open "
                   "read-only", s->opts->bucket, s->opts->key,
                   s->image->kind->name);
        return -EACCES;
    }
    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "s3chain: unsupported preallocation mode '%s'",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    ret = s3chain_image_co_truncate(s->image, offset);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "s3chain: cannot resize s3://%s/%s",
                         s->opts->bucket, s->opts->key);
    }
    return ret;
}

static int64_t coroutine_fn GRAPH_RDLOCK
s3chain_co_getlength(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    return s3chain_image_size(s->image);
}

static int64_t coroutine_fn GRAPH_RDLOCK
s3chain_co_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    return s3chain_image_stored_bytes(s->image);
}

/*
 * A chunk that is not stored reads as zeroes; an object stored whole
 * holds data everywhere, zeroes or not.
 */
static int coroutine_fn GRAPH_RDLOCK
s3chain_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                        int64_t bytes, int64_t *pnum, int64_t *map,
                        BlockDriverState **file)
{
    BDRVS3chainState *s = bs->opaque;

    *map = offset;
    *file = bs;
    return s3chain_image_co_block_status(s->image, offset, bytes, pnum);
}

static int coroutine_fn s3chain_co_do_create(BlockdevOptionsS3chain *location,
                                             uint64_t size, uint64_t chunk_size,
                                             S3chainCompression compress,
                                             Error **errp)
{
    uint8_t user_key[S3CHAIN_KEY_LEN];
    S3chainConn *conn;
    int ret;

    if (chunk_size < S3CHAIN_MIN_CHUNK_SIZE ||
        chunk_size > S3CHAIN_MAX_CHUNK_SIZE || !is_power_of_2(chunk_size)) {
        error_setg(errp, "s3chain: chunk-size must be a power of 2 between "
                   "%d KiB and %d MiB", (int)(S3CHAIN_MIN_CHUNK_SIZE / KiB),
                   (int)(S3CHAIN_MAX_CHUNK_SIZE / MiB));
        return -EINVAL;
    }
    ret = s3chain_lookup_key(location, user_key, errp);
    if (ret < 0) {
        return ret;
    }
    conn = s3chain_connect(location, qemu_get_current_aio_context(), errp);
    if (conn) {
        ret = s3chain_image_co_create(conn, location->key, size, chunk_size,
                                      compress == S3CHAIN_COMPRESSION_ZSTD,
                                      ret ? user_key : NULL, errp);
        s3chain_conn_free(conn);
    } else {
        ret = -EINVAL;
    }
    memset(user_key, 0, sizeof(user_key));
    return ret;
}

static int coroutine_fn s3chain_co_create(BlockdevCreateOptions *options,
                                          Error **errp)
{
    BlockdevCreateOptionsS3chain *opts = &options->u.s3chain;

    return s3chain_co_do_create(opts->location, opts->size,
                                opts->has_chunk_size ? opts->chunk_size :
                                S3CHAIN_DEFAULT_CHUNK_SIZE,
                                opts->has_compress ? opts->compress :
                                S3CHAIN_COMPRESSION_NONE, errp);
}

static int coroutine_fn
s3chain_co_create_opts(BlockDriver *drv, const char *filename,
                       QemuOpts *opts, Error **errp)
{
    g_autoptr(QDict) options = qdict_new();
    BlockdevOptionsS3chain *location;
    g_autofree char *compress_name = NULL;
    S3chainCompression compress;
    uint64_t size, chunk_size;
    Error *local_err = NULL;
    int ret;

    compress_name = qemu_opt_get_del(opts, "compress");
    compress = qapi_enum_parse(&S3chainCompression_lookup, compress_name,
                               S3CHAIN_COMPRESSION_NONE, &local_err);
    if (local_err) {
        error_free(local_err);
        error_setg(errp, "s3chain: compress must be none or zstd, not '%s'",
                   compress_name);
        return -EINVAL;
    }
    if (!s3chain_parse_url(filename, options, errp)) {
        return -EINVAL;
    }
    location = s3chain_visit_options(options, errp);
    if (!location) {
        return -EINVAL;
    }
    size = ROUND_UP(qemu_opt_get_size_del(opts, BLOCK_OPT_SIZE, 0),
                    BDRV_SECTOR_SIZE);
    chunk_size = qemu_opt_get_size_del(opts, "chunk-size",
                                       S3CHAIN_DEFAULT_CHUNK_SIZE);
    ret = s3chain_co_do_create(location, size, chunk_size, compress, errp);
    qapi_free_BlockdevOptionsS3chain(location);
    return ret;
}

static QemuOptsList s3chain_create_opts = {
    .name = "s3chain-create-opts",
    .head = QTAILQ_HEAD_INITIALIZER(s3chain_create_opts.head),
    .desc = {
        {
            .name = BLOCK_OPT_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Virtual disk size"
        },
        {
            .name = "chunk-size",
            .type = QEMU_OPT_SIZE,
            .help = "Bytes per chunk object (power of 2, 64 KiB to 256 MiB)"
        },
        {
            .name = "compress",
            .type = QEMU_OPT_STRING,
            .help = "How blocks are stored: none (default) or zstd"
        },
        { /* end of list */ }
    }
};

static void GRAPH_RDLOCK s3chain_refresh_filename(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;
    g_autofree char *url = s3chain_build_url(s->opts, s->opts->key);

    if (strlen(url) < sizeof(bs->exact_filename)) {
        pstrcpy(bs->exact_filename, sizeof(bs->exact_filename), url);
    } else {
        bs->exact_filename[0] = '\0';
    }
}

/*
 * A relative backing file name is a key in the same bucket, next to this
 * image, reached with the same connection settings.
 */
static char * GRAPH_RDLOCK s3chain_dirname(BlockDriverState *bs,
                                           Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    const char *slash = strrchr(s->opts->key, '/');
    g_autofree char *dir = g_strndup(s->opts->key,
                                     slash ? slash + 1 - s->opts->key : 0);

    return s3chain_build_url(s->opts, dir);
}

static void s3chain_detach_aio_context(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    s3chain_conn_detach_aio_context(s->conn);
}

static void s3chain_attach_aio_context(BlockDriverState *bs,
                                       AioContext *new_context)
{
    BDRVS3chainState *s = bs->opaque;

    s3chain_conn_attach_aio_context(s->conn, new_context);
}

static BlockDriver bdrv_s3chain = {
    .format_name                = "s3chain",
    .protocol_name              = S3CHAIN_PROTOCOL,
    .instance_size              = sizeof(BDRVS3chainState),
    .create_opts                = &s3chain_create_opts,

    .bdrv_parse_filename        = s3chain_parse_filename,
    .bdrv_open                  = s3chain_open,
    .bdrv_close                 = s3chain_close,
    .bdrv_reopen_prepare        = s3chain_reopen_prepare,
    .bdrv_inactivate            = s3chain_inactivate,
    .bdrv_co_invalidate_cache   = s3chain_co_invalidate_cache,
    .bdrv_refresh_limits        = s3chain_refresh_limits,

    .bdrv_co_create             = s3chain_co_create,
    .bdrv_co_create_opts        = s3chain_co_create_opts,
    .bdrv_has_zero_init         = bdrv_has_zero_init_1,

    .bdrv_co_preadv             = s3chain_co_preadv,
    .bdrv_co_pwritev            = s3chain_co_pwritev,
    .bdrv_co_pwrite_zeroes      = s3chain_co_pwrite_zeroes,
    .bdrv_co_pdiscard           = s3chain_co_pdiscard,
    .bdrv_co_flush_to_disk      = s3chain_co_flush,
    .bdrv_co_truncate           = s3chain_co_truncate,
    .bdrv_co_getlength          = s3chain_co_getlength,
    .bdrv_co_get_allocated_file_size = s3chain_co_get_allocated_file_size,
    .bdrv_co_block_status       = s3chain_co_block_status,

    .bdrv_refresh_filename      = s3chain_refresh_filename,
    .bdrv_dirname               = s3chain_dirname,
    .strong_runtime_opts        = s3chain_strong_runtime_opts,

    .bdrv_detach_aio_context    = s3chain_detach_aio_context,
    .bdrv_attach_aio_context    = s3chain_attach_aio_context,
};

static void s3chain_block_init(void)
{
    bdrv_register(&bdrv_s3chain);
}

block_init(s3chain_block_init);
