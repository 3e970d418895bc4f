/**
 * `train`: learn a prompt (or fit the linear probe) on a dataset, save it, keep a checkpoint next
 * to it that a rerun of the same command resumes from, and evaluate on the test split if any.
 */
import { existsSync, mkdirSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import { type Command, Option } from 'commander'
import { modelName } from '../clip'
import { type DatasetSplits, fewShotSplits, openDataset, splitFractions, writeSplitFile } from '../datasets'
import { PromptclipError } from '../errors'
import { type Evaluation, Evaluator } from '../evaluate'
import { methodCatalogue, methodEntry, methodNames, sgdMethods } from '../methods'
import { type Method, PromptLearner } from '../prompt'
import type { TrainOptions, TrainSummary } from '../train'
import { Trainer } from '../train'
import {
  addJsonOption,
  addModelOptions,
  badInput,
  type Ctx,
  checkModel,
  EXIT,
  EXIT_HELP,
  epochCount,
  fetchDatasetArg,
  fraction,
  given,
  loadClip,
  type ModelFlags,
  nameList,
  nonNegativeInt,
  pct,
  positiveInt,
  positiveNumber,
  print,
  printJson,
  requireFile,
} from './common'
import { describe } from './data'
import { commanderOption, learnerOptionsFrom, methodFlags } from './methodFlags'

interface Flags extends ModelFlags {
  imageRoot?: string
  dataRoot?: string
  method: Method
  epochs?: number
  steps?: number
  lr?: number
  batchSize?: number
  seed: number
  shots?: number
  testFraction?: number
  valFraction?: number
  split?: string
  classes?: string[]
  classNames?: string
  augment?: boolean
  checkpointEvery?: number
  out?: string
  resume: boolean
  skipUnreadable?: boolean
  shuffle: boolean
  initFrom?: string
  json?: boolean
}

/** The training flags, which apply to the methods trained by SGD steps (refused early for the
 *  others). The method flags (--n-ctx, --kg-weight, ...) come from the catalogue (methodFlags.ts). */
const SGD_FLAGS: Partial<Record<keyof Flags, string>> = {
  epochs: '--epochs',
  steps: '--steps',
  lr: '--lr',
  batchSize: '--batch-size',
  augment: '--augment/--no-augment',
  checkpointEvery: '--checkpoint-every',
  shuffle: '--no-shuffle',
  initFrom: '--init-from',
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('train')
    .summary('learn a prompt on a dataset and save it')
    .description(
      `Train a learner (${methodCatalogue()
        .map((e) => e.title)
        .join(', ')}) on a dataset: an image folder ` +
        '(one sub-folder per class, or train/ test/ [val/] of them) or a split_zhou_*.json file. ' +
        'Saves the learner to --out and a checkpoint next to it (<out>.ckpt); running the same ' +
        'command again after Ctrl-C resumes from the checkpoint. Evaluates on the test split if any.',
    )
    .argument('<dataset>', 'a catalog name, an image folder, a split file or a CSV')
    .option('--image-root <dir>', 'folder the split file’s image paths are relative to')
    .option('--data-root <dir>', 'where catalog datasets live (default: $PROMPTCLIP_DATA, else ./data)')
    .addOption(new Option('--method <method>', 'what to learn').choices(methodNames()).default('coop'))
    .addOption(new Option('--epochs <n>', 'training epochs (default: the method’s recipe)').argParser(epochCount))
    .addOption(
      new Option(
        '--steps <n>',
        'optimiser steps instead of epochs (default for CLIP-LoRA: 500 x shots, as its official code)',
      ).argParser(positiveInt),
    )
    .addOption(new Option('--lr <rate>', 'learning rate (default: the method’s recipe)').argParser(positiveNumber))
    .addOption(
      new Option('--batch-size <n>', 'images per training step (default: the method’s recipe)').argParser(positiveInt),
    )
    .addOption(
      new Option('--seed <n>', 'seed of the few-shot draw, the initialisation and training')
        .argParser(nonNegativeInt)
        .default(1),
    )
    .addOption(new Option('--shots <n>', 'train on N images per class (the few-shot protocol)').argParser(positiveInt))
    .addOption(
      new Option(
        '--test-fraction <f>',
        "hold out this share of each class's images for testing (seeded by --seed)",
      ).argParser(fraction),
    )
    .addOption(
      new Option('--val-fraction <f>', "hold out this share of each class's images for validation").argParser(fraction),
    )
    .option('--split <file>', 'the split an earlier --test-fraction/--val-fraction run wrote (<out>.split.json)')
    .addOption(
      new Option('--classes <a,b,c>', 'train on these classes only (folder names, any case)').argParser(nameList),
    )
    .option('--class-names <file>', 'folder -> class name: a JSON object or folder,name lines')
    .option('--augment', 'random resized crop + flip (the default)')
    .option('--no-augment', 'no augmentation: image features are computed once (much faster)')
    .addOption(new Option('--checkpoint-every <n>', 'epochs between checkpoints (default 1)').argParser(epochCount))
    .option('--out <file>', 'the prompt file to write (default promptclip-<method>.safetensors)')
    .option('--no-resume', 'start over even if the checkpoint of an earlier run exists')
    .option('--skip-unreadable', 'skip images that cannot be read instead of failing')
    .option('--no-shuffle', "keep the images' own order every epoch (to compare step by step with the official code)")
    .option(
      '--init-from <file>',
      'start from these prompts: a prompt file, or safetensors under the official names (`promptclip convert`)',
    )
  for (const f of methodFlags()) cmd.addOption(commanderOption(f))
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (source: string, flags: Flags, command: Command) => {
    ctx.exitCode = await train(source, flags, command, ctx)
  })
}

async function train(source: string, flags: Flags, command: Command, ctx: Ctx): Promise<number> {
  // Every check before any work.
  const method = flags.method
  const entry = methodEntry(method)
  const learnsBySgd = entry.fitting === 'sgd'
  const own = learnerOptionsFrom(
    method,
    (key) => given(command, key),
    flags as object as Record<string, unknown>,
    badInput,
  )
  for (const [key, flag] of Object.entries(SGD_FLAGS)) {
    if (!learnsBySgd && given(command, key)) {
      throw badInput(`${flag} does not apply to --method ${method} (it is for ${sgdMethods().join(', ')})`)
    }
  }
  checkModel(flags)
  if (flags.initFrom !== undefined) requireFile(flags.initFrom, '--init-from')
  const out = flags.out ?? `promptclip-${method}.safetensors`
  if (existsSync(out) && statSync(out).isDirectory()) throw badInput(`--out ${out} is a folder; give a file name`)
  const checkpoint = `${out}.ckpt`
  const resume = learnsBySgd && flags.resume && existsSync(checkpoint)
  await fetchDatasetArg(source, ctx, flags.offline)
  const splits = openSplits(source, flags, out)
  const { train: data, val } = flags.shots
    ? fewShotSplits(splits, flags.shots, flags.seed)
    : { train: splits.train, val: splits.val }
  if (data.images.length === 0) throw badInput(`dataset ${source} has no training images`)
  const log = (line: string) => ctx.progress.log(line)
  if (flags.shots) {
    for (const note of shortClasses(splits, data.labels, flags.shots)) log(note)
  }
  const splitFile =
    flags.testFraction !== undefined || flags.valFraction !== undefined ? `${out}.split.json` : undefined
  if (splitFile !== undefined) {
    const file = splitFile
    writeSplitFile(file, splits, imageRootOf(source, flags))
    log(`split: ${file} (${describe(splits.train)} to train; rerun this split with --split ${file})`)
  }
  const unless = entry.validationUnless
  if (entry.usesValidation && !val && !(unless.length > 0 && unless.every((o) => own[o] !== undefined))) {
    const flags = unless.map((o) => methodFlags().find((f) => f.option === o && f.methods.includes(method))?.flag)
    const give = flags.length > 0 && flags.every((f) => f !== undefined) ? `give ${flags.join(' and ')}, or ` : ''
    throw badInput(
      `${entry.title} fits on a validation split, and this dataset has none: ` +
        `${give}--shots N (validation images are then drawn from the rest), ` +
        '--val-fraction F, or a dataset with a val/ split',
    )
  }
  log(
    `train: ${method} on ${splits.name}: ${describe(data)}` +
      (flags.shots ? ` (${flags.shots} shots per class, seed ${flags.seed})` : ''),
  )
  if (resume) log(`resuming from checkpoint ${checkpoint} (--no-resume starts over)`)

  const clip = await loadClip(flags, ctx)
  const classNames = splits.classNames
  const seed = flags.seed
  // The run's seed seeds the learner's initialisation too, where the method has one.
  const learner = PromptLearner.create(clip, method, {
    ...(entry.seeded ? { seed } : {}),
    ...own,
    classNames,
  })
  const options: TrainOptions = learnsBySgd
    ? {
        epochs: flags.epochs,
        steps: flags.steps,
        lr: flags.lr,
        batchSize: flags.batchSize,
        seed,
        augment: flags.augment,
        checkpointPath: checkpoint,
        checkpointEvery: flags.checkpointEvery,
        skipUnreadable: flags.skipUnreadable,
        shuffle: flags.shuffle,
        initFrom: flags.initFrom,
      }
    : { skipUnreadable: flags.skipUnreadable }
  if (learnsBySgd) mkdirSync(dirname(checkpoint), { recursive: true })

  let summary: TrainSummary
  try {
    summary = await new Trainer(learner, options).fit(data, {
      onProgress: ctx.progress.train(),
      signal: ctx.interrupt.signal(),
      resumeFrom: resume ? checkpoint : undefined,
      validation: val,
    })
  } catch (err) {
    ctx.progress.stop()
    if (err instanceof PromptclipError && err.code === 'E_CANCELLED') {
      // The trainer writes the checkpoint at the step where it was cancelled: a rerun loses no step.
      if (existsSync(checkpoint)) {
        log(`checkpoint: ${checkpoint}`)
        log('run the same command again to resume from it (add --no-resume to start over)')
      } else {
        log('stopped before the first checkpoint was written: nothing to resume')
      }
      return EXIT.INTERRUPTED
    }
    if (resume && err instanceof PromptclipError && err.code === 'E_INVALID_ARGUMENT') {
      throw new PromptclipError(err.code, checkpointRefusal(err.message, checkpoint, flags.out === undefined), {
        cause: err,
      })
    }
    throw err
  }
  ctx.progress.stop()
  if (summary.resumedAfterEpoch >= summary.epochs && summary.epochs > 0) {
    log(`resumed: the checkpoint had finished all ${summary.epochs} epochs (--no-resume trains again)`)
  } else if (summary.resumedAfterEpoch > 0) {
    log(`resumed after epoch ${summary.resumedAfterEpoch} of ${summary.epochs}`)
  }
  mkdirSync(dirname(out), { recursive: true })
  await learner.save(out)

  let test: Evaluation | undefined
  if (splits.test && splits.test.images.length > 0) {
    const onProgress = ctx.progress.images('test')
    test = await new Evaluator(learner).evaluate(splits.test, { onProgress })
    ctx.progress.stop()
  }

  const skipped = summary.skipped
  // As every command: done, but images that could not be read were left out (exit 3).
  const unread = (skipped?.length ?? 0) + (test?.failures.length ?? 0)
  if (unread > 0) ctx.progress.warn(`${unread} unreadable image${unread === 1 ? ' was' : 's were'} left out`)
  const partial = unread > 0 ? EXIT.PARTIAL : EXIT.OK
  if (flags.json) {
    printJson({
      model: modelName(flags.model),
      method,
      dataset: splits.name,
      classNames,
      // The images trained on: those that were read (a skipped image trained nothing).
      trainImages: data.images.length - (skipped?.length ?? 0),
      shots: flags.shots ?? null,
      split: splitFile ?? flags.split ?? null,
      seed,
      prompt: out,
      checkpoint: learnsBySgd ? checkpoint : null,
      summary,
      ...(skipped !== undefined ? { skipped } : {}),
      test: test ? summarize(test) : null,
    })
    return partial
  }
  const last = summary.epochLoss.length - 1
  print(`prompt: ${out} (${method}, ${classNames.length} classes)`)
  if (learnsBySgd) {
    const resumed = summary.resumedAfterEpoch > 0 ? ` (resumed after epoch ${summary.resumedAfterEpoch})` : ''
    const final =
      last >= 0
        ? `, last epoch loss ${summary.epochLoss[last].toFixed(4)}, accuracy ${pct(summary.epochAccuracy[last])}`
        : ''
    print(
      `trained: ${summary.epochs} epoch${summary.epochs === 1 ? '' : 's'}${resumed}${final}, ${summary.seconds.toFixed(1)} s`,
    )
    print(`checkpoint: ${checkpoint}`)
  }
  for (const line of summary.fitted) print(`fitted: ${line}`)
  if (test) {
    print(
      `test: accuracy ${pct(test.accuracy)} (${test.correct}/${test.total} images), macro-F1 ${test.macroF1.toFixed(1)}`,
    )
  }
  return partial
}

/**
 * The dataset as the flags shape it: read through a split file an earlier run wrote (--split),
 * with its class folders renamed (--class-names) and chosen (--classes), then held-out shares of
 * each class for testing and validation (--test-fraction, --val-fraction).
 */
function openSplits(source: string, flags: Flags, out: string): DatasetSplits {
  const fractions = flags.testFraction !== undefined || flags.valFraction !== undefined
  if (flags.split !== undefined && fractions) {
    throw badInput(
      '--split reads a split that was written before; it does not go with --test-fraction or --val-fraction',
    )
  }
  if (flags.split !== undefined && flags.classNames !== undefined) {
    throw badInput('--split carries its class names; it does not go with --class-names')
  }
  const common = { root: flags.dataRoot, ...(flags.classes ? { classes: flags.classes } : {}) }
  if (flags.split !== undefined) {
    // The split file's paths are relative to the folder it was drawn from: the dataset argument.
    return { ...openDataset(flags.split, { ...common, imageRoot: imageRootOf(source, flags) }), name: source }
  }
  const splits = openDataset(source, {
    ...common,
    imageRoot: flags.imageRoot,
    ...(flags.classNames !== undefined ? { classNamesFile: flags.classNames } : {}),
  })
  if (!fractions) return splits
  if (out === `${source}.split.json`) throw badInput(`--out ${out}: its split file would overwrite the dataset`)
  return splitFractions(splits, { testFraction: flags.testFraction, valFraction: flags.valFraction, seed: flags.seed })
}

/** The folder a written split's paths are relative to: the dataset folder, else the CSV's
 *  image root (--image-root, else the CSV's folder). */
function imageRootOf(source: string, flags: Flags): string {
  return existsSync(source) && statSync(source).isDirectory() ? source : (flags.imageRoot ?? dirname(source))
}

/** One note per class that has fewer than `shots` training images: it trains on what it has. */
function shortClasses(splits: DatasetSplits, labels: number[], shots: number): string[] {
  const counts = new Array<number>(splits.classNames.length).fill(0)
  for (const l of labels) counts[l]++
  return counts.flatMap((n, c) =>
    n < shots ? [`class ${splits.classNames[c]} has fewer than ${shots} images: using ${n}`] : [],
  )
}

/**
 * A checkpoint that this run cannot resume, in one line that names the ways out: --no-resume,
 * another --out, or moving the checkpoint away.
 */
export function checkpointRefusal(coreMessage: string, checkpoint: string, defaultOut: boolean): string {
  const why = coreMessage
    .replace(/^invalid argument: /, '')
    .replace(/^.*?cannot resume, /, '')
    .replace(/\s*\(resume with [^)]*\)\s*$/, '')
    .replace(/\.?\s*To start afresh[\s\S]*$/, '')
    .replace(/^the checkpoint \S+ /, 'it ')
  const where = defaultOut ? ' (the default --out of this method)' : ''
  return (
    `the checkpoint ${checkpoint}${where} is from another run and cannot be resumed: ${why}. ` +
    `Pass --no-resume to start over, give --out <other file> to keep it, or move ${checkpoint} away.`
  )
}

/** An evaluation without its confusion matrix (for train's JSON). */
export function summarize(e: Evaluation) {
  return {
    total: e.total,
    correct: e.correct,
    accuracy: e.accuracy,
    errorRate: e.errorRate,
    macroF1: e.macroF1,
    topK: e.topK,
    failures: e.failures,
  }
}
