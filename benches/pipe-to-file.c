/* The ceiling of any log capture that reads a pipe: stdin (a pipe) to a
 * file and nothing else. The pipe is grown to 1 MiB and read 1 MiB at a
 * time, each read written whole with O_APPEND: no line handling, no ring, no
 * rotation. log-throughput.sh runs it as `cat data | pipe-to-file out`, so
 * the table shows how close a supervisor can get to `cat > file` with a pipe
 * in the way (cat > file copies in the kernel with copy_file_range).
 *
 *   pipe-to-file OUT
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

enum { CHUNK = 1 << 20 };

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT < pipe\n", argv[0]);
        return 2;
    }
    int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (out < 0) {
        perror(argv[1]);
        return 1;
    }
    /* A refusal (stdin not a pipe, a budget spent) keeps the default size. */
    (void)fcntl(0, F_SETPIPE_SZ, CHUNK);
    char *buf = malloc(CHUNK);
    if (!buf) return 1;
    for (;;) {
        ssize_t n = read(0, buf, CHUNK);
        if (n == 0) break;
        if (n < 0) {
            perror("read");
            return 1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0) {
                perror("write");
                return 1;
            }
            off += w;
        }
    }
    return close(out) == 0 ? 0 : 1;
}
