/**
 * `demo`: the built-in job (ts/demo.ts, a preset of the base-to-new protocol): the built-in CLIP's
 * 20 classes, every method, several seeds; the paper-style table, CoOp's context as words, and the
 * protocol's files and HTML report in --out.
 */
import { existsSync } from 'node:fs'
import { type Command, Option } from 'commander'
import { BUILTIN_MODEL, type DeviceName } from '../clip'
import { FASHION_MNIST_DIR } from '../datasets'
import { DEMO_DEFAULTS, formatTable, runDemo } from '../demo'
import { PromptclipError } from '../errors'
import {
  addJsonOption,
  type Ctx,
  checkModel,
  device,
  EXIT,
  EXIT_HELP,
  intList,
  nonNegativeInt,
  positiveInt,
  print,
  printJson,
} from './common'

interface Flags {
  model: string
  data: string
  shots: number
  seeds: number[]
  testPerClass: number
  out: string
  device: DeviceName
  json?: boolean
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('demo')
    .summary('base-to-new on the built-in CLIP, every method, with a report')
    .description(
      "The built-in demo: the papers' base-to-new protocol on the built-in CLIP's 20 classes " +
        '(Fashion-MNIST and handwritten digits), every method, several seeds. Prints the table and ' +
        "CoOp's learned context as words, and writes the runs, the results and an HTML report to --out " +
        '(the same command again reuses the finished runs, and resumes after Ctrl-C).',
    )
    .addOption(new Option('--model <path>', 'CLIP checkpoint').default(BUILTIN_MODEL, 'the built-in CLIP'))
    .option('--data <dir>', "Fashion-MNIST's IDX files (Debian: dataset-fashion-mnist)", FASHION_MNIST_DIR)
    .addOption(new Option('--shots <n>', 'shots per class').argParser(positiveInt).default(DEMO_DEFAULTS.shots))
    .addOption(
      new Option('--seeds <list>', 'seeds')
        .argParser(intList(nonNegativeInt))
        .default([...DEMO_DEFAULTS.seeds], DEMO_DEFAULTS.seeds.join(',')),
    )
    .addOption(
      new Option('--test-per-class <n>', 'test images per class')
        .argParser(positiveInt)
        .default(DEMO_DEFAULTS.testPerClass),
    )
    .option('--out <dir>', 'where the runs, results and report go', 'promptclip-demo')
    .addOption(new Option('--device <device>', 'cpu, cuda or cuda:N').default('cpu').argParser(device))
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (flags: Flags) => {
    checkModel({ model: flags.model, device: flags.device, dtype: 'fp32' })
    if (!existsSync(flags.data)) {
      throw new PromptclipError(
        'E_FILE_NOT_FOUND',
        `--data: ${flags.data} does not exist (Fashion-MNIST; on Debian: apt-get install dataset-fashion-mnist)`,
      )
    }
    // The running commentary is part of the demo's output; with --json it goes to stderr, and on
    // a terminal it is printed above the bar of runs (both on stderr, so they do not garble).
    const toStderr = flags.json || ctx.progress.tty
    const log = toStderr ? (line: string) => ctx.progress.log(line) : (line: string) => print(line)
    const runs = ctx.progress.task('runs', 'runs')
    let results: Awaited<ReturnType<typeof runDemo>>
    try {
      results = await runDemo({
        model: flags.model,
        fashionDir: flags.data,
        shots: flags.shots,
        seeds: flags.seeds,
        testPerClass: flags.testPerClass,
        device: flags.device,
        out: flags.out,
        log,
        onStage: (p) => runs.update(p.done, p.total, `${p.done}/${p.total}: ${p.stage}`),
        signal: ctx.interrupt.signal(),
      })
    } catch (err) {
      ctx.progress.stop()
      if (err instanceof PromptclipError && err.code === 'E_CANCELLED') {
        ctx.progress.log(`stopped; finished runs and the interrupted run's checkpoint are in ${flags.out}`)
        ctx.progress.log('run the same command again to resume')
        ctx.exitCode = EXIT.INTERRUPTED
        return
      }
      throw err
    }
    ctx.progress.stop()
    const report = results.files?.report
    if (flags.json) {
      const { examples, ...rest } = results // raw pixels: in the report, not in the JSON
      printJson({ ...rest, examples: examples.length, report })
    } else {
      print(`\nbase-to-new, ${results.shots} shots, accuracy % (mean ± std over seeds ${results.seeds.join(', ')})`)
      print(formatTable(results))
      print("\nCoOp's learned context, nearest words of each position:")
      for (const [i, words] of results.contextWords.entries()) print(`  ${i + 1}: ${words.join(', ')}`)
      print(`\nresults: ${results.files?.json}, ${results.files?.markdown}`)
      print(`report: ${report} (${results.seconds.toFixed(0)} s)`)
    }
    ctx.exitCode = EXIT.OK
  })
}
