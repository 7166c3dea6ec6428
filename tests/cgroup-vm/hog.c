#include <stdlib.h>
#include <stdio.h>
#include <unistd.h>
/* Touches every page of 256 MB through a volatile pointer, so the compiler
 * cannot drop the stores (a plain memset of never-read memory may go). */
int main(void) {
    size_t n = 256u << 20;
    volatile char *p = malloc(n);
    if (!p) return 2;
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i += 4096) p[i] = (char)i;
    for (size_t i = 0; i < n; i += 4096) sum += (unsigned char)p[i];
    printf("allocated %lu\n", sum);
    fflush(stdout);
    sleep(600);
    return 0;
}
