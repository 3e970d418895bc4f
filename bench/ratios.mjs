// Prints promptclip / torch throughput ratios from the two JSON-lines files of bench/run.sh.
import { readFileSync } from 'node:fs'
const read = (f) => readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
const [ours, theirs] = process.argv.slice(2).map(read)
const rows = []
for (const o of ours) {
  for (const t of theirs.filter((t) => t.what === o.what || t.what === `${o.what}_pad77`)) {
    rows.push({ measure: t.what, unit: o.what === 'text_encode' ? 'prompts/s' : o.what.startsWith('coop_step') ? 'steps/s' : 'images/s', promptclip: +o.per_second.toFixed(2), torch: +t.per_second.toFixed(2), ratio: +(o.per_second / t.per_second).toFixed(2) })
  }
}
console.table(rows)
