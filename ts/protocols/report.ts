/**
 * A protocol's HTML report, with the demo's page and charting (ts/report.ts: Vega-Lite, inlined):
 * the table, then the protocol's plot (accuracy against shots per method, as CoOp's Figure 3;
 * base / new / H bars; accuracy per target dataset), then confusion matrices.
 */
import {
  CONFIG,
  confusionSpec,
  escapeHtml,
  formatMeanStd,
  harmonic,
  mean,
  renderPage,
  SCHEMA,
  std,
  summarySpec,
} from '../report'
import type { ProtocolMethod, RunRecord } from './index'
import { methodTitle, type ResolvedOptions, ZERO_SHOT_METHODS } from './plan'
import { collectSeries, formatProtocolTable } from './table'

/** Confusion matrices beyond this many classes are left to results.json. */
const MAX_CONFUSION_CLASSES = 100

/** Accuracy against shots (log2 axis): a line with ± std band per learner, zero-shot baselines
 *  as dashed horizontal rules. */
function shotsSpec(o: ResolvedOptions, records: RunRecord[]): object {
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
function transferSpec(o: ResolvedOptions, records: RunRecord[], shots: number): object {
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

/** Base / new / H per method, with the demo's chart. */
function baseNewSpec(o: ResolvedOptions, records: RunRecord[], shots: number): object {
  const methods = o.methods.map((m) => {
    const runs = records
      .filter((r) => r.run.method === m && (r.run.shots === shots || ZERO_SHOT_METHODS.includes(m)))
      .sort((a, b) => a.run.seed - b.run.seed)
    const acc = (split: string) =>
      runs.flatMap((r) => r.evaluations.filter((e) => e.split === split)).map((e) => e.accuracy)
    const base = acc('base')
    const nu = acc('new')
    return {
      name: methodTitle(m),
      base,
      new: nu.length > 0 ? nu : null,
      h: nu.length > 0 && nu.length === base.length ? base.map((b, i) => harmonic(b, nu[i])) : null,
    }
  })
  return summarySpec({ methods, seeds: o.seeds })
}

/** The confusion matrix of each method on the first split, at the most shots and the first seed. */
function confusions(
  o: ResolvedOptions,
  records: RunRecord[],
): { method: ProtocolMethod; spec: object; note: string }[] {
  const shots = Math.max(...o.shots)
  const seed = Math.min(...o.seeds)
  const out: { method: ProtocolMethod; spec: object; note: string }[] = []
  for (const m of o.methods) {
    const r = records.find(
      (x) => x.run.method === m && (ZERO_SHOT_METHODS.includes(m) || (x.run.shots === shots && x.run.seed === seed)),
    )
    const e = r?.evaluations[0]
    if (!r || !e || e.classNames.length > MAX_CONFUSION_CLASSES) continue
    const k = e.classNames.length
    const matrix = Array.from({ length: k }, () => new Array<number>(k).fill(0))
    for (const [t, p, c] of e.confusion) matrix[t][p] = c
    const when = ZERO_SHOT_METHODS.includes(m) ? '' : `, ${shots} shots, seed ${seed}`
    out.push({ method: m, spec: confusionSpec({ classNames: e.classNames, matrix }), note: `${e.split}${when}` })
  }
  return out
}

/** The markdown tables (formatProtocolTable's) as HTML: each heading line, then its table. */
function tableHtml(markdown: string): string {
  return markdown
    .split(/\n{2,}/)
    .map((block) => {
      const lines = block.split('\n')
      if (!lines[0].startsWith('|')) return `<p class="caption">${escapeHtml(block)}</p>`
      const cells = (line: string) =>
        line
          .slice(1, -1)
          .split('|')
          .map((c) => c.trim())
      const [head, , ...rows] = lines
      const th = cells(head).map((c, i) => `<th scope="col"${i > 0 ? ' class="num"' : ''}>${escapeHtml(c)}</th>`)
      const tr = rows.map((r) => {
        const [name, ...rest] = cells(r)
        return `<tr><th scope="row">${escapeHtml(name)}</th>${rest.map((c) => `<td class="num">${escapeHtml(c)}</td>`).join('')}</tr>`
      })
      return `<table class="results"><thead><tr>${th.join('')}</tr></thead><tbody>\n${tr.join('\n')}\n</tbody></table>`
    })
    .join('\n')
}

export function renderProtocolReport(o: ResolvedOptions, records: RunRecord[], model: string): string {
  const specs: Record<string, object> = {}
  const sections: string[] = []
  const table = formatProtocolTable(o, records)
  sections.push(`<section id="table">
<h2>Results</h2>
${tableHtml(table)}
<p class="note">Accuracy in %, mean ± standard deviation (n − 1) over seeds. Zero-shot baselines take no training images and run once. “—”: the method cannot score those classes.</p>
</section>`)
  if (o.protocol === 'few-shot' && o.shots.length > 0) {
    specs['chart-shots'] = shotsSpec(o, records)
    sections.push(`<section id="shots"><h2>Accuracy against shots</h2><div class="chart" id="chart-shots"></div>
<p class="note">Lines: mean over seeds, band: ± one standard deviation; dashed: zero-shot baselines (no training images).</p></section>`)
  }
  for (const shots of o.protocol === 'few-shot' ? [] : o.shots) {
    const id = `chart-${o.protocol}-${shots}`
    specs[id] = o.protocol === 'base-to-new' ? baseNewSpec(o, records, shots) : transferSpec(o, records, shots)
    const title = o.protocol === 'base-to-new' ? 'Base, new and H' : 'Accuracy per dataset'
    sections.push(`<section><h2>${title} (${shots} shots)</h2><div class="chart" id="${id}"></div></section>`)
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
  const title = `promptclip: ${o.protocol} on ${o.labels[o.dataset]}`
  const body = `<header><h1>${escapeHtml(title)}</h1>
<p class="meta">Model <b>${escapeHtml(model)}</b> · methods <b>${escapeHtml(o.methods.map((m) => methodTitle(m)).join(', '))}</b> · shots <b>${escapeHtml(o.shots.join(', '))}</b> · seeds <b>${escapeHtml(o.seeds.join(', '))}</b>${o.targets.length > 0 ? ` · targets <b>${escapeHtml(o.targets.map((t) => o.labels[t]).join(', '))}</b>` : ''}</p></header>
${sections.join('\n')}`
  return renderPage({ title, body, specs })
}
