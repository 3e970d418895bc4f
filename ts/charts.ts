/** The reports' Vega-Lite charts: the summary bars, accuracy per class, confusion matrices. */
import { formatMeanStd, mean, std } from './stats'

// ---------------------------------------------------------------------------------------------
// The charts (Vega-Lite specs)

export const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json'
/** The base / new / H colours, of the charts and of the page's CSS. */
export const SPLIT_COLOURS = { base: '#4c78a8', new: '#f58518', H: '#54a24b' }
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
