/*
 * s3chain: AWS Signature Version 4 for S3 requests
 *
 * libcurl's own CURLOPT_AWS_SIGV4 signs many S3 requests wrongly before
 * 8.x (no x-amz-content-sha256, no query canonicalisation), and the
 * images that carry qemu-storage-daemon ship such curls; so sign here.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "s3chain-sigv4.h"

static bool is_unreserved(char c)
{
    return g_ascii_isalnum(c) || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

char *s3chain_uri_encode(const char *s, bool keep_slash)
{
    GString *out = g_string_sized_new(strlen(s) + 16);

    for (; *s; s++) {
        if (is_unreserved(*s) || (keep_slash && *s == '/')) {
            g_string_append_c(out, *s);
        } else {
            g_string_append_printf(out, "%%%02X", (unsigned char)*s);
        }
    }
    return g_string_free(out, false);
}

typedef struct CanonicalHeader {
    char *name;
    GString *value;
} CanonicalHeader;

static void canonical_header_free(gpointer p)
{
    CanonicalHeader *h = p;

    g_free(h->name);
    g_string_free(h->value, true);
    g_free(h);
}

static gint canonical_header_cmp(gconstpointer a, gconstpointer b)
{
    const CanonicalHeader *ha = *(CanonicalHeader * const *)a;
    const CanonicalHeader *hb = *(CanonicalHeader * const *)b;

    return strcmp(ha->name, hb->name);
}

/* Trims @value and folds each run of spaces into one, as SigV4 wants. */
static void append_trimmed(GString *out, const char *value)
{
    bool pending_space = false;

    while (*value == ' ' || *value == '\t') {
        value++;
    }
    for (; *value; value++) {
        if (*value == ' ' || *value == '\t' || *value == '\n' ||
            *value == '\r') {
            pending_space = true;
            continue;
        }
        if (pending_space) {
            g_string_append_c(out, ' ');
            pending_space = false;
        }
        g_string_append_c(out, *value);
    }
}

typedef struct QueryParam {
    char *key;
    char *value;
} QueryParam;

static void query_param_clear(gpointer p)
{
    QueryParam *q = p;

    g_free(q->key);
    g_free(q->value);
}

static gint query_param_cmp(gconstpointer a, gconstpointer b)
{
    const QueryParam *qa = a, *qb = b;
    int r = strcmp(qa->key, qb->key);

    return r ? r : strcmp(qa->value, qb->value);
}

/* Decodes what is on the wire and re-encodes it the one way SigV4 wants. */
static char *reencode(const char *s, size_t len)
{
    g_autofree char *raw = g_strndup(s, len);
    g_autofree char *plus_as_space = g_strdelimit(g_strdup(raw), "+", ' ');
    g_autofree char *decoded = g_uri_unescape_string(plus_as_space, NULL);

    return s3chain_uri_encode(decoded ? decoded : raw, false);
}

static void append_canonical_query(GString *out, const char *query)
{
    g_autoptr(GArray) params = g_array_new(false, true, sizeof(QueryParam));
    const char *p = query;

    g_array_set_clear_func(params, query_param_clear);
    while (p && *p) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        QueryParam param;

        if (len) {
            if (eq) {
                param.key = reencode(p, eq - p);
                param.value = reencode(eq + 1, p + len - eq - 1);
            } else {
                param.key = reencode(p, len);
                param.value = g_strdup("");
            }
            g_array_append_val(params, param);
        }
        p += len;
        if (*p == '&') {
            p++;
        }
    }
    g_array_sort(params, query_param_cmp);
    for (guint i = 0; i < params->len; i++) {
        QueryParam *param = &g_array_index(params, QueryParam, i);

        g_string_append_printf(out, "%s%s=%s", i ? "&" : "", param->key,
                               param->value);
    }
}

char *s3chain_sigv4_canonical_request(const S3chainSigV4Request *req,
                                      char **signed_headers)
{
    GString *out = g_string_new(req->method);
    g_autoptr(GPtrArray) headers =
        g_ptr_array_new_with_free_func(canonical_header_free);
    g_autoptr(GHashTable) by_name = g_hash_table_new(g_str_hash, g_str_equal);
    GString *names = g_string_new(NULL);
    g_autofree char *path = s3chain_uri_encode(req->path, true);

    g_string_append_printf(out, "\n%s\n", path);
    append_canonical_query(out, req->query);
    g_string_append_c(out, '\n');

    for (size_t i = 0; i < req->nheaders; i++) {
        g_autofree char *name = g_ascii_strdown(req->headers[i].name, -1);
        CanonicalHeader *h = g_hash_table_lookup(by_name, name);

        if (h) {
            g_string_append_c(h->value, ',');
        } else {
            h = g_new0(CanonicalHeader, 1);
            h->name = g_steal_pointer(&name);
            h->value = g_string_new(NULL);
            g_ptr_array_add(headers, h);
            g_hash_table_insert(by_name, h->name, h);
        }
        append_trimmed(h->value, req->headers[i].value);
    }
    g_ptr_array_sort(headers, canonical_header_cmp);

    for (guint i = 0; i < headers->len; i++) {
        CanonicalHeader *h = g_ptr_array_index(headers, i);

        g_string_append_printf(out, "%s:%s\n", h->name, h->value->str);
        g_string_append_printf(names, "%s%s", i ? ";" : "", h->name);
    }
    g_string_append_printf(out, "\n%s\n%s", names->str, req->payload_sha256);
    *signed_headers = g_string_free(names, false);
    return g_string_free(out, false);
}

char *s3chain_sigv4_string_to_sign(const char *amz_date, const char *region,
                                   const char *service,
                                   const char *canonical_request)
{
    char hash[2 * S3CHAIN_SHA256_LEN + 1];

    s3chain_sha256_hex(canonical_request, strlen(canonical_request), hash);
    return g_strdup_printf("AWS4-HMAC-SHA256\n%s\n%.8s/%s/%s/aws4_request\n%s",
                           amz_date, amz_date, region, service, hash);
}

char *s3chain_sigv4_signature(const S3chainSigV4Key *key,
                              const char *amz_date,
                              const char *string_to_sign)
{
    g_autofree char *secret = g_strconcat("AWS4", key->secret_access_key,
                                          NULL);
    g_autofree char *date = g_strndup(amz_date, 8);
    const char *scope[] = {
        date, key->region, key->service, "aws4_request", string_to_sign,
    };
    uint8_t mac[S3CHAIN_SHA256_LEN];
    GString *hex;

    /* each step's key is the last step's MAC, the first the secret's */
    s3chain_hmac_sha256((const uint8_t *)secret, strlen(secret), scope[0],
                        strlen(scope[0]), mac);
    for (size_t i = 1; i < G_N_ELEMENTS(scope); i++) {
        uint8_t next[S3CHAIN_SHA256_LEN];

        s3chain_hmac_sha256(mac, sizeof(mac), scope[i], strlen(scope[i]),
                            next);
        memcpy(mac, next, sizeof(mac));
    }
    hex = g_string_sized_new(2 * sizeof(mac) + 1);
    for (size_t i = 0; i < sizeof(mac); i++) {
        g_string_append_printf(hex, "%02x", mac[i]);
    }
    return g_string_free(hex, false);
}

char *s3chain_sigv4_authorization(const S3chainSigV4Key *key,
                                  const char *amz_date,
                                  const S3chainSigV4Request *req)
{
    g_autofree char *signed_headers = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *to_sign = NULL;
    g_autofree char *signature = NULL;

    canonical = s3chain_sigv4_canonical_request(req, &signed_headers);
    to_sign = s3chain_sigv4_string_to_sign(amz_date, key->region,
                                           key->service, canonical);
    signature = s3chain_sigv4_signature(key, amz_date, to_sign);
    return g_strdup_printf("AWS4-HMAC-SHA256 Credential=%s/%.8s/%s/%s/"
                           "aws4_request, SignedHeaders=%s, Signature=%s",
                           key->access_key_id, amz_date, key->region,
                           key->service, signed_headers, signature);
}
