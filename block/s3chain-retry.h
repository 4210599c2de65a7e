/*
 * s3chain: the policy of requests to the bucket, one for the driver and
 * the s3chain command: what a failure means, which are worth another try,
 * and how long to wait before it
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_RETRY_H
#define BLOCK_S3CHAIN_RETRY_H

#include <curl/curl.h>

/* Tries of a request after its first, unless the user says otherwise */
#define S3CHAIN_DEFAULT_RETRIES 5

/* The network failed on the way: another try may pass */
bool s3chain_curl_error_is_transient(CURLcode code);
/*
 * TLS failed: a certificate that does not verify, or no TLS at all at
 * the other end.  Never tried again: the same answer would come.
 */
bool s3chain_curl_error_is_tls(CURLcode code);
/* The server is busy, failing or timed out: 5xx but 501/505, 429, 408 */
bool s3chain_status_is_transient(long status);

/*
 * The wait before try @attempt + 1 after @attempt failed, in ms: doubling
 * from 100 ms to at most 5 s, each drawn from its upper half so that
 * clients failed together do not come back together
 */
int64_t s3chain_retry_delay_ms(unsigned attempt);

/* What a request that the server answered came to */
typedef enum S3chainOutcome {
    S3CHAIN_OUTCOME_DONE,           /* 2xx */
    S3CHAIN_OUTCOME_TRANSIENT,      /* s3chain_status_is_transient() */
    S3CHAIN_OUTCOME_DENIED,         /* the credentials or the policy */
    S3CHAIN_OUTCOME_NOT_FOUND,      /* 404 */
    S3CHAIN_OUTCOME_PRECONDITION,   /* 412: the object changed, or exists */
    S3CHAIN_OUTCOME_RANGE,          /* 416 */
    S3CHAIN_OUTCOME_UNSUPPORTED,    /* 501, 505: never on another try */
    S3CHAIN_OUTCOME_REFUSED,        /* any other: the request is wrong */
} S3chainOutcome;

/*
 * The outcome of HTTP @status with S3 error code @code (or NULL): some
 * servers answer 400 to an expired token or a malformed signature
 */
S3chainOutcome s3chain_outcome_of(long status, const char *code);

/* The <Code> of S3 error document @body, or NULL */
char *s3chain_error_code(const char *body);

#endif
