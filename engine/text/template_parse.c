/*
 * Chat-template parser: tokens to a syntax tree.
 *
 * Owns:   jinja2's grammar for the supported subset (precedence as in
 *         jinja2/parser.py: conditional, or, and, not, comparisons, +/-,
 *         ~, * / // %, unary -, postfix . [] (), filters and tests) and the
 *         load-time refusal of everything outside it, with its line.
 * Never:  evaluates.
 *
 * Supported names (anything else is an error when the template loads):
 *   statements  if/elif/else, for [x | k, v] in e [if c] / else, set x = e,
 *               generation (transparent, as HF's AssistantTracker renders)
 *   filters     tojson length count string trim lower upper default d join
 *               first last items list
 *   tests       string none defined undefined mapping iterable sequence
 *               number integer float boolean true false
 *   methods     get items keys values strip lstrip rstrip lower upper
 *               startswith endswith split
 *   globals     raise_exception strftime_now range
 */

#include <stdlib.h>
#include <string.h>

#include "template_internal.h"

typedef struct {
    const kimi_ttoks_t  *t;
    size_t               i;
    kimi_err_t          *err;
    int                  depth;     /* nesting, bounded: the parser and the
                                       evaluator recurse on it */
} kimi_parser_t;

#define KIMI_PARSE_MAX_DEPTH  100

static const char  *kimi_filters[] = {
    "tojson", "length", "count", "string", "trim", "lower", "upper",
    "default", "d", "join", "first", "last", "items", "list", NULL
};

static const char  *kimi_tests[] = {
    "string", "none", "defined", "undefined", "mapping", "iterable",
    "sequence", "number", "integer", "float", "boolean", "true", "false", NULL
};

static const char  *kimi_methods[] = {
    "get", "items", "keys", "values", "strip", "lstrip", "rstrip", "lower",
    "upper", "startswith", "endswith", "split", NULL
};

static const char  *kimi_globals[] = {
    "raise_exception", "strftime_now", "range", NULL
};

static kimi_node_t *kimi_parse_expr(kimi_parser_t *p);
static int kimi_parse_body(kimi_parser_t *p, const char **ends,
    kimi_node_t ***body, size_t *n_body);
static int kimi_parse_body_in(kimi_parser_t *p, const char **ends,
    kimi_node_t ***body, size_t *n_body);


static int
kimi_in_list(const char *s, const char **list)
{
    for ( ; *list != NULL; list++) {
        if (strcmp(s, *list) == 0) {
            return 1;
        }
    }
    return 0;
}


static const kimi_ttok_t *
kimi_cur(kimi_parser_t *p)
{
    return &p->t->v[p->i];
}


static int
kimi_is_op(kimi_parser_t *p, const char *op)
{
    const kimi_ttok_t  *t = kimi_cur(p);

    return t->type == KIMI_T_OP && strcmp(t->text, op) == 0;
}


static int
kimi_is_name(kimi_parser_t *p, const char *name)
{
    const kimi_ttok_t  *t = kimi_cur(p);

    return t->type == KIMI_T_NAME && strcmp(t->text, name) == 0;
}


static void
kimi_advance(kimi_parser_t *p)
{
    if (p->t->v[p->i].type != KIMI_T_EOF) {
        p->i++;
    }
}


/* Records the first error only; returns NULL for the caller to pass up. */
static kimi_node_t *
kimi_fail(kimi_parser_t *p, int code, const char *what)
{
    const kimi_ttok_t  *t = kimi_cur(p);

    if (p->err->code == KIMI_OK) {
        kimi_err_set(p->err, code, "chat template line %d: %s (at \"%s\")",
                     t->line, what, t->type == KIMI_T_EOF ? "end"
                     : t->type == KIMI_T_BLOCK_END ? "%}"
                     : t->type == KIMI_T_VAR_END ? "}}" : t->text);
    }
    return NULL;
}


static kimi_node_t *
kimi_node(kimi_parser_t *p, kimi_node_e type)
{
    kimi_node_t  *n = calloc(1, sizeof(*n));

    if (n == NULL) {
        return kimi_fail(p, KIMI_ENOMEM, "out of memory");
    }
    n->type = type;
    n->line = kimi_cur(p)->line;
    return n;
}


static void kimi_node_free(kimi_node_t *n);


void
kimi_tmpl_nodes_free(kimi_node_t **v, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        kimi_node_free(v[i]);
    }
    free(v);
}


static void
kimi_node_free(kimi_node_t *n)
{
    if (n == NULL) {
        return;
    }
    free(n->str);
    free(n->str2);
    if (n->value != NULL) {
        json_decref(n->value);
    }
    kimi_node_free(n->a);
    kimi_node_free(n->b);
    kimi_node_free(n->c);
    kimi_tmpl_nodes_free(n->body, n->n_body);
    kimi_tmpl_nodes_free(n->orelse, n->n_orelse);
    kimi_tmpl_nodes_free(n->args, n->n_args);
    free(n);
}


static int
kimi_push(kimi_node_t ***v, size_t *n, kimi_node_t *x)
{
    kimi_node_t  **nv;

    nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (nv == NULL) {
        kimi_node_free(x);
        return KIMI_ENOMEM;
    }
    nv[(*n)++] = x;
    *v = nv;
    return KIMI_OK;
}


static char *
kimi_strdup_tok(kimi_parser_t *p)
{
    const kimi_ttok_t  *t = kimi_cur(p);
    char               *s = malloc(t->len + 1);

    if (s != NULL) {
        memcpy(s, t->text, t->len + 1);
    }
    return s;
}


/* ---- expressions ------------------------------------------------------------- */

/* "(" args ")" after a callee; keyword arguments are not supported. */
static int
kimi_parse_args(kimi_parser_t *p, kimi_node_t *call)
{
    kimi_node_t  *a;

    kimi_advance(p);                       /* ( */
    while (!kimi_is_op(p, ")")) {
        if (kimi_cur(p)->type == KIMI_T_NAME && p->i + 1 < p->t->n
            && p->t->v[p->i + 1].type == KIMI_T_OP
            && strcmp(p->t->v[p->i + 1].text, "=") == 0)
        {
            kimi_fail(p, KIMI_EUNSUPPORTED, "keyword arguments are not "
                      "supported");
            return -1;
        }
        a = kimi_parse_expr(p);
        if (a == NULL || kimi_push(&call->args, &call->n_args, a) != 0) {
            return -1;
        }
        if (kimi_is_op(p, ",")) {
            kimi_advance(p);
        } else if (!kimi_is_op(p, ")")) {
            kimi_fail(p, KIMI_EFORMAT, "expected ',' or ')'");
            return -1;
        }
    }
    kimi_advance(p);
    return 0;
}


static kimi_node_t *
kimi_parse_primary(kimi_parser_t *p)
{
    kimi_node_t         *n, *x;
    const kimi_ttok_t   *t = kimi_cur(p);

    switch (t->type) {

    case KIMI_T_NAME:
        if (strcmp(t->text, "true") == 0 || strcmp(t->text, "True") == 0
            || strcmp(t->text, "false") == 0 || strcmp(t->text, "False") == 0
            || strcmp(t->text, "none") == 0 || strcmp(t->text, "None") == 0)
        {
            n = kimi_node(p, KIMI_N_CONST);
            if (n == NULL) {
                return NULL;
            }
            n->value = (t->text[0] == 't' || t->text[0] == 'T') ? json_true()
                       : (t->text[0] == 'f' || t->text[0] == 'F')
                         ? json_false() : json_null();
            kimi_advance(p);
            return n;
        }
        n = kimi_node(p, KIMI_N_NAME);
        if (n == NULL || (n->str = kimi_strdup_tok(p)) == NULL) {
            kimi_node_free(n);
            return kimi_fail(p, KIMI_ENOMEM, "out of memory");
        }
        kimi_advance(p);
        return n;

    case KIMI_T_STRING:
        n = kimi_node(p, KIMI_N_CONST);
        if (n == NULL) {
            return NULL;
        }
        n->value = json_stringn_nocheck(t->text, t->len);
        kimi_advance(p);
        /* adjacent literals concatenate, as in Python */
        while (kimi_cur(p)->type == KIMI_T_STRING) {
            const kimi_ttok_t  *u = kimi_cur(p);
            size_t              a = json_string_length(n->value);
            char               *buf = malloc(a + u->len + 1);

            if (buf == NULL) {
                kimi_node_free(n);
                return kimi_fail(p, KIMI_ENOMEM, "out of memory");
            }
            memcpy(buf, json_string_value(n->value), a);
            memcpy(buf + a, u->text, u->len);
            json_decref(n->value);
            n->value = json_stringn_nocheck(buf, a + u->len);
            free(buf);
            kimi_advance(p);
        }
        return n;

    case KIMI_T_INT:
    case KIMI_T_FLOAT:
        n = kimi_node(p, KIMI_N_CONST);
        if (n == NULL) {
            return NULL;
        }
        n->value = t->type == KIMI_T_INT
                   ? json_integer(strtoll(t->text, NULL, 10))
                   : json_real(strtod(t->text, NULL));
        kimi_advance(p);
        return n;

    case KIMI_T_OP:
        if (strcmp(t->text, "(") == 0) {
            kimi_advance(p);
            n = kimi_parse_expr(p);
            if (n == NULL) {
                return NULL;
            }
            if (!kimi_is_op(p, ")")) {
                kimi_node_free(n);
                return kimi_fail(p, KIMI_EUNSUPPORTED, "expected ')' (tuples "
                                 "are not supported)");
            }
            kimi_advance(p);
            return n;
        }

        if (strcmp(t->text, "[") == 0 || strcmp(t->text, "{") == 0) {
            int          is_dict = t->text[0] == '{';
            const char  *close = is_dict ? "}" : "]";

            n = kimi_node(p, is_dict ? KIMI_N_DICT : KIMI_N_LIST);
            if (n == NULL) {
                return NULL;
            }
            kimi_advance(p);
            while (!kimi_is_op(p, close)) {
                x = kimi_parse_expr(p);
                if (x == NULL || kimi_push(&n->args, &n->n_args, x) != 0) {
                    kimi_node_free(n);
                    return kimi_fail(p, KIMI_ENOMEM, "out of memory");
                }
                if (is_dict) {
                    if (!kimi_is_op(p, ":")) {
                        kimi_node_free(n);
                        return kimi_fail(p, KIMI_EFORMAT, "expected ':'");
                    }
                    kimi_advance(p);
                    x = kimi_parse_expr(p);
                    if (x == NULL || kimi_push(&n->args, &n->n_args, x) != 0) {
                        kimi_node_free(n);
                        return kimi_fail(p, KIMI_ENOMEM, "out of memory");
                    }
                }
                if (kimi_is_op(p, ",")) {
                    kimi_advance(p);
                } else if (!kimi_is_op(p, close)) {
                    kimi_node_free(n);
                    return kimi_fail(p, KIMI_EFORMAT, "expected ',' or a "
                                     "closing bracket");
                }
            }
            kimi_advance(p);
            return n;
        }
        break;

    default:
        break;
    }

    return kimi_fail(p, KIMI_EFORMAT, "expected an expression");
}


/* At the NAME of an attribute, filter or test applied to n (one of list,
 * unless list is NULL): the node of type over n, past the name.  Else frees
 * n and fails with bad. */
static kimi_node_t *
kimi_parse_named(kimi_parser_t *p, kimi_node_t *n, kimi_node_e type,
    const char **list, const char *bad)
{
    kimi_node_t  *x;

    if (kimi_cur(p)->type != KIMI_T_NAME
        || (list != NULL && !kimi_in_list(kimi_cur(p)->text, list)))
    {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, bad);
    }

    x = kimi_node(p, type);
    if (x == NULL || (x->str = kimi_strdup_tok(p)) == NULL) {
        kimi_node_free(x);
        kimi_node_free(n);
        return kimi_fail(p, KIMI_ENOMEM, "out of memory");
    }
    x->a = n;
    kimi_advance(p);
    return x;
}


static kimi_node_t *
kimi_parse_postfix(kimi_parser_t *p, kimi_node_t *n)
{
    kimi_node_t  *x;

    for ( ;; ) {
        if (kimi_is_op(p, ".")) {
            kimi_advance(p);
            n = kimi_parse_named(p, n, KIMI_N_GETATTR, NULL,
                                 "expected an attribute name after '.'");
            if (n == NULL) {
                return NULL;
            }

        } else if (kimi_is_op(p, "[")) {
            kimi_advance(p);
            x = kimi_node(p, KIMI_N_GETITEM);
            if (x == NULL) {
                kimi_node_free(n);
                return NULL;
            }
            x->a = n;
            n = x;
            if (kimi_is_op(p, ":")) {
                kimi_node_free(n);
                return kimi_fail(p, KIMI_EUNSUPPORTED, "slices are not "
                                 "supported");
            }
            n->b = kimi_parse_expr(p);
            if (n->b == NULL) {
                kimi_node_free(n);
                return NULL;
            }
            if (!kimi_is_op(p, "]")) {
                kimi_node_free(n);
                return kimi_fail(p, KIMI_EUNSUPPORTED, "expected ']' (slices "
                                 "are not supported)");
            }
            kimi_advance(p);

        } else if (kimi_is_op(p, "(")) {
            /* only calls of known methods and globals are allowed */
            if (!((n->type == KIMI_N_GETATTR && kimi_in_list(n->str,
                                                             kimi_methods))
                  || (n->type == KIMI_N_NAME && kimi_in_list(n->str,
                                                             kimi_globals))))
            {
                kimi_fail(p, KIMI_EUNSUPPORTED, n->type == KIMI_N_GETATTR
                          ? "unsupported method" : "unsupported function");
                kimi_node_free(n);
                return NULL;
            }
            x = kimi_node(p, KIMI_N_CALL);
            if (x == NULL) {
                kimi_node_free(n);
                return NULL;
            }
            x->a = n;
            n = x;
            if (kimi_parse_args(p, n) != 0) {
                kimi_node_free(n);
                return NULL;
            }

        } else {
            return n;
        }
    }
}


/* filters and tests after a unary expression */
static kimi_node_t *
kimi_parse_filters(kimi_parser_t *p, kimi_node_t *n)
{
    int           negate;

    for ( ;; ) {
        if (kimi_is_op(p, "|")) {
            kimi_advance(p);
            n = kimi_parse_named(p, n, KIMI_N_FILTER, kimi_filters,
                                 "unsupported filter");
            if (n == NULL) {
                return NULL;
            }
            if (kimi_is_op(p, "(") && kimi_parse_args(p, n) != 0) {
                kimi_node_free(n);
                return NULL;
            }
            if (strcmp(n->str, "tojson") == 0 && n->n_args > 0) {
                kimi_node_free(n);
                return kimi_fail(p, KIMI_EUNSUPPORTED, "tojson arguments "
                                 "are not supported");
            }

        } else if (kimi_is_name(p, "is")) {
            kimi_advance(p);
            negate = 0;
            if (kimi_is_name(p, "not")) {
                negate = 1;
                kimi_advance(p);
            }
            n = kimi_parse_named(p, n, KIMI_N_TEST, kimi_tests,
                                 "unsupported test");
            if (n == NULL) {
                return NULL;
            }
            n->op = negate;

        } else {
            return n;
        }
    }
}


typedef kimi_node_t *(*kimi_parse_pt)(kimi_parser_t *p);

/* At a prefix operator ("-" or "not"): a node of type whose operand is
 * parsed by operand, which may meet the operator again ("not not x"), so
 * each level counts against the nesting limit. */
static kimi_node_t *
kimi_parse_prefix(kimi_parser_t *p, kimi_node_e type, kimi_parse_pt operand)
{
    kimi_node_t  *x;

    x = kimi_node(p, type);
    if (x == NULL) {
        return NULL;
    }
    kimi_advance(p);
    if (p->depth + 1 > KIMI_PARSE_MAX_DEPTH) {
        kimi_node_free(x);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "expression nested too "
                         "deeply");
    }
    p->depth++;
    x->a = operand(p);
    p->depth--;
    if (x->a == NULL) {
        kimi_node_free(x);
        return NULL;
    }
    return x;
}


static kimi_node_t *
kimi_parse_unary(kimi_parser_t *p)
{
    kimi_node_t  *n;

    if (kimi_is_op(p, "-")) {
        return kimi_parse_prefix(p, KIMI_N_NEG, kimi_parse_unary);
    }

    n = kimi_parse_primary(p);
    if (n == NULL) {
        return NULL;
    }
    n = kimi_parse_postfix(p, n);
    if (n == NULL) {
        return NULL;
    }
    return kimi_parse_filters(p, n);
}


typedef struct {
    const char  *text;
    int          op;
} kimi_opdef_t;

static const kimi_opdef_t  kimi_ops_mul[] = {
    { "*", KIMI_OP_MUL }, { "/", KIMI_OP_DIV }, { "//", KIMI_OP_FLOORDIV },
    { "%", KIMI_OP_MOD }, { NULL, 0 }
};
static const kimi_opdef_t  kimi_ops_concat[] = {
    { "~", KIMI_OP_CONCAT }, { NULL, 0 }
};
static const kimi_opdef_t  kimi_ops_add[] = {
    { "+", KIMI_OP_ADD }, { "-", KIMI_OP_SUB }, { NULL, 0 }
};


static kimi_node_t *kimi_parse_level(kimi_parser_t *p, int level);


/* levels: 0 add/sub, 1 concat, 2 mul/div, 3 unary */
static kimi_node_t *
kimi_parse_level(kimi_parser_t *p, int level)
{
    const kimi_opdef_t  *ops, *o;
    kimi_node_t         *n, *x;

    if (level == 3) {
        return kimi_parse_unary(p);
    }

    ops = level == 0 ? kimi_ops_add : level == 1 ? kimi_ops_concat
                                                 : kimi_ops_mul;
    n = kimi_parse_level(p, level + 1);

    while (n != NULL) {
        for (o = ops; o->text != NULL && !kimi_is_op(p, o->text); o++) { }
        if (o->text == NULL) {
            break;
        }
        x = kimi_node(p, KIMI_N_BINOP);
        if (x == NULL) {
            kimi_node_free(n);
            return NULL;
        }
        kimi_advance(p);
        x->op = o->op;
        x->a = n;
        x->b = kimi_parse_level(p, level + 1);
        if (x->b == NULL) {
            kimi_node_free(x);
            return NULL;
        }
        n = x;
    }

    return n;
}


static kimi_node_t *
kimi_parse_compare(kimi_parser_t *p)
{
    int           op;
    kimi_node_t  *n, *x;

    n = kimi_parse_level(p, 0);

    while (n != NULL) {
        op = kimi_is_op(p, "==") ? KIMI_OP_EQ : kimi_is_op(p, "!=") ? KIMI_OP_NE
             : kimi_is_op(p, "<") ? KIMI_OP_LT : kimi_is_op(p, "<=") ? KIMI_OP_LE
             : kimi_is_op(p, ">") ? KIMI_OP_GT : kimi_is_op(p, ">=") ? KIMI_OP_GE
             : kimi_is_name(p, "in") ? KIMI_OP_IN : 0;

        if (op == 0 && kimi_is_name(p, "not") && p->i + 1 < p->t->n
            && p->t->v[p->i + 1].type == KIMI_T_NAME
            && strcmp(p->t->v[p->i + 1].text, "in") == 0)
        {
            op = KIMI_OP_NOTIN;
            kimi_advance(p);
        }

        if (op == 0) {
            break;
        }

        x = kimi_node(p, KIMI_N_BINOP);
        if (x == NULL) {
            kimi_node_free(n);
            return NULL;
        }
        kimi_advance(p);
        x->op = op;
        x->a = n;
        x->b = kimi_parse_level(p, 0);
        if (x->b == NULL) {
            kimi_node_free(x);
            return NULL;
        }
        n = x;
    }

    return n;
}


static kimi_node_t *
kimi_parse_not(kimi_parser_t *p)
{
    if (kimi_is_name(p, "not")) {
        return kimi_parse_prefix(p, KIMI_N_NOT, kimi_parse_not);
    }

    return kimi_parse_compare(p);
}


static kimi_node_t *
kimi_parse_bool(kimi_parser_t *p, int is_or)
{
    kimi_node_t  *n, *x;

    n = is_or ? kimi_parse_bool(p, 0) : kimi_parse_not(p);

    while (n != NULL && kimi_is_name(p, is_or ? "or" : "and")) {
        x = kimi_node(p, is_or ? KIMI_N_OR : KIMI_N_AND);
        if (x == NULL) {
            kimi_node_free(n);
            return NULL;
        }
        kimi_advance(p);
        x->a = n;
        x->b = is_or ? kimi_parse_bool(p, 0) : kimi_parse_not(p);
        if (x->b == NULL) {
            kimi_node_free(x);
            return NULL;
        }
        n = x;
    }

    return n;
}


/* expr: or_expr [ "if" or_expr [ "else" expr ] ] */
static kimi_node_t *
kimi_parse_expr_cond(kimi_parser_t *p, int with_cond)
{
    kimi_node_t  *n, *x;

    n = kimi_parse_bool(p, 1);

    while (with_cond && n != NULL && kimi_is_name(p, "if")) {
        x = kimi_node(p, KIMI_N_COND);
        if (x == NULL) {
            kimi_node_free(n);
            return NULL;
        }
        kimi_advance(p);
        x->a = n;
        x->b = kimi_parse_bool(p, 1);
        if (x->b == NULL) {
            kimi_node_free(x);
            return NULL;
        }
        if (kimi_is_name(p, "else")) {
            kimi_advance(p);
            x->c = kimi_parse_expr_cond(p, 1);
            if (x->c == NULL) {
                kimi_node_free(x);
                return NULL;
            }
        }
        n = x;
    }

    return n;
}


static kimi_node_t *
kimi_parse_expr(kimi_parser_t *p)
{
    kimi_node_t  *n;

    if (++p->depth > KIMI_PARSE_MAX_DEPTH) {
        p->depth--;
        return kimi_fail(p, KIMI_EUNSUPPORTED, "expression nested too deeply");
    }
    n = kimi_parse_expr_cond(p, 1);
    p->depth--;
    return n;
}


/* ---- statements ------------------------------------------------------------- */

static int
kimi_expect_block_end(kimi_parser_t *p)
{
    if (kimi_cur(p)->type != KIMI_T_BLOCK_END) {
        kimi_fail(p, KIMI_EUNSUPPORTED, "expected '%}'");
        return -1;
    }
    kimi_advance(p);
    return 0;
}


/* At "{%" NAME, NAME being "else" or the end tag (end_only[0]): parses an
 * optional "else %} body" into n->orelse, then the end tag and its "%}". */
static int
kimi_parse_else_end(kimi_parser_t *p, const char **end_only, kimi_node_t *n)
{
    if (kimi_is_name(p, "else")) {
        kimi_advance(p);
        if (kimi_expect_block_end(p) != 0
            || kimi_parse_body(p, end_only, &n->orelse, &n->n_orelse) != 0)
        {
            return -1;
        }
    }

    kimi_advance(p);                     /* the end tag */
    return kimi_expect_block_end(p);
}


/* After "{% if" or "{% elif": cond %} body [elif ...|else body] endif %} */
static kimi_node_t *
kimi_parse_if(kimi_parser_t *p)
{
    static const char  *ends[] = { "elif", "else", "endif", NULL };
    static const char  *end_only[] = { "endif", NULL };
    kimi_node_t        *n, *x;

    n = kimi_node(p, KIMI_N_IF);
    if (n == NULL) {
        return NULL;
    }

    n->a = kimi_parse_expr(p);
    if (n->a == NULL || kimi_expect_block_end(p) != 0
        || kimi_parse_body(p, ends, &n->body, &n->n_body) != 0)
    {
        kimi_node_free(n);
        return NULL;
    }

    /* at "{%" NAME */
    if (kimi_is_name(p, "elif")) {
        kimi_advance(p);
        x = kimi_parse_if(p);
        if (x == NULL || kimi_push(&n->orelse, &n->n_orelse, x) != 0) {
            kimi_node_free(n);
            return NULL;
        }
        return n;                        /* the nested if ate the endif */
    }

    if (kimi_parse_else_end(p, end_only, n) != 0) {
        kimi_node_free(n);
        return NULL;
    }
    return n;
}


static kimi_node_t *
kimi_parse_for(kimi_parser_t *p)
{
    static const char  *ends[] = { "else", "endfor", NULL };
    static const char  *end_only[] = { "endfor", NULL };
    kimi_node_t        *n;

    n = kimi_node(p, KIMI_N_FOR);
    if (n == NULL) {
        return NULL;
    }

    if (kimi_cur(p)->type != KIMI_T_NAME) {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "expected a loop variable");
    }
    n->str = kimi_strdup_tok(p);
    kimi_advance(p);

    if (kimi_is_op(p, ",")) {
        kimi_advance(p);
        if (kimi_cur(p)->type != KIMI_T_NAME) {
            kimi_node_free(n);
            return kimi_fail(p, KIMI_EUNSUPPORTED, "expected a second loop "
                             "variable");
        }
        n->str2 = kimi_strdup_tok(p);
        kimi_advance(p);
    }

    if (!kimi_is_name(p, "in")) {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "expected 'in' (at most two "
                         "loop variables are supported)");
    }
    kimi_advance(p);

    n->a = kimi_parse_expr_cond(p, 0);
    if (n->a == NULL) {
        kimi_node_free(n);
        return NULL;
    }

    if (kimi_is_name(p, "if")) {
        kimi_advance(p);
        n->b = kimi_parse_expr(p);
        if (n->b == NULL) {
            kimi_node_free(n);
            return NULL;
        }
    }

    if (kimi_is_name(p, "recursive")) {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "recursive loops are not "
                         "supported");
    }

    if (kimi_expect_block_end(p) != 0
        || kimi_parse_body(p, ends, &n->body, &n->n_body) != 0)
    {
        kimi_node_free(n);
        return NULL;
    }

    if (kimi_parse_else_end(p, end_only, n) != 0) {
        kimi_node_free(n);
        return NULL;
    }
    return n;
}


static kimi_node_t *
kimi_parse_set(kimi_parser_t *p)
{
    kimi_node_t  *n;

    n = kimi_node(p, KIMI_N_SET);
    if (n == NULL) {
        return NULL;
    }

    if (kimi_cur(p)->type != KIMI_T_NAME) {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "expected a variable name");
    }
    n->str = kimi_strdup_tok(p);
    kimi_advance(p);

    if (!kimi_is_op(p, "=")) {
        kimi_node_free(n);
        return kimi_fail(p, KIMI_EUNSUPPORTED, "only 'set name = expr' is "
                         "supported (no block set, no attribute set)");
    }
    kimi_advance(p);

    n->a = kimi_parse_expr(p);
    if (n->a == NULL || kimi_expect_block_end(p) != 0) {
        kimi_node_free(n);
        return NULL;
    }
    return n;
}


/* Statements until "{% <one of ends>": leaves p at that name. */
static int
kimi_parse_body(kimi_parser_t *p, const char **ends, kimi_node_t ***body,
    size_t *n_body)
{
    int  rc;

    if (++p->depth > KIMI_PARSE_MAX_DEPTH) {
        p->depth--;
        kimi_fail(p, KIMI_EUNSUPPORTED, "blocks nested too deeply");
        return -1;
    }
    rc = kimi_parse_body_in(p, ends, body, n_body);
    p->depth--;
    return rc;
}


static int
kimi_parse_body_in(kimi_parser_t *p, const char **ends, kimi_node_t ***body,
    size_t *n_body)
{
    static const char   *gen_end[] = { "endgeneration", NULL };
    kimi_node_t         *n;
    const kimi_ttok_t   *t;
    kimi_node_t        **inner;
    size_t               n_inner, k;

    for ( ;; ) {
        t = kimi_cur(p);

        switch (t->type) {

        case KIMI_T_EOF:
            if (ends != NULL) {
                kimi_fail(p, KIMI_EFORMAT, "missing end tag");
                return -1;
            }
            return 0;

        case KIMI_T_TEXT:
            n = kimi_node(p, KIMI_N_TEXT);
            if (n == NULL) {
                return -1;
            }
            n->str = malloc(t->len + 1);
            if (n->str == NULL) {
                kimi_node_free(n);
                kimi_fail(p, KIMI_ENOMEM, "out of memory");
                return -1;
            }
            memcpy(n->str, t->text, t->len + 1);
            n->str_len = t->len;
            kimi_advance(p);
            break;

        case KIMI_T_VAR_BEGIN:
            kimi_advance(p);
            n = kimi_node(p, KIMI_N_OUTPUT);
            if (n == NULL) {
                return -1;
            }
            n->a = kimi_parse_expr(p);
            if (n->a == NULL) {
                kimi_node_free(n);
                return -1;
            }
            if (kimi_cur(p)->type != KIMI_T_VAR_END) {
                kimi_node_free(n);
                kimi_fail(p, KIMI_EUNSUPPORTED, "expected '}}'");
                return -1;
            }
            kimi_advance(p);
            break;

        case KIMI_T_BLOCK_BEGIN:
            kimi_advance(p);
            t = kimi_cur(p);
            if (t->type != KIMI_T_NAME) {
                kimi_fail(p, KIMI_EFORMAT, "expected a statement name");
                return -1;
            }
            if (ends != NULL && kimi_in_list(t->text, ends)) {
                return 0;
            }
            kimi_advance(p);

            if (strcmp(t->text, "if") == 0) {
                n = kimi_parse_if(p);
            } else if (strcmp(t->text, "for") == 0) {
                n = kimi_parse_for(p);
            } else if (strcmp(t->text, "set") == 0) {
                n = kimi_parse_set(p);
            } else if (strcmp(t->text, "generation") == 0) {
                /* HF's assistant-mask marker: renders its body as is */
                inner = NULL;
                n_inner = 0;
                if (kimi_expect_block_end(p) != 0
                    || kimi_parse_body(p, gen_end, &inner, &n_inner) != 0)
                {
                    kimi_tmpl_nodes_free(inner, n_inner);
                    return -1;
                }
                kimi_advance(p);
                if (kimi_expect_block_end(p) != 0) {
                    kimi_tmpl_nodes_free(inner, n_inner);
                    return -1;
                }
                for (k = 0; k < n_inner; k++) {
                    if (kimi_push(body, n_body, inner[k]) != 0) {
                        inner[k] = NULL;
                        kimi_tmpl_nodes_free(inner, n_inner);
                        kimi_fail(p, KIMI_ENOMEM, "out of memory");
                        return -1;
                    }
                    inner[k] = NULL;
                }
                free(inner);
                continue;
            } else {
                p->i--;
                kimi_fail(p, KIMI_EUNSUPPORTED, "unsupported statement");
                return -1;
            }

            if (n == NULL) {
                return -1;
            }
            break;

        default:
            kimi_fail(p, KIMI_EFORMAT, "unexpected token");
            return -1;
        }

        if (kimi_push(body, n_body, n) != 0) {
            kimi_fail(p, KIMI_ENOMEM, "out of memory");
            return -1;
        }
    }
}


int
kimi_tmpl_parse(const kimi_ttoks_t *toks, kimi_node_t ***body,
    size_t *n_body, kimi_err_t *err)
{
    kimi_parser_t  p;

    p.t = toks;
    p.i = 0;
    p.depth = 0;
    p.err = err;
    err->code = KIMI_OK;
    *body = NULL;
    *n_body = 0;

    if (kimi_parse_body(&p, NULL, body, n_body) != 0) {
        kimi_tmpl_nodes_free(*body, *n_body);
        *body = NULL;
        *n_body = 0;
        return err->code != KIMI_OK ? err->code : KIMI_EFORMAT;
    }

    return KIMI_OK;
}
