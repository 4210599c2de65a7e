/*
 * writer.c: the init of the tests' tiny Linux guest.  It loads the virtio
 * modules, then writes records to /dev/vda and /dev/vdb forever, one at
 * a time, each durable before the next (O_DIRECT | O_DSYNC).  Record SEQ
 * goes to a block that SEQ alone decides, and holds SEQ, so that a test
 * can tell from any image of the disks the last record in it and replay
 * every record up to it (tests/orchestrator/guest.py does): an image of
 * both disks at one instant is exactly that replay.
 *
 * The ACPI power button (virsh shutdown) powers it off cleanly after the
 * record in flight.  When the domain has a guest agent channel, QEMU's
 * own qemu-ga (/bin/qemu-ga) answers on it, logging each command to the
 * console.
 *
 * Kernel command line: s3w.start=N (the first SEQ), s3w.delay=MS (a pause
 * between records), s3w.bs=BYTES (a record's size).
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/input.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "S3CW"
#define NDISKS 2
#define MAX_INPUTS 16

static const char *const modules[] = {
    "virtio", "virtio_ring", "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "evdev", "button",
    "virtio_console",
};

/* /dev/input/eventN, opened once each; the power button is among them */
static int inputs[MAX_INPUTS] = { -1, -1, -1, -1, -1, -1, -1, -1,
                                  -1, -1, -1, -1, -1, -1, -1, -1 };
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

/* Input devices show up as their drivers bind: looked for again and again */
static void open_inputs(void)
{
    DIR *dir = opendir("/dev/input");
    struct dirent *e;

    while (dir && (e = readdir(dir))) {
        unsigned n;
        char path[64];

        if (sscanf(e->d_name, "event%u", &n) != 1 || n >= MAX_INPUTS ||
            inputs[n] >= 0) {
            continue;
        }
        snprintf(path, sizeof(path), "/dev/input/event%u", n);
        inputs[n] = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    }
    if (dir) {
        closedir(dir);
    }
}

static int power_pressed(void)
{
    struct input_event ev;

    for (int i = 0; i < MAX_INPUTS; i++) {
        while (inputs[i] >= 0 && read(inputs[i], &ev, sizeof(ev)) ==
               (ssize_t)sizeof(ev)) {
            if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) {
                return 1;
            }
        }
    }
    return 0;
}

/* /dev/vportNpM of the guest agent's channel, or 0 without one */
static int agent_port(char *dev, size_t size)
{
    DIR *dir = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int found = 0;

    while (dir && !found && (e = readdir(dir))) {
        char path[300], name[64] = "";
        FILE *f;

        snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name",
                 e->d_name);
        f = fopen(path, "r");
        if (!f) {
            continue;
        }
        if (fgets(name, sizeof(name), f) &&
            !strncmp(name, "org.qemu.guest_agent.0", 22)) {
            snprintf(dev, size, "/dev/%s", e->d_name);
            found = 1;
        }
        fclose(f);
    }
    if (dir) {
        closedir(dir);
    }
    return found;
}

/* qemu-ga on the agent's channel, if the domain has one, in the background */
static void start_agent(void)
{
    char dev[300];
    pid_t pid;

    for (int tries = 0; !agent_port(dev, sizeof(dev)); tries++) {
        if (tries == 20) {
            return;
        }
        usleep(100000);
    }
    pid = fork();
    if (pid == 0) {
        execl("/bin/qemu-ga", "qemu-ga", "-m", "virtio-serial", "-p", dev,
              "-t", "/run", "-v", (char *)NULL);
        printf("s3w: qemu-ga: %s\n", strerror(errno));
        _exit(1);
    }
    printf("s3w: guest agent on %s\n", dev);
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
    mkdir("/sys", 0755);
    mkdir("/run", 0755);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
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
    start_agent();
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
        if (seq % 50 == 0) {
            open_inputs();
            /* the agent's exit, if it comes, is reaped */
            waitpid(-1, NULL, WNOHANG);
        }
        if (power_pressed()) {
            printf("s3w: power button after record %llu: powering off\n",
                   (unsigned long long)seq);
            sync();
            reboot(RB_POWER_OFF);
        }
        seq++;
        nanosleep(&ts, NULL);
    }
}
