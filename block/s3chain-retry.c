/*
 * s3chain: the policy of requests to the bucket, one for the driver and
 * the s3chain command: what a failure means, which are worth another try,
 * and how long to wait before it
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "s3chain-retry.h"

#define RETRY_BASE_MS 100
#define RETRY_MAX_MS 5000

bool s3chain_curl_error_is_transient(CURLcode code)
{
    switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

bool s3chain_curl_error_is_tls(CURLcode code)
{
    switch (code) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
        return true;
    default:
        return false;
    }
}

bool s3chain_status_is_transient(long status)
{
    /* what the server does not implement, it won't on a second try */
    return (status >= 500 && status != 501 && status != 505) ||
           status == 429 || status == 408;
}

int64_t s3chain_retry_delay_ms(unsigned attempt)
{
    int64_t delay = RETRY_BASE_MS << (attempt > 16 ? 15 : attempt - 1);

    delay = delay < RETRY_MAX_MS ? delay : RETRY_MAX_MS;
    return delay / 2 + g_random_int_range(0, delay / 2 + 1);
}

/* S3's codes of a request refused for its credentials, whatever status */
static bool code_is_denial(const char *code)
{
    static const char *const denials[] = {
        "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
        "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
        "AuthorizationHeaderMalformed", "InvalidSecurity",
    };

    for (size_t i = 0; code && i < G_N_ELEMENTS(denials); i++) {
        if (!strcmp(code, denials[i])) {
            return true;
        }
    }
    return false;
}

S3chainOutcome s3chain_outcome_of(long status, const char *code)
{
    if (status >= 200 && status < 300) {
        return S3CHAIN_OUTCOME_DONE;
    }
    if (s3chain_status_is_transient(status)) {
        return S3CHAIN_OUTCOME_TRANSIENT;
    }
    if (status == 401 || status == 403 || code_is_denial(code)) {
        return S3CHAIN_OUTCOME_DENIED;
    }
    switch (status) {
    case 404:
        return S3CHAIN_OUTCOME_NOT_FOUND;
    case 412:
        return S3CHAIN_OUTCOME_PRECONDITION;
    case 416:
        return S3CHAIN_OUTCOME_RANGE;
    case 501:
    case 505:
        return S3CHAIN_OUTCOME_UNSUPPORTED;
    default:
        return S3CHAIN_OUTCOME_REFUSED;
    }
}

char *s3chain_error_code(const char *body)
{
    const char *start = body ? strstr(body, "<Code>") : NULL;
    const char *end = start ? strstr(start, "</Code>") : NULL;

    if (!end) {
        return NULL;
    }
    start += strlen("<Code>");
    return g_strndup(start, end - start);
}
