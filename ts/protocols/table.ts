/**
 * The papers' tables from a protocol's run records: accuracy (%) as mean ± std over seeds.
 *   few-shot:       a row per method, a column per shot count (CoOp's Figure 3 as a table)
 *   base-to-new:    base, new and H (CoCoOp's Table 1), H = 2BN / (B + N) per seed
 *   cross-dataset / domain generalisation: the source, each target and the targets' average
 *                   (CoCoOp's Tables 2 and 3)
 */
import { formatMeanStd, harmonic, mean } from '../report'
import type { ProtocolMethod, RunRecord } from './index'
import { methodTitle, type ResolvedOptions, ZERO_SHOT_METHODS } from './plan'

/** Accuracy of one split across a method's seeds at one shot count (zero-shot: one value). */
export interface SeriesPoint {
  method: ProtocolMethod
  shots: number
  split: string
  /** One value per seed, in seed order. */
  values: number[]
  seeds: number[]
}

/** Every (method, shots, split) with its per-seed accuracies; H is a split of its own. */
export function collectSeries(o: ResolvedOptions, records: RunRecord[]): SeriesPoint[] {
  const points = new Map<string, SeriesPoint>()
  const add = (method: ProtocolMethod, shots: number, split: string, seed: number, value: number) => {
    const key = `${method}|${shots}|${split}`
    const p = points.get(key) ?? { method, shots, split, values: [], seeds: [] }
    p.values.push(value)
    p.seeds.push(seed)
    points.set(key, p)
  }
  const sorted = [...records].sort((a, b) => a.run.seed - b.run.seed)
  for (const r of sorted) {
    const acc = new Map(r.evaluations.map((e) => [e.split, e.accuracy]))
    for (const [split, a] of acc) add(r.run.method, r.run.shots, split, r.run.seed, a)
    if (o.protocol === 'base-to-new' && acc.has('base') && acc.has('new')) {
      add(r.run.method, r.run.shots, 'H', r.run.seed, harmonic(acc.get('base') as number, acc.get('new') as number))
    }
    const targets = o.targets.map((t) => o.labels[t]).filter((t) => acc.has(t))
    if (targets.length > 0 && targets.length === o.targets.length) {
      add(r.run.method, r.run.shots, 'average', r.run.seed, mean(targets.map((t) => acc.get(t) as number)))
    }
  }
  return [...points.values()]
}

function markdown(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`
  const rule = `|${head.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`
  return [line(head), rule, ...rows.map(line)].join('\n')
}

export function formatProtocolTable(o: ResolvedOptions, records: RunRecord[]): string {
  const series = collectSeries(o, records)
  const cell = (method: ProtocolMethod, shots: number, split: string) => {
    const p = series.find((s) => s.method === method && s.shots === shots && s.split === split)
    return formatMeanStd(p ? p.values : null, 2)
  }
  const seeds = o.seeds.join(', ')
  const learners = o.methods.filter((m) => !ZERO_SHOT_METHODS.includes(m))
  const baselines = o.methods.filter((m) => ZERO_SHOT_METHODS.includes(m))
  // Zero-shot baselines take no shots: their rows sit at "0" (few-shot) or in every shot's table.
  const rowsFor = (shots: number) => [
    ...baselines.map((m) => ({ m, shots: 0, title: methodTitle(m) })),
    ...learners.map((m) => ({ m, shots, title: methodTitle(m) })),
  ]

  if (o.protocol === 'few-shot') {
    const cols = [...(baselines.length > 0 ? [0] : []), ...o.shots]
    const head = ['Method', ...cols.map((k) => (k === 0 ? 'zero-shot' : `${k} shot${k === 1 ? '' : 's'}`))]
    const rows = o.methods.map((m) => [
      methodTitle(m),
      ...cols.map((k) => (ZERO_SHOT_METHODS.includes(m) === (k === 0) ? cell(m, k, 'test') : '—')),
    ])
    return `Few-shot accuracy (%) on ${o.labels[o.dataset]}, mean ± std over seeds ${seeds}\n\n${markdown(head, rows)}`
  }

  const splits =
    o.protocol === 'base-to-new'
      ? ['base', 'new', 'H']
      : ['test', ...o.targets.map((t) => o.labels[t]), ...(o.targets.length > 1 ? ['average'] : [])]
  const titles = splits.map((s) =>
    s === 'base'
      ? 'Base'
      : s === 'new'
        ? 'New'
        : s === 'test'
          ? `${o.labels[o.dataset]} (source)`
          : s === 'average'
            ? 'Average'
            : s,
  )
  const what =
    o.protocol === 'base-to-new'
      ? 'Base-to-new accuracy (%)'
      : o.protocol === 'cross-dataset'
        ? 'Cross-dataset transfer accuracy (%)'
        : 'Domain generalisation accuracy (%)'
  const tables = o.shots.map((shots) => {
    const rows = rowsFor(shots).map(({ m, shots: k, title }) => [title, ...splits.map((s) => cell(m, k, s))])
    const heading = `${what} on ${o.labels[o.dataset]}, ${shots} shots, mean ± std over seeds ${seeds}`
    return `${heading}\n\n${markdown(['Method', ...titles], rows)}`
  })
  return tables.join('\n\n')
}
