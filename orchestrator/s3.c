/*
 * s3.c: the S3 requests the command makes itself, signed as the driver does
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"
#include "../block/s3chain-sigv4.h"

#include <curl/curl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S3_TIMEOUT_S 30
/* S3's most keys in one DeleteObjects */
#define S3_DELETE_BATCH 1000

typedef struct S3Request {
    const char *method;
    const char *key;            /* "" for the bucket itself */
    const char *query;          /* canonical already, or NULL */
    const char *data;
    size_t len;
    const char *if_none_match;  /* "*": create only */
    const char *if_match;       /* an ETag: replace only that version */
    const char *content_md5;    /* base64, of data */
    bool has_fallback;          /* the caller does without: 501 is no error */
    const char *meta;           /* a header of the response to keep */
    char **meta_value;          /* where to, NULL if it has none */
    S3cStamp *stamp;            /* the response's ETag and dates, if wanted */
} S3Request;

typedef struct S3Response {
    long status;
    GString *body;
    CURLcode curl_code;
    char curl_error[CURL_ERROR_SIZE];
} S3Response;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *opaque)
{
    g_string_append_len(opaque, ptr, size * nmemb);
    return size * nmemb;
}

static char *endpoint_host(const char *endpoint)
{
    return g_strdup(strstr(endpoint, "://") + 3);
}

static char *response_header(CURL *curl, const char *name)
{
    struct curl_header *h;

    return curl_easy_header(curl, name, 0, CURLH_HEADER, -1, &h) ==
           CURLHE_OK ? g_strdup(h->value) : NULL;
}

static void read_stamp(CURL *curl, S3cStamp *stamp)
{
    g_autofree char *modified = response_header(curl, "Last-Modified");
    g_autofree char *date = response_header(curl, "Date");

    s3c_stamp_clear(stamp);
    stamp->etag = response_header(curl, "ETag");
    if (stamp->etag) {
        /* radosgw matches If-Match only against the bare ETag */
        g_strdelimit(stamp->etag, "\"", ' ');
        g_strstrip(stamp->etag);
    }
    stamp->last_modified = modified ? curl_getdate(modified, NULL) : -1;
    stamp->server_time = date ? curl_getdate(date, NULL) : -1;
}

void s3c_stamp_clear(S3cStamp *stamp)
{
    g_clear_pointer(&stamp->etag, g_free);
    stamp->last_modified = stamp->server_time = -1;
}

static bool perform(const S3cRepo *repo, const S3Request *req,
                    S3Response *resp)
{
    g_autofree char *host = endpoint_host(repo->endpoint);
    g_autofree char *path = g_strdup_printf("/%s/%s", repo->bucket,
                                            req->key);
    g_autofree char *encoded = s3chain_uri_encode(path, true);
    g_autofree char *url = g_strdup_printf("%s%s%s%s", repo->endpoint,
                                           encoded, req->query ? "?" : "",
                                           req->query ? req->query : "");
    g_autofree char *payload = g_compute_checksum_for_data(
        G_CHECKSUM_SHA256, (const guchar *)(req->data ? req->data : ""),
        req->len);
    char amz_date[17];
    time_t now = time(NULL);
    struct tm tm;
    S3chainHeader headers[7];
    size_t nheaders = 0;
    const S3chainSigV4Key key = {
        .access_key_id = repo->access_key_id,
        .secret_access_key = repo->secret_access_key,
        .region = repo->region,
        .service = "s3",
    };
    S3chainSigV4Request sreq;
    g_autofree char *auth = NULL;
    struct curl_slist *list = NULL;
    CURL *curl;

    gmtime_r(&now, &tm);
    strftime(amz_date, sizeof(amz_date), "%Y%m%dT%H%M%SZ", &tm);
    headers[nheaders++] = (S3chainHeader){ "host", host };
    headers[nheaders++] = (S3chainHeader){ "x-amz-date", amz_date };
    headers[nheaders++] = (S3chainHeader){ "x-amz-content-sha256", payload };
    if (repo->session_token) {
        headers[nheaders++] = (S3chainHeader){ "x-amz-security-token",
                                               repo->session_token };
    }
    if (req->if_match) {
        headers[nheaders++] = (S3chainHeader){ "if-match", req->if_match };
    }
    if (req->if_none_match) {
        headers[nheaders++] = (S3chainHeader){ "if-none-match",
                                               req->if_none_match };
    }
    if (req->content_md5) {
        headers[nheaders++] = (S3chainHeader){ "content-md5",
                                               req->content_md5 };
    }
    sreq = (S3chainSigV4Request){
        .method = req->method, .path = path, .query = req->query,
        .headers = headers, .nheaders = nheaders,
        .payload_sha256 = payload,
    };
    auth = s3chain_sigv4_authorization(&key, amz_date, &sreq);

    for (size_t i = 1; i < nheaders; i++) {
        g_autofree char *h = g_strdup_printf("%s: %s", headers[i].name,
                                             headers[i].value);
        list = curl_slist_append(list, h);
    }
    {
        g_autofree char *h = g_strdup_printf("Authorization: %s", auth);
        list = curl_slist_append(list, h);
    }
    list = curl_slist_append(list, "Expect:");
    list = curl_slist_append(list, "Content-Type:");

    curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req->method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, resp->body);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, resp->curl_error);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT,
                     (long)(repo->timeout_s ? repo->timeout_s : S3_TIMEOUT_S));
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, repo->verify_tls ? 1L : 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, repo->verify_tls ? 2L : 0L);
    if (repo->cafile) {
        curl_easy_setopt(curl, CURLOPT_CAINFO, repo->cafile);
    }
    if (!strcmp(req->method, "HEAD")) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    }
    if (req->data) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->data);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->len);
    }
    resp->curl_error[0] = '\0';
    g_string_truncate(resp->body, 0);
    resp->curl_code = curl_easy_perform(curl);
    resp->status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    if (req->stamp) {
        read_stamp(curl, req->stamp);
    }
    if (req->meta) {
        g_free(*req->meta_value);
        *req->meta_value = response_header(curl, req->meta);
    }
    curl_easy_cleanup(curl);
    curl_slist_free_all(list);
    return resp->curl_code == CURLE_OK;
}

/* S3's error code in @body, or "" */
static char *error_code(const GString *body)
{
    char *code = s3chain_error_code(body->str);

    return code ? code : g_strdup("");
}

static void no_bucket(const S3cRepo *repo, GError **err)
{
    g_set_error(err, S3C_ERROR, S3C_EXIT_NO_BUCKET,
                "bucket %s does not exist at %s; create it or check --repo",
                repo->bucket, repo->endpoint);
}

static void refused_delete(const S3cRepo *repo, const char *key,
                           const char *why, GError **err)
{
    g_set_error(err, S3C_ERROR, S3C_EXIT_ACCESS_DENIED,
                "the bucket refuses to delete s3://%s/%s (%s): its policy or "
                "an Object Lock retention forbids it", repo->bucket, key,
                why);
}

/*
 * Sends @req, retrying what may pass (block/s3chain-retry.c, the driver's
 * policy too).  Returns the final response's status, or 0 with @err set.
 */
static long request(const S3cRepo *repo, const S3Request *req,
                    GString *body, GError **err)
{
    S3Response resp = { .body = body };
    S3chainOutcome outcome = S3CHAIN_OUTCOME_DONE;
    g_autofree char *code = NULL;
    const char *what = *req->key ? req->key : "(the bucket)";

    for (int attempt = 1;; attempt++) {
        bool done = perform(repo, req, &resp);

        if (!done && s3chain_curl_error_is_tls(resp.curl_code)) {
            /* the same certificate would come again */
            g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                        "TLS with %s failed: %s; give the CA that signed "
                        "its certificate with --cafile, or check the "
                        "endpoint's scheme and host", repo->endpoint,
                        resp.curl_error[0] ? resp.curl_error
                        : curl_easy_strerror(resp.curl_code));
            return 0;
        }
        if (done) {
            g_free(code);
            code = error_code(body);
            outcome = s3chain_outcome_of(resp.status, code);
        }
        if (done && outcome != S3CHAIN_OUTCOME_TRANSIENT) {
            break;
        }
        if (attempt >= (repo->attempts ? repo->attempts : S3C_ATTEMPTS) ||
            s3c_interrupted ||
            (!done && !s3chain_curl_error_is_transient(resp.curl_code))) {
            if (!done) {
                g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                            "cannot reach %s: %s", repo->endpoint,
                            resp.curl_error[0] ? resp.curl_error
                            : curl_easy_strerror(resp.curl_code));
            } else {
                g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                            "%s s3://%s/%s: HTTP %ld %s from %s; try again "
                            "later", req->method, repo->bucket, what,
                            resp.status, code, repo->endpoint);
            }
            return 0;
        }
        g_usleep(s3chain_retry_delay_ms(attempt) * 1000);
    }

    switch (outcome) {
    case S3CHAIN_OUTCOME_UNSUPPORTED:
        if (resp.status == 501 &&
            (req->if_match || req->if_none_match || req->has_fallback)) {
            /* the caller has a way without conditional writes */
            return resp.status;
        }
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s s3://%s/%s: %s does not support this request "
                    "(HTTP %ld %s)", req->method, repo->bucket, what,
                    repo->endpoint, resp.status, code);
        return 0;
    case S3CHAIN_OUTCOME_DENIED:
        if (resp.status == 403 && !strcmp(req->method, "DELETE")) {
            /* the credentials did the rest: a policy or a lock says no */
            refused_delete(repo, what, *code ? code : "HTTP 403", err);
            return 0;
        }
        g_set_error(err, S3C_ERROR, S3C_EXIT_ACCESS_DENIED,
                    "%s s3://%s/%s: access denied (%s) by %s; check the "
                    "access key and secret", req->method, repo->bucket,
                    what, *code ? code : "HTTP 403", repo->endpoint);
        return 0;
    case S3CHAIN_OUTCOME_NOT_FOUND:
        if (!strcmp(code, "NoSuchBucket")) {
            no_bucket(repo, err);
            return 0;
        }
        return resp.status;
    default:
        return resp.status;
    }
}

static bool unexpected(const S3cRepo *repo, const S3Request *req, long status,
                       GString *body, GError **err)
{
    g_autofree char *code = error_code(body);

    g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                "%s s3://%s/%s: unexpected HTTP %ld %s from %s", req->method,
                repo->bucket, req->key, status, code, repo->endpoint);
    return false;
}

/* A GET's outcome, as s3c_s3_get() tells it */
static bool get(const S3cRepo *repo, const S3Request *req, GString **body,
                GError **err)
{
    g_autoptr(GString) out = g_string_new(NULL);
    long status = request(repo, req, out, err);

    *body = NULL;
    if (status == 200) {
        *body = g_steal_pointer(&out);
        return true;
    }
    return status == 404 ? false : (status ? unexpected(repo, req, status,
                                                        out, err) : false);
}

bool s3c_s3_get(const S3cRepo *repo, const char *key, GString **body,
                GError **err)
{
    return s3c_s3_get_meta(repo, key, NULL, body, NULL, err);
}

bool s3c_s3_get_stamped(const S3cRepo *repo, const char *key,
                        GString **body, S3cStamp *stamp, GError **err)
{
    const S3Request req = { .method = "GET", .key = key, .stamp = stamp };

    return get(repo, &req, body, err);
}

bool s3c_s3_get_meta(const S3cRepo *repo, const char *key, const char *meta,
                     GString **body, char **meta_value, GError **err)
{
    const S3Request req = {
        .method = "GET", .key = key, .meta = meta, .meta_value = meta_value,
    };

    return get(repo, &req, body, err);
}

bool s3c_s3_put(const S3cRepo *repo, const char *key, const char *data,
                size_t len, GError **err)
{
    return s3c_s3_put_if(repo, key, data, len, NULL, NULL, err) ==
           S3C_PUT_DONE;
}

S3cPutOutcome s3c_s3_put_if(const S3cRepo *repo, const char *key,
                            const char *data, size_t len,
                            const char *if_match, S3cStamp *stamp,
                            GError **err)
{
    const S3Request req = {
        .method = "PUT", .key = key, .data = data, .len = len,
        .if_match = if_match && strcmp(if_match, "*") ? if_match : NULL,
        .if_none_match = if_match && !strcmp(if_match, "*") ? "*" : NULL,
        .stamp = stamp,
    };
    g_autoptr(GString) out = g_string_new(NULL);
    long status = request(repo, &req, out, err);

    switch (status) {
    case 200:
        return S3C_PUT_DONE;
    case 0:
        return S3C_PUT_FAILED;
    case 412:
        if (if_match) {
            return S3C_PUT_PRECONDITION_FAILED;
        }
        break;
    case 501:
        return S3C_PUT_UNCONDITIONAL_ONLY;
    }
    unexpected(repo, &req, status, out, err);
    return S3C_PUT_FAILED;
}

bool s3c_s3_delete(const S3cRepo *repo, const char *key, GError **err)
{
    const S3Request req = { .method = "DELETE", .key = key };
    g_autoptr(GString) out = g_string_new(NULL);
    long status = request(repo, &req, out, err);

    if (status == 204 || status == 200 || status == 404) {
        return true;
    }
    return status ? unexpected(repo, &req, status, out, err) : false;
}

/* The first <Error> of a DeleteObjects answer, as GMarkup walks it */
typedef struct DeleteErrors {
    bool in_error;
    const char *field;          /* "Key" or "Code", whose text comes */
    char *key;
    char *code;
    unsigned count;
} DeleteErrors;

static void delete_errors_start(GMarkupParseContext *ctx, const char *name,
                                const char **attr_names,
                                const char **attr_values, gpointer opaque,
                                GError **err)
{
    DeleteErrors *de = opaque;

    if (!strcmp(name, "Error")) {
        de->in_error = true;
        de->count++;
    } else if (de->in_error && de->count == 1 &&
               (!strcmp(name, "Key") || !strcmp(name, "Code"))) {
        de->field = !strcmp(name, "Key") ? "Key" : "Code";
    }
}

static void delete_errors_end(GMarkupParseContext *ctx, const char *name,
                              gpointer opaque, GError **err)
{
    DeleteErrors *de = opaque;

    de->field = NULL;
    if (!strcmp(name, "Error")) {
        de->in_error = false;
    }
}

static void delete_errors_text(GMarkupParseContext *ctx, const char *text,
                               gsize len, gpointer opaque, GError **err)
{
    DeleteErrors *de = opaque;
    char **to = !de->field ? NULL : !strcmp(de->field, "Key") ? &de->key
                                                               : &de->code;

    if (to) {
        g_free(*to);
        *to = g_strndup(text, len);
    }
}

/*
 * Deletes @keys[0..@n) with one DeleteObjects.  Returns 1 if all went,
 * 0 with @err set, or -1 if the server can't do it or failed some for
 * a reason of its own: the caller deletes them one by one.
 */
static int delete_batch(const S3cRepo *repo, char **keys, size_t n,
                        GError **err)
{
    static const GMarkupParser parser = {
        .start_element = delete_errors_start,
        .end_element = delete_errors_end,
        .text = delete_errors_text,
    };
    g_autoptr(GString) xml = g_string_new("<Delete><Quiet>true</Quiet>");
    g_autoptr(GString) out = g_string_new(NULL);
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_MD5);
    g_autofree char *md5_b64 = NULL;
    DeleteErrors de = { 0 };
    GMarkupParseContext *ctx;
    uint8_t md5[16];
    gsize md5_len = sizeof(md5);
    bool parsed;
    long status;
    int ret;

    for (size_t i = 0; i < n; i++) {
        g_autofree char *escaped = g_markup_escape_text(keys[i], -1);

        g_string_append_printf(xml, "<Object><Key>%s</Key></Object>",
                               escaped);
    }
    g_string_append(xml, "</Delete>");
    g_checksum_update(sum, (const guchar *)xml->str, xml->len);
    g_checksum_get_digest(sum, md5, &md5_len);
    md5_b64 = g_base64_encode(md5, sizeof(md5));
    {
        const S3Request req = {
            .method = "POST", .key = "", .query = "delete=",
            .data = xml->str, .len = xml->len, .content_md5 = md5_b64,
            .has_fallback = true,
        };

        status = request(repo, &req, out, err);
        if (status == 0 || status == 501) {
            return status ? -1 : 0;
        }
        if (status != 200) {
            return unexpected(repo, &req, status, out, err);
        }
    }
    ctx = g_markup_parse_context_new(&parser, 0, &de, NULL);
    parsed = g_markup_parse_context_parse(ctx, out->str, out->len, NULL) &&
             g_markup_parse_context_end_parse(ctx, NULL);
    g_markup_parse_context_free(ctx);
    if (parsed && de.count && !g_strcmp0(de.code, "AccessDenied")) {
        refused_delete(repo, de.key ? de.key : keys[0], de.code, err);
        ret = 0;
    } else {
        ret = parsed && !de.count ? 1 : -1;
    }
    g_free(de.key);
    g_free(de.code);
    return ret;
}

bool s3c_s3_delete_many(const S3cRepo *repo, GPtrArray *keys, GError **err)
{
    for (guint at = 0; at < keys->len; at += S3_DELETE_BATCH) {
        size_t n = MIN(S3_DELETE_BATCH, keys->len - at);
        char **batch = (char **)keys->pdata + at;
        int ret = delete_batch(repo, batch, n, err);

        if (ret == 0) {
            return false;
        }
        for (size_t i = 0; ret < 0 && i < n; i++) {
            if (!s3c_s3_delete(repo, batch[i], err)) {
                return false;
            }
        }
    }
    return true;
}

bool s3c_s3_check_bucket(const S3cRepo *repo, GError **err)
{
    g_autofree char *prefix = s3chain_uri_encode(repo->prefix, false);
    g_autofree char *query = g_strdup_printf("list-type=2&max-keys=1&prefix=%s",
                                             prefix);
    const S3Request req = { .method = "GET", .key = "", .query = query };
    g_autoptr(GString) out = g_string_new(NULL);
    long status = request(repo, &req, out, err);

    if (status == 200) {
        return true;
    }
    if (status == 404) {
        /* whatever error code the server gave, for the bucket itself */
        no_bucket(repo, err);
        return false;
    }
    return status ? unexpected(repo, &req, status, out, err) : false;
}

/* What a ListObjectsV2 page holds, as GMarkup walks it */
typedef struct ListPage {
    GPtrArray *objects;
    GPtrArray *prefixes;
    S3cObject *object;          /* inside <Contents> */
    bool is_listing;            /* the root is <ListBucketResult> */
    bool in_prefixes;
    bool truncated;
    char *next_token;
} ListPage;

static void list_start(GMarkupParseContext *ctx, const char *name,
                       const char **attr_names, const char **attr_values,
                       gpointer opaque, GError **err)
{
    ListPage *page = opaque;

    if (!g_markup_parse_context_get_element_stack(ctx)->next) {
        page->is_listing = !strcmp(name, "ListBucketResult");
    } else if (!strcmp(name, "Contents")) {
        /* one inside another is no listing; keep the inner one */
        g_clear_pointer(&page->object, s3c_object_free);
        page->object = g_new0(S3cObject, 1);
        page->object->last_modified = -1;
    } else if (!strcmp(name, "CommonPrefixes")) {
        page->in_prefixes = true;
    }
}

static void list_end(GMarkupParseContext *ctx, const char *name,
                     gpointer opaque, GError **err)
{
    ListPage *page = opaque;

    if (!strcmp(name, "Contents") && page->object) {
        if (page->object->key) {
            g_ptr_array_add(page->objects, g_steal_pointer(&page->object));
        } else {
            /* an entry without a key names nothing */
            g_clear_pointer(&page->object, s3c_object_free);
        }
    } else if (!strcmp(name, "CommonPrefixes")) {
        page->in_prefixes = false;
    }
}

static void list_text(GMarkupParseContext *ctx, const char *text, gsize len,
                      gpointer opaque, GError **err)
{
    ListPage *page = opaque;
    const char *e = g_markup_parse_context_get_element(ctx);

    if (page->object && !strcmp(e, "Key")) {
        g_free(page->object->key);
        page->object->key = g_strndup(text, len);
    } else if (page->object && !strcmp(e, "ETag")) {
        /* a quoted hex digest, "&quot;" already decoded by GMarkup */
        g_free(page->object->etag);
        page->object->etag = g_ascii_strdown(text, len);
        g_strdelimit(page->object->etag, "\"", ' ');
        g_strstrip(page->object->etag);
    } else if (page->object && !strcmp(e, "LastModified")) {
        g_autofree char *text_z = g_strndup(text, len);
        g_autoptr(GTimeZone) utc = g_time_zone_new_utc();
        g_autoptr(GDateTime) t = g_date_time_new_from_iso8601(text_z, utc);

        page->object->last_modified = t ? g_date_time_to_unix(t) : -1;
    } else if (page->object && !strcmp(e, "Size")) {
        g_autofree char *size = g_strndup(text, len);

        page->object->size = g_ascii_strtoull(size, NULL, 10);
    } else if (page->in_prefixes && !strcmp(e, "Prefix")) {
        g_ptr_array_add(page->prefixes, g_strndup(text, len));
    } else if (!strcmp(e, "IsTruncated")) {
        page->truncated = len == 4 && !strncmp(text, "true", 4);
    } else if (!strcmp(e, "NextContinuationToken")) {
        g_free(page->next_token);
        page->next_token = g_strndup(text, len);
    }
}

S3cListing s3c_s3_parse_listing(const char *xml, size_t len,
                                GPtrArray *objects, GPtrArray *prefixes,
                                bool *truncated, char **next_token)
{
    static const GMarkupParser parser = {
        .start_element = list_start,
        .end_element = list_end,
        .text = list_text,
    };
    ListPage page = { .objects = objects, .prefixes = prefixes };
    g_autoptr(GMarkupParseContext) ctx =
        g_markup_parse_context_new(&parser, 0, &page, NULL);
    bool parsed = g_markup_parse_context_parse(ctx, xml, len, NULL) &&
                  g_markup_parse_context_end_parse(ctx, NULL);

    g_clear_pointer(&page.object, s3c_object_free);
    *truncated = page.truncated;
    *next_token = page.next_token;
    return !parsed ? S3C_LISTING_NOT_XML
           : !page.is_listing ? S3C_LISTING_NOT_A_LISTING : S3C_LISTING_OK;
}

void s3c_object_free(S3cObject *obj)
{
    g_free(obj->key);
    g_free(obj->etag);
    g_free(obj);
}

bool s3c_s3_list(const S3cRepo *repo, const char *prefix, bool delimited,
                 GPtrArray **objects, GPtrArray **prefixes, GError **err)
{
    g_autofree char *encoded_prefix = s3chain_uri_encode(prefix, false);
    g_autoptr(GPtrArray) found = g_ptr_array_new_with_free_func(
        (GDestroyNotify)s3c_object_free);
    g_autoptr(GPtrArray) found_prefixes = g_ptr_array_new_with_free_func(
        g_free);
    g_autofree char *next_token = NULL;
    bool truncated = false;
    bool ok = true;

    do {
        g_autofree char *token = next_token ?
            s3chain_uri_encode(next_token, false) : NULL;
        g_autofree char *previous = g_steal_pointer(&next_token);
        /* parameters in the sorted order SigV4's canonical query wants */
        g_autofree char *query = g_strdup_printf(
            "%s%s%s%slist-type=2&prefix=%s",
            token ? "continuation-token=" : "", token ? token : "",
            token ? "&" : "", delimited ? "delimiter=%2F&" : "",
            encoded_prefix);
        const S3Request req = { .method = "GET", .key = "", .query = query };
        g_autoptr(GString) out = g_string_new(NULL);
        long status = request(repo, &req, out, err);

        if (status != 200) {
            ok = status == 404 ? (no_bucket(repo, err), false)
                 : status ? unexpected(repo, &req, status, out, err) : false;
            break;
        }
        switch (s3c_s3_parse_listing(out->str, out->len, found,
                                     found_prefixes, &truncated,
                                     &next_token)) {
        case S3C_LISTING_NOT_XML:
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "listing s3://%s/%s: %s sent no valid XML",
                        repo->bucket, prefix, repo->endpoint);
            ok = false;
            break;
        case S3C_LISTING_NOT_A_LISTING:
            /* a web server's page is no empty repository */
            g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                        "listing s3://%s/%s: %s answered with no S3 "
                        "ListBucketResult; is it an S3 endpoint?",
                        repo->bucket, prefix, repo->endpoint);
            ok = false;
            break;
        case S3C_LISTING_OK:
            /* a server that sends the same page again would never end */
            if (truncated && !g_strcmp0(next_token, previous)) {
                g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                            "listing s3://%s/%s: %s sent the same "
                            "continuation token twice", repo->bucket,
                            prefix, repo->endpoint);
                ok = false;
            }
            break;
        }
    } while (ok && truncated && next_token);

    if (!ok) {
        return false;
    }
    *objects = g_steal_pointer(&found);
    if (prefixes) {
        *prefixes = g_steal_pointer(&found_prefixes);
    }
    return true;
}
