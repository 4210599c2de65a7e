/*
 * s3chain: the s3chain:// filename syntax
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qemu/cutils.h"
#include "s3chain.h"

/*
 * Options a URL may carry.  Tuning options are left out of built URLs:
 * a backing image gets the defaults, or what its parent's opener sets.
 */
static const char *const url_options[] = {
    "region", "access-key-id", "key-secret", "session-token-secret",
    "sslverify", "cafile", "timeout", "retries", "request-size",
    "readahead", "max-requests", "buffer-size", "compress-level",
    "encrypt-key-secret", NULL,
};

static char *url_decode(const char *s, size_t len, Error **errp)
{
    g_autofree char *part = g_strndup(s, len);
    char *decoded = g_uri_unescape_string(part, NULL);

    if (!decoded) {
        error_setg(errp, "s3chain: bad percent-encoding in '%s'", part);
    }
    return decoded;
}

static bool parse_option(const char *item, size_t len, QDict *options,
                         bool *tls, Error **errp)
{
    const char *eq = memchr(item, '=', len);
    g_autofree char *name = NULL;
    g_autofree char *value = NULL;

    if (!eq) {
        error_setg(errp, "s3chain: URL option '%.*s' has no value; "
                   "write it as NAME=VALUE", (int)len, item);
        return false;
    }
    name = g_strndup(item, eq - item);
    value = url_decode(eq + 1, item + len - eq - 1, errp);
    if (!value) {
        return false;
    }
    if (!strcmp(name, "tls")) {
        if (!strcmp(value, "on")) {
            *tls = true;
        } else if (!strcmp(value, "off")) {
            *tls = false;
        } else {
            error_setg(errp, "s3chain: URL option tls must be on or off, "
                       "not '%s'", value);
            return false;
        }
        return true;
    }
    if (!g_strv_contains(url_options, name)) {
        error_setg(errp, "s3chain: unknown URL option '%s'; see the "
                   "s3chain driver's options", name);
        return false;
    }
    if (qdict_haskey(options, name)) {
        error_setg(errp, "s3chain: option '%s' given twice", name);
        return false;
    }
    qdict_put_str(options, name, value);
    return true;
}

bool s3chain_parse_url(const char *url, QDict *options, Error **errp)
{
    const char *prefix = S3CHAIN_PROTOCOL "://";
    const char *p, *authority_end, *host_end, *bucket_end;
    bool tls = true;
    g_autofree char *host = NULL;
    g_autofree char *bucket = NULL;
    g_autofree char *key = NULL;
    g_autofree char *endpoint = NULL;

    if (!g_str_has_prefix(url, prefix)) {
        error_setg(errp, "s3chain: URL '%s' must start with %s", url, prefix);
        return false;
    }
    p = url + strlen(prefix);
    authority_end = strchr(p, '/');
    if (!authority_end) {
        goto bad_form;
    }
    host_end = memchr(p, ';', authority_end - p);
    if (!host_end) {
        host_end = authority_end;
    }
    if (host_end == p) {
        goto bad_form;
    }
    host = g_strndup(p, host_end - p);

    p = host_end;
    while (p < authority_end) {
        const char *item = p + 1;
        const char *item_end = memchr(item, ';', authority_end - item);

        if (!item_end) {
            item_end = authority_end;
        }
        if (!parse_option(item, item_end - item, options, &tls, errp)) {
            return false;
        }
        p = item_end;
    }

    p = authority_end + 1;
    bucket_end = strchr(p, '/');
    if (!bucket_end || bucket_end == p || !bucket_end[1]) {
        goto bad_form;
    }
    bucket = url_decode(p, bucket_end - p, errp);
    if (bucket && strchr(bucket, '/')) {
        /* an escaped '/' would move the split between bucket and key */
        error_setg(errp, "s3chain: bucket name '%s' must not contain '/'",
                   bucket);
        return false;
    }
    key = bucket ? url_decode(bucket_end + 1, strlen(bucket_end + 1), errp)
                 : NULL;
    if (!key) {
        return false;
    }

    endpoint = g_strdup_printf("%s://%s", tls ? "https" : "http", host);
    qdict_put_str(options, "endpoint", endpoint);
    qdict_put_str(options, "bucket", bucket);
    qdict_put_str(options, "key", key);
    return true;

bad_form:
    error_setg(errp, "s3chain: URL '%s' is not of the form "
               "s3chain://HOST[:PORT][;OPTION=VALUE]/BUCKET/KEY", url);
    return false;
}

static void append_option(GString *url, const char *name, const char *value)
{
    g_autofree char *encoded = s3chain_uri_encode(value, false);

    g_string_append_printf(url, ";%s=%s", name, encoded);
}

char *s3chain_build_url(const BlockdevOptionsS3chain *opts, const char *key)
{
    GString *url = g_string_new(S3CHAIN_PROTOCOL "://");
    const char *host = opts->endpoint;
    bool tls = !g_str_has_prefix(host, "http://");
    g_autofree char *bucket = s3chain_uri_encode(opts->bucket, false);
    g_autofree char *encoded_key = s3chain_uri_encode(key, true);

    host = strstr(host, "://") ? strstr(host, "://") + 3 : host;
    g_string_append_len(url, host, strcspn(host, "/"));
    if (!tls) {
        append_option(url, "tls", "off");
    }
    if (opts->region) {
        append_option(url, "region", opts->region);
    }
    if (opts->access_key_id) {
        append_option(url, "access-key-id", opts->access_key_id);
    }
    if (opts->key_secret) {
        append_option(url, "key-secret", opts->key_secret);
    }
    if (opts->session_token_secret) {
        append_option(url, "session-token-secret", opts->session_token_secret);
    }
    if (opts->has_sslverify && !opts->sslverify) {
        append_option(url, "sslverify", "off");
    }
    if (opts->cafile) {
        append_option(url, "cafile", opts->cafile);
    }
    if (opts->encrypt_key_secret) {
        append_option(url, "encrypt-key-secret", opts->encrypt_key_secret);
    }
    g_string_append_printf(url, "/%s/%s", bucket, encoded_key);
    return g_string_free(url, false);
}
