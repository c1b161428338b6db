#!/usr/bin/env node
// Reference vectors for the SentencePiece-style tokenizer.json files that
// gen_spm_tokenizers.py writes, computed by the Hugging Face `tokenizers`
// library (Rust, through its Node binding @anush008/tokenizers 0.6.0, the
// binding that wrote pycode-vectors.jsonl):
//
//   npm install --prefix /tmp/tok @anush008/tokenizers@0.6.0
//   NODE_PATH=/tmp/tok/node_modules node tests/tokenizer/gen_spm_vectors.js \
//       > tests/fixtures/tokenizer/spm-vectors.jsonl
//
// Texts: the first 300 characters of every other text of pycode-vectors.jsonl
// (Python source and its own edge cases) and the edge cases below (only those
// for spm-tiny.json).  One JSON
// object per line: {"tokenizer", "text", "ids" (no special tokens added),
// "decoded" (ids decoded, special tokens kept)}, and for the edge cases
// "with_special" (the ids with the post-processor's template applied).  Then, for the
// files with byte fallback, decode-only lines {"tokenizer", "ids", "decoded"}: runs of
// <0xXX> tokens that are and are not UTF-8, alone and between other tokens.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('@anush008/tokenizers');

const dir = path.join(__dirname, '..', 'fixtures', 'tokenizer');
const texts = fs.readFileSync(path.join(dir, 'pycode-vectors.jsonl'), 'utf8')
    .split('\n').filter((l, i) => l && i % 2 == 0).map((l) => Array.from(JSON.parse(l).text).slice(0, 300).join(''));
const edge = ['', ' ', '  ', '   ', 'a', ' a', '  a', 'a ', 'a  ', 'a  b', '\n', ' \n', '\n ', ' \n ',
    '\t x', 'x\t', 'Hello world', 'Hello  world  ', 'h\u00e9llo w\u00f6rld', 'e\u0301', '\u65e5\u672c\u8a9e',
    'emoji \ud83e\udd17\ud83d\udc4d\ud83c\udffd', 'a\r\nb', '\u00a0nbsp', 'zero\u200bwidth',
    '<s>', '</s>', '<unk>', '<s>hi</s>', 'x<s> y', ' <s> ', '<s><s>', 'a<unk>b', '</s> ', ' </s>',
    '\u2581', '\u2581\u2581x', 'a\u2581b', ' \u2581', '<0x41>', 'def f(self):\n    return 1\n',
    '    indented\n        more\n', 'x = "\u00fcber" # \u00bd', '\ud800\udc00 linear b', '\u{10ffff}'];

(async () => {
  for (const name of ['spm-legacy.json', 'spm-metaspace.json', 'spm-split.json', 'spm-tiny.json']) {
    const tok = Tokenizer.fromString(fs.readFileSync(path.join(dir, name), 'utf8'));
    for (const text of name == 'spm-tiny.json' ? edge : texts.concat(edge)) {
      const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
      const v = { tokenizer: name, text, ids, decoded: await tok.decode(ids, false) };
      if (edge.includes(text)) v.with_special = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
      process.stdout.write(JSON.stringify(v) + '\n');
    }
  }
  const runs = [['E2', '82'], ['E2', '82', 'AC'], ['FF'], ['41', 'E2'], ['E2', '41'], ['C3', 'A9', 'FF'],
      ['F0', '9F', '98', '80'], ['F0', '9F', '98'], ['E2', 'ab', '82'], ['ab', 'E2', '82', 'AC', 'ab', 'C3']];
  for (const name of ['spm-legacy.json', 'spm-tiny.json']) {
    const tok = Tokenizer.fromString(fs.readFileSync(path.join(dir, name), 'utf8'));
    const ab = (await tok.encode('ab', null, { addSpecialTokens: false })).getIds();
    for (const run of runs) {
      const ids = [].concat(...run.map((b) => (b == 'ab' ? ab : [tok.tokenToId('<0x' + b + '>')])));
      process.stdout.write(JSON.stringify({ tokenizer: name, ids, decoded: await tok.decode(ids, false) }) + '\n');
    }
  }
})();
