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
