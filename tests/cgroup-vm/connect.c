/* connect ADDR PORT: the IPAddressAllow=/IPAddressDeny= probe of the VM
 * check. A TCP connect capped at 3 s (a dropped SYN is retransmitted, so
 * TCP times out), then a UDP datagram (a dropped one fails the send with
 * EPERM). Prints "tcp ADDR ok|timed out|<error>" and "udp ADDR ok|<error>". */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void on_alarm(int sig) { (void)sig; }
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: connect ADDR PORT\n"); return 2; }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: the alarm interrupts connect() */
    sigaction(SIGALRM, &sa, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    alarm(3);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    alarm(0);
    printf("tcp %s %s\n", argv[1], r == 0 ? "ok" : e == EINTR ? "timed out" : strerror(e));
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    r = (int)sendto(u, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
    printf("udp %s %s\n", argv[1], r == 1 ? "ok" : strerror(errno));
    return 0;
}
