/*
 * s3chain.h: the s3chain command's internal interfaces, one section per file
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef S3CHAIN_CMD_H
#define S3CHAIN_CMD_H

#include <glib.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

/*
 * Exit codes, stable and documented in docs/cli.rst.  A controller
 * retries on S3C_EXIT_TRANSIENT and S3C_EXIT_INTERRUPTED only.  Errors
 * are GErrors in the S3C_ERROR domain whose code is the exit code.
 */
enum {
    S3C_EXIT_OK = 0,
    S3C_EXIT_INTERNAL = 1,
    S3C_EXIT_USAGE = 2,
    S3C_EXIT_VM_UNREACHABLE = 3,
    S3C_EXIT_NOT_FOUND = 4,
    S3C_EXIT_ACCESS_DENIED = 5,
    S3C_EXIT_NO_BUCKET = 6,
    S3C_EXIT_LOCKED = 7,
    S3C_EXIT_TRANSIENT = 8,
    S3C_EXIT_INTERRUPTED = 9,
};

#define S3C_ERROR (s3c_error_quark())
GQuark s3c_error_quark(void);

/* Set by SIGINT and SIGTERM; long waits poll it */
extern volatile sig_atomic_t s3c_interrupted;

/* repo.c: the repository and its credentials */

typedef struct S3cRepo {
    char *endpoint;             /* http[s]://host[:port] */
    char *bucket;
    char *prefix;               /* "" or ending in '/' */
    char *region;
    char *access_key_id;
    char *secret_access_key;
    char *session_token;        /* NULL without one */
    char *cafile;               /* NULL for the system's */
    bool verify_tls;
} S3cRepo;

typedef struct S3cRepoOptions {
    const char *url;            /* s3://bucket[/prefix] */
    const char *endpoint;       /* else AWS_ENDPOINT_URL */
    const char *region;         /* else AWS_REGION, else us-east-1 */
    const char *credentials;    /* a 0600 AWS credentials file */
    const char *profile;        /* its section; else AWS_PROFILE, default */
    const char *cafile;
    bool no_verify_tls;
} S3cRepoOptions;

bool s3c_repo_init(S3cRepo *repo, const S3cRepoOptions *opts, GError **err);
void s3c_repo_clear(S3cRepo *repo);

/* s3.c: the few S3 requests the command makes itself */

/*
 * GETs @key into @body.  Returns false with *@body NULL when there is no
 * such object, false with @err set on any other failure.
 */
bool s3c_s3_get(const S3cRepo *repo, const char *key, GString **body,
                GError **err);
/* PUTs @data at @key; with @create_only, fails with EEXIST-like
 * S3C_EXIT_LOCKED if the object exists already */
bool s3c_s3_put(const S3cRepo *repo, const char *key, const char *data,
                size_t len, bool create_only, GError **err);
bool s3c_s3_delete(const S3cRepo *repo, const char *key, GError **err);
/* Checks that the bucket exists and the credentials may list it */
bool s3c_s3_check_bucket(const S3cRepo *repo, GError **err);

/* image.c: s3chain images in the bucket */

/* What the chunks of the image at @key hold, all-zero ones being absent */
bool s3c_image_stored_bytes(const S3cRepo *repo, const char *key,
                            uint64_t *bytes, GError **err);

/* qmp.c: a QMP connection, behind an interface a libvirt one can take */

typedef struct S3cQmp S3cQmp;

typedef struct S3cQmpOps {
    json_object *(*execute)(S3cQmp *qmp, const char *command,
                            json_object *args, int timeout_ms, GError **err);
    /* Returns the next event, or NULL after @timeout_ms */
    json_object *(*next_event)(S3cQmp *qmp, int timeout_ms);
    void (*free)(S3cQmp *qmp);
} S3cQmpOps;

struct S3cQmp {
    const S3cQmpOps *ops;
    char *peer;                 /* "the VM", "the sidecar": for messages */
};

/*
 * Connects to the QMP socket at @path.  A guest agent (@agent) sends no
 * greeting and is synchronised with guest-sync instead.
 */
S3cQmp *s3c_qmp_connect(const char *path, const char *peer, bool agent,
                        int timeout_ms, GError **err);
/* Runs @command with @args (taken; may be NULL); returns its "return" */
json_object *s3c_qmp_execute(S3cQmp *qmp, const char *command,
                             json_object *args, GError **err);
json_object *s3c_qmp_execute_timeout(S3cQmp *qmp, const char *command,
                                     json_object *args, int timeout_ms,
                                     GError **err);
/* Runs @command with @args (taken) for its effect alone */
bool s3c_qmp_run(S3cQmp *qmp, const char *command, json_object *args,
                 GError **err);
json_object *s3c_qmp_next_event(S3cQmp *qmp, int timeout_ms);
void s3c_qmp_free(S3cQmp *qmp);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3cQmp, s3c_qmp_free)

/* json.c: building and reading json-c objects tersely */

/* Builds an object from name/value pairs ending in NULL; values taken */
json_object *s3c_json_obj(const char *name, ...) G_GNUC_NULL_TERMINATED;
const char *s3c_json_str(json_object *obj, const char *name);
/* The item of @list (query-jobs', query-block-exports'...) with this id */
json_object *s3c_json_find_id(json_object *list, const char *id);
int64_t s3c_json_int(json_object *obj, const char *name);
bool s3c_json_bool(json_object *obj, const char *name);
/* A duration, to the millisecond */
json_object *s3c_json_seconds(double seconds);

/* jobs.c: following QMP jobs to their end */

/* Starts job @id with @command and @args (taken) and waits for its end */
bool s3c_job_run(S3cQmp *qmp, const char *command, json_object *args,
                 const char *id, GError **err);

/* vm.c: the VM's disks and the QMP commands run on them */

typedef struct S3cBitmap {
    char *name;
    uint32_t granularity;
    bool persistent;
    bool inconsistent;
    bool recording;
    bool busy;
} S3cBitmap;

typedef struct S3cDisk {
    char *name;                 /* the device's id */
    char *qdev;                 /* its QOM path, for qom-set */
    char *node;                 /* the node it writes to */
    char *format;
    char *serial;               /* "" without one */
    uint64_t size;
    GPtrArray *bitmaps;         /* of S3cBitmap, on node */
} S3cDisk;

/* Lists the VM's writable disks */
GPtrArray *s3c_vm_disks(S3cQmp *vm, GError **err);
const S3cBitmap *s3c_disk_bitmap(const S3cDisk *disk, const char *name);
void s3c_disk_free(S3cDisk *disk);

/* sidecar.c: qemu-storage-daemon, which writes the images */

typedef struct S3cSidecar {
    S3cQmp *qmp;
    GPid pid;                   /* when the command started it, else 0 */
    char *own_qmp;              /* then its QMP socket */
    char *runtime_dir;
    char *secret_id;
    char *token_secret_id;
    char *nbd_socket;
    char *iothread;             /* for exports, when the sidecar has one */
} S3cSidecar;

typedef struct S3cTarget {
    char *key;                  /* the image's key in the bucket */
    char *backing;              /* relative name of its parent, or NULL */
    uint64_t size;
    uint32_t cluster_size;
    uint64_t buffer_size;
    char *export_name;          /* also names its nodes */
    json_object *file_options;  /* of its s3chain node, once added */
} S3cTarget;

/*
 * Connects to the sidecar at @qmp_path, or starts one with the
 * configuration in qsd-config/ when @qmp_path is NULL, and hands it the
 * credentials as secret objects read from files in @runtime_dir.
 */
bool s3c_sidecar_open(S3cSidecar *sc, const char *qmp_path,
                      const char *runtime_dir, const S3cRepo *repo,
                      GError **err);
/* Creates the target image in the bucket and exports it over NBD */
bool s3c_sidecar_add_target(S3cSidecar *sc, const S3cRepo *repo,
                            S3cTarget *t, GError **err);
/* Ends the export, commits the image and closes it */
bool s3c_sidecar_commit_target(S3cSidecar *sc, const S3cTarget *t,
                               GError **err);
/* Cuts the export's clients off at once and closes the image */
void s3c_sidecar_drop_target(S3cSidecar *sc, const S3cTarget *t);
void s3c_sidecar_close(S3cSidecar *sc);

/* catalog.c: the backups of a VM, as kept in the bucket */

#define S3C_CATALOG_FORMAT 1

typedef struct S3cCatalog {
    char *vm;
    char *dir;                  /* key prefix of everything of this VM */
    json_object *doc;
} S3cCatalog;

/* Loads the VM's catalog, or starts an empty one */
bool s3c_catalog_load(S3cCatalog *cat, const S3cRepo *repo, const char *vm,
                      GError **err);
bool s3c_catalog_save(S3cCatalog *cat, const S3cRepo *repo, GError **err);
void s3c_catalog_clear(S3cCatalog *cat);
/* The newest backup entry that has disk @disk, or NULL */
json_object *s3c_catalog_last_disk(S3cCatalog *cat, const char *disk,
                                   json_object **backup);
/* How many images the chain ending at backup @id of @disk holds */
int s3c_catalog_chain_length(S3cCatalog *cat, const char *disk,
                             const char *id);
void s3c_catalog_append(S3cCatalog *cat, json_object *backup);
char *s3c_catalog_image_key(const S3cCatalog *cat, const char *disk,
                            const char *id);
/* The name of an image relative to its child's, for backing files */
char *s3c_catalog_image_name(const char *id);

/*
 * Takes the VM's lock, a create-only object.  A lock held by a process
 * of this host that is gone is broken; one older than @stale_after
 * seconds only when @break_stale.
 */
bool s3c_lock_acquire(const S3cRepo *repo, const S3cCatalog *cat,
                      int64_t stale_after, bool break_stale, GError **err);
void s3c_lock_release(const S3cRepo *repo, const S3cCatalog *cat);

/* output.c: progress and results for people and for controllers */

typedef enum S3cOutputMode {
    S3C_OUTPUT_BAR,
    S3C_OUTPUT_JSON,
    S3C_OUTPUT_NONE,
} S3cOutputMode;

void s3c_output_init(S3cOutputMode mode);
/* A progress event: a JSON line on stdout in JSON mode; @obj is taken */
void s3c_output_event(json_object *obj);
/* One JSON object on a line of its own on stdout; @obj is taken */
void s3c_output_result(json_object *obj);
void s3c_output_progress(uint64_t done, uint64_t total);
void s3c_output_info(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* backup.c */

typedef struct S3cBackupOptions {
    S3cRepoOptions repo;
    const char *vm;
    const char *vm_qmp;
    const char *sidecar_qmp;
    const char *runtime_dir;
    const char *guest_agent;
    char **disks;               /* NULL for every writable disk */
    bool full;
    int chain_limit;
    int cbw_timeout;
    uint64_t buffer_size;
    int64_t lock_stale_after;
    bool break_lock;
    bool json;
} S3cBackupOptions;

int s3c_backup(const S3cBackupOptions *opts, GError **err);

#endif
