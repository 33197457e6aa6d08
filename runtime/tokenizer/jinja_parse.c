/* jinja_parse — lexer and parser of the chat-template engine: template text to the AST of jinja.h.
 *
 * The lexer follows jinja2 3.1's Lexer as transformers configures it (trim_blocks=True,
 * lstrip_blocks=True, keep_trailing_newline=False), rule for rule:
 *   - line endings \r\n and \r become \n, and one trailing newline of the template is dropped;
 *   - `{%-`, `{{-`, `{#-` strip all whitespace before the tag; `-%}`, `-}}`, `-#}` all after it;
 *   - lstrip_blocks: spaces and tabs between a line start and `{%` or `{#` (not `{{`) are
 *     dropped, unless the tag is `{%+`; "line start" is a newline in the text or, with no
 *     newline, text that follows a tag whose match ended with a newline;
 *   - trim_blocks: the first newline after `%}` or `#}` is dropped (not after `+%}` or `}}`);
 *   - `{% raw %}...{% endraw %}` is text; inside a tag, `}}`/`%}` only end it outside brackets.
 * The parser is jinja2's Parser (same precedence and the same places where the conditional
 * expression is or is not allowed). Unknown filters and tests are parse errors as in jinja2;
 * jinja2 builtins that kiln does not implement, and the tags of features chat templates do not
 * use (include, extends, block, import, do...), fail with a message that names them and the line.
 * Errors unwind with longjmp to jp_parse, which returns -1 with the message; all allocations go
 * through jp_alloc and are freed with the template.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"
#include "util.h"

enum { T_DATA, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct tok {
    int t, line;
    const char *s; /* DATA, NAME, OP: into the normalized source */
    size_t n;
    jstr *str;     /* STR: the decoded literal */
    int64_t i;
    double f;
} tok;

#define MAX_NEST 200

typedef struct P {
    struct chat_template *tm;
    char *src; /* normalized source */
    size_t len;
    tok *toks;
    size_t n, cap, pos;
    int depth;
    char *err;
    size_t errcap;
    jmp_buf jmp;
} P;

/* Makes the template own a malloc'd block (freed by ct_free). */
static void *own(struct chat_template *t, void *p)
{
    if (t->nallocs == t->capallocs) {
        t->capallocs = t->capallocs ? t->capallocs * 2 : 64;
        t->allocs = xrealloc(t->allocs, t->capallocs * sizeof *t->allocs);
    }
    t->allocs[t->nallocs++] = p;
    return p;
}

void *jp_alloc(struct chat_template *t, size_t n) { return own(t, xcalloc(1, n ? n : 1)); }

static _Noreturn void perr(P *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void perr(P *p, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = snprintf(p->err, p->errcap, "chat template line %d: ", line);
    if (k > 0 && (size_t)k < p->errcap)
        vsnprintf(p->err + k, p->errcap - (size_t)k, fmt, ap);
    va_end(ap);
    longjmp(p->jmp, 1);
}

/* ---------------------------------------------------------------- lexer */

static tok *push(P *p, int t, int line, const char *s, size_t n)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 256;
        p->toks = xrealloc(p->toks, p->cap * sizeof *p->toks);
    }
    tok *k = &p->toks[p->n++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->line = line;
    k->s = s;
    k->n = n;
    return k;
}

static int count_nl(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* Python's \s at byte offset i: the length of the whitespace character there, or 0. */
static size_t ws_at(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return 0;
    unsigned char b = (unsigned char)s[i];
    if (b < 0x80)
        return ju_isspace(b) ? 1 : 0;
    size_t j = i;
    int cp = ju_decode(s, n, &j);
    return ju_isspace(cp) ? j - i : 0;
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    size_t w;
    while ((w = ws_at(s, n, i)))
        i += w;
    return i;
}

/* Length of text after stripping trailing Python whitespace (str.rstrip()). */
static size_t rstrip_len(const char *s, size_t n)
{
    while (n > 0) {
        size_t st = n - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80)
            st--;
        size_t j = st;
        int cp = ju_decode(s, n, &j);
        if (!ju_isspace(cp))
            break;
        n = st;
    }
    return n;
}

/* Emits the text before a tag after the strip rules. sign: '-', '+' or 0; lstrip applies to
 * block and comment tags only. */
static void emit_text(P *p, int *line, const char *text, size_t n, int sign, int lstrip_ok,
                      int line_starting)
{
    size_t keep = n;
    if (sign == '-')
        keep = rstrip_len(text, n);
    else if (sign != '+' && lstrip_ok) {
        size_t l_pos = n;
        while (l_pos > 0 && text[l_pos - 1] != '\n')
            l_pos--;
        if (l_pos > 0 || line_starting) {
            size_t i = skip_ws(text, n, l_pos);
            if (i == n)
                keep = l_pos;
        }
    }
    if (keep)
        push(p, T_DATA, *line, text, keep);
    *line += count_nl(text, n);
}

static int is_name_start(int ch) { return ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'); }
static int is_name_char(int ch) { return is_name_start(ch) || (ch >= '0' && ch <= '9'); }
static int is_digit(int ch) { return ch >= '0' && ch <= '9'; }

/* Python's unicode-escape decoding of a string literal body (the lexer's rule). */
static jstr *decode_string(P *p, int line, const char *s, size_t n)
{
    char *o = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char e = s[++i];
        int cp = -1, digits = 0;
        switch (e) {
        case '\n': continue;
        case '\\': o[k++] = '\\'; continue;
        case '\'': o[k++] = '\''; continue;
        case '"': o[k++] = '"'; continue;
        case 'a': o[k++] = '\a'; continue;
        case 'b': o[k++] = '\b'; continue;
        case 'f': o[k++] = '\f'; continue;
        case 'n': o[k++] = '\n'; continue;
        case 'r': o[k++] = '\r'; continue;
        case 't': o[k++] = '\t'; continue;
        case 'v': o[k++] = '\v'; continue;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        case 'N':
            free(o);
            perr(p, line, "unsupported string escape \\N{...}");
        default:
            if (e >= '0' && e <= '7') {
                cp = 0;
                size_t j = i;
                for (; j < n && j < i + 3 && s[j] >= '0' && s[j] <= '7'; j++)
                    cp = cp * 8 + (s[j] - '0');
                i = j - 1;
            } else {
                o[k++] = '\\';
                o[k++] = e;
                continue;
            }
        }
        if (digits) {
            int64_t acc = 0; /* 8 hex digits do not fit an int */
            for (int d = 0; d < digits; d++) {
                char h = i + 1 + (size_t)d < n ? s[i + 1 + (size_t)d] : 0;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) {
                    free(o);
                    perr(p, line, "truncated \\%c escape in a string literal", e);
                }
                acc = acc * 16 + v;
            }
            i += (size_t)digits;
            if (acc > 0x10FFFF) {
                free(o);
                perr(p, line, "string literal escape \\%c gives 0x%llx, above U+10FFFF", e,
                     (unsigned long long)acc);
            }
            cp = (int)acc;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            free(o);
            perr(p, line, "string literal escape \\%c gives code point 0x%x, not a character", e, cp);
        }
        k += ju_encode(cp, o + k);
    }
    jstr *r = own(p->tm, jstr_new(NULL, o, k));
    free(o);
    return r;
}

/* Tokens of one {{ }} or {% %} tag from i (after the opening sign); returns the offset after
 * the end marker and sets *line_starting. */
static size_t lex_tag(P *p, size_t i, int *line, int block, int *line_starting)
{
    const char *s = p->src;
    size_t n = p->len;
    char bal[MAX_NEST]; /* the closing brackets expected, innermost last */
    int nbal = 0;
    int start_line = *line;
    for (;;) {
        if (i >= n)
            perr(p, start_line, "unexpected end of template: the tag opened here is not closed "
                                "(expected '%s')", block ? "%}" : "}}");
        char ch = s[i];
        if (nbal == 0) {
            if (block) {
                if (ch == '+' && i + 2 < n && s[i + 1] == '%' && s[i + 2] == '}') {
                    push(p, T_BEND, *line, s + i, 3);
                    *line_starting = 0;
                    return i + 3;
                }
                if (ch == '-' && i + 2 < n && s[i + 1] == '%' && s[i + 2] == '}') {
                    push(p, T_BEND, *line, s + i, 3);
                    size_t j = skip_ws(s, n, i + 3);
                    *line += count_nl(s + i, j - i);
                    *line_starting = j > i + 3 && s[j - 1] == '\n';
                    return j;
                }
                if (ch == '%' && i + 1 < n && s[i + 1] == '}') {
                    push(p, T_BEND, *line, s + i, 2);
                    size_t j = i + 2;
                    if (j < n && s[j] == '\n') {
                        j++;
                        (*line)++;
                    }
                    *line_starting = s[j - 1] == '\n';
                    return j;
                }
            } else {
                if (ch == '-' && i + 2 < n && s[i + 1] == '}' && s[i + 2] == '}') {
                    push(p, T_VEND, *line, s + i, 3);
                    size_t j = skip_ws(s, n, i + 3);
                    *line += count_nl(s + i, j - i);
                    *line_starting = j > i + 3 && s[j - 1] == '\n';
                    return j;
                }
                if (ch == '}' && i + 1 < n && s[i + 1] == '}') {
                    push(p, T_VEND, *line, s + i, 2);
                    *line_starting = 0;
                    return i + 2;
                }
            }
        }
        size_t w = ws_at(s, n, i);
        if (w) {
            *line += ch == '\n';
            i += w;
            continue;
        }
        if (is_digit(ch)) {
            /* float: digits [. digits] [e[+-]digits], or integer (0x/0o/0b too), '_' allowed */
            size_t j = i;
            int is_float = 0;
            if (ch == '0' && j + 1 < n && strchr("xXoObB", s[j + 1])) {
                int base = strchr("xX", s[j + 1]) ? 16 : strchr("oO", s[j + 1]) ? 8 : 2;
                j += 2;
                int64_t v = 0;
                size_t d0 = j;
                for (; j < n; j++) {
                    int c = s[j], dv;
                    if (c == '_')
                        continue;
                    dv = is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                       : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : 99;
                    if (dv >= base)
                        break;
                    if (v > (INT64_MAX - dv) / base)
                        perr(p, *line, "integer literal too large");
                    v = v * base + dv;
                }
                if (j == d0)
                    perr(p, *line, "malformed number literal");
                push(p, T_INT, *line, s + i, j - i)->i = v;
                i = j;
                continue;
            }
            while (j < n && (is_digit(s[j]) || (s[j] == '_' && j + 1 < n && is_digit(s[j + 1]))))
                j++;
            if (j + 1 < n && s[j] == '.' && is_digit(s[j + 1])) {
                is_float = 1;
                j++;
                while (j < n && (is_digit(s[j]) || (s[j] == '_' && j + 1 < n && is_digit(s[j + 1]))))
                    j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-'))
                    k++;
                if (k < n && is_digit(s[k])) {
                    is_float = 1;
                    j = k;
                    while (j < n && (is_digit(s[j]) || s[j] == '_'))
                        j++;
                }
            }
            char buf[128];
            size_t bl = 0;
            for (size_t k = i; k < j && bl + 1 < sizeof buf; k++)
                if (s[k] != '_')
                    buf[bl++] = s[k];
            buf[bl] = 0;
            if (j - i >= sizeof buf)
                perr(p, *line, "number literal too long");
            tok *t = push(p, is_float ? T_FLOAT : T_INT, *line, s + i, j - i);
            if (is_float)
                t->f = strtod(buf, NULL);
            else {
                errno = 0;
                long long v = strtoll(buf, NULL, 10);
                if (errno)
                    perr(p, *line, "integer literal %s does not fit in 64 bits", buf);
                t->i = v;
            }
            i = j;
            continue;
        }
        if (is_name_start(ch)) {
            size_t j = i;
            while (j < n && is_name_char(s[j]))
                j++;
            push(p, T_NAME, *line, s + i, j - i);
            i = j;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != ch) {
                if (s[j] == '\\')
                    j++;
                j++;
            }
            if (j >= n)
                perr(p, *line, "unterminated string literal");
            tok *t = push(p, T_STR, *line, s + i, j + 1 - i);
            t->str = decode_string(p, *line, s + i + 1, j - i - 1);
            *line += count_nl(s + i, j + 1 - i);
            i = j + 1;
            continue;
        }
        static const char *ops2[] = {"//", "**", "==", "!=", ">=", "<="};
        size_t ol = 0;
        for (size_t k = 0; k < ARRAY_LEN(ops2); k++)
            if (i + 1 < n && s[i] == ops2[k][0] && s[i + 1] == ops2[k][1])
                ol = 2;
        if (!ol && strchr("+-/*%~[](){}><=.:|,;", ch) && ch)
            ol = 1;
        if (!ol)
            perr(p, *line, "unexpected character '%c' in a tag", ch);
        if (ol == 1) {
            if (ch == '(' || ch == '[' || ch == '{') {
                if (nbal == MAX_NEST)
                    perr(p, *line, "brackets nested deeper than %d levels", MAX_NEST);
                bal[nbal++] = ch == '(' ? ')' : ch == '[' ? ']' : '}';
            } else if (ch == ')' || ch == ']' || ch == '}') {
                if (nbal == 0)
                    perr(p, *line, "unexpected '%c'", ch);
                if (bal[nbal - 1] != ch)
                    perr(p, *line, "unexpected '%c', expected '%c'", ch, bal[nbal - 1]);
                nbal--;
            }
        }
        push(p, T_OP, *line, s + i, ol);
        i += ol;
    }
}

static void lex(P *p)
{
    const char *s = p->src;
    size_t n = p->len, pos = 0;
    int line = 1, line_starting = 1;
    while (pos < n) {
        /* the earliest tag start */
        size_t q = pos;
        const char *hit = NULL;
        while (q + 1 < n) {
            hit = memchr(s + q, '{', n - q - 1);
            if (!hit)
                break;
            q = (size_t)(hit - s);
            if (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#')
                break;
            q++;
            hit = NULL;
        }
        if (!hit) {
            push(p, T_DATA, line, s + pos, n - pos);
            break;
        }
        char kind = s[q + 1];
        size_t after = q + 2;
        int sign = after < n && (s[after] == '-' || s[after] == '+') ? s[after] : 0;
        if (sign)
            after++;
        if (kind == '%') {
            /* {% raw %} ... {% endraw %} */
            size_t j = skip_ws(s, n, after);
            if (j + 3 <= n && memcmp(s + j, "raw", 3) == 0) {
                size_t k = skip_ws(s, n, j + 3);
                size_t endb = 0;
                if (k + 2 < n && s[k] == '-' && s[k + 1] == '%' && s[k + 2] == '}')
                    endb = skip_ws(s, n, k + 3);
                else if (k + 1 < n && s[k] == '%' && s[k + 1] == '}')
                    endb = k + 2;
                if (endb) {
                    emit_text(p, &line, s + pos, q - pos, sign, 1, line_starting);
                    line += count_nl(s + q, endb - q);
                    /* find {%(-|+|)\s*endraw\s*(+%}|-%}\s*|%}\n?) */
                    size_t r = endb;
                    for (;;) {
                        const char *h = r < n ? memchr(s + r, '{', n - r) : NULL;
                        if (!h)
                            perr(p, line, "missing end of raw directive");
                        size_t t0 = (size_t)(h - s);
                        if (t0 + 1 < n && s[t0 + 1] == '%') {
                            size_t a = t0 + 2;
                            int rsign = a < n && (s[a] == '-' || s[a] == '+') ? s[a] : 0;
                            if (rsign)
                                a++;
                            a = skip_ws(s, n, a);
                            if (a + 6 <= n && memcmp(s + a, "endraw", 6) == 0) {
                                size_t b = skip_ws(s, n, a + 6), e2 = 0;
                                int ls = 0;
                                if (b + 2 < n && s[b] == '+' && s[b + 1] == '%' && s[b + 2] == '}')
                                    e2 = b + 3;
                                else if (b + 2 < n && s[b] == '-' && s[b + 1] == '%' && s[b + 2] == '}')
                                    e2 = skip_ws(s, n, b + 3), ls = e2 > b + 3 && s[e2 - 1] == '\n';
                                else if (b + 1 < n && s[b] == '%' && s[b + 1] == '}') {
                                    e2 = b + 2;
                                    if (e2 < n && s[e2] == '\n')
                                        e2++;
                                    ls = s[e2 - 1] == '\n';
                                }
                                if (e2) {
                                    emit_text(p, &line, s + endb, t0 - endb, rsign, 1, 0);
                                    line += count_nl(s + t0, e2 - t0);
                                    pos = e2;
                                    line_starting = ls;
                                    break;
                                }
                            }
                        }
                        r = t0 + 1;
                    }
                    continue;
                }
            }
        }
        emit_text(p, &line, s + pos, q - pos, sign, kind != '{', line_starting);
        if (kind == '#') {
            /* (.*?)((?:\+#}|\-#}\s*|#}\n?)) */
            size_t r = after;
            const char *h = NULL;
            while (r + 1 < n) {
                h = memchr(s + r, '#', n - r - 1);
                if (!h || h[1] == '}')
                    break;
                r = (size_t)(h - s) + 1;
                h = NULL;
            }
            if (!h)
                perr(p, line, "missing end of comment tag");
            size_t e = (size_t)(h - s), end;
            if (e > after && s[e - 1] == '+')
                end = e + 2;
            else if (e > after && s[e - 1] == '-')
                end = skip_ws(s, n, e + 2);
            else {
                end = e + 2;
                if (end < n && s[end] == '\n')
                    end++;
            }
            line += count_nl(s + q, end - q);
            line_starting = s[end - 1] == '\n';
            pos = end;
            continue;
        }
        push(p, kind == '%' ? T_BBEGIN : T_VBEGIN, line, s + q, after - q);
        pos = lex_tag(p, after, &line, kind == '%', &line_starting);
    }
    push(p, T_EOF, line, s + n, 0);
}

/* ---------------------------------------------------------------- parser helpers */

static tok *cur(P *p) { return &p->toks[p->pos]; }
static tok *peek(P *p, size_t k) { return p->pos + k < p->n ? &p->toks[p->pos + k] : &p->toks[p->n - 1]; }
static void next(P *p)
{
    if (p->pos + 1 < p->n)
        p->pos++;
}
static int is_op(tok *t, const char *op) { return t->t == T_OP && t->n == strlen(op) && memcmp(t->s, op, t->n) == 0; }
static int is_name(tok *t, const char *nm) { return t->t == T_NAME && t->n == strlen(nm) && memcmp(t->s, nm, t->n) == 0; }

static const char *describe(tok *t, char *buf, size_t cap)
{
    switch (t->t) {
    case T_EOF: return "end of template";
    case T_VEND: return "end of print statement";
    case T_BEND: return "end of statement block";
    case T_DATA: return "template data";
    default: snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); return buf;
    }
}

static void expect_op(P *p, const char *op)
{
    if (!is_op(cur(p), op)) {
        char b[64];
        perr(p, cur(p)->line, "expected '%s', got %s", op, describe(cur(p), b, sizeof b));
    }
    next(p);
}

static char *tok_name(P *p, tok *t)
{
    char *s = jp_alloc(p->tm, t->n + 1);
    memcpy(s, t->s, t->n);
    return s;
}

static char *expect_name(P *p)
{
    if (cur(p)->t != T_NAME) {
        char b[64];
        perr(p, cur(p)->line, "expected a name, got %s", describe(cur(p), b, sizeof b));
    }
    char *s = tok_name(p, cur(p));
    next(p);
    return s;
}

static void expect_end(P *p, const char *what)
{
    if (cur(p)->t != T_BEND) {
        char b[64];
        perr(p, cur(p)->line, "expected the end of the '%s' tag, got %s", what,
             describe(cur(p), b, sizeof b));
    }
    next(p);
}

static jnode *mk(P *p, jn_kind k, int line)
{
    jnode *n = jp_alloc(p->tm, sizeof *n);
    n->kind = k;
    n->line = line;
    return n;
}

typedef struct nvec {
    jnode **v;
    int n, cap;
} nvec;

static void nv_push(P *p, nvec *v, jnode *x)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        jnode **nv = jp_alloc(p->tm, (size_t)cap * sizeof *nv);
        if (v->n)
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

typedef struct svec {
    char **v;
    int n, cap;
} svec;

static void sv_push(P *p, svec *v, char *x)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        char **nv = jp_alloc(p->tm, (size_t)cap * sizeof *nv);
        if (v->n)
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

static void nest_in(P *p)
{
    if (++p->depth > MAX_NEST)
        perr(p, cur(p)->line, "expressions or blocks nested deeper than %d levels", MAX_NEST);
}

/* ---------------------------------------------------------------- expressions */

static jnode *parse_expression(P *p, int with_condexpr);
static jnode *parse_tuple(P *p, int with_condexpr, int explicit_parens, const char *end_name);
static jnode *parse_unary(P *p, int with_filter);

static void parse_call_args(P *p, jnode *n)
{
    expect_op(p, "(");
    nvec args = {0}, kwv = {0};
    svec kwn = {0};
    while (!is_op(cur(p), ")")) {
        if (args.n || kwn.n)
            expect_op(p, ",");
        if (is_op(cur(p), ")"))
            break;
        if (is_op(cur(p), "*") || is_op(cur(p), "**"))
            perr(p, cur(p)->line, "unsupported call syntax: *args / **kwargs");
        if (cur(p)->t == T_NAME && is_op(peek(p, 1), "=")) {
            sv_push(p, &kwn, expect_name(p));
            next(p);
            nv_push(p, &kwv, parse_expression(p, 1));
        } else {
            if (kwn.n)
                perr(p, cur(p)->line, "a positional argument follows a keyword argument");
            nv_push(p, &args, parse_expression(p, 1));
        }
    }
    next(p);
    n->kids = args.v;
    n->nkids = args.n;
    n->kwn = kwn.v;
    n->kwv = kwv.v;
    n->nkw = kwn.n;
}

static char *dotted_name(P *p)
{
    char *nm = expect_name(p);
    while (is_op(cur(p), ".") && peek(p, 1)->t == T_NAME) {
        next(p);
        char *part = expect_name(p);
        char *j = jp_alloc(p->tm, strlen(nm) + strlen(part) + 2);
        sprintf(j, "%s.%s", nm, part);
        nm = j;
    }
    return nm;
}

static jnode *parse_filter(P *p, jnode *node)
{
    int line = cur(p)->line;
    char *nm = dotted_name(p);
    int id = jx_filter_id(nm);
    if (id == -2)
        perr(p, line, "no filter named '%s'", nm);
    jnode *f = mk(p, JN_FILTER, line);
    f->name = nm;
    f->op = id;
    f->a = node;
    if (is_op(cur(p), "("))
        parse_call_args(p, f);
    return f;
}

static jnode *parse_test(P *p, jnode *node)
{
    int line = cur(p)->line;
    next(p); /* 'is' */
    int neg = 0;
    if (is_name(cur(p), "not")) {
        neg = 1;
        next(p);
    }
    char *nm = dotted_name(p);
    int id = jx_test_id(nm);
    if (id == -2)
        perr(p, line, "no test named '%s'", nm);
    jnode *t = mk(p, JN_TEST, line);
    t->name = nm;
    t->op = id;
    t->a = node;
    tok *c = cur(p);
    if (is_op(c, "("))
        parse_call_args(p, t);
    else if ((c->t == T_NAME || c->t == T_STR || c->t == T_INT || c->t == T_FLOAT ||
              is_op(c, "[") || is_op(c, "{")) &&
             !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is"))
            perr(p, c->line, "you cannot chain multiple tests with 'is'");
        jnode *arg = parse_unary(p, 0);
        t->kids = jp_alloc(p->tm, sizeof(jnode *));
        t->kids[0] = arg;
        t->nkids = 1;
    }
    if (neg) {
        jnode *n = mk(p, JN_NOT, line);
        n->a = t;
        return n;
    }
    return t;
}

static jnode *parse_subscribed(P *p)
{
    int line = cur(p)->line;
    jnode *parts[3] = {NULL, NULL, NULL};
    if (is_op(cur(p), ":")) {
        next(p);
    } else {
        jnode *e = parse_expression(p, 1);
        if (!is_op(cur(p), ":"))
            return e;
        next(p);
        parts[0] = e;
    }
    if (!is_op(cur(p), "]") && !is_op(cur(p), ",") && !is_op(cur(p), ":"))
        parts[1] = parse_expression(p, 1);
    if (is_op(cur(p), ":")) {
        next(p);
        if (!is_op(cur(p), "]") && !is_op(cur(p), ","))
            parts[2] = parse_expression(p, 1);
    }
    jnode *s = mk(p, JN_SLICE, line);
    s->b = parts[0];
    s->c = parts[1];
    s->d = parts[2];
    return s;
}

static jnode *parse_postfix(P *p, jnode *node)
{
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, ".")) {
            next(p);
            tok *a = cur(p);
            if (a->t == T_NAME) {
                jnode *n = mk(p, JN_ATTR, a->line);
                n->a = node;
                n->name = tok_name(p, a);
                next(p);
                node = n;
            } else if (a->t == T_INT) {
                jnode *k = mk(p, JN_CONST, a->line);
                k->val = jv_int(a->i);
                jnode *n = mk(p, JN_ITEM, a->line);
                n->a = node;
                n->b = k;
                next(p);
                node = n;
            } else {
                char b[64];
                perr(p, a->line, "expected a name or number after '.', got %s", describe(a, b, sizeof b));
            }
        } else if (is_op(t, "[")) {
            next(p);
            nvec args = {0};
            while (!is_op(cur(p), "]")) {
                if (args.n)
                    expect_op(p, ",");
                if (is_op(cur(p), "]"))
                    break;
                nv_push(p, &args, parse_subscribed(p));
            }
            next(p);
            if (args.n == 0)
                perr(p, t->line, "expected a subscript inside []");
            jnode *key = args.v[0];
            if (args.n > 1) {
                key = mk(p, JN_TUPLE, t->line);
                key->kids = args.v;
                key->nkids = args.n;
            }
            jnode *n = mk(p, JN_ITEM, t->line);
            n->a = node;
            n->b = key;
            node = n;
        } else if (is_op(t, "(")) {
            jnode *n = mk(p, JN_CALL, t->line);
            n->a = node;
            parse_call_args(p, n);
            node = n;
        } else
            return node;
    }
}

static jnode *parse_filter_expr(P *p, jnode *node)
{
    for (;;) {
        if (is_op(cur(p), "|")) {
            next(p);
            node = parse_filter(p, node);
        } else if (is_name(cur(p), "is"))
            node = parse_test(p, node);
        else if (is_op(cur(p), "(")) {
            jnode *n = mk(p, JN_CALL, cur(p)->line);
            n->a = node;
            parse_call_args(p, n);
            node = n;
        } else
            return node;
    }
}

static jnode *parse_primary(P *p)
{
    tok *t = cur(p);
    jnode *n;
    nest_in(p);
    if (t->t == T_NAME) {
        n = mk(p, JN_CONST, t->line);
        if (is_name(t, "true") || is_name(t, "True"))
            n->val = jv_bool(1);
        else if (is_name(t, "false") || is_name(t, "False"))
            n->val = jv_bool(0);
        else if (is_name(t, "none") || is_name(t, "None"))
            n->val = jv_none();
        else {
            n->kind = JN_NAME;
            n->name = tok_name(p, t);
        }
        next(p);
    } else if (t->t == T_STR) {
        n = mk(p, JN_CONST, t->line);
        jstr *s = t->str;
        next(p);
        while (cur(p)->t == T_STR) { /* adjacent literals concatenate */
            jstr *b = cur(p)->str;
            char *j = xmalloc(s->len + b->len + 1);
            memcpy(j, s->s, s->len);
            memcpy(j + s->len, b->s, b->len);
            jstr *r = own(p->tm, jstr_new(NULL, j, s->len + b->len));
            free(j);
            s = r;
            next(p);
        }
        n->val = jv_strv(s);
    } else if (t->t == T_INT || t->t == T_FLOAT) {
        n = mk(p, JN_CONST, t->line);
        n->val = t->t == T_INT ? jv_int(t->i) : jv_float(t->f);
        next(p);
    } else if (is_op(t, "(")) {
        next(p);
        n = parse_tuple(p, 1, 1, NULL);
        expect_op(p, ")");
    } else if (is_op(t, "[")) {
        next(p);
        nvec items = {0};
        while (!is_op(cur(p), "]")) {
            if (items.n)
                expect_op(p, ",");
            if (is_op(cur(p), "]"))
                break;
            nv_push(p, &items, parse_expression(p, 1));
        }
        next(p);
        n = mk(p, JN_LIST, t->line);
        n->kids = items.v;
        n->nkids = items.n;
    } else if (is_op(t, "{")) {
        next(p);
        nvec items = {0};
        while (!is_op(cur(p), "}")) {
            if (items.n)
                expect_op(p, ",");
            if (is_op(cur(p), "}"))
                break;
            nv_push(p, &items, parse_expression(p, 1));
            expect_op(p, ":");
            nv_push(p, &items, parse_expression(p, 1));
        }
        next(p);
        n = mk(p, JN_DICT, t->line);
        n->kids = items.v;
        n->nkids = items.n;
    } else {
        char b[64];
        perr(p, t->line, "unexpected %s", describe(t, b, sizeof b));
    }
    p->depth--;
    return n;
}

static jnode *parse_unary(P *p, int with_filter)
{
    tok *t = cur(p);
    jnode *node;
    nest_in(p);
    if (is_op(t, "-") || is_op(t, "+")) {
        next(p);
        node = mk(p, is_op(t, "-") ? JN_NEG : JN_POS, t->line);
        node->a = parse_unary(p, 0);
    } else
        node = parse_primary(p);
    node = parse_postfix(p, node);
    if (with_filter)
        node = parse_filter_expr(p, node);
    p->depth--;
    return node;
}

static jnode *binop(P *p, int op, jnode *a, jnode *b, int line)
{
    jnode *n = mk(p, JN_BINOP, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static jnode *parse_pow(P *p)
{
    jnode *l = parse_unary(p, 1);
    while (is_op(cur(p), "**")) {
        int line = cur(p)->line;
        next(p);
        l = binop(p, JOP_POW, l, parse_unary(p, 1), line);
    }
    return l;
}

static jnode *parse_math2(P *p)
{
    jnode *l = parse_pow(p);
    for (;;) {
        tok *t = cur(p);
        int op = is_op(t, "*") ? JOP_MUL : is_op(t, "/") ? JOP_DIV : is_op(t, "//") ? JOP_FLOORDIV
               : is_op(t, "%") ? JOP_MOD : -1;
        if (op < 0)
            return l;
        next(p);
        l = binop(p, op, l, parse_pow(p), t->line);
    }
}

static jnode *parse_concat(P *p)
{
    jnode *l = parse_math2(p);
    while (is_op(cur(p), "~")) {
        int line = cur(p)->line;
        next(p);
        l = binop(p, JOP_CONCAT, l, parse_math2(p), line);
    }
    return l;
}

static jnode *parse_math1(P *p)
{
    jnode *l = parse_concat(p);
    for (;;) {
        tok *t = cur(p);
        int op = is_op(t, "+") ? JOP_ADD : is_op(t, "-") ? JOP_SUB : -1;
        if (op < 0)
            return l;
        next(p);
        l = binop(p, op, l, parse_concat(p), t->line);
    }
}

static jnode *parse_compare(P *p)
{
    int line = cur(p)->line;
    jnode *first = parse_math1(p);
    nvec kids = {0};
    int *ops = NULL, nops = 0, cap = 0;
    for (;;) {
        tok *t = cur(p);
        int op = is_op(t, "==") ? JOP_EQ : is_op(t, "!=") ? JOP_NE : is_op(t, "<") ? JOP_LT
               : is_op(t, "<=") ? JOP_LE : is_op(t, ">") ? JOP_GT : is_op(t, ">=") ? JOP_GE
               : is_name(t, "in") ? JOP_IN : -1;
        if (op < 0 && is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = JOP_NOTIN;
            next(p);
        }
        if (op < 0)
            break;
        next(p);
        if (!kids.n)
            nv_push(p, &kids, first);
        nv_push(p, &kids, parse_math1(p));
        if (nops == cap) {
            cap = cap ? cap * 2 : 4;
            int *no = jp_alloc(p->tm, (size_t)cap * sizeof *no);
            if (nops)
                memcpy(no, ops, (size_t)nops * sizeof *no);
            ops = no;
        }
        ops[nops++] = op;
    }
    if (!nops)
        return first;
    jnode *n = mk(p, JN_COMPARE, line);
    n->kids = kids.v;
    n->nkids = kids.n;
    n->ops = ops;
    return n;
}

static jnode *parse_not(P *p)
{
    if (is_name(cur(p), "not")) {
        jnode *n = mk(p, JN_NOT, cur(p)->line);
        next(p);
        nest_in(p);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

static jnode *parse_and(P *p)
{
    jnode *l = parse_not(p);
    while (is_name(cur(p), "and")) {
        jnode *n = mk(p, JN_AND, cur(p)->line);
        next(p);
        n->a = l;
        n->b = parse_not(p);
        l = n;
    }
    return l;
}

static jnode *parse_or(P *p)
{
    jnode *l = parse_and(p);
    while (is_name(cur(p), "or")) {
        jnode *n = mk(p, JN_OR, cur(p)->line);
        next(p);
        n->a = l;
        n->b = parse_and(p);
        l = n;
    }
    return l;
}

static jnode *parse_condexpr(P *p)
{
    jnode *e1 = parse_or(p);
    while (is_name(cur(p), "if")) {
        jnode *n = mk(p, JN_COND, cur(p)->line);
        next(p);
        n->a = parse_or(p); /* condition */
        n->b = e1;
        if (is_name(cur(p), "else")) {
            next(p);
            nest_in(p);
            n->c = parse_condexpr(p);
            p->depth--;
        }
        e1 = n;
    }
    return e1;
}

static jnode *parse_expression(P *p, int with_condexpr)
{
    nest_in(p);
    jnode *n = with_condexpr ? parse_condexpr(p) : parse_or(p);
    p->depth--;
    return n;
}

static int tuple_end(P *p, int explicit_parens, const char *end_name)
{
    tok *t = cur(p);
    if (t->t == T_VEND || t->t == T_BEND || t->t == T_EOF)
        return 1;
    if (explicit_parens && is_op(t, ")"))
        return 1;
    return end_name && is_name(t, end_name);
}

static jnode *parse_tuple(P *p, int with_condexpr, int explicit_parens, const char *end_name)
{
    int line = cur(p)->line;
    nvec items = {0};
    int is_tuple = 0;
    for (;;) {
        if (items.n)
            expect_op(p, ",");
        if (tuple_end(p, explicit_parens, end_name))
            break;
        nv_push(p, &items, parse_expression(p, with_condexpr));
        if (is_op(cur(p), ","))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (items.n)
            return items.v[0];
        if (!explicit_parens) {
            char b[64];
            perr(p, line, "expected an expression, got %s", describe(cur(p), b, sizeof b));
        }
    }
    jnode *n = mk(p, JN_TUPLE, line);
    n->kids = items.v;
    n->nkids = items.n;
    return n;
}

/* Assignment targets: name, (name, name...), or with ns: name.attr. */
static jnode *parse_target(P *p, int with_ns, const char *end_name)
{
    int line = cur(p)->line;
    if (with_ns && cur(p)->t == T_NAME && is_op(peek(p, 1), ".") && peek(p, 2)->t == T_NAME) {
        jnode *n = mk(p, JN_NSATTR, line);
        jnode *ns = mk(p, JN_NAME, line);
        ns->name = expect_name(p);
        next(p);
        n->a = ns;
        n->name = expect_name(p);
        return n;
    }
    int paren = 0;
    if (is_op(cur(p), "(")) {
        paren = 1;
        next(p);
    }
    nvec names = {0};
    int is_tuple = paren;
    for (;;) {
        if (names.n)
            expect_op(p, ",");
        if ((paren && is_op(cur(p), ")")) || (end_name && is_name(cur(p), end_name)) ||
            is_op(cur(p), "=") || cur(p)->t == T_BEND)
            break;
        jnode *nm = mk(p, JN_NAME, cur(p)->line);
        nm->name = expect_name(p);
        nv_push(p, &names, nm);
        if (is_op(cur(p), ","))
            is_tuple = 1;
        else
            break;
    }
    if (paren)
        expect_op(p, ")");
    if (names.n == 0)
        perr(p, line, "expected a name to assign to");
    if (!is_tuple)
        return names.v[0];
    jnode *t = mk(p, JN_TUPLE, line);
    t->kids = names.v;
    t->nkids = names.n;
    return t;
}

/* ---------------------------------------------------------------- statements */

static jnode *parse_body(P *p, const char *const *ends, const char *opener, int opener_line);

static int name_in(tok *t, const char *const *ends)
{
    for (int i = 0; ends && ends[i]; i++)
        if (is_name(t, ends[i]))
            return 1;
    return 0;
}

static jnode *parse_if(P *p, int line)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const endif[] = {"endif", NULL};
    jnode *n = mk(p, JN_IF, line);
    n->a = parse_tuple(p, 0, 0, NULL);
    expect_end(p, "if");
    n->b = parse_body(p, ends, "if", line);
    if (is_name(cur(p), "elif")) {
        int l2 = cur(p)->line;
        next(p);
        n->c = parse_if(p, l2);
        return n; /* the nested if consumed endif */
    }
    if (is_name(cur(p), "else")) {
        next(p);
        expect_end(p, "else");
        n->c = parse_body(p, endif, "if", line);
    }
    next(p); /* endif */
    expect_end(p, "endif");
    return n;
}

static jnode *parse_for(P *p, int line)
{
    static const char *const ends[] = {"endfor", "else", NULL};
    static const char *const endfor[] = {"endfor", NULL};
    jnode *n = mk(p, JN_FOR, line);
    n->a = parse_target(p, 0, "in");
    if (!is_name(cur(p), "in")) {
        char b[64];
        perr(p, cur(p)->line, "expected 'in' in the for tag, got %s", describe(cur(p), b, sizeof b));
    }
    next(p);
    n->b = parse_tuple(p, 0, 0, "recursive");
    if (is_name(cur(p), "if")) {
        next(p);
        n->c = parse_expression(p, 1);
    }
    if (is_name(cur(p), "recursive"))
        perr(p, cur(p)->line, "unsupported: recursive for loops");
    expect_end(p, "for");
    n->d = parse_body(p, ends, "for", line);
    if (is_name(cur(p), "else")) {
        next(p);
        expect_end(p, "else");
        jnode *els = parse_body(p, endfor, "for", line);
        /* kids[0] holds the else body */
        n->kids = jp_alloc(p->tm, sizeof(jnode *));
        n->kids[0] = els;
        n->nkids = 1;
    }
    next(p);
    expect_end(p, "endfor");
    return n;
}

static jnode *parse_filter_chain(P *p, jnode *base)
{
    jnode *f = parse_filter(p, base);
    while (is_op(cur(p), "|")) {
        next(p);
        f = parse_filter(p, f);
    }
    return f;
}

static jnode *parse_set(P *p, int line)
{
    static const char *const ends[] = {"endset", NULL};
    jnode *target = parse_target(p, 1, NULL);
    if (is_op(cur(p), "=")) {
        next(p);
        jnode *n = mk(p, JN_SET, line);
        n->a = target;
        n->b = parse_tuple(p, 1, 0, NULL);
        expect_end(p, "set");
        return n;
    }
    jnode *n = mk(p, JN_SETBLOCK, line);
    n->a = target;
    if (is_op(cur(p), "|")) {
        next(p);
        n->c = parse_filter_chain(p, NULL);
    }
    expect_end(p, "set");
    n->b = parse_body(p, ends, "set", line);
    next(p);
    expect_end(p, "endset");
    return n;
}

/* (a, b=1, ...) of a macro or a call block: names in kwn, defaults (or NULL) in kwv. */
static void parse_signature(P *p, jnode *n)
{
    svec names = {0};
    nvec defs = {0};
    expect_op(p, "(");
    while (!is_op(cur(p), ")")) {
        if (names.n)
            expect_op(p, ",");
        if (is_op(cur(p), ")"))
            break;
        sv_push(p, &names, expect_name(p));
        jnode *d = NULL;
        if (is_op(cur(p), "=")) {
            next(p);
            d = parse_expression(p, 1);
        } else if (defs.n && defs.v[defs.n - 1])
            perr(p, cur(p)->line, "a parameter without a default follows one with a default");
        nv_push(p, &defs, d);
    }
    next(p);
    n->kwn = names.v;
    n->kwv = defs.v;
    n->nkw = names.n;
}

static jnode *parse_macro(P *p, int line)
{
    static const char *const ends[] = {"endmacro", NULL};
    jnode *n = mk(p, JN_MACRO, line);
    n->name = expect_name(p);
    parse_signature(p, n);
    expect_end(p, "macro");
    n->b = parse_body(p, ends, "macro", line);
    next(p);
    expect_end(p, "endmacro");
    return n;
}

static jnode *parse_callblock(P *p, int line)
{
    static const char *const ends[] = {"endcall", NULL};
    jnode *n = mk(p, JN_CALLBLOCK, line);
    if (is_op(cur(p), "("))
        parse_signature(p, n);
    n->a = parse_expression(p, 1);
    if (n->a->kind != JN_CALL)
        perr(p, line, "expected a call after 'call'");
    expect_end(p, "call");
    n->b = parse_body(p, ends, "call", line);
    next(p);
    expect_end(p, "endcall");
    return n;
}

static jnode *parse_statement(P *p)
{
    tok *t = cur(p);
    int line = t->line;
    if (t->t != T_NAME) {
        char b[64];
        perr(p, line, "expected a tag name after '{%%', got %s", describe(t, b, sizeof b));
    }
    next(p);
    nest_in(p);
    jnode *n;
    if (is_name(t, "if"))
        n = parse_if(p, line);
    else if (is_name(t, "for"))
        n = parse_for(p, line);
    else if (is_name(t, "set"))
        n = parse_set(p, line);
    else if (is_name(t, "macro"))
        n = parse_macro(p, line);
    else if (is_name(t, "call"))
        n = parse_callblock(p, line);
    else if (is_name(t, "filter")) {
        static const char *const ends[] = {"endfilter", NULL};
        n = mk(p, JN_FILTERBLOCK, line);
        n->c = parse_filter_chain(p, NULL);
        expect_end(p, "filter");
        n->b = parse_body(p, ends, "filter", line);
        next(p);
        expect_end(p, "endfilter");
    } else if (is_name(t, "break") || is_name(t, "continue")) {
        n = mk(p, is_name(t, "break") ? JN_BREAK : JN_CONTINUE, line);
        expect_end(p, is_name(t, "break") ? "break" : "continue");
    } else if (is_name(t, "generation")) {
        /* transformers' AssistantTracker tag: renders its body unchanged */
        static const char *const ends[] = {"endgeneration", NULL};
        expect_end(p, "generation");
        n = parse_body(p, ends, "generation", line);
        next(p);
        expect_end(p, "endgeneration");
    } else if (is_name(t, "with")) {
        static const char *const ends[] = {"endwith", NULL};
        n = mk(p, JN_WITH, line);
        svec names = {0};
        nvec vals = {0};
        while (cur(p)->t != T_BEND) {
            if (names.n)
                expect_op(p, ",");
            sv_push(p, &names, expect_name(p));
            expect_op(p, "=");
            nv_push(p, &vals, parse_expression(p, 1));
        }
        n->kwn = names.v;
        n->kwv = vals.v;
        n->nkw = names.n;
        expect_end(p, "with");
        n->b = parse_body(p, ends, "with", line);
        next(p);
        expect_end(p, "endwith");
    } else {
        static const char *const known[] = {"include", "import", "from", "extends", "block",
                                            "do", "autoescape", "trans", "print", "raw", NULL};
        char nm[48];
        snprintf(nm, sizeof nm, "%.*s", (int)(t->n > 40 ? 40 : t->n), t->s);
        if (name_in(t, known))
            perr(p, line, "unsupported tag '%s' (kiln's chat templates have no %s)", nm, nm);
        perr(p, line, "unknown tag '%s'", nm);
    }
    p->depth--;
    return n;
}

/* Statements until a tag named in ends (left at that name) or, with ends NULL, the end. */
static const char *closer(const char *const *ends)
{
    int i = 0;
    while (ends[i + 1])
        i++;
    return ends[i];
}

static jnode *parse_body(P *p, const char *const *ends, const char *opener, int opener_line)
{
    jnode *body = mk(p, JN_BODY, cur(p)->line);
    nvec kids = {0};
    for (;;) {
        tok *t = cur(p);
        if (t->t == T_EOF) {
            if (ends)
                perr(p, opener_line, "unexpected end of template: the '%s' tag opened here is "
                                     "not closed (expected '%s')", opener, closer(ends));
            break;
        }
        if (t->t == T_DATA) {
            jnode *n = mk(p, JN_TEXT, t->line);
            n->name = (char *)t->s;
            n->len = t->n;
            nv_push(p, &kids, n);
            next(p);
        } else if (t->t == T_VBEGIN) {
            next(p);
            jnode *n = mk(p, JN_EMIT, t->line);
            n->a = parse_tuple(p, 1, 0, NULL);
            if (cur(p)->t != T_VEND) {
                char b[64];
                perr(p, cur(p)->line, "expected '}}', got %s", describe(cur(p), b, sizeof b));
            }
            next(p);
            nv_push(p, &kids, n);
        } else if (t->t == T_BBEGIN) {
            next(p);
            if (name_in(cur(p), ends))
                break;
            static const char *const closers[] = {"endif", "endfor", "endset", "endmacro",
                                                  "endcall", "endfilter", "endwith", "elif",
                                                  "else", "endgeneration", "endraw", NULL};
            if (name_in(cur(p), closers)) {
                char nm[48];
                snprintf(nm, sizeof nm, "%.*s", (int)(cur(p)->n > 40 ? 40 : cur(p)->n), cur(p)->s);
                if (ends)
                    perr(p, cur(p)->line, "unexpected '%s' inside the '%s' tag of line %d "
                                          "(expected '%s')", nm, opener, opener_line, closer(ends));
                perr(p, cur(p)->line, "unexpected '%s': no tag is open", nm);
            }
            nv_push(p, &kids, parse_statement(p));
        } else {
            char b[64];
            perr(p, t->line, "unexpected %s", describe(t, b, sizeof b));
        }
    }
    body->kids = kids.v;
    body->nkids = kids.n;
    return body;
}

int jp_parse(struct chat_template *t, const char *src, size_t len, char *err, size_t errcap)
{
    P p = {.tm = t, .err = err, .errcap = errcap};
    /* newlines normalized to \n, one trailing newline dropped (keep_trailing_newline=False) */
    p.src = jp_alloc(t, len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            p.src[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else
            p.src[k++] = src[i];
    }
    if (k && p.src[k - 1] == '\n')
        k--;
    p.src[k] = 0;
    p.len = k;
    if (setjmp(p.jmp)) {
        free(p.toks);
        return -1;
    }
    lex(&p);
    t->root = parse_body(&p, NULL, NULL, 0);
    free(p.toks);
    return 0;
}
