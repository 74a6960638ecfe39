// A tiny persistent thread pool for short parallel loops (decode-sized GEMVs run in ~10–100 µs,
// where waking threads through the OS costs as much as the work). Workers spin briefly on an
// atomic generation counter after each loop, then sleep on a condition variable.
// Never prints; allocates only the worker threads, once.
#ifndef QLORA_POOL_H
#define QLORA_POOL_H
#include <stdint.h>

typedef void (*qlora_pool_body)(void *context, int64_t index);

/// Runs body(context, i) once for every 0 ≤ i < iterations on the calling thread and up to
/// `threads` − 1 pool workers (started on first use, at most 63), and returns when all are done.
/// Iterations are handed out one at a time, in increasing order. Returns 0 on success, or −1 without
/// running anything when iterations ≥ 2^20, when the pool is busy (another loop is running, e.g. a
/// call from inside a body or from another thread) or when its workers could not be started: the
/// caller must then run the loop another way.
int qlora_pool_run(int64_t iterations, int threads, qlora_pool_body body, void *context);

/// 1 on a thread that is running iterations of a loop (a call from inside a body), else 0.
int qlora_pool_inside(void);

/// How long idle workers spin before sleeping, in microseconds (default 200; 0 = sleep at once).
void qlora_pool_set_spin_us(int64_t microseconds);

#endif
