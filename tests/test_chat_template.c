/* test_chat_template — the chat-template engine against transformers, and its language piece by
 * piece.
 *
 *   fixtures   every template of tests/fixtures/chat_templates/templates rendered with every
 *              case's vars of expected/<name>.jsonl.gz (written by transformers 5.24 / jinja2
 *              3.1.6): the output byte for byte, or the error message for message (kiln's
 *              "chat template line N: " prefix aside; raise_exception's message is bare);
 *   language   small templates whose jinja2 renderings are written down here (each checked
 *              with jinja2 3.1.6 in transformers' environment when it was written);
 *   errors     syntax errors and unsupported constructs name the line; limits stop hostile
 *              templates; raise_exception gives CT_RAISED and the message;
 *   model      ct_model_load on folders (chat_template.jinja wins over tokenizer_config.json,
 *              template lists, AddedToken dicts) and ct_model_render's request preparation;
 *   threads    one parsed template rendered from several threads at once;
 *   cli        `kiln chat-template` (stdout exact, errors on stderr with status 1), and
 *              `kilnc ref --chat` on the example model (needs $KILN and $KILNC).
 * CT_VERBOSE=1 prints every fixture mismatch with a diff position.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>

#include "tokenizer/chat_template.h"
#include "testutil.h"

#define FIXDIR "tests/fixtures/chat_templates"

static struct tm fixture_now(void)
{
    struct tm t = {0};
    t.tm_year = 2026 - 1900;
    t.tm_mon = 0;
    t.tm_mday = 15;
    t.tm_hour = 12;
    t.tm_isdst = -1;
    time_t s = mktime(&t);
    localtime_r(&s, &t);
    return t;
}

/* the message without kiln's "chat template line N: " prefix */
static const char *bare_message(const char *m)
{
    if (strncmp(m, "chat template line ", 19) == 0) {
        const char *p = strstr(m, ": ");
        if (p)
            return p + 2;
    }
    return m;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_fixtures(void **state)
{
    (void)state;
    DIR *d = opendir(FIXDIR "/templates");
    assert_non_null(d);
    char *names[256];
    int nt = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nt < 256) {
        size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".jinja") == 0)
            names[nt++] = strndup(e->d_name, n - 6);
    }
    closedir(d);
    qsort(names, (size_t)nt, sizeof *names, cmp_names);
    int verbose = getenv("CT_VERBOSE") != NULL;
    struct tm now = fixture_now();
    ct_options opt = {.now = &now};
    int total = 0, pass = 0, templates_ok = 0;
    for (int i = 0; i < nt; i++) {
        char path[512];
        snprintf(path, sizeof path, FIXDIR "/templates/%s.jinja", names[i]);
        size_t len;
        kerr err;
        kerr_clear(&err);
        char *src = util_read_file(path, &len, &err);
        assert_non_null(src);
        chat_template *t = ct_parse(src, len, &err);
        free(src);
        /* gzipped in the repo, as the tokenizer fixtures; gzip is in every Debian base system */
        snprintf(path, sizeof path, "gzip -dc " FIXDIR "/expected/%s.jsonl.gz", names[i]);
        FILE *f = popen(path, "r");
        assert_non_null(f);
        char *line = NULL;
        size_t cap = 0;
        int tpass = 0, ttotal = 0;
        while (getline(&line, &cap, f) > 0) {
            json_error_t je;
            json_t *c = json_loads(line, 0, &je);
            assert_non_null(c);
            ttotal++;
            const char *cname = json_string_value(json_object_get(c, "case"));
            int ok = json_is_true(json_object_get(c, "ok"));
            char *out = NULL;
            size_t olen = 0;
            kerr_clear(&err);
            int rc = t ? ct_render(t, json_object_get(c, "vars"), &opt, &out, &olen, &err) : -1;
            int good;
            if (ok) {
                const char *exp = json_string_value(json_object_get(c, "output"));
                size_t elen = json_string_length(json_object_get(c, "output"));
                good = rc == 0 && olen == elen && memcmp(out, exp, elen) == 0;
                if (!good && verbose) {
                    size_t k = 0;
                    while (rc == 0 && k < olen && k < elen && out[k] == exp[k])
                        k++;
                    fprintf(stderr, "MISMATCH %s / %s at byte %zu: %s\n  expected: %.*s\n  got:      %.*s\n",
                            names[i], cname, k, rc ? kerr_msg(&err) : "",
                            (int)(elen - k > 120 ? 120 : elen - k), exp + k,
                            rc ? 0 : (int)(olen - k > 120 ? 120 : olen - k), out ? out + k : "");
                }
            } else {
                const char *exp = json_string_value(json_object_get(c, "error"));
                good = rc == CT_RAISED ? strcmp(out, exp) == 0
                     : rc != 0 && strcmp(bare_message(kerr_msg(&err)), exp) == 0;
                if (!good && verbose)
                    fprintf(stderr, "ERROR MISMATCH %s / %s:\n  expected: %s\n  got:      %s\n",
                            names[i], cname, exp, rc ? kerr_msg(&err) : "(rendered)");
            }
            tpass += good;
            free(out);
            json_decref(c);
        }
        free(line);
        assert_int_equal(pclose(f), 0);
        if (verbose || tpass != ttotal)
            fprintf(stderr, "%-40s %d/%d%s%s\n", names[i], tpass, ttotal, t ? "" : "  parse: ",
                    t ? "" : kerr_msg(&err));
        templates_ok += tpass == ttotal;
        total += ttotal;
        pass += tpass;
        ct_free(t);
        free(names[i]);
    }
    fprintf(stderr, "chat-template fixtures: %d/%d cases, %d/%d templates match transformers\n",
            pass, total, templates_ok, nt);
    assert_true(nt >= 15);
    assert_int_equal(pass, total);
}

/* ---------------------------------------------------------------- language */

#define LANG_VARS                                                                                  \
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be nice.\"}, {\"role\": \"user\", "     \
    "\"content\": \"H\\u00e9 {{x}}\"}, {\"role\": \"assistant\", \"content\": \" ok \"}], "        \
    "\"x\": [1, 2.5, \"a'b\", null, true, {\"k\": \"v\"}], \"d\": {\"b\": 1, \"a\": [1, {\"z\": " \
    "null}]}, \"s\": \"  Hello World  \", \"n\": 7, \"tools\": null, \"documents\": null, "        \
    "\"add_generation_prompt\": true}"

/* generated by rendering each template with jinja2 3.1.6 in transformers 5.24's environment,
 * with LANG_VARS (see above); ok=0 rows hold jinja2's error message */
static const struct lang_case {
    const char *tmpl;
    int ok;
    const char *want;
} lang_cases[] = {
    {"{{ x }}|{{ d }}|{{ s }}|{{ n / 2 }}|{{ n // 2 }}|{{ -n % 3 }}|{{ 2 ** 10 }}|{{"
     " 1.5e300 * 1e10 }}|{{ 0.1 + 0.2 }}|{{ 1e-7 }}|{{ 123456789012345678.0 }}",
     1, "[1, 2.5, \"a'b\", None, True, {'k': 'v'}]|{'b': 1, 'a': [1, {'z': None}]}|  He"
        "llo World  |3.5|3|2|1024|inf|0.30000000000000004|1e-07|1.2345678901234568e+17"},
    {"{{ x|tojson }}|{{ d|tojson(indent=2) }}|{{ d|tojson(indent=0) }}|{{ d|tojson(s"
     "ort_keys=true) }}|{{ \"\303\251\\u2028\\x7f\"|tojson }}|{{ \"\303\251\"|tojson"
     "(ensure_ascii=true) }}|{{ d|tojson(separators=(',', ':')) }}",
     1, "[1, 2.5, \"a'b\", null, true, {\"k\": \"v\"}]|{\n"
        "  \"b\": 1,\n"
        "  \"a\": [\n"
        "    1,\n"
        "    {\n"
        "      \"z\": null\n"
        "    }\n"
        "  ]\n"
        "}|{\n"
        "\"b\": 1,\n"
        "\"a\": [\n"
        "1,\n"
        "{\n"
        "\"z\": null\n"
        "}\n"
        "]\n"
        "}|{\"a\": [1, {\"z\": null}], \"b\": 1}|\"\303\251\342\200\250\177\"|\"\\u00e9"
        "\"|{\"b\":1,\"a\":[1,{\"z\":null}]}"},
    {"{{ s|trim }}|{{ s|upper }}|{{ s|lower }}|{{ \"hello wORLD-foo (bar)\"|title }}"
     "|{{ \"hELLO\"|capitalize }}|{{ s|length }}|{{ x|length }}|{{ d|length }}",
     1, "Hello World|  HELLO WORLD  |  hello world  |Hello World-Foo (Bar)|Hello|15|6|2"},
    {"{{ y|default('dflt') }}|{{ ''|default('e', true) }}|{{ none|default('n') }}|{{"
     " x|join(', ') }}|{{ x|first }}|{{ x|last }}|{{ s|replace('l', 'L') }}|{{ s|rep"
     "lace('l', 'L', 1) }}|{{ s|replace('', '-') }}",
     1, "dflt|e|None|1, 2.5, a'b, None, True, {'k': 'v'}|1|{'k': 'v'}|  HeLLo WorLd  | "
        " HeLlo World  |- - -H-e-l-l-o- -W-o-r-l-d- - -"},
    {"{{ x|string }}|{{ '42'|int }}|{{ '4.7'|int }}|{{ 'abc'|int }}|{{ 'abc'|int(5) "
     "}}|{{ 4.7|int }}|{{ '3.5'|float }}|{{ s|list }}|{{ d|list }}|{{ d|items|list }"
     "}",
     1, "[1, 2.5, \"a'b\", None, True, {'k': 'v'}]|42|4|0|5|4|3.5|[' ', ' ', 'H', 'e', "
        "'l', 'l', 'o', ' ', 'W', 'o', 'r', 'l', 'd', ' ', ' ']|['b', 'a']|[('b', 1), ("
        "'a', [1, {'z': None}])]"},
    {"{{ messages|selectattr('role', 'equalto', 'user')|list }}|{{ messages|rejectat"
     "tr('role', 'equalto', 'user')|map(attribute='role')|join(',') }}|{{ messages|m"
     "ap(attribute='content')|map('trim')|list }}",
     1, "[{'role': 'user', 'content': 'H\303\251 {{x}}'}]|system,assistant|['Be nice.',"
        " 'H\303\251 {{x}}', 'ok']"},
    {"{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ none is none }}{{ s"
     " is string }}{{ d is mapping }}{{ x is iterable }}{{ x is sequence }}{{ n is n"
     "umber }}{{ true is boolean }}{{ n is equalto 7 }}{{ n is eq 7 }}{{ n is odd }}"
     "{{ n is divisibleby 7 }}{{ 1 is integer }}{{ 1.0 is float }}",
     1, "TrueFalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
    {"{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.split() }}|{{ 'a,b,,c'."
     "split(',') }}|{{ 'a,b,,c'.split(',', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ s.s"
     "trip().startswith('Hel') }}|{{ s.endswith(('  ', 'x')) }}|{{ s.upper() }}|{{ s"
     ".replace('o', '0') }}|{{ \"they're bill's\".title() }}|{{ 'xxhixx'.strip('x') "
     "}}",
     1, "Hello World|Hello World  |  Hello World|['Hello', 'World']|['a', 'b', '', 'c']"
        "|['a', 'b,,c']|['a b', 'c']|True|True|  HELLO WORLD  |  Hell0 W0rld  |They'Re "
        "Bill'S|hi"},
    {"{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loo"
     "p.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.previtem is defined }}{{ "
     "loop.cycle('a','b') }} {% endfor %}",
     1, "10TrueFalse33Falsea 21FalseFalse32Trueb 32FalseTrue31Truea "},
    {"{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}{% i"
     "f loop.last %}!{% endif %}{% else %}none{% endfor %}{% for q in [] %}x{% else "
     "%}empty{% endfor %}",
     1, "1:user2:assistant!empty"},
    {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}"
     "{% break %}{% endif %}{{ i }}{% endfor %}",
     1, "01345"},
    {"{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% set ns.n ="
     " ns.n + 1 %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% en"
     "dfor %}{{ ns.found }}{{ ns.n }}{{ ns }}",
     1, "True3<Namespace {'found': True, 'n': 3}>"},
    {"{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ gre"
     "et('a') }}{{ greet('b', '\?') }}{{ greet(name='c', punct='.') }}{{ greet() }}",
     1, "Hi a!Hi b\?Hi c.Hi !"},
    {"{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}inside{% endc"
     "all %}",
     1, "[inside]"},
    {"{{ messages[1:] | map(attribute='role') | list }}|{{ messages[::-1][0].role }}"
     "|{{ s[::-1] }}|{{ s[2:-2] }}|{{ x[-1] }}|{{ x[1::2] }}|{{ 'h\303\251llo'[1] }}"
     "|{{ 'h\303\251llo'[-2:] }}",
     1, "['user', 'assistant']|assistant|  dlroW olleH  |Hello World|{'k': 'v'}|[2.5, N"
        "one, {'k': 'v'}]|\303\251|lo"},
    {"{{ 'a' ~ 1 ~ none ~ true }}|{{ [1] + [2] }}|{{ 'ab' * 3 }}|{{ (1, 2) }}|{{ (1,"
     ") }}|{{ () }}|{{ {'a': 1, 2: 'b'} }}|{{ 'x' if n > 3 else 'y' }}|{{ 'x' if n <"
     " 3 }}|{{ n > 3 and 'yes' or 'no' }}|{{ not n }}",
     1, "a1NoneTrue|[1, 2]|ababab|(1, 2)|(1,)|()|{'a': 1, 2: 'b'}|x||yes|False"},
    {"{{ 'a' in 'cat' }}{{ 'z' not in 'cat' }}{{ 1 in x }}{{ 'b' in d }}{{ 'q' in d "
     "}}{{ 1 < 2 < 3 }}{{ 1 == 1.0 }}{{ true == 1 }}{{ [1,2] == [1,2] }}{{ 'a' < 'b'"
     " }}",
     1, "TrueTrueTrueTrueFalseTrueTrueTrueTrueTrue"},
    {"  {% if true %}\n"
     "    yes\n"
     "  {% endif %}\n"
     "  {{ 'v' }}\n"
     "    {# comment #}\n"
     "  end  \n"
     "{%- if true %} a {% endif -%}\n"
     "   b   \n"
     "{%+ if true %}plus{% endif %}",
     1, "    yes\n"
        "  v\n"
        "  end a b   \n"
        "plus"},
    {"{% raw %}{{ not rendered }}{% endraw %}|{{ '{{ x }}' }}",
     1, "{{ not rendered }}|{{ x }}"},
    {"{{ strftime_now('%Y-%m-%d %H:%M %A %B %d') }}",
     1, "2026-01-15 12:00 Thursday January 15"},
    {"{{ raise_exception('custom: ' ~ n) }}",
     0, "custom: 7"},
    {"{{ y.z }}",
     0, "'y' is undefined"},
    {"{{ d.zz.q }}",
     0, "'dict object' has no attribute 'zz'"},
    {"{{ d['zz'] }}|{{ d.items() }}|{{ d.keys()|list }}|{{ d.get('b') }}|{{ d.get('z"
     "z', 'dflt') }}|{{ d['b'] }}",
     1, "|dict_items([('b', 1), ('a', [1, {'z': None}])])|['b', 'a']|1|dflt|1"},
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}{% for k, v in d.items() %}{{ k }}={{ v }};"
     "{% endfor %}",
     1, "12b=1;a=[1, {'z': None}];"},
    {"{% set content %}captured {{ n }}{% endset %}[{{ content }}]{% set up | upper "
     "%}shout{% endset %}{{ up }}",
     1, "[captured 7]SHOUT"},
    {"{% filter upper %}filtered {{ s }}{% endfilter %}",
     1, "FILTERED   HELLO WORLD  "},
    {"{{ messages | length > 2 }}{{ (messages | length) - 1 }}",
     1, "True2"},
    {"{{ x|sort(attribute='q') if false else [3,1,2]|sort }}|{{ ['b','A','c']|sort }"
     "}|{{ ['b','A','c']|sort(case_sensitive=true) }}|{{ [1,2,2,3,1]|unique|list }}|"
     "{{ [3,4]|sum }}|{{ [3,4]|max }}|{{ d|dictsort }}|{{ [1,2,3]|reverse|list }}",
     1, "[1, 2, 3]|['A', 'b', 'c']|['A', 'b', 'c']|[1, 2, 3]|7|4|[('a', [1, {'z': None}"
        "]), ('b', 1)]|[3, 2, 1]"},
    {"{{ \"%s and %d\" % ('a', 3) }}|{{ '{} {}'.format('a', 1) }}|{{ 'line1\\nline2'"
     "|indent(2) }}|{{ 'line1\\nline2'|indent(2, true) }}|{{ -3|abs }}|{{ 2.567|roun"
     "d(2) }}|{{ 2.5|round }}",
     1, "a and 3|a 1|line1\n"
        "  line2|  line1\n"
        "  line2|3|2.57|2.0"},
    {"{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
     "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}{{ sys }}|"
     "{{ msgs|length }}",
     1, "Be nice.|2"},
    {"{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}{{ bos_to"
     "ken is defined }}",
     1, "TrueTrueTrueFalse"},
    {"{{ x.append(3) }}",
     0, "access to attribute 'append' of 'list' object is unsafe."},
    {"{{ 1 + 'a' }}",
     0, "unsupported operand type(s) for +: 'int' and 'str'"},
    {"{{ 'a' + 1 }}",
     0, "can only concatenate str (not \"int\") to str"},
    {"{{ n / 0 }}",
     0, "division by zero"},
    {"{{ foo() }}",
     0, "'foo' is undefined"},
    {"{% for a in n %}{% endfor %}",
     0, "'int' object is not iterable"},
    {"{{ messages[0].content.split('.')[0] }}|{{ (messages|last).content|trim }}|{{ "
     "messages[-1]['content'] is string }}",
     1, "Be nice|ok|True"},
    {"{%- for message in messages -%}\n"
     "{{- '<|' + message['role'] + '|>\\n' + message['content'] | trim + '<|end|>\\n"
     "' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}\n",
     1, "<|system|>\n"
        "Be nice.<|end|>\n"
        "<|user|>\n"
        "H\303\251 {{x}}<|end|>\n"
        "<|assistant|>\n"
        "ok<|end|>\n"
        "<|assistant|>\n"},
    {"a\n"
     "  {%- if true -%}\n"
     "    b\n"
     "  {%- endif -%}\n"
     "  c",
     1, "abc"},
    {"line1\n"
     "    {% if true %}\n"
     "    indented\n"
     "    {% endif %}\n"
     "tail {% if true %}x{% endif %}   \n"
     "\011{# tab comment #}\n"
     "after",
     1, "line1\n"
        "    indented\n"
        "tail x   \n"
        "after"},
    {"{{ 'x' }}   {% if true %}y{% endif %}\n"
     "  {{ 'z' }}",
     1, "x   y  z"},
    {"{% for m in messages %}\n"
     "  {{ m.role }}\n"
     "{% endfor %}",
     1, "  system\n"
        "  user\n"
        "  assistant\n"},
    {"{%- for m in messages %}\n"
     "{{- m.role }}\n"
     "{%- endfor %}\n",
     1, "systemuserassistant"},
    {"{% set x = 1 %}\n"
     "{% set y = 2 %}\n"
     "{{ x + y }}\n"
     "\n",
     1, "3\n"},
    {"  {#- c -#}  \n"
     " x {#+ keep #} y",
     1, "x  y"},
    {"{% raw -%}   r  {%- endraw %} after\n"
     "   {% raw %} sp {% endraw %}",
     1, "r after\n"
        " sp "},
    {"{{- \"  trimmed  \" -}}   next   {{- ' v ' }}",
     1, "  trimmed  next v "},
    {"text\\r\\nwith {{ '\\r\\n' | length }}",
     1, "text\\r\\nwith 2"},
    {"{%if true%}no spaces{%endif%}{{1+2}}{{'a'}}",
     1, "no spaces3a"},
    {"{{ {'a': {'b': 1}} }}{{ {'x': [1, {'y': 2}]}['x'][1]['y'] }}",
     1, "{'a': {'b': 1}}2"},
    {"{{ 'a' 'b' \"c\" }}|{{ 'it\\'s' }}|{{ \"q\\\"q\" }}|{{ '\\u00e9\\x41\\101\\t|\\"
     "n' }}|{{ 'back\\\\slash' }}|{{ '\\q' }}",
     1, "abc|it's|q\"q|\303\251AA\011|\n"
        "|back\\slash|\\q"},
    {"{{ 1_000 }}{{ 0x1F }}{{ 1.5e3 }}{{ 2e-3 }}{{ 10.0 }}{{ -0.0 }}{{ 1e22 }}{{ 3.1"
     "4159 }}{{ 100000000000000000000.0 }}",
     1, "1000311500.00.00210.0-0.01e+223.141591e+20"},
    {"{% if x %}{% elif y %}{% else %}{% endif %}{% if not x %}nx{% elif true %}el{%"
     " endif %}",
     1, "el"},
    {"{{ messages[0]['content'] if messages[0]['role'] == 'system' else '' }}{{ mess"
     "ages | map(attribute='role') | join('|') }}",
     1, "Be nice.system|user|assistant"},
    {"{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro "
     "%}{{ m('x') }}{{ m('x', 'y', 'z') }}{{ m('x', q=1) }}",
     1, "xx!(){}xy('z',){}xx!(){'q': 1}"},
    {"{% set items = [] %}{% for i in range(3) %}{% set items = items + [i] %}{% end"
     "for %}{{ items }}",
     1, "[]"},
    {"{% set ns = namespace(items=[]) %}{% for i in range(3) %}{% set ns.items = ns."
     "items + [i] %}{% endfor %}{{ ns.items }}",
     1, "[0, 1, 2]"},
    {"{% for a, b in [(1, 2), (3, 4)] %}{{ a }}{{ b }}{% endfor %}{% for x in 'h\303"
     "\251y' %}{{ x }}-{% endfor %}{% for k in {'p': 1, 'q': 2} %}{{ k }}{% endfor %"
     "}",
     1, "1234h-\303\251-y-pq"},
    {"{% for m in messages %}{% for c in m.content %}{% if loop.index > 2 %}{% break"
     " %}{% endif %}{{ c }}{% endfor %}/{{ loop.index }}{% endfor %}",
     1, "Be/1H\303\251/2 o/3"},
    {"{{ 'abc'|center(9) }}|{{ 'a b  c'|wordcount }}|{{ '<a href=\"x\">'|e }}|{{ [1,"
     "2,3,4,5]|batch(2)|list }}|{{ messages|first|attr('role') }}",
     1, "   abc   |3|&lt;a href=&#34;x&#34;&gt;|[[1, 2], [3, 4], [5]]|"},
    {"{{ '%.2f' % 3.14159 }}|{{ '%5s' % 'a' if false else 'ok' }}|{{ \"%s\" % [1, 2]"
     " }}",
     1, "3.14|ok|[1, 2]"},
    {"{{ x|selectattr('k') | list }}",
     1, "[{'k': 'v'}]"},
    {"{{ tools|selectattr(\"type\", \"equalto\", \"x\")|list }}|{{ tools|rejectattr(\"type\")|l"
     "ist|length }}|{{ none|map(attribute=\"a\")|list }}|{{ \"\"|select|list }}|{{ 0|reject|list }}",
     1, "[]|0|[]|[]|[]"},
    {"{{ n|select|list }}", 0, "'int' object is not iterable"},
    {"{{ 5 is gt 3 }}{{ 5 is lt 3 }}{{ 'a' is in 'abc' }}{{ x is sameas x }}{{ none "
     "is sameas none }}{{ 'ABC' is upper }}{{ 'abc' is lower }}{{ messages|first is "
     "mapping }}",
     1, "TrueFalseTrueTrueTrueTrueTrueTrue"},
    {"{{ messages|tojson }}",
     1, "[{\"role\": \"system\", \"content\": \"Be nice.\"}, {\"role\": \"user\", \"con"
        "tent\": \"H\303\251 {{x}}\"}, {\"role\": \"assistant\", \"content\": \" ok \"}"
        "]"},
    {"{{ messages[0]|tojson(indent=4) }}{{ [[], {}, [[]]]|tojson(indent=1) }}",
     1, "{\n"
        "    \"role\": \"system\",\n"
        "    \"content\": \"Be nice.\"\n"
        "}[\n"
        " [],\n"
        " {},\n"
        " [\n"
        "  []\n"
        " ]\n"
        "]"},
    {"{{ 3 // 2 }}{{ -3 // 2 }}{{ 3 % -2 }}{{ 7.5 // 2 }}{{ -7.5 % 2 }}{{ 2 ** -1 }}"
     "{{ 2 ** 0.5 }}{{ 10 / 4 }}{{ 1 + True }}{{ True + True }}",
     1, "1-2-13.00.50.51.41421356237309512.522"},
    {"{{ x[10] }}|{{ x[-10] }}|{{ x[1:100] }}|{{ x[-100:1] }}|{{ x[::2] }}|{{ x[::-2"
     "] }}|{{ x[5:1:-1] }}|{{ 'h\303\251llo w\303\266rld'[::-3] }}",
     1, "||[2.5, \"a'b\", None, True, {'k': 'v'}]|[1]|[1, \"a'b\", True]|[{'k': 'v'}, N"
        "one, 2.5]|[{'k': 'v'}, True, None, \"a'b\"]|d\303\266o\303\251"},
    {"{{ ''.join(['a', 'b']) }}|{{ ', '.join(x|map('string')) }}|{{ 'a-b-c'.split('-"
     "', -1) }}|{{ '  a  b  '.split(None, 1) }}|{{ '  a  b  '.rsplit(None, 1) }}|{{ "
     "'a\\nb\\r\\nc'.splitlines() }}",
     1, "ab|1, 2.5, a'b, None, True, {'k': 'v'}|['a', 'b', 'c']|['a', 'b  ']|['  a', 'b"
        "']|['a', 'b', 'c']"},
    {"{{ 'Hello'.find('l') }}{{ 'Hello'.rfind('l') }}{{ 'Hello'.count('l') }}{{ 'x'."
     "find('z') }}{{ '12'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' '.isspace() }}{{ 'pre"
     "fix_x'.removeprefix('prefix_') }}",
     1, "232-1TrueTrueTruex"},
    {"{{ x }}{{ 1.0 }}{{ 1e100 }}{{ 1.23456789012345e-5 }}{{ 5e-324 }}{{ 1.797693134"
     "8623157e308 }}",
     1, "[1, 2.5, \"a'b\", None, True, {'k': 'v'}]1.01e+1001.23456789012345e-055e-3241."
        "7976931348623157e+308"},
    {"{{ d.a[1].z }}|{{ d.a[1].z is none }}|{{ d['a'][0] + 1 }}",
     1, "None|True|2"},
    {"{% set t = (1, 'a') %}{{ t[0] }}{{ t|length }}{{ t + (2,) }}{{ t|list }}{{ t i"
     "s sequence }}",
     1, "12(1, 'a', 2)[1, 'a']True"},
    {"{{ range(3)|list }}{{ range(1, 10, 3)|list }}{{ range(5, 0, -2)|list }}{{ rang"
     "e(0) | list }}",
     1, "[0, 1, 2][1, 4, 7][5, 3, 1][]"},
    {"{{ dict(a=1, b=2) }}{{ dict(a=1).a }}{{ namespace(x=1).x }}{{ dict([('k', 'v')"
     "]) }}",
     1, "{'a': 1, 'b': 2}11{'k': 'v'}"},
    {"{{ messages | selectattr('role', 'in', ['user', 'system']) | list | length }}{"
     "{ messages | rejectattr('content') | list }}{{ [0, 1, '', 'a', none]|select|li"
     "st }}{{ [1,2,3,4]|select('odd')|list }}{{ [1,2,3,4]|reject('even')|list }}",
     1, "2[][1, 'a'][1, 3][1, 3]"},
    {"{{ [{'a': 2}, {'a': 1}]|sort(attribute='a') }}{{ [{'a': 2}, {'a': 1}]|map(attr"
     "ibute='a')|sum }}{{ [{'a': 2}, {'a': 1}]|sum(attribute='a') }}{{ {'b': 1, 'a':"
     " 2}|dictsort(by='value', reverse=true) }}\n",
     1, "[{'a': 1}, {'a': 2}]33[('a', 2), ('b', 1)]"},
    {"{{ messages[0].nope.x }}",
     0, "'dict object' has no attribute 'nope'"},
    {"{{ messages[5].content }}",
     0, "list object has no element 5"},
    {"{{ messages[0]['content'] + 1 }}",
     0, "can only concatenate str (not \"int\") to str"},
    {"{{ 1 + none }}",
     0, "unsupported operand type(s) for +: 'int' and 'NoneType'"},
    {"{{ none + 1 }}",
     0, "unsupported operand type(s) for +: 'NoneType' and 'int'"},
    {"{{ [1] + 'a' }}",
     0, "can only concatenate list (not \"str\") to list"},
    {"{{ 'a' < 1 }}",
     0, "'<' not supported between instances of 'str' and 'int'"},
    {"{{ 1 in 'abc' }}",
     0, "'in <string>' requires string as left operand, not int"},
    {"{{ 1 in 5 }}",
     0, "argument of type 'int' is not iterable"},
    {"{{ n() }}",
     0, "'int' object is not callable"},
    {"{{ d.b.c }}",
     1, ""},
    {"{{ x|tojson if false else y|tojson }}",
     0, "Object of type Undefined is not JSON serializable"},
    {"{% set a, b = [1, 2, 3] %}",
     0, "too many values to unpack (expected 2)"},
    {"{% set a, b = [1] %}",
     0, "not enough values to unpack (expected 2, got 1)"},
    {"{{ s.nosuch() }}",
     0, "'str object' has no attribute 'nosuch'"},
    {"{{ range(200000)|length }}",
     0, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000)."},
    {"{{ ns.x }}{% set ns = namespace() %}{% set ns._p = 1 %}",
     0, "'ns' is undefined"},
    {"{% set q = 1 %}{% set q.x = 1 %}",
     0, "cannot assign attribute on non-namespace object"},
    {"{{ namespace(_a=1) }}",
     0, "Chat templates cannot store underscore-prefixed attributes on a namespace, but"
        " got '_a'. Please rename the attribute."},
    {"{{ -none }}",
     0, "bad operand type for unary -: 'NoneType'"},
    {"{{ y - 1 }}",
     0, "'y' is undefined"},
    {"{{ d['a'][9] + 1 }}",
     0, "list object has no element 9"},
    {"{{ 'abc'.split('') }}",
     0, "empty separator"},
    {"{{ messages|first|tojson(sort_keys=true) }}{{ {1: 2}|tojson(sort_keys=true) }}",
     1, "{\"content\": \"Be nice.\", \"role\": \"system\"}{\"1\": 2}"},
    {"{{ x|sort }}",
     0, "'<' not supported between instances of 'str' and 'float'"},
    {"{{ {[1]: 2} }}",
     0, "unhashable type: 'list'"},
    {"{{ n / 0 }}",
     0, "division by zero"},
    {"{{ n // 0 }}",
     0, "integer division or modulo by zero"},
    {"{{ 2.0 % 0 }}",
     0, "float modulo"},
    {"{{ 'x' * 'y' }}",
     0, "can't multiply sequence by non-int of type 'str'"},
    {"{{ y|join }}{{ y|list }}{{ y|length }}{{ y|first }}{{ y|upper }}{{ y|items|lis"
     "t }}{{ y|default('z') }}{{ y|string }}{{ y ~ 'q' }}",
     1, "[]0[]zq"},
    {"{{ y|tojson }}",
     0, "Object of type Undefined is not JSON serializable"},
    {"{{ y|int }}{{ none|int }}{{ none|string }}{{ none|length }}",
     0, "'y' is undefined"},
    {"{{ 5|length }}",
     0, "object of type 'int' has no len()"},
    {"{{ raise_exception() }}\n",
     0, "_cached_compile_jinja_template.<locals>.raise_exception() missing 1 required p"
        "ositional argument: 'message'"},
    {"{% set t = \"<\" %}{{ (\"x\"|safe|replace(\"z\",\"y\")) + t }}|{{ (\"X\"|safe|title) +"
        " t }}|{{ (\"x\"|safe|indent) + t }}|{{ (\"x\"|safe|center(1)) + t }}|{{ (\"x\"|saf"
        "e|reverse) + t }}|{{ (\"x\"|safe).replace(\"z\",\"y\") + t }}|{{ (\"x\"|safe)[:] + t"
        " }}|{{ (\"x\"|safe).removeprefix(\"z\") + t }}|{{ (\"x\"|safe).strip(\"z\") + t }}|{"
        "{ (\"x\"|safe|first) + t }}|{{ ([\"x\"|safe]|first) + t }}|{{ (\"x\"|safe|default("
        "\"y\")) + t }}|{{ (\"x\"|safe * 1) + t }}|{{ (\"x\"|safe)[0] + t }}|{{ (\"x\"|safe|j"
        "oin) + t }}|{{ (\"x\"|safe).replace(\"x\",\"<\") }}|{{ (\"<x<\"|safe).strip(\"<\") }}|"
        "{{ (\"&lt;x\"|safe).strip(\"<\") }}|{{ (\"x\"|safe|indent(\">\")) }}|{{ (\"x\\ny\"|safe"
        "|indent(\">\")) + t }}|{{ (\"x\\ny\"|safe|indent(\">\", first=true, blank=true)) }}"
        "|{{ ([\"<\"|safe][0]) + t }}|{{ (\"<\"|safe * 2) + t }}|{{ (2 * \"<\"|safe) + t }}"
        "|{{ (\"<\"|safe|reverse) + t }}|{{ (\"ab\"|safe)[1:] + t }}",
     1, "x<|X<|x&lt;|x&lt;|x&lt;|x&lt;|x&lt;|x&lt;|x&lt;|x<|x&lt;|x&lt;|x&lt;|x&lt;|x"
        "<|&lt;|x|&lt;x|x|x\n>y&lt;|>x\n>y|<&lt;|<<&lt;|<<&lt;|<&lt;|b&lt;"},
    {"{% set t = \"<b>&'\\\"\" %}{{ \"x\"|safe + t }}|{{ t + \"y\"|safe }}|{{ \"<\"|safe + \""
        ">\"|safe }}|{{ t ~ \"x\"|safe }}|{{ \"x\"|safe ~ t }}|{{ t }}|{{ \"'\\n\"|safe + x[2"
        ":]|tojson }}",
     1, "x&lt;b&gt;&amp;&#39;&#34;|&lt;b&gt;&amp;&#39;&#34;y|<>|<b>&'\"x|x<b>&'\"|<b>&'"
        "\"|'\n[&#34;a&#39;b&#34;, null, true, {&#34;k&#34;: &#34;v&#34;}]"},
    {"{% set t = \"<b>&'\\\"\" %}{{ (\"x\"|safe|string) + t }}|{{ (\"x\"|string) + t }}|{{"
        " (\" x \"|safe|trim) + t }}|{{ (\"x\"|safe|upper) + t }}|{{ (\"X\"|safe|lower) + t"
        " }}|{{ (\"x\"|safe|capitalize) + t }}|{{ (\"x\"|safe|replace(\"x\", \"y\")) + t }}|{"
        "{ ([\"x\"|safe]|join) + t }}|{{ (\"x\"|safe|tojson) + t }}",
     1, "x&lt;b&gt;&amp;&#39;&#34;|x<b>&'\"|x&lt;b&gt;&amp;&#39;&#34;|X&lt;b&gt;&amp;&"
        "#39;&#34;|x&lt;b&gt;&amp;&#39;&#34;|X&lt;b&gt;&amp;&#39;&#34;|y<b>&'\"|x<b>&'"
        "\"|\"x\"<b>&'\""},
    {"{% set t = \"<b>&'\\\"\" %}{{ (\" x \"|safe).strip() + t }}|{{ (\"x\"|safe).upper() "
        "+ t }}|{{ (\"x\"|safe).lower() + t }}|{{ (\"x y\"|safe).title() + t }}|{{ (\"x\"|s"
        "afe|title) + t }}",
     1, "x&lt;b&gt;&amp;&#39;&#34;|X&lt;b&gt;&amp;&#39;&#34;|x&lt;b&gt;&amp;&#39;&#34"
        ";|X Y&lt;b&gt;&amp;&#39;&#34;|X<b>&'\""},
    {"{% set t = \"<b>&'\\\"\" %}{{ t|e }}|{{ t|e|e }}|{{ t|safe|e }}|{{ t|safe|forcee"
        "scape }}|{{ (t|escape) + t }}|{{ 5|safe + t }}|{{ t|safe is escaped }}{{ t i"
        "s escaped }}{{ t|e is escaped }}|{{ \"x\"|safe == \"x\" }}{{ \"x\" in \"x\"|safe }}{"
        "{ \"x\"|safe|length }}{{ \"x\"|safe is string }}",
     1, "&lt;b&gt;&amp;&#39;&#34;|&lt;b&gt;&amp;&#39;&#34;|<b>&'\"|&lt;b&gt;&amp;&#39;"
        "&#34;|&lt;b&gt;&amp;&#39;&#34;&lt;b&gt;&amp;&#39;&#34;|5&lt;b&gt;&amp;&#39;&"
        "#34;|TrueFalseTrue|TrueTrue1True"},
    {"{{ \"x\"|safe + 1 }}",
     0, "unsupported operand type(s) for +: 'Markup' and 'int'"},
    {"{{ 1 + \"x\"|safe }}",
     0, "unsupported operand type(s) for +: 'int' and 'Markup'"},
    {"{{ \"x\"|safe + none }}",
     0, "unsupported operand type(s) for +: 'Markup' and 'NoneType'"},
    {"{{ \"x\"|safe + x }}",
     0, "unsupported operand type(s) for +: 'Markup' and 'list'"},
    {"{{ \"x\" + 1 }}",
     0, "can only concatenate str (not \"int\") to str"},
};

/* Renders src with vars (JSON text); returns the output or NULL with the message in *msg. */
static char *render(const char *src, const char *vars, const ct_options *opt, int *rc, char **msg)
{
    kerr err;
    kerr_clear(&err);
    json_error_t je;
    json_t *v = json_loads(vars, 0, &je);
    assert_non_null(v);
    chat_template *t = ct_parse(src, strlen(src), &err);
    char *out = NULL;
    size_t len = 0;
    *rc = t ? ct_render(t, v, opt, &out, &len, &err) : -1;
    if (out)
        assert_int_equal(strlen(out), len);
    *msg = xstrdup(kerr_msg(&err));
    if (*rc == CT_RAISED) { /* the exact message is the output */
        free(*msg);
        *msg = out;
        out = NULL;
    }
    ct_free(t);
    json_decref(v);
    return out;
}

static void test_language(void **state)
{
    (void)state;
    struct tm now = fixture_now();
    ct_options opt = {.now = &now};
    int bad = 0;
    for (size_t i = 0; i < ARRAY_LEN(lang_cases); i++) {
        const struct lang_case *k = &lang_cases[i];
        int rc;
        char *msg;
        char *out = render(k->tmpl, LANG_VARS, &opt, &rc, &msg);
        int good = k->ok ? rc == 0 && strcmp(out, k->want) == 0
                         : rc != 0 && strcmp(bare_message(msg), k->want) == 0;
        if (!good) {
            bad++;
            print_error("case %zu: %s\n  template: %s\n  want: %s\n  got:  %s\n", i,
                        k->ok ? "output" : "error", k->tmpl, k->want, rc == 0 ? out : msg);
        }
        free(out);
        free(msg);
    }
    assert_int_equal(bad, 0);
}

static void expect_output(const char *src, const char *vars, const char *want)
{
    int rc;
    char *msg;
    char *out = render(src, vars, NULL, &rc, &msg);
    if (rc != 0)
        fail_msg("%s: %s", src, msg);
    assert_string_equal(out, want);
    free(out);
    free(msg);
}

static void expect_error(const char *src, const char *vars, const ct_options *opt, int want_rc,
                         const char *want)
{
    int rc;
    char *msg;
    char *out = render(src, vars, opt, &rc, &msg);
    assert_null(out);
    assert_int_equal(rc, want_rc);
    assert_contains(msg, want);
    free(msg);
}

/* ---------------------------------------------------------------- errors and limits */

static void test_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *src, *msg;
    } cases[] = {
        {"a\nb\n{{ x|nosuchfilter }}", "chat template line 3: no filter named 'nosuchfilter'"},
        {"{% if x is nosuchtest %}{% endif %}", "chat template line 1: no test named 'nosuchtest'"},
        {"\n\n{% include 'x.jinja' %}", "chat template line 3: unsupported tag 'include'"},
        {"{% extends 'base' %}", "chat template line 1: unsupported tag 'extends'"},
        {"{% do x.append(1) %}", "chat template line 1: unsupported tag 'do'"},
        {"{% frobnicate %}", "chat template line 1: unknown tag 'frobnicate'"},
        {"{% if x %}\n\nno end", "chat template line 1: unexpected end of template: the 'if' tag "
                                 "opened here is not closed (expected 'endif')"},
        {"{% for x in y %}{% endif %}", "unexpected 'endif' inside the 'for' tag of line 1"},
        {"{% endfor %}", "chat template line 1: unexpected 'endfor': no tag is open"},
        {"{{ x ", "chat template line 1: unexpected end of template"},
        {"{{ 'abc }}", "chat template line 1: unterminated string literal"},
        {"{# never closed", "chat template line 1: missing end of comment tag"},
        {"{{ (1, 2 }}", "chat template line 1: unexpected '}', expected ')'"},
        {"{{ [1, 2) }}", "chat template line 1: unexpected ')', expected ']'"},
        {"{{ x ) }}", "unexpected ')'"},
        {"{{ 1 + }}", "chat template line 1: unexpected end of print statement"},
        {"{% for x in y recursive %}{% endfor %}", "unsupported: recursive for loops"},
        {"{{ f(*args) }}", "unsupported call syntax: *args / **kwargs"},
        {"{{ '\\N{DASH}' }}", "unsupported string escape"},
        {"{{ 99999999999999999999 }}", "does not fit in 64 bits"},
        {"{{ x @ y }}", "unexpected character '@'"},
        {"{% macro m(a=1, b) %}{% endmacro %}", "a parameter without a default follows one"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        kerr err;
        kerr_clear(&err);
        chat_template *t = ct_parse(cases[i].src, strlen(cases[i].src), &err);
        if (t)
            fail_msg("parsed: %s", cases[i].src);
        assert_contains(kerr_msg(&err), cases[i].msg);
    }
    /* invalid UTF-8 is refused with its place */
    kerr err;
    kerr_clear(&err);
    assert_null(ct_parse("ok\n\xff", 4, &err));
    assert_contains(kerr_msg(&err), "chat template line 2: not valid UTF-8 (byte 3)");
    /* nesting beyond the parser's limit is an error, not a stack overflow */
    char deep[4096];
    size_t k = 0;
    k += (size_t)sprintf(deep, "{{ ");
    for (int i = 0; i < 1000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 1000; i++)
        deep[k++] = ')';
    k += (size_t)sprintf(deep + k, " }}");
    kerr_clear(&err);
    assert_null(ct_parse(deep, k, &err));
    assert_contains(kerr_msg(&err), "nested deeper than");
}

static void test_runtime_errors(void **state)
{
    (void)state;
    const char *v = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}";
    /* raise_exception: CT_RAISED and the message alone */
    expect_error("x{{ raise_exception('Conversation roles must alternate user/assistant') }}", v,
                 NULL, CT_RAISED, "Conversation roles must alternate user/assistant");
    int rc;
    char *msg;
    /* the message exactly, line breaks and trailing spaces included */
    char *out = render("{{ raise_exception('two\\nlines  ') }}", v, NULL, &rc, &msg);
    assert_int_equal(rc, CT_RAISED);
    assert_string_equal(msg, "two\nlines  ");
    free(msg);
    assert_null(out);
    /* other errors: the line of the failing expression and jinja2's message */
    expect_error("a\n\n{{ messages[0].nope.x }}", v, NULL, -1,
                 "chat template line 3: 'dict object' has no attribute 'nope'");
    expect_error("{{ x.y }}", v, NULL, -1, "chat template line 1: 'x' is undefined");
    expect_error("{% for m in messages %}\n{{ m.content + 1 }}{% endfor %}", v, NULL, -1,
                 "chat template line 2: can only concatenate str (not \"int\") to str");
    expect_error("{{ messages.append(1) }}", v, NULL, -1,
                 "access to attribute 'append' of 'list' object is unsafe.");
    expect_error("{{ x|truncate(3) }}", v, NULL, -1, "chat template line 1: unsupported filter 'truncate'");
    expect_error("a\n\n{{ x|wordwrap }}", v, NULL, -1, "chat template line 3: unsupported filter 'wordwrap'");
    expect_error("{% set ns = namespace() %}{% set ns._x = 1 %}", v, NULL, -1,
                 "cannot store underscore-prefixed attributes");
    expect_error("{{ range(100001)|length }}", v, NULL, -1, "Range too big");
}

static void test_limits(void **state)
{
    (void)state;
    const char *v = "{\"messages\": []}";
    ct_options small = {.max_steps = 100000, .max_output = 4096, .max_memory = 8u << 20, .max_depth = 50};
    /* endless work: nested loops over the largest ranges the sandbox allows */
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                 v, &small, -1, "steps");
    /* endless output */
    expect_error("{% for i in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}", v, &small, -1,
                 "longer than 4096 bytes");
    /* memory: a string doubled until it is huge, without printing it */
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                 "{% endfor %}{{ ns.s|length }}",
                 v, &small, -1, "");
    /* recursion: a macro calling itself, and a namespace that holds itself */
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", v, &small, -1,
                 "nested deeper than 50");
    expect_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", v, &small, -1,
                 "nested deeper than 50");
    expect_error("{{ 'ab' * 4000000000000 }}", v, &small, -1, "too large");
    expect_error("{{ 9223372036854775807 + 1 }}", v, &small, -1, "integer overflow");
    /* the defaults stop the same loop too (bounded time with no options at all) */
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                 v, NULL, -1, "steps");
}

static void test_whitespace_and_now(void **state)
{
    (void)state;
    const char *v = "{\"messages\": []}";
    /* trim_blocks, lstrip_blocks, one trailing newline dropped, CRLF normalized */
    expect_output("  {% if true %}\n  a\n  {% endif %}\n", v, "  a\n");
    expect_output("x\r\n{{ 'y' }}\r\n", v, "x\ny");
    expect_output("{{ 'a' }}\n\n", v, "a\n");
    expect_output("{%+ if true %}k{% endif %}", v, "k");
    expect_output("a  {%- if true -%}  b  {%- endif %}", v, "ab");
    /* strftime_now uses ct_options.now */
    struct tm now = fixture_now();
    ct_options opt = {.now = &now};
    int rc;
    char *msg;
    char *out = render("{{ strftime_now('%d %B %Y, %A %H:%M') }}", v, &opt, &rc, &msg);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "15 January 2026, Thursday 12:00");
    free(out);
    free(msg);
}

/* ---------------------------------------------------------------- model folders */

static char *model_render(const char *dir, const char *request, int *rc, char **msg)
{
    ct_model m;
    kerr err;
    kerr_clear(&err);
    char *out = NULL;
    size_t len;
    *rc = ct_model_load(dir, &m, &err);
    if (*rc == 0) {
        json_error_t je;
        json_t *req = json_loads(request, 0, &je);
        assert_non_null(req);
        *rc = ct_model_render(&m, req, NULL, &out, &len, &err);
        json_decref(req);
        ct_model_free(&m);
    }
    *msg = xstrdup(kerr_msg(&err));
    return out;
}

static void test_model_folder(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    int rc;
    char *msg, *out;
    /* no template at all */
    out = model_render(d, "[]", &rc, &msg);
    assert_int_equal(rc, -1);
    assert_contains(msg, "no chat template");
    free(msg);
    /* tokenizer_config.json: template string, special tokens as strings and AddedToken dicts */
    free(tu_write(d, "tokenizer_config.json",
                  "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, "
                  "\"eos_token\": \"</s>\", \"pad_token\": null, "
                  "\"chat_template\": \"{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ "
                  "m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}{{ eos_token "
                  "}}{{ pad_token is defined }}{{ tools is none }}{{ documents is none }}\"}"));
    out = model_render(d, "[{\"role\": \"user\", \"content\": \"hi\"}]", &rc, &msg);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "<s>[user:hi]></s>FalseTrueTrue");
    free(out);
    free(msg);
    /* a request object: add_generation_prompt false, extra variables, special tokens overridden */
    out = model_render(d, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                          "\"add_generation_prompt\": false, \"eos_token\": \"<E>\"}", &rc, &msg);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "<s>[user:hi]<E>FalseTrueTrue");
    free(out);
    free(msg);
    /* --chat's prompt: one user message, generation prompt on */
    kerr e2;
    kerr_clear(&e2);
    char *cp = ct_chat_prompt(d, "hi", &e2);
    assert_non_null(cp);
    assert_string_equal(cp, "<s>[user:hi]></s>FalseTrueTrue");
    free(cp);
    /* chat_template.jinja wins over the config's template */
    free(tu_write(d, "chat_template.jinja", "J{{ messages|length }}{{ bos_token }}\n"));
    out = model_render(d, "[{\"role\": \"user\", \"content\": \"hi\"}]", &rc, &msg);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "J1<s>");
    free(out);
    free(msg);
    char *p = tu_path(d, "chat_template.jinja");
    unlink(p);
    free(p);
    /* a list of named templates: "default", and "tool_use" when tools are given */
    free(tu_write(d, "tokenizer_config.json",
                  "{\"chat_template\": [{\"name\": \"default\", \"template\": \"D\"}, "
                  "{\"name\": \"tool_use\", \"template\": \"T{{ tools|length }}\"}]}"));
    out = model_render(d, "[]", &rc, &msg);
    assert_string_equal(out, "D");
    free(out);
    free(msg);
    out = model_render(d, "{\"messages\": [], \"tools\": [{\"type\": \"function\"}]}", &rc, &msg);
    assert_string_equal(out, "T1");
    free(out);
    free(msg);
    /* messages as transformers prepares them: null keys dropped, reasoning aliased */
    free(tu_write(d, "tokenizer_config.json",
                  "{\"chat_template\": \"{% for m in messages %}{{ m|tojson }}{% endfor %}\"}"));
    out = model_render(d, "[{\"role\": \"assistant\", \"content\": null, \"reasoning\": \"r\", "
                          "\"tool_calls\": [{\"id\": \"1\"}]}]", &rc, &msg);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "{\"thinking\": \"r\", \"role\": \"assistant\", \"reasoning\": \"r\", "
                             "\"tool_calls\": [{\"id\": \"1\"}], \"reasoning_content\": \"r\"}");
    free(out);
    free(msg);
    /* bad requests and bad templates say where */
    out = model_render(d, "{\"messages\": 3}", &rc, &msg);
    assert_int_equal(rc, -1);
    assert_contains(msg, "\"messages\" must be an array");
    free(msg);
    out = model_render(d, "[1]", &rc, &msg);
    assert_contains(msg, "messages[0] must be an object");
    free(msg);
    free(tu_write(d, "tokenizer_config.json",
                  "{\"chat_template\": \"{{ raise_exception('only ' ~ messages|length) }}\"}"));
    kerr_clear(&e2);
    assert_null(ct_chat_prompt(d, "hi", &e2));
    assert_contains(kerr_msg(&e2), "only 1");
    assert_contains(kerr_msg(&e2), "the chat template refused the message");
    free(tu_write(d, "tokenizer_config.json", "{\"chat_template\": \"{% if %}\"}"));
    out = model_render(d, "[]", &rc, &msg);
    assert_int_equal(rc, -1);
    assert_contains(msg, "tokenizer_config.json: chat template line 1:");
    free(msg);
    tu_rmrf(d);
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    const chat_template *t;
    json_t *vars;
    const char *want;
    int bad;
} thread_job;

static void *render_many(void *arg)
{
    thread_job *j = arg;
    for (int i = 0; i < 200; i++) {
        kerr err;
        kerr_clear(&err);
        char *out = NULL;
        size_t len;
        if (ct_render(j->t, j->vars, NULL, &out, &len, &err) != 0 || strcmp(out, j->want) != 0)
            j->bad++;
        free(out);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    const char *src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + "
                      "m.content|length %}<{{ m.role }}>{{ m.content|upper }}{% endfor %}{{ ns.n }}";
    kerr err;
    kerr_clear(&err);
    chat_template *t = ct_parse(src, strlen(src), &err);
    assert_non_null(t);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        char *v = xasprintf("{\"messages\": [{\"role\": \"user\", \"content\": \"t%d\"}, "
                            "{\"role\": \"assistant\", \"content\": \"abc\"}]}", i);
        json_error_t je;
        jobs[i] = (thread_job){t, json_loads(v, 0, &je), NULL, 0};
        jobs[i].want = xasprintf("<user>T%d<assistant>ABC5", i);
        free(v);
        assert_int_equal(pthread_create(&th[i], NULL, render_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].bad, 0);
        json_decref(jobs[i].vars);
        free((char *)jobs[i].want);
    }
    ct_free(t);
}

/* ---------------------------------------------------------------- kiln chat-template */

static const char *KILN, *KILNC;

typedef tu_run run;

/* KILN chat-template DIR [extra1 [extra2]] with stdin `input`. */
static run kiln_ct(const char *dir, const char *input, const char *extra1, const char *extra2)
{
    const char *argv[8] = {KILN, "chat-template", dir, extra1, extra2, NULL};
    return tu_run_argv(dir, input, argv);
}

static void test_cli(void **state)
{
    (void)state;
    if (!KILN)
        skip();
    char *d = tu_tmpdir();
    free(tu_write(d, "tokenizer_config.json", "{\"bos_token\": \"<s>\", \"chat_template\": "
                                              "\"{{ bos_token }}{% for m in messages %}{% if m.role == 'bad' %}"
                                              "{{ raise_exception('no bad roles') }}{% endif %}"
                                              "<{{ m.role }}>{{ m.content }}\\n{% endfor %}"
                                              "{% if add_generation_prompt %}<assistant>{% endif %}"
                                              "{{ strftime_now('%Y') }}\"}"));
    run r = kiln_ct(d, "[{\"role\": \"user\", \"content\": \"h\\u00e9\"}]", NULL, NULL);
    assert_int_equal(r.code, 0);
    assert_int_equal(strlen(r.out), strlen("<s><user>h\xc3\xa9\n<assistant>2026")); /* this year */
    assert_starts_with(r.out, "<s><user>h\xc3\xa9\n<assistant>");
    tu_run_free(&r);
    r = kiln_ct(d, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                   "\"add_generation_prompt\": false}", "--now", "2031-02-03 04:05:06");
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "<s><user>x\n2031");
    assert_string_equal(r.err, "");
    tu_run_free(&r);
    r = kiln_ct(d, "[{\"role\": \"bad\", \"content\": \"x\"}]", NULL, NULL);
    assert_int_equal(r.code, 1);
    assert_string_equal(r.out, "");
    assert_contains(r.err, "raise_exception: no bad roles");
    tu_run_free(&r);
    r = kiln_ct(d, "{not json", NULL, NULL);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "stdin:1:");
    tu_run_free(&r);
    char *tf = tu_write(d, "other.jinja", "{{ bos_token }}OTHER{{ messages|length }}");
    r = kiln_ct(d, "[]", "--template", tf);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "<s>OTHER0");
    tu_run_free(&r);
    free(tf);
    r = kiln_ct(d, "[]", "--help", NULL);
    assert_int_equal(r.code, 0);
    assert_contains(r.out, "usage: kiln chat-template DIR");
    tu_run_free(&r);
    tu_rmrf(d);
}

/* --chat on kilnc ref: the example model with a chat template; the ids it generates are those of
 * --ids given the rendered prompt encoded without special tokens (kiln tokenize --no-special). */
static void test_chat_flag(void **state)
{
    (void)state;
    if (!KILN || !KILNC)
        skip();
    char *d = tu_tmpdir();
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json", "generation_config.json"};
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        char *src = xasprintf("%s/examples/tinyfortune/%s", KILN_SOURCE_DIR, files[i]);
        char *dst = tu_path(d, files[i]);
        assert_int_equal(symlink(src, dst), 0);
        free(src);
        free(dst);
    }
    free(tu_write(d, "chat_template.jinja", "{% for m in messages %}{{ m.content }} and{% endfor %}"));
    const char *chat_argv[] = {KILNC, "ref", d, "--chat", "A fool", "--max-new", "4", NULL};
    run r = tu_run_argv(d, "", chat_argv);
    assert_int_equal(r.code, 0);
    char *nl = strchr(r.out, '\n');
    assert_non_null(nl);
    assert_starts_with(nl + 1, "A fool and"); /* the rendered prompt, then the continuation */
    char *chat_ids = strndup(r.out, (size_t)(nl - r.out));
    tu_run_free(&r);
    const char *tok_argv[] = {KILN, "tokenize", d, "--no-special", NULL};
    r = tu_run_argv(d, "\"A fool and\"\n", tok_argv);
    assert_int_equal(r.code, 0);
    char *ids = xstrdup(r.out + 1); /* "[1, 2, 3]" -> "1,2,3" */
    size_t k = 0;
    for (char *p = ids; *p && *p != ']'; p++)
        if (*p != ' ')
            ids[k++] = *p;
    ids[k] = 0;
    tu_run_free(&r);
    const char *ids_argv[] = {KILNC, "ref", d, "--ids", ids, "--max-new", "4", NULL};
    r = tu_run_argv(d, "", ids_argv);
    assert_int_equal(r.code, 0);
    assert_starts_with(r.out, chat_ids);
    tu_run_free(&r);
    /* a template error stops it with the template's message */
    free(tu_write(d, "chat_template.jinja", "{{ raise_exception('no chatting') }}"));
    r = tu_run_argv(d, "", chat_argv);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "no chatting");
    tu_run_free(&r);
    free(ids);
    free(chat_ids);
    tu_rmrf(d);
}

int main(void)
{
    KILN = getenv("KILN");
    if (KILN && !*KILN)
        KILN = NULL;
    KILNC = getenv("KILNC");
    if (KILNC && !*KILNC)
        KILNC = NULL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),        cmocka_unit_test(test_language),
        cmocka_unit_test(test_parse_errors),    cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_limits),          cmocka_unit_test(test_whitespace_and_now),
        cmocka_unit_test(test_model_folder),    cmocka_unit_test(test_threads),
        cmocka_unit_test(test_cli),             cmocka_unit_test(test_chat_flag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
