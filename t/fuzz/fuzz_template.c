/*
 * Fuzz target: the template compiler and evaluator on arbitrary template
 * source, rendered with a small fixed chat.  Load errors and render errors
 * are fine; crashes, leaks and hangs are not (the evaluator bounds steps).
 */

#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char             *text;
    size_t            len;
    json_t           *msgs, *tools;
    kimi_err_t        err;
    kimi_template_t  *t;

    if (kimi_template_load_string(&t, (const char *) data, size, "fuzz",
                                  &err) != 0)
    {
        return 0;
    }

    msgs = json_loads("[{\"role\":\"system\",\"content\":\"s\"},"
                      "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
                      "\"text\":\"u\"}],\"name\":\"n\"},"
                      "{\"role\":\"assistant\",\"content\":null,"
                      "\"tool_calls\":[{\"id\":\"functions.f:0\","
                      "\"type\":\"function\",\"function\":{\"name\":\"f\","
                      "\"arguments\":\"{\\\"a\\\": [1, 2.5, null]}\"}}]},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"functions.f:0\","
                      "\"content\":\"r\"}]", 0, NULL);
    tools = json_loads("[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                       "\"parameters\":{\"type\":\"object\"}}}]", 0, NULL);

    if (kimi_template_render(t, msgs, tools, 1, &text, &len, &err) == 0) {
        if (strlen(text) > len) {
            abort();
        }
        free(text);
    }

    json_decref(msgs);
    json_decref(tools);
    kimi_template_free(t);
    return 0;
}
