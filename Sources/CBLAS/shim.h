// OpenBLAS's CBLAS interface (Debian: libopenblas-dev). macOS uses Accelerate instead.
#include <cblas.h>
