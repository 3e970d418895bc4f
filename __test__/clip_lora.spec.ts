/**
 * CLIP-LoRA as a user runs it, from TypeScript and the command line: trained for its steps (the
 * recipe counts steps, not epochs), saved small (only the factors), loaded, predicting any class
 * list, evaluated, exported under the official loralib names and imported back, and trained,
 * evaluated and converted by the CLI with its flags. The core's tests
 * (crates/promptclip-core/tests/clip_lora.rs) check it against the official code's fixture and
 * finite differences.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, Evaluator, methodRecipe, PromptLearner, Trainer } from 'promptclip'
import { CLASSES, collect, dataset, HF_MODEL, png, present, RGB, readSafetensors } from './helpers'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const TMP = mkdtempSync(join(tmpdir(), 'promptclip-clip-lora-'))

function cli(args: string[]) {
  return collect(spawn(process.execPath, [CLI, ...args], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] }))
}

/** The official names of the default updates (q, k, v) of the tiny model's two blocks a tower. */
function officialNames(): string[] {
  const names: string[] = []
  for (const tower of ['', 'visual.'])
    for (const block of [0, 1])
      for (const p of ['q_proj', 'k_proj', 'v_proj'])
        for (const f of ['A', 'B']) names.push(`${tower}transformer.resblocks.${block}.attn.${p}.w_lora_${f}`)
  return names.sort()
}

test('trains for its steps, saves only its factors, loads, predicts new classes, evaluates, round-trips the official names', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const recipe = methodRecipe('clip-lora')
  t.like(recipe, { optimizer: 'adamw', lr: 2e-4, weightDecay: 0.01, batchSize: 32, stepsPerShot: 500, minLr: 1e-6 })
  const learner = PromptLearner.create(clip, 'clip-lora', { classNames: CLASSES })
  t.like(learner.info, { method: 'clip-lora', options: { rank: 2, alpha: 1, dropout: 0.25, encoder: 'both' } })
  const train = dataset(4, 3)
  const steps: number[] = []
  const summary = await new Trainer(learner, { steps: 6, batchSize: 4, lr: 0.01, augment: false }).fit(train, {
    onProgress: (p) => steps.push(p.globalStep),
  })
  // 16 images in batches of 4: 4 steps an epoch, the second epoch cut after its second.
  t.deepEqual(steps, [1, 2, 3, 4, 5, 6])
  t.is(summary.epochs, 2)
  const path = join(TMP, 'lora.safetensors')
  await learner.save(path)
  const params = learner.info.params.reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0)
  t.true(statSync(path).size < params * 4 + 16384, `${statSync(path).size} bytes for ${params} numbers`)
  const back = await PromptLearner.load(clip, path)
  t.deepEqual(back.info, learner.info)
  const images = dataset(1, 9).images
  const probs = async (l: PromptLearner, classNames?: string[]) =>
    (await l.predict(images, classNames ? { classNames } : {})).flatMap((p) => Array.from(present(p.probabilities)))
  t.deepEqual(await probs(back), await probs(learner))
  const novel = await probs(learner, ['crimson', 'lime', 'navy'])
  t.is(novel.length, images.length * 3)
  const ev = await new Evaluator(learner).evaluate(dataset(2, 11))
  t.is(ev.total, 8)
  t.true(ev.accuracy >= 0 && ev.accuracy <= 100)

  const official = join(TMP, 'lora-official.safetensors')
  await learner.exportOfficial(official)
  t.deepEqual(Object.keys(readSafetensors(official)).sort(), officialNames())
  const imported = await PromptLearner.importOfficial(clip, official, { classNames: CLASSES })
  t.is(imported.info.method, 'clip-lora')
  const [a, b] = [await probs(learner), await probs(imported)]
  t.true(
    a.every((v, i) => Math.abs(v - b[i]) < 1e-6),
    'the same predictions',
  )
})

test('the CLI trains, evaluates and converts CLIP-LoRA with its flags', async (t) => {
  const data = join(TMP, 'folder')
  for (const [c, name] of CLASSES.entries()) {
    for (let i = 0; i < 5; i++) {
      const split = i < 3 ? 'train' : 'test'
      mkdirSync(join(data, split, name), { recursive: true })
      writeFileSync(join(data, split, name, `${i}.png`), png(24, 24, RGB[c], 100 * c + i))
    }
  }
  const out = join(TMP, 'cli-lora.safetensors')
  const r = await cli([
    'train',
    data,
    '--method',
    'clip-lora',
    '--model',
    HF_MODEL,
    '--steps',
    '3',
    '--batch-size',
    '4',
    '--lora-matrices',
    'q,v,o',
    '--lora-layers',
    '1',
    '--lora-rank',
    '3',
    '--out',
    out,
    '--json',
  ])
  t.is(r.code, 0, r.stderr)
  const info = await PromptLearner.load(await Clip.load(HF_MODEL), out)
  t.like(info.info.options, { matrices: ['q', 'v', 'o'], layers: [1], rank: 3 })
  t.is(info.info.params.length, 2 * 3 * 2)
  const ev = await cli(['eval', join(data, 'test'), '--prompt', out, '--model', HF_MODEL, '--json'])
  t.is(ev.code, 0, ev.stderr)
  const back = join(TMP, 'cli-lora-official.safetensors')
  const c = await cli(['convert', out, back, '--json'])
  t.is(c.code, 0, c.stderr)
  t.true(Object.keys(readSafetensors(back)).includes('visual.transformer.resblocks.1.attn.proj.w_lora_B'))
  // A bad list is refused by the flag, naming it.
  const bad = await cli(['train', data, '--method', 'clip-lora', '--model', HF_MODEL, '--lora-layers', '1,x'])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /--lora-layers/)
})
