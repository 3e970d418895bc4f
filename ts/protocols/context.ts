/**
 * A protocol's context and one run in it: the sweep's data, model and options prepared once
 * (`prepareProtocol`), then each run (`executeRun`): data sampled per (shots, seed), the learner
 * trained with a checkpoint, evaluated on every split, and its record written. The same code runs
 * a run in this process, in a local worker and on a queue worker.
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { hostname } from 'node:os'
import { join, resolve } from 'node:path'
import { PACKAGE_ROOT } from '../binding'
import { BUILTIN_MODEL, Clip, cudaCompiled, DEFAULT_TEMPLATE, type DeviceName, modelName } from '../clip'
import { baseToNew, type DatasetSplits, fewShotSplits, type LabelledDataset, openDataset } from '../datasets'
import { AbortError, invalidArgument, PromptclipError } from '../errors'
import { type Evaluation, Evaluator } from '../evaluate'
import { dataFingerprint, fileSha256, modelFingerprint } from '../fingerprint'
import { fetchHubDataset, isHubDatasetUri } from '../hub/dataset'
import { methodEntry } from '../methods'
import type { ImageInput } from '../options'
import { type Method, PromptLearner } from '../prompt'
import { Trainer, type TrainOptions, type TrainSummary } from '../train'
import { writeFileAtomic } from '../writeAtomic'
import { resultDamage } from './damage'
import { ENSEMBLE_TEMPLATES, type ResolvedOptions, resolveOptions, runId } from './plan'
import { type Executor, runFolder } from './sweep'
import type { EvalRecord, ProtocolEvent, ProtocolOptions, RunKey, RunRecord } from './types'

/** One evaluation to make: images, and the class names they are scored against. */
interface EvalTarget {
  split: string
  dataset: string
  data: LabelledDataset
}

export interface Context {
  o: ResolvedOptions
  /** The options as given (a worker's, with its own device). */
  options: ProtocolOptions
  clip: Clip
  modelConfig: Record<string, unknown>
  source: DatasetSplits
  test: LabelledDataset
  targets: DatasetSplits[]
  versions: Record<string, string>
  emit: (e: ProtocolEvent) => void
  signal?: AbortSignal
  samples: Map<string, { train: LabelledDataset; val: LabelledDataset }>
  /** Who runs the runs (recorded in each result). */
  executor: Executor
}

function versions(): Record<string, string> {
  const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
  return {
    promptclip: pkg.version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cuda: cudaCompiled() ? 'compiled' : 'no',
  }
}

function readJson<T>(path: string): T {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T
  } catch (e) {
    throw new PromptclipError('E_IO', `${path}: not readable JSON (${(e as Error).message}); delete it to redo the run`)
  }
}

export function writeJson(path: string, value: unknown): void {
  writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`)
}

/** The first top-level key whose value differs, for a message that says what changed. */
/**
 * The first setting that differs between two configs, as its dotted path and both values
 * ("train.epochs (was 50, now 20)"), or null. Nested objects are followed down to the field.
 */
export function firstDifference(a: Record<string, unknown>, b: Record<string, unknown>): string | null {
  const plain = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
  for (const k of new Set([...Object.keys(a ?? {}), ...Object.keys(b ?? {})])) {
    if (JSON.stringify(a?.[k]) === JSON.stringify(b?.[k])) continue
    if (plain(a?.[k]) && plain(b?.[k])) {
      const inner = firstDifference(a[k] as Record<string, unknown>, b[k] as Record<string, unknown>)
      if (inner !== null) return `${k}.${inner}`
    }
    const show = (v: unknown) => (v === undefined ? 'unset' : JSON.stringify(v))
    return `${k} (was ${show(a?.[k])}, now ${show(b?.[k])})`
  }
  return null
}

function openWithTest(key: string, o: ResolvedOptions, options: ProtocolOptions): DatasetSplits {
  const source = o.sources[key]
  const splits =
    typeof source === 'string' ? openDataset(source, { imageRoot: options.imageRoot, root: options.dataRoot }) : source
  if (!splits.test || !Array.isArray(splits.test.images) || splits.test.images.length === 0) {
    throw invalidArgument(
      `${key}: the protocols evaluate on a test split, and this dataset has none ` +
        '(use a folder with train/ and test/ sub-folders, a split file, or a catalog dataset)',
    )
  }
  return { ...splits, skipped: splits.skipped ?? [] }
}

/**
 * What every run of a protocol shares: the resolved options, the datasets (opened, with a test
 * split) and the model. The single-process runner, a queue's coordinator and each worker build it
 * the same way from the same options.
 */
export async function prepareProtocol(options: ProtocolOptions): Promise<Context> {
  const o = resolveOptions(options)
  const emit = options.onEvent ?? (() => {})
  // Hub datasets into the cache first (a cached one makes no request); then they open as folders.
  for (const d of [o.dataset, ...o.targets]) {
    if (isHubDatasetUri(d)) await fetchHubDataset(d, { signal: options.signal })
  }
  const source = openWithTest(o.dataset, o, options)
  for (const s of source.skipped.slice(0, 5)) emit({ type: 'log', message: `skipped ${s.path}: ${s.reason}` })
  if (source.skipped.length > 5) emit({ type: 'log', message: `skipped ${source.skipped.length} files in all` })
  const targets = o.targets.map((t) => openWithTest(t, o, options))
  const model = options.model ?? BUILTIN_MODEL
  const clip = await Clip.load(model, {
    device: (options.device ?? 'cpu') as DeviceName,
    dtype: options.dtype,
    ...(options.revision !== undefined ? { revision: options.revision } : {}),
    signal: options.signal,
  })
  const info = clip.info
  mkdirSync(join(o.out, 'runs'), { recursive: true })
  return {
    o,
    options,
    clip,
    modelConfig: {
      path: modelName(resolve(model)),
      embedDim: info.embedDim,
      imageSize: info.imageSize,
      visionLayers: info.visionLayers,
      textLayers: info.textLayers,
      dtype: info.dtype,
    },
    source,
    test: source.test as LabelledDataset,
    targets,
    versions: versions(),
    emit,
    signal: options.signal,
    samples: new Map(),
    executor: { host: hostname(), pid: process.pid, device: options.device ?? 'cpu' },
  }
}

/** The few-shot draw of (shots, seed), shared by every method of that draw. */
function sample(ctx: Context, shots: number, seed: number): { train: LabelledDataset; val: LabelledDataset } {
  const key = `${shots}/${seed}`
  const cached = ctx.samples.get(key)
  if (cached) return cached
  const drawn = fewShotSplits(ctx.source, shots, seed)
  const s =
    ctx.o.protocol === 'base-to-new' ? { train: baseToNew(drawn.train).base, val: baseToNew(drawn.val).base } : drawn
  ctx.samples.set(key, s)
  return s
}

/** What each protocol evaluates on. */
function evalTargets(ctx: Context): EvalTarget[] {
  const name = ctx.source.name
  if (ctx.o.protocol === 'base-to-new') {
    const halves = baseToNew(ctx.test)
    return [
      { split: 'base', dataset: name, data: halves.base },
      { split: 'new', dataset: name, data: halves.novel },
    ]
  }
  return [
    { split: 'test', dataset: name, data: ctx.test },
    ...ctx.targets.map((t, i) => ({
      split: ctx.o.labels[ctx.o.targets[i]],
      dataset: t.name,
      data: t.test as LabelledDataset,
    })),
  ]
}

function learnerOptions(ctx: Context, run: RunKey, classNames: string[]): Record<string, unknown> {
  const entry = methodEntry(run.method)
  const own = ctx.o.learners[run.method] ?? {}
  // A method that takes a hand-made template (KgCoOp's knowledge term, Tip-Adapter's classifier)
  // gets the dataset's own, as the official CUSTOM_TEMPLATES (as a list where it takes several).
  const option = entry.options.find((o) => o.name === entry.templateOption)
  const given = option?.type === 'string-list' ? [ctx.source.template] : ctx.source.template
  const template = option && ctx.source.template ? { [option.name]: given } : {}
  const seed = entry.seeded ? { seed: run.seed } : {}
  return { ...seed, ...template, ...own, classNames }
}

function trainOptions(ctx: Context, run: RunKey): TrainOptions {
  const skip: TrainOptions = ctx.o.skipUnreadable ? { skipUnreadable: true } : {}
  if (!learnsBySgd(run)) return { ...skip }
  // The method's recipe for these shots and this dataset is the core's (CoOp's epochs by shots).
  const recipeFor: TrainOptions = { shots: run.shots, dataset: ctx.source.name }
  return { ...recipeFor, seed: run.seed, ...(ctx.o.train[run.method] ?? {}), ...skip }
}

/** Whether a run trains by SGD steps (checkpointed, resumable) rather than one fit on features. */
function learnsBySgd(run: RunKey): boolean {
  return methodEntry(run.method).fitting === 'sgd'
}

/** Whether a run's fit uses the validation split (the linear probe's C search). */
function usesValidation(run: RunKey): boolean {
  return methodEntry(run.method).usesValidation
}

function templatesFor(ctx: Context, run: RunKey): string[] {
  const own = ctx.source.template ?? DEFAULT_TEMPLATE
  if (run.method === 'zero-shot') return [own]
  // The official ensemble adds the dataset's template to the seven, except on ImageNet.
  return ctx.source.name === 'imagenet' || ENSEMBLE_TEMPLATES.includes(own)
    ? [...ENSEMBLE_TEMPLATES]
    : [...ENSEMBLE_TEMPLATES, own]
}

/** What is wrong with a finished run's files (result.json's fields, its learner file), or null. */
export async function damageOf(
  ctx: Context,
  files: { result: string; learner: string },
  run: RunKey,
): Promise<string | null> {
  const damage = resultDamage(files.result)
  if (damage !== null) return damage
  const zeroShot = run.method === 'zero-shot' || run.method === 'ensemble'
  if (!zeroShot) {
    try {
      await PromptLearner.load(ctx.clip, files.learner)
    } catch (e) {
      return `its learner file does not load (${(e as Error).message})`
    }
  }
  return null
}

const digests = new WeakMap<object, Promise<string>>()
/** The content digest of a dataset's images and labels, once per dataset object. */
function digestOf(data: { images: ImageInput[]; labels: number[] }): Promise<string> {
  let d = digests.get(data)
  if (!d) {
    d = dataFingerprint(data.images, data.labels).then((f) => f.digest)
    digests.set(data, d)
  }
  return d
}

/** What a run's result depends on besides its options: the model's weights and the content of
 *  every image it trained, validated and was tested on, as digests (a finished run is reused
 *  only while they are the same). */
async function runData(ctx: Context, run: RunKey): Promise<Record<string, string | string[] | null>> {
  const zeroShot = run.method === 'zero-shot' || run.method === 'ensemble'
  const { train, val } = zeroShot ? { train: null, val: null } : sample(ctx, run.shots, run.seed)
  const initFrom = zeroShot ? undefined : trainOptions(ctx, run).initFrom
  return {
    model: await modelFingerprint(ctx.clip.info.source),
    // The starting prompts' content, not only their path.
    ...(initFrom !== undefined ? { initFrom: (await fileSha256(initFrom)).sha256 } : {}),
    train: train ? await digestOf(train) : null,
    val: val && usesValidation(run) ? await digestOf(val) : null,
    test: await digestOf(ctx.test),
    targets: await Promise.all(ctx.targets.map((t) => (t.test ? digestOf(t.test) : 'none'))),
  }
}

/** Which of runData's parts differ, in words. */
function dataChange(was: unknown, now: Record<string, unknown>): string {
  const before = (was ?? {}) as Record<string, unknown>
  const words: Record<string, string> = {
    model: "the model's weights",
    train: 'the training images',
    val: 'the validation images',
    test: 'the test images',
    targets: "the target datasets' test images",
    initFrom: 'the initFrom file',
  }
  const changed = Object.keys(words).filter((k) => JSON.stringify(before[k]) !== JSON.stringify(now[k]))
  return changed.length > 0 ? changed.map((k) => words[k]).join(', ') : 'the data'
}

function runConfig(ctx: Context, run: RunKey): Record<string, unknown> {
  const zeroShot = run.method === 'zero-shot' || run.method === 'ensemble'
  const { train, val } = zeroShot ? { train: null, val: null } : sample(ctx, run.shots, run.seed)
  const classNames = train?.classNames ?? ctx.source.classNames
  return {
    protocol: ctx.o.protocol,
    model: ctx.modelConfig,
    dataset: {
      name: ctx.source.name,
      classes: ctx.source.classNames.length,
      trainImages: ctx.source.train.images.length,
      testImages: ctx.test.images.length,
    },
    targets: ctx.targets.map((t) => ({
      name: t.name,
      classes: t.classNames.length,
      testImages: t.test?.images.length,
    })),
    method: run.method,
    shots: run.shots,
    seed: run.seed,
    ...(zeroShot
      ? { templates: templatesFor(ctx, run) }
      : {
          learner: { ...learnerOptions(ctx, run, classNames), classNames: classNames.length },
          train: trainOptions(ctx, run),
          trainImages: train?.images.length,
          valImages: val?.images.length,
        }),
    batchSize: ctx.o.batchSize ?? null,
    skipUnreadable: ctx.o.skipUnreadable,
  }
}

export async function executeRun(ctx: Context, run: RunKey, index: number, total: number): Promise<RunRecord> {
  const dir = runFolder(ctx.o.out, run)
  const files = {
    result: join(dir, 'result.json'),
    learner: join(dir, 'learner.safetensors'),
    train: join(dir, 'train.json'),
    checkpoint: join(dir, 'checkpoint.safetensors'),
  }
  const config = { ...runConfig(ctx, run), data: await runData(ctx, run) }
  const damage = existsSync(files.result) ? await damageOf(ctx, files, run) : null
  if (damage !== null) {
    // A finished run whose files are damaged is done again, not served.
    ctx.emit({ type: 'log', message: `${dir}: ${damage}; running it again` })
    for (const f of [files.result, files.learner, files.train, files.checkpoint]) rmSync(f, { force: true })
  }
  if (existsSync(files.result)) {
    const done = readJson<RunRecord>(files.result)
    const diff = firstDifference(done.config, config)
    if (diff !== null) {
      const what =
        diff.split(/[. ]/)[0] === 'data'
          ? `other data: ${dataChange(done.config.data, config.data)} changed since it finished`
          : `a different ${diff}`
      throw invalidArgument(
        `${files.result} was made with ${what}; ` +
          `use another output folder (--out), or delete ${dir} to redo that run with these settings`,
      )
    }
    ctx.emit({ type: 'run-skipped', run, index, total, reason: 'finished' })
    return done
  }
  mkdirSync(dir, { recursive: true })
  const t0 = Date.now()
  const resumed = existsSync(files.checkpoint) || existsSync(files.learner)
  ctx.emit({ type: 'run-start', run, index, total, resumed })

  let model: Clip | PromptLearner = ctx.clip
  let trainRecord: RunRecord['train'] = null
  let trainSeconds = 0
  const zeroShot = run.method === 'zero-shot' || run.method === 'ensemble'
  if (!zeroShot) {
    const { train, val } = sample(ctx, run.shots, run.seed)
    if (existsSync(files.learner) && existsSync(files.train)) {
      // Trained before an interruption during evaluation: evaluate the saved learner.
      model = await PromptLearner.load(ctx.clip, files.learner)
      trainRecord = readJson<RunRecord['train']>(files.train)
    } else {
      const learner = PromptLearner.create(
        ctx.clip,
        run.method as Method,
        learnerOptions(ctx, run, train.classNames) as never,
      )
      const sgd = learnsBySgd(run)
      const options: TrainOptions = sgd
        ? { ...trainOptions(ctx, run), checkpointPath: files.checkpoint, checkpointEvery: 1 }
        : trainOptions(ctx, run)
      const summary: TrainSummary = await new Trainer(learner, options).fit(train, {
        signal: ctx.signal,
        resumeFrom: sgd && existsSync(files.checkpoint) ? files.checkpoint : undefined,
        validation: usesValidation(run) ? val : undefined,
        onProgress: (p) =>
          ctx.emit({
            type: 'train-progress',
            run,
            epoch: p.epoch,
            epochs: p.epochs,
            step: p.step,
            stepsPerEpoch: p.stepsPerEpoch,
            loss: p.loss,
          }),
      })
      trainRecord = {
        seconds: summary.seconds,
        epochs: summary.epochs,
        resumedAfterEpoch: summary.resumedAfterEpoch,
        epochLoss: summary.epochLoss,
        epochAccuracy: summary.epochAccuracy,
        // The images trained on: a skipped (unreadable) image trained nothing.
        trainImages: train.images.length - (summary.skipped?.length ?? 0),
        skipped: summary.skipped?.length ?? 0,
        ...(summary.details ? { details: summary.details } : {}),
      }
      await learner.save(files.learner)
      writeJson(files.train, trainRecord)
      model = learner
    }
    trainSeconds = trainRecord?.seconds ?? 0
  }

  const evaluations: EvalRecord[] = []
  const unsupported: string[] = []
  const t1 = Date.now()
  for (const target of evalTargets(ctx)) {
    if (ctx.signal?.aborted) throw new AbortError(`cancelled while evaluating ${runId(run)}`)
    if (!canScore(model, target.data.classNames)) {
      unsupported.push(target.split)
      continue
    }
    evaluations.push(await evaluateOn(ctx, run, model, target))
  }
  const record: RunRecord = {
    run,
    config,
    evaluations,
    unsupported,
    train: trainRecord,
    timings: {
      trainSeconds,
      evalSeconds: (Date.now() - t1) / 1000,
      totalSeconds: (Date.now() - t0) / 1000,
    },
    versions: ctx.versions,
    executedBy: ctx.executor,
    finishedAt: new Date().toISOString(),
  }
  writeJson(files.result, record)
  rmSync(files.checkpoint, { force: true })
  ctx.emit({ type: 'run-done', run, index, total, metrics: metricsOf(record) })
  return record
}

/** A run's accuracy per split, as its 'run-done' event reports it. */
export function metricsOf(record: RunRecord): Record<string, number> {
  return Object.fromEntries(record.evaluations.map((e) => [e.split, e.accuracy]))
}

/**
 * Whether `model` can score `classNames`: zero-shot CLIP and unified context can score any class
 * names; the linear probe and class-specific context only their own classes (or a subset of them,
 * as ImageNet-A and -R's 200 of ImageNet's 1,000).
 */
function canScore(model: Clip | PromptLearner, classNames: string[]): boolean {
  if (!(model instanceof PromptLearner) || model.scoresAnyClasses) return true
  const own = new Set(model.info.classNames)
  return classNames.every((n) => own.has(n))
}

async function evaluateOn(ctx: Context, run: RunKey, model: Clip | PromptLearner, t: EvalTarget): Promise<EvalRecord> {
  const started = Date.now()
  const evaluator = new Evaluator(model, {
    classNames: t.data.classNames,
    templates: model instanceof Clip ? templatesFor(ctx, run) : undefined,
    batchSize: ctx.o.batchSize,
  })
  const e: Evaluation = await evaluator.evaluate(t.data, {
    onProgress: (p) => ctx.emit({ type: 'eval-progress', run, split: t.split, ...p }),
  })
  if (e.failures.length > 0 && !ctx.o.skipUnreadable) {
    const first = e.failures[0]
    const path = t.data.images[first.index]
    throw new PromptclipError(
      'E_IMAGE_DECODE',
      `${e.failures.length} of ${t.data.images.length} test images of ${t.dataset} could not be read, the first ` +
        `${typeof path === 'string' ? path : `#${first.index}`}: ${first.message} ` +
        '(pass skipUnreadable / --skip-unreadable to leave them out)',
    )
  }
  const confusion: [number, number, number][] = []
  e.confusion.forEach((row, i) => {
    row.forEach((count, j) => {
      if (count > 0) confusion.push([i, j, count])
    })
  })
  return {
    split: t.split,
    dataset: t.dataset,
    classNames: t.data.classNames,
    total: e.total,
    correct: e.correct,
    accuracy: e.accuracy,
    errorRate: e.errorRate,
    macroF1: e.macroF1,
    topK: e.topK,
    perClass: e.perClass.map((c) => ({ name: c.name, accuracy: c.accuracy, support: c.support })),
    confusion,
    skipped: e.failures.length,
    seconds: (Date.now() - started) / 1000,
  }
}
