// The conformance texts: fixed cases plus seeded random strings (deterministic).
'use strict';
const fs = require('fs');
const path = require('path');

function brownSentences(brownDir, maxFiles, perFile) {
  const out = [];
  const files = fs.readdirSync(brownDir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
  const step = Math.max(1, Math.floor(files.length / maxFiles));
  for (let i = 0; i < files.length && out.length < maxFiles * perFile; i += step) {
    const lines = fs.readFileSync(path.join(brownDir, files[i]), 'utf8').split('\n')
      .map((l) => l.trim()).filter((l) => l.length > 0);
    for (const l of lines.slice(0, perFile)) {
      // word/tag -> word (split at the last '/')
      out.push(l.split(/\s+/).map((w) => { const k = w.lastIndexOf('/'); return k > 0 ? w.slice(0, k) : w; }).join(' '));
    }
  }
  // A few whole paragraphs with newlines.
  return out;
}

// Deterministic PRNG (mulberry32).
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const RANGES = [
  [0x20, 0x7e], [0x20, 0x7e], [0x20, 0x7e], [0x09, 0x0d], [0x30, 0x39], [0xa0, 0xff], [0x100, 0x17f],
  [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f],
  [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f], [0x3000, 0x30ff], [0x4e00, 0x9fa5], [0xac00, 0xd7a3],
  [0xff00, 0xffef], [0x1f300, 0x1f64f], [0x1f900, 0x1f9ff], [0x1d400, 0x1d7ff],
];

function randomTexts(n, seed) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(r() * 40);
    let s = '';
    for (let k = 0; k < len; k++) {
      const [a, b] = RANGES[Math.floor(r() * RANGES.length)];
      const cp = a + Math.floor(r() * (b - a + 1));
      s += String.fromCodePoint(cp);
      if (r() < 0.15) s += ' ';
    }
    out.push(s);
  }
  return out;
}

const FIXED = [
  '', ' ', '  ', '   leading', 'trailing   ', 'a  b   c    d', '\n', '\n\n', '\n\n\n\nx', 'x\n \n  \n',
  ' \r\n', 'a\r\nb\rc\n', '\t\tindented\ttabs\t', ' \t \n \t ', 'end with newline\n', 'x' + ' '.repeat(17) + 'y',
  '0', '7 8 9', '1234567890', '3.14159', '1,000,000.50', '+1 (555) 010-9999', 'v2.0.1-rc3', '2024-01-31T12:34:56Z',
  '\u0663\u0664\u0665 \u0967\u0968', '²³¹ ½ ⅔', 'Ⅻ ⅻ', '１２３',
  "I'm you're he'll we've she'd it's don't", "I'M YOU'RE HE'LL WE'VE SHE'D IT'S DON'T", "'s 't 're 've 'm 'll 'd",
  "x's x'S x'ſ rock'n'roll ''quoted'' 'tis", "can't won't shan't y'all o'clock",
  '中文分词测试，包括标点符号。', '日本語のテキスト：ひらがな、カタカナ、漢字。', '한국어 텍스트입니다.', '繁體中文與简体中文混合',
  'مرحبا بالعالم، هذا نص عربي.', 'שלום עולם', 'नमस्ते दुनिया, यह हिंदी है।', 'สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง',
  'Привет, мир! Ёжик в тумане.', 'Γειά σου Κόσμε· ΑΒΓ αβγ ς', 'გამარჯობა', 'Բարեւ', 'வணக்கம் உலகம்', 'হ্যালো বিশ্ব',
  'Tiếng Việt có dấu: Đây là một câu.', 'Türkçe İıĞğŞş', 'Straße ẞ groß', 'ﬁﬂ ligatures ﬀ', 'ＡＢＣ fullwidth ｱｲｳ',
  '👍 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 ❤️ 🧑🏿‍💻', 'emoji🙂inside😀words', '\u200d\u200d zwj alone \u200b zwsp \ufeff bom',
  'e\u0301 vs \u00e9', 'A\u030a vs \u00c5 vs \u212b', 'n\u0303 a\u0300\u0301\u0302 stacked', 'ḱ̷̨̛̤̣̜̝̩̬ zalgo',
  '\u0085 nel \u180e mvs \u2028 ls \u2029 ps \u00a0 nbsp \u3000 ideographic', '\u0000 nul \u0001 \u001f \u007f del',
  'def f(x):\n    return x ** 2  # square\n', 'for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n',
  '{"key": [1, 2.5, null], "nested": {"a": "b\\n"}}', '<div class="x">&amp; &lt;tag&gt;</div>', 'SELECT * FROM t WHERE id=42;',
  'https://example.com/path?q=1&r=two#frag', 'user@example.org', '$ ls -la | grep foo > out.txt 2>&1',
  '!!!???...,,,;;;', '—–-‐ “quotes” ‘single’ «guillemets» …', '¡Hola! ¿Qué tal?', '\\ backslash \\\\ double',
  'a'.repeat(3000), 'ab'.repeat(1500), ' '.repeat(2000), '\n'.repeat(500), '!'.repeat(1000), '9'.repeat(700),
  '中'.repeat(800), '🙂'.repeat(300), 'word '.repeat(400), ('The quick brown fox. ').repeat(100),
];

// Texts with the tokenizer's own special / added tokens inside.
function specialTexts(specials) {
  const out = [];
  const s = specials.slice(0, 6);
  if (s.length === 0) return out;
  out.push(s.join(''));
  out.push(s.map((t) => ' ' + t + ' x').join(''));
  for (const t of s) {
    out.push(`hello ${t} world`, `${t}${t}`, `a${t}b`, `  ${t}  `, `${t.slice(0, -1)}`, `x${t.slice(1)}`, `\n${t}\n`);
  }
  return out;
}

function allTexts(brownDir, specials) {
  return [...FIXED, ...brownSentences(brownDir, 25, 8), ...randomTexts(250, 1234), ...specialTexts(specials)];
}

module.exports = { allTexts };
