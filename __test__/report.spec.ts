/**
 * The HTML report (ts/protocols/report.ts on the page of ts/report.ts), the one report of the
 * protocols and the demo, on synthetic base-to-new runs with the demo's extras: the page is
 * written atomically, its PNGs decode to the given pixels, and — in Debian's chromium, driven by
 * playwright-core — it renders offline without errors: every chart is an SVG with its marks, the
 * table has every method, the example images load. Set REPORT_SCREENSHOT=/path.png to keep a
 * full-page screenshot (and the page).
 */
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inflateSync } from 'node:zlib'
import test from 'ava'
import { rng } from '../ts/datasets'
import type { RawImage } from '../ts/options'
import { encodePng } from '../ts/png'
import type { EvalRecord, ProtocolMethod, RunRecord } from '../ts/protocols'
import type { ReportPlan } from '../ts/protocols/plan'
import { type ReportExtras, renderProtocolReport } from '../ts/protocols/report'
import { escapeHtml } from '../ts/report'
import { formatMeanStd } from '../ts/stats'
import { writeFileAtomic } from '../ts/writeAtomic'
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
const BASE = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14].map((i) => CLASSES[i])
const NEW = [5, 6, 7, 8, 9, 15, 16, 17, 18, 19].map((i) => CLASSES[i])
const SEEDS = [1, 2, 3]
const TITLES = ['Zero-shot CLIP', 'Prompt ensembling', 'Linear probe', 'CoOp', 'CoCoOp', 'KgCoOp', 'CLIP-Adapter']

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

/** Base-to-new runs of seven methods (the zero-shot baselines once, the learners on three seeds),
 *  as the runner records them; the linear probe cannot score the new half. */
function syntheticRuns(): { plan: ReportPlan; runs: RunRecord[]; extras: ReportExtras } {
  const rand = rng(7)
  const evaluation = (split: string, classNames: string[], around: number, withoutImages = -1): EvalRecord => {
    const perClass = classNames.map((name, i) => ({
      name,
      accuracy: i === withoutImages ? null : Math.round(Math.min(100, around + (rand() - 0.5) * 40) * 10) / 10,
      support: i === withoutImages ? 0 : 50,
    }))
    const confusion: [number, number, number][] = []
    for (let t = 0; t < classNames.length; t++) {
      for (let p = 0; p < classNames.length; p++) {
        const count = t === p ? 20 + Math.floor(rand() * 30) : rand() < 0.4 ? Math.floor(rand() * 8) : 0
        if (count > 0) confusion.push([t, p, count])
      }
    }
    const accuracy = Math.round((around + (rand() - 0.5) * 6) * 10) / 10
    return {
      split,
      dataset: 'clothes-and-digits',
      classNames,
      total: 500,
      correct: Math.round(5 * accuracy),
      accuracy,
      errorRate: 100 - accuracy,
      macroF1: accuracy,
      topK: [{ k: 1, accuracy }],
      perClass,
      confusion,
      skipped: 0,
      seconds: 1,
    }
  }
  const record = (method: ProtocolMethod, seed: number, base: number, nu: number | null): RunRecord => {
    const shots = seed === 0 ? 0 : 16
    return {
      run: { method, dataset: 'clothes-and-digits', shots, seed },
      config: { model: { path: 'fixtures/tiny-clip-hf' } },
      // Zero-shot CLIP has no test images of the last new class.
      evaluations: [
        evaluation('base', BASE, base),
        ...(nu === null ? [] : [evaluation('new', NEW, nu, method === 'zero-shot' ? 9 : -1)]),
      ],
      unsupported: nu === null ? ['new'] : [],
      train: null,
      timings: { trainSeconds: 0, evalSeconds: 1, totalSeconds: 1 },
      versions: {},
      executedBy: { host: 'test', pid: 1, device: 'cpu' },
      finishedAt: '2025-01-01T00:00:00.000Z',
    }
  }
  const learners: [ProtocolMethod, number, number | null][] = [
    ['linear-probe', 78, null],
    ['coop', 82, 35],
    ['cocoop', 77, 45],
    ['kgcoop', 75, 48],
    ['clip-adapter', 80, 44],
  ]
  const runs = [
    record('zero-shot', 0, 41, 44),
    record('ensemble', 0, 44, 46),
    ...SEEDS.flatMap((seed) => learners.map(([m, b, n]) => record(m, seed, b, n))),
  ]
  const plan: ReportPlan = {
    protocol: 'base-to-new',
    dataset: 'clothes-and-digits',
    targets: [],
    methods: ['zero-shot', 'ensemble', 'linear-probe', 'coop', 'cocoop', 'kgcoop', 'clip-adapter'],
    shots: [16],
    seeds: SEEDS,
    labels: { 'clothes-and-digits': 'clothes-and-digits' },
  }
  const images = Array.from({ length: 12 }, (_, k) => {
    const label = NEW[k % 10]
    const other = NEW[(k + 3) % 10]
    return { image: ring(k, rand), label, before: k % 3 === 0 ? label : other, after: k % 4 === 3 ? other : label }
  })
  const extras: ReportExtras = {
    title: 'promptclip demo: base-to-new, 16 shots',
    seconds: 754.3,
    examples: { after: 'CoCoOp', images },
    context: {
      learner: 'CoOp',
      words: [
        ['photo', 'picture', 'image', 'snapshot'],
        ['of', 'with', 'from', 'in'],
        ['a', 'the', 'an', 'one'],
        ['small', 'tiny', 'little', 'mini'],
      ],
    },
  }
  return { plan, runs, extras }
}

function syntheticReport(): string {
  const { plan, runs, extras } = syntheticRuns()
  return renderProtocolReport(plan, runs, 'fixtures/tiny-clip-hf', extras)
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
  const html = syntheticReport()
  t.false(html.includes('bag <i>'), 'a class name is put into the page unescaped')
  t.regex(html, /bag &#60;i&#62;&#38;&#34;&#39;/)
  // No external resources: nothing but inline scripts, data: images and the $schema id.
  const markup = html.replace(/(<script[^>]*>)[\s\S]*?<\/script>/g, '$1</script>')
  t.deepEqual(markup.match(/<script[^>]*\ssrc=|<link[^>]*href=|src="(?!data:)|url\(/g), null)
})

test('the report is written atomically: the folder is created and no temporary file is left', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-report-'))
  try {
    const path = join(dir, 'a', 'b', 'report.html')
    writeFileAtomic(path, syntheticReport())
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
    const path = join(dir, 'out', 'report.html')
    writeFileAtomic(path, syntheticReport())
    await withReportPage(path, async ({ page, problems, warnings, remote }) => {
      const marks = (id: string) => chartMarks(page, id)
      // 19 bars: seven methods x base/new/H, less the linear probe's new and H; a dot per run
      // (the two zero-shot baselines ran once, the learners on 3 seeds).
      t.like(await marks('chart-base-to-new-16'), { svg: true, bars: 19, rules: 19, points: 2 * 3 + 3 + 4 * 3 * 3 })
      // CoOp (the first learner that scores every class, chosen first): all 20 classes.
      t.like(await marks('chart-per-class'), { svg: true, bars: 20, texts: 20 })
      // The selector switches methods: the linear probe has only the 10 base classes.
      await page.selectOption('#chart-per-class select', 'Linear probe')
      await page.waitForFunction(
        'document.querySelectorAll("#chart-per-class .mark-rect.role-mark path").length === 10',
      )
      t.like(await marks('chart-per-class'), { bars: 10 })
      // A confusion matrix per method, the first (zero-shot CLIP's, on the base classes) open.
      t.is(await page.locator('#confusion details').count(), TITLES.length)
      const confusion = await marks('chart-confusion-0')
      t.like(confusion, { svg: true, bars: 100 })
      t.true(confusion.texts > 10)

      const rows: string[][] = []
      for (const tr of await page.locator('table.results tbody tr').all()) {
        rows.push((await tr.locator('th, td').allTextContents()).map((s) => s.trim()))
      }
      t.deepEqual(
        rows.map((r) => r[0]),
        TITLES,
      )
      for (const [name, ...cells] of rows) {
        for (const [j, cell] of cells.entries()) {
          if (name === 'Linear probe' && j > 0) t.is(cell, '—')
          // The zero-shot baselines ran once: one value, no spread.
          else if (name === 'Zero-shot CLIP' || name === 'Prompt ensembling') t.regex(cell, /^\d+\.\d\d$/, name)
          else t.regex(cell, /^\d+\.\d\d ± \d+\.\d\d$/, `${name}, column ${j}`)
        }
      }
      t.is(await page.locator('table.results td.best').count(), 3)
      t.regex((await page.textContent('header')) ?? '', /shots 16[\s\S]*seeds 1, 2, 3[\s\S]*12 min 34 s/)
      t.regex((await page.textContent('header')) ?? '', /base[\s\S]*T-shirt\/top[\s\S]*new[\s\S]*sandal/)
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
