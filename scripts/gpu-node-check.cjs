// The CUDA addon used as a user uses it, through the package's own entry (dist/index.js): the
// same zero-shot call and the same CoOp and CoCoOp training runs on "cpu" and on "cuda", and the
// two compared. scripts/gpu.sh runs it on the GPU machine with a package folder that holds the
// CUDA build under the name the loader expects.
//   node scripts/gpu-node-check.cjs <package-dir> <fixtures-dir>
const assert = require('node:assert')
const { join } = require('node:path')
const { readdirSync } = require('node:fs')

const [pkg, fixtures] = process.argv.slice(2)
const { Clip, PromptLearner, Trainer, cudaCompiled } = require(join(pkg, 'dist', 'index.js'))

const maxRel = (a, b) => {
  let scale = 1e-12
  let err = 0
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]))
  for (let i = 0; i < b.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]))
  return err / scale
}

async function runOn(device) {
  const clip = await Clip.load(join(fixtures, 'tiny-clip-hf'), { device })
  const images = readdirSync(join(fixtures, 'images'))
    .filter((f) => /\.(jpg|png|webp)$/.test(f))
    .map((f) => join(fixtures, 'images', f))
  const classNames = ['dog', 'cat', 'landscape', 'paper_crane']
  const zs = await clip.zeroShot(images, classNames, { topK: 4 })
  const probs = zs.flatMap((p) =>
    p.top
      .slice()
      .sort((a, b) => a.index - b.index)
      .map((t) => t.probability),
  )
  const data = { images, labels: images.map((_, i) => i % classNames.length) }
  const out = { probs }
  for (const method of ['coop', 'cocoop']) {
    const learner =
      method === 'coop'
        ? PromptLearner.coop(clip, { classNames, nCtx: 4 })
        : PromptLearner.cocoop(clip, { classNames, metaNetRatio: 4 })
    const summary = await new Trainer(learner, { epochs: 4, batchSize: 5, lr: 0.02, seed: 3 }).fit(data)
    out[method] = { loss: summary.epochLoss, context: learner.context() }
  }
  return out
}

;(async () => {
  assert.ok(cudaCompiled(), 'this addon was built without CUDA')
  const t0 = Date.now()
  const [cpu, cuda] = [await runOn('cpu'), await runOn('cuda')]
  const rows = [['zero-shot probabilities', maxRel(cuda.probs, cpu.probs)]]
  for (const m of ['coop', 'cocoop']) {
    rows.push(
      [`${m} epoch losses`, maxRel(cuda[m].loss, cpu[m].loss)],
      [`${m} final context`, maxRel(cuda[m].context, cpu[m].context)],
    )
  }
  for (const [what, err] of rows) console.log(`node addon, cpu vs cuda: ${what}: max rel diff ${err.toExponential(2)}`)
  for (const [what, err] of rows) assert.ok(err < 1e-3, `${what}: cpu and cuda differ by ${err}`)
  console.log(`node addon on cuda: ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`)
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
