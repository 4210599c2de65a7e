/*
 * s3chain: images in an S3-compatible bucket (private header)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_H
#define BLOCK_S3CHAIN_H

#include "qemu/bitops.h"
#include "qemu/coroutine.h"
#include "qemu/units.h"
#include "qemu/iov.h"
#include "qemu/queue.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "block/aio.h"
#include "block/block-io.h"
#include "block/block_int.h"
#include "qapi/qapi-types-block-core.h"
#include <curl/curl.h>
#include "s3chain-format.h"
#include "s3chain-retry.h"
#include "s3chain-sigv4.h"

#define S3CHAIN_PROTOCOL "s3chain"

#define S3CHAIN_DEFAULT_REGION "us-east-1"
#define S3CHAIN_DEFAULT_TIMEOUT 30
#define S3CHAIN_DEFAULT_REQUEST_SIZE (4 * MiB)
#define S3CHAIN_DEFAULT_READAHEAD (32 * MiB)
#define S3CHAIN_DEFAULT_MAX_REQUESTS 8
#define S3CHAIN_DEFAULT_CHUNK_SIZE (4 * MiB)
/* a scratch image's: a copy-before-write cluster, so discards free it */
#define S3CHAIN_SCRATCH_CHUNK_SIZE S3CHAIN_MIN_CHUNK_SIZE
#define S3CHAIN_DEFAULT_BUFFER_SIZE (64 * MiB)
/* An open reads this much of an object first: all of most manifests */
#define S3CHAIN_PROBE_BYTES (64 * KiB)

/* The blocks, a bit each, that hold bytes @offset to @offset + @bytes */
static inline uint64_t s3chain_blocks_of(uint64_t block_size,
                                         uint64_t offset, uint64_t bytes)
{
    uint64_t first = offset / block_size;

    return MAKE_64BIT_MASK(first,
                           DIV_ROUND_UP(offset + bytes, block_size) - first);
}

/*
 * A gap this long between two runs of blocks to load is loaded too: a
 * request costs the server about what a few hundred KiB of transfer do.
 */
#define S3CHAIN_BRIDGED_GAP (256 * KiB)

/* s3chain-url.c: the s3chain:// filename syntax */

/*
 * Parses "s3chain://HOST[:PORT][;OPTION=VALUE].../BUCKET/KEY" into driver
 * options: endpoint, bucket, key and the OPTIONs, which are those of
 * BlockdevOptionsS3chain plus "tls" (on or off, for the endpoint's scheme).
 */
bool s3chain_parse_url(const char *url, QDict *options, Error **errp);

/*
 * Builds the URL of the object @key with the connection settings of
 * @opts, so that a relative backing file name opens with the settings of
 * its child.  It names secrets by their object ID only.
 */
char *s3chain_build_url(const BlockdevOptionsS3chain *opts, const char *key);

/* s3chain-manifest.c: the manifest of a chunked image */

/*
 * An object with some blocks of a chunk, newer than its whole object's:
 * the blocks of @blocks, in order, one after the other
 */
typedef struct S3chainPatchRef {
    char *tag;                  /* names its object, as a chunk's tag */
    uint8_t md5[16];            /* its ETag */
    uint64_t blocks;            /* the blocks it holds, a bit each */
} S3chainPatchRef;

typedef struct S3chainChunkRef {
    char *tag;                  /* names the chunk's object */
    uint8_t md5[16];            /* as sent in Content-MD5: its ETag */
    bool has_crc32;             /* version 1 manifests have no CRC-32 */
    uint32_t crc32;             /* zlib's, of the chunk with its patches */
    uint64_t block_size;        /* of its block sums; 0: it has none */
    /*
     * The CRC-32 of each block, 8 hex digits each (version 4), or NULL:
     * then a version 3 writer put them in S3CHAIN_BLOCK_SUMS_META
     */
    char *block_sums;
    /* Version 5: oldest first; a block is read from the newest holding it */
    unsigned n_patches;
    S3chainPatchRef patches[S3CHAIN_MAX_PATCHES];
    /*
     * Version 6 and 7, a compressed or encrypted image's: the length each
     * block has in the object, 8 hex digits each; its sums, MD5 and
     * CRC-32 are then of the stored bytes
     */
    char *stored_lengths;
} S3chainChunkRef;

typedef struct S3chainManifest {
    uint64_t size;
    uint64_t chunk_size;
    uint64_t generation;        /* bumped by each commit */
    bool compressed;            /* version 6 or 7: blocks stored zstd */
    bool encrypted;             /* version 7: blocks sealed, manifest MAC'd */
    uint8_t key_id[S3CHAIN_ID_LEN];     /* encrypted: of the user's key */
    uint8_t image_id[S3CHAIN_ID_LEN];   /* encrypted: the image's own */
    /* decoded, encrypted: the bytes its MAC covers, and the MAC */
    size_t mac_covered;
    char mac_hex[2 * S3CHAIN_MAC_LEN + 1];
    /* encrypted, once the user's key has opened it: what seals it */
    S3chainImageKeys *keys;
    GTree *chunks;              /* index -> S3chainChunkRef */
} S3chainManifest;

/* Whether @m's blocks are stored packed: compressed or sealed */
static inline bool s3chain_manifest_packed(const S3chainManifest *m)
{
    return m->compressed || m->encrypted;
}

S3chainManifest *s3chain_manifest_new(uint64_t size, uint64_t chunk_size);
void s3chain_manifest_free(S3chainManifest *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(S3chainManifest, s3chain_manifest_free)
gint s3chain_index_cmp(gconstpointer a, gconstpointer b, gpointer unused);
S3chainChunkRef *s3chain_manifest_lookup(S3chainManifest *m, uint64_t index);
/* Names the object of chunk @index: a copy of @ref */
void s3chain_manifest_set(S3chainManifest *m, uint64_t index,
                          const S3chainChunkRef *ref);
/* @dst becomes a copy of @src, strings and all; clear it when done */
void s3chain_chunk_ref_copy(S3chainChunkRef *dst, const S3chainChunkRef *src);
void s3chain_chunk_ref_clear(S3chainChunkRef *ref);
void s3chain_manifest_remove(S3chainManifest *m, uint64_t index);
char *s3chain_manifest_encode(const S3chainManifest *m);
S3chainManifest *s3chain_manifest_decode(const char *json, Error **errp);

/* s3chain-plan.c: the byte ranges a reader says it will read */

/*
 * Parses @text, the read plan from file @path: "OFFSET LENGTH" lines of
 * byte ranges of an image of @size bytes, into the blocks
 * (s3chain_blocks_of()) that they touch of each chunk, an array with a
 * mask per chunk.
 */
uint64_t *s3chain_read_plan_parse(const char *text, const char *path,
                                  uint64_t size, uint64_t chunk_size,
                                  uint64_t block_size, Error **errp);

/* s3chain-http.c: requests to the bucket over libcurl's multi interface */

typedef struct S3chainConnSettings {
    char *endpoint;             /* scheme://host[:port] */
    char *bucket;
    char *region;
    char *access_key_id;
    char *secret_access_key;
    char *session_token;
    bool sslverify;
    char *cafile;
    int64_t timeout;
    int64_t retries;
    int64_t max_requests;
} S3chainConnSettings;

typedef struct S3chainConn S3chainConn;
typedef struct S3chainRequest S3chainRequest;

/*
 * Counts requests a coroutine waits for, and wakes it after the last.
 * After one fails, those not yet sent end with -ECANCELED.
 */
typedef struct S3chainWaiter {
    Coroutine *co;
    AioContext *ctx;
    unsigned pending;
    bool yielded;
    bool failed;
} S3chainWaiter;

struct S3chainRequest {
    /* Set by the caller */
    const char *method;
    const char *key;
    uint64_t range_offset;
    uint64_t range_bytes;       /* 0: the whole object */
    bool may_end_early;         /* the object may end within the range */
    const char *if_match;       /* ETag the object must still have */
    bool if_none_match;         /* create only: fail if the key exists */
    const void *body;           /* what a PUT sends */
    size_t body_len;
    const char *content_md5;    /* base64, checked by the server */
    const char *content_type;
    QEMUIOVector *qiov;         /* receives the body of a GET */
    size_t qiov_offset;
    S3chainWaiter *waiter;

    /* Result, valid once the request completed */
    int ret;                    /* 0 or -errno */
    long status;
    char *error_code;           /* S3's <Code>, if it sent one */
    char *error_text;           /* one line for the user */
    char *etag;
    char *content_type_received;
    char *block_sums_received;  /* S3CHAIN_BLOCK_SUMS_META, of version 3 */
    uint64_t object_size;       /* from Content-Range or Content-Length */
    unsigned attempts;

    /* Private to s3chain-http.c */
    S3chainConn *conn;
    CURL *easy;
    struct curl_slist *header_list;
    size_t received;
    GString *error_body;
    QEMUTimer retry_timer;
    char curl_error[CURL_ERROR_SIZE];
    QTAILQ_ENTRY(S3chainRequest) next;
};

S3chainConn *s3chain_conn_new(const S3chainConnSettings *settings,
                              AioContext *ctx);
void s3chain_conn_free(S3chainConn *conn);
void s3chain_conn_detach_aio_context(S3chainConn *conn);
void s3chain_conn_attach_aio_context(S3chainConn *conn, AioContext *ctx);
const S3chainConnSettings *s3chain_conn_settings(S3chainConn *conn);

/* Queues @req; its end is told through req->waiter. */
void s3chain_request_submit(S3chainConn *conn, S3chainRequest *req);
void s3chain_request_cleanup(S3chainRequest *req);
void coroutine_fn s3chain_co_wait(S3chainConn *conn, S3chainWaiter *waiter);
/* Submits @req alone and waits for it; returns req->ret. */
int coroutine_fn s3chain_co_request(S3chainConn *conn, S3chainRequest *req);

/* s3chain-sums.c: the checksums of chunks and blocks */

/* The MD5 of @buf, into @md5; -EIO if QEMU's crypto fails */
int s3chain_md5_of(const uint8_t *buf, size_t len, uint8_t *md5);
/*
 * Puts the MD5 and/or the CRC-32 of @buf into @sums, and with
 * @block_crcs the CRC-32 of each of its blocks of @block_size there,
 * computed in a worker thread; @buf must not change until it returns.
 */
int coroutine_fn s3chain_co_sums_of(const uint8_t *buf, size_t len,
                                    bool md5, bool crc32, size_t block_size,
                                    uint32_t *block_crcs,
                                    S3chainChunkRef *sums);
/*
 * Reads @n block sums from @hex, as the manifest (or, from version 3
 * writers, S3CHAIN_BLOCK_SUMS_META) holds them; they must make up @ref's
 * CRC-32 (of blocks of its stored lengths, if compressed), which ties
 * them to the chunk's whole sum.
 */
bool s3chain_block_sums_parse(const char *hex, const S3chainChunkRef *ref,
                              unsigned n, uint32_t *crcs);

/* s3chain-compress.c: the blocks of compressed and encrypted images */

/* A chunk packed: what goes up, @len bytes, and its sums */
typedef struct S3chainPacked {
    size_t len;
    uint32_t lengths[S3CHAIN_MAX_BLOCKS];     /* of each block, stored */
    uint32_t block_crcs[S3CHAIN_MAX_BLOCKS];  /* of each block, stored */
    uint32_t crc32;
    uint8_t md5[16];
} S3chainPacked;

typedef enum S3chainUnpackFaultKind {
    S3CHAIN_UNPACK_OK,
    S3CHAIN_UNPACK_SUM,         /* its bytes do not match its sum */
    S3CHAIN_UNPACK_SEAL,        /* its seal does not open here */
    S3CHAIN_UNPACK_FRAME,       /* it does not decompress to a block */
} S3chainUnpackFaultKind;

/* A stored block that is not what the manifest says */
typedef struct S3chainUnpackFault {
    unsigned block;             /* of those unpacked, from 0 */
    S3chainUnpackFaultKind kind;
} S3chainUnpackFault;

/* Whether this QEMU has zstd, which compressed images need */
bool s3chain_compress_available(void);
/*
 * Packs the blocks of @chunk, each of @block_size, at zstd @level (0: not
 * compressed), sealed with @keys if not NULL as chunk @index's upload
 * @tag, into @out (@chunk_size bytes, and S3CHAIN_SEAL_OVERHEAD more per
 * block if sealed), in a worker thread; @chunk must not change until it
 * returns
 */
int coroutine_fn s3chain_co_pack(const uint8_t *chunk, uint64_t chunk_size,
                                 uint64_t block_size, int level,
                                 const S3chainImageKeys *keys, uint64_t index,
                                 const char *tag, uint8_t *out,
                                 S3chainPacked *packed);
/*
 * Unpacks @count blocks from block @first of chunk @index's upload @tag,
 * stored one after the other at @stored, of @lengths, into @out, in a
 * worker thread: each must have the CRC-32 of @crcs, open with @keys if
 * not NULL, and unpack to @block_size bytes; else -EIO, with which and
 * why in @fault
 */
int coroutine_fn s3chain_co_unpack(const uint8_t *stored,
                                   const uint32_t *lengths,
                                   const uint32_t *crcs, unsigned first,
                                   unsigned count, uint64_t block_size,
                                   const S3chainImageKeys *keys,
                                   uint64_t index, const char *tag,
                                   uint8_t *out, S3chainUnpackFault *fault);

/* s3chain-image.c: images, their buffer of chunks and reads */

/*
 * Both kinds of image are read through the same buffer: a chunked image
 * (s3chain-chunked.c), whose chunks are objects of their own, and an
 * image stored as one object (s3chain-object.c), whose chunks are ranges
 * of it.  What differs is a kind, a table of where a chunk's blocks come
 * from and how what came is checked.
 */

typedef struct S3chainImage S3chainImage;

typedef enum ChunkState {
    CHUNK_CLEAN,
    CHUNK_DIRTY,
    CHUNK_UPLOADING,
} ChunkState;

/* A chunk in the buffer; its fields are guarded by its image's lock */
typedef struct CachedChunk {
    S3chainImage *img;
    uint64_t index;
    uint8_t *buf;
    ChunkState state;
    uint64_t valid;             /* blocks loaded, a bit each */
    uint64_t loading;           /* blocks on their way */
    int ret;                    /* of a load; a failed chunk is dropped */
    uint64_t consumed;          /* bytes read from it since it loaded */
    unsigned users;             /* pins: a pinned chunk is not dropped */
    uint64_t written;           /* blocks written whole since loaded */
    uint64_t dirty;             /* blocks written since its last upload */
    bool hot;                   /* rewritten since its upload: kept */
    CoQueue waiters;            /* for its loads and upload to end */
    QTAILQ_ENTRY(CachedChunk) lru;
} CachedChunk;

/* Blocks of a chunk that lie one after the other in one object */
typedef struct S3chainBlockRun {
    char *key;                  /* the object */
    uint64_t first;             /* block */
    uint64_t count;
    /*
     * Blocks stored packed (a compressed image's) land here, the range's
     * bytes, and the kind's check_run unpacks them into the chunk
     */
    uint8_t *packed;
    QEMUIOVector qiov;
    S3chainRequest req;         /* a ranged GET of them */
} S3chainBlockRun;

/* A load of some blocks of a chunk: a ranged GET per run, in parallel */
typedef struct S3chainLoad {
    CachedChunk *c;
    /* a chunked image's entry for the chunk, as it was when planned */
    S3chainChunkRef ref;
    /* a packed chunk's: where its runs' stored bytes land, one by one */
    uint8_t *staging;
    unsigned n_runs;
    S3chainBlockRun runs[S3CHAIN_MAX_BLOCKS];
} S3chainLoad;

/* Tells a sequential reader, for read-ahead */
typedef struct S3chainStreak {
    uint64_t last_end;          /* where the reads so far ended */
    unsigned reads;             /* near-sequential ones in a row */
    uint64_t bytes;             /* that they read */
} S3chainStreak;

/*
 * A kind of image: where the blocks of its chunks are stored, and how a
 * load is checked.  Called with the image's lock held, but check_run.
 */
typedef struct S3chainImageKind {
    const char *name;           /* "a chunked image", for messages */
    bool read_only;             /* images of the kind are never written */
    /* Whether chunk @index holds stored bytes; the others read as zeroes */
    bool (*stored)(S3chainImage *img, uint64_t index);
    /* The blocks of chunk @index that must load for blocks @need */
    uint64_t (*loads_with)(S3chainImage *img, uint64_t index, uint64_t need);
    /*
     * Fills @load with the runs that load blocks @todo of chunk @c, and
     * perhaps the gaps between them, which it returns with @todo
     */
    uint64_t (*plan_load)(S3chainImage *img, CachedChunk *c, uint64_t todo,
                          S3chainLoad *load);
    /*
     * Whether @run of @load brought what the image holds: 0, or -errno
     * after saying why if @report (the load's first failure)
     */
    int coroutine_fn (*check_run)(S3chainImage *img, S3chainLoad *load,
                                  S3chainBlockRun *run, bool report);
    /* The bytes the bucket holds for the image */
    uint64_t (*stored_bytes)(S3chainImage *img);
} S3chainImageKind;

struct S3chainImage {
    /* set at open */
    BlockDriverState *bs;
    S3chainConn *conn;
    const S3chainImageKind *kind;
    char *key;
    char *etag;                 /* one object's: its reads are pinned to it */
    char *lock_key;
    bool writable;
    bool scratch;               /* in RAM first, never committed */
    uint64_t session;           /* generation this writer started at */
    uint64_t buffer_size;
    uint64_t readahead_chunks;
    uint64_t block_size;
    int compress_level;         /* zstd's, of a compressed image's writes */
    uint64_t *planned;          /* per chunk, blocks of the read plan */

    /* guards all below, and every CachedChunk of the image */
    CoMutex lock;
    /* a chunked image's; for one object, only its size and chunk size */
    S3chainManifest *manifest;
    bool locked;                /* this writer holds KEY.lock */
    bool manifest_dirty;
    uint64_t serial;            /* uploads made in this session */
    GPtrArray *superseded;      /* keys to delete after the next commit */
    GHashTable *cache;          /* index -> CachedChunk */
    QTAILQ_HEAD(, CachedChunk) lru;
    uint64_t cached;
    unsigned hot;               /* chunks kept dirty until the commit */
    GPtrArray *spare;           /* buffers of dropped chunks, for reuse */
    GPtrArray *staging;         /* of packed chunks' loads and uploads */
    S3chainStreak streak;
    CoQueue room;               /* for room in the buffer */
    bool writing_back;          /* between the high and low water marks */
    unsigned uploading;         /* background uploads in flight */
    int write_back_error;       /* of the last background upload */
};

static inline uint64_t chunk_size(S3chainImage *img)
{
    return img->manifest->chunk_size;
}

static inline unsigned blocks_per_chunk(S3chainImage *img)
{
    return chunk_size(img) / img->block_size;
}

static inline uint64_t all_blocks(S3chainImage *img)
{
    return MAKE_64BIT_MASK(0, blocks_per_chunk(img));
}

static inline const char *bucket(S3chainImage *img)
{
    return s3chain_conn_settings(img->conn)->bucket;
}

/* How to open an image */
typedef struct S3chainImageOpen {
    const char *key;            /* of its manifest, or its object */
    uint64_t object_bytes;      /* that object's length */
    const char *etag;           /* its ETag: the rest is read pinned to it */
    const char *head;           /* its first bytes, read at the probe */
    uint64_t head_len;
    bool writable;
    uint64_t buffer_size;
    uint64_t readahead;         /* bytes of chunks a reader has ahead */
    int compress_level;         /* zstd's, for a compressed image's writes */
    const uint8_t *encryption_key;  /* the user's, or NULL */
} S3chainImageOpen;

/*
 * Image @how->key of @kind, as @manifest has it, with a buffer of
 * @how->buffer_size bytes and @how->readahead bytes read ahead; takes
 * @manifest
 */
S3chainImage *s3chain_image_new(BlockDriverState *bs, S3chainConn *conn,
                                const S3chainImageKind *kind,
                                const S3chainImageOpen *how,
                                S3chainManifest *manifest);
/* Frees @img, which holds nothing: no lock, nothing written */
void s3chain_image_free(S3chainImage *img);
/*
 * Commits what was written, or for a scratch image deletes what it
 * spilled, releases the writer's lock and frees @img
 */
void coroutine_fn s3chain_image_co_close(S3chainImage *img);
int coroutine_fn s3chain_image_co_preadv(S3chainImage *img, uint64_t offset,
                                         uint64_t bytes, QEMUIOVector *qiov);
int coroutine_fn s3chain_image_co_block_status(S3chainImage *img,
                                               uint64_t offset,
                                               uint64_t bytes,
                                               int64_t *pnum);
/*
 * Has chunks load only the blocks that the ranges of read plan @text,
 * read from file @path, touch, when a read falls in them
 * (see s3chain-plan.c)
 */
int s3chain_image_plan_reads(S3chainImage *img, const char *text,
                             const char *path, Error **errp);
uint64_t s3chain_image_size(S3chainImage *img);
uint64_t s3chain_image_stored_bytes(S3chainImage *img);
/*
 * @todo with the gaps between its runs that are at most
 * S3CHAIN_BRIDGED_GAP long, and @fillable, filled in
 */
uint64_t s3chain_image_bridge_gaps(S3chainImage *img, uint64_t todo,
                                   uint64_t fillable);

/*
 * For the driver's other files.  The _locked functions are called with
 * img->lock held; those that load drop it meanwhile.
 */

/*
 * Whether stored chunk @ref can take a patch: its entry has the sums of
 * the image's blocks, which a patch replaces some of, and is not packed
 */
bool s3chain_image_takes_patches(S3chainImage *img,
                                 const S3chainChunkRef *ref);
/*
 * A buffer for the stored bytes of a packed chunk of @img, of
 * s3chain_image_staging_size(), and back when done
 */
size_t s3chain_image_staging_size(S3chainImage *img);
uint8_t *s3chain_image_take_staging_locked(S3chainImage *img);
void s3chain_image_give_staging_locked(S3chainImage *img, uint8_t *buf);
/* Reports what happened to @req, @what of @key */
void s3chain_image_report_error(S3chainImage *img, const char *what,
                                const char *key, S3chainRequest *req);
/* Drops chunk @c, unpinned, from the buffer */
void s3chain_image_drop_chunk_locked(S3chainImage *img, CachedChunk *c);
/* Unpins @c; a chunk whose load failed goes when its last pin does */
void s3chain_image_release_locked(S3chainImage *img, CachedChunk *c);
/* The patches of chunk @index, stored as @ref, are no longer the image's */
void s3chain_image_supersede_patches_locked(S3chainImage *img,
                                            uint64_t index,
                                            const S3chainChunkRef *ref);
/* The committed objects of chunk @index are no longer the image's */
void s3chain_image_supersede_locked(S3chainImage *img, uint64_t index);
/* Makes blocks @need of pinned chunk @c valid, loading them */
int coroutine_fn s3chain_image_ensure_blocks_locked(S3chainImage *img,
                                                    CachedChunk *c,
                                                    uint64_t need);
/*
 * Returns chunk @index pinned, with blocks @need loaded.  With @for_write,
 * it is not being uploaded, and all of it is loaded unless it can take a
 * patch (@need are then the blocks the caller writes part of); with
 * @overwrite, the caller writes all of it, so nothing is loaded.
 */
int coroutine_fn s3chain_image_get_chunk_locked(S3chainImage *img,
                                                uint64_t index,
                                                bool for_write,
                                                bool overwrite,
                                                uint64_t need,
                                                CachedChunk **chunk);

/* s3chain-chunked.c: chunked images, their objects, lock and creation */

/*
 * Opens the chunked image whose manifest is @how->key, writable (with
 * the writer's lock) if @how->writable
 */
int coroutine_fn s3chain_chunked_co_open(BlockDriverState *bs,
                                         S3chainConn *conn,
                                         const S3chainImageOpen *how,
                                         S3chainImage **image, Error **errp);
/*
 * A scratch image at @key: empty, writable, in RAM while @buffer_size
 * holds it; it spills chunks under @key when full (sealed under
 * @user_key if not NULL), and is never committed
 */
int s3chain_image_new_scratch(BlockDriverState *bs, S3chainConn *conn,
                              const char *key, uint64_t buffer_size,
                              const uint8_t *user_key, S3chainImage **image,
                              Error **errp);
/*
 * An empty image at @key, its blocks stored zstd if @compressed, and
 * sealed under @user_key if not NULL
 */
int coroutine_fn s3chain_image_co_create(S3chainConn *conn, const char *key,
                                         uint64_t size, uint64_t chunk_size,
                                         bool compressed,
                                         const uint8_t *user_key,
                                         Error **errp);
/* Releases the writer's lock, if @img holds it */
void coroutine_fn s3chain_image_co_unlock(S3chainImage *img);

/* s3chain-object.c: images stored as one object, read-only */

/*
 * The image stored as object @how->key, read in chunks of @request_size
 * (rounded up to a chunk size) pinned to its ETag
 */
S3chainImage *s3chain_object_open(BlockDriverState *bs, S3chainConn *conn,
                                  const S3chainImageOpen *how,
                                  uint64_t request_size);

/* s3chain-writeback.c: writes, uploads of chunks and patches, commits */

/* Writes @qiov at @offset, or zeroes if @qiov is NULL */
int coroutine_fn s3chain_image_co_pwritev(S3chainImage *img, uint64_t offset,
                                          uint64_t bytes, QEMUIOVector *qiov);
int coroutine_fn s3chain_image_co_flush(S3chainImage *img);
int coroutine_fn s3chain_image_co_truncate(S3chainImage *img, uint64_t size);
/*
 * Past half the buffer dirty, starts uploading the least recently written
 * chunks in the background, until a quarter is left
 */
void s3chain_image_maybe_write_back_locked(S3chainImage *img);
/*
 * Puts @manifest as object @key, with Content-MD5 and the Content-Type
 * that marks it; with @create_only, only if @key does not exist.  The
 * caller cleans @req up and reads the outcome from it.
 */
int coroutine_fn s3chain_image_put_manifest(S3chainConn *conn,
                                            const char *key,
                                            const S3chainManifest *manifest,
                                            bool create_only,
                                            S3chainRequest *req);
/* Deletes what the last commit left unreferenced; failures leave garbage */
void coroutine_fn s3chain_image_delete_superseded_locked(S3chainImage *img);

#endif
