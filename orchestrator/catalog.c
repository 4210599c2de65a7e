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
#include <string.h>
#include <time.h>
#include <unistd.h>

static char *catalog_key(const S3cCatalog *cat)
{
    return g_strconcat(cat->dir, "catalog.json", NULL);
}

static char *lock_key(const S3cCatalog *cat)
{
    return g_strconcat(cat->dir, "lock", NULL);
}

static bool valid_name(const char *name)
{
    if (!*name || strlen(name) > 128 || name[0] == '.') {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-_.", *p)) {
            return false;
        }
    }
    return true;
}

bool s3c_catalog_load(S3cCatalog *cat, const S3cRepo *repo, const char *vm,
                      GError **err)
{
    g_autofree char *key = NULL;
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    json_object *backups;

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
    if (!s3c_s3_get(repo, key, &body, &local)) {
        if (local) {
            g_propagate_error(err, g_steal_pointer(&local));
            return false;
        }
        cat->doc = s3c_json_obj(
            "format", json_object_new_int(S3C_CATALOG_FORMAT),
            "vm", json_object_new_string(vm),
            "backups", json_object_new_array(), NULL);
        return true;
    }
    cat->doc = json_tokener_parse(body->str);
    if (!cat->doc || s3c_json_int(cat->doc, "format") != S3C_CATALOG_FORMAT ||
        !json_object_object_get_ex(cat->doc, "backups", &backups) ||
        !json_object_is_type(backups, json_type_array)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "s3://%s/%s is not an s3chain catalog of format %d",
                    repo->bucket, key, S3C_CATALOG_FORMAT);
        return false;
    }
    return true;
}

bool s3c_catalog_save(S3cCatalog *cat, const S3cRepo *repo, GError **err)
{
    g_autofree char *key = catalog_key(cat);
    const char *text = json_object_to_json_string_ext(
        cat->doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);

    return s3c_s3_put(repo, key, text, strlen(text), false, err);
}

void s3c_catalog_clear(S3cCatalog *cat)
{
    g_free(cat->vm);
    g_free(cat->dir);
    json_object_put(cat->doc);
    memset(cat, 0, sizeof(*cat));
}

json_object *s3c_catalog_backups(const S3cCatalog *cat)
{
    json_object *backups;

    json_object_object_get_ex(cat->doc, "backups", &backups);
    return backups;
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

json_object *s3c_catalog_last_disk(S3cCatalog *cat, const char *disk,
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

static json_object *find_backup(const S3cCatalog *cat, const char *id)
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

/* An ISO 8601 time; UTC unless it says otherwise */
static GDateTime *parse_time(const char *text)
{
    g_autoptr(GTimeZone) utc = g_time_zone_new_utc();

    return text ? g_date_time_new_from_iso8601(text, utc) : NULL;
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
    if (!before) {
        found = strcmp(which, "latest") ? find_backup(cat, which)
                : json_object_array_get_idx(backups, n - 1);
        if (!found) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "VM %s has no backup %s; s3chain list --vm %s shows "
                        "its backups", cat->vm, which, cat->vm);
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

        if (t && g_date_time_compare(t, limit) < 0) {
            found = b;
        }
    }
    if (!found) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                    "VM %s has no backup from before %s", cat->vm, before);
    }
    return found;
}

GPtrArray *s3c_catalog_chain(const S3cCatalog *cat, const char *disk,
                             const char *id, GError **err)
{
    g_autoptr(GPtrArray) chain = g_ptr_array_new();
    const char *child = NULL;

    while (id) {
        json_object *b = find_backup(cat, id);
        json_object *d = b ? s3c_backup_disk(b, disk) : NULL;

        if (!d) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "the chain of disk %s is broken: backup %s names "
                        "parent %s, which the catalog of VM %s does not "
                        "hold for that disk", disk, child, id, cat->vm);
            return NULL;
        }
        if (chain->len > json_object_array_length(
                s3c_catalog_backups(cat))) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "the chain of disk %s loops at backup %s", disk, id);
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

    for (json_object *b = find_backup(cat, id), *d;
         b && (d = s3c_backup_disk(b, disk));
         b = find_backup(cat, s3c_json_str(d, "parent"))) {
        length++;
    }
    return length;
}

void s3c_catalog_append(S3cCatalog *cat, json_object *backup)
{
    json_object_array_add(s3c_catalog_backups(cat), backup);
}

char *s3c_catalog_image_name(const char *id)
{
    return g_strconcat(id, ".qcow2", NULL);
}

char *s3c_catalog_image_key(const S3cCatalog *cat, const char *disk,
                            const char *id)
{
    g_autofree char *name = s3c_catalog_image_name(id);

    return g_strdup_printf("%sdisks/%s/%s", cat->dir, disk, name);
}

/* A lock's holder that is gone for sure: a process of this host that died */
static bool holder_is_dead(json_object *lock)
{
    const char *host = s3c_json_str(lock, "host");
    int64_t pid = s3c_json_int(lock, "pid");

    return host && !strcmp(host, g_get_host_name()) && pid > 0 &&
           kill(pid, 0) < 0 && errno == ESRCH;
}

static bool lock_is_too_old(json_object *lock, int64_t stale_after)
{
    return time(NULL) - s3c_json_int(lock, "since") > stale_after;
}

bool s3c_lock_acquire(const S3cRepo *repo, const S3cCatalog *cat,
                      int64_t stale_after, bool break_stale, GError **err)
{
    g_autofree char *key = lock_key(cat);
    json_object *me = s3c_json_obj(
        "host", json_object_new_string(g_get_host_name()),
        "pid", json_object_new_int64(getpid()),
        "since", json_object_new_int64(time(NULL)), NULL);
    const char *text = json_object_to_json_string(me);
    g_autoptr(GString) held = NULL;
    json_object *holder = NULL;
    bool ok = false;

    for (int attempt = 0; attempt < 2 && !ok; attempt++) {
        g_autoptr(GError) local = NULL;

        if (s3c_s3_put(repo, key, text, strlen(text), true, &local)) {
            ok = true;
            break;
        }
        if (local->code != S3C_EXIT_LOCKED) {
            g_propagate_error(err, g_steal_pointer(&local));
            break;
        }
        g_clear_error(&local);
        if (held) {
            g_string_free(held, true);
        }
        json_object_put(holder);
        holder = NULL;
        if (!s3c_s3_get(repo, key, &held, &local) && local) {
            g_propagate_error(err, g_steal_pointer(&local));
            break;
        }
        holder = held ? json_tokener_parse(held->str) : NULL;
        if (held && !(holder && (holder_is_dead(holder) ||
                                 (break_stale &&
                                  lock_is_too_old(holder, stale_after))))) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                        "VM %s is locked by another s3chain command (%s); "
                        "wait for it, or if it is gone and the lock older "
                        "than --lock-stale, run again with --break-stale-lock",
                        cat->vm, held->str);
            break;
        }
        if (held && !s3c_s3_delete(repo, key, err)) {
            break;
        }
    }
    json_object_put(holder);
    json_object_put(me);
    return ok;
}

void s3c_lock_release(const S3cRepo *repo, const S3cCatalog *cat)
{
    g_autofree char *key = lock_key(cat);
    g_autoptr(GError) local = NULL;

    if (!s3c_s3_delete(repo, key, &local)) {
        g_printerr("s3chain: warning: could not remove the lock s3://%s/%s: "
                   "%s\n", repo->bucket, key, local->message);
    }
}
