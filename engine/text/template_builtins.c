/*
 * Template built-ins: the methods, global functions, filters and tests of
 * the supported subset (the names template_parse.c accepts).
 *
 * Owns:   dict.get/items/keys/values, str.strip/lstrip/rstrip/lower/upper/
 *         startswith/endswith/split, raise_exception, strftime_now, range,
 *         the filters and the tests.
 * Never:  evaluates expressions; arguments arrive evaluated.
 * Note:   lower/upper/strip work on ASCII (Python's are Unicode-aware);
 *         none of the Kimi templates calls them.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template_internal.h"


const char  *kimi_tmpl_dict_methods[] = {
    "get", "items", "keys", "values", NULL
};

const char  *kimi_tmpl_str_methods[] = {
    "strip", "lstrip", "rstrip", "lower", "upper", "startswith", "endswith",
    "split", NULL
};


/* ---- calls ------------------------------------------------------------------------- */

static int
kimi_str_is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}


static int
kimi_strip(kimi_ev_t *ev, const kimi_val_t *s, const kimi_val_t *chars,
    int left, int right, kimi_val_t *out)
{
    const char  *p = json_string_value(s->j), *set = NULL;
    size_t       a = 0, b = json_string_length(s->j);

    if (chars != NULL && kimi_tv_is_str(chars)) {
        set = json_string_value(chars->j);
    }

#define KIMI_STRIPPED(c)                                                      \
    (set != NULL ? (strchr(set, (c)) != NULL && (c) != '\0')                  \
                 : kimi_str_is_space((unsigned char) (c)))

    while (left && a < b && KIMI_STRIPPED(p[a])) {
        a++;
    }
    while (right && b > a && KIMI_STRIPPED(p[b - 1])) {
        b--;
    }

#undef KIMI_STRIPPED

    return kimi_val_json(ev, out, json_stringn_nocheck(p + a, b - a),
                         s->trusted);
}


static int
kimi_case(kimi_ev_t *ev, const kimi_val_t *s, int upper, kimi_val_t *out)
{
    char    *buf;
    size_t   i, n = json_string_length(s->j);
    json_t  *j;

    buf = malloc(n + 1);
    if (buf == NULL) {
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    memcpy(buf, json_string_value(s->j), n);
    /* ASCII only: the Kimi templates never change case */
    for (i = 0; i < n; i++) {
        if (upper && buf[i] >= 'a' && buf[i] <= 'z') {
            buf[i] -= 32;
        } else if (!upper && buf[i] >= 'A' && buf[i] <= 'Z') {
            buf[i] += 32;
        }
    }
    j = json_stringn_nocheck(buf, n);
    free(buf);
    return kimi_val_json(ev, out, j, s->trusted);
}


static int
kimi_items(kimi_ev_t *ev, const kimi_val_t *obj, int what, kimi_val_t *out)
{
    json_t      *list, *x, *pair;
    const char  *key;

    list = json_array();
    if (list == NULL) {
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }

    json_object_foreach(obj->j, key, x) {
        if (what == 'k') {
            json_array_append_new(list, json_string_nocheck(key));
        } else if (what == 'v') {
            json_array_append(list, x);
        } else {
            pair = json_array();
            json_array_append_new(pair, json_string_nocheck(key));
            json_array_append(pair, x);
            json_array_append_new(list, pair);
        }
    }

    return kimi_val_json(ev, out, list, obj->trusted);
}


int
kimi_tmpl_call_method(kimi_ev_t *ev, const kimi_node_t *n, const kimi_val_t *self,
    const char *name, kimi_val_t *args, size_t n_args, kimi_val_t *out)
{
    const char  *s, *sep, *p, *q;
    size_t       len, sep_len;
    json_t      *list, *x;

    memset(out, 0, sizeof(*out));

    if (json_is_object(self->j)) {
        if (strcmp(name, "get") == 0) {
            if (n_args < 1 || n_args > 2) {
                return kimi_ev_fail(ev, n, "get() takes 1 or 2 arguments%s", "");
            }
            x = kimi_tv_is_str(&args[0])
                ? json_object_get(self->j, json_string_value(args[0].j))
                : NULL;
            if (x != NULL) {
                return kimi_val_json(ev, out, json_incref(x), self->trusted);
            }
            if (n_args == 2) {
                return kimi_val_copy(out, &args[1]);
            }
            return kimi_val_json(ev, out, json_null(), 1);
        }
        return kimi_items(ev, self, name[0] == 'k' ? 'k' : name[0] == 'v'
                                    ? 'v' : 'i', out);
    }

    /* string methods */
    s = json_string_value(self->j);
    len = json_string_length(self->j);

    if (strcmp(name, "strip") == 0 || strcmp(name, "lstrip") == 0
        || strcmp(name, "rstrip") == 0)
    {
        return kimi_strip(ev, self, n_args > 0 ? &args[0] : NULL,
                          name[0] != 'r', name[0] != 'l', out);
    }

    if (strcmp(name, "lower") == 0 || strcmp(name, "upper") == 0) {
        return kimi_case(ev, self, name[0] == 'u', out);
    }

    if (strcmp(name, "startswith") == 0 || strcmp(name, "endswith") == 0) {
        if (n_args != 1 || !kimi_tv_is_str(&args[0])) {
            return kimi_ev_fail(ev, n, "%s() takes one string", name);
        }
        sep = json_string_value(args[0].j);
        sep_len = json_string_length(args[0].j);
        return kimi_val_json(ev, out, json_boolean(sep_len <= len
                             && memcmp(name[0] == 's' ? s : s + len - sep_len,
                                       sep, sep_len) == 0), 1);
    }

    /* split(sep): whitespace splitting is not needed by the templates */
    if (n_args != 1 || !kimi_tv_is_str(&args[0])
        || json_string_length(args[0].j) == 0)
    {
        return kimi_ev_fail(ev, n, "split() needs a non-empty separator%s", "");
    }
    sep = json_string_value(args[0].j);
    sep_len = json_string_length(args[0].j);
    list = json_array();
    for (p = s; ; p = q + sep_len) {
        q = memmem(p, (size_t) (s + len - p), sep, sep_len);
        if (q == NULL) {
            json_array_append_new(list, json_stringn_nocheck(p,
                                                 (size_t) (s + len - p)));
            break;
        }
        json_array_append_new(list, json_stringn_nocheck(p, (size_t) (q - p)));
    }
    return kimi_val_json(ev, out, list, self->trusted);
}


int
kimi_tmpl_call_global(kimi_ev_t *ev, const kimi_node_t *n, const char *name,
    kimi_val_t *args, size_t n_args, kimi_val_t *out)
{
    char        buf[256];
    time_t      now;
    struct tm   tm;
    size_t      k;
    json_int_t  a, b, step, i;
    json_t     *list;

    memset(out, 0, sizeof(*out));

    if (strcmp(name, "raise_exception") == 0) {
        return kimi_err_set(ev->err, KIMI_EINVAL, "%s",
                            n_args > 0 && kimi_tv_is_str(&args[0])
                            ? json_string_value(args[0].j)
                            : "the chat template raised an exception");
    }

    if (strcmp(name, "strftime_now") == 0) {
        if (n_args != 1 || !kimi_tv_is_str(&args[0])) {
            return kimi_ev_fail(ev, n, "strftime_now() takes one format%s", "");
        }
        now = time(NULL);
        localtime_r(&now, &tm);
        k = strftime(buf, sizeof(buf), json_string_value(args[0].j), &tm);
        return kimi_val_json(ev, out, json_stringn_nocheck(buf, k), 1);
    }

    /* range([a,] b [, step]) */
    for (k = 0; k < n_args; k++) {
        if (args[k].kind != KIMI_V_JSON || !kimi_tv_is_intlike(args[k].j)) {
            return kimi_ev_fail(ev, n, "range() takes integers%s", "");
        }
    }
    if (n_args < 1 || n_args > 3) {
        return kimi_ev_fail(ev, n, "range() takes 1 to 3 arguments%s", "");
    }
    a = n_args == 1 ? 0 : kimi_tv_int(args[0].j);
    b = n_args == 1 ? kimi_tv_int(args[0].j) : kimi_tv_int(args[1].j);
    step = n_args == 3 ? kimi_tv_int(args[2].j) : 1;
    if (step == 0 || (b - a) / step > 100000) {
        return kimi_ev_fail(ev, n, "range() too long or zero step%s", "");
    }
    list = json_array();
    for (i = a; step > 0 ? i < b : i > b; i += step) {
        json_array_append_new(list, json_integer(i));
    }
    return kimi_val_json(ev, out, list, 1);
}


/* ---- filters and tests ---------------------------------------------------------- */

int
kimi_tmpl_filter(kimi_ev_t *ev, const kimi_node_t *n, kimi_val_t *v,
    kimi_val_t *args, size_t n_args, kimi_val_t *out)
{
    const char  *f = n->str;
    kimi_buf_t   b;
    json_t      *j, *x;
    size_t       i;
    kimi_val_t   s;

    memset(out, 0, sizeof(*out));

    if (strcmp(f, "default") == 0 || strcmp(f, "d") == 0) {
        if (v->kind == KIMI_V_UNDEF
            || (n_args > 1 && kimi_tv_truthy(&args[1]) && !kimi_tv_truthy(v)))
        {
            if (n_args > 0) {
                return kimi_val_copy(out, &args[0]);
            }
            return kimi_val_json(ev, out, json_string(""), 1);
        }
        return kimi_val_copy(out, v);
    }

    if (strcmp(f, "string") == 0) {
        if (v->kind == KIMI_V_UNDEF) {
            return kimi_val_json(ev, out, json_string(""), 1);
        }
        return kimi_val_to_str(ev, v, out);
    }

    if (v->kind != KIMI_V_JSON) {
        return kimi_ev_fail(ev, n, "filter '%s' applied to an undefined value",
                         f);
    }

    if (strcmp(f, "tojson") == 0) {
        memset(&b, 0, sizeof(b));
        kimi_py_json(&b, v->j, 1);
        if (b.failed) {
            kimi_buf_free(&b);
            return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                                "memory");
        }
        j = json_stringn_nocheck(b.p != NULL ? b.p : "", b.len);
        kimi_buf_free(&b);
        return kimi_val_json(ev, out, j, v->trusted);
    }

    if (strcmp(f, "length") == 0 || strcmp(f, "count") == 0) {
        switch (json_typeof(v->j)) {
        case JSON_STRING:
            i = kimi_tv_utf8_chars(json_string_value(v->j),
                                json_string_length(v->j));
            break;
        case JSON_ARRAY:
            i = json_array_size(v->j);
            break;
        case JSON_OBJECT:
            i = json_object_size(v->j);
            break;
        default:
            return kimi_ev_fail(ev, n, "length of a %s", kimi_tv_type_name(v));
        }
        return kimi_val_json(ev, out, json_integer((json_int_t) i), 1);
    }

    if (strcmp(f, "trim") == 0) {
        if (!json_is_string(v->j)) {
            return kimi_ev_fail(ev, n, "trim of a %s", kimi_tv_type_name(v));
        }
        return kimi_strip(ev, v, NULL, 1, 1, out);
    }

    if (strcmp(f, "lower") == 0 || strcmp(f, "upper") == 0) {
        if (kimi_val_to_str(ev, v, &s) != KIMI_OK) {
            return ev->err->code;
        }
        i = (size_t) kimi_case(ev, &s, f[0] == 'u', out);
        kimi_val_free(&s);
        return (int) i;
    }

    if (strcmp(f, "items") == 0) {
        if (!json_is_object(v->j)) {
            return kimi_ev_fail(ev, n, "items of a %s", kimi_tv_type_name(v));
        }
        return kimi_items(ev, v, 'i', out);
    }

    if (strcmp(f, "first") == 0 || strcmp(f, "last") == 0) {
        if (!json_is_array(v->j)) {
            return kimi_ev_fail(ev, n, "%s of a non-list", f);
        }
        i = json_array_size(v->j);
        if (i == 0) {
            return KIMI_OK;
        }
        x = json_array_get(v->j, f[0] == 'f' ? 0 : i - 1);
        return kimi_val_json(ev, out, json_incref(x), v->trusted);
    }

    if (strcmp(f, "list") == 0) {
        if (json_is_array(v->j)) {
            return kimi_val_json(ev, out, json_copy(v->j), v->trusted);
        }
        if (json_is_object(v->j)) {
            return kimi_items(ev, v, 'k', out);
        }
        return kimi_ev_fail(ev, n, "list of a %s", kimi_tv_type_name(v));
    }

    /* join */
    if (!json_is_array(v->j)) {
        return kimi_ev_fail(ev, n, "join of a %s", kimi_tv_type_name(v));
    }
    memset(&b, 0, sizeof(b));
    json_array_foreach(v->j, i, x) {
        if (i > 0 && n_args > 0 && kimi_tv_is_str(&args[0])) {
            kimi_buf_add(&b, json_string_value(args[0].j),
                         json_string_length(args[0].j), 1);
        }
        kimi_py_str(&b, x, 1);
    }
    if (b.failed) {
        kimi_buf_free(&b);
        return kimi_err_set(ev->err, KIMI_ENOMEM, "chat template: out of "
                            "memory");
    }
    j = json_stringn_nocheck(b.p != NULL ? b.p : "", b.len);
    kimi_buf_free(&b);
    return kimi_val_json(ev, out, j, v->trusted);
}


int
kimi_tmpl_test(const char *t, const kimi_val_t *v)
{
    const json_t  *j = v->j;

    if (strcmp(t, "defined") == 0) {
        return v->kind != KIMI_V_UNDEF;
    }
    if (strcmp(t, "undefined") == 0) {
        return v->kind == KIMI_V_UNDEF;
    }
    if (strcmp(t, "iterable") == 0) {
        return v->kind == KIMI_V_UNDEF
               || (v->kind == KIMI_V_JSON && (json_is_string(j)
                   || json_is_array(j) || json_is_object(j)));
    }
    if (v->kind != KIMI_V_JSON) {
        return 0;
    }
    if (strcmp(t, "string") == 0) {
        return json_is_string(j);
    }
    if (strcmp(t, "none") == 0) {
        return json_is_null(j);
    }
    if (strcmp(t, "mapping") == 0) {
        return json_is_object(j);
    }
    if (strcmp(t, "sequence") == 0) {
        return json_is_string(j) || json_is_array(j) || json_is_object(j);
    }
    if (strcmp(t, "number") == 0) {
        return json_is_number(j) || json_is_boolean(j);
    }
    if (strcmp(t, "integer") == 0) {
        return json_is_integer(j);
    }
    if (strcmp(t, "float") == 0) {
        return json_is_real(j);
    }
    if (strcmp(t, "boolean") == 0) {
        return json_is_boolean(j);
    }
    if (strcmp(t, "true") == 0) {
        return json_is_true(j);
    }
    return json_is_false(j);                              /* "false" */
}
