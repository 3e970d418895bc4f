/**
 * Issue 23, the command line's part: one form for every error (`promptclip: E_CODE: message`, or
 * JSON on stderr), numbers in flags checked in one place before any data is loaded, and refused
 * reruns of `train` and `run` that name the way out. dist/cli.js in a child process.
 */
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { collect, IMAGES, type ProcessResult } from './helpers'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const TMP = mkdtempSync(join(tmpdir(), 'promptclip-cli-errors-'))
/** train/ and test/ of two classes, from the fixture images. */
const DATA = join(TMP, 'ds')
/** One class folder per class, no splits. */
const FLAT = join(TMP, 'flat')

function cli(args: string[], cwd = TMP): Promise<ProcessResult> {
  return collect(spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] }))
}

test.before(() => {
  const files = readdirSync(IMAGES).filter((f) => /\.(png|jpg)$/.test(f))
  for (const [i, f] of files.entries()) {
    const cls = i % 2 === 0 ? 'a' : 'b'
    for (const split of ['train', 'test']) {
      mkdirSync(join(DATA, split, cls), { recursive: true })
      cpSync(join(IMAGES, f), join(DATA, split, cls, f))
    }
    mkdirSync(join(FLAT, cls), { recursive: true })
    cpSync(join(IMAGES, f), join(FLAT, cls, f))
  }
})

/** One error line on stderr in the one form, exit 2, nothing on stdout, no Rust or JS internals. */
function refused(t: import('ava').ExecutionContext, r: ProcessResult, code: string, pattern: RegExp): void {
  t.is(r.code, 2, r.stderr)
  t.is(r.stdout, '')
  // Notes may come first (what train found); the error is the last line, and the only one.
  const lines = r.stderr.trimEnd().split('\n')
  const last = lines[lines.length - 1]
  t.is(lines.filter((l) => l.startsWith('promptclip:')).length, 1, r.stderr)
  t.regex(last, new RegExp(`^promptclip: ${code}: `))
  t.regex(last, pattern)
  t.notRegex(r.stderr, /\n\s+at |TypeError|Error:|usize|u32|f32|f64|invalid type/)
}

test('numbers in flags: whole, decimal, finite, within their type and range, said in user words', async (t) => {
  // The dataset does not exist: the flag is refused first, before any data is loaded.
  const train = (...flags: string[]) => cli(['train', '/no/such/data', ...flags])
  const epochs = /--epochs must be a whole number from 1 to 1000000 \(got (.*)\)/
  for (const v of ['1.5', '99999999999', '0x10', '-3', '0', 'NaN', 'Infinity', '1e3', '']) {
    const r = await train('--epochs', v)
    refused(t, r, 'E_INVALID_ARGUMENT', epochs)
    t.is(epochs.exec(r.stderr)?.[1], v)
  }
  const lr = /--lr must be a number above 0 and at most 3.4e38/
  for (const v of ['1e308', '0x10', 'NaN', 'Infinity', '-1', '0', '1e-50', 'abc'])
    refused(t, await train('--lr', v), 'E_INVALID_ARGUMENT', lr)
  refused(t, await train('--batch-size', '4294967296'), 'E_INVALID_ARGUMENT', /--batch-size .*1 to 4294967295/)
  refused(t, await train('--seed', '-1'), 'E_INVALID_ARGUMENT', /--seed must be a whole number from 0 to/)
  refused(t, await train('--checkpoint-every', '0x2'), 'E_INVALID_ARGUMENT', /--checkpoint-every/)
  refused(
    t,
    await cli(['zeroshot', '--classes', 'a', '--top-k', '0x10', FLAT]),
    'E_INVALID_ARGUMENT',
    /--top-k must be a whole number from 1 to/,
  )
  refused(
    t,
    await cli(['run', 'few-shot', '/no/such', '--epochs', '2000000']),
    'E_INVALID_ARGUMENT',
    /--epochs must be a whole number from 1 to 1000000 \(got 2000000\)/,
  )
  refused(
    t,
    await cli(['run', 'few-shot', '/no/such', '--seeds', '1,0x2']),
    'E_INVALID_ARGUMENT',
    /--seeds must list whole numbers from 0 to 4294967295 \(0x2 is not one\)/,
  )
  refused(t, await cli(['worker', '--lock-ms', '10']), 'E_INVALID_ARGUMENT', /--lock-ms .* from 500 to/)
  // Valid forms are taken: a float with an exponent, a plus sign.
  const ok = await train('--lr', '2e-3', '--epochs', '+3')
  t.regex(ok.stderr, /E_FILE_NOT_FOUND/)
})

test('every error has one form: usage errors are E_USAGE, bad values E_INVALID_ARGUMENT, with the code', async (t) => {
  refused(
    t,
    await cli(['train', DATA, '--bogus']),
    'E_USAGE',
    /Unknown option '--bogus'. See `promptclip train --help`/,
  )
  refused(t, await cli(['frobnicate']), 'E_USAGE', /unknown command 'frobnicate'/i)
  refused(t, await cli([]), 'E_USAGE', /No command given/)
  refused(t, await cli(['train']), 'E_USAGE', /missing required argument 'dataset'/i)
  refused(t, await cli(['train', DATA, '--epochs']), 'E_USAGE', /--epochs <n>' argument missing/)
  refused(
    t,
    await cli(['train', DATA, '--dtype', 'fp64']),
    'E_INVALID_ARGUMENT',
    /--dtype must be one of fp32, fp16, bf16 \(got fp64\)/,
  )
  refused(t, await cli(['run', 'bogus', DATA]), 'E_INVALID_ARGUMENT', /<protocol> must be one of few-shot/)
  // Errors of the CLI's own checks carry their code too (E_INVALID_ARGUMENT was printed bare).
  refused(t, await cli(['zeroshot', FLAT]), 'E_INVALID_ARGUMENT', /needs class names/)
  refused(
    t,
    await cli(['train', DATA, '--method', 'cocoop', '--class-specific']),
    'E_INVALID_ARGUMENT',
    /does not apply/,
  )
  // --json: the same code and message as JSON on stderr.
  const j = await cli(['train', DATA, '--epochs', '1.5', '--json'])
  t.is(j.code, 2)
  t.is(j.stdout, '')
  const { error } = JSON.parse(j.stderr) as { error: { code: string; message: string } }
  t.is(error.code, 'E_INVALID_ARGUMENT')
  t.regex(error.message, /^--epochs must be a whole number from 1 to 1000000 \(got 1.5\)/)
  const u = JSON.parse((await cli(['train', DATA, '--nope', '--json'])).stderr) as { error: { code: string } }
  t.is(u.error.code, 'E_USAGE')
})

test.serial('a checkpoint from another run blocks train with a message that names the ways out', async (t) => {
  const dir = mkdtempSync(join(TMP, 'train-'))
  const base = ['train', DATA, '--n-ctx', '2', '--no-augment']
  const first = await cli([...base, '--epochs', '1'], dir)
  t.is(first.code, 0, first.stderr)
  // The default --out's checkpoint, with other options: refused, naming --no-resume, --out and the file.
  const again = await cli([...base, '--epochs', '2'], dir)
  refused(t, again, 'E_INVALID_ARGUMENT', /promptclip-coop\.safetensors\.ckpt \(the default --out/)
  t.regex(again.stderr, /epochs (was 1, this run has 2|\(1 -> 2\))/)
  t.regex(again.stderr, /--no-resume/)
  t.regex(again.stderr, /--out <other file>/)
  t.regex(again.stderr, /move promptclip-coop\.safetensors\.ckpt away/)
  // The way out it names works.
  t.is((await cli([...base, '--epochs', '2', '--no-resume'], dir)).code, 0)
})

test.serial('run refuses a rerun with other settings naming the option to change', async (t) => {
  const dir = mkdtempSync(join(TMP, 'run-'))
  const base = ['run', 'few-shot', DATA, '--methods', 'coop', '--shots', '1', '--seeds', '1', '--no-augment']
  const first = await cli([...base, '--epochs', '1', '--out', 'r'], dir)
  t.is(first.code, 0, first.stderr)
  const again = await cli([...base, '--epochs', '2', '--out', 'r'], dir)
  refused(
    t,
    again,
    'E_INVALID_ARGUMENT',
    /r holds a finished run .* made with a different train\.epochs \(was 1, now 2\)/,
  )
  t.regex(again.stderr, /the same --epochs, --lr, --train-batch-size and --augment as before/)
  t.regex(again.stderr, /--out <other folder>/)
})

// ---------------------------------------------------------------------------------------------
// The job queue: an unreachable Redis fails fast and coded; bullmq loads only for a queue.

/** A loopback port nothing listens on. */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

test.serial(
  'a queue whose Redis refuses the connection, or whose host does not resolve, fails within 2 s naming the URL',
  async (t) => {
    const refusedUrl = `redis://127.0.0.1:${await closedPort()}`
    const dir = mkdtempSync(join(TMP, 'queue-'))
    for (const url of [refusedUrl, 'redis://no-such-host.invalid:6379']) {
      const cases = [
        [
          'run',
          'few-shot',
          DATA,
          '--methods',
          'zero-shot',
          '--shots',
          '1',
          '--seeds',
          '1',
          '--queue',
          url,
          '--out',
          'q',
        ],
        ['worker', '--queue', url],
        ['run', '--status', '--queue', url],
      ]
      for (const args of cases) {
        // What the process takes to start and refuse a malformed URL, without connecting.
        let started = performance.now()
        await cli([...args.slice(0, -1), 'not-a-url'], dir)
        const startup = performance.now() - started
        started = performance.now()
        const r = await cli(args, dir)
        const ms = performance.now() - started - startup
        t.true(ms < 2000, `${args.join(' ')}: ${ms} ms beyond the ${startup} ms a refused URL takes`)
        t.is(r.code, 1, r.stderr)
        t.is(r.stdout, '')
        const last = r.stderr.trimEnd().split('\n').pop() ?? ''
        t.regex(last, /^promptclip: E_NETWORK: cannot reach the queue's Redis at /)
        t.true(last.includes(url), last)
        t.regex(last, url === refusedUrl ? /the connection was refused/ : /does not resolve/)
      }
      t.false(existsSync(join(dir, 'q')), 'a refused queue leaves no out folder behind')
    }
    const j = await cli(['worker', '--queue', refusedUrl, '--json'], dir)
    t.is((JSON.parse(j.stderr) as { error: { code: string } }).error.code, 'E_NETWORK')
  },
)

test('runProtocol with an unreachable queue leaves no empty runs/ folder', async (t) => {
  const out = join(mkdtempSync(join(TMP, 'queue-api-')), 'sweep')
  const { runProtocol } = await import('promptclip')
  const url = `redis://127.0.0.1:${await closedPort()}`
  await t.throwsAsync(
    runProtocol({
      protocol: 'few-shot',
      dataset: DATA,
      methods: ['zero-shot'],
      shots: [1],
      seeds: [1],
      out,
      queue: url,
    }),
    { code: 'E_NETWORK', message: new RegExp(url.replace(/[.]/g, '\\.')) } as never,
  )
  t.false(existsSync(join(out, 'runs')))
})

test('bullmq loads only when a queue is asked for, and its absence is a coded error with the install command', async (t) => {
  // Loading the package (CommonJS and ESM) and running a command without a queue load no bullmq.
  const probe = `require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))}); process.stdout.write(String(Object.keys(require.cache).some((k) => /[\\\\/](bullmq|ioredis)[\\\\/]/.test(k))))`
  const cjs = await collect(spawn(process.execPath, ['-e', probe], { stdio: ['ignore', 'pipe', 'pipe'] }))
  t.is(cjs.stdout, 'false', cjs.stderr)
  // Without bullmq installed (hidden from require and import by resolver hooks): the queue says what to install.
  const hide = join(TMP, 'hide-bullmq.cjs')
  const hooks = `export async function resolve(s, c, next) { if (s === 'bullmq' || s === 'ioredis') { const e = new Error("Cannot find package '" + s + "'"); e.code = 'ERR_MODULE_NOT_FOUND'; throw e } return next(s, c) }`
  writeFileSync(
    hide,
    `const M = require('node:module'); M.register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks)})); const r = M._resolveFilename; M._resolveFilename = function (req, ...a) { if (req === 'bullmq' || req === 'ioredis') { const e = new Error("Cannot find module '" + req + "'"); e.code = 'MODULE_NOT_FOUND'; throw e } return r.call(this, req, ...a) }\n`,
  )
  const r = await collect(
    spawn(process.execPath, ['--require', hide, CLI, 'worker', '--queue', 'redis://127.0.0.1:6379'], {
      cwd: TMP,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  )
  t.is(r.code, 2, r.stderr) // the install's fault, not the work's: not retried, as bad input
  t.is(
    r.stderr.trim(),
    'promptclip: E_MISSING_DEPENDENCY: the job queue needs the packages bullmq and ioredis: npm install bullmq@6.7.0 ioredis@5.11.1',
  )
  // Commands without a queue run without it.
  const zs = await collect(
    spawn(process.execPath, ['--require', hide, CLI, 'zeroshot', '--classes', 'a,b', join(FLAT, 'a')], {
      cwd: TMP,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  )
  t.is(zs.code, 0, zs.stderr)
})

test('a huge --batch-size under a 3 GB address-space limit works in bounded batches: no abort', async (t) => {
  // `ulimit -v 3000000` with --batch-size 100000 aborted with SIGABRT ("memory allocation of
  // 614400000 bytes failed") when the batch was sized by the flag; batches follow a memory budget.
  const files = readdirSync(IMAGES)
    .filter((f) => /\.(png|jpg)$/.test(f))
    .map((f) => join(IMAGES, f))
  for (const args of [
    ['zeroshot', ...files, '--classes', 'a,b', '--batch-size', '100000', '--json'],
    ['eval', DATA, '--split', 'test', '--batch-size', '100000', '--json'],
  ]) {
    const quoted = [process.execPath, CLI, ...args].map((a) => `'${a}'`).join(' ')
    const r = await collect(
      spawn('bash', ['-c', `ulimit -v 3000000 && exec ${quoted}`], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] }),
    )
    t.is(r.signal, null, `${args[0]}: ${r.stderr}`)
    t.is(r.code, 0, `${args[0]}: ${r.stderr}`)
    t.notThrows(() => JSON.parse(r.stdout))
  }
})
