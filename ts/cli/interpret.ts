/** `interpret`: the nearest vocabulary words of each learned context vector (CoOp's Table 4). */
import { type Command, Option } from 'commander'
import { PromptLearner } from '../prompt'
import {
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
  requireFile,
} from './common'

interface Flags extends ModelFlags {
  prompt?: string
  topK: number
  json?: boolean
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('interpret')
    .summary("a prompt's nearest words per context position")
    .description(
      "The nearest vocabulary words (Euclidean distance in CLIP's token embedding space) of each " +
        'learned context vector of a saved prompt, as CoOp interprets its prompts.',
    )
    .option('--prompt <file>', 'a prompt file saved by `promptclip train`')
    .addOption(new Option('--top-k <k>', 'words per position').argParser(positiveInt).default(3))
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (flags: Flags) => {
    if (flags.prompt === undefined)
      throw badInput('interpret needs --prompt FILE (a prompt saved by `promptclip train`)')
    requireFile(flags.prompt, '--prompt')
    checkModel(flags)
    const clip = await loadClip(flags, ctx)
    const prompt = flags.prompt
    const learner = await PromptLearner.load(clip, prompt)
    const rows = await learner.interpret({ topK: flags.topK })
    if (flags.json) {
      printJson({ prompt, method: learner.info.method, rows })
    } else {
      const names = learner.info.classNames
      for (const r of rows) {
        const who = r.classIndex !== undefined ? `${names[r.classIndex]}, ` : ''
        const words = r.tokens.map((t) => `${t.token} (${t.distance.toFixed(3)})`).join(', ')
        print(`${who}position ${r.position + 1}: ${words}`)
      }
    }
    ctx.exitCode = EXIT.OK
  })
}
