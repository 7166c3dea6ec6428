/* The service the start benchmark runs: says "I run" by appending one byte
 * to a file, then sleeps until killed. Tiny on purpose, so the time measured
 * is the supervisor's, not the service's.
 *
 *   ready-pause [FILE]   FILE (a path with a '/') defaults to ../started:
 *                        s6 and runit run a service's ./run in its own dir
 *                        (s6-supervise passes the service's name as argv[1]).
 */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 && strchr(argv[1], '/') ? argv[1] : "../started";
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return 1;
    if (write(fd, "x", 1) != 1) return 1;
    close(fd);
    for (;;) pause();
}
