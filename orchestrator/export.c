/*
 * export.c: a client of KubeVirt's export server for pull-mode backups:
 * a volume's map, a page at a time, and its data in ranged GETs, many at
 * once over libcurl's multi interface, with the export's token and CA
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <curl/curl.h>
#include <poll.h>
#include <string.h>

#define TOKEN_HEADER "x-kubevirt-export-token"
/* A page of 512 extents is about 64 KiB of JSON */
#define MAP_PAGE_MAX_BYTES (16 * 1024 * 1024)
/* More extents than a 64 TiB disk at 4 MiB each: the map is hostile */
#define MAP_MAX_EXTENTS (16 * 1024 * 1024)
/* Past any disk a VM has; offsets above it are refused before adding */
#define DISK_MAX_BYTES (1ULL << 60)
/*
 * The type of an extent: a full backup's map has NBD's base:allocation
 * flags (1 hole, 2 zero), an incremental one's 1 for dirty and 2 for zero
 */
#define FLAG_DIRTY 1
#define FLAG_ZERO 2
#define ERROR_BODY_MAX 200
#define CONNECT_TIMEOUT_S 30
/* a transfer slower than this for this long is dropped and tried again */
#define LOW_SPEED_BYTES 1024
#define LOW_SPEED_S 60
#define MAX_CONNECTIONS 16

struct S3cExport {
    char *volume;
    char *map_url;
    char *data_url;
    struct curl_slist *headers;     /* the token: never logged */
    char *ca_pem;                   /* the backup's CA, or NULL */
    char *ca_file;
    CURLM *multi;
    GPtrArray *reads;               /* of ExportRead: in flight or waiting */
    bool answered;                  /* the server's TLS has verified */
};

typedef struct ExportRead {
    S3cExport *export;
    CURL *curl;
    char *buf;
    uint64_t offset;
    uint32_t length;
    uint32_t got;
    bool too_long;                  /* the server sent more than asked */
    GString *error_body;            /* a failure's body, cut short */
    int attempt;
    int64_t retry_at;               /* monotonic µs; 0 while in flight */
    S3cExportDone done;
    void *opaque;
    char curl_error[CURL_ERROR_SIZE];
} ExportRead;

static void set_tls(S3cExport *e, CURL *curl)
{
    if (e->ca_file) {
        curl_easy_setopt(curl, CURLOPT_CAINFO, e->ca_file);
    } else if (e->ca_pem) {
        struct curl_blob blob = {
            .data = e->ca_pem, .len = strlen(e->ca_pem),
            .flags = CURL_BLOB_COPY,
        };

        curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &blob);
    }
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
}

static CURL *new_request(S3cExport *e, const char *url, char *curl_error)
{
    CURL *curl = curl_easy_init();

    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, e->headers);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, (long)LOW_SPEED_BYTES);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)LOW_SPEED_S);
    set_tls(e, curl);
    curl_error[0] = '\0';
    return curl;
}

/* @base with "offset" and "length" added to its query */
static char *range_url(const char *base, uint64_t offset, uint64_t length)
{
    const char *sep = strchr(base, '?') ? "&" : "?";

    if (!length) {
        return g_strdup_printf("%s%soffset=%" G_GUINT64_FORMAT, base, sep,
                               offset);
    }
    return g_strdup_printf("%s%soffset=%" G_GUINT64_FORMAT "&length=%"
                           G_GUINT64_FORMAT, base, sep, offset, length);
}

/* What the body of a refusal says, on one line */
static char *body_excerpt(const GString *body)
{
    g_autofree char *text = g_strndup(body ? body->str : "",
                                      body ? MIN(body->len, ERROR_BODY_MAX)
                                           : 0);

    g_strdelimit(g_strstrip(text), "\r\n\t", ' ');
    return *text ? g_strdup_printf(": %s", text) : g_strdup("");
}

/*
 * Whether another try may pass; if not, *@err says why in words a
 * controller acts on.  @what names the request ("the map of volume V at
 * offset N").
 */
static bool may_retry(S3cExport *e, const char *what, CURLcode rc,
                      const char *curl_error, long status,
                      const GString *body, GError **err)
{
    g_autofree char *said = body_excerpt(body);

    /*
     * Once the server has answered, its certificate verified: a handshake
     * cut short is the server going away, which another try may outlast
     */
    if (rc != CURLE_OK && s3chain_curl_error_is_tls(rc) &&
        !(e->answered && rc == CURLE_SSL_CONNECT_ERROR)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "%s: TLS with the export server failed: %s; its "
                    "certificate must be signed by the backup's CA "
                    "(status.endpointCert, or --export-ca-file)", what,
                    *curl_error ? curl_error : curl_easy_strerror(rc));
        return false;
    }
    if (rc != CURLE_OK) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                    "%s: cannot read from the export server: %s", what,
                    *curl_error ? curl_error : curl_easy_strerror(rc));
        return s3chain_curl_error_is_transient(rc) ||
               rc == CURLE_SSL_CONNECT_ERROR;
    }
    if (status == 401 || status == 403) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_ACCESS_DENIED,
                    "%s: the export server refused the token (HTTP %ld%s); "
                    "give the token of the VirtualMachineBackup's "
                    "spec.tokenSecretRef with --export-token-file", what,
                    status, said);
        return false;
    }
    if (status == 404 || status == 410) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "%s: the export is gone (HTTP %ld%s): the "
                    "VirtualMachineBackup completed, was deleted or its "
                    "ttlDuration ran out; create a new one", what, status,
                    said);
        return false;
    }
    g_set_error(err, S3C_ERROR, s3chain_status_is_transient(status)
                ? S3C_EXIT_TRANSIENT : S3C_EXIT_INTERNAL,
                "%s: HTTP %ld from the export server%s", what, status, said);
    return s3chain_status_is_transient(status);
}

static size_t collect(char *data, size_t size, size_t n, void *opaque)
{
    GString *body = opaque;

    if (body->len + size * n > MAP_PAGE_MAX_BYTES) {
        return 0;
    }
    g_string_append_len(body, data, size * n);
    return size * n;
}

/*
 * GETs @url into @body, trying again what may pass.  A 200 is true;
 * everything else is false with *@err.
 */
static bool get_page(S3cExport *e, const char *url, const char *what,
                     GString *body, CURLcode *rc, GError **err)
{
    for (int attempt = 1;; attempt++) {
        char curl_error[CURL_ERROR_SIZE];
        CURL *curl = new_request(e, url, curl_error);
        long status = 0;
        g_autoptr(GError) failure = NULL;

        g_string_truncate(body, 0);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
        *rc = curl_easy_perform(curl);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(curl);
        if (*rc == CURLE_WRITE_ERROR) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "%s: the export server sent more than %d MiB",
                        what, MAP_PAGE_MAX_BYTES >> 20);
            return false;
        }
        e->answered |= *rc == CURLE_OK;
        if (*rc == CURLE_OK && status == 200) {
            return true;
        }
        if (!may_retry(e, what, *rc, curl_error, status, body, &failure) ||
            attempt >= S3C_ATTEMPTS || s3c_interrupted) {
            g_propagate_error(err, g_steal_pointer(&failure));
            return false;
        }
        g_usleep(s3chain_retry_delay_ms(attempt) * 1000);
    }
}

static bool map_fault(GError **err, const char *volume, uint64_t at,
                      const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static bool map_fault(GError **err, const char *volume, uint64_t at,
                      const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                "volume %s: the export's map page at offset %"
                G_GUINT64_FORMAT " %s", volume, at, why);
    return false;
}

/* A field of an extent: a whole number from 0 to DISK_MAX_BYTES */
static bool extent_number(json_object *extent, const char *name,
                          uint64_t *out)
{
    json_object *v;
    int64_t n;

    if (!json_object_object_get_ex(extent, name, &v) ||
        !json_object_is_type(v, json_type_int)) {
        return false;
    }
    n = json_object_get_int64(v);
    if (n < 0 || (uint64_t)n > DISK_MAX_BYTES) {
        return false;
    }
    *out = n;
    return true;
}

static void add_extent(GArray *out, uint64_t offset, uint64_t length,
                       bool zero)
{
    S3cExtent *last = out->len ? &g_array_index(out, S3cExtent, out->len - 1)
                               : NULL;
    S3cExtent e = { .offset = offset, .length = length, .zero = zero };

    if (last && last->zero == zero && last->offset + last->length == offset) {
        last->length += length;
    } else {
        g_array_append_val(out, e);
    }
}

bool s3c_export_parse_page(const char *volume, const char *body, size_t len,
                           bool incremental, uint64_t at, GArray *whole,
                           GArray *changed, uint64_t *end, bool *more,
                           GError **err)
{
    json_tokener *tok = json_tokener_new();
    json_object *page = json_tokener_parse_ex(tok, body, len);
    json_object *extents, *next_offset;
    bool ok = false;

    *end = at;
    if (!page || json_tokener_get_error(tok) != json_tokener_success) {
        map_fault(err, volume, at, "is not JSON (%zu bytes)", len);
        goto out;
    }
    if (!json_object_is_type(page, json_type_object) ||
        !json_object_object_get_ex(page, "extents", &extents) ||
        !json_object_is_type(extents, json_type_array)) {
        map_fault(err, volume, at, "has no list of extents");
        goto out;
    }
    for (size_t i = 0; i < json_object_array_length(extents); i++) {
        json_object *x = json_object_array_get_idx(extents, i);
        uint64_t offset, length, type;

        if (!json_object_is_type(x, json_type_object) ||
            !extent_number(x, "offset", &offset) ||
            !extent_number(x, "length", &length) ||
            !extent_number(x, "type", &type)) {
            map_fault(err, volume, at, "has an extent without a valid "
                      "offset, length and type (item %zu)", i);
            goto out;
        }
        if (offset != *end || !length || offset + length > DISK_MAX_BYTES) {
            map_fault(err, volume, at, "has extent [%" G_GUINT64_FORMAT
                      ", +%" G_GUINT64_FORMAT ") where the map is at %"
                      G_GUINT64_FORMAT, offset, length, *end);
            goto out;
        }
        *end += length;
        /* a new image reads zeroes; a child must hide its parent's */
        if (!(type & FLAG_ZERO)) {
            add_extent(whole, offset, length, false);
        }
        if (incremental && (type & FLAG_DIRTY)) {
            add_extent(changed, offset, length, type & FLAG_ZERO);
        }
        if (whole->len > MAP_MAX_EXTENTS || changed->len > MAP_MAX_EXTENTS) {
            map_fault(err, volume, at, "brings the map past %d extents",
                      MAP_MAX_EXTENTS);
            goto out;
        }
    }
    *more = json_object_object_get_ex(page, "next_offset", &next_offset) &&
            !json_object_is_type(next_offset, json_type_null);
    if (*more && (!json_object_is_type(next_offset, json_type_int) ||
                  json_object_get_int64(next_offset) < 0 ||
                  (uint64_t)json_object_get_int64(next_offset) != *end ||
                  *end == at)) {
        map_fault(err, volume, at, "ends at %" G_GUINT64_FORMAT " but says "
                  "the next page starts at %s", *end,
                  json_object_to_json_string(next_offset));
        goto out;
    }
    ok = true;
out:
    json_object_put(page);
    json_tokener_free(tok);
    return ok;
}

/*
 * The disk's last sector is where the map says: KubeVirt's export server
 * answers a read past the end of the disk with nothing at all, or with
 * fewer bytes than asked
 */
static bool read_last_sector(S3cExport *e, uint64_t size, GError **err)
{
    g_autofree char *url = range_url(e->data_url, size - 512, 512);
    g_autofree char *what = g_strdup_printf(
        "volume %s: data at offset %" G_GUINT64_FORMAT, e->volume,
        size - 512);
    g_autoptr(GString) body = g_string_new(NULL);
    g_autoptr(GError) local = NULL;
    CURLcode rc;

    if (!get_page(e, url, what, body, &rc, &local) &&
        rc != CURLE_GOT_NOTHING) {
        g_propagate_error(err, g_steal_pointer(&local));
        return false;
    }
    if (local || body->len != 512) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "%s: the export server sent %s of the disk's last "
                    "sector: the map names bytes past the disk's end", what,
                    local ? "nothing" : body->len < 512 ? "less" : "more");
        return false;
    }
    return true;
}

bool s3c_export_map(S3cExport *e, bool incremental, GArray *whole,
                    GArray *changed, uint64_t *size, GError **err)
{
    g_autoptr(GString) body = g_string_new(NULL);
    bool more = true;

    for (*size = 0; more;) {
        uint64_t at = *size;
        g_autofree char *url = range_url(e->map_url, at, 0);
        g_autofree char *what = g_strdup_printf(
            "volume %s: the map at offset %" G_GUINT64_FORMAT, e->volume, at);
        CURLcode rc;

        if (!get_page(e, url, what, body, &rc, err) ||
            !s3c_export_parse_page(e->volume, body->str, body->len,
                                   incremental, at, whole, changed, size,
                                   &more, err)) {
            return false;
        }
        if (s3c_interrupted) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                        "interrupted by a signal while mapping volume %s",
                        e->volume);
            return false;
        }
    }
    if (!*size || *size % 512) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                    "volume %s: the export's map ends at %" G_GUINT64_FORMAT
                    ", which is no disk's size", e->volume, *size);
        return false;
    }
    return read_last_sector(e, *size, err);
}

static size_t read_into(char *data, size_t size, size_t n, void *opaque)
{
    ExportRead *r = opaque;
    long status = 0;

    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        g_string_append_len(r->error_body, data,
                            MIN(size * n, ERROR_BODY_MAX -
                                MIN(r->error_body->len, ERROR_BODY_MAX)));
        return size * n;
    }
    if (r->got + size * n > r->length) {
        r->too_long = true;
        return 0;
    }
    memcpy(r->buf + r->got, data, size * n);
    r->got += size * n;
    return size * n;
}

static void start_read(ExportRead *r)
{
    g_autofree char *url = range_url(r->export->data_url, r->offset,
                                     r->length);

    r->got = 0;
    r->retry_at = 0;
    g_string_truncate(r->error_body, 0);
    r->curl = new_request(r->export, url, r->curl_error);
    curl_easy_setopt(r->curl, CURLOPT_WRITEFUNCTION, read_into);
    curl_easy_setopt(r->curl, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->curl, CURLOPT_PRIVATE, r);
    curl_multi_add_handle(r->export->multi, r->curl);
}

static void read_free(gpointer p)
{
    ExportRead *r = p;

    if (r->curl) {
        curl_multi_remove_handle(r->export->multi, r->curl);
        curl_easy_cleanup(r->curl);
    }
    g_string_free(r->error_body, true);
    g_free(r);
}

void s3c_export_read(S3cExport *e, char *buf, uint32_t length,
                     uint64_t offset, S3cExportDone done, void *opaque)
{
    ExportRead *r = g_new0(ExportRead, 1);

    r->export = e;
    r->buf = buf;
    r->offset = offset;
    r->length = length;
    r->done = done;
    r->opaque = opaque;
    r->attempt = 1;
    r->error_body = g_string_new(NULL);
    g_ptr_array_add(e->reads, r);
    start_read(r);
}

/* A read came back: done, tried again later, or failed for good */
static void read_ended(ExportRead *r, CURLcode rc)
{
    S3cExport *e = r->export;
    long status = 0;
    GError *failure = NULL;
    S3cExportDone done;
    void *opaque;

    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
    e->answered |= rc == CURLE_OK;
    curl_multi_remove_handle(e->multi, r->curl);
    curl_easy_cleanup(r->curl);
    r->curl = NULL;
    if (r->too_long || rc != CURLE_OK || status != 200 ||
        r->got < r->length) {
        g_autofree char *what = g_strdup_printf(
            "volume %s: data at offset %" G_GUINT64_FORMAT, e->volume,
            r->offset);

        if (r->too_long) {
            g_set_error(&failure, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "%s: the export server sent more than the %u bytes "
                        "asked for", what, r->length);
        } else if (rc == CURLE_OK && status == 200) {
            g_set_error(&failure, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "%s: the export server sent %u of %u bytes: the "
                        "map names bytes past the disk's end", what, r->got,
                        r->length);
        } else if (may_retry(e, what, rc, r->curl_error, status,
                             r->error_body, &failure) &&
                   r->attempt < S3C_ATTEMPTS && !s3c_interrupted) {
            g_clear_error(&failure);
            r->retry_at = g_get_monotonic_time() +
                          s3chain_retry_delay_ms(r->attempt++) * 1000;
            return;
        }
    }
    done = r->done;
    opaque = r->opaque;
    g_ptr_array_remove_fast(e->reads, r);
    done(opaque, failure);
}

bool s3c_export_wait(S3cExport *e, struct pollfd *also, int timeout_ms,
                     GError **err)
{
    int64_t now = g_get_monotonic_time();
    struct curl_waitfd wait = { .fd = also->fd, .events = also->events };
    CURLMsg *msg;
    int left, running;

    for (guint i = 0; i < e->reads->len; i++) {
        ExportRead *r = g_ptr_array_index(e->reads, i);

        if (r->retry_at && r->retry_at <= now) {
            start_read(r);
        } else if (r->retry_at) {
            timeout_ms = MIN(timeout_ms, (r->retry_at - now) / 1000 + 1);
        }
    }
    if (curl_multi_wait(e->multi, &wait, 1, timeout_ms, NULL) != CURLM_OK) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "volume %s: waiting for the export server failed",
                    e->volume);
        return false;
    }
    also->revents = wait.revents;
    curl_multi_perform(e->multi, &running);
    while ((msg = curl_multi_info_read(e->multi, &left))) {
        ExportRead *r;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        read_ended(r, msg->data.result);
    }
    return true;
}

void s3c_export_cancel(S3cExport *e)
{
    g_ptr_array_set_size(e->reads, 0);
}

S3cExport *s3c_export_new(const char *volume, const char *map_url,
                          const char *data_url, const char *token,
                          const char *ca_pem, const char *ca_file)
{
    S3cExport *e = g_new0(S3cExport, 1);
    g_autofree char *header = g_strdup_printf(TOKEN_HEADER ": %s", token);

    e->volume = g_strdup(volume);
    e->map_url = g_strdup(map_url);
    e->data_url = g_strdup(data_url);
    e->headers = curl_slist_append(NULL, header);
    memset(header, 0, strlen(header));
    e->ca_pem = g_strdup(ca_pem);
    e->ca_file = g_strdup(ca_file);
    e->multi = curl_multi_init();
    curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      (long)MAX_CONNECTIONS);
    e->reads = g_ptr_array_new_with_free_func(read_free);
    return e;
}

void s3c_export_free(S3cExport *e)
{
    if (!e) {
        return;
    }
    g_ptr_array_unref(e->reads);
    curl_multi_cleanup(e->multi);
    curl_slist_free_all(e->headers);
    g_free(e->volume);
    g_free(e->map_url);
    g_free(e->data_url);
    g_free(e->ca_pem);
    g_free(e->ca_file);
    g_free(e);
}
