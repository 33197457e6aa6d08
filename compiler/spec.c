/* spec — see spec.h. The Lua bindings of the graph builder (g), tensors and the config view
 * (cfg). Argument checks use luaL_check*, so a spec author gets "bad argument #2 to 'linear'"
 * for free; op-level checks come from graph.c and are raised with the spec's file:line. Every
 * options table is checked against the keys and value types its op declares (check_opts), so a
 * misspelt option is an error rather than a silent default.
 *
 * One Lua state per build or probe; nothing survives it. The builder state is kept in the
 * Lua registry, so tensors are plain (graph-local) node ids in a small userdata.
 */
#include "spec.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <lualib.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "passes/passes.h"

#define MT_GRAPH "kiln.Graph"
#define MT_TENSOR "kiln.Tensor"
#define MT_CONFIG "kiln.Config"

static const char *task_names[] = {"generate", "embed", "classify"};
_Static_assert(ARRAY_LEN(task_names) == TASK_N, "task table out of sync");
const char *spec_task_name(spec_task t) { return (unsigned)t < TASK_N ? task_names[t] : "?"; }

typedef struct builder {
    kgraph *g;
    const config *cfg;
    const st_set *w;
    kerr err; /* scratch for graph.c messages */
} builder;

static builder *get_builder(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "kiln.builder");
    builder *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    /* b->g is NULL once build() has returned: a finalizer run when the state closes may still
     * hold g */
    if (!b || !b->g)
        luaL_error(L, "no graph is being built (g is only valid inside build)");
    return b;
}

/* Whether a chunk's file is the DSL's kiln.lua (not, say, a spec's mykiln.lua). */
static int is_lib_file(const char *file)
{
    size_t n = strlen(file);
    return n >= 8 && strcmp(file + n - 8, "kiln.lua") == 0 && (n == 8 || file[n - 9] == '/');
}

/* The archspec location that caused the current call: the innermost Lua frame that is not in
 * the DSL's own kiln.lua and not a one-line wrapper (`local function w(n, s) return
 * g:weight(n, s) end`), so messages point at the line of the spec that uses the op. kiln.lua's
 * functions are called through a C closure (sb_require), so a spec that calls one in tail
 * position (`return kiln.llama(g, c)`) keeps its frame. Returns 1 when the location is in the
 * spec, 0 when no frame outside kiln.lua was found (then it is kiln.lua's, or nothing). */
static int spec_where_from(lua_State *L, int first, char *file, size_t cap, int *line)
{
    lua_Debug ar;
    file[0] = 0;
    *line = 0;
    int fallback = 1; /* still using a frame we would rather skip */
    for (int level = first; lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0 || ar.source[0] != '@')
            continue;
        const char *src = ar.source + 1;
        int is_lib = is_lib_file(src);
        int wrapper = ar.lastlinedefined - ar.linedefined <= 2 && ar.linedefined > 0;
        if (!file[0] || (fallback && !is_lib)) {
            snprintf(file, cap, "%s", src);
            *line = ar.currentline;
            fallback = wrapper || is_lib;
        }
        if (!is_lib && !wrapper)
            return 1;
    }
    return file[0] && !is_lib_file(file); /* a wrapper is still the spec's own line */
}

/* From a C function called by Lua: level 0 is that C function. */
static int spec_where(lua_State *L, char *file, size_t cap, int *line)
{
    return spec_where_from(L, 1, file, cap, line);
}

/* Raises the builder's collected messages as a Lua error located at the spec line. */
static int raise_err(lua_State *L, builder *b)
{
    char file[512];
    int line;
    spec_where(L, file, sizeof file, &line);
    const char *msg = kerr_msg(&b->err);
    if (file[0])
        lua_pushfstring(L, "%s:%d: %s", file, line, msg);
    else
        lua_pushstring(L, msg);
    kerr_clear(&b->err);
    return lua_error(L);
}

/* Stamps the location on nodes built by the current call. */
static builder *begin(lua_State *L)
{
    builder *b = get_builder(L);
    if (b->g->n >= KG_MAX_NODES)
        luaL_error(L, "the graph has %d nodes, the most kiln builds (is the number of layers or "
                      "experts in the config sane?)",
                   b->g->n);
    char file[512];
    int line;
    spec_where(L, file, sizeof file, &line);
    graph_set_loc(b->g, file[0] ? file : NULL, line);
    kerr_clear(&b->err);
    return b;
}

/* ---------------------------------------------------------------- tensors */

static int push_tensor(lua_State *L, builder *b, int id)
{
    if (id < 0)
        return raise_err(L, b);
    int *u = lua_newuserdatauv(L, sizeof(int), 0);
    *u = id;
    luaL_setmetatable(L, MT_TENSOR);
    return 1;
}

static int check_tensor(lua_State *L, int idx)
{
    int *u = luaL_checkudata(L, idx, MT_TENSOR);
    return *u;
}

static int opt_tensor(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return -1;
    return check_tensor(L, idx);
}

/* An integral number (Lua 5.4's `/` makes floats: 64.0 is accepted, 64.5 is not). */
static int64_t check_int(lua_State *L, int idx, const char *what)
{
    if (lua_isinteger(L, idx))
        return lua_tointeger(L, idx);
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double d = lua_tonumber(L, idx);
        if (d == floor(d) && fabs(d) < 9e15)
            return (int64_t)d;
        luaL_error(L, "%s must be a whole number, got %f", what, d);
    }
    luaL_error(L, "%s must be a whole number, got %s", what, luaL_typename(L, idx));
    return 0;
}

/* A name given as the last, optional, string argument. */
static const char *opt_name(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
}

/* Shape table {T, 64} / {"T", 64} / {4096, 4096}. */
static int check_shape(lua_State *L, int idx, int64_t *shape)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)luaL_len(L, idx);
    if (n < 1 || n > KG_MAX_DIMS)
        luaL_error(L, "a shape has 1 to %d dimensions, got %d", KG_MAX_DIMS, n);
    for (int i = 0; i < n; i++) {
        lua_geti(L, idx, i + 1);
        if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "T") == 0)
            shape[i] = KG_T;
        else {
            char what[32];
            snprintf(what, sizeof what, "shape[%d]", i + 1);
            shape[i] = check_int(L, -1, what);
        }
        lua_pop(L, 1);
    }
    return n;
}

static int t_reshape(lua_State *L)
{
    int x = check_tensor(L, 1);
    int64_t sh[KG_MAX_DIMS];
    int n = check_shape(L, 2, sh);
    builder *b = begin(L);
    return push_tensor(L, b, graph_reshape(b->g, x, n, sh, opt_name(L, 3), &b->err));
}

static int t_slice(lua_State *L)
{
    int x = check_tensor(L, 1);
    int dim = (int)check_int(L, 2, "dim");
    int64_t start = check_int(L, 3, "start"), len = check_int(L, 4, "len");
    builder *b = begin(L);
    return push_tensor(L, b, graph_slice(b->g, x, dim, start, len, opt_name(L, 5), &b->err));
}

static int t_transpose(lua_State *L)
{
    int x = check_tensor(L, 1);
    int d0 = (int)check_int(L, 2, "dim0"), d1 = (int)check_int(L, 3, "dim1");
    builder *b = begin(L);
    return push_tensor(L, b, graph_transpose(b->g, x, d0, d1, opt_name(L, 4), &b->err));
}

static int t_shape(lua_State *L)
{
    int x = check_tensor(L, 1);
    builder *b = get_builder(L);
    const kg_node *n = &b->g->nodes[x];
    lua_createtable(L, n->ndim, 0);
    for (int i = 0; i < n->ndim; i++) {
        if (n->shape[i] == KG_T)
            lua_pushliteral(L, "T");
        else
            lua_pushinteger(L, n->shape[i]);
        lua_seti(L, -2, i + 1);
    }
    return 1;
}

static int t_name(lua_State *L)
{
    int x = check_tensor(L, 1);
    lua_pushstring(L, get_builder(L)->g->nodes[x].name);
    return 1;
}

static int t_tostring(lua_State *L)
{
    int x = check_tensor(L, 1);
    const kg_node *n = &get_builder(L)->g->nodes[x];
    char sh[96];
    lua_pushfstring(L, "tensor %%%d %s %s", x, n->name, graph_shape_str(n, sh, sizeof sh));
    return 1;
}

static int binop(lua_State *L, kg_op op)
{
    /* tensor * number scales; tensor op tensor is elementwise. */
    if (op == KG_MUL && lua_type(L, 2) == LUA_TNUMBER) {
        int x = check_tensor(L, 1);
        builder *b = begin(L);
        return push_tensor(L, b, graph_scale(b->g, x, lua_tonumber(L, 2), NULL, &b->err));
    }
    if (op == KG_MUL && lua_type(L, 1) == LUA_TNUMBER) {
        int x = check_tensor(L, 2);
        builder *b = begin(L);
        return push_tensor(L, b, graph_scale(b->g, x, lua_tonumber(L, 1), NULL, &b->err));
    }
    int a = check_tensor(L, 1), c = check_tensor(L, 2);
    builder *b = begin(L);
    return push_tensor(L, b, graph_binary(b->g, op, a, c, opt_name(L, 3), &b->err));
}

static int t_add(lua_State *L) { return binop(L, KG_ADD); }
static int t_mul(lua_State *L) { return binop(L, KG_MUL); }

static const luaL_Reg tensor_methods[] = {
    {"reshape", t_reshape}, {"slice", t_slice}, {"transpose", t_transpose},
    {"shape", t_shape},     {"name", t_name},   {NULL, NULL}};

/* ---------------------------------------------------------------- option tables
 *
 * Every table of named options a spec passes is checked against the keys its op knows before
 * anything is read from it: g:rope's and its params, g:attention's, g:moe's and its shared
 * expert, g:pool's, g:rms_norm's, cfg:int's range, cfg:rope's, the archspec table, and the
 * kiln.* helpers' through kiln.options. A misspelt key (sliding_window for window) would
 * otherwise be ignored, and the model would build, pass `kilnc check` and run, wrongly. The
 * error names the key, the op, the spec line and the nearest known key. Values are checked by
 * type as well: an integer option given 0.5, a boolean given 1, a number that is not finite
 * are errors naming the option, what it got and what it expects; nothing is coerced (64.0 is
 * an integer, as in shapes).
 */
typedef enum opt_type {
    OT_ANY, /* checked by the op itself */
    OT_INT,
    OT_NUM,
    OT_BOOL,
    OT_STR,
    OT_TABLE,
    OT_TENSOR,
    OT_FUNC,
    OT_N
} opt_type;
/* the names kiln.options takes in its declaration table */
static const char *const opt_type_names[] = {"any",   "integer", "number", "boolean",
                                             "string", "table",   "tensor", "function"};
_Static_assert(ARRAY_LEN(opt_type_names) == OT_N, "option type table out of sync");

typedef struct opt_decl {
    const char *key;
    opt_type type;
} opt_decl;

/* kiln.options declares at most this many keys (a bound on the declaration table). */
#define OPT_MAX_KEYS 64

static const char *spec_path_of(lua_State *L);
static int spec_key_line(const char *path, const char *key);

/* Raises an option error located at the spec line that made the call. Where no spec line is on
 * the Lua stack (the archspec table: `return kiln.archspec{...}` is a tail call, and spec_probe
 * reads the table from C) or `at_key` asks for it, the line is the one where `key =` is written
 * in the spec file. */
static int opt_fail(lua_State *L, const char *key, int at_key, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char file[512];
    int line;
    int on_stack = spec_where(L, file, sizeof file, &line);
    if (at_key || !on_stack) {
        const char *path = spec_path_of(L);
        int kl = key ? spec_key_line(path, key) : 0;
        if (kl > 0 || !file[0]) {
            snprintf(file, sizeof file, "%s", path);
            line = kl;
        }
    }
    if (line > 0)
        lua_pushfstring(L, "%s:%d: %s", file, line, msg);
    else
        lua_pushfstring(L, "%s: %s", file, msg);
    return lua_error(L);
}

/* "the number 0.5", "the string \"x\"", "a boolean (true)", "a table": what a spec gave. */
static const char *describe_value(lua_State *L, int idx, char *buf, size_t cap)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(buf, cap, "the integer %lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(buf, cap, "the number %.17g", lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: snprintf(buf, cap, "the string \"%.40s\"", lua_tostring(L, idx)); break;
    case LUA_TBOOLEAN: snprintf(buf, cap, "the boolean %s", lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TUSERDATA:
        snprintf(buf, cap, "%s", luaL_testudata(L, idx, MT_TENSOR) ? "a tensor" : "a userdata");
        break;
    default: snprintf(buf, cap, "a %s", luaL_typename(L, idx)); break;
    }
    return buf;
}

/* Whether the value at idx has type t; integers are whole numbers (64.0 is one). */
static int opt_type_ok(lua_State *L, int idx, opt_type t)
{
    switch (t) {
    case OT_ANY: return 1;
    case OT_INT:
        if (lua_isinteger(L, idx))
            return 1;
        if (lua_type(L, idx) == LUA_TNUMBER) {
            double d = lua_tonumber(L, idx);
            return isfinite(d) && d == floor(d) && fabs(d) < 9e15;
        }
        return 0;
    case OT_NUM: return lua_type(L, idx) == LUA_TNUMBER && isfinite(lua_tonumber(L, idx));
    case OT_BOOL: return lua_type(L, idx) == LUA_TBOOLEAN;
    case OT_STR: return lua_type(L, idx) == LUA_TSTRING;
    case OT_TABLE: return lua_type(L, idx) == LUA_TTABLE;
    case OT_TENSOR: return luaL_testudata(L, idx, MT_TENSOR) != NULL;
    case OT_FUNC: return lua_type(L, idx) == LUA_TFUNCTION;
    case OT_N: break;
    }
    assert(0 && "bad option type");
    return 0;
}

static const char *opt_type_expect(opt_type t)
{
    switch (t) {
    case OT_INT: return "an integer (a whole number)";
    case OT_NUM: return "a finite number";
    case OT_BOOL: return "a boolean (true or false)";
    case OT_STR: return "a string";
    case OT_TABLE: return "a table";
    case OT_TENSOR: return "a tensor (a value g: returned)";
    case OT_FUNC: return "a function";
    default: return "anything";
    }
}

/* The known key to suggest for an unknown one: the nearest by edit distance when it is close
 * (renormalise -> renormalize), else one the unknown key contains or is part of
 * (sliding_window -> window); NULL when nothing is close. */
static const char *nearest_key(const char *key, const opt_decl *d, int n)
{
    int klen = (int)strlen(key), limit = klen / 3 > 2 ? klen / 3 : 2, best = limit + 1;
    const char *r = NULL;
    for (int i = 0; i < n; i++) {
        int dist = edit_distance(key, d[i].key, best - 1);
        if (dist < best) {
            best = dist;
            r = d[i].key;
        }
    }
    for (int i = 0; !r && i < n; i++)
        if (strlen(d[i].key) >= 3 && (strstr(key, d[i].key) || (klen >= 3 && strstr(d[i].key, key))))
            r = d[i].key;
    return r;
}

/* Checks the options table at index t of op `op` against d[0..n): every key is a declared
 * string and every value has its declared type. at_key: locate errors at the key's line in the
 * spec file (the archspec table). */
static void check_opts(lua_State *L, int t, const char *op, const opt_decl *d, int n, int at_key)
{
    char got[96];
    t = lua_absindex(L, t);
    if (!lua_istable(L, t))
        opt_fail(L, NULL, 0, "%s: the options must be a table {key = value, ...}, got %s", op,
                 describe_value(L, t, got, sizeof got));
    lua_pushnil(L);
    /* Bounded: every round passes a distinct declared key or raises, so at most n + 1 rounds. */
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            opt_fail(L, NULL, 0, "%s: options are named (key = value), got a value under the key %s",
                     op, describe_value(L, -2, got, sizeof got));
        const char *k = lua_tostring(L, -2);
        int i = 0;
        while (i < n && strcmp(d[i].key, k) != 0)
            i++;
        if (i == n) {
            char known[600] = "";
            size_t used = 0;
            for (int j = 0; j < n && used < sizeof known; j++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", j ? ", " : "",
                                         d[j].key);
            const char *near = nearest_key(k, d, n);
            opt_fail(L, k, at_key, "%s: unknown key '%.80s'%s%s%s; known keys: %s", op, k,
                     near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "", known);
        }
        if (!opt_type_ok(L, -1, d[i].type))
            opt_fail(L, k, at_key, "%s: option '%s' must be %s, got %s", op, k,
                     opt_type_expect(d[i].type), describe_value(L, -1, got, sizeof got));
        lua_pop(L, 1);
    }
}

/* kiln.options(opts, op, {key = "integer" | "number" | "boolean" | "string" | "table" |
 * "tensor" | "function" | "any", ...} [, at_key]) -> opts: the check of the C ops for a Lua
 * helper's (or a spec's own) options table. nil opts pass (an omitted table). Keys are listed
 * sorted. at_key: locate errors at the line of the spec file where the key is written (the
 * archspec table, written over many lines under one call). */
static int spec_options(lua_State *L)
{
    const char *op = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    if (lua_isnoneornil(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    opt_decl d[OPT_MAX_KEYS];
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 3)) { /* bounded by OPT_MAX_KEYS */
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "kiln.options: the declaration of %s maps key names to type names",
                              op);
        if (n == OPT_MAX_KEYS)
            return luaL_error(L, "kiln.options: %s declares more than %d keys", op, OPT_MAX_KEYS);
        const char *tn = lua_tostring(L, -1);
        int t = 0;
        while (t < OT_N && strcmp(opt_type_names[t], tn) != 0)
            t++;
        if (t == OT_N)
            return luaL_error(L, "kiln.options: %s declares key '%s' of type '%s'; types are any, "
                                 "integer, number, boolean, string, table, tensor, function",
                              op, lua_tostring(L, -2), tn);
        /* insertion in name order; the key strings stay anchored in the declaration table */
        int at = n++;
        for (; at > 0 && strcmp(d[at - 1].key, lua_tostring(L, -2)) > 0; at--)
            d[at] = d[at - 1];
        d[at] = (opt_decl){lua_tostring(L, -2), (opt_type)t};
        lua_pop(L, 1);
    }
    check_opts(L, 1, op, d, n, lua_toboolean(L, 4));
    lua_settop(L, 1);
    return 1;
}

/* Options become C ints (heads, head_dim, window, top_k ...): out of range is an error, not a
 * silent truncation. The type was checked by check_opts. */
static int64_t opt_field_int(lua_State *L, int t, const char *op, const char *k, int64_t def)
{
    lua_getfield(L, t, k);
    int64_t v = def;
    if (!lua_isnil(L, -1)) {
        v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (int64_t)lua_tonumber(L, -1);
        if (v < -((int64_t)1 << 30) || v > ((int64_t)1 << 30))
            opt_fail(L, k, 0, "%s: option '%s' is %lld; expected an integer within +-2^30", op, k,
                     (long long)v);
    }
    lua_pop(L, 1);
    return v;
}

static double opt_field_num(lua_State *L, int t, const char *k, double def)
{
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? def : lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int opt_field_bool(lua_State *L, int t, const char *k, int def)
{
    lua_getfield(L, t, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static int64_t req_field_int(lua_State *L, int t, const char *k, const char *op)
{
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1))
        opt_fail(L, k, 0, "%s: option '%s' is required", op, k);
    lua_pop(L, 1);
    return opt_field_int(L, t, op, k, 0);
}

static int req_field_tensor(lua_State *L, int t, const char *k, const char *op)
{
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1))
        opt_fail(L, k, 0, "%s: option '%s' is required", op, k);
    int id = check_tensor(L, -1);
    lua_pop(L, 1);
    return id;
}

/* ---------------------------------------------------------------- graph builder (g) */

static int g_input(lua_State *L)
{
    static const char *kinds[] = {"ids", "positions", "token_types", NULL};
    luaL_checkudata(L, 1, MT_GRAPH);
    int k = luaL_checkoption(L, 2, NULL, kinds);
    builder *b = begin(L);
    return push_tensor(L, b, graph_input(b->g, (kg_input_kind)k, &b->err));
}

static int g_weight(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    const char *name = luaL_checkstring(L, 2);
    int64_t sh[KG_MAX_DIMS];
    int n = check_shape(L, 3, sh);
    builder *b = begin(L);
    return push_tensor(L, b, graph_weight(b->g, name, n, sh, &b->err));
}

static int g_has_weight(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    const char *name = luaL_checkstring(L, 2);
    builder *b = get_builder(L);
    lua_pushboolean(L, b->w && st_find(b->w, name) != NULL);
    return 1;
}

/* The checkpoint's shape of a tensor, or nil: for specs that must look (e.g. which of two
 * layouts a checkpoint uses). */
static int g_weight_shape(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    const char *name = luaL_checkstring(L, 2);
    builder *b = get_builder(L);
    const st_tensor *t = b->w ? st_find(b->w, name) : NULL;
    if (!t) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->shape[i]);
        lua_seti(L, -2, i + 1);
    }
    return 1;
}

static int g_layer(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    builder *b = get_builder(L);
    if (lua_isnoneornil(L, 2)) {
        graph_scope(b->g, NULL);
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        graph_scope(b->g, lua_tostring(L, 2));
    } else {
        char p[32];
        snprintf(p, sizeof p, "L%lld", (long long)check_int(L, 2, "layer"));
        graph_scope(b->g, p);
    }
    return 0;
}

static int g_embed(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int t = check_tensor(L, 2), ids = check_tensor(L, 3);
    builder *b = begin(L);
    return push_tensor(L, b, graph_embed(b->g, t, ids, opt_name(L, 4), &b->err));
}

static int g_linear(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2), w = check_tensor(L, 3);
    int bias = -1;
    const char *name = NULL;
    if (lua_type(L, 4) == LUA_TSTRING)
        name = lua_tostring(L, 4);
    else {
        bias = opt_tensor(L, 4);
        name = opt_name(L, 5);
    }
    builder *b = begin(L);
    return push_tensor(L, b, graph_linear(b->g, x, w, bias, name, &b->err));
}

static int g_rms_norm(lua_State *L)
{
    static const opt_decl opts[] = {{"offset", OT_ANY}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2), w = check_tensor(L, 3);
    double eps = luaL_checknumber(L, 4);
    int offset = 0;
    const char *name = opt_name(L, 5);
    if (lua_type(L, 5) == LUA_TTABLE) { /* {offset = 1} for (1 + w) weights */
        check_opts(L, 5, "rms_norm", opts, 1, 0);
        lua_getfield(L, 5, "offset");
        /* true or 1: scale by (1 + w); false, 0 or absent: by w. Nothing else is a choice. */
        if (lua_isboolean(L, -1))
            offset = lua_toboolean(L, -1);
        else if (lua_isinteger(L, -1) && (lua_tointeger(L, -1) == 0 || lua_tointeger(L, -1) == 1))
            offset = (int)lua_tointeger(L, -1);
        else if (!lua_isnil(L, -1)) {
            char got[96];
            opt_fail(L, "offset", 0, "rms_norm: option 'offset' must be 1 or true (scale by 1 + w) "
                                     "or 0 or false, got %s",
                     describe_value(L, -1, got, sizeof got));
        }
        lua_pop(L, 1);
        name = opt_name(L, 6);
    }
    builder *b = begin(L);
    return push_tensor(L, b, graph_rms_norm(b->g, x, w, eps, offset, name, &b->err));
}

static int g_layer_norm(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2), w = check_tensor(L, 3), bias = opt_tensor(L, 4);
    double eps = luaL_checknumber(L, 5);
    builder *b = begin(L);
    return push_tensor(L, b, graph_layer_norm(b->g, x, w, bias, eps, opt_name(L, 6), &b->err));
}

/* The fields of the rope table: cfg:rope() writes them, g:rope{params = } reads them back and
 * refuses any other key. One list, so the two directions and the key check agree. */
typedef struct rope_field {
    const char *key;
    opt_type type; /* OT_NUM: a double; OT_INT: an int64_t; OT_BOOL: an int */
    size_t off;
    double def; /* when the spec's table lacks the field */
} rope_field;
static const rope_field rope_fields[] = {
    {"theta", OT_NUM, offsetof(rope_params, theta), 10000},
    {"partial", OT_NUM, offsetof(rope_params, partial), 1},
    {"factor", OT_NUM, offsetof(rope_params, factor), 1},
    {"attention_factor", OT_NUM, offsetof(rope_params, attention_factor), 1},
    {"max_position_embeddings", OT_INT, offsetof(rope_params, max_pos), 0},
    {"original_max_position_embeddings", OT_INT, offsetof(rope_params, original_max_pos), 0},
    {"low_freq_factor", OT_NUM, offsetof(rope_params, low_freq_factor), 1},
    {"high_freq_factor", OT_NUM, offsetof(rope_params, high_freq_factor), 4},
    {"beta_fast", OT_NUM, offsetof(rope_params, beta_fast), 32},
    {"beta_slow", OT_NUM, offsetof(rope_params, beta_slow), 1},
    {"truncate", OT_BOOL, offsetof(rope_params, truncate), 1},
};

/* A longrope factor table (params.short_factor, .long_factor): a sequence of at most
 * ROPE_MAX_FACTORS positive numbers, stored as float32 as transformers does. Absent: 0 entries. */
static int rope_factors_from(lua_State *L, int t, const char *key, float *out)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_Integer n = luaL_len(L, -1);
    if (n < 1 || n > ROPE_MAX_FACTORS)
        opt_fail(L, key, 0, "rope: params.%s has %lld entries; expected 1 to %d (one per rotary "
                 "pair; kiln's limit is rotary dimensions up to %d)", key, (long long)n,
                 ROPE_MAX_FACTORS, 2 * ROPE_MAX_FACTORS);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        int isnum = 0;
        double v = lua_tonumberx(L, -1, &isnum);
        if (!isnum || !(v > 0) || !(v < 3.0e38))
            opt_fail(L, key, 0, "rope: params.%s[%lld] is %s; expected a positive number", key,
                     (long long)i, isnum ? "not a positive finite number" : luaL_typename(L, -1));
        out[i - 1] = (float)v;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return (int)n;
}

/* Rope parameters from the table cfg:rope() returns (possibly edited by the spec). */
static void rope_from_table(lua_State *L, int t, rope_params *p)
{
    t = lua_absindex(L, t);
    enum { NF = ARRAY_LEN(rope_fields) };
    opt_decl d[NF + 4] = {{"type", OT_STR}};
    for (size_t i = 0; i < NF; i++)
        d[i + 1] = (opt_decl){rope_fields[i].key, rope_fields[i].type};
    d[NF + 1] = (opt_decl){"short_factor", OT_TABLE};
    d[NF + 2] = (opt_decl){"long_factor", OT_TABLE};
    d[NF + 3] = (opt_decl){"long_attention_factor", OT_NUM};
    check_opts(L, t, "rope: params", d, (int)ARRAY_LEN(d), 0);
    memset(p, 0, sizeof *p);
    lua_getfield(L, t, "type");
    const char *ty = lua_tostring(L, -1);
    int found = -1;
    for (int i = 0; ty && i < ROPE_NTYPES; i++)
        if (strcmp(ty, rope_type_name((rope_type)i)) == 0)
            found = i;
    if (found < 0)
        opt_fail(L, "type", 0, "rope: params.type '%s' is not one of default, linear, dynamic, yarn, "
                 "llama3, longrope", ty ? ty : "nil");
    lua_pop(L, 1);
    p->type = (rope_type)found;
    for (size_t i = 0; i < ARRAY_LEN(rope_fields); i++) {
        const rope_field *f = &rope_fields[i];
        char *at = (char *)p + f->off;
        if (f->type == OT_NUM)
            *(double *)at = opt_field_num(L, t, f->key, f->def);
        else if (f->type == OT_INT)
            *(int64_t *)at = opt_field_int(L, t, "rope: params", f->key, (int64_t)f->def);
        else
            *(int *)at = opt_field_bool(L, t, f->key, f->def != 0);
    }
    p->long_attention_factor = opt_field_num(L, t, "long_attention_factor", p->attention_factor);
    int ns = rope_factors_from(L, t, "short_factor", p->short_factor);
    int nl = rope_factors_from(L, t, "long_factor", p->long_factor);
    if (ns != nl)
        opt_fail(L, "long_factor", 0, "rope: params.short_factor has %d entries and long_factor %d; "
                 "expected the same number (one per rotary pair)", ns, nl);
    if (p->type == ROPE_LONGROPE && ns == 0)
        opt_fail(L, "short_factor", 0, "rope: longrope params need short_factor and long_factor");
    p->n_factors = ns;
}

/* g:rope(x, positions, {head_dim=, params=cfg:rope(), rotary_dim=, interleaved=}) */
static int g_rope(lua_State *L)
{
    static const opt_decl opts[] = {
        {"head_dim", OT_INT}, {"params", OT_TABLE}, {"rotary_dim", OT_INT}, {"interleaved", OT_BOOL}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2), pos = check_tensor(L, 3);
    check_opts(L, 4, "rope", opts, (int)ARRAY_LEN(opts), 0);
    kg_rope r = {0};
    r.head_dim = (int)req_field_int(L, 4, "head_dim", "rope");
    lua_getfield(L, 4, "params");
    if (lua_isnil(L, -1))
        opt_fail(L, "params", 0, "rope: option 'params' is required (use cfg:rope())");
    rope_from_table(L, lua_gettop(L), &r.p);
    lua_pop(L, 1);
    /* transformers: dim = int(head_dim * partial_rotary_factor) */
    r.rot_dim = (int)opt_field_int(L, 4, "rope", "rotary_dim", (int64_t)(r.head_dim * r.p.partial));
    r.interleaved = opt_field_bool(L, 4, "interleaved", 0);
    if (r.p.n_factors && r.p.n_factors != r.rot_dim / 2)
        opt_fail(L, "params", 0, "rope: params.short_factor and long_factor have %d entries; "
                 "expected one per rotary pair, rotary_dim / 2 = %d (check the config's "
                 "rope_scaling against head_dim and partial_rotary_factor)", r.p.n_factors, r.rot_dim / 2);
    builder *b = begin(L);
    return push_tensor(L, b, graph_rope(b->g, x, pos, &r, opt_name(L, 5), &b->err));
}

/* g:attention(q, k, v, {heads=, kv_heads=, head_dim=, causal=, window=, alibi=, softcap=,
 * scale=}) */
static int g_attention(lua_State *L)
{
    static const opt_decl opts[] = {{"heads", OT_INT},  {"kv_heads", OT_INT}, {"head_dim", OT_INT},
                                    {"causal", OT_BOOL}, {"window", OT_INT},   {"alibi", OT_BOOL},
                                    {"softcap", OT_NUM}, {"scale", OT_NUM}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int q = check_tensor(L, 2), k = check_tensor(L, 3), v = check_tensor(L, 4);
    check_opts(L, 5, "attention", opts, (int)ARRAY_LEN(opts), 0);
    kg_attn a = {0};
    a.n_heads = (int)req_field_int(L, 5, "heads", "attention");
    a.n_kv_heads = (int)opt_field_int(L, 5, "attention", "kv_heads", a.n_heads);
    a.head_dim = (int)req_field_int(L, 5, "head_dim", "attention");
    a.causal = opt_field_bool(L, 5, "causal", 1);
    a.window = (int)opt_field_int(L, 5, "attention", "window", 0);
    a.alibi = opt_field_bool(L, 5, "alibi", 0);
    a.softcap = opt_field_num(L, 5, "softcap", 0);
    if (a.softcap < 0)
        opt_fail(L, "softcap", 0, "attention: option 'softcap' is %g; expected 0 (none) or a "
                                  "positive number (HF's attn_logit_softcapping)",
                 a.softcap);
    a.scale = opt_field_num(L, 5, "scale", a.head_dim > 0 ? 1.0 / sqrt((double)a.head_dim) : 1);
    builder *b = begin(L);
    return push_tensor(L, b, graph_attention(b->g, q, k, v, &a, opt_name(L, 6), &b->err));
}

/* g:mla_attention(q_nope, q_pe, latent, k_pe, {kv_b=, heads=, nope_dim=, rope_dim=, v_dim=,
 * scale=}): the rank is the latent's width */
static int g_mla_attention(lua_State *L)
{
    static const opt_decl opts[] = {{"kv_b", OT_TENSOR},   {"heads", OT_INT},
                                    {"nope_dim", OT_INT},  {"rope_dim", OT_INT},
                                    {"v_dim", OT_INT},     {"scale", OT_NUM}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int ins[5];
    for (int i = 0; i < 4; i++)
        ins[i] = check_tensor(L, 2 + i);
    check_opts(L, 6, "mla_attention", opts, (int)ARRAY_LEN(opts), 0);
    ins[KG_MLA_KV_B] = req_field_tensor(L, 6, "kv_b", "mla_attention");
    kg_mla m = {0};
    m.n_heads = (int)req_field_int(L, 6, "heads", "mla_attention");
    m.nope_dim = (int)req_field_int(L, 6, "nope_dim", "mla_attention");
    m.rope_dim = (int)req_field_int(L, 6, "rope_dim", "mla_attention");
    m.v_dim = (int)req_field_int(L, 6, "v_dim", "mla_attention");
    m.scale = opt_field_num(L, 6, "scale",
                            m.nope_dim + m.rope_dim > 0 ? 1.0 / sqrt((double)(m.nope_dim + m.rope_dim)) : 1);
    builder *b = begin(L);
    const kg_node *c = &b->g->nodes[ins[KG_MLA_LATENT]];
    int64_t rank = c->shape[c->ndim - 1]; /* a wrong shape is reported by graph_mla */
    m.rank = rank > 0 && rank <= (1 << 30) ? (int)rank : 0;
    return push_tensor(L, b, graph_mla(b->g, ins, &m, opt_name(L, 7), &b->err));
}

static int unary(lua_State *L, kg_op op)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2);
    builder *b = begin(L);
    return push_tensor(L, b, graph_unary(b->g, op, x, opt_name(L, 3), &b->err));
}
static int g_silu(lua_State *L) { return unary(L, KG_SILU); }
static int g_gelu(lua_State *L) { return unary(L, KG_GELU); }
static int g_gelu_tanh(lua_State *L) { return unary(L, KG_GELU_TANH); }
static int g_relu(lua_State *L) { return unary(L, KG_RELU); }

static int g_binary(lua_State *L, kg_op op)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int a = check_tensor(L, 2), c = check_tensor(L, 3);
    builder *b = begin(L);
    return push_tensor(L, b, graph_binary(b->g, op, a, c, opt_name(L, 4), &b->err));
}
static int g_add(lua_State *L) { return g_binary(L, KG_ADD); }
static int g_mul(lua_State *L) { return g_binary(L, KG_MUL); }

static int g_scale(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2);
    double s = luaL_checknumber(L, 3);
    builder *b = begin(L);
    return push_tensor(L, b, graph_scale(b->g, x, s, opt_name(L, 4), &b->err));
}

/* g:concat({a, b, c}, dim) */
static int g_concat(lua_State *L)
{
    luaL_checkudata(L, 1, MT_GRAPH);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    if (n < 1 || n > KG_MAX_IN)
        luaL_error(L, "concat: 1 to %d tensors, got %d", KG_MAX_IN, n);
    int xs[KG_MAX_IN];
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        xs[i] = check_tensor(L, -1);
        lua_pop(L, 1);
    }
    int dim = (int)check_int(L, 3, "dim");
    builder *b = begin(L);
    return push_tensor(L, b, graph_concat(b->g, xs, n, dim, opt_name(L, 4), &b->err));
}

/* A string option that names one of `names` (NULL-terminated; the type was checked): its
 * index, or def when absent. */
static int opt_field_choice(lua_State *L, int t, const char *op, const char *k,
                            const char *const *names, int def)
{
    lua_getfield(L, t, k);
    int v = def;
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        char list[200] = "";
        size_t used = 0;
        v = -1;
        for (int i = 0; names[i]; i++) {
            if (strcmp(s, names[i]) == 0)
                v = i;
            if (used < sizeof list)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                         i ? ", " : "", names[i]);
        }
        if (v < 0)
            opt_fail(L, k, 0, "%s: option '%s' is \"%.40s\"; expected one of %s", op, k, s, list);
    }
    lua_pop(L, 1);
    return v;
}

/* g:moe(x, {router=, gate=, up=, down=, top_k=, renormalize=, act=, routing=, jitter_eps=,
 *           shared={gate=, up=, down=, gate_weight=}}) */
static int g_moe(lua_State *L)
{
    static const opt_decl opts[] = {{"router", OT_TENSOR}, {"gate", OT_TENSOR},
                                    {"up", OT_TENSOR},     {"down", OT_TENSOR},
                                    {"top_k", OT_INT},     {"renormalize", OT_BOOL},
                                    {"act", OT_STR},       {"shared", OT_TABLE},
                                    {"routing", OT_STR},   {"jitter_eps", OT_NUM}};
    /* the order of kg_moe_routing */
    static const char *const routings[] = {"softmax", "sparsemixer", NULL};
    static const opt_decl shared_opts[] = {{"gate", OT_TENSOR},
                                           {"up", OT_TENSOR},
                                           {"down", OT_TENSOR},
                                           {"gate_weight", OT_TENSOR}};
    /* the order of kg_act */
    static const char *const acts[] = {"silu", "gelu", "gelu_tanh", "relu", NULL};
    luaL_checkudata(L, 1, MT_GRAPH);
    int ins[9] = {check_tensor(L, 2), -1, -1, -1, -1, -1, -1, -1, -1};
    check_opts(L, 3, "moe", opts, (int)ARRAY_LEN(opts), 0);
    ins[KG_MOE_ROUTER] = req_field_tensor(L, 3, "router", "moe");
    ins[KG_MOE_GATE] = req_field_tensor(L, 3, "gate", "moe");
    ins[KG_MOE_UP] = req_field_tensor(L, 3, "up", "moe");
    ins[KG_MOE_DOWN] = req_field_tensor(L, 3, "down", "moe");
    kg_moe m = {0};
    m.top_k = (int)req_field_int(L, 3, "top_k", "moe");
    m.renormalize = opt_field_bool(L, 3, "renormalize", 1);
    m.act = opt_field_choice(L, 3, "moe", "act", acts, KILN_ACT_SILU);
    m.routing = opt_field_choice(L, 3, "moe", "routing", routings, KG_ROUTE_SOFTMAX);
    lua_getfield(L, 3, "jitter_eps");
    int has_eps = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (m.routing == KG_ROUTE_SPARSEMIXER && !has_eps)
        opt_fail(L, "routing", 0, "moe: routing \"sparsemixer\" needs option 'jitter_eps' "
                 "(the config's router_jitter_noise)");
    if (m.routing != KG_ROUTE_SPARSEMIXER && has_eps)
        opt_fail(L, "jitter_eps", 0, "moe: option 'jitter_eps' applies only to routing "
                 "\"sparsemixer\"");
    m.jitter_eps = opt_field_num(L, 3, "jitter_eps", 0);
    lua_getfield(L, 3, "shared");
    if (!lua_isnil(L, -1)) {
        int s = lua_gettop(L);
        check_opts(L, s, "moe: shared", shared_opts, (int)ARRAY_LEN(shared_opts), 0);
        m.has_shared = 1;
        ins[KG_MOE_SH_GATE] = req_field_tensor(L, s, "gate", "moe: shared");
        ins[KG_MOE_SH_UP] = req_field_tensor(L, s, "up", "moe: shared");
        ins[KG_MOE_SH_DOWN] = req_field_tensor(L, s, "down", "moe: shared");
        lua_getfield(L, s, "gate_weight");
        if (!lua_isnil(L, -1)) {
            ins[KG_MOE_SH_GATE_W] = check_tensor(L, -1);
            m.shared_gate = 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    builder *b = begin(L);
    m.n_experts = ins[KG_MOE_ROUTER] >= 0 ? (int)b->g->nodes[ins[KG_MOE_ROUTER]].shape[0] : 0;
    return push_tensor(L, b, graph_moe(b->g, ins, &m, opt_name(L, 4), &b->err));
}

/* g:pool(x, {mode="mean"|"cls"|"last", normalize=bool}) */
static int g_pool(lua_State *L)
{
    static const opt_decl opts[] = {{"mode", OT_STR}, {"normalize", OT_BOOL}};
    /* the order of KILN_POOL_MEAN, _CLS, _LAST */
    static const char *const modes[] = {"mean", "cls", "last", NULL};
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2);
    int mode = KILN_POOL_MEAN, norm = 0;
    if (!lua_isnoneornil(L, 3)) {
        check_opts(L, 3, "pool", opts, (int)ARRAY_LEN(opts), 0);
        mode = opt_field_choice(L, 3, "pool", "mode", modes, KILN_POOL_MEAN);
        norm = opt_field_bool(L, 3, "normalize", 0);
    }
    builder *b = begin(L);
    return push_tensor(L, b, graph_pool(b->g, x, mode, norm, opt_name(L, 4), &b->err));
}

/* Reads optional tensor field k of table t: its id, or -1 when absent. */
static int opt_field_tensor(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    int id = lua_isnil(L, -1) ? -1 : check_tensor(L, -1);
    lua_pop(L, 1);
    return id;
}

/* g:score(pooled, {weight=, bias=, pooler={weight=, bias=}} [, name]): the classify head */
static int g_score(lua_State *L)
{
    static const opt_decl opts[] = {{"bias", OT_TENSOR}, {"pooler", OT_TABLE},
                                    {"weight", OT_TENSOR}};
    static const opt_decl pooler_opts[] = {{"bias", OT_TENSOR}, {"weight", OT_TENSOR}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int ins[5] = {check_tensor(L, 2), -1, -1, -1, -1};
    check_opts(L, 3, "score", opts, (int)ARRAY_LEN(opts), 0);
    ins[KG_SCORE_W] = req_field_tensor(L, 3, "weight", "score");
    ins[KG_SCORE_B] = opt_field_tensor(L, 3, "bias");
    lua_getfield(L, 3, "pooler");
    if (!lua_isnil(L, -1)) {
        int s = lua_gettop(L);
        check_opts(L, s, "score: pooler", pooler_opts, (int)ARRAY_LEN(pooler_opts), 0);
        ins[KG_SCORE_DENSE] = req_field_tensor(L, s, "weight", "score: pooler");
        ins[KG_SCORE_DENSE_B] = req_field_tensor(L, s, "bias", "score: pooler");
    }
    lua_pop(L, 1);
    builder *b = begin(L);
    return push_tensor(L, b, graph_score(b->g, ins, opt_name(L, 4), &b->err));
}

/* g:logits(x, head [, bias] [, {softcap=}] [, name]): bias [vocab] (nil for none); softcap is
 * Gemma 2's final_logit_softcapping, logits = softcap * tanh(logits / softcap) (0: none). */
static int g_logits(lua_State *L)
{
    static const opt_decl opts[] = {{"softcap", OT_NUM}};
    luaL_checkudata(L, 1, MT_GRAPH);
    int x = check_tensor(L, 2), w = check_tensor(L, 3), bias = -1, at = 4;
    double cap = 0;
    if (luaL_testudata(L, at, MT_TENSOR))
        bias = check_tensor(L, at++);
    else if (lua_isnil(L, at) && lua_gettop(L) > at) /* an explicit nil: no bias */
        at++;
    if (lua_istable(L, at)) {
        check_opts(L, at, "logits", opts, (int)ARRAY_LEN(opts), 0);
        cap = opt_field_num(L, at, "softcap", 0);
        if (!(cap >= 0) || !isfinite(cap))
            opt_fail(L, "softcap", 0, "logits: option 'softcap' is %g; expected 0 (none) or a "
                                      "positive number (HF's final_logit_softcapping)",
                     cap);
        at++;
    }
    if (!lua_isnoneornil(L, at) && lua_type(L, at) != LUA_TSTRING)
        luaL_argerror(L, at, "expected g:logits(x, head [, bias] [, {softcap=}] [, name])");
    const char *name = opt_name(L, at);
    builder *b = begin(L);
    int id = graph_logits(b->g, x, w, bias, name, &b->err);
    if (id >= 0 && cap > 0 && graph_logits_softcap(b->g, id, cap, &b->err))
        id = -1;
    return push_tensor(L, b, id);
}

static const luaL_Reg graph_methods[] = {
    {"input", g_input},       {"weight", g_weight},         {"has_weight", g_has_weight},
    {"weight_shape", g_weight_shape},                       {"layer", g_layer},
    {"embed", g_embed},       {"linear", g_linear},         {"rms_norm", g_rms_norm},
    {"layer_norm", g_layer_norm},                           {"rope", g_rope},
    {"attention", g_attention},                             {"silu", g_silu},
    {"mla_attention", g_mla_attention},
    {"gelu", g_gelu},         {"gelu_tanh", g_gelu_tanh},   {"relu", g_relu},
    {"add", g_add},           {"mul", g_mul},               {"scale", g_scale},
    {"concat", g_concat},     {"moe", g_moe},               {"pool", g_pool},
    {"logits", g_logits},     {"score", g_score},           {NULL, NULL}};

/* ---------------------------------------------------------------- config view (cfg) */

static const config *get_cfg(lua_State *L)
{
    const config **u = luaL_checkudata(L, 1, MT_CONFIG);
    return *u;
}

/* Raises a config error at the spec line that asked. */
static int cfg_fail(lua_State *L, kerr *e)
{
    char file[512];
    int line;
    spec_where(L, file, sizeof file, &line);
    if (file[0])
        lua_pushfstring(L, "%s (needed by %s:%d)", kerr_msg(e), file, line);
    else
        lua_pushstring(L, kerr_msg(e));
    return lua_error(L);
}

/* cfg:int(field [, default [, {min=, max=}]]): by default a positive C int, with a sane upper
 * bound for the fields that size a model (config_int_range); a spec reading a field where 0 or
 * a negative value means something says so: cfg:int("sliding_window", 0, {min = 0}). */
static int c_int(lua_State *L)
{
    const config *c = get_cfg(L);
    const char *f = luaL_checkstring(L, 2);
    int has_def = !lua_isnoneornil(L, 3);
    int64_t def = has_def ? check_int(L, 3, "default") : 0, v, min, max;
    config_int_range(f, &min, &max);
    if (!lua_isnoneornil(L, 4)) {
        static const opt_decl opts[] = {{"min", OT_INT}, {"max", OT_INT}};
        check_opts(L, 4, "cfg:int", opts, (int)ARRAY_LEN(opts), 0);
        min = opt_field_int(L, 4, "cfg:int", "min", min);
        max = opt_field_int(L, 4, "cfg:int", "max", max);
    }
    kerr e;
    kerr_clear(&e);
    if (config_int_in(c, f, has_def, def, min, max, &v, &e))
        return cfg_fail(L, &e);
    lua_pushinteger(L, v);
    return 1;
}

static int c_float(lua_State *L)
{
    const config *c = get_cfg(L);
    const char *f = luaL_checkstring(L, 2);
    int has_def = !lua_isnoneornil(L, 3);
    double def = has_def ? luaL_checknumber(L, 3) : 0, v;
    kerr e;
    kerr_clear(&e);
    if (config_float(c, f, has_def, def, &v, &e))
        return cfg_fail(L, &e);
    lua_pushnumber(L, v);
    return 1;
}

static int c_bool(lua_State *L)
{
    const config *c = get_cfg(L);
    const char *f = luaL_checkstring(L, 2);
    int has_def = !lua_isnoneornil(L, 3);
    if (has_def && !lua_isboolean(L, 3)) {
        char got[96];
        opt_fail(L, NULL, 0, "cfg:bool(\"%s\", default): the default must be true or false, got %s",
                 f, describe_value(L, 3, got, sizeof got));
    }
    int def = has_def ? lua_toboolean(L, 3) : 0, v;
    kerr e;
    kerr_clear(&e);
    if (config_bool(c, f, has_def, def, &v, &e))
        return cfg_fail(L, &e);
    lua_pushboolean(L, v);
    return 1;
}

static int c_str(lua_State *L)
{
    const config *c = get_cfg(L);
    const char *f = luaL_checkstring(L, 2);
    int has_def = !lua_isnoneornil(L, 3);
    const char *def = has_def ? luaL_checkstring(L, 3) : NULL, *v;
    kerr e;
    kerr_clear(&e);
    if (config_string(c, f, has_def, def, &v, &e))
        return cfg_fail(L, &e);
    lua_pushstring(L, v);
    return 1;
}

static int c_has(lua_State *L)
{
    lua_pushboolean(L, config_has(get_cfg(L), luaL_checkstring(L, 2)));
    return 1;
}

/* Any JSON value as a Lua value (objects and arrays as tables, null as nil). */
static void push_json(lua_State *L, json_t *v, int depth)
{
    luaL_checkstack(L, 4, "config value nested too deeply");
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: {
        lua_newtable(L);
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            if (depth < 32)
                push_json(L, x, depth + 1);
            else
                lua_pushnil(L);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        lua_newtable(L);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (depth < 32)
                push_json(L, json_array_get(v, i), depth + 1);
            else
                lua_pushnil(L);
            lua_seti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushstring(L, json_string_value(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
    }
}

/* cfg:get(field) -> the raw value (nil when absent), for lists such as layer_types. */
static int c_get(lua_State *L)
{
    push_json(L, config_get(get_cfg(L), luaL_checkstring(L, 2)), 0);
    return 1;
}

static int c_path(lua_State *L)
{
    lua_pushstring(L, get_cfg(L)->path);
    return 1;
}

static void push_rope(lua_State *L, const rope_params *p)
{
    lua_createtable(L, 0, (int)ARRAY_LEN(rope_fields) + 1);
    lua_pushstring(L, rope_type_name(p->type));
    lua_setfield(L, -2, "type");
    for (size_t i = 0; i < ARRAY_LEN(rope_fields); i++) {
        const rope_field *f = &rope_fields[i];
        const char *at = (const char *)p + f->off;
        if (f->type == OT_NUM)
            lua_pushnumber(L, *(const double *)at);
        else if (f->type == OT_INT)
            lua_pushinteger(L, *(const int64_t *)at);
        else
            lua_pushboolean(L, *(const int *)at);
        lua_setfield(L, -2, f->key);
    }
    lua_pushnumber(L, p->long_attention_factor);
    lua_setfield(L, -2, "long_attention_factor");
    if (p->n_factors) {
        const float *tabs[2] = {p->short_factor, p->long_factor};
        static const char *const keys[2] = {"short_factor", "long_factor"};
        for (int k = 0; k < 2; k++) {
            lua_createtable(L, p->n_factors, 0);
            for (int i = 0; i < p->n_factors; i++) {
                lua_pushnumber(L, tabs[k][i]);
                lua_rawseti(L, -2, i + 1);
            }
            lua_setfield(L, -2, keys[k]);
        }
    }
}

/* cfg:rope{layer_type=, theta_field=, default_theta=} -> table */
static int c_rope(lua_State *L)
{
    const config *c = get_cfg(L);
    const char *layer_type = NULL, *theta_field = NULL;
    double def_theta = 10000;
    if (!lua_isnoneornil(L, 2)) {
        static const opt_decl opts[] = {
            {"layer_type", OT_STR}, {"theta_field", OT_STR}, {"default_theta", OT_NUM}};
        check_opts(L, 2, "cfg:rope", opts, (int)ARRAY_LEN(opts), 0);
        lua_getfield(L, 2, "layer_type");
        layer_type = lua_tostring(L, -1);
        lua_getfield(L, 2, "theta_field");
        theta_field = lua_tostring(L, -1);
        def_theta = opt_field_num(L, 2, "default_theta", 10000);
    }
    rope_params p;
    kerr e;
    kerr_clear(&e);
    if (config_rope(c, layer_type, theta_field, def_theta, &p, &e))
        return cfg_fail(L, &e);
    push_rope(L, &p);
    return 1;
}

static const luaL_Reg config_methods[] = {
    {"int", c_int}, {"float", c_float}, {"bool", c_bool}, {"str", c_str},
    {"has", c_has}, {"get", c_get},     {"path", c_path}, {"rope", c_rope}, {NULL, NULL}};

/* ---------------------------------------------------------------- sandbox
 *
 * An archspec is a program, and it may come from a folder the user did not write
 * (KILN_SPEC_PATH), loaded by every command that resolves an architecture. So every Lua state
 * kiln creates is a sandbox, and what a spec can do wrong is bounded and reported with its name:
 * - memory: the allocator refuses to grow the state past SPEC_MEM_CAP (Lua then collects and
 *   raises "not enough memory", reported as the limit); the count hook reports a state close to
 *   the cap earlier, with the spec line, when a collection does not help;
 * - time: the count hook runs every SPEC_HOOK_EVERY instructions, and past SPEC_MAX_INSTR it
 *   raises an error at the spec line. From then on it fires at every instruction, so a pcall
 *   in the spec cannot keep a loop alive: each caller fails at its next instruction;
 * - C time: Lua patterns backtrack inside C, where no hook runs; string.find, match, gmatch and
 *   gsub refuse a pattern whose matching could take more than SPEC_MAX_MATCH steps. The table
 *   functions that loop in C over a length (insert, remove, move, sort, concat, unpack) refuse
 *   lengths no table within the memory cap has (a __len metamethod can claim 2^60), and
 *   string.rep fills its result by doubling (Lua's makes one memcpy per copy);
 * - finalizers: Lua runs __gc with hooks off, so setmetatable refuses a metatable with __gc;
 * - output: print writes at most SPEC_MAX_PRINT bytes per state;
 * - libraries: base without dofile and loadfile, and load() takes text chunks only (binary
 *   chunks are not verified by Lua); string without dump; table, math, utf8. No io, os, debug,
 *   coroutine or package. `require` is kiln's own: a plain module name, looked up in the
 *   built-in archspecs folder (kiln.lua) and then next to the spec;
 * - files: a spec or module is a regular file of at most SPEC_MAX_FILE bytes (a FIFO would
 *   block, /dev/zero would never end);
 * - messages: an error message is cut at SPEC_MSG_CAP bytes and is never empty.
 */
#define SPEC_MEM_CAP ((size_t)256 << 20)
#define SPEC_HOOK_EVERY 1000
/* The most demanding build measured, Mixtral with 128 layers of 128 experts, runs 1.3 million
 * instructions (a 126-layer Llama 40,000): 100 million is ample, and about a second. */
#define SPEC_MAX_INSTR ((int64_t)100 * 1000 * 1000)
#define SPEC_MAX_MATCH 2e8
#define SPEC_MAX_FILE ((int64_t)4 << 20)
#define SPEC_MSG_CAP 2000
#define SPEC_MAX_PRINT ((size_t)64 << 10)
/* table elements: more than a table within SPEC_MEM_CAP can hold */
#define SPEC_MAX_ELEMS ((lua_Integer)1 << 25)
/* declarations read by spec_probe */
#define SPEC_MAX_LIST 1000
#define SPEC_MAX_NAME 256

typedef struct sandbox {
    size_t used;        /* bytes the state holds */
    int64_t ticks;      /* count-hook calls */
    int out_of_memory;  /* the allocator refused a request */
    int out_of_time;    /* the instruction budget is spent */
    size_t printed;     /* bytes print() wrote */
    char *lib_dir;      /* the built-in archspecs folder (kiln.lua), or NULL */
    char *spec_dir;     /* the folder of the spec being run */
    char *spec_path;    /* the spec being run */
} sandbox;

static sandbox *get_sandbox(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

static const char *spec_path_of(lua_State *L) { return get_sandbox(L)->spec_path; }



/* The 1-based line of the spec file where `key =` is first written, 0 if nowhere (or the file
 * cannot be read): the location of an error about the archspec table, which Lua cannot give. */
static int spec_key_line(const char *path, const char *key)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char *text = xmalloc((size_t)SPEC_MAX_FILE + 1);
    size_t n = fread(text, 1, (size_t)SPEC_MAX_FILE, f);
    fclose(f);
    text[n] = 0;
    size_t klen = strlen(key);
    int line = 0;
    for (const char *p = text; klen && !line && (p = memmem(p, n - (size_t)(p - text), key, klen));
         p += klen) {
        int starts = p == text || !(p[-1] == '_' || isalnum((unsigned char)p[-1]));
        const char *q = p + klen;
        while (*q == ' ' || *q == '\t')
            q++;
        if (starts && q[0] == '=' && q[1] != '=') {
            line = 1;
            for (const char *c = text; c < p; c++)
                line += *c == '\n';
        }
    }
    free(text);
    return line;
}

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sandbox *sb = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        sb->used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > SPEC_MEM_CAP - sb->used) {
        sb->out_of_memory = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) /* Lua assumes shrinking never fails: keep the old block then */
        return nsize <= old ? ptr : NULL;
    sb->used = sb->used - old + nsize;
    return p;
}

static void sb_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    sandbox *sb = get_sandbox(L);
    char file[512];
    int line;
    if (sb->used > SPEC_MEM_CAP - SPEC_MEM_CAP / 8) {
        lua_gc(L, LUA_GCCOLLECT);
        if (sb->used > SPEC_MEM_CAP - SPEC_MEM_CAP / 8) {
            spec_where_from(L, 0, file, sizeof file, &line);
            lua_pushfstring(L, "%s:%d: the archspec holds more than %d MiB of memory, close to the "
                               "limit of %d MiB for an archspec (a table or string that grows "
                               "without end?)",
                            file[0] ? file : "?", line, (int)((SPEC_MEM_CAP / 8 * 7) >> 20),
                            (int)(SPEC_MEM_CAP >> 20));
            lua_error(L);
        }
    }
    if (++sb->ticks <= SPEC_MAX_INSTR / SPEC_HOOK_EVERY)
        return;
    if (!sb->out_of_time) {
        sb->out_of_time = 1;
        lua_sethook(L, sb_hook, LUA_MASKCOUNT, 1);
    }
    spec_where_from(L, 0, file, sizeof file, &line);
    lua_pushfstring(L, "%s:%d: the archspec did not finish within %d million Lua instructions "
                       "(an endless loop?)",
                    file[0] ? file : "?", line, (int)(SPEC_MAX_INSTR / 1000000));
    lua_error(L);
}

/* Whether `path` is a regular file a spec may be loaded from; else a message in `why`. */
static int spec_file_ok(const char *path, char *why, size_t cap)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, cap, "cannot open %s: %s", path, strerror(errno));
        return 0;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, cap, "%s: not a regular file", path);
        return 0;
    }
    if ((int64_t)st.st_size > SPEC_MAX_FILE) {
        snprintf(why, cap, "%s: %lld bytes, more than the %lld an archspec may have", path,
                 (long long)st.st_size, (long long)SPEC_MAX_FILE);
        return 0;
    }
    return 1;
}

/* Calls the original function (upvalue 1) with this call's arguments. */
static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Counts the repetition items ('*', '+', '-', '?') of a Lua pattern, over-counting where
 * unsure: a match backtracks over at most that many choices. */
static int pattern_items(const char *p, size_t len)
{
    int q = 0;
    for (size_t i = 0; i < len;) {
        char c = p[i++];
        if (c == '%' && i < len && p[i] == 'b') {
            i += 3; /* %bxy */
            continue;
        }
        if (c == '%')
            i++;
        else if (c == '[') {
            if (i < len && p[i] == '^')
                i++;
            if (i < len && p[i] == ']')
                i++;
            while (i < len && p[i] != ']')
                i += p[i] == '%' ? 2 : 1;
            i++;
        }
        if (i < len && (p[i] == '*' || p[i] == '+' || p[i] == '-' || p[i] == '?')) {
            q++;
            i++;
        }
    }
    return q;
}

/* string.find/match/gmatch/gsub with a bound on backtracking: a pattern with q repetition
 * items tries about C(n + q, q + 1) ways on an n-byte subject (every start, every split). */
static int sb_match_guard(lua_State *L)
{
    const char *fn = lua_tostring(L, lua_upvalueindex(2));
    size_t n, pl;
    luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &pl);
    int plain = strcmp(fn, "find") == 0 && lua_toboolean(L, 4);
    if (!plain) {
        int q = pattern_items(p, pl);
        double steps = 1;
        for (int i = 0; i <= q && steps <= SPEC_MAX_MATCH; i++)
            steps = steps * ((double)n + 1 + i) / (i + 1);
        if (steps > SPEC_MAX_MATCH)
            return luaL_error(L,
                              "string.%s: a pattern with %d repetition items on a string of %d "
                              "bytes could backtrack for too long in an archspec (use fewer "
                              "'*', '+', '-', '?', a shorter string, or a plain find)",
                              fn, q, (int)(n > INT32_MAX ? INT32_MAX : n));
    }
    return call_original(L);
}

/* string.rep(s, n [, sep]), as Lua's, but filled by doubling: Lua's copies s one piece at a
 * time, so rep("x", 2^28) runs 2^28 memcpy calls (seconds under a sanitizer) before the memory
 * cap can refuse anything, and an empty s repeated 2^62 times loops without allocating. */
static int sb_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    size_t period = l + lsep;
    if (period < l || period > (size_t)LUA_MAXINTEGER / (size_t)n)
        return luaL_error(L, "resulting string too large");
    size_t total = (size_t)n * period - lsep; /* n copies of s, n - 1 separators */
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, total);
    memcpy(p, s, l);
    if (n > 1)
        memcpy(p + l, sep, lsep);
    /* p[0, filled) is a prefix of (s sep)(s sep)..., filled a multiple of the period */
    for (size_t filled = n > 1 ? period : total; filled < total;) {
        size_t k = filled < total - filled ? filled : total - filled;
        memcpy(p + filled, p, k);
        filled += k;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* table.insert, remove, move, sort, concat, unpack: their loops run in C over a length a
 * __len metamethod (or move's arguments) can make 2^60 without allocating anything. Ranges
 * beyond what a table within the memory cap can hold are refused. */
static int sb_table_guard(lua_State *L)
{
    const char *fn = lua_tostring(L, lua_upvalueindex(2));
    lua_Integer n;
    if (strcmp(fn, "move") == 0) {
        lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
        n = e >= f ? (lua_Integer)((lua_Unsigned)e - (lua_Unsigned)f) : 0;
        if (e >= f && n < 0)
            n = LUA_MAXINTEGER;
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        n = luaL_len(L, 1);
        if (strcmp(fn, "concat") == 0 || strcmp(fn, "unpack") == 0) {
            lua_Integer i = luaL_optinteger(L, strcmp(fn, "concat") == 0 ? 3 : 2, 1);
            lua_Integer j = luaL_optinteger(L, strcmp(fn, "concat") == 0 ? 4 : 3, n);
            n = j >= i ? (lua_Integer)((lua_Unsigned)j - (lua_Unsigned)i) : 0;
            if (j >= i && n < 0)
                n = LUA_MAXINTEGER;
        }
    }
    if (n < -SPEC_MAX_ELEMS || n > SPEC_MAX_ELEMS)
        return luaL_error(L, "table.%s: %I elements, more than an archspec's table can hold", fn,
                          (LUAI_UACINT)n);
    return call_original(L);
}

/* print, to stdout as Lua's, but at most SPEC_MAX_PRINT bytes per state. */
static int sb_print(lua_State *L)
{
    sandbox *sb = get_sandbox(L);
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t l;
        const char *s = luaL_tolstring(L, i, &l);
        if (i > 1 && sb->printed < SPEC_MAX_PRINT) {
            fputc('\t', stdout);
            sb->printed++;
        }
        if (sb->printed < SPEC_MAX_PRINT) {
            size_t room = SPEC_MAX_PRINT - sb->printed, k = l < room ? l : room;
            fwrite(s, 1, k, stdout);
            sb->printed += k;
            if (sb->printed >= SPEC_MAX_PRINT)
                fputs("\n(archspec print output cut)\n", stdout);
        }
        lua_pop(L, 1);
    }
    if (sb->printed < SPEC_MAX_PRINT) {
        fputc('\n', stdout);
        sb->printed++;
    }
    return 0;
}

/* setmetatable without __gc: Lua runs finalizers with hooks off, so a __gc that loops would
 * escape the instruction budget (and only setmetatable can mark an object for finalization,
 * when its metatable has __gc at that moment). */
static int sb_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: an archspec cannot use __gc (finalizers run "
                                 "outside its instruction budget)");
        lua_pop(L, 1);
    }
    return call_original(L);
}

/* load(chunk [, name [, mode [, env]]]): text chunks only. */
static int sb_load(lua_State *L)
{
    if (lua_gettop(L) < 3)
        lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    return call_original(L);
}

/* Replaces every Lua function field of kiln.lua's module table (at t) by a C closure that calls
 * it (call_original). Lua reuses the caller's frame for a tail call to a Lua function, not to a
 * C function, so a spec's `return kiln.llama(g, c)` or `return kiln.archspec{...}` keeps the
 * spec's frame, and errors and nodes made by the helper name the spec's line (spec_where). */
static void wrap_lib_functions(lua_State *L, int t)
{
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (++n > SPEC_MAX_LIST)
            luaL_error(L, "kiln.lua: the module table has more than %d fields", SPEC_MAX_LIST);
        if (lua_type(L, -1) == LUA_TFUNCTION && !lua_iscfunction(L, -1)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2); /* key, key, function */
            lua_pushcclosure(L, call_original, 1);
            lua_rawset(L, t); /* an existing field: allowed while traversing */
        } else {
            lua_pop(L, 1);
        }
    }
}

/* require "name": name.lua from the built-in folder, then from the spec's own folder. */
static int sb_require(lua_State *L)
{
    sandbox *sb = get_sandbox(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "kiln.modules");
    if (lua_getfield(L, 2, name) != LUA_TNIL) {
        if (lua_islightuserdata(L, -1))
            return luaL_error(L, "module '%s' requires itself (a require loop)", name);
        return 1;
    }
    lua_pop(L, 1);
    int plain = len >= 1 && len <= 64;
    for (size_t i = 0; plain && i < len; i++)
        plain = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
                (name[i] >= '0' && name[i] <= '9') || name[i] == '_';
    if (!plain)
        return luaL_error(L, "module '%s' not found: an archspec requires modules by a plain name "
                             "(letters, digits, '_'), such as \"kiln\"",
                          name);
    const char *dirs[2] = {sb->lib_dir, sb->spec_dir};
    char why[600] = "";
    for (int d = 0; d < 2; d++) {
        if (!dirs[d])
            continue;
        const char *file = lua_pushfstring(L, "%s/%s.lua", dirs[d], name);
        if (!util_is_file(file)) {
            lua_pop(L, 1);
            continue;
        }
        if (!spec_file_ok(file, why, sizeof why))
            return luaL_error(L, "module '%s': %s", name, why);
        lua_pushlightuserdata(L, sb); /* loading: a require loop finds this */
        lua_setfield(L, 2, name);
        if (luaL_loadfilex(L, file, "t") != LUA_OK)
            return lua_error(L);
        lua_call(L, 0, 1);
        if (lua_istable(L, -1) && is_lib_file(file))
            wrap_lib_functions(L, lua_gettop(L));
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, 2, name);
        return 1;
    }
    return luaL_error(L, "module '%s' not found: an archspec can require kiln and the .lua files "
                         "next to it (looked in %s and %s)",
                      name, sb->lib_dir ? sb->lib_dir : "-", sb->spec_dir ? sb->spec_dir : "-");
}

/* build(g, cfg) with the build function at 1 and the config at 2 (a light userdata): run
 * protected, since making the two userdata allocates. */
static int build_call(lua_State *L)
{
    const config *cfg = lua_touserdata(L, 2);
    lua_settop(L, 1);
    lua_newuserdatauv(L, 0, 0);
    luaL_setmetatable(L, MT_GRAPH);
    const config **cu = lua_newuserdatauv(L, sizeof(config *), 0);
    *cu = cfg;
    luaL_setmetatable(L, MT_CONFIG);
    lua_call(L, 2, 0);
    return 0;
}

static void new_metatable(lua_State *L, const char *name, const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* Opens the libraries a spec may use and kiln's types (run protected: it allocates). */
static int sb_setup(lua_State *L)
{
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {{LUA_GNAME, luaopen_base},     {LUA_STRLIBNAME, luaopen_string},
                {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
                {LUA_UTF8LIBNAME, luaopen_utf8}};
    for (size_t i = 0; i < ARRAY_LEN(libs); i++) {
        luaL_requiref(L, libs[i].name, libs[i].open, 1);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    lua_setglobal(L, "dofile");
    lua_pushnil(L);
    lua_setglobal(L, "loadfile");
    lua_getglobal(L, "load");
    lua_pushcclosure(L, sb_load, 1);
    lua_setglobal(L, "load");
    lua_newtable(L);
    /* kiln.lua's kiln.options: a built-in module, under a name no file can have */
    lua_pushcfunction(L, spec_options);
    lua_setfield(L, -2, "kiln.options");
    lua_setfield(L, LUA_REGISTRYINDEX, "kiln.modules");
    lua_pushcfunction(L, sb_require);
    lua_setglobal(L, "require");
    lua_pushcfunction(L, sb_print);
    lua_setglobal(L, "print");
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_getglobal(L, "table");
    static const char *table_guarded[] = {"insert", "remove", "move", "sort", "concat", "unpack"};
    for (size_t i = 0; i < ARRAY_LEN(table_guarded); i++) {
        lua_getfield(L, -1, table_guarded[i]);
        lua_pushstring(L, table_guarded[i]);
        lua_pushcclosure(L, sb_table_guard, 2);
        lua_setfield(L, -2, table_guarded[i]);
    }
    lua_pop(L, 1);
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pushcfunction(L, sb_rep);
    lua_setfield(L, -2, "rep");
    static const char *guarded[] = {"find", "match", "gmatch", "gsub"};
    for (size_t i = 0; i < ARRAY_LEN(guarded); i++) {
        lua_getfield(L, -1, guarded[i]);
        lua_pushstring(L, guarded[i]);
        lua_pushcclosure(L, sb_match_guard, 2);
        lua_setfield(L, -2, guarded[i]);
    }
    lua_pop(L, 1);
    new_metatable(L, MT_GRAPH, graph_methods);
    new_metatable(L, MT_CONFIG, config_methods);
    luaL_newmetatable(L, MT_TENSOR);
    luaL_newlib(L, tensor_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, t_add);
    lua_setfield(L, -2, "__add");
    lua_pushcfunction(L, t_mul);
    lua_setfield(L, -2, "__mul");
    lua_pushcfunction(L, t_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    return 0;
}

static void close_state(lua_State *L)
{
    if (!L)
        return;
    sandbox *sb = get_sandbox(L);
    lua_close(L);
    free(sb->lib_dir);
    free(sb->spec_dir);
    free(sb->spec_path);
    free(sb);
}

/* A sandboxed state for the spec at `spec_path` (lib_dir may be NULL: no require). */
static lua_State *new_state(const char *lib_dir, const char *spec_path)
{
    sandbox *sb = xcalloc(1, sizeof *sb);
    sb->lib_dir = lib_dir ? xstrdup(lib_dir) : NULL;
    sb->spec_path = xstrdup(spec_path);
    const char *slash = strrchr(spec_path, '/');
    sb->spec_dir = slash ? xasprintf("%.*s", (int)(slash == spec_path ? 1 : slash - spec_path),
                                     spec_path)
                         : xstrdup(".");
    lua_State *L = lua_newstate(sb_alloc, sb);
    if (!L) {
        free(sb->lib_dir);
        free(sb->spec_dir);
        free(sb->spec_path);
        free(sb);
        return NULL;
    }
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, SPEC_HOOK_EVERY);
    lua_pushcfunction(L, sb_setup);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        close_state(L);
        return NULL;
    }
    return L;
}

/* Adds the error of a failed protected call (at the top of the stack) to err: bounded, never
 * empty, and naming the spec (prefixed when the message does not mention it). */
static int add_lua_err(lua_State *L, int status, const char *path, kerr *err)
{
    if (status == LUA_ERRMEM && get_sandbox(L)->out_of_memory)
        return kerr_add(err, "%s: the archspec needs more than %d MiB of memory, the limit for an "
                             "archspec (a table or string that grows without end?)",
                        path, (int)(SPEC_MEM_CAP >> 20));
    size_t n = 0;
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (!msg)
        return kerr_add(err, "%s: the archspec raised an error whose value is a %s, not a message",
                        path, luaL_typename(L, -1));
    n = strnlen(msg, n);
    if (n == 0)
        return kerr_add(err, "%s: the archspec raised an error with an empty message", path);
    int named = memmem(msg, n, path, strlen(path)) != NULL;
    return kerr_add(err, "%s%s%.*s%s", named ? "" : path, named ? "" : ": ",
                    (int)(n > SPEC_MSG_CAP ? SPEC_MSG_CAP : n), msg,
                    n > SPEC_MSG_CAP ? " ... (message cut)" : "");
}

/* Adds Lua frames of the traceback to error messages from build(); C frames are noise to a
 * spec author. The message itself is cut at SPEC_MSG_CAP bytes. */
static int msgh(lua_State *L)
{
    size_t n = 0;
    const char *msg = lua_tolstring(L, 1, &n);
    char obj[64];
    if (!msg) {
        snprintf(obj, sizeof obj, "(error object is a %s value)", luaL_typename(L, 1));
        msg = obj;
        n = strlen(obj);
    }
    n = strnlen(msg, n);
    /* error("") still gets Lua's "file:line: " in front */
    int empty = n == 0 || (n >= 2 && memcmp(msg + n - 2, ": ", 2) == 0);
    int cut = n > SPEC_MSG_CAP;
    if (cut)
        n = SPEC_MSG_CAP;
    /* Errors raised by luaL_check* ("bad argument #2 to 'linear' ...") carry no location:
     * give them the spec line, as every other error has. */
    char where[600] = "";
    if (!memmem(msg, n, ".lua:", 5)) {
        char file[512];
        int line;
        spec_where(L, file, sizeof file, &line);
        if (file[0] && !is_lib_file(file))
            snprintf(where, sizeof where, "%s:%d: ", file, line);
    }
    /* Lua's own arithmetic errors say what, not why */
    const char *hint = memmem(msg, n, "divide by zero", 14) || memmem(msg, n, "'n%0'", 5)
                           ? " (a division by zero: is a config value the spec divides by 0?)"
                           : "";
    luaL_traceback(L, L, NULL, 1);
    const char *tb = lua_tostring(L, -1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, where);
    luaL_addlstring(&b, msg, n);
    luaL_addstring(&b, cut     ? " ... (message cut)"
                       : empty ? "(an error with an empty message)"
                               : hint);
    /* keep only "\n\tfile.lua:N: in ..." lines */
    for (const char *p = tb; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t k = nl ? (size_t)(nl - p) : strlen(p);
        if (k > 1 && p[0] == '\t' && memmem(p, k, ".lua:", 5) && !memmem(p, k, "[C]", 3)) {
            luaL_addstring(&b, "\n    ");
            luaL_addlstring(&b, p + 1, k - 1 > 300 ? 300 : k - 1);
        }
        p = nl ? nl + 1 : NULL;
    }
    luaL_pushresult(&b);
    return 1;
}

/* Runs the spec file; leaves its returned table on the stack. */
static int load_spec(lua_State *L, const char *path, kerr *err)
{
    char why[600];
    if (!spec_file_ok(path, why, sizeof why))
        return kerr_add(err, "%s", why);
    lua_pushcfunction(L, msgh);
    int h = lua_gettop(L);
    int st = luaL_loadfilex(L, path, "t");
    if (st == LUA_OK)
        st = lua_pcall(L, 0, 1, h);
    if (st != LUA_OK) {
        /* `return kiln.archspec{...}` is a tail call, so kiln.lua's error(msg, 2) has no
         * location to add: add_lua_err names the spec file then. */
        add_lua_err(L, st, path, err);
        lua_pop(L, 2);
        return -1;
    }
    lua_remove(L, h);
    if (!lua_istable(L, -1)) {
        kerr_add(err, "%s: must return an archspec table (return kiln.archspec{...}), returned %s",
                 path, luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

void spec_info_free(spec_info *s)
{
    if (!s)
        return;
    free(s->path);
    free(s->name);
    for (int i = 0; i < s->n_archs; i++)
        free(s->archs[i]);
    free(s->archs);
    for (int i = 0; i < s->n_ignore; i++)
        free(s->ignore[i]);
    free(s->ignore);
    memset(s, 0, sizeof *s);
}

typedef struct probe_ctx {
    const char *path;
    spec_info *out;
    kerr *err;
    int rc;
} probe_ctx;

/* A string field of the spec table (raw: a spec's metatable runs no code here), at most
 * SPEC_MAX_NAME bytes long; NULL when absent or not a string. */
static const char *raw_str(lua_State *L, int t, const char *k)
{
    lua_pushstring(L, k);
    lua_rawget(L, t);
    return lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
}

/* The list field `k` of strings into *out (count *n); returns -1 after a message. */
static int raw_list(lua_State *L, probe_ctx *c, int t, const char *k, char ***out, int *n)
{
    int l = lua_gettop(L) + 1;
    lua_pushstring(L, k);
    lua_rawget(L, t);
    lua_Unsigned len = lua_istable(L, l) ? lua_rawlen(L, l) : 0;
    if (len > SPEC_MAX_LIST)
        return kerr_add(c->err, "%s: '%s' lists %llu entries; an archspec may list at most %d",
                        c->path, k, (unsigned long long)len, SPEC_MAX_LIST);
    *out = xcalloc(len ? (size_t)len : 1, sizeof(char *));
    for (lua_Unsigned i = 0; i < len; i++) {
        lua_rawgeti(L, l, (lua_Integer)i + 1);
        size_t sl;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
        if (!s)
            return kerr_add(c->err, "%s: %s[%llu] is not a string", c->path, k,
                            (unsigned long long)i + 1);
        if (sl > SPEC_MAX_NAME || strlen(s) != sl)
            return kerr_add(c->err, "%s: %s[%llu] is %zu bytes; expected at most %d, without NUL "
                                    "bytes",
                            c->path, k, (unsigned long long)i + 1, sl, SPEC_MAX_NAME);
        (*out)[(*n)++] = xstrdup(s);
        lua_pop(L, 1);
    }
    return 0;
}

/* Reads the declarations of the spec table (argument 1) into ctx (argument 2). Run protected;
 * problems are messages in ctx->err, not Lua errors. */
static int probe_decl(lua_State *L)
{
    probe_ctx *c = lua_touserdata(L, 2);
    spec_info *out = c->out;
    const char *path = c->path;
    c->rc = -1;
    /* the keys of a declaration, in name order as kiln.archspec (kiln.lua) lists them with
     * their types */
    static const opt_decl keys[] = {{"architectures", OT_ANY},
                                    {"build", OT_ANY},
                                    {"ignore", OT_ANY},
                                    {"name", OT_ANY},
                                    {"task", OT_ANY}};
    check_opts(L, 1, "archspec", keys, (int)ARRAY_LEN(keys), 1);
    const char *name = raw_str(L, 1, "name");
    if (!name) {
        kerr_add(c->err, "%s: the archspec has no 'name' (a string)", path);
        return 0;
    }
    if (strlen(name) > SPEC_MAX_NAME) {
        kerr_add(c->err, "%s: the archspec's 'name' has %zu bytes; expected at most %d", path,
                 strlen(name), SPEC_MAX_NAME);
        return 0;
    }
    out->name = xstrdup(name);
    const char *task = raw_str(L, 1, "task");
    int ti = -1;
    for (int i = 0; task && i < TASK_N; i++)
        if (strcmp(task, task_names[i]) == 0)
            ti = i;
    if (ti < 0) {
        kerr_add(c->err, "%s: 'task' must be \"generate\", \"embed\" or \"classify\", got %.64s",
                 path, task ? task : "nothing");
        return 0;
    }
    out->task = (spec_task)ti;
    if (raw_list(L, c, 1, "architectures", &out->archs, &out->n_archs))
        return 0;
    if (out->n_archs < 1) {
        kerr_add(c->err, "%s: 'architectures' must list the HF architecture names this spec "
                         "serves (e.g. {\"LlamaForCausalLM\"})",
                 path);
        return 0;
    }
    lua_pushliteral(L, "ignore");
    if (lua_rawget(L, 1) != LUA_TNIL && !lua_istable(L, -1)) {
        kerr_add(c->err, "%s: 'ignore' must be a list of Lua patterns of tensor names", path);
        return 0;
    }
    if (raw_list(L, c, 1, "ignore", &out->ignore, &out->n_ignore))
        return 0;
    lua_pushliteral(L, "build");
    if (lua_rawget(L, 1) != LUA_TFUNCTION) {
        kerr_add(c->err, "%s: 'build' must be a function(g, cfg)", path);
        return 0;
    }
    out->path = xstrdup(path);
    c->rc = 0;
    return 0;
}

int spec_probe(const char *path, const char *lib_dir, spec_info *out, kerr *err)
{
    memset(out, 0, sizeof *out);
    lua_State *L = new_state(lib_dir, path);
    if (!L)
        return kerr_add(err, "%s: cannot create a Lua state (out of memory)", path);
    probe_ctx c = {.path = path, .out = out, .err = err, .rc = -1};
    if (load_spec(L, path, err) == 0) {
        lua_pushcfunction(L, probe_decl);
        lua_insert(L, -2);
        lua_pushlightuserdata(L, &c);
        int st = lua_pcall(L, 2, 0, 0);
        if (st != LUA_OK) {
            add_lua_err(L, st, path, err);
            c.rc = -1;
        }
    }
    close_state(L);
    if (c.rc)
        spec_info_free(out);
    return c.rc;
}

int spec_filter_ignored(const spec_info *spec, const char *const *names, int n,
                        unsigned char *ignored, kerr *err)
{
    memset(ignored, 0, (size_t)n);
    if (!spec->n_ignore)
        return 0;
    lua_State *L = new_state(NULL, spec->path);
    if (!L)
        return kerr_add(err, "%s: cannot create a Lua state (out of memory)", spec->path);
    int rc = 0;
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "find");
    int find = lua_gettop(L);
    for (int i = 0; i < n && rc == 0; i++)
        for (int k = 0; k < spec->n_ignore && !ignored[i]; k++) {
            lua_pushvalue(L, find);
            lua_pushstring(L, names[i]);
            lua_pushstring(L, spec->ignore[k]);
            int st = lua_pcall(L, 2, 1, 0);
            if (st != LUA_OK) {
                kerr e;
                kerr_clear(&e);
                add_lua_err(L, st, spec->path, &e);
                rc = kerr_add(err, "%s: ignore pattern '%s': %s", spec->path, spec->ignore[k],
                              kerr_msg(&e));
                break;
            }
            ignored[i] = !lua_isnil(L, -1);
            lua_pop(L, 1);
        }
    close_state(L);
    return rc;
}

kgraph *spec_build(const spec_info *spec, const char *lib_dir, const config *cfg,
                   const st_set *weights, kerr *err)
{
    lua_State *L = new_state(lib_dir, spec->path);
    if (!L) {
        kerr_add(err, "%s: cannot create a Lua state (out of memory)", spec->path);
        return NULL;
    }
    builder *b = xcalloc(1, sizeof *b);
    b->g = graph_new();
    b->cfg = cfg;
    b->w = weights;
    kgraph *g = NULL;
    lua_pushlightuserdata(L, b);
    lua_setfield(L, LUA_REGISTRYINDEX, "kiln.builder");
    if (load_spec(L, spec->path, err))
        goto done;
    lua_pushliteral(L, "build");
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        kerr_add(err, "%s: 'build' must be a function(g, cfg)", spec->path);
        goto done;
    }
    lua_pushcfunction(L, msgh);
    lua_insert(L, -2);
    int h = lua_gettop(L) - 1;
    /* Both userdata are made inside the protected call: they allocate. */
    lua_pushcfunction(L, build_call);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, (void *)cfg);
    int st = lua_pcall(L, 2, 0, h);
    if (st != LUA_OK) {
        add_lua_err(L, st, spec->path, err);
        goto done;
    }
    if (b->g->output < 0) {
        kerr_add(err, "%s: build() finished without an output: end with g:logits(x, head) for "
                      "task generate, g:pool(x, {...}) for task embed, or g:score(g:pool(x, "
                      "{...}), {weight=...}) for task classify",
                 spec->path);
        goto done;
    }
    /* the output says what the runtime returns, so it must be the task's */
    static const kg_op task_out[] = {KG_LOGITS, KG_POOL, KG_SCORE};
    _Static_assert(ARRAY_LEN(task_out) == TASK_N, "task outputs out of sync");
    if (b->g->nodes[b->g->output].op != task_out[spec->task]) {
        kerr_add(err, "%s: task %s ends in g:%s, but build() ended in g:%s", spec->path,
                 spec_task_name(spec->task), kg_op_name(task_out[spec->task]),
                 kg_op_name(b->g->nodes[b->g->output].op));
        goto done;
    }
    g = b->g;
    b->g = NULL;
done:
    close_state(L);
    graph_free(b->g);
    free(b);
    return g;
}
