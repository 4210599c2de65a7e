/*
 * repo.c: the repository URL, its endpoint and the credentials for it
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static char *env_or(const char *given, const char *name, const char *dflt)
{
    const char *v = given ? given : g_getenv(name);

    return g_strdup(v && *v ? v : dflt);
}

bool s3c_private_file_ok(const char *path, const char *what, GError **err)
{
    struct stat st;

    if (stat(path, &st) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE, "cannot read %s %s: %s",
                    what, path, g_strerror(errno));
        return false;
    }
    if (st.st_mode & 077) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "%s %s may be read by others; chmod 600 it", what, path);
        return false;
    }
    return true;
}

/* AWS's shared credentials file; refused when others may read it */
static bool load_credentials_file(S3cRepo *repo, const char *path,
                                  const char *profile, GError **err)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) local = NULL;

    if (!s3c_private_file_ok(path, "credentials file", err)) {
        return false;
    }
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &local)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "credentials file %s: %s", path, local->message);
        return false;
    }
    repo->access_key_id = g_key_file_get_string(kf, profile,
                                                "aws_access_key_id", NULL);
    repo->secret_access_key = g_key_file_get_string(
        kf, profile, "aws_secret_access_key", NULL);
    repo->session_token = g_key_file_get_string(kf, profile,
                                                "aws_session_token", NULL);
    if (!repo->access_key_id || !repo->secret_access_key) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "credentials file %s has no aws_access_key_id and "
                    "aws_secret_access_key in [%s]", path, profile);
        return false;
    }
    return true;
}

static bool load_credentials(S3cRepo *repo, const S3cRepoOptions *opts,
                             GError **err)
{
    g_autofree char *profile = env_or(opts->profile, "AWS_PROFILE",
                                      "default");
    g_autofree char *file = NULL;

    if (opts->credentials) {
        return load_credentials_file(repo, opts->credentials, profile, err);
    }
    if (g_getenv("AWS_ACCESS_KEY_ID") && g_getenv("AWS_SECRET_ACCESS_KEY")) {
        repo->access_key_id = g_strdup(g_getenv("AWS_ACCESS_KEY_ID"));
        repo->secret_access_key = g_strdup(g_getenv("AWS_SECRET_ACCESS_KEY"));
        repo->session_token = env_or(NULL, "AWS_SESSION_TOKEN", NULL);
        return true;
    }
    file = env_or(NULL, "AWS_SHARED_CREDENTIALS_FILE", NULL);
    if (!file) {
        file = g_build_filename(g_get_home_dir(), ".aws", "credentials",
                                NULL);
    }
    if (g_file_test(file, G_FILE_TEST_EXISTS)) {
        return load_credentials_file(repo, file, profile, err);
    }
    g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                "no credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or give --credentials FILE");
    return false;
}

/*
 * The key of --key-file @path: 32 bytes as they are, or 64 hex digits
 * and perhaps a newline; refused when others may read it
 */
static bool load_key_file(S3cRepo *repo, const char *path, GError **err)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) local = NULL;
    uint8_t id[S3CHAIN_ID_LEN];
    gsize len;
    bool ok = false;

    if (!s3c_private_file_ok(path, "key file", err)) {
        return false;
    }
    if (!g_file_get_contents(path, &text, &len, &local)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE, "cannot read key file "
                    "%s: %s", path, local->message);
        return false;
    }
    if (len == S3CHAIN_KEY_LEN) {
        memcpy(repo->key, text, S3CHAIN_KEY_LEN);
        ok = true;
    } else if ((len == 2 * S3CHAIN_KEY_LEN ||
                (len == 2 * S3CHAIN_KEY_LEN + 1 &&
                 text[2 * S3CHAIN_KEY_LEN] == '\n')) &&
               strspn(text, "0123456789abcdefABCDEF") ==
               2 * S3CHAIN_KEY_LEN) {
        for (int i = 0; i < S3CHAIN_KEY_LEN; i++) {
            repo->key[i] = g_ascii_xdigit_value(text[2 * i]) << 4 |
                           g_ascii_xdigit_value(text[2 * i + 1]);
        }
        ok = true;
    }
    memset(text, 0, len);
    if (!ok) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "key file %s holds %zu bytes, which are no 256-bit key: "
                    "it must hold 32 bytes, or 64 hex digits (make one with "
                    "head -c 32 /dev/urandom > FILE)", path, (size_t)len);
        return false;
    }
    if (!s3chain_key_id(repo->key, id)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "cannot derive the key id of key file %s", path);
        return false;
    }
    repo->has_key = true;
    repo->key_id = s3chain_id_to_hex(id);
    return true;
}

bool s3c_repo_init(S3cRepo *repo, const S3cRepoOptions *opts, GError **err)
{
    const char *rest;
    const char *slash;
    g_autofree char *endpoint = NULL;

    memset(repo, 0, sizeof(*repo));
    if (!opts->url || !g_str_has_prefix(opts->url, "s3://") ||
        !opts->url[5] || opts->url[5] == '/') {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "the repository must be given as s3://BUCKET[/PREFIX] "
                    "with --repo");
        return false;
    }
    rest = opts->url + 5;
    slash = strchr(rest, '/');
    repo->bucket = slash ? g_strndup(rest, slash - rest) : g_strdup(rest);
    repo->prefix = g_strdup(slash ? slash + 1 : "");
    while (g_str_has_suffix(repo->prefix, "//")) {
        repo->prefix[strlen(repo->prefix) - 1] = '\0';
    }
    if (*repo->prefix && !g_str_has_suffix(repo->prefix, "/")) {
        char *p = g_strconcat(repo->prefix, "/", NULL);

        g_free(repo->prefix);
        repo->prefix = p;
    }

    endpoint = env_or(opts->endpoint, "AWS_ENDPOINT_URL", NULL);
    if (!endpoint) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "no S3 endpoint: give --endpoint URL or set "
                    "AWS_ENDPOINT_URL");
        return false;
    }
    if (!g_str_has_prefix(endpoint, "http://") &&
        !g_str_has_prefix(endpoint, "https://")) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "the endpoint %s must start with http:// or https://",
                    endpoint);
        return false;
    }
    while (g_str_has_suffix(endpoint, "/")) {
        endpoint[strlen(endpoint) - 1] = '\0';
    }
    repo->endpoint = g_steal_pointer(&endpoint);
    repo->region = env_or(opts->region, "AWS_REGION", "us-east-1");
    repo->cafile = g_strdup(opts->cafile);
    repo->verify_tls = !opts->no_verify_tls;
    if (opts->cafile && access(opts->cafile, R_OK) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot read --cafile %s: %s", opts->cafile,
                    g_strerror(errno));
        return false;
    }
    if (!repo->verify_tls && g_str_has_prefix(repo->endpoint, "https://")) {
        s3c_output_warning("the certificate of %s is not "
                           "verified (--no-verify-tls): whoever is on the way can "
                           "read and change what is stored", repo->endpoint);
    }
    return load_credentials(repo, opts, err) &&
           (!opts->key_file || load_key_file(repo, opts->key_file, err));
}

char *s3c_repo_key_base64(const S3cRepo *repo)
{
    return g_base64_encode(repo->key, S3CHAIN_KEY_LEN);
}

char **s3c_child_environ(void)
{
    char **envp = g_get_environ();

    envp = g_environ_unsetenv(envp, "AWS_SECRET_ACCESS_KEY");
    return g_environ_unsetenv(envp, "AWS_SESSION_TOKEN");
}

/*
 * A killed command's children go with it at once: a sidecar uploading
 * images no catalog will name, a qemu-img merging into an image that the
 * next command must take over
 */
void s3c_die_with_parent(gpointer unused)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

void s3c_repo_clear(S3cRepo *repo)
{
    g_free(repo->endpoint);
    g_free(repo->bucket);
    g_free(repo->prefix);
    g_free(repo->region);
    g_free(repo->access_key_id);
    if (repo->secret_access_key) {
        memset(repo->secret_access_key, 0, strlen(repo->secret_access_key));
    }
    g_free(repo->secret_access_key);
    g_free(repo->session_token);
    g_free(repo->cafile);
    g_free(repo->key_id);
    memset(repo, 0, sizeof(*repo));
}

json_object *s3c_repo_location(const S3cRepo *repo, const char *key,
                               const S3cSecretIds *ids)
{
    json_object *loc = s3c_json_obj(
        "endpoint", json_object_new_string(repo->endpoint),
        "bucket", json_object_new_string(repo->bucket),
        "key", json_object_new_string(key),
        "region", json_object_new_string(repo->region),
        "access-key-id", json_object_new_string(repo->access_key_id),
        "key-secret", json_object_new_string(ids->access_key),
        "sslverify", json_object_new_boolean(repo->verify_tls), NULL);

    if (repo->session_token) {
        json_object_object_add(loc, "session-token-secret",
                               json_object_new_string(ids->token));
    }
    if (repo->has_key) {
        json_object_object_add(loc, "encrypt-key-secret",
                               json_object_new_string(ids->encryption_key));
    }
    if (repo->cafile) {
        json_object_object_add(loc, "cafile",
                               json_object_new_string(repo->cafile));
    }
    return loc;
}
