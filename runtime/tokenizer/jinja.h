/* jinja — the internals of the chat-template engine (chat_template.h is the public face).
 *
 * Three parts, one file each:
 *   jinja_value.c  the value model (a mirror of the Python objects jinja2 renders: None, bool, int,
 *                  float, str, list/tuple, dict in insertion order), the per-render arena, and
 *                  Python's str()/repr() and json.dumps() text for them, byte for byte;
 *   jinja_parse.c  the lexer (jinja2's rules as transformers configures them: trim_blocks,
 *                  lstrip_blocks, no trailing newline kept) and the parser into an AST;
 *   jinja_eval.c   the interpreter: statements, expressions, filters, tests, methods, globals.
 *
 * A parsed template (the AST and its constant strings) is read-only while it renders, so one
 * template may render from many threads at once. Everything a render creates lives in that render's
 * arena; errors unwind with longjmp to ct_render, which frees the arena — no value is ever freed
 * one by one, so nothing leaks on the error path.
 */
#ifndef KILN_JINJA_H
#define KILN_JINJA_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---------------------------------------------------------------- values */

typedef enum {
    JV_UNDEF, /* jinja2's Undefined: prints "", falsy, iterates empty; u.s is the hint or NULL */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,   /* list or tuple (jlist.tuple) */
    JV_DICT,
    JV_NS,     /* namespace(): a dict whose attributes can be assigned */
    JV_MACRO,  /* u.p: jmacro */
    JV_FUNC,   /* a global function: u.i is its id (jinja_eval.c) */
    JV_METHOD, /* a bound method of a str/list/dict: u.p: jmethod */
    JV_LOOP,   /* the `loop` object of a for: u.p: jloop */
} jv_type;

typedef struct jstr {
    size_t len;
    char *s;                 /* NUL-terminated UTF-8: right after the header, or in `own` */
    struct jarena_blk *own;  /* a long string's own arena block, which appends can extend */
} jstr;

typedef struct jv {
    jv_type t;
    unsigned char safe; /* STR: a markupsafe.Markup (`|safe`, `|escape`): `+` escapes a plain str */
    union {
        int64_t i; /* INT, BOOL (0/1), FUNC id */
        double f;
        jstr *s;   /* STR; UNDEF: the hint (may be NULL) */
        struct jlist *l;
        struct jdict *d; /* DICT, NS */
        void *p;
    } u;
} jv;

typedef struct jlist {
    size_t n, cap;
    int tuple;    /* JL_LIST, JL_TUPLE, a dict view items()/keys()/values() returned, or a
                   * generator (what map, select, unique... return in jinja2) */
    int consumed; /* a generator that has been iterated: it yields nothing more */
    jstr *poison; /* a generator that fails with this message when it runs */
    jv *v;
} jlist;
enum { JL_LIST, JL_TUPLE, JL_ITEMS, JL_KEYS, JL_VALUES, JL_GEN };

typedef struct jdict {
    size_t n, cap;
    jv *k, *v; /* insertion order */
} jdict;

/* ---------------------------------------------------------------- arena and render context */

typedef struct jarena_blk {
    struct jarena_blk *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
} jarena_blk;

typedef struct jbuf {
    char *p;
    size_t len, cap;
} jbuf;

struct jnode;
struct chat_template;

typedef struct jctx {
    jarena_blk *blocks;
    size_t mem_used, mem_limit;
    uint64_t steps, step_limit;
    int depth, depth_limit;
    size_t out_limit;
    jbuf out;        /* the rendering; captures ({% set %}...{% endset %}, macros) are suffixes */
    jbuf tmp;        /* scratch for str()/repr() of values (reset by each user) */
    int line;        /* template line of the statement or expression running */
    int brk;         /* 1: break, 2: continue pending */
    int raised;      /* the error came from raise_exception: its message stands alone */
    struct tm now;
    jv pipe;         /* the text a {% filter %} or {% set x | f %} block feeds its filter chain */
    char *err;       /* malloc'd message of the error that unwound */
    jmp_buf jmp;
    const struct chat_template *tmpl;
} jctx;

/* Unwinds to ct_render with a message (the template line is added there). */
_Noreturn void jx_fail(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jx_step(jctx *c, uint64_t n);
void *jx_alloc(jctx *c, size_t n);
void jx_arena_free(jctx *c);

void jb_put(jctx *c, jbuf *b, const char *s, size_t n);
void jb_puts(jctx *c, jbuf *b, const char *s);
void jb_putc(jctx *c, jbuf *b, char ch);

/* constructors */
jv jv_undef(jstr *hint);
jv jv_none(void);
jv jv_bool(int b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_strv(jstr *s);
jstr *jstr_new(jctx *c, const char *s, size_t n); /* c NULL: malloc'd (template constants) */
jv jv_str(jctx *c, const char *s, size_t n);
/* a + b for strings. A long string accumulated piece by piece (`ns.text = ns.text ~ part`) is
 * extended in its own block when nothing has been appended to it since, so building a long
 * prompt costs linear memory, not quadratic. */
jv jv_concat(jctx *c, jstr *a, const char *b, size_t blen);
jv jv_cstr(jctx *c, const char *s);
jv jv_list(jctx *c, size_t cap);
void jl_push(jctx *c, jlist *l, jv v);
jv jv_dict(jctx *c, size_t cap);
/* Set (replacing in place, keeping the position) or append. */
void jd_set(jctx *c, jdict *d, jv k, jv v);
/* The value for key k, or NULL. Strings and numbers compare as Python's == does. */
jv *jd_get(jctx *c, const jdict *d, jv k);
jv *jd_gets(jctx *c, const jdict *d, const char *k);

int jv_truthy(jv v);
int jv_equal(jctx *c, jv a, jv b);
const char *jv_typename(jv v); /* Python's type name: 'str', 'int', 'dict', 'NoneType'... */

/* Python's str() / repr() of v appended to b. */
void jv_write_str(jctx *c, jbuf *b, jv v);
void jv_write_repr(jctx *c, jbuf *b, jv v);
/* str(v) as a value (strings are returned as they are). */
jv jv_to_str(jctx *c, jv v);
/* json.dumps(v, ensure_ascii, indent, separators, sort_keys): indent NULL for none. */
typedef struct jjson_opt {
    int ensure_ascii;
    const char *indent; /* NULL: no newlines */
    const char *item_sep, *key_sep;
    int sort_keys;
} jjson_opt;
void jv_write_json(jctx *c, jbuf *b, jv v, const jjson_opt *o, int level);
void jv_write_float(jbuf *b, jctx *c, double f); /* repr(float) */

/* UTF-8 helpers (the template and every input are valid UTF-8: checked on the way in). */
int ju_decode(const char *s, size_t n, size_t *i);  /* code point at *i, advancing *i */
size_t ju_encode(int cp, char *out);                 /* 1..4 bytes */
size_t ju_count(const char *s, size_t n);            /* code points */
int ju_isspace(int cp);                              /* Python's str.isspace() */
int ju_valid(const char *s, size_t n, size_t *bad);  /* 1 when valid UTF-8 */

/* ---------------------------------------------------------------- AST */

typedef enum {
    /* statements */
    JN_TEXT, JN_EMIT, JN_IF, JN_FOR, JN_SET, JN_SETBLOCK, JN_MACRO, JN_CALLBLOCK, JN_FILTERBLOCK,
    JN_BREAK, JN_CONTINUE, JN_WITH, JN_BODY,
    /* expressions */
    JN_CONST, JN_NAME, JN_ATTR, JN_ITEM, JN_SLICE, JN_LIST, JN_TUPLE, JN_DICT, JN_NOT, JN_NEG,
    JN_POS, JN_BINOP, JN_COMPARE, JN_AND, JN_OR, JN_COND, JN_CALL, JN_FILTER, JN_TEST,
    JN_NSATTR, /* assignment target ns.attr */
} jn_kind;

typedef enum {
    JOP_ADD, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW, JOP_CONCAT,
    JOP_EQ, JOP_NE, JOP_LT, JOP_LE, JOP_GT, JOP_GE, JOP_IN, JOP_NOTIN,
} jn_op;

typedef struct jnode {
    jn_kind kind;
    int line;
    int op;        /* BINOP: jn_op; TEST: negated; FILTER/TEST: builtin id */
    char *name;    /* NAME, ATTR, FILTER, TEST, MACRO, NSATTR; TEXT: the text */
    size_t len;    /* TEXT length */
    jv val;        /* CONST */
    struct jnode *a, *b, *c, *d; /* operands / cond, body, else / target, iter, filter, body... */
    struct jnode **kids; /* LIST, TUPLE, DICT (k,v,k,v), BODY, CALL args, COMPARE operands */
    int nkids;
    char **kwn;    /* keyword argument names (CALL, FILTER, TEST, MACRO defaults, WITH) */
    struct jnode **kwv;
    int nkw;
    int *ops;      /* COMPARE: the operator between kids[i] and kids[i+1] */
} jnode;

struct chat_template {
    jnode *root;
    void **allocs; /* every allocation of the parse, freed with the template */
    size_t nallocs, capallocs;
};

/* jinja_parse.c: parses src into t->root; errors name the template line. */
int jp_parse(struct chat_template *t, const char *src, size_t len, char *err, size_t errcap);
void *jp_alloc(struct chat_template *t, size_t n);

/* jinja_eval.c: names of jinja2's builtin filters and tests; the id is >= 0 when kiln
 * implements it, -1 when jinja2 has it but kiln does not (an error only if it runs), -2 when
 * jinja2 has no such thing (a parse error, as in jinja2). */
int jx_filter_id(const char *name);
int jx_test_id(const char *name);
void jx_render(jctx *c, const jnode *root, jv vars);
/* Python's sorted() of items by keys (both reordered); fails as Python on unorderable keys. */
void jx_sort(jctx *c, jv *items, jv *keys, size_t n, int reverse);

#endif
