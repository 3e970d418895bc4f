/**
 * The demo's HTML report (ts/report.ts), on synthetic results: the page is written atomically, its
 * PNGs decode to the given pixels, and — in Debian's chromium, driven by playwright-core — it renders
 * offline without errors: every chart is an SVG with its marks, the table has the six methods, the
 * example images load. Set REPORT_SCREENSHOT=/path.png to keep a full-page screenshot (and the page).
 */
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inflateSync } from 'node:zlib'
import test from 'ava'
import { rng } from '../ts/datasets'
import type { RawImage } from '../ts/options'
import { type DemoResults, encodePng, escapeHtml, formatMeanStd, renderReport, writeReport } from '../ts/report'
import { browserTest, chartMarks, withReportPage } from './browser'

const CLASSES = [
  'T-shirt/top',
  'trouser',
  'pullover',
  'dress',
  'coat',
  'sandal',
  'shirt',
  'sneaker',
  'bag <i>&"\'',
  'ankle boot',
  ...Array.from({ length: 10 }, (_, d) => `digit ${d}`),
]
const BASE = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
const NEW = [5, 6, 7, 8, 9, 15, 16, 17, 18, 19]
const SEEDS = [1, 2, 3]

/** A 28x28 grey image: a ring whose radius depends on `k`, plus noise. */
function ring(k: number, rand: () => number): RawImage {
  const data = new Uint8Array(28 * 28)
  const r = 4 + (k % 8)
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const d = Math.hypot(x - 13.5, y - 13.5)
      const v = Math.max(0, 1 - Math.abs(d - r) / 2.5) * 230 + rand() * 25
      data[y * 28 + x] = Math.min(255, Math.round(v))
    }
  }
  return { width: 28, height: 28, channels: 1, data }
}

function syntheticResults(): DemoResults {
  const rand = rng(7)
  const perSeed = (m: number) => SEEDS.map(() => Math.round((m + (rand() - 0.5) * 6) * 10) / 10)
  const harmonic = (b: number[], n: number[]) => b.map((x, i) => (2 * x * n[i]) / (x + n[i]))
  const method = (name: string, base: number, nu: number | null) => {
    const b = perSeed(base)
    const n = nu === null ? null : perSeed(nu)
    return { name, base: b, new: n, h: n === null ? null : harmonic(b, n) }
  }
  const methods = [
    method('zero-shot', 41, 44),
    method('zero-shot (ensemble)', 44, 46),
    method('linear probe', 78, null),
    method('CoOp', 82, 35),
    method('CoCoOp', 77, 45),
    method('KgCoOp', 75, 48),
  ]
  const perClass = methods.map((m) => ({
    method: m.name,
    accuracy: CLASSES.map((_, i) => {
      if (m.new === null && NEW.includes(i)) return null
      if (m.name === 'zero-shot' && i === 19) return null // a class without test images
      return Math.round(rand() * 1000) / 10
    }),
  }))
  const confusionNames = NEW.slice(0, 10).map((i) => CLASSES[i])
  const matrix = confusionNames.map((_, t) =>
    confusionNames.map((_, p) => (t === p ? 20 + Math.floor(rand() * 30) : rand() < 0.4 ? Math.floor(rand() * 8) : 0)),
  )
  const examples = Array.from({ length: 12 }, (_, k) => {
    const label = CLASSES[NEW[k % 10]]
    const other = CLASSES[NEW[(k + 3) % 10]]
    return {
      image: ring(k, rand),
      label,
      before: k % 3 === 0 ? label : other,
      after: k % 4 === 3 ? other : label,
    }
  })
  return {
    model: 'fixtures/tiny-clip-hf',
    shots: 16,
    seeds: SEEDS,
    classNames: CLASSES,
    baseClasses: BASE,
    newClasses: NEW,
    methods,
    perClass,
    confusion: { method: 'CoOp', classNames: confusionNames, matrix },
    examples,
    contextWords: [
      ['photo', 'picture', 'image', 'snapshot'],
      ['of', 'with', 'from', 'in'],
      ['a', 'the', 'an', 'one'],
      ['small', 'tiny', 'little', 'mini'],
    ],
    seconds: 754.3,
  }
}

/** Reads a PNG back (8-bit, filter 0 rows only, as encodePng writes them): header fields and pixels. */
function decodePng(png: Buffer): RawImage & { colourType: number } {
  if (png.subarray(0, 8).toString('hex') !== '89504e470d0a1a0a') throw new Error('not a PNG')
  let off = 8
  let width = 0
  let height = 0
  let colourType = -1
  const idat: Buffer[] = []
  while (off < png.length) {
    const len = png.readUInt32BE(off)
    const type = png.toString('latin1', off + 4, off + 8)
    const body = png.subarray(off + 8, off + 8 + len)
    if (type === 'IHDR') {
      width = body.readUInt32BE(0)
      height = body.readUInt32BE(4)
      colourType = body[9]
    } else if (type === 'IDAT') idat.push(body)
    off += 12 + len
  }
  const channels = ({ 0: 1, 2: 3, 6: 4 } as Record<number, 1 | 3 | 4>)[colourType]
  const raw = inflateSync(Buffer.concat(idat))
  const row = width * channels
  const data = new Uint8Array(row * height)
  for (let y = 0; y < height; y++) {
    if (raw[y * (row + 1)] !== 0) throw new Error('unexpected filter')
    data.set(raw.subarray(y * (row + 1) + 1, (y + 1) * (row + 1)), y * row)
  }
  return { width, height, channels, data, colourType }
}

test('PNG encoding round-trips grey, RGB and RGBA pixels', (t) => {
  const rand = rng(1)
  for (const channels of [1, 3, 4] as const) {
    const data = Uint8Array.from({ length: 5 * 3 * channels }, () => Math.floor(rand() * 256))
    const back = decodePng(encodePng({ width: 5, height: 3, channels, data }))
    t.like(back, { width: 5, height: 3, channels, colourType: { 1: 0, 3: 2, 4: 6 }[channels] })
    t.deepEqual(back.data, data)
  }
  t.throws(() => encodePng({ width: 4, height: 4, channels: 1, data: new Uint8Array(15) }), { instanceOf: TypeError })
})

test('formatting and escaping', (t) => {
  t.is(formatMeanStd([1, 2, 3]), '2.0 ± 1.0')
  t.is(formatMeanStd([72.44]), '72.4')
  t.is(formatMeanStd(null), '—')
  t.is(escapeHtml('<a href="x">&\'</a>'), '&#60;a href=&#34;x&#34;&#62;&#38;&#39;&#60;/a&#62;')
  const html = renderReport(syntheticResults())
  t.false(html.includes('bag <i>'), 'a class name is put into the page unescaped')
  t.regex(html, /bag &#60;i&#62;&#38;&#34;&#39;/)
  // No external resources: nothing but inline scripts, data: images and the $schema id.
  const markup = html.replace(/(<script[^>]*>)[\s\S]*?<\/script>/g, '$1</script>')
  t.deepEqual(markup.match(/<script[^>]*\ssrc=|<link[^>]*href=|src="(?!data:)|url\(/g), null)
})

test('writeReport creates the folder and leaves no temporary file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-report-'))
  try {
    const path = join(dir, 'a', 'b', 'report.html')
    writeReport(syntheticResults(), path)
    t.deepEqual(readdirSync(join(dir, 'a', 'b')), ['report.html'])
    const html = readFileSync(path, 'utf8')
    t.true(html.startsWith('<!doctype html>'))
    t.log(`report size: ${(html.length / 1024).toFixed(0)} KiB`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

browserTest('the report renders offline in headless chromium: charts, table, images, no errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-report-'))
  const started = Date.now()
  try {
    const results = syntheticResults()
    const path = join(dir, 'out', 'report.html')
    writeReport(results, path)
    await withReportPage(path, async ({ page, problems, warnings, remote }) => {
      const marks = (id: string) => chartMarks(page, id)
      // 16 bars: six methods x base/new/H, less the linear probe's new and H; 3 seeds each.
      t.like(await marks('chart-summary'), { svg: true, bars: 16, rules: 16, points: 48 })
      // CoOp (the default choice): all 20 classes.
      t.like(await marks('chart-per-class'), { svg: true, bars: 20, texts: 20 })
      // The selector switches methods: the linear probe has only the 10 base classes.
      await page.selectOption('#chart-per-class select', 'linear probe')
      await page.waitForFunction(
        'document.querySelectorAll("#chart-per-class .mark-rect.role-mark path").length === 10',
      )
      t.like(await marks('chart-per-class'), { bars: 10 })
      const confusion = await marks('chart-confusion')
      t.like(confusion, { svg: true, bars: 100 })
      t.true(confusion.texts > 10)

      const rows: string[][] = []
      for (const tr of await page.locator('table.results tbody tr').all()) {
        rows.push((await tr.locator('th, td').allTextContents()).map((s) => s.trim()))
      }
      t.deepEqual(
        rows.map((r) => r[0]),
        results.methods.map((m) => m.name),
      )
      for (const [name, ...cells] of rows) {
        for (const [j, cell] of cells.entries()) {
          if (name === 'linear probe' && j > 0) t.is(cell, '—')
          else t.regex(cell, /^\d+\.\d ± \d+\.\d$/, `${name}, column ${j}`)
        }
      }
      t.regex((await page.textContent('header')) ?? '', /16 shots[\s\S]*seeds 1, 2, 3[\s\S]*12 min 34 s/)
      t.is(await page.locator('main i').count(), 0)

      const images: { complete: unknown; w: unknown; h: unknown }[] = []
      for (const img of await page.locator('.example img').all()) {
        const prop = (name: string) =>
          img.evaluate((el, name) => (el as unknown as Record<string, unknown>)[name], name)
        images.push({ complete: await prop('complete'), w: await prop('naturalWidth'), h: await prop('naturalHeight') })
      }
      t.is(images.length, 12)
      for (const img of images) t.deepEqual(img, { complete: true, w: 28, h: 28 })
      t.is(await page.locator('ol.context li').count(), 4)

      if (process.env.REPORT_SCREENSHOT) {
        await page.selectOption('#chart-per-class select', 'CoOp')
        await page.screenshot({ path: process.env.REPORT_SCREENSHOT, fullPage: true })
        copyFileSync(path, `${process.env.REPORT_SCREENSHOT}.html`)
        t.log(`screenshot: ${process.env.REPORT_SCREENSHOT}, page: ${process.env.REPORT_SCREENSHOT}.html`)
      }
      if (warnings.length > 0) t.log(`console warnings:\n${warnings.join('\n')}`)
      t.deepEqual(problems, [])
      t.deepEqual(remote, [], 'the page asked for something over the network')
    })
    t.log(`browser check: ${((Date.now() - started) / 1000).toFixed(1)} s`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
