/*
 * test_strategy.c - Mesh's update strategies: replace, merge (top level)
 * and deepMerge (recursive), checked against the results Mesh's
 * JavaScript gives, key order included, and that inputs stay untouched.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "strategy.h"

/* current NULL: no stored entry; expected NULL: the entry is cleared. */
typedef struct apply_case_s {
    const char *name;
    ms_strategy_t strategy;
    const char *current;
    const char *update;
    const char *expected;
} apply_case_t;

static const apply_case_t replace_cases[] = {
    {"object over object", MS_STRATEGY_REPLACE, "{\"a\":1}", "{\"b\":2}",
     "{\"b\":2}"},
    {"object over absent", MS_STRATEGY_REPLACE, NULL, "{\"a\":1}", "{\"a\":1}"},
    {"empty object", MS_STRATEGY_REPLACE, "{\"a\":1}", "{}", "{}"},
    {"array over object", MS_STRATEGY_REPLACE, "{\"a\":1}", "[1]", "[1]"},
    {"scalar over object", MS_STRATEGY_REPLACE, "{\"a\":1}", "7", "7"},
    {"null clears", MS_STRATEGY_REPLACE, "{\"a\":1}", "null", NULL},
    {"null over absent", MS_STRATEGY_REPLACE, NULL, "null", NULL},
};

static const apply_case_t merge_cases[] = {
    {"keys win, order kept", MS_STRATEGY_MERGE, "{\"a\":1,\"b\":2}",
     "{\"c\":4,\"b\":3}", "{\"a\":1,\"b\":3,\"c\":4}"},
    {"top level only", MS_STRATEGY_MERGE, "{\"a\":{\"x\":1,\"y\":2},\"b\":1}",
     "{\"a\":{\"y\":3}}", "{\"a\":{\"y\":3},\"b\":1}"},
    {"null member", MS_STRATEGY_MERGE, "{\"a\":1,\"b\":2}", "{\"a\":null}",
     "{\"a\":null,\"b\":2}"},
    {"empty object keeps", MS_STRATEGY_MERGE, "{\"a\":1}", "{}", "{\"a\":1}"},
    {"object over array", MS_STRATEGY_MERGE, "[1,2]", "{\"a\":1}", "{\"a\":1}"},
    {"array over object", MS_STRATEGY_MERGE, "{\"a\":1}", "[3]", "[3]"},
    {"scalar over object", MS_STRATEGY_MERGE, "{\"a\":1}", "\"s\"", "\"s\""},
    {"object over scalar", MS_STRATEGY_MERGE, "5", "{\"a\":1}", "{\"a\":1}"},
    {"object over null", MS_STRATEGY_MERGE, "null", "{\"a\":1}", "{\"a\":1}"},
    {"object over absent", MS_STRATEGY_MERGE, NULL, "{\"a\":1}", "{\"a\":1}"},
    {"null clears", MS_STRATEGY_MERGE, "{\"a\":1}", "null", NULL},
    {"null over absent", MS_STRATEGY_MERGE, NULL, "null", NULL},
};

static const apply_case_t deep_cases[] = {
    {"nested objects", MS_STRATEGY_DEEP_MERGE,
     "{\"user\":{\"name\":\"a\",\"prefs\":{\"theme\":\"light\","
     "\"lang\":\"en\"}},\"n\":1}",
     "{\"user\":{\"prefs\":{\"theme\":\"dark\"}}}",
     "{\"user\":{\"name\":\"a\",\"prefs\":{\"theme\":\"dark\","
     "\"lang\":\"en\"}},\"n\":1}"},
    {"three levels, new keys", MS_STRATEGY_DEEP_MERGE,
     "{\"a\":{\"b\":{\"c\":1}}}", "{\"a\":{\"b\":{\"d\":2},\"e\":3}}",
     "{\"a\":{\"b\":{\"c\":1,\"d\":2},\"e\":3}}"},
    {"arrays replaced", MS_STRATEGY_DEEP_MERGE, "{\"tags\":[1,2,3],\"k\":0}",
     "{\"tags\":[4]}", "{\"tags\":[4],\"k\":0}"},
    {"arrays of objects replaced", MS_STRATEGY_DEEP_MERGE,
     "{\"l\":[{\"a\":1}]}", "{\"l\":[{\"b\":2}]}", "{\"l\":[{\"b\":2}]}"},
    {"empty object on top", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1},\"c\":2}",
     "{}", "{\"a\":{\"b\":1},\"c\":2}"},
    {"empty object nested", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1},\"c\":2}",
     "{\"a\":{}}", "{\"a\":{\"b\":1},\"c\":2}"},
    {"empty object over scalar", MS_STRATEGY_DEEP_MERGE, "{\"a\":5}",
     "{\"a\":{}}", "{\"a\":{}}"},
    {"empty object on new key", MS_STRATEGY_DEEP_MERGE, "{\"c\":1}",
     "{\"a\":{}}", "{\"c\":1,\"a\":{}}"},
    {"null member", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1},\"c\":2}",
     "{\"a\":null}", "{\"a\":null,\"c\":2}"},
    {"null nested member", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1,\"c\":2}}",
     "{\"a\":{\"b\":null}}", "{\"a\":{\"b\":null,\"c\":2}}"},
    {"object over null member", MS_STRATEGY_DEEP_MERGE, "{\"a\":null}",
     "{\"a\":{\"b\":1}}", "{\"a\":{\"b\":1}}"},
    {"object over array", MS_STRATEGY_DEEP_MERGE, "[1,2]", "{\"a\":1}",
     "{\"a\":1}"},
    {"array over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":1}", "[1]", "[1]"},
    {"scalar over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":1}", "7", "7"},
    {"string over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":1}", "\"s\"",
     "\"s\""},
    {"bool over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":1}", "true", "true"},
    {"object over absent", MS_STRATEGY_DEEP_MERGE, NULL, "{\"a\":{\"b\":1}}",
     "{\"a\":{\"b\":1}}"},
    {"object over null", MS_STRATEGY_DEEP_MERGE, "null", "{\"a\":1}",
     "{\"a\":1}"},
    {"object over scalar", MS_STRATEGY_DEEP_MERGE, "3", "{\"a\":1}",
     "{\"a\":1}"},
    {"nested object over array", MS_STRATEGY_DEEP_MERGE, "{\"a\":[1]}",
     "{\"a\":{\"b\":1}}", "{\"a\":{\"b\":1}}"},
    {"nested array over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1}}",
     "{\"a\":[1]}", "{\"a\":[1]}"},
    {"nested scalar over object", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1}}",
     "{\"a\":0}", "{\"a\":0}"},
    {"order: old keys first", MS_STRATEGY_DEEP_MERGE, "{\"b\":1,\"a\":2}",
     "{\"c\":3,\"b\":4}", "{\"b\":4,\"a\":2,\"c\":3}"},
    {"null clears", MS_STRATEGY_DEEP_MERGE, "{\"a\":{\"b\":1}}", "null", NULL},
    {"null over absent", MS_STRATEGY_DEEP_MERGE, NULL, "null", NULL},
};

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);

    assert_non_null(v);
    return v;
}


static char *dump(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

    assert_non_null(s);
    return s;
}


static void check_case(const apply_case_t *tc)
{
    json_t *current = tc->current ? load(tc->current) : NULL;
    json_t *update = load(tc->update);
    json_t *result;

    print_message("case: %s %s\n", ms_strategy_name(tc->strategy), tc->name);
    result = ms_strategy_apply(tc->strategy, current, update);
    if (tc->expected == NULL) {
        assert_null(result);
    } else {
        char *text;

        assert_non_null(result);
        text = dump(result);
        assert_string_equal(text, tc->expected);
        free(text);
    }

    /* Neither input may have changed, shared subtrees included. */
    if (current != NULL) {
        char *text = dump(current);

        assert_string_equal(text, tc->current);
        free(text);
    }
    {
        char *text = dump(update);

        assert_string_equal(text, tc->update);
        free(text);
    }
    json_decref(result);
    json_decref(current);
    json_decref(update);
}


static void run_cases(const apply_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++)
        check_case(&cases[i]);
}


#define RUN(cases) run_cases(cases, sizeof(cases) / sizeof(cases[0]))

static void test_replace(void **state)
{
    (void)state;
    RUN(replace_cases);
}


static void test_merge(void **state)
{
    (void)state;
    RUN(merge_cases);
}


static void test_deep_merge(void **state)
{
    (void)state;
    RUN(deep_cases);
}


/* Mutating the result must not reach the stored value it came from. */
static void test_result_independent(void **state)
{
    static const ms_strategy_t all[] = {MS_STRATEGY_MERGE,
                                        MS_STRATEGY_DEEP_MERGE};
    (void)state;

    for (size_t i = 0; i < 2; i++) {
        json_t *current = load("{\"a\":{\"b\":1},\"c\":2}");
        json_t *update = load("{\"a\":{\"d\":3}}");
        json_t *result = ms_strategy_apply(all[i], current, update);
        char *text;

        assert_non_null(result);
        assert_int_equal(json_object_set_new(result, "c", json_null()), 0);
        assert_int_equal(json_object_del(result, "a"), 0);
        text = dump(current);
        assert_string_equal(text, "{\"a\":{\"b\":1},\"c\":2}");
        free(text);
        json_decref(result);
        json_decref(current);
        json_decref(update);
    }
}


static void test_parse(void **state)
{
    static const struct {
        const char *text;
        size_t len;
        int rc;
        ms_strategy_t expected;
    } cases[] = {
        {"replace", 7, 0, MS_STRATEGY_REPLACE},
        {"merge", 5, 0, MS_STRATEGY_MERGE},
        {"deepMerge", 9, 0, MS_STRATEGY_DEEP_MERGE},
        {"deepmerge", 9, MS_EINVAL, 0},
        {"Merge", 5, MS_EINVAL, 0},
        {"REPLACE", 7, MS_EINVAL, 0},
        {"merge\0", 6, MS_EINVAL, 0},
        {"replac", 6, MS_EINVAL, 0},
        {"deepMerge ", 10, MS_EINVAL, 0},
        {"", 0, MS_EINVAL, 0},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_strategy_t out = (ms_strategy_t)99;
        int rc = ms_strategy_parse(cases[i].text, cases[i].len, &out);

        assert_int_equal(rc, cases[i].rc);
        if (rc == 0)
            assert_int_equal(out, cases[i].expected);
        else
            assert_int_equal(out, 99);
    }
}


static void test_name(void **state)
{
    static const ms_strategy_t all[] = {MS_STRATEGY_REPLACE, MS_STRATEGY_MERGE,
                                        MS_STRATEGY_DEEP_MERGE};
    (void)state;

    assert_string_equal(ms_strategy_name(MS_STRATEGY_DEEP_MERGE), "deepMerge");
    for (size_t i = 0; i < 3; i++) {
        const char *name = ms_strategy_name(all[i]);
        ms_strategy_t back;

        assert_int_equal(ms_strategy_parse(name, strlen(name), &back), 0);
        assert_int_equal(back, all[i]);
    }
    assert_string_equal(ms_strategy_name((ms_strategy_t)7), "unknown");
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replace),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_deep_merge),
        cmocka_unit_test(test_result_independent),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_name),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
