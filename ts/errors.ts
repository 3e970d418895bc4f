/**
 * Errors thrown by promptclip. The native core prefixes each message with a stable code in
 * brackets (`[E_MISSING_TENSOR] tensor ... is missing from ...`); this module lifts it into
 * `error.code` so callers can branch on it.
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
  | 'E_CANCELLED'
  | 'E_BUSY'
  | 'E_TENSOR'
  | 'E_INTERNAL'

export class PromptclipError extends Error {
  readonly code: ErrorCode

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PromptclipError'
    this.code = code
  }
}

const CODED = /^\[(E_[A-Z_]+)\] ([\s\S]*)$/

/** Turn an error from the native addon into a PromptclipError (other errors pass through). */
export function fromNative(err: unknown): unknown {
  if (err instanceof PromptclipError || !(err instanceof Error)) return err
  const m = CODED.exec(err.message)
  if (!m) return err
  return new PromptclipError(m[1] as ErrorCode, m[2], { cause: err })
}

/** Await a native promise, converting its rejection. */
export async function native<T>(p: Promise<T> | (() => Promise<T>)): Promise<T> {
  try {
    return await (typeof p === 'function' ? p() : p)
  } catch (err) {
    throw fromNative(err)
  }
}

/** Run a synchronous native call, converting its error. */
export function nativeSync<T>(f: () => T): T {
  try {
    return f()
  } catch (err) {
    throw fromNative(err)
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
