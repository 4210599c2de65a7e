/*
 * jobs.c: following QMP jobs to their end
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

bool s3c_job_wait(S3cQmp *qmp, const char *id, const char *what,
                  GError **err)
{
    g_autofree char *error = NULL;

    for (;;) {
        json_object *jobs = s3c_qmp_execute(qmp, "query-jobs", NULL, err);
        json_object *job;

        if (!jobs) {
            return false;
        }
        job = s3c_json_find_id(jobs, id);
        if (!job || !strcmp(s3c_json_str(job, "status"), "concluded")) {
            error = g_strdup(job ? s3c_json_str(job, "error") : "job vanished");
            json_object_put(jobs);
            break;
        }
        json_object_put(jobs);
        json_object_put(s3c_qmp_next_event(qmp, 100));
    }
    s3c_qmp_run(qmp, "job-dismiss",
                s3c_json_obj("id", json_object_new_string(id), NULL), NULL);
    if (error) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT, "%s: %s: %s",
                    qmp->peer, what, error);
        return false;
    }
    return true;
}

/* Takes in what query-jobs says of @job; true once it has ended */
static bool note_job(S3cJobProgress *job, json_object *jobs, int64_t start)
{
    json_object *state = s3c_json_find_id(jobs, job->id);

    if (state) {
        job->done = s3c_json_int(state, "current-progress");
        job->total = s3c_json_int(state, "total-progress");
    }
    if (!job->ended &&
        (!state || !strcmp(s3c_json_str(state, "status"), "concluded"))) {
        job->ended = true;
        job->seconds = (g_get_monotonic_time() - start) / 1e6;
        job->error = g_strdup(state ? s3c_json_str(state, "error")
                                    : "vanished");
    }
    return job->ended;
}

bool s3c_jobs_follow(S3cQmp *qmp, S3cJobProgress *jobs, guint n,
                     bool stop_at_error, const char *interrupted,
                     GError **err)
{
    int64_t start = g_get_monotonic_time();

    for (;;) {
        json_object *states = s3c_qmp_execute(qmp, "query-jobs", NULL, err);
        uint64_t done = 0, total = 0;
        guint ended = 0;
        bool failed = false;

        if (!states) {
            return false;
        }
        for (guint i = 0; i < n; i++) {
            ended += note_job(&jobs[i], states, start);
            failed |= jobs[i].error != NULL;
            done += jobs[i].done;
            total += jobs[i].total;
        }
        json_object_put(states);
        /* 100% only once every job has ended */
        s3c_output_progress(ended == n ? total : MIN(done, total - 1),
                            total);
        if (ended == n || (stop_at_error && failed)) {
            return true;
        }
        if (s3c_interrupted) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED, "%s",
                        interrupted);
            return false;
        }
        json_object_put(s3c_qmp_next_event(qmp, 200));
    }
}

bool s3c_job_run(S3cQmp *qmp, const char *command, json_object *args,
                 const char *id, GError **err)
{
    return s3c_qmp_run(qmp, command, args, err) &&
           s3c_job_wait(qmp, id, command, err);
}
