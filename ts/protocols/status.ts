/**
 * A sweep's state read from its folder alone (no queue): which runs finished, failed, or hold a
 * checkpoint or a trained learner waiting for its evaluation.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { sweepId } from './jobs'
import type { RunStatus } from './queue'

export function folderStatus(out: string): RunStatus[] {
  const runs = join(out, 'runs')
  if (!existsSync(runs)) return []
  const sweep = sweepId(out)
  return readdirSync(runs)
    .filter((name) => statSync(join(runs, name)).isDirectory())
    .sort()
    .map((name) => {
      const has = (f: string) => existsSync(join(runs, name, f))
      const state = has('result.json')
        ? 'completed'
        : has('failed.json')
          ? 'failed'
          : has('learner.safetensors')
            ? 'trained'
            : has('checkpoint.safetensors')
              ? 'started'
              : 'waiting'
      return { sweep, out: resolve(out), run: name, state, attempts: 0, progress: null }
    })
}
