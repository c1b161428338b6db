#!/usr/bin/python3
"""Generate model/tokenizer_nfc_tables.c: the Unicode data the NFC normalizer
(model/tokenizer_nfc.c, UAX #15) needs.

    /usr/bin/python3 scripts/gen_nfc_tables.py > model/tokenizer_nfc_tables.c

Tables:
  props    4 bits per code point below MOE_NFC_PROP_LIMIT (above it every code
           point is a plain starter), as a two-level table: stage1[cp >> 7]
           names a 128-code-point block of stage2 (8 uint64 words, 16 nibbles
           each); identical blocks are stored once.  Bits:
             QCNO    NFC_Quick_Check=No: has a canonical decomposition but is not
                     a primary composite (singletons, composition exclusions,
                     non-starter decompositions)
             DECOMP  has a canonical decomposition (Hangul syllables excluded:
                     they are decomposed by arithmetic)
             CCC     canonical combining class != 0
             SECOND  NFC_Quick_Check=Maybe: second code point of a primary
                     composite's decomposition (conjoining jamo V and T included)
           A code point with none of QCNO, CCC, SECOND is "inert": a starter that
           nothing before it can combine with and that NFC keeps as it is.
  ccc      the non-zero canonical combining classes as sorted runs, one uint32
           each: lo << 12 | (hi - lo) << 8 | ccc (runs of at most 16, not
           crossing a 128-code-point block); ccc_index[cp >> 7] is the first
           run of that block, ccc_index[(cp >> 7) + 1] the end of its runs.
  decomp   every canonical decomposition mapping (one level, 1 or 2 code
           points) as uint64 cp << 42 | first << 21 | second (second 0 for a
           singleton), sorted by cp.
  comp     indices into decomp of the primary composites, sorted by the pair
           (first, second): canonical composition is a binary search there.

A primary composite is a code point with a canonical decomposition that NFC
leaves unchanged; the others (the full composition exclusions) never come out
of composition.  The data comes from Python's unicodedata; its Unicode version
is written into the generated file.
"""
import sys
import unicodedata

QCNO, DECOMP, CCC, SECOND = 1, 2, 4, 8
BLOCK = 128                      # code points per stage2 block
SBASE, SCOUNT = 0xAC00, 11172    # Hangul syllables
VBASE, VCOUNT, TBASE, TCOUNT = 0x1161, 21, 0x11A7, 28


def code_points():
    return (cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


def canonical_decomposition(cp):
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return None
    return [int(x, 16) for x in d.split()]


def load():
    ccc, decomp = {}, {}
    for cp in code_points():
        k = unicodedata.combining(chr(cp))
        if k:
            ccc[cp] = k
        if SBASE <= cp < SBASE + SCOUNT:
            continue
        d = canonical_decomposition(cp)
        if d:
            assert 1 <= len(d) <= 2, hex(cp)
            decomp[cp] = d
    primary = {cp for cp, d in decomp.items() if unicodedata.normalize("NFC", chr(cp)) == chr(cp)}
    for cp in primary:
        assert len(decomp[cp]) == 2, hex(cp)
    seconds = {decomp[cp][1] for cp in primary}
    seconds |= set(range(VBASE, VBASE + VCOUNT)) | set(range(TBASE + 1, TBASE + TCOUNT))
    return ccc, decomp, primary, seconds


def full_decomposition(cp, decomp):
    if cp not in decomp:
        return [cp]
    return [x for y in decomp[cp] for x in full_decomposition(y, decomp)]


def check(ccc, decomp, primary, seconds):
    """The facts model/tokenizer_nfc.c relies on."""
    # Below U+0300 every code point is inert, so such text is NFC as it is.
    for cp in range(0x300):
        assert cp not in ccc and cp not in seconds and (cp not in decomp or cp in primary), hex(cp)
    # An inert code point is a normalization boundary: its full decomposition
    # starts with a starter that is not SECOND, so nothing before it composes
    # with it or moves past it.
    for cp, d in decomp.items():
        if cp in primary and cp not in ccc and cp not in seconds:
            first = full_decomposition(cp, decomp)[0]
            assert first not in ccc and first not in seconds, hex(cp)
    # Composition starts from a starter and gives a starter.
    for cp in primary:
        assert cp not in ccc and decomp[cp][0] not in ccc, hex(cp)
    # Only the first code point of a mapping is ever decomposable again.
    for d in decomp.values():
        assert all(x not in decomp for x in d[1:])
    # Decompositions nest at most 4 levels (the C code recurses).
    assert max(len(full_decomposition(cp, decomp)) for cp in decomp) <= 4


def props_of(cp, ccc, decomp, primary, seconds):
    p = 0
    if cp in decomp:
        p |= DECOMP
        if cp not in primary:
            p |= QCNO
    if cp in ccc:
        p |= CCC
    if cp in seconds:
        p |= SECOND
    return p


def main():
    ccc, decomp, primary, seconds = load()
    check(ccc, decomp, primary, seconds)
    w = sys.stdout.write

    interesting = set(ccc) | set(decomp) | seconds
    limit = (max(interesting) // BLOCK + 1) * BLOCK
    blocks, index, stage1 = [], {}, []
    for base in range(0, limit, BLOCK):
        words = []
        for k in range(0, BLOCK, 16):
            v = 0
            for j in range(16):
                cp = base + k + j
                if not 0xD800 <= cp <= 0xDFFF:
                    v |= props_of(cp, ccc, decomp, primary, seconds) << (4 * j)
            words.append(v)
        key = tuple(words)
        if key not in index:
            index[key] = len(blocks)
            blocks.append(key)
        stage1.append(index[key])
    assert len(blocks) <= 256

    runs = []
    for cp in sorted(ccc):
        if runs and runs[-1][1] == cp - 1 and runs[-1][2] == ccc[cp] and cp - runs[-1][0] < 16 and cp % BLOCK:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp, ccc[cp]])
    assert runs[-1][0] < 1 << 20

    dec_sorted = sorted(decomp)
    dec_pos = {cp: i for i, cp in enumerate(dec_sorted)}
    comp = sorted(primary, key=lambda cp: (decomp[cp][0], decomp[cp][1]))

    w("/* Generated by scripts/gen_nfc_tables.py from Python %s unicodedata "
      "(Unicode %s); do not edit.\n" % (sys.version.split()[0], unicodedata.unidata_version))
    w(" * Canonical combining classes, canonical decompositions and primary composites for the NFC\n"
      " * normalizer (model/tokenizer_nfc.c); the layouts are described in tokenizer_nfc.h. */\n")
    w('#include "tokenizer_nfc.h"\n\n')
    w('const char moe_nfc_unicode_version[] = "%s";\n\n' % unicodedata.unidata_version)

    w("_Static_assert(MOE_NFC_PROP_LIMIT == 0x%X, \"tokenizer_nfc.h disagrees with the tables\");\n\n"
      % limit)
    w("/* %d blocks of %d code points, U+0000..U+%04X */\n" % (len(stage1), BLOCK, limit - 1))
    w("const uint8_t moe_nfc_stage1[MOE_NFC_PROP_LIMIT >> 7] = {\n")
    for i in range(0, len(stage1), 24):
        w("    " + " ".join("%d," % x for x in stage1[i:i + 24]) + "\n")
    w("};\n\n")
    w("/* %d distinct blocks */\n" % len(blocks))
    w("const uint64_t moe_nfc_stage2[] = {\n")
    for b in blocks:
        for k in range(0, 8, 4):
            w("    " + " ".join("0x%x," % x for x in b[k:k + 4]) + "\n")
    w("};\n\n")

    w("const uint32_t moe_nfc_ccc[] = {\n")
    items = ["0x%x," % (lo << 12 | (hi - lo) << 8 | c) for lo, hi, c in runs]
    for i in range(0, len(items), 8):
        w("    " + " ".join(items[i:i + 8]) + "\n")
    w("};\n")
    w("const unsigned moe_nfc_n_ccc = %d;\n\n" % len(runs))
    n_ccc_blocks = runs[-1][0] // BLOCK + 1
    starts = [sum(1 for r in runs if r[0] < b * BLOCK) for b in range(n_ccc_blocks + 1)]
    w("_Static_assert(MOE_NFC_CCC_BLOCKS == %d, \"tokenizer_nfc.h disagrees with the tables\");\n"
      % n_ccc_blocks)
    w("const uint16_t moe_nfc_ccc_index[MOE_NFC_CCC_BLOCKS + 1] = {\n")
    for i in range(0, len(starts), 16):
        w("    " + " ".join("%d," % x for x in starts[i:i + 16]) + "\n")
    w("};\n\n")

    w("const uint64_t moe_nfc_decomp[] = {\n")
    items = []
    for cp in dec_sorted:
        d = decomp[cp] + [0]
        items.append("0x%x," % (cp << 42 | d[0] << 21 | d[1]))
    for i in range(0, len(items), 5):
        w("    " + " ".join(items[i:i + 5]) + "\n")
    w("};\n")
    w("const unsigned moe_nfc_n_decomp = %d;\n\n" % len(dec_sorted))

    w("const uint16_t moe_nfc_comp[] = {\n")
    items = ["%d," % dec_pos[cp] for cp in comp]
    for i in range(0, len(items), 16):
        w("    " + " ".join(items[i:i + 16]) + "\n")
    w("};\n")
    w("const unsigned moe_nfc_n_comp = %d;\n" % len(comp))
    sys.stderr.write("gen_nfc_tables: limit U+%04X, %d stage1 entries, %d blocks, %d ccc runs, "
                     "%d decompositions, %d composites\n"
                     % (limit, len(stage1), len(blocks), len(runs), len(dec_sorted), len(comp)))


if __name__ == "__main__":
    main()
