/*
 * writer.c: the init of the tests' tiny Linux guest.  It loads the virtio
 * modules, then writes records to /dev/vda and /dev/vdb forever, one at
 * a time, each durable before the next (O_DIRECT | O_DSYNC).  Record SEQ
 * goes to a block that SEQ alone decides, and holds SEQ, so that a test
 * can tell from any image of the disks the last record in it and replay
 * every record up to it (tests/orchestrator/guest.py does): an image of
 * both disks at one instant is exactly that replay.
 *
 * Kernel command line: s3w.start=N (the first SEQ), s3w.delay=MS (a pause
 * between records), s3w.bs=BYTES (a record's size).
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "S3CW"
#define NDISKS 2

static const char *const modules[] = {
    "virtio", "virtio_ring", "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
};
static const char *const disks[NDISKS] = { "/dev/vda", "/dev/vdb" };

static uint64_t param(const char *cmdline, const char *name, uint64_t dflt)
{
    const char *at = strstr(cmdline, name);

    return at ? strtoull(at + strlen(name), NULL, 10) : dflt;
}

/* Which block of a disk of @nblocks record @seq goes to */
static uint64_t block_of(uint64_t seq, uint64_t nblocks)
{
    uint64_t x = (seq + 1) * 0x9E3779B97F4A7C15ULL;

    x ^= x >> 31;
    return x % nblocks;
}

/* In rounds: a module whose dependencies are not in yet is tried again */
static void load_modules(void)
{
    const size_t n = sizeof(modules) / sizeof(modules[0]);
    int loaded[sizeof(modules) / sizeof(modules[0])] = { 0 };
    char path[128];

    for (size_t round = 0; round < n; round++) {
        for (size_t i = 0; i < n; i++) {
            int fd;

            if (loaded[i]) {
                continue;
            }
            snprintf(path, sizeof(path), "/modules/%s.ko", modules[i]);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0 && (syscall(SYS_finit_module, fd, "", 0) == 0 ||
                            errno == EEXIST)) {
                loaded[i] = 1;
            } else if (round == n - 1) {
                printf("s3w: module %s: %s\n", modules[i], strerror(errno));
            }
            if (fd >= 0) {
                close(fd);
            }
        }
    }
}

int main(void)
{
    char cmdline[1024] = "";
    int fds[NDISKS];
    uint64_t nblocks[NDISKS];
    uint64_t seq, bs, delay_ms;
    char *buf;
    FILE *f;

    setvbuf(stdout, NULL, _IOLBF, 0);
    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    f = fopen("/proc/cmdline", "r");
    if (f) {
        if (!fgets(cmdline, sizeof(cmdline), f)) {
            cmdline[0] = 0;
        }
        fclose(f);
    }
    seq = param(cmdline, "s3w.start=", 1);
    delay_ms = param(cmdline, "s3w.delay=", 10);
    bs = param(cmdline, "s3w.bs=", 65536);
    load_modules();
    for (int i = 0; i < NDISKS; i++) {
        for (int tries = 0; tries < 300; tries++) {
            fds[i] = open(disks[i], O_RDWR | O_DIRECT | O_DSYNC);
            if (fds[i] >= 0) {
                break;
            }
            usleep(100000);
        }
        if (fds[i] < 0 || ioctl(fds[i], BLKGETSIZE64, &nblocks[i]) < 0) {
            printf("s3w: no disk %s: %s\n", disks[i], strerror(errno));
            for (;;) {
                pause();
            }
        }
        nblocks[i] /= bs;
    }
    if (posix_memalign((void **)&buf, 4096, bs)) {
        return 1;
    }
    printf("s3w: writing from %llu, %llu-byte records, %llu ms apart\n",
           (unsigned long long)seq, (unsigned long long)bs,
           (unsigned long long)delay_ms);
    for (;;) {
        int disk = seq % NDISKS;
        uint64_t offset = block_of(seq, nblocks[disk]) * bs;
        struct timespec ts = {
            .tv_sec = delay_ms / 1000,
            .tv_nsec = (delay_ms % 1000) * 1000000,
        };

        for (uint64_t i = 0; i < bs; i += 8) {
            memcpy(buf + i, &seq, 8);
        }
        memcpy(buf, MAGIC, 4);
        memcpy(buf + 4, &disk, 4);
        memcpy(buf + 8, &seq, 8);
        memcpy(buf + 16, &offset, 8);
        /* a record that failed is written again: the tests see the line */
        if (pwrite(fds[disk], buf, bs, offset) != (ssize_t)bs) {
            printf("s3w: record %llu to %s failed: %s\n",
                   (unsigned long long)seq, disks[disk], strerror(errno));
            sleep(1);
            continue;
        }
        if (seq % 500 == 0) {
            printf("s3w: record %llu\n", (unsigned long long)seq);
        }
        seq++;
        nanosleep(&ts, NULL);
    }
}
