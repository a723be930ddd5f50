/* The store's extension, part: reading an OTLP message's fields in the plain form (_native.h says
 * what that is), the strings it does not keep checked as the generated classes check them.
 */
#include "_native.h"

/* Strict UTF-8, as the generated classes check every string field they read (even one the records
 * do not keep): 1 valid, 0 not. */
static int
valid_utf8(span v)
{
    const unsigned char *p = v.p, *end = v.end;
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        int n;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        else {
            return 0;
        }
        if (end - p <= n || p[1] < lo || p[1] > hi) {
            return 0;
        }
        for (int i = 2; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) {
                return 0;
            }
        }
        p += n + 1;
    }
    return 1;
}

/* The next occurrence of the length-delimited field `number` in m: OK (in *inner), 0 none left
 * (UNSURE is never returned for that: see the callers), or -2 not the plain form. Other fields are
 * skipped, except `checked` (a string field the records do not keep, whose UTF-8 is checked as the
 * generated classes check it) and `refuse` (a field with strings this does not read); 0 is neither. */

int
next_of(span *m, uint32_t number, uint32_t checked, uint32_t refuse, span *inner)
{
    while (m->p < m->end) {
        uint32_t field;
        int wire;
        if (!tag(m, &field, &wire) || (refuse && field == refuse)) {
            return NOT_PLAIN;
        }
        if (field == number) {
            return wire == 2 && delimited(m, inner) ? OK : NOT_PLAIN;
        }
        if (checked && field == checked) {
            span text_field;
            if (wire != 2 || !delimited(m, &text_field) || !valid_utf8(text_field)) {
                return NOT_PLAIN;
            }
        }
        else if (!skip(m, wire)) {
            return NOT_PLAIN;
        }
    }
    return NONE_LEFT;
}

/* Fields 1..n of a message, each length-delimited and there at most once (a message field sent twice
 * is merged by the generated classes, a string field's last value kept: not the plain form); other
 * fields are skipped, but `refuse` (a field with strings this does not read and check, 0: none) is
 * not the plain form either. 1 plain, with has[i] set for each field i + 1 found, else 0. */
int
once_each(span m, uint32_t n, uint32_t refuse, span *out, int *has)
{
    for (uint32_t i = 0; i < n; i++) {
        has[i] = 0;
    }
    while (m.p < m.end) {
        uint32_t field;
        int wire;
        if (!tag(&m, &field, &wire) || (refuse && field == refuse)) {
            return 0;
        }
        if (field >= 1 && field <= n) {
            if (wire != 2 || has[field - 1] || !delimited(&m, &out[field - 1])) {
                return 0;
            }
            has[field - 1] = 1;
        }
        else if (!skip(&m, wire)) {
            return 0;
        }
    }
    return 1;
}

