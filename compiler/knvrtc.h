/* knvrtc — compiles generated CUDA C++ to cubin (one per SM) and PTX, with a compile cache.
 *
 * The cache key is hash(source, options, target, NVRTC version, and the contents of every file
 * in the include folders), so a rebuild with the same inputs is a file read; entries live in $KILN_CACHE, else $XDG_CACHE_HOME/kiln, else
 * ~/.cache/kiln (set KILN_CACHE=off to disable). A compile error returns the full NVRTC log,
 * which names the kernel and the line in the generated source.
 *
 * Headers (templates/, kernels/) are found through include folders; CUDA's own headers
 * (cuda_bf16.h ...) through the toolkit's include folder.
 */
#ifndef KILN_NVRTC_H
#define KILN_NVRTC_H

#include <stddef.h>

#include "util.h"

typedef struct nvrtc_result {
    unsigned char *code; /* cubin, or PTX text (NUL-terminated) */
    size_t len;
    int cached;          /* came from the cache */
    double seconds;      /* compile time (0 when cached) */
} nvrtc_result;

/* target: "sm_90a", "sm_80" for cubin; "compute_80" for PTX. name: the file name NVRTC
 * reports in errors. include_dirs: NULL-terminated. */
int nvrtc_compile(const char *src, const char *name, const char *target,
                  const char *const *include_dirs, nvrtc_result *out, kerr *err);
void nvrtc_result_free(nvrtc_result *r);

/* "13.0" */
const char *nvrtc_version_str(void);
/* The CUDA toolkit include folder (CUDA_HOME/include or /usr/local/cuda/include). */
const char *nvrtc_cuda_include(void);

#endif
