/**
 * Datasets as users bring them (issue 23): one list of image types everywhere, CSV rows and split
 * files that say what is wrong with them, one-class datasets refused, folder names mapped to class
 * names, classes picked by name, and messages that neither mis-count nor echo control characters.
 * Imports the sources, so that it needs no build of the bundle.
 */
import { copyFileSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { describe, expandImages } from '../ts/cli/data'
import { Clip } from '../ts/clip'
import { requireTwoClasses } from '../ts/datasets/checks'
import { loadCsv } from '../ts/datasets/csv'
import { IMAGE_EXTENSIONS } from '../ts/datasets/extensions'
import { loadImageFolder, loadSplitFolders } from '../ts/datasets/folder'
import { fromList } from '../ts/datasets/memory'
import { selectClasses } from '../ts/datasets/names'
import { openDataset } from '../ts/datasets/open'
import { fewShot } from '../ts/datasets/sampling'
import { loadSplitFile } from '../ts/datasets/split'
import { PromptclipError } from '../ts/errors'
import { tempDir, tree } from './datasets-tree'
import { HF_MODEL, IMAGES } from './helpers'

/** Whether a message holds ESC or CSI as such. */
const rawControl = (message = '') => message.includes('\u001b') || message.includes('\u009b')

const code = (c: string, message?: RegExp) =>
  ({ instanceOf: PromptclipError, code: c, ...(message ? { message } : {}) }) as never

test('one list of image types: the CLI expands a folder to the images the loaders read', (t) => {
  const names = IMAGE_EXTENSIONS.map((e, i) => `${i}${i % 2 ? e.toUpperCase() : e}`)
  const dir = tree(tempDir(), [...names, 'notes.txt'])
  const expanded = expandImages([dir]).map((p) => p.slice(dir.length + 1))
  t.deepEqual(expanded, [...names].sort())
  t.true(expanded.some((f) => f.endsWith('.bmp') || f.endsWith('.BMP')))
  t.true(expanded.some((f) => f.endsWith('.gif') || f.endsWith('.GIF')))
  // The loaders take the same files.
  const root = tree(tempDir(), [...names.map((n) => `a/${n}`), 'b/x.png'])
  t.is(loadImageFolder(root).images.length, names.length + 1)
  // The message names every type of the list.
  const empty = tree(tempDir(), ['readme.txt'])
  const e = t.throws(() => expandImages([empty])) as Error
  for (const ext of IMAGE_EXTENSIONS) t.true(e.message.includes(ext), `${ext} in: ${e.message}`)
})

test('a CSV row whose path leaves the CSV folder is refused before anything is opened', (t) => {
  const outside = tree(tempDir(), ['secret.png'])
  const dir = tree(tempDir(), ['a.png', 'b.png', 'sub/c.png'])
  const csv = join(dir, 'list.csv')
  for (const path of ['/etc/passwd', '../../../../etc/passwd', join(outside, 'secret.png'), 'sub/../../x.png']) {
    writeFileSync(csv, `a.png,cat\n${path},dog\n`)
    const e = t.throws(() => loadCsv(csv), code('E_INVALID_ARGUMENT', /list\.csv:2: path .* leaves the CSV's folder/))
    t.true(e?.message.includes(JSON.stringify(path)), e?.message)
    // Whether the file exists is not told.
    t.notRegex(e?.message ?? '', /exist/)
  }
  // Inside the folder, absolute or with ../ that stays inside, a row loads.
  writeFileSync(csv, `a.png,cat\n${join(dir, 'b.png')},dog\nsub/../sub/c.png,dog\n`)
  t.deepEqual(loadCsv(csv).images, [join(dir, 'a.png'), join(dir, 'b.png'), join(dir, 'sub', 'c.png')])
  // With imageRoot, the root is the image root.
  writeFileSync(csv, 'a.png,cat\n../b.png,dog\n')
  t.throws(() => loadCsv(csv, { imageRoot: join(dir, 'sub') }), code('E_INVALID_ARGUMENT', /leaves the image root/))
})

test('an extra CSV column and a split file without a list say what they are', (t) => {
  const dir = tree(tempDir(), ['a.png', 'b.png'])
  const csv = join(dir, 'list.csv')
  writeFileSync(csv, 'a.png,cat\nb.png,dog,extra\n')
  t.throws(() => loadCsv(csv), code('E_INVALID_ARGUMENT', /list\.csv:2: expected 2 columns path,label, found 3/))
  writeFileSync(csv, 'path,label,source\na.png,cat,web\nb.png,dog\n')
  t.throws(
    () => loadCsv(csv),
    code('E_INVALID_ARGUMENT', /list\.csv:3: expected 3 columns \(as the header: path,label,source\), found 2/),
  )
  const json = join(dir, 'split.json')
  for (const [value, got] of [
    ['"a/1.png"', 'a string'],
    ['{}', 'an object'],
    ['null', 'null'],
    ['3', 'a number'],
  ]) {
    writeFileSync(json, `{"train": [["a.png", 0, "a"], ["b.png", 1, "b"]], "val": [], "test": ${value}}`)
    t.throws(
      () => loadSplitFile(json, dir),
      code('E_INVALID_ARGUMENT', new RegExp(`split\\.json: "test" is not a list .*\\(got ${got}\\)`)),
    )
  }
  writeFileSync(json, '{"train": [["a.png", 0, "a"]], "test": []}')
  t.throws(() => loadSplitFile(json, dir), code('E_INVALID_ARGUMENT', /missing the "val" list/))
})

test('requireTwoClasses: a one-class dataset is refused, naming the class found', (t) => {
  const root = tree(tempDir(), ['cats/1.png', 'cats/2.png', 'notes/readme.txt'])
  const data = loadImageFolder(root)
  t.throws(
    () => requireTwoClasses(data, `${root}/`),
    code('E_INVALID_ARGUMENT', /: found 1 class \("cats"\); a classifier needs at least two classes$/),
  )
  // A class list of two whose images are all of one class is one class too.
  const one = { images: ['x'], labels: [1], classNames: ['cats', 'dogs'] }
  t.throws(
    () => requireTwoClasses(one, 'train'),
    code(
      'E_INVALID_ARGUMENT',
      /train: found 1 class \("dogs"\) \(the class list has 2 classes, but the images are of one\)/,
    ),
  )
  t.throws(
    () => requireTwoClasses({ labels: [], classNames: [] }, 'x'),
    code('E_INVALID_ARGUMENT', /x: found no class; a classifier needs/),
  )
  t.notThrows(() => requireTwoClasses(loadImageFolder(tree(tempDir(), ['a/1.png', 'b/1.png'])), 'ok'))
})

test('messages count in the singular for one, and escape control characters in class names', (t) => {
  const root = tempDir()
  writeFileSync(join(root, 'a.png'), 'x')
  t.throws(
    () => fromList([{ image: join(root, 'a.png'), label: 'cat' }], ['cat', 'dog']),
    code('E_INVALID_ARGUMENT', /: 1 class has no images: "dog"/),
  )
  t.throws(
    () => fromList([{ image: join(root, 'gone.png'), label: 'cat' }]),
    code('E_FILE_NOT_FOUND', /1 of 1 image does not exist/),
  )
  const evil = 'red\u001b[31m\u009bx'
  const e = t.throws(() => fromList([{ image: join(root, 'a.png'), label: 'cat' }], ['cat', evil]))
  t.false(rawControl(e?.message), e?.message)
  t.true(e?.message.includes('"red\\u001b[31m\\u009bx"'), e?.message)
  // A split folder with a class train lacks, named with its escape.
  const split = tree(tempDir(), ['train/a/1.png', 'train/b/1.png', `test/${evil}/1.png`])
  const e2 = t.throws(() => loadSplitFolders(split), code('E_INVALID_ARGUMENT', /a class not in/))
  t.false(rawControl(e2?.message), e2?.message)
})

test('a symbolic link loop is reported as a loop, not as missing', (t) => {
  const dir = tempDir()
  const loop = join(dir, 'loop')
  symlinkSync(loop, loop)
  t.throws(() => openDataset(loop), code('E_INVALID_ARGUMENT', /dataset .*loop is a symbolic link loop \(ELOOP/))
  t.throws(() => loadImageFolder(loop), code('E_INVALID_ARGUMENT', /symbolic link loop/))
  t.throws(() => expandImages([loop]), { message: /loop is a symbolic link loop \(ELOOP/ })
  // Inside a class folder, a loop is skipped as a loop.
  const root = tree(tempDir(), ['a/1.png', 'b/1.png'])
  mkdirSync(join(root, 'c'))
  symlinkSync(join(root, 'a', 'x.png'), join(root, 'a', 'x.png.lnk'))
  symlinkSync(join(root, 'b', 'l.png'), join(root, 'b', 'l.png'))
  const d = loadImageFolder(root)
  t.is(d.images.length, 2)
  t.regex(d.skipped.find((s) => s.path.endsWith('l.png'))?.reason ?? '', /symbolic link loop/)
  t.regex(d.skipped.find((s) => s.path.endsWith('x.png.lnk'))?.reason ?? '', /broken symbolic link/)
})

/** Two class folders of real images (the fixtures'), named `folders`. */
function photoFolders(folders: [string, string]): string {
  const root = tempDir()
  const files = readdirSync(IMAGES).filter((f) => /\.(png|jpg)$/.test(f))
  for (const [k, folder] of folders.entries()) {
    mkdirSync(join(root, folder))
    for (const f of files.slice(3 * k, 3 * k + 3)) copyFileSync(join(IMAGES, f), join(root, folder, f))
  }
  return root
}

const probabilities = async (clip: Clip, images: unknown[], classNames: string[]) =>
  (await clip.zeroShot(images as string[], classNames, { templates: ['a photo of a {}.'] })).map((p) =>
    Array.from(p.probabilities ?? []),
  )

test('an image folder\'s golden_retriever is prompted as "golden retriever"; a classNamesFile names the classes', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const d = loadImageFolder(photoFolders(['golden_retriever', 'paper_crane']))
  t.deepEqual(d.classNames, ['golden_retriever', 'paper_crane'])
  const asFolders = await probabilities(clip, d.images, d.classNames)
  t.deepEqual(asFolders, await probabilities(clip, d.images, ['golden retriever', 'paper crane']))
  // The prompt is not the folder name as such: "golden-retriever" reads differently.
  t.notDeepEqual(asFolders, await probabilities(clip, d.images, ['golden-retriever', 'paper-crane']))
  // Folder ids named through a file: the classes are the file's names, prompted as such.
  const root = photoFolders(['n02099601', 'n0000crane'])
  const json = join(tempDir(), 'names.json')
  writeFileSync(json, JSON.stringify({ n02099601: 'golden retriever' }))
  const named = loadImageFolder(root, { classNamesFile: json })
  t.deepEqual(named.classNames, ['n0000crane', 'golden retriever'])
  t.deepEqual(
    await probabilities(clip, named.images, named.classNames),
    await probabilities(clip, named.images, ['n0000crane', 'golden retriever']),
  )
})

test('classNamesFile: JSON or folder,name lines; errors name the file and the line or key', (t) => {
  const root = tree(tempDir(), ['n01/1.png', 'n02/1.png', 'n03/1.png'])
  const dir = tempDir()
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text)
    return join(dir, name)
  }
  const txt = file('names.txt', 'folder,name\n# a comment\nn01,golden retriever\nn02,"tabby, cat"\n')
  t.deepEqual(loadImageFolder(root, { classNamesFile: txt }).classNames, ['golden retriever', 'tabby, cat', 'n03'])
  t.deepEqual(openDataset(root, { classNamesFile: txt }).classNames, ['golden retriever', 'tabby, cat', 'n03'])
  // Split folders: train's folders must be the file's; val may lack one.
  const splits = tree(tempDir(), ['train/n01/1.png', 'train/n02/1.png', 'val/n02/1.png'])
  const s = openDataset(splits, { classNamesFile: txt })
  t.deepEqual(s.classNames, ['golden retriever', 'tabby, cat'])
  t.deepEqual(s.val?.labels, [1])
  // A folder the file names that is not there: the key or line, and the nearest folder.
  const typo = file('typo.json', JSON.stringify({ n01: 'a', n002: 'b' }))
  t.throws(
    () => loadImageFolder(root, { classNamesFile: typo }),
    code('E_INVALID_ARGUMENT', /typo\.json: key "n002": .* has no class folder "n002"; did you mean "n02"\?/),
  )
  const typo2 = file('typo.txt', 'n01,a\nzebra_folder,b\n')
  t.throws(
    () => loadImageFolder(root, { classNamesFile: typo2 }),
    code('E_INVALID_ARGUMENT', /typo\.txt: line 2: .* has no class folder "zebra_folder"/),
  )
  const bad = (name: string, text: string, re: RegExp) =>
    t.throws(() => loadImageFolder(root, { classNamesFile: file(name, text) }), code('E_INVALID_ARGUMENT', re))
  bad('cols.txt', 'n01,a,b\n', /cols\.txt:1: expected 2 columns folder,name, found 3/)
  bad('empty.txt', 'n01,\n', /empty\.txt: line 1: empty class name for folder "n01"/)
  bad('twice.txt', 'n01,a\nn01,b\n', /twice\.txt: line 2: folder "n01" is already named \(line 1\)/)
  bad('same.txt', 'n01,a\nn02,a\n', /same\.txt: folders "n01" and "n02" .* both get the class name "a"/)
  bad('num.json', '{"n01": 3}', /num\.json: key "n01": the class name must be a string, got 3/)
  bad('list.json', '["n01"]', /list\.json: expected a JSON object/)
  bad('broken.json', '{', /broken\.json: not readable JSON/)
  t.throws(
    () => loadImageFolder(root, { classNamesFile: join(dir, 'none.json') }),
    code('E_FILE_NOT_FOUND', /classNamesFile .*none\.json does not exist/),
  )
  // Sources that name their own classes refuse it rather than ignore it.
  const csv = file('list.csv', 'a.png,cat\n')
  t.throws(
    () => openDataset(csv, { classNamesFile: txt }),
    code('E_INVALID_ARGUMENT', /classNamesFile is for image folders/),
  )
})

test('classes picked by name: case ignored, the nearest name suggested', (t) => {
  const root = tree(tempDir(), ['golden_retriever/1.png', 'golden_retriever/2.png', 'Tabby/1.png', 'zebra/1.png'])
  const d = openDataset(root)
  const s = selectClasses(d, ['ZEBRA', 'Golden_Retriever'])
  t.deepEqual(s.classNames, ['golden_retriever', 'zebra'])
  t.deepEqual(s.train.labels, [0, 0, 1])
  t.is(s.train.images.length, 3)
  t.deepEqual(selectClasses(d, ['tabby', 'golden retriever']).classNames, ['Tabby', 'golden_retriever'])
  t.deepEqual(openDataset(root, { classes: ['tabby', 'zebra'] }).train.labels, [0, 1])
  t.throws(
    () => selectClasses(d, ['gloden_retriever']),
    code('E_INVALID_ARGUMENT', /no class "gloden_retriever"; did you mean "golden_retriever"\?/),
  )
  t.throws(() => selectClasses(d, ['Zebr']), code('E_INVALID_ARGUMENT', /no class "Zebr"; did you mean "zebra"\?/))
  t.throws(
    () => selectClasses(d, ['aircraft']),
    code('E_INVALID_ARGUMENT', /no class "aircraft" \(the 3 classes: "Tabby", "golden_retriever", "zebra"\)/),
  )
  t.throws(() => selectClasses(d, ['zebra', 'Zebra']), code('E_INVALID_ARGUMENT', /class "Zebra" is asked for twice/))
  // Two classes that differ only in case: a name must say which.
  const both = openDataset(tree(tempDir(), ['Cat/1.png', 'cat/1.png', 'dog/1.png']))
  t.deepEqual(selectClasses(both, ['cat', 'dog']).classNames, ['cat', 'dog'])
  t.throws(() => selectClasses(both, ['CAT']), code('E_INVALID_ARGUMENT', /class "CAT" matches "Cat" and "cat"/))
  // Split folders are cut alike.
  const sp = openDataset(
    tree(tempDir(), ['train/a/1.png', 'train/b/1.png', 'train/c/1.png', 'test/c/1.png', 'test/a/1.png']),
    {
      classes: ['C', 'B'],
    },
  )
  t.deepEqual(sp.classNames, ['b', 'c'])
  t.deepEqual(sp.test?.labels, [1])
})

test('counts read "1 image of 1 class"; folder names in the CLI\'s hint are escaped', (t) => {
  t.is(describe({ images: ['a'], labels: [0], classNames: ['cat'] }), '1 image of 1 class')
  t.is(describe({ images: ['a', 'b'], labels: [0, 1], classNames: ['cat', 'dog'] }), '2 images of 2 classes')
  t.throws(() => fewShot({ images: ['a'], labels: [0, 1] }, 1, 1), { message: /: 1 image but 2 labels/ })
  const dir = tree(tempDir(), ['red\u001b[31m/1.png'])
  const e = t.throws(() => expandImages([dir]), { message: /no images in .*it has 1 sub-folder \(red\\u001b\[31m\)/ })
  t.false(rawControl(e?.message), e?.message)
})
