/**
 * What a new user runs first: the CLI's defaults on the built-in model and a folder of images.
 * Training with the defaults must learn (the model's own augmentation, from its
 * preprocessor_config.json), a few-shot run on small classes must not need a validation split
 * it does not use, and a one-class dataset is refused.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32, deflateSync } from 'node:zlib'
import test from 'ava'
import { BUILTIN_MODEL, Clip, fewShot, loadClothesAndDigits, PromptclipError, PromptLearner, Trainer } from 'promptclip'
import { HF_MODEL, png, RGB } from './helpers'

const CLI = join(import.meta.dirname ?? __dirname, '..', 'dist', 'cli.js')

/** A greyscale PNG of raw 8-bit pixels. */
function greyPng(w: number, h: number, data: Uint8Array): Buffer {
  const chunk = (type: string, body: Buffer) => {
    const td = Buffer.concat([Buffer.from(type), body])
    const out = Buffer.alloc(8 + body.length + 4)
    out.writeUInt32BE(body.length, 0)
    td.copy(out, 4)
    out.writeUInt32BE(crc32(td) >>> 0, 8 + body.length)
    return out
  }
  const raw = Buffer.alloc((w + 1) * h)
  for (let y = 0; y < h; y++) raw.set(data.subarray(y * w, (y + 1) * w), y * (w + 1) + 1)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 0, 0, 0, 0], 8)
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

/** The built-in model's data as a user's folder: train/<class>/ and test/<class>/ of PNGs. */
function writeFolder(root: string, trainPerClass: number, testPerClass: number) {
  for (const [split, n] of [
    ['train', trainPerClass],
    ['test', testPerClass],
  ] as const) {
    const data = fewShot(loadClothesAndDigits(split), n, 7)
    for (const [i, img] of data.images.entries()) {
      const name = data.classNames[data.labels[i]]
      if (name.includes('/')) continue // 'T-shirt/top' cannot be a folder name
      const dir = join(root, split, name)
      mkdirSync(dir, { recursive: true })
      const raw = img as { width: number; height: number; data: Uint8Array }
      writeFileSync(join(dir, `${i}.png`), greyPng(raw.width, raw.height, raw.data))
    }
  }
}

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 240_000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

test('train with the CLI defaults on the built-in model beats zero-shot', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-first-'))
  writeFolder(join(dir, 'photos'), 16, 20)
  const zs = cli(['eval', join(dir, 'photos'), '--json'])
  t.is(zs.status, 0, zs.stderr)
  const zeroShot = JSON.parse(zs.stdout).accuracy as number
  // Only what a new user types: the dataset and where the prompt goes.
  const tr = cli(['train', join(dir, 'photos'), '--out', join(dir, 'p.prompt'), '--json'])
  t.is(tr.status, 0, tr.stderr)
  const out = JSON.parse(tr.stdout)
  const trained = out.test?.accuracy ?? out.evaluation?.accuracy
  t.log(`zero-shot ${zeroShot.toFixed(1)}% -> CoOp with the defaults ${trained?.toFixed(1)}%`)
  t.true(typeof trained === 'number' && trained > zeroShot + 2, JSON.stringify(out).slice(0, 400))
  // The augmentation came from the model (its preprocessor_config.json), as the checkpoint's
  // recipe records: crops of half the image or more, no flips.
  const ckpt = readFileSync(join(dir, 'p.prompt.ckpt'))
  const header = JSON.parse(ckpt.subarray(8, 8 + Number(ckpt.readBigUInt64LE(0))).toString('utf8'))
  const recipe = JSON.parse(header.__metadata__.promptclip_checkpoint).run
  t.like(recipe, { augment: true, augment_scale: [0.5, 1], augment_flip_p: 0 })
})

test('a few-shot fit on classes with K images or fewer needs no validation split unless the method uses one', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = { images: RGB.slice(0, 2).map((c, i) => png(24, 24, c, i)), labels: [0, 1] }
  const empty = { images: [], labels: [] }
  const coop = PromptLearner.coop(clip, { classNames: ['red', 'green'], nCtx: 2 })
  const s = await new Trainer(coop, { epochs: 1, augment: false }).fit(data, { validation: empty })
  t.is(s.epochLoss.length, 1)
  const probe = PromptLearner.linearProbe(clip, { classNames: ['red', 'green'] })
  const e = await new Trainer(probe).fit(data, { validation: empty }).catch((err: unknown) => err)
  t.true(e instanceof PromptclipError && e.code === 'E_INVALID_ARGUMENT', String(e))
  t.regex((e as Error).message, /validation/)
})

test('a dataset of one class is refused, naming the class', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const coop = PromptLearner.coop(clip, { classNames: ['red', 'green'], nCtx: 2 })
  const data = { images: [png(24, 24, RGB[0], 1), png(24, 24, RGB[0], 2)], labels: [0, 0] }
  const e = await new Trainer(coop, { epochs: 1, augment: false }).fit(data).catch((err: unknown) => err)
  t.true(e instanceof PromptclipError && e.code === 'E_INVALID_ARGUMENT', String(e))
  t.regex((e as Error).message, /1 class \("red"\).*at least two classes/)
  // From the CLI, the folder is named.
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-one-'))
  mkdirSync(join(dir, 'cats'))
  for (let i = 0; i < 3; i++) writeFileSync(join(dir, 'cats', `${i}.png`), png(24, 24, RGB[1], i))
  const r = cli(['train', dir, '--model', HF_MODEL, '--epochs', '1', '--out', join(dir, 'p')])
  t.is(r.status, 2, r.stderr)
  t.regex(r.stderr, /1 class \("cats"\)/)
})

test('interpret shows words: byte pieces of a character are passed over for the next nearest word', async (t) => {
  const clip = await Clip.load(BUILTIN_MODEL)
  // '龘' is three byte-level tokens, none of them text alone: the context starts on them.
  t.is(clip.tokenize(['龘'])[0].length, 5)
  const learner = PromptLearner.coop(clip, { classNames: ['a', 'b'], ctxInit: '龘' })
  const rows = await learner.interpret({ topK: 3 })
  t.is(rows.length, 3)
  for (const row of rows) {
    t.is(row.tokens.length, 3)
    for (const w of row.tokens) t.false(w.token.includes('\uFFFD'), JSON.stringify(w))
    // Sorted by distance, and the byte piece itself (distance 0) is not among them.
    t.true(row.tokens.every((w, i) => i === 0 || w.distance >= row.tokens[i - 1].distance))
    t.true(row.tokens[0].distance > 0.01)
  }
})

/** A plain folder of classes as a user has one: `n[c]` PNGs of colour c in each class folder. */
function colourFolder(root: string, folders: string[], n: number[]) {
  for (const [c, folder] of folders.entries()) {
    mkdirSync(join(root, folder), { recursive: true })
    for (let i = 0; i < n[c]; i++) writeFileSync(join(root, folder, `${i}.png`), png(24, 24, RGB[c], 10 * c + i))
  }
}

test('--test-fraction and --val-fraction split a plain folder per class, seeded; --split reruns that split', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-split-'))
  const photos = join(dir, 'photos')
  colourFolder(photos, ['red', 'green', 'blue'], [8, 8, 3])
  const base = ['--model', HF_MODEL, '--epochs', '1', '--no-augment', '--json']
  const first = cli([
    'train',
    photos,
    ...base,
    '--test-fraction',
    '0.25',
    '--val-fraction',
    '0.25',
    '--out',
    join(dir, 'a'),
  ])
  t.is(first.status, 0, first.stderr)
  const split = JSON.parse(readFileSync(join(dir, 'a.split.json'), 'utf8')) as Record<
    'train' | 'val' | 'test',
    [string, number, string][]
  >
  // Per class (blue, green, red: the folder's sorted order): round(8 / 4) = 2 to test and 2 to
  // val; blue, of 3 images, keeps one to train.
  const perClass = (part: 'train' | 'val' | 'test') =>
    ['blue', 'green', 'red'].map((c) => split[part].filter((e) => e[2] === c).length)
  t.deepEqual(perClass('test'), [1, 2, 2])
  t.deepEqual(perClass('val'), [1, 2, 2])
  t.deepEqual(perClass('train'), [1, 4, 4])
  const all = [...split.train, ...split.val, ...split.test].map((e) => e[0])
  t.is(new Set(all).size, 19, 'no image in two splits, every image in one')
  t.true(
    all.every((p) => !p.startsWith('/') && !p.includes('\\')),
    'paths relative to the folder, with /',
  )
  const out = JSON.parse(first.stdout)
  t.is(out.trainImages, 9)
  t.is(out.test.total, 5)
  t.is(out.split, join(dir, 'a.split.json'))
  // The same seed draws the same split; another seed draws another.
  const again = cli([
    'train',
    photos,
    ...base,
    '--test-fraction',
    '0.25',
    '--val-fraction',
    '0.25',
    '--out',
    join(dir, 'b'),
  ])
  t.is(again.status, 0, again.stderr)
  t.deepEqual(JSON.parse(readFileSync(join(dir, 'b.split.json'), 'utf8')), split)
  const other = cli(['train', photos, ...base, '--test-fraction', '0.25', '--seed', '2', '--out', join(dir, 'c')])
  t.is(other.status, 0, other.stderr)
  t.notDeepEqual(JSON.parse(readFileSync(join(dir, 'c.split.json'), 'utf8')).test, split.test)
  // --split reads it back: the same images to train and test, the same test result.
  const rerun = cli(['train', photos, ...base, '--split', join(dir, 'a.split.json'), '--out', join(dir, 'd')])
  t.is(rerun.status, 0, rerun.stderr)
  const r = JSON.parse(rerun.stdout)
  t.is(r.trainImages, 9)
  t.deepEqual(r.test, out.test)
  // Bad shares are refused by name before anything is loaded.
  const bad = cli(['train', photos, ...base, '--test-fraction', '1'])
  t.is(bad.status, 2)
  t.regex(bad.stderr, /--test-fraction/)
  const both = cli(['train', photos, ...base, '--test-fraction', '0.6', '--val-fraction', '0.5'])
  t.is(both.status, 2)
  t.regex(both.stderr, /below 1/)
})

test('--shots K says once per class when a class has fewer than K images', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-short-'))
  colourFolder(join(dir, 'photos'), ['red', 'green', 'blue'], [6, 2, 3])
  const r = cli([
    'train',
    join(dir, 'photos'),
    '--model',
    HF_MODEL,
    '--epochs',
    '1',
    '--shots',
    '4',
    '--out',
    join(dir, 'p'),
  ])
  t.is(r.status, 0, r.stderr)
  const notes = r.stderr.split('\n').filter((l) => l.includes('fewer than 4 images'))
  // Classes in the folder's (sorted) order.
  t.deepEqual(notes, ['class blue has fewer than 4 images: using 3', 'class green has fewer than 4 images: using 2'])
})

test('--class-names renames folders and --classes picks some, in any case, suggesting the nearest', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-names-'))
  const photos = join(dir, 'photos')
  colourFolder(photos, ['dark_red', 'pale_green', 'sky_blue'], [3, 3, 3])
  writeFileSync(
    join(dir, 'names.json'),
    JSON.stringify({ dark_red: 'dark red', pale_green: 'pale green', sky_blue: 'sky blue' }),
  )
  const base = ['train', photos, '--model', HF_MODEL, '--epochs', '1', '--json', '--out', join(dir, 'p')]
  const r = cli([...base, '--class-names', join(dir, 'names.json'), '--classes', 'Dark Red,SKY BLUE'])
  t.is(r.status, 0, r.stderr)
  t.deepEqual(JSON.parse(r.stdout).classNames, ['dark red', 'sky blue'])
  t.is(JSON.parse(r.stdout).trainImages, 6)
  const typo = cli([...base, '--class-names', join(dir, 'names.json'), '--classes', 'dark red,sky blu'])
  t.is(typo.status, 2)
  t.regex(typo.stderr, /sky blu.*sky blue/)
})

test('--json lists templates (none given: []) and probabilities as numbers', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-json-'))
  colourFolder(join(dir, 'photos'), ['red', 'green'], [2, 2])
  const files = ['red', 'green'].flatMap((c) => [0, 1].map((i) => join(dir, 'photos', c, `${i}.png`)))
  const r = cli(['zeroshot', ...files, '--model', HF_MODEL, '--classes', 'red,green', '--json'])
  t.is(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  t.deepEqual(out.templates, [])
  t.true(Array.isArray(out.predictions) && out.predictions.length === 4)
  for (const p of out.predictions) {
    t.true(Array.isArray(p.top))
    for (const x of p.top) t.true(typeof x.probability === 'number' && x.probability >= 0 && x.probability <= 1)
  }
  const e = cli(['eval', join(dir, 'photos'), '--model', HF_MODEL, '--json'])
  t.is(e.status, 0, e.stderr)
  t.deepEqual(JSON.parse(e.stdout).templates, [])
})

test('demo takes --device, checked before any data is read', (t) => {
  const r = cli(['demo', '--device', 'gpu'])
  t.is(r.status, 2)
  t.regex(r.stderr, /--device.*cpu, cuda or cuda:N/)
  const missing = cli(['demo', '--device', 'cpu', '--data', '/nonexistent/fashion'])
  t.is(missing.status, 2)
  t.regex(missing.stderr, /E_FILE_NOT_FOUND/)
})

test('train --skip-unreadable leaves the unreadable image out of trainImages and exits 3, as every command', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-skip-'))
  const photos = join(dir, 'photos')
  colourFolder(photos, ['red', 'green'], [3, 3])
  writeFileSync(join(photos, 'red', 'broken.png'), png(24, 24, RGB[0], 99).subarray(0, 40))
  const args = [
    'train',
    photos,
    '--model',
    HF_MODEL,
    '--epochs',
    '1',
    '--no-augment',
    '--json',
    '--out',
    join(dir, 'p'),
  ]
  const refused = cli(args)
  t.is(refused.status, 2, refused.stderr)
  t.regex(refused.stderr, /broken\.png/)
  const r = cli([...args, '--skip-unreadable'])
  t.is(r.status, 3, r.stderr)
  const out = JSON.parse(r.stdout)
  t.is(out.trainImages, 6)
  t.is(out.skipped.length, 1)
  t.regex(r.stderr, /1 unreadable image was left out/)
})
