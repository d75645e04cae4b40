/* How much of the wall clock each vCPU loses to something outside this guest: one thread per
 * CPU, pinned, reads CLOCK_MONOTONIC in a tight loop for SECONDS and sums every step longer than
 * 50 us (a step that long means the thread did not run: the host took the vCPU, or the guest
 * ran something else on it).  Prints one line per CPU.  Used by bench/host_phases.py.
 *
 *     gcc -O2 -o /tmp/host_gaps bench/host_gaps.c -lpthread && /tmp/host_gaps 0.5
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double seconds;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *watch(void *arg)
{
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    double t0 = now(), prev = t0, lost = 0, worst = 0;
    long n = 0;
    for (;;) {
        double t = now(), g = t - prev;
        prev = t;
        if (g > 50e-6) {
            lost += g;
            n++;
            if (g > worst)
                worst = g;
        }
        if (t - t0 > seconds)
            break;
    }
    printf("cpu%ld lost %.1f %% in %ld gaps, longest %.2f ms\n", cpu, 100 * lost / (prev - t0), n,
           worst * 1e3);
    return NULL;
}

int main(int argc, char **argv)
{
    seconds = argc > 1 ? atof(argv[1]) : 1.0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_t *t = malloc(ncpu * sizeof *t);
    for (long i = 0; i < ncpu; i++)
        pthread_create(&t[i], NULL, watch, (void *)i);
    for (long i = 0; i < ncpu; i++)
        pthread_join(t[i], NULL);
    free(t);
    return 0;
}
