/* util — error buffers and small helpers shared by the compiler and the runtime.
 *
 * Errors: every fallible function takes a `kerr *` last, appends one line per problem with
 * kerr_add() and returns -1 (or NULL). Callers print kerr_msg() at the boundary (main.c);
 * library code never prints and never exits. A kerr can hold several messages so that
 * passes such as bind_weights report every problem they find in one run, not the first.
 */
#ifndef KILN_UTIL_H
#define KILN_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define KERR_CAP 16384

typedef struct kerr {
    int n;              /* messages added */
    size_t len;         /* bytes used in buf */
    int truncated;      /* buf was full; later messages were counted, not kept */
    char buf[KERR_CAP]; /* messages, one per line */
} kerr;

void kerr_clear(kerr *e);
/* Appends one message (a trailing newline is added). Always returns -1, so
 * `return kerr_add(err, ...)` reads as "fail with this message". */
int kerr_add(kerr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The messages, newline separated, without the final newline. "" when none. */
const char *kerr_msg(kerr *e);

/* Allocation that cannot fail: an out-of-memory here aborts with file:line. Used for
 * small bookkeeping only; large buffers (weights, activations) are checked by callers. */
#define xmalloc(n) util_xmalloc((n), __FILE__, __LINE__)
#define xcalloc(n, m) util_xcalloc((n), (m), __FILE__, __LINE__)
#define xrealloc(p, n) util_xrealloc((p), (n), __FILE__, __LINE__)
#define xstrdup(s) util_xstrdup((s), __FILE__, __LINE__)
void *util_xmalloc(size_t n, const char *file, int line);
void *util_xcalloc(size_t n, size_t m, const char *file, int line);
void *util_xrealloc(void *p, size_t n, const char *file, int line);
char *util_xstrdup(const char *s, const char *file, int line);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Whole file into a NUL-terminated heap buffer. */
char *util_read_file(const char *path, size_t *len, kerr *err);
int util_write_file(const char *path, const void *data, size_t len, kerr *err);
int util_is_dir(const char *path);
int util_is_file(const char *path);
/* "dir" + "/" + "name", heap-allocated. */
char *util_path_join(const char *dir, const char *name);
/* mkdir -p */
int util_mkdirs(const char *path, kerr *err);

/* Overflow-checked size arithmetic: return 0 on overflow. */
int util_mul_ok(uint64_t a, uint64_t b, uint64_t *out);
int util_add_ok(uint64_t a, uint64_t b, uint64_t *out);

/* FNV-1a 64-bit, for cache keys and layout fingerprints (not for security). */
uint64_t util_fnv1a(const void *data, size_t len, uint64_t seed);
#define UTIL_FNV_SEED 0xcbf29ce484222325ull

/* bf16/fp16 <-> fp32 conversion (round to nearest even). */
float util_bf16_to_f32(uint16_t h);
uint16_t util_f32_to_bf16(float f);
float util_f16_to_f32(uint16_t h);
uint16_t util_f32_to_f16(float f);

/* "1,2,3" (non-negative integers, comma separated) into a malloc'd array. Returns the count
 * (0 for ""), or -1 when the text is not such a list. */
int util_parse_ids(const char *s, int64_t **out);

/* Human-readable count: 1.23M, 8.03B. Writes into buf. */
const char *util_human_count(double n, char *buf, size_t cap);
const char *util_human_bytes(double n, char *buf, size_t cap);

/* Monotonic seconds. */
double util_now(void);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
