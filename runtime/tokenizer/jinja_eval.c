/* jinja_eval — the chat-template interpreter: runs the AST of jinja_parse.c against the
 * template variables, the way jinja2's ImmutableSandboxedEnvironment does under transformers.
 *
 * Semantics kept from jinja2/Python because templates observe them:
 *   - scopes: a for-loop iteration and a macro call get a fresh frame (a `set` inside a loop
 *     does not survive the iteration, hence namespace()); if/else share the enclosing frame;
 *   - Undefined: a missing variable, key or attribute prints "", is falsy, iterates empty and
 *     has length 0; taking an attribute of it, calling it or doing arithmetic with it fails with
 *     jinja2's message ("'x' is undefined", "'dict object' has no attribute 'y'");
 *   - `a.b` tries a method of a's type first, then the key; `a['b']` the key first;
 *   - the sandbox: list and dict methods that mutate are refused, ranges above 100000 too;
 *   - Python's operators on int/float/str/list (bool is an int; int overflow beyond 64 bits is
 *     an error rather than a bigint), slicing with any step, str methods on code points.
 * Filters, tests, methods and globals are each one table below; a jinja2 builtin that kiln
 * does not implement parses, and fails with its name and line only when it runs.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "jinja.h"
#include "util.h"

/* A scope: names to values. Names point into the template or are literals, never copied. The
 * template's variables are the bottom frame's dict. */
typedef struct fvar {
    const char *name;
    jv v;
} fvar;

typedef struct frame {
    struct frame *up;
    fvar *vars;
    int n, cap;
    int captured;     /* a macro defined here keeps it: a loop must not reuse it */
    const jdict *ctx; /* the bottom frame: the render's variables */
} frame;

typedef struct jmacro {
    const jnode *def; /* JN_MACRO, or JN_CALLBLOCK for `caller` */
    frame *closure;
    jv caller;        /* JV_UNDEF when none */
} jmacro;

typedef struct jmethod {
    jv self;
    int id;
} jmethod;

typedef struct jloop {
    jlist *items;
    size_t i;
} jloop;

/* arguments of a call, evaluated */
typedef struct jargs {
    jv *pos;
    int npos;
    char **kwn;
    jv *kwv;
    int nkw;
    const char *what; /* for messages: "filter 'join'" */
} jargs;

static jv eval(jctx *c, const jnode *n, frame *f);
static void exec(jctx *c, const jnode *n, frame *f);

/* ---------------------------------------------------------------- small helpers */

static jstr *hintf(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static jstr *hintf(jctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[512];
    int k = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return jstr_new(c, buf, k < 0 ? 0 : (size_t)k >= sizeof buf ? sizeof buf - 1 : (size_t)k);
}

/* jinja2's object_type_repr: "dict object", "None"... */
static const char *obj_repr(jv v)
{
    switch (v.t) {
    case JV_NONE: return "None";
    case JV_DICT: return "dict object";
    case JV_LIST: return v.u.l->tuple == JL_TUPLE ? "tuple object" : v.u.l->tuple == JL_LIST ? "list object"
                                                                                : "object";
    case JV_STR: return "str object";
    case JV_INT: return "int object";
    case JV_FLOAT: return "float object";
    case JV_BOOL: return "bool object";
    case JV_NS: return "jinja2.utils.Namespace object";
    case JV_LOOP: return "jinja2.runtime.LoopContext object";
    default: return "object";
    }
}

static _Noreturn void undef_fail(jctx *c, jv u)
{
    jx_fail(c, "%s", u.u.s ? u.u.s->s : "Undefined");
}

static jv no_attr(jctx *c, jv obj, const char *name)
{
    return jv_undef(hintf(c, "'%s' has no attribute '%s'", obj_repr(obj), name));
}

static const char *cs(jv v) { return v.u.s->s; }

static jv frame_get(jctx *c, frame *f, const char *name, int *found)
{
    for (; f; f = f->up) {
        for (int i = f->n; i-- > 0;)
            if (strcmp(f->vars[i].name, name) == 0) {
                *found = 1;
                return f->vars[i].v;
            }
        jv *v = f->ctx ? jd_gets(c, f->ctx, name) : NULL;
        if (v) {
            *found = 1;
            return *v;
        }
    }
    *found = 0;
    return jv_undef(NULL);
}

static void frame_set(jctx *c, frame *f, const char *name, jv v)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->vars[i].name, name) == 0) {
            f->vars[i].v = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 4;
        fvar *nv = jx_alloc(c, (size_t)cap * sizeof *nv);
        if (f->n)
            memcpy(nv, f->vars, (size_t)f->n * sizeof *nv);
        f->vars = nv;
        f->cap = cap;
    }
    jx_step(c, (uint64_t)f->n / 16);
    f->vars[f->n++] = (fvar){name, v};
}

static frame *frame_new(jctx *c, frame *up)
{
    frame *f = jx_alloc(c, sizeof *f);
    memset(f, 0, sizeof *f);
    f->up = up;
    return f;
}

/* A loop's frame for its next item: the previous one emptied, unless a macro captured it. */
static frame *frame_fresh(jctx *c, frame *prev, frame *up)
{
    if (!prev || prev->captured)
        return frame_new(c, up);
    prev->n = 0;
    return prev;
}

static jlist *iter_list(jctx *c, jv v)
{
    switch (v.t) {
    case JV_LIST:
        if (v.u.l->tuple == JL_GEN && v.u.l->poison) /* a generator over a non-iterable */
            jx_fail(c, "%s", v.u.l->poison->s);
        if (v.u.l->tuple == JL_GEN) { /* iterating a generator uses it up */
            if (v.u.l->consumed)
                return jv_list(c, 0).u.l;
            v.u.l->consumed = 1;
        }
        return v.u.l;
    case JV_UNDEF: return jv_list(c, 0).u.l;
    case JV_DICT:
    case JV_NS: {
        jlist *l = jv_list(c, v.u.d->n).u.l;
        for (size_t i = 0; i < v.u.d->n; i++)
            jl_push(c, l, v.u.d->k[i]);
        return l;
    }
    case JV_STR: {
        jlist *l = jv_list(c, v.u.s->len).u.l;
        size_t i = 0;
        while (i < v.u.s->len) {
            size_t st = i;
            ju_decode(v.u.s->s, v.u.s->len, &i);
            jl_push(c, l, jv_str(c, v.u.s->s + st, i - st));
        }
        jx_step(c, v.u.s->len / 16);
        return l;
    }
    default: jx_fail(c, "'%s' object is not iterable", jv_typename(v));
    }
}

static int64_t length_of(jctx *c, jv v)
{
    switch (v.t) {
    case JV_STR: return (int64_t)ju_count(v.u.s->s, v.u.s->len);
    case JV_LIST:
        if (v.u.l->tuple == JL_GEN)
            jx_fail(c, "object of type 'generator' has no len()");
        return (int64_t)v.u.l->n;
    case JV_DICT:
    case JV_NS: return (int64_t)v.u.d->n;
    case JV_UNDEF: return 0;
    default: jx_fail(c, "object of type '%s' has no len()", jv_typename(v));
    }
}

/* what jinja2's generator filters (map, select, unique, items...) return */
static jv as_gen(jv list)
{
    list.u.l->tuple = JL_GEN;
    return list;
}

/* A generator filter's input that cannot be iterated fails only when the generator runs (a
 * template may test or drop it unused): such a generator carries the error. NULL: iterable. */
static jv *lazy_error(jctx *c, jv v, const char *msg_or_null)
{
    if (v.t == JV_LIST && v.u.l->poison) /* a generator over a failing generator */
        msg_or_null = v.u.l->poison->s;
    else if (v.t == JV_LIST || v.t == JV_DICT || v.t == JV_NS || v.t == JV_STR || v.t == JV_UNDEF)
        if (!msg_or_null)
            return NULL;
    jv *g = jx_alloc(c, sizeof *g);
    *g = as_gen(jv_list(c, 0));
    g->u.l->poison = msg_or_null ? hintf(c, "%s", msg_or_null)
                                 : hintf(c, "'%s' object is not iterable", jv_typename(v));
    return g;
}

static jv tuple2(jctx *c, jv a, jv b)
{
    jv t = jv_list(c, 2);
    t.u.l->tuple = 1;
    jl_push(c, t.u.l, a);
    jl_push(c, t.u.l, b);
    return t;
}

/* ---------------------------------------------------------------- unicode string helpers */

static jv map_case(jctx *c, jv s, int mode) /* 0 lower, 1 upper */
{
    jbuf *b = &c->tmp;
    size_t mark = b->len, i = 0;
    while (i < s.u.s->len) {
        int cp = ju_decode(s.u.s->s, s.u.s->len, &i);
        char e[4];
        /* the one full mapping templates meet: ß.upper() is "SS" in Python */
        if (mode == 1 && cp == 0xDF) {
            jb_puts(c, b, "SS");
            continue;
        }
        cp = mode ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
        jb_put(c, b, e, ju_encode(cp, e));
    }
    jv r = jv_str(c, b->p + mark, b->len - mark);
    b->len = mark;
    return r;
}

static int is_cased(int cp)
{
    utf8proc_category_t k = utf8proc_category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

/* Python's str.title() (python=1) or jinja2's title filter (python=0: words start after
 * whitespace or one of -({[<). capitalize: first upper, rest lower. */
static jv title_case(jctx *c, jv s, int python)
{
    jbuf *b = &c->tmp;
    size_t mark = b->len, i = 0;
    int prev = 0; /* python: previous was cased; jinja: inside a word */
    while (i < s.u.s->len) {
        int cp = ju_decode(s.u.s->s, s.u.s->len, &i);
        int out;
        char e[4];
        if (python) {
            out = prev ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
            prev = is_cased(cp);
        } else {
            int sep = ju_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            out = sep ? cp : prev ? utf8proc_tolower(cp) : utf8proc_toupper(cp); /* item[0].upper() */
            prev = !sep;
        }
        jb_put(c, b, e, ju_encode(out, e));
    }
    jv r = jv_str(c, b->p + mark, b->len - mark);
    b->len = mark;
    return r;
}

static jv capitalize(jctx *c, jv s)
{
    jbuf *b = &c->tmp;
    size_t mark = b->len, i = 0;
    int first = 1;
    while (i < s.u.s->len) {
        int cp = ju_decode(s.u.s->s, s.u.s->len, &i);
        char e[4];
        cp = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp);
        first = 0;
        jb_put(c, b, e, ju_encode(cp, e));
    }
    jv r = jv_str(c, b->p + mark, b->len - mark);
    b->len = mark;
    return r;
}

static int in_chars(int cp, const jstr *chars)
{
    size_t i = 0;
    while (i < chars->len)
        if (ju_decode(chars->s, chars->len, &i) == cp)
            return 1;
    return 0;
}

/* str.strip/lstrip/rstrip(chars): which: 1 left, 2 right, 3 both; chars NULL: whitespace */
static jv strip(jctx *c, jv s, const jstr *chars, int which)
{
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, a = 0, z = n;
    if (which & 1)
        while (a < z) {
            size_t j = a;
            int cp = ju_decode(p, n, &j);
            if (chars ? !in_chars(cp, chars) : !ju_isspace(cp))
                break;
            a = j;
        }
    if (which & 2)
        while (z > a) {
            size_t st = z - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            size_t j = st;
            int cp = ju_decode(p, n, &j);
            if (chars ? !in_chars(cp, chars) : !ju_isspace(cp))
                break;
            z = st;
        }
    if (a == 0 && z == n)
        return s;
    return jv_str(c, p + a, z - a);
}

static const char *find_sub(const char *h, size_t hn, const char *nd, size_t nn)
{
    if (nn == 0)
        return h;
    return memmem(h, hn, nd, nn);
}

static jv str_replace(jctx *c, jv s, const jstr *old, const jstr *new_, int64_t count)
{
    jbuf *b = &c->tmp;
    size_t mark = b->len;
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, i = 0;
    int64_t done = 0;
    if (old->len == 0) { /* Python inserts new before every character and at the end */
        while (i <= n && (count < 0 || done < count)) {
            jb_put(c, b, new_->s, new_->len);
            done++;
            if (i == n) {
                i++;
                break;
            }
            size_t st = i;
            ju_decode(p, n, &i);
            jb_put(c, b, p + st, i - st);
        }
        if (i <= n)
            jb_put(c, b, p + i, n - i);
    } else {
        while (count < 0 || done < count) {
            const char *h = find_sub(p + i, n - i, old->s, old->len);
            if (!h)
                break;
            jb_put(c, b, p + i, (size_t)(h - (p + i)));
            jb_put(c, b, new_->s, new_->len);
            i = (size_t)(h - p) + old->len;
            done++;
        }
        jb_put(c, b, p + i, n - i);
    }
    jx_step(c, (b->len - mark) / 64);
    jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
    b->len = mark;
    return r;
}

/* str.split / rsplit. sep NULL: runs of whitespace. */
static jv str_split(jctx *c, jv s, const jstr *sep, int64_t maxsplit, int right)
{
    const char *p = s.u.s->s;
    size_t n = s.u.s->len;
    jv out = jv_list(c, 0);
    jx_step(c, n / 16);
    if (sep && sep->len == 0)
        jx_fail(c, "empty separator");
    if (!right) {
        size_t i = 0;
        int64_t splits = 0;
        if (!sep) {
            for (;;) {
                while (i < n) { /* skip whitespace */
                    size_t j = i;
                    if (!ju_isspace(ju_decode(p, n, &j)))
                        break;
                    i = j;
                }
                if (i >= n)
                    break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    jl_push(c, out.u.l, jv_str(c, p + i, n - i)); /* the rest, as it is */
                    break;
                }
                size_t st = i;
                while (i < n) {
                    size_t j = i;
                    if (ju_isspace(ju_decode(p, n, &j)))
                        break;
                    i = j;
                }
                jl_push(c, out.u.l, jv_str(c, p + st, i - st));
                splits++;
            }
        } else {
            for (;;) {
                const char *h = maxsplit >= 0 && splits >= maxsplit ? NULL
                              : find_sub(p + i, n - i, sep->s, sep->len);
                if (!h) {
                    jl_push(c, out.u.l, jv_str(c, p + i, n - i));
                    break;
                }
                jl_push(c, out.u.l, jv_str(c, p + i, (size_t)(h - (p + i))));
                i = (size_t)(h - p) + sep->len;
                splits++;
            }
        }
        return out;
    }
    /* rsplit: collect from the right, then reverse */
    size_t z = n;
    int64_t splits = 0;
    if (!sep) {
        for (;;) {
            while (z > 0) {
                size_t st = z - 1;
                while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80)
                    st--;
                size_t j = st;
                if (!ju_isspace(ju_decode(p, n, &j)))
                    break;
                z = st;
            }
            if (z == 0)
                break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                jl_push(c, out.u.l, jv_str(c, p, z));
                break;
            }
            size_t a = z;
            while (a > 0) {
                size_t st = a - 1;
                while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80)
                    st--;
                size_t j = st;
                if (ju_isspace(ju_decode(p, n, &j)))
                    break;
                a = st;
            }
            jl_push(c, out.u.l, jv_str(c, p + a, z - a));
            z = a;
            splits++;
        }
    } else {
        for (;;) {
            const char *h = NULL;
            if (!(maxsplit >= 0 && splits >= maxsplit) && z >= sep->len)
                for (size_t k = z - sep->len + 1; k-- > 0;)
                    if (memcmp(p + k, sep->s, sep->len) == 0) {
                        h = p + k;
                        break;
                    }
            if (!h) {
                jl_push(c, out.u.l, jv_str(c, p, z));
                break;
            }
            size_t at = (size_t)(h - p);
            jl_push(c, out.u.l, jv_str(c, p + at + sep->len, z - at - sep->len));
            z = at;
            splits++;
        }
    }
    jlist *l = out.u.l;
    for (size_t i = 0; i < l->n / 2; i++) {
        jv t = l->v[i];
        l->v[i] = l->v[l->n - 1 - i];
        l->v[l->n - 1 - i] = t;
    }
    return out;
}

/* ---------------------------------------------------------------- indexing and slicing */

/* byte offsets of code points in s (n+1 entries), for indexing non-ASCII strings */
static size_t *cp_offsets(jctx *c, const jstr *s, size_t *ncp)
{
    size_t n = ju_count(s->s, s->len);
    size_t *o = jx_alloc(c, (n + 1) * sizeof *o);
    size_t i = 0, k = 0;
    while (i < s->len) {
        o[k++] = i;
        ju_decode(s->s, s->len, &i);
    }
    o[k] = s->len;
    *ncp = n;
    jx_step(c, s->len / 16);
    return o;
}

static int64_t to_index(jctx *c, jv v, const char *what)
{
    if (v.t == JV_INT || v.t == JV_BOOL)
        return v.u.i;
    jx_fail(c, "%s indices must be integers or slices, not %s", what, jv_typename(v));
}

/* Python's slice.indices() */
static void slice_bounds(jctx *c, jv lo, jv hi, jv st, int64_t len, int64_t *start, int64_t *stop,
                         int64_t *step)
{
    *step = st.t == JV_NONE || st.t == JV_UNDEF ? 1 : to_index(c, st, "slice");
    if (*step == 0)
        jx_fail(c, "slice step cannot be zero");
    int64_t dflt_start = *step < 0 ? len - 1 : 0, dflt_stop = *step < 0 ? -1 : len;
    for (int k = 0; k < 2; k++) {
        jv v = k ? hi : lo;
        int64_t *out = k ? stop : start;
        if (v.t == JV_NONE || v.t == JV_UNDEF) {
            *out = k ? dflt_stop : dflt_start;
            continue;
        }
        int64_t x = to_index(c, v, "slice");
        if (x < 0) {
            x += len;
            if (x < 0)
                x = *step < 0 ? -1 : 0;
        } else if (x >= len)
            x = *step < 0 ? len - 1 : len;
        *out = x;
    }
}

static jv do_slice(jctx *c, jv obj, jv lo, jv hi, jv st)
{
    int64_t start, stop, step;
    if (obj.t == JV_LIST && obj.u.l->tuple <= JL_TUPLE) {
        jlist *l = obj.u.l;
        slice_bounds(c, lo, hi, st, (int64_t)l->n, &start, &stop, &step);
        jv out = jv_list(c, 0);
        out.u.l->tuple = l->tuple;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            jl_push(c, out.u.l, l->v[i]);
        jx_step(c, out.u.l->n / 16);
        return out;
    }
    if (obj.t == JV_STR) {
        size_t ncp;
        size_t *off = cp_offsets(c, obj.u.s, &ncp);
        slice_bounds(c, lo, hi, st, (int64_t)ncp, &start, &stop, &step);
        if (step == 1)
            return start >= stop ? jv_str(c, "", 0)
                                 : jv_str(c, obj.u.s->s + off[start], off[stop] - off[start]);
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            jb_put(c, b, obj.u.s->s + off[i], off[i + 1] - off[i]);
        jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
        b->len = mark;
        return r;
    }
    if (obj.t == JV_UNDEF)
        undef_fail(c, obj);
    /* jinja2 slices with Python's own [] (not its getitem), so Python's TypeError stands */
    if (obj.t == JV_DICT)
        jx_fail(c, "unhashable type: 'slice'");
    jx_fail(c, "'%s' object is not subscriptable", jv_typename(obj));
}

static jv method_of(jctx *c, jv obj, const char *name);

static jv get_item(jctx *c, jv obj, jv key)
{
    switch (obj.t) {
    case JV_DICT:
    case JV_NS: {
        jv *v = jd_get(c, obj.u.d, key);
        if (v)
            return *v;
        break;
    }
    case JV_LIST:
        if ((key.t == JV_INT || key.t == JV_BOOL) && obj.u.l->tuple <= JL_TUPLE) {
            int64_t i = key.u.i, n = (int64_t)obj.u.l->n;
            if (i < 0)
                i += n;
            if (i >= 0 && i < n)
                return obj.u.l->v[i];
        }
        break;
    case JV_STR:
        if (key.t == JV_INT || key.t == JV_BOOL) {
            size_t ncp;
            size_t *off = cp_offsets(c, obj.u.s, &ncp);
            int64_t i = key.u.i;
            if (i < 0)
                i += (int64_t)ncp;
            if (i >= 0 && i < (int64_t)ncp)
                return jv_str(c, obj.u.s->s + off[i], off[i + 1] - off[i]);
        }
        break;
    case JV_UNDEF: undef_fail(c, obj);
    default: break;
    }
    if (key.t == JV_STR) {
        jv m = method_of(c, obj, cs(key));
        if (m.t != JV_UNDEF)
            return m;
        return no_attr(c, obj, cs(key));
    }
    size_t mark = c->tmp.len;
    jv_write_repr(c, &c->tmp, key);
    jv r = jv_undef(hintf(c, "%s has no element %s", obj_repr(obj), c->tmp.p + mark));
    c->tmp.len = mark;
    return r;
}

/* ---------------------------------------------------------------- methods */

#define METHODS(X)                                                                               \
    X(M_STRIP, "strip") X(M_LSTRIP, "lstrip") X(M_RSTRIP, "rstrip") X(M_SPLIT, "split")          \
    X(M_RSPLIT, "rsplit") X(M_STARTSWITH, "startswith") X(M_ENDSWITH, "endswith")                \
    X(M_UPPER, "upper") X(M_LOWER, "lower") X(M_REPLACE, "replace") X(M_TITLE, "title")          \
    X(M_CAPITALIZE, "capitalize") X(M_FIND, "find") X(M_RFIND, "rfind") X(M_COUNT, "count")      \
    X(M_JOIN, "join") X(M_SPLITLINES, "splitlines") X(M_ISDIGIT, "isdigit")                      \
    X(M_ISALPHA, "isalpha") X(M_ISSPACE, "isspace") X(M_ISUPPER, "isupper")                      \
    X(M_ISLOWER, "islower") X(M_ISALNUM, "isalnum") X(M_REMOVEPREFIX, "removeprefix")            \
    X(M_REMOVESUFFIX, "removesuffix") X(M_FORMAT, "format") X(M_INDEX, "index")                  \
    X(M_ITEMS, "items") X(M_KEYS, "keys") X(M_VALUES, "values") X(M_GET, "get")                  \
    X(M_CYCLE, "cycle")
enum {
#define X(id, name) id,
    METHODS(X)
#undef X
    M_COUNT_
};
static const char *const method_names[] = {
#define X(id, name) name,
    METHODS(X)
#undef X
};
_Static_assert(ARRAY_LEN(method_names) == M_COUNT_, "method table");

static int method_id(const char *name)
{
    for (int i = 0; i < M_COUNT_; i++)
        if (strcmp(method_names[i], name) == 0)
            return i;
    return -1;
}

static jv method_of(jctx *c, jv obj, const char *name)
{
    int id = method_id(name);
    int ok = 0;
    if (obj.t == JV_STR)
        ok = id >= M_STRIP && id <= M_INDEX;
    else if (obj.t == JV_DICT)
        ok = id >= M_ITEMS && id <= M_GET;
    else if (obj.t == JV_LIST)
        ok = id == M_INDEX || id == M_COUNT;
    if (!ok) {
        static const char *const unsafe[] = {"append", "extend", "insert", "pop", "remove",
                                             "clear", "update", "setdefault", "popitem", "sort",
                                             "reverse", "add", "discard"};
        if (obj.t == JV_LIST || obj.t == JV_DICT)
            for (size_t i = 0; i < ARRAY_LEN(unsafe); i++)
                if (strcmp(name, unsafe[i]) == 0)
                    jx_fail(c, "access to attribute '%s' of '%s' object is unsafe.", name,
                            jv_typename(obj));
        return jv_undef(NULL);
    }
    jmethod *m = jx_alloc(c, sizeof *m);
    m->self = obj;
    m->id = id;
    return (jv){.t = JV_METHOD, .u.p = m};
}

static jv *argp(jargs *a, int pos, const char *name)
{
    for (int i = 0; i < a->nkw; i++)
        if (strcmp(a->kwn[i], name) == 0)
            return &a->kwv[i];
    return pos >= 0 && pos < a->npos ? &a->pos[pos] : NULL;
}

static jv arg(jargs *a, int pos, const char *name, jv dflt)
{
    jv *p = argp(a, pos, name);
    return p ? *p : dflt;
}

static jstr *arg_str(jctx *c, jargs *a, int pos, const char *name)
{
    jv *p = argp(a, pos, name);
    if (!p || p->t == JV_NONE)
        return NULL;
    if (p->t != JV_STR)
        jx_fail(c, "%s: argument '%s' must be str, not %s", a->what, name, jv_typename(*p));
    return p->u.s;
}

static int64_t arg_int(jctx *c, jargs *a, int pos, const char *name, int64_t dflt)
{
    jv *p = argp(a, pos, name);
    if (!p || p->t == JV_NONE)
        return dflt;
    if (p->t != JV_INT && p->t != JV_BOOL)
        jx_fail(c, "%s: argument '%s' must be an integer, not %s", a->what, name, jv_typename(*p));
    return p->u.i;
}

static jv str_format(jctx *c, jv fmt, jargs *a);
static jv binop(jctx *c, int op, jv a, jv b);
static jv html_escape(jctx *c, jv v);

static int prefix_match(jctx *c, jv s, jv pre, int end)
{
    if (pre.t == JV_LIST && pre.u.l->tuple == JL_TUPLE) {
        for (size_t i = 0; i < pre.u.l->n; i++)
            if (prefix_match(c, s, pre.u.l->v[i], end))
                return 1;
        return 0;
    }
    if (pre.t != JV_STR)
        jx_fail(c, "%s arg must be str or a tuple of str, not %s", end ? "endswith" : "startswith",
                jv_typename(pre));
    size_t n = pre.u.s->len;
    if (n > s.u.s->len)
        return 0;
    return memcmp(s.u.s->s + (end ? s.u.s->len - n : 0), pre.u.s->s, n) == 0;
}

static int all_cp(jv s, int (*pred)(int))
{
    size_t i = 0;
    if (!s.u.s->len)
        return 0;
    while (i < s.u.s->len)
        if (!pred(ju_decode(s.u.s->s, s.u.s->len, &i)))
            return 0;
    return 1;
}
static int cp_digit(int cp) { return utf8proc_category(cp) == UTF8PROC_CATEGORY_ND || (cp >= '0' && cp <= '9'); }
static int cp_alpha(int cp)
{
    utf8proc_category_t k = utf8proc_category(cp);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
static int cp_alnum(int cp) { return cp_alpha(cp) || cp_digit(cp); }

static jv call_loop_cycle(jctx *c, jloop *lp, jargs *a)
{
    if (a->npos == 0)
        jx_fail(c, "no items for cycling given");
    return a->pos[lp->i % (size_t)a->npos];
}

static int jv_safe(jv v) { return v.t == JV_STR && v.safe; }
static jv as_safe(jv v, int safe)
{
    v.safe = v.t == JV_STR && safe;
    return v;
}

static jv call_method(jctx *c, jmethod *m, jargs *a)
{
    jv s = m->self;
    a->what = method_names[m->id];
    if (jv_safe(s) &&
        (m->id == M_STRIP || m->id == M_LSTRIP || m->id == M_RSTRIP || m->id == M_UPPER ||
         m->id == M_LOWER || m->id == M_TITLE || m->id == M_CAPITALIZE || m->id == M_REPLACE ||
         m->id == M_REMOVEPREFIX || m->id == M_REMOVESUFFIX)) {
        /* markupsafe 3's Markup methods return a Markup; replace() escapes its `new` */
        if (m->id == M_REPLACE && a->npos > 1 && a->pos[1].t == JV_STR)
            a->pos[1] = html_escape(c, a->pos[1]);
        jmethod plain = {as_safe(s, 0), m->id};
        return as_safe(call_method(c, &plain, a), 1);
    }
    switch (m->id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP:
        return strip(c, s, arg_str(c, a, 0, "chars"), m->id == M_STRIP ? 3 : m->id == M_LSTRIP ? 1 : 2);
    case M_SPLIT:
    case M_RSPLIT:
        return str_split(c, s, arg_str(c, a, 0, "sep"), arg_int(c, a, 1, "maxsplit", -1), m->id == M_RSPLIT);
    case M_STARTSWITH:
    case M_ENDSWITH: {
        jv *p = argp(a, 0, "prefix");
        if (!p)
            jx_fail(c, "%s() takes at least 1 argument (0 given)", a->what);
        return jv_bool(prefix_match(c, s, *p, m->id == M_ENDSWITH));
    }
    case M_UPPER: return map_case(c, s, 1);
    case M_LOWER: return map_case(c, s, 0);
    case M_TITLE: return title_case(c, s, 1);
    case M_CAPITALIZE: return capitalize(c, s);
    case M_REPLACE: {
        jstr *o = arg_str(c, a, 0, "old"), *nw = arg_str(c, a, 1, "new");
        if (!o || !nw)
            jx_fail(c, "replace() takes two str arguments");
        return str_replace(c, s, o, nw, arg_int(c, a, 2, "count", -1));
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX:
    case M_COUNT: {
        if (s.t == JV_LIST) {
            jv *x = argp(a, 0, "value");
            if (!x)
                jx_fail(c, "%s() takes exactly one argument", a->what);
            int64_t k = 0;
            for (size_t i = 0; i < s.u.l->n; i++)
                if (jv_equal(c, s.u.l->v[i], *x)) {
                    if (m->id == M_INDEX)
                        return jv_int((int64_t)i);
                    k++;
                }
            if (m->id == M_INDEX)
                jx_fail(c, "list.index(x): x not in list");
            return jv_int(k);
        }
        jstr *sub = arg_str(c, a, 0, "sub");
        if (!sub)
            jx_fail(c, "%s() takes a str argument", a->what);
        const char *p = s.u.s->s;
        size_t n = s.u.s->len;
        if (m->id == M_COUNT) {
            int64_t k = 0;
            if (!sub->len)
                return jv_int((int64_t)ju_count(p, n) + 1);
            for (const char *h = p; (h = find_sub(h, n - (size_t)(h - p), sub->s, sub->len)); h += sub->len)
                k++;
            return jv_int(k);
        }
        const char *h = NULL;
        if (m->id == M_RFIND) {
            if (sub->len <= n)
                for (size_t k = n - sub->len + 1; k-- > 0;)
                    if (memcmp(p + k, sub->s, sub->len) == 0) {
                        h = p + k;
                        break;
                    }
        } else
            h = find_sub(p, n, sub->s, sub->len);
        if (!h && m->id == M_INDEX)
            jx_fail(c, "substring not found");
        return jv_int(h ? (int64_t)ju_count(p, (size_t)(h - p)) : -1);
    }
    case M_JOIN: {
        jv *it = argp(a, 0, "iterable");
        if (!it)
            jx_fail(c, "join() takes exactly one argument");
        jlist *l = iter_list(c, *it);
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        for (size_t i = 0; i < l->n; i++) {
            if (l->v[i].t != JV_STR)
                jx_fail(c, "sequence item %zu: expected str instance, %s found", i, jv_typename(l->v[i]));
            if (i)
                jb_put(c, b, s.u.s->s, s.u.s->len);
            jb_put(c, b, l->v[i].u.s->s, l->v[i].u.s->len);
        }
        jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
        b->len = mark;
        return r;
    }
    case M_SPLITLINES: {
        jv out = jv_list(c, 0);
        const char *p = s.u.s->s;
        size_t n = s.u.s->len, i = 0, st = 0;
        while (i < n) {
            size_t j = i;
            int cp = ju_decode(p, n, &j);
            int nl = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C ||
                     cp == 0x1D || cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
            if (nl) {
                jl_push(c, out.u.l, jv_str(c, p + st, i - st));
                if (cp == '\r' && j < n && p[j] == '\n')
                    j++;
                st = j;
            }
            i = j;
        }
        if (st < n)
            jl_push(c, out.u.l, jv_str(c, p + st, n - st));
        return out;
    }
    case M_ISDIGIT: return jv_bool(all_cp(s, cp_digit));
    case M_ISALPHA: return jv_bool(all_cp(s, cp_alpha));
    case M_ISALNUM: return jv_bool(all_cp(s, cp_alnum));
    case M_ISSPACE: return jv_bool(all_cp(s, ju_isspace));
    case M_ISUPPER:
    case M_ISLOWER: {
        int cased = 0;
        size_t i = 0;
        while (i < s.u.s->len) {
            int cp = ju_decode(s.u.s->s, s.u.s->len, &i);
            utf8proc_category_t k = utf8proc_category(cp);
            if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT) {
                if (m->id == M_ISLOWER)
                    return jv_bool(0);
                cased = 1;
            } else if (k == UTF8PROC_CATEGORY_LL) {
                if (m->id == M_ISUPPER)
                    return jv_bool(0);
                cased = 1;
            }
        }
        return jv_bool(cased);
    }
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: {
        jstr *x = arg_str(c, a, 0, "fix");
        if (!x)
            jx_fail(c, "%s() takes a str argument", a->what);
        int end = m->id == M_REMOVESUFFIX;
        if (!prefix_match(c, s, jv_strv(x), end))
            return s;
        return jv_str(c, s.u.s->s + (end ? 0 : x->len), s.u.s->len - x->len);
    }
    case M_FORMAT: return str_format(c, s, a);
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        jv out = jv_list(c, s.u.d->n);
        out.u.l->tuple = m->id == M_KEYS ? JL_KEYS : m->id == M_VALUES ? JL_VALUES : JL_ITEMS;
        for (size_t i = 0; i < s.u.d->n; i++)
            jl_push(c, out.u.l, m->id == M_KEYS ? s.u.d->k[i] : m->id == M_VALUES ? s.u.d->v[i]
                                : tuple2(c, s.u.d->k[i], s.u.d->v[i]));
        return out;
    }
    case M_GET: {
        jv *k = argp(a, 0, "key");
        if (!k)
            jx_fail(c, "get expected at least 1 argument, got 0");
        jv *v = jd_get(c, s.u.d, *k);
        return v ? *v : arg(a, 1, "default", jv_none());
    }
    case M_CYCLE: return call_loop_cycle(c, s.u.p, a);
    }
    jx_fail(c, "internal: method %d", m->id);
}

/* "{}".format(...) with {} / {0} / {name} fields and no format specs */
static jv str_format(jctx *c, jv fmt, jargs *a)
{
    jbuf *b = &c->tmp;
    size_t mark = b->len;
    const char *p = fmt.u.s->s;
    size_t n = fmt.u.s->len;
    int autonum = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '{' && i + 1 < n && p[i + 1] == '{') {
            jb_putc(c, b, '{');
            i++;
        } else if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') {
            jb_putc(c, b, '}');
            i++;
        } else if (p[i] == '{') {
            const char *e = memchr(p + i, '}', n - i);
            if (!e)
                jx_fail(c, "Single '{' encountered in format string");
            size_t fl = (size_t)(e - (p + i + 1));
            char field[64];
            if (fl >= sizeof field || memchr(p + i + 1, ':', fl) || memchr(p + i + 1, '!', fl))
                jx_fail(c, "unsupported str.format field '{%.*s}'", (int)(fl > 40 ? 40 : fl), p + i + 1);
            memcpy(field, p + i + 1, fl);
            field[fl] = 0;
            jv v;
            if (fl == 0 || (field[0] >= '0' && field[0] <= '9')) {
                int idx = fl == 0 ? autonum++ : atoi(field);
                if (idx >= a->npos)
                    jx_fail(c, "Replacement index %d out of range for positional args tuple", idx);
                v = a->pos[idx];
            } else {
                jv *kv = NULL;
                for (int k = 0; k < a->nkw; k++)
                    if (strcmp(a->kwn[k], field) == 0)
                        kv = &a->kwv[k];
                if (!kv)
                    jx_fail(c, "'%s'", field);
                v = *kv;
            }
            jv_write_str(c, b, v);
            i += fl + 1;
        } else
            jb_putc(c, b, p[i]);
    }
    jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
    b->len = mark;
    return r;
}

/* ---------------------------------------------------------------- attributes */

static jv get_attr(jctx *c, jv obj, const char *name)
{
    switch (obj.t) {
    case JV_UNDEF: undef_fail(c, obj);
    case JV_DICT: {
        jv m = method_of(c, obj, name);
        if (m.t != JV_UNDEF)
            return m;
        jv *v = jd_gets(c, obj.u.d, name);
        return v ? *v : no_attr(c, obj, name);
    }
    case JV_NS: {
        jv *v = jd_gets(c, obj.u.d, name);
        return v ? *v : no_attr(c, obj, name);
    }
    case JV_LOOP: {
        jloop *lp = obj.u.p;
        int64_t i = (int64_t)lp->i, n = (int64_t)lp->items->n;
        if (!strcmp(name, "index"))
            return jv_int(i + 1);
        if (!strcmp(name, "index0"))
            return jv_int(i);
        if (!strcmp(name, "revindex"))
            return jv_int(n - i);
        if (!strcmp(name, "revindex0"))
            return jv_int(n - i - 1);
        if (!strcmp(name, "first"))
            return jv_bool(i == 0);
        if (!strcmp(name, "last"))
            return jv_bool(i == n - 1);
        if (!strcmp(name, "length"))
            return jv_int(n);
        if (!strcmp(name, "depth"))
            return jv_int(1);
        if (!strcmp(name, "depth0"))
            return jv_int(0);
        if (!strcmp(name, "previtem"))
            return i > 0 ? lp->items->v[i - 1] : jv_undef(hintf(c, "there is no previous item"));
        if (!strcmp(name, "nextitem"))
            return i + 1 < n ? lp->items->v[i + 1] : jv_undef(hintf(c, "there is no next item"));
        if (!strcmp(name, "cycle")) {
            jmethod *m = jx_alloc(c, sizeof *m);
            m->self = obj;
            m->id = M_CYCLE;
            return (jv){.t = JV_METHOD, .u.p = m};
        }
        return no_attr(c, obj, name);
    }
    default: {
        jv m = method_of(c, obj, name);
        return m.t != JV_UNDEF ? m : no_attr(c, obj, name);
    }
    }
}

/* ---------------------------------------------------------------- arithmetic and comparison */

static _Noreturn void bad_operands(jctx *c, const char *op, jv a, jv b)
{
    if (a.t == JV_UNDEF)
        undef_fail(c, a);
    if (b.t == JV_UNDEF)
        undef_fail(c, b);
    if (!strcmp(op, "+") && ((a.t == JV_STR && !a.safe) || a.t == JV_LIST))
        jx_fail(c, "can only concatenate %s (not \"%s\") to %s", jv_typename(a), jv_typename(b),
                jv_typename(a));
    jx_fail(c, "unsupported operand type(s) for %s: '%s' and '%s'", op, jv_typename(a), jv_typename(b));
}

static int is_int(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }
static int is_number(jv v) { return is_int(v) || v.t == JV_FLOAT; }
static double as_f(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)v.u.i; }

static jv repeat(jctx *c, jv seq, int64_t k)
{
    if (k < 0)
        k = 0;
    if (seq.t == JV_STR) {
        if (seq.u.s->len && (uint64_t)k > (c->out_limit / seq.u.s->len) + 1)
            jx_fail(c, "string repetition too large");
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        for (int64_t i = 0; i < k; i++)
            jb_put(c, b, seq.u.s->s, seq.u.s->len);
        jx_step(c, (b->len - mark) / 64);
        jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
        b->len = mark;
        return r;
    }
    if (seq.u.l->n && (uint64_t)k > (c->mem_limit / 16 / seq.u.l->n) + 1)
        jx_fail(c, "list repetition too large");
    jv out = jv_list(c, 0);
    out.u.l->tuple = seq.u.l->tuple == JL_TUPLE ? JL_TUPLE : JL_LIST;
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++)
            jl_push(c, out.u.l, seq.u.l->v[j]);
    jx_step(c, out.u.l->n / 16);
    return out;
}

static jv percent_format(jctx *c, jv fmt, jv args);

static jv binop(jctx *c, int op, jv a, jv b)
{
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    int64_t r;
    if (op == JOP_CONCAT) {
        jv x = jv_to_str(c, a), y = jv_to_str(c, b);
        return jv_concat(c, x.u.s, y.u.s->s, y.u.s->len);
    }
    if (is_int(a) && is_int(b)) {
        int64_t x = a.u.i, y = b.u.i;
        switch (op) {
        case JOP_ADD:
            if (__builtin_add_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case JOP_SUB:
            if (__builtin_sub_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case JOP_MUL:
            if (__builtin_mul_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case JOP_DIV:
            if (y == 0)
                jx_fail(c, "division by zero");
            return jv_float((double)x / (double)y);
        case JOP_FLOORDIV:
        case JOP_MOD: {
            if (y == 0)
                jx_fail(c, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1)
                goto overflow;
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            return jv_int(op == JOP_MOD ? m : q);
        }
        case JOP_POW: {
            if (y < 0)
                return jv_float(pow((double)x, (double)y));
            int64_t acc = 1;
            for (int64_t i = 0; i < y; i++) {
                if (__builtin_mul_overflow(acc, x, &acc))
                    goto overflow;
                if (acc == 0 || acc == 1)
                    break;
            }
            return jv_int(acc);
        }
        }
    }
    if (is_number(a) && is_number(b)) {
        double x = as_f(a), y = as_f(b);
        switch (op) {
        case JOP_ADD: return jv_float(x + y);
        case JOP_SUB: return jv_float(x - y);
        case JOP_MUL: return jv_float(x * y);
        case JOP_DIV:
            if (y == 0)
                jx_fail(c, "float division by zero");
            return jv_float(x / y);
        case JOP_FLOORDIV:
        case JOP_MOD: {
            if (y == 0)
                jx_fail(c, "float modulo");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0)))
                m += y;
            return jv_float(op == JOP_MOD ? m : floor((x - m) / y + 0.5 * 0));
        }
        case JOP_POW: return jv_float(pow(x, y));
        }
    }
    if (op == JOP_ADD && a.t == JV_STR && b.t == JV_STR) {
        if (a.safe == b.safe)
            return as_safe(jv_concat(c, a.u.s, b.u.s->s, b.u.s->len), a.safe);
        /* Markup.__add__ / __radd__: the plain str operand is HTML-escaped */
        if (!a.safe)
            a = html_escape(c, a);
        else
            b = html_escape(c, b);
        return as_safe(jv_concat(c, a.u.s, b.u.s->s, b.u.s->len), 1);
    }
    if (op == JOP_ADD && a.t == JV_LIST && b.t == JV_LIST && a.u.l->tuple == b.u.l->tuple &&
        a.u.l->tuple <= JL_TUPLE) {
        jv out = jv_list(c, a.u.l->n + b.u.l->n);
        out.u.l->tuple = a.u.l->tuple;
        for (size_t i = 0; i < a.u.l->n; i++)
            jl_push(c, out.u.l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++)
            jl_push(c, out.u.l, b.u.l->v[i]);
        jx_step(c, out.u.l->n / 16);
        return out;
    }
    if (op == JOP_MUL && (a.t == JV_STR || a.t == JV_LIST) && is_int(b))
        return as_safe(repeat(c, a, b.u.i), jv_safe(a));
    if (op == JOP_MUL && (b.t == JV_STR || b.t == JV_LIST) && is_int(a))
        return as_safe(repeat(c, b, a.u.i), jv_safe(b));
    if (op == JOP_MOD && a.t == JV_STR)
        return percent_format(c, a, b);
    if (op == JOP_MUL && ((a.t == JV_STR || a.t == JV_LIST) || (b.t == JV_STR || b.t == JV_LIST)) &&
        a.t != JV_UNDEF && b.t != JV_UNDEF)
        jx_fail(c, "can't multiply sequence by non-int of type '%s'",
                jv_typename(a.t == JV_STR || a.t == JV_LIST ? b : a));
    bad_operands(c, names[op], a, b);
overflow:
    jx_fail(c, "integer overflow in '%s' (kiln's integers are 64-bit)", names[op]);
}

/* "%s ... %d" % args: s, r, d, i, f (with precision), %% */
static jv percent_format(jctx *c, jv fmt, jv args)
{
    jbuf *b = &c->tmp;
    size_t mark = b->len;
    jlist one = {.n = 1, .cap = 1, .tuple = JL_TUPLE, .v = &args};
    jlist *l = args.t == JV_LIST && args.u.l->tuple == JL_TUPLE ? args.u.l : &one;
    size_t ai = 0;
    const char *p = fmt.u.s->s;
    size_t n = fmt.u.s->len;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            jb_putc(c, b, p[i]);
            continue;
        }
        if (++i >= n)
            jx_fail(c, "incomplete format");
        int prec = -1;
        if (p[i] == '.') {
            prec = 0;
            for (i++; i < n && p[i] >= '0' && p[i] <= '9' && prec < 100; i++)
                prec = prec * 10 + (p[i] - '0');
        }
        if (i >= n)
            jx_fail(c, "incomplete format");
        char k = p[i];
        if (k == '%') {
            jb_putc(c, b, '%');
            continue;
        }
        if (ai >= l->n)
            jx_fail(c, "not enough arguments for format string");
        jv v = l->v[ai++];
        char t[64];
        if (k == 's')
            jv_write_str(c, b, v);
        else if (k == 'r')
            jv_write_repr(c, b, v);
        else if ((k == 'd' || k == 'i') && is_number(v)) {
            snprintf(t, sizeof t, "%lld", (long long)(v.t == JV_FLOAT ? (int64_t)v.u.f : v.u.i));
            jb_puts(c, b, t);
        } else if (k == 'f' && is_number(v)) {
            snprintf(t, sizeof t, "%.*f", prec < 0 ? 6 : prec, as_f(v));
            jb_puts(c, b, t);
        } else
            jx_fail(c, "unsupported format character '%c' for %s", k, jv_typename(v));
    }
    if (ai < l->n)
        jx_fail(c, "not all arguments converted during string formatting");
    jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
    b->len = mark;
    return r;
}

/* Python's a < b (-1, 0, 1), failing as Python does on unorderable types */
static int compare(jctx *c, jv a, jv b, const char *op)
{
    if (is_number(a) && is_number(b)) {
        if (is_int(a) && is_int(b))
            return (a.u.i > b.u.i) - (a.u.i < b.u.i);
        double x = as_f(a), y = as_f(b);
        return (x > y) - (x < y);
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int r = memcmp(a.u.s->s, b.u.s->s, n);
        if (r)
            return r < 0 ? -1 : 1;
        return (a.u.s->len > b.u.s->len) - (a.u.s->len < b.u.s->len);
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++)
            if (!jv_equal(c, a.u.l->v[i], b.u.l->v[i]))
                return compare(c, a.u.l->v[i], b.u.l->v[i], op);
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    if (a.t == JV_UNDEF)
        undef_fail(c, a);
    if (b.t == JV_UNDEF)
        undef_fail(c, b);
    jx_fail(c, "'%s' not supported between instances of '%s' and '%s'", op, jv_typename(a), jv_typename(b));
}

static int contains(jctx *c, jv hay, jv x)
{
    switch (hay.t) {
    case JV_STR:
        if (x.t != JV_STR)
            jx_fail(c, "'in <string>' requires string as left operand, not %s", jv_typename(x));
        jx_step(c, hay.u.s->len / 256);
        return find_sub(hay.u.s->s, hay.u.s->len, x.u.s->s, x.u.s->len) != NULL;
    case JV_LIST:
        jx_step(c, hay.u.l->n / 16);
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_equal(c, hay.u.l->v[i], x))
                return 1;
        return 0;
    case JV_DICT: return jd_get(c, hay.u.d, x) != NULL;
    case JV_UNDEF: return 0;
    default: jx_fail(c, "argument of type '%s' is not iterable", jv_typename(hay));
    }
}

static int cmp_op(jctx *c, int op, jv a, jv b)
{
    switch (op) {
    case JOP_EQ: return jv_equal(c, a, b);
    case JOP_NE: return !jv_equal(c, a, b);
    case JOP_LT: return compare(c, a, b, "<") < 0;
    case JOP_LE: return compare(c, a, b, "<=") <= 0;
    case JOP_GT: return compare(c, a, b, ">") > 0;
    case JOP_GE: return compare(c, a, b, ">=") >= 0;
    case JOP_IN: return contains(c, b, a);
    case JOP_NOTIN: return !contains(c, b, a);
    }
    return 0;
}

/* ---------------------------------------------------------------- tests */

#define TESTS(X)                                                                                 \
    X(T_DEFINED, "defined") X(T_UNDEFINED, "undefined") X(T_NONE, "none") X(T_STRING, "string")  \
    X(T_MAPPING, "mapping") X(T_ITERABLE, "iterable") X(T_SEQUENCE, "sequence")                  \
    X(T_NUMBER, "number") X(T_INTEGER, "integer") X(T_FLOAT, "float") X(T_BOOLEAN, "boolean")    \
    X(T_TRUE, "true") X(T_FALSE, "false") X(T_CALLABLE, "callable") X(T_EQ, "equalto")           \
    X(T_EQ2, "eq") X(T_EQ3, "==") X(T_NE, "ne") X(T_NE2, "!=") X(T_LT, "lt") X(T_LT2, "<")       \
    X(T_LT3, "lessthan") X(T_LE, "le") X(T_LE2, "<=") X(T_GT, "gt") X(T_GT2, ">")                \
    X(T_GT3, "greaterthan") X(T_GE, "ge") X(T_GE2, ">=") X(T_IN, "in") X(T_ODD, "odd")           \
    X(T_EVEN, "even") X(T_DIVISIBLEBY, "divisibleby") X(T_SAMEAS, "sameas") X(T_LOWER, "lower")  \
    X(T_UPPER, "upper") X(T_ESCAPED, "escaped")
enum {
#define X(id, name) id,
    TESTS(X)
#undef X
    T_COUNT_
};
static const char *const test_names[] = {
#define X(id, name) name,
    TESTS(X)
#undef X
};
_Static_assert(ARRAY_LEN(test_names) == T_COUNT_, "test table");
/* jinja2 builtins kiln leaves out */
static const char *const tests_missing[] = {"filter", "test"};

int jx_test_id(const char *name)
{
    for (int i = 0; i < T_COUNT_; i++)
        if (strcmp(test_names[i], name) == 0)
            return i;
    for (size_t i = 0; i < ARRAY_LEN(tests_missing); i++)
        if (strcmp(tests_missing[i], name) == 0)
            return -1;
    return -2;
}

static int run_test(jctx *c, int id, const char *name, jv v, jargs *a)
{
    jv x = a->npos ? a->pos[0] : jv_undef(NULL);
    if (id < 0)
        jx_fail(c, "unsupported test '%s'", name);
    int need_arg = id >= T_EQ && id <= T_IN;
    int no_arg = !need_arg && id != T_DIVISIBLEBY && id != T_SAMEAS;
    if (no_arg && (a->npos || a->nkw)) { /* jinja2's tests are Python functions of one argument */
        if (id == T_CALLABLE)
            jx_fail(c, "callable() takes exactly one argument (%d given)", 1 + a->npos + a->nkw);
        jx_fail(c, "test_%s() takes 1 positional argument but %d were given", name, 1 + a->npos);
    }
    if ((need_arg || id == T_DIVISIBLEBY || id == T_SAMEAS) && a->npos < 1)
        jx_fail(c, "test '%s' needs an argument", name);
    switch (id) {
    case T_DEFINED: return v.t != JV_UNDEF;
    case T_UNDEFINED: return v.t == JV_UNDEF;
    case T_NONE: return v.t == JV_NONE;
    case T_STRING: return v.t == JV_STR;
    case T_MAPPING: return v.t == JV_DICT;
    case T_ITERABLE: return v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF;
    case T_SEQUENCE: /* len() and __getitem__: not generators, not dict views */
        return v.t == JV_STR || (v.t == JV_LIST && v.u.l->tuple <= JL_TUPLE) || v.t == JV_DICT ||
               v.t == JV_UNDEF;
    case T_NUMBER: return is_number(v);
    case T_INTEGER: return v.t == JV_INT;
    case T_FLOAT: return v.t == JV_FLOAT;
    case T_BOOLEAN: return v.t == JV_BOOL;
    case T_TRUE: return v.t == JV_BOOL && v.u.i;
    case T_FALSE: return v.t == JV_BOOL && !v.u.i;
    case T_CALLABLE: return v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_METHOD;
    case T_EQ: case T_EQ2: case T_EQ3: return jv_equal(c, v, x);
    case T_NE: case T_NE2: return !jv_equal(c, v, x);
    case T_LT: case T_LT2: case T_LT3: return compare(c, v, x, "<") < 0;
    case T_LE: case T_LE2: return compare(c, v, x, "<=") <= 0;
    case T_GT: case T_GT2: case T_GT3: return compare(c, v, x, ">") > 0;
    case T_GE: case T_GE2: return compare(c, v, x, ">=") >= 0;
    case T_IN: return contains(c, x, v);
    case T_ODD: /* value % 2 == 1, with Python's errors for other types */
    case T_EVEN: return jv_equal(c, binop(c, JOP_MOD, v, jv_int(2)), jv_int(id == T_ODD));
    case T_DIVISIBLEBY: return jv_equal(c, binop(c, JOP_MOD, v, x), jv_int(0));
    case T_SAMEAS:
        if (v.t != x.t)
            return 0;
        if (v.t == JV_NONE || v.t == JV_UNDEF)
            return 1;
        if (v.t == JV_BOOL || v.t == JV_INT)
            return v.u.i == x.u.i;
        return v.u.p == x.u.p;
    case T_LOWER:
    case T_UPPER: {
        if (v.t != JV_STR)
            v = jv_to_str(c, v);
        jmethod m = {v, id == T_LOWER ? M_ISLOWER : M_ISUPPER};
        jargs none = {0};
        return jv_truthy(call_method(c, &m, &none));
    }
    case T_ESCAPED: return jv_safe(v);
    }
    return 0;
}

/* ---------------------------------------------------------------- filters */

#define FILTERS(X)                                                                               \
    X(F_TOJSON, "tojson") X(F_TRIM, "trim") X(F_UPPER, "upper") X(F_LOWER, "lower")              \
    X(F_TITLE, "title") X(F_CAPITALIZE, "capitalize") X(F_LENGTH, "length") X(F_COUNT, "count")  \
    X(F_DEFAULT, "default") X(F_D, "d") X(F_JOIN, "join") X(F_FIRST, "first") X(F_LAST, "last")  \
    X(F_REPLACE, "replace") X(F_STRING, "string") X(F_INT, "int") X(F_FLOAT, "float")            \
    X(F_LIST, "list") X(F_ITEMS, "items") X(F_SELECTATTR, "selectattr")                          \
    X(F_REJECTATTR, "rejectattr") X(F_SELECT, "select") X(F_REJECT, "reject") X(F_MAP, "map")    \
    X(F_SAFE, "safe") X(F_ABS, "abs") X(F_ROUND, "round") X(F_INDENT, "indent")                  \
    X(F_REVERSE, "reverse") X(F_SORT, "sort") X(F_UNIQUE, "unique") X(F_DICTSORT, "dictsort")    \
    X(F_SUM, "sum") X(F_MIN, "min") X(F_MAX, "max") X(F_ESCAPE, "escape") X(F_E, "e")            \
    X(F_FORCEESCAPE, "forceescape") X(F_WORDCOUNT, "wordcount") X(F_ATTR, "attr")                \
    X(F_BATCH, "batch") X(F_CENTER, "center") X(F_FORMAT, "format")
enum {
#define X(id, name) id,
    FILTERS(X)
#undef X
    F_COUNT_
};
static const char *const filter_names[] = {
#define X(id, name) name,
    FILTERS(X)
#undef X
};
_Static_assert(ARRAY_LEN(filter_names) == F_COUNT_, "filter table");
static const char *const filters_missing[] = {"filesizeformat", "groupby", "pprint", "random",
                                              "slice", "striptags", "truncate", "urlencode",
                                              "urlize", "wordwrap", "xmlattr"};

int jx_filter_id(const char *name)
{
    for (int i = 0; i < F_COUNT_; i++)
        if (strcmp(filter_names[i], name) == 0)
            return i;
    for (size_t i = 0; i < ARRAY_LEN(filters_missing); i++)
        if (strcmp(filters_missing[i], name) == 0)
            return -1;
    return -2;
}

/* attribute path "a.b.0" as jinja2's make_attrgetter: getitem per part, ints as indexes */
static jv attr_path(jctx *c, jv v, const jstr *path)
{
    const char *p = path->s;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        jv key;
        int digits = n > 0;
        for (size_t i = 0; i < n; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        key = digits && n < 18 ? jv_int(strtoll(p, NULL, 10)) : jv_str(c, p, n);
        if (v.t == JV_UNDEF)
            undef_fail(c, v);
        v = get_item(c, v, key);
        if (!dot)
            return v;
        p = dot + 1;
    }
}

static int sort_cmp_key(jctx *c, jv a, jv b, int case_sensitive)
{
    if (!case_sensitive && a.t == JV_STR && b.t == JV_STR) {
        a = map_case(c, a, 0);
        b = map_case(c, b, 0);
    }
    return compare(c, a, b, "<");
}

static void swap2(jv *items, jv *keys, size_t i, size_t j)
{
    jv t = items[i];
    items[i] = items[j];
    items[j] = t;
    t = keys[i];
    keys[i] = keys[j];
    keys[j] = t;
}

static void reverse2(jv *items, jv *keys, size_t n)
{
    for (size_t i = 0; i < n / 2; i++)
        swap2(items, keys, i, n - 1 - i);
}

#define ISLT(x, y) (compare(c, (x), (y), "<") < 0)

/* Python's sorted(): stable, and for up to 64 items the very comparisons CPython's timsort
 * makes (a run, then binary insertion), so a list that cannot be ordered fails with the same
 * pair of types in the message. Longer lists: a stable merge sort. */
void jx_sort(jctx *c, jv *items, jv *keys, size_t n, int reverse)
{
    if (n < 2)
        return;
    jx_step(c, n);
    if (reverse) /* as list.sort(reverse=True): reverse, sort, reverse, keeping stability */
        reverse2(items, keys, n);
    if (n <= 64) {
        size_t run = 2;
        if (ISLT(keys[1], keys[0])) {
            while (run < n && ISLT(keys[run], keys[run - 1]))
                run++;
            reverse2(items, keys, run);
        } else
            while (run < n && !ISLT(keys[run], keys[run - 1]))
                run++;
        for (size_t s = run; s < n; s++) {
            jv pi = items[s], pk = keys[s];
            size_t l = 0, r = s;
            do {
                size_t p = l + ((r - l) >> 1);
                if (ISLT(pk, keys[p]))
                    r = p;
                else
                    l = p + 1;
            } while (l < r);
            memmove(items + l + 1, items + l, (s - l) * sizeof(jv));
            memmove(keys + l + 1, keys + l, (s - l) * sizeof(jv));
            items[l] = pi;
            keys[l] = pk;
        }
    } else {
        jv *ti = jx_alloc(c, n * sizeof(jv)), *tk = jx_alloc(c, n * sizeof(jv));
        for (size_t w = 1; w < n; w *= 2) {
            jx_step(c, n / 16);
            for (size_t lo = 0; lo < n; lo += 2 * w) {
                size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
                size_t i = lo, j = mid, k = lo;
                while (i < mid || j < hi) {
                    int right = i >= mid || (j < hi && ISLT(keys[j], keys[i]));
                    size_t from = right ? j++ : i++;
                    ti[k] = items[from];
                    tk[k++] = keys[from];
                }
            }
            memcpy(items, ti, n * sizeof(jv));
            memcpy(keys, tk, n * sizeof(jv));
        }
    }
    if (reverse)
        reverse2(items, keys, n);
}
#undef ISLT

static jv apply_filter(jctx *c, int id, const char *name, jv v, jargs *a, frame *f);

/* markupsafe.escape(): a Markup is returned as it is, anything else is str()'d and escaped */
static jv html_escape(jctx *c, jv v)
{
    if (v.t == JV_STR && v.safe)
        return v;
    v = jv_to_str(c, v);
    jbuf *b = &c->tmp;
    size_t mark = b->len;
    for (size_t i = 0; i < v.u.s->len; i++) {
        char ch = v.u.s->s[i];
        switch (ch) {
        case '&': jb_puts(c, b, "&amp;"); break;
        case '<': jb_puts(c, b, "&lt;"); break;
        case '>': jb_puts(c, b, "&gt;"); break;
        case '"': jb_puts(c, b, "&#34;"); break;
        case '\'': jb_puts(c, b, "&#39;"); break;
        default: jb_putc(c, b, ch);
        }
    }
    jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
    b->len = mark;
    r.safe = 1;
    return r;
}

static jv select_items(jctx *c, jv seq, jargs *a, int by_attr, int keep, frame *f)
{
    /* jinja2 iterates only a true value: none|selectattr(...) is an empty generator */
    if (!jv_truthy(seq))
        return as_gen(jv_list(c, 0));
    jv *lazy = lazy_error(c, seq, NULL);
    if (lazy)
        return *lazy;
    jlist *l = iter_list(c, seq);
    jv out = jv_list(c, 0);
    int first_test = by_attr ? 1 : 0;
    jstr *attr = NULL;
    if (by_attr) {
        attr = arg_str(c, a, 0, "attribute");
        if (!attr)
            jx_fail(c, "%s needs an attribute name", a->what);
    }
    const char *tname = NULL;
    int tid = -3;
    if (a->npos > first_test) {
        if (a->pos[first_test].t != JV_STR)
            jx_fail(c, "%s: the test name must be a string", a->what);
        tname = cs(a->pos[first_test]);
        tid = jx_test_id(tname);
        if (tid == -2)
            jx_fail(c, "no test named '%s'", tname);
    }
    jargs ta = {0};
    if (a->npos > first_test + 1) {
        ta.pos = a->pos + first_test + 1;
        ta.npos = a->npos - first_test - 1;
    }
    for (size_t i = 0; i < l->n; i++) {
        jv x = by_attr ? attr_path(c, l->v[i], attr) : l->v[i];
        int ok = tid == -3 ? jv_truthy(x) : run_test(c, tid, tname, x, &ta);
        if (ok == keep)
            jl_push(c, out.u.l, l->v[i]);
        jx_step(c, 1);
    }
    return as_gen(out);
}

static jv to_int(jctx *c, jv v, jv dflt, int64_t base)
{
    switch (v.t) {
    case JV_INT:
    case JV_BOOL: return jv_int(v.u.i);
    case JV_FLOAT:
        if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18)
            return dflt;
        return jv_int((int64_t)v.u.f);
    case JV_STR: {
        jv t = strip(c, v, NULL, 3);
        char *end;
        const char *s = cs(t);
        if (!*s)
            return dflt;
        long long x = strtoll(s, &end, (int)base);
        if (*end == 0 && end != s)
            return jv_int(x);
        double d = strtod(s, &end);
        if (*end == 0 && end != s && isfinite(d) && fabs(d) < 9.2e18)
            return jv_int((int64_t)d);
        return dflt;
    }
    default: return dflt;
    }
}

static jv apply_filter(jctx *c, int id, const char *name, jv v, jargs *a, frame *f)
{
    a->what = name;
    if (id < 0)
        jx_fail(c, "unsupported filter '%s'", name);
    switch (id) {
    case F_TOJSON: {
        jjson_opt o = {0};
        o.ensure_ascii = jv_truthy(arg(a, 0, "ensure_ascii", jv_bool(0)));
        jv ind = arg(a, 1, "indent", jv_none());
        char spaces[64];
        if (is_int(ind)) {
            int64_t k = ind.u.i < 0 ? 0 : ind.u.i > 32 ? -1 : ind.u.i;
            if (k < 0)
                jx_fail(c, "tojson: indent %lld is too large (at most 32)", (long long)ind.u.i);
            memset(spaces, ' ', (size_t)k);
            spaces[k] = 0;
            o.indent = spaces;
        } else if (ind.t == JV_STR)
            o.indent = cs(ind);
        else if (ind.t != JV_NONE)
            jx_fail(c, "tojson: indent must be an integer or a string, not %s", jv_typename(ind));
        o.item_sep = o.indent ? "," : ", ";
        o.key_sep = ": ";
        jv sep = arg(a, 2, "separators", jv_none());
        if (sep.t == JV_LIST && sep.u.l->n == 2 && sep.u.l->v[0].t == JV_STR && sep.u.l->v[1].t == JV_STR) {
            o.item_sep = cs(sep.u.l->v[0]);
            o.key_sep = cs(sep.u.l->v[1]);
        } else if (sep.t != JV_NONE)
            jx_fail(c, "tojson: separators must be a pair of strings");
        o.sort_keys = jv_truthy(arg(a, 3, "sort_keys", jv_bool(0)));
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        jv_write_json(c, b, v, &o, 0);
        jx_step(c, (b->len - mark) / 64);
        jv r = jv_str(c, b->p + mark, b->len - mark);
        b->len = mark;
        return r;
    }
    /* these call the str's own method, which a Markup keeps a Markup */
    case F_TRIM:
        return as_safe(strip(c, jv_to_str(c, v), arg_str(c, a, 0, "chars"), 3), jv_safe(v));
    case F_UPPER: return as_safe(map_case(c, jv_to_str(c, v), 1), jv_safe(v));
    case F_LOWER: return as_safe(map_case(c, jv_to_str(c, v), 0), jv_safe(v));
    case F_TITLE: return title_case(c, jv_to_str(c, v), 0);
    case F_CAPITALIZE: return as_safe(capitalize(c, jv_to_str(c, v)), jv_safe(v));
    case F_LENGTH:
    case F_COUNT: return jv_int(length_of(c, v));
    case F_DEFAULT:
    case F_D: {
        jv d = arg(a, 0, "default_value", jv_str(c, "", 0));
        int boolean = jv_truthy(arg(a, 1, "boolean", jv_bool(0)));
        if (v.t == JV_UNDEF || (boolean && !jv_truthy(v)))
            return d;
        return v;
    }
    case F_JOIN: {
        jlist *l = iter_list(c, v);
        jv sep = arg(a, 0, "d", jv_str(c, "", 0));
        jstr *attr = arg_str(c, a, 1, "attribute");
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        sep = jv_to_str(c, sep);
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                jb_put(c, b, sep.u.s->s, sep.u.s->len);
            jv x = attr ? attr_path(c, l->v[i], attr) : l->v[i];
            jv_write_str(c, b, x);
        }
        jx_step(c, (b->len - mark) / 64);
        jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
        b->len = mark;
        return r;
    }
    case F_FIRST:
    case F_LAST: {
        if (id == F_LAST && v.t == JV_LIST && v.u.l->tuple == JL_GEN)
            jx_fail(c, "'generator' object is not reversible");
        jlist *l = iter_list(c, v);
        if (!l->n)
            return jv_undef(hintf(c, "No %s item, sequence was empty.", id == F_FIRST ? "first" : "last"));
        return l->v[id == F_FIRST ? 0 : l->n - 1];
    }
    case F_REPLACE: {
        jv o = jv_to_str(c, arg(a, 0, "old", jv_undef(NULL)));
        jv nw = jv_to_str(c, arg(a, 1, "new", jv_undef(NULL)));
        return str_replace(c, jv_to_str(c, v), o.u.s, nw.u.s, arg_int(c, a, 2, "count", -1));
    }
    case F_STRING: return jv_to_str(c, v); /* soft_str: a Markup stays one */
    case F_SAFE: return as_safe(jv_to_str(c, v), 1);
    case F_INT: {
        if (v.t == JV_UNDEF)
            undef_fail(c, v);
        jv dflt = arg(a, 0, "default", jv_int(0));
        int64_t base = arg_int(c, a, 1, "base", 10);
        if (base < 2 || base > 36)
            jx_fail(c, "int: base must be 2..36");
        return to_int(c, v, dflt, base);
    }
    case F_FLOAT: {
        if (v.t == JV_UNDEF)
            undef_fail(c, v);
        jv dflt = arg(a, 0, "default", jv_float(0.0));
        if (is_number(v))
            return jv_float(as_f(v));
        if (v.t == JV_STR) {
            jv t = strip(c, v, NULL, 3);
            char *end;
            double d = strtod(cs(t), &end);
            if (t.u.s->len && *end == 0)
                return jv_float(d);
        }
        return dflt;
    }
    case F_LIST: {
        jlist *l = iter_list(c, v);
        jv out = jv_list(c, l->n);
        for (size_t i = 0; i < l->n; i++)
            jl_push(c, out.u.l, l->v[i]);
        return out;
    }
    case F_ITEMS: {
        if (v.t == JV_UNDEF)
            return as_gen(jv_list(c, 0));
        if (v.t != JV_DICT)
            return *lazy_error(c, v, "Can only get item pairs from a mapping.");
        jmethod m = {v, M_ITEMS};
        jargs none = {0};
        return as_gen(call_method(c, &m, &none));
    }
    case F_SELECTATTR: return select_items(c, v, a, 1, 1, f);
    case F_REJECTATTR: return select_items(c, v, a, 1, 0, f);
    case F_SELECT: return select_items(c, v, a, 0, 1, f);
    case F_REJECT: return select_items(c, v, a, 0, 0, f);
    case F_MAP: {
        if (!jv_truthy(v)) /* as select: jinja2 maps only a true value */
            return as_gen(jv_list(c, 0));
        jv *lazy = lazy_error(c, v, NULL);
        if (lazy)
            return *lazy;
        jlist *l = iter_list(c, v);
        jv out = jv_list(c, l->n);
        jstr *attr = NULL;
        for (int i = 0; i < a->nkw; i++)
            if (!strcmp(a->kwn[i], "attribute")) {
                if (a->kwv[i].t != JV_STR)
                    jx_fail(c, "map: attribute must be a string");
                attr = a->kwv[i].u.s;
            }
        if (attr) {
            jv *dflt = argp(a, -1, "default");
            for (size_t i = 0; i < l->n; i++) {
                jv x = attr_path(c, l->v[i], attr);
                jl_push(c, out.u.l, x.t == JV_UNDEF && dflt ? *dflt : x);
            }
            return as_gen(out);
        }
        if (a->npos < 1 || a->pos[0].t != JV_STR)
            jx_fail(c, "map needs a filter name or attribute=");
        const char *fname = cs(a->pos[0]);
        int fid = jx_filter_id(fname);
        if (fid == -2)
            jx_fail(c, "no filter named '%s'", fname);
        for (size_t i = 0; i < l->n; i++) {
            jargs fa = {a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw, NULL};
            jl_push(c, out.u.l, apply_filter(c, fid, fname, l->v[i], &fa, f));
        }
        return as_gen(out);
    }
    case F_ABS:
        if (is_int(v)) {
            if (v.u.i == INT64_MIN)
                jx_fail(c, "integer overflow in abs");
            return jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
        }
        if (v.t == JV_FLOAT)
            return jv_float(fabs(v.u.f));
        jx_fail(c, "bad operand type for abs(): '%s'", jv_typename(v));
    case F_ROUND: {
        int64_t prec = arg_int(c, a, 0, "precision", 0);
        jstr *method = arg_str(c, a, 1, "method");
        if (!is_number(v))
            jx_fail(c, "type %s doesn't define __round__ method", jv_typename(v));
        double x = as_f(v), m = pow(10.0, (double)prec);
        const char *md = method ? method->s : "common";
        double r;
        if (!strcmp(md, "common") && prec >= 0 && prec <= 300 && isfinite(x)) {
            /* Python's round(): half-even on the exact binary value, which is what glibc's
             * %.*f does */
            char t[400];
            snprintf(t, sizeof t, "%.*f", (int)prec, x);
            r = strtod(t, NULL);
        } else if (!strcmp(md, "common"))
            r = nearbyint(x * m) / m;
        else if (!strcmp(md, "floor"))
            r = floor(x * m) / m;
        else if (!strcmp(md, "ceil"))
            r = ceil(x * m) / m;
        else
            jx_fail(c, "method must be common, ceil or floor");
        return jv_float(r);
    }
    case F_INDENT: {
        if (v.t != JV_STR) /* jinja2 does s += "\n", then s.splitlines() */
            jx_fail(c, v.t == JV_LIST ? "'%s' object has no attribute 'splitlines'"
                                      : "unsupported operand type(s) for +=: '%s' and 'str'",
                    jv_typename(v));
        jv s = v;
        jv w = arg(a, 0, "width", jv_int(4));
        jv ind = is_int(w) ? repeat(c, jv_str(c, " ", 1), w.u.i) : jv_to_str(c, w);
        int first = jv_truthy(arg(a, 1, "first", jv_bool(0)));
        int blank = jv_truthy(arg(a, 2, "blank", jv_bool(0)));
        jv lines = str_split(c, s, jstr_new(c, "\n", 1), -1, 0);
        jbuf *b = &c->tmp;
        size_t mark = b->len;
        jlist *l = lines.u.l;
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                jb_putc(c, b, '\n');
            jstr *ln = l->v[i].u.s;
            int do_ind = i == 0 ? first : (blank || ln->len);
            if (i == 0 && first && !blank && !ln->len)
                do_ind = 0;
            if (do_ind)
                jb_put(c, b, ind.u.s->s, ind.u.s->len);
            jb_put(c, b, ln->s, ln->len);
        }
        jv r = jv_str(c, b->p ? b->p + mark : "", b->len - mark);
        b->len = mark;
        return as_safe(r, jv_safe(s));
    }
    case F_REVERSE: {
        if (v.t == JV_STR) /* value[::-1]: a Markup stays one */
            return as_safe(do_slice(c, v, jv_none(), jv_none(), jv_int(-1)), jv_safe(v));
        /* reversed(x) is an iterator; a generator cannot be reversed, so jinja2 lists it */
        int was_gen = v.t == JV_LIST && v.u.l->tuple == JL_GEN;
        jlist *l = iter_list(c, v);
        jv out = jv_list(c, l->n);
        for (size_t i = l->n; i-- > 0;)
            jl_push(c, out.u.l, l->v[i]);
        return was_gen ? out : as_gen(out);
    }
    case F_SORT:
    case F_DICTSORT: {
        int reverse = jv_truthy(arg(a, id == F_SORT ? 0 : 2, "reverse", jv_bool(0)));
        int case_s = jv_truthy(arg(a, id == F_SORT ? 1 : 0, "case_sensitive", jv_bool(0)));
        jlist *l;
        jv by_value = jv_bool(0);
        if (id == F_DICTSORT) {
            if (v.t != JV_DICT)
                jx_fail(c, "'%s' object has no attribute 'items'", jv_typename(v));
            jmethod m = {v, M_ITEMS};
            jargs none = {0};
            l = call_method(c, &m, &none).u.l;
            l->tuple = JL_LIST;
            jstr *by = arg_str(c, a, 1, "by");
            if (by && strcmp(by->s, "key") && strcmp(by->s, "value"))
                jx_fail(c, "You can only sort by either \"key\" or \"value\"");
            by_value = jv_bool(by && !strcmp(by->s, "value"));
        } else {
            jlist *src = iter_list(c, v);
            l = jv_list(c, src->n).u.l;
            for (size_t i = 0; i < src->n; i++)
                jl_push(c, l, src->v[i]);
        }
        jstr *attr = id == F_SORT ? arg_str(c, a, 2, "attribute") : NULL;
        jv *keys = jx_alloc(c, l->n * sizeof(jv) + 1);
        for (size_t i = 0; i < l->n; i++) {
            keys[i] = id == F_DICTSORT ? l->v[i].u.l->v[by_value.u.i ? 1 : 0]
                    : attr ? attr_path(c, l->v[i], attr) : l->v[i];
            if (!case_s && keys[i].t == JV_STR) /* jinja2's ignore_case on the key */
                keys[i] = map_case(c, keys[i], 0);
        }
        jx_sort(c, l->v, keys, l->n, reverse);
        return (jv){.t = JV_LIST, .u.l = l};
    }
    case F_UNIQUE: {
        jv *lazy = lazy_error(c, v, NULL);
        if (lazy)
            return *lazy;
        jlist *l = iter_list(c, v);
        int case_s = jv_truthy(arg(a, 0, "case_sensitive", jv_bool(0)));
        jstr *attr = arg_str(c, a, 1, "attribute");
        jv out = jv_list(c, 0), seen = jv_list(c, 0);
        for (size_t i = 0; i < l->n; i++) {
            jv k = attr ? attr_path(c, l->v[i], attr) : l->v[i];
            if (!case_s && k.t == JV_STR)
                k = map_case(c, k, 0);
            if (!contains(c, seen, k)) {
                jl_push(c, seen.u.l, k);
                jl_push(c, out.u.l, l->v[i]);
            }
        }
        return as_gen(out);
    }
    case F_SUM: {
        jlist *l = iter_list(c, v);
        jstr *attr = arg_str(c, a, 0, "attribute");
        jv acc = arg(a, 1, "start", jv_int(0));
        for (size_t i = 0; i < l->n; i++)
            acc = binop(c, JOP_ADD, acc, attr ? attr_path(c, l->v[i], attr) : l->v[i]);
        return acc;
    }
    case F_MIN:
    case F_MAX: {
        jlist *l = iter_list(c, v);
        int case_s = jv_truthy(arg(a, 0, "case_sensitive", jv_bool(0)));
        jstr *attr = arg_str(c, a, 1, "attribute");
        if (!l->n)
            return jv_undef(hintf(c, "No aggregated item, sequence was empty."));
        size_t best = 0;
        jv bk = attr ? attr_path(c, l->v[0], attr) : l->v[0];
        for (size_t i = 1; i < l->n; i++) {
            jv k = attr ? attr_path(c, l->v[i], attr) : l->v[i];
            int r = sort_cmp_key(c, k, bk, case_s);
            if (id == F_MIN ? r < 0 : r > 0) {
                best = i;
                bk = k;
            }
        }
        return l->v[best];
    }
    case F_ESCAPE:
    case F_E: return html_escape(c, v);
    case F_FORCEESCAPE: /* escape(str(v)): even a Markup */
        v = jv_to_str(c, v);
        v.safe = 0;
        return html_escape(c, v);
    case F_WORDCOUNT: {
        /* jinja2: len(re.compile(r"\w+").findall(s)) */
        jv s = jv_to_str(c, v);
        int64_t k = 0;
        int in = 0;
        size_t i = 0;
        while (i < s.u.s->len) {
            int cp = ju_decode(s.u.s->s, s.u.s->len, &i);
            int w = cp_alnum(cp) || cp == '_';
            k += w && !in;
            in = w;
        }
        return jv_int(k);
    }
    case F_ATTR: {
        jstr *nm = arg_str(c, a, 0, "name");
        if (!nm)
            jx_fail(c, "attr needs a name");
        /* jinja2's attr: Python getattr only, never the dict key */
        if (v.t == JV_DICT) {
            jv m = method_of(c, v, nm->s);
            return m.t != JV_UNDEF ? m : no_attr(c, v, nm->s);
        }
        return get_attr(c, v, nm->s);
    }
    case F_BATCH: {
        jv *lazy = lazy_error(c, v, NULL);
        if (lazy)
            return *lazy;
        jlist *l = iter_list(c, v);
        int64_t k = arg_int(c, a, 0, "linecount", 0);
        jv *fill = argp(a, 1, "fill_with");
        if (k <= 0)
            jx_fail(c, "batch needs a positive size");
        jv out = jv_list(c, 0), cur = jv_list(c, 0);
        for (size_t i = 0; i < l->n; i++) {
            if ((int64_t)cur.u.l->n == k) {
                jl_push(c, out.u.l, cur);
                cur = jv_list(c, 0);
            }
            jl_push(c, cur.u.l, l->v[i]);
        }
        if (cur.u.l->n) {
            if (fill && fill->t != JV_NONE)
                while ((int64_t)cur.u.l->n < k)
                    jl_push(c, cur.u.l, *fill);
            jl_push(c, out.u.l, cur);
        }
        return as_gen(out);
    }
    case F_CENTER: {
        jv s = jv_to_str(c, v);
        int64_t w = arg_int(c, a, 0, "width", 80);
        int64_t n = (int64_t)ju_count(s.u.s->s, s.u.s->len);
        if (w <= n)
            return s;
        if (w > (int64_t)c->out_limit)
            jx_fail(c, "center: width too large");
        int64_t pad = w - n, left = pad / 2 + (pad & w & 1);
        jv l = repeat(c, jv_str(c, " ", 1), left), r = repeat(c, jv_str(c, " ", 1), pad - left);
        return binop(c, JOP_ADD, binop(c, JOP_ADD, l, s), r);
    }
    case F_FORMAT: {
        jv s = jv_to_str(c, v);
        if (a->nkw)
            jx_fail(c, "format: keyword arguments are not supported");
        jv t = jv_list(c, (size_t)a->npos);
        t.u.l->tuple = 1;
        for (int i = 0; i < a->npos; i++)
            jl_push(c, t.u.l, a->pos[i]);
        return percent_format(c, s, t);
    }
    }
    jx_fail(c, "internal: filter %d", id);
}

/* ---------------------------------------------------------------- globals and calls */

enum { G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_COUNT_ };
static const char *const global_names[] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};
_Static_assert(ARRAY_LEN(global_names) == G_COUNT_, "global table");

static jv call_macro(jctx *c, jmacro *m, jargs *a);

static jv dict_from_args(jctx *c, jargs *a, int ns)
{
    jv d = jv_dict(c, 0);
    if (a->npos > 1)
        jx_fail(c, "%s expected at most 1 positional argument, got %d", ns ? "namespace" : "dict", a->npos);
    if (a->npos == 1) {
        jv src = a->pos[0];
        if (src.t == JV_DICT || src.t == JV_NS) {
            for (size_t i = 0; i < src.u.d->n; i++)
                jd_set(c, d.u.d, src.u.d->k[i], src.u.d->v[i]);
        } else {
            jlist *l = iter_list(c, src);
            for (size_t i = 0; i < l->n; i++) {
                jv pr = l->v[i];
                if (pr.t != JV_LIST || pr.u.l->n != 2)
                    jx_fail(c, "dictionary update sequence element #%zu has the wrong length", i);
                jd_set(c, d.u.d, pr.u.l->v[0], pr.u.l->v[1]);
            }
        }
    }
    for (int i = 0; i < a->nkw; i++)
        jd_set(c, d.u.d, jv_cstr(c, a->kwn[i]), a->kwv[i]);
    if (ns) {
        for (size_t i = 0; i < d.u.d->n; i++)
            if (d.u.d->k[i].t == JV_STR && d.u.d->k[i].u.s->s[0] == '_') {
                size_t mark = c->tmp.len;
                jv_write_repr(c, &c->tmp, d.u.d->k[i]);
                jx_fail(c, "Chat templates cannot store underscore-prefixed attributes on a "
                           "namespace, but got %s. Please rename the attribute.", c->tmp.p + mark);
            }
        d.t = JV_NS;
    }
    return d;
}

static jv call_global(jctx *c, int id, jargs *a)
{
    switch (id) {
    case G_RANGE: {
        int64_t lo = 0, hi, step = 1;
        for (int i = 0; i < a->npos; i++)
            if (!is_int(a->pos[i]))
                jx_fail(c, "'%s' object cannot be interpreted as an integer", jv_typename(a->pos[i]));
        if (a->npos == 1)
            hi = a->pos[0].u.i;
        else if (a->npos == 2 || a->npos == 3) {
            lo = a->pos[0].u.i;
            hi = a->pos[1].u.i;
            if (a->npos == 3)
                step = a->pos[2].u.i;
        } else
            jx_fail(c, "range expected 1 to 3 arguments, got %d", a->npos);
        if (step == 0)
            jx_fail(c, "range() arg 3 must not be zero");
        int64_t n = step > 0 ? (hi > lo ? (hi - lo - 1) / step + 1 : 0)
                             : (lo > hi ? (lo - hi - 1) / -step + 1 : 0);
        if (n > 100000)
            jx_fail(c, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jv out = jv_list(c, (size_t)n);
        for (int64_t i = 0; i < n; i++)
            jl_push(c, out.u.l, jv_int(lo + i * step));
        jx_step(c, (uint64_t)n / 16);
        return out;
    }
    case G_NAMESPACE: return dict_from_args(c, a, 1);
    case G_DICT: return dict_from_args(c, a, 0);
    case G_RAISE: {
        jv *mp = argp(a, 0, "message");
        if (!mp)
            jx_fail(c, "_cached_compile_jinja_template.<locals>.raise_exception() missing 1 "
                       "required positional argument: 'message'");
        jv m = jv_to_str(c, *mp);
        c->raised = 1;
        jx_fail(c, "%s", cs(m));
    }
    case G_STRFTIME: {
        if (a->npos != 1 || a->pos[0].t != JV_STR)
            jx_fail(c, "strftime_now takes one format string");
        /* datetime.now() is naive: Python's %z and %Z give "", and %f the microseconds
         * (kiln's clock has whole seconds) */
        const jstr *in = a->pos[0].u.s;
        jbuf *fb = &c->tmp;
        size_t mark = fb->len;
        for (size_t i = 0; i < in->len; i++) {
            if (in->s[i] == '%' && i + 1 < in->len) {
                char k = in->s[i + 1];
                if (k == 'z' || k == 'Z' || k == 'f') {
                    jb_puts(c, fb, k == 'f' ? "000000" : "");
                    i++;
                    continue;
                }
                jb_putc(c, fb, '%');
                jb_putc(c, fb, k);
                i++;
                continue;
            }
            jb_putc(c, fb, in->s[i]);
        }
        jv fmt = jv_str(c, fb->p + mark, fb->len - mark);
        fb->len = mark;
        char out[1024];
        size_t n = strftime(out, sizeof out, cs(fmt), &c->now);
        if (n == 0 && fmt.u.s->len)
            jx_fail(c, "strftime_now: the format gives an empty or too long (over 1023 bytes) text");
        return jv_str(c, out, n);
    }
    }
    jx_fail(c, "internal: global %d", id);
}

static jv call_value(jctx *c, jv fn, jargs *a)
{
    switch (fn.t) {
    case JV_FUNC: return call_global(c, (int)fn.u.i, a);
    case JV_METHOD: return call_method(c, fn.u.p, a);
    case JV_MACRO: return call_macro(c, fn.u.p, a);
    case JV_UNDEF: undef_fail(c, fn);
    default: jx_fail(c, "'%s' object is not callable", jv_typename(fn));
    }
}

/* evaluates n's positional (kids) and keyword (kwn/kwv) arguments */
static void eval_args(jctx *c, const jnode *n, frame *f, jargs *a, int extra_first, jv first)
{
    a->npos = n->nkids + extra_first;
    a->pos = jx_alloc(c, (size_t)(a->npos + 1) * sizeof(jv));
    if (extra_first)
        a->pos[0] = first;
    for (int i = 0; i < n->nkids; i++)
        a->pos[i + extra_first] = eval(c, n->kids[i], f);
    a->nkw = n->nkw;
    a->kwn = n->kwn;
    a->kwv = jx_alloc(c, (size_t)(n->nkw + 1) * sizeof(jv));
    for (int i = 0; i < n->nkw; i++)
        a->kwv[i] = eval(c, n->kwv[i], f);
}

/* captures what body writes to the output and returns it as a string */
static jv capture(jctx *c, const jnode *body, frame *f)
{
    size_t mark = c->out.len;
    exec(c, body, f);
    jv r = jv_str(c, c->out.p ? c->out.p + mark : "", c->out.len - mark);
    c->out.len = mark;
    if (c->out.p)
        c->out.p[mark] = 0;
    return r;
}

static jv call_macro(jctx *c, jmacro *m, jargs *a)
{
    const jnode *d = m->def;
    if (++c->depth > c->depth_limit)
        jx_fail(c, "macro calls nested deeper than %d levels", c->depth_limit);
    frame *f = frame_new(c, m->closure);
    jv varargs = jv_list(c, 0), kwargs = jv_dict(c, 0);
    varargs.u.l->tuple = JL_TUPLE;
    for (int i = 0; i < a->npos; i++) {
        if (i < d->nkw)
            frame_set(c, f, d->kwn[i], a->pos[i]);
        else
            jl_push(c, varargs.u.l, a->pos[i]);
    }
    for (int i = 0; i < a->nkw; i++) {
        int k = 0;
        while (k < d->nkw && strcmp(d->kwn[k], a->kwn[i]))
            k++;
        if (k < d->nkw) {
            if (k < a->npos)
                jx_fail(c, "macro '%s' got multiple values for argument '%s'",
                        d->name ? d->name : "caller", a->kwn[i]);
            frame_set(c, f, a->kwn[i], a->kwv[i]);
        } else if (!strcmp(a->kwn[i], "caller") && d->kind == JN_MACRO)
            frame_set(c, f, "caller", a->kwv[i]);
        else
            jd_set(c, kwargs.u.d, jv_cstr(c, a->kwn[i]), a->kwv[i]);
    }
    for (int k = a->npos; k < d->nkw; k++) {
        int given = 0;
        for (int i = 0; i < f->n && !given; i++)
            given = strcmp(f->vars[i].name, d->kwn[k]) == 0;
        if (given)
            continue;
        jv v = d->kwv[k] ? eval(c, d->kwv[k], f)
                         : jv_undef(hintf(c, "parameter '%s' was not provided", d->kwn[k]));
        frame_set(c, f, d->kwn[k], v);
    }
    frame_set(c, f, "varargs", varargs);
    frame_set(c, f, "kwargs", kwargs);
    if (m->caller.t != JV_UNDEF)
        frame_set(c, f, "caller", m->caller);
    jv r = capture(c, d->b, f);
    c->brk = 0;
    c->depth--;
    return r;
}

/* ---------------------------------------------------------------- expressions */

static jv lookup(jctx *c, frame *f, const char *name)
{
    int found;
    jv v = frame_get(c, f, name, &found);
    if (found)
        return v;
    for (int i = 0; i < G_COUNT_; i++)
        if (!strcmp(global_names[i], name))
            return (jv){.t = JV_FUNC, .u.i = i};
    return jv_undef(hintf(c, "'%s' is undefined", name));
}

static jv eval(jctx *c, const jnode *n, frame *f)
{
    jx_step(c, 1);
    /* nested expressions count too, so the C stack is bounded by max_depth whatever mixes
     * of macro recursion and deep expressions a template makes */
    if (++c->depth > c->depth_limit)
        jx_fail(c, "expressions, blocks and macro calls nested deeper than %d levels", c->depth_limit);
    int saved_line = c->line;
    c->line = n->line;
    jv r;
    switch (n->kind) {
    case JN_CONST: r = n->val; break;
    case JN_NAME: r = lookup(c, f, n->name); break;
    case JN_ATTR: r = get_attr(c, eval(c, n->a, f), n->name); break;
    case JN_ITEM: {
        jv obj = eval(c, n->a, f);
        if (n->b->kind == JN_SLICE) {
            const jnode *s = n->b;
            jv lo = s->b ? eval(c, s->b, f) : jv_none(), hi = s->c ? eval(c, s->c, f) : jv_none();
            jv st = s->d ? eval(c, s->d, f) : jv_none();
            r = do_slice(c, obj, lo, hi, st);
        } else
            r = get_item(c, obj, eval(c, n->b, f));
        if (jv_safe(obj)) /* Markup.__getitem__ returns a Markup */
            r = as_safe(r, 1);
        break;
    }
    case JN_LIST:
    case JN_TUPLE:
        r = jv_list(c, (size_t)n->nkids);
        r.u.l->tuple = n->kind == JN_TUPLE;
        for (int i = 0; i < n->nkids; i++)
            jl_push(c, r.u.l, eval(c, n->kids[i], f));
        break;
    case JN_DICT:
        r = jv_dict(c, (size_t)n->nkids / 2);
        for (int i = 0; i + 1 < n->nkids; i += 2) {
            jv k = eval(c, n->kids[i], f);
            if (k.t == JV_LIST && k.u.l->tuple != JL_TUPLE)
                jx_fail(c, "unhashable type: '%s'", jv_typename(k));
            if (k.t == JV_DICT)
                jx_fail(c, "unhashable type: 'dict'");
            jd_set(c, r.u.d, k, eval(c, n->kids[i + 1], f));
        }
        break;
    case JN_NOT: r = jv_bool(!jv_truthy(eval(c, n->a, f))); break;
    case JN_NEG:
    case JN_POS: {
        jv x = eval(c, n->a, f);
        if (x.t == JV_UNDEF)
            undef_fail(c, x);
        if (!is_number(x))
            jx_fail(c, "bad operand type for unary %c: '%s'", n->kind == JN_NEG ? '-' : '+', jv_typename(x));
        if (n->kind == JN_POS)
            r = x.t == JV_BOOL ? jv_int(x.u.i) : x;
        else if (x.t == JV_FLOAT)
            r = jv_float(-x.u.f);
        else if (x.u.i == INT64_MIN)
            jx_fail(c, "integer overflow in unary '-'");
        else
            r = jv_int(-x.u.i);
        break;
    }
    case JN_BINOP: {
        jv a = eval(c, n->a, f);
        jv b = eval(c, n->b, f);
        r = binop(c, n->op, a, b);
        break;
    }
    case JN_COMPARE: {
        jv a = eval(c, n->kids[0], f);
        r = jv_bool(1);
        for (int i = 1; i < n->nkids; i++) {
            jv b = eval(c, n->kids[i], f);
            if (!cmp_op(c, n->ops[i - 1], a, b)) {
                r = jv_bool(0);
                break;
            }
            a = b;
        }
        break;
    }
    case JN_AND: {
        jv a = eval(c, n->a, f);
        r = jv_truthy(a) ? eval(c, n->b, f) : a;
        break;
    }
    case JN_OR: {
        jv a = eval(c, n->a, f);
        r = jv_truthy(a) ? a : eval(c, n->b, f);
        break;
    }
    case JN_COND:
        if (jv_truthy(eval(c, n->a, f)))
            r = eval(c, n->b, f);
        else
            r = n->c ? eval(c, n->c, f)
                     : jv_undef(hintf(c, "the inline if-expression on line %d evaluated to false "
                                         "and no else section was defined.", n->line));
        break;
    case JN_CALL: {
        jv fn = eval(c, n->a, f);
        jargs a = {0};
        eval_args(c, n, f, &a, 0, jv_none());
        r = call_value(c, fn, &a);
        break;
    }
    case JN_FILTER: {
        jv v = n->a ? eval(c, n->a, f) : c->pipe;
        jargs a = {0};
        eval_args(c, n, f, &a, 0, jv_none());
        c->line = n->line;
        r = apply_filter(c, n->op, n->name, v, &a, f);
        break;
    }
    case JN_TEST: {
        jv v = eval(c, n->a, f);
        jargs a = {0};
        eval_args(c, n, f, &a, 0, jv_none());
        c->line = n->line;
        r = jv_bool(run_test(c, n->op, n->name, v, &a));
        break;
    }
    default: jx_fail(c, "internal: node %d is not an expression", n->kind);
    }
    c->line = saved_line;
    c->depth--;
    return r;
}

/* ---------------------------------------------------------------- statements */

static void assign(jctx *c, const jnode *target, jv v, frame *f)
{
    if (target->kind == JN_NAME) {
        frame_set(c, f, target->name, v);
        return;
    }
    if (target->kind == JN_NSATTR) {
        jv ns = lookup(c, f, target->a->name);
        if (ns.t != JV_NS)
            jx_fail(c, "cannot assign attribute on non-namespace object");
        if (target->name[0] == '_')
            jx_fail(c, "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                       "but got '%s'. Please rename the attribute.", target->name);
        jd_set(c, ns.u.d, jv_cstr(c, target->name), v);
        return;
    }
    /* tuple unpacking */
    jlist *l = iter_list(c, v);
    if ((int)l->n != target->nkids) {
        if ((int)l->n > target->nkids)
            jx_fail(c, "too many values to unpack (expected %d)", target->nkids);
        jx_fail(c, "not enough values to unpack (expected %d, got %zu)", target->nkids, l->n);
    }
    for (int i = 0; i < target->nkids; i++)
        assign(c, target->kids[i], l->v[i], f);
}

static void exec_for(jctx *c, const jnode *n, frame *f)
{
    jlist *items = iter_list(c, eval(c, n->b, f));
    if (n->c) { /* for x in xs if cond: filtered before the loop, so loop.* counts what is kept */
        jlist *kept = jv_list(c, 0).u.l;
        frame *t = NULL;
        for (size_t i = 0; i < items->n; i++) {
            t = frame_fresh(c, t, f);
            assign(c, n->a, items->v[i], t);
            if (jv_truthy(eval(c, n->c, t)))
                jl_push(c, kept, items->v[i]);
        }
        items = kept;
    }
    if (items->n == 0) {
        if (n->nkids)
            exec(c, n->kids[0], f);
        return;
    }
    jloop *lp = jx_alloc(c, sizeof *lp);
    lp->items = items;
    jv loopv = {.t = JV_LOOP, .u.p = lp};
    frame *it = NULL;
    for (size_t i = 0; i < items->n; i++) {
        jx_step(c, 1);
        lp->i = i;
        it = frame_fresh(c, it, f);
        frame_set(c, it, "loop", loopv);
        assign(c, n->a, items->v[i], it);
        exec(c, n->d, it);
        if (c->brk == 1) {
            c->brk = 0;
            break;
        }
        c->brk = 0;
    }
}

static void exec(jctx *c, const jnode *n, frame *f)
{
    jx_step(c, 1);
    c->line = n->line;
    switch (n->kind) {
    case JN_BODY:
        for (int i = 0; i < n->nkids && !c->brk; i++)
            exec(c, n->kids[i], f);
        return;
    case JN_TEXT: jb_put(c, &c->out, n->name, n->len); return;
    case JN_EMIT: {
        jv v = eval(c, n->a, f);
        jv_write_str(c, &c->out, v);
        return;
    }
    case JN_IF:
        if (++c->depth > c->depth_limit)
            jx_fail(c, "blocks nested deeper than %d levels", c->depth_limit);
        if (jv_truthy(eval(c, n->a, f)))
            exec(c, n->b, f);
        else if (n->c)
            exec(c, n->c, f);
        c->depth--;
        return;
    case JN_FOR:
        if (++c->depth > c->depth_limit)
            jx_fail(c, "blocks nested deeper than %d levels", c->depth_limit);
        exec_for(c, n, f);
        c->depth--;
        return;
    case JN_SET: assign(c, n->a, eval(c, n->b, f), f); return;
    case JN_SETBLOCK: {
        jv v = capture(c, n->b, f);
        if (n->c) {
            jv saved = c->pipe;
            c->pipe = v;
            v = eval(c, n->c, f);
            c->pipe = saved;
        }
        assign(c, n->a, v, f);
        return;
    }
    case JN_MACRO: {
        jmacro *m = jx_alloc(c, sizeof *m);
        m->def = n;
        m->closure = f;
        m->caller = jv_undef(NULL);
        for (frame *k = f; k; k = k->up)
            k->captured = 1;
        frame_set(c, f, n->name, (jv){.t = JV_MACRO, .u.p = m});
        return;
    }
    case JN_CALLBLOCK: {
        jmacro *callr = jx_alloc(c, sizeof *callr);
        callr->def = n;
        callr->closure = f;
        callr->caller = jv_undef(NULL);
        for (frame *k = f; k; k = k->up)
            k->captured = 1;
        const jnode *call = n->a;
        jv fn = eval(c, call->a, f);
        jargs a = {0};
        eval_args(c, call, f, &a, 0, jv_none());
        if (fn.t == JV_MACRO) {
            jmacro with = *(jmacro *)fn.u.p;
            with.caller = (jv){.t = JV_MACRO, .u.p = callr};
            jv r = call_macro(c, &with, &a);
            jb_put(c, &c->out, r.u.s->s, r.u.s->len);
        } else if (fn.t == JV_UNDEF)
            undef_fail(c, fn);
        else
            jx_fail(c, "'%s' object is not callable", jv_typename(fn));
        return;
    }
    case JN_FILTERBLOCK: {
        jv v = capture(c, n->b, f);
        jv saved = c->pipe;
        c->pipe = v;
        jv r = eval(c, n->c, f);
        c->pipe = saved;
        jv_write_str(c, &c->out, r);
        return;
    }
    case JN_BREAK: c->brk = 1; return;
    case JN_CONTINUE: c->brk = 2; return;
    case JN_WITH: {
        frame *w = frame_new(c, f);
        for (int i = 0; i < n->nkw; i++)
            frame_set(c, w, n->kwn[i], eval(c, n->kwv[i], f));
        exec(c, n->b, w);
        return;
    }
    default: jx_fail(c, "internal: node %d is not a statement", n->kind);
    }
}

void jx_render(jctx *c, const jnode *root, jv vars)
{
    frame *top = frame_new(c, NULL);
    /* the template's variables: a frame below the top one, so a top-level set shadows them */
    frame *ctxf = frame_new(c, NULL);
    ctxf->ctx = vars.u.d;
    top->up = ctxf;
    exec(c, root, top);
}
