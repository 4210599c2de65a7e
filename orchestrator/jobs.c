/* jobs.c: following QMP jobs to their end */
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

bool s3c_job_run(S3cQmp *qmp, const char *command, json_object *args,
                 const char *id, GError **err)
{
    return s3c_qmp_run(qmp, command, args, err) &&
           s3c_job_wait(qmp, id, command, err);
}
