/* The echo client of bench.py: CONNECTIONS threads, each with one blocking
 * TCP socket doing request/response round trips of SIZE bytes for SECONDS,
 * every echoed byte compared with what was sent. Compiled C, so that the
 * client (not held by a GIL) is never what limits the server's loop.
 *
 *   cc -O2 -pthread -o bench_client bench_client.c
 *   ./bench_client PORT SIZE SECONDS CONNECTIONS
 *
 * Prints "<round trips> <elapsed seconds>" on success; on a wrong echo or
 * a socket error prints "FAIL <reason>" and exits 1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static size_t size;
static double deadline;
static unsigned char *payload;
static atomic_long total;
static atomic_int failed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what) {
    if (atomic_exchange(&failed, 1) == 0)
        printf("FAIL %s: %s\n", what, errno ? strerror(errno) : "");
}

static void *one(void *arg) {
    (void)arg;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        fail("connect");
        return NULL;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned char *buf = malloc(size);
    long count = 0;
    while (!atomic_load(&failed) && now() < deadline) {
        size_t sent = 0;
        while (sent < size) {
            ssize_t n = send(s, payload + sent, size - sent, 0);
            if (n <= 0) {
                fail("send");
                goto out;
            }
            sent += n;
        }
        size_t got = 0;
        while (got < size) {
            ssize_t n = recv(s, buf + got, size - got, 0);
            if (n <= 0) {
                errno = n == 0 ? 0 : errno;
                fail(n == 0 ? "server closed" : "recv");
                goto out;
            }
            got += n;
        }
        if (memcmp(buf, payload, size) != 0) {
            errno = 0;
            fail("echo mismatch");
            goto out;
        }
        count++;
    }
out:
    atomic_fetch_add(&total, count);
    free(buf);
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT SIZE SECONDS CONNECTIONS\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    size = strtoul(argv[2], NULL, 10);
    double seconds = atof(argv[3]);
    int connections = atoi(argv[4]);
    payload = malloc(size);
    srand(getpid());
    for (size_t i = 0; i < size; i++)
        payload[i] = rand();
    pthread_t *threads = calloc(connections, sizeof *threads);
    double t0 = now();
    deadline = t0 + seconds;
    for (int i = 0; i < connections; i++)
        pthread_create(&threads[i], NULL, one, NULL);
    for (int i = 0; i < connections; i++)
        pthread_join(threads[i], NULL);
    if (atomic_load(&failed))
        return 1;
    printf("%ld %f\n", atomic_load(&total), now() - t0);
    return 0;
}
