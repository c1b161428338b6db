/* moe_grow, the array growth the tokenizer, the regex and grammar compilers
 * and the JSON Schema compiler share:
 * - a first growth takes the first capacity, doubled until need fits;
 * - a later one doubles the capacity it has, at least once, and keeps the
 *   elements already there;
 * - need within the capacity changes nothing;
 * - a capacity or byte size that cannot be represented is refused with the
 *   array and its capacity untouched. */
#include "../test_util.h"
#include "common/moe.h"

int main(void)
{
    int *a = NULL;
    size_t cap = 0;
    REQUIRE(moe_grow((void **)&a, &cap, 1, sizeof(*a), 16) && a, "first growth");
    CHECK(cap == 16, "first growth: capacity %zu, expected 16", cap);
    for (int i = 0; i < 16; i++) a[i] = i;
    int *before = a;
    CHECK(moe_grow((void **)&a, &cap, 16, sizeof(*a), 16) && a == before && cap == 16,
          "need 16 in 16: capacity %zu", cap);
    REQUIRE(moe_grow((void **)&a, &cap, 17, sizeof(*a), 16), "growth to 17");
    CHECK(cap == 32, "growth to 17: capacity %zu, expected 32", cap);
    REQUIRE(moe_grow((void **)&a, &cap, 100, sizeof(*a), 16), "growth to 100");
    CHECK(cap == 128, "growth to 100: capacity %zu, expected 128", cap);
    for (int i = 0; i < 16; i++) CHECK(a[i] == i, "element %d is %d after growing", i, a[i]);
    free(a);

    char *b = NULL;
    size_t cb = 0;
    REQUIRE(moe_grow((void **)&b, &cb, 65, 1, 64) && b, "bytes");
    CHECK(cb == 128, "65 bytes from a first 64: capacity %zu, expected 128", cb);

    /* the doubling would pass SIZE_MAX, or the bytes would: refused, nothing changed */
    char *keep = b;
    CHECK(!moe_grow((void **)&b, &cb, SIZE_MAX, 1, 64) && b == keep && cb == 128, "need SIZE_MAX: capacity %zu",
          cb);
    CHECK(!moe_grow((void **)&b, &cb, SIZE_MAX / 4, 8, 64) && b == keep && cb == 128,
          "SIZE_MAX / 4 elements of 8 bytes: capacity %zu", cb);
    free(b);
    return t_failures ? T_FAIL : T_PASS;
}
