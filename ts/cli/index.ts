#!/usr/bin/env node
/**
 * The promptclip command line: zeroshot, train, eval, predict, interpret, convert, run <protocol>, demo,
 * info and models. Each command is a file here; this one builds the program, and turns errors into one line
 * (or JSON with --json) and an exit code (common.ts: EXIT).
 */
import { Command, CommanderError } from 'commander'
import { packageRequire } from '../binding'
import { PromptclipError, userMessage } from '../errors'
import { methodCatalogue } from '../methods'
import { type Ctx, EXIT, EXIT_HELP, exitCodeOf } from './common'
import * as convert from './convert'
import * as demo from './demo'
import * as evaluate from './eval'
import * as info from './info'
import * as interpret from './interpret'
import { Interrupt } from './interrupt'
import * as models from './models'
import * as predict from './predict'
import { Progress } from './progress'
import * as run from './run'
import * as train from './train'
import * as worker from './worker'

const VERSION: string = (packageRequire('../package.json') as { version: string }).version

function program(ctx: Ctx): Command {
  const p = new Command('promptclip')
    .description(
      `Prompt learning on CLIP (${methodCatalogue()
        .map((e) => e.title)
        .join(', ')}) and zero-shot CLIP.`,
    )
    .version(VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'print this help')
    .helpCommand('help [command]', 'help for a command')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: () => {} }) // errors are printed once, below
    .configureHelp({ sortSubcommands: false, showGlobalOptions: false })
    .addHelpText('after', EXIT_HELP)
  predict.register(p, ctx, 'zeroshot')
  train.register(p, ctx)
  evaluate.register(p, ctx)
  predict.register(p, ctx, 'predict')
  interpret.register(p, ctx)
  convert.register(p, ctx)
  run.register(p, ctx)
  demo.register(p, ctx)
  info.register(p, ctx)
  models.register(p, ctx)
  worker.register(p, ctx)
  for (const cmd of p.commands) {
    cmd
      .exitOverride()
      .configureOutput({ outputError: () => {} })
      .showSuggestionAfterError(true)
    cmd.helpOption('-h, --help', 'print this help')
  }
  return p
}

const COMMANDS = [
  'zeroshot',
  'train',
  'eval',
  'predict',
  'interpret',
  'convert',
  'run',
  'demo',
  'info',
  'models',
  'worker',
] as const

/**
 * A commander error in the CLI's words, as a coded error: a bad value is E_INVALID_ARGUMENT
 * ("--epochs must be a whole number from 1 to 1000000 (got 1.5)"), anything else (an unknown
 * option or command, a missing argument) E_USAGE; both end by pointing to the command's --help.
 */
function usageError(err: CommanderError, argv: string[]): PromptclipError {
  const msg = err.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ')
  const command = argv.find((a) => !a.startsWith('-'))
  const known = COMMANDS as readonly string[]
  const help = command && known.includes(command) ? `promptclip ${command} --help` : 'promptclip --help'
  const option = /^option '(?:-\w, )?(--?[\w-]+)[^']*' argument '(.*)' is invalid\. (.*)$/s.exec(msg)
  const argument = /^command-argument value '(.*)' is invalid for argument '([\w-]+)'\. (.*)$/s.exec(msg)
  const rule = (text: string) =>
    text
      .replace(/^Allowed choices are (.*)\.$/, 'must be one of $1')
      .replace(/\.$/, '')
      .replace(/^(?!must)/, 'is invalid: ')
  if (option) {
    const [, flag, value, why] = option
    return new PromptclipError('E_INVALID_ARGUMENT', `${flag} ${rule(why)} (got ${value}). See \`${help}\`.`)
  }
  if (argument) {
    const [, value, name, why] = argument
    return new PromptclipError('E_INVALID_ARGUMENT', `<${name}> ${rule(why)} (got ${value}). See \`${help}\`.`)
  }
  const words = msg.replace(/\.?$/, '')
  return new PromptclipError('E_USAGE', `${words[0].toUpperCase()}${words.slice(1)}. See \`${help}\`.`)
}

function report(err: unknown, json: boolean): number {
  let code: string
  let message: string
  let exit: number
  if (err instanceof PromptclipError) {
    code = err.code
    message = userMessage(err.message).replace(/^invalid argument: /, '')
    exit = exitCodeOf(err)
  } else {
    code = 'E_INTERNAL'
    message = err instanceof Error ? (err.stack ?? err.message) : String(err)
    exit = EXIT.FAILURE
  }
  if (json) process.stderr.write(`${JSON.stringify({ error: { code, message } })}\n`)
  else process.stderr.write(`promptclip: ${code}: ${message}\n`)
  return exit
}

async function main(argv: string[]): Promise<number> {
  const json = argv.slice(0, argv.includes('--') ? argv.indexOf('--') : argv.length).includes('--json')
  const progress = new Progress(true)
  progress.json = json
  const ctx: Ctx = { progress, interrupt: new Interrupt(progress), exitCode: EXIT.OK }
  // Results on stdout may go to a pipe that closes early (`| head`): stop quietly.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(ctx.exitCode)
    throw e
  })
  try {
    if (argv.length === 0) throw new CommanderError(EXIT.BAD_INPUT, 'promptclip.noCommand', 'error: no command given')
    if (argv[0] === 'help' && argv[1] !== undefined && !(COMMANDS as readonly string[]).includes(argv[1])) {
      throw new CommanderError(EXIT.BAD_INPUT, 'commander.unknownCommand', `error: unknown command '${argv[1]}'`)
    }
    await program(ctx).parseAsync(argv, { from: 'user' })
    return ctx.exitCode
  } catch (err) {
    progress.stop()
    if (err instanceof CommanderError) {
      // --help and --version: their output is printed, exit 0.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.OK
      if (err.code === 'commander.help' && err.exitCode === 0) return EXIT.OK
      return report(usageError(err, argv), json)
    }
    return report(err, json)
  } finally {
    progress.stop()
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code
  // The SIGINT handler keeps nothing alive, but a native task may: leave once output is flushed.
  process.stdout.write('', () => process.exit(code))
})
