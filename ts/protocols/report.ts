/**
 * A protocol's HTML report, the one report there is (the demo's is its base-to-new report with the
 * demo's extras), on the page and charts of ts/report.ts (Vega-Lite, inlined): the table, then the
 * protocol's plot (accuracy against shots per method, as CoOp's Figure 3; base / new / H bars;
 * accuracy per target dataset), accuracy per class, confusion matrices, and what a caller adds:
 * test images labelled before and after learning, a learner's context as words.
 */

import { CONFIG, confusionSpec, perClassSpec, SCHEMA, summarySpec } from '../charts'
import type { RawImage } from '../options'
import { pngDataUri } from '../png'
import { escapeHtml, renderPage } from '../report'
import { formatDuration, formatMeanStd, mean, std } from '../stats'
import { methodTitle, type ReportPlan, ZERO_SHOT_METHODS } from './plan'
import { collectSeries, perClassTable, type ResultTable, resultTables } from './table'
import type { ProtocolMethod, RunRecord } from './types'

/** What a caller adds to a report (the demo: its time, examples and CoOp's words). */
export interface ReportExtras {
  /** The page's title (default "promptclip: <protocol> on <dataset>"). */
  title?: string
  /** How long the call that made the runs took. */
  seconds?: number
  /** Test images with their true label and the labels before (zero-shot CLIP) and after learning
   *  (by the learner `after`, a method's title). */
  examples?: { after: string; images: { image: RawImage; label: string; before: string; after: string }[] }
  /** A learner's context (`learner`, a method's title): for each position, its nearest words. */
  context?: { learner: string; words: string[][] }
}

/** Confusion matrices and per-class bars beyond this many classes are left to results.json. */
const MAX_CHART_CLASSES = 100

/** Accuracy against shots (log2 axis): a line with ± std band per learner, zero-shot baselines
 *  as dashed horizontal rules. */
function shotsSpec(o: ReportPlan, records: RunRecord[]): object {
  const series = collectSeries(o, records).filter((s) => s.split === 'test')
  const learners = series
    .filter((s) => !ZERO_SHOT_METHODS.includes(s.method))
    .map((s) => {
      const mu = mean(s.values)
      const sd = std(s.values)
      return {
        method: methodTitle(s.method),
        shots: s.shots,
        mean: mu,
        lo: mu - sd,
        hi: mu + sd,
        text: formatMeanStd(s.values, 2),
      }
    })
  const baselines = series
    .filter((s) => ZERO_SHOT_METHODS.includes(s.method))
    .map((s) => ({ method: methodTitle(s.method), mean: s.values[0], text: s.values[0].toFixed(2) }))
  const order = o.methods.map((m) => methodTitle(m))
  const color = { field: 'method', type: 'nominal', sort: order, scale: { domain: order }, title: null }
  const x = {
    field: 'shots',
    type: 'quantitative',
    scale: { type: 'log', base: 2, domain: [Math.min(...o.shots), Math.max(...o.shots)] },
    axis: { values: o.shots, format: 'd' },
    title: 'labelled images per class',
  }
  const y = { type: 'quantitative', title: 'accuracy (%)', scale: { zero: false } }
  const tooltip = [{ field: 'method' }, { field: 'shots' }, { field: 'text', title: 'mean ± std' }]
  return {
    $schema: SCHEMA,
    config: CONFIG,
    width: 520,
    height: 320,
    // The line layer comes first, so that the shared colour legend draws line symbols.
    layer: [
      {
        data: { values: learners },
        mark: { type: 'line', point: true },
        encoding: {
          x,
          y: { ...y, field: 'mean' },
          color: { ...color, legend: { symbolType: 'stroke', symbolStrokeWidth: 2.5 } },
          tooltip,
        },
      },
      {
        data: { values: learners },
        mark: { type: 'area', opacity: 0.15 },
        encoding: { x, y: { ...y, field: 'lo' }, y2: { field: 'hi' }, color },
      },
      {
        data: { values: baselines },
        mark: { type: 'rule', strokeDash: [6, 4] },
        encoding: {
          y: { ...y, field: 'mean' },
          color,
          tooltip: [{ field: 'method' }, { field: 'text', title: 'acc' }],
        },
      },
    ],
  }
}

/** Grouped bars: accuracy per dataset (source and targets), one bar per method. */
function transferSpec(o: ReportPlan, records: RunRecord[], shots: number): object {
  const series = collectSeries(o, records).filter((s) => s.shots === shots || s.shots === 0)
  const datasets = ['test', ...o.targets.map((t) => o.labels[t]), ...(o.targets.length > 1 ? ['average'] : [])]
  const label = (s: string) => (s === 'test' ? `${o.labels[o.dataset]} (source)` : s)
  const values = series
    .filter((s) => datasets.includes(s.split))
    .map((s) => ({
      method: methodTitle(s.method),
      dataset: label(s.split),
      mean: mean(s.values),
      text: formatMeanStd(s.values, 2),
    }))
  const order = o.methods.map((m) => methodTitle(m))
  return {
    $schema: SCHEMA,
    config: CONFIG,
    data: { values },
    width: { step: Math.max(60, 18 * order.length), for: 'position' },
    height: 260,
    mark: { type: 'bar' },
    encoding: {
      x: { field: 'dataset', type: 'nominal', sort: datasets.map(label), title: null, axis: { labelAngle: -30 } },
      xOffset: { field: 'method', type: 'nominal', sort: order },
      y: { field: 'mean', type: 'quantitative', scale: { domain: [0, 100] }, title: 'accuracy (%)' },
      color: { field: 'method', type: 'nominal', sort: order, scale: { domain: order }, title: null },
      tooltip: [{ field: 'method' }, { field: 'dataset' }, { field: 'text', title: 'mean ± std' }],
    },
  }
}

/** Base / new / H per method, from the base-to-new table of `shots`. */
function baseNewSpec(table: ResultTable): object {
  return summarySpec(table.rows.map((r) => ({ name: r.title, base: r.cells[0], new: r.cells[1], h: r.cells[2] })))
}

/** Accuracy per class of each method on one draw, or null beyond MAX_CHART_CLASSES classes. */
function perClassSection(o: ReportPlan, records: RunRecord[]): { spec: object; note: string } | null {
  const t = perClassTable(o, records)
  if (t.classNames.length === 0 || t.classNames.length > MAX_CHART_CLASSES || t.rows.length === 0) return null
  // First shown: the first learner that scores every class (else the first row).
  const full = t.rows.find(
    (r) => !ZERO_SHOT_METHODS.includes(r.method) && r.accuracy.every((a, i) => a !== null || !scoredByAny(t, i)),
  )
  const spec = perClassSpec({
    classNames: t.classNames,
    splits: t.splits,
    rows: t.rows.map((r) => ({ name: r.title, accuracy: r.accuracy })),
    initial: (full ?? t.rows[0]).title,
  })
  const halves =
    o.protocol === 'base-to-new'
      ? 'Base classes from the base-class evaluation, new classes from the new-class one. '
      : ''
  return { spec, note: `${t.shots} shots, seed ${t.seed}. ${halves}` }
}

/** Whether any method has an accuracy for class `i` (a class without test images has none). */
function scoredByAny(t: ReturnType<typeof perClassTable>, i: number): boolean {
  return t.rows.some((r) => r.accuracy[i] !== null)
}

/** The confusion matrix of each method on the first split, at the most shots and the first seed. */
function confusions(o: ReportPlan, records: RunRecord[]): { method: ProtocolMethod; spec: object; note: string }[] {
  const shots = Math.max(...o.shots)
  const seed = Math.min(...o.seeds)
  const out: { method: ProtocolMethod; spec: object; note: string }[] = []
  for (const m of o.methods) {
    const r = records.find(
      (x) => x.run.method === m && (ZERO_SHOT_METHODS.includes(m) || (x.run.shots === shots && x.run.seed === seed)),
    )
    const e = r?.evaluations[0]
    if (!r || !e || e.classNames.length > MAX_CHART_CLASSES) continue
    const k = e.classNames.length
    const matrix = Array.from({ length: k }, () => new Array<number>(k).fill(0))
    for (const [t, p, c] of e.confusion) matrix[t][p] = c
    const when = ZERO_SHOT_METHODS.includes(m) ? '' : `, ${shots} shots, seed ${seed}`
    out.push({ method: m, spec: confusionSpec({ classNames: e.classNames, matrix }), note: `${e.split}${when}` })
  }
  return out
}

/** The tables (resultTables', as in results.md) as HTML: each heading, then its table, the best
 *  mean of each column in bold, each cell's seeds in its hover text. */
function tableHtml(tables: ResultTable[]): string {
  return tables
    .map((t) => {
      const best = t.columns.map((_, j) =>
        Math.max(
          ...t.rows.map((r) => (r.cells[j] && r.cells[j].values.length > 0 ? mean(r.cells[j].values) : -Infinity)),
        ),
      )
      const th = ['Method', ...t.columns].map(
        (c, i) => `<th scope="col"${i > 0 ? ' class="num"' : ''}>${escapeHtml(c)}</th>`,
      )
      const tr = t.rows.map((r) => {
        const cells = r.cells.map((c, j) => {
          if (!c || c.values.length === 0) return '<td class="num na">—</td>'
          const cls = mean(c.values) === best[j] ? 'num best' : 'num'
          const seeds = c.values.map((v, i) =>
            c.seeds[i] === 0 ? `one run: ${v.toFixed(2)}` : `seed ${c.seeds[i]}: ${v.toFixed(2)}`,
          )
          return `<td class="${cls}" title="${escapeHtml(seeds.join(', '))}">${escapeHtml(formatMeanStd(c.values, 2))}</td>`
        })
        return `<tr><th scope="row">${escapeHtml(r.title)}</th>${cells.join('')}</tr>`
      })
      return `<p class="caption">${escapeHtml(t.heading)}</p>
<table class="results"><thead><tr>${th.join('')}</tr></thead><tbody>
${tr.join('\n')}
</tbody></table>`
    })
    .join('\n')
}

/** Test images with their labels before and after learning, the changes framed. */
function examplesGrid(examples: NonNullable<ReportExtras['examples']>): string {
  const list = examples.images
  if (list.length === 0) return '<p class="note">No example images in this run.</p>'
  const figures = list.map((ex, i) => {
    const okBefore = ex.before === ex.label
    const okAfter = ex.after === ex.label
    const state = !okBefore && okAfter ? ' fixed' : okBefore && !okAfter ? ' broken' : ''
    const pred = (when: string, p: string, ok: boolean) =>
      `<span class="pred ${ok ? 'ok' : 'bad'}" title="${escapeHtml(`${when}: ${p}`)}">${ok ? '✓' : '✗'} ${when}: ${escapeHtml(p)}</span>`
    return `<figure class="example${state}">
<img src="${pngDataUri(ex.image)}" width="${ex.image.width * 4}" height="${ex.image.height * 4}" alt="${escapeHtml(`test image ${i + 1}, a ${ex.label}`)}">
<figcaption><span class="label">${escapeHtml(ex.label)}</span>${pred('before', ex.before, okBefore)}${pred('after', ex.after, okAfter)}</figcaption>
</figure>`
  })
  const fixed = list.filter((e) => e.before !== e.label && e.after === e.label).length
  const broken = list.filter((e) => e.before === e.label && e.after !== e.label).length
  const before = list.filter((e) => e.before === e.label).length
  const after = list.filter((e) => e.after === e.label).length
  return `<p class="note">Before = zero-shot CLIP, after = ${escapeHtml(examples.after)}. Correct before: ${before} of ${list.length}, after: ${after}; fixed ${fixed} (green frame), broke ${broken} (red frame).</p>
<div class="examples">
${figures.join('\n')}
</div>`
}

/** A learner's context vectors, each as its nearest words. */
function contextList(words: string[][]): string {
  if (words.length === 0) return '<p class="note">No learned context in this run.</p>'
  const items = words.map((w) => {
    if (w.length === 0) return '<li><span class="rest">(no words)</span></li>'
    const [first, ...rest] = w
    const tail = rest.length > 0 ? ` <span class="rest">· ${rest.map(escapeHtml).join(' · ')}</span>` : ''
    return `<li><span class="first">${escapeHtml(first)}</span>${tail}</li>`
  })
  return `<p class="note">For each of the ${words.length} context vectors, the vocabulary words whose embeddings are nearest (closest first). The vectors are continuous, so these words are only an approximate reading.</p>
<ol class="context">
${items.join('\n')}
</ol>`
}

/** Base-to-new's two halves of the classes, as the runs recorded them. */
function halvesHtml(records: RunRecord[]): string {
  const names = (split: string) =>
    records.flatMap((r) => r.evaluations.filter((e) => e.split === split)).at(0)?.classNames
  const base = names('base')
  const novel = names('new')
  if (!base || !novel) return ''
  const list = (xs: string[]) => xs.map(escapeHtml).join(', ')
  return `
<dl class="classes">
<dt><span class="swatch" style="background:var(--base)"></span>base</dt><dd>${list(base)}</dd>
<dt><span class="swatch" style="background:var(--new)"></span>new</dt><dd>${list(novel)}</dd>
</dl>`
}

/** The report of a protocol's runs (`records`, every run the results files hold) as one
 *  self-contained HTML page, with what `extras` adds. */
export function renderProtocolReport(
  o: ReportPlan,
  records: RunRecord[],
  model: string,
  extras: ReportExtras = {},
): string {
  const specs: Record<string, object> = {}
  const sections: string[] = []
  const tables = resultTables(o, records)
  sections.push(`<section id="table">
<h2>Results</h2>
${tableHtml(tables)}
<p class="note">Accuracy in %, mean ± standard deviation (n − 1) over seeds; hover a cell for the per-seed values. Best mean in each column in bold. Zero-shot baselines take no training images and run once.${o.protocol === 'base-to-new' ? ' Methods learn on the base classes only and are tested on each half separately; H is the harmonic mean 2·base·new / (base + new), per seed.' : ''} “—”: the method cannot score those classes.</p>
</section>`)
  if (o.protocol === 'few-shot' && o.shots.length > 0) {
    specs['chart-shots'] = shotsSpec(o, records)
    sections.push(`<section id="shots"><h2>Accuracy against shots</h2><div class="chart" id="chart-shots"></div>
<p class="note">Lines: mean over seeds, band: ± one standard deviation; dashed: zero-shot baselines (no training images).</p></section>`)
  }
  for (const table of o.protocol === 'few-shot' ? [] : tables) {
    const shots = table.shots as number
    const id = `chart-${o.protocol}-${shots}`
    specs[id] = o.protocol === 'base-to-new' ? baseNewSpec(table) : transferSpec(o, records, shots)
    const title = o.protocol === 'base-to-new' ? 'Base, new and H' : 'Accuracy per dataset'
    const note =
      o.protocol === 'base-to-new'
        ? '<p class="note">Bars: mean over seeds; black line: ± one standard deviation; dots: the individual runs.</p>'
        : ''
    sections.push(`<section><h2>${title} (${shots} shots)</h2><div class="chart" id="${id}"></div>${note}</section>`)
  }
  const perClass = perClassSection(o, records)
  if (perClass) {
    specs['chart-per-class'] = perClass.spec
    sections.push(`<section id="per-class"><h2>Accuracy per class</h2>
<p class="note">${escapeHtml(perClass.note)}Choose the method below; a missing bar means the method gave no accuracy for that class.</p>
<div class="chart" id="chart-per-class"></div></section>`)
  }
  const cms = confusions(o, records)
  if (cms.length > 0) {
    const parts = cms.map(({ method, spec, note }, i) => {
      const id = `chart-confusion-${i}`
      specs[id] = spec
      return `<details${i === 0 ? ' open' : ''}><summary>${escapeHtml(methodTitle(method))} (${escapeHtml(note)})</summary><div class="chart" id="${id}"></div></details>`
    })
    sections.push(`<section id="confusion"><h2>Confusion matrices</h2>
<p class="note">Rows: true class; columns: predicted class; colour: share of the row.</p>
${parts.join('\n')}</section>`)
  }
  if (extras.examples) {
    sections.push(`<section id="examples"><h2>Test images, before and after learning</h2>
${examplesGrid(extras.examples)}</section>`)
  }
  if (extras.context) {
    sections.push(`<section id="context"><h2>${escapeHtml(extras.context.learner)}'s learned context, as nearest words</h2>
${contextList(extras.context.words)}</section>`)
  }
  const title = extras.title ?? `promptclip: ${o.protocol} on ${o.labels[o.dataset]}`
  const took = extras.seconds !== undefined ? ` · ran in <b>${escapeHtml(formatDuration(extras.seconds))}</b>` : ''
  const body = `<header><h1>${escapeHtml(title)}</h1>
<p class="meta">Model <b>${escapeHtml(model)}</b> · ${escapeHtml(o.protocol)} on <b>${escapeHtml(o.labels[o.dataset])}</b> · methods <b>${escapeHtml(o.methods.map((m) => methodTitle(m)).join(', '))}</b> · shots <b>${escapeHtml(o.shots.join(', '))}</b> · seeds <b>${escapeHtml(o.seeds.join(', '))}</b>${o.targets.length > 0 ? ` · targets <b>${escapeHtml(o.targets.map((t) => o.labels[t]).join(', '))}</b>` : ''}${took}</p>${o.protocol === 'base-to-new' ? halvesHtml(records) : ''}</header>
${sections.join('\n')}`
  return renderPage({ title, body, specs })
}
