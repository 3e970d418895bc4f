/**
 * A sweep's state read from its folder alone (no queue): which runs finished, failed, or hold a
 * checkpoint or a trained learner waiting for its evaluation, and which finished runs are damaged.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { resultDamage, safetensorsDamage } from './damage'
import type { RunStatus } from './queue'
import { sweepId } from './sweep'

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
      // A finished run whose files are damaged is not finished: the next run of the sweep redoes it.
      const damage =
        state === 'completed'
          ? (resultDamage(join(runs, name, 'result.json')) ??
            (has('learner.safetensors') ? safetensorsDamage(join(runs, name, 'learner.safetensors')) : null))
          : null
      if (damage !== null) {
        return {
          sweep,
          out: resolve(out),
          run: name,
          state: 'damaged',
          attempts: 0,
          progress: null,
          failedReason: `${damage}; the next run of this sweep redoes it`,
        }
      }
      return { sweep, out: resolve(out), run: name, state, attempts: 0, progress: null }
    })
}
