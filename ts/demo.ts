/**
 * The built-in demo, a preset of `runProtocol`: the papers' base-to-new protocol on the built-in
 * CLIP's 20 classes (ten clothing classes of Fashion-MNIST and ten handwritten digits), 16 shots,
 * three seeds, over every method of the core's catalogue (the zero-shot baselines, the linear
 * probe, the prompt learners, the adapters). Its extras are read from the run folders afterwards:
 * test images labelled before (zero-shot CLIP) and after (CoCoOp's saved learner), and CoOp's
 * learned context as words; they join the protocol's report.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BUILTIN_MODEL, Clip, type DeviceName, modelName } from './clip'
import {
  baseToNew,
  type DatasetSplits,
  FASHION_MNIST_DIR,
  type LabelledDataset,
  loadClothesAndDigits,
} from './datasets'
import type { Method } from './generated/methods'
import { methodCatalogue, methodRecipe } from './methods'
import type { RawImage } from './options'
import { PromptLearner } from './prompt'
import {
  type ProtocolEvent,
  type ProtocolMethod,
  type ProtocolOptions,
  type ProtocolResults,
  type RunKey,
  type RunRecord,
  runProtocol,
} from './protocols'
import { methodTitle, resolveOptions, resultsPlan } from './protocols/plan'
import { type ReportExtras, renderProtocolReport } from './protocols/report'
import { runFolder } from './protocols/sweep'
import { perClassTable, resultTables } from './protocols/table'
import { DEFAULT_SEEDS, DEFAULT_SHOTS } from './protocols/types'
import { formatMeanStd, harmonic } from './stats'
import type { TrainOptions } from './train'
import { writeFileAtomic } from './writeAtomic'

/** What the demo runs when its options leave them out (the command line shows these). */
export const DEMO_DEFAULTS = { shots: DEFAULT_SHOTS, seeds: DEFAULT_SEEDS, testPerClass: 50 } as const

export interface DemoOptions {
  /** A CLIP checkpoint (default: the built-in one). */
  model?: string
  /** Fashion-MNIST's IDX folder (Debian's dataset-fashion-mnist). */
  fashionDir?: string
  /** Default 16. */
  shots?: number
  /** Default [1, 2, 3]. */
  seeds?: number[]
  /** Test images per class (the first of each class in the test split; default 50). */
  testPerClass?: number
  /** Scales every method's epochs (tests use less than 1). */
  epochScale?: number
  /** Where CLIP runs (default 'cpu'). */
  device?: DeviceName
  /** The protocol's folder: its runs, results.json, results.md and report.html (with the demo's
   *  extras). A rerun with the same settings reuses its finished runs. Default: a temporary
   *  folder, removed when the demo returns (no files are kept). */
  out?: string
  log?: (line: string) => void
  /** After each run (a method on one seed; the zero-shot baselines once): how many of `total` are
   *  done, for a progress bar. */
  onStage?: (p: { done: number; total: number; stage: string }) => void
  /** Stops the demo at the next step; its finished runs and a checkpoint stay in `out`. */
  signal?: AbortSignal
}

export interface DemoResults {
  /** Model path, or 'built-in'. */
  model: string
  shots: number
  seeds: number[]
  /** All classes, in label order. */
  classNames: string[]
  /** Label indices of the base half. */
  baseClasses: number[]
  /** Label indices of the new half. */
  newClasses: number[]
  /** The protocol's base-to-new table: a row per method, in the catalogue's order. */
  methods: {
    method: ProtocolMethod
    /** The method's title, as the table prints it. */
    name: string
    /** Accuracy % per run on the base classes (a zero-shot baseline runs once). */
    base: number[]
    /** Accuracy % per run on the new classes; null when the method cannot score unseen classes. */
    new: number[] | null
    /** Harmonic mean of base and new per run. */
    h: number[] | null
  }[]
  /** Accuracy % per class (all classes, label order), first seed; null = no accuracy for it. */
  perClass: { method: string; accuracy: (number | null)[] }[]
  /** Test images with the true label and the predictions before (zero-shot) and after learning
   *  (by `examplesBy`). */
  examples: { image: RawImage; label: string; before: string; after: string }[]
  /** The title of the method whose saved learner labelled the examples' "after". */
  examplesBy: string
  /** CoOp's learned context: for each position, its nearest words. */
  contextWords: string[][]
  seconds: number
  /** The protocol's files in `out` (report.html with the demo's extras); null without `out`. */
  files: ProtocolResults['files'] | null
}

/** The in-memory dataset's name, as tables and run configs show it. */
const DATASET = 'clothes-and-digits'

/** The extras: whose saved learner labels the example images "after" (the method the papers
 *  show carrying over to new classes), and whose learned context is read as words (CoOp's
 *  Table 4). */
const EXAMPLES_BY: ProtocolMethod = 'cocoop'
const WORDS_OF: ProtocolMethod = 'coop'

/** CLIP-LoRA's steps in the demo (see `demoTraining`). */
const CLIP_LORA_DEMO_STEPS = 200

/** Where the demo departs from the catalogue's recipes, stated once. Everything else is each
 *  method's own recipe for the demo's shots (`methodRecipe`): CoOp's 200 epochs at 16 shots,
 *  batch 32, lr 0.002, as the demo always trained it; the adapters' and the linear probe's as
 *  the core gives them. */
function demoTraining(shots: number, scale: number, dataset: string): ProtocolOptions['train'] {
  const overrides: Partial<Record<Method, TrainOptions>> = {
    // CoCoOp at batch 4, not its paper's 1: a quarter of the steps (it builds B x K prompts per
    // step), which keeps the demo to a few minutes on two cores; its 10 epochs are the recipe's.
    cocoop: { batchSize: 4 },
    // KgCoOp as long as CoOp at these shots (200 epochs at 16), not its recipe's 50, as the demo
    // always trained it: the two rows then differ by the knowledge-guided term alone.
    kgcoop: { epochs: methodRecipe('coop', shots, dataset).epochs },
    // CLIP-LoRA for CLIP_LORA_DEMO_STEPS steps, not its recipe's 500 x 16 = 8000 (sized for
    // ViT-B/16 on 11 datasets): on the built-in model's ten base classes its accuracy has
    // settled long before, and 8000 steps through both towers would be most of the demo's time.
    'clip-lora': { steps: CLIP_LORA_DEMO_STEPS },
  }
  const train: NonNullable<ProtocolOptions['train']> = {}
  for (const entry of methodCatalogue()) {
    const own = overrides[entry.name] ?? {}
    const recipe = methodRecipe(entry.name, shots, dataset)
    const epochs = own.epochs ?? recipe.epochs
    // A recipe counted in steps (CLIP-LoRA's) is scaled in steps.
    const steps = own.steps ?? (recipe.stepsPerShot != null ? recipe.stepsPerShot * shots : undefined)
    const scaled =
      steps !== undefined
        ? { steps: Math.max(1, Math.round(steps * scale)) }
        : { epochs: Math.max(1, Math.round(epochs * scale)) }
    train[entry.name] = {
      ...own,
      // Every method: no augmentation, so that each run computes its image features once (the
      // built-in model's own preprocessing already forbids flips, which would make a mirrored 2
      // no 2, but random crops would still cost an image-encoder pass per step). Tip-Adapter's
      // cache passes are its own option (augmentPasses), left at the recipe's.
      augment: false,
      // `epochScale` shortens every method's training alike (the runner passes epochs to the
      // methods trained by SGD only).
      ...(scale !== 1 ? scaled : {}),
    }
  }
  return train
}

/** Every method that learns text context starts it from "a photo of a" (M = 4, within the
 *  positions the built-in model's short captions trained; CoOp's own default is 16 random
 *  vectors, CoCoOp's and KgCoOp's this same phrase). */
function demoLearners(): ProtocolOptions['learners'] {
  const learners: Record<string, { ctxInit: string }> = {}
  for (const entry of methodCatalogue()) {
    if (entry.options.some((o) => o.name === 'ctxInit')) learners[entry.name] = { ctxInit: 'a photo of a' }
  }
  return learners as ProtocolOptions['learners']
}

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

/** The demo's protocol: base-to-new on `dataset`, every method, the demo's settings. */
export function demoProtocol(options: DemoOptions, dataset: DatasetSplits, out: string): ProtocolOptions {
  const shots = options.shots ?? DEMO_DEFAULTS.shots
  return {
    protocol: 'base-to-new',
    model: options.model ?? BUILTIN_MODEL,
    device: options.device ?? 'cpu',
    dataset,
    shots: [shots],
    seeds: options.seeds ?? [...DEMO_DEFAULTS.seeds],
    out,
    train: demoTraining(shots, options.epochScale ?? 1, dataset.name),
    learners: demoLearners(),
    signal: options.signal,
  }
}

/** The demo's running commentary and progress from the protocol's events. */
function commentary(options: DemoOptions): (e: ProtocolEvent) => void {
  const log = options.log ?? (() => {})
  let total = 0
  let done = 0
  let seed: number | null = null
  let started = Date.now()
  const stage = (run: RunKey) => {
    if (run.shots > 0 && run.seed !== seed) {
      seed = run.seed
      log(`seed ${seed}`)
    }
  }
  const finished = (run: RunKey, what: string) => {
    const name = methodTitle(run.method)
    log(`  ${name.padEnd(22)} ${what}`)
    options.onStage?.({ done: ++done, total, stage: run.shots > 0 ? `${name}, seed ${run.seed}` : name })
  }
  return (e) => {
    if (e.type === 'plan') total = e.runs.length
    else if (e.type === 'log') log(e.message)
    else if (e.type === 'run-start') {
      stage(e.run)
      started = Date.now()
    } else if (e.type === 'run-skipped') {
      stage(e.run)
      finished(e.run, '(finished earlier)')
    } else if (e.type === 'run-done') {
      const { base, new: novel } = e.metrics
      const h = novel === undefined ? '' : `  new ${novel.toFixed(1)}  H ${harmonic(base, novel).toFixed(1)}`
      // Each run's own time, not a running sum.
      finished(e.run, `base ${base.toFixed(1)}${h}  (${((Date.now() - started) / 1000).toFixed(1)} s)`)
    }
  }
}

/** The extras, read from the runs of the first seed: the example images labelled by zero-shot
 *  CLIP and by EXAMPLES_BY's saved learner, and WORDS_OF's context as words. */
async function readExtras(
  options: DemoOptions,
  out: string,
  run: Omit<RunKey, 'method'>,
  test: LabelledDataset,
): Promise<Pick<DemoResults, 'examples' | 'examplesBy' | 'contextWords'>> {
  const clip = await Clip.load(options.model ?? BUILTIN_MODEL, { device: options.device ?? 'cpu' })
  const saved = async (method: ProtocolMethod) => {
    const path = join(runFolder(out, { ...run, method }), 'learner.safetensors')
    return existsSync(path) ? PromptLearner.load(clip, path) : null
  }
  const after = await saved(EXAMPLES_BY)
  const halves = baseToNew(test)
  const examples: DemoResults['examples'] = []
  // One test image of each class of each half, scored against that half's classes.
  for (const data of [halves.base, halves.novel]) {
    const names = data.classNames
    const idx = names.map((_, c) => data.labels.indexOf(c)).filter((i) => i >= 0)
    const images = idx.map((i) => data.images[i])
    const zeroShot = await clip.zeroShot(images, names, { topK: 1 })
    const learned = after ? await after.predict(images, { classNames: names, topK: 1 }) : zeroShot
    for (const [j, i] of idx.entries()) {
      examples.push({
        image: data.images[i] as RawImage,
        label: names[data.labels[i]],
        before: zeroShot[j].top[0]?.label ?? '?',
        after: learned[j].top[0]?.label ?? '?',
      })
    }
  }
  const words = await saved(WORDS_OF)
  const rows = words?.capabilities.hasContext ? await words.interpret({ topK: 3 }) : []
  return {
    examples,
    examplesBy: after ? methodTitle(EXAMPLES_BY) : methodTitle('zero-shot'),
    contextWords: rows.map((r) => r.tokens.map((t) => t.token)),
  }
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoResults> {
  const t0 = Date.now()
  const log = options.log ?? (() => {})
  const model = options.model ?? BUILTIN_MODEL
  const fashionDir = options.fashionDir ?? FASHION_MNIST_DIR
  const train = loadClothesAndDigits('train', fashionDir)
  const test = firstPerClass(
    loadClothesAndDigits('test', fashionDir),
    options.testPerClass ?? DEMO_DEFAULTS.testPerClass,
  )
  const dataset: DatasetSplits = { name: DATASET, classNames: train.classNames, train, test, skipped: [] }
  const out = options.out ?? mkdtempSync(join(tmpdir(), 'promptclip-demo-'))
  try {
    const plan = demoProtocol(options, dataset, out)
    const o = resolveOptions(plan)
    const [shots] = o.shots
    log(
      `CLIP ${modelName(model)}; ${train.classNames.length} classes, base-to-new, ` +
        `${shots} shots, seeds ${o.seeds.join(', ')}; ${test.images.length} test images`,
    )
    const results = await runProtocol({ ...plan, onEvent: commentary(options) })
    const extras = await readExtras(options, out, { dataset: o.dataset, shots, seed: o.seeds[0] }, test)
    const shown = resultsPlan(o, results.runs)
    const table = resultTables(shown, results.runs).find((t) => t.shots === shots)
    const perClass = perClassTable(shown, results.runs)
    const cut = Math.ceil(train.classNames.length / 2) // baseToNew's split
    const r: DemoResults = {
      model: modelName(model),
      shots,
      seeds: o.seeds,
      classNames: train.classNames,
      baseClasses: Array.from({ length: cut }, (_, i) => i),
      newClasses: Array.from({ length: train.classNames.length - cut }, (_, i) => cut + i),
      methods: (table?.rows ?? []).map((row) => ({
        method: row.method,
        name: row.title,
        base: row.cells[0]?.values ?? [],
        new: row.cells[1]?.values ?? null,
        h: row.cells[2]?.values ?? null,
      })),
      perClass: perClass.rows.map((row) => ({ method: row.title, accuracy: row.accuracy })),
      ...extras,
      seconds: (Date.now() - t0) / 1000,
      files: options.out ? results.files : null,
    }
    if (options.out) {
      // The protocol's report, with the demo's extras.
      writeFileAtomic(results.files.report, renderDemoReport(r, shown, results.runs))
    }
    return r
  } finally {
    if (!options.out) rmSync(out, { recursive: true, force: true })
  }
}

/** The protocol's report of the demo's runs, with the demo's time, examples and CoOp's words. */
function renderDemoReport(r: DemoResults, plan: ReturnType<typeof resultsPlan>, runs: RunRecord[]): string {
  const extras: ReportExtras = {
    title: `promptclip demo: base-to-new, ${r.shots} shots`,
    seconds: r.seconds,
    examples: { after: r.examplesBy, images: r.examples },
    context: { learner: methodTitle(WORDS_OF), words: r.contextWords },
  }
  const model = (runs[0]?.config.model as { path?: string } | undefined)?.path ?? r.model
  return renderProtocolReport(plan, runs, model, extras)
}

/** The base-to-new table for a terminal (the protocol's table, one decimal): method, base, new,
 *  H, mean ± std over seeds. */
export function formatTable(results: DemoResults): string {
  const cell = (xs: number[] | null) => formatMeanStd(xs).padStart(13)
  const head = `${'method'.padEnd(22)}${'base'.padStart(13)}${'new'.padStart(13)}${'H'.padStart(13)}`
  const rows = results.methods.map((m) => `${m.name.padEnd(22)}${cell(m.base)}${cell(m.new)}${cell(m.h)}`)
  return [head, ...rows].join('\n')
}
