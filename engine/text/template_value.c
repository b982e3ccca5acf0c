/*
 * Template values with Python semantics: construction and ownership,
 * truthiness, equality (1 == 1.0 == True, deep for containers), str(), and
 * the binary operators (+ - * / // % ~, comparisons, in).
 *
 * Owns:   kimi_val_t helpers and kimi_tmpl_binop().
 * Never:  looks up names or runs statements (template_eval.c).
 * Holds:  every kimi_val_t owns one reference to its json_t.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template_internal.h"


int
kimi_tmpl_in(const char *s, const char **list)
{
    for ( ; *list != NULL; list++) {
        if (strcmp(s, *list) == 0) {
            return 1;
        }
    }
    return 0;
}


/* ---- values --------------------------------------------------------------------- */

void
kimi_val_free(kimi_val_t *v)
{
    if (v->j != NULL) {
        json_decref(v->j);
    }
    memset(v, 0, sizeof(*v));
}


/* Takes the reference j. */
int
kimi_val_json(kimi_ev_t *ev, kimi_val_t *v, json_t *j, int trusted)
{
    memset(v, 0, sizeof(*v));
    if (j == NULL) {
        return kimi_err_set(ev->err, KIMI_ENOMEM,
                            "chat template: out of memory");
    }
    v->kind = KIMI_V_JSON;
    v->j = j;
    v->trusted = trusted;
    return KIMI_OK;
}


int
kimi_val_copy(kimi_val_t *dst, const kimi_val_t *src)
{
    *dst = *src;
    if (dst->j != NULL) {
        json_incref(dst->j);
    }
    return KIMI_OK;
}


int
kimi_ev_fail(kimi_ev_t *ev, const kimi_node_t *n, const char *fmt,
    const char *arg)
{
    char  what[256];

    snprintf(what, sizeof(what), fmt, arg);
    return kimi_err_set(ev->err, KIMI_EINVAL, "chat template line %d: %s",
                        n->line, what);
}


const char *
kimi_tv_type_name(const kimi_val_t *v)
{
    if (v->kind == KIMI_V_UNDEF) {
        return "undefined";
    }
    if (v->kind != KIMI_V_JSON) {
        return "function";
    }
    switch (json_typeof(v->j)) {
    case JSON_NULL: return "None";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_STRING: return "str";
    case JSON_ARRAY: return "list";
    default: return "dict";
    }
}


int
kimi_tv_truthy(const kimi_val_t *v)
{
    if (v->kind == KIMI_V_UNDEF) {
        return 0;
    }
    if (v->kind != KIMI_V_JSON) {
        return 1;
    }
    switch (json_typeof(v->j)) {
    case JSON_NULL:
    case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v->j) != 0;
    case JSON_REAL: return json_real_value(v->j) != 0.0;
    case JSON_STRING: return json_string_length(v->j) != 0;
    case JSON_ARRAY: return json_array_size(v->j) != 0;
    default: return json_object_size(v->j) != 0;
    }
}


int
kimi_tv_is_str(const kimi_val_t *v)
{
    return v->kind == KIMI_V_JSON && json_is_string(v->j);
}


/* bool is a number in Python */
int
kimi_tv_is_num(const kimi_val_t *v)
{
    return v->kind == KIMI_V_JSON && (json_is_number(v->j)
                                      || json_is_boolean(v->j));
}


double
kimi_tv_num(const json_t *j)
{
    if (json_is_boolean(j)) {
        return json_is_true(j) ? 1.0 : 0.0;
    }
    return json_number_value(j);
}


int
kimi_tv_is_intlike(const json_t *j)
{
    return json_is_integer(j) || json_is_boolean(j);
}


json_int_t
kimi_tv_int(const json_t *j)
{
    return json_is_boolean(j) ? json_is_true(j) : json_integer_value(j);
}


/* Python ==: numbers by value (1 == 1.0 == True), containers deeply. */
static int
kimi_json_eq(const json_t *a, const json_t *b)
{
    size_t       i;
    const char  *key;
    json_t      *x, *y;

    if ((json_is_number(a) || json_is_boolean(a))
        && (json_is_number(b) || json_is_boolean(b)))
    {
        if (kimi_tv_is_intlike(a) && kimi_tv_is_intlike(b)) {
            return kimi_tv_int(a) == kimi_tv_int(b);
        }
        return kimi_tv_num(a) == kimi_tv_num(b);
    }

    if (json_typeof(a) != json_typeof(b)) {
        return 0;
    }

    switch (json_typeof(a)) {
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b)
               && memcmp(json_string_value(a), json_string_value(b),
                         json_string_length(a)) == 0;
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b)) {
            return 0;
        }
        json_array_foreach(a, i, x) {
            if (!kimi_json_eq(x, json_array_get(b, i))) {
                return 0;
            }
        }
        return 1;
    case JSON_OBJECT:
        if (json_object_size(a) != json_object_size(b)) {
            return 0;
        }
        json_object_foreach((json_t *) a, key, x) {
            y = json_object_get(b, key);
            if (y == NULL || !kimi_json_eq(x, y)) {
                return 0;
            }
        }
        return 1;
    default:
        return 1;                  /* null == null */
    }
}


int
kimi_val_eq(const kimi_val_t *a, const kimi_val_t *b)
{
    if (a->kind == KIMI_V_UNDEF || b->kind == KIMI_V_UNDEF) {
        return a->kind == b->kind;
    }
    if (a->kind != KIMI_V_JSON || b->kind != KIMI_V_JSON) {
        return 0;
    }
    return kimi_json_eq(a->j, b->j);
}


/* Python's str(v) as a new string value. */
int
kimi_val_to_str(kimi_ev_t *ev, const kimi_val_t *v, kimi_val_t *out)
{
    kimi_buf_t  b;
    json_t     *s;

    if (kimi_tv_is_str(v)) {
        return kimi_val_copy(out, v);
    }

    memset(&b, 0, sizeof(b));
    if (v->kind == KIMI_V_JSON) {
        kimi_py_str(&b, v->j, 1);
    }
    if (b.failed) {
        kimi_buf_free(&b);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    s = json_stringn_nocheck(b.p != NULL ? b.p : "", b.len);
    kimi_buf_free(&b);
    return kimi_val_json(ev, out, s, v->trusted);
}


size_t
kimi_tv_utf8_chars(const char *s, size_t n)
{
    size_t  i, k = 0;

    for (i = 0; i < n; i++) {
        k += ((unsigned char) s[i] & 0xc0) != 0x80;
    }
    return k;
}


/* ---- operators --------------------------------------------------------------------- */

int
kimi_tmpl_binop(kimi_ev_t *ev, const kimi_node_t *n, kimi_val_t *a, kimi_val_t *b,
    kimi_val_t *out)
{
    int          op = n->op, r;
    double       x, y;
    json_int_t   i, k;
    json_t      *j, *it;
    size_t       idx;
    kimi_val_t   sa, sb;
    char        *buf;

    memset(out, 0, sizeof(*out));

    switch (op) {

    case KIMI_OP_EQ:
    case KIMI_OP_NE:
        r = kimi_val_eq(a, b);
        return kimi_val_json(ev, out, json_boolean(op == KIMI_OP_EQ ? r : !r),
                             1);

    case KIMI_OP_IN:
    case KIMI_OP_NOTIN:
        r = 0;
        if (b->kind == KIMI_V_JSON && json_is_string(b->j)) {
            if (!kimi_tv_is_str(a)) {
                return kimi_ev_fail(ev, n, "'in <string>' needs a string on the "
                                 "left, not %s", kimi_tv_type_name(a));
            }
            r = memmem(json_string_value(b->j), json_string_length(b->j),
                       json_string_value(a->j), json_string_length(a->j))
                != NULL || json_string_length(a->j) == 0;
        } else if (b->kind == KIMI_V_JSON && json_is_array(b->j)) {
            json_array_foreach(b->j, idx, it) {
                kimi_val_t  t = { KIMI_V_JSON, 1, it, NULL, NULL };

                if (kimi_val_eq(a, &t)) {
                    r = 1;
                    break;
                }
            }
        } else if (b->kind == KIMI_V_JSON && json_is_object(b->j)) {
            r = kimi_tv_is_str(a)
                && json_object_get(b->j, json_string_value(a->j)) != NULL;
        } else if (b->kind != KIMI_V_UNDEF) {
            return kimi_ev_fail(ev, n, "'in' on a %s", kimi_tv_type_name(b));
        }
        return kimi_val_json(ev, out, json_boolean(op == KIMI_OP_IN ? r : !r),
                             1);

    case KIMI_OP_CONCAT:
        if (kimi_val_to_str(ev, a->kind == KIMI_V_UNDEF ? b : a, &sa)
            != KIMI_OK)
        {
            return ev->err->code;
        }
        if (a->kind == KIMI_V_UNDEF || b->kind == KIMI_V_UNDEF) {
            *out = sa;
            if (a->kind == KIMI_V_UNDEF && b->kind == KIMI_V_UNDEF) {
                kimi_val_free(out);
                return kimi_val_json(ev, out, json_string(""), 1);
            }
            return KIMI_OK;
        }
        if (kimi_val_to_str(ev, b, &sb) != KIMI_OK) {
            kimi_val_free(&sa);
            return ev->err->code;
        }
        goto concat;

    default:
        break;
    }

    if (a->kind != KIMI_V_JSON || b->kind != KIMI_V_JSON) {
        return kimi_ev_fail(ev, n, "arithmetic or comparison with an undefined "
                         "value%s", "");
    }

    if (op == KIMI_OP_ADD && kimi_tv_is_str(a) && kimi_tv_is_str(b)) {
        kimi_val_copy(&sa, a);
        kimi_val_copy(&sb, b);
        goto concat;
    }

    if (op == KIMI_OP_ADD && json_is_array(a->j) && json_is_array(b->j)) {
        j = json_copy(a->j);
        if (j == NULL || json_array_extend(j, b->j) != 0) {
            json_decref(j);
            return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                                "memory");
        }
        return kimi_val_json(ev, out, j, a->trusted && b->trusted);
    }

    if (kimi_tv_is_str(a) && kimi_tv_is_str(b) && op >= KIMI_OP_LT
        && op <= KIMI_OP_GE)
    {
        /* UTF-8 byte order is code point order */
        r = strcmp(json_string_value(a->j), json_string_value(b->j));
        r = op == KIMI_OP_LT ? r < 0 : op == KIMI_OP_LE ? r <= 0
            : op == KIMI_OP_GT ? r > 0 : r >= 0;
        return kimi_val_json(ev, out, json_boolean(r), 1);
    }

    if (!kimi_tv_is_num(a) || !kimi_tv_is_num(b)) {
        return kimi_ev_fail(ev, n, "unsupported operand types (%s)",
                         kimi_tv_type_name(a));
    }

    x = kimi_tv_num(a->j);
    y = kimi_tv_num(b->j);

    switch (op) {
    case KIMI_OP_LT: return kimi_val_json(ev, out, json_boolean(x < y), 1);
    case KIMI_OP_LE: return kimi_val_json(ev, out, json_boolean(x <= y), 1);
    case KIMI_OP_GT: return kimi_val_json(ev, out, json_boolean(x > y), 1);
    case KIMI_OP_GE: return kimi_val_json(ev, out, json_boolean(x >= y), 1);
    default: break;
    }

    if (kimi_tv_is_intlike(a->j) && kimi_tv_is_intlike(b->j) && op != KIMI_OP_DIV) {
        i = kimi_tv_int(a->j);
        k = kimi_tv_int(b->j);
        if ((op == KIMI_OP_FLOORDIV || op == KIMI_OP_MOD) && k == 0) {
            return kimi_ev_fail(ev, n, "division by zero%s", "");
        }
        switch (op) {
        case KIMI_OP_ADD: i += k; break;
        case KIMI_OP_SUB: i -= k; break;
        case KIMI_OP_MUL: i *= k; break;
        case KIMI_OP_FLOORDIV:
            i = (i / k) - ((i % k != 0) && ((i < 0) != (k < 0)));
            break;
        default:                                     /* MOD, Python sign */
            i = i % k;
            if (i != 0 && ((i < 0) != (k < 0))) {
                i += k;
            }
        }
        return kimi_val_json(ev, out, json_integer(i), 1);
    }

    if ((op == KIMI_OP_DIV || op == KIMI_OP_FLOORDIV || op == KIMI_OP_MOD)
        && y == 0.0)
    {
        return kimi_ev_fail(ev, n, "division by zero%s", "");
    }

    switch (op) {
    case KIMI_OP_ADD: x += y; break;
    case KIMI_OP_SUB: x -= y; break;
    case KIMI_OP_MUL: x *= y; break;
    case KIMI_OP_DIV: x /= y; break;
    default:
        return kimi_ev_fail(ev, n, "unsupported float operator%s", "");
    }
    return kimi_val_json(ev, out, json_real(x), 1);

concat:

    idx = json_string_length(sa.j);
    if (idx + json_string_length(sb.j) > KIMI_EVAL_MAX_STRING) {
        kimi_val_free(&sa);
        kimi_val_free(&sb);
        return kimi_ev_fail(ev, n, "string too long%s", "");
    }
    buf = malloc(idx + json_string_length(sb.j) + 1);
    if (buf == NULL) {
        kimi_val_free(&sa);
        kimi_val_free(&sb);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    memcpy(buf, json_string_value(sa.j), idx);
    memcpy(buf + idx, json_string_value(sb.j), json_string_length(sb.j));
    j = json_stringn_nocheck(buf, idx + json_string_length(sb.j));
    free(buf);
    r = sa.trusted && sb.trusted;
    kimi_val_free(&sa);
    kimi_val_free(&sb);
    return kimi_val_json(ev, out, j, r);
}
