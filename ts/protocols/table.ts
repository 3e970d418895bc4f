/**
 * The papers' tables from a protocol's run records: accuracy (%) as mean ± std over seeds.
 *   few-shot:       a row per method, a column per shot count (CoOp's Figure 3 as a table)
 *   base-to-new:    base, new and H (CoCoOp's Table 1), H = 2BN / (B + N) per seed
 *   cross-dataset / domain generalisation: the source, each target and the targets' average
 *                   (CoCoOp's Tables 2 and 3)
 */
import { formatMeanStd, harmonic, mean } from '../stats'
import { methodTitle, type ReportPlan, ZERO_SHOT_METHODS } from './plan'
import type { ProtocolMethod, RunRecord } from './types'

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
export function collectSeries(o: ReportPlan, records: RunRecord[]): SeriesPoint[] {
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

/** A cell of a table: one split's accuracies over seeds, or null where the method has none. */
export type TableCell = SeriesPoint | null

export interface TableRow {
  method: ProtocolMethod
  title: string
  cells: TableCell[]
}

/** One of a protocol's tables, the one model the markdown, the report's HTML table and the demo's
 *  terminal table are written from. */
export interface ResultTable {
  /** What the table shows, e.g. "Base-to-new accuracy (%) on digits, 16 shots, mean ± std over seeds 1, 2, 3". */
  heading: string
  /** The column titles after the method's. */
  columns: string[]
  /** The shot count of a table per shots (base-to-new and transfer); null for few-shot's one table. */
  shots: number | null
  rows: TableRow[]
}

/** The papers' tables of a protocol (few-shot: one; the others: one per shot count). */
export function resultTables(o: ReportPlan, records: RunRecord[]): ResultTable[] {
  const series = collectSeries(o, records)
  const cell = (method: ProtocolMethod, shots: number, split: string): TableCell =>
    series.find((s) => s.method === method && s.shots === shots && s.split === split) ?? null
  const seeds = o.seeds.join(', ')
  const learners = o.methods.filter((m) => !ZERO_SHOT_METHODS.includes(m))
  const baselines = o.methods.filter((m) => ZERO_SHOT_METHODS.includes(m))

  if (o.protocol === 'few-shot') {
    // Zero-shot baselines take no shots: their rows have one value, in the "zero-shot" column.
    const cols = [...(baselines.length > 0 ? [0] : []), ...o.shots]
    return [
      {
        heading: `Few-shot accuracy (%) on ${o.labels[o.dataset]}, mean ± std over seeds ${seeds}`,
        columns: cols.map((k) => (k === 0 ? 'zero-shot' : `${k} shot${k === 1 ? '' : 's'}`)),
        shots: null,
        rows: o.methods.map((m) => ({
          method: m,
          title: methodTitle(m),
          cells: cols.map((k) => (ZERO_SHOT_METHODS.includes(m) === (k === 0) ? cell(m, k, 'test') : null)),
        })),
      },
    ]
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
  // Zero-shot baselines take no shots: their rows are the same in every shot's table.
  return o.shots.map((shots) => ({
    heading: `${what} on ${o.labels[o.dataset]}, ${shots} shots, mean ± std over seeds ${seeds}`,
    columns: titles,
    shots,
    rows: [
      ...baselines.map((m) => ({ method: m, title: methodTitle(m), cells: splits.map((s) => cell(m, 0, s)) })),
      ...learners.map((m) => ({ method: m, title: methodTitle(m), cells: splits.map((s) => cell(m, shots, s)) })),
    ],
  }))
}

function markdown(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`
  const rule = `|${head.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`
  return [line(head), rule, ...rows.map(line)].join('\n')
}

/** The tables as markdown (results.md), two decimals. */
export function formatProtocolTable(o: ReportPlan, records: RunRecord[]): string {
  return resultTables(o, records)
    .map((t) => {
      const rows = t.rows.map((r) => [r.title, ...r.cells.map((c) => formatMeanStd(c ? c.values : null, 2))])
      return `${t.heading}\n\n${markdown(['Method', ...t.columns], rows)}`
    })
    .join('\n\n')
}

/** Accuracy per class of each method, on one draw (the most shots, the first seed), over the
 *  source's test classes: base-to-new's base classes and then its new ones, else the test split. */
export interface PerClassTable {
  shots: number
  seed: number
  classNames: string[]
  /** The split each class was scored in ('base', 'new' or 'test'). */
  splits: string[]
  /** Percentages, by class; null where the method has no accuracy for the class (no test images,
   *  or a split it cannot score). */
  rows: { method: ProtocolMethod; title: string; accuracy: (number | null)[] }[]
}

export function perClassTable(o: ReportPlan, records: RunRecord[]): PerClassTable {
  const shots = Math.max(...o.shots)
  const seed = Math.min(...o.seeds)
  const splits = o.protocol === 'base-to-new' ? ['base', 'new'] : ['test']
  const picked = o.methods.flatMap((m) => {
    const r = records.find(
      (x) => x.run.method === m && (ZERO_SHOT_METHODS.includes(m) || (x.run.shots === shots && x.run.seed === seed)),
    )
    return r ? [{ m, r }] : []
  })
  // Each split's classes, from any run that scored it (a method that cannot score a split has none).
  const classesOf = splits.map(
    (s) => picked.flatMap(({ r }) => r.evaluations.filter((e) => e.split === s)).at(0)?.classNames ?? [],
  )
  return {
    shots,
    seed,
    classNames: classesOf.flat(),
    splits: splits.flatMap((s, i) => classesOf[i].map(() => s)),
    rows: picked.map(({ m, r }) => ({
      method: m,
      title: methodTitle(m),
      accuracy: splits.flatMap((s, i) => {
        const e = r.evaluations.find((x) => x.split === s)
        return classesOf[i].map((_, c) => e?.perClass[c]?.accuracy ?? null)
      }),
    })),
  }
}
