/*
 * Tests of s3chain's SigV4 signer against AWS's published vectors
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "crypto/init.h"
#include "crypto/hash.h"
#include "../../block/s3chain.h"

typedef struct ParsedRequest {
    char *method;
    char *path;
    char *query;
    GArray *headers;            /* S3chainHeader, strings owned */
    char *body;
} ParsedRequest;

/* Sections of one vector: file name -> exact text */
typedef GHashTable Vector;

static const char *section(Vector *vector, const char *name)
{
    const char *text = g_hash_table_lookup(vector, name);

    g_assert_nonnull(text);
    return text;
}

/*
 * Parses the vectors file: "=== NAME" starts a vector, "--- FILE" one of
 * its sections, whose text runs to the next marker.
 */
static GHashTable *load_vectors(const char *path)
{
    GHashTable *vectors = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                g_free,
                                                (GDestroyNotify)
                                                g_hash_table_unref);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    g_autoptr(GPtrArray) body = g_ptr_array_new();
    Vector *vector = NULL;
    char *file = NULL;
    guint n;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    n = g_strv_length(lines);
    /* the file's last newline ends the last section, not a line of it */
    if (n && !lines[n - 1][0]) {
        n--;
    }
    for (guint i = 0; i <= n; i++) {
        const char *line = i < n ? lines[i] : "=== ";

        if (g_str_has_prefix(line, "=== ") || g_str_has_prefix(line, "--- ")) {
            if (file) {
                g_ptr_array_add(body, NULL);
                g_hash_table_insert(vector, file,
                                    g_strjoinv("\n", (char **)body->pdata));
                g_ptr_array_set_size(body, 0);
                file = NULL;
            }
            if (line[0] == '=' && i < n) {
                vector = g_hash_table_new_full(g_str_hash, g_str_equal,
                                               g_free, g_free);
                g_hash_table_insert(vectors, g_strdup(line + 4), vector);
            } else if (line[0] == '-') {
                file = g_strdup(line + 4);
            }
        } else if (file) {
            g_ptr_array_add(body, (char *)line);
        }
    }
    return vectors;
}

static void add_header(ParsedRequest *req, const char *name,
                       const char *value)
{
    S3chainHeader h = { g_strdup(name), g_strdup(value) };

    g_array_append_val(req->headers, h);
}

/* Parses the suite's request.txt: request line, headers, blank, body */
static void parse_request(const char *text, ParsedRequest *req)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    g_auto(GStrv) first = g_strsplit(lines[0], " ", -1);
    guint n = g_strv_length(first);
    g_autofree char *target = NULL;
    char *q;
    int i;

    /* The target may hold spaces: all but the first and last words */
    req->method = g_strdup(first[0]);
    first[n - 1] = (g_free(first[n - 1]), NULL);
    target = g_strjoinv(" ", first + 1);
    q = strchr(target, '?');
    req->query = g_strdup(q ? q + 1 : "");
    if (q) {
        *q = '\0';
    }
    req->path = g_uri_unescape_string(target, NULL);
    req->headers = g_array_new(false, true, sizeof(S3chainHeader));

    for (i = 1; lines[i] && lines[i][0]; i++) {
        char *colon = strchr(lines[i], ':');

        if (lines[i][0] == ' ' || lines[i][0] == '\t') {
            S3chainHeader *last = &g_array_index(req->headers, S3chainHeader,
                                                 req->headers->len - 1);
            char *joined = g_strconcat(last->value, "\n", lines[i], NULL);

            g_free((char *)last->value);
            last->value = joined;
            continue;
        }
        g_assert_nonnull(colon);
        *colon = '\0';
        add_header(req, lines[i], colon + 1);
    }
    req->body = lines[i] ? g_strjoinv("\n", lines + i + 1) : g_strdup("");
}

static void free_request(ParsedRequest *req)
{
    for (guint i = 0; i < req->headers->len; i++) {
        S3chainHeader *h = &g_array_index(req->headers, S3chainHeader, i);

        g_free((char *)h->name);
        g_free((char *)h->value);
    }
    g_array_free(req->headers, true);
    g_free(req->method);
    g_free(req->path);
    g_free(req->query);
    g_free(req->body);
}

/* "2015-08-30T12:36:00Z" -> "20150830T123600Z" */
static char *compact_timestamp(const char *timestamp)
{
    GString *out = g_string_new(NULL);

    for (const char *p = timestamp; *p; p++) {
        if (*p != '-' && *p != ':') {
            g_string_append_c(out, *p);
        }
    }
    return g_string_free(out, false);
}

static void test_vector(gconstpointer opaque)
{
    Vector *vector = (Vector *)opaque;
    const char *request_text = section(vector, "request.txt");
    const char *want_canonical = section(vector,
                                         "header-canonical-request.txt");
    const char *want_to_sign = section(vector, "header-string-to-sign.txt");
    g_autofree char *want_signature = g_strdup(section(vector,
                                                   "header-signature.txt"));
    g_autoptr(QDict) context = qobject_to(QDict,
        qobject_from_json(section(vector, "context.json"), &error_abort));
    QDict *creds = qdict_get_qdict(context, "credentials");
    const char *token = qdict_get_try_str(creds, "token");
    const char *timestamp = qdict_get_str(context, "timestamp");
    g_autofree char *amz_date = NULL;
    g_autofree char *payload_hash = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *signed_headers = NULL;
    g_autofree char *to_sign = NULL;
    g_autofree char *signature = NULL;
    S3chainSigV4Key key = {
        .access_key_id = qdict_get_str(creds, "access_key_id"),
        .secret_access_key = qdict_get_str(creds, "secret_access_key"),
        .region = qdict_get_str(context, "region"),
        .service = qdict_get_str(context, "service"),
    };
    ParsedRequest req = { 0 };
    S3chainSigV4Request sreq;

    amz_date = compact_timestamp(timestamp);
    parse_request(request_text, &req);
    g_assert_cmpint(qcrypto_hash_digest(QCRYPTO_HASH_ALGO_SHA256, req.body,
                                        strlen(req.body), &payload_hash,
                                        &error_abort), ==, 0);
    add_header(&req, "X-Amz-Date", amz_date);
    if (qdict_get_try_bool(context, "sign_body", false)) {
        add_header(&req, "X-Amz-Content-Sha256", payload_hash);
    }
    if (token && !qdict_get_try_bool(context, "omit_session_token", false)) {
        add_header(&req, "X-Amz-Security-Token", token);
    }

    sreq = (S3chainSigV4Request) {
        .method = req.method,
        .path = req.path,
        .query = req.query,
        .headers = (S3chainHeader *)req.headers->data,
        .nheaders = req.headers->len,
        .payload_sha256 = payload_hash,
    };
    canonical = s3chain_sigv4_canonical_request(&sreq, &signed_headers);
    g_assert_cmpstr(canonical, ==, want_canonical);
    to_sign = s3chain_sigv4_string_to_sign(amz_date, key.region, key.service,
                                           canonical);
    g_assert_cmpstr(to_sign, ==, want_to_sign);
    signature = s3chain_sigv4_signature(&key, amz_date, to_sign);
    g_assert_cmpstr(signature, ==, g_strstrip(want_signature));
    free_request(&req);
}

#define S3_EMPTY \
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* SHA-256 of "Welcome to Amazon S3." */
#define S3_PUT_BODY_SHA256 \
    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"

typedef struct S3Example {
    const char *name;
    const char *method;
    const char *path;
    const char *query;
    S3chainHeader headers[6];
    const char *payload;
    const char *signature;
} S3Example;

/* S3's own examples from its API reference, with the published answers */
static const S3Example s3_examples[] = {
    {
        "get-object", "GET", "/test.txt", NULL,
        { { "Host", "examplebucket.s3.amazonaws.com" },
          { "Range", "bytes=0-9" },
          { "x-amz-content-sha256", S3_EMPTY },
          { "x-amz-date", "20130524T000000Z" } },
        S3_EMPTY,
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    }, {
        "put-object", "PUT", "/test$file.text", NULL,
        { { "Date", "Fri, 24 May 2013 00:00:00 GMT" },
          { "Host", "examplebucket.s3.amazonaws.com" },
          { "x-amz-content-sha256", S3_PUT_BODY_SHA256 },
          { "x-amz-date", "20130524T000000Z" },
          { "x-amz-storage-class", "REDUCED_REDUNDANCY" } },
        S3_PUT_BODY_SHA256,
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    }, {
        "get-bucket-lifecycle", "GET", "/", "lifecycle",
        { { "Host", "examplebucket.s3.amazonaws.com" },
          { "x-amz-content-sha256", S3_EMPTY },
          { "x-amz-date", "20130524T000000Z" } },
        S3_EMPTY,
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    }, {
        "list-objects", "GET", "/", "max-keys=2&prefix=J",
        { { "Host", "examplebucket.s3.amazonaws.com" },
          { "x-amz-content-sha256", S3_EMPTY },
          { "x-amz-date", "20130524T000000Z" } },
        S3_EMPTY,
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    },
};

static void test_s3_example(gconstpointer opaque)
{
    const S3Example *ex = opaque;
    S3chainSigV4Key key = {
        .access_key_id = "AKIAIOSFODNN7EXAMPLE",
        .secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        .region = "us-east-1",
        .service = "s3",
    };
    size_t n = 0;
    g_autofree char *auth = NULL;
    g_autofree char *want = NULL;
    S3chainSigV4Request req;

    while (n < G_N_ELEMENTS(ex->headers) && ex->headers[n].name) {
        n++;
    }
    req = (S3chainSigV4Request) {
        .method = ex->method,
        .path = ex->path,
        .query = ex->query,
        .headers = ex->headers,
        .nheaders = n,
        .payload_sha256 = ex->payload,
    };
    auth = s3chain_sigv4_authorization(&key, "20130524T000000Z", &req);
    want = g_strdup_printf("Signature=%s", ex->signature);
    g_assert_true(g_str_has_suffix(auth, want));
    g_assert_true(g_str_has_prefix(auth, "AWS4-HMAC-SHA256 Credential="
                                   "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
                                   "s3/aws4_request, SignedHeaders="));
}

static void skip_aws_suite(void)
{
    g_test_skip("s3chain-sigv4-vectors.txt, AWS's SigV4 test suite, "
                "is not in this tree");
}

int main(int argc, char **argv)
{
    g_autofree char *path = NULL;
    g_autoptr(GHashTable) vectors = NULL;
    g_autoptr(GList) names = NULL;

    g_test_init(&argc, &argv, NULL);
    g_assert_cmpint(qcrypto_init(NULL), ==, 0);

    /*
     * AWS's suite is Apache-2.0, so it stays outside QEMU's tree; s3chain's
     * own tree links it in.
     */
    path = g_test_build_filename(G_TEST_DIST, "s3chain-sigv4-vectors.txt",
                                 NULL);
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        vectors = load_vectors(path);
        g_assert_cmpuint(g_hash_table_size(vectors), >, 20);
        names = g_list_sort(g_hash_table_get_keys(vectors),
                            (GCompareFunc)g_strcmp0);
    } else {
        g_test_add_func("/s3chain/sigv4/aws", skip_aws_suite);
    }
    for (GList *l = names; l; l = l->next) {
        g_autofree char *test = g_strdup_printf("/s3chain/sigv4/aws/%s",
                                                (char *)l->data);

        g_test_add_data_func(test, g_hash_table_lookup(vectors, l->data),
                             test_vector);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(s3_examples); i++) {
        g_autofree char *test = g_strdup_printf("/s3chain/sigv4/s3/%s",
                                                s3_examples[i].name);

        g_test_add_data_func(test, &s3_examples[i], test_s3_example);
    }
    return g_test_run();
}
