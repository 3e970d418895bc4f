/**
 * The built-in demo: the papers' base-to-new protocol on the built-in CLIP's 20 classes (ten
 * clothing classes of Fashion-MNIST and ten handwritten digits), 16 shots, several seeds, with
 * zero-shot CLIP (one template, and an ensemble), the linear probe, CoOp, CoCoOp and KgCoOp.
 */
import { BUILTIN_MODEL, Clip, type DeviceName } from './clip'
import { baseToNew, FASHION_MNIST_DIR, fewShot, type LabelledDataset, loadClothesAndDigits, without } from './datasets'
import { type Evaluation, Evaluator } from './evaluate'
import type { RawImage } from './options'
import { type Method, PromptLearner } from './prompt'
import { type DemoResults, formatMeanStd, harmonic } from './report'
import { Trainer, type TrainOptions } from './train'

export interface DemoOptions {
  /** A CLIP checkpoint (default: the built-in one). */
  model?: string
  /** Fashion-MNIST's IDX folder (Debian's dataset-fashion-mnist). */
  fashionDir?: string
  shots?: number
  seeds?: number[]
  /** Test images per class (the first of each class in the test split). */
  testPerClass?: number
  /** Scales every method's epochs (tests use less than 1). */
  epochScale?: number
  /** Where CLIP runs (default 'cpu'). */
  device?: DeviceName
  log?: (line: string) => void
  /** After each stage (a method on one seed): how many of `total` are done, for a progress bar. */
  onStage?: (p: { done: number; total: number; stage: string }) => void
}

/** Hand-made templates for prompt ensembling (a few of CLIP's). */
export const ENSEMBLE_TEMPLATES = [
  'a photo of a {}.',
  'a drawing of a {}.',
  'a photo of the {}.',
  'a black and white photo of a {}.',
  'a low resolution photo of a {}.',
  'a sketch of a {}.',
]

/** What each prompt learner trains with in the demo: the context from "a photo of a" (M = 4, within
 *  the positions the built-in model's short captions trained), the papers' lr and 16-shot epochs
 *  (CoOp's 200; CoCoOp's 10, here at batch 4), and no augmentation (flips would turn digits into
 *  other shapes), so image features are computed once. */
const LEARNERS: { name: string; method: Method; train: TrainOptions }[] = [
  { name: 'CoOp', method: 'coop', train: { epochs: 200, batchSize: 32, lr: 0.002 } },
  { name: 'CoCoOp', method: 'cocoop', train: { epochs: 10, batchSize: 4, lr: 0.002 } },
  { name: 'KgCoOp', method: 'kgcoop', train: { epochs: 200, batchSize: 32, lr: 0.002 } },
]

/** The first `n` images of each class. */
function firstPerClass<T extends LabelledDataset>(data: T, n: number): T {
  const seen = new Map<number, number>()
  const keep = data.labels.flatMap((l, i) => {
    const c = seen.get(l) ?? 0
    seen.set(l, c + 1)
    return c < n ? [i] : []
  })
  return { ...data, images: keep.map((i) => data.images[i]), labels: keep.map((i) => data.labels[i]) }
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoResults> {
  const t0 = Date.now()
  const log = options.log ?? (() => {})
  const shots = options.shots ?? 16
  const seeds = options.seeds ?? [1, 2, 3]
  const scale = options.epochScale ?? 1
  const model = options.model ?? BUILTIN_MODEL
  const clip = await Clip.load(model, { device: options.device ?? 'cpu' })
  const train = loadClothesAndDigits('train', options.fashionDir ?? FASHION_MNIST_DIR)
  const test = firstPerClass(loadClothesAndDigits('test', options.fashionDir), options.testPerClass ?? 50)
  const testHalves = baseToNew(test)
  const baseNames = testHalves.base.classNames
  const newNames = testHalves.novel.classNames
  log(
    `CLIP ${model === BUILTIN_MODEL ? 'built-in' : model}; ${train.classNames.length} classes, base-to-new, ` +
      `${shots} shots, seeds ${seeds.join(', ')}; ${test.images.length} test images`,
  )

  const acc = new Map<string, { base: number[]; new: number[] | null }>()
  // Stages: the two zero-shot rows, the linear probe and each learner, for every seed.
  const total = seeds.length * (3 + LEARNERS.length)
  let done = 0
  let stageStart = Date.now()
  const record = (name: string, base: number, novel: number | null) => {
    const seconds = (Date.now() - stageStart) / 1000
    stageStart = Date.now()
    const r = acc.get(name) ?? { base: [], new: novel === null ? null : [] }
    r.base.push(base)
    if (novel !== null) r.new?.push(novel)
    acc.set(name, r)
    const h = novel === null ? '' : `  new ${novel.toFixed(1)}  H ${harmonic(base, novel).toFixed(1)}`
    // Each stage's own time, not a running sum.
    log(`  ${name.padEnd(22)} base ${base.toFixed(1)}${h}  (${seconds.toFixed(1)} s)`)
    options.onStage?.({ done: ++done, total, stage: name })
  }
  let firstSeed: {
    perClass: DemoResults['perClass']
    confusion: DemoResults['confusion']
    examples: DemoResults['examples']
    contextWords: string[][]
  } | null = null

  for (const seed of seeds) {
    log(`seed ${seed}`)
    stageStart = Date.now()
    const picked = fewShot(train, shots, seed)
    const shotsHalves = baseToNew(picked)
    // The linear probe's validation split: min(shots, 4) more images per class, as the papers.
    const val = baseToNew(fewShot(without(train, picked), Math.min(shots, 4), seed)).base
    const evaluate = (m: Clip | PromptLearner, half: 'base' | 'novel', templates?: string[]) =>
      new Evaluator(m, {
        classNames: half === 'base' ? baseNames : newNames,
        templates,
        topK: [1],
      }).evaluate(testHalves[half])
    const evals = new Map<string, { base: Evaluation; novel: Evaluation | null }>()

    for (const [name, templates] of [
      ['zero-shot', undefined],
      ['zero-shot (ensemble)', ENSEMBLE_TEMPLATES],
    ] as const) {
      const t = templates ? [...templates] : undefined
      const [b, n] = [await evaluate(clip, 'base', t), await evaluate(clip, 'novel', t)]
      evals.set(name, { base: b, novel: n })
      record(name, b.accuracy, n.accuracy)
    }

    const probe = PromptLearner.linearProbe(clip, { classNames: baseNames })
    await new Trainer(probe).fit(shotsHalves.base, { validation: val })
    const probeBase = await evaluate(probe, 'base')
    evals.set('linear probe', { base: probeBase, novel: null })
    record('linear probe', probeBase.accuracy, null)

    const learned = new Map<string, PromptLearner>()
    for (const l of LEARNERS) {
      const learner = PromptLearner.create(clip, l.method, { classNames: baseNames, ctxInit: 'a photo of a', seed })
      const epochs = Math.max(1, Math.round((l.train.epochs ?? 1) * scale))
      await new Trainer(learner, { ...l.train, epochs, augment: false, seed }).fit(shotsHalves.base)
      const [b, n] = [await evaluate(learner, 'base'), await evaluate(learner, 'novel')]
      evals.set(l.name, { base: b, novel: n })
      learned.set(l.name, learner)
      record(l.name, b.accuracy, n.accuracy)
    }

    if (firstSeed === null) {
      const perClass = [...evals.entries()].map(([method, e]) => ({
        method,
        accuracy: [
          ...e.base.perClass.map((c) => c.accuracy),
          ...(e.novel ? e.novel.perClass.map((c) => c.accuracy) : newNames.map(() => null)),
        ],
      }))
      const cocoop = evals.get('CoCoOp')
      const confusion = { method: 'CoCoOp (new classes)', classNames: newNames, matrix: cocoop?.novel?.confusion ?? [] }
      // A few test images of each half, labelled by zero-shot CLIP and by CoCoOp.
      const examples: DemoResults['examples'] = []
      const cocoopLearner = learned.get('CoCoOp')
      for (const [half, names] of [
        ['base', baseNames],
        ['novel', newNames],
      ] as const) {
        const data = testHalves[half]
        const idx = names.map((_, c) => data.labels.indexOf(c)).filter((i) => i >= 0)
        const images = idx.map((i) => data.images[i])
        const before = await clip.zeroShot(images, names, { topK: 1 })
        const after = cocoopLearner ? await cocoopLearner.predict(images, { classNames: names, topK: 1 }) : before
        for (const [j, i] of idx.entries()) {
          examples.push({
            image: data.images[i] as RawImage,
            label: names[data.labels[i]],
            before: before[j].top[0]?.label ?? '?',
            after: after[j].top[0]?.label ?? '?',
          })
        }
      }
      const coop = learned.get('CoOp')
      const rows = coop ? await coop.interpret({ topK: 3 }) : []
      const contextWords = rows.map((r) => r.tokens.map((t) => t.token))
      firstSeed = { perClass, confusion, examples, contextWords }
    }
  }

  const methods = [...acc.entries()].map(([name, r]) => ({
    name,
    base: r.base,
    new: r.new,
    h: r.new ? r.base.map((b, i) => harmonic(b, (r.new as number[])[i])) : null,
  }))
  const cut = baseNames.length // baseToNew's split
  return {
    model: model === BUILTIN_MODEL ? 'built-in' : model,
    shots,
    seeds,
    classNames: train.classNames,
    baseClasses: Array.from({ length: cut }, (_, i) => i),
    newClasses: newNames.map((_, i) => cut + i),
    methods,
    perClass: firstSeed?.perClass ?? [],
    confusion: firstSeed?.confusion ?? { method: '', classNames: [], matrix: [] },
    examples: firstSeed?.examples ?? [],
    contextWords: firstSeed?.contextWords ?? [],
    seconds: (Date.now() - t0) / 1000,
  }
}

/** The paper-style table: method, base, new, H (mean ± std over seeds). */
export function formatTable(results: DemoResults): string {
  const cell = (xs: number[] | null) => formatMeanStd(xs).padStart(13)
  const head = `${'method'.padEnd(22)}${'base'.padStart(13)}${'new'.padStart(13)}${'H'.padStart(13)}`
  const rows = results.methods.map((m) => `${m.name.padEnd(22)}${cell(m.base)}${cell(m.new)}${cell(m.h)}`)
  return [head, ...rows].join('\n')
}
