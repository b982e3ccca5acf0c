/*
 * Chat-template evaluator: renders a parsed template with Python/jinja2
 * semantics for the supported subset.
 *
 * Owns:   scopes (a for body is a new scope per iteration, as in jinja2,
 *         so "set" inside a loop does not leak out), attribute and item
 *         access (attribute first, then item, as jinja2's getattr), the
 *         loop object, statements, and which output bytes came from
 *         request data (spans, for kimi_tokenize_ex()).  Values and
 *         operators: template_value.c; built-ins: template_builtins.c.
 * Never:  parses, and never aborts on input: a template error, an undefined
 *         attribute access or raise_exception() is KIMI_EINVAL with a
 *         message.
 * Holds:  every kimi_val_t owns one reference to its json_t.
 */

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template_internal.h"

static int kimi_eval(kimi_ev_t *ev, kimi_scope_t *sc, const kimi_node_t *n,
    kimi_val_t *out);
static int kimi_exec(kimi_ev_t *ev, kimi_scope_t *sc, kimi_node_t **body,
    size_t n_body);


/* ---- scopes -------------------------------------------------------------------- */

static const kimi_val_t *
kimi_scope_get(const kimi_scope_t *sc, const char *name)
{
    size_t  i;

    for ( ; sc != NULL; sc = sc->parent) {
        for (i = sc->n; i-- > 0; ) {
            if (strcmp(sc->names[i], name) == 0) {
                return &sc->vals[i];
            }
        }
    }
    return NULL;
}


/* Takes v. */
static int
kimi_scope_set(kimi_ev_t *ev, kimi_scope_t *sc, const char *name,
    kimi_val_t *v)
{
    size_t        i;
    char        **names;
    kimi_val_t   *vals;

    for (i = 0; i < sc->n; i++) {
        if (strcmp(sc->names[i], name) == 0) {
            kimi_val_free(&sc->vals[i]);
            sc->vals[i] = *v;
            return KIMI_OK;
        }
    }

    names = realloc(sc->names, (sc->n + 1) * sizeof(*names));
    if (names == NULL) {
        kimi_val_free(v);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    sc->names = names;

    vals = realloc(sc->vals, (sc->n + 1) * sizeof(*vals));
    if (vals == NULL) {
        kimi_val_free(v);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    sc->vals = vals;

    sc->names[sc->n] = strdup(name);
    if (sc->names[sc->n] == NULL) {
        kimi_val_free(v);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    sc->vals[sc->n] = *v;
    sc->n++;
    return KIMI_OK;
}


static void
kimi_scope_clear(kimi_scope_t *sc)
{
    size_t  i;

    for (i = 0; i < sc->n; i++) {
        free(sc->names[i]);
        kimi_val_free(&sc->vals[i]);
    }
    free(sc->names);
    free(sc->vals);
    sc->names = NULL;
    sc->vals = NULL;
    sc->n = 0;
}


/* ---- attribute and item access -------------------------------------------- */

static int
kimi_getattr(kimi_ev_t *ev, const kimi_node_t *n, const kimi_val_t *obj,
    const char *name, kimi_val_t *out)
{
    json_t  *x;

    memset(out, 0, sizeof(*out));

    if (obj->kind == KIMI_V_UNDEF) {
        return kimi_ev_fail(ev, n, "'%s' of an undefined value", name);
    }

    if (obj->kind == KIMI_V_LOOP) {
        const kimi_loop_t  *l = obj->loop;
        json_t             *v = NULL;

        if (strcmp(name, "index") == 0) {
            v = json_integer((json_int_t) l->index0 + 1);
        } else if (strcmp(name, "index0") == 0) {
            v = json_integer((json_int_t) l->index0);
        } else if (strcmp(name, "first") == 0) {
            v = json_boolean(l->index0 == 0);
        } else if (strcmp(name, "last") == 0) {
            v = json_boolean(l->index0 + 1 == l->length);
        } else if (strcmp(name, "length") == 0) {
            v = json_integer((json_int_t) l->length);
        } else if (strcmp(name, "revindex") == 0) {
            v = json_integer((json_int_t) (l->length - l->index0));
        } else if (strcmp(name, "revindex0") == 0) {
            v = json_integer((json_int_t) (l->length - l->index0 - 1));
        } else {
            return kimi_ev_fail(ev, n, "unsupported loop attribute '%s'", name);
        }
        return kimi_val_json(ev, out, v, 1);
    }

    if (obj->kind != KIMI_V_JSON) {
        return KIMI_OK;                                    /* undefined */
    }

    /* jinja2 tries the Python attribute first, then the item */
    if ((json_is_object(obj->j) && kimi_tmpl_in(name, kimi_tmpl_dict_methods))
        || (json_is_string(obj->j) && kimi_tmpl_in(name, kimi_tmpl_str_methods)))
    {
        out->kind = KIMI_V_METHOD;
        out->name = name;
        out->j = json_incref(obj->j);
        out->trusted = obj->trusted;
        return KIMI_OK;
    }

    if (json_is_object(obj->j)) {
        x = json_object_get(obj->j, name);
        if (x != NULL) {
            return kimi_val_json(ev, out, json_incref(x), obj->trusted);
        }
    }

    return KIMI_OK;
}


static int
kimi_getitem(kimi_ev_t *ev, const kimi_node_t *n, const kimi_val_t *obj,
    const kimi_val_t *key, kimi_val_t *out)
{
    json_t      *x;
    json_int_t   i, len;
    const char  *s;
    size_t       k, pos;

    memset(out, 0, sizeof(*out));

    if (obj->kind == KIMI_V_UNDEF) {
        return kimi_ev_fail(ev, n, "indexing an undefined value%s", "");
    }

    if (obj->kind != KIMI_V_JSON || key->kind != KIMI_V_JSON) {
        return KIMI_OK;
    }

    if (json_is_object(obj->j) && json_is_string(key->j)) {
        x = json_object_get(obj->j, json_string_value(key->j));
        if (x != NULL) {
            return kimi_val_json(ev, out, json_incref(x), obj->trusted);
        }
        return kimi_getattr(ev, n, obj, json_string_value(key->j), out);
    }

    if (kimi_tv_is_intlike(key->j) && (json_is_array(obj->j)
                                    || json_is_string(obj->j)))
    {
        i = kimi_tv_int(key->j);

        if (json_is_array(obj->j)) {
            len = (json_int_t) json_array_size(obj->j);
            if (i < 0) {
                i += len;
            }
            if (i < 0 || i >= len) {
                return KIMI_OK;
            }
            return kimi_val_json(ev, out,
                                 json_incref(json_array_get(obj->j, (size_t) i)),
                                 obj->trusted);
        }

        /* a string indexes code points */
        s = json_string_value(obj->j);
        len = (json_int_t) kimi_tv_utf8_chars(s, json_string_length(obj->j));
        if (i < 0) {
            i += len;
        }
        if (i < 0 || i >= len) {
            return KIMI_OK;
        }
        for (pos = 0, k = 0; ; pos++) {
            if (((unsigned char) s[pos] & 0xc0) != 0x80 && k++ == (size_t) i) {
                break;
            }
        }
        for (k = pos + 1; ((unsigned char) s[k] & 0xc0) == 0x80; k++) { }
        return kimi_val_json(ev, out, json_stringn_nocheck(s + pos, k - pos),
                             obj->trusted);
    }

    if (json_is_string(key->j)) {
        return kimi_getattr(ev, n, obj, json_string_value(key->j), out);
    }

    return KIMI_OK;
}


/* ---- expressions -------------------------------------------------------------------- */

static int
kimi_eval_args(kimi_ev_t *ev, kimi_scope_t *sc, const kimi_node_t *n,
    kimi_val_t **args)
{
    size_t  i;
    int     rc;

    *args = calloc(n->n_args + 1, sizeof(kimi_val_t));
    if (*args == NULL) {
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }

    for (i = 0; i < n->n_args; i++) {
        rc = kimi_eval(ev, sc, n->args[i], &(*args)[i]);
        if (rc != KIMI_OK) {
            return rc;
        }
    }
    return KIMI_OK;
}


static void
kimi_free_args(kimi_val_t *args, size_t n)
{
    size_t  i;

    if (args == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        kimi_val_free(&args[i]);
    }
    free(args);
}


static int
kimi_eval(kimi_ev_t *ev, kimi_scope_t *sc, const kimi_node_t *n,
    kimi_val_t *out)
{
    int                rc, all_trusted;
    size_t             i;
    json_t            *j;
    kimi_val_t         a, b, *args = NULL;
    const kimi_val_t  *found;

    memset(out, 0, sizeof(*out));
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));

    if (++ev->steps > KIMI_EVAL_MAX_STEPS) {
        return kimi_ev_fail(ev, n, "rendering takes too many steps%s", "");
    }

    switch (n->type) {

    case KIMI_N_CONST:
        return kimi_val_json(ev, out, json_incref(n->value), 1);

    case KIMI_N_NAME:
        found = kimi_scope_get(sc, n->str);
        if (found != NULL) {
            return kimi_val_copy(out, found);
        }
        if (strcmp(n->str, "raise_exception") == 0
            || strcmp(n->str, "strftime_now") == 0
            || strcmp(n->str, "range") == 0)
        {
            out->kind = KIMI_V_GLOBAL;
            out->name = n->str;
            out->trusted = 1;
        }
        return KIMI_OK;                          /* else undefined */

    case KIMI_N_GETATTR:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_getattr(ev, n, &a, n->str, out);
            if (rc == KIMI_OK && out->kind == KIMI_V_METHOD) {
                out->name = n->str;        /* outlives a's evaluation */
            }
        }
        kimi_val_free(&a);
        return rc;

    case KIMI_N_GETITEM:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_eval(ev, sc, n->b, &b);
        }
        if (rc == KIMI_OK) {
            rc = kimi_getitem(ev, n, &a, &b, out);
            if (rc == KIMI_OK && out->kind == KIMI_V_METHOD) {
                /* the name lives in b's string: keep only known names */
                out->name = kimi_tmpl_in(out->name, kimi_tmpl_dict_methods)
                            ? (strcmp(out->name, "get") == 0 ? "get"
                               : strcmp(out->name, "items") == 0 ? "items"
                               : strcmp(out->name, "keys") == 0 ? "keys"
                               : "values")
                            : NULL;
                if (out->name == NULL) {
                    kimi_val_free(out);
                }
            }
        }
        kimi_val_free(&a);
        kimi_val_free(&b);
        return rc;

    case KIMI_N_CALL:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_eval_args(ev, sc, n, &args);
        }
        if (rc == KIMI_OK) {
            if (a.kind == KIMI_V_METHOD) {
                kimi_val_t  self = { KIMI_V_JSON, a.trusted, a.j, NULL, NULL };

                rc = kimi_tmpl_call_method(ev, n, &self, a.name, args, n->n_args,
                                      out);
            } else if (a.kind == KIMI_V_GLOBAL) {
                rc = kimi_tmpl_call_global(ev, n, a.name, args, n->n_args, out);
            } else {
                rc = kimi_ev_fail(ev, n, "calling a %s", kimi_tv_type_name(&a));
            }
        }
        kimi_free_args(args, n->n_args);
        kimi_val_free(&a);
        return rc;

    case KIMI_N_FILTER:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_eval_args(ev, sc, n, &args);
        }
        if (rc == KIMI_OK) {
            rc = kimi_tmpl_filter(ev, n, &a, args, n->n_args, out);
        }
        kimi_free_args(args, n->n_args);
        kimi_val_free(&a);
        return rc;

    case KIMI_N_TEST:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            i = (size_t) kimi_tmpl_test(n->str, &a);
            rc = kimi_val_json(ev, out, json_boolean(n->op ? !i : i), 1);
        }
        kimi_val_free(&a);
        return rc;

    case KIMI_N_BINOP:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_eval(ev, sc, n->b, &b);
        }
        if (rc == KIMI_OK) {
            rc = kimi_tmpl_binop(ev, n, &a, &b, out);
        }
        kimi_val_free(&a);
        kimi_val_free(&b);
        return rc;

    case KIMI_N_NOT:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_val_json(ev, out, json_boolean(!kimi_tv_truthy(&a)), 1);
        }
        kimi_val_free(&a);
        return rc;

    case KIMI_N_NEG:
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            if (!kimi_tv_is_num(&a)) {
                rc = kimi_ev_fail(ev, n, "negating a %s", kimi_tv_type_name(&a));
            } else if (kimi_tv_is_intlike(a.j)) {
                rc = kimi_val_json(ev, out, json_integer(-kimi_tv_int(a.j)), 1);
            } else {
                rc = kimi_val_json(ev, out, json_real(-kimi_tv_num(a.j)), 1);
            }
        }
        kimi_val_free(&a);
        return rc;

    case KIMI_N_AND:
    case KIMI_N_OR:
        /* Python returns the deciding operand itself */
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc != KIMI_OK) {
            kimi_val_free(&a);
            return rc;
        }
        if ((n->type == KIMI_N_OR) == (kimi_tv_truthy(&a) != 0)) {
            *out = a;
            return KIMI_OK;
        }
        kimi_val_free(&a);
        return kimi_eval(ev, sc, n->b, out);

    case KIMI_N_COND:
        rc = kimi_eval(ev, sc, n->b, &a);
        if (rc != KIMI_OK) {
            kimi_val_free(&a);
            return rc;
        }
        i = (size_t) kimi_tv_truthy(&a);
        kimi_val_free(&a);
        if (i) {
            return kimi_eval(ev, sc, n->a, out);
        }
        if (n->c != NULL) {
            return kimi_eval(ev, sc, n->c, out);
        }
        return KIMI_OK;

    case KIMI_N_LIST:
    case KIMI_N_DICT:
        rc = kimi_eval_args(ev, sc, n, &args);
        if (rc != KIMI_OK) {
            kimi_free_args(args, n->n_args);
            return rc;
        }
        all_trusted = 1;
        j = n->type == KIMI_N_LIST ? json_array() : json_object();
        for (i = 0; i < n->n_args && rc == KIMI_OK; i++) {
            if (args[i].kind != KIMI_V_JSON) {
                rc = kimi_ev_fail(ev, n, "a container holding a %s",
                               kimi_tv_type_name(&args[i]));
                break;
            }
            all_trusted &= args[i].trusted;
            if (n->type == KIMI_N_LIST) {
                json_array_append(j, args[i].j);
            } else if (i % 2 == 1) {
                if (!json_is_string(args[i - 1].j)) {
                    rc = kimi_ev_fail(ev, n, "dict keys must be strings%s", "");
                    break;
                }
                json_object_set(j, json_string_value(args[i - 1].j),
                                args[i].j);
            }
        }
        kimi_free_args(args, n->n_args);
        if (rc != KIMI_OK) {
            json_decref(j);
            return rc;
        }
        return kimi_val_json(ev, out, j, all_trusted);

    default:
        return kimi_ev_fail(ev, n, "not an expression%s", "");
    }
}


/* ---- statements ------------------------------------------------------------------------ */

static int
kimi_emit(kimi_ev_t *ev, const kimi_node_t *n, const kimi_val_t *v)
{
    if (v->kind == KIMI_V_UNDEF) {
        return KIMI_OK;                  /* jinja2 prints Undefined as "" */
    }
    if (v->kind != KIMI_V_JSON) {
        return kimi_ev_fail(ev, n, "printing a %s", kimi_tv_type_name(v));
    }
    kimi_py_str(ev->out, v->j, v->trusted);
    return KIMI_OK;
}


/* {{ a + b }} and {{ a ~ b }} print their sides separately, so bytes from
 * request data keep their span even next to template text. */
static int
kimi_output(kimi_ev_t *ev, kimi_scope_t *sc, const kimi_node_t *n)
{
    int         rc;
    kimi_val_t  a, b, v;

    if (n->type == KIMI_N_BINOP
        && (n->op == KIMI_OP_ADD || n->op == KIMI_OP_CONCAT))
    {
        memset(&b, 0, sizeof(b));
        rc = kimi_eval(ev, sc, n->a, &a);
        if (rc == KIMI_OK) {
            rc = kimi_eval(ev, sc, n->b, &b);
        }
        if (rc == KIMI_OK) {
            if (n->op == KIMI_OP_CONCAT
                || (kimi_tv_is_str(&a) && kimi_tv_is_str(&b)))
            {
                rc = kimi_emit(ev, n, &a);
                if (rc == KIMI_OK) {
                    rc = kimi_emit(ev, n, &b);
                }
            } else {
                rc = kimi_tmpl_binop(ev, n, &a, &b, &v);
                if (rc == KIMI_OK) {
                    rc = kimi_emit(ev, n, &v);
                }
                kimi_val_free(&v);
            }
        }
        kimi_val_free(&a);
        kimi_val_free(&b);
        return rc;
    }

    rc = kimi_eval(ev, sc, n, &v);
    if (rc == KIMI_OK) {
        rc = kimi_emit(ev, n, &v);
    }
    kimi_val_free(&v);
    return rc;
}


static int
kimi_exec_for(kimi_ev_t *ev, kimi_scope_t *sc, const kimi_node_t *n)
{
    int           rc;
    size_t        i, k, n_items;
    json_t       *items, *x, *src;
    kimi_val_t    it, item, cond;
    kimi_loop_t   loop;
    kimi_scope_t  inner;
    const char   *key;

    rc = kimi_eval(ev, sc, n->a, &it);
    if (rc != KIMI_OK) {
        kimi_val_free(&it);
        return rc;
    }

    /* the sequence iterated, as a list */
    items = json_array();
    if (items == NULL) {
        kimi_val_free(&it);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }

    if (it.kind == KIMI_V_JSON) {
        src = it.j;
        if (json_is_array(src)) {
            json_array_extend(items, src);
        } else if (json_is_object(src)) {
            json_object_foreach(src, key, x) {
                json_array_append_new(items, json_string_nocheck(key));
            }
        } else if (json_is_string(src)) {
            const char  *s = json_string_value(src);
            size_t       len = json_string_length(src);

            for (i = 0; i < len; i = k) {
                for (k = i + 1; k < len && ((unsigned char) s[k] & 0xc0) == 0x80;
                     k++) { }
                json_array_append_new(items, json_stringn_nocheck(s + i, k - i));
            }
        } else {
            json_decref(items);
            rc = kimi_ev_fail(ev, n, "'%s' object is not iterable",
                           kimi_tv_type_name(&it));
            kimi_val_free(&it);
            return rc;
        }
    } else if (it.kind != KIMI_V_UNDEF) {
        json_decref(items);
        kimi_val_free(&it);
        return kimi_ev_fail(ev, n, "iterating a function%s", "");
    }

    memset(&inner, 0, sizeof(inner));
    inner.parent = sc;

    /* "for x in xs if cond": filter first; loop.length counts survivors */
    if (n->b != NULL) {
        json_t  *kept = json_array();

        json_array_foreach(items, i, x) {
            item.kind = KIMI_V_JSON;
            item.j = json_incref(x);
            item.trusted = it.trusted;
            rc = kimi_scope_set(ev, &inner, n->str, &item);
            if (rc == KIMI_OK) {
                rc = kimi_eval(ev, &inner, n->b, &cond);
            }
            if (rc != KIMI_OK) {
                kimi_val_free(&cond);
                kimi_scope_clear(&inner);
                json_decref(kept);
                json_decref(items);
                kimi_val_free(&it);
                return rc;
            }
            if (kimi_tv_truthy(&cond)) {
                json_array_append(kept, x);
            }
            kimi_val_free(&cond);
            kimi_scope_clear(&inner);
        }
        json_decref(items);
        items = kept;
    }

    n_items = json_array_size(items);
    loop.length = n_items;
    rc = KIMI_OK;

    for (i = 0; i < n_items && rc == KIMI_OK; i++) {
        x = json_array_get(items, i);
        loop.index0 = i;

        if (n->str2 != NULL) {
            if (!json_is_array(x) || json_array_size(x) != 2) {
                rc = kimi_ev_fail(ev, n, "cannot unpack into two loop "
                               "variables%s", "");
                break;
            }
            kimi_val_json(ev, &item, json_incref(json_array_get(x, 0)),
                          it.trusted);
            rc = kimi_scope_set(ev, &inner, n->str, &item);
            if (rc == KIMI_OK) {
                kimi_val_json(ev, &item, json_incref(json_array_get(x, 1)),
                              it.trusted);
                rc = kimi_scope_set(ev, &inner, n->str2, &item);
            }
        } else {
            kimi_val_json(ev, &item, json_incref(x), it.trusted);
            rc = kimi_scope_set(ev, &inner, n->str, &item);
        }

        if (rc == KIMI_OK) {
            memset(&item, 0, sizeof(item));
            item.kind = KIMI_V_LOOP;
            item.loop = &loop;
            item.trusted = 1;
            rc = kimi_scope_set(ev, &inner, "loop", &item);
        }

        if (rc == KIMI_OK) {
            rc = kimi_exec(ev, &inner, n->body, n->n_body);
        }

        /* a fresh scope per iteration: "set" does not carry over */
        kimi_scope_clear(&inner);
    }

    if (rc == KIMI_OK && n_items == 0 && n->n_orelse > 0) {
        rc = kimi_exec(ev, sc, n->orelse, n->n_orelse);
    }

    kimi_scope_clear(&inner);
    json_decref(items);
    kimi_val_free(&it);
    return rc;
}


static int
kimi_exec(kimi_ev_t *ev, kimi_scope_t *sc, kimi_node_t **body,
    size_t n_body)
{
    int                 rc;
    size_t              i;
    kimi_val_t          v;
    const kimi_node_t  *n;

    for (i = 0; i < n_body; i++) {
        n = body[i];
        rc = KIMI_OK;

        if (++ev->steps > KIMI_EVAL_MAX_STEPS
            || ev->out->len > KIMI_EVAL_MAX_OUTPUT)
        {
            return kimi_ev_fail(ev, n, "rendering takes too many steps or "
                             "too much output%s", "");
        }

        switch (n->type) {

        case KIMI_N_TEXT:
            kimi_buf_add(ev->out, n->str, n->str_len, 1);
            break;

        case KIMI_N_OUTPUT:
            rc = kimi_output(ev, sc, n->a);
            break;

        case KIMI_N_IF:
            rc = kimi_eval(ev, sc, n->a, &v);
            if (rc == KIMI_OK) {
                if (kimi_tv_truthy(&v)) {
                    rc = kimi_exec(ev, sc, n->body, n->n_body);
                } else {
                    rc = kimi_exec(ev, sc, n->orelse, n->n_orelse);
                }
            }
            kimi_val_free(&v);
            break;

        case KIMI_N_FOR:
            rc = kimi_exec_for(ev, sc, n);
            break;

        case KIMI_N_SET:
            rc = kimi_eval(ev, sc, n->a, &v);
            if (rc == KIMI_OK) {
                rc = kimi_scope_set(ev, sc, n->str, &v);
            } else {
                kimi_val_free(&v);
            }
            break;

        default:
            rc = kimi_ev_fail(ev, n, "not a statement%s", "");
        }

        if (rc != KIMI_OK) {
            return rc;
        }

        if (ev->out->failed) {
            return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                                "memory");
        }
    }

    return KIMI_OK;
}


int
kimi_tmpl_eval(kimi_node_t **body, size_t n_body,
    const kimi_tmpl_vars_t *vars, kimi_buf_t *out, kimi_err_t *err)
{
    int           rc;
    kimi_ev_t     ev;
    kimi_val_t    v;
    kimi_scope_t  root;

    ev.out = out;
    ev.err = err;
    ev.steps = 0;
    memset(&root, 0, sizeof(root));

    /* vLLM's chat_template_kwargs first (request data, untrusted): names
     * the template reads on top of these; the ones below are never theirs */
    rc = KIMI_OK;
    if (json_is_object(vars->kwargs)) {
        const char  *key;
        json_t      *kv;

        json_object_foreach(vars->kwargs, key, kv) {
            if (strcmp(key, "messages") == 0 || strcmp(key, "tools") == 0
                || strcmp(key, "add_generation_prompt") == 0
                || strcmp(key, "documents") == 0
                || strcmp(key, "continue_final_message") == 0
                || strstr(key, "_token") != NULL)
            {
                continue;
            }
            rc = kimi_val_json(&ev, &v, json_incref(kv), 0);
            if (rc == KIMI_OK) {
                rc = kimi_scope_set(&ev, &root, key, &v);
            }
            if (rc != KIMI_OK) {
                break;
            }
        }
    }

    /* request data is untrusted; special-token names are the model's */
    if (rc == KIMI_OK) {
        rc = kimi_val_json(&ev, &v, json_incref(vars->messages), 0);
    }
    if (rc == KIMI_OK) {
        rc = kimi_scope_set(&ev, &root, "messages", &v);
    }
    if (rc == KIMI_OK) {
        rc = kimi_val_json(&ev, &v, vars->tools != NULL
                           ? json_incref(vars->tools) : json_null(), 0);
    }
    if (rc == KIMI_OK) {
        rc = kimi_scope_set(&ev, &root, "tools", &v);
    }
    if (rc == KIMI_OK) {
        rc = kimi_val_json(&ev, &v, json_boolean(vars->add_generation_prompt),
                           1);
    }
    if (rc == KIMI_OK) {
        rc = kimi_scope_set(&ev, &root, "add_generation_prompt", &v);
    }

#define KIMI_SET_TOKEN(name, field)                                           \
    if (rc == KIMI_OK && vars->field != NULL) {                               \
        rc = kimi_val_json(&ev, &v, json_string(vars->field), 1);             \
        if (rc == KIMI_OK) {                                                  \
            rc = kimi_scope_set(&ev, &root, name, &v);                        \
        }                                                                     \
    }

    KIMI_SET_TOKEN("bos_token", bos_token)
    KIMI_SET_TOKEN("eos_token", eos_token)
    KIMI_SET_TOKEN("unk_token", unk_token)
    KIMI_SET_TOKEN("pad_token", pad_token)

#undef KIMI_SET_TOKEN

    if (rc == KIMI_OK) {
        rc = kimi_exec(&ev, &root, body, n_body);
    }

    kimi_scope_clear(&root);
    return rc;
}
