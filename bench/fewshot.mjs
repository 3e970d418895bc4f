// Few-shot sampling must be linear in the dataset's size (ImageNet: 1.28M images): times fewShot,
// fewShotSplits and without on 60k and 600k images (1,000 classes, 16 shots) in one run and prints
// the milliseconds and the 600k / 60k ratio, which should be near 10.
//   npx tsup && node bench/fewshot.mjs
import { fewShot, fewShotSplits, without } from '../dist/index.mjs'

const CLASSES = 1000
const SHOTS = 16

function dataset(n) {
  const images = new Array(n)
  const labels = new Array(n)
  // Labels in a scattered order, as a shuffled list would hold them.
  for (let i = 0; i < n; i++) {
    images[i] = `images/${i % CLASSES}/${i}.jpg`
    labels[i] = (i * 7919) % CLASSES
  }
  return { images, labels, classNames: Array.from({ length: CLASSES }, (_, c) => `class ${c}`) }
}

/** The median of `runs` timings, in ms, after one warm-up. */
function time(f, runs = 7) {
  f()
  const ms = []
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint()
    f()
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  return ms.sort((a, b) => a - b)[runs >> 1]
}

const rows = []
const sizes = [60_000, 600_000]
const data = sizes.map(dataset)
const cases = {
  fewShot: (d) => () => fewShot(d, SHOTS, 1),
  'fewShotSplits (no val)': (d) => () =>
    fewShotSplits({ name: 'bench', classNames: d.classNames, train: d, skipped: [] }, SHOTS, 1),
  without: (d) => {
    const picked = fewShot(d, SHOTS, 1)
    return () => without(d, picked)
  },
}
for (const [name, make] of Object.entries(cases)) {
  const [small, large] = data.map((d) => time(make(d)))
  rows.push({
    measure: name,
    '60k ms': +small.toFixed(2),
    '600k ms': +large.toFixed(2),
    ratio: +(large / small).toFixed(1),
  })
}
console.table(rows)
const worst = Math.max(...rows.map((r) => r.ratio))
console.log(`largest ratio ${worst.toFixed(1)} (10 = linear; 100 would be quadratic)`)
