/**
 * The loaders on hostile input: the cases of issue 11 one by one, then property tests (fast-check)
 * feeding random and mutated split files, CSVs and IDX files to the parsers. Whatever the input,
 * a loader returns valid data or throws a PromptclipError with a code; any other exception (a
 * TypeError, a RangeError, zlib's Z_DATA_ERROR) is a bug. The suite runs a bounded number of cases
 * (seconds); scripts/fuzz.sh runs many more through NUM_RUNS.
 */
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative, sep } from 'node:path'
import { gzipSync } from 'node:zlib'
import test, { type ExecutionContext } from 'ava'
import fc from 'fast-check'
import { loadCsv, loadIdx, loadImageFolder, loadSplitFile, PromptclipError, readIdx } from 'promptclip'
// parseCsv is internal (loadCsv is its public face); its own errors are the sources' PromptclipError.
import { parseCsv } from '../ts/datasets/csv'
import { PromptclipError as SourceError } from '../ts/errors'

const NUM_RUNS = Number(process.env.NUM_RUNS ?? 150)
/** A fixed seed unless fuzz.sh asks for a fresh one: the suite's runs are reproducible. */
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : 11

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

/** `f()`'s value, or undefined when it threw a PromptclipError with a code; anything else thrown
 *  is rethrown as a failure naming what was thrown. */
function codedOr<T>(f: () => T): T | undefined {
  try {
    return f()
  } catch (e) {
    if (e instanceof PromptclipError && /^E_[A-Z_]+$/.test(e.code)) return undefined
    const what = e instanceof Error ? `${e.constructor.name} ${(e as { code?: string }).code ?? ''}: ${e.message}` : e
    throw new Error(`not a PromptclipError: ${what}`)
  }
}

function throwsCoded(t: ExecutionContext, f: () => unknown, code: string, ...mentions: (string | RegExp)[]): void {
  const e = t.throws(f, { instanceOf: PromptclipError }) as PromptclipError | undefined
  t.is(e?.code, code as never)
  for (const m of mentions) t.regex(e?.message ?? '', typeof m === 'string' ? new RegExp(escapeRegex(m)) : m)
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** An image root with a/1.png, a/2.png, b/1.png (the bytes do not matter: loaders only check that
 *  the files exist). */
function imageRoot(): string {
  const root = tmp('split-root-')
  for (const f of ['a/1.png', 'a/2.png', 'b/1.png']) {
    mkdirSync(join(root, f, '..'), { recursive: true })
    writeFileSync(join(root, f), 'x')
  }
  return root
}

function idx(dims: number[], data: number[] | Uint8Array): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length)
  header.writeUInt8(8, 2)
  header.writeUInt8(dims.length, 3)
  for (const [i, d] of dims.entries()) header.writeUInt32BE(d, 4 + 4 * i)
  return Buffer.concat([header, Buffer.from(data)])
}

// ---- The cases, one by one ----

test('a split path that leaves the image root is refused, naming the file and the entry', (t) => {
  const root = imageRoot()
  const file = join(tmp('split-'), 'split.json')
  for (const rel of ['../../../../etc/passwd', 'a/../../../../etc/passwd', '/etc/passwd']) {
    writeFileSync(file, JSON.stringify({ train: [['a/1.png', 0, 'a']], val: [], test: [[rel, 0, 'a']] }))
    throwsCoded(t, () => loadSplitFile(file, root), 'E_INVALID_ARGUMENT', file, 'test[0]', rel, 'leaves the image root')
  }
})

test('a split label of 2e8 is refused at once, before a class list of that size is built', (t) => {
  const root = imageRoot()
  const file = join(tmp('split-'), 'split.json')
  writeFileSync(file, JSON.stringify({ train: [['a/1.png', 0, 'a']], val: [], test: [['a/2.png', 2e8, 'a']] }))
  const started = performance.now()
  throwsCoded(t, () => loadSplitFile(file, root), 'E_INVALID_ARGUMENT', file, 'test[0]', '200000000')
  // It took 21 s and 1.9 GB before; the bound makes it as quick as any other refusal.
  t.true(performance.now() - started < 1000)
})

test('train and test naming one label differently is refused, naming both entries', (t) => {
  const root = imageRoot()
  const file = join(tmp('split-'), 'split.json')
  writeFileSync(file, JSON.stringify({ train: [['a/1.png', 0, 'a']], val: [], test: [['a/2.png', 0, 'b']] }))
  throwsCoded(t, () => loadSplitFile(file, root), 'E_INVALID_ARGUMENT', 'test[0]', 'train[0]', '"a"', '"b"')
})

test('a split file that is JSON null, or holds a null entry, is refused by name', (t) => {
  const root = imageRoot()
  const file = join(tmp('split-'), 'split.json')
  for (const text of ['null', '[]', '3', '{"train":[null],"val":[],"test":[]}', '{"train":null,"val":[],"test":[]}']) {
    writeFileSync(file, text)
    throwsCoded(t, () => loadSplitFile(file, root), 'E_INVALID_ARGUMENT', file)
  }
})

test('IDX: 255 dimensions in a short file, bad gzip, a truncated gzip are refused by name', (t) => {
  const dir = tmp('idx-')
  const ndim = join(dir, 'ndim255.idx')
  writeFileSync(ndim, Buffer.from([0, 0, 8, 255, 0, 0, 0, 1]))
  throwsCoded(t, () => readIdx(ndim), 'E_INVALID_ARGUMENT', ndim, '255 dimensions')
  const bad = join(dir, 'bad.idx.gz')
  writeFileSync(bad, Buffer.from([0x1f, 0x8b, 1, 2, 3, 4]))
  throwsCoded(t, () => readIdx(bad), 'E_IO', bad, 'gzip')
  const cut = join(dir, 'cut.idx.gz')
  writeFileSync(cut, gzipSync(idx([4], [1, 2, 3, 4])).subarray(0, 15))
  throwsCoded(t, () => readIdx(cut), 'E_IO', cut, 'gzip')
})

test('IDX: a 1-D image file, or images of height or width 0, are refused (no image without a width)', (t) => {
  const dir = tmp('idx-')
  const labels = join(dir, 'labels.idx')
  writeFileSync(labels, idx([2], [0, 0]))
  for (const [name, dims] of [
    ['one-d', [2]],
    ['two-d', [2, 4]],
    ['zero-height', [2, 0, 3]],
    ['zero-width', [2, 3, 0]],
  ] as const) {
    const images = join(dir, `${name}.idx`)
    writeFileSync(images, idx([...dims], new Uint8Array(dims.reduce((a, b) => a * b, 1))))
    throwsCoded(t, () => loadIdx(images, labels), 'E_INVALID_ARGUMENT', images, 'n x h x w')
  }
})

test('a dangling symbolic link in an image folder is skipped and reported, not listed as an image', (t) => {
  const dir = tmp('folder-')
  mkdirSync(join(dir, 'cat'))
  writeFileSync(join(dir, 'cat', 'ok.png'), 'x')
  symlinkSync(join(dir, 'gone.png'), join(dir, 'cat', 'dangling.png'))
  symlinkSync(join(dir, 'gone-folder'), join(dir, 'dog'))
  const d = loadImageFolder(dir)
  t.deepEqual(d.images, [join(dir, 'cat', 'ok.png')])
  t.deepEqual(d.classNames, ['cat'])
  const broken = d.skipped.filter((s) => /broken symbolic link/.test(s.reason)).map((s) => s.path)
  t.deepEqual(broken.sort(), [join(dir, 'cat', 'dangling.png'), join(dir, 'dog')].sort())
})

// ---- Properties: only valid data or a PromptclipError ----

/** A split file's checks, as data: every label indexes the class names, every image is under the
 *  root, and each part's images and labels match up. */
function checkSplits(t: ExecutionContext, root: string, s: ReturnType<typeof loadSplitFile>): void {
  for (const part of [s.train, s.val, s.test]) {
    if (part.images.length !== part.labels.length) throw new Error('images and labels differ in length')
    for (const l of part.labels)
      if (!(Number.isInteger(l) && l >= 0 && l < part.classNames.length)) throw new Error(`label ${l}`)
    for (const p of part.images) {
      const rel = relative(root, p as string)
      if (rel.startsWith(`..${sep}`) || rel === '..') throw new Error(`${p} is outside the root`)
    }
  }
  t.pass()
}

const entry = fc.tuple(
  fc.constantFrom('a/1.png', 'a/2.png', 'b/1.png', 'c/9.png', '../a/1.png', '/etc/passwd', '', 'a/./1.png'),
  fc.oneof(
    fc.integer({ min: -1, max: 3 }),
    fc.constantFrom(2e8, 1.5, Number.MAX_SAFE_INTEGER, -0, 1e308),
    fc.constant(null),
    fc.string({ maxLength: 2 }),
  ),
  fc.oneof(fc.constantFrom('a', 'b', 'c', ''), fc.integer(), fc.constant(null)),
)
const part = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.array(fc.oneof({ weight: 9, arbitrary: entry }, { weight: 1, arbitrary: fc.jsonValue() }), {
      maxLength: 6,
    }),
  },
  { weight: 1, arbitrary: fc.jsonValue() },
)
const splitJson = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ train: part, val: part, test: part }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
  },
  { weight: 2, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v) ?? '') },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
)

/** Text with some characters replaced, dropped or doubled: near-valid input, where parsers break. */
function mutated(text: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc
    .tuple(
      text,
      fc.array(
        fc.tuple(fc.nat(), fc.constantFrom('replace', 'drop', 'double'), fc.string({ minLength: 1, maxLength: 2 })),
        { maxLength: 4 },
      ),
    )
    .map(([s, edits]) => {
      let out = s
      for (const [at, kind, ch] of edits) {
        if (out.length === 0) break
        const i = at % out.length
        out =
          kind === 'replace'
            ? out.slice(0, i) + ch + out.slice(i + 1)
            : kind === 'drop'
              ? out.slice(0, i) + out.slice(i + 1)
              : out.slice(0, i) + out[i] + out.slice(i)
      }
      return out
    })
}

test('property: split files load as valid splits or fail with a PromptclipError', (t) => {
  const root = imageRoot()
  const dir = tmp('split-prop-')
  let n = 0
  fc.assert(
    fc.property(fc.oneof(splitJson, mutated(splitJson)), (text) => {
      const file = join(dir, `s${n++ % 8}.json`)
      writeFileSync(file, text)
      const s = codedOr(() => loadSplitFile(file, root))
      if (s) checkSplits(t, root, s)
    }),
    { numRuns: NUM_RUNS * 4, seed: SEED },
  )
  t.pass()
})

const csvChar = fc.constantFrom('a', 'b', '1', ' ', ',', '"', '\n', '\r', '\r\n', '/', '.', 'é', '\ufeff')
const csvText = fc.oneof(
  fc.string({ unit: csvChar, maxLength: 60 }),
  fc
    .array(
      fc.tuple(
        fc.constantFrom('a/1.png', 'a/2.png', 'b/1.png', '"a/1.png"', 'x.png', ''),
        fc.constantFrom('a', 'b', '0', '1', '"a,b"', ''),
      ),
      { maxLength: 5 },
    )
    .map((rows) => ['path,label', ...rows.map((r) => r.join(','))].join('\n')),
)

test('property: parseCsv returns records or fails with a PromptclipError naming file:line', (t) => {
  fc.assert(
    fc.property(fc.oneof(csvText, mutated(csvText)), (text) => {
      try {
        const records = parseCsv(text, 'x.csv')
        for (const r of records)
          if (!Number.isInteger(r.line) || r.line < 1 || !r.fields.every((f) => typeof f === 'string'))
            throw new Error('bad record')
      } catch (e) {
        if (!(e instanceof SourceError) || !/^x\.csv:\d+: /.test(e.message)) throw e
      }
    }),
    { numRuns: NUM_RUNS * 4, seed: SEED },
  )
  t.pass()
})

test('property: loadCsv gives a valid dataset or a PromptclipError', (t) => {
  const root = imageRoot()
  const dir = tmp('csv-prop-')
  let n = 0
  fc.assert(
    fc.property(
      fc.oneof(csvText, mutated(csvText)),
      fc.option(fc.constantFrom<string[]>(['a', 'b'], ['b', 'a'], ['a'], ['a', 'a'])),
      (text, classNames) => {
        const file = join(dir, `l${n++ % 8}.csv`)
        writeFileSync(file, text)
        const d = codedOr(() => loadCsv(file, { imageRoot: root, ...(classNames ? { classNames } : {}) }))
        if (!d) return
        if (d.images.length === 0 || d.images.length !== d.labels.length) throw new Error('images and labels differ')
        for (const l of d.labels)
          if (!(Number.isInteger(l) && l >= 0 && l < d.classNames.length)) throw new Error(`label ${l}`)
      },
    ),
    { numRuns: NUM_RUNS * 2, seed: SEED },
  )
  t.pass()
})

const validIdx = fc
  .tuple(
    fc.integer({ min: 1, max: 3 }),
    fc.integer({ min: 1, max: 3 }),
    fc.integer({ min: 1, max: 3 }),
    fc.constantFrom(0, 1, 3),
  )
  .map(([n, h, w, c]) => idx(c === 0 ? [n, h, w] : [n, h, w, c], new Uint8Array(n * h * w * Math.max(c, 1)).fill(7)))
const byteEdits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 })
const idxBytes = fc.oneof(
  fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
  fc.tuple(validIdx, byteEdits, fc.nat()).map(([b, edits, cut]) => {
    const out = Buffer.from(b)
    for (const [at, v] of edits) out[at % out.length] = v
    return cut % 5 === 0 ? out.subarray(0, cut % (out.length + 1)) : out
  }),
)
const idxFile = fc.oneof(
  { weight: 3, arbitrary: idxBytes },
  { weight: 1, arbitrary: idxBytes.map((b) => gzipSync(b)) },
  {
    weight: 1,
    arbitrary: fc.tuple(idxBytes, byteEdits).map(([b, edits]) => {
      const z = gzipSync(b)
      for (const [at, v] of edits) z[2 + (at % (z.length - 2))] = v
      return z
    }),
  },
)

test('property: readIdx and loadIdx give consistent data or a PromptclipError', (t) => {
  const dir = tmp('idx-prop-')
  const [images, labels] = [join(dir, 'images.idx'), join(dir, 'labels.idx')]
  fc.assert(
    fc.property(
      idxFile,
      fc.oneof(idxFile, fc.constant(idx([1], [0])), fc.constant(idx([2], [0, 1]))),
      (imgBytes, labBytes) => {
        writeFileSync(images, imgBytes)
        writeFileSync(labels, labBytes)
        const r = codedOr(() => readIdx(images))
        if (r && r.dims.reduce((a, b) => a * b, 1) !== r.data.length) throw new Error('dims do not match the data')
        const d = codedOr(() => loadIdx(images, labels))
        if (!d) return
        for (const img of d.images) {
          if (typeof img !== 'object' || img instanceof Uint8Array) throw new Error('not a raw image')
          if (!(img.width >= 1 && img.height >= 1) || img.data.length !== img.width * img.height * img.channels)
            throw new Error(`bad image ${img.width}x${img.height}x${img.channels}`)
        }
        for (const l of d.labels) if (!(l >= 0 && l < d.classNames.length)) throw new Error(`label ${l}`)
      },
    ),
    { numRuns: NUM_RUNS * 4, seed: SEED },
  )
  t.pass()
})
