/**
 * One writer per output: a lock file beside a checkpoint (`<path>.lock`, holding the writer's
 * pid and host), created exclusively, released when the work ends or the process exits. A lock
 * left by a process that is gone (same host, pid not running) is taken over.
 */
import { readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { PromptclipError } from './errors'

interface Holder {
  pid: number
  host: string
  since: string
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    // EPERM: it exists, under another user.
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs
  } catch {
    return Number.POSITIVE_INFINITY
  }
}

function readHolder(lock: string): Holder | null {
  try {
    const h = JSON.parse(readFileSync(lock, 'utf8')) as Holder
    return Number.isInteger(h.pid) && typeof h.host === 'string' ? h : null
  } catch {
    return null
  }
}

const held = new Set<string>()
let exitHook = false

/**
 * Takes the lock of `path` (a checkpoint or an output) for this process, or throws E_BUSY naming
 * the process that holds it. Returns the function that releases it.
 */
export function lockOutput(path: string): () => void {
  const lock = `${path}.lock`
  const me: Holder = { pid: process.pid, host: hostname(), since: new Date().toISOString() }
  const body = `${JSON.stringify(me)}\n`
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(lock, body, { flag: 'wx' })
      break
    } catch (e) {
      // No place to write the lock (a missing folder, a file in the path): the core's own check
      // of the checkpoint path reports that, with its code.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return () => {}
      const holder = readHolder(lock)
      // An unreadable lock is being written right now, unless it is old (a crash mid-write).
      const gone = holder === null ? ageMs(lock) > 5000 : holder.host === me.host && !alive(holder.pid)
      if (holder === null && !gone) throw new PromptclipError('E_BUSY', `${path} is being written by another process`)
      if (holder !== null && !gone) {
        const where = holder.host === me.host ? '' : ` on ${holder.host}`
        throw new PromptclipError(
          'E_BUSY',
          `${path} is being written by process ${holder.pid}${where} (since ${holder.since}); ` +
            `wait for it to finish, or write to another output (--out). If no such process runs, delete ${lock}`,
        )
      }
      if (attempt > 2) throw new PromptclipError('E_BUSY', `${lock}: could not take the lock`)
      // A dead process's lock (or an old unreadable one): move it aside and retry
      // the exclusive create, so that two processes taking it over at once cannot both win.
      try {
        renameSync(lock, `${lock}.stale-${process.pid}`)
        unlinkSync(`${lock}.stale-${process.pid}`)
      } catch {
        // Another process took it over first: the next exclusive create decides.
      }
    }
  }
  held.add(lock)
  if (!exitHook) {
    exitHook = true
    process.once('exit', () => {
      for (const l of held) release(l)
    })
  }
  return () => {
    held.delete(lock)
    release(lock)
  }

  function release(l: string) {
    const holder = readHolder(l)
    if (holder?.pid === process.pid && holder.host === me.host) {
      try {
        unlinkSync(l)
      } catch {
        // Already gone.
      }
    }
  }
}
