/*
 * vLLM's preprocessing of an OpenAI chat request before the template.
 *
 * Owns:   validating messages and tools (errors fit for a 400) and
 *         reshaping them as vLLM's chat_utils.py does, in the content
 *         format template.c detected (Kimi's templates loop over
 *         message['content']: "openai"; DeepSeek's do not: "string"):
 *           - content: "openai": a string becomes [{"type": "text",
 *             "text": s}], null becomes [], text parts keep {"type",
 *             "text"} only; "string": the text parts joined with "\n";
 *           - tool messages: text parts joined with "\n" into a string;
 *           - assistant tool_calls: an empty list is dropped; string
 *             arguments are json.loads-ed (invalid JSON -> {}), anything
 *             else that is not a dict or list -> {};
 *           - "name" passes through when it is a string;
 *           - tools as pydantic's model_dump(): {"type", "function":
 *             {"name", "description", "parameters", extras...}, extras...}
 *             with null for a missing description or parameters.
 * Never:  modifies the caller's JSON (everything is copied).
 */

#include <stdio.h>
#include <string.h>

#include "template_internal.h"


static int
kimi_chat_part_text(json_t *part, size_t i, size_t k, json_t **text,
    kimi_err_t *err)
{
    const char  *type, *key;
    json_t      *v;

    *text = NULL;

    if (json_is_string(part)) {
        *text = json_incref(part);
        return KIMI_OK;
    }

    if (!json_is_object(part)) {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].content[%zu] "
                            "must be a string or an object", i, k);
    }

    v = json_object_get(part, "type");
    if (!json_is_string(v)) {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].content[%zu]: "
                            "missing 'type' field", i, k);
    }
    type = json_string_value(v);

    if (strcmp(type, "text") == 0 || strcmp(type, "input_text") == 0
        || strcmp(type, "output_text") == 0)
    {
        key = "text";
    } else if (strcmp(type, "refusal") == 0) {
        key = "refusal";
    } else if (strcmp(type, "thinking") == 0) {
        key = "thinking";
    } else {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].content[%zu]: "
                            "content part type '%s' is not supported by "
                            "this text-only model", i, k, type);
    }

    v = json_object_get(part, key);
    if (v == NULL || json_is_null(v)) {
        return KIMI_OK;                 /* vLLM skips an empty part */
    }
    if (!json_is_string(v)) {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].content[%zu]."
                            "%s must be a string", i, k, key);
    }

    *text = json_incref(v);
    return KIMI_OK;
}


static json_t *
kimi_chat_text_part(json_t *text)
{
    json_t  *p = json_object();

    if (p != NULL) {
        json_object_set_new(p, "type", json_string("text"));
        json_object_set(p, "text", text);
    }
    return p;
}


/* "arguments" as _postprocess_messages() leaves them */
static json_t *
kimi_chat_arguments(json_t *a)
{
    json_t  *v;

    if (json_is_string(a)) {
        v = json_loadb(json_string_value(a), json_string_length(a),
                       JSON_DECODE_ANY, NULL);
        return v != NULL ? v : json_object();
    }

    if (json_is_object(a) || json_is_array(a)) {
        return json_deep_copy(a);
    }

    return json_object();
}


static int
kimi_chat_message(json_t *m, size_t i, int string_content, json_t **out,
    kimi_err_t *err)
{
    int          rc;
    size_t       k, n_parts, total;
    json_t      *msg, *role, *content, *parts, *text, *v, *calls, *call, *fn;
    json_t      *c2;
    const char  *r;
    char        *joined;

    *out = NULL;

    if (!json_is_object(m)) {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu] must be an "
                            "object", i);
    }

    role = json_object_get(m, "role");
    if (!json_is_string(role)) {
        return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].role must be a "
                            "string", i);
    }
    r = json_string_value(role);

    msg = json_object();
    parts = json_array();
    if (msg == NULL || parts == NULL) {
        json_decref(msg);
        json_decref(parts);
        return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
    }

    json_object_set(msg, "role", role);

    content = json_object_get(m, "content");
    rc = KIMI_OK;

    if (json_is_string(content)) {
        json_array_append_new(parts, kimi_chat_text_part(content));

    } else if (json_is_array(content)) {
        json_array_foreach(content, k, v) {
            rc = kimi_chat_part_text(v, i, k, &text, err);
            if (rc != KIMI_OK) {
                break;
            }
            if (text != NULL) {
                json_array_append_new(parts, kimi_chat_text_part(text));
                json_decref(text);
            }
        }

    } else if (content != NULL && !json_is_null(content)) {
        rc = kimi_err_set(err, KIMI_EINVAL, "messages[%zu].content must be "
                          "a string, a list of parts or null", i);
    }

    if (rc != KIMI_OK) {
        json_decref(parts);
        json_decref(msg);
        return rc;
    }

    if (strcmp(r, "tool") == 0 || string_content) {
        /* tool results (and every message for a "string" template): text
         * parts joined with newlines, none -> "" */
        n_parts = json_array_size(parts);
        total = 0;
        json_array_foreach(parts, k, v) {
            total += json_string_length(json_object_get(v, "text")) + 1;
        }
        joined = malloc(total + 1);
        if (joined == NULL) {
            json_decref(parts);
            json_decref(msg);
            return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
        }
        total = 0;
        json_array_foreach(parts, k, v) {
            text = json_object_get(v, "text");
            if (k > 0) {
                joined[total++] = '\n';
            }
            memcpy(joined + total, json_string_value(text),
                   json_string_length(text));
            total += json_string_length(text);
        }
        (void) n_parts;
        json_object_set_new(msg, "content",
                            json_stringn_nocheck(joined, total));
        free(joined);
        json_decref(parts);

        v = json_object_get(m, "tool_call_id");
        if (v != NULL && strcmp(r, "tool") == 0) {
            json_object_set_new(msg, "tool_call_id", json_deep_copy(v));
        }

    } else {
        json_object_set_new(msg, "content", parts);
    }

    calls = json_object_get(m, "tool_calls");
    if (strcmp(r, "assistant") == 0 && calls != NULL && !json_is_null(calls)) {
        if (!json_is_array(calls)) {
            json_decref(msg);
            return kimi_err_set(err, KIMI_EINVAL, "messages[%zu].tool_calls "
                                "must be a list", i);
        }

        if (json_array_size(calls) > 0) {
            c2 = json_array();
            json_array_foreach(calls, k, call) {
                fn = json_object_get(call, "function");
                if (!json_is_object(call) || !json_is_object(fn)) {
                    json_decref(c2);
                    json_decref(msg);
                    return kimi_err_set(err, KIMI_EINVAL, "messages[%zu]."
                                        "tool_calls[%zu] needs a \"function\" "
                                        "object", i, k);
                }
                if (!json_is_string(json_object_get(fn, "name"))) {
                    json_decref(c2);
                    json_decref(msg);
                    return kimi_err_set(err, KIMI_EINVAL, "messages[%zu]."
                                        "tool_calls[%zu].function.name must "
                                        "be a string", i, k);
                }
                v = json_deep_copy(call);
                json_object_set_new(json_object_get(v, "function"),
                                    "arguments",
                                    kimi_chat_arguments(json_object_get(
                                        fn, "arguments")));
                json_array_append_new(c2, v);
            }
            json_object_set_new(msg, "tool_calls", c2);
        }
    }

    v = json_object_get(m, "name");
    if (json_is_string(v)) {
        json_object_set(msg, "name", v);
    }

    *out = msg;
    return KIMI_OK;
}


int
kimi_chat_messages(json_t *messages, int string_content, json_t **out,
    kimi_err_t *err)
{
    int      rc;
    size_t   i;
    json_t  *conv, *m, *msg;

    *out = NULL;

    if (!json_is_array(messages)) {
        return kimi_err_set(err, KIMI_EINVAL, "'messages' must be a list");
    }

    conv = json_array();
    if (conv == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
    }

    json_array_foreach(messages, i, m) {
        rc = kimi_chat_message(m, i, string_content, &msg, err);
        if (rc != KIMI_OK) {
            json_decref(conv);
            return rc;
        }
        json_array_append_new(conv, msg);
    }

    *out = conv;
    return KIMI_OK;
}


int
kimi_chat_tools(json_t *tools, json_t **out, kimi_err_t *err)
{
    size_t       i;
    json_t      *list, *t, *fn, *td, *fd, *v, *x;
    const char  *key;

    *out = NULL;

    if (tools == NULL || json_is_null(tools)) {
        return KIMI_OK;
    }

    if (!json_is_array(tools)) {
        return kimi_err_set(err, KIMI_EINVAL, "'tools' must be a list");
    }

    list = json_array();

    json_array_foreach(tools, i, t) {
        fn = json_object_get(t, "function");
        v = json_object_get(t, "type");

        if (!json_is_object(t) || !json_is_object(fn)) {
            json_decref(list);
            return kimi_err_set(err, KIMI_EINVAL, "tools[%zu] needs a "
                                "\"function\" object", i);
        }
        if (v != NULL && !(json_is_string(v)
                           && strcmp(json_string_value(v), "function") == 0))
        {
            json_decref(list);
            return kimi_err_set(err, KIMI_EINVAL, "tools[%zu].type must be "
                                "\"function\"", i);
        }
        if (!json_is_string(json_object_get(fn, "name"))) {
            json_decref(list);
            return kimi_err_set(err, KIMI_EINVAL, "tools[%zu].function.name "
                                "must be a string", i);
        }
        v = json_object_get(fn, "description");
        if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
            json_decref(list);
            return kimi_err_set(err, KIMI_EINVAL, "tools[%zu].function."
                                "description must be a string", i);
        }
        v = json_object_get(fn, "parameters");
        if (v != NULL && !json_is_null(v) && !json_is_object(v)) {
            json_decref(list);
            return kimi_err_set(err, KIMI_EINVAL, "tools[%zu].function."
                                "parameters must be an object", i);
        }

        fd = json_object();
        json_object_set_new(fd, "name",
                            json_deep_copy(json_object_get(fn, "name")));
        v = json_object_get(fn, "description");
        json_object_set_new(fd, "description",
                            v != NULL ? json_deep_copy(v) : json_null());
        v = json_object_get(fn, "parameters");
        json_object_set_new(fd, "parameters",
                            v != NULL ? json_deep_copy(v) : json_null());
        json_object_foreach(fn, key, x) {
            if (json_object_get(fd, key) == NULL) {
                json_object_set_new(fd, key, json_deep_copy(x));
            }
        }

        td = json_object();
        json_object_set_new(td, "type", json_string("function"));
        json_object_set_new(td, "function", fd);
        json_object_foreach(t, key, x) {
            if (json_object_get(td, key) == NULL) {
                json_object_set_new(td, key, json_deep_copy(x));
            }
        }

        json_array_append_new(list, td);
    }

    *out = list;
    return KIMI_OK;
}
