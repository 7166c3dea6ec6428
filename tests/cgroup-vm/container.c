/* A minimal "container runtime" for the VM check: argv[1..] runs as PID 1 of
 * a new PID namespace, alone in the cgroup /container, at the root of its own
 * cgroup namespace with cgroup2 mounted fresh on /sys/fs/cgroup: what Docker
 * gives an image's entrypoint on a cgroup v2 host. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    if (unshare(CLONE_NEWPID)) { perror("unshare pid"); return 1; }
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 1; }
    if (p > 0) { int st; waitpid(p, &st, 0); return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }
    int fd = open("/sys/fs/cgroup/container/cgroup.procs", O_WRONLY);
    if (fd < 0 || write(fd, "0", 1) != 1) { perror("join /container"); _exit(1); }
    close(fd);
    if (unshare(CLONE_NEWCGROUP | CLONE_NEWNS)) { perror("unshare cgroup+mnt"); _exit(1); }
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    umount2("/sys/fs/cgroup", MNT_DETACH);
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL)) { perror("mount cgroup2"); _exit(1); }
    umount2("/proc", MNT_DETACH);
    if (mount("proc", "/proc", "proc", 0, NULL)) { perror("mount proc"); _exit(1); }
    execv(argv[1], argv + 1);
    perror("exec");
    _exit(127);
}
