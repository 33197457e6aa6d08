/* finite — finds NaN and Inf in checkpoint tensors, for bind_weights.
 *
 * A checkpoint with a NaN or an Inf in a weight loads, compiles and runs, and then every
 * output that touches it is garbage; so kilnc check, compile and ref refuse it, naming the
 * tensor and the first bad element (--allow-nonfinite turns that into a warning).
 *
 * The scan reads every element of the tensors the graph uses, straight from the read-only
 * mapping: for an 8B model, 16 GB. It is split into chunks of CHUNK elements handed to one
 * thread per core through an atomic counter, and each element is tested on its bits (exponent
 * all ones), eight bytes at a time in a branch-free loop over a block; only a block with a hit
 * is searched for the exact index. Each tensor keeps
 * the lowest bad index any chunk found (an atomic minimum), and chunks past it are skipped.
 * Integer dtypes hold no NaN and are not read.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "passes.h"

#define CHUNK ((uint64_t)1 << 22) /* elements per job */
#define BLOCK 4096                /* elements ORed together before looking closer */
#define MAX_THREADS 64

/* Whether the element with these bits (of dtype dt, widened) is NaN or Inf. */
static int bad_bits(st_dtype dt, uint64_t b)
{
    switch (dt) {
    case ST_F64: return (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    case ST_F32: return (b & 0x7f800000u) == 0x7f800000u;
    case ST_F16: return (b & 0x7c00u) == 0x7c00u;
    case ST_BF16: return (b & 0x7f80u) == 0x7f80u;
    case ST_F8_E5M2: return (b & 0x7cu) == 0x7cu;
    case ST_F8_E4M3: return (b & 0x7fu) == 0x7fu; /* e4m3fn: no Inf, NaN is S.1111.111 */
    default: return 0;
    }
}

static uint64_t load_bits(st_dtype dt, const unsigned char *p)
{
    switch (st_dtype_size(dt)) {
    case 8: {
        uint64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    case 4: {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    case 2: {
        uint16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    default: return *p;
    }
}

static int has_nonfinite(st_dtype dt)
{
    return dt == ST_F64 || dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F8_E5M2 ||
           dt == ST_F8_E4M3;
}

/* Whether any of the n elements at p is bad. Eight bytes at a time (SWAR): with each lane
 * reduced to t = (x & exp) ^ exp, a lane is bad when t is zero, and
 * (t - ones) & ~t & high is nonzero exactly when some lane is zero. The loop has no branch,
 * so the compiler vectorises it further. */
static int block_has_bad(st_dtype dt, const unsigned char *p, size_t n)
{
    uint64_t exp, ones, high;
    switch (dt) {
    case ST_F32: exp = 0x7f8000007f800000ull, ones = 0x0000000100000001ull; break;
    case ST_F16: exp = 0x7c007c007c007c00ull, ones = 0x0001000100010001ull; break;
    case ST_BF16: exp = 0x7f807f807f807f80ull, ones = 0x0001000100010001ull; break;
    default: {
        unsigned bad = 0;
        for (size_t i = 0; i < n; i++)
            bad |= (unsigned)bad_bits(dt, load_bits(dt, p + st_dtype_size(dt) * i));
        return bad != 0;
    }
    }
    high = ones << (8 * (dt == ST_F32 ? 4 : 2) - 1);
    size_t bytes = n * st_dtype_size(dt), words = bytes / 8;
    uint64_t acc = 0;
    for (size_t i = 0; i < words; i++) {
        uint64_t w;
        memcpy(&w, p + 8 * i, 8);
        uint64_t t = (w & exp) ^ exp;
        acc |= (t - ones) & ~t & high;
    }
    unsigned bad = acc != 0;
    size_t es = st_dtype_size(dt);
    for (size_t i = words * 8 / es; i < n; i++) /* a tail shorter than a word */
        bad |= (unsigned)bad_bits(dt, load_bits(dt, p + es * i));
    return bad != 0;
}

typedef struct job {
    int tensor;
    uint64_t begin, end; /* elements */
} job;

typedef struct scan {
    const st_tensor *const *ts;
    uint64_t *first_bad; /* per tensor; UINT64_MAX when none */
    job *jobs;
    size_t njobs;
    size_t next; /* atomic */
} scan;

static void scan_job(scan *s, const job *j)
{
    const st_tensor *t = s->ts[j->tensor];
    size_t es = st_dtype_size(t->dtype);
    const unsigned char *base = t->data;
    for (uint64_t b = j->begin; b < j->end; b += BLOCK) {
        if (__atomic_load_n(&s->first_bad[j->tensor], __ATOMIC_RELAXED) < b)
            return; /* an earlier element of this tensor is already bad */
        size_t n = (size_t)(j->end - b < BLOCK ? j->end - b : BLOCK);
        if (!block_has_bad(t->dtype, base + b * es, n))
            continue;
        for (size_t i = 0; i < n; i++)
            if (bad_bits(t->dtype, load_bits(t->dtype, base + (b + i) * es))) {
                uint64_t idx = b + i, cur = __atomic_load_n(&s->first_bad[j->tensor],
                                                            __ATOMIC_RELAXED);
                while (idx < cur && !__atomic_compare_exchange_n(&s->first_bad[j->tensor], &cur,
                                                                 idx, 0, __ATOMIC_RELAXED,
                                                                 __ATOMIC_RELAXED))
                    ;
                return;
            }
    }
}

static void *worker(void *arg)
{
    scan *s = arg;
    for (;;) {
        size_t k = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED);
        if (k >= s->njobs)
            return NULL;
        scan_job(s, &s->jobs[k]);
    }
}

void finite_scan(const st_tensor *const *ts, int n, int nthreads, uint64_t *first_bad)
{
    scan s = {.ts = ts, .first_bad = first_bad};
    size_t cap = 0;
    for (int i = 0; i < n; i++) {
        first_bad[i] = UINT64_MAX;
        if (!has_nonfinite(ts[i]->dtype))
            continue;
        for (uint64_t b = 0; b < ts[i]->numel; b += CHUNK) {
            if (s.njobs == cap)
                s.jobs = xrealloc(s.jobs, sizeof(job) * (cap = cap ? cap * 2 : 256));
            s.jobs[s.njobs++] = (job){i, b, ts[i]->numel - b < CHUNK ? ts[i]->numel : b + CHUNK};
        }
    }
    if (nthreads < 1)
        nthreads = util_cpus(MAX_THREADS);
    if ((size_t)nthreads > s.njobs)
        nthreads = s.njobs ? (int)s.njobs : 1;
    pthread_t th[MAX_THREADS];
    int started = 0;
    for (int i = 1; i < nthreads && i < MAX_THREADS; i++)
        if (pthread_create(&th[started], NULL, worker, &s) == 0)
            started++;
    worker(&s); /* this thread works too, and alone when no thread could start */
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(s.jobs);
}

const char *finite_kind(const st_tensor *t, uint64_t index)
{
    size_t es = st_dtype_size(t->dtype);
    uint64_t b = load_bits(t->dtype, (const unsigned char *)t->data + index * es);
    uint64_t sign = (uint64_t)1 << (8 * es - 1);
    switch (t->dtype) {
    case ST_F64: return (b & 0x000fffffffffffffull) ? "NaN" : b & sign ? "-Inf" : "Inf";
    case ST_F32: return (b & 0x007fffffu) ? "NaN" : b & sign ? "-Inf" : "Inf";
    case ST_F16: return (b & 0x03ffu) ? "NaN" : b & sign ? "-Inf" : "Inf";
    case ST_BF16: return (b & 0x007fu) ? "NaN" : b & sign ? "-Inf" : "Inf";
    case ST_F8_E5M2: return (b & 0x03u) ? "NaN" : b & sign ? "-Inf" : "Inf";
    default: return "NaN";
    }
}
