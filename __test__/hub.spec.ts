/**
 * CLIPs by hub id, against a stand-in hub on the loopback interface (__test__/hub-server.ts):
 * the first download, a cache hit with no request, offline mode, pinned revisions, the hub's
 * refusals as coded errors, a dropped connection resumed, a file whose hash is wrong, two
 * processes fetching one model at once, cancelling, pickled-only repos, and a cache laid out as
 * Python's huggingface_hub reads it.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs'
import { type AddressInfo, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import test from 'ava'
import { Clip, fetchDataset, openDataset, PromptclipError } from 'promptclip'
import { dataFingerprint, modelFingerprint } from '../ts/fingerprint'
import { CLASSES, collect, HF_MODEL, OPENAI_MODEL, png, RGB } from './helpers'
import { type ArchiveEntry, FakeHub, GOOD_TOKEN, sha256, tarball, zipFile } from './hub-server'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const hub = new FakeHub()
const HF_FILES = [
  'config.json',
  'model.safetensors',
  'preprocessor_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
]
const files = (names: string[]) => Object.fromEntries(names.map((f) => [f, readFileSync(join(HF_MODEL, f))]))
/** The fixture CLIP as a hub repo, with files a CLIP does not need beside it. */
const CLIP_REPO: Record<string, Buffer> = {
  ...files(HF_FILES),
  'README.md': Buffer.from('# tiny clip\n'),
  'pytorch_model.bin': Buffer.from('pickled: never fetched'),
  'flax_model.msgpack': Buffer.alloc(1000, 7),
}
let COMMIT = ''

test.before(async () => {
  await hub.start()
  process.env.HF_ENDPOINT = hub.endpoint
  // No token of the machine's own reaches the stand-in hub.
  process.env.HF_TOKEN_PATH = join(tmpdir(), 'promptclip-no-token')
  delete process.env.HF_TOKEN
  delete process.env.HF_HUB_OFFLINE
  COMMIT = hub.commit('model', 'test-org/tiny-clip', CLIP_REPO)
  hub.commit('model', 'test-org/tiny-clip', CLIP_REPO, 'v1')
  hub.commit('model', 'test-org/private-clip', files(HF_FILES), 'main', { private: true })
  hub.commit('model', 'test-org/pickled', {
    'config.json': CLIP_REPO['config.json'],
    'pytorch_model.bin': Buffer.alloc(64),
  })
  hub.commit('model', 'test-org/not-a-clip', { 'README.md': Buffer.from('hi'), 'weights.onnx': Buffer.alloc(8) })
  hub.commit('model', 'test-org/open-clip', { 'open_clip_model.safetensors': readFileSync(OPENAI_MODEL) })
  for (const name of ['dropped', 'corrupt', 'race', 'cancel']) hub.commit('model', `test-org/${name}`, files(HF_FILES))
})

test.after.always(() => hub.stop())

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

const freshCache = () => mkdtempSync(join(tmpdir(), 'promptclip-hub-cache-'))
const texts = ['a photo of a cat', 'a photo of a dog']

async function refusal(p: Promise<unknown>): Promise<PromptclipError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  if (!(e instanceof PromptclipError)) throw new Error(`expected a PromptclipError, got ${String(e)}`)
  return e
}

test.serial(
  'the first load fetches only what CLIP needs into the Python layout; the next makes no request',
  async (t) => {
    const cacheDir = freshCache()
    const progress: { done: number; total: number }[] = []
    const clip = await Clip.load('test-org/tiny-clip', { cacheDir, onDownloadProgress: (p) => progress.push(p) })
    const local = await Clip.load(HF_MODEL)
    t.deepEqual(await clip.encodeTexts(texts), await local.encodeTexts(texts))
    // Only CLIP's files, never the pickle, the README or another framework's weights.
    const fetched = hub.downloads().filter((p) => p.startsWith('/test-org/tiny-clip/'))
    t.deepEqual(fetched.map((p) => p.split('/').pop()).sort(), [...HF_FILES].sort())
    t.true(
      fetched.every((p) => p.includes(`/resolve/${COMMIT}/`)),
      'files are fetched at the commit, not at main',
    )
    const total = HF_FILES.reduce((n, f) => n + CLIP_REPO[f].length, 0)
    t.like(progress.at(-1), { done: total, total })
    // huggingface_hub's layout: refs/main holds the commit, snapshot files link into blobs/.
    const root = join(cacheDir, 'models--test-org--tiny-clip')
    t.is(readFileSync(join(root, 'refs', 'main'), 'utf8'), COMMIT)
    const weights = join(root, 'snapshots', COMMIT, 'model.safetensors')
    t.true(lstatSync(weights).isSymbolicLink())
    t.is(readlinkSync(weights), join('..', '..', 'blobs', sha256(CLIP_REPO['model.safetensors'])))
    t.false(readdirSync(join(root, 'blobs')).some((b) => b.endsWith('.incomplete')))
    t.is(clip.info.source, weights, 'the weights file of the snapshot, as for a local folder')

    const before = hub.requests.length
    const again = await Clip.load('test-org/tiny-clip', { cacheDir })
    t.is(hub.requests.length, before, 'a cached revision is loaded without a request')
    t.deepEqual(await again.encodeTexts(texts), await local.encodeTexts(texts))
    // Offline: the cache alone, with no request; a model not in it is named with what is missing.
    const offline = await Clip.load('test-org/tiny-clip', { cacheDir, offline: true })
    t.is(offline.info.source, clip.info.source)
    const missing = await refusal(Clip.load('test-org/tiny-clip', { cacheDir: freshCache(), offline: true }))
    t.is(missing.code, 'E_MODEL_NOT_FOUND')
    t.regex(missing.message, /offline.*no test-org\/tiny-clip at main/)
    t.is(hub.requests.length, before, 'offline makes no request')

    // Python's huggingface_hub reads the cache as its own (when it is installed: CI installs it).
    const py = spawnSync(
      'python3',
      [
        '-c',
        'import json,sys; from huggingface_hub import scan_cache_dir; r = scan_cache_dir(sys.argv[1]); ' +
          'print(json.dumps({"warnings": [str(w) for w in r.warnings], "repos": [{"id": x.repo_id, "type": x.repo_type, ' +
          '"revisions": [{"commit": v.commit_hash, "refs": sorted(v.refs), "files": sorted(f.file_name for f in v.files)} for v in x.revisions], ' +
          '"size": x.size_on_disk} for x in r.repos]}))',
        cacheDir,
      ],
      { encoding: 'utf8' },
    )
    if (py.status !== 0 && !process.env.PROMPTCLIP_REQUIRE_HF_HUB && /No module named/.test(py.stderr)) {
      t.log('huggingface_hub is not installed: the Python check of the layout was skipped')
      return
    }
    t.is(py.status, 0, py.stderr)
    const scan = JSON.parse(py.stdout)
    t.deepEqual(scan.warnings, [])
    t.deepEqual(scan.repos, [
      {
        id: 'test-org/tiny-clip',
        type: 'model',
        revisions: [{ commit: COMMIT, refs: ['main'], files: [...HF_FILES].sort() }],
        size: total,
      },
    ])
  },
)

test.serial(
  'a pinned revision: a tag is recorded in refs/, a commit is its own snapshot; unknown ones are named',
  async (t) => {
    const cacheDir = freshCache()
    const tagged = await Clip.load('test-org/tiny-clip', { cacheDir, revision: 'v1' })
    const v1 = readFileSync(join(cacheDir, 'models--test-org--tiny-clip', 'refs', 'v1'), 'utf8')
    t.is(dirname(tagged.info.source), join(cacheDir, 'models--test-org--tiny-clip', 'snapshots', v1))
    t.not(v1, COMMIT)
    const pinned = await Clip.load('test-org/tiny-clip', { cacheDir, revision: COMMIT })
    t.is(dirname(pinned.info.source), join(cacheDir, 'models--test-org--tiny-clip', 'snapshots', COMMIT))
    t.false(existsSync(join(cacheDir, 'models--test-org--tiny-clip', 'refs', 'main')))
    const e = await refusal(Clip.load('test-org/tiny-clip', { cacheDir, revision: 'no-such-branch' }))
    t.is(e.code, 'E_MODEL_NOT_FOUND')
    t.regex(e.message, /no revision no-such-branch/)
  },
)

test.serial(
  'the hub refusals are coded: unknown repo, no access, pickles only, not a CLIP, network down',
  async (t) => {
    const cacheDir = freshCache()
    // Anonymous, the hub answers 401 for a repo that does not exist; signed in, 404.
    const anonymous = await refusal(Clip.load('test-org/no-such-model', { cacheDir }))
    t.is(anonymous.code, 'E_AUTH')
    t.regex(anonymous.message, /HF_TOKEN/)
    const signedIn = await refusal(Clip.load('test-org/no-such-model', { cacheDir, token: GOOD_TOKEN }))
    t.is(signedIn.code, 'E_MODEL_NOT_FOUND')
    t.regex(signedIn.message, /neither a local path nor a model on http:\/\/127\.0\.0\.1/)
    const noToken = await refusal(Clip.load('test-org/private-clip', { cacheDir }))
    t.is(noToken.code, 'E_AUTH')
    t.regex(noToken.message, /no token was given.*HF_TOKEN/)
    const wrongToken = await refusal(Clip.load('test-org/private-clip', { cacheDir, token: 'hf_wrong' }))
    t.regex(wrongToken.message, /the token given \(HF_TOKEN\) cannot read it/)
    const withToken = await Clip.load('test-org/private-clip', { cacheDir, token: GOOD_TOKEN })
    t.is(withToken.info.embedDim, (await Clip.load(HF_MODEL)).info.embedDim)
    t.true(
      hub.requests
        .filter((r) => r.path.includes('private-clip/resolve'))
        .every((r) => r.auth === `Bearer ${GOOD_TOKEN}`),
    )

    const downloads = hub.downloads().length
    const pickled = await refusal(Clip.load('test-org/pickled', { cacheDir }))
    t.is(pickled.code, 'E_UNSUPPORTED')
    t.regex(pickled.message, /only pickled weights \(pytorch_model\.bin\).*safetensors.*never unpickles.*save_file/)
    const other = await refusal(Clip.load('test-org/not-a-clip', { cacheDir }))
    t.is(other.code, 'E_INVALID_ARGUMENT')
    t.regex(other.message, /not a CLIP.*README\.md, weights\.onnx/)
    t.is(hub.downloads().length, downloads, 'nothing of a refused repo is fetched')

    // The network down: a port nothing listens on (one just freed; fetch refuses port 9 itself).
    const closed = await freePort()
    const down = spawnSync(process.execPath, [CLI, 'info', 'test-org/tiny-clip', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, HF_ENDPOINT: `http://127.0.0.1:${closed}`, HF_HUB_CACHE: cacheDir },
    })
    t.is(down.status, 1, down.stderr)
    t.regex(down.stderr, /E_NETWORK.*cannot reach http:\/\/127\.0\.0\.1:\d+ for test-org\/tiny-clip \(ECONNREFUSED\)/)
    // ... and with the model in the cache at another revision, the way to use it offline is named.
    await Clip.load('test-org/tiny-clip', { cacheDir, revision: 'v1' })
    const downCached = spawnSync(process.execPath, [CLI, 'info', 'test-org/tiny-clip', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, HF_ENDPOINT: `http://127.0.0.1:${closed}`, HF_HUB_CACHE: cacheDir },
    })
    t.regex(downCached.stderr, /the cache has test-org\/tiny-clip at v1: set HF_HUB_OFFLINE=1.*--revision v1/)
  },
)

test.serial(
  'a connection dropped mid-file resumes where it stopped; a wrong sha256 leaves nothing in the cache',
  async (t) => {
    const cacheDir = freshCache()
    hub.dropOnce.add('test-org/dropped/model.safetensors')
    const clip = await Clip.load('test-org/dropped', { cacheDir })
    t.deepEqual(await clip.encodeTexts(texts), await (await Clip.load(HF_MODEL)).encodeTexts(texts))
    const tries = hub.requests.filter(
      (r) => r.path.startsWith('/test-org/dropped/resolve/') && r.path.endsWith('/model.safetensors'),
    )
    t.is(tries.length, 2)
    t.regex(tries[1].range ?? '', /^bytes=\d+-$/, 'the retry asks for the rest only')
    t.not(tries[1].range, 'bytes=0-')

    hub.corrupt.add('test-org/corrupt/model.safetensors')
    const e = await refusal(Clip.load('test-org/corrupt', { cacheDir }))
    t.is(e.code, 'E_INTEGRITY')
    t.regex(e.message, /model\.safetensors.*sha256.*nothing was cached/)
    const root = join(cacheDir, 'models--test-org--corrupt')
    const blob = sha256(CLIP_REPO['model.safetensors'])
    t.false(existsSync(join(root, 'blobs', blob)))
    t.false(existsSync(join(root, 'blobs', `${blob}.incomplete`)))
    t.false(existsSync(join(root, 'refs', 'main')), 'no ref to a snapshot without its weights')
    // Once the hub serves the right bytes, the same call works.
    hub.corrupt.clear()
    t.truthy(await Clip.load('test-org/corrupt', { cacheDir }))
  },
)

test.serial('two processes loading one model at once share the cache: each file is fetched once', async (t) => {
  const cacheDir = freshCache()
  hub.slowMs = 5
  const script = `require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))}).Clip.load('test-org/race').then(c => console.log(c.info.source))`
  const env = { ...process.env, HF_HUB_CACHE: cacheDir }
  const [a, b] = await Promise.all(
    [0, 1].map(() => collect(spawn(process.execPath, ['-e', script], { env, stdio: ['ignore', 'pipe', 'pipe'] }))),
  )
  hub.slowMs = 0
  t.is(a.code, 0, a.stderr)
  t.is(b.code, 0, b.stderr)
  t.is(a.stdout, b.stdout)
  const weights = hub.downloads().filter((p) => p.startsWith('/test-org/race/') && p.endsWith('model.safetensors'))
  t.is(weights.length, 1)
  const blobs = readdirSync(join(cacheDir, 'models--test-org--race', 'blobs'))
  t.is(blobs.length, HF_FILES.length)
  t.false(blobs.some((x) => x.includes('incomplete')))
  t.false(a.stdout.includes('Downloading'), 'nothing but the result on stdout')
})

test.serial('an AbortSignal cancels a download; the next load resumes from the bytes that arrived', async (t) => {
  const cacheDir = freshCache()
  hub.slowMs = 20
  const controller = new AbortController()
  const e = await refusal(
    Clip.load('test-org/cancel', {
      cacheDir,
      signal: controller.signal,
      onDownloadProgress: (p) => {
        if (p.file === 'model.safetensors' && p.done > 0) controller.abort()
      },
    }),
  )
  hub.slowMs = 0
  t.is(e.code, 'E_CANCELLED')
  const clip = await Clip.load('test-org/cancel', { cacheDir })
  t.truthy(clip.info.embedDim)
})

test.serial('a hub model is fingerprinted by its blob name, the sha256 checked when it was fetched', async (t) => {
  const cacheDir = freshCache()
  const clip = await Clip.load('test-org/open-clip', { cacheDir })
  const weights = clip.info.source
  t.true(lstatSync(weights).isSymbolicLink())
  const [link] = (await dataFingerprint([weights], [0])).images
  t.is(link.sha256, sha256(readFileSync(OPENAI_MODEL)))
  t.is(link.sha256, basename(readlinkSync(weights)), 'the name of the blob it links to')
  t.not(await modelFingerprint(weights), `unreadable:${weights}`)
  // A file over 64 MiB is hashed as a stream, to the same digest.
  const big = join(freshCache(), 'big.safetensors')
  const bytes = Buffer.alloc(65 << 20, 3)
  bytes.write('promptclip', 1000)
  writeFileSync(big, bytes)
  t.is((await dataFingerprint([big], [0])).images[0].sha256, sha256(bytes))
})

test.serial('an OpenCLIP repo loads from open_clip_model.safetensors', async (t) => {
  const cacheDir = freshCache()
  const clip = await Clip.load('test-org/open-clip', { cacheDir })
  t.true(clip.info.source.endsWith('open_clip_model.safetensors'))
  t.deepEqual(await clip.encodeTexts(texts), await (await Clip.load(OPENAI_MODEL)).encodeTexts(texts))
})

test.serial(
  'the CLI takes --model <org>/<name> (and --revision, --offline); `promptclip models` lists the cache',
  async (t) => {
    const cacheDir = freshCache()
    const env = { ...process.env, HF_HUB_CACHE: cacheDir }
    // Spawned asynchronously: the stand-in hub answers from this process, which spawnSync would block.
    const run = async (args: string[]) => {
      const r = await collect(spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] }))
      return { status: r.code, stdout: r.stdout, stderr: r.stderr }
    }
    const offline = await run(['info', 'test-org/tiny-clip', '--offline'])
    t.is(offline.status, 2, offline.stderr)
    t.regex(offline.stderr, /E_MODEL_NOT_FOUND: offline/)
    const info = await run(['info', 'test-org/tiny-clip', '--revision', 'v1', '--json'])
    t.is(info.status, 0, info.stderr)
    t.is(JSON.parse(info.stdout).embedDim, (await Clip.load(HF_MODEL)).info.embedDim)
    const zs = await run([
      'zeroshot',
      join(ROOT, 'fixtures', 'images', 'c_small_100x100.png'),
      '--model',
      'test-org/tiny-clip',
      '--classes',
      'a,b',
      '--json',
    ])
    t.is(zs.status, 0, zs.stderr)
    const listed = await run(['models', '--json'])
    t.is(listed.status, 0, listed.stderr)
    const models = JSON.parse(listed.stdout) as { id: string; revisions: { refs: string[] }[]; size: number }[]
    t.deepEqual(
      models.map((m) => [m.id, m.revisions.flatMap((r) => r.refs).sort()]),
      [['test-org/tiny-clip', ['main', 'v1']]],
    )
    t.true(models[0].size > 0)
    const table = await run(['models'])
    t.regex(table.stdout, /test-org\/tiny-clip\s+main, v1/)
  },
)

// ---------------------------------------------------------------------------------------------
// Datasets: hf://datasets/<org>/<name>[/<sub-folder>]

/** Class folders of PNGs as archive entries, under `prefix`. */
function classEntries(prefix: string, perClass: number): ArchiveEntry[] {
  return CLASSES.slice(0, 2).flatMap((c, k) =>
    Array.from({ length: perClass }, (_, i) => ({
      name: `${prefix}${c}/${i}.png`,
      data: png(24, 24, RGB[k], 10 * k + i),
    })),
  )
}

test.serial(
  'a hub dataset is fetched (one sub-folder of it), its archives unpacked once, and opened as a folder',
  async (t) => {
    const cacheDir = freshCache()
    // The official layout of a catalog dataset: its split file beside an archive of its images.
    const images = CLASSES.slice(0, 2).flatMap((c, k) =>
      [0, 1, 2].map((i) => ({ name: `images/${c}_${i}.png`, data: png(24, 24, RGB[k], i) })),
    )
    const split = {
      train: [0, 1].flatMap((i) => CLASSES.slice(0, 2).map((c, k) => [`${c}_${i}.png`, k, c])),
      val: [],
      test: CLASSES.slice(0, 2).map((c, k) => [`${c}_2.png`, k, c]),
    }
    hub.commit('dataset', 'test-org/coop-datasets', {
      'README.md': Buffer.from('mirror'),
      'oxford_pets/split_zhou_OxfordPets.json': Buffer.from(JSON.stringify(split)),
      'oxford_pets/images.tar.gz': tarball(images, true),
      'colours/data.zip': zipFile(classEntries('train/', 2).concat(classEntries('test/', 1))),
      'other/big.bin': Buffer.alloc(4096, 1),
    })
    const pets = await fetchDataset('hf://datasets/test-org/coop-datasets/oxford_pets', { cacheDir })
    t.true(pets.endsWith('oxford_pets'))
    const fetched = hub.downloads().filter((p) => p.includes('/datasets/test-org/coop-datasets/'))
    t.deepEqual(fetched.map((p) => p.split('/').slice(-2).join('/')).sort(), [
      'oxford_pets/images.tar.gz',
      'oxford_pets/split_zhou_OxfordPets.json',
    ])
    // openDataset reads it from the cache by its hf:// name, with the catalog's layout.
    const uri = 'hf://datasets/test-org/coop-datasets/oxford_pets'
    process.env.HF_HUB_CACHE = cacheDir
    try {
      const opened = openDataset(uri)
      t.is(opened.name, uri)
      t.deepEqual(opened.classNames, ['red', 'green'])
      t.is(opened.train.images.length, 4)
      t.is(opened.test?.images.length, 2)
      t.true(existsSync(opened.train.images[0] as string))
      // A zip of split folders, fetched by a second sub-folder of the same commit.
      await fetchDataset('hf://datasets/test-org/coop-datasets/colours', { cacheDir })
      const colours = openDataset('hf://datasets/test-org/coop-datasets/colours')
      t.deepEqual(colours.classNames.sort(), ['green', 'red'])
      t.is(colours.train.images.length, 4)
      t.is(colours.test?.images.length, 2)
      // Both stay: the view of the commit holds every sub-folder fetched.
      t.is(openDataset(uri).train.images.length, 4)
      const before = hub.requests.length
      await fetchDataset(uri, { cacheDir })
      t.is(hub.requests.length, before, 'a cached dataset makes no request')
    } finally {
      delete process.env.HF_HUB_CACHE
    }
    const missing = await refusal(fetchDataset(uri, { cacheDir: freshCache(), offline: true }))
    t.is(missing.code, 'E_MODEL_NOT_FOUND')
    t.throws(() => openDataset('hf://datasets/test-org/not-fetched'), {
      message: /not in the Hugging Face cache yet.*fetchDataset/,
    })
  },
)

test.serial(
  'archives that would write outside their folder, hold links, or unpack too large are refused',
  async (t) => {
    const cacheDir = freshCache()
    hub.commit('dataset', 'test-org/evil', {
      'dotdot/a.tar': tarball([
        { name: 'ok.png', data: png(8, 8, RGB[0], 1) },
        { name: '../../escaped.txt', data: Buffer.from('x') },
      ]),
      'abs/a.zip': zipFile([{ name: '/etc/promptclip-escaped', data: Buffer.from('x') }]),
      'link/a.tar.gz': tarball([{ name: 'passwd', type: 'symlink', link: '/etc/passwd' }], true),
      'ziplink/a.zip': zipFile([{ name: 'passwd', type: 'symlink', link: '/etc/passwd' }]),
      'big/a.tgz': tarball([{ name: 'zeros.bin', data: Buffer.alloc(200_000) }], true),
    })
    for (const [folder, pattern] of [
      ['dotdot', /"\.\.\/\.\.\/escaped\.txt" would leave the folder/],
      ['abs', /"\/etc\/promptclip-escaped" would leave the folder/],
      ['link', /"passwd" is a link; links in archives are not unpacked/],
      ['ziplink', /"passwd" is a link/],
    ] as const) {
      const e = await refusal(fetchDataset(`hf://datasets/test-org/evil/${folder}`, { cacheDir }))
      t.is(e.code, 'E_INVALID_ARGUMENT', folder)
      t.regex(e.message, pattern)
    }
    process.env.PROMPTCLIP_MAX_ARCHIVE_BYTES = '100000'
    try {
      const e = await refusal(fetchDataset('hf://datasets/test-org/evil/big', { cacheDir }))
      t.regex(e.message, /more than 100000 bytes \(PROMPTCLIP_MAX_ARCHIVE_BYTES\)/)
    } finally {
      delete process.env.PROMPTCLIP_MAX_ARCHIVE_BYTES
    }
    // Nothing was written outside, and no half-unpacked folder or view is left.
    const root = join(cacheDir, 'datasets--test-org--evil')
    t.false(existsSync(join(root, 'promptclip', 'escaped.txt')))
    t.false(existsSync(join(cacheDir, 'escaped.txt')))
    t.false(existsSync('/etc/promptclip-escaped'))
    const unpacked = join(root, 'promptclip', 'unpacked')
    t.deepEqual(existsSync(unpacked) ? readdirSync(unpacked) : [], [])
  },
)
