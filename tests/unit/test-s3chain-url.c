/*
 * Tests of s3chain's s3chain:// URL syntax
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "block/qdict.h"
#include "qapi/error.h"
#include "qapi/qapi-visit-block-core.h"
#include "qapi/qobject-input-visitor.h"
#include "qobject/qdict.h"
#include "../../block/s3chain.h"

static QDict *parse_ok(const char *url)
{
    QDict *options = qdict_new();

    g_assert_true(s3chain_parse_url(url, options, &error_abort));
    return options;
}

static void parse_fails(const char *url, const char *message_part)
{
    g_autoptr(QDict) options = qdict_new();
    Error *err = NULL;

    g_assert_false(s3chain_parse_url(url, options, &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(error_get_pretty(err), message_part));
    error_free(err);
}

static void test_plain(void)
{
    g_autoptr(QDict) o = parse_ok("s3chain://s3.example.com/bucket/a/b.qcow2");

    g_assert_cmpstr(qdict_get_str(o, "endpoint"), ==,
                    "https://s3.example.com");
    g_assert_cmpstr(qdict_get_str(o, "bucket"), ==, "bucket");
    g_assert_cmpstr(qdict_get_str(o, "key"), ==, "a/b.qcow2");
    g_assert_cmpint(qdict_size(o), ==, 3);
}

static void test_options(void)
{
    g_autoptr(QDict) o = parse_ok(
        "s3chain://127.0.0.1:7480;tls=off;region=eu-1;access-key-id=AK;"
        "key-secret=sec0;cafile=%2Fetc%2Fca.pem;sslverify=off/b/k%20x");

    g_assert_cmpstr(qdict_get_str(o, "endpoint"), ==,
                    "http://127.0.0.1:7480");
    g_assert_cmpstr(qdict_get_str(o, "region"), ==, "eu-1");
    g_assert_cmpstr(qdict_get_str(o, "access-key-id"), ==, "AK");
    g_assert_cmpstr(qdict_get_str(o, "key-secret"), ==, "sec0");
    g_assert_cmpstr(qdict_get_str(o, "cafile"), ==, "/etc/ca.pem");
    g_assert_cmpstr(qdict_get_str(o, "sslverify"), ==, "off");
    g_assert_cmpstr(qdict_get_str(o, "key"), ==, "k x");
}

static void test_errors(void)
{
    parse_fails("http://host/b/k", "must start with s3chain://");
    parse_fails("s3chain://host/bucket", "is not of the form");
    parse_fails("s3chain://host/bucket/", "is not of the form");
    parse_fails("s3chain:///bucket/key", "is not of the form");
    parse_fails("s3chain://host;colour=red/b/k", "unknown URL option 'colour'");
    parse_fails("s3chain://host;region/b/k", "has no value");
    parse_fails("s3chain://host;tls=maybe/b/k", "tls must be on or off");
    parse_fails("s3chain://host;region=a;region=b/b/k", "given twice");
    /* found by test_mutations */
    parse_fails("s3chain://host/b%2Fc/k", "must not contain '/'");
}

/* A built URL parses back to the same settings, with no secret in it */
static void test_round_trip(void)
{
    g_autoptr(QDict) o = parse_ok(
        "s3chain://h:9000;tls=off;region=r;access-key-id=AK;key-secret=s;"
        "session-token-secret=t;cafile=%2Fca%3Bx/bk/dir/top.qcow2");
    g_autoptr(QDict) again = NULL;
    BlockdevOptionsS3chain *opts = NULL;
    g_autofree char *url = NULL;
    g_autofree char *dir_url = NULL;
    Visitor *v = qobject_input_visitor_new_flat_confused(o, &error_abort);

    visit_type_BlockdevOptionsS3chain(v, NULL, &opts, &error_abort);
    visit_free(v);

    url = s3chain_build_url(opts, opts->key);
    again = parse_ok(url);
    g_assert_true(qobject_is_equal(QOBJECT(o), QOBJECT(again)));

    dir_url = s3chain_build_url(opts, "dir/");
    g_assert_cmpstr(dir_url, ==,
                    "s3chain://h:9000;tls=off;region=r;access-key-id=AK;"
                    "key-secret=s;session-token-secret=t;cafile=%2Fca%3Bx"
                    "/bk/dir/");
    qapi_free_BlockdevOptionsS3chain(opts);
}

static void test_uri_encode(void)
{
    g_autofree char *a = s3chain_uri_encode("a b/c~d_e-f.g$", true);
    g_autofree char *b = s3chain_uri_encode("a b/c", false);

    g_assert_cmpstr(a, ==, "a%20b/c~d_e-f.g%24");
    g_assert_cmpstr(b, ==, "a%20b%2Fc");
}

/*
 * Mutations of good URLs, many of them, from a fixed seed: not
 * coverage-guided fuzzing (the parser needs QEMU's QDict, which only
 * QEMU's build links), but its properties under hostile input: a URL
 * either fails with a message or parses to a bucket without '/' and a
 * key, and what parses and passes the driver's option checks builds a
 * URL that parses back to the same options
 */
static void test_mutations(void)
{
    static const char *const seeds[] = {
        "s3chain://h:9000;tls=off;region=r;access-key-id=AK;key-secret=s;"
        "session-token-secret=t;cafile=%2Fca%3Bx/bk/dir/top.qcow2",
        "s3chain://[::1]:7480;tls=off/b/vms/vm1/disks/vd0/x.qcow2",
        "s3chain://s3.example.com/bucket/a%20b/%E2%82%AC.raw",
    };
    static const char alphabet[] = ";=/%:@[]?#&+ a0Fz\\\x01\xff";
    GRand *rand = g_rand_new_with_seed(20261130);
    unsigned parsed = 0, rebuilt = 0;

    for (int i = 0; i < 200000; i++) {
        GString *url = g_string_new(seeds[i % G_N_ELEMENTS(seeds)]);
        g_autoptr(QDict) options = qdict_new();
        Error *err = NULL;

        for (int m = g_rand_int_range(rand, 1, 5); m > 0 && url->len; m--) {
            guint at = g_rand_int_range(rand, 0, url->len);

            switch (g_rand_int_range(rand, 0, 3)) {
            case 0:
                url->str[at] = alphabet[g_rand_int_range(
                    rand, 0, sizeof(alphabet) - 1)];
                break;
            case 1:
                g_string_insert_c(url, at, alphabet[g_rand_int_range(
                    rand, 0, sizeof(alphabet) - 1)]);
                break;
            default:
                g_string_erase(url, at, MIN(g_rand_int_range(rand, 1, 4),
                                            url->len - at));
                break;
            }
        }
        if (!s3chain_parse_url(url->str, options, &err)) {
            g_assert_nonnull(err);
            g_assert_cmpstr(error_get_pretty(err), !=, "");
            error_free(err);
        } else {
            const char *bucket = qdict_get_try_str(options, "bucket");
            BlockdevOptionsS3chain *opts = NULL;
            Visitor *v;

            parsed++;
            g_assert_nonnull(bucket);
            g_assert_null(strchr(bucket, '/'));
            g_assert_nonnull(qdict_get_try_str(options, "key"));
            g_assert_nonnull(qdict_get_try_str(options, "endpoint"));
            v = qobject_input_visitor_new_flat_confused(options, NULL);
            if (visit_type_BlockdevOptionsS3chain(v, NULL, &opts, NULL)) {
                g_autofree char *built = s3chain_build_url(opts, opts->key);
                g_autoptr(QDict) again = parse_ok(built);

                g_assert_true(qobject_is_equal(QOBJECT(options),
                                               QOBJECT(again)));
                qapi_free_BlockdevOptionsS3chain(opts);
                rebuilt++;
            }
            visit_free(v);
        }
        g_string_free(url, true);
    }
    g_rand_free(rand);
    g_test_message("%u of 200000 parsed, %u built back", parsed, rebuilt);
    /* the properties were exercised, not only the errors */
    g_assert_cmpuint(rebuilt, >, 10000);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/s3chain/url/plain", test_plain);
    g_test_add_func("/s3chain/url/options", test_options);
    g_test_add_func("/s3chain/url/errors", test_errors);
    g_test_add_func("/s3chain/url/round-trip", test_round_trip);
    g_test_add_func("/s3chain/url/uri-encode", test_uri_encode);
    g_test_add_func("/s3chain/url/mutations", test_mutations);
    return g_test_run();
}
