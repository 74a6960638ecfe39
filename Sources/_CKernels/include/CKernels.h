// The C surface of swift-qlora: hot loops over float/uint8 buffers that need intrinsics
// or vector exp. Never allocates, never prints. Row-major buffers; sizes are int64_t.
#ifndef QLORA_CKERNELS_H
#define QLORA_CKERNELS_H
#include <stdint.h>
#include <stddef.h>

/// 1 when the CPU has AVX2+FMA+F16C (checked once at run time).
int qlora_cpu_has_avx2(void);

#endif
