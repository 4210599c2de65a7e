/*
 * prune.c: s3chain prune, keep rules as restic's (--keep-last, -hourly,
 * -daily, -weekly, -monthly, -yearly, -within) and deleting the rest
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdio.h>
#include <string.h>

typedef struct Rule {
    const char *name;
    const char *format;         /* the period a backup falls in; NULL: own */
    int64_t left;               /* how many periods it still keeps */
    char *last;                 /* the period it kept last */
} Rule;

typedef struct Point {
    json_object *backup;
    GDateTime *time;
    GPtrArray *reasons;         /* of static strings; empty: it goes */
} Point;

static void point_clear(gpointer p)
{
    Point *pt = p;

    g_date_time_unref(pt->time);
    g_ptr_array_unref(pt->reasons);
}

static gint newest_first(gconstpointer a, gconstpointer b)
{
    return g_date_time_compare(((const Point *)b)->time,
                               ((const Point *)a)->time);
}

int64_t s3c_parse_duration(const char *text)
{
    static const struct { char unit; int64_t seconds; } units[] = {
        { 'y', 365 * 86400 }, { 'm', 30 * 86400 }, { 'w', 7 * 86400 },
        { 'd', 86400 }, { 'h', 3600 },
    };
    int64_t total = 0;
    const char *p = text;

    while (*p) {
        char *end;
        int64_t n = g_ascii_strtoll(p, &end, 10);
        bool known = false;

        if (end == p || n < 0 || n > 100000) {
            return -1;
        }
        for (size_t i = 0; i < G_N_ELEMENTS(units); i++) {
            if (*end == units[i].unit) {
                total += n * units[i].seconds;
                known = true;
            }
        }
        if (!known) {
            return -1;
        }
        p = end + 1;
    }
    return p == text ? -1 : total;
}

/*
 * Marks in @points (newest first) why each is kept: restic's rules, each
 * keeping the newest backup of each of its last N periods that have one
 */
static void apply_rules(const S3cPruneOptions *opts, GArray *points)
{
    Rule rules[] = {
        { "last", NULL, opts->keep_last },
        { "hourly", "%Y-%m-%d %H", opts->keep_hourly },
        { "daily", "%Y-%m-%d", opts->keep_daily },
        { "weekly", "%G-%V", opts->keep_weekly },
        { "monthly", "%Y-%m", opts->keep_monthly },
        { "yearly", "%Y", opts->keep_yearly },
    };
    GDateTime *newest = points->len ?
        g_array_index(points, Point, 0).time : NULL;

    for (guint i = 0; i < points->len; i++) {
        Point *pt = &g_array_index(points, Point, i);

        for (size_t r = 0; r < G_N_ELEMENTS(rules); r++) {
            g_autofree char *period = rules[r].format ?
                g_date_time_format(pt->time, rules[r].format)
                : g_strdup(s3c_json_str(pt->backup, "id"));

            if (rules[r].left > 0 && g_strcmp0(period, rules[r].last)) {
                g_ptr_array_add(pt->reasons, (char *)rules[r].name);
                g_free(rules[r].last);
                rules[r].last = g_steal_pointer(&period);
                rules[r].left--;
            }
        }
        if (opts->keep_within_s &&
            g_date_time_difference(newest, pt->time) <=
            opts->keep_within_s * G_TIME_SPAN_SECOND) {
            g_ptr_array_add(pt->reasons, "within");
        }
    }
    for (size_t r = 0; r < G_N_ELEMENTS(rules); r++) {
        g_free(rules[r].last);
    }
}

static uint64_t point_bytes(json_object *backup)
{
    json_object *disks;
    uint64_t total = 0;

    json_object_object_get_ex(backup, "disks", &disks);
    for (size_t j = 0; j < json_object_array_length(disks); j++) {
        total += s3c_json_int(json_object_array_get_idx(disks, j),
                              "bytes-stored");
    }
    return total;
}

/* What the disks of the catalog's backups store, each image once */
static uint64_t stored_bytes(const S3cCatalog *cat)
{
    json_object *backups = s3c_catalog_backups(cat);
    uint64_t total = 0;

    for (size_t i = 0; i < json_object_array_length(backups); i++) {
        total += point_bytes(json_object_array_get_idx(backups, i));
    }
    return total;
}

/* The report of one VM, printed or added to @vms */
static void report_vm(const S3cPruneOptions *opts, const char *vm,
                      GArray *points, json_object *vms)
{
    json_object *kept = json_object_new_array();
    json_object *deleted = json_object_new_array();

    for (guint i = 0; i < points->len; i++) {
        Point *pt = &g_array_index(points, Point, i);
        const char *id = s3c_json_str(pt->backup, "id");
        const char *time = s3c_json_str(pt->backup, "time");
        json_object *reasons = json_object_new_array();
        g_autofree char *why = NULL;

        g_ptr_array_add(pt->reasons, NULL);
        why = g_strjoinv(",", (char **)pt->reasons->pdata);
        g_ptr_array_remove_index(pt->reasons, pt->reasons->len - 1);
        for (guint r = 0; r < pt->reasons->len; r++) {
            json_object_array_add(reasons, json_object_new_string(
                                      g_ptr_array_index(pt->reasons, r)));
        }
        if (!opts->json) {
            printf("%-12s %-22s %-24.24s %-6s %s\n", vm, id, time,
                   pt->reasons->len ? "keep" : "delete", why);
        }
        if (pt->reasons->len) {
            json_object_array_add(kept, s3c_json_obj(
                "id", json_object_new_string(id),
                "time", json_object_new_string(time),
                "reasons", reasons, NULL));
        } else {
            json_object_put(reasons);
            json_object_array_add(deleted, s3c_json_obj(
                "id", json_object_new_string(id),
                "time", json_object_new_string(time),
                "bytes-stored", json_object_new_int64(
                    point_bytes(pt->backup)), NULL));
        }
    }
    json_object_array_add(vms, s3c_json_obj(
        "vm", json_object_new_string(vm),
        "kept", kept, "deleted", deleted, NULL));
}

/* The bytes a prune of VM @vm freed, or would at most, in its report */
static void report_freed(const S3cPruneOptions *opts, const char *vm,
                         uint64_t freed, json_object *vms)
{
    json_object *report = json_object_array_get_idx(
        vms, json_object_array_length(vms) - 1);

    json_object_object_add(report, opts->dry_run ? "bytes-freed-at-most"
                                                 : "bytes-freed",
                           json_object_new_int64(freed));
    if (!opts->json) {
        g_autofree char *size = g_format_size_full(freed,
                                                   G_FORMAT_SIZE_IEC_UNITS);

        printf("%-12s %s %s\n", vm,
               opts->dry_run ? "would free at most" : "freed", size);
    }
}

static bool prune_vm(const S3cPruneOptions *opts, const S3cRepo *repo,
                     const char *vm, json_object *vms, S3cMergeStats *total,
                     GError **err)
{
    S3cLifecycle lc = { 0 };
    S3cCatalog peek = { 0 };
    S3cCatalog *cat;
    g_autoptr(GArray) points = g_array_new(false, true, sizeof(Point));
    g_autoptr(GPtrArray) going = g_ptr_array_new();
    json_object *backups;
    uint64_t before, freed = 0;
    bool ok;

    g_array_set_clear_func(points, point_clear);
    /* a dry run reads, and changes nothing: not even a killed run's */
    if (opts->dry_run) {
        ok = s3c_catalog_load(&peek, repo, vm, err);
        cat = &peek;
    } else {
        ok = s3c_lifecycle_open(&lc, repo, vm, &opts->lock, opts->vm != NULL,
                                err);
        cat = lc.cat;
    }
    backups = ok ? s3c_catalog_backups(cat) : NULL;
    for (size_t i = 0; ok && i < json_object_array_length(backups); i++) {
        json_object *b = json_object_array_get_idx(backups, i);
        g_autoptr(GTimeZone) utc = g_time_zone_new_utc();
        Point pt = {
            .backup = b,
            .time = g_date_time_new_from_iso8601(s3c_json_str(b, "time"),
                                                 utc),
            .reasons = g_ptr_array_new(),
        };

        if (s3c_backup_going(b)) {
            point_clear(&pt);
            continue;
        }
        g_array_append_val(points, pt);
    }
    if (ok) {
        g_array_sort(points, newest_first);
        apply_rules(opts, points);
        for (guint i = 0; i < points->len; i++) {
            Point *pt = &g_array_index(points, Point, i);

            if (!pt->reasons->len) {
                g_ptr_array_add(going, (char *)s3c_json_str(pt->backup,
                                                            "id"));
                freed += opts->dry_run ? point_bytes(pt->backup) : 0;
            }
        }
    }
    if (ok) {
        /* made before the entries it names go */
        report_vm(opts, vm, points, vms);
    }
    if (ok && !opts->dry_run) {
        before = stored_bytes(cat);
        ok = s3c_lifecycle_mark(&lc, going, err) &&
             s3c_lifecycle_finish(&lc, err);
        freed = before - MIN(before, stored_bytes(cat));
    }
    if (ok) {
        report_freed(opts, vm, freed, vms);
    }
    total->points_deleted += lc.stats.points_deleted;
    total->merges += lc.stats.merges;
    total->bytes_merged += lc.stats.bytes_merged;
    total->objects_deleted += lc.stats.objects_deleted;
    total->bytes_deleted += lc.stats.bytes_deleted;
    s3c_lifecycle_close(&lc);
    s3c_catalog_clear(&peek);
    return ok;
}

typedef struct Prune {
    const S3cPruneOptions *opts;
    const S3cRepo *repo;
    json_object *reports;
    S3cMergeStats total;
} Prune;

static bool prune_one(const char *vm, void *opaque, GError **err)
{
    Prune *p = opaque;

    return prune_vm(p->opts, p->repo, vm, p->reports, &p->total, err);
}

int s3c_prune(const S3cPruneOptions *opts, GError **err)
{
    S3cRepo repo = { 0 };
    Prune p = { .opts = opts, .repo = &repo,
                .reports = json_object_new_array() };
    g_autoptr(GError) locked = NULL;
    bool ok = s3c_repo_init(&repo, &opts->repo, err) &&
              s3c_s3_check_bucket(&repo, err);

    if (ok && !opts->json) {
        printf("%-12s %-22s %-24s %-6s %s\n", "VM", "BACKUP", "TIME (UTC)",
               "ACTION", "KEPT BY");
    }
    ok = ok && s3c_each_vm(&repo, opts->vm, prune_one, &p, &locked, err);
    if (ok && opts->json) {
        json_object *result = s3c_merge_stats_json(&p.total);

        json_object_object_add(result, "event",
                               json_object_new_string("result"));
        json_object_object_add(result, "dry-run",
                               json_object_new_boolean(opts->dry_run));
        json_object_object_add(result, "vms", json_object_get(p.reports));
        s3c_output_result(result);
    }
    if (ok && locked) {
        g_propagate_prefixed_error(err, g_steal_pointer(&locked),
                                   "pruned the other VMs; ");
        ok = false;
    }
    json_object_put(p.reports);
    s3c_repo_clear(&repo);
    return ok ? S3C_EXIT_OK : (*err)->code;
}
