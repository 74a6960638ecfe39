// Persistent spin-then-sleep worker pool. See pool.h.
//
// One loop at a time (a try-lock, `busy`). A loop is published as a generation number: the caller
// writes body/context, sets `ticket` to (generation:24 | count:20 | next index:20) and then bumps
// `gen`. Every thread (caller included) claims iterations by a compare-and-swap on `ticket`, which
// only succeeds while the ticket carries the generation the thread saw and its index is below the
// count stored in the same word. A successful claim means that loop is unfinished, so no later loop
// has been published yet, so the body/context the thread read after seeing the generation are that
// loop's: a worker that wakes late can never run a later loop's index with an earlier loop's body,
// or the reverse. The caller returns once `done` reaches the count.
#include "pool.h"
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_PAUSE() _mm_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif

#define POOL_MAX_WORKERS 63

static struct {
    _Atomic int busy;
    _Atomic uint64_t gen;                 // generation of the current loop (0 = none yet)
    _Atomic uint64_t ticket;              // generation << 40 | count << 20 | next index
    _Atomic int64_t done;                 // iterations finished in the current loop
    _Atomic(qlora_pool_body) body;
    _Atomic(void *) context;
    _Atomic int active_limit;             // workers with id < active_limit take part
    _Atomic int64_t spin_ns;
    _Atomic int sleepers;
    int started;                          // workers started (guarded by busy)
    pthread_mutex_t mutex;
    pthread_cond_t wake;
} P = {.spin_ns = 200000, .mutex = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void qlora_pool_set_spin_us(int64_t microseconds) {
    atomic_store(&P.spin_ns, microseconds < 0 ? 0 : microseconds * 1000);
}

#define TICKET_BITS 20
#define TICKET_MASK ((1u << TICKET_BITS) - 1)
#define GEN_MASK 0xFFFFFFu

// Set on a thread while it runs a loop's iterations (the caller's and the workers'): a loop
// started from inside a body is nested.
static _Thread_local int inside_loop;

int qlora_pool_inside(void) { return inside_loop; }

// Claims and runs iterations of generation g until none are left; returns how many it ran.
static int64_t run_iterations(uint64_t g, qlora_pool_body body, void *context) {
    int64_t ran = 0;
    inside_loop = 1;
    uint64_t t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    for (;;) {
        const uint64_t index = t & TICKET_MASK, count = (t >> TICKET_BITS) & TICKET_MASK;
        if ((t >> (2 * TICKET_BITS)) != (g & GEN_MASK) || index >= count) break;
        if (!atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        body(context, (int64_t)index);
        ran++;
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    }
    inside_loop = 0;
    return ran;
}

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint64_t seen = atomic_load_explicit(&P.gen, memory_order_acquire);
    for (;;) {
        uint64_t g = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (g == seen) {
            const int64_t limit = atomic_load_explicit(&P.spin_ns, memory_order_relaxed);
            const int64_t start = limit > 0 ? now_ns() : 0;
            // Busy-wait with pause for the first 20 µs (the gap between a decoded token's loops), then
            // keep polling but yield the core to any other runnable thread (OpenBLAS's, another
            // process's) until the spin time is up.
            for (int k = 1; limit > 0; k++) {
                POOL_PAUSE();
                g = atomic_load_explicit(&P.gen, memory_order_acquire);
                if (g != seen) break;
                if ((k & 255) == 0) {
                    const int64_t spent = now_ns() - start;
                    if (spent > limit) break;
                    if (spent > 20000) sched_yield();
                }
            }
        }
        if (g == seen) {
            pthread_mutex_lock(&P.mutex);
            atomic_fetch_add(&P.sleepers, 1);
            while ((g = atomic_load(&P.gen)) == seen) pthread_cond_wait(&P.wake, &P.mutex);
            atomic_fetch_sub(&P.sleepers, 1);
            pthread_mutex_unlock(&P.mutex);
        }
        seen = g;
        if (id >= atomic_load_explicit(&P.active_limit, memory_order_relaxed)) continue;
        qlora_pool_body body = atomic_load_explicit(&P.body, memory_order_relaxed);
        void *context = atomic_load_explicit(&P.context, memory_order_relaxed);
        run_iterations(g, body, context);
    }
    return 0;
}

int qlora_pool_run(int64_t iterations, int threads, qlora_pool_body body, void *context) {
    if (iterations <= 0) return 0;
    if (iterations > (int64_t)TICKET_MASK) return -1;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&P.busy, &expected, 1)) return -1;
    int want = threads - 1;
    if (want > POOL_MAX_WORKERS) want = POOL_MAX_WORKERS;
    if (want < 0) want = 0;
    while (P.started < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 20);
        int err = pthread_create(&th, &attr, worker, (void *)(intptr_t)P.started);
        pthread_attr_destroy(&attr);
        if (err != 0) break;
        P.started++;
    }
    if (want > P.started) want = P.started;
    if (want == 0 && threads > 1 && iterations > 1) {   // no workers could be started
        atomic_store(&P.busy, 0);
        return -1;
    }

    const uint64_t g = atomic_load_explicit(&P.gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&P.body, body, memory_order_relaxed);
    atomic_store_explicit(&P.context, context, memory_order_relaxed);
    atomic_store_explicit(&P.active_limit, want, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    atomic_store_explicit(&P.ticket, (g & GEN_MASK) << (2 * TICKET_BITS) | (uint64_t)iterations << TICKET_BITS,
                          memory_order_release);
    atomic_store_explicit(&P.gen, g, memory_order_release);
    if (want > 0 && atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.mutex);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.mutex);
    }
    run_iterations(g, body, context);
    for (int k = 1; atomic_load_explicit(&P.done, memory_order_acquire) < iterations; k++) {
        POOL_PAUSE();
        if ((k & 1023) == 0) sched_yield();   // a preempted worker: let it run
    }
    atomic_store_explicit(&P.busy, 0, memory_order_release);
    return 0;
}
