/* util — see util.h. Nothing here knows about models; it is the floor everything stands on. */
#include "util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void kerr_clear(kerr *e)
{
    e->n = 0;
    e->len = 0;
    e->truncated = 0;
    e->buf[0] = 0;
}

/* Room a message may use: the "more errors" line always fits after it. */
static const char kerr_more[] = "\n... (more errors; fix the above first)\n";
#define KERR_LIMIT (KERR_CAP - sizeof kerr_more - 1)
/* A message is cut (start kept) rather than dropped while at least this much room is left. */
#define KERR_MIN_KEEP 256

int kerr_add(kerr *e, const char *fmt, ...)
{
    if (!e)
        return -1;
    e->n++;
    if (e->truncated)
        return -1;
    if (e->len && e->buf[e->len - 1] != '\n') /* kerr_msg() dropped it; the room is kept */
        e->buf[e->len++] = '\n';
    va_list ap;
    va_start(ap, fmt);
    char *heap = NULL;
    int w = vasprintf(&heap, fmt, ap);
    va_end(ap);
    /* trailing line breaks (a compiler log's last line) would print as empty messages */
    while (w > 0 && (heap[w - 1] == '\n' || heap[w - 1] == '\r' || heap[w - 1] == ' '))
        heap[--w] = 0;
    /* never an empty line: a message that cannot be formatted, or formats to nothing, says so */
    const char *msg = w < 0 ? "(an error message could not be formatted: out of memory)"
                      : !*heap ? "(an empty error message: a kiln bug, please report it)"
                               : heap;
    /* A message's own line breaks are indented by two spaces, so readers (and the CLIs'
     * error printers) can tell a continuation line from the next message. */
    size_t avail = KERR_LIMIT - e->len, need = 1;
    for (const char *p = msg; *p; p++)
        need += *p == '\n' && p[1] ? 3 : 1;
    if (need > avail && avail < KERR_MIN_KEEP) {
        memcpy(e->buf + e->len, kerr_more, sizeof kerr_more);
        e->len += sizeof kerr_more - 1;
        e->truncated = 1;
        free(heap);
        return -1;
    }
    /* a message that does not fit keeps its start and ends in a marker (room set aside) */
    char cut[64];
    size_t budget = need <= avail ? need - 1 : avail - 1 - sizeof cut, used = 0;
    const char *p = msg;
    for (; *p; p++) {
        size_t k = *p == '\n' && p[1] ? 3 : 1;
        if (used + k > budget)
            break;
        used += k;
        e->buf[e->len++] = *p;
        if (k == 3) {
            e->buf[e->len++] = ' ';
            e->buf[e->len++] = ' ';
        }
    }
    if (*p) {
        /* back off to a UTF-8 character boundary, then mark the cut */
        while (p > msg && ((unsigned char)*p & 0xc0) == 0x80 &&
               ((unsigned char)p[-1] & 0x80))
            e->len--, p--;
        snprintf(cut, sizeof cut, " ... (message cut: %zu more bytes)", strlen(p));
        size_t cl = strlen(cut);
        memcpy(e->buf + e->len, cut, cl);
        e->len += cl;
    }
    free(heap);
    e->buf[e->len++] = '\n';
    e->buf[e->len] = 0;
    return -1;
}

const char *kerr_msg(kerr *e)
{
    if (e->len == 0)
        return e->n ? "(an error without a message: a kiln bug, please report it)" : "";
    if (e->buf[e->len - 1] == '\n')
        e->buf[e->len - 1] = 0, e->len--;
    return e->buf;
}

void kerr_print(const char *prefix, kerr *e)
{
    const char *m = kerr_msg(e);
    if (!*m)
        m = "failed without saying why (a kiln bug: please report it with the command line)";
    for (const char *p = m; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (p[0] == ' ')
            fprintf(stderr, "%.*s\n", (int)n, p);
        else if (n) /* (kerr_add writes no empty line; a caller's buffer might) */
            fprintf(stderr, "%s: error: %.*s\n", prefix, (int)n, p);
        p = nl ? nl + 1 : p + n;
    }
}

int util_usage_error(const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", prefix);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nrun '%s --help' for usage\n", prefix);
    return 2;
}

static void oom(size_t n, const char *file, int line)
{
    fprintf(stderr, "kiln: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
    abort();
}

void *util_xmalloc(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n, file, line);
    return p;
}

void *util_xcalloc(size_t n, size_t m, const char *file, int line)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p)
        oom(n * m, file, line);
    return p;
}

void *util_xrealloc(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n, file, line);
    return q;
}

char *util_xstrdup(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = util_xmalloc(n, file, line);
    memcpy(p, s, n);
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static struct {
    const char *dir;
    const util_memfile *files;
    int n;
} memdir;

void util_memdir_set(const char *dir, const util_memfile *files, int n)
{
    memdir.dir = dir;
    memdir.files = files;
    memdir.n = n;
}

const util_memfile *util_memdir_find(const char *path)
{
    if (!memdir.dir)
        return NULL;
    size_t dl = strlen(memdir.dir);
    if (strncmp(path, memdir.dir, dl) != 0 || path[dl] != '/')
        return NULL;
    for (int i = 0; i < memdir.n; i++)
        if (strcmp(path + dl + 1, memdir.files[i].name) == 0)
            return &memdir.files[i];
    return NULL;
}

char *util_read_file(const char *path, size_t *len, kerr *err)
{
    const util_memfile *mf = util_memdir_find(path);
    if (mf && mf->data) {
        char *buf = xmalloc(mf->len + 1);
        memcpy(buf, mf->data, mf->len);
        buf[mf->len] = 0;
        if (len)
            *len = mf->len;
        return buf;
    }
    if (mf)
        path = mf->real;
    FILE *f = fopen(path, "rb");
    if (!f) {
        kerr_add(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap)
            buf = xrealloc(buf, cap *= 2);
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        kerr_add(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

int util_write_file(const char *path, const void *data, size_t len, kerr *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return kerr_add(err, "%s: cannot create: %s", path, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len)
        return kerr_add(err, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

int util_is_dir(const char *path)
{
    if (memdir.dir && strcmp(path, memdir.dir) == 0)
        return 1;
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int util_is_file(const char *path)
{
    const util_memfile *mf = util_memdir_find(path);
    if (mf && mf->data)
        return 1;
    struct stat st;
    return stat(mf ? mf->real : path, &st) == 0 && S_ISREG(st.st_mode);
}

char *util_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    if (n && dir[n - 1] == '/')
        return xasprintf("%s%s", dir, name);
    return xasprintf("%s/%s", dir, name);
}

int util_mkdirs(const char *path, kerr *err)
{
    char *p = xstrdup(path);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                kerr_add(err, "%s: cannot create directory: %s", p, strerror(errno));
                free(p);
                return -1;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
    if (!util_is_dir(path))
        return kerr_add(err, "%s: exists and is not a directory", path);
    return 0;
}

int util_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

int util_add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

uint64_t util_fnv1a(const void *data, size_t len, uint64_t h)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

float util_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t util_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float util_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000 | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t util_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff)
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, which is the right rounding */
    return (uint16_t)h;
}

/* Decimal digits (and an optional leading '-') into *v. 1 ok, 0 not an integer, -1 overflow. */
static int scan_int(const char *t, int allow_minus, int64_t *v)
{
    int neg = allow_minus && *t == '-';
    const char *p = t + neg;
    if (!*p)
        return 0;
    uint64_t acc = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    int over = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        if (acc > (lim - (uint64_t)(*p - '0')) / 10)
            over = 1;
        else
            acc = acc * 10 + (uint64_t)(*p - '0');
    }
    if (over)
        return -1;
    *v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return 1;
}

int util_parse_i64(const char *what, const char *text, int64_t min, int64_t max, int64_t *out,
                   kerr *err)
{
    int64_t v = 0;
    int r = scan_int(text, 1, &v);
    if (r == 0)
        return kerr_add(err, "%s: '%s' is not an integer (expected %lld to %lld)", what, text,
                        (long long)min, (long long)max);
    if (r < 0 || v < min || v > max)
        return kerr_add(err, "%s: '%s' is out of range (expected %lld to %lld)", what, text,
                        (long long)min, (long long)max);
    *out = v;
    return 0;
}

int util_parse_u64(const char *what, const char *text, uint64_t max, uint64_t *out, kerr *err)
{
    uint64_t acc = 0;
    int over = 0;
    const char *p = text;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (acc > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            over = 1;
        else
            acc = acc * 10 + (uint64_t)(*p - '0');
    }
    if (p == text || *p)
        return kerr_add(err, "%s: '%s' is not a non-negative integer (expected 0 to %llu)", what,
                        text, (unsigned long long)max);
    if (over || acc > max)
        return kerr_add(err, "%s: '%s' is out of range (expected 0 to %llu)", what, text,
                        (unsigned long long)max);
    *out = acc;
    return 0;
}

int util_parse_f64(const char *what, const char *text, double min, double max, unsigned flags,
                   double *out, kerr *err)
{
    char range[96];
    snprintf(range, sizeof range, "%s %g and at most %g",
             flags & UTIL_ABOVE_MIN ? "above" : "at least", min, max);
    errno = 0;
    char *end;
    double v = strtod(text, &end);
    int plain = *text != 0;
    for (const char *p = text; *p; p++) /* decimal only: no spaces, hex, nan or inf */
        plain &= (*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '-' ||
                 *p == '+';
    if (end != text && !*end && !isfinite(v))
        return kerr_add(err, "%s: '%s' is not a finite number (expected a number %s)", what, text,
                        range);
    if (!plain || end == text || *end)
        return kerr_add(err, "%s: '%s' is not a number (expected a number %s)", what, text, range);
    if (v > max || v < min || (flags & UTIL_ABOVE_MIN && v == min))
        return kerr_add(err, "%s: '%s' is out of range (expected a number %s)", what, text, range);
    *out = v;
    return 0;
}

int util_env_switch(const char *name, int dflt, const char *what0, const char *what1, int *on,
                    kerr *err)
{
    const char *e = getenv(name);
    if (e && strcmp(e, "0") != 0 && strcmp(e, "1") != 0)
        return kerr_add(err, "%s=%s: expected 0 (%s) or 1 (%s)", name, e, what0, what1);
    *on = e ? e[0] == '1' : dflt;
    return 0;
}

int util_parse_ids(const char *what, const char *s, int64_t max, int64_t **out, kerr *err)
{
    if (!*s)
        return kerr_add(err, "%s: the list is empty (expected ids like 1,2,3)", what);
    int n = 0, cap = 64;
    int64_t *v = xmalloc(sizeof(int64_t) * (size_t)cap);
    char num[32], item[32]; /* the item scanned (when short enough), and as shown */
    for (const char *p = s;; n++) {
        size_t len = strcspn(p, ",");
        snprintf(num, sizeof num, "%.*s", len < sizeof num ? (int)len : 0, p);
        snprintf(item, sizeof item, "%.*s%s", len > 24 ? 24 : (int)len, p, len > 24 ? "..." : "");
        int64_t x = 0;
        int r = len < sizeof num ? scan_int(num, 0, &x) : -1;
        if (r == 0 || (r < 0 && strspn(p, "0123456789") < len)) {
            kerr_add(err, "%s: item %d '%s' is not a non-negative integer (expected ids like "
                          "1,2,3, each 0 to %lld)",
                     what, n + 1, item, (long long)max);
            free(v);
            return -1;
        }
        if (r < 0 || x > max) {
            kerr_add(err, "%s: item %d '%s' is out of range (expected 0 to %lld)", what, n + 1,
                     item, (long long)max);
            free(v);
            return -1;
        }
        if (n == INT32_MAX - 1) { /* argv cannot hold this many; kept as a bound on the loop */
            free(v);
            return kerr_add(err, "%s: too many ids", what);
        }
        if (n == cap)
            v = xrealloc(v, sizeof(int64_t) * (size_t)(cap *= 2));
        v[n] = x;
        p += len;
        if (!*p)
            break;
        p++; /* the comma: an item must follow */
    }
    *out = v;
    return n + 1;
}

const char *util_human_count(double n, char *buf, size_t cap)
{
    static const char *suffix[] = {"", "K", "M", "B", "T"};
    int i = 0;
    while (fabs(n) >= 1000 && i < 4)
        n /= 1000, i++;
    snprintf(buf, cap, i ? "%.2f%s" : "%.0f%s", n, suffix[i]);
    return buf;
}

const char *util_human_bytes(double n, char *buf, size_t cap)
{
    static const char *suffix[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (fabs(n) >= 1024 && i < 4)
        n /= 1024, i++;
    snprintf(buf, cap, i ? "%.2f %s" : "%.0f %s", n, suffix[i]);
    return buf;
}

void util_progress_line(const char *what, uint64_t done, uint64_t total, double seconds)
{
    char d[32], t[32];
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    int fillw = pct * 30 / 100;
    fprintf(stderr, "\rkilnc: %s %3d%% [%.*s%*s] %s / %s  %.1f s", what, pct, fillw,
            "==============================", 30 - fillw, "",
            util_human_bytes((double)done, d, sizeof d), util_human_bytes((double)total, t, sizeof t),
            seconds);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

int util_cpus(int max)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > max ? max : (int)n;
}

typedef struct par {
    void (*fn)(void *ctx, int chunk, int64_t lo, int64_t hi);
    void *ctx;
    int chunk;
    int64_t lo, hi;
} par;

static void *par_main(void *arg)
{
    par *p = arg;
    p->fn(p->ctx, p->chunk, p->lo, p->hi);
    return NULL;
}

void util_parallel_for(int64_t n, void (*fn)(void *ctx, int chunk, int64_t lo, int64_t hi),
                       void *ctx)
{
    int k = util_cpus(UTIL_PAR_MAX);
    if (n < k)
        k = n < 1 ? 1 : (int)n;
    par p[UTIL_PAR_MAX];
    pthread_t th[UTIL_PAR_MAX];
    int started[UTIL_PAR_MAX] = {0};
    for (int i = 0; i < k; i++)
        p[i] = (par){fn, ctx, i, n * i / k, n * (i + 1) / k};
    for (int i = 1; i < k; i++) /* a chunk whose thread does not start runs on the caller's */
        started[i] = pthread_create(&th[i], NULL, par_main, &p[i]) == 0;
    par_main(&p[0]);
    for (int i = 1; i < k; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            par_main(&p[i]);
    }
}

char *util_base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    char *s = xmalloc(n - b + 1);
    memcpy(s, path + b, n - b);
    s[n - b] = 0;
    return s;
}

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
