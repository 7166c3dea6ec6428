/*
 * orphan-producer: makes orphans for the PID-1 reaping benchmark.
 *
 *   orphan-producer CHILDREN GRANDCHILDREN_PER_CHILD RESULT_FILE [hold]
 *
 * For each child: fork it; the child forks its grandchildren, which _exit(0)
 * at once, then the child _exit(0)s too. We reap the child ourselves, so the
 * only processes left for someone else are the grandchildren: orphans (or
 * zombies already) re-parented to PID 1 of the namespace.
 *
 * Timing: t0 before the first fork; "done" when the namespace's /proc lists
 * no more pids than it did before t0 (every orphan reaped). Counting /proc
 * entries is a readdir, cheap enough to poll while PID 1 reaps. A full scan
 * for Z-state entries confirms at the end. Then we write one line to
 * RESULT_FILE and pause() until SIGTERM, so the namespace (and its PID 1)
 * stays alive for the caller's own zombie check.
 *
 * With "hold", the grandchildren block reading a pipe instead of exiting, so
 * all of them are re-parented to PID 1 alive; then we close the pipe's write
 * end and they all exit at once. The clock then starts at that release: the
 * time measures PID 1 draining a burst of exits, not our forking speed.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Number of pids in /proc; with zombies = 1, only those in Z state. */
static long count_pids(int zombies) {
    DIR *d = opendir("/proc");
    if (!d) { perror("opendir /proc"); exit(2); }
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        if (!zombies) { n++; continue; }
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && rp[2] == 'Z') n++;
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 4 && !(argc == 5 && strcmp(argv[4], "hold") == 0)) {
        fprintf(stderr, "usage: %s CHILDREN GRANDCHILDREN_PER_CHILD RESULT_FILE [hold]\n", argv[0]);
        return 2;
    }
    long children = atol(argv[1]), per = atol(argv[2]);
    const char *result = argv[3];
    int hold = argc == 5;
    int gate[2] = {-1, -1};
    if (hold && pipe(gate) < 0) { perror("pipe"); return 2; }
    long baseline = count_pids(0);

    double t0 = now();
    long made = 0;
    for (long i = 0; i < children; i++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); usleep(1000); i--; continue; }
        if (c == 0) {
            for (long j = 0; j < per; j++) {
                pid_t g = fork();
                if (g == 0) {
                    if (hold) {
                        char b;
                        close(gate[1]);
                        while (read(gate[0], &b, 1) < 0 && errno == EINTR) {}
                    }
                    _exit(0);
                }
                if (g < 0) _exit(1);
            }
            _exit(0);
        }
        int st;
        while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) made += per;
    }
    double t_prod = now();
    if (hold) {
        /* All grandchildren are alive and PID 1's now: wait until they all
         * show in /proc, then release them together and restart the clock. */
        while (count_pids(0) - baseline < made) usleep(1000);
        t0 = now();
        close(gate[1]);
        t_prod = t0;
    }

    /* Wait until PID 1 has reaped them all (60 s at most). */
    long left = 0;
    struct timespec nap = {0, 100 * 1000};
    for (;;) {
        left = count_pids(0) - baseline;
        if (left <= 0 || now() - t0 > 60) break;
        nanosleep(&nap, NULL);
    }
    double t1 = now();
    long zombies = count_pids(1);

    FILE *f = fopen(result, "w");
    if (!f) { perror(result); return 2; }
    fprintf(f, "orphans=%ld produce_s=%.6f total_s=%.6f left=%ld zombies=%ld\n",
            made, t_prod - t0, t1 - t0, left, zombies);
    fclose(f);
    pause(); /* until SIGTERM from PID 1 */
    return 0;
}
