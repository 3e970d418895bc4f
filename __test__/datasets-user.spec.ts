/**
 * Datasets as users bring them (issue 23): one list of image types everywhere, CSV rows and split
 * files that say what is wrong with them, one-class datasets refused, folder names mapped to class
 * names, classes picked by name, and messages that neither mis-count nor echo control characters.
 * Imports the sources, so that it needs no build of the bundle.
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { expandImages } from '../ts/cli/data'
import { requireTwoClasses } from '../ts/datasets/checks'
import { loadCsv } from '../ts/datasets/csv'
import { IMAGE_EXTENSIONS } from '../ts/datasets/extensions'
import { loadImageFolder, loadSplitFolders } from '../ts/datasets/folder'
import { fromList } from '../ts/datasets/memory'
import { openDataset } from '../ts/datasets/open'
import { loadSplitFile } from '../ts/datasets/split'
import { PromptclipError } from '../ts/errors'
import { tempDir, tree } from './datasets-tree'

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
