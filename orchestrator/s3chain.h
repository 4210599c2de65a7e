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

/* the format of images and the request policy, as the driver has them */
#include "../block/s3chain-format.h"
#include "../block/s3chain-retry.h"

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
    S3C_EXIT_TARGET = 10,       /* restore target exists or is too small */
    S3C_EXIT_DAMAGED = 11,      /* a backup's object is missing or wrong */
    S3C_EXIT_KEY = 12,          /* no key, or not the backups' key */
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
    int timeout_s;              /* of each request; 0: 30 s */
    int attempts;               /* of each request; 0: S3C_ATTEMPTS */
    /* --key-file's: the images' encryption key, and its key id in hex */
    bool has_key;
    uint8_t key[S3CHAIN_KEY_LEN];
    char *key_id;
} S3cRepo;

typedef struct S3cRepoOptions {
    const char *url;            /* s3://bucket[/prefix] */
    const char *endpoint;       /* else AWS_ENDPOINT_URL */
    const char *region;         /* else AWS_REGION, else us-east-1 */
    const char *credentials;    /* a 0600 AWS credentials file */
    const char *profile;        /* its section; else AWS_PROFILE, default */
    const char *cafile;
    bool no_verify_tls;
    /* a 0600 file of the encryption key: 32 bytes, or 64 hex digits */
    const char *key_file;
} S3cRepoOptions;

bool s3c_repo_init(S3cRepo *repo, const S3cRepoOptions *opts, GError **err);
/*
 * A file of secrets (@what, for the message) that only its owner may
 * read; else S3C_EXIT_USAGE
 */
bool s3c_private_file_ok(const char *path, const char *what, GError **err);
void s3c_repo_clear(S3cRepo *repo);
/*
 * The environment for a process the command starts: its own, without the
 * secret credentials, which a child gets as QEMU secret objects if at all
 */
char **s3c_child_environ(void);
/* The child setup of g_spawn for each process the command starts */
void s3c_die_with_parent(gpointer unused);
/* The QEMU secret objects a child is given, by their IDs */
typedef struct S3cSecretIds {
    const char *access_key;
    const char *token;          /* when the repository has a token */
    const char *encryption_key; /* when it has a key */
} S3cSecretIds;

/*
 * The options of an s3chain node for image @key, its secret access key
 * (and session token and encryption key, when there are) in QEMU secret
 * objects
 */
json_object *s3c_repo_location(const S3cRepo *repo, const char *key,
                               const S3cSecretIds *ids);
/* The repository's encryption key in base64, for a secret object */
char *s3c_repo_key_base64(const S3cRepo *repo);

/* s3.c: the few S3 requests the command makes itself */

/*
 * Tries of a request that may pass again (the bucket's, an export's), as
 * many as the driver's (block/s3chain-retry.h)
 */
#define S3C_ATTEMPTS (S3CHAIN_DEFAULT_RETRIES + 1)

/*
 * GETs @key into @body.  Returns false with *@body NULL when there is no
 * such object, false with @err set on any other failure.
 */
bool s3c_s3_get(const S3cRepo *repo, const char *key, GString **body,
                GError **err);
/* Also returns the response's header @meta in *@meta_value, or NULL */
bool s3c_s3_get_meta(const S3cRepo *repo, const char *key, const char *meta,
                     GString **body, char **meta_value, GError **err);
/* What a response said of an object's version and of the server's clock */
typedef struct S3cStamp {
    char *etag;                 /* bare, without quotes; NULL if none */
    int64_t last_modified;      /* Unix time, -1 if not said */
    int64_t server_time;        /* the response's Date, -1 if not said */
} S3cStamp;

#define S3C_STAMP_INIT { .etag = NULL, .last_modified = -1, \
                        .server_time = -1 }
void s3c_stamp_clear(S3cStamp *stamp);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(S3cStamp, s3c_stamp_clear)
/* s3c_s3_get() that also reads the object's stamp */
bool s3c_s3_get_stamped(const S3cRepo *repo, const char *key,
                        GString **body, S3cStamp *stamp, GError **err);
/* PUTs @data at @key */
bool s3c_s3_put(const S3cRepo *repo, const char *key, const char *data,
                size_t len, GError **err);

typedef enum S3cPutOutcome {
    S3C_PUT_DONE,
    S3C_PUT_PRECONDITION_FAILED,    /* the object is not as @if_match says */
    S3C_PUT_UNCONDITIONAL_ONLY,     /* the server has no conditional PUT */
    S3C_PUT_FAILED,                 /* with @err set */
} S3cPutOutcome;

/*
 * PUTs @data at @key only if the object is the version whose ETag is
 * @if_match, or with "*" only if there is none; the new version's stamp
 * in @stamp if not NULL
 */
S3cPutOutcome s3c_s3_put_if(const S3cRepo *repo, const char *key,
                            const char *data, size_t len,
                            const char *if_match, S3cStamp *stamp,
                            GError **err);
bool s3c_s3_delete(const S3cRepo *repo, const char *key, GError **err);
/*
 * Deletes @keys (of char *) with DeleteObjects, a thousand at a time, or
 * one by one where the server can't; a refusal is S3C_EXIT_ACCESS_DENIED
 * naming a key (others of its thousand may be gone)
 */
bool s3c_s3_delete_many(const S3cRepo *repo, GPtrArray *keys, GError **err);
/* Checks that the bucket exists and the credentials may list it */
bool s3c_s3_check_bucket(const S3cRepo *repo, GError **err);

typedef struct S3cObject {
    char *key;
    char *etag;                 /* lower case, unquoted */
    uint64_t size;
    int64_t last_modified;      /* Unix time, -1 if not said */
} S3cObject;

void s3c_object_free(S3cObject *obj);
/*
 * Lists the objects whose keys start with @prefix into @objects (of
 * S3cObject).  With @delimited, keys with a '/' past the prefix are
 * folded into @prefixes (of strings) instead.
 */
typedef enum S3cListing {
    S3C_LISTING_OK,
    S3C_LISTING_NOT_XML,
    S3C_LISTING_NOT_A_LISTING,      /* XML, but no ListBucketResult */
} S3cListing;

/*
 * Reads one ListObjectsV2 page, adding its objects (S3cObject) and
 * common prefixes to the arrays; *@next_token is the caller's
 */
S3cListing s3c_s3_parse_listing(const char *xml, size_t len,
                                GPtrArray *objects, GPtrArray *prefixes,
                                bool *truncated, char **next_token);
bool s3c_s3_list(const S3cRepo *repo, const char *prefix, bool delimited,
                 GPtrArray **objects, GPtrArray **prefixes, GError **err);

/* image.c: s3chain images in the bucket (docs/object-layout.rst) */

/* An object with some blocks of a chunk, over its whole object */
typedef struct S3cPatch {
    char *key;
    char *md5;                  /* lower-case hex */
    uint64_t blocks;            /* the blocks it holds, in order */
} S3cPatch;

typedef struct S3cChunk {
    uint64_t index;
    char *key;
    char *md5;                  /* lower-case hex */
    bool has_crc32;             /* manifests of version 1 have none */
    uint32_t crc32;             /* of the chunk as its patches make it */
    uint64_t block_size;        /* of its block sums, or 0 */
    char *block_sums;           /* hex; NULL: in its object's metadata */
    unsigned n_patches;         /* oldest first: the newest holding wins */
    S3cPatch patches[S3CHAIN_MAX_PATCHES];
    /*
     * compressed or encrypted: each block's length in the object; sums
     * are of those
     */
    uint32_t *stored_lengths;
    size_t n_stored;
    char *tag;                  /* of its object's upload */
} S3cChunk;

typedef struct S3cManifest {
    char *key;
    uint64_t size;
    uint64_t chunk_size;
    bool compressed;            /* version 6 or 7: blocks stored zstd */
    bool encrypted;             /* version 7: blocks sealed */
    uint8_t key_id[S3CHAIN_ID_LEN];
    uint8_t image_id[S3CHAIN_ID_LEN];
    size_t mac_covered;         /* encrypted: the bytes its MAC covers */
    char mac_hex[2 * S3CHAIN_MAC_LEN + 1];
    GPtrArray *chunks;          /* of S3cChunk, the stored ones */
} S3cManifest;

/*
 * Reads the manifest of image @key; missing or invalid is DAMAGED.  Given
 * the repository's key, an encrypted one must be of that key (else
 * S3C_EXIT_KEY) and match its MAC (else DAMAGED), and one not encrypted
 * is refused (S3C_EXIT_KEY); without, an encrypted one's MAC is not
 * checked.
 */
S3cManifest *s3c_manifest_load(const S3cRepo *repo, const char *key,
                               GError **err);
/* Reads @text, the manifest of image @key at @where, checking all of it */
S3cManifest *s3c_manifest_parse(const char *key, const GString *text,
                                const char *where, GError **err);
uint64_t s3c_manifest_stored_bytes(const S3cManifest *m);
void s3c_manifest_free(S3cManifest *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3cManifest, s3c_manifest_free)
/* What the chunks of the image at @key hold, all-zero ones being absent */
bool s3c_image_stored_bytes(const S3cRepo *repo, const char *key,
                            uint64_t *bytes, GError **err);
/*
 * Checks image @key of a @virtual_size disk: its manifest, and each
 * chunk it names, present with the manifest's MD5 as its ETag (@deep:
 * read, and its bytes hashed).  Each fault is added to @faults as
 * "s3://OBJECT: what"; @err is only for failing to check at all.
 */
bool s3c_image_verify(const S3cRepo *repo, const char *key,
                      uint64_t virtual_size, bool deep, GPtrArray *faults,
                      GError **err);

/* qemu-img.c: running the qemu-img of s3chain's build on images */

/*
 * The exit code that a report of the driver's, @text, means: damage
 * (S3CHAIN_DAMAGED) or a refused key (S3CHAIN_KEY_REFUSED), else
 * @otherwise; *@mark, if not NULL, is where that mark starts
 */
int s3c_driver_exit_code(const char *text, int otherwise, const char **mark);

/* -p's percentage, as qemu-img prints it */
typedef void (*S3cPercentFn)(double percent, void *opaque);

/*
 * The json: filename of image @key (a qcow2 whose parents open with it
 * unless @alone) for s3c_qemu_img
 */
char *s3c_qemu_img_filename(const S3cRepo *repo, const char *key,
                            bool alone);
/*
 * The json: filename of image @top over the parent its header names,
 * opened writable: what qemu-img commit merges @top into
 */
char *s3c_qemu_img_commit_filename(const S3cRepo *repo, const char *top);
/* The parent that image @key's header names, in *@name (NULL: none) */
bool s3c_qemu_img_backing_name(const S3cRepo *repo, const char *key,
                               char **name, GError **err);
/*
 * The same, with each image of the chain given the read plan in @plans
 * at its depth (0: @key's)
 */
char *s3c_qemu_img_planned_filename(const S3cRepo *repo, const char *key,
                                    GPtrArray *plans);
/*
 * Runs qemu-img with @args (its subcommand first, NULL-terminated), the
 * repository's secrets (unless @repo is NULL: local images alone) given
 * as objects read from pipes.  Its stdout
 * goes to @output when not NULL; a failure's message is its last line.
 */
bool s3c_qemu_img(const S3cRepo *repo, const char *const *args,
                  S3cPercentFn on_percent, void *opaque, GString *output,
                  GError **err);

/* plan.c: what a copy of a backup's chain reads of each image */

typedef struct S3cReadPlans {
    char *dir;                  /* private, removed by the clear */
    GPtrArray *files;           /* the plan of each depth of the chain */
} S3cReadPlans;

/*
 * Maps the chain of image @key with qemu-img map, and writes for each of
 * its images the plan of the ranges that a copy of the chain reads there
 * (block/s3chain-plan.c reads them): a chunk of a backup under later
 * ones then loads without what those shadow.
 */
bool s3c_read_plans_make(const S3cRepo *repo, const char *key,
                         S3cReadPlans *plans, GError **err);
void s3c_read_plans_clear(S3cReadPlans *plans);

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
    bool closed;                /* the peer hung up: it is gone */
};

/*
 * Connects to the QMP socket at @path.  A guest agent (@agent) sends no
 * greeting and is synchronised with guest-sync instead.
 */
S3cQmp *s3c_qmp_connect(const char *path, const char *peer, bool agent,
                        int timeout_ms, GError **err);
/* The same over socket @fd, connected already (taken) */
S3cQmp *s3c_qmp_open_fd(int fd, const char *peer, bool agent,
                        int timeout_ms, GError **err);
/* Runs @command with @args (taken; may be NULL); returns its "return" */
json_object *s3c_qmp_execute(S3cQmp *qmp, const char *command,
                             json_object *args, GError **err);
json_object *s3c_qmp_execute_timeout(S3cQmp *qmp, const char *command,
                                     json_object *args, int timeout_ms,
                                     GError **err);
/* s3c_qmp_execute() of a command that returns a list; any other reply is
 * the peer's fault */
json_object *s3c_qmp_execute_list(S3cQmp *qmp, const char *command,
                                  json_object *args, GError **err);
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
/*
 * How many items @list holds: 0 when it is no list, as a peer may send
 * (json-c asserts on a list that is not)
 */
size_t s3c_json_len(json_object *list);
/* The item of @list (query-jobs', query-block-exports'...) with this id */
json_object *s3c_json_find_id(json_object *list, const char *id);
int64_t s3c_json_int(json_object *obj, const char *name);
bool s3c_json_bool(json_object *obj, const char *name);
/* A duration, to the millisecond */
json_object *s3c_json_seconds(double seconds);

/* xml.c: libvirt's XML, read into a tree */

typedef struct S3cXml S3cXml;

/* Parses @doc; a fault is named with @what ("domain vm1's XML") */
S3cXml *s3c_xml_parse(const char *doc, const char *what, GError **err);
void s3c_xml_free(S3cXml *node);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3cXml, s3c_xml_free)
const char *s3c_xml_attr(const S3cXml *node, const char *name);
/* Its text, "" when it has none; NULL for no node */
const char *s3c_xml_text(const S3cXml *node);
/* The first descendant at @path ("devices/disk"), or NULL */
S3cXml *s3c_xml_find(const S3cXml *node, const char *path);
/* The children of @node named @name, in order (the array is the caller's) */
GPtrArray *s3c_xml_children(const S3cXml *node, const char *name);

/* jobs.c: following QMP jobs to their end */

/* Waits for job @id (doing @what) to conclude, then dismisses it */
bool s3c_job_wait(S3cQmp *qmp, const char *id, const char *what,
                  GError **err);
/* One of the jobs that s3c_jobs_follow() follows */
typedef struct S3cJobProgress {
    const char *id;             /* set by the caller */
    bool ended;                 /* concluded, or vanished */
    char *error;                /* why it failed, once ended; the caller's */
    double seconds;             /* from the start of the follow to its end */
    uint64_t done;
    uint64_t total;
} S3cJobProgress;

/*
 * Follows @n jobs, reporting their summed progress, until each has ended
 * or, with @stop_at_error, one has failed.  False only when QMP fails or a
 * signal came (then with @interrupted as the message): the jobs' own
 * errors are in @jobs, for the caller to word.
 */
bool s3c_jobs_follow(S3cQmp *qmp, S3cJobProgress *jobs, guint n,
                     bool stop_at_error, const char *interrupted,
                     GError **err);
/* Starts job @id with @command and @args (taken) and waits for its end */
bool s3c_job_run(S3cQmp *qmp, const char *command, json_object *args,
                 const char *id, GError **err);

/* vm.c: the VM's disks and the QMP commands run on them */

typedef struct S3cBitmap {
    char *name;
    char *broken;               /* why it can't be used, or NULL */
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
    char *format_node;          /* under any filters: where bitmaps live */
    char *format;               /* format_node's driver */
    char *serial;               /* "" without one */
    uint64_t size;
    GPtrArray *bitmaps;         /* of S3cBitmap, on format_node */
    char *no_checkpoint;        /* why none can be kept here, or NULL */
    char *path;                 /* its file or device, where known */
} S3cDisk;

/* An S3cDisk with no bitmaps yet */
S3cDisk *s3c_disk_new(void);
/* Lists the VM's writable disks */
GPtrArray *s3c_vm_disks(S3cQmp *vm, GError **err);
/* The VM's block graph: its nodes, and the edges from parents to children */
json_object *s3c_vm_block_graph(S3cQmp *vm, GError **err);
/* The node that is child @child of @node in @graph, or NULL */
const char *s3c_block_graph_child(json_object *graph, const char *node,
                                  const char *child);
const S3cBitmap *s3c_disk_bitmap(const S3cDisk *disk, const char *name);
/* For S3cDisk.bitmaps */
void s3c_bitmap_free(gpointer bitmap);
void s3c_disk_free(S3cDisk *disk);

/* sidecar.c: qemu-storage-daemon, which writes the images */

typedef struct S3cSidecar {
    S3cQmp *qmp;                /* for a running one, only in a session */
    GPid pid;                   /* when the command started it, else 0 */
    char *own_qmp;              /* then its QMP socket */
    char *shared_qmp;           /* or a running one's (--sidecar-qmp) */
    unsigned session_depth;     /* nested steps on its one connection */
    char *owner_path;           /* what this command added to it, noted */
    int owner_fd;               /* ... in this file, locked while we live */
    char *runtime_dir;
    char *secret_id;
    char *token_secret_id;
    char *encryption_secret_id;
    S3cSecretIds ids;           /* the three above, for node options */
    char *nbd_socket;           /* where its NBD server listens, or */
    char *nbd_host;
    char *nbd_port;
    char *iothread;             /* for exports, when the sidecar has one */
} S3cSidecar;

typedef struct S3cTarget {
    char *key;                  /* the image's key in the bucket */
    char *backing;              /* relative name of its parent, or NULL */
    uint64_t size;
    uint32_t cluster_size;
    uint64_t buffer_size;
    int compress_level;         /* created compressed, zstd's; 0: not */
    char *export_name;          /* also names its nodes */
    bool scratch;               /* with a copy-before-write scratch */
    json_object *file_options;  /* of its s3chain node, once added */
} S3cTarget;

/*
 * The export of @t's scratch: the target of the VM's copy-before-write
 * filter, in the sidecar's RAM (see add_scratch() in sidecar.c)
 */
char *s3c_target_scratch_export(const S3cTarget *t);

/*
 * Uses the running sidecar at @qmp_path, in turns with other commands,
 * or starts one with the configuration in qsd-config/ when @qmp_path is
 * NULL, and hands it the credentials as secret objects read from files
 * in @runtime_dir.  Its NBD server listens at @listen (unix:PATH or
 * tcp:HOST:PORT), or NULL for a socket in @runtime_dir (its own) or
 * next to @qmp_path (a running one's, shared by the commands).
 */
bool s3c_sidecar_open(S3cSidecar *sc, const char *qmp_path,
                      const char *runtime_dir, const char *listen,
                      const S3cRepo *repo, GError **err);
/* The NBD URI of export @export */
char *s3c_sidecar_nbd_uri(const S3cSidecar *sc, const char *export);
/*
 * Opens the local image at @path (a file or block device in @format,
 * with its backing chain) read-only as node @node, without locking out
 * a writer
 */
bool s3c_sidecar_add_image(S3cSidecar *sc, const char *node,
                           const char *path, const char *format,
                           GError **err);
/* Opens image @key and its parents read-only as node @node */
bool s3c_sidecar_add_point(S3cSidecar *sc, const S3cRepo *repo,
                           const char *key, const char *node, GError **err);
/* Creates a local qcow2 file at @path over node @backing as node @node */
bool s3c_sidecar_add_overlay(S3cSidecar *sc, const char *node,
                             const char *backing, const char *path,
                             uint64_t size, GError **err);
/*
 * The same in the bucket: a new s3chain image @key of @repo, whose qcow2
 * names @backing_name as its backing file, so that it opens on its own
 */
bool s3c_sidecar_add_bucket_overlay(S3cSidecar *sc, const S3cRepo *repo,
                                    const char *node, const char *backing,
                                    const char *key, const char *backing_name,
                                    uint64_t size, GError **err);
void s3c_sidecar_del_node(S3cSidecar *sc, const char *node);
/* Closes what s3c_sidecar_add_overlay opened; the file stays */
void s3c_sidecar_del_overlay(S3cSidecar *sc, const char *node);
/* Exports node @node as @name, with dirty bitmap @bitmap (or NULL) */
bool s3c_sidecar_export(S3cSidecar *sc, const char *name, const char *node,
                        bool writable, const char *bitmap, GError **err);
/* Ends export @name (@hard: cutting its clients off) and waits for it */
bool s3c_sidecar_unexport(S3cSidecar *sc, const char *name, bool hard,
                          GError **err);
/* Creates the target image in the bucket and exports it over NBD */
bool s3c_sidecar_add_target(S3cSidecar *sc, const S3cRepo *repo,
                            S3cTarget *t, GError **err);
/* Ends the export, commits the image and closes it */
bool s3c_sidecar_commit_target(S3cSidecar *sc, const S3cTarget *t,
                               GError **err);
/* Cuts the export's clients off at once and closes the image */
void s3c_sidecar_drop_target(S3cSidecar *sc, const S3cTarget *t);
/* Waits @timeout_ms; false when the sidecar has gone meanwhile */
bool s3c_sidecar_wait(S3cSidecar *sc, int timeout_ms, GError **err);
void s3c_sidecar_close(S3cSidecar *sc);

/* catalog.c: the backups of a VM, as kept in the bucket */

/* The longest name of a VM, disk or backup in a catalog */
#define S3C_NAME_MAX 128
/*
 * @name is letters, digits, '-', '_' and '.', not first, and at most
 * @max_len long: a name the catalog keeps (S3C_NAME_MAX), or a peer's
 * that messages quote
 */
bool s3c_plain_name(const char *name, size_t max_len);

/* A backup's checkpoint is the bitmap of this prefix and its id */
#define S3C_CHECKPOINT_PREFIX "s3chain-"

/*
 * Format 2 is written only while a catalog holds what format 1 readers
 * would misread: a point being deleted, a disk on a merged image; format
 * 3 when the VM's backups are compressed ("compress"), 4 when they are
 * encrypted ("key-id"), which older readers must not add plain ones to
 */
#define S3C_CATALOG_FORMAT_PLAIN 1
#define S3C_CATALOG_FORMAT_MERGES 2
#define S3C_CATALOG_FORMAT_COMPRESSED 3
#define S3C_CATALOG_FORMAT_ENCRYPTED 4
#define S3C_CATALOG_FORMAT 4
/* A backup being deleted: never read back, finished by the next command */
#define S3C_STATE_GOING "going"
/* How many deleted ids the catalog remembers, for retried deletes */
#define S3C_MAX_DELETED 10000

typedef struct S3cCatalog {
    char *vm;
    char *dir;                  /* key prefix of everything of this VM */
    char *etag;                 /* of the version read or put; NULL: none */
    json_object *doc;
} S3cCatalog;

/* Loads the VM's catalog, or starts an empty one */
bool s3c_catalog_load(S3cCatalog *cat, const S3cRepo *repo, const char *vm,
                      GError **err);
/*
 * Reads @text, the catalog object at @where, into @cat (its vm and dir
 * set); checks all of it: a fault is S3C_EXIT_DAMAGED, naming the field
 */
bool s3c_catalog_parse(S3cCatalog *cat, const char *where,
                       const GString *text, GError **err);
bool s3c_catalog_save(S3cCatalog *cat, const S3cRepo *repo, GError **err);
void s3c_catalog_clear(S3cCatalog *cat);
json_object *s3c_catalog_backups(const S3cCatalog *cat);
/* The key id of the VM's backups' key, or NULL if they are not encrypted */
const char *s3c_catalog_key_id(const S3cCatalog *cat);
void s3c_catalog_set_key_id(S3cCatalog *cat, const char *key_id);
/*
 * Whether @repo has the key that the VM's backups need: theirs if they
 * are encrypted, none if they are stored plain; else S3C_EXIT_KEY
 */
bool s3c_catalog_check_key(const S3cCatalog *cat, const S3cRepo *repo,
                           GError **err);
/* Whether the VM's backups are stored compressed */
bool s3c_catalog_compressed(const S3cCatalog *cat);
/* From now on, they are: only an empty catalog's may start */
void s3c_catalog_set_compressed(S3cCatalog *cat);
/* The entry of disk @disk in @backup, or NULL */
json_object *s3c_backup_disk(json_object *backup, const char *disk);
/*
 * The backup @which names (an id or "latest"), or with @before (an ISO
 * 8601 time) the last one made before that instant
 */
json_object *s3c_catalog_pick(const S3cCatalog *cat, const char *which,
                              const char *before, GError **err);
/*
 * The entries of disk @disk from backup @id back to its full backup; a
 * link the catalog lacks is S3C_EXIT_DAMAGED
 */
GPtrArray *s3c_catalog_chain(const S3cCatalog *cat, const char *disk,
                             const char *id, GError **err);
/* The newest backup entry that has disk @disk, or NULL */
json_object *s3c_catalog_last_disk(const S3cCatalog *cat, const char *disk,
                                   json_object **backup);
/* The backup @id, or NULL */
json_object *s3c_catalog_find(const S3cCatalog *cat, const char *id);
/*
 * The checkpoint (bitmap) that disk @disk's next incremental follows:
 * the one its newest backup names; NULL when none does
 */
char *s3c_catalog_checkpoint(const S3cCatalog *cat, const char *disk);
/* How many images the chain ending at backup @id of @disk holds */
int s3c_catalog_chain_length(const S3cCatalog *cat, const char *disk,
                             const char *id);
void s3c_catalog_append(S3cCatalog *cat, json_object *backup);
char *s3c_catalog_image_key(const S3cCatalog *cat, const char *disk,
                            const char *id);
/*
 * What the image of disk @disk of backup @parent is called in its child's
 * header: its own ID.qcow2, or that of the image a merge kept; NULL for
 * no such backup
 */
char *s3c_catalog_backing_name(const S3cCatalog *cat, const char *disk,
                               const char *parent);
/* Whether @backup is being deleted */
bool s3c_backup_going(json_object *backup);
/*
 * The backup whose disk @disk follows backup @id, or NULL; a chain that
 * forks is S3C_EXIT_DAMAGED
 */
json_object *s3c_catalog_child(const S3cCatalog *cat, const char *disk,
                               const char *id, GError **err);
/* Drops backup @id from the catalog (in memory); false if it has none */
bool s3c_catalog_remove(S3cCatalog *cat, const char *id);
/* Remembers that backup @id was deleted at @time (ISO 8601) */
void s3c_catalog_note_deleted(S3cCatalog *cat, const char *id,
                              const char *time);
/* When backup @id was deleted, if the catalog remembers it */
const char *s3c_catalog_deleted_at(const S3cCatalog *cat, const char *id);
/* Whether a backup newer than @id was deleted (ids sort by time) */
bool s3c_catalog_deleted_since(const S3cCatalog *cat, const char *id);
/* The images left to delete (strings), an array of the catalog's */
json_object *s3c_catalog_garbage(S3cCatalog *cat);

/*
 * lease.c: the VM's lock, a lease that its holder renews in a thread of
 * its own while it works (docs/catalog.rst)
 */
typedef struct S3cLease S3cLease;

typedef struct S3cLeaseOptions {
    int64_t lease_s;            /* how long the lock holds unrenewed */
    int64_t stale_after;        /* for locks without a lease ... */
    bool break_stale;           /* ... broken only when this is given */
} S3cLeaseOptions;

/* A lock as a command wrote it, checked */
typedef struct S3cLockHolder {
    const char *host;
    const char *owner;          /* NULL in locks of s3chain 0.2 */
    int64_t pid;
    int64_t since;
    int64_t lease_s;            /* 0 in locks of s3chain 0.2 */
} S3cLockHolder;

/*
 * Reads @body, the lock object at @where of VM @vm, into @holder, whose
 * strings live in *@doc (the caller's); a fault is S3C_EXIT_DAMAGED
 */
bool s3c_lock_parse(const char *where, const char *vm, const GString *body,
                    json_object **doc, S3cLockHolder *holder, GError **err);
/*
 * Takes the VM's lock: creates it, or takes it over when its holder's
 * process is gone or its lease ran out unrenewed; else S3C_EXIT_LOCKED
 */
S3cLease *s3c_lease_acquire(const S3cRepo *repo, const S3cCatalog *cat,
                            const S3cLeaseOptions *opts, GError **err);
/* Before a commit: renews now; false if the lock may no longer be ours */
bool s3c_lease_check(S3cLease *lease, GError **err);
/* Stops renewing and removes the lock if it is still ours */
void s3c_lease_release(S3cLease *lease);

/*
 * merge.c: deleting backups.  A deleted point is first marked going in
 * the catalog; then each of its disks' child is merged into its image
 * (which then holds the child's point), the grandchild's header and the
 * catalog repointed, and the images no point needs listed as garbage
 * and deleted.  Any command holding the VM's lock finishes a killed one.
 */
typedef struct S3cMergeStats {
    guint points_deleted;
    guint merges;
    uint64_t bytes_merged;      /* stored bytes of the images merged */
    uint64_t objects_deleted;
    uint64_t bytes_deleted;
} S3cMergeStats;

typedef struct S3cLifecycle {
    const S3cRepo *repo;
    S3cCatalog *cat;            /* own_cat, or a backup's */
    S3cCatalog own_cat;
    S3cLease *lease;
    bool may_delete;            /* the bucket let a DELETE through */
    S3cMergeStats stats;
} S3cLifecycle;

/*
 * Loads VM @vm's catalog (with @must_exist, none is S3C_EXIT_NOT_FOUND),
 * takes its lock and finishes what a killed command left
 */
bool s3c_lifecycle_open(S3cLifecycle *lc, const S3cRepo *repo,
                        const char *vm, const S3cLeaseOptions *lock,
                        bool must_exist, GError **err);
void s3c_lifecycle_close(S3cLifecycle *lc);
/* Marks the backups @ids (strings, in the catalog) going, in one write */
bool s3c_lifecycle_mark(S3cLifecycle *lc, GPtrArray *ids, GError **err);
/*
 * Deletes every going backup, oldest first, then the images listed as
 * garbage
 */
bool s3c_lifecycle_finish(S3cLifecycle *lc, GError **err);
/* Deletes image @key's manifest, then its chunks, lock and scratch */
bool s3c_image_delete(const S3cRepo *repo, const char *key,
                      S3cMergeStats *stats, GError **err);
json_object *s3c_merge_stats_json(const S3cMergeStats *stats);
typedef bool (*S3cVmFn)(const char *vm, void *opaque, GError **err);
/*
 * Runs @fn on VM @only, or on every VM of the repository, where one
 * being backed up (S3C_EXIT_LOCKED) is left for the next run: a warning,
 * the last such error in *@locked, and the others go on
 */
bool s3c_each_vm(const S3cRepo *repo, const char *only, S3cVmFn fn,
                 void *opaque, GError **locked, GError **err);

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
/*
 * What a command cleaned up in @where ("the VM", "the sidecar") after a
 * killed one: a warning, and an event for controllers
 */
void s3c_output_cleaned(const char *where, GPtrArray *items);
void s3c_output_progress(uint64_t done, uint64_t total);
/* "s3chain: warning: " and a line on stderr, in every output mode */
void s3c_output_warning(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void s3c_output_info(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* backup.c: one backup of a VM's disks, whichever source they come from */

/* source-kubevirt.c: a pull-mode VirtualMachineBackup, as read from files */
typedef struct S3cKubevirtOptions {
    const char *backup_file;    /* its JSON ("-": stdin) */
    const char *tracker_file;   /* its tracker's, read before it began */
    const char *token_file;     /* the export's token, mode 0600 */
    const char *ca_file;        /* else its status.endpointCert */
} S3cKubevirtOptions;

typedef struct S3cKubevirtBackup S3cKubevirtBackup;

/*
 * Reads and checks what the options name: a bad or unfinished object is
 * S3C_EXIT_USAGE, a failed backup S3C_EXIT_VM_UNREACHABLE
 */
S3cKubevirtBackup *s3c_kubevirt_load(const S3cKubevirtOptions *o,
                                     GError **err);
/*
 * The VirtualMachineBackup in @text (@what in messages), checked as
 * s3c_kubevirt_load() checks it, without tracker or token
 */
S3cKubevirtBackup *s3c_kubevirt_parse(const char *what, const char *text,
                                      size_t len, GError **err);
/* NAMESPACE.VM, as the repository names the VM by default; or NULL */
const char *s3c_kubevirt_vm(const S3cKubevirtBackup *kv);
void s3c_kubevirt_free(S3cKubevirtBackup *kv);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3cKubevirtBackup, s3c_kubevirt_free)

typedef struct S3cBackupOptions {
    S3cRepoOptions repo;
    const char *vm;
    /* the source: a QMP socket (push mode), or a libvirt domain */
    const char *vm_qmp;
    const char *libvirt_domain;
    const char *libvirt_uri;    /* NULL for libvirt's default */
    const char *scratch_dir;    /* libvirt's pull-mode scratch files */
    const S3cKubevirtBackup *kubevirt;  /* or a VirtualMachineBackup */
    const char *sidecar_qmp;
    const char *runtime_dir;
    const char *guest_agent;
    char **disks;               /* NULL for every writable disk */
    bool full;
    int chain_limit;
    int merge_after;            /* 0, or keep chains at this length */
    int cbw_timeout;
    uint64_t buffer_size;
    int compress_level;         /* --compress's zstd level; 0: not given */
    bool encrypt;               /* --encrypt: refuse to run without a key */
    S3cLeaseOptions lock;
    bool json;
} S3cBackupOptions;

int s3c_backup(const S3cBackupOptions *opts, GError **err);

/* One disk of a backup: what backup.c decided, and how it went */
typedef struct S3cDiskBackup {
    S3cDisk *disk;
    bool incremental;
    char *reason;
    char *parent;               /* backup id of the parent image */
    char *old_bitmap;           /* the last checkpoint's, when usable */
    /*
     * The checkpoint the catalog names for the next incremental: the
     * run's new one, unless the source sets another (or NULL for none)
     */
    char *checkpoint;
    uint32_t granularity;
    S3cTarget target;           /* its new image, exported by the sidecar */
    bool target_added;
    uint64_t bytes_copied;      /* what the source went through */
    uint64_t bytes_stored;      /* what the image's chunks hold */
    double duration;
} S3cDiskBackup;

/* What a source sees of the backup it serves */
typedef struct S3cBackupRun {
    const S3cBackupOptions *opts;
    const S3cCatalog *catalog;  /* loaded, locked */
    S3cSidecar *sidecar;
    GPtrArray *disks;           /* of S3cDiskBackup */
    GPtrArray *all_disks;       /* of S3cDisk: the VM's, backed up or not */
    const char *id;
    const char *checkpoint;     /* the new checkpoint's (bitmap's) name */
    char *instant;              /* ISO 8601, UTC: set by the source */
    bool offline;               /* the VM was shut off: set by the source */
    /* what the source kept on the host's disk at its peak, if it did */
    bool has_scratch;
    uint64_t scratch_bytes;
} S3cBackupRun;

/* Now, as the catalog records a backup's instant */
char *s3c_backup_now(void);
/* Ends the sidecar's exports at once, closing their images unfinished */
void s3c_backup_drop_targets(S3cBackupRun *run);

/*
 * sources: where a backup's data comes from.  A source lists the VM's
 * disks and their checkpoints (as bitmaps named after them), takes the
 * backup's instant, and moves each disk's data into its target export;
 * backup.c decides, names, commits and catalogs around it.
 */
typedef struct S3cSource S3cSource;

typedef struct S3cSourceOps {
    /* The VM's writable disks (S3cDisk), with the checkpoints on each */
    GPtrArray *(*disks)(S3cSource *src, S3cBackupRun *run, GError **err);
    /*
     * Checks, before anything is written, what the backup will need of
     * the host (may be NULL)
     */
    bool (*prepare)(S3cSource *src, S3cBackupRun *run, GError **err);
    /* Takes the instant (run->instant) and starts moving the data */
    bool (*start)(S3cSource *src, S3cBackupRun *run, GError **err);
    /* Waits until every disk's data is in its target, with progress */
    bool (*copy)(S3cSource *src, S3cBackupRun *run, GError **err);
    /*
     * Lets go of the targets and gives the VM back as it was (these
     * three may be NULL: the VM is someone else's to give back)
     */
    bool (*finish)(S3cSource *src, S3cBackupRun *run, GError **err);
    /* After the catalog holds the backup: drops older checkpoints */
    void (*committed)(S3cSource *src, S3cBackupRun *run);
    /* After a failure anywhere: undoes, keeping every change for later */
    void (*abandon)(S3cSource *src, S3cBackupRun *run);
    void (*free)(S3cSource *src);
} S3cSourceOps;

struct S3cSource {
    const S3cSourceOps *ops;
    bool scratch;               /* its targets need a scratch each */
};

/* source-qmp.c: push mode over the VM's own QMP socket */
S3cSource *s3c_source_qmp_new(const S3cBackupOptions *opts);

/*
 * What source-qmp.c adds to the VM for disk INDEX, named after its
 * process: nodes "target", "scratch", "cbw", "access" and job "backup";
 * and on the disk's node, the old checkpoint's frozen copy
 */
#define S3C_QMP_PART_FMT "s3c%u-%d-%s"
#define S3C_QMP_SNAPSHOT_FMT "s3c-%d-snapshot"

/*
 * leftovers.c: undoes in the VM what a killed run of source-qmp.c left:
 * ends its jobs, rewires devices onto their own nodes, removes its nodes
 */
bool s3c_vm_clear_leftovers(S3cQmp *vm, GError **err);
/*
 * On @disk, removes a killed run's bitmaps; its checkpoint, never in
 * @cat, is merged into the one @cat names for the disk first
 */
void s3c_vm_clear_dead_bitmaps(S3cQmp *vm, S3cDisk *disk,
                               const S3cCatalog *cat);

S3cSource *s3c_source_kubevirt_new(const S3cBackupOptions *opts);

/* source-libvirt.c: libvirt's backup API, pull mode */
S3cSource *s3c_source_libvirt_new(const S3cBackupOptions *opts,
                                  GError **err);
/*
 * The disks (S3cDisk, with their paths and formats) of a libvirt domain
 * that is shut off, for a restore onto them; a running one is refused
 */
GPtrArray *s3c_libvirt_offline_disks(const char *uri, const char *domain,
                                     GError **err);
/*
 * After a restore onto the domain's disks: its s3chain checkpoints are
 * forgotten, for the bitmaps they name went with the old images
 */
void s3c_libvirt_forget_checkpoints(const char *uri, const char *domain);

/* export.c: KubeVirt's export server, for pull-mode VirtualMachineBackups */

/* A run of a disk to copy: data, or zeroes to write */
typedef struct S3cExtent {
    uint64_t offset;
    uint64_t length;
    bool zero;
} S3cExtent;

/* One volume's map and data endpoints */
typedef struct S3cExport S3cExport;

/*
 * @token goes in a header of every request; with neither @ca_pem nor
 * @ca_file the system's CAs verify the server
 */
S3cExport *s3c_export_new(const char *volume, const char *map_url,
                          const char *data_url, const char *token,
                          const char *ca_pem, const char *ca_file);
void s3c_export_free(S3cExport *e);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3cExport, s3c_export_free)
/*
 * Reads the volume's whole map, page by page, into what to copy into a
 * new image: its data into @whole (of S3cExtent), and of an
 * @incremental export what changed into @changed, zeroes included.
 * *@size is where the map ends.  A map that contradicts itself is
 * S3C_EXIT_DAMAGED.
 */
bool s3c_export_map(S3cExport *e, bool incremental, GArray *whole,
                    GArray *changed, uint64_t *size, GError **err);
/*
 * One page of it (@body), asked for from @at: *@end is where its
 * extents end, *@more whether a next page starts there
 */
bool s3c_export_parse_page(const char *volume, const char *body, size_t len,
                           bool incremental, uint64_t at, GArray *whole,
                           GArray *changed, uint64_t *end, bool *more,
                           GError **err);
/* How a read ended: @failure (the callee's) is NULL when it is whole */
typedef void (*S3cExportDone)(void *opaque, GError *failure);
/*
 * Starts reading @length bytes at @offset into @buf; s3c_export_wait()
 * calls @done once it is whole or failed for good
 */
void s3c_export_read(S3cExport *e, char *buf, uint32_t length,
                     uint64_t offset, S3cExportDone done, void *opaque);
struct pollfd;
/*
 * Moves the reads along, waiting up to @timeout_ms for them or for
 * @also, whose revents it sets
 */
bool s3c_export_wait(S3cExport *e, struct pollfd *also, int timeout_ms,
                     GError **err);
/* Drops every read in flight, calling no @done */
void s3c_export_cancel(S3cExport *e);

/* pull.c: copying changed extents from an export into the sidecar's */

typedef struct S3cPullDisk {
    const char *name;           /* for messages */
    /* the disk at the instant: an NBD export, or KubeVirt's over HTTPS */
    const char *source_socket;
    const char *source_export;
    S3cExport *export;
    GArray *extents;            /* with @export: what to copy, mapped */
    const char *source_peer;    /* who serves it ("the VM"), for messages */
    int source_error;           /* the exit code of a failure to read it */
    const char *dirty_context;  /* qemu:dirty-bitmap:..., NULL for full */
    const char *target_socket;  /* the sidecar's export of the image */
    const char *target_export;
    uint64_t bytes_total;       /* set by the map */
    uint64_t bytes_done;
    double seconds;
} S3cPullDisk;

/*
 * Copies what each disk's source holds (with @dirty_context, only what
 * it marks dirty) into its target: data as writes, zeroes as
 * write-zeroes, many requests in flight on both sides, at most
 * @memory bytes of data in flight.
 */
bool s3c_pull_copy(S3cPullDisk *disks, guint n, uint64_t memory,
                   GError **err);

/* offline.c: the disks of a shut-off VM, read from their images */

/* The bitmaps (S3cBitmap) that @disk's image at disk->path keeps */
GPtrArray *s3c_offline_bitmaps(const S3cDisk *disk, GError **err);

typedef struct S3cOfflineRead S3cOfflineRead;

/*
 * Opens each disk's image of @run in the sidecar, read-only and without
 * locking the VM out, and exports it with the bitmap of an incremental
 */
S3cOfflineRead *s3c_offline_open(S3cBackupRun *run, GError **err);
/* Where the copier reads disk @i of the run */
void s3c_offline_pull_source(S3cOfflineRead *r, guint i, S3cPullDisk *pull);
/*
 * Ends the exports and frees @r.  With @err, fails when an image file
 * changed since it was opened: what was read may mix two instants.
 */
bool s3c_offline_close(S3cOfflineRead *r, GError **err);

/* point.c: the backup that restore and serve read back */

typedef struct S3cPointOptions {
    S3cRepoOptions repo;
    const char *vm;
    const char *backup;         /* an id or "latest" (NULL) */
    const char *before;         /* or the last before this time */
} S3cPointOptions;

typedef struct S3cPoint {
    S3cRepo repo;
    S3cCatalog cat;
    json_object *backup;        /* its entry in cat */
    const char *id;
} S3cPoint;

bool s3c_point_open(S3cPoint *p, const S3cPointOptions *opts, GError **err);
/*
 * The entry of disk @disk (NULL: the only one) in the backup, else
 * S3C_EXIT_NOT_FOUND naming the disks it has
 */
json_object *s3c_point_disk(const S3cPoint *p, const char *disk,
                            GError **err);
/* Checks every image of @disk's chain quickly; a fault is DAMAGED */
bool s3c_point_check(const S3cPoint *p, const char *disk, GError **err);
void s3c_point_clear(S3cPoint *p);

/* restore.c and instant.c */

typedef struct S3cRestoreOptions {
    S3cPointOptions point;
    char **targets;             /* "DISK=PATH" or "PATH" */
    const char *format;         /* raw (NULL) or qcow2 */
    const char *libvirt_domain; /* or onto this shut-off domain's disks */
    const char *libvirt_uri;
    bool force;
    bool json;
    /* instant restore */
    bool instant;
    const char *vm_qmp;
    const char *sidecar_qmp;
    const char *runtime_dir;
    int vm_wait;
    uint64_t copy_speed;        /* bytes per second, 0 for no limit */
} S3cRestoreOptions;

typedef struct S3cRestoreDisk {
    const char *name;
    char *target;
    json_object *entry;         /* the disk's, in the catalog */
    uint64_t size;
    bool block_device;
    bool replaces;              /* an existing file, with --force */
    char *format;               /* its own, else the options' */
    bool direct;                /* the target takes O_DIRECT writes */
} S3cRestoreDisk;

typedef struct S3cRestorePlan {
    const S3cRestoreOptions *opts;
    S3cPoint point;
    GPtrArray *disks;           /* of S3cRestoreDisk */
    uint64_t total;
} S3cRestorePlan;

/*
 * Finds the backup and its disks, and refuses targets that would not do
 * and chains that are damaged, before anything is written
 */
bool s3c_restore_plan(S3cRestorePlan *plan, const S3cRestoreOptions *opts,
                      GError **err);
void s3c_restore_plan_clear(S3cRestorePlan *plan);
/* A started/ready/result event naming the backup and the targets */
json_object *s3c_restore_event(const S3cRestorePlan *plan, const char *name);
int s3c_restore(const S3cRestoreOptions *opts, GError **err);
int s3c_restore_instant(const S3cRestoreOptions *opts, GError **err);

/* delete.c */

typedef struct S3cDeleteOptions {
    S3cRepoOptions repo;
    const char *vm;
    char **backups;             /* ids */
    S3cLeaseOptions lock;
    bool json;
} S3cDeleteOptions;

int s3c_delete(const S3cDeleteOptions *opts, GError **err);

/* prune.c: deleting the backups that no keep rule keeps */

typedef struct S3cPruneOptions {
    S3cRepoOptions repo;
    const char *vm;             /* NULL: every VM */
    int64_t keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly;
    int64_t keep_yearly;
    int64_t keep_within_s;      /* 0: no such rule */
    bool dry_run;
    S3cLeaseOptions lock;
    bool json;
} S3cPruneOptions;

int s3c_prune(const S3cPruneOptions *opts, GError **err);
/* "7d", "2w3d", "1y6m", "12h": seconds, or -1 */
int64_t s3c_parse_duration(const char *text);

/* gc.c: deleting the objects of a VM's that no backup needs */

typedef struct S3cGcOptions {
    S3cRepoOptions repo;
    const char *vm;             /* NULL: every VM */
    int64_t grace_s;            /* objects younger than this stay */
    bool dry_run;
    S3cLeaseOptions lock;
    bool json;
} S3cGcOptions;

int s3c_gc(const S3cGcOptions *opts, GError **err);

/* list.c */

typedef struct S3cListOptions {
    S3cRepoOptions repo;
    const char *vm;             /* NULL for every VM */
    bool json;
} S3cListOptions;

int s3c_list(const S3cListOptions *opts, GError **err);
/* @only, or the names of the VMs that have backups in the repository */
GPtrArray *s3c_repo_vms(const S3cRepo *repo, const char *only, GError **err);

/* verify.c */

typedef struct S3cVerifyOptions {
    S3cRepoOptions repo;
    const char *vm;             /* NULL for every VM */
    const char *backup;         /* NULL for every backup */
    bool deep;
    bool json;
} S3cVerifyOptions;

int s3c_verify(const S3cVerifyOptions *opts, GError **err);

/* serve.c */

typedef struct S3cServeOptions {
    S3cPointOptions point;
    const char *disk;
    const char *listen;         /* unix:PATH or tcp:HOST:PORT */
    bool writable;
    const char *overlay;        /* a local file or s3://BUCKET/KEY, kept */
    const char *sidecar_qmp;
    const char *runtime_dir;
    bool json;
} S3cServeOptions;

int s3c_serve(const S3cServeOptions *opts, GError **err);

#endif
