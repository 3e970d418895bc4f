/**
 * Executing a protocol: its options checked, its context prepared, its runs planned and run
 * (in this process, on local worker processes, or on a queue), then the table, results.json,
 * results.md and report.html written from every run's record.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AbortError, invalidArgument } from '../errors'
import { writeFileAtomic } from '../writeAtomic'
import { type Context, executeRun, prepareProtocol, writeJson } from './context'
import { checkDevices, sweepOnLocalWorkers } from './local'
import { planRuns, resultsPlan, runId } from './plan'
import { checkQueueUrl, sweepOnQueue } from './queue'
import { renderProtocolReport } from './report'
import { runFolder, sweepOptions } from './sweep'
import { formatProtocolTable } from './table'
import type { ProtocolOptions, ProtocolResults, RunKey, RunRecord } from './types'

export async function executeProtocol(options: ProtocolOptions): Promise<ProtocolResults> {
  // Where the runs execute is checked before anything is loaded, as the rest of the options are.
  if (options.queue !== undefined) checkQueueUrl(options.queue)
  if (options.devices !== undefined) checkDevices(options.devices)
  if (options.queue !== undefined && options.devices !== undefined) {
    throw invalidArgument('devices: with a queue, start one worker per device instead')
  }
  const spread = options.queue !== undefined || (options.devices?.length ?? 0) > 1
  if (spread) sweepOptions(options)
  // Spread over workers, the runs use the workers' devices: this process only checks the
  // settings and reads the model's shapes, on the CPU (a coordinator needs no GPU).
  const ctx = await prepareProtocol(spread ? { ...options, device: 'cpu' } : options)
  ctx.options = options
  const runs = planRuns(ctx.o)
  ctx.emit({ type: 'plan', runs })
  const records = options.queue
    ? await sweepOnQueue(ctx, runs, options.queue)
    : (options.devices?.length ?? 0) > 1
      ? await sweepOnLocalWorkers(ctx, runs, options.devices as string[])
      : await sweepInProcess(ctx, runs)
  return writeProtocolResults(ctx, records)
}

/** Every run in this process, one after the other. */
async function sweepInProcess(ctx: Context, runs: RunKey[]): Promise<RunRecord[]> {
  const records: RunRecord[] = []
  for (const [index, run] of runs.entries()) {
    if (ctx.signal?.aborted) throw new AbortError(`cancelled before run ${runId(run)}`)
    records.push(await executeRun(ctx, run, index, runs.length))
  }
  return records
}

/**
 * The runs of earlier calls into the same folder that this call did not plan (other methods,
 * shots or seeds), for the tables to add to instead of dropping: only those of the same
 * protocol, dataset and model.
 */
function earlierRuns(ctx: Context, records: RunRecord[]): RunRecord[] {
  const path = join(ctx.o.out, 'results.json')
  if (!existsSync(path)) return []
  let earlier: RunRecord[]
  try {
    earlier = (JSON.parse(readFileSync(path, 'utf8')) as { runs: RunRecord[] }).runs
    if (!Array.isArray(earlier)) return []
  } catch {
    return []
  }
  const now = new Set(records.map((r) => runId(r.run)))
  const same = (r: RunRecord, k: string) => JSON.stringify(r.config?.[k]) === JSON.stringify(records[0]?.config[k])
  return earlier.filter(
    (r) =>
      r?.run &&
      !now.has(runId(r.run)) &&
      // Other methods only, at this call's shots and seeds: the table's columns and its mean
      // stay this call's.
      !ctx.o.methods.includes(r.run.method) &&
      (r.run.shots === 0 || (ctx.o.seeds.includes(r.run.seed) && ctx.o.shots.includes(r.run.shots))) &&
      existsSync(join(runFolder(ctx.o.out, r.run), 'result.json')) &&
      ['protocol', 'dataset', 'model', 'targets'].every((k) => same(r, k)),
  )
}

/** The table, results.json, results.md and report.html from every run's record, this call's and
 *  the folder's earlier ones. */
function writeProtocolResults(ctx: Context, current: RunRecord[]): ProtocolResults {
  const records = [...earlierRuns(ctx, current), ...current]
  const o = resultsPlan(ctx.o, records)
  const table = formatProtocolTable(o, records)
  const files = {
    json: join(o.out, 'results.json'),
    markdown: join(o.out, 'results.md'),
    report: join(o.out, 'report.html'),
  }
  const { out: _out, sources: _sources, ...settings } = o
  writeJson(files.json, { protocol: o.protocol, settings, versions: ctx.versions, table, runs: records })
  writeFileAtomic(files.markdown, `${table}\n`)
  writeFileAtomic(files.report, renderProtocolReport(o, records, ctx.modelConfig.path as string))
  return { protocol: o.protocol, files, table, runs: records }
}
