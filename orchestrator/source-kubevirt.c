/*
 * source-kubevirt.c: KubeVirt's VirtualMachineBackup in pull mode: the
 * backup's status names each volume's map and data endpoints on
 * KubeVirt's export server, which the pull-mode copier reads over HTTPS
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

#define API_GROUP "backup.kubevirt.io/"
#define TYPE_FULL "Full"
#define TYPE_INCREMENTAL "Incremental"
/* libvirt's default granularity of a qcow2 disk's checkpoint bitmap */
#define CHECKPOINT_GRANULARITY (64 * 1024)
/* Kubernetes' longest object name */
#define KUBE_NAME_MAX 253
/* A VirtualMachineBackup or tracker as kubectl prints it is a few KiB */
#define OBJECT_MAX_BYTES (4 * 1024 * 1024)

typedef struct KubevirtVolume {
    char *name;
    char *map_url;
    char *data_url;
} KubevirtVolume;

struct S3cKubevirtBackup {
    char *name;                 /* NAMESPACE/NAME, for messages */
    char *vm;                   /* NAMESPACE.VM, the default --vm */
    bool incremental;           /* status.type */
    char *checkpoint;           /* status.checkpointName, or NULL */
    char *base;                 /* the tracker's latest checkpoint */
    char *created;              /* metadata.creationTimestamp */
    char *ca_pem;               /* status.endpointCert */
    char *ca_file;
    char *token;
    GArray *volumes;            /* of KubevirtVolume */
};

typedef struct KubevirtSource {
    S3cSource source;
    const S3cKubevirtBackup *kv;
    GPtrArray *exports;         /* of S3cExport, one per volume */
    GPtrArray *whole;           /* of GArray: each volume's data */
    GPtrArray *changed;         /* of GArray: what changed, incremental */
} KubevirtSource;

static KubevirtSource *kubevirt_source(S3cSource *src)
{
    return (KubevirtSource *)src;
}

static bool bad_input(GError **err, const char *file, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static bool bad_input(GError **err, const char *file, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE, "%s: %s", file, why);
    return false;
}

/* The bytes of @path ("-": stdin), as `kubectl get -o json` prints them */
static char *read_text(const char *path, const char *kind, gsize *len,
                       GError **err)
{
    g_autoptr(GError) local = NULL;
    char *text = NULL;

    if (!strcmp(path, "-")) {
        g_autoptr(GIOChannel) in = g_io_channel_unix_new(0);

        g_io_channel_set_encoding(in, NULL, NULL);
        g_io_channel_read_to_end(in, &text, len, &local);
    } else {
        g_file_get_contents(path, &text, len, &local);
    }
    if (local) {
        g_free(text);
        bad_input(err, path, "cannot read the %s: %s", kind, local->message);
        return NULL;
    }
    return text;
}

/* The JSON object of @text, a @kind of KubeVirt's backup API */
static json_object *parse_object(const char *what, const char *text,
                                 size_t len, const char *kind, GError **err)
{
    json_tokener *tok;
    json_object *obj;

    if (len > OBJECT_MAX_BYTES) {
        bad_input(err, what, "%zu bytes is no %s", len, kind);
        return NULL;
    }
    tok = json_tokener_new();
    obj = json_tokener_parse_ex(tok, text, len);
    if (!obj || json_tokener_get_error(tok) != json_tokener_success ||
        !json_object_is_type(obj, json_type_object)) {
        json_tokener_free(tok);
        json_object_put(obj);
        bad_input(err, what, "is not a %s in JSON (kubectl get -o json)",
                  kind);
        return NULL;
    }
    json_tokener_free(tok);
    if (g_strcmp0(s3c_json_str(obj, "kind"), kind) ||
        !g_str_has_prefix(s3c_json_str(obj, "apiVersion") ?: "",
                          API_GROUP)) {
        json_object_put(obj);
        bad_input(err, what, "is no %s of %s*", kind, API_GROUP);
        return NULL;
    }
    return obj;
}

/* The member at the dotted @path of @obj, or NULL */
static json_object *member(json_object *obj, const char *path)
{
    g_auto(GStrv) names = g_strsplit(path, ".", -1);

    for (size_t i = 0; obj && names[i]; i++) {
        json_object *next = NULL;

        if (!json_object_is_type(obj, json_type_object) ||
            !json_object_object_get_ex(obj, names[i], &next)) {
            return NULL;
        }
        obj = next;
    }
    return obj;
}

static const char *member_str(json_object *obj, const char *path)
{
    json_object *v = member(obj, path);

    return v && json_object_is_type(v, json_type_string)
           ? json_object_get_string(v) : NULL;
}

/* A Kubernetes object's or a checkpoint's name, safe to quote */
static bool kube_name(const char *name)
{
    return s3c_plain_name(name, KUBE_NAME_MAX);
}

/* NAMESPACE.VM, if the catalog can name a VM so; else NULL */
static char *default_vm(const char *ns, const char *vm)
{
    g_autofree char *name = NULL;

    if (!kube_name(ns) || !kube_name(vm)) {
        return NULL;
    }
    name = g_strdup_printf("%s.%s", ns, vm);
    return s3c_plain_name(name, S3C_NAME_MAX) ? g_steal_pointer(&name)
                                              : NULL;
}

static bool endpoint_ok(const char *url)
{
    return url && (g_str_has_prefix(url, "https://") ||
                   g_str_has_prefix(url, "http://")) &&
           !strpbrk(url, " \r\n\t");
}

static bool read_volumes(S3cKubevirtBackup *kv, const char *file,
                         json_object *list, GError **err)
{
    size_t n = s3c_json_len(list);

    if (!n) {
        return bad_input(err, file, "status.includedVolumes is empty: the "
                         "backup has no volume, or its export is not ready "
                         "(wait for condition Progressing with reason "
                         "ExportReady)");
    }
    for (size_t i = 0; i < n; i++) {
        json_object *v = json_object_array_get_idx(list, i);
        KubevirtVolume vol = {
            .name = g_strdup(member_str(v, "volumeName")),
            .map_url = g_strdup(member_str(v, "mapEndpoint")),
            .data_url = g_strdup(member_str(v, "dataEndpoint")),
        };

        g_array_append_val(kv->volumes, vol);
        /* the catalog names the disk after it */
        if (!s3c_plain_name(vol.name, S3C_NAME_MAX)) {
            return bad_input(err, file, "status.includedVolumes[%zu] has "
                             "no volumeName of at most %d letters, digits, "
                             "'-', '_' and '.'", i, S3C_NAME_MAX);
        }
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(g_array_index(kv->volumes, KubevirtVolume,
                                      j).name, vol.name)) {
                return bad_input(err, file, "volume %s is listed twice",
                                 vol.name);
            }
        }
        if (!endpoint_ok(vol.map_url) || !endpoint_ok(vol.data_url)) {
            return bad_input(err, file, "volume %s has no https mapEndpoint "
                             "and dataEndpoint: is the backup in Pull mode, "
                             "and its export ready?", vol.name);
        }
    }
    return true;
}

static bool read_backup(S3cKubevirtBackup *kv, const char *file,
                        json_object *obj, GError **err)
{
    const char *ns, *name, *mode, *type, *source_kind;
    json_object *failed;

    ns = member_str(obj, "metadata.namespace");
    name = member_str(obj, "metadata.name");
    if (!kube_name(ns) || !kube_name(name)) {
        return bad_input(err, file, "has no metadata.namespace and "
                         "metadata.name");
    }
    kv->name = g_strdup_printf("%s/%s", ns, name);
    mode = member_str(obj, "spec.mode");
    if (g_strcmp0(mode, "Pull")) {
        g_autofree char *shown = g_strescape(mode ? mode : "Push", NULL);

        return bad_input(err, file, "VirtualMachineBackup %s is in %s mode: "
                         "s3chain reads pull-mode backups; create it with "
                         "spec.mode: Pull", kv->name, shown);
    }
    source_kind = member_str(obj, "spec.source.kind");
    if (!g_strcmp0(source_kind, "VirtualMachine")) {
        kv->vm = default_vm(ns, member_str(obj, "spec.source.name"));
    }
    failed = member(obj, "status.conditions");
    for (size_t i = 0; i < s3c_json_len(failed); i++) {
        json_object *c = json_object_array_get_idx(failed, i);

        if (!g_strcmp0(s3c_json_str(c, "type"), "Failed") &&
            !g_strcmp0(s3c_json_str(c, "status"), "True")) {
            /* KubeVirt's words, on the one line an error has */
            g_autofree char *why = g_strescape(
                s3c_json_str(c, "message") ?: "no reason given", NULL);

            g_set_error(err, S3C_ERROR, S3C_EXIT_VM_UNREACHABLE,
                        "VirtualMachineBackup %s failed: %s", kv->name, why);
            return false;
        }
    }
    type = member_str(obj, "status.type");
    if (g_strcmp0(type, TYPE_FULL) && g_strcmp0(type, TYPE_INCREMENTAL)) {
        return bad_input(err, file, "VirtualMachineBackup %s has no "
                         "status.type (Full or Incremental): has it "
                         "started?", kv->name);
    }
    kv->incremental = !strcmp(type, TYPE_INCREMENTAL);
    kv->checkpoint = g_strdup(member_str(obj, "status.checkpointName"));
    if (kv->checkpoint && !kube_name(kv->checkpoint)) {
        return bad_input(err, file, "status.checkpointName is no "
                         "checkpoint's name");
    }
    kv->created = g_strdup(member_str(obj, "metadata.creationTimestamp"));
    kv->ca_pem = g_strdup(member_str(obj, "status.endpointCert"));
    return read_volumes(kv, file, member(obj, "status.includedVolumes"),
                        err);
}

/* The checkpoint an incremental backup follows, from its tracker */
static bool read_tracker(S3cKubevirtBackup *kv, const char *file,
                         json_object *obj, GError **err)
{
    const char *ns, *vm;

    kv->base = g_strdup(member_str(obj, "status.latestCheckpoint.name"));
    if (kv->base && !kube_name(kv->base)) {
        return bad_input(err, file, "status.latestCheckpoint.name is no "
                         "checkpoint's name");
    }
    ns = member_str(obj, "metadata.namespace");
    vm = member_str(obj, "spec.source.name");
    if (!kv->vm) {
        kv->vm = default_vm(ns, vm);
    }
    return true;
}

typedef bool (*ReadObject)(S3cKubevirtBackup *kv, const char *file,
                           json_object *obj, GError **err);

static bool read_object(S3cKubevirtBackup *kv, const char *what,
                        const char *text, size_t len, const char *kind,
                        ReadObject read, GError **err)
{
    json_object *obj = parse_object(what, text, len, kind, err);
    bool ok = obj && read(kv, what, obj, err);

    json_object_put(obj);
    return ok;
}

static bool read_file(S3cKubevirtBackup *kv, const char *path,
                      const char *kind, ReadObject read, GError **err)
{
    gsize len = 0;
    g_autofree char *text = read_text(path, kind, &len, err);

    return text && read_object(kv, path, text, len, kind, read, err);
}

/* A token from a file no one else may read, its line end dropped */
static bool read_token(S3cKubevirtBackup *kv, const char *path,
                       GError **err)
{
    g_autoptr(GError) local = NULL;

    if (!s3c_private_file_ok(path, "export token file", err)) {
        return false;
    }
    if (!g_file_get_contents(path, &kv->token, NULL, &local)) {
        return bad_input(err, path, "cannot read the export token: %s",
                         local->message);
    }
    g_strchomp(kv->token);
    if (!*kv->token || strpbrk(kv->token, "\r\n")) {
        return bad_input(err, path, "holds no token (one line)");
    }
    return true;
}

static S3cKubevirtBackup *kubevirt_new(void)
{
    S3cKubevirtBackup *kv = g_new0(S3cKubevirtBackup, 1);

    kv->volumes = g_array_new(false, true, sizeof(KubevirtVolume));
    return kv;
}

S3cKubevirtBackup *s3c_kubevirt_parse(const char *what, const char *text,
                                      size_t len, GError **err)
{
    S3cKubevirtBackup *kv = kubevirt_new();

    if (!read_object(kv, what, text, len, "VirtualMachineBackup",
                     read_backup, err)) {
        s3c_kubevirt_free(kv);
        return NULL;
    }
    return kv;
}

S3cKubevirtBackup *s3c_kubevirt_load(const S3cKubevirtOptions *o,
                                     GError **err)
{
    S3cKubevirtBackup *kv = kubevirt_new();

    kv->ca_file = g_strdup(o->ca_file);
    if (!read_file(kv, o->backup_file, "VirtualMachineBackup",
                   read_backup, err) ||
        (o->tracker_file &&
         !read_file(kv, o->tracker_file, "VirtualMachineBackupTracker",
                    read_tracker, err))) {
        s3c_kubevirt_free(kv);
        return NULL;
    }
    if (kv->incremental && !o->tracker_file) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "VirtualMachineBackup %s is Incremental: give its "
                    "VirtualMachineBackupTracker, as read before the "
                    "backup was created, with --kubevirt-tracker, so "
                    "that s3chain knows the checkpoint it follows",
                    kv->name);
        s3c_kubevirt_free(kv);
        return NULL;
    }
    if (kv->incremental && !kv->base) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "VirtualMachineBackup %s is Incremental, but its "
                    "tracker (%s) names no status.latestCheckpoint",
                    kv->name, o->tracker_file);
        s3c_kubevirt_free(kv);
        return NULL;
    }
    if (!o->token_file) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "give the export's token (the secret that "
                    "spec.tokenSecretRef names) with --export-token-file");
        s3c_kubevirt_free(kv);
        return NULL;
    }
    if (!read_token(kv, o->token_file, err)) {
        s3c_kubevirt_free(kv);
        return NULL;
    }
    return kv;
}

const char *s3c_kubevirt_vm(const S3cKubevirtBackup *kv)
{
    return kv->vm;
}

void s3c_kubevirt_free(S3cKubevirtBackup *kv)
{
    if (!kv) {
        return;
    }
    for (guint i = 0; i < kv->volumes->len; i++) {
        KubevirtVolume *v = &g_array_index(kv->volumes, KubevirtVolume, i);

        g_free(v->name);
        g_free(v->map_url);
        g_free(v->data_url);
    }
    g_array_unref(kv->volumes);
    if (kv->token) {
        memset(kv->token, 0, strlen(kv->token));
    }
    g_free(kv->token);
    g_free(kv->name);
    g_free(kv->vm);
    g_free(kv->checkpoint);
    g_free(kv->base);
    g_free(kv->created);
    g_free(kv->ca_pem);
    g_free(kv->ca_file);
    g_free(kv);
}

/* Each volume, its size and bitmap as the maps say: KubeVirt has them */
static GPtrArray *kubevirt_disks(S3cSource *src, S3cBackupRun *run,
                                 GError **err)
{
    KubevirtSource *s = kubevirt_source(src);
    const S3cKubevirtBackup *kv = s->kv;
    GPtrArray *disks = g_ptr_array_new_with_free_func(
        (GDestroyNotify)s3c_disk_free);

    for (guint i = 0; i < kv->volumes->len; i++) {
        KubevirtVolume *v = &g_array_index(kv->volumes, KubevirtVolume, i);
        S3cExport *e = s3c_export_new(v->name, v->map_url, v->data_url,
                                      kv->token, kv->ca_pem, kv->ca_file);
        GArray *whole = g_array_new(false, false, sizeof(S3cExtent));
        GArray *changed = g_array_new(false, false, sizeof(S3cExtent));
        S3cDisk *disk = s3c_disk_new();

        g_ptr_array_add(s->exports, e);
        g_ptr_array_add(s->whole, whole);
        g_ptr_array_add(s->changed, changed);
        disk->name = g_strdup(v->name);
        disk->node = g_strdup(v->name);
        disk->format_node = g_strdup(v->name);
        disk->format = g_strdup("raw");
        disk->serial = g_strdup("");
        g_ptr_array_add(disks, disk);
        if (!s3c_export_map(e, kv->incremental, whole, changed, &disk->size,
                            err)) {
            g_ptr_array_unref(disks);
            return NULL;
        }
        if (kv->incremental) {
            S3cBitmap *b = g_new0(S3cBitmap, 1);

            b->name = g_strdup(kv->base);
            b->granularity = CHECKPOINT_GRANULARITY;
            b->persistent = b->recording = true;
            g_ptr_array_add(disk->bitmaps, b);
        }
    }
    return disks;
}

/*
 * KubeVirt chose full or incremental when the backup was created; what
 * the catalog decided must fit.  An incremental export reads whole as
 * well, but only changes since the checkpoint the catalog follows.
 */
static bool kubevirt_prepare(S3cSource *src, S3cBackupRun *run,
                             GError **err)
{
    KubevirtSource *s = kubevirt_source(src);
    const S3cKubevirtBackup *kv = s->kv;

    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);
        g_autofree char *follows = s3c_catalog_checkpoint(run->catalog,
                                                          d->disk->name);
        json_object *last_backup;

        g_free(d->checkpoint);
        d->checkpoint = g_strdup(kv->checkpoint);
        if (kv->incremental && g_strcmp0(follows, kv->base)) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                        "volume %s: VirtualMachineBackup %s is Incremental "
                        "from checkpoint %s, but this repository's last "
                        "backup of %s %s%s: create the VirtualMachineBackup "
                        "with spec.forceFullBackup: true", d->disk->name,
                        kv->name, kv->base, d->disk->name,
                        follows ? "follows checkpoint " : "has none",
                        follows ? follows : "");
            return false;
        }
        if (!kv->incremental && !d->incremental &&
            s3c_catalog_last_disk(run->catalog, d->disk->name,
                                  &last_backup) &&
            !run->opts->full) {
            g_free(d->reason);
            d->reason = g_strdup_printf("VirtualMachineBackup %s is Full",
                                        kv->name);
        }
    }
    return true;
}

/* The instant: when the VirtualMachineBackup was made, as the catalog says */
static bool kubevirt_start(S3cSource *src, S3cBackupRun *run, GError **err)
{
    KubevirtSource *s = kubevirt_source(src);
    g_autoptr(GDateTime) created = s->kv->created
        ? g_date_time_new_from_iso8601(s->kv->created, NULL) : NULL;

    run->instant = created ? g_date_time_format(created,
                                                "%Y-%m-%dT%H:%M:%S.%fZ")
                           : s3c_backup_now();
    return true;
}

static bool kubevirt_copy(S3cSource *src, S3cBackupRun *run, GError **err)
{
    KubevirtSource *s = kubevirt_source(src);
    g_autofree S3cPullDisk *pulls = g_new0(S3cPullDisk, run->disks->len);
    bool ok;

    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);
        guint v = 0;

        while (strcmp(g_array_index(s->kv->volumes, KubevirtVolume,
                                    v).name, d->disk->name)) {
            v++;
        }
        pulls[i] = (S3cPullDisk) {
            .name = d->disk->name,
            .export = g_ptr_array_index(s->exports, v),
            .extents = g_ptr_array_index(d->incremental ? s->changed
                                                        : s->whole, v),
            .source_peer = "the export server",
            .source_error = S3C_EXIT_TRANSIENT,
            .target_socket = run->sidecar->nbd_socket,
            .target_export = d->target.export_name,
        };
    }
    ok = s3c_pull_copy(pulls, run->disks->len, run->opts->buffer_size, err);
    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);

        d->bytes_copied = pulls[i].bytes_done;
        d->duration = pulls[i].seconds;
    }
    return ok;
}

static void kubevirt_free(S3cSource *src)
{
    KubevirtSource *s = kubevirt_source(src);

    g_ptr_array_unref(s->exports);
    g_ptr_array_unref(s->whole);
    g_ptr_array_unref(s->changed);
    g_free(s);
}

static const S3cSourceOps kubevirt_ops = {
    .disks = kubevirt_disks,
    .prepare = kubevirt_prepare,
    .start = kubevirt_start,
    .copy = kubevirt_copy,
    /* the controller completes the VirtualMachineBackup, or deletes it */
    .free = kubevirt_free,
};

S3cSource *s3c_source_kubevirt_new(const S3cBackupOptions *opts)
{
    KubevirtSource *s = g_new0(KubevirtSource, 1);

    s->source.ops = &kubevirt_ops;
    s->kv = opts->kubevirt;
    s->exports = g_ptr_array_new_with_free_func(
        (GDestroyNotify)s3c_export_free);
    s->whole = g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref);
    s->changed = g_ptr_array_new_with_free_func(
        (GDestroyNotify)g_array_unref);
    return &s->source;
}
