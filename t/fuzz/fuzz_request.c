/*
 * Fuzz target: request JSON through the text layer, as the gateway uses
 * it: parse, vLLM preprocessing and validation, Kimi's v3 template, then
 * tokenization with user data as plain spans.
 */

#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char          *text;
    size_t         len, n_ids, n_plain, i;
    json_t        *req;
    int32_t       *ids;
    kimi_err_t     err;
    kimi_span_t   *plain;

    req = json_loadb((const char *) data, size, 0, NULL);
    if (req == NULL) {
        return 0;
    }

    if (kimi_template_render_ex(fuzz_template(),
                                json_object_get(req, "messages"),
                                json_object_get(req, "tools"),
                                json_is_true(json_object_get(req, "agp")),
                                &text, &len, &plain, &n_plain, &err) == 0)
    {
        for (i = 0; i < n_plain; i++) {
            if (plain[i].off + plain[i].len > len
                || (i > 0 && plain[i].off < plain[i - 1].off
                             + plain[i - 1].len))
            {
                abort();
            }
        }
        if (kimi_tokenize_ex(fuzz_tokenizer(), text, len, 1, plain, n_plain,
                             &ids, &n_ids, &err) == 0)
        {
            free(ids);
        }
        free(text);
        free(plain);
    } else if (err.code != KIMI_EINVAL) {
        abort();                 /* bad requests are 400s, nothing else */
    }

    json_decref(req);
    return 0;
}
