#!/usr/bin/env node
/**
 * Packs promptclip as it would be published: the main package and one package per platform
 * addon (npm/<platform>/, napi's layout), into `node scripts/pack.cjs [dest]` (default .pack/).
 * Run by `bash scripts/package.sh pack` after `npm run build`.
 *
 *  - Each package is staged under <dest>/stage/ and packed from there: nothing is written into the
 *    checkout. npm/linux-x64-gnu gets the addon that `npm run build` left at the root
 *    (promptclip.linux-x64-gnu.node); other platform dirs are packed when their .node is there
 *    (`scripts/package.sh arm64`, `scripts/package.sh cuda` put it there).
 *  - The main package is packed from <dest>/stage/promptclip, whose package.json
 *    is the release manifest: package.json without the development fields, plus
 *    optionalDependencies on the platform packages packed in this run and an optional peer
 *    dependency on the CUDA package. The checkout's package.json has none of these: `npm ci` would
 *    refuse a lockfile naming packages that are not on the registry.
 *  - Every package gets LICENSE and NOTICE (the addon compiles CLIP's vocabulary in).
 *  - A CPU addon that links a CUDA library is refused, and so is a CPU package plus main package
 *    over the size budget below (stated in the README).
 *
 * Writes <dest>/pack.json: [{ name, filename, size, unpackedSize }] with tarball paths.
 */
'use strict'
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')
/** The budget for `promptclip` + `promptclip-linux-x64-gnu` together, in bytes (README: "Size"). */
const BUDGET = { packed: 24e6, unpacked: 40e6 }
const CUDA_DIR = 'linux-x64-gnu-cuda'
const CUDA_LIBS = /lib(cudart|cublas|cublasLt|curand|nvrtc|cuda)\.so/

function fail(message) {
  console.error(`pack: ${message}`)
  process.exit(1)
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'))
}

function npmPack(dir, dest) {
  const npmCli = process.env.npm_execpath?.endsWith('js') ? process.env.npm_execpath : undefined
  const args = ['pack', '--json', '--pack-destination', dest, '--ignore-scripts']
  const out = npmCli
    ? execFileSync(process.execPath, [npmCli, ...args], { cwd: dir, encoding: 'utf8' })
    : execFileSync('npm', args, { cwd: dir, encoding: 'utf8' })
  const [r] = JSON.parse(out)
  return { name: r.name, filename: path.join(dest, r.filename), size: r.size, unpackedSize: r.unpackedSize }
}

function releaseManifest(pkg, platformPackages) {
  const m = { ...pkg }
  for (const k of ['devDependencies', 'scripts', 'ava', 'overrides']) delete m[k]
  m.optionalDependencies = Object.fromEntries(platformPackages.map((p) => [p, pkg.version]))
  const cuda = readJson(path.join(ROOT, 'npm', CUDA_DIR, 'package.json')).name
  m.peerDependencies = { ...(pkg.peerDependencies ?? {}), [cuda]: pkg.version }
  m.peerDependenciesMeta = { ...(pkg.peerDependenciesMeta ?? {}), [cuda]: { optional: true } }
  return m
}

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`

function main() {
  const dest = path.resolve(process.argv[2] ?? path.join(ROOT, '.pack'))
  const pkg = readJson(path.join(ROOT, 'package.json'))
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) fail('dist/ is missing: run `npm run build` first')
  fs.mkdirSync(dest, { recursive: true })

  // The platform packages, each staged under dest: nothing is written into the checkout.
  const platforms = []
  for (const dir of fs.readdirSync(path.join(ROOT, 'npm')).sort()) {
    const pdir = path.join(ROOT, 'npm', dir)
    const ppkg = readJson(path.join(pdir, 'package.json'))
    if (ppkg.version !== pkg.version) fail(`npm/${dir} is version ${ppkg.version}, promptclip ${pkg.version}`)
    // `napi build --platform` leaves this machine's CPU addon at the root; the cross-built and the
    // CUDA addons are put in npm/<dir> by scripts/package.sh.
    const atRoot = path.join(ROOT, ppkg.main)
    const built = dir !== CUDA_DIR && fs.existsSync(atRoot) ? atRoot : path.join(pdir, ppkg.main)
    if (!fs.existsSync(built)) {
      if (dir === 'linux-x64-gnu') fail(`${ppkg.main} is missing: run \`npm run build\` first`)
      console.error(`pack: skipping ${ppkg.name} (no ${ppkg.main}; see scripts/package.sh)`)
      continue
    }
    const needsCuda = CUDA_LIBS.test(fs.readFileSync(built).toString('latin1'))
    if (dir === CUDA_DIR && !needsCuda) fail(`npm/${dir}/${ppkg.main} links no CUDA library: not a CUDA build`)
    if (dir !== CUDA_DIR && needsCuda) {
      fail(`${ppkg.main} links CUDA libraries: a CPU package must not (rebuild with \`npm run build\`)`)
    }
    const pstage = path.join(dest, 'stage', dir)
    fs.rmSync(pstage, { recursive: true, force: true })
    fs.cpSync(pdir, pstage, { recursive: true })
    fs.copyFileSync(built, path.join(pstage, ppkg.main))
    for (const f of ['LICENSE', 'NOTICE']) fs.copyFileSync(path.join(ROOT, f), path.join(pstage, f))
    platforms.push({ dir, name: ppkg.name, packed: npmPack(pstage, dest) })
  }

  // The main package, from a staging folder with the release manifest.
  const stage = path.join(dest, 'stage', pkg.name)
  fs.rmSync(stage, { recursive: true, force: true })
  fs.mkdirSync(stage, { recursive: true })
  for (const f of [...pkg.files, 'README.md']) {
    if (f.includes('*')) fail(`package.json "files" has a pattern (${f}): list paths`)
    fs.cpSync(path.join(ROOT, f), path.join(stage, f), { recursive: true })
  }
  const cpu = platforms.filter((p) => p.dir !== CUDA_DIR).map((p) => p.name)
  fs.writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(releaseManifest(pkg, cpu), null, 2)}\n`)
  const packed = [npmPack(stage, dest), ...platforms.map((p) => p.packed)]
  fs.rmSync(path.join(dest, 'stage'), { recursive: true, force: true })

  for (const p of packed) {
    console.error(`pack: ${path.basename(p.filename)}: ${mb(p.size)} packed, ${mb(p.unpackedSize)} unpacked`)
  }
  const x64 = packed.find((p) => p.name === `${pkg.name}-linux-x64-gnu`)
  const total = { packed: packed[0].size + x64.size, unpacked: packed[0].unpackedSize + x64.unpackedSize }
  console.error(
    `pack: ${pkg.name} + ${x64.name}: ${mb(total.packed)} packed (budget ${mb(BUDGET.packed)}), ` +
      `${mb(total.unpacked)} unpacked (budget ${mb(BUDGET.unpacked)})`,
  )
  if (total.packed > BUDGET.packed || total.unpacked > BUDGET.unpacked) {
    fail('over the size budget (scripts/pack.cjs BUDGET, README "Size")')
  }
  fs.writeFileSync(path.join(dest, 'pack.json'), `${JSON.stringify(packed, null, 2)}\n`)
}

main()
