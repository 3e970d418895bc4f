// Prints promptclip / torch throughput ratios (> 1: promptclip faster) and, where measured, peak
// memory (ratio torch / promptclip: > 1 means promptclip uses less) from bench/run.sh's files.
import { readFileSync } from 'node:fs'

const read = (f) =>
  readFileSync(f, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
const [ours, theirs] = process.argv.slice(2).map(read)
const rows = []
for (const o of ours) {
  for (const t of theirs.filter((t) => t.what === o.what || t.what === `${o.what}_pad77`)) {
    const unit =
      o.what === 'text_encode'
        ? 'prompts/s'
        : o.what.startsWith('coop_step')
          ? 'steps/s'
          : /^(maple|promptsrc)_step/.test(o.what)
            ? 'images/s'
            : o.what.startsWith('tip_adapter')
              ? 'runs/s'
              : 'images/s'
    rows.push({
      measure: t.what,
      unit,
      promptclip: +o.per_second.toFixed(3),
      torch: +t.per_second.toFixed(3),
      'speed ratio': +(o.per_second / t.per_second).toFixed(2),
    })
    if (o.peak_rss_mib && t.peak_rss_mib) {
      rows.push({
        measure: `${t.what} peak memory`,
        unit: 'MiB',
        promptclip: Math.round(o.peak_rss_mib),
        torch: Math.round(t.peak_rss_mib),
        'speed ratio': +(t.peak_rss_mib / o.peak_rss_mib).toFixed(2),
      })
    }
  }
}
console.table(rows)
for (const t of theirs.filter((t) => t.what === 'image_features_check')) {
  console.log(
    `image features, promptclip vs ${t.impl} on the same weights and ${t.batch} images: max |diff| ${t.max_abs_diff.toExponential(2)} (${t.max_rel_diff.toExponential(2)} of max |feature| ${t.max_abs.toExponential(2)}), min cosine ${t.min_cosine.toFixed(7)}`,
  )
}
