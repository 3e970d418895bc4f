/** The numbers' summaries and formatting that tables and reports share: mean, std, H, durations. */

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

/** Seconds as a report states a run's time: 42.0 s, 3 min 5 s, 1 h 2 min. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '?'
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s - 60 * m)} s`
  return `${Math.floor(m / 60)} h ${m % 60} min`
}
