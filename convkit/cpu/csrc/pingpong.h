/* A cache line's round trip between the two threads of an OpenMP team (convkit bench's
 * placement reading): thread 0 writes odd values, thread 1 answers with the next even one.
 * 50-100 ns where the host runs the two vCPUs on cores sharing an L3, ~200-400 ns where it has
 * put them apart -- then kernels whose threads hand data to each other run slower (bench/RESULTS.md,
 * eleventh session).  Both threads give up after CK_PP_BUDGET seconds (a team sharing one CPU
 * would otherwise wait a time slice per round trip). */
#ifndef CK_PINGPONG_H
#define CK_PINGPONG_H

#if defined(__GNUC__) || defined(__clang__)
#include <time.h>

#define CK_PP_BUDGET 0.05

static inline double ck_pp_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* called by both threads (tid 0 and 1) with the same flag / abort words (zeroed); thread 0
 * returns the ns of one round trip, or -1 when the budget ran out; thread 1 returns 0 */
static double ck_pp_run(long *flag, int *abort_, int tid, long reps)
{
    if (tid == 0) {
        double t0 = ck_pp_now();
        for (long i = 0; i < reps; i++) {
            __atomic_store_n(flag, 2 * i + 1, __ATOMIC_RELEASE);
            long spins = 0;
            while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != 2 * i + 2)
                if ((++spins & 4095) == 0 && ck_pp_now() - t0 > CK_PP_BUDGET) {
                    __atomic_store_n(abort_, 1, __ATOMIC_RELEASE);
                    return -1.0;
                }
        }
        return (ck_pp_now() - t0) / reps * 1e9;
    }
    for (long i = 0; i < reps; i++) {
        while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != 2 * i + 1)
            if (__atomic_load_n(abort_, __ATOMIC_ACQUIRE))
                return 0.0;
        __atomic_store_n(flag, 2 * i + 2, __ATOMIC_RELEASE);
    }
    return 0.0;
}
#else  /* no GCC atomics / clock_gettime: no reading (pair_round_trip_ns says None) */
static double ck_pp_run(long *flag, int *abort_, int tid, long reps)
{
    (void)flag; (void)abort_; (void)reps;
    return tid == 0 ? -1.0 : 0.0;
}
#endif
#endif
