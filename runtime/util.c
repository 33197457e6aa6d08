/* util — see util.h. Nothing here knows about models; it is the floor everything stands on. */
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

void kerr_clear(kerr *e)
{
    e->n = 0;
    e->len = 0;
    e->truncated = 0;
    e->buf[0] = 0;
}

int kerr_add(kerr *e, const char *fmt, ...)
{
    if (!e)
        return -1;
    e->n++;
    if (e->truncated)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int w = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (w < 0)
        return -1;
    /* A message's own line breaks are indented by two spaces, so readers (and the CLIs'
     * error printers) can tell a continuation line from the next message. */
    size_t room = KERR_CAP - e->len, need = 2;
    for (const char *p = msg; *p; p++)
        need += *p == '\n' ? 3 : 1;
    if (need > room) {
        static const char more[] = "\n... (more errors; fix the above first)\n";
        size_t keep = KERR_CAP - sizeof more;
        if (e->len > keep)
            e->len = keep;
        memcpy(e->buf + e->len, more, sizeof more);
        e->len += sizeof more - 1;
        e->truncated = 1;
        free(msg);
        return -1;
    }
    for (const char *p = msg; *p; p++) {
        e->buf[e->len++] = *p;
        if (*p == '\n' && p[1]) {
            e->buf[e->len++] = ' ';
            e->buf[e->len++] = ' ';
        }
    }
    free(msg);
    e->buf[e->len++] = '\n';
    e->buf[e->len] = 0;
    return -1;
}

const char *kerr_msg(kerr *e)
{
    if (e->len == 0)
        return "";
    if (e->buf[e->len - 1] == '\n')
        e->buf[e->len - 1] = 0, e->len--;
    return e->buf;
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

char *util_read_file(const char *path, size_t *len, kerr *err)
{
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
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int util_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
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

int util_parse_ids(const char *s, int64_t **out)
{
    int n = 0, cap = 64;
    int64_t *v = xmalloc(sizeof(int64_t) * (size_t)cap);
    for (const char *p = s; *p;) {
        char *end;
        long long x = strtoll(p, &end, 10);
        if (end == p || x < 0 || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (n == cap)
            v = xrealloc(v, sizeof(int64_t) * (size_t)(cap *= 2));
        v[n++] = x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    return n;
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

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
