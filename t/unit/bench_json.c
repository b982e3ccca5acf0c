/*
 * kimi-bench's chunk scanner (bench/bench_json.c) against jansson: for
 * every chunk it accepts, the fields must be what jansson reads; what it
 * cannot be sure of it must refuse (-1), never misread.
 *
 * bench/ is not part of libkimi.a, so the file under test is compiled in.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../../bench/bench_json.c"

#include "tap.h"


/* scanner vs jansson on one chunk; 1 if they agree (or the scanner
 * refused and expect_refuse says it should) */
static int
agree(const char *chunk, int is_chat, int expect_refuse)
{
    bench_chunk_t  ch;
    json_error_t   e;
    json_t        *js, *choices, *txt, *usage, *id;
    char           buf[4096];
    size_t         n;
    int            rc;

    rc = bench_chunk_scan(chunk, strlen(chunk), is_chat, &ch);
    if (expect_refuse) {
        return rc == -1;
    }
    if (rc != 0) {
        fprintf(stderr, "# refused: %s\n", chunk);
        return 0;
    }

    js = json_loads(chunk, JSON_ALLOW_NUL, &e);
    if (js == NULL) {
        fprintf(stderr, "# accepted invalid JSON: %s\n", chunk);
        return 0;
    }

    choices = json_object_get(js, "choices");
    if ((json_is_array(choices) ? (int) json_array_size(choices) : -1)
        != ch.n_choices)
    {
        fprintf(stderr, "# choices differ: %s\n", chunk);
        json_decref(js);
        return 0;
    }

    txt = json_array_get(choices, 0);
    txt = is_chat ? json_object_get(json_object_get(txt, "delta"), "content")
                  : json_object_get(txt, "text");
    if (json_is_string(txt) != ch.has_text) {
        fprintf(stderr, "# text presence differs: %s\n", chunk);
        json_decref(js);
        return 0;
    }
    if (ch.has_text) {
        if (bench_json_unescape(ch.text, ch.text_len, buf, &n) != 0
            || n != json_string_length(txt)
            || memcmp(buf, json_string_value(txt), n) != 0)
        {
            fprintf(stderr, "# text differs: %s\n", chunk);
            json_decref(js);
            return 0;
        }
    }

    usage = json_object_get(js, "usage");
    if (json_is_object(usage) != ch.has_usage
        || (ch.has_usage
            && (json_integer_value(json_object_get(usage,
                                                   "completion_tokens"))
                != ch.completion_tokens
                || json_integer_value(json_object_get(usage,
                                                      "prompt_tokens"))
                   != ch.prompt_tokens)))
    {
        fprintf(stderr, "# usage differs: %s\n", chunk);
        json_decref(js);
        return 0;
    }

    id = json_object_get(js, "id");
    if (json_is_string(id) != (ch.id != NULL)
        || (ch.id != NULL && (ch.id_len != json_string_length(id)
                              || memcmp(ch.id, json_string_value(id),
                                        ch.id_len) != 0)))
    {
        fprintf(stderr, "# id differs: %s\n", chunk);
        json_decref(js);
        return 0;
    }

    json_decref(js);

    return 1;
}


int
main(void)
{
    static const char *const  good_completion[] = {
        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":17,"
        "\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" hello\","
        "\"logprobs\":null,\"finish_reason\":null}]}",
        "{\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],"
        "\"id\":\"x\"}",
        "{\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
        "\"completion_tokens\":5,\"total_tokens\":17}}",
        " { \"choices\" : [ { \"text\" : \"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\" ,"
        " \"x\" : [1, 2.5e-3, {\"y\": [true, false, null]}] } , {\"text\":\"z\"}"
        " ] } ",
        "{\"choices\":[{\"text\":null}],\"usage\":null}",
        "{\"object\":\"text_completion\",\"extra\":{\"nested\":{\"deep\":"
        "[[[\"s\"]]]}},\"choices\":[{\"text\":\"\\u0000nul\"}]}",
    };
    static const char *const  good_chat[] = {
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}",
        "{\"choices\":[{\"delta\":{\"content\":\" w\\u00f6rld\"}}]}",
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}",
        "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,"
        "\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}],"
        "\"content\":null}}]}",
    };
    static const char *const  refused[] = {
        "{\"error\":{\"message\":\"boom\"}}",
        "{\"choices\":[{\"text\":\"unterminated}]}",
        "{\"choices\":[{\"text\":\"a\"}]} trailing",
        "{\"ch\\u006fices\":[]}",
        "{\"choices\":[{\"text\":\"a\"},]}",
        "{\"usage\":{\"completion_tokens\":1.5}}",
        "{\"choices\":[{\"text\":\"raw\ttab\"}]}",
        "[1,2]",
        "",
        "{\"choices\":[{\"text\":\"x\",\"v\":nul}]}",
    };

    char           raw[64], buf[512], *enc;
    json_t        *s;
    size_t         i, k, n, all = 1;
    unsigned int   seed = 12345;

    for (i = 0; i < sizeof(good_completion) / sizeof(good_completion[0]);
         i++)
    {
        all &= agree(good_completion[i], 0, 0);
    }
    ok(all, "completion chunks read as jansson reads them");

    all = 1;
    for (i = 0; i < sizeof(good_chat) / sizeof(good_chat[0]); i++) {
        all &= agree(good_chat[i], 1, 0);
    }
    ok(all, "chat chunks read as jansson reads them");

    {
        /* a raw NUL where a value should be: invalid JSON, refused */
        static const char  nul[] = "{\"choices\":[{\"v\":1\0}]}";
        bench_chunk_t      ch;

        ok(bench_chunk_scan(nul, sizeof(nul) - 1, 0, &ch) == -1,
           "a raw NUL byte is refused");
    }

    all = 1;
    for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (!agree(refused[i], 0, 1)) {
            fprintf(stderr, "# not refused: %s\n", refused[i]);
            all = 0;
        }
    }
    ok(all, "errors, malformed and doubtful chunks are refused");

    /* escapes inside the text are checked when it is unescaped */
    {
        static const char *const  bad_text[] = {
            "{\"choices\":[{\"text\":\"bad \\x escape\"}]}",
            "{\"choices\":[{\"text\":\"lone \\ud83d surrogate\"}]}",
            "{\"choices\":[{\"text\":\"low first \\udc00\"}]}",
            "{\"choices\":[{\"text\":\"short \\u12\"}]}",
        };
        bench_chunk_t  ch;

        all = 1;
        for (i = 0; i < sizeof(bad_text) / sizeof(bad_text[0]); i++) {
            if (bench_chunk_scan(bad_text[i], strlen(bad_text[i]), 0, &ch)
                == 0
                && bench_json_unescape(ch.text, ch.text_len, buf, &n) == 0)
            {
                fprintf(stderr, "# bad escape passed: %s\n", bad_text[i]);
                all = 0;
            }
        }
        ok(all, "bad escapes and lone surrogates in the text are caught");
    }

    /* random strings, escaped by jansson both ways, unescape back */
    all = 1;
    for (i = 0; i < 20000 && all; i++) {
        n = 1 + rand_r(&seed) % 20;
        for (k = 0; k < n; k++) {
            raw[k] = (char) (rand_r(&seed) % 128);     /* ASCII + controls */
        }
        if (i % 2) {
            /* some UTF-8: e-acute, a CJK char, an emoji */
            memcpy(raw + n, "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80", 9);
            n += 9;
        }
        s = json_stringn(raw, n);
        enc = json_dumps(s, JSON_ENCODE_ANY
                            | (i % 4 < 2 ? JSON_ENSURE_ASCII : 0));
        json_decref(s);
        if (enc == NULL) {
            all = 0;
            break;
        }
        /* enc is "..." with the quotes */
        k = strlen(enc);
        if (bench_json_unescape(enc + 1, k - 2, buf, &k) != 0 || k != n
            || memcmp(buf, raw, n) != 0)
        {
            fprintf(stderr, "# unescape differs for %s\n", enc);
            all = 0;
        }
        free(enc);
    }
    ok(all, "20000 random strings unescape to what jansson escaped");

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
