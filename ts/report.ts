/**
 * The one HTML report page, shared by every report (a protocol's, and the demo's, which is its
 * base-to-new protocol's report with the demo's extras; ts/protocols/report.ts composes it): the
 * page shell (one self-contained file, no network needed to open it, with the minified builds of
 * Vega, Vega-Lite and vega-embed inlined from dist/vendor/), its Vega-Lite charts, the numbers'
 * formatting, PNG data URIs for images, and atomic writes. Internal to the CLI; not part of the
 * package's API.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { deflateSync } from 'node:zlib'
import { packageRequire } from './binding'
import type { RawImage } from './options'

interface Library {
  name: string
  version: string
  source: string
}
let libraries: Library[] | undefined

/**
 * Reads the three minified builds once, from dist/vendor/ of this package, where the build put
 * them (scripts/vendor.cjs): the package ships those files instead of depending on Vega.
 */
export function vegaLibraries(): Library[] {
  libraries ??= (() => {
    const vendor = join(dirname(packageRequire.resolve('promptclip/package.json')), 'dist', 'vendor')
    let list: { name: string; version: string; file: string }[]
    try {
      list = JSON.parse(readFileSync(join(vendor, 'libraries.json'), 'utf8'))
    } catch {
      throw new Error(`${vendor}/libraries.json is missing: the report's charts come from the build (npm run build)`)
    }
    return list.map(({ name, version, file }) => {
      let source = readFileSync(join(vendor, file), 'utf8')
        .replace(/\n\/\/# sourceMappingURL=\S*\s*$/, '\n')
        // Inside a <script> element the only text that needs care is "</script" (and "<!--"): both can
        // only occur in strings, regexes or comments of valid code, where "<\/" means the same.
        .replace(/<\/(script)/gi, '<\\/$1')
      if (source.includes('<!--')) throw new Error(`${file} contains "<!--"; cannot inline it in a <script>`)
      source = source.trimEnd()
      return { name, version, source }
    })
  })()
  return libraries
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export function escapeHtml(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** JSON for a <script type="application/json"> element: no "<" can end or disturb the element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029')
}

export function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length
}

/** H, the harmonic mean of base and new accuracy (the papers' base-to-new summary). */
export function harmonic(base: number, novel: number): number {
  return base + novel === 0 ? 0 : (2 * base * novel) / (base + novel)
}

/** Sample standard deviation (n - 1), as Vega's "stdev" aggregate; 0 for a single value. */
export function std(xs: number[]): number {
  if (xs.length < 2) return 0
  const m = mean(xs)
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1))
}

/** "mean ± std" with one decimal (or `digits`); just the value for one seed; "—" for none. */
export function formatMeanStd(xs: number[] | null, digits = 1): string {
  if (!xs || xs.length === 0) return '—'
  if (xs.length === 1) return xs[0].toFixed(digits)
  return `${mean(xs).toFixed(digits)} ± ${std(xs).toFixed(digits)}`
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?'
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s - 60 * m)} s`
  return `${Math.floor(m / 60)} h ${m % 60} min`
}

// ---------------------------------------------------------------------------------------------
// PNG (greyscale, RGB or RGBA, 8 bits, no interlace), for the example images' data URIs

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function pngChunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 'latin1')
  out.set(data, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** Encodes raw 8-bit pixels as a PNG file (filter 0 on every row, zlib via node:zlib). */
export function encodePng(image: RawImage): Buffer {
  const { width, height, channels, data } = image
  if (![width, height].every((v) => Number.isInteger(v) && v > 0) || ![1, 3, 4].includes(channels)) {
    throw new TypeError('encodePng: an image needs positive integer width/height and 1, 3 or 4 channels')
  }
  const row = width * channels
  if (!(data instanceof Uint8Array) || data.length < row * height) {
    throw new TypeError(`encodePng: ${width}x${height}x${channels} needs ${row * height} bytes, got ${data?.length}`)
  }
  const raw = Buffer.alloc((row + 1) * height)
  for (let y = 0; y < height; y++) raw.set(data.subarray(y * row, (y + 1) * row), y * (row + 1) + 1)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = channels === 1 ? 0 : channels === 3 ? 2 : 6 // colour type: grey, RGB, RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', new Uint8Array(0)),
  ])
}

export function pngDataUri(image: RawImage): string {
  return `data:image/png;base64,${encodePng(image).toString('base64')}`
}

// ---------------------------------------------------------------------------------------------
// The charts (Vega-Lite specs)

export const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json'
const SPLIT_COLOURS = { base: '#4c78a8', new: '#f58518', H: '#54a24b' }
export const CONFIG = {
  font: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
  view: { stroke: null },
  axis: { labelFontSize: 11, titleFontSize: 12, grid: true, gridColor: '#eee' },
  legend: { labelFontSize: 11, titleFontSize: 12 },
}

/** One method's accuracies on one split, with the seed of each (a zero-shot run's is 0). */
export type SeedValues = { values: number[]; seeds: number[] } | null

/** Grouped bars of base / new / H per method: mean over seeds, ± std rules, one dot per seed. */
export function summarySpec(rows: { name: string; base: SeedValues; new: SeedValues; h: SeedValues }[]): object {
  const methods = rows.map((m) => m.name)
  const splits = ['base', 'new', 'H'] as const
  const stats: object[] = []
  const points: object[] = []
  for (const m of rows) {
    for (const split of splits) {
      const cell = split === 'base' ? m.base : split === 'new' ? m.new : m.h
      const xs = cell?.values ?? []
      if (!cell || xs.length === 0) continue
      const mu = mean(xs)
      const sd = std(xs)
      stats.push({ method: m.name, split, mean: mu, lo: mu - sd, hi: mu + sd, text: formatMeanStd(xs) })
      xs.forEach((acc, i) => {
        points.push({ method: m.name, split, seed: cell.seeds[i] ?? i, acc })
      })
    }
  }
  // A band per method, narrower as methods are added, so that the chart fits the page (960 px).
  const step = Math.max(60, Math.min(120, Math.floor(960 / Math.max(1, methods.length))))
  const x = { field: 'method', type: 'nominal', sort: methods, title: null, axis: { labelAngle: 0, labelLimit: step } }
  const xOffset = { field: 'split', type: 'nominal', sort: [...splits] }
  const y = { type: 'quantitative', scale: { domain: [0, 100] }, title: 'accuracy (%)' }
  return {
    $schema: SCHEMA,
    config: CONFIG,
    // The step is per method (the x band), not per bar of the group.
    width: { step, for: 'position' },
    height: 260,
    layer: [
      {
        data: { values: stats },
        mark: { type: 'bar', width: { band: 0.9 } },
        encoding: {
          x,
          xOffset,
          y: { ...y, field: 'mean' },
          color: {
            field: 'split',
            type: 'nominal',
            scale: { domain: [...splits], range: splits.map((s) => SPLIT_COLOURS[s]) },
            legend: { title: null, orient: 'top' },
          },
          tooltip: [
            { field: 'method', title: 'method' },
            { field: 'split', title: 'classes' },
            { field: 'text', title: 'mean ± std' },
          ],
        },
      },
      {
        data: { values: stats },
        mark: { type: 'rule', strokeWidth: 1.5, color: '#333' },
        encoding: { x, xOffset, y: { ...y, field: 'lo' }, y2: { field: 'hi' } },
      },
      {
        data: { values: points },
        mark: { type: 'point', filled: true, size: 22, color: '#fff', stroke: '#222', strokeWidth: 1, opacity: 0.9 },
        encoding: {
          x,
          xOffset,
          y: { ...y, field: 'acc' },
          tooltip: [
            { field: 'method' },
            { field: 'split', title: 'classes' },
            { field: 'seed' },
            { field: 'acc', title: 'accuracy (%)', format: '.1f' },
          ],
        },
      },
    ],
  }
}

/**
 * Bars per class, coloured by the split that scored it (base, new; a test split as base); one
 * method at a time, chosen in a select (first `initial`). A class a method has no accuracy for has
 * no bar.
 */
export function perClassSpec(t: {
  classNames: string[]
  splits: string[]
  rows: { name: string; accuracy: (number | null)[] }[]
  initial: string
}): object {
  const order = t.classNames
  const methods = t.rows.map((p) => p.name)
  const values = t.rows.flatMap((p) =>
    t.classNames.map((cls, i) => ({
      method: p.name,
      cls,
      half: t.splits[i],
      acc: p.accuracy[i] ?? null,
    })),
  )
  const halves = [...new Set(t.splits)]
  const x = {
    field: 'cls',
    type: 'nominal',
    sort: order,
    scale: { domain: order },
    title: null,
    axis: { labelAngle: -40, labelLimit: 120 },
  }
  const y = { field: 'acc', type: 'quantitative', scale: { domain: [0, 100] }, title: 'accuracy (%)' }
  return {
    $schema: SCHEMA,
    config: CONFIG,
    params: [
      {
        name: 'method',
        value: methods.includes(t.initial) ? t.initial : methods[0],
        bind: { input: 'select', options: methods, name: 'method: ' },
      },
    ],
    data: { values },
    transform: [{ filter: 'datum.method === method' }],
    width: { step: 34 },
    height: 220,
    layer: [
      {
        mark: { type: 'bar', width: { band: 0.8 } },
        encoding: {
          x,
          y,
          color: {
            field: 'half',
            type: 'nominal',
            scale: { domain: halves, range: halves.map((h) => (h === 'new' ? SPLIT_COLOURS.new : SPLIT_COLOURS.base)) },
            legend: { title: 'classes', orient: 'top' },
          },
          tooltip: [
            { field: 'cls', title: 'class' },
            { field: 'half', title: 'half' },
            { field: 'acc', title: 'accuracy (%)', format: '.1f' },
          ],
        },
      },
      {
        mark: { type: 'text', dy: -6, fontSize: 9, color: '#444' },
        encoding: { x, y, text: { field: 'acc', type: 'quantitative', format: '.0f' } },
      },
    ],
  }
}

/** Heatmap of confusion[true][predicted]: colour = share of the true class's images, text = count
 *  (counts are left out beyond 30 classes, where cells get too small to hold them). */
export function confusionSpec(confusion: { classNames: string[]; matrix: number[][] }): object {
  const { classNames, matrix } = confusion
  const k = classNames.length
  const values = matrix.flatMap((row, t) => {
    const total = row.reduce((a, b) => a + b, 0)
    return row.map((count, p) => ({
      true: classNames[t],
      pred: classNames[p],
      count,
      share: total > 0 ? (100 * count) / total : 0,
    }))
  })
  const x = { field: 'pred', type: 'nominal', sort: classNames, title: 'predicted', axis: { labelAngle: -40 } }
  const y = { field: 'true', type: 'nominal', sort: classNames, title: 'true class' }
  return {
    $schema: SCHEMA,
    config: { ...CONFIG, axis: { ...CONFIG.axis, grid: false } },
    data: { values },
    width: { step: k <= 30 ? 38 : Math.max(4, Math.floor(900 / k)) },
    height: { step: k <= 30 ? 30 : Math.max(4, Math.floor(900 / k)) },
    layer: [
      {
        mark: { type: 'rect', stroke: k <= 30 ? '#e1e6eb' : null, strokeWidth: 1 },
        encoding: {
          x,
          y,
          color: {
            field: 'share',
            type: 'quantitative',
            // From white (none of the row) to dark blue (all of it); Vega's "blues" starts too dark.
            scale: { domain: [0, 100], range: ['#f7fbff', '#08519c'], interpolate: 'rgb' },
            legend: { title: '% of row', orient: 'right' },
          },
          tooltip: [
            { field: 'true', title: 'true class' },
            { field: 'pred', title: 'predicted' },
            { field: 'count', title: 'images' },
            { field: 'share', title: '% of true class', format: '.1f' },
          ],
        },
      },
      {
        transform: [{ filter: `datum.count > 0 && ${k} <= 30` }],
        mark: { type: 'text', fontSize: 10 },
        encoding: {
          x,
          y,
          text: { field: 'count', type: 'quantitative' },
          color: { condition: { test: 'datum.share > 45', value: '#fff' }, value: '#222' },
        },
      },
    ],
  }
}

// ---------------------------------------------------------------------------------------------
// The page

export const CSS = `
:root { color-scheme: light; --base: ${SPLIT_COLOURS.base}; --new: ${SPLIT_COLOURS.new}; --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-top: 12px; border-top: 1px solid #d0d7de; }
.meta { color: #57606a; margin: 0 0 4px; }
.meta b { color: #1f2328; font-weight: 600; }
.classes { margin: 8px 0 0; display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; font-size: 13px; }
.classes dt { font-weight: 600; }
.classes dd { margin: 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
table.results { border-collapse: collapse; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
table.results th, table.results td { padding: 5px 14px; border-bottom: 1px solid #d8dee4; }
table.results th { text-align: left; background: #f6f8fa; font-weight: 600; }
table.results td.num, table.results th.num { text-align: right; }
table.results td.best { font-weight: 700; }
.note { color: #57606a; font-size: 12.5px; margin: 4px 0 12px; }
.chart { margin: 8px 0; overflow-x: auto; }
.chart .vega-bindings { margin: 4px 0 8px; font-size: 13px; }
.chart .error { color: var(--bad); font-family: ui-monospace, monospace; white-space: pre-wrap; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.example { margin: 0; padding: 8px; border: 1px solid #d0d7de; border-radius: 6px; background: #fff; }
.example img { display: block; width: 112px; height: auto; margin: 0 auto 6px; image-rendering: pixelated; background: #000; }
.example figcaption { font-size: 12px; line-height: 1.35; }
.example .label { font-weight: 600; }
.example .pred { display: block; overflow-wrap: anywhere; }
.example .ok { color: var(--ok); }
.example .bad { color: var(--bad); }
.example.fixed { border-color: var(--ok); box-shadow: inset 0 0 0 1px var(--ok); }
.example.broken { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
ol.context { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; padding-left: 2.5em; }
ol.context li { margin: 2px 0; }
ol.context .first { font-weight: 700; }
ol.context .rest { color: #57606a; }
p.caption { margin: 14px 0 4px; font-weight: 600; }
details summary { cursor: pointer; margin: 6px 0; }
footer { margin-top: 36px; color: #8c959f; font-size: 12px; }
`

/** One self-contained HTML page: `body` (the page's sections), then the chart libraries inlined,
 *  and a script that draws each spec of `specs` into the element with its id. */
export function renderPage(page: { title: string; body: string; specs: Record<string, object> }): string {
  const libs = vegaLibraries()
  const generated = new Date()
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC')
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(page.title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
${page.body}
<footer>Generated by promptclip on ${escapeHtml(generated)}. Charts: ${libs.map((l) => `${escapeHtml(l.name)} ${escapeHtml(l.version)}`).join(', ')}, inlined; the page needs no network.</footer>
</main>
${libs.map((l) => `<script>/* ${l.name} ${l.version} */\n${l.source}\n</script>`).join('\n')}
<script type="application/json" id="chart-specs">${scriptJson(page.specs)}</script>
<script>
(function () {
  var specs = JSON.parse(document.getElementById('chart-specs').textContent);
  window.chartsReady = Promise.all(Object.keys(specs).map(function (id) {
    var el = document.getElementById(id);
    return vegaEmbed(el, specs[id], { renderer: 'svg', actions: false }).catch(function (err) {
      console.error('chart ' + id + ' failed:', err);
      var msg = document.createElement('p');
      msg.className = 'error';
      msg.textContent = 'This chart could not be drawn: ' + (err && err.message ? err.message : err);
      el.appendChild(msg);
    });
  })).then(function () { document.body.setAttribute('data-charts', 'done'); });
})();
</script>
</body>
</html>
`
}

/** Writes `text` to `path` (creating its folder), atomically: a temporary file, then a rename, so
 *  that a reader (or a rerun after a crash) sees the old file or the new one, never half of one. */
export function writeFileAtomic(path: string, html: string): void {
  const dir = dirname(path)
  mkdirSync(dir, { recursive: true })
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${Date.now().toString(36)}.tmp`)
  try {
    writeFileSync(tmp, html)
    renameSync(tmp, path)
  } catch (err) {
    rmSync(tmp, { force: true })
    throw err
  }
}
