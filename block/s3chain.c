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
#include "qemu/units.h"
#include "s3chain.h"
#include "trace.h"

typedef struct BDRVS3chainState {
    BlockdevOptionsS3chain *opts;
    S3chainConn *conn;
    S3chainReader *reader;
    uint64_t size;
    char *etag;
} BDRVS3chainState;

typedef struct S3chainProbe {
    S3chainConn *conn;
    const char *key;
    uint64_t size;
    char *etag;
    int ret;
    char *error_text;
} S3chainProbe;

static const char *const s3chain_strong_runtime_opts[] = {
    "endpoint", "bucket", "key", "region", "access-key-id", "key-secret",
    "session-token-secret", "sslverify", "cafile", NULL,
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

static bool s3chain_settings_from_opts(BlockdevOptionsS3chain *opts,
                                       S3chainConnSettings *set,
                                       Error **errp)
{
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
    if (!s3chain_check_range("timeout", opts->has_timeout ? opts->timeout :
                             S3CHAIN_DEFAULT_TIMEOUT, 1, 3600, errp) ||
        !s3chain_check_range("retries", opts->has_retries ? opts->retries :
                             S3CHAIN_DEFAULT_RETRIES, 0, 100, errp) ||
        !s3chain_check_range("max-requests", opts->has_max_requests ?
                             opts->max_requests :
                             S3CHAIN_DEFAULT_MAX_REQUESTS, 1, 256, errp) ||
        !s3chain_check_range("request-size", opts->has_request_size ?
                             opts->request_size :
                             S3CHAIN_DEFAULT_REQUEST_SIZE, 4 * KiB, 1 * GiB,
                             errp) ||
        !s3chain_check_range("readahead", opts->has_readahead ?
                             opts->readahead : S3CHAIN_DEFAULT_READAHEAD, 0,
                             4 * GiB, errp)) {
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
        .timeout = opts->has_timeout ? opts->timeout : S3CHAIN_DEFAULT_TIMEOUT,
        .retries = opts->has_retries ? opts->retries : S3CHAIN_DEFAULT_RETRIES,
        .max_requests = opts->has_max_requests ? opts->max_requests :
                        S3CHAIN_DEFAULT_MAX_REQUESTS,
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

static void coroutine_fn s3chain_probe_entry(void *opaque)
{
    S3chainProbe *probe = opaque;
    uint8_t byte;
    QEMUIOVector qiov;
    S3chainRequest req = {
        .method = "GET",
        .key = probe->key,
        .range_offset = 0,
        .range_bytes = 1,
        .qiov = &qiov,
    };
    int ret;

    qemu_iovec_init_buf(&qiov, &byte, 1);
    ret = s3chain_co_request(probe->conn, &req);
    if (ret == -EINVAL && req.status == 416) {
        /* An empty object has no byte 0 */
        ret = 0;
        req.object_size = 0;
    }
    if (ret == 0) {
        probe->size = req.object_size;
        /* Some servers only match an unquoted ETag in If-Match */
        probe->etag = req.etag ? g_strdup(req.etag) : NULL;
        if (probe->etag) {
            g_strdelimit(probe->etag, "\"", ' ');
            g_strstrip(probe->etag);
        }
    } else {
        probe->error_text = g_steal_pointer(&req.error_text);
    }
    s3chain_request_cleanup(&req);
    probe->ret = ret;
}

static int s3chain_open(BlockDriverState *bs, QDict *options, int flags,
                        Error **errp)
{
    BDRVS3chainState *s = bs->opaque;
    S3chainConnSettings set;
    S3chainProbe probe = { .ret = -EINPROGRESS };
    int ret;

    s->opts = s3chain_visit_options(options, errp);
    if (!s->opts) {
        return -EINVAL;
    }
    if (!s3chain_settings_from_opts(s->opts, &set, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    s->conn = s3chain_conn_new(&set, bdrv_get_aio_context(bs));
    g_free(set.endpoint);
    if (set.secret_access_key) {
        memset(set.secret_access_key, 0, strlen(set.secret_access_key));
    }
    g_free(set.secret_access_key);
    g_free(set.session_token);

    probe.conn = s->conn;
    probe.key = s->opts->key;
    aio_co_enter(bdrv_get_aio_context(bs),
                 qemu_coroutine_create(s3chain_probe_entry, &probe));
    AIO_WAIT_WHILE_UNLOCKED(NULL, probe.ret == -EINPROGRESS);
    if (probe.ret < 0) {
        error_setg(errp, "s3chain: cannot open s3://%s/%s at %s: %s",
                   s->opts->bucket, s->opts->key, s->opts->endpoint,
                   probe.error_text ?: strerror(-probe.ret));
        g_free(probe.error_text);
        ret = probe.ret;
        goto fail;
    }
    s->size = probe.size;
    s->etag = probe.etag;
    trace_s3chain_open(s->opts->bucket, s->opts->key, s->size,
                       s->etag ?: "");

    if (flags & BDRV_O_RDWR) {
        ret = bdrv_apply_auto_read_only(bs, "s3chain: an image stored as "
                                        "one object is read-only", errp);
        if (ret < 0) {
            goto fail;
        }
    }

    s->reader = s3chain_reader_new(bs, s->conn, s->opts->key, s->etag,
                                   s->size,
                                   s->opts->has_request_size ?
                                   s->opts->request_size :
                                   S3CHAIN_DEFAULT_REQUEST_SIZE,
                                   s->opts->has_readahead ?
                                   s->opts->readahead :
                                   S3CHAIN_DEFAULT_READAHEAD);
    return 0;

fail:
    s3chain_conn_free(s->conn);
    s->conn = NULL;
    g_free(s->etag);
    s->etag = NULL;
    qapi_free_BlockdevOptionsS3chain(s->opts);
    s->opts = NULL;
    return ret;
}

static void s3chain_close(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    s3chain_reader_free(s->reader);
    s3chain_conn_free(s->conn);
    g_free(s->etag);
    qapi_free_BlockdevOptionsS3chain(s->opts);
}

static int s3chain_reopen_prepare(BDRVReopenState *state,
                                  BlockReopenQueue *queue, Error **errp)
{
    if (state->flags & BDRV_O_RDWR) {
        error_setg(errp, "s3chain: an image stored as one object is "
                   "read-only");
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
    return s3chain_reader_co_preadv(s->reader, offset, bytes, qiov, 0);
}

static int64_t coroutine_fn GRAPH_RDLOCK
s3chain_co_getlength(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    return s->size;
}

static int64_t coroutine_fn GRAPH_RDLOCK
s3chain_co_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVS3chainState *s = bs->opaque;

    return s->size;
}

/* A whole object holds data everywhere, zeroes or not */
static int coroutine_fn GRAPH_RDLOCK
s3chain_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                        int64_t bytes, int64_t *pnum, int64_t *map,
                        BlockDriverState **file)
{
    *pnum = bytes;
    *map = offset;
    *file = bs;
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
}

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

    .bdrv_parse_filename        = s3chain_parse_filename,
    .bdrv_open                  = s3chain_open,
    .bdrv_close                 = s3chain_close,
    .bdrv_reopen_prepare        = s3chain_reopen_prepare,
    .bdrv_refresh_limits        = s3chain_refresh_limits,

    .bdrv_co_preadv             = s3chain_co_preadv,
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
    curl_global_init(CURL_GLOBAL_ALL);
    bdrv_register(&bdrv_s3chain);
}

block_init(s3chain_block_init);
