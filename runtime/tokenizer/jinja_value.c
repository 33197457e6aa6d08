/* jinja_value — the chat-template engine's value model, its arena, and the text Python would
 * print for a value: str(), repr() and json.dumps(), byte for byte (float repr included: the
 * shortest digits that read back to the same double, in Python's fixed/scientific layout).
 *
 * Values are small structs passed by value; strings, lists and dicts live in the render's arena
 * (jx_alloc) and are never freed one by one. Template constants are allocated with the template
 * (jstr_new with a NULL context) and are read-only, which keeps renders thread-safe.
 * Every recursive walk (repr, json, ==) counts depth against the render's recursion limit, so a
 * namespace that holds itself is an error, not a stack overflow.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "jinja.h"
#include "util.h"

/* ---------------------------------------------------------------- errors, steps, arena */

void jx_fail(jctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = NULL;
    if (vasprintf(&m, fmt, ap) < 0)
        m = NULL;
    va_end(ap);
    free(c->err);
    c->err = m ? m : xstrdup("out of memory");
    longjmp(c->jmp, 1);
}

void jx_step(jctx *c, uint64_t n)
{
    c->steps += n;
    if (c->steps > c->step_limit)
        jx_fail(c, "rendering took more than %llu steps (the template loops too long; raise "
                   "ct_options.max_steps if the input is that large)",
                (unsigned long long)c->step_limit);
}

#define ARENA_BLOCK (64 * 1024)

void *jx_alloc(jctx *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    jarena_blk *b = c->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        if (c->mem_used + cap > c->mem_limit)
            jx_fail(c, "rendering needs more than %zu bytes of memory", c->mem_limit);
        jarena_blk *nb = malloc(sizeof *nb + cap);
        if (!nb)
            jx_fail(c, "out of memory");
        nb->cap = cap;
        nb->used = 0;
        c->mem_used += cap;
        /* a big allocation gets its own block behind the current one, so the current one
         * keeps serving small allocations */
        if (b && n > ARENA_BLOCK) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            c->blocks = nb;
        }
        b = nb;
    }
    void *p = b->mem + b->used;
    b->used += n;
    return p;
}

void jx_arena_free(jctx *c)
{
    while (c->blocks) {
        jarena_blk *n = c->blocks->next;
        free(c->blocks);
        c->blocks = n;
    }
    c->mem_used = 0;
}

/* Buffers are malloc'd (they grow); only the two in jctx exist, freed by ct_render. */
static void jb_grow(jctx *c, jbuf *b, size_t more)
{
    if (b->len + more > c->out_limit)
        jx_fail(c, "the rendering is longer than %zu bytes (ct_options.max_output)", c->out_limit);
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        jx_fail(c, "out of memory");
    b->p = p;
    b->cap = cap;
}

void jb_put(jctx *c, jbuf *b, const char *s, size_t n)
{
    jb_grow(c, b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void jb_puts(jctx *c, jbuf *b, const char *s) { jb_put(c, b, s, strlen(s)); }
void jb_putc(jctx *c, jbuf *b, char ch) { jb_put(c, b, &ch, 1); }

/* ---------------------------------------------------------------- constructors */

jv jv_undef(jstr *hint) { return (jv){.t = JV_UNDEF, .u.s = hint}; }
jv jv_none(void) { return (jv){.t = JV_NONE}; }
jv jv_bool(int b) { return (jv){.t = JV_BOOL, .u.i = !!b}; }
jv jv_int(int64_t i) { return (jv){.t = JV_INT, .u.i = i}; }
jv jv_float(double f) { return (jv){.t = JV_FLOAT, .u.f = f}; }
jv jv_strv(jstr *s) { return (jv){.t = JV_STR, .u.s = s}; }

jstr *jstr_new(jctx *c, const char *s, size_t n)
{
    jstr *r = c ? jx_alloc(c, sizeof *r + n + 1) : xmalloc(sizeof *r + n + 1);
    r->len = n;
    r->s = (char *)(r + 1);
    r->own = NULL;
    if (n && s) /* s NULL: the caller fills the text in */
        memcpy(r->s, s, n);
    r->s[n] = 0;
    return r;
}

/* Strings past this size get a block of their own with room to grow. */
#define OWN_MIN 4096

jv jv_concat(jctx *c, jstr *a, const char *b, size_t blen)
{
    size_t n = a->len + blen;
    if (n > c->out_limit)
        jx_fail(c, "a string longer than %zu bytes (ct_options.max_output)", c->out_limit);
    jx_step(c, blen / 256);
    jstr *r = jx_alloc(c, sizeof *r);
    r->len = n;
    jarena_blk *o = a->own;
    if (o && o->used == a->len + 1 && o->cap >= n + 1) { /* a is the latest text of its block */
        memcpy(o->mem + a->len, b, blen);
        o->mem[n] = 0;
        o->used = n + 1;
        r->s = (char *)o->mem;
        r->own = o;
        return jv_strv(r);
    }
    if (n < OWN_MIN) {
        jstr *t = jstr_new(c, NULL, n);
        memcpy(t->s, a->s, a->len);
        if (blen)
            memcpy(t->s + a->len, b, blen);
        t->s[n] = 0;
        return jv_strv(t);
    }
    size_t cap = 2 * (n + 1);
    if (c->mem_used + cap > c->mem_limit)
        jx_fail(c, "rendering needs more than %zu bytes of memory", c->mem_limit);
    o = malloc(sizeof *o + cap);
    if (!o)
        jx_fail(c, "out of memory");
    c->mem_used += cap;
    o->cap = cap;
    /* behind the current block (r made sure there is one), so small allocations keep going
     * to that one and this block's used bytes stay this string's */
    o->next = c->blocks->next;
    c->blocks->next = o;
    memcpy(o->mem, a->s, a->len);
    memcpy(o->mem + a->len, b, blen);
    o->mem[n] = 0;
    o->used = n + 1;
    r->s = (char *)o->mem;
    r->own = o;
    return jv_strv(r);
}

jv jv_str(jctx *c, const char *s, size_t n) { return jv_strv(jstr_new(c, s, n)); }
jv jv_cstr(jctx *c, const char *s) { return jv_str(c, s, strlen(s)); }

jv jv_list(jctx *c, size_t cap)
{
    jlist *l = jx_alloc(c, sizeof *l);
    l->n = 0;
    l->tuple = JL_LIST;
    l->consumed = 0;
    l->poison = NULL;
    l->cap = cap;
    l->v = cap ? jx_alloc(c, cap * sizeof(jv)) : NULL;
    return (jv){.t = JV_LIST, .u.l = l};
}

void jl_push(jctx *c, jlist *l, jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        jv *nv = jx_alloc(c, cap * sizeof(jv));
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

jv jv_dict(jctx *c, size_t cap)
{
    jdict *d = jx_alloc(c, sizeof *d);
    d->n = 0;
    d->cap = cap;
    d->k = cap ? jx_alloc(c, cap * sizeof(jv)) : NULL;
    d->v = cap ? jx_alloc(c, cap * sizeof(jv)) : NULL;
    return (jv){.t = JV_DICT, .u.d = d};
}

jv *jd_get(jctx *c, const jdict *d, jv k)
{
    /* linear: chat-template dicts are small; the step charge keeps a huge one bounded */
    jx_step(c, d->n / 16);
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(c, d->k[i], k))
            return &d->v[i];
    return NULL;
}

jv *jd_gets(jctx *c, const jdict *d, const char *k)
{
    size_t n = strlen(k);
    jx_step(c, d->n / 16);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s->len == n && memcmp(d->k[i].u.s->s, k, n) == 0)
            return &d->v[i];
    return NULL;
}

void jd_set(jctx *c, jdict *d, jv k, jv v)
{
    jv *old = jd_get(c, d, k);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *nk = jx_alloc(c, cap * sizeof(jv)), *nv = jx_alloc(c, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* ---------------------------------------------------------------- truth, equality, names */

int jv_truthy(jv v)
{
    switch (v.t) {
    case JV_UNDEF:
    case JV_NONE: return 0;
    case JV_BOOL:
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s->len != 0;
    case JV_LIST: return v.u.l->n != 0 || v.u.l->tuple == JL_GEN; /* a generator is truthy */
    case JV_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int is_num(jv v) { return v.t == JV_INT || v.t == JV_BOOL || v.t == JV_FLOAT; }

int jv_equal(jctx *c, jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_FLOAT || b.t == JV_FLOAT) {
            double x = a.t == JV_FLOAT ? a.u.f : (double)a.u.i;
            double y = b.t == JV_FLOAT ? b.u.f : (double)b.u.i;
            return x == y;
        }
        return a.u.i == b.u.i;
    }
    if (a.t != b.t)
        return 0;
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE: return 1;
    case JV_STR: return a.u.s->len == b.u.s->len && memcmp(a.u.s->s, b.u.s->s, a.u.s->len) == 0;
    case JV_LIST: {
        if (a.u.l->tuple == JL_GEN || b.u.l->tuple == JL_GEN) /* generators: identity */
            return a.u.l == b.u.l;
        if (a.u.l->n != b.u.l->n || a.u.l->tuple != b.u.l->tuple)
            return 0;
        if (++c->depth > c->depth_limit)
            jx_fail(c, "values nested deeper than %d levels", c->depth_limit);
        jx_step(c, a.u.l->n / 16);
        int eq = 1;
        for (size_t i = 0; i < a.u.l->n && eq; i++)
            eq = jv_equal(c, a.u.l->v[i], b.u.l->v[i]);
        c->depth--;
        return eq;
    }
    case JV_DICT: {
        if (a.u.d->n != b.u.d->n)
            return 0;
        if (++c->depth > c->depth_limit)
            jx_fail(c, "values nested deeper than %d levels", c->depth_limit);
        int eq = 1;
        for (size_t i = 0; i < a.u.d->n && eq; i++) {
            jv *o = jd_get(c, b.u.d, a.u.d->k[i]);
            eq = o && jv_equal(c, a.u.d->v[i], *o);
        }
        c->depth--;
        return eq;
    }
    default: return a.u.p == b.u.p;
    }
}

const char *jv_typename(jv v)
{
    switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return v.safe ? "Markup" : "str";
    case JV_LIST: {
        static const char *const names[] = {"list", "tuple", "dict_items", "dict_keys", "dict_values",
                                            "generator"};
        return names[v.u.l->tuple];
    }
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_MACRO: return "Macro";
    case JV_FUNC: return "function";
    case JV_METHOD: return "builtin_function_or_method";
    case JV_LOOP: return "LoopContext";
    }
    return "object";
}

/* ---------------------------------------------------------------- UTF-8 */

int ju_decode(const char *s, size_t n, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    size_t left = n - *i;
    int cp, len;
    if (p[0] < 0x80) {
        cp = p[0];
        len = 1;
    } else if ((p[0] & 0xE0) == 0xC0 && left >= 2) {
        cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        len = 2;
    } else if ((p[0] & 0xF0) == 0xE0 && left >= 3) {
        cp = ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        len = 3;
    } else if ((p[0] & 0xF8) == 0xF0 && left >= 4) {
        cp = ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        len = 4;
    } else { /* not reached for validated text; consume one byte */
        cp = 0xFFFD;
        len = 1;
    }
    *i += (size_t)len;
    return cp;
}

size_t ju_encode(int cp, char *o)
{
    unsigned char *u = (unsigned char *)o;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t ju_count(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

int ju_isspace(int cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int ju_valid(const char *s, size_t n, size_t *bad)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char b = p[i];
        size_t len;
        int cp, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            len = 2, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else
            goto fail;
        if (n - i < len)
            goto fail;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                goto fail;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto fail;
        i += len;
    }
    return 1;
fail:
    if (bad)
        *bad = i;
    return 0;
}

/* ---------------------------------------------------------------- str / repr */

void jv_write_float(jbuf *b, jctx *c, double f)
{
    if (isnan(f)) {
        jb_puts(c, b, "nan");
        return;
    }
    if (isinf(f)) {
        jb_puts(c, b, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0) {
        jb_puts(c, b, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* shortest round-tripping digits: %.Ne is correctly rounded, so the first precision that
     * reads back is what Python's repr picks */
    char t[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(t, sizeof t, "%.*e", p - 1, f);
        if (strtod(t, NULL) == f)
            break;
    }
    char digits[24];
    int nd = 0, neg = 0;
    const char *q = t;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    char o[64];
    int k = 0;
    if (neg)
        o[k++] = '-';
    if (e < -4 || e >= 16) {
        o[k++] = digits[0];
        if (nd > 1) {
            o[k++] = '.';
            for (int i = 1; i < nd; i++)
                o[k++] = digits[i];
        }
        k += snprintf(o + k, sizeof o - (size_t)k, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else if (e < 0) {
        o[k++] = '0';
        o[k++] = '.';
        for (int i = 0; i < -e - 1; i++)
            o[k++] = '0';
        for (int i = 0; i < nd; i++)
            o[k++] = digits[i];
    } else {
        for (int i = 0; i <= e; i++)
            o[k++] = i < nd ? digits[i] : '0';
        o[k++] = '.';
        if (nd > e + 1)
            for (int i = e + 1; i < nd; i++)
                o[k++] = digits[i];
        else
            o[k++] = '0';
    }
    jb_put(c, b, o, (size_t)k);
}

static int py_printable(int cp)
{
    if (cp < 0x80)
        return cp >= 0x20 && cp < 0x7F;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return 0;
    default: return 1;
    }
}

static void write_str_repr(jctx *c, jbuf *b, const jstr *s)
{
    char q = memchr(s->s, '\'', s->len) && !memchr(s->s, '"', s->len) ? '"' : '\'';
    jb_putc(c, b, q);
    size_t i = 0;
    while (i < s->len) {
        size_t st = i;
        int cp = ju_decode(s->s, s->len, &i);
        char e[16];
        if (cp == q || cp == '\\') {
            e[0] = '\\';
            e[1] = (char)cp;
            jb_put(c, b, e, 2);
        } else if (cp == '\n')
            jb_puts(c, b, "\\n");
        else if (cp == '\r')
            jb_puts(c, b, "\\r");
        else if (cp == '\t')
            jb_puts(c, b, "\\t");
        else if (py_printable(cp))
            jb_put(c, b, s->s + st, i - st);
        else {
            if (cp < 0x100)
                snprintf(e, sizeof e, "\\x%02x", cp);
            else if (cp < 0x10000)
                snprintf(e, sizeof e, "\\u%04x", cp);
            else
                snprintf(e, sizeof e, "\\U%08x", cp);
            jb_puts(c, b, e);
        }
    }
    jb_putc(c, b, q);
}

static void enter(jctx *c)
{
    if (++c->depth > c->depth_limit)
        jx_fail(c, "values nested deeper than %d levels", c->depth_limit);
}

void jv_write_repr(jctx *c, jbuf *b, jv v)
{
    switch (v.t) {
    case JV_STR: write_str_repr(c, b, v.u.s); return;
    case JV_UNDEF: jb_puts(c, b, "Undefined"); return;
    case JV_LIST: {
        static const char *const view[] = {"", "", "dict_items(", "dict_keys(", "dict_values("};
        int tup = v.u.l->tuple == JL_TUPLE;
        if (v.u.l->tuple == JL_GEN) { /* Python adds an address; no template can rely on it */
            jb_puts(c, b, "<generator object>");
            return;
        }
        enter(c);
        jb_puts(c, b, view[v.u.l->tuple]);
        jb_putc(c, b, tup ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                jb_puts(c, b, ", ");
            jv_write_repr(c, b, v.u.l->v[i]);
        }
        if (tup && v.u.l->n == 1)
            jb_putc(c, b, ',');
        jb_putc(c, b, tup ? ')' : ']');
        if (v.u.l->tuple >= JL_ITEMS)
            jb_putc(c, b, ')');
        c->depth--;
        return;
    }
    case JV_DICT:
    case JV_NS: {
        enter(c);
        if (v.t == JV_NS)
            jb_puts(c, b, "<Namespace ");
        jb_putc(c, b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i)
                jb_puts(c, b, ", ");
            jv_write_repr(c, b, v.u.d->k[i]);
            jb_puts(c, b, ": ");
            jv_write_repr(c, b, v.u.d->v[i]);
        }
        jb_putc(c, b, '}');
        if (v.t == JV_NS)
            jb_putc(c, b, '>');
        c->depth--;
        return;
    }
    default: jv_write_str(c, b, v);
    }
}

void jv_write_str(jctx *c, jbuf *b, jv v)
{
    char t[32];
    switch (v.t) {
    case JV_UNDEF: return;
    case JV_NONE: jb_puts(c, b, "None"); return;
    case JV_BOOL: jb_puts(c, b, v.u.i ? "True" : "False"); return;
    case JV_INT:
        snprintf(t, sizeof t, "%lld", (long long)v.u.i);
        jb_puts(c, b, t);
        return;
    case JV_FLOAT: jv_write_float(b, c, v.u.f); return;
    case JV_STR: jb_put(c, b, v.u.s->s, v.u.s->len); return;
    case JV_LIST:
    case JV_DICT:
    case JV_NS: jv_write_repr(c, b, v); return;
    case JV_MACRO: jb_puts(c, b, "<Macro>"); return;
    case JV_FUNC: jb_puts(c, b, "<function>"); return;
    case JV_METHOD: jb_puts(c, b, "<built-in method>"); return;
    case JV_LOOP: jb_puts(c, b, "<LoopContext>"); return;
    }
}

jv jv_to_str(jctx *c, jv v)
{
    if (v.t == JV_STR)
        return v;
    size_t mark = c->tmp.len;
    jv_write_str(c, &c->tmp, v);
    jv r = jv_str(c, c->tmp.p ? c->tmp.p + mark : "", c->tmp.len - mark);
    c->tmp.len = mark;
    return r;
}

/* ---------------------------------------------------------------- json.dumps */

static void json_string(jctx *c, jbuf *b, const char *s, size_t n, int ensure_ascii)
{
    jb_putc(c, b, '"');
    size_t i = 0;
    while (i < n) {
        size_t st = i;
        int cp = ju_decode(s, n, &i);
        char e[16];
        switch (cp) {
        case '"': jb_puts(c, b, "\\\""); continue;
        case '\\': jb_puts(c, b, "\\\\"); continue;
        case '\n': jb_puts(c, b, "\\n"); continue;
        case '\r': jb_puts(c, b, "\\r"); continue;
        case '\t': jb_puts(c, b, "\\t"); continue;
        case '\b': jb_puts(c, b, "\\b"); continue;
        case '\f': jb_puts(c, b, "\\f"); continue;
        }
        if (cp < 0x20 || (ensure_ascii && cp > 0x7E)) {
            if (cp >= 0x10000) {
                int v = cp - 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 | (v >> 10), 0xDC00 | (v & 0x3FF));
            } else
                snprintf(e, sizeof e, "\\u%04x", cp);
            jb_puts(c, b, e);
        } else
            jb_put(c, b, s + st, i - st);
    }
    jb_putc(c, b, '"');
}

static void json_newline(jctx *c, jbuf *b, const jjson_opt *o, int level)
{
    jb_putc(c, b, '\n');
    for (int i = 0; i < level; i++)
        jb_puts(c, b, o->indent);
}

static void json_key(jctx *c, jbuf *b, jv k, const jjson_opt *o)
{
    switch (k.t) {
    case JV_STR: json_string(c, b, k.u.s->s, k.u.s->len, o->ensure_ascii); return;
    case JV_NONE: jb_puts(c, b, "\"null\""); return;
    case JV_BOOL: jb_puts(c, b, k.u.i ? "\"true\"" : "\"false\""); return;
    case JV_INT:
    case JV_FLOAT:
        jb_putc(c, b, '"');
        jv_write_json(c, b, k, o, 0);
        jb_putc(c, b, '"');
        return;
    default:
        jx_fail(c, "keys must be str, int, float, bool or None, not %s", jv_typename(k));
    }
}

void jv_write_json(jctx *c, jbuf *b, jv v, const jjson_opt *o, int level)
{
    char t[32];
    switch (v.t) {
    case JV_NONE: jb_puts(c, b, "null"); return;
    case JV_BOOL: jb_puts(c, b, v.u.i ? "true" : "false"); return;
    case JV_INT:
        snprintf(t, sizeof t, "%lld", (long long)v.u.i);
        jb_puts(c, b, t);
        return;
    case JV_FLOAT:
        if (isnan(v.u.f))
            jb_puts(c, b, "NaN");
        else if (isinf(v.u.f))
            jb_puts(c, b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else
            jv_write_float(b, c, v.u.f);
        return;
    case JV_STR: json_string(c, b, v.u.s->s, v.u.s->len, o->ensure_ascii); return;
    case JV_LIST: {
        if (v.u.l->tuple >= JL_ITEMS)
            jx_fail(c, "Object of type %s is not JSON serializable", jv_typename(v));
        if (v.u.l->n == 0) {
            jb_puts(c, b, "[]");
            return;
        }
        enter(c);
        jb_putc(c, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                jb_puts(c, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, level + 1);
            jv_write_json(c, b, v.u.l->v[i], o, level + 1);
        }
        if (o->indent)
            json_newline(c, b, o, level);
        jb_putc(c, b, ']');
        c->depth--;
        return;
    }
    case JV_DICT: {
        const jdict *d = v.u.d;
        if (d->n == 0) {
            jb_puts(c, b, "{}");
            return;
        }
        enter(c);
        /* sort_keys: sorted(d.items()), i.e. by key with Python's ordering */
        jv *order = jx_alloc(c, d->n * sizeof *order), *keys = jx_alloc(c, d->n * sizeof *keys);
        for (size_t i = 0; i < d->n; i++) {
            order[i] = jv_int((int64_t)i);
            keys[i] = d->k[i];
        }
        if (o->sort_keys)
            jx_sort(c, order, keys, d->n, 0);
        jb_putc(c, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            size_t idx = (size_t)order[i].u.i;
            if (i)
                jb_puts(c, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, level + 1);
            json_key(c, b, d->k[idx], o);
            jb_puts(c, b, o->key_sep);
            jv_write_json(c, b, d->v[idx], o, level + 1);
        }
        if (o->indent)
            json_newline(c, b, o, level);
        jb_putc(c, b, '}');
        c->depth--;
        return;
    }
    default: jx_fail(c, "Object of type %s is not JSON serializable", jv_typename(v));
    }
}
