/**
 * What a protocol runs: its options checked and resolved (defaults filled in) before any model or
 * image is loaded, and the list of runs (method × shots × seed) it makes of them.
 */
import { basename } from 'node:path'
import type { DatasetSplits } from '../datasets'
import { invalidArgument } from '../errors'
import { methodCatalogue, methodNames } from '../methods'
import { positiveInt } from '../options'
import type { TrainOptions } from '../train'
import {
  DEFAULT_SEEDS,
  DEFAULT_SHOTS,
  FEW_SHOT_SHOTS,
  type ProtocolMethod,
  type ProtocolName,
  type ProtocolOptions,
  type RunKey,
  type RunRecord,
} from './types'

export const PROTOCOLS: readonly ProtocolName[] = ['few-shot', 'base-to-new', 'cross-dataset', 'domain-generalization']

/** Methods without training: one run, independent of shots and seeds (recorded as 0 shots, seed 0). */
export const ZERO_SHOT_METHODS: readonly ProtocolMethod[] = ['zero-shot', 'ensemble']

const ZERO_SHOT_TITLES: Record<string, string> = { 'zero-shot': 'Zero-shot CLIP', ensemble: 'Prompt ensembling' }

/** In the order tables and plots list them: the baselines, then every learner of the core's
 *  catalogue in its order (baselines, then the prompt learners by year). */
export function protocolMethods(): ProtocolMethod[] {
  return [...ZERO_SHOT_METHODS, ...methodNames()]
}

/** A method's title as tables and reports print it (the catalogue's; a name the catalogue no
 *  longer has, from an older results folder, as it was recorded). */
export function methodTitle(m: ProtocolMethod): string {
  return ZERO_SHOT_TITLES[m] ?? methodCatalogue().find((e) => e.name === m)?.title ?? m
}

/**
 * The hand-made templates of the official code's prompt-ensembling baseline (CoOp's
 * trainers/zsclip.py, `IMAGENET_TEMPLATES_SELECT`, seven of CLIP's 80 ImageNet templates); the
 * dataset's own template joins them, as there, for every dataset but ImageNet.
 */
export const ENSEMBLE_TEMPLATES: readonly string[] = [
  'itap of a {}.',
  'a bad photo of the {}.',
  'a origami {}.',
  'a photo of the large {}.',
  'a {} in a video game.',
  'art of the {}.',
  'a photo of the small {}.',
]

/** The ImageNet variants of the domain-generalisation protocol, and the ten other datasets of
 *  cross-dataset transfer (catalog names), the defaults when the source is ImageNet. */
export const DG_TARGETS = ['imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r']
export const CROSS_DATASET_TARGETS = [
  'caltech101',
  'oxford_pets',
  'stanford_cars',
  'oxford_flowers',
  'food101',
  'fgvc_aircraft',
  'sun397',
  'dtd',
  'eurosat',
  'ucf101',
]

/** A dataset as the options give it: a source `openDataset` reads, or splits in memory. */
export type DatasetSource = string | DatasetSplits

export interface ResolvedOptions {
  protocol: ProtocolName
  /** The source dataset's key (the string given, or the in-memory splits' name). */
  dataset: string
  targets: string[]
  /** What each key opens. */
  sources: Record<string, DatasetSource>
  methods: ProtocolMethod[]
  shots: number[]
  seeds: number[]
  out: string
  train: Partial<Record<ProtocolMethod, TrainOptions>>
  learners: Partial<Record<ProtocolMethod, Record<string, unknown>>>
  batchSize?: number
  skipUnreadable: boolean
  /** How tables, plots and evaluation splits name each dataset (source and targets): a catalog
   *  name as given, a path by its last component (the whole path where two would read the same). */
  labels: Record<string, string>
}

function datasetLabels(sources: string[]): Record<string, string> {
  const short = (s: string) => (/[\\/]/.test(s) ? basename(s.replace(/[\\/]+$/, '')) || s : s)
  const counts = new Map<string, number>()
  for (const s of new Set(sources)) counts.set(short(s), (counts.get(short(s)) ?? 0) + 1)
  return Object.fromEntries(sources.map((s) => [s, (counts.get(short(s)) ?? 0) > 1 ? s : short(s)]))
}

const intList = (name: string, xs: unknown, min: number): number[] => {
  if (!Array.isArray(xs) || xs.length === 0) throw invalidArgument(`${name} must be a non-empty list of integers`)
  for (const x of xs) {
    if (!Number.isInteger(x) || (x as number) < min) {
      throw invalidArgument(`${name}: ${JSON.stringify(x)} is not an integer of at least ${min}`)
    }
  }
  return [...new Set(xs as number[])].sort((a, b) => a - b)
}

function sourceKey(what: string, d: unknown): string {
  if (typeof d === 'string' && d.length > 0) return d
  if (d && typeof d === 'object' && typeof (d as DatasetSplits).name === 'string' && (d as DatasetSplits).train) {
    return (d as DatasetSplits).name
  }
  throw invalidArgument(
    `${what} must be a dataset source (a catalog name or a path) or { name, train, test, ... } splits`,
  )
}

/** Every option checked, by name, before any work starts. */
export function resolveOptions(o: ProtocolOptions): ResolvedOptions {
  if (!o || typeof o !== 'object') throw invalidArgument('runProtocol needs an options object')
  if (!PROTOCOLS.includes(o.protocol)) {
    throw invalidArgument(`protocol: ${JSON.stringify(o.protocol)} is not one of ${PROTOCOLS.join(', ')}`)
  }
  const dataset = sourceKey('dataset', o.dataset)
  if (typeof o.out !== 'string' || o.out.length === 0) throw invalidArgument('out (the results folder) must be given')
  const METHODS = protocolMethods()
  const methods = o.methods ?? [...METHODS]
  if (!Array.isArray(methods) || methods.length === 0) throw invalidArgument('methods must be a non-empty list')
  for (const m of methods) {
    if (!METHODS.includes(m)) throw invalidArgument(`methods: ${JSON.stringify(m)} is not one of ${METHODS.join(', ')}`)
  }
  const transfer = o.protocol === 'cross-dataset' || o.protocol === 'domain-generalization'
  let targets = o.targets ?? []
  if (transfer && targets.length === 0) {
    if (dataset !== 'imagenet') {
      throw invalidArgument(
        `${o.protocol}: targets (the datasets to evaluate on) are required unless the source is "imagenet"`,
      )
    }
    targets = o.protocol === 'cross-dataset' ? CROSS_DATASET_TARGETS : DG_TARGETS
  }
  if (!transfer && targets.length > 0) throw invalidArgument(`${o.protocol} takes no targets`)
  const targetKeys = targets.map((t, i) => sourceKey(`targets[${i}]`, t))
  const sources: Record<string, DatasetSource> = { [dataset]: o.dataset }
  for (const [i, key] of targetKeys.entries()) {
    if (key in sources) throw invalidArgument(`targets[${i}]: ${key} is given twice (or is the source)`)
    sources[key] = targets[i]
  }
  for (const key of Object.keys(o.train ?? {})) {
    if (!METHODS.includes(key as ProtocolMethod)) throw invalidArgument(`train: ${JSON.stringify(key)} is not a method`)
  }
  for (const key of Object.keys(o.learners ?? {})) {
    if (!METHODS.includes(key as ProtocolMethod)) {
      throw invalidArgument(`learners: ${JSON.stringify(key)} is not a method`)
    }
  }
  positiveInt('batchSize', o.batchSize)
  return {
    protocol: o.protocol,
    dataset,
    targets: targetKeys,
    sources,
    methods: METHODS.filter((m) => methods.includes(m)),
    shots: intList('shots', o.shots ?? (o.protocol === 'few-shot' ? [...FEW_SHOT_SHOTS] : [DEFAULT_SHOTS]), 1),
    seeds: intList('seeds', o.seeds ?? [...DEFAULT_SEEDS], 0),
    out: o.out,
    train: o.train ?? {},
    learners: (o.learners ?? {}) as ResolvedOptions['learners'],
    batchSize: o.batchSize,
    skipUnreadable: o.skipUnreadable ?? false,
    labels: datasetLabels([dataset, ...targetKeys]),
  }
}

/** What a protocol's tables and report read of its options. */
export type ReportPlan = Pick<
  ResolvedOptions,
  'protocol' | 'dataset' | 'targets' | 'methods' | 'shots' | 'seeds' | 'labels'
>

/** The options as the results files show them: the methods of every run recorded (this call's
 *  and a folder's earlier ones), in the catalogue's order. */
export function resultsPlan(o: ResolvedOptions, records: RunRecord[]): ResolvedOptions {
  const recorded = new Set(records.map((r) => r.run.method))
  return { ...o, methods: protocolMethods().filter((m) => recorded.has(m)) }
}

/** Zero-shot baselines first (once each), then every learner at each shot count and seed. */
export function planRuns(o: ResolvedOptions): RunKey[] {
  const runs: RunKey[] = []
  for (const method of o.methods) {
    if (ZERO_SHOT_METHODS.includes(method)) runs.push({ method, dataset: o.dataset, shots: 0, seed: 0 })
  }
  for (const shots of o.shots) {
    for (const seed of o.seeds) {
      for (const method of o.methods) {
        if (!ZERO_SHOT_METHODS.includes(method)) runs.push({ method, dataset: o.dataset, shots, seed })
      }
    }
  }
  return runs
}

/** A run's folder name under `<out>/runs/`. */
export function runId(run: RunKey): string {
  return ZERO_SHOT_METHODS.includes(run.method) ? run.method : `${run.method}-${run.shots}shot-seed${run.seed}`
}
