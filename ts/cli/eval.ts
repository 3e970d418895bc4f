/**
 * `eval`: accuracy, macro-F1, top-k and per-class accuracy of a saved prompt, or of zero-shot CLIP,
 * on a dataset split, with the learned classes or new class names.
 */
import { type Command, Option } from 'commander'
import { modelName } from '../clip'
import { openDataset } from '../datasets'
import { type Evaluation, Evaluator } from '../evaluate'
import { PromptLearner } from '../prompt'
import {
  addClassOptions,
  addJsonOption,
  addModelOptions,
  badInput,
  type Ctx,
  checkModel,
  EXIT,
  EXIT_HELP,
  fetchDatasetArg,
  intList,
  loadClip,
  type ModelFlags,
  pct,
  positiveInt,
  print,
  printJson,
  readClasses,
  requireFile,
  template,
} from './common'
import { describe } from './data'

type Split = 'train' | 'val' | 'test'

interface Flags extends ModelFlags {
  prompt?: string
  classes?: string[]
  classesFile?: string
  template?: string[]
  split?: Split
  imageRoot?: string
  dataRoot?: string
  topK?: number[]
  batchSize?: number
  json?: boolean
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('eval')
    .summary('measure a saved prompt (or zero-shot CLIP) on a dataset')
    .description(
      'Measure a prompt saved by `promptclip train` (--prompt), or zero-shot CLIP without it, on a ' +
        'dataset: an image folder (one sub-folder per class, or train/ test/ [val/] of them) or a ' +
        'split file. Labels are matched to the class names by name, so --classes may list new ' +
        'classes (and more than the dataset has).',
    )
    .argument('<dataset>', 'a catalog name, an image folder, a split file or a CSV')
    .option('--prompt <file>', 'a prompt file saved by `promptclip train`')
  addClassOptions(cmd)
  cmd
    .addOption(
      new Option('--template <text>', 'zero-shot prompt template with {} for the class name; repeat to ensemble')
        .argParser(template)
        .default(undefined, '"a photo of a {}."'),
    )
    .addOption(
      new Option('--split <split>', 'which split (default: test if the dataset has one, else train)').choices([
        'train',
        'val',
        'test',
      ]),
    )
    .option('--image-root <dir>', 'folder the split file’s image paths are relative to')
    .option('--data-root <dir>', 'where catalog datasets live (default: $PROMPTCLIP_DATA, else ./data)')
    .addOption(
      new Option('--top-k <k,...>', 'top-k accuracies to report')
        .argParser(intList(positiveInt))
        .default(undefined, '1,5'),
    )
    .addOption(new Option('--batch-size <n>', 'images per forward pass').argParser(positiveInt))
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (source: string, flags: Flags) => {
    ctx.exitCode = await evaluate(source, flags, ctx)
  })
}

async function evaluate(source: string, flags: Flags, ctx: Ctx): Promise<number> {
  // Every check before any work.
  const classes = readClasses(flags)
  if (flags.prompt !== undefined) {
    requireFile(flags.prompt, '--prompt')
    if (flags.template) throw badInput('--template is for zero-shot; a prompt file brings its own learned context')
  }
  checkModel(flags)
  await fetchDatasetArg(source, ctx, flags.offline)
  const splits = openDataset(source, { imageRoot: flags.imageRoot, root: flags.dataRoot })
  const split: Split = flags.split ?? (splits.test ? 'test' : 'train')
  const data = splits[split]
  if (!data) throw badInput(`dataset ${source} has no ${split} split`)
  if (data.images.length === 0) throw badInput(`the ${split} split of ${source} has no images`)
  if (classes) {
    const missing = data.classNames.filter((c) => !classes.includes(c))
    if (missing.length > 0) {
      throw badInput(
        `the dataset's class${missing.length > 1 ? 'es' : ''} ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not in --classes`,
      )
    }
  }
  ctx.progress.log(`eval: ${splits.name} (${split}): ${describe(data)}`)

  const clip = await loadClip(flags, ctx)
  const model = flags.prompt !== undefined ? await PromptLearner.load(clip, flags.prompt) : clip
  const options = { classNames: classes, templates: flags.template, topK: flags.topK, batchSize: flags.batchSize }
  const result = await new Evaluator(model).evaluate(data, { ...options, onProgress: ctx.progress.images('eval') })
  ctx.progress.stop()

  if (flags.json) {
    printJson({
      model: modelName(flags.model),
      ...(flags.prompt !== undefined ? { prompt: flags.prompt } : { templates: flags.template ?? [] }),
      dataset: splits.name,
      split,
      ...result,
    })
  } else {
    printEvaluation(result)
  }
  if (result.failures.length > 0) ctx.progress.warn(`${result.failures.length} images could not be read (left out)`)
  return result.failures.length > 0 ? EXIT.PARTIAL : EXIT.OK
}

export function printEvaluation(e: Evaluation): void {
  const topK = e.topK.filter((t) => t.k > 1).map((t) => `  top-${t.k} ${pct(t.accuracy)}`)
  print(`accuracy ${pct(e.accuracy)} (${e.correct}/${e.total})  macro-F1 ${e.macroF1.toFixed(1)}${topK.join('')}`)
  const width = Math.max(5, ...e.perClass.map((c) => c.name.length))
  print(`${'class'.padEnd(width)}  accuracy  images`)
  for (const c of e.perClass) {
    print(
      `${c.name.padEnd(width)}  ${(c.accuracy === null ? '-' : pct(c.accuracy)).padStart(8)}  ${String(c.support).padStart(6)}`,
    )
  }
  for (const f of e.failures) print(`unreadable: image ${f.index}: ${f.code}: ${f.message}`)
}
