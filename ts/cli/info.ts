/** `info`: a CLIP's description, or a saved learner's, as JSON. */
import { type Command, Option } from 'commander'
import { BUILTIN_MODEL, Clip } from '../clip'
import { PromptLearner } from '../prompt'
import {
  addJsonOption,
  type Ctx,
  checkModel,
  device,
  EXIT,
  EXIT_HELP,
  type ModelFlags,
  printJson,
  requireFile,
} from './common'

interface Flags {
  prompt?: string
  device: ModelFlags['device']
  dtype: ModelFlags['dtype']
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('info')
    .summary("a model's (or a saved prompt's) description, as JSON")
    .description(
      "Print a CLIP's description (sizes, naming, logit scale, device) as JSON, or with --prompt a " +
        "saved learner's (method, classes, options, learned tensors).",
    )
    .argument(
      '[model]',
      'CLIP checkpoint: a Hugging Face folder or an OpenAI safetensors file (default: the built-in CLIP)',
    )
    .option('--prompt <file>', 'a prompt file saved by `promptclip train`')
    .addOption(new Option('--device <device>', 'cpu, cuda or cuda:N').default('cpu').argParser(device))
    .addOption(new Option('--dtype <dtype>', 'precision of CLIP').choices(['fp32', 'fp16', 'bf16']).default('fp32'))
  addJsonOption(cmd)
  cmd.addHelpText('after', `\nThe output is JSON with or without --json.\n${EXIT_HELP}`)
  cmd.action(async (model: string | undefined, flags: Flags) => {
    const path = model ?? BUILTIN_MODEL
    checkModel({ model: path, device: flags.device, dtype: flags.dtype })
    if (flags.prompt !== undefined) requireFile(flags.prompt, '--prompt')
    const clip = await Clip.load(path, { device: flags.device, dtype: flags.dtype })
    printJson(flags.prompt !== undefined ? (await PromptLearner.load(clip, flags.prompt)).info : clip.info)
    ctx.exitCode = EXIT.OK
  })
}
