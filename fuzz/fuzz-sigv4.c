/*
 * fuzz-sigv4.c: libFuzzer harness for the SigV4 signer's encoding and
 * canonical request, which sign keys and queries that users and
 * listings choose
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"
#include "../block/s3chain-sigv4.h"

#include <string.h>

#define MAX_HEADERS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What s3chain_uri_encode() wrote, decoded: the input again */
static char *uri_decode(const char *s)
{
    GString *out = g_string_new(NULL);

    for (; *s; s++) {
        if (*s == '%') {
            g_assert(g_ascii_isxdigit(s[1]) && g_ascii_isxdigit(s[2]));
            /* upper case, as SigV4 wants */
            g_assert(!g_ascii_islower(s[1]) && !g_ascii_islower(s[2]));
            g_string_append_c(out, g_ascii_xdigit_value(s[1]) * 16 +
                                   g_ascii_xdigit_value(s[2]));
            s += 2;
        } else {
            g_assert(g_ascii_isalnum(*s) || strchr("-._~/", *s));
            g_string_append_c(out, *s);
        }
    }
    return g_string_free(out, false);
}

/*
 * The input, split at newlines: a method, a path, a query, then headers
 * as NAME:VALUE, and a secret key in the last line
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autofree char *text = g_strndup((const char *)data, size);
    g_auto(GStrv) lines = g_strsplit(text, "\n", 4 + MAX_HEADERS);
    guint n = g_strv_length(lines);
    S3chainHeader headers[MAX_HEADERS];
    size_t nheaders = 0;
    g_autofree char *path = NULL;
    g_autofree char *encoded = NULL;
    g_autofree char *decoded = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *signed_headers = NULL;
    g_autofree char *authorization = NULL;
    S3chainSigV4Request req;
    S3chainSigV4Key key = {
        .access_key_id = "AKID", .region = "us-east-1", .service = "s3",
        .secret_access_key = n > 3 ? lines[n - 1] : "secret",
    };

    if (n < 3) {
        return 0;
    }
    path = g_strconcat("/", lines[1], NULL);
    encoded = s3chain_uri_encode(path, true);
    decoded = uri_decode(encoded);
    g_assert_cmpstr(decoded, ==, path);

    for (guint i = 3; i + 1 < n && nheaders < MAX_HEADERS; i++) {
        char *colon = strchr(lines[i], ':');

        /* a name is an HTTP token, as every header the driver signs */
        if (colon && colon != lines[i] &&
            strspn(lines[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                             "qrstuvwxyz0123456789-") ==
            (size_t)(colon - lines[i])) {
            *colon = '\0';
            headers[nheaders++] = (S3chainHeader) { lines[i], colon + 1 };
        }
    }
    req = (S3chainSigV4Request) {
        .method = lines[0], .path = path, .query = lines[2],
        .headers = headers, .nheaders = nheaders,
        .payload_sha256 = "UNSIGNED-PAYLOAD",
    };
    canonical = s3chain_sigv4_canonical_request(&req, &signed_headers);
    g_assert(canonical && signed_headers);
    g_assert(g_str_has_suffix(canonical, "UNSIGNED-PAYLOAD"));
    /* header names signed in lower case, sorted, each once */
    {
        g_auto(GStrv) names = g_strsplit(signed_headers, ";", -1);

        for (guint i = 0; nheaders && names[i]; i++) {
            g_autofree char *lower = g_ascii_strdown(names[i], -1);

            g_assert_cmpstr(lower, ==, names[i]);
            g_assert(!i || strcmp(names[i - 1], names[i]) < 0);
        }
    }
    authorization = s3chain_sigv4_authorization(&key, "20260101T000000Z",
                                                &req);
    g_assert(authorization);
    g_assert(g_str_has_prefix(authorization, "AWS4-HMAC-SHA256 Credential="));
    return 0;
}
