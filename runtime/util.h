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

/* The version both binaries print (--version) and kilnc writes into every manifest. */
#define KILN_VERSION "0.1.0"

typedef struct kerr {
    int n;              /* messages added */
    size_t len;         /* bytes used in buf */
    int truncated;      /* buf was full; later messages were counted, not kept */
    char buf[KERR_CAP]; /* messages, one per line */
} kerr;

void kerr_clear(kerr *e);
/* Appends one message (a trailing newline is added). Always returns -1, so
 * `return kerr_add(err, ...)` reads as "fail with this message". A message is never lost to an
 * empty line: one longer than the room left keeps its start and ends in a visible
 * "... (message cut: N more bytes)"; only when the buffer is already nearly full are later
 * messages counted instead of kept (with a "more errors" line). */
int kerr_add(kerr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The messages, newline separated, without the final newline. "" when none was added; never ""
 * once one was (a message that could not be formatted reads as a placeholder). */
const char *kerr_msg(kerr *e);

/* For the command lines' main()s only (library code never prints). One style for both binaries:
 * "PREFIX: error: MSG" per message (PREFIX is "kiln run", "kilnc compile", ...), continuation
 * lines as they are. A failure that left no message still prints a line saying so. */
void kerr_print(const char *prefix, kerr *e);
/* A usage error: "PREFIX: error: MSG", then "run 'PREFIX --help' for usage". Returns 2, the
 * exit status of a usage error. */
int util_usage_error(const char *prefix, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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

/* The memory folder: files a process holds in memory, seen at DIR/NAME by util_read_file,
 * util_is_file, util_is_dir and st_open before the file system. The standalone executable
 * (standalone.h) puts its embedded model there, so every loader reads it through the code that
 * reads a folder. A file with `real` set is read from that path instead (weights kept beside the
 * executable). One memory folder per process, set once at start; the strings and bytes must
 * outlive every reader. */
typedef struct util_memfile {
    const char *name;     /* relative to the folder: "model.kiln", "shards/rank0-of-1.safetensors" */
    const void *data;     /* the bytes, or NULL with real set */
    size_t len;
    const char *real;     /* a file-system path to read instead, or NULL */
} util_memfile;
void util_memdir_set(const char *dir, const util_memfile *files, int n);
/* The memory file at PATH (exactly DIR "/" NAME), or NULL. */
const util_memfile *util_memdir_find(const char *path);
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

/* Strict numbers from the command line (or the environment). `what` names the option in the
 * message ("--top-k"). The whole text must be the number: junk ("abc", "12x", " 1", ""), an
 * overflow (4294967297 for an int), NaN and Inf are refused, as is a value outside [min, max];
 * the message names the option, the text and the allowed range, e.g.
 *   --top-k: 'abc' is not an integer (expected 0 to 2147483647)
 * Return 0, or -1 with the message in err (*out untouched). Integers are decimal, with an
 * optional '-'; floats are decimal (e.g. 0.7, 1e-3), finite. */
int util_parse_i64(const char *what, const char *text, int64_t min, int64_t max, int64_t *out,
                   kerr *err);
int util_parse_u64(const char *what, const char *text, uint64_t max, uint64_t *out, kerr *err);
/* An environment switch `name` of 0 or 1: *on = dflt when it is unset. Any other value is
 * refused with a message naming the variable, its value and what 0 (`what0`) and 1 (`what1`)
 * mean, e.g. "KILN_PDL=yes: expected 0 (...) or 1 (...)". Return 0, or -1 (*on untouched). */
int util_env_switch(const char *name, int dflt, const char *what0, const char *what1, int *on,
                    kerr *err);
#define UTIL_ABOVE_MIN 1u /* util_parse_f64 flag: min itself is refused, (min, max] */
int util_parse_f64(const char *what, const char *text, double min, double max, unsigned flags,
                   double *out, kerr *err);

/* "1,2,3" (decimal integers in [0, max], comma separated: no signs, spaces, empty items or
 * trailing comma) into a malloc'd array. Returns the count (>= 1), or -1 with a message naming
 * `what`, the item and its position (an empty list is an error too). */
int util_parse_ids(const char *what, const char *s, int64_t max, int64_t **out, kerr *err);

/* Human-readable count: 1.23M, 8.03B. Writes into buf. */
const char *util_human_count(double n, char *buf, size_t cap);
/* Online CPUs, at least 1 and at most max (thread pools size themselves by it). */
int util_cpus(int max);
/* UTIL_PAR_MAX contiguous chunks of [0, n) (fewer when n is small), one per thread (the
 * caller's among them), at most one per CPU: fn(ctx, chunk, lo, hi) for each, then returns. */
#define UTIL_PAR_MAX 32
void util_parallel_for(int64_t n, void (*fn)(void *ctx, int chunk, int64_t lo, int64_t hi),
                       void *ctx);
/* On a function whose loops the compiler vectorises: a clone for AVX2 as well, picked at load
 * time where the CPU has it (GCC on x86-64, builds without sanitizers: the ones that ship). The
 * clones compute the same IEEE operations lane by lane (no contraction into FMA in ISO C mode),
 * so they give the same results to the bit. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                          \
    !defined(__SANITIZE_ADDRESS__)
#define UTIL_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define UTIL_AVX2_CLONE
#endif
/* A folder's base name, without trailing slashes ("models/llama/" -> "llama"); malloc'd. */
char *util_base_name(const char *path);
const char *util_human_bytes(double n, char *buf, size_t cap);
/* One progress line on stderr, drawn over the last ("\r"): "kilnc: WHAT  PCT% [====      ] DONE /
 * TOTAL  T s" (bytes, human-readable; T the seconds since the work began), a newline once done ==
 * total. Whether to draw it at all (a terminal) is the caller's. */
void util_progress_line(const char *what, uint64_t done, uint64_t total, double seconds);

/* Monotonic seconds. */
double util_now(void);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
