/** `info`: a CLIP's description, or a saved learner's, as JSON. */
import { type Command, Option } from 'commander'
import { BUILTIN_MODEL } from '../clip'
import { PromptLearner } from '../prompt'
import {
  addJsonOption,
  type Ctx,
  checkModel,
  device,
  EXIT,
  EXIT_HELP,
  loadClip,
  type ModelFlags,
  printJson,
  requireFile,
} from './common'

interface Flags {
  prompt?: string
  device: ModelFlags['device']
  dtype: ModelFlags['dtype']
  revision?: string
  offline?: boolean
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
      'CLIP: a hub id, a Hugging Face folder or an OpenAI safetensors file (default: the built-in CLIP)',
    )
    .option('--revision <rev>', 'for a hub id: a branch, tag or commit (default main)')
    .option('--offline', 'for a hub id: the Hugging Face cache only, no network (as HF_HUB_OFFLINE=1)')
    .option('--prompt <file>', 'a prompt file saved by `promptclip train`')
    .addOption(new Option('--device <device>', 'cpu, cuda or cuda:N').default('cpu').argParser(device))
    .addOption(new Option('--dtype <dtype>', 'precision of CLIP').choices(['fp32', 'fp16', 'bf16']).default('fp32'))
  addJsonOption(cmd)
  cmd.addHelpText('after', `\nThe output is JSON with or without --json.\n${EXIT_HELP}`)
  cmd.action(async (model: string | undefined, flags: Flags) => {
    const path = model ?? BUILTIN_MODEL
    const modelFlags = { ...flags, model: path }
    checkModel(modelFlags)
    if (flags.prompt !== undefined) requireFile(flags.prompt, '--prompt')
    const clip = await loadClip(modelFlags, ctx)
    printJson(flags.prompt !== undefined ? (await PromptLearner.load(clip, flags.prompt)).info : clip.info)
    ctx.exitCode = EXIT.OK
  })
}
