/**
 * Untrusted images must never abort or hang the host process (issue 11). The inputs that once
 * did (a long thin image, a decompression bomb, a FIFO, /dev/zero, a huge preprocessor size) are
 * read in a child `node` process, so that a regression shows as its exit status, signal and time
 * instead of killing the test runner; each child prints what the call returned as JSON.
 */
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createDeflate } from 'node:zlib'
import test from 'ava'
import { Clip } from 'promptclip'
import { HF_MODEL, IMAGES, png } from './helpers'

const TMP = mkdtempSync(join(tmpdir(), 'promptclip-robust-'))
const ROOT = join(import.meta.dirname ?? __dirname, '..')

interface ChildResult {
  status: number | null
  signal: NodeJS.Signals | null
  ms: number
  out: {
    failures?: { index: number; code: string; message: string }[]
    ok?: number[]
    error?: { code: string; message: string }
    maxRssMb: number
  }
  stderr: string
}

/**
 * Loads `model` and encodes `images` (file paths) in a child, with `env` added, killed after
 * `limitMs`; prints the failures, the indices read, or the load's error, and its peak memory.
 */
async function encodeInChild(
  images: string[],
  env: Record<string, string> = {},
  model = HF_MODEL,
  limitMs = 60_000,
): Promise<ChildResult> {
  const script = `
    const { Clip } = require('promptclip')
    const rss = () => Math.round(process.resourceUsage().maxRSS / 1024)
    ;(async () => {
      let out
      try {
        const clip = await Clip.load(${JSON.stringify(model)})
        const r = await clip.encodeImages(${JSON.stringify(images)})
        out = { failures: r.failures, ok: r.embeddings.flatMap((e, i) => (e ? [i] : [])) }
      } catch (e) {
        out = { error: { code: e.code, message: e.message } }
      }
      console.log(JSON.stringify({ ...out, maxRssMb: rss() }))
    })()
  `
  const start = Date.now()
  const child = spawn(process.execPath, ['-e', script], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: limitMs,
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => {
    stdout += d
  })
  child.stderr.on('data', (d) => {
    stderr += d
  })
  const [status, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null]
  const ms = Date.now() - start
  const last = stdout.trim().split('\n').pop() ?? ''
  return { status, signal, ms, out: last.startsWith('{') ? JSON.parse(last) : { maxRssMb: -1 }, stderr }
}

function exitedCleanly(t: import('ava').ExecutionContext, r: ChildResult, withinMs: number) {
  t.is(r.signal, null, `killed by ${r.signal}; stderr: ${r.stderr}`)
  t.is(r.status, 0, r.stderr)
  t.true(r.ms < withinMs, `took ${r.ms} ms`)
}

/** A grey PNG of zero pixels written row by row (never whole in memory): a decompression bomb. */
async function zeroPng(w: number, h: number): Promise<Buffer> {
  const z = createDeflate({ level: 9 })
  const parts: Buffer[] = []
  z.on('data', (c: Buffer) => parts.push(c))
  const rows = 100
  const block = Buffer.alloc((w + 1) * rows)
  for (let y = 0; y < h; y += rows) if (!z.write(block)) await once(z, 'drain')
  z.end()
  await once(z, 'end')
  // The header of a real PNG, with this size and the zero rows as its data.
  const head = png(1, 1, [0, 0, 0], 1)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 0, 0, 0, 0], 8)
  return Buffer.concat([head.subarray(0, 8), chunk('IHDR', ihdr), chunk('IDAT', Buffer.concat(parts)), chunk('IEND')])
}

function chunk(type: string, data = Buffer.alloc(0)): Buffer {
  let c = 0xffffffff
  for (const x of Buffer.concat([Buffer.from(type), data])) {
    c ^= x
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  }
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4)
  data.copy(out, 8)
  out.writeUInt32BE((c ^ 0xffffffff) >>> 0, 8 + data.length)
  return out
}

test('a long, thin image is refused at its index; the rest of the batch is read', async (t) => {
  const strip = join(TMP, 'strip.png')
  writeFileSync(strip, png(2_000_000, 1, [90, 120, 30], 3))
  const r = await encodeInChild([join(IMAGES, 'c_small_100x100.png'), strip])
  exitedCleanly(t, r, 30_000)
  t.deepEqual(r.out.ok, [0])
  const [f] = r.out.failures ?? []
  t.like(f, { index: 1, code: 'E_IMAGE_DECODE' })
  t.true(f.message.includes(strip) && f.message.includes('(2000000x1) resized'), f.message)
  t.true(r.out.maxRssMb < 1024, `peak ${r.out.maxRssMb} MB`)
})

test('raw pixels of a long, thin image are refused at their index', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = new Uint8Array(2_000_000 * 3)
  const r = await clip.encodeImages([{ width: 2_000_000, height: 1, channels: 3, data }])
  t.like(r.failures[0], { index: 0, code: 'E_IMAGE_DECODE' })
  t.regex(r.failures[0].message, /2000000x1.*over the limit/)
})

test('a preprocessor size of 60000 is refused when the model is loaded, with its field', async (t) => {
  for (const [size, field] of [
    [{ shortest_edge: 60000 }, 'size.shortest_edge` is 60000'],
    [2 ** 32 + 32, 'size` is 4294967328'],
  ] as const) {
    const dir = join(TMP, `model-${field.length}`)
    mkdirSync(dir, { recursive: true })
    for (const f of readdirSync(HF_MODEL)) copyFileSync(join(HF_MODEL, f), join(dir, f))
    const cfg = JSON.parse(readFileSync(join(HF_MODEL, 'preprocessor_config.json'), 'utf8'))
    writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify({ ...cfg, size }))
    const r = await encodeInChild([join(IMAGES, 'c_small_100x100.png')], {}, dir)
    exitedCleanly(t, r, 30_000)
    t.is(r.out.error?.code, 'E_BAD_CONFIG')
    t.true(r.out.error?.message.includes(field), r.out.error?.message)
  }
})

test('a decompression bomb is refused from its header, quickly and in little memory', async (t) => {
  const bomb = join(TMP, 'bomb.png')
  const bytes = await zeroPng(20_000, 20_000)
  t.true(bytes.length < 1 << 20, `${bytes.length} bytes`)
  writeFileSync(bomb, bytes)
  const r = await encodeInChild([bomb])
  exitedCleanly(t, r, 20_000)
  const [f] = r.out.failures ?? []
  t.like(f, { index: 0, code: 'E_IMAGE_DECODE' })
  t.true(f.message.includes(bomb) && f.message.includes('20000x20000, 400000000 pixels'), f.message)
  t.true(f.message.includes('PROMPTCLIP_MAX_IMAGE_PIXELS'), f.message)
  t.true(r.out.maxRssMb < 1024, `peak ${r.out.maxRssMb} MB`)
})

test('PROMPTCLIP_MAX_IMAGE_PIXELS moves the pixel budget; a malformed value is refused by name', async (t) => {
  const image = join(IMAGES, 'c_small_100x100.png')
  const over = await encodeInChild([image], { PROMPTCLIP_MAX_IMAGE_PIXELS: '9999' })
  exitedCleanly(t, over, 30_000)
  t.like(over.out.failures?.[0], { index: 0, code: 'E_IMAGE_DECODE' })
  t.true(over.out.failures?.[0].message.includes('100x100, 10000 pixels, over the limit of 9999'))
  const at = await encodeInChild([image], { PROMPTCLIP_MAX_IMAGE_PIXELS: '10000' })
  t.deepEqual(at.out.ok, [0])
  const bad = await encodeInChild([image], { PROMPTCLIP_MAX_IMAGE_PIXELS: 'lots' })
  t.like(bad.out.failures?.[0], { index: 0, code: 'E_INVALID_ARGUMENT' })
  t.true(bad.out.failures?.[0].message.includes('PROMPTCLIP_MAX_IMAGE_PIXELS is "lots"'))
})

test('a FIFO and /dev/zero are refused at once by name; a file over the byte limit too', async (t) => {
  const fifo = join(TMP, 'pipe.jpg')
  execFileSync('mkfifo', [fifo])
  const image = join(IMAGES, 'c_small_100x100.png')
  const r = await encodeInChild([fifo, '/dev/zero', image, TMP])
  exitedCleanly(t, r, 30_000)
  t.deepEqual(r.out.ok, [2])
  const byIndex = new Map((r.out.failures ?? []).map((f) => [f.index, f]))
  for (const [i, path, says] of [
    [0, fifo, 'a FIFO, not a regular file'],
    [1, '/dev/zero', 'a character device'],
    [3, TMP, 'a directory'],
  ] as const) {
    t.is(byIndex.get(i)?.code, 'E_IO')
    const message = byIndex.get(i)?.message ?? ''
    t.true(message.includes(path) && message.includes(says), message)
  }
  const size = readFileSync(image).length
  const small = await encodeInChild([image], { PROMPTCLIP_MAX_IMAGE_BYTES: String(size - 1) })
  t.like(small.out.failures?.[0], { index: 0, code: 'E_IO' })
  t.true(small.out.failures?.[0].message.includes(`the file is ${size} bytes, over the limit of ${size - 1}`))
})

test('the first third of a JPEG is refused as truncated, unless truncated images are accepted', async (t) => {
  const jpeg = readFileSync(join(IMAGES, 'a_landscape_320x240.jpg'))
  const third = join(TMP, 'third.jpg')
  writeFileSync(third, jpeg.subarray(0, Math.floor(jpeg.length / 3)))
  const r = await encodeInChild([join(IMAGES, 'a_landscape_320x240.jpg'), third])
  exitedCleanly(t, r, 30_000)
  t.deepEqual(r.out.ok, [0])
  t.like(r.out.failures?.[0], { index: 1, code: 'E_IMAGE_DECODE' })
  t.true(r.out.failures?.[0].message.includes(third) && r.out.failures?.[0].message.includes('truncated'))
  const lenient = await encodeInChild([third], { PROMPTCLIP_ACCEPT_TRUNCATED_IMAGES: '1' })
  t.deepEqual(lenient.out.ok, [0])
})

test('raw pixels whose width or height is 2^32 or more are refused with the field and value', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  // 2^32 + 10 used to be taken as 10, and 30 bytes are exactly 10 x 1 x 3.
  const data = new Uint8Array(30).fill(200)
  const r = await clip.encodeImages([
    { width: 10, height: 1, channels: 3, data },
    { width: 2 ** 32 + 10, height: 1, channels: 3, data },
    { width: 1, height: 2 ** 32 + 10, channels: 3, data },
  ])
  t.truthy(r.embeddings[0])
  t.is(r.embeddings[1], null)
  t.like(r.failures[0], { index: 1, code: 'E_INVALID_ARGUMENT' })
  t.regex(r.failures[0].message, /images\[1\]: raw image width 4294967306 is not a whole number/)
  t.like(r.failures[1], { index: 2, code: 'E_INVALID_ARGUMENT' })
  t.regex(r.failures[1].message, /images\[2\]: raw image height 4294967306/)
})
