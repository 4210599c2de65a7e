/*
 * s3chain: ranged reads of an object, in parallel, with read-ahead for
 * sequential readers
 *
 * The object is cut into segments of request-size bytes.  A sequential
 * reader makes the segments ahead of it load in the background, each in
 * a coroutine of its own, up to readahead bytes; other reads go straight
 * to the server.  The segments in memory are bounded by
 * readahead / request-size + max-requests.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/memalign.h"
#include "s3chain.h"
#include "trace.h"

/* Consecutive near-sequential reads before read-ahead starts */
#define SEQUENTIAL_STREAK 3
/* Reported read errors per object; the trace has them all */
#define MAX_REPORTED_ERRORS 10

typedef struct Segment {
    S3chainReader *reader;
    uint64_t index;
    uint64_t offset;
    uint64_t len;
    uint8_t *buf;
    QEMUIOVector qiov;
    bool loading;
    int ret;
    uint64_t consumed;          /* bytes copied out since it loaded */
    unsigned users;
    CoQueue waiters;
    QTAILQ_ENTRY(Segment) lru;
} Segment;

struct S3chainReader {
    BlockDriverState *bs;
    S3chainConn *conn;
    char *key;
    char *etag;
    uint64_t size;
    uint64_t request_size;
    unsigned max_segments;
    unsigned readahead_segments;

    CoMutex lock;
    GHashTable *segments;       /* index -> Segment */
    QTAILQ_HEAD(, Segment) lru; /* least recently used first */
    S3chainStreak streak;
    unsigned reported_errors;
};

static void report_error(S3chainReader *r, S3chainRequest *req)
{
    trace_s3chain_read_error(r->key, req->range_offset, req->range_bytes,
                             req->ret, req->error_text);
    if (r->reported_errors < MAX_REPORTED_ERRORS) {
        r->reported_errors++;
        error_report("s3chain: read of s3://%s/%s bytes %" PRIu64 "-%" PRIu64
                     " failed: %s", s3chain_conn_settings(r->conn)->bucket,
                     r->key, req->range_offset,
                     req->range_offset + req->range_bytes - 1,
                     req->error_text ?: strerror(-req->ret));
    }
}

static void segment_free(gpointer p)
{
    Segment *seg = p;

    qemu_iovec_destroy(&seg->qiov);
    qemu_vfree(seg->buf);
    g_free(seg);
}

static void coroutine_fn segment_load_entry(void *opaque)
{
    Segment *seg = opaque;
    S3chainReader *r = seg->reader;
    S3chainRequest req = {
        .method = "GET",
        .key = r->key,
        .range_offset = seg->offset,
        .range_bytes = seg->len,
        .if_match = r->etag,
        .qiov = &seg->qiov,
    };
    int ret = s3chain_co_request(r->conn, &req);

    if (ret < 0) {
        report_error(r, &req);
    }
    s3chain_request_cleanup(&req);

    qemu_co_mutex_lock(&r->lock);
    seg->ret = ret;
    seg->loading = false;
    qemu_co_queue_restart_all(&seg->waiters);
    qemu_co_mutex_unlock(&r->lock);
    bdrv_dec_in_flight(r->bs);
}

/*
 * Finds a segment to drop: one that has been read through (a sequential
 * reader does not come back), else, unless @only_consumed, the least
 * recently used one.  Segments loading or in use are never dropped.
 */
static Segment *evict_one_locked(S3chainReader *r, bool only_consumed)
{
    Segment *seg, *victim = NULL;

    QTAILQ_FOREACH(seg, &r->lru, lru) {
        if (seg->loading || seg->users) {
            continue;
        }
        if (seg->consumed >= seg->len || seg->ret < 0) {
            victim = seg;
            break;
        }
        if (!victim && !only_consumed) {
            victim = seg;
        }
    }
    if (victim) {
        QTAILQ_REMOVE(&r->lru, victim, lru);
        g_hash_table_steal(r->segments, &victim->index);
    }
    return victim;
}

static void start_load_locked(S3chainReader *r, Segment *seg)
{
    Coroutine *co = qemu_coroutine_create(segment_load_entry, seg);

    seg->loading = true;
    seg->ret = 0;
    seg->consumed = 0;
    trace_s3chain_readahead(r->key, seg->offset, seg->len);
    bdrv_inc_in_flight(r->bs);
    aio_co_enter(bdrv_get_aio_context(r->bs), co);
}

/*
 * Returns segment @index, starting to load it if it is absent and there
 * is room.  A prefetch (@ahead) only takes the room of a segment that was
 * read through, so that it never pushes out data a reader still needs.
 */
static Segment *get_segment_locked(S3chainReader *r, uint64_t index,
                                   bool ahead)
{
    Segment *seg = g_hash_table_lookup(r->segments, &index);
    uint64_t offset = index * r->request_size;
    uint64_t len = MIN(r->request_size, r->size - offset);

    if (seg) {
        QTAILQ_REMOVE(&r->lru, seg, lru);
        QTAILQ_INSERT_TAIL(&r->lru, seg, lru);
        if (!seg->loading && seg->ret < 0 && !seg->users) {
            start_load_locked(r, seg);
        }
        return seg;
    }
    if (g_hash_table_size(r->segments) >= r->max_segments) {
        seg = evict_one_locked(r, ahead);
        if (!seg) {
            return NULL;
        }
        if (seg->len != len) {
            segment_free(seg);
            seg = NULL;
        }
    }
    if (!seg) {
        seg = g_new0(Segment, 1);
        seg->reader = r;
        seg->len = len;
        seg->buf = qemu_blockalign(r->bs, len);
        qemu_iovec_init(&seg->qiov, 1);
        qemu_iovec_add(&seg->qiov, seg->buf, len);
        qemu_co_queue_init(&seg->waiters);
    }
    seg->index = index;
    seg->offset = offset;
    g_hash_table_insert(r->segments, &seg->index, seg);
    QTAILQ_INSERT_TAIL(&r->lru, seg, lru);
    start_load_locked(r, seg);
    return seg;
}

/* Reads [offset, offset + bytes) with parallel ranged GETs. */
static int coroutine_fn read_direct(S3chainReader *r, uint64_t offset,
                                    uint64_t bytes, QEMUIOVector *qiov,
                                    size_t qiov_offset)
{
    uint64_t n = DIV_ROUND_UP(bytes, r->request_size);
    g_autofree S3chainRequest *reqs = g_new0(S3chainRequest, n);
    S3chainWaiter waiter = { 0 };
    int ret = 0;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t done = i * r->request_size;

        reqs[i] = (S3chainRequest) {
            .method = "GET",
            .key = r->key,
            .range_offset = offset + done,
            .range_bytes = MIN(r->request_size, bytes - done),
            .if_match = r->etag,
            .qiov = qiov,
            .qiov_offset = qiov_offset + done,
            .waiter = &waiter,
        };
        s3chain_request_submit(r->conn, &reqs[i]);
    }
    s3chain_co_wait(r->conn, &waiter);

    for (uint64_t i = 0; i < n; i++) {
        if (reqs[i].ret < 0 && reqs[i].ret != -ECANCELED && ret == 0) {
            ret = reqs[i].ret;
            report_error(r, &reqs[i]);
        }
        s3chain_request_cleanup(&reqs[i]);
    }
    return ret;
}

bool s3chain_streak_note(S3chainStreak *s, uint64_t offset, uint64_t bytes,
                         uint64_t slack, uint64_t min_bytes)
{
    if (offset + slack >= s->last_end && offset <= s->last_end + slack) {
        s->reads = MIN(s->reads + 1, SEQUENTIAL_STREAK);
        s->bytes = MIN(s->bytes + bytes, min_bytes);
        s->last_end = MAX(offset + bytes, s->last_end);
    } else {
        s->reads = 0;
        s->bytes = bytes;
        s->last_end = offset + bytes;
    }
    return s->reads >= SEQUENTIAL_STREAK && s->bytes >= min_bytes;
}

int coroutine_fn s3chain_reader_co_preadv(S3chainReader *r, uint64_t offset,
                                          uint64_t bytes, QEMUIOVector *qiov,
                                          size_t qiov_offset)
{
    uint64_t first, last, ahead, end;
    g_autofree Segment **segs = NULL;
    bool sequential;
    bool covered = true;
    int ret = 0;

    if (offset >= r->size || bytes == 0) {
        return 0;
    }
    bytes = MIN(bytes, r->size - offset);
    first = offset / r->request_size;
    last = (offset + bytes - 1) / r->request_size;
    segs = g_new0(Segment *, last - first + 1);

    qemu_co_mutex_lock(&r->lock);
    sequential = s3chain_streak_note(&r->streak, offset, bytes,
                                     2 * r->request_size, 0);
    for (uint64_t i = first; i <= last; i++) {
        Segment *seg = sequential ? get_segment_locked(r, i, false)
                                  : g_hash_table_lookup(r->segments, &i);

        /* Pinned, so that loading the next ones cannot evict it */
        if (seg) {
            seg->users++;
        }
        if (!seg || (!seg->loading && seg->ret < 0)) {
            covered = false;
        }
        segs[i - first] = seg;
    }
    if (sequential) {
        ahead = MIN(last + r->readahead_segments,
                    (r->size - 1) / r->request_size);
        for (uint64_t i = last + 1; i <= ahead; i++) {
            get_segment_locked(r, i, true);
        }
    }
    if (!covered) {
        for (uint64_t i = first; i <= last; i++) {
            if (segs[i - first]) {
                segs[i - first]->users--;
            }
        }
        qemu_co_mutex_unlock(&r->lock);
        return read_direct(r, offset, bytes, qiov, qiov_offset);
    }

    end = offset + bytes;
    for (uint64_t i = first; i <= last; i++) {
        Segment *seg = segs[i - first];
        uint64_t from = MAX(offset, seg->offset);
        uint64_t to = MIN(end, seg->offset + seg->len);

        while (seg->loading) {
            qemu_co_queue_wait(&seg->waiters, &r->lock);
        }
        if (seg->ret < 0) {
            ret = ret ? ret : seg->ret;
        } else if (ret == 0) {
            qemu_iovec_from_buf(qiov, qiov_offset + (from - offset),
                                seg->buf + (from - seg->offset), to - from);
            seg->consumed += to - from;
        }
        seg->users--;
    }
    qemu_co_mutex_unlock(&r->lock);
    return ret;
}

S3chainReader *s3chain_reader_new(BlockDriverState *bs, S3chainConn *conn,
                                  const char *key, const char *etag,
                                  uint64_t size, uint64_t request_size,
                                  uint64_t readahead)
{
    S3chainReader *r = g_new0(S3chainReader, 1);

    r->bs = bs;
    r->conn = conn;
    r->key = g_strdup(key);
    r->etag = g_strdup(etag);
    r->size = size;
    r->request_size = request_size;
    r->readahead_segments = readahead / request_size;
    /* room for the read-ahead, and for each reader in flight */
    r->max_segments = r->readahead_segments +
                      s3chain_conn_settings(conn)->max_requests;
    qemu_co_mutex_init(&r->lock);
    r->segments = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                        segment_free);
    QTAILQ_INIT(&r->lru);
    return r;
}

/* Only called when drained: no segment is loading */
void s3chain_reader_free(S3chainReader *r)
{
    if (!r) {
        return;
    }
    g_hash_table_destroy(r->segments);
    g_free(r->key);
    g_free(r->etag);
    g_free(r);
}
