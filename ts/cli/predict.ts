/**
 * `zeroshot` and `predict`: labels for image files and folders, from zero-shot CLIP (class names
 * and templates) or from a saved prompt (its own classes, or new class names).
 */
import { type Command, Option } from 'commander'
import { modelName, type ZeroShotPrediction } from '../clip'
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
  loadClip,
  type ModelFlags,
  positiveInt,
  print,
  printJson,
  readClasses,
  requireFile,
  template,
} from './common'
import { expandImages } from './data'

interface Flags extends ModelFlags {
  prompt?: string
  classes?: string[]
  classesFile?: string
  template?: string[]
  topK: number
  batchSize?: number
  json?: boolean
}

export function register(program: Command, ctx: Ctx, name: 'zeroshot' | 'predict'): void {
  const cmd = program.command(name).argument('<images...>', 'image files (JPEG, PNG, WebP) and folders of them')
  if (name === 'zeroshot') {
    cmd
      .summary('label images with zero-shot CLIP')
      .description(
        'Label images with zero-shot CLIP: each image against the class names, through the templates ' +
          '(several are ensembled). Folders contribute the images directly inside them.',
      )
  } else {
    cmd
      .summary('label images with a saved prompt (or zero-shot)')
      .description(
        'Label images with a prompt saved by `promptclip train` (--prompt), with its own classes or new ' +
          'class names (--classes); without --prompt, zero-shot CLIP as `zeroshot`.',
      )
    cmd.option('--prompt <file>', 'a prompt file saved by `promptclip train`')
  }
  addClassOptions(cmd)
  cmd
    .addOption(
      new Option('--template <text>', 'zero-shot prompt template with {} for the class name; repeat to ensemble')
        .argParser(template)
        .default(undefined, '"a photo of a {}."'),
    )
    .addOption(new Option('--top-k <k>', 'labels to list per image').argParser(positiveInt).default(3))
    .addOption(new Option('--batch-size <n>', 'images per forward pass').argParser(positiveInt))
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (inputs: string[], flags: Flags) => {
    ctx.exitCode = await classify(name, inputs, flags, ctx)
  })
}

async function classify(name: string, inputs: string[], flags: Flags, ctx: Ctx): Promise<number> {
  // Every check before any work.
  const classes = readClasses(flags)
  if (flags.prompt !== undefined) {
    requireFile(flags.prompt, '--prompt')
    if (flags.template) throw badInput('--template is for zero-shot; a prompt file brings its own learned context')
  } else if (!classes) {
    throw badInput(
      `${name} needs class names: --classes a,b,c or --classes-file FILE${name === 'predict' ? ', or --prompt FILE' : ''}`,
    )
  }
  checkModel(flags)
  const images = expandImages(inputs)

  const clip = await loadClip(flags, ctx)
  const onProgress = ctx.progress.images(name)
  let preds: ZeroShotPrediction[]
  if (flags.prompt !== undefined) {
    const learner = await PromptLearner.load(clip, flags.prompt)
    preds = await learner.predict(images, {
      classNames: classes,
      topK: flags.topK,
      batchSize: flags.batchSize,
      onProgress,
    })
  } else {
    const options = { templates: flags.template, topK: flags.topK, batchSize: flags.batchSize }
    preds = await clip.zeroShot(images, classes as string[], { ...options, onProgress })
  }
  ctx.progress.stop()

  if (flags.json) {
    printJson({
      model: modelName(flags.model),
      ...(flags.prompt !== undefined ? { prompt: flags.prompt } : { templates: flags.template ?? [] }),
      classes: classes ?? null,
      predictions: preds.map((p) =>
        p.error
          ? { image: images[p.index], error: { code: p.error.code, message: p.error.message } }
          : { image: images[p.index], top: p.top.map((t) => ({ label: t.label, probability: t.probability })) },
      ),
    })
  } else {
    for (const p of preds) {
      const what = p.error
        ? `error ${p.error.code}: ${p.error.message}`
        : p.top.map((t) => `${t.label} ${(100 * t.probability).toFixed(1)}%`).join(', ')
      print(`${images[p.index]}: ${what}`)
    }
  }
  const failed = preds.filter((p) => p.error).length
  if (failed > 0) ctx.progress.warn(`${failed} of ${preds.length} images could not be read`)
  return failed > 0 ? EXIT.PARTIAL : EXIT.OK
}
