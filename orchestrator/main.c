/*
 * main.c: the s3chain command line: subcommands, options and exit codes
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
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
#define DEFAULT_LEASE 60
#define DEFAULT_VM_WAIT 600
#define DEFAULT_RUNTIME_DIR "/run/s3chain"
#define DEFAULT_GC_GRACE 3600

static const char repo_help[] =
"Repository:\n"
"  --repo s3://BUCKET[/PREFIX]\n"
"  --endpoint URL        the S3 endpoint (else AWS_ENDPOINT_URL)\n"
"  --region REGION       (else AWS_REGION, else us-east-1)\n"
"  --credentials FILE    an AWS credentials file of mode 0600 (else\n"
"                        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and\n"
"                        AWS_SESSION_TOKEN, else ~/.aws/credentials)\n"
"  --profile NAME        its section (else AWS_PROFILE, else default)\n"
"  --cafile FILE         CA certificates for an https endpoint\n"
"  --no-verify-tls       do not verify the endpoint's certificate\n"
"  --key-file FILE       the key of the VM's encrypted backups: a file of\n"
"                        mode 0600 holding 32 bytes, or 64 hex digits\n"
"\n";

static const char output_help[] =
"Output:\n"
"  --progress MODE       bar, json (lines on stdout) or none; default: a\n"
"                        bar on a terminal, else json\n"
"  --json                end with a JSON result object on stdout\n"
"  -h, --help            this text\n"
"\n"
"Exit codes: 0 done, 1 internal error, 2 bad usage, 3 VM unreachable,\n"
"4 no such VM, backup or disk, 5 access denied, 6 no such bucket, 7 locked\n"
"by another backup, 8 transient failure (retry), 9 interrupted (retry),\n"
"10 restore target refused, 11 backup damaged.\n"
"See s3chain(1) and docs/cli.rst.\n";

static const char main_help[] =
"Usage: s3chain COMMAND [OPTION]...\n"
"Back up running VMs into an S3 bucket, fully then incrementally, with\n"
"no temporary disk, and read any backup back.\n"
"\n"
"Commands:\n"
"  backup    back up the disks of a VM (running, or a shut-off libvirt\n"
"            domain)\n"
"  restore   write a backup's disks onto files or block devices, or run\n"
"            a VM from it at once while it is copied (--instant)\n"
"  list      the VMs, disks and backups in a repository\n"
"  verify    check that backups are whole and intact\n"
"  serve     export a backup's disk over NBD\n"
"  delete    delete backups, merging a deleted one's successor into it\n"
"  prune     delete the backups that no keep rule keeps\n"
"  gc        delete what no backup needs: failed backups' images,\n"
"            superseded chunks, stale locks\n"
"\n"
"s3chain COMMAND --help describes each; s3chain --version says which\n"
"s3chain this is.\n";

static const char backup_help[] =
"Usage: s3chain backup --vm NAME --qmp SOCKET --repo s3://BUCKET[/PREFIX]\n"
"                      [OPTION]...\n"
"       s3chain backup --libvirt DOMAIN [--connect URI]\n"
"                      --repo s3://BUCKET[/PREFIX] [OPTION]...\n"
"       s3chain backup --kubevirt FILE --export-token-file FILE\n"
"                      --repo s3://BUCKET[/PREFIX] [OPTION]...\n"
"Back up the disks of a running VM into an S3 bucket: the first backup of\n"
"a disk is full, the next ones incremental, streamed through a\n"
"qemu-storage-daemon sidecar: from a plain QEMU over its QMP socket with\n"
"no temporary disk, or from a libvirt domain through libvirt's backup API\n"
"(pull mode, with a scratch file per disk; docs/libvirt.rst), or from\n"
"KubeVirt's export server for a pull-mode VirtualMachineBackup\n"
"(docs/kubernetes.rst).\n"
"\n"
"  --vm NAME             the VM's name in the repository (with --libvirt,\n"
"                        the domain's name unless given)\n"
"  --qmp SOCKET          the VM's QMP unix socket\n"
"  --libvirt DOMAIN      a libvirt domain instead (shut off: its images)\n"
"  --connect URI         libvirt's URI (default: libvirt's default)\n"
"  --scratch-dir DIR     where libvirt keeps what the guest rewrites\n"
"                        during the backup (/var/tmp); it must have room\n"
"                        for the disks' size\n"
"  --kubevirt FILE       a VirtualMachineBackup in Pull mode, as kubectl\n"
"                        get -o json prints it (- for stdin), its export\n"
"                        ready; --vm defaults to NAMESPACE.VM\n"
"  --kubevirt-tracker FILE\n"
"                        its VirtualMachineBackupTracker, as read before\n"
"                        the backup was created (an Incremental needs it)\n"
"  --export-token-file FILE\n"
"                        the export's token, a file of mode 0600\n"
"  --export-ca-file FILE the export server's CA (default: the backup's\n"
"                        status.endpointCert)\n"
"  --sidecar-qmp SOCKET  a running qemu-storage-daemon sidecar; without\n"
"                        it, one is started (S3CHAIN_SIDECAR names it)\n"
"  --runtime-dir DIR     sockets and transient secret files (default\n"
"                        /run/s3chain, which the sidecar must see too)\n"
"  --guest-agent SOCKET  freeze the guest's filesystems through its agent\n"
"  --disk NAME           back up this disk (a device id; repeatable;\n"
"                        default: every writable disk)\n"
"  --full                full backups, even where an incremental would do\n"
"  --chain-limit N       full backup once a chain holds N images (30)\n"
"  --merge-after N       instead, keep chains at N images: past N, the\n"
"                        oldest backup of the chain is deleted, merged\n"
"                        into its successor in the bucket (incremental\n"
"                        forever; a new full only when one is needed)\n"
"  --cbw-timeout SEC     longest a guest write waits for the backup (10);\n"
"                        past it the backup fails, never the write\n"
"  --buffer-size BYTES   the sidecar's write-back buffer per disk, and the\n"
"                        most RAM its copy-before-write scratch keeps (64M)\n"
"  --compress zstd[:LEVEL]\n"
"                        store the VM's backups compressed, zstd at LEVEL\n"
"                        1 to 19 (3); the VM's first backup decides, and\n"
"                        later ones follow it (a level may change)\n"
"  --encrypt             store the VM's backups encrypted with --key-file's\n"
"                        key (AES-256-GCM); the VM's first backup decides,\n"
"                        and a key given for it is enough\n"
"  --lease SEC           the VM's lock holds this long unrenewed (60); a\n"
"                        lock whose lease ran out is taken over\n"
"  --lock-stale SEC      with --break-stale-lock: break a lock without a\n"
"  --break-stale-lock    lease (of s3chain 0.2) older than SEC (86400)\n"
"\n";

static const char restore_help[] =
"Usage: s3chain restore --vm NAME --repo s3://BUCKET[/PREFIX]\n"
"                       --target [DISK=]PATH... [OPTION]...\n"
"       s3chain restore --libvirt DOMAIN --repo s3://BUCKET[/PREFIX]\n"
"                       [OPTION]...\n"
"Write a backup's disks, streamed from the bucket, onto new files or\n"
"block devices, bit for bit as they were at the backup's instant.\n"
"\n"
"  --vm NAME             the VM's name in the repository\n"
"  --backup ID           which backup: an id, or latest (the default)\n"
"  --before TIME         the last backup before TIME (ISO 8601, UTC\n"
"                        unless it says otherwise)\n"
"  --target [DISK=]PATH  where disk DISK goes (repeatable; DISK may be\n"
"                        left out when the backup has one disk): a new\n"
"                        file, or a block device at least as large\n"
"  --format FORMAT       raw (default) or qcow2: one sparse qcow2 file\n"
"  --force               overwrite target files that exist\n"
"  --libvirt DOMAIN      onto the disks of this shut-off libvirt domain,\n"
"                        each in its own format, replacing them only once\n"
"                        the restore is whole (--vm defaults to DOMAIN)\n"
"  --connect URI         libvirt's URI\n"
"\n"
"Instant restore (docs/restore.rst):\n"
"  --instant             create each target as a qcow2 file backed by the\n"
"                        backup, served over NBD, so that a VM can start\n"
"                        on it at once; then copy the backup into it in\n"
"                        the VM's QEMU, after which the VM needs no bucket\n"
"  --qmp SOCKET          the QMP socket of the VM that starts on the\n"
"                        targets\n"
"  --vm-wait SEC         how long to wait for that VM (600)\n"
"  --copy-speed BYTES    limit the copy to BYTES per second\n"
"  --sidecar-qmp SOCKET  a running qemu-storage-daemon sidecar; without\n"
"                        it, one is started\n"
"  --runtime-dir DIR     its sockets (default /run/s3chain)\n"
"\n";

static const char list_help[] =
"Usage: s3chain list --repo s3://BUCKET[/PREFIX] [--vm NAME] [OPTION]...\n"
"List the VMs of a repository, their backups and each backup's disks:\n"
"id, time, type, parent, size and bytes stored.\n"
"\n"
"  --vm NAME             only this VM\n"
"\n";

static const char verify_help[] =
"Usage: s3chain verify --repo s3://BUCKET[/PREFIX] [--vm NAME] [OPTION]...\n"
"Check that backups are whole: every image's manifest and every chunk it\n"
"names is there, with the checksum it names, and every parent link\n"
"holds.  Names each broken object; exits 11 if anything is.\n"
"\n"
"  --vm NAME             only this VM\n"
"  --backup ID           only the chains of this backup (or latest)\n"
"  --deep                also read every chunk and check its bytes, and\n"
"                        run qemu-img check on every image\n"
"\n";

static const char serve_help[] =
"Usage: s3chain serve --vm NAME --repo s3://BUCKET[/PREFIX] --disk NAME\n"
"                     --listen ADDRESS [OPTION]...\n"
"Export a disk as it was at a backup over NBD, from the bucket, until\n"
"SIGINT or SIGTERM.  A VM can boot from it; qemu-storage-daemon's FUSE\n"
"export, qemu-nbd or guestmount mount it for files (docs/restore.rst).\n"
"\n"
"  --vm NAME             the VM's name in the repository\n"
"  --backup ID           which backup: an id, or latest (the default)\n"
"  --before TIME         the last backup before TIME\n"
"  --disk NAME           which disk (may be left out if it has one)\n"
"  --listen ADDRESS      unix:PATH or tcp:HOST:PORT\n"
"  --writable            let clients write, to an overlay; the\n"
"                        backup never changes\n"
"  --overlay FILE|s3://BUCKET/KEY\n"
"                        that overlay, a new local file or a new image\n"
"                        in a bucket outside the repository, kept after\n"
"                        serving (else a transient local file in the\n"
"                        runtime directory)\n"
"  --sidecar-qmp SOCKET  a running qemu-storage-daemon sidecar; without\n"
"                        it, one is started\n"
"  --runtime-dir DIR     its sockets (default /run/s3chain)\n"
"\n";

static const char delete_help[] =
"Usage: s3chain delete --vm NAME --backup ID... --repo s3://BUCKET[/PREFIX]\n"
"                      [OPTION]...\n"
"Delete backups of a VM, leaving every other one restorable as it was.  A\n"
"backup that later ones follow is merged away: its successor's changes\n"
"go into its image in the bucket, which becomes the successor's.\n"
"Deleting a backup deleted already succeeds and says so.  A delete that\n"
"is interrupted, however, is finished by the next delete, prune, gc or\n"
"backup of the VM (docs/cli.rst).\n"
"\n"
"  --vm NAME             the VM's name in the repository\n"
"  --backup ID           a backup to delete (repeatable)\n"
"  --lease SEC           the VM's lock holds this long unrenewed (60)\n"
"\n";

static const char prune_help[] =
"Usage: s3chain prune (--vm NAME | --all) --repo s3://BUCKET[/PREFIX]\n"
"                     --keep-RULE N... [OPTION]...\n"
"Delete the backups that no keep rule keeps, as s3chain delete does.\n"
"The rules are restic's: each keeps the newest backup of each of its\n"
"last N periods (UTC) that have one; a backup kept by any rule stays.\n"
"\n"
"  --vm NAME             this VM\n"
"  --all                 every VM of the repository\n"
"  --keep-last N         the N newest backups\n"
"  --keep-hourly N       one an hour, for the last N hours with backups\n"
"  --keep-daily N        ... days\n"
"  --keep-weekly N       ... ISO weeks\n"
"  --keep-monthly N      ... months\n"
"  --keep-yearly N       ... years\n"
"  --keep-within DUR     every backup within DUR of the newest (1y2m3d4h,\n"
"                        w for weeks; a month is 30 days, a year 365)\n"
"  --dry-run             say what would go, change nothing\n"
"  --lease SEC           the VM's lock holds this long unrenewed (60)\n"
"\n";

static const char gc_help[] =
"Usage: s3chain gc (--vm NAME | --all) --repo s3://BUCKET[/PREFIX]\n"
"                  [OPTION]...\n"
"Delete the objects of a VM that no backup needs: images of failed or\n"
"interrupted backups, chunks that a later commit superseded, spilled\n"
"copy-before-write scratch, image locks left by killed commands.  Holds\n"
"the VM's lock, so it never races a backup: a VM being backed up is\n"
"left alone (exit 7).\n"
"\n"
"  --vm NAME             this VM\n"
"  --all                 every VM of the repository\n"
"  --grace SEC           keep objects younger than SEC (3600), by this\n"
"                        host's clock against their Last-Modified\n"
"  --dry-run             say what would go, change nothing\n"
"  --lease SEC           the VM's lock holds this long unrenewed (60)\n"
"\n";

enum {
    CMD_BACKUP = 1 << 0,
    CMD_RESTORE = 1 << 1,
    CMD_LIST = 1 << 2,
    CMD_VERIFY = 1 << 3,
    CMD_SERVE = 1 << 4,
    CMD_DELETE = 1 << 5,
    CMD_PRUNE = 1 << 6,
    CMD_GC = 1 << 7,
    CMD_ALL = 0xff,
    CMD_LIFECYCLE = CMD_DELETE | CMD_PRUNE | CMD_GC,
};

enum {
    OPT_VM = 256, OPT_QMP, OPT_REPO, OPT_ENDPOINT, OPT_REGION,
    OPT_CREDENTIALS, OPT_PROFILE, OPT_CAFILE, OPT_NO_VERIFY_TLS, OPT_KEY_FILE,
    OPT_SIDECAR_QMP, OPT_RUNTIME_DIR, OPT_GUEST_AGENT, OPT_DISK, OPT_FULL,
    OPT_CHAIN_LIMIT, OPT_CBW_TIMEOUT, OPT_BUFFER_SIZE, OPT_COMPRESS, OPT_ENCRYPT,
    OPT_LOCK_STALE,
    OPT_LEASE, OPT_BREAK_LOCK, OPT_PROGRESS, OPT_JSON, OPT_BACKUP,
    OPT_BEFORE, OPT_TARGET, OPT_FORMAT, OPT_FORCE, OPT_INSTANT, OPT_VM_WAIT,
    OPT_COPY_SPEED, OPT_DEEP, OPT_LISTEN, OPT_WRITABLE, OPT_OVERLAY,
    OPT_LIBVIRT, OPT_CONNECT, OPT_SCRATCH_DIR, OPT_MERGE_AFTER, OPT_ALL,
    OPT_DRY_RUN, OPT_GRACE, OPT_KEEP_LAST, OPT_KEEP_HOURLY, OPT_KEEP_DAILY,
    OPT_KEEP_WEEKLY, OPT_KEEP_MONTHLY, OPT_KEEP_YEARLY, OPT_KEEP_WITHIN,
    OPT_KUBEVIRT, OPT_KUBEVIRT_TRACKER, OPT_EXPORT_TOKEN_FILE,
    OPT_EXPORT_CA_FILE,
};

typedef struct OptionSpec {
    struct option opt;
    unsigned commands;
} OptionSpec;

#define ARG(name, id, cmds) { { name, required_argument, NULL, id }, cmds }
#define FLAG(name, id, cmds) { { name, no_argument, NULL, id }, cmds }

static const OptionSpec option_specs[] = {
    ARG("repo", OPT_REPO, CMD_ALL),
    ARG("endpoint", OPT_ENDPOINT, CMD_ALL),
    ARG("region", OPT_REGION, CMD_ALL),
    ARG("credentials", OPT_CREDENTIALS, CMD_ALL),
    ARG("profile", OPT_PROFILE, CMD_ALL),
    ARG("cafile", OPT_CAFILE, CMD_ALL),
    FLAG("no-verify-tls", OPT_NO_VERIFY_TLS, CMD_ALL),
    ARG("key-file", OPT_KEY_FILE, CMD_ALL),
    ARG("progress", OPT_PROGRESS, CMD_ALL),
    FLAG("json", OPT_JSON, CMD_ALL),
    FLAG("help", 'h', CMD_ALL),
    ARG("vm", OPT_VM, CMD_ALL),
    ARG("qmp", OPT_QMP, CMD_BACKUP | CMD_RESTORE),
    ARG("sidecar-qmp", OPT_SIDECAR_QMP, CMD_BACKUP | CMD_RESTORE | CMD_SERVE),
    ARG("runtime-dir", OPT_RUNTIME_DIR, CMD_BACKUP | CMD_RESTORE | CMD_SERVE),
    ARG("guest-agent", OPT_GUEST_AGENT, CMD_BACKUP),
    ARG("libvirt", OPT_LIBVIRT, CMD_BACKUP | CMD_RESTORE),
    ARG("connect", OPT_CONNECT, CMD_BACKUP | CMD_RESTORE),
    ARG("scratch-dir", OPT_SCRATCH_DIR, CMD_BACKUP),
    ARG("kubevirt", OPT_KUBEVIRT, CMD_BACKUP),
    ARG("kubevirt-tracker", OPT_KUBEVIRT_TRACKER, CMD_BACKUP),
    ARG("export-token-file", OPT_EXPORT_TOKEN_FILE, CMD_BACKUP),
    ARG("export-ca-file", OPT_EXPORT_CA_FILE, CMD_BACKUP),
    ARG("disk", OPT_DISK, CMD_BACKUP | CMD_SERVE),
    FLAG("full", OPT_FULL, CMD_BACKUP),
    ARG("chain-limit", OPT_CHAIN_LIMIT, CMD_BACKUP),
    ARG("merge-after", OPT_MERGE_AFTER, CMD_BACKUP),
    ARG("cbw-timeout", OPT_CBW_TIMEOUT, CMD_BACKUP),
    ARG("buffer-size", OPT_BUFFER_SIZE, CMD_BACKUP),
    ARG("compress", OPT_COMPRESS, CMD_BACKUP),
    FLAG("encrypt", OPT_ENCRYPT, CMD_BACKUP),
    ARG("lock-stale", OPT_LOCK_STALE, CMD_BACKUP),
    ARG("lease", OPT_LEASE, CMD_BACKUP | CMD_LIFECYCLE),
    FLAG("break-stale-lock", OPT_BREAK_LOCK, CMD_BACKUP),
    ARG("backup", OPT_BACKUP, CMD_RESTORE | CMD_VERIFY | CMD_SERVE |
        CMD_DELETE),
    FLAG("all", OPT_ALL, CMD_PRUNE | CMD_GC),
    FLAG("dry-run", OPT_DRY_RUN, CMD_PRUNE | CMD_GC),
    ARG("grace", OPT_GRACE, CMD_GC),
    ARG("keep-last", OPT_KEEP_LAST, CMD_PRUNE),
    ARG("keep-hourly", OPT_KEEP_HOURLY, CMD_PRUNE),
    ARG("keep-daily", OPT_KEEP_DAILY, CMD_PRUNE),
    ARG("keep-weekly", OPT_KEEP_WEEKLY, CMD_PRUNE),
    ARG("keep-monthly", OPT_KEEP_MONTHLY, CMD_PRUNE),
    ARG("keep-yearly", OPT_KEEP_YEARLY, CMD_PRUNE),
    ARG("keep-within", OPT_KEEP_WITHIN, CMD_PRUNE),
    ARG("before", OPT_BEFORE, CMD_RESTORE | CMD_SERVE),
    ARG("target", OPT_TARGET, CMD_RESTORE),
    ARG("format", OPT_FORMAT, CMD_RESTORE),
    FLAG("force", OPT_FORCE, CMD_RESTORE),
    FLAG("instant", OPT_INSTANT, CMD_RESTORE),
    ARG("vm-wait", OPT_VM_WAIT, CMD_RESTORE),
    ARG("copy-speed", OPT_COPY_SPEED, CMD_RESTORE),
    FLAG("deep", OPT_DEEP, CMD_VERIFY),
    ARG("listen", OPT_LISTEN, CMD_SERVE),
    FLAG("writable", OPT_WRITABLE, CMD_SERVE),
    ARG("overlay", OPT_OVERLAY, CMD_SERVE),
};

/* Everything any command takes; each command reads its own */
typedef struct Args {
    S3cRepoOptions repo;
    const char *vm, *qmp, *sidecar_qmp, *runtime_dir, *guest_agent;
    const char *backup, *before, *format, *listen, *overlay;
    const char *libvirt, *connect, *scratch_dir;
    S3cKubevirtOptions kubevirt;
    GPtrArray *disks, *targets, *backups;
    bool full, break_lock, json, force, instant, deep, writable, all;
    bool dry_run, chain_limit_given, encrypt;
    int64_t chain_limit, cbw_timeout, buffer_size, lock_stale, lease, vm_wait;
    int64_t compress_level;     /* 0: no --compress */
    int64_t copy_speed, merge_after, grace;
    int64_t keep[6];            /* last, hourly ... yearly; -1: not given */
    const char *keep_within;
} Args;

typedef struct Command {
    const char *name;
    unsigned bit;
    const char *help;
    bool (*run)(Args *args, GError **err);
} Command;

/* Whether the controller asked for JSON, even if the rest is wrong */
static bool json_wanted;

static int report(GError *err)
{
    int code = err->domain == S3C_ERROR ? err->code : S3C_EXIT_INTERNAL;

    g_printerr("s3chain: %s\n", err->message);
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

static bool usage_error(GError **err, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static bool usage_error(GError **err, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, S3C_EXIT_USAGE, "%s; see s3chain --help",
                msg);
    return false;
}

/* A number in [@min, @max], with an optional K, M or G suffix */
static bool parse_number(const char *option, const char *text, int64_t min,
                         int64_t max, int64_t *out, GError **err)
{
    char *end;
    int64_t v = g_ascii_strtoll(text, &end, 10);

    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    }
    if (end == text || *end || v < min || v > max) {
        return usage_error(err, "--%s wants a number from %" G_GINT64_FORMAT
                           " to %" G_GINT64_FORMAT ", not '%s'", option, min,
                           max, text);
    }
    *out = v;
    return true;
}

/* --compress zstd[:LEVEL], into its level (zstd's default if not given) */
static bool parse_compress(const char *text, int64_t *level, GError **err)
{
    const char *colon = strchr(text, ':');
    size_t name_len = colon ? (size_t)(colon - text) : strlen(text);

    if (name_len != strlen(S3CHAIN_COMPRESS_ZSTD) ||
        strncmp(text, S3CHAIN_COMPRESS_ZSTD, name_len)) {
        return usage_error(err, "--compress wants zstd or zstd:LEVEL, not "
                           "'%s'", text);
    }
    if (!colon) {
        *level = S3CHAIN_DEFAULT_COMPRESS_LEVEL;
        return true;
    }
    return parse_number("compress", colon + 1, 1,
                        S3CHAIN_MAX_COMPRESS_LEVEL, level, err);
}

static char **strv_or_null(GPtrArray *array)
{
    if (!array->len) {
        return NULL;
    }
    g_ptr_array_add(array, NULL);
    return (char **)array->pdata;
}

static bool run_backup(Args *a, GError **err)
{
    S3cBackupOptions opts = {
        .repo = a->repo, .vm = a->vm, .vm_qmp = a->qmp,
        .sidecar_qmp = a->sidecar_qmp, .runtime_dir = a->runtime_dir,
        .guest_agent = a->guest_agent, .full = a->full,
        .chain_limit = a->chain_limit, .cbw_timeout = a->cbw_timeout,
        .buffer_size = a->buffer_size, .compress_level = a->compress_level,
        .encrypt = a->encrypt,
        .lock = { .lease_s = a->lease, .stale_after = a->lock_stale,
                  .break_stale = a->break_lock }, .json = a->json,
        .libvirt_domain = a->libvirt, .libvirt_uri = a->connect,
        .scratch_dir = a->scratch_dir,
    };
    const S3cKubevirtOptions *kv = &a->kubevirt;
    g_autoptr(S3cKubevirtBackup) kubevirt = NULL;

    if (a->libvirt && (a->qmp || a->guest_agent)) {
        return usage_error(err, "--libvirt takes the place of --qmp and "
                           "--guest-agent: libvirt owns the domain's QEMU "
                           "and its agent");
    }
    if ((a->connect || a->scratch_dir) && !a->libvirt) {
        return usage_error(err, "--connect and --scratch-dir go with "
                           "--libvirt");
    }
    if ((kv->tracker_file || kv->token_file || kv->ca_file) &&
        !kv->backup_file) {
        return usage_error(err, "--kubevirt-tracker, --export-token-file "
                           "and --export-ca-file go with --kubevirt");
    }
    if (kv->backup_file && (a->qmp || a->libvirt || a->guest_agent)) {
        return usage_error(err, "--kubevirt takes the place of --qmp, "
                           "--libvirt and --guest-agent: KubeVirt owns "
                           "the VM and freezes its guest");
    }
    if (a->libvirt && !a->vm) {
        opts.vm = a->libvirt;
    }
    if (a->merge_after && a->chain_limit_given) {
        return usage_error(err, "--merge-after keeps chains short in the "
                           "bucket, --chain-limit with new fulls: give one");
    }
    opts.merge_after = a->merge_after;
    if ((!opts.vm && !kv->backup_file) ||
        !(a->qmp || a->libvirt || kv->backup_file) || !a->repo.url) {
        return usage_error(err, "backup needs --vm, --qmp and --repo, or "
                           "--libvirt and --repo, or --kubevirt and --repo");
    }
    if (kv->backup_file) {
        kubevirt = s3c_kubevirt_load(kv, err);
        if (!kubevirt) {
            return false;
        }
        opts.kubevirt = kubevirt;
        if (!opts.vm) {
            opts.vm = s3c_kubevirt_vm(kubevirt);
        }
    }
    if (!opts.vm) {
        return usage_error(err, "the VirtualMachineBackup names no VM the "
                           "repository can name NAMESPACE.VM (its source "
                           "is a tracker, or the name is over %d "
                           "characters): give the tracker with "
                           "--kubevirt-tracker, or the VM's name with --vm",
                           S3C_NAME_MAX);
    }
    opts.disks = strv_or_null(a->disks);
    return s3c_backup(&opts, err) == S3C_EXIT_OK;
}

static bool run_restore(Args *a, GError **err)
{
    S3cRestoreOptions opts = {
        .point = { .repo = a->repo, .vm = a->vm, .backup = a->backup,
                   .before = a->before },
        .format = a->format, .force = a->force, .json = a->json,
        .instant = a->instant, .vm_qmp = a->qmp,
        .sidecar_qmp = a->sidecar_qmp, .runtime_dir = a->runtime_dir,
        .vm_wait = a->vm_wait, .copy_speed = a->copy_speed,
        .libvirt_domain = a->libvirt, .libvirt_uri = a->connect,
    };

    if (a->libvirt && (a->targets->len || a->instant || a->format)) {
        return usage_error(err, "--libvirt restores onto the domain's own "
                           "disks, in their formats: it takes no --target, "
                           "--format or --instant");
    }
    if (a->connect && !a->libvirt) {
        return usage_error(err, "--connect goes with --libvirt");
    }
    if (a->libvirt && !a->vm) {
        opts.point.vm = a->libvirt;
    }
    if (!opts.point.vm || !a->repo.url ||
        !(a->targets->len || a->libvirt)) {
        return usage_error(err, "restore needs --vm, --repo and --target, "
                           "or --libvirt and --repo");
    }
    if (a->backup && a->before) {
        return usage_error(err, "give --backup or --before, not both");
    }
    if (a->format && strcmp(a->format, "raw") && strcmp(a->format, "qcow2")) {
        return usage_error(err, "--format is raw or qcow2, not '%s'",
                           a->format);
    }
    if (a->instant && !a->qmp) {
        return usage_error(err, "--instant needs --qmp, the socket of the "
                           "VM that starts on the targets");
    }
    if (!a->instant && (a->qmp || a->copy_speed || a->sidecar_qmp)) {
        return usage_error(err, "--qmp, --sidecar-qmp and --copy-speed go "
                           "with --instant");
    }
    if (a->instant && a->format && strcmp(a->format, "qcow2")) {
        return usage_error(err, "an instant restore's targets are qcow2");
    }
    opts.targets = strv_or_null(a->targets);
    return (a->instant ? s3c_restore_instant(&opts, err)
            : s3c_restore(&opts, err)) == S3C_EXIT_OK;
}

static bool run_list(Args *a, GError **err)
{
    S3cListOptions opts = { .repo = a->repo, .vm = a->vm, .json = a->json };

    if (!a->repo.url) {
        return usage_error(err, "list needs --repo");
    }
    return s3c_list(&opts, err) == S3C_EXIT_OK;
}

static bool run_verify(Args *a, GError **err)
{
    S3cVerifyOptions opts = {
        .repo = a->repo, .vm = a->vm, .backup = a->backup, .deep = a->deep,
        .json = a->json,
    };

    if (!a->repo.url) {
        return usage_error(err, "verify needs --repo");
    }
    if (a->backup && !a->vm) {
        return usage_error(err, "--backup needs --vm");
    }
    return s3c_verify(&opts, err) == S3C_EXIT_OK;
}

static bool run_serve(Args *a, GError **err)
{
    S3cServeOptions opts = {
        .point = { .repo = a->repo, .vm = a->vm, .backup = a->backup,
                   .before = a->before },
        .listen = a->listen, .writable = a->writable, .overlay = a->overlay,
        .sidecar_qmp = a->sidecar_qmp, .runtime_dir = a->runtime_dir,
        .json = a->json,
    };

    if (!a->vm || !a->repo.url || !a->listen) {
        return usage_error(err, "serve needs --vm, --repo and --listen");
    }
    if (a->disks->len > 1) {
        return usage_error(err, "serve exports one disk");
    }
    if (a->overlay && !a->writable) {
        return usage_error(err, "--overlay goes with --writable");
    }
    opts.disk = a->disks->len ? g_ptr_array_index(a->disks, 0) : NULL;
    return s3c_serve(&opts, err) == S3C_EXIT_OK;
}

/* The VM's lock as delete, prune and gc take it */
static S3cLeaseOptions lifecycle_lock(const Args *a)
{
    return (S3cLeaseOptions) { .lease_s = a->lease,
                               .stale_after = a->lock_stale };
}

static bool run_delete(Args *a, GError **err)
{
    S3cDeleteOptions opts = {
        .repo = a->repo, .vm = a->vm, .json = a->json,
        .lock = lifecycle_lock(a),
    };

    if (!a->vm || !a->repo.url || !a->backups->len) {
        return usage_error(err, "delete needs --vm, --repo and --backup");
    }
    for (guint i = 0; i < a->backups->len; i++) {
        const char *id = g_ptr_array_index(a->backups, i);

        if (!strcmp(id, "latest")) {
            return usage_error(err, "delete takes backup ids, not latest: "
                               "a retried delete must not take another");
        }
    }
    opts.backups = strv_or_null(a->backups);
    return s3c_delete(&opts, err) == S3C_EXIT_OK;
}

/* --vm NAME or --all, for prune and gc */
static bool which_vms(Args *a, const char *command, GError **err)
{
    if (!a->repo.url || !a->vm == !a->all) {
        return usage_error(err, "%s needs --repo, and --vm or --all",
                           command);
    }
    return true;
}

static bool run_prune(Args *a, GError **err)
{
    S3cPruneOptions opts = {
        .repo = a->repo, .vm = a->vm, .dry_run = a->dry_run,
        .json = a->json,
        .lock = lifecycle_lock(a),
        .keep_last = a->keep[0], .keep_hourly = a->keep[1],
        .keep_daily = a->keep[2], .keep_weekly = a->keep[3],
        .keep_monthly = a->keep[4], .keep_yearly = a->keep[5],
    };
    bool any = false;

    if (!which_vms(a, "prune", err)) {
        return false;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(a->keep); i++) {
        any |= a->keep[i] > 0;
    }
    if (a->keep_within) {
        opts.keep_within_s = s3c_parse_duration(a->keep_within);
        if (opts.keep_within_s <= 0) {
            return usage_error(err, "--keep-within wants a duration like "
                               "30d, 2w or 1y6m, not '%s'", a->keep_within);
        }
        any = true;
    }
    if (!any) {
        return usage_error(err, "prune needs a keep rule (--keep-last N, "
                           "--keep-daily N, --keep-within 30d...): with "
                           "none, it would delete every backup");
    }
    return s3c_prune(&opts, err) == S3C_EXIT_OK;
}

static bool run_gc(Args *a, GError **err)
{
    S3cGcOptions opts = {
        .repo = a->repo, .vm = a->vm, .grace_s = a->grace,
        .dry_run = a->dry_run, .json = a->json,
        .lock = lifecycle_lock(a),
    };

    return which_vms(a, "gc", err) && s3c_gc(&opts, err) == S3C_EXIT_OK;
}

static const Command commands[] = {
    { "backup", CMD_BACKUP, backup_help, run_backup },
    { "restore", CMD_RESTORE, restore_help, run_restore },
    { "list", CMD_LIST, list_help, run_list },
    { "verify", CMD_VERIFY, verify_help, run_verify },
    { "serve", CMD_SERVE, serve_help, run_serve },
    { "delete", CMD_DELETE, delete_help, run_delete },
    { "prune", CMD_PRUNE, prune_help, run_prune },
    { "gc", CMD_GC, gc_help, run_gc },
};

static bool parse_option(Args *a, int id, const char *name, GError **err)
{
    switch (id) {
    case OPT_VM: a->vm = optarg; break;
    case OPT_QMP: a->qmp = optarg; break;
    case OPT_REPO: a->repo.url = optarg; break;
    case OPT_ENDPOINT: a->repo.endpoint = optarg; break;
    case OPT_REGION: a->repo.region = optarg; break;
    case OPT_CREDENTIALS: a->repo.credentials = optarg; break;
    case OPT_PROFILE: a->repo.profile = optarg; break;
    case OPT_CAFILE: a->repo.cafile = optarg; break;
    case OPT_NO_VERIFY_TLS: a->repo.no_verify_tls = true; break;
    case OPT_KEY_FILE: a->repo.key_file = optarg; break;
    case OPT_ENCRYPT: a->encrypt = true; break;
    case OPT_SIDECAR_QMP: a->sidecar_qmp = optarg; break;
    case OPT_RUNTIME_DIR: a->runtime_dir = optarg; break;
    case OPT_GUEST_AGENT: a->guest_agent = optarg; break;
    case OPT_LIBVIRT: a->libvirt = optarg; break;
    case OPT_CONNECT: a->connect = optarg; break;
    case OPT_SCRATCH_DIR: a->scratch_dir = optarg; break;
    case OPT_KUBEVIRT: a->kubevirt.backup_file = optarg; break;
    case OPT_KUBEVIRT_TRACKER: a->kubevirt.tracker_file = optarg; break;
    case OPT_EXPORT_TOKEN_FILE: a->kubevirt.token_file = optarg; break;
    case OPT_EXPORT_CA_FILE: a->kubevirt.ca_file = optarg; break;
    case OPT_DISK: g_ptr_array_add(a->disks, optarg); break;
    case OPT_TARGET: g_ptr_array_add(a->targets, optarg); break;
    case OPT_FULL: a->full = true; break;
    case OPT_BREAK_LOCK: a->break_lock = true; break;
    case OPT_JSON: a->json = true; break;
    case OPT_BACKUP:
        a->backup = optarg;
        g_ptr_array_add(a->backups, optarg);
        break;
    case OPT_ALL: a->all = true; break;
    case OPT_DRY_RUN: a->dry_run = true; break;
    case OPT_KEEP_WITHIN: a->keep_within = optarg; break;
    case OPT_KEEP_LAST: case OPT_KEEP_HOURLY: case OPT_KEEP_DAILY:
    case OPT_KEEP_WEEKLY: case OPT_KEEP_MONTHLY: case OPT_KEEP_YEARLY:
        return parse_number(name, optarg, 1, 1000000,
                            &a->keep[id - OPT_KEEP_LAST], err);
    case OPT_MERGE_AFTER:
        return parse_number(name, optarg, 1, 10000, &a->merge_after, err);
    case OPT_GRACE:
        return parse_number(name, optarg, 0, 365 * 86400, &a->grace, err);
    case OPT_BEFORE: a->before = optarg; break;
    case OPT_FORMAT: a->format = optarg; break;
    case OPT_FORCE: a->force = true; break;
    case OPT_INSTANT: a->instant = true; break;
    case OPT_DEEP: a->deep = true; break;
    case OPT_LISTEN: a->listen = optarg; break;
    case OPT_WRITABLE: a->writable = true; break;
    case OPT_OVERLAY: a->overlay = optarg; break;
    case OPT_PROGRESS:
        if (!strcmp(optarg, "bar")) {
            s3c_output_init(S3C_OUTPUT_BAR);
        } else if (!strcmp(optarg, "json")) {
            s3c_output_init(S3C_OUTPUT_JSON);
        } else if (!strcmp(optarg, "none")) {
            s3c_output_init(S3C_OUTPUT_NONE);
        } else {
            return usage_error(err, "--progress is bar, json or none, not "
                               "'%s'", optarg);
        }
        break;
    case OPT_CHAIN_LIMIT:
        a->chain_limit_given = true;
        return parse_number(name, optarg, 1, 10000, &a->chain_limit, err);
    case OPT_CBW_TIMEOUT:
        return parse_number(name, optarg, 1, 3600, &a->cbw_timeout, err);
    case OPT_BUFFER_SIZE:
        return parse_number(name, optarg, 4 << 20, 64LL << 30,
                            &a->buffer_size, err);
    case OPT_COMPRESS:
        return parse_compress(optarg, &a->compress_level, err);
    case OPT_LOCK_STALE:
        return parse_number(name, optarg, 60, G_MAXINT32, &a->lock_stale,
                            err);
    case OPT_LEASE:
        return parse_number(name, optarg, 4, 86400, &a->lease, err);
    case OPT_VM_WAIT:
        return parse_number(name, optarg, 1, 86400, &a->vm_wait, err);
    case OPT_COPY_SPEED:
        return parse_number(name, optarg, 1 << 20, 1LL << 40,
                            &a->copy_speed, err);
    default:
        return usage_error(err, "bad option");
    }
    return true;
}

static int run_command(const Command *cmd, int argc, char **argv)
{
    struct option long_options[G_N_ELEMENTS(option_specs) + 1] = { 0 };
    Args a = {
        .chain_limit = DEFAULT_CHAIN_LIMIT,
        .cbw_timeout = DEFAULT_CBW_TIMEOUT,
        .buffer_size = DEFAULT_BUFFER_SIZE,
        .lock_stale = DEFAULT_LOCK_STALE,
        .lease = DEFAULT_LEASE,
        .vm_wait = DEFAULT_VM_WAIT,
        .grace = DEFAULT_GC_GRACE,
        .runtime_dir = DEFAULT_RUNTIME_DIR,
        .disks = g_ptr_array_new(),
        .targets = g_ptr_array_new(),
        .backups = g_ptr_array_new(),
    };
    GError *err = NULL;
    int index, c, ret = S3C_EXIT_OK;

    for (size_t i = 0; i < G_N_ELEMENTS(option_specs); i++) {
        long_options[i] = option_specs[i].opt;
    }
    s3c_output_init(isatty(STDERR_FILENO) ? S3C_OUTPUT_BAR
                    : S3C_OUTPUT_JSON);
    while (!err && (c = getopt_long(argc, argv, "h", long_options,
                                    &index)) != -1) {
        const OptionSpec *spec = c == '?' ? NULL : &option_specs[index];

        if (c == 'h') {
            printf("%s%s%s", cmd->help, repo_help, output_help);
            goto out;
        }
        if (c == '?' || c == ':') {
            usage_error(&err, "bad option for %s", cmd->name);
        } else if (!(spec->commands & cmd->bit)) {
            usage_error(&err, "--%s is not an option of %s",
                        spec->opt.name, cmd->name);
        } else {
            parse_option(&a, c, spec->opt.name, &err);
        }
    }
    if (!err && optind < argc) {
        usage_error(&err, "unexpected argument '%s'", argv[optind]);
    }
    if (!err) {
        cmd->run(&a, &err);
    }
    ret = err ? report(err) : S3C_EXIT_OK;
out:
    g_ptr_array_unref(a.disks);
    g_ptr_array_unref(a.targets);
    g_ptr_array_unref(a.backups);
    return ret;
}

static void on_signal(int sig)
{
    s3c_interrupted = 1;
}

int main(int argc, char **argv)
{
    struct sigaction sa = { .sa_handler = on_signal };
    const Command *cmd = NULL;
    int ret;

    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("s3chain %s\n", S3CHAIN_VERSION);
        return S3C_EXIT_OK;
    }
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(main_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? S3C_EXIT_USAGE : S3C_EXIT_OK;
    }
    for (int i = 1; i < argc; i++) {
        json_wanted |= !strcmp(argv[i], "--json");
    }
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (!strcmp(argv[1], commands[i].name)) {
            cmd = &commands[i];
        }
    }
    if (!cmd) {
        GError *err = NULL;

        usage_error(&err, "unknown command '%s'", argv[1]);
        return report(err);
    }
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ret = run_command(cmd, argc - 1, argv + 1);
    curl_global_cleanup();
    return ret;
}
