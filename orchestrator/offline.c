/*
 * offline.c: the disks of a shut-off VM, read straight from their
 * images: the bitmaps each qcow2 keeps, and an export of each image by
 * the sidecar, read-only and shared so that the VM may start meanwhile,
 * which the end of the read then finds out from the files
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct OfflineImage {
    char *node;                 /* also the export's name */
    char *context;              /* the dirty bitmap's, or NULL for all */
    struct stat before;         /* the file when the read began */
    bool added;
    bool exported;
} OfflineImage;

struct S3cOfflineRead {
    S3cSidecar *sidecar;
    GPtrArray *disks;           /* the run's, of S3cDiskBackup */
    OfflineImage *images;       /* one for each of disks */
};

static bool has_flag(json_object *flags, const char *flag)
{
    if (!json_object_is_type(flags, json_type_array)) {
        return false;
    }
    for (size_t i = 0; i < json_object_array_length(flags); i++) {
        if (!g_strcmp0(json_object_get_string(
                           json_object_array_get_idx(flags, i)), flag)) {
            return true;
        }
    }
    return false;
}

GPtrArray *s3c_offline_bitmaps(const S3cDisk *disk, GError **err)
{
    const char *args[] = {
        "info", "--output=json", "-U", "-f", disk->format, disk->path, NULL,
    };
    g_autoptr(GString) out = g_string_new(NULL);
    g_autoptr(GPtrArray) bitmaps =
        g_ptr_array_new_with_free_func(s3c_bitmap_free);
    json_object *info, *list = NULL;

    if (!s3c_qemu_img(NULL, args, NULL, NULL, out, err)) {
        g_prefix_error(err, "reading the image of disk %s (%s): ",
                       disk->name, disk->path);
        return NULL;
    }
    info = json_tokener_parse(out->str);
    if (!json_object_is_type(info, json_type_object)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "qemu-img info of %s printed no JSON object", disk->path);
        json_object_put(info);
        return NULL;
    }
    json_object_object_get_ex(info, "format-specific", &list);
    if (list) {
        json_object_object_get_ex(list, "data", &list);
    }
    if (list) {
        json_object_object_get_ex(list, "bitmaps", &list);
    }
    for (size_t i = 0; json_object_is_type(list, json_type_array) &&
                       i < json_object_array_length(list); i++) {
        json_object *b = json_object_array_get_idx(list, i);
        json_object *flags = NULL;
        S3cBitmap *bitmap;

        if (!s3c_json_str(b, "name")) {
            continue;
        }
        json_object_object_get_ex(b, "flags", &flags);
        bitmap = g_new0(S3cBitmap, 1);
        bitmap->name = g_strdup(s3c_json_str(b, "name"));
        bitmap->granularity = s3c_json_int(b, "granularity");
        bitmap->persistent = true;
        /* "in-use" in an image nobody has open: QEMU never closed it */
        bitmap->inconsistent = has_flag(flags, "in-use");
        bitmap->recording = has_flag(flags, "auto");
        g_ptr_array_add(bitmaps, bitmap);
    }
    json_object_put(info);
    return g_steal_pointer(&bitmaps);
}

S3cOfflineRead *s3c_offline_open(S3cBackupRun *run, GError **err)
{
    S3cOfflineRead *r = g_new0(S3cOfflineRead, 1);

    r->sidecar = run->sidecar;
    r->disks = g_ptr_array_ref(run->disks);
    r->images = g_new0(OfflineImage, run->disks->len);
    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);
        OfflineImage *img = &r->images[i];

        img->node = g_strdup_printf("s3c-read%u-%d", i, (int)getpid());
        if (stat(d->disk->path, &img->before) < 0) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_NOT_FOUND,
                        "the image of disk %s, %s: %s", d->disk->name,
                        d->disk->path, g_strerror(errno));
            goto fail;
        }
        if (!s3c_sidecar_add_image(r->sidecar, img->node, d->disk->path,
                                   d->disk->format, err)) {
            g_prefix_error(err, "opening the image of disk %s: ",
                           d->disk->name);
            goto fail;
        }
        img->added = true;
        if (!s3c_sidecar_export(r->sidecar, img->node, img->node, false,
                                d->incremental ? d->old_bitmap : NULL,
                                err)) {
            goto fail;
        }
        img->exported = true;
        if (d->incremental) {
            img->context = g_strconcat("qemu:dirty-bitmap:", d->old_bitmap,
                                       NULL);
        }
    }
    return r;

fail:
    s3c_offline_close(r, NULL);
    return NULL;
}

void s3c_offline_pull_source(S3cOfflineRead *r, guint i, S3cPullDisk *pull)
{
    pull->source_socket = r->sidecar->nbd_socket;
    pull->source_export = r->images[i].node;
    pull->source_peer = "the sidecar's export of the image";
    pull->source_error = S3C_EXIT_TRANSIENT;
    pull->dirty_context = r->images[i].context;
}

/* Written, or its owner or mode changed (libvirt relabels at a start) */
static bool changed(const struct stat *a, const struct stat *b)
{
    return a->st_dev != b->st_dev || a->st_ino != b->st_ino ||
           a->st_size != b->st_size ||
           a->st_mtim.tv_sec != b->st_mtim.tv_sec ||
           a->st_mtim.tv_nsec != b->st_mtim.tv_nsec ||
           a->st_ctim.tv_sec != b->st_ctim.tv_sec ||
           a->st_ctim.tv_nsec != b->st_ctim.tv_nsec;
}

bool s3c_offline_close(S3cOfflineRead *r, GError **err)
{
    bool ok = true;

    for (guint i = 0; i < r->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(r->disks, i);
        OfflineImage *img = &r->images[i];
        struct stat now;

        if (img->exported) {
            s3c_sidecar_unexport(r->sidecar, img->node, true, NULL);
        }
        if (img->added) {
            s3c_sidecar_del_node(r->sidecar, img->node);
        }
        /* a block device's times don't follow its writes */
        if (ok && err && img->added && S_ISREG(img->before.st_mode) &&
            (stat(d->disk->path, &now) < 0 || changed(&img->before, &now))) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "the image of disk %s (%s) changed while it was "
                        "read: the VM started, or something else wrote it; "
                        "the backup was abandoned, run it again",
                        d->disk->name, d->disk->path);
            ok = false;
        }
        g_free(img->node);
        g_free(img->context);
    }
    g_ptr_array_unref(r->disks);
    g_free(r->images);
    g_free(r);
    return ok;
}
