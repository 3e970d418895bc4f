import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import test from 'ava'
import { Clip, fewShot, loadImageFolder, loadSplitFile, readIdx } from 'promptclip'
import { HF_MODEL, IMAGES, present } from './helpers'

test('readIdx reads gzipped and plain IDX files and rejects others', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'idx-'))
  const header = Buffer.from([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3])
  const body = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
  writeFileSync(join(dir, 'a.idx'), Buffer.concat([header, body]))
  writeFileSync(join(dir, 'a.idx.gz'), gzipSync(Buffer.concat([header, body])))
  for (const f of ['a.idx', 'a.idx.gz']) {
    const r = readIdx(join(dir, f))
    t.deepEqual(r.dims, [2, 2, 3])
    t.deepEqual(Array.from(r.data), Array.from(body))
  }
  writeFileSync(join(dir, 'bad.idx'), Buffer.concat([header, body.subarray(1)]))
  t.throws(() => readIdx(join(dir, 'bad.idx')), { message: /bad\.idx/ })
})

test('fewShot takes K per class, all of a smaller class, reproducibly', (t) => {
  const labels = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
  const data = { images: labels.map((_, i) => `img${i}.png`), labels }
  const a = fewShot(data, 3, 7)
  t.deepEqual(
    [0, 1, 2].map((c) => a.labels.filter((l) => l === c).length),
    [3, 2, 3],
  )
  t.deepEqual(fewShot(data, 3, 7), a)
  t.notDeepEqual(fewShot(data, 3, 8).images, a.images)
  for (const [i, img] of a.images.entries()) t.is(labels[Number((img as string).slice(3, -4))], a.labels[i])
})

test('image folders and split files load with labels and class names', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'folder-'))
  for (const [cls, files] of [
    ['cat', ['a_landscape_320x240.jpg', 'c_small_100x100.png']],
    ['dog', ['i_webp_300x225.webp']],
  ] as const) {
    mkdirSync(join(root, cls))
    for (const f of files) copyFileSync(join(IMAGES, f), join(root, cls, f))
  }
  const ds = loadImageFolder(root)
  t.deepEqual(ds.classNames, ['cat', 'dog'])
  t.deepEqual(ds.labels, [0, 0, 1])
  const split = {
    train: [['cat/a_landscape_320x240.jpg', 0, 'cat']],
    val: [['dog/i_webp_300x225.webp', 1, 'dog']],
    test: [['cat/c_small_100x100.png', 0, 'cat']],
  }
  writeFileSync(join(root, 'split_zhou_Toy.json'), JSON.stringify(split))
  const s = loadSplitFile(join(root, 'split_zhou_Toy.json'), root)
  t.deepEqual(s.train.classNames, ['cat', 'dog'])
  t.is(s.val.images[0], join(root, 'dog/i_webp_300x225.webp'))
  writeFileSync(join(root, 'broken.json'), JSON.stringify({ train: [['x', 'zero', 'cat']], val: [], test: [] }))
  t.throws(() => loadSplitFile(join(root, 'broken.json'), root), { message: /train\[0\]/ })
})

test('raw pixels give the same embedding as the encoded image', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  // The same 3x2 picture as grey and as RGB pixels: grey is expanded exactly as PIL does.
  const pixels = new Uint8Array([0, 64, 128, 192, 255, 32])
  const rgb = new Uint8Array(Array.from(pixels).flatMap((v) => [v, v, v]))
  const out = await clip.encodeImages([
    { width: 3, height: 2, channels: 1, data: pixels },
    { width: 3, height: 2, channels: 3, data: rgb },
    { width: 3, height: 2, channels: 3, data: rgb.subarray(1) },
  ])
  t.deepEqual(Array.from(present(out.embeddings[0])), Array.from(present(out.embeddings[1])))
  t.is(out.failures[0].index, 2)
  t.regex(out.failures[0].message, /17 bytes for 3x2x3/)
  await t.throwsAsync(clip.encodeImages([{ width: 0, height: 2, channels: 1, data: pixels }]), {
    message: /raw images/,
  })
})
