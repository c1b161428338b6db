/* common/parse.c: the number parsers take the whole string or nothing: ranges, signs, blanks, overflow,
 * trailing text, hexadecimal, NaN and infinity are refused, and a refused value leaves the output as it was. */
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
