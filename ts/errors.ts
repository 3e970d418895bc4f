/**
 * Errors thrown by promptclip. The native core gives each error a stable code, carried on the
 * JS error object itself (`error.code`); this module wraps those in `PromptclipError`, and maps
 * the few errors that do not come from the core (argument conversion in the binding, Node's file
 * system) onto the same codes, so that every error a caller sees is a `PromptclipError`.
 */
export type ErrorCode =
  | 'E_FILE_NOT_FOUND'
  | 'E_IO'
  | 'E_BAD_CONFIG'
  | 'E_MISSING_TENSOR'
  | 'E_SHAPE_MISMATCH'
  | 'E_UNSUPPORTED'
  | 'E_IMAGE_DECODE'
  | 'E_TOKENIZER'
  | 'E_INVALID_ARGUMENT'
  | 'E_CUDA_UNAVAILABLE'
  | 'E_NON_FINITE_LOSS'
  | 'E_NON_FINITE_PARAMS'
  | 'E_CANCELLED'
  | 'E_BUSY'
  | 'E_TENSOR'
  | 'E_INTERNAL'
  /** The command line was not understood: an unknown command or option, a missing argument. */
  | 'E_USAGE'
  /** A server (the job queue's Redis) could not be reached. */
  | 'E_NETWORK'
  /** An optional package a feature needs is not installed. */
  | 'E_MISSING_DEPENDENCY'
  /** A model or dataset named by hub id (or its revision) is not on the hub, or not in the cache
   *  when offline. */
  | 'E_MODEL_NOT_FOUND'
  /** The hub refused access: a private or gated repo without a token that can read it. */
  | 'E_AUTH'
  /** A downloaded file does not match the hash the hub gives for it (it was not cached). */
  | 'E_INTEGRITY'

/** Codes that mean the input is at fault (a file, an option, the data) rather than the work: the
 *  CLI exits 2 on them, and a sweep's queue does not retry them. */
export const INPUT_ERROR_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'E_USAGE',
  'E_INVALID_ARGUMENT',
  'E_FILE_NOT_FOUND',
  'E_BAD_CONFIG',
  'E_MISSING_TENSOR',
  'E_SHAPE_MISMATCH',
  'E_IMAGE_DECODE',
  'E_TOKENIZER',
  'E_UNSUPPORTED',
  'E_CUDA_UNAVAILABLE',
  'E_MISSING_DEPENDENCY',
  'E_MODEL_NOT_FOUND',
  'E_AUTH',
])

export class PromptclipError extends Error {
  readonly code: ErrorCode

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PromptclipError'
    this.code = code
  }
}

/** A cancelled call (its AbortSignal fired): `name` is 'AbortError', as on the web platform. */
export class AbortError extends PromptclipError {
  constructor(message = 'cancelled', options?: { cause?: unknown }) {
    super('E_CANCELLED', message, options)
    this.name = 'AbortError'
  }
}

const NODE_CODES: Record<string, ErrorCode> = {
  ENOENT: 'E_FILE_NOT_FOUND',
  ENOTDIR: 'E_FILE_NOT_FOUND',
  EISDIR: 'E_IO',
  EACCES: 'E_IO',
  EPERM: 'E_IO',
}

/** serde's phrasing of an option of the wrong type, in a user's words (the core passes it on for
 *  the cases it does not word itself: a string or boolean where a number goes, and so on). */
const SERDE: [RegExp, string][] = [
  [
    /invalid type: (?:floating point|integer) `([^`]*)`, expected (?:usize|u64|u32|u16|u8)/g,
    'must be a whole number of at least 0 (got $1)',
  ],
  [
    /invalid value: integer `(-[^`]*)`, expected (?:usize|u64|u32|u16|u8)/g,
    'must be a whole number of at least 0 (got $1)',
  ],
  [
    /invalid type: ([^,`]+?)(?: `([^`]*)`| "([^"]*)")?, expected (?:usize|u64|u32|u16|u8)/g,
    'must be a whole number (got $1$2$3)',
  ],
  [/invalid type: ([^,`]+?)(?: `([^`]*)`| "([^"]*)")?, expected (?:f32|f64)/g, 'must be a number (got $1 $2$3)'],
  [/invalid type: ([^,`]+?)(?: `([^`]*)`| "([^"]*)")?, expected a boolean/g, 'must be true or false (got $1 $2$3)'],
  [/invalid type: ([^,`]+?)(?: `([^`]*)`| "([^"]*)")?, expected a string/g, 'must be a string (got $1 $2$3)'],
  [/invalid type: ([^,`]+?)(?: `([^`]*)`| "([^"]*)")?, expected a sequence/g, 'must be a list (got $1 $2$3)'],
  [/unknown variant `([^`]*)`, expected (?:one of )?(.*)$/gm, 'must be one of $2 (got $1)'],
  [/unknown field `([^`]*)`, expected one of (.*)$/gm, 'has no option $1 (the options are $2)'],
]

/** A message with serde's phrasing put in a user's words (see SERDE). */
export function userMessage(message: string): string {
  let out = message
  for (const [pattern, words] of SERDE) out = out.replace(pattern, words)
  return out
    .replace(/ \(got ([^)]*?) \)/g, ' (got $1)')
    .replace(/\b(usize|u32|u64|f32|f64)\b/g, (t) => (t.startsWith('f') ? 'number' : 'whole number'))
}

/** Any error from the addon or from Node's file system as a PromptclipError. */
export function toPromptclipError(err: unknown): unknown {
  if (err instanceof PromptclipError || !(err instanceof Error)) return err
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string' && code.startsWith('E_') && !(code in NODE_CODES)) {
    return code === 'E_CANCELLED'
      ? new AbortError(err.message, { cause: err })
      : new PromptclipError(code as ErrorCode, userMessage(err.message), { cause: err })
  }
  if (typeof code === 'string' && code in NODE_CODES) {
    return new PromptclipError(NODE_CODES[code], err.message, { cause: err })
  }
  // The binding's own argument conversion (a value of the wrong type reached it).
  return new PromptclipError('E_INVALID_ARGUMENT', err.message, { cause: err })
}

/** Await a native promise, converting its rejection. */
export async function native<T>(p: Promise<T> | (() => Promise<T>)): Promise<T> {
  try {
    return await (typeof p === 'function' ? p() : p)
  } catch (err) {
    throw toPromptclipError(err)
  }
}

/** Run a synchronous native (or file-system) call, converting its error. */
export function nativeSync<T>(f: () => T): T {
  try {
    return f()
  } catch (err) {
    throw toPromptclipError(err)
  }
}

export function invalidArgument(message: string): PromptclipError {
  return new PromptclipError('E_INVALID_ARGUMENT', message)
}

/**
 * Progress events travel through a threadsafe function and can still be queued when the task's
 * promise settles. Wait (bounded) until `delivered()` is true so that every event reaches the
 * callback before the caller's promise resolves.
 */
export async function drainProgress(delivered: () => boolean, timeoutMs = 2000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!delivered() && Date.now() < until) await new Promise((r) => setImmediate(r))
}

/**
 * Carries a caller's progress callback to the binding. The binding calls it from a threadsafe
 * function, where a throw would surface as an uncaught exception and end the process; here the
 * first throw is kept instead, `stop` asks the native work to stop (a cancel token), later events
 * are dropped, and `run` rejects with the callback's own error.
 */
export class ProgressRelay<P> {
  private failure: { error: unknown } | undefined
  /** Set when the call has settled: an event still queued then is dropped, so that the callback
   *  never runs after the caller's promise settled (a failed call rejects without waiting for
   *  them: how many are left is unknown). */
  private closed = false

  constructor(
    private readonly callback: (p: P) => void,
    private readonly stop: () => void,
  ) {}

  readonly call = (p: P): void => {
    if (this.failure || this.closed) return
    try {
      this.callback(p)
    } catch (error) {
      this.failure = { error }
      this.stop()
    }
  }

  /** Await the native call, then (bounded) the events still queued until `delivered(result)`;
   *  a callback that threw wins over the call's own outcome (the E_CANCELLED its stop caused). */
  async run<T>(call: () => Promise<T>, delivered: (result: T) => boolean): Promise<T> {
    let result: T
    try {
      result = await native(call)
    } catch (err) {
      this.closed = true
      throw this.failure ? this.failure.error : err
    }
    await drainProgress(() => this.failure !== undefined || delivered(result))
    this.closed = true
    if (this.failure) throw this.failure.error
    return result
  }
}
