/*
 * catalog.c: a VM's backups and its lock, in the bucket (docs/catalog.rst)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char *catalog_key(const S3cCatalog *cat)
{
    return g_strconcat(cat->dir, "catalog.json", NULL);
}

bool s3c_plain_name(const char *name, size_t max_len)
{
    if (!name || !*name || strlen(name) > max_len || name[0] == '.') {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-_.", *p)) {
            return false;
        }
    }
    return true;
}

static bool valid_name(const char *name)
{
    return s3c_plain_name(name, S3C_NAME_MAX);
}

/* An ISO 8601 time; UTC unless it says otherwise */
static GDateTime *parse_time(const char *text)
{
    g_autoptr(GTimeZone) utc = g_time_zone_new_utc();

    return text ? g_date_time_new_from_iso8601(text, utc) : NULL;
}

/* What one catalog may make the command hold */
#define MAX_BACKUPS 100000
#define MAX_DISKS 256
#define MAX_KEY 1024
#define MIN_CLUSTER 512
#define MAX_CLUSTER (2 * 1024 * 1024)
/* 100000 backups of a few disks each */
#define CATALOG_MAX_BYTES (512 * 1024 * 1024)

/* A fault of the catalog at @where: damaged, named, with what to do */
static bool damaged(GError **err, const char *where, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static bool damaged(GError **err, const char *where, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *what = NULL;

    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                "%s: %s (the catalog is damaged: put back a good copy of "
                "it, docs/catalog.rst)", where, what);
    return false;
}

/* Field @name of @obj, of @type; absent is NULL, unless @required */
static bool field(json_object *obj, const char *name, json_type type,
                  bool required, bool nullable, json_object **value,
                  GError **err, const char *where, const char *whose)
{
    json_object *v = NULL;
    bool present = json_object_object_get_ex(obj, name, &v);

    *value = v;
    if (!present && !required) {
        return true;
    }
    if (!present) {
        return damaged(err, where, "%s has no \"%s\"", whose, name);
    }
    if (json_object_is_type(v, type) || (nullable && !v) ||
        (type == json_type_double && json_object_is_type(v, json_type_int))) {
        return true;
    }
    return damaged(err, where, "\"%s\" of %s is %s, not %s%s", name, whose,
                   json_type_to_name(json_object_get_type(v)),
                   json_type_to_name(type), nullable ? " or null" : "");
}

/* An integer field within [@min, @max] */
static bool int_field(json_object *obj, const char *name, bool required,
                      int64_t min, int64_t max, GError **err,
                      const char *where, const char *whose)
{
    json_object *v;
    int64_t n;

    if (!field(obj, name, json_type_int, required, false, &v, err, where,
               whose)) {
        return false;
    }
    n = v ? json_object_get_int64(v) : min;
    if (n < min || n > max) {
        return damaged(err, where, "\"%s\" of %s is %" G_GINT64_FORMAT
                       ", out of range", name, whose, n);
    }
    return true;
}

/* Optional fields that only say things: right type if there */
static bool informative_fields(json_object *obj, const char *const *names,
                               json_type type, GError **err,
                               const char *where, const char *whose)
{
    json_object *v;

    for (; *names; names++) {
        if (!field(obj, *names, type, false, false, &v, err, where, whose)) {
            return false;
        }
    }
    return true;
}

/*
 * Whether @key is an image of disk @disk: ID.qcow2 in the disk's
 * directory, ID its backup's, or that of a backup merged into it since
 */
static bool is_image_key(const S3cCatalog *cat, const char *disk,
                         const char *key)
{
    g_autofree char *dir = g_strdup_printf("%sdisks/%s/", cat->dir, disk);
    g_autofree char *id = NULL;

    if (!g_str_has_prefix(key, dir) || !g_str_has_suffix(key, ".qcow2")) {
        return false;
    }
    id = g_strndup(key + strlen(dir),
                   strlen(key) - strlen(dir) - strlen(".qcow2"));
    return valid_name(id);
}

/*
 * One disk of backup @id.  A parent must be an earlier backup holding
 * the disk (@earlier, by id), so no chain can loop; no two disks share
 * an image (@images), so deleting one never takes another's.
 */
static bool check_disk(const S3cCatalog *cat, json_object *d, const char *id,
                       GHashTable *earlier, GHashTable *names,
                       GHashTable *images, GError **err, const char *where)
{
    g_autofree char *whose = g_strdup_printf("a disk of backup %s", id);
    json_object *name, *type, *parent, *image, *v;
    const char *type_name;
    g_autofree char *key = NULL;
    int64_t cluster;

    if (!json_object_is_type(d, json_type_object)) {
        return damaged(err, where, "%s is not an object", whose);
    }
    if (!field(d, "name", json_type_string, true, false, &name, err, where,
               whose)) {
        return false;
    }
    g_free(whose);
    whose = g_strdup_printf("disk %s of backup %s",
                            json_object_get_string(name), id);
    if (!valid_name(json_object_get_string(name)) ||
        !g_hash_table_add(names, (char *)json_object_get_string(name))) {
        return damaged(err, where, "%s is not a valid, unique name", whose);
    }
    if (!field(d, "type", json_type_string, true, false, &type, err, where,
               whose) ||
        !field(d, "parent", json_type_string, false, true, &parent, err,
               where, whose) ||
        !field(d, "image", json_type_string, true, false, &image, err, where,
               whose) ||
        !field(d, "checkpoint", json_type_string, false, true, &v, err,
               where, whose) ||
        !int_field(d, "virtual-size", true, 1, INT64_MAX / 2, err, where,
                   whose) ||
        !int_field(d, "cluster-size", true, MIN_CLUSTER, MAX_CLUSTER, err,
                   where, whose) ||
        !int_field(d, "bytes-copied", false, 0, INT64_MAX, err, where,
                   whose) ||
        !int_field(d, "bytes-stored", false, 0, INT64_MAX, err, where,
                   whose) ||
        !informative_fields(d, (const char *const[]){ "node", "serial",
                                                      "reason", NULL },
                            json_type_string, err, where, whose) ||
        !informative_fields(d, (const char *const[]){ "duration", NULL },
                            json_type_double, err, where, whose)) {
        return false;
    }
    cluster = s3c_json_int(d, "cluster-size");
    if (cluster & (cluster - 1)) {
        return damaged(err, where, "\"cluster-size\" of %s is not a power "
                       "of two", whose);
    }
    type_name = json_object_get_string(type);
    if (strcmp(type_name, "full") && strcmp(type_name, "incremental")) {
        return damaged(err, where, "\"type\" of %s is neither full nor "
                       "incremental", whose);
    }
    if (!strcmp(type_name, "full") != !parent) {
        return damaged(err, where, "%s is %s %s a parent", whose, type_name,
                       parent ? "with" : "without");
    }
    if (parent) {
        json_object *p = g_hash_table_lookup(earlier,
                                             json_object_get_string(parent));

        if (!p || !s3c_backup_disk(p, json_object_get_string(name))) {
            return damaged(err, where, "the parent %s of %s is no earlier "
                           "backup of that disk",
                           json_object_get_string(parent), whose);
        }
    }
    if (!is_image_key(cat, json_object_get_string(name),
                      json_object_get_string(image))) {
        key = s3c_catalog_image_key(cat, json_object_get_string(name), id);
        return damaged(err, where, "the image of %s is not %s, nor another "
                       "ID.qcow2 beside it", whose, key);
    }
    if (!g_hash_table_add(images, (char *)json_object_get_string(image))) {
        return damaged(err, where, "the image of %s is another disk's too",
                       whose);
    }
    return true;
}

static bool check_backup(const S3cCatalog *cat, json_object *b, size_t index,
                         GHashTable *earlier, GHashTable *images,
                         GError **err, const char *where)
{
    g_autofree char *whose = g_strdup_printf("backup #%zu", index + 1);
    g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GDateTime) instant = NULL;
    json_object *id, *at, *disks, *v;
    size_t n;

    if (!json_object_is_type(b, json_type_object)) {
        return damaged(err, where, "%s is not an object", whose);
    }
    if (!field(b, "id", json_type_string, true, false, &id, err, where,
               whose)) {
        return false;
    }
    if (!valid_name(json_object_get_string(id)) ||
        g_hash_table_contains(earlier, json_object_get_string(id))) {
        return damaged(err, where, "the id of %s is not a valid, unique name",
                       whose);
    }
    g_free(whose);
    whose = g_strdup_printf("backup %s", json_object_get_string(id));
    if (!field(b, "time", json_type_string, true, false, &at, err, where,
               whose) ||
        !field(b, "disks", json_type_array, true, false, &disks, err, where,
               whose) ||
        !field(b, "offline", json_type_boolean, false, false, &v, err, where,
               whose) ||
        !int_field(b, "scratch-bytes", false, 0, INT64_MAX, err, where,
                   whose) ||
        !informative_fields(b, (const char *const[]){ "completed", "type",
                                                      "source", NULL },
                            json_type_string, err, where, whose) ||
        !informative_fields(b, (const char *const[]){ "duration", NULL },
                            json_type_double, err, where, whose)) {
        return false;
    }
    if (!field(b, "state", json_type_string, false, false, &v, err, where,
               whose)) {
        return false;
    }
    if (v && strcmp(json_object_get_string(v), S3C_STATE_GOING)) {
        return damaged(err, where, "the state of %s is not \"%s\"", whose,
                       S3C_STATE_GOING);
    }
    instant = parse_time(json_object_get_string(at));
    if (!instant) {
        return damaged(err, where, "the time of %s is not an ISO 8601 time",
                       whose);
    }
    n = json_object_array_length(disks);
    if (!n || n > MAX_DISKS) {
        return damaged(err, where, "%s has %zu disks", whose, n);
    }
    for (size_t i = 0; i < n; i++) {
        if (!check_disk(cat, json_object_array_get_idx(disks, i),
                        json_object_get_string(id), earlier, names, images,
                        err, where)) {
            return false;
        }
    }
    g_hash_table_insert(earlier, (char *)json_object_get_string(id), b);
    return true;
}

/*
 * The images that a deletion left to remove: each one an image of this
 * VM's that no backup names (@images), for a command to delete whole
 */
static bool check_garbage(const S3cCatalog *cat, GHashTable *images,
                          GError **err, const char *where)
{
    g_autofree char *disks = g_strconcat(cat->dir, "disks/", NULL);
    json_object *garbage;

    if (!field(cat->doc, "garbage", json_type_array, false, false, &garbage,
               err, where, "the catalog")) {
        return false;
    }
    for (size_t i = 0; i < s3c_json_len(garbage); i++) {
        json_object *g = json_object_array_get_idx(garbage, i);
        const char *key = json_object_get_string(g);
        g_autofree char *disk = NULL;
        const char *slash;

        if (!json_object_is_type(g, json_type_string) ||
            !g_str_has_prefix(key, disks) ||
            !(slash = strchr(key + strlen(disks), '/'))) {
            return damaged(err, where, "\"garbage\" #%zu is no image key",
                           i + 1);
        }
        disk = g_strndup(key + strlen(disks), slash - key - strlen(disks));
        if (!valid_name(disk) || !is_image_key(cat, disk, key)) {
            return damaged(err, where, "\"garbage\" #%zu is no image key",
                           i + 1);
        }
        if (g_hash_table_contains(images, key)) {
            return damaged(err, where, "\"garbage\" #%zu, %s, is a "
                           "backup's image", i + 1, key);
        }
    }
    return true;
}

/* The ids deleted lately, so that a retried delete knows them */
static bool check_deleted(const S3cCatalog *cat, GError **err,
                          const char *where)
{
    json_object *deleted, *v;

    if (!field(cat->doc, "deleted", json_type_array, false, false, &deleted,
               err, where, "the catalog")) {
        return false;
    }
    if (s3c_json_len(deleted) > S3C_MAX_DELETED) {
        return damaged(err, where, "\"deleted\" holds more than %d ids",
                       S3C_MAX_DELETED);
    }
    for (size_t i = 0; i < s3c_json_len(deleted); i++) {
        json_object *d = json_object_array_get_idx(deleted, i);
        g_autoptr(GDateTime) when = NULL;

        if (!json_object_is_type(d, json_type_object)) {
            return damaged(err, where, "\"deleted\" #%zu is not an object",
                           i + 1);
        }
        if (!field(d, "id", json_type_string, true, false, &v, err, where,
                   "a deleted backup") ||
            !field(d, "time", json_type_string, true, false, &v, err, where,
                   "a deleted backup")) {
            return false;
        }
        when = parse_time(s3c_json_str(d, "time"));
        if (!valid_name(s3c_json_str(d, "id")) || !when) {
            return damaged(err, where, "\"deleted\" #%zu is not an id and "
                           "a time", i + 1);
        }
    }
    return true;
}

/*
 * Everything the command reads of a catalog, checked once as it loads,
 * so that no reader meets a wrong type, a loop or an absurd size
 */
static bool check_catalog(const S3cCatalog *cat, const char *where,
                          GError **err)
{
    g_autoptr(GHashTable) earlier = g_hash_table_new(g_str_hash,
                                                     g_str_equal);
    g_autoptr(GHashTable) images = g_hash_table_new(g_str_hash, g_str_equal);
    json_object *v, *backups;
    uint8_t id[S3CHAIN_ID_LEN];
    int64_t format;
    size_t n;

    if (!json_object_is_type(cat->doc, json_type_object)) {
        return damaged(err, where, "it is not a JSON object");
    }
    if (!field(cat->doc, "format", json_type_int, true, false, &v, err,
               where, "the catalog")) {
        return false;
    }
    format = json_object_get_int64(v);
    if (format > S3C_CATALOG_FORMAT) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s is of catalog format %" G_GINT64_FORMAT ", newer "
                    "than this s3chain reads (%d): use a newer s3chain",
                    where, format, S3C_CATALOG_FORMAT);
        return false;
    }
    if (format < S3C_CATALOG_FORMAT_PLAIN) {
        return damaged(err, where, "its format is %" G_GINT64_FORMAT, format);
    }
    if (!field(cat->doc, "vm", json_type_string, true, false, &v, err, where,
               "the catalog")) {
        return false;
    }
    if (strcmp(json_object_get_string(v), cat->vm)) {
        return damaged(err, where, "it is the catalog of VM %s",
                       json_object_get_string(v));
    }
    if (!field(cat->doc, "compress", json_type_string, false, false, &v,
               err, where, "the catalog")) {
        return false;
    }
    if (v && format < S3C_CATALOG_FORMAT_COMPRESSED) {
        return damaged(err, where, "it says \"compress\" in format %"
                       G_GINT64_FORMAT, format);
    }
    if (v && !s3chain_compress_is_valid(json_object_get_string(v))) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s: the backups are compressed with \"%s\", which this "
                    "s3chain does not know: use a newer s3chain", where,
                    json_object_get_string(v));
        return false;
    }
    if (!field(cat->doc, "key-id", json_type_string, false, false, &v,
               err, where, "the catalog")) {
        return false;
    }
    if (v && format < S3C_CATALOG_FORMAT_ENCRYPTED) {
        return damaged(err, where, "it says \"key-id\" in format %"
                       G_GINT64_FORMAT, format);
    }
    if (v && !s3chain_id_from_hex(json_object_get_string(v), id)) {
        return damaged(err, where, "its \"key-id\" is not 32 lower-case "
                       "hex digits");
    }
    if (!field(cat->doc, "backups", json_type_array, true, false, &backups,
               err, where, "the catalog")) {
        return false;
    }
    n = json_object_array_length(backups);
    if (n > MAX_BACKUPS) {
        return damaged(err, where, "it holds %zu backups, more than %d", n,
                       MAX_BACKUPS);
    }
    for (size_t i = 0; i < n; i++) {
        if (!check_backup(cat, json_object_array_get_idx(backups, i), i,
                          earlier, images, err, where)) {
            return false;
        }
    }
    return check_garbage(cat, images, err, where) &&
           check_deleted(cat, err, where);
}

bool s3c_catalog_load(S3cCatalog *cat, const S3cRepo *repo, const char *vm,
                      GError **err)
{
    g_autofree char *key = NULL;
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    g_autofree char *where = NULL;
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;

    memset(cat, 0, sizeof(*cat));
    if (!valid_name(vm)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "VM name '%s' may hold only letters, digits, '-', '_' "
                    "and '.'", vm);
        return false;
    }
    cat->vm = g_strdup(vm);
    cat->dir = g_strdup_printf("%ss3chain/vms/%s/", repo->prefix, vm);
    key = catalog_key(cat);
    if (!s3c_s3_get_stamped(repo, key, &body, &stamp, &local)) {
        if (local) {
            g_propagate_error(err, g_steal_pointer(&local));
            return false;
        }
        cat->doc = s3c_json_obj(
            "format", json_object_new_int(S3C_CATALOG_FORMAT_PLAIN),
            "vm", json_object_new_string(vm),
            "backups", json_object_new_array(), NULL);
        return true;
    }
    where = g_strdup_printf("s3://%s/%s", repo->bucket, key);
    cat->etag = g_steal_pointer(&stamp.etag);
    return s3c_catalog_parse(cat, where, body, err);
}

bool s3c_catalog_parse(S3cCatalog *cat, const char *where,
                       const GString *text, GError **err)
{
    if (text->len > CATALOG_MAX_BYTES) {
        return damaged(err, where, "it is larger than %d MiB",
                       CATALOG_MAX_BYTES >> 20);
    }
    cat->doc = json_tokener_parse(text->str);
    if (!cat->doc) {
        return damaged(err, where, "it is not JSON");
    }
    return check_catalog(cat, where, err);
}

/*
 * Whether a reader that knows only format 1 would misread the catalog:
 * a point being deleted, or a disk whose image a merge gave it
 */
static bool needs_merge_format(const S3cCatalog *cat)
{
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *disks;

        if (s3c_backup_going(b)) {
            return true;
        }
        json_object_object_get_ex(b, "disks", &disks);
        for (size_t j = 0; j < json_object_array_length(disks); j++) {
            json_object *d = json_object_array_get_idx(disks, j);
            g_autofree char *own = s3c_catalog_image_key(
                cat, s3c_json_str(d, "name"), s3c_json_str(b, "id"));

            if (strcmp(own, s3c_json_str(d, "image"))) {
                return true;
            }
        }
    }
    return false;
}

bool s3c_catalog_save(S3cCatalog *cat, const S3cRepo *repo, GError **err)
{
    g_autofree char *key = catalog_key(cat);
    const char *text;

    json_object_object_add(cat->doc, "format", json_object_new_int(
                               s3c_catalog_key_id(cat)
                               ? S3C_CATALOG_FORMAT_ENCRYPTED
                               : s3c_catalog_compressed(cat)
                               ? S3C_CATALOG_FORMAT_COMPRESSED
                               : needs_merge_format(cat)
                               ? S3C_CATALOG_FORMAT_MERGES
                               : S3C_CATALOG_FORMAT_PLAIN));
    text = json_object_to_json_string_ext(
        cat->doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;

    /* the version read, or none: the lock's lease is not all we trust */
    switch (s3c_s3_put_if(repo, key, text, strlen(text),
                          cat->etag ? cat->etag : "*", &stamp, err)) {
    case S3C_PUT_DONE:
        g_free(cat->etag);
        cat->etag = g_steal_pointer(&stamp.etag);
        return true;
    case S3C_PUT_PRECONDITION_FAILED:
        g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                    "s3://%s/%s changed since this command read it: "
                    "another command wrote it meanwhile; nothing was "
                    "committed, run again", repo->bucket, key);
        return false;
    case S3C_PUT_UNCONDITIONAL_ONLY:
        /* the lock alone keeps writers apart on such a server */
        return s3c_s3_put(repo, key, text, strlen(text), err);
    default:
        return false;
    }
}

void s3c_catalog_clear(S3cCatalog *cat)
{
    g_free(cat->vm);
    g_free(cat->dir);
    g_free(cat->etag);
    json_object_put(cat->doc);
    memset(cat, 0, sizeof(*cat));
}

json_object *s3c_catalog_backups(const S3cCatalog *cat)
{
    json_object *backups;

    json_object_object_get_ex(cat->doc, "backups", &backups);
    return backups;
}

const char *s3c_catalog_key_id(const S3cCatalog *cat)
{
    return s3c_json_str(cat->doc, "key-id");
}

void s3c_catalog_set_key_id(S3cCatalog *cat, const char *key_id)
{
    json_object_object_add(cat->doc, "key-id",
                           json_object_new_string(key_id));
}

bool s3c_catalog_check_key(const S3cCatalog *cat, const S3cRepo *repo,
                           GError **err)
{
    const char *key_id = s3c_catalog_key_id(cat);

    if (key_id && !repo->has_key) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_KEY,
                    "VM %s's backups are encrypted (key id %s): give their "
                    "key with --key-file", cat->vm, key_id);
        return false;
    }
    if (key_id && strcmp(key_id, repo->key_id)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_KEY,
                    "VM %s's backups are encrypted with key id %s, and "
                    "--key-file's key has key id %s: give the key they were "
                    "written with", cat->vm, key_id, repo->key_id);
        return false;
    }
    if (!key_id && repo->has_key &&
        json_object_array_length(s3c_catalog_backups(cat))) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_KEY,
                    "VM %s's backups are not encrypted, but --key-file gives "
                    "a key: drop --key-file (its chains cannot mix)",
                    cat->vm);
        return false;
    }
    return true;
}

bool s3c_catalog_compressed(const S3cCatalog *cat)
{
    return json_object_object_get_ex(cat->doc, "compress", NULL);
}

void s3c_catalog_set_compressed(S3cCatalog *cat)
{
    json_object_object_add(cat->doc, "compress",
                           json_object_new_string(S3CHAIN_COMPRESS_ZSTD));
}

json_object *s3c_backup_disk(json_object *backup, const char *disk)
{
    json_object *disks;

    if (!json_object_object_get_ex(backup, "disks", &disks)) {
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);

        if (!g_strcmp0(s3c_json_str(d, "name"), disk)) {
            return d;
        }
    }
    return NULL;
}

json_object *s3c_catalog_last_disk(const S3cCatalog *cat, const char *disk,
                                   json_object **backup)
{
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = json_object_array_length(backups); i-- > 0;) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *d = s3c_backup_disk(b, disk);

        if (d) {
            *backup = b;
            return d;
        }
    }
    return NULL;
}

char *s3c_catalog_checkpoint(const S3cCatalog *cat, const char *disk)
{
    json_object *backup = NULL;
    json_object *last = s3c_catalog_last_disk(cat, disk, &backup);
    json_object *named;

    if (!last) {
        return NULL;
    }
    /* catalogs older than the field named it after the backup */
    if (!json_object_object_get_ex(last, "checkpoint", &named)) {
        return g_strconcat(S3C_CHECKPOINT_PREFIX, s3c_json_str(backup, "id"),
                           NULL);
    }
    return g_strdup(json_object_get_string(named));
}

json_object *s3c_catalog_find(const S3cCatalog *cat, const char *id)
{
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);

        if (!g_strcmp0(s3c_json_str(b, "id"), id)) {
            return b;
        }
    }
    return NULL;
}

json_object *s3c_catalog_pick(const S3cCatalog *cat, const char *which,
                              const char *before, GError **err)
{
    json_object *backups = s3c_catalog_backups(cat);
    size_t n = json_object_array_length(backups);
    g_autoptr(GDateTime) limit = NULL;
    json_object *found = NULL;

    if (!n) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "VM %s has no backups in this repository; s3chain list "
                    "shows the VMs that have", cat->vm);
        return NULL;
    }
    if (!before && strcmp(which, "latest")) {
        found = s3c_catalog_find(cat, which);
        if (!found) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "VM %s has no backup %s; s3chain list --vm %s shows "
                        "its backups", cat->vm, which, cat->vm);
        } else if (s3c_backup_going(found)) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "backup %s of VM %s is being deleted (an "
                        "interrupted delete: s3chain delete, prune or gc "
                        "finishes it)", which, cat->vm);
            found = NULL;
        }
        return found;
    }
    if (!before) {
        for (size_t i = n; i-- > 0 && !found;) {
            json_object *b = json_object_array_get_idx(backups, i);

            found = s3c_backup_going(b) ? NULL : b;
        }
        if (!found) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "VM %s has no backups but ones being deleted",
                        cat->vm);
        }
        return found;
    }
    limit = parse_time(before);
    if (!limit) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "--before wants a time like 2026-11-21T16:25:00Z, not "
                    "'%s'", before);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        g_autoptr(GDateTime) t = parse_time(s3c_json_str(b, "time"));

        if (t && g_date_time_compare(t, limit) < 0 && !s3c_backup_going(b)) {
            found = b;
        }
    }
    if (!found) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "VM %s has no backup from before %s", cat->vm, before);
    }
    return found;
}

/* A parent is always an earlier backup (check_catalog), so walks end */
GPtrArray *s3c_catalog_chain(const S3cCatalog *cat, const char *disk,
                             const char *id, GError **err)
{
    g_autoptr(GPtrArray) chain = g_ptr_array_new();
    const char *child = NULL;

    while (id) {
        json_object *b = s3c_catalog_find(cat, id);
        json_object *d = b ? s3c_backup_disk(b, disk) : NULL;

        if (!d) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "the chain of disk %s is broken: backup %s names "
                        "parent %s, which the catalog of VM %s does not "
                        "hold for that disk", disk, child, id, cat->vm);
            return NULL;
        }
        g_ptr_array_add(chain, d);
        child = id;
        id = s3c_json_str(d, "parent");
    }
    return g_steal_pointer(&chain);
}

int s3c_catalog_chain_length(const S3cCatalog *cat, const char *disk,
                             const char *id)
{
    int length = 0;

    for (json_object *b = s3c_catalog_find(cat, id), *d;
         b && (d = s3c_backup_disk(b, disk));
         b = s3c_catalog_find(cat, s3c_json_str(d, "parent"))) {
        length++;
    }
    return length;
}

void s3c_catalog_append(S3cCatalog *cat, json_object *backup)
{
    json_object_array_add(s3c_catalog_backups(cat), backup);
}

/* The name of an image relative to its child's, for backing files */
static char *image_name(const char *id)
{
    return g_strconcat(id, ".qcow2", NULL);
}

char *s3c_catalog_image_key(const S3cCatalog *cat, const char *disk,
                            const char *id)
{
    g_autofree char *name = image_name(id);

    return g_strdup_printf("%sdisks/%s/%s", cat->dir, disk, name);
}

char *s3c_catalog_backing_name(const S3cCatalog *cat, const char *disk,
                               const char *parent)
{
    json_object *b = parent ? s3c_catalog_find(cat, parent) : NULL;
    json_object *d = b ? s3c_backup_disk(b, disk) : NULL;

    return d ? g_path_get_basename(s3c_json_str(d, "image")) : NULL;
}

bool s3c_backup_going(json_object *backup)
{
    return s3c_json_str(backup, "state") != NULL;
}

json_object *s3c_catalog_child(const S3cCatalog *cat, const char *disk,
                               const char *id, GError **err)
{
    json_object *backups = s3c_catalog_backups(cat);
    json_object *child = NULL;

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        json_object *d = s3c_backup_disk(b, disk);

        if (!d || g_strcmp0(s3c_json_str(d, "parent"), id)) {
            continue;
        }
        if (child) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "the chain of disk %s of VM %s forks: backups %s and "
                        "%s both follow %s; the catalog is damaged",
                        disk, cat->vm, s3c_json_str(child, "id"),
                        s3c_json_str(b, "id"), id);
            return NULL;
        }
        child = b;
    }
    return child;
}

bool s3c_catalog_remove(S3cCatalog *cat, const char *id)
{
    json_object *backups = s3c_catalog_backups(cat);

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        if (!g_strcmp0(s3c_json_str(json_object_array_get_idx(backups, i),
                                    "id"), id)) {
            json_object_array_del_idx(backups, i, 1);
            return true;
        }
    }
    return false;
}

/* An array member of the catalog, created empty if absent */
static json_object *catalog_list(S3cCatalog *cat, const char *name)
{
    json_object *list;

    if (!json_object_object_get_ex(cat->doc, name, &list)) {
        list = json_object_new_array();
        json_object_object_add(cat->doc, name, list);
    }
    return list;
}

void s3c_catalog_note_deleted(S3cCatalog *cat, const char *id,
                              const char *time)
{
    json_object *deleted = catalog_list(cat, "deleted");

    json_object_array_add(deleted, s3c_json_obj(
        "id", json_object_new_string(id),
        "time", json_object_new_string(time), NULL));
    if (json_object_array_length(deleted) > S3C_MAX_DELETED) {
        json_object_array_del_idx(deleted, 0, 1);
    }
}

const char *s3c_catalog_deleted_at(const S3cCatalog *cat, const char *id)
{
    json_object *deleted;

    json_object_object_get_ex(cat->doc, "deleted", &deleted);
    for (size_t i = s3c_json_len(deleted); i-- > 0;) {
        json_object *d = json_object_array_get_idx(deleted, i);

        if (!g_strcmp0(s3c_json_str(d, "id"), id)) {
            return s3c_json_str(d, "time");
        }
    }
    return NULL;
}

json_object *s3c_catalog_garbage(S3cCatalog *cat)
{
    return catalog_list(cat, "garbage");
}

bool s3c_catalog_deleted_since(const S3cCatalog *cat, const char *id)
{
    json_object *deleted;

    json_object_object_get_ex(cat->doc, "deleted", &deleted);
    for (size_t i = 0; i < s3c_json_len(deleted); i++) {
        if (strcmp(s3c_json_str(json_object_array_get_idx(deleted, i), "id"),
                   id) > 0) {
            return true;
        }
    }
    return false;
}
