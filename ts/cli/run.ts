/**
 * `run <protocol>`: the papers' evaluation protocols over every method (ts/protocols), with a run
 * counter and per-run training and evaluation bars, then the results table and files.
 */
import { existsSync } from 'node:fs'
import { Argument, type Command, Option } from 'commander'
import { PromptclipError } from '../errors'
import { methodCatalogue, sgdMethods } from '../methods'
import {
  type ProtocolEvent,
  type ProtocolMethod,
  type ProtocolName,
  type ProtocolOptions,
  type RunKey,
  runProtocol,
} from '../protocols'
import { protocolMethods } from '../protocols/plan'
import { checkQueueReachable, checkQueueUrl, sweepStatus } from '../protocols/queue'
import { folderStatus } from '../protocols/status'
import { DEFAULT_SEEDS, DEFAULT_SHOTS, FEW_SHOT_SHOTS } from '../protocols/types'
import type { TrainOptions } from '../train'
import {
  addJsonOption,
  addModelOptions,
  badInput,
  type Ctx,
  checkModel,
  choiceList,
  device,
  EXIT,
  EXIT_HELP,
  epochCount,
  given,
  intList,
  type ModelFlags,
  nameList,
  nonNegativeInt,
  positiveInt,
  positiveNumber,
  print,
  printJson,
} from './common'
import type { ImageProgress, StepProgress, Task } from './progress'

const PROTOCOLS: readonly ProtocolName[] = ['few-shot', 'base-to-new', 'cross-dataset', 'domain-generalization']

interface Flags extends ModelFlags {
  targets?: string[]
  methods?: ProtocolMethod[]
  shots?: number[]
  seeds?: number[]
  out?: string
  imageRoot?: string
  dataRoot?: string
  epochs?: number
  lr?: number
  trainBatchSize?: number
  augment?: boolean
  batchSize?: number
  skipUnreadable?: boolean
  queue?: string
  devices?: string[]
  status?: boolean
  json?: boolean
}

/** A comma-separated list of devices, each cpu, cuda or cuda:N; one may be listed more than once
 *  (two workers sharing a large GPU, or several on the CPU). */
function deviceList(value: string): string[] {
  return value.split(',').map((d) => device(d.trim()))
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('run')
    .summary("run one of the papers' protocols over the methods")
    .description(
      "Run one of the papers' evaluation protocols over the methods (zero-shot CLIP, prompt " +
        `ensembling, ${methodCatalogue()
          .map((e) => e.title)
          .join(', ')}), for each shot count and seed. Runs, ` +
        'checkpoints and results (results.json, results.md, report.html) go to --out; running the ' +
        'same command again skips finished runs and resumes an interrupted one.',
    )
    .addArgument(new Argument('[protocol]', 'the protocol (required but with --status)').choices(PROTOCOLS))
    .argument(
      '[dataset]',
      'the dataset learned on: a catalog name, an image folder, a split file or a CSV (required but with --status)',
    )
    .addOption(
      new Option('--targets <a,b>', 'datasets evaluated on (cross-dataset, domain-generalization)').argParser(nameList),
    )
    .addOption(
      new Option('--methods <list>', `methods, of ${protocolMethods().join(', ')} (default: all)`).argParser(
        choiceList(protocolMethods()),
      ),
    )
    .addOption(
      new Option(
        '--shots <list>',
        `shots per class (default ${FEW_SHOT_SHOTS.join(',')} for few-shot, else ${DEFAULT_SHOTS})`,
      ).argParser(intList(positiveInt)),
    )
    .addOption(
      new Option('--seeds <list>', `seeds (default ${DEFAULT_SEEDS.join(',')})`).argParser(intList(nonNegativeInt)),
    )
    .option('--out <dir>', 'where runs and results go (default promptclip-<protocol>)')
    .option('--image-root <dir>', 'folder a split file’s image paths are relative to')
    .option('--data-root <dir>', 'where catalog datasets live (default: $PROMPTCLIP_DATA, else ./data)')
    .addOption(new Option('--epochs <n>', 'training epochs of the prompt learners').argParser(epochCount))
    .addOption(new Option('--lr <rate>', 'learning rate of the prompt learners').argParser(positiveNumber))
    .addOption(new Option('--train-batch-size <n>', 'training batch of the prompt learners').argParser(positiveInt))
    .option('--augment', 'random resized crop + flip in training (the default)')
    .option('--no-augment', 'no augmentation in training')
    .addOption(new Option('--batch-size <n>', 'images per forward pass at evaluation').argParser(positiveInt))
    .option('--skip-unreadable', 'skip images that cannot be read (and count them) instead of failing')
    .option(
      '--queue <url>',
      'spread the runs over a job queue (BullMQ on Redis, redis://host:port): one job per run, run by ' +
        '`promptclip worker --queue <url>` processes on any machine that sees --out and the data',
    )
    .addOption(
      new Option(
        '--devices <list>',
        'without --queue: one local worker process per device, e.g. cuda:0,cuda:1',
      ).argParser(deviceList),
    )
    .option('--status', 'print the state and progress of each run (of --out, on --queue or in the folder) and exit')
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(
    async (protocol: ProtocolName | undefined, dataset: string | undefined, flags: Flags, command: Command) => {
      if (flags.status) {
        ctx.exitCode = await status(flags)
        return
      }
      if (protocol === undefined) throw badInput("missing required argument 'protocol'")
      if (dataset === undefined) throw badInput("missing required argument 'dataset'")
      ctx.exitCode = await run(protocol, dataset, flags, command, ctx)
    },
  )
}

/** The flags behind each setting a finished run records (for a refused rerun's message). */
const RERUN_FLAGS: Record<string, string> = {
  protocol: '<protocol>',
  model: '--model and --dtype',
  dataset: '<dataset> (and --image-root, --data-root)',
  targets: '--targets',
  method: '--methods',
  shots: '--shots',
  seed: '--seeds',
  templates: '<dataset>',
  learner: '--model',
  train: '--epochs, --lr, --train-batch-size and --augment',
  batchSize: '--batch-size',
  skipUnreadable: '--skip-unreadable',
}

/** A path-like source must exist; a bare word is a catalog name, checked by the runner. */
function checkSource(source: string, what: string): void {
  if (/[/\\.]/.test(source) && !existsSync(source)) {
    throw new PromptclipError('E_FILE_NOT_FOUND', `${what} ${source} does not exist`)
  }
}

const runName = (r: RunKey) => `${r.method} on ${r.dataset}, ${r.shots} shots, seed ${r.seed}`

async function run(protocol: ProtocolName, dataset: string, flags: Flags, command: Command, ctx: Ctx): Promise<number> {
  // Every check before any work.
  const needsTargets = protocol === 'cross-dataset' || protocol === 'domain-generalization'
  if (needsTargets && !flags.targets) throw badInput(`${protocol} needs --targets (the datasets evaluated on)`)
  if (!needsTargets && flags.targets) throw badInput(`--targets is for cross-dataset and domain-generalization`)
  checkModel(flags)
  // The protocol's loads (and local workers, which inherit the environment) use the cache only.
  if (flags.offline) process.env.HF_HUB_OFFLINE = '1'
  if (flags.queue !== undefined) checkQueueUrl(flags.queue)
  if (flags.queue !== undefined && flags.devices !== undefined) {
    throw badInput('--devices is for local workers; with --queue, start one `promptclip worker` per device')
  }
  checkSource(dataset, 'dataset')
  for (const t of flags.targets ?? []) checkSource(t, 'target')
  const learnerFlags = ['epochs', 'lr', 'trainBatchSize', 'augment'].filter((k) => given(command, k))
  // The learners --epochs, --lr, --train-batch-size and --augment are for.
  const sgd: ProtocolMethod[] = sgdMethods()
  if (learnerFlags.length > 0 && flags.methods && !flags.methods.some((m) => sgd.includes(m))) {
    throw badInput(`--epochs, --lr, --train-batch-size and --augment apply to ${sgd.join(', ')} only`)
  }
  const recipe: TrainOptions = {}
  if (flags.epochs !== undefined) recipe.epochs = flags.epochs
  if (flags.lr !== undefined) recipe.lr = flags.lr
  if (flags.trainBatchSize !== undefined) recipe.batchSize = flags.trainBatchSize
  if (flags.augment !== undefined) recipe.augment = flags.augment
  const out = flags.out ?? `promptclip-${protocol}`
  // An unreachable queue fails here, in two seconds, before the data and model are loaded.
  if (flags.queue !== undefined) await checkQueueReachable(flags.queue)

  const { progress } = ctx
  let runs: Task | undefined
  let trainBar: ((p: StepProgress) => void) | undefined
  let evalBars = new Map<string, (p: ImageProgress) => void>()
  let runTasks: Task[] = []
  let done = 0
  let total = 0
  const clearRun = () => {
    for (const t of runTasks) t.remove()
    runTasks = []
    trainBar = undefined
    evalBars = new Map()
  }
  const onEvent = (e: ProtocolEvent) => {
    switch (e.type) {
      case 'plan':
        total = e.runs.length
        runs = progress.task('runs', 'runs')
        runs.update(0, total, `${total} runs`)
        break
      case 'run-start':
        clearRun()
        runs?.update(done, e.total, `run ${e.index + 1}/${e.total}: ${runName(e.run)}${e.resumed ? ' (resumed)' : ''}`)
        break
      case 'run-skipped':
        done++
        runs?.update(done, e.total, `run ${e.index + 1}/${e.total}: ${runName(e.run)} (finished earlier)`)
        break
      case 'train-progress': {
        if (!trainBar) {
          const task = progress.task('train', 'steps')
          runTasks.push(task)
          trainBar = (p) => {
            const value = (p.epoch - 1) * p.stepsPerEpoch + p.step
            task.update(value, p.epochs * p.stepsPerEpoch, `epoch ${p.epoch}/${p.epochs} | loss ${p.loss.toFixed(4)}`)
          }
        }
        trainBar(e)
        break
      }
      case 'eval-progress': {
        let bar = evalBars.get(e.split)
        if (!bar) {
          const task = progress.task(`eval ${e.split}`, 'images')
          runTasks.push(task)
          bar = (p) =>
            task.update(p.done, p.total, `${p.done}/${p.total} images`, { rate: p.imagesPerSecond, eta: p.etaSeconds })
          evalBars.set(e.split, bar)
        }
        bar(e)
        break
      }
      case 'run-done': {
        done++
        clearRun()
        runs?.update(done, e.total, `run ${e.index + 1}/${e.total} done`)
        const metrics = Object.entries(e.metrics)
          .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toFixed(1)}`)
          .join(', ')
        progress.log(`${runName(e.run)}: ${metrics}`)
        break
      }
      case 'log':
        progress.log(e.message)
        break
    }
  }

  const options: ProtocolOptions = {
    protocol,
    model: flags.model,
    ...(flags.revision !== undefined ? { revision: flags.revision } : {}),
    device: flags.device,
    dtype: flags.dtype,
    dataset,
    imageRoot: flags.imageRoot,
    dataRoot: flags.dataRoot,
    targets: flags.targets,
    methods: flags.methods,
    shots: flags.shots,
    seeds: flags.seeds,
    out,
    train: Object.keys(recipe).length > 0 ? Object.fromEntries(sgd.map((m) => [m, recipe])) : undefined,
    batchSize: flags.batchSize,
    skipUnreadable: flags.skipUnreadable,
    queue: flags.queue,
    devices: flags.devices,
    onEvent,
    signal: ctx.interrupt.signal(),
  }
  try {
    const results = await runProtocol(options)
    progress.stop()
    if (flags.json) {
      printJson(results)
    } else {
      print(results.table)
      print()
      print(`results: ${results.files.json}, ${results.files.markdown}`)
      print(`report: ${results.files.report}`)
    }
    // As every command: done, but images that could not be read were left out (exit 3).
    const unread = results.runs.reduce(
      (n, r) => n + (r.train?.skipped ?? 0) + r.evaluations.reduce((m, e) => m + e.skipped, 0),
      0,
    )
    if (unread > 0)
      progress.warn(
        `${unread} unreadable image${unread === 1 ? ' was' : 's were'} left out (counted per run in results.json)`,
      )
    return unread > 0 ? EXIT.PARTIAL : EXIT.OK
  } catch (err) {
    progress.stop()
    if (err instanceof PromptclipError && err.code === 'E_INVALID_ARGUMENT') {
      const changed = /^(?:invalid argument: )?(.*)[/\\]result\.json was made with a different (\w+)([^;]*);/.exec(
        err.message,
      )
      if (changed) {
        const [, dir, key, detail] = changed
        throw new PromptclipError(
          err.code,
          `${out} holds a finished run (${dir}) made with a different ${key}${detail}. Run again with the same ${RERUN_FLAGS[key] ?? key} as before, give --out <other folder>, or delete ${dir} to redo that run.`,
          { cause: err },
        )
      }
    }
    if (err instanceof PromptclipError && err.code === 'E_CANCELLED') {
      progress.log(`stopped; finished runs and the interrupted run's checkpoint are in ${out}`)
      progress.log('run the same command again to resume')
      return EXIT.INTERRUPTED
    }
    throw err
  }
}

/** `run --status`: each run's state, from the queue (with --queue) or from the --out folder. */
async function status(flags: Flags): Promise<number> {
  if (flags.queue === undefined && flags.out === undefined) {
    throw badInput('--status needs --queue (every queued run) or --out (the runs of that folder)')
  }
  if (flags.out !== undefined && !existsSync(flags.out)) {
    throw new PromptclipError('E_FILE_NOT_FOUND', `--out ${flags.out} does not exist`)
  }
  const rows =
    flags.queue !== undefined
      ? await sweepStatus(checkQueueUrl(flags.queue), flags.out)
      : folderStatus(flags.out as string)
  if (flags.json) {
    printJson(rows)
    return EXIT.OK
  }
  if (rows.length === 0) {
    print(flags.queue !== undefined ? `no runs on ${flags.queue}` : `no runs in ${flags.out}`)
    return EXIT.OK
  }
  for (const r of rows) {
    // The last progress a run reported is shown while it runs; a finished run's is stale.
    const p = r.state === 'active' ? r.progress : null
    const detail =
      p?.type === 'train-progress'
        ? `epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.stepsPerEpoch}, loss ${p.loss.toFixed(4)}`
        : p?.type === 'eval-progress'
          ? `evaluating ${p.split}: ${p.done}/${p.total} images`
          : ''
    const failed = r.failedReason ? ` ${r.failedReason}` : ''
    print(`${r.run.padEnd(28)} ${r.state.padEnd(10)} ${detail}${failed}`.trimEnd())
  }
  return EXIT.OK
}
