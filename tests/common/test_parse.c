/* common/parse.c: the number parsers take the whole string (or, moe_parse_u64_prefix, the digits it begins
 * with) or nothing: ranges, signs, blanks, overflow, trailing text, hexadecimal, NaN and infinity are refused,
 * and a refused value leaves the output as it was. */
#include "common/moe.h"
#include "tests/test_util.h"

int main(void)
{
    long l = 7;
    CHECK(moe_parse_long("42", 1, 100, &l) && l == 42, "42 -> %ld", l);
    CHECK(moe_parse_long("-3", -5, 0, &l) && l == -3, "-3 -> %ld", l);
    l = 7;
    CHECK(!moe_parse_long("0", 1, 100, &l) && !moe_parse_long("101", 1, 100, &l) &&
          !moe_parse_long("", 1, 100, &l) && !moe_parse_long("12x", 1, 100, &l) &&
          !moe_parse_long("1.5", 1, 100, &l) && !moe_parse_long("99999999999999999999", 1, 100, &l) &&
          !moe_parse_long(" 5", 1, 100, &l) && !moe_parse_long("+5", 1, 100, &l),
          "bad longs accepted");
    CHECK(l == 7, "a refused value changed the output to %ld", l);

    uint64_t u = 0;
    CHECK(moe_parse_u64("18446744073709551615", &u) && u == UINT64_MAX, "max u64");
    CHECK(!moe_parse_u64("-1", &u) && !moe_parse_u64("18446744073709551616", &u) &&
          !moe_parse_u64("", &u) && !moe_parse_u64("5 ", &u) && !moe_parse_u64(" 5", &u) &&
          !moe_parse_u64("+5", &u), "bad u64 accepted");

    /* the number a text begins with, and where the rest begins: a unit's suffix, say */
    const char *rest = NULL;
    u = 9;
    CHECK(moe_parse_u64_prefix("64KiB", &u, &rest) && u == 64 && !strcmp(rest, "KiB"), "64KiB -> %llu '%s'",
          (unsigned long long)u, rest ? rest : "");
    CHECK(moe_parse_u64_prefix("0070", &u, &rest) && u == 70 && !*rest, "0070 -> %llu", (unsigned long long)u);
    CHECK(moe_parse_u64_prefix("18446744073709551615 x", &u, &rest) && u == UINT64_MAX && !strcmp(rest, " x"),
          "max u64 then text");
    u = 9;
    rest = NULL;
    CHECK(!moe_parse_u64_prefix("", &u, &rest) && !moe_parse_u64_prefix("K", &u, &rest) &&
          !moe_parse_u64_prefix(" 5K", &u, &rest) && !moe_parse_u64_prefix("+5K", &u, &rest) &&
          !moe_parse_u64_prefix("-5K", &u, &rest) && !moe_parse_u64_prefix(".5K", &u, &rest) &&
          !moe_parse_u64_prefix("18446744073709551616K", &u, &rest), "bad u64 prefixes accepted");
    CHECK(u == 9 && !rest, "a refused prefix changed the output to %llu", (unsigned long long)u);

    double d = 0;
    CHECK(moe_parse_double("0.25", 0, &d) && d == 0.25, "0.25 -> %g", d);
    CHECK(!moe_parse_double("-0.5", 0, &d) && !moe_parse_double("nan", 0, &d) &&
          !moe_parse_double("inf", 0, &d) && !moe_parse_double("1e999", 0, &d) &&
          !moe_parse_double("0.5s", 0, &d) && !moe_parse_double("", 0, &d) &&
          !moe_parse_double(" 0.5", 0, &d) && !moe_parse_double("+0.5", 0, &d) &&
          !moe_parse_double("0x10", 0, &d) && !moe_parse_double("0x0.8p0", 0, &d), "bad doubles accepted");
    CHECK(moe_parse_double(".5", 0, &d) && d == 0.5, ".5 -> %g", d);
    return t_result("test_common_parse");
}
