/* A program that logs: writes LINES lines of 128 bytes, "<12-digit seq>
 * xxx...\n", then "MARKER lines=LINES\n", to stdout in CHUNK-byte writes,
 * formatting each line as it goes. CHUNK 4096 is what C's stdio (and so
 * Python, Node, most apps) writes at a time to a pipe or an ext4 file.
 * log-throughput.sh runs it as the second producer: unlike `cat` of a
 * cached file (which copies file to file in the kernel), it costs the same
 * write(2) whether its stdout is a file or a supervisor's pipe.
 *
 *   line-writer LINES CHUNK MARKER
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { WIDTH = 128 };

static int write_all(const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(1, buf, len);
        if (w < 0) return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s LINES CHUNK MARKER\n", argv[0]);
        return 2;
    }
    long lines = atol(argv[1]);
    size_t chunk = (size_t)atol(argv[2]);
    size_t per = chunk / WIDTH;
    if (lines < 0 || per == 0) {
        fprintf(stderr, "LINES >= 0 and CHUNK >= %d\n", WIDTH);
        return 2;
    }
    char *buf = malloc(per * WIDTH);
    if (!buf) return 1;
    for (size_t i = 0; i < per; i++) {
        memset(buf + i * WIDTH, 'x', WIDTH);
        buf[i * WIDTH + 12] = ' ';
        buf[i * WIDTH + WIDTH - 1] = '\n';
    }
    for (long seq = 0; seq < lines;) {
        size_t k = 0;
        for (; k < per && seq < lines; k++, seq++) {
            char *p = buf + k * WIDTH;
            long x = seq;
            for (int d = 11; d >= 0; d--) {
                p[d] = (char)('0' + x % 10);
                x /= 10;
            }
        }
        if (write_all(buf, k * WIDTH) < 0) {
            perror("write");
            return 1;
        }
    }
    char last[256];
    int n = snprintf(last, sizeof last, "%s lines=%ld\n", argv[3], lines);
    if (n < 0 || (size_t)n >= sizeof last || write_all(last, (size_t)n) < 0) return 1;
    return 0;
}
