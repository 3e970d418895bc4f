/** The papers' sampling: K per class with a seed, validation min(K, 4), base-to-new. */
import test from 'ava'
import { baseToNew, type DatasetSplits, fewShot, fewShotSplits, type LabelledDataset, without } from 'promptclip'

/** `counts[c]` images of class c, named `c<class>_<i>`, classes interleaved as real lists are. */
function data(counts: number[]): LabelledDataset {
  const images: string[] = []
  const labels: number[] = []
  const max = Math.max(...counts)
  for (let i = 0; i < max; i++) {
    for (const [c, n] of counts.entries()) {
      if (i < n) {
        images.push(`c${c}_${i}`)
        labels.push(c)
      }
    }
  }
  return { images, labels, classNames: counts.map((_, c) => `class ${c}`) }
}

const perClass = (d: { labels: number[] }, k: number) =>
  Array.from({ length: k }, (_, c) => d.labels.filter((l) => l === c).length)

test('fewShot: K per class, all of a smaller class, labels kept with their images', (t) => {
  const d = data([10, 2, 5, 16])
  const s = fewShot(d, 4, 1)
  t.deepEqual(perClass(s, 4), [4, 2, 4, 4])
  t.deepEqual(s.classNames, d.classNames)
  for (const [i, img] of s.images.entries())
    t.is(Number((img as string).slice(1, (img as string).indexOf('_'))), s.labels[i])
  t.is(new Set(s.images).size, s.images.length)
  // A class with fewer than K keeps all its images, in order.
  t.deepEqual(
    s.images.filter((_, i) => s.labels[i] === 1),
    ['c1_0', 'c1_1'],
  )
  t.throws(() => fewShot(d, 0, 1), { message: /shots must be a positive integer, got 0/ })
  t.throws(() => fewShot({ images: ['a'], labels: [0, 1] }, 1, 1), { message: /1 image but 2 labels/ })
})

test('fewShot: a seed names one sample on every run and platform', (t) => {
  const d = data([8, 8, 3])
  t.deepEqual(fewShot(d, 2, 1), fewShot(d, 2, 1))
  t.notDeepEqual(fewShot(d, 2, 1).images, fewShot(d, 2, 2).images)
  // Pinned: mulberry32 and the partial Fisher-Yates give exactly these (a change here changes
  // every published few-shot split of promptclip).
  t.deepEqual(fewShot(d, 2, 1).images, ['c0_5', 'c0_1', 'c1_4', 'c1_7', 'c2_2', 'c2_1'])
  t.deepEqual(fewShot(d, 2, 2).images, ['c0_5', 'c0_3', 'c1_2', 'c1_4', 'c2_2', 'c2_0'])
})

test('fewShotSplits: val is min(K, 4) per class from the val split, else from train images not picked', (t) => {
  const train = data([20, 20, 3])
  const val = data([6, 6, 6])
  const withVal: DatasetSplits = { name: 'x', classNames: train.classNames, train, val, skipped: [] }
  const a = fewShotSplits(withVal, 8, 1)
  t.deepEqual(perClass(a.train, 3), [8, 8, 3])
  t.deepEqual(perClass(a.val, 3), [4, 4, 4])
  t.deepEqual(fewShotSplits(withVal, 8, 1), a)
  t.deepEqual(perClass(fewShotSplits(withVal, 2, 1).val, 3), [2, 2, 2])
  // No val split: the validation draw comes from the train images left over, never shared.
  const b = fewShotSplits({ name: 'y', classNames: train.classNames, train, skipped: [] }, 16, 2)
  t.deepEqual(perClass(b.train, 3), [16, 16, 3])
  t.deepEqual(perClass(b.val, 3), [4, 4, 0])
  const picked = new Set(b.train.images)
  t.true(b.val.images.every((img) => !picked.has(img)))
  t.deepEqual(b.val.classNames, train.classNames)
})

test('without: the images not picked, by identity', (t) => {
  const d = data([5, 5])
  const s = fewShot(d, 2, 4)
  const rest = without(d, s)
  t.is(rest.images.length, 6)
  t.true(rest.images.every((img) => !s.images.includes(img)))
  t.deepEqual(
    rest.labels,
    rest.images.map((img) => Number((img as string)[1])),
  )
})

test('baseToNew: sorted labels, base the first ceil(n / 2) classes, each half relabelled from 0', (t) => {
  const d = data([1, 2, 1, 1, 3])
  const { base, novel } = baseToNew(d)
  t.deepEqual(base.classNames, ['class 0', 'class 1', 'class 2'])
  t.deepEqual(novel.classNames, ['class 3', 'class 4'])
  t.deepEqual([...new Set(base.labels)].sort(), [0, 1, 2])
  t.deepEqual([...new Set(novel.labels)].sort(), [0, 1])
  t.deepEqual(
    novel.images.filter((_, i) => novel.labels[i] === 1),
    ['c4_0', 'c4_1', 'c4_2'],
  )
  t.is(base.images.length + novel.images.length, d.images.length)
  // After few-shot sampling, as the protocol applies it.
  t.deepEqual(perClass(baseToNew(fewShot(d, 1, 1)).novel, 2), [1, 1])
})

test('fewShotSplits: an empty val split counts as none', (t) => {
  const train = data([6, 6])
  const empty = { images: [], labels: [], classNames: train.classNames }
  const s = fewShotSplits({ name: 'z', classNames: train.classNames, train, val: empty, skipped: [] }, 2, 1)
  t.deepEqual(perClass(s.val, 2), [2, 2])
})
