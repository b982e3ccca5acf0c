/*
 * Private types of the chat-template renderer (template_*.c, chat.c).
 *
 * Owns:   the token and syntax-tree types, the value type the evaluator
 *         works with, and the entry points between lexer, parser,
 *         evaluator and the Python-compatible formatting helpers.
 * Never:  included outside engine/text/.
 * Holds:  a parsed template is immutable; rendering allocates its own
 *         scopes and output, so renders may run on many threads at once.
 *
 * The subset is what Hugging Face chat templates of this family use:
 * text, {{ expr }}, {% if/elif/else %}, {% for [a, b] in expr [if c] %}
 * with loop.*, {% set name = expr %}, comments, whitespace control with
 * '-' and '+', trim_blocks and lstrip_blocks, and the expressions, tests,
 * filters and methods listed in template_parse.c.  Anything else is
 * refused when the template is loaded.
 */

#ifndef KIMI_TEMPLATE_INTERNAL_H
#define KIMI_TEMPLATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kimi_text.h"

/* ---- syntax tree ----------------------------------------------------------- */

typedef enum {
    KIMI_N_TEXT = 0,       /* str */
    KIMI_N_OUTPUT,         /* a */
    KIMI_N_IF,             /* a = cond, body, orelse */
    KIMI_N_FOR,            /* str = target, str2 = 2nd target, a = iter,
                              b = filter cond, body, orelse */
    KIMI_N_SET,            /* str = name, a */

    KIMI_N_CONST,          /* value (json) */
    KIMI_N_NAME,           /* str */
    KIMI_N_GETATTR,        /* a . str */
    KIMI_N_GETITEM,        /* a [ b ] */
    KIMI_N_CALL,           /* a ( args ) */
    KIMI_N_FILTER,         /* a | str ( args ) */
    KIMI_N_TEST,           /* a is [not] str ( args ); op = negated */
    KIMI_N_BINOP,          /* a op b */
    KIMI_N_NOT,            /* not a */
    KIMI_N_NEG,            /* - a */
    KIMI_N_AND,
    KIMI_N_OR,
    KIMI_N_COND,           /* body-less: a if b else c */
    KIMI_N_LIST,           /* args */
    KIMI_N_DICT,           /* args: key, value, key, value ... */
} kimi_node_e;

typedef enum {
    KIMI_OP_EQ = 1, KIMI_OP_NE, KIMI_OP_LT, KIMI_OP_LE, KIMI_OP_GT, KIMI_OP_GE,
    KIMI_OP_IN, KIMI_OP_NOTIN, KIMI_OP_ADD, KIMI_OP_SUB, KIMI_OP_MUL,
    KIMI_OP_DIV, KIMI_OP_FLOORDIV, KIMI_OP_MOD, KIMI_OP_CONCAT,
} kimi_op_e;

typedef struct kimi_node  kimi_node_t;

struct kimi_node {
    kimi_node_e    type;
    int            op;
    int            line;
    char          *str;
    size_t         str_len;
    char          *str2;
    json_t        *value;
    kimi_node_t   *a, *b, *c;
    kimi_node_t  **body;       /* statements */
    size_t         n_body;
    kimi_node_t  **orelse;     /* else branch: statements */
    size_t         n_orelse;
    kimi_node_t  **args;       /* expressions */
    size_t         n_args;
};

/* ---- tokens ------------------------------------------------------------------ */

typedef enum {
    KIMI_T_TEXT = 0,       /* template data, whitespace control applied */
    KIMI_T_VAR_BEGIN,
    KIMI_T_VAR_END,
    KIMI_T_BLOCK_BEGIN,
    KIMI_T_BLOCK_END,
    KIMI_T_NAME,
    KIMI_T_STRING,         /* unescaped */
    KIMI_T_INT,
    KIMI_T_FLOAT,
    KIMI_T_OP,             /* text holds the operator */
    KIMI_T_EOF,
} kimi_tok_e;

typedef struct {
    kimi_tok_e   type;
    int          line;
    char        *text;         /* malloc'ed, NUL-terminated */
    size_t       len;
} kimi_ttok_t;

typedef struct {
    kimi_ttok_t  *v;
    size_t        n;
    size_t        cap;
} kimi_ttoks_t;

int  kimi_tmpl_lex(const char *src, size_t len, kimi_ttoks_t *out,
    kimi_err_t *err);
void kimi_tmpl_toks_free(kimi_ttoks_t *t);

/* ---- parser ------------------------------------------------------------------- */

int  kimi_tmpl_parse(const kimi_ttoks_t *toks, kimi_node_t ***body,
    size_t *n_body, kimi_err_t *err);
void kimi_tmpl_nodes_free(kimi_node_t **v, size_t n);

/* ---- output buffer with untrusted spans ------------------------------------- */

typedef struct {
    char         *p;
    size_t        len;
    size_t        cap;
    kimi_span_t  *spans;       /* bytes that came from request data */
    size_t        n_spans;
    size_t        cap_spans;
    int           failed;      /* out of memory */
} kimi_buf_t;

void kimi_buf_add(kimi_buf_t *b, const char *s, size_t n, int trusted);
void kimi_buf_free(kimi_buf_t *b);

/* ---- Python-compatible formatting (template_pyfmt.c) ---------------------- */

/* json.dumps(v, ensure_ascii=False) with ", " and ": ", keys in order. */
void kimi_py_json(kimi_buf_t *b, const json_t *v, int trusted);
/* str(v) as Python prints it: None, True, 1.5, repr() inside containers */
void kimi_py_str(kimi_buf_t *b, const json_t *v, int trusted);
void kimi_py_repr(kimi_buf_t *b, const json_t *v, int trusted);
void kimi_py_float(kimi_buf_t *b, double d, int trusted);

/* ---- values, built-ins (template_value.c, template_builtins.c) ---------- */

typedef enum {
    KIMI_V_UNDEF = 0,
    KIMI_V_JSON,
    KIMI_V_METHOD,         /* j = receiver, name = method */
    KIMI_V_GLOBAL,         /* name = function */
    KIMI_V_LOOP,
} kimi_vkind_e;

typedef struct {
    size_t   index0;
    size_t   length;
} kimi_loop_t;

typedef struct {
    int                 kind;
    int                 trusted;   /* text of the template, not user data */
    json_t             *j;
    const char         *name;
    const kimi_loop_t  *loop;
} kimi_val_t;

typedef struct kimi_scope  kimi_scope_t;

struct kimi_scope {
    kimi_scope_t  *parent;
    char         **names;
    kimi_val_t    *vals;
    size_t         n;
};

typedef struct {
    kimi_buf_t  *out;
    kimi_err_t  *err;
    uint64_t     steps;       /* statements + expressions evaluated */
} kimi_ev_t;

/* Bounds that keep a hostile template or request from running away: no
 * Kimi template comes near them (a 100-message chat is ~10^4 steps). */
#define KIMI_EVAL_MAX_STEPS   20000000
#define KIMI_EVAL_MAX_OUTPUT  (256u << 20)
#define KIMI_EVAL_MAX_STRING  (64u << 20)

extern const char  *kimi_tmpl_dict_methods[];
extern const char  *kimi_tmpl_str_methods[];

int  kimi_tmpl_in(const char *s, const char **list);
void kimi_val_free(kimi_val_t *v);
int  kimi_val_json(kimi_ev_t *ev, kimi_val_t *v, json_t *j, int trusted);
int  kimi_val_copy(kimi_val_t *dst, const kimi_val_t *src);
int  kimi_ev_fail(kimi_ev_t *ev, const kimi_node_t *n, const char *fmt,
    const char *arg);
const char *kimi_tv_type_name(const kimi_val_t *v);
int  kimi_tv_truthy(const kimi_val_t *v);
int  kimi_tv_is_str(const kimi_val_t *v);
int  kimi_tv_is_num(const kimi_val_t *v);
double kimi_tv_num(const json_t *j);
int  kimi_tv_is_intlike(const json_t *j);
json_int_t kimi_tv_int(const json_t *j);
int  kimi_val_eq(const kimi_val_t *a, const kimi_val_t *b);
int  kimi_val_to_str(kimi_ev_t *ev, const kimi_val_t *v, kimi_val_t *out);
size_t kimi_tv_utf8_chars(const char *s, size_t n);
int  kimi_tmpl_binop(kimi_ev_t *ev, const kimi_node_t *n, kimi_val_t *a,
    kimi_val_t *b, kimi_val_t *out);

int  kimi_tmpl_call_method(kimi_ev_t *ev, const kimi_node_t *n,
    const kimi_val_t *self, const char *name, kimi_val_t *args,
    size_t n_args, kimi_val_t *out);
int  kimi_tmpl_call_global(kimi_ev_t *ev, const kimi_node_t *n, const char *name,
    kimi_val_t *args, size_t n_args, kimi_val_t *out);
int  kimi_tmpl_filter(kimi_ev_t *ev, const kimi_node_t *n, kimi_val_t *v,
    kimi_val_t *args, size_t n_args, kimi_val_t *out);
int  kimi_tmpl_test(const char *t, const kimi_val_t *v);

/* ---- evaluator (template_eval.c) -------------------------------------------- */

typedef struct {
    json_t      *messages;
    json_t      *tools;                /* NULL or json null: None */
    int          add_generation_prompt;
    json_t      *kwargs;               /* NULL or vLLM's chat_template_kwargs */
    const char  *bos_token, *eos_token, *unk_token, *pad_token;
} kimi_tmpl_vars_t;

int  kimi_tmpl_eval(kimi_node_t **body, size_t n_body,
    const kimi_tmpl_vars_t *vars, kimi_buf_t *out, kimi_err_t *err);

/* ---- vLLM preprocessing (chat.c) ------------------------------------------- */

/* string_content: every message's content one string (its text parts
 * joined with newlines), vLLM's "string" content format; else a list of
 * parts ("openai"), tool messages a string either way. */
int  kimi_chat_messages(json_t *messages, int string_content, json_t **out,
    kimi_err_t *err);
int  kimi_chat_tools(json_t *tools, json_t **out, kimi_err_t *err);

#endif
