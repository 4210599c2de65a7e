/*
 * source-libvirt.c: a libvirt domain.  A running one goes through
 * libvirt's own backup API in pull mode: checkpoints hold the bitmaps,
 * QEMU's NBD server exports each disk at the backup's instant, and
 * pull.c copies what changed into the sidecar.  Nothing goes to QEMU
 * behind libvirt's back, so the domain is never tainted.  A shut-off
 * one's images are read directly (offline.c), with the bitmaps that
 * libvirt's checkpoints left in them.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define CHECKPOINT_PREFIX "s3chain-"
#define GUEST_AGENT_CHANNEL "org.qemu.guest_agent.0"
/* libvirt names an incremental's bitmap in the export after the disk */
#define EXPORT_BITMAP_PREFIX "backup-"
/* How long a libvirtd that went away has to come back */
#define RECONNECT_WAIT_S 30
#define RECONNECT_POLL_MS 500
/* The granularity libvirt gives a checkpoint's bitmaps */
#define CHECKPOINT_GRANULARITY (64 * 1024)

typedef struct LibvirtSource {
    S3cSource source;
    const S3cBackupOptions *opts;
    virConnectPtr conn;
    virDomainPtr dom;
    unsigned char uuid[VIR_UUID_BUFLEN];
    bool has_agent;
    /* QEMU's user and group, from the domain's DAC label, else -1 */
    uid_t qemu_uid;
    gid_t qemu_gid;
    GPtrArray *checkpoints;     /* names of ours that exist now */
    S3cBackupRun *run;
    bool offline;               /* the domain is shut off */
    S3cOfflineRead *read;       /* then its images, exported */
    char *work_dir;             /* scratch files and the NBD socket */
    char *socket;
    bool frozen;
    bool job_started;
    bool checkpoint_created;
} LibvirtSource;

static LibvirtSource *libvirt_source(S3cSource *src)
{
    /* the S3cSource is the first member */
    return (LibvirtSource *)src;
}

/* libvirt prints its errors itself unless told not to */
static void quiet(void *opaque, virErrorPtr error)
{
}

/* @what failed: libvirt's last error, with the exit code that fits it */
static bool libvirt_failed(GError **err, int code, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static bool libvirt_failed(GError **err, int code, const char *fmt, ...)
{
    virErrorPtr e = virGetLastError();
    va_list ap;
    g_autofree char *what = NULL;

    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (e && (e->domain == VIR_FROM_RPC || e->code == VIR_ERR_SYSTEM_ERROR ||
              e->code == VIR_ERR_NO_CONNECT)) {
        code = S3C_EXIT_VM_UNREACHABLE;
    } else if (e && e->code == VIR_ERR_NO_DOMAIN) {
        code = S3C_EXIT_NOT_FOUND;
    } else if (e && e->code == VIR_ERR_AUTH_FAILED) {
        code = S3C_EXIT_ACCESS_DENIED;
    }
    g_set_error(err, S3C_ERROR, code, "%s: %s", what,
                e && e->message ? e->message : "libvirt gave no reason");
    return false;
}

static const char *uri_name(LibvirtSource *s)
{
    return s->opts->libvirt_uri ? s->opts->libvirt_uri
                                : "libvirt's default URI";
}

static bool connect_domain(LibvirtSource *s, GError **err)
{
    const char *name = s->opts->libvirt_domain;

    s->conn = virConnectOpen(s->opts->libvirt_uri);
    if (!s->conn) {
        return libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                              "cannot connect to libvirt at %s (is libvirtd "
                              "running, and may this user use it?)",
                              uri_name(s));
    }
    s->dom = virDomainLookupByName(s->conn, name);
    if (!s->dom) {
        return libvirt_failed(err, S3C_EXIT_NOT_FOUND,
                              "libvirt at %s has no domain '%s'",
                              uri_name(s), name);
    }
    return virDomainGetUUID(s->dom, s->uuid) == 0 ||
           libvirt_failed(err, S3C_EXIT_INTERNAL, "domain %s", name);
}

/*
 * A libvirtd restarted since we connected leaves our connection dead,
 * while the backup job goes on in QEMU: connect again to end it, giving
 * libvirtd the time a restart takes
 */
static bool reconnect(LibvirtSource *s, GError **err)
{
    int64_t deadline = g_get_monotonic_time() +
                       RECONNECT_WAIT_S * G_USEC_PER_SEC;

    if (s->conn && virConnectIsAlive(s->conn) == 1) {
        return true;
    }
    if (s->dom) {
        virDomainFree(s->dom);
        s->dom = NULL;
    }
    if (s->conn) {
        virConnectClose(s->conn);
    }
    while (!(s->conn = virConnectOpen(s->opts->libvirt_uri))) {
        if (g_get_monotonic_time() > deadline) {
            return libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                                  "cannot connect to libvirt at %s again",
                                  uri_name(s));
        }
        g_usleep(RECONNECT_POLL_MS * 1000);
    }
    s->dom = virDomainLookupByUUID(s->conn, s->uuid);
    return s->dom || libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                                    "domain %s is gone",
                                    s->opts->libvirt_domain);
}

/* "+64055:+64055": the uid and gid QEMU runs as */
static void read_dac_label(LibvirtSource *s, const S3cXml *domain)
{
    g_autoptr(GPtrArray) labels = s3c_xml_children(domain, "seclabel");

    for (guint i = 0; i < labels->len; i++) {
        const S3cXml *l = g_ptr_array_index(labels, i);
        const char *text = s3c_xml_text(s3c_xml_find(l, "label"));
        unsigned uid, gid;

        if (!g_strcmp0(s3c_xml_attr(l, "model"), "dac") && text &&
            sscanf(text, "+%u:+%u", &uid, &gid) == 2) {
            s->qemu_uid = uid;
            s->qemu_gid = gid;
        }
    }
}

/* The disks of a checkpoint that hold a bitmap of it */
static GPtrArray *checkpoint_disks(const S3cXml *checkpoint)
{
    g_autoptr(GPtrArray) disks = s3c_xml_children(
        s3c_xml_find(checkpoint, "disks"), "disk");
    GPtrArray *names = g_ptr_array_new();

    for (guint i = 0; i < disks->len; i++) {
        const S3cXml *d = g_ptr_array_index(disks, i);

        if (!g_strcmp0(s3c_xml_attr(d, "checkpoint"), "bitmap") &&
            s3c_xml_attr(d, "name")) {
            g_ptr_array_add(names, (char *)s3c_xml_attr(d, "name"));
        }
    }
    return names;
}

static S3cDisk *find_disk(GPtrArray *disks, const char *name)
{
    for (guint i = 0; i < disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(disks, i);

        if (!strcmp(disk->name, name)) {
            return disk;
        }
    }
    return NULL;
}

/*
 * What the image of a shut-off domain's disk says of checkpoint @name's
 * bitmap (@image: the bitmaps in it), into @bitmap
 */
static void read_image_bitmap(const S3cDisk *disk, GPtrArray *image,
                              const char *name, S3cBitmap *bitmap)
{
    for (guint i = 0; image && i < image->len; i++) {
        const S3cBitmap *b = g_ptr_array_index(image, i);

        if (!strcmp(b->name, name)) {
            bitmap->granularity = b->granularity;
            bitmap->inconsistent = b->inconsistent;
            bitmap->recording = b->recording;
            return;
        }
    }
    bitmap->broken = g_strdup_printf("its bitmap is not in image %s",
                                     disk->path);
}

/*
 * Our checkpoints, oldest first, as bitmaps of the disks they cover.
 * libvirt checks the bitmaps in a running domain's images when asked for
 * their sizes; a shut-off domain's images are asked directly.  A
 * checkpoint whose bitmap is gone or broken (the VM crashed, the image
 * was swapped) is marked so, for backup.c to say why it takes a full
 * backup.
 */
static bool add_checkpoints(LibvirtSource *s, GPtrArray *disks,
                            GError **err)
{
    virDomainCheckpointPtr *list = NULL;
    int n = virDomainListAllCheckpoints(
        s->dom, &list, VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL);
    g_autoptr(GHashTable) images = g_hash_table_new_full(
        g_direct_hash, g_direct_equal, NULL,
        (GDestroyNotify)g_ptr_array_unref);
    bool ok = true;

    if (n < 0) {
        return libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                              "listing domain %s's checkpoints",
                              s->opts->libvirt_domain);
    }
    for (int i = 0; i < n; i++) {
        const char *name = virDomainCheckpointGetName(list[i]);
        g_autofree char *xml = NULL;
        g_autoptr(S3cXml) doc = NULL;
        g_autoptr(GPtrArray) names = NULL;
        g_autofree char *broken = NULL;

        if (ok && g_str_has_prefix(name, CHECKPOINT_PREFIX)) {
            g_ptr_array_add(s->checkpoints, g_strdup(name));
            xml = virDomainCheckpointGetXMLDesc(list[i], 0);
            doc = xml ? s3c_xml_parse(xml, "a checkpoint's XML", err) : NULL;
            if (!doc) {
                ok = xml ? false
                         : libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                                          "checkpoint %s", name);
                continue;
            }
            g_free(xml);
            xml = s->offline ? NULL : virDomainCheckpointGetXMLDesc(
                list[i], VIR_DOMAIN_CHECKPOINT_XML_SIZE);
            if (!xml && !s->offline) {
                virErrorPtr e = virGetLastError();

                broken = g_strdup(e && e->message ? e->message
                                                  : "libvirt can't size it");
            }
            names = checkpoint_disks(doc);
            for (guint j = 0; j < names->len; j++) {
                S3cDisk *disk = find_disk(disks,
                                          g_ptr_array_index(names, j));
                S3cBitmap *bitmap;

                if (!disk) {
                    continue;
                }
                bitmap = g_new0(S3cBitmap, 1);
                bitmap->name = g_strdup(name);
                bitmap->broken = g_strdup(broken);
                bitmap->granularity = CHECKPOINT_GRANULARITY;
                bitmap->persistent = true;
                bitmap->recording = true;
                g_ptr_array_add(disk->bitmaps, bitmap);
                if (s->offline && !broken) {
                    GPtrArray *image = g_hash_table_lookup(images, disk);

                    if (!image) {
                        image = s3c_offline_bitmaps(disk, err);
                        if (!image) {
                            ok = false;
                            break;
                        }
                        g_hash_table_insert(images, disk, image);
                    }
                    read_image_bitmap(disk, image, name, bitmap);
                }
            }
        }
    }
    for (int i = 0; i < n; i++) {
        virDomainCheckpointFree(list[i]);
    }
    g_free(list);
    return ok;
}

static S3cDisk *disk_of(LibvirtSource *s, const S3cXml *d, GError **err)
{
    const char *target = s3c_xml_attr(s3c_xml_find(d, "target"), "dev");
    const char *format = s3c_xml_attr(s3c_xml_find(d, "driver"), "type");
    const char *serial = s3c_xml_text(s3c_xml_find(d, "serial"));
    const S3cXml *source = s3c_xml_find(d, "source");
    const char *path = s3c_xml_attr(source, "file");
    virDomainBlockInfo info;
    S3cDisk *disk;

    if (!target) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "domain %s has a disk without a target in its XML",
                    s->opts->libvirt_domain);
        return NULL;
    }
    if (!path) {
        path = s3c_xml_attr(source, "dev");
    }
    if (s->offline && (!path || !g_path_is_absolute(path))) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "disk %s of shut-off domain %s is not a local file or "
                    "block device, and s3chain reaches a shut-off domain's "
                    "disks only so (a running one's go through libvirt)",
                    target, s->opts->libvirt_domain);
        return NULL;
    }
    if (virDomainGetBlockInfo(s->dom, target, &info, 0) < 0) {
        libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                       "the size of domain %s's disk %s",
                       s->opts->libvirt_domain, target);
        return NULL;
    }
    disk = s3c_disk_new();
    disk->name = g_strdup(target);
    disk->node = g_strdup(target);
    disk->format_node = g_strdup(target);
    disk->format = g_strdup(format ? format : "raw");
    disk->serial = g_strdup(serial ? serial : "");
    disk->size = info.capacity;
    disk->path = g_strdup(path);
    if (strcmp(disk->format, "qcow2")) {
        disk->no_checkpoint = g_strdup_printf(
            "libvirt keeps checkpoints only in qcow2 images, and disk %s "
            "is %s", target, disk->format);
    }
    return disk;
}

/* A work directory of ours: the files in it, then itself */
static void remove_dir(const char *dir)
{
    g_autoptr(GDir) d = dir ? g_dir_open(dir, 0, NULL) : NULL;
    const char *entry;

    while (d && (entry = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, entry, NULL);

        unlink(path);
    }
    if (dir) {
        rmdir(dir);
    }
}

/*
 * A backup job of libvirt's on this domain, left by an s3chain run that
 * was killed (we hold the VM's lock, so no other run is alive), is ended;
 * another tool's is not ours to end
 */
static bool end_leftover_job(LibvirtSource *s, GError **err)
{
    g_autofree char *xml = virDomainBackupGetXMLDesc(s->dom, 0);
    g_autoptr(S3cXml) doc = NULL;
    g_autofree char *dir = NULL;
    const char *socket;

    if (!xml) {
        return true;            /* no backup job */
    }
    doc = s3c_xml_parse(xml, "the domain's backup job's XML", err);
    if (!doc) {
        return false;
    }
    socket = s3c_xml_attr(s3c_xml_find(doc, "server"), "socket");
    if (!socket || !strstr(socket, "/" CHECKPOINT_PREFIX)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                    "domain %s has a backup job of another tool running "
                    "(virsh domjobinfo %s); wait for it to end",
                    s->opts->libvirt_domain, s->opts->libvirt_domain);
        return false;
    }
    if (virDomainAbortJob(s->dom) < 0) {
        return libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                              "ending the backup job a killed s3chain run "
                              "left on domain %s", s->opts->libvirt_domain);
    }
    s3c_output_info("ended the backup job that a killed s3chain run left "
                    "(its NBD socket %s)", socket);
    dir = g_path_get_dirname(socket);
    remove_dir(dir);
    return true;
}

/* The domain's writable disks, as its XML (@flags) describes them */
static GPtrArray *domain_disks(LibvirtSource *s, unsigned flags,
                               GError **err)
{
    g_autoptr(GPtrArray) disks =
        g_ptr_array_new_with_free_func((GDestroyNotify)s3c_disk_free);
    g_autofree char *xml = virDomainGetXMLDesc(s->dom, flags);
    g_autoptr(S3cXml) domain = NULL;
    g_autoptr(GPtrArray) list = NULL;
    g_autoptr(GPtrArray) channels = NULL;

    if (!xml) {
        libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE, "domain %s's XML",
                       s->opts->libvirt_domain);
        return NULL;
    }
    domain = s3c_xml_parse(xml, "the domain's XML", err);
    if (!domain) {
        return NULL;
    }
    read_dac_label(s, domain);
    list = s3c_xml_children(s3c_xml_find(domain, "devices"), "disk");
    for (guint i = 0; i < list->len; i++) {
        const S3cXml *d = g_ptr_array_index(list, i);
        S3cDisk *disk;

        if (g_strcmp0(s3c_xml_attr(d, "device"), "disk") ||
            s3c_xml_find(d, "readonly") || !s3c_xml_find(d, "source")) {
            continue;
        }
        disk = disk_of(s, d, err);
        if (!disk) {
            return NULL;
        }
        g_ptr_array_add(disks, disk);
    }
    channels = s3c_xml_children(s3c_xml_find(domain, "devices"), "channel");
    for (guint i = 0; i < channels->len; i++) {
        const S3cXml *target = s3c_xml_find(g_ptr_array_index(channels, i),
                                            "target");

        s->has_agent |= !g_strcmp0(s3c_xml_attr(target, "name"),
                                   GUEST_AGENT_CHANNEL);
    }
    return g_steal_pointer(&disks);
}

static GPtrArray *libvirt_disks(S3cSource *src, S3cBackupRun *run,
                                GError **err)
{
    LibvirtSource *s = libvirt_source(src);
    g_autoptr(GPtrArray) disks = NULL;
    int active = virDomainIsActive(s->dom);

    if (active < 0) {
        libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE, "domain %s",
                       s->opts->libvirt_domain);
        return NULL;
    }
    s->offline = !active;
    g_ptr_array_set_size(s->checkpoints, 0);
    /* before the checkpoints are looked at: a job keeps their bitmaps */
    if (active && !end_leftover_job(s, err)) {
        return NULL;
    }
    disks = domain_disks(s, active ? 0 : VIR_DOMAIN_XML_INACTIVE, err);
    if (!disks || !add_checkpoints(s, disks, err)) {
        return NULL;
    }
    return g_steal_pointer(&disks);
}

/*
 * The newest of our checkpoints whose bitmap in the disk's image records:
 * as nothing writes a shut-off domain's disks, it covers every change
 * after this backup too, and the next backup of the disk follows it
 */
static char *newest_usable_checkpoint(const S3cDisk *disk)
{
    for (guint i = disk->bitmaps->len; i-- > 0;) {
        const S3cBitmap *b = g_ptr_array_index(disk->bitmaps, i);

        if (!b->broken && !b->inconsistent && b->recording) {
            return g_strdup(b->name);
        }
    }
    return NULL;
}

/* libvirt creates no checkpoint of a shut-off domain */
static void prepare_offline(LibvirtSource *s, S3cBackupRun *run)
{
    run->offline = true;
    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);

        g_free(d->checkpoint);
        d->checkpoint = newest_usable_checkpoint(d->disk);
    }
    s3c_output_info("domain %s is shut off: reading its disk images "
                    "directly", s->opts->libvirt_domain);
}

/*
 * The scratch files hold the old contents of blocks the guest rewrites
 * while the backup runs: at worst each disk's size.  A file system that
 * can't take the worst case is refused before anything starts, so that
 * a full scratch never fails a guest write.
 */
static bool libvirt_prepare(S3cSource *src, S3cBackupRun *run, GError **err)
{
    LibvirtSource *s = libvirt_source(src);
    const char *parent = s->opts->scratch_dir ? s->opts->scratch_dir
                                              : "/var/tmp";
    uint64_t worst = 0;
    struct statvfs fs;
    uint64_t avail;

    s->run = run;
    if (s->offline) {
        prepare_offline(s, run);
        return true;
    }
    for (guint i = 0; i < run->disks->len; i++) {
        worst += ((S3cDiskBackup *)g_ptr_array_index(run->disks, i))
                 ->disk->size;
    }
    if (statvfs(parent, &fs) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "scratch directory %s: %s; give --scratch-dir", parent,
                    g_strerror(errno));
        return false;
    }
    avail = (uint64_t)fs.f_bavail * fs.f_frsize;
    if (avail < worst) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "scratch directory %s has %" G_GUINT64_FORMAT " MiB "
                    "free, and the guest may rewrite all %" G_GUINT64_FORMAT
                    " MiB of the disks during the backup; give --scratch-dir "
                    "on a file system with room", parent, avail >> 20,
                    worst >> 20);
        return false;
    }
    s->work_dir = g_strdup_printf("%s/%s%s", parent, CHECKPOINT_PREFIX,
                                  s->run->id);
    if (mkdir(s->work_dir, 0750) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot create scratch directory %s: %s; give "
                    "--scratch-dir", s->work_dir, g_strerror(errno));
        g_clear_pointer(&s->work_dir, g_free);
        return false;
    }
    /* QEMU creates the socket and the scratch files in it */
    if (s->qemu_uid != (uid_t)-1 &&
        chown(s->work_dir, s->qemu_uid, s->qemu_gid) < 0) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE,
                    "cannot give scratch directory %s to QEMU's user %u: "
                    "%s", s->work_dir, s->qemu_uid, g_strerror(errno));
        rmdir(s->work_dir);
        g_clear_pointer(&s->work_dir, g_free);
        return false;
    }
    s->socket = g_build_filename(s->work_dir, "nbd.sock", NULL);
    return true;
}

static void xml_attr(GString *xml, const char *name, const char *value)
{
    g_autofree char *escaped = g_markup_escape_text(value, -1);

    g_string_append_printf(xml, " %s='%s'", name, escaped);
}

static S3cDiskBackup *backup_of(S3cBackupRun *run, const char *name)
{
    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);

        if (!strcmp(d->disk->name, name)) {
            return d;
        }
    }
    return NULL;
}

static bool gets_checkpoint(const S3cDiskBackup *d)
{
    return d && !d->disk->no_checkpoint;
}

/* <domainbackup mode='pull'>: each disk's export, full or incremental */
static char *backup_xml(LibvirtSource *s, GPtrArray *all_disks)
{
    GString *xml = g_string_new("<domainbackup mode='pull'>\n  <server"
                                " transport='unix'");

    xml_attr(xml, "socket", s->socket);
    g_string_append(xml, "/>\n  <disks>\n");
    for (guint i = 0; i < all_disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(all_disks, i);
        S3cDiskBackup *d = backup_of(s->run, disk->name);
        g_autofree char *scratch = NULL;
        g_autofree char *bitmap = NULL;

        g_string_append(xml, "    <disk");
        xml_attr(xml, "name", disk->name);
        if (!d) {
            g_string_append(xml, " backup='no'/>\n");
            continue;
        }
        xml_attr(xml, "backup", "yes");
        xml_attr(xml, "type", "file");
        xml_attr(xml, "exportname", disk->name);
        xml_attr(xml, "backupmode", d->incremental ? "incremental" : "full");
        if (d->incremental) {
            bitmap = g_strconcat(EXPORT_BITMAP_PREFIX, disk->name, NULL);
            xml_attr(xml, "incremental", d->old_bitmap);
            xml_attr(xml, "exportbitmap", bitmap);
        }
        scratch = g_strdup_printf("%s/%s.scratch.qcow2", s->work_dir,
                                  disk->name);
        g_string_append(xml, ">\n      <driver type='qcow2'/>\n"
                        "      <scratch");
        xml_attr(xml, "file", scratch);
        g_string_append(xml, "/>\n    </disk>\n");
    }
    g_string_append(xml, "  </disks>\n</domainbackup>\n");
    return g_string_free(xml, false);
}

/* The new checkpoint: a bitmap in each qcow2 disk of the backup */
static char *checkpoint_xml(LibvirtSource *s, GPtrArray *all_disks)
{
    GString *xml = g_string_new("<domaincheckpoint>\n  <name>");
    bool any = false;

    g_string_append_printf(xml, "%s</name>\n  <description>s3chain backup "
                           "%s</description>\n  <disks>\n",
                           s->run->checkpoint, s->run->id);
    for (guint i = 0; i < all_disks->len; i++) {
        S3cDisk *disk = g_ptr_array_index(all_disks, i);
        bool bitmap = gets_checkpoint(backup_of(s->run, disk->name));

        g_string_append(xml, "    <disk");
        xml_attr(xml, "name", disk->name);
        xml_attr(xml, "checkpoint", bitmap ? "bitmap" : "no");
        g_string_append(xml, "/>\n");
        any |= bitmap;
    }
    g_string_append(xml, "  </disks>\n</domaincheckpoint>\n");
    if (!any) {
        g_string_free(xml, true);
        return NULL;
    }
    return g_string_free(xml, false);
}

static void freeze(LibvirtSource *s)
{
    if (!s->has_agent) {
        s3c_output_info("domain %s has no guest agent channel: backing up "
                        "without freezing its filesystems",
                        s->opts->libvirt_domain);
        return;
    }
    if (virDomainFSFreeze(s->dom, NULL, 0, 0) < 0) {
        virErrorPtr e = virGetLastError();

        s3c_output_warning("backing up without freezing the "
                           "guest's filesystems: %s",
                           e && e->message ? e->message : "the agent did not answer");
        return;
    }
    s->frozen = true;
    s3c_output_info("guest filesystems frozen");
}

static void thaw(LibvirtSource *s)
{
    if (s->frozen && virDomainFSThaw(s->dom, NULL, 0, 0) < 0) {
        virErrorPtr e = virGetLastError();

        s3c_output_warning("could not thaw the guest's "
                           "filesystems: %s",
                           e && e->message ? e->message : "no reason given");
    }
    s->frozen = false;
}

static bool libvirt_start(S3cSource *src, S3cBackupRun *run, GError **err)
{
    LibvirtSource *s = libvirt_source(src);
    g_autofree char *backup = NULL;
    g_autofree char *checkpoint = NULL;
    int rc;

    if (s->offline) {
        run->instant = s3c_backup_now();
        s->read = s3c_offline_open(run, err);
        return s->read != NULL;
    }
    backup = backup_xml(s, run->all_disks);
    checkpoint = checkpoint_xml(s, run->all_disks);
    freeze(s);
    rc = virDomainBackupBegin(s->dom, backup, checkpoint, 0);
    run->instant = s3c_backup_now();
    thaw(s);
    if (rc < 0) {
        return libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE,
                              "libvirt could not begin the backup of "
                              "domain %s", s->opts->libvirt_domain);
    }
    s->job_started = true;
    s->checkpoint_created = checkpoint != NULL;
    return true;
}

/* The shut-off domain started while its disks were read: it says so */
static bool started_meanwhile(LibvirtSource *s, GError **err)
{
    if (virDomainIsActive(s->dom) == 0) {
        return false;
    }
    g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                "domain %s started while its shut-off disks were read; the "
                "backup was abandoned: run it again (a running domain is "
                "backed up through libvirt's backup job)",
                s->opts->libvirt_domain);
    return true;
}

static bool libvirt_copy(S3cSource *src, S3cBackupRun *run, GError **err)
{
    LibvirtSource *s = libvirt_source(src);
    g_autofree S3cPullDisk *pulls = g_new0(S3cPullDisk, run->disks->len);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    bool ok;

    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);
        char *context = d->incremental
                        ? g_strconcat("qemu:dirty-bitmap:"
                                      EXPORT_BITMAP_PREFIX, d->disk->name,
                                      NULL)
                        : NULL;

        g_ptr_array_add(names, context);
        pulls[i] = (S3cPullDisk) {
            .name = d->disk->name,
            .source_socket = s->socket,
            .source_export = d->disk->name,
            .dirty_context = context,
            .target_socket = run->sidecar->nbd_socket,
            .target_export = d->target.export_name,
        };
        if (s->offline) {
            s3c_offline_pull_source(s->read, i, &pulls[i]);
        }
    }
    ok = s3c_pull_copy(pulls, run->disks->len, run->opts->buffer_size, err);
    if (!ok && s->offline && reconnect(s, NULL)) {
        /* the start is what broke the read: say that, not how it broke */
        g_autoptr(GError) started = NULL;

        if (started_meanwhile(s, &started)) {
            g_clear_error(err);
            g_propagate_error(err, g_steal_pointer(&started));
        }
    }
    for (guint i = 0; i < run->disks->len; i++) {
        S3cDiskBackup *d = g_ptr_array_index(run->disks, i);

        d->bytes_copied = pulls[i].bytes_done;
        d->duration = pulls[i].seconds;
    }
    return ok;
}

/*
 * What the scratch files hold now.  They only grow while the job runs,
 * so at its end this is their peak.
 */
static void read_scratch_use(LibvirtSource *s)
{
    virTypedParameterPtr params = NULL;
    int nparams = 0;
    int type;
    unsigned long long used;

    if (virDomainGetJobStats(s->dom, &type, &params, &nparams, 0) < 0) {
        return;
    }
    if (virTypedParamsGetULLong(params, nparams,
                                VIR_DOMAIN_JOB_DISK_TEMP_USED, &used) == 1) {
        s->run->has_scratch = true;
        s->run->scratch_bytes = used;
    }
    virTypedParamsFree(params, nparams);
}

/* Ends libvirt's backup job: QEMU drops the export and the scratch */
static bool end_job(LibvirtSource *s, GError **err)
{
    g_autofree char *why = NULL;

    if (!s->job_started) {
        return true;
    }
    if (!reconnect(s, err)) {
        return false;
    }
    if (virDomainAbortJob(s->dom) < 0) {
        virErrorPtr e = virGetLastError();

        why = g_strdup(e && e->message ? e->message : "no reason given");
        /* a domain that stopped has no job left to end */
        if (virDomainIsActive(s->dom) != 0) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_VM_UNREACHABLE,
                        "ending the backup job of domain %s: %s",
                        s->opts->libvirt_domain, why);
            return false;
        }
    }
    s->job_started = false;
    return true;
}

/*
 * The images were read while nothing wrote them: no file changed, and
 * the domain is still off (the times of a block device tell nothing)
 */
static bool finish_offline(LibvirtSource *s, GError **err)
{
    g_autoptr(GError) changed = NULL;
    bool unchanged = s3c_offline_close(g_steal_pointer(&s->read), &changed);

    if (!reconnect(s, err) || started_meanwhile(s, err)) {
        return false;
    }
    if (!unchanged) {
        g_propagate_error(err, g_steal_pointer(&changed));
        return false;
    }
    return true;
}

static bool libvirt_finish(S3cSource *src, S3cBackupRun *run, GError **err)
{
    LibvirtSource *s = libvirt_source(src);
    bool ok;

    if (s->offline) {
        return finish_offline(s, err);
    }
    /* a libvirtd gone for good leaves the job to abandon() */
    if (!reconnect(s, err)) {
        return false;
    }
    read_scratch_use(s);
    ok = end_job(s, err);
    remove_dir(s->work_dir);
    return ok;
}

static void delete_checkpoint(LibvirtSource *s, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(s->dom, name,
                                                                0);

    if (!cp || virDomainCheckpointDelete(cp, 0) < 0) {
        virErrorPtr e = virGetLastError();

        s3c_output_warning("could not delete checkpoint %s of "
                           "domain %s: %s", name, s->opts->libvirt_domain,
                           e && e->message ? e->message : "no reason given");
    }
    if (cp) {
        virDomainCheckpointFree(cp);
    }
}

/*
 * The catalog holds the backup: our older checkpoints are of no use,
 * unless one still covers a disk that this backup left out
 */
static void libvirt_committed(S3cSource *src, S3cBackupRun *run)
{
    LibvirtSource *s = libvirt_source(src);
    g_autoptr(GError) local = NULL;

    if (!s->checkpoint_created) {
        return;
    }
    if (!reconnect(s, &local)) {
        s3c_output_warning("older checkpoints stay: %s",
                           local->message);
        return;
    }
    for (guint i = 0; i < s->checkpoints->len; i++) {
        const char *name = g_ptr_array_index(s->checkpoints, i);
        bool needed = false;

        if (!strcmp(name, run->checkpoint)) {
            continue;
        }
        for (guint j = 0; j < run->all_disks->len; j++) {
            S3cDisk *disk = g_ptr_array_index(run->all_disks, j);

            needed |= s3c_disk_bitmap(disk, name) &&
                      !gets_checkpoint(backup_of(run, disk->name));
        }
        if (!needed) {
            delete_checkpoint(s, name);
        }
    }
}

/*
 * The job ends, and the new checkpoint goes: the last committed one
 * still covers every change since, for the next backup
 */
static void libvirt_abandon(S3cSource *src, S3cBackupRun *run)
{
    LibvirtSource *s = libvirt_source(src);
    g_autoptr(GError) local = NULL;

    if (s->read) {
        s3c_offline_close(g_steal_pointer(&s->read), NULL);
    }
    thaw(s);
    if (!end_job(s, &local)) {
        g_printerr("s3chain: warning: %s; the next backup ends it\n",
                   local->message);
    }
    if (s->checkpoint_created && s->dom &&
        virDomainIsActive(s->dom) == 1) {
        delete_checkpoint(s, run->checkpoint);
    } else if (s->checkpoint_created) {
        /* libvirt deletes checkpoints of running domains only */
        s3c_output_info("checkpoint %s stays until the next backup of "
                        "domain %s", run->checkpoint,
                        s->opts->libvirt_domain);
    }
    remove_dir(s->work_dir);
}

static void libvirt_free(S3cSource *src)
{
    LibvirtSource *s = libvirt_source(src);

    if (s->dom) {
        virDomainFree(s->dom);
    }
    if (s->conn) {
        virConnectClose(s->conn);
    }
    g_ptr_array_unref(s->checkpoints);
    g_free(s->work_dir);
    g_free(s->socket);
    g_free(s);
}

static const S3cSourceOps libvirt_ops = {
    .disks = libvirt_disks,
    .prepare = libvirt_prepare,
    .start = libvirt_start,
    .copy = libvirt_copy,
    .finish = libvirt_finish,
    .committed = libvirt_committed,
    .abandon = libvirt_abandon,
    .free = libvirt_free,
};

S3cSource *s3c_source_libvirt_new(const S3cBackupOptions *opts,
                                  GError **err)
{
    LibvirtSource *s = g_new0(LibvirtSource, 1);

    s->source.ops = &libvirt_ops;
    s->opts = opts;
    s->qemu_uid = (uid_t)-1;
    s->qemu_gid = (gid_t)-1;
    s->checkpoints = g_ptr_array_new_with_free_func(g_free);
    virSetErrorFunc(NULL, quiet);
    if (!connect_domain(s, err)) {
        libvirt_free(&s->source);
        return NULL;
    }
    return &s->source;
}

GPtrArray *s3c_libvirt_offline_disks(const char *uri, const char *domain,
                                     GError **err)
{
    S3cBackupOptions opts = { .libvirt_domain = domain, .libvirt_uri = uri };
    S3cSource *src = s3c_source_libvirt_new(&opts, err);
    LibvirtSource *s = src ? libvirt_source(src) : NULL;
    GPtrArray *disks = NULL;
    int active;

    if (!s) {
        return NULL;
    }
    active = virDomainIsActive(s->dom);
    if (active < 0) {
        libvirt_failed(err, S3C_EXIT_VM_UNREACHABLE, "domain %s", domain);
    } else if (active) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_TARGET,
                    "domain %s is running: shut it off before restoring "
                    "onto its disks (or restore to other files with "
                    "--target)", domain);
    } else {
        s->offline = true;
        disks = domain_disks(s, VIR_DOMAIN_XML_INACTIVE, err);
    }
    libvirt_free(src);
    return disks;
}

void s3c_libvirt_forget_checkpoints(const char *uri, const char *domain)
{
    S3cBackupOptions opts = { .libvirt_domain = domain, .libvirt_uri = uri };
    g_autoptr(GError) local = NULL;
    S3cSource *src = s3c_source_libvirt_new(&opts, &local);
    virDomainCheckpointPtr *list = NULL;
    int n = src ? virDomainListAllCheckpoints(libvirt_source(src)->dom,
                                              &list, 0) : -1;

    for (int i = 0; i < n; i++) {
        const char *name = virDomainCheckpointGetName(list[i]);

        if (g_str_has_prefix(name, CHECKPOINT_PREFIX) &&
            virDomainCheckpointDelete(
                list[i], VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) < 0) {
            virErrorPtr e = virGetLastError();

            s3c_output_warning("checkpoint %s of domain %s stays: "
                               "%s", name, domain,
                               e && e->message ? e->message : "no reason given");
        }
        virDomainCheckpointFree(list[i]);
    }
    g_free(list);
    if (src) {
        libvirt_free(src);
    }
}
