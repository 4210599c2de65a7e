/* main.c: the s3chain command line: subcommands, options and exit codes */
#include "s3chain.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CHAIN_LIMIT 30
#define DEFAULT_CBW_TIMEOUT 10
#define DEFAULT_BUFFER_SIZE (64 * 1024 * 1024)
#define DEFAULT_LOCK_STALE (24 * 3600)

volatile sig_atomic_t s3c_interrupted;

G_DEFINE_QUARK(s3chain-error-quark, s3c_error)

static const char usage_text[] =
"Usage: s3chain backup --vm NAME --qmp SOCKET --repo s3://BUCKET[/PREFIX]\n"
"                      [OPTION]...\n"
"Back up the disks of a running VM into an S3 bucket: the first backup of\n"
"a disk is full, the next ones incremental, streamed through a\n"
"qemu-storage-daemon sidecar with no temporary disk.\n"
"\n"
"Where from and to:\n"
"  --vm NAME             the VM's name in the repository\n"
"  --qmp SOCKET          the VM's QMP unix socket\n"
"  --repo s3://BUCKET[/PREFIX]\n"
"  --endpoint URL        the S3 endpoint (else AWS_ENDPOINT_URL)\n"
"  --region REGION       (else AWS_REGION, else us-east-1)\n"
"  --credentials FILE    an AWS credentials file of mode 0600 (else\n"
"                        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and\n"
"                        AWS_SESSION_TOKEN, else ~/.aws/credentials)\n"
"  --profile NAME        its section (else AWS_PROFILE, else default)\n"
"  --cafile FILE         CA certificates for an https endpoint\n"
"  --no-verify-tls       do not verify the endpoint's certificate\n"
"  --sidecar-qmp SOCKET  a running qemu-storage-daemon sidecar; without\n"
"                        it, one is started (S3CHAIN_SIDECAR names it)\n"
"  --runtime-dir DIR     sockets and transient secret files (default\n"
"                        /run/s3chain, which the sidecar must see too)\n"
"  --guest-agent SOCKET  freeze the guest's filesystems through its agent\n"
"\n"
"What:\n"
"  --disk NAME           back up this disk (a device id; repeatable;\n"
"                        default: every writable disk)\n"
"  --full                full backups, even where an incremental would do\n"
"  --chain-limit N       full backup once a chain holds N images (30)\n"
"  --cbw-timeout SEC     longest a guest write waits for the backup (10);\n"
"                        past it the backup fails, never the write\n"
"  --buffer-size BYTES   the sidecar's write-back buffer per disk (64M)\n"
"  --lock-stale SEC      a lock older than this is stale (86400)\n"
"  --break-stale-lock    break a stale lock instead of failing\n"
"\n"
"Output:\n"
"  --progress MODE       bar, json (lines on stdout) or none; default: a\n"
"                        bar on a terminal, else json\n"
"  --json                end with a JSON result object on stdout\n"
"  -h, --help            this text\n"
"\n"
"Exit codes: 0 done, 1 internal error, 2 bad usage, 3 VM unreachable,\n"
"4 unknown disk, 5 access denied, 6 no such bucket, 7 locked by another\n"
"backup, 8 transient failure (retry), 9 interrupted (retry).\n"
"See s3chain(1) and docs/cli.rst.\n";

enum {
    OPT_VM = 256, OPT_QMP, OPT_REPO, OPT_ENDPOINT, OPT_REGION,
    OPT_CREDENTIALS, OPT_PROFILE, OPT_CAFILE, OPT_NO_VERIFY_TLS,
    OPT_SIDECAR_QMP, OPT_RUNTIME_DIR, OPT_GUEST_AGENT, OPT_DISK, OPT_FULL,
    OPT_CHAIN_LIMIT, OPT_CBW_TIMEOUT, OPT_BUFFER_SIZE, OPT_LOCK_STALE,
    OPT_BREAK_LOCK, OPT_PROGRESS, OPT_JSON,
};

static const struct option backup_options[] = {
    { "vm", required_argument, NULL, OPT_VM },
    { "qmp", required_argument, NULL, OPT_QMP },
    { "repo", required_argument, NULL, OPT_REPO },
    { "endpoint", required_argument, NULL, OPT_ENDPOINT },
    { "region", required_argument, NULL, OPT_REGION },
    { "credentials", required_argument, NULL, OPT_CREDENTIALS },
    { "profile", required_argument, NULL, OPT_PROFILE },
    { "cafile", required_argument, NULL, OPT_CAFILE },
    { "no-verify-tls", no_argument, NULL, OPT_NO_VERIFY_TLS },
    { "sidecar-qmp", required_argument, NULL, OPT_SIDECAR_QMP },
    { "runtime-dir", required_argument, NULL, OPT_RUNTIME_DIR },
    { "guest-agent", required_argument, NULL, OPT_GUEST_AGENT },
    { "disk", required_argument, NULL, OPT_DISK },
    { "full", no_argument, NULL, OPT_FULL },
    { "chain-limit", required_argument, NULL, OPT_CHAIN_LIMIT },
    { "cbw-timeout", required_argument, NULL, OPT_CBW_TIMEOUT },
    { "buffer-size", required_argument, NULL, OPT_BUFFER_SIZE },
    { "lock-stale", required_argument, NULL, OPT_LOCK_STALE },
    { "break-stale-lock", no_argument, NULL, OPT_BREAK_LOCK },
    { "progress", required_argument, NULL, OPT_PROGRESS },
    { "json", no_argument, NULL, OPT_JSON },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

/* Whether the controller asked for JSON, even if the rest is wrong */
static bool json_wanted;

static int report(GError *err)
{
    int code = err->domain == S3C_ERROR ? err->code : S3C_EXIT_INTERNAL;

    fprintf(stderr, "s3chain: %s\n", err->message);
    if (json_wanted) {
        s3c_output_result(s3c_json_obj(
            "event", json_object_new_string("error"),
            "exit-code", json_object_new_int(code),
            "retryable", json_object_new_boolean(
                code == S3C_EXIT_TRANSIENT || code == S3C_EXIT_INTERRUPTED),
            "message", json_object_new_string(err->message), NULL));
    }
    g_error_free(err);
    return code;
}

static int usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return report(g_error_new(S3C_ERROR, S3C_EXIT_USAGE,
                              "%s; see s3chain --help", msg));
}

/* A number in [@min, @max], with an optional K, M or G suffix */
static bool parse_number(const char *text, int64_t min, int64_t max,
                         int64_t *out)
{
    char *end;
    int64_t v = g_ascii_strtoll(text, &end, 10);

    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    }
    if (end == text || *end || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

static void on_signal(int sig)
{
    s3c_interrupted = 1;
}

static int cmd_backup(int argc, char **argv)
{
    S3cBackupOptions opts = {
        .chain_limit = DEFAULT_CHAIN_LIMIT,
        .cbw_timeout = DEFAULT_CBW_TIMEOUT,
        .buffer_size = DEFAULT_BUFFER_SIZE,
        .lock_stale_after = DEFAULT_LOCK_STALE,
        .runtime_dir = "/run/s3chain",
    };
    g_autoptr(GPtrArray) disks = g_ptr_array_new();
    const char *progress = isatty(STDERR_FILENO) ? "bar" : "json";
    GError *err = NULL;
    int64_t n;
    int c;

    for (int i = 1; i < argc; i++) {
        json_wanted |= !strcmp(argv[i], "--json");
    }
    while ((c = getopt_long(argc, argv, "h", backup_options, NULL)) != -1) {
        switch (c) {
        case OPT_VM: opts.vm = optarg; break;
        case OPT_QMP: opts.vm_qmp = optarg; break;
        case OPT_REPO: opts.repo.url = optarg; break;
        case OPT_ENDPOINT: opts.repo.endpoint = optarg; break;
        case OPT_REGION: opts.repo.region = optarg; break;
        case OPT_CREDENTIALS: opts.repo.credentials = optarg; break;
        case OPT_PROFILE: opts.repo.profile = optarg; break;
        case OPT_CAFILE: opts.repo.cafile = optarg; break;
        case OPT_NO_VERIFY_TLS: opts.repo.no_verify_tls = true; break;
        case OPT_SIDECAR_QMP: opts.sidecar_qmp = optarg; break;
        case OPT_RUNTIME_DIR: opts.runtime_dir = optarg; break;
        case OPT_GUEST_AGENT: opts.guest_agent = optarg; break;
        case OPT_DISK: g_ptr_array_add(disks, optarg); break;
        case OPT_FULL: opts.full = true; break;
        case OPT_BREAK_LOCK: opts.break_lock = true; break;
        case OPT_JSON: opts.json = true; break;
        case OPT_PROGRESS: progress = optarg; break;
        case OPT_CHAIN_LIMIT:
            if (!parse_number(optarg, 1, 10000, &n)) {
                return usage_error("--chain-limit wants a number from 1 to "
                                   "10000, not '%s'", optarg);
            }
            opts.chain_limit = n;
            break;
        case OPT_CBW_TIMEOUT:
            if (!parse_number(optarg, 1, 3600, &n)) {
                return usage_error("--cbw-timeout wants seconds from 1 to "
                                   "3600, not '%s'", optarg);
            }
            opts.cbw_timeout = n;
            break;
        case OPT_BUFFER_SIZE:
            if (!parse_number(optarg, 4 << 20, 64LL << 30, &n)) {
                return usage_error("--buffer-size wants a size from 4M to "
                                   "64G, not '%s'", optarg);
            }
            opts.buffer_size = n;
            break;
        case OPT_LOCK_STALE:
            if (!parse_number(optarg, 60, G_MAXINT32, &n)) {
                return usage_error("--lock-stale wants seconds, at least "
                                   "60, not '%s'", optarg);
            }
            opts.lock_stale_after = n;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return S3C_EXIT_OK;
        default:
            return usage_error("bad option");
        }
    }
    if (optind < argc) {
        return usage_error("unexpected argument '%s'", argv[optind]);
    }
    if (!opts.vm || !opts.vm_qmp || !opts.repo.url) {
        return usage_error("backup needs --vm, --qmp and --repo");
    }
    if (!strcmp(progress, "bar")) {
        s3c_output_init(S3C_OUTPUT_BAR);
    } else if (!strcmp(progress, "json")) {
        s3c_output_init(S3C_OUTPUT_JSON);
    } else if (!strcmp(progress, "none")) {
        s3c_output_init(S3C_OUTPUT_NONE);
    } else {
        return usage_error("--progress is bar, json or none, not '%s'",
                           progress);
    }
    if (disks->len) {
        g_ptr_array_add(disks, NULL);
        opts.disks = (char **)disks->pdata;
    }
    return s3c_backup(&opts, &err) == S3C_EXIT_OK ? S3C_EXIT_OK
           : report(err);
}

int main(int argc, char **argv)
{
    struct sigaction sa = { .sa_handler = on_signal };
    int ret;

    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? S3C_EXIT_USAGE : S3C_EXIT_OK;
    }
    if (strcmp(argv[1], "backup")) {
        return usage_error("unknown command '%s'", argv[1]);
    }
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ret = cmd_backup(argc - 1, argv + 1);
    curl_global_cleanup();
    return ret;
}
