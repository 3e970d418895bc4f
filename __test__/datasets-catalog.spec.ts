/**
 * The catalog reads the papers' datasets in the official code's layouts (CoOp's DATASETS.md and
 * datasets/*.py). Each test builds a tiny fake tree of one layout and checks what the official
 * reader would produce for it: class names (as its reader cleans them), labels, splits, template.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { DATASETS, type DatasetName, loadDataset, openDataset, PromptclipError } from 'promptclip'
import { type SplitEntry, splitTree, tempDir, tree } from './datasets-tree'

const code = (c: string, message?: RegExp) =>
  ({ instanceOf: PromptclipError, code: c, ...(message ? { message } : {}) }) as never

/** The split-file datasets: their folder, image folder, split file, a few entries as the official
 *  split files hold them (names already cleaned by the code that wrote them), and the template. */
const SPLIT_DATASETS: {
  name: DatasetName
  dir: string
  imageDir: string
  file: string
  entries: SplitEntry[]
  template: string
}[] = [
  {
    name: 'caltech101',
    dir: 'caltech-101',
    imageDir: '101_ObjectCategories',
    file: 'split_zhou_Caltech101.json',
    entries: [
      ['Faces/image_0001.jpg', 0, 'face'],
      ['Leopards/image_0001.jpg', 1, 'leopard'],
    ],
    template: 'a photo of a {}.',
  },
  {
    name: 'oxford_pets',
    dir: 'oxford_pets',
    imageDir: 'images',
    file: 'split_zhou_OxfordPets.json',
    entries: [
      ['Abyssinian_1.jpg', 0, 'abyssinian'],
      ['american_bulldog_10.jpg', 1, 'american_bulldog'],
    ],
    template: 'a photo of a {}, a type of pet.',
  },
  {
    name: 'stanford_cars',
    dir: 'stanford_cars',
    imageDir: '',
    file: 'split_zhou_StanfordCars.json',
    entries: [
      ['cars_train/00001.jpg', 0, '2012 AM General Hummer SUV'],
      ['cars_test/00002.jpg', 1, '2012 Acura RL Sedan'],
    ],
    template: 'a photo of a {}.',
  },
  {
    name: 'oxford_flowers',
    dir: 'oxford_flowers',
    imageDir: 'jpg',
    file: 'split_zhou_OxfordFlowers.json',
    entries: [
      ['image_06734.jpg', 0, 'pink primrose'],
      ['image_06735.jpg', 1, 'hard-leaved pocket orchid'],
    ],
    template: 'a photo of a {}, a type of flower.',
  },
  {
    name: 'food101',
    dir: 'food-101',
    imageDir: 'images',
    file: 'split_zhou_Food101.json',
    entries: [
      ['apple_pie/1005649.jpg', 0, 'apple_pie'],
      ['baby_back_ribs/1005293.jpg', 1, 'baby_back_ribs'],
    ],
    template: 'a photo of {}, a type of food.',
  },
  {
    name: 'sun397',
    dir: 'sun397',
    imageDir: 'SUN397',
    file: 'split_zhou_SUN397.json',
    entries: [
      ['a/abbey/sun_aaalbzqrimafwbiv.jpg', 0, 'abbey'],
      ['a/apartment_building/outdoor/sun_aaaqojkwsbixmypj.jpg', 1, 'outdoor apartment_building'],
    ],
    template: 'a photo of a {}.',
  },
  {
    name: 'dtd',
    dir: 'dtd',
    imageDir: 'images',
    file: 'split_zhou_DescribableTextures.json',
    entries: [
      ['banded/banded_0002.jpg', 0, 'banded'],
      ['blotchy/blotchy_0003.jpg', 1, 'blotchy'],
    ],
    template: '{} texture.',
  },
  {
    name: 'eurosat',
    dir: 'eurosat',
    imageDir: '2750',
    file: 'split_zhou_EuroSAT.json',
    entries: [
      ['AnnualCrop/AnnualCrop_1.jpg', 0, 'Annual Crop Land'],
      ['SeaLake/SeaLake_1.jpg', 1, 'Sea or Lake'],
    ],
    template: 'a centered satellite photo of {}.',
  },
  {
    name: 'ucf101',
    dir: 'ucf101',
    imageDir: 'UCF-101-midframes',
    file: 'split_zhou_UCF101.json',
    entries: [
      ['Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg', 0, 'Apply_Eye_Makeup'],
      ['Playing_Daf/v_PlayingDaf_g08_c01.jpg', 1, 'Playing_Daf'],
    ],
    template: 'a photo of a person doing {}.',
  },
]

/** A split with both classes in each part: train gets the entries, val and test copies under
 *  other file names (the same path in two parts is refused). */
function splitOf(entries: SplitEntry[]): Record<'train' | 'val' | 'test', SplitEntry[]> {
  const renamed = (suffix: string) =>
    entries.map(([p, l, c]) => [p.replace(/\.jpg$/, `_${suffix}.jpg`), l, c] as SplitEntry)
  return { train: entries, val: renamed('v'), test: renamed('t') }
}

for (const ds of SPLIT_DATASETS) {
  test(`${ds.name}: its split file and image folder, as the official reader reads them`, (t) => {
    const root = tempDir()
    const dir = join(root, ds.dir)
    const split = splitOf(ds.entries)
    splitTree(join(dir, ds.imageDir), split)
    writeFileSync(join(dir, ds.file), JSON.stringify(split))
    const d = loadDataset(ds.name, root)
    t.is(d.name, ds.name)
    t.is(d.template, ds.template)
    t.is(DATASETS[ds.name].template, ds.template)
    t.deepEqual(
      d.classNames,
      ds.entries.map(([, , c]) => c),
    )
    t.deepEqual(d.train.images, [join(dir, ds.imageDir, ds.entries[0][0]), join(dir, ds.imageDir, ds.entries[1][0])])
    t.deepEqual(d.train.labels, [0, 1])
    t.deepEqual(d.val?.labels, [0, 1])
    t.deepEqual(
      d.test?.images,
      split.test.map(([p]) => join(dir, ds.imageDir, p)),
    )
    t.deepEqual(d.skipped, [])
    // The same dataset named by its catalog name under a root, by its folder, or by its split file.
    t.deepEqual(openDataset(ds.name, { root }), d)
    t.deepEqual(openDataset(DATASETS[ds.name].title, { root }).train, d.train)
    const byFolder = openDataset(dir)
    t.deepEqual(byFolder.test, d.test)
    t.is(byFolder.template, ds.template)
    const byFile = openDataset(join(dir, ds.file))
    t.deepEqual(byFile.train, d.train)
    t.is(byFile.template, ds.template)
    t.is(byFile.name, join(dir, ds.file))
  })
}

test('a catalog name reads under $PROMPTCLIP_DATA when no root is given', (t) => {
  const root = tempDir()
  const ds = SPLIT_DATASETS[1]
  const split = splitOf(ds.entries)
  splitTree(join(root, ds.dir, ds.imageDir), split)
  writeFileSync(join(root, ds.dir, ds.file), JSON.stringify(split))
  const before = process.env.PROMPTCLIP_DATA
  process.env.PROMPTCLIP_DATA = root
  try {
    t.deepEqual(openDataset('oxford_pets').classNames, ['abyssinian', 'american_bulldog'])
  } finally {
    if (before === undefined) delete process.env.PROMPTCLIP_DATA
    else process.env.PROMPTCLIP_DATA = before
  }
})

test('a split-file dataset without its split file names the file it needs', (t) => {
  const root = tempDir()
  tree(join(root, 'oxford_pets', 'images'), ['a_1.jpg'])
  const err = t.throws(() => loadDataset('oxford_pets', root), code('E_FILE_NOT_FOUND'))
  t.regex(err?.message ?? '', /split_zhou_OxfordPets\.json does not exist/)
  t.throws(() => loadDataset('stanford_cars', root), code('E_FILE_NOT_FOUND', /stanford_cars.*does not exist/))
  t.throws(
    () => loadDataset('mnist' as DatasetName, root),
    code('E_INVALID_ARGUMENT', /unknown dataset "mnist".*oxford_pets/),
  )
})

const CLASSNAMES = 'n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\nn01491361 tiger shark\n'

test('imagenet: classnames.txt names the sorted train folders; val is the test split; no val split', (t) => {
  const root = tempDir()
  const dir = join(root, 'imagenet')
  tree(dir, {
    'classnames.txt': CLASSNAMES,
    // Folders in a different order than classnames.txt: labels follow the sorted folders.
    'images/train/n01484850/n01484850_1.JPEG': null,
    'images/train/n01440764/n01440764_1.JPEG': null,
    'images/train/n01440764/n01440764_2.JPEG': null,
    'images/train/n01443537/n01443537_1.JPEG': null,
    'images/val/n01443537/ILSVRC2012_val_00000001.JPEG': null,
    'images/val/n01484850/ILSVRC2012_val_00000002.JPEG': null,
  })
  const d = loadDataset('imagenet', root)
  t.deepEqual(d.classNames, ['tench', 'goldfish', 'great white shark'])
  t.deepEqual(d.train.labels, [0, 0, 1, 2])
  t.is(d.train.images[0], join(dir, 'images/train/n01440764/n01440764_1.JPEG'))
  // val lacks tench: its images keep train's labels.
  t.deepEqual(d.test?.labels, [1, 2])
  t.is(d.val, undefined)
  t.is(d.template, 'a photo of a {}.')
  tree(dir, { 'images/val/n09999999/x.JPEG': null })
  t.throws(() => loadDataset('imagenet', root), code('E_INVALID_ARGUMENT', /n09999999/))
})

test('imagenet: a folder missing from classnames.txt, a missing classnames.txt', (t) => {
  const root = tempDir()
  tree(join(root, 'imagenet'), {
    'classnames.txt': 'n01440764 tench\n',
    'images/train/n01440764/a.JPEG': null,
    'images/train/n01443537/b.JPEG': null,
    'images/val/n01440764/c.JPEG': null,
  })
  t.throws(
    () => loadDataset('imagenet', root),
    code('E_INVALID_ARGUMENT', /1 class folder is not in .*classnames\.txt: n01443537/),
  )
  t.throws(() => loadDataset('imagenet_sketch', root), code('E_FILE_NOT_FOUND'))
  tree(join(root, 'imagenet-sketch'), { 'images/n01440764/a.JPEG': null })
  t.throws(() => loadDataset('imagenet_sketch', root), code('E_FILE_NOT_FOUND', /classnames\.txt does not exist/))
})

test('fgvc_aircraft: variants.txt is the class list, images_variant_*.txt the three splits', (t) => {
  const root = tempDir()
  const dir = join(root, 'fgvc_aircraft')
  tree(dir, {
    'variants.txt': '707-320\nA300B4\nCessna 172\n',
    'images_variant_train.txt': '1025794 707-320\n0056978 Cessna 172\n',
    'images_variant_val.txt': '0062765 A300B4\n',
    'images_variant_test.txt': '1514522 Cessna 172\n0100290 707-320\n',
    'images/1025794.jpg': null,
    'images/0056978.jpg': null,
    'images/0062765.jpg': null,
    'images/1514522.jpg': null,
    'images/0100290.jpg': null,
  })
  const d = loadDataset('fgvc_aircraft', root)
  t.deepEqual(d.classNames, ['707-320', 'A300B4', 'Cessna 172'])
  t.deepEqual(d.train.labels, [0, 2])
  t.deepEqual(d.train.images, [join(dir, 'images/1025794.jpg'), join(dir, 'images/0056978.jpg')])
  t.deepEqual(d.val?.labels, [1])
  t.deepEqual(d.test?.labels, [2, 0])
  t.is(d.template, 'a photo of a {}, a type of aircraft.')
  t.deepEqual(openDataset(dir).classNames, d.classNames)
  tree(dir, { 'images_variant_val.txt': '0062765 A380\n' })
  t.throws(
    () => loadDataset('fgvc_aircraft', root),
    code('E_INVALID_ARGUMENT', /images_variant_val\.txt:1: variant "A380" is not in variants\.txt/),
  )
  tree(dir, { 'images_variant_val.txt': '0062765 A300B4\n0000001 A300B4\n' })
  t.throws(
    () => loadDataset('fgvc_aircraft', root),
    code('E_FILE_NOT_FOUND', /1 of 2 images does not exist: .*0000001\.jpg/),
  )
})

test('imagenetv2: folder i is the i-th class of classnames.txt; test only', (t) => {
  const root = tempDir()
  const dir = join(root, 'imagenetv2')
  const img = 'imagenetv2-matched-frequency-format-val'
  tree(dir, {
    'classnames.txt': CLASSNAMES,
    [`${img}/0/a.jpeg`]: null,
    [`${img}/1/b.jpeg`]: null,
    [`${img}/2/c.jpeg`]: null,
    [`${img}/3/d.jpeg`]: null,
    [`${img}/3/e.jpeg`]: null,
  })
  const d = loadDataset('imagenetv2', root)
  t.deepEqual(d.classNames, ['tench', 'goldfish', 'great white shark', 'tiger shark'])
  t.deepEqual(d.test?.labels, [0, 1, 2, 3, 3])
  t.is(d.test?.images[3], join(dir, img, '3', 'd.jpeg'))
  // The official reader gives the test data as train too; the catalog marks it test-only.
  t.deepEqual(d.train, d.test)
  t.true(DATASETS.imagenetv2.testOnly)
  tree(dir, { 'classnames.txt': `${CLASSNAMES}n01494475 hammerhead shark\n` })
  t.throws(() => loadDataset('imagenetv2', root), code('E_FILE_NOT_FOUND', /1 class folder is missing: 4/))
})

test('imagenet_sketch: the sorted wnid folders are the labels, named by classnames.txt', (t) => {
  const root = tempDir()
  tree(join(root, 'imagenet-sketch'), {
    'classnames.txt': CLASSNAMES,
    'images/n01491361/sketch_1.JPEG': null,
    'images/n01440764/sketch_1.JPEG': null,
    'images/n01443537/sketch_1.JPEG': null,
    'images/n01484850/sketch_1.JPEG': null,
  })
  const d = loadDataset('imagenet_sketch', root)
  t.deepEqual(d.classNames, ['tench', 'goldfish', 'great white shark', 'tiger shark'])
  t.deepEqual(d.test?.labels, [0, 1, 2, 3])
})

for (const [name, dir, sub] of [
  ['imagenet_a', 'imagenet-adversarial', 'imagenet-a'],
  ['imagenet_r', 'imagenet-rendition', 'imagenet-r'],
] as const) {
  test(`${name}: a subset of ImageNet's classes, labelled 0.. in sorted wnid order; README.txt left out`, (t) => {
    const root = tempDir()
    tree(join(root, dir), {
      'classnames.txt': CLASSNAMES,
      [`${sub}/README.txt`]: 'about the dataset',
      [`${sub}/n01491361/0.jpg`]: null,
      [`${sub}/n01443537/0.jpg`]: null,
      [`${sub}/n01443537/1.jpg`]: null,
    })
    const d = loadDataset(name, root)
    t.deepEqual(d.classNames, ['goldfish', 'tiger shark'])
    t.deepEqual(d.test?.labels, [0, 0, 1])
    t.is(d.template, 'a photo of a {}.')
    t.deepEqual(
      d.skipped.map((s) => s.path),
      [join(root, dir, sub, 'README.txt')],
    )
    t.deepEqual(openDataset(join(root, dir)).classNames, d.classNames)
  })
}

test('the catalog holds the 11 datasets and 4 ImageNet variants with the official templates', (t) => {
  t.deepEqual(Object.keys(DATASETS).sort(), [
    'caltech101',
    'dtd',
    'eurosat',
    'fgvc_aircraft',
    'food101',
    'imagenet',
    'imagenet_a',
    'imagenet_r',
    'imagenet_sketch',
    'imagenetv2',
    'oxford_flowers',
    'oxford_pets',
    'stanford_cars',
    'sun397',
    'ucf101',
  ])
  t.is(Object.values(DATASETS).filter((e) => e.testOnly).length, 4)
  t.is(DATASETS.imagenet_a.classes, 200)
  t.is(DATASETS.fgvc_aircraft.template, 'a photo of a {}, a type of aircraft.')
})
