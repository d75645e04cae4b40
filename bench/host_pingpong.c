/* The round trip of one cache line between the two CPUs of this guest (ns), as two threads
 * pinned to CPU 0 and CPU 1 hand a counter back and forth 20000 times: ~50 ns when the host runs
 * both vCPUs on cores that share an L3, more when it has put them apart.  Prints the median of
 * ROUNDS rounds.  Used by bench/host_phases.py.
 *
 *     gcc -O2 -o /tmp/host_pingpong bench/host_pingpong.c -lpthread && /tmp/host_pingpong 5
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic long flag __attribute__((aligned(64)));
static _Atomic int stop;

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *pong(void *arg)
{
    (void)arg;
    pin(1);
    for (long v = 1; !atomic_load(&stop); v += 2) {
        while (atomic_load(&flag) != v)
            if (atomic_load(&stop))
                return NULL;
        atomic_store(&flag, v + 1);
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5, reps = 20000;
    double *ns = malloc(rounds * sizeof *ns);
    pthread_t t;
    pin(0);
    pthread_create(&t, NULL, pong, NULL);
    long v = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (int i = 0; i < reps; i++, v += 2) {
            atomic_store(&flag, v + 1);
            while (atomic_load(&flag) != v + 2)
                ;
        }
        ns[r] = (now() - t0) / reps * 1e9;
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    qsort(ns, rounds, sizeof *ns, cmp);
    printf("round trip %.0f ns\n", ns[rounds / 2]);
    free(ns);
    return 0;
}
