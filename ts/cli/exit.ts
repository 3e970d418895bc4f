/** The command line's exit codes, their help text, and the code an error exits with. */
import { INPUT_ERROR_CODES, PromptclipError } from '../errors'

export const EXIT = {
  OK: 0,
  FAILURE: 1,
  BAD_INPUT: 2,
  /** The work was done, but some images could not be read (each is reported with the results). */
  PARTIAL: 3,
  INTERRUPTED: 130,
} as const

export const EXIT_HELP = `
Exit codes:
  0    success
  1    failure while working (training diverged, a file could not be written, an internal error)
  2    bad input: usage, unknown or malformed options, missing files, unreadable models or data
  3    done, but some images could not be read (each is reported with the results)
  130  interrupted (Ctrl-C); \`train\`, \`run\` and \`demo\` leave a checkpoint that the same command resumes from

Results go to stdout; progress bars (on a terminal) and notes go to stderr. With --json, stdout
holds one JSON document, and an error is written to stderr as {"error":{"code","message"}}.`

export function exitCodeOf(err: unknown): number {
  if (err instanceof PromptclipError) {
    if (err.code === 'E_CANCELLED') return EXIT.INTERRUPTED
    return INPUT_ERROR_CODES.has(err.code) ? EXIT.BAD_INPUT : EXIT.FAILURE
  }
  return EXIT.FAILURE
}
