/**
 * The sources a dataset comes from (image folders, split folders, split files, CSV lists, lists in
 * memory, IDX files) and the rule that bad data fails at load time with a message naming it.
 */
import { symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { fromList, loadCsv, loadIdx, loadImageFolder, loadSplitFile, openDataset, PromptclipError } from 'promptclip'
import { splitTree, tempDir, tree } from './datasets-tree'

const code = (c: string, message?: RegExp) =>
  ({ instanceOf: PromptclipError, code: c, ...(message ? { message } : {}) }) as never

test('loadImageFolder: every supported type; skipped files and empty classes reported; dotfiles ignored', (t) => {
  const root = tree(tempDir(), [
    'cat/1.jpg',
    'cat/2.JPEG',
    'cat/3.png',
    'cat/notes.txt',
    'cat/.DS_Store',
    'cat/._1.jpg',
    'cat/nested/4.jpg',
    'dog/1.webp',
    'dog/2.bmp',
    'dog/3.gif',
    'empty/readme.md',
    '.hidden/1.jpg',
    'LICENSE',
  ])
  const d = loadImageFolder(root)
  t.deepEqual(d.classNames, ['cat', 'dog'])
  t.deepEqual(d.labels, [0, 0, 0, 1, 1, 1])
  t.deepEqual(
    d.images.map((p) => (p as string).slice(root.length + 1)),
    ['cat/1.jpg', 'cat/2.JPEG', 'cat/3.png', 'dog/1.webp', 'dog/2.bmp', 'dog/3.gif'],
  )
  const skipped = Object.fromEntries(d.skipped.map((s) => [s.path.slice(root.length + 1), s.reason]))
  t.deepEqual(Object.keys(skipped).sort(), ['LICENSE', 'cat/nested', 'cat/notes.txt', 'empty', 'empty/readme.md'])
  t.regex(skipped['cat/notes.txt'], /unsupported file type \(\.txt\)/)
  t.regex(skipped.empty, /without images/)
})

test('loadImageFolder: a missing folder, an empty one, and a dataset root with train/ and test/', (t) => {
  t.throws(() => loadImageFolder(join(tempDir(), 'nope')), code('E_FILE_NOT_FOUND', /nope does not exist/))
  const empty = tree(tempDir(), ['a/readme.txt'])
  t.throws(() => loadImageFolder(empty), code('E_INVALID_ARGUMENT', /the dataset is empty/))
  const splits = tree(tempDir(), ['train/cat/1.jpg', 'test/cat/2.jpg'])
  t.throws(() => loadImageFolder(splits), code('E_INVALID_ARGUMENT', /split folders .*openDataset/))
})

test("openDataset: split folders give train/val/test under train's class list", (t) => {
  const root = tree(tempDir(), [
    'train/cat/1.jpg',
    'train/dog/1.jpg',
    'train/dog/2.jpg',
    'val/dog/3.jpg',
    'test/cat/4.jpg',
    'test/dog/5.jpg',
    'test/notes.txt',
  ])
  const d = openDataset(root)
  t.is(d.name, root)
  t.deepEqual(d.classNames, ['cat', 'dog'])
  t.deepEqual(d.train.labels, [0, 1, 1])
  // val holds only dog: it keeps label 1.
  t.deepEqual(d.val?.labels, [1])
  t.deepEqual(d.val?.classNames, ['cat', 'dog'])
  t.deepEqual(d.test?.labels, [0, 1])
  t.deepEqual(
    d.skipped.map((s) => s.path),
    [join(root, 'test/notes.txt')],
  )
  t.is(d.template, undefined)
  tree(root, ['test/bird/6.jpg'])
  t.throws(() => openDataset(root), code('E_INVALID_ARGUMENT', /a class not in .*train: "bird"/))
})

test('openDataset: a folder of classes is train only; a folder with one split file reads it', (t) => {
  const classes = tree(tempDir(), ['a/1.png', 'b/1.png'])
  const d = openDataset(classes)
  t.deepEqual(d.train.classNames, ['a', 'b'])
  t.is(d.val, undefined)
  t.is(d.test, undefined)
  const withSplit = tree(tempDir(), ['x/1.png', 'y/2.png'])
  writeFileSync(
    join(withSplit, 'split_zhou_Mine.json'),
    JSON.stringify({ train: [['x/1.png', 0, 'x']], val: [], test: [['y/2.png', 1, 'y']] }),
  )
  const s = openDataset(withSplit)
  t.deepEqual(s.classNames, ['x', 'y'])
  t.deepEqual(s.test?.images, [join(withSplit, 'y/2.png')])
  t.throws(() => openDataset(join(classes, 'nothing')), code('E_FILE_NOT_FOUND', /nothing does not exist.*oxford_pets/))
  writeFileSync(join(classes, 'list.txt'), 'a')
  t.throws(() => openDataset(join(classes, 'list.txt')), code('E_INVALID_ARGUMENT', /list\.txt: expected a folder/))
})

test('openDataset: a split file with options.imageRoot, else its own folder', (t) => {
  const root = tempDir()
  splitTree(join(root, 'pics'), { train: [['a.jpg', 0, 'a']], val: [], test: [] })
  writeFileSync(join(root, 'split.json'), JSON.stringify({ train: [['a.jpg', 0, 'a']], val: [], test: [] }))
  t.deepEqual(openDataset(join(root, 'split.json'), { imageRoot: join(root, 'pics') }).train.images, [
    join(root, 'pics', 'a.jpg'),
  ])
  t.throws(() => openDataset(join(root, 'split.json')), code('E_FILE_NOT_FOUND', /1 of 1 image does not exist/))
})

/** A split file under a fresh image root with the images it names, for the error tests. */
function split(obj: unknown, images: string[] = []): { json: string; root: string } {
  const root = tree(tempDir(), images)
  const json = join(root, 'split_zhou_Bad.json')
  writeFileSync(json, typeof obj === 'string' ? obj : JSON.stringify(obj))
  return { json, root }
}

test('loadSplitFile: bad data fails naming the file and the entry', (t) => {
  const ok = [
    ['a/1.jpg', 0, 'a'],
    ['b/1.jpg', 1, 'b'],
  ]
  const imgs = ['a/1.jpg', 'b/1.jpg', 'a/2.jpg']
  let s = split({ train: ok, val: [], test: [['a/2.jpg', 0, 'a']] }, imgs)
  t.deepEqual(loadSplitFile(s.json, s.root).test.labels, [0])

  s = split('{"train": [', imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_INVALID_ARGUMENT', /split_zhou_Bad\.json: not a readable split file/),
  )
  s = split({ train: ok, test: [] }, imgs)
  t.throws(() => loadSplitFile(s.json, s.root), code('E_INVALID_ARGUMENT', /missing the "val" list/))
  s = split({ train: ok, val: [['a/2.jpg', '0', 'a']], test: [] }, imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_INVALID_ARGUMENT', /val\[0\] is not \[relpath, label, classname\]/),
  )
  // Missing images: which and how many.
  s = split({ train: [...ok, ['a/9.jpg', 0, 'a'], ['b/9.jpg', 1, 'b']], val: [], test: [] }, imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_FILE_NOT_FOUND', /2 of 4 images do not exist: .*a\/9\.jpg, .*b\/9\.jpg/),
  )
  t.throws(
    () => loadSplitFile(s.json, join(s.root, 'elsewhere')),
    code('E_FILE_NOT_FOUND', /image root .*elsewhere does not exist/),
  )
  // A label outside the classes the file names: label 2 with no class 1 anywhere.
  s = split({ train: [ok[0], ['b/1.jpg', 2, 'c']], val: [], test: [] }, imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_INVALID_ARGUMENT', /1 class has no images in any split: label 1\b/),
  )
  s = split({ train: ok, val: [], test: [['a/2.jpg', 0, 'b']] }, imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_INVALID_ARGUMENT', /test\[0\] names label 0 "b", elsewhere "a"/),
  )
  s = split({ train: ok, val: [], test: [['a/1.jpg', 0, 'a']] }, imgs)
  t.throws(
    () => loadSplitFile(s.json, s.root),
    code('E_INVALID_ARGUMENT', /test\[0\] repeats train\[0\] \(a\/1\.jpg\)/),
  )
  for (const outside of ['../outside.jpg', 'a/../../outside.jpg', '/etc/passwd', 'C:\\x.jpg']) {
    s = split({ train: [...ok, [outside, 0, 'a']], val: [], test: [] }, imgs)
    t.throws(
      () => loadSplitFile(s.json, s.root),
      code('E_INVALID_ARGUMENT', /train\[2\] path .* leaves the image root/),
    )
  }
  s = split({ train: [], val: [], test: [] }, imgs)
  t.throws(() => loadSplitFile(s.json, s.root), code('E_INVALID_ARGUMENT', /\(train\): the dataset is empty/))
})

function csv(text: string, images: string[] = ['a.jpg', 'b.jpg', 'sub/c.jpg']): string {
  const root = tree(tempDir(), images)
  writeFileSync(join(root, 'list.csv'), text)
  return join(root, 'list.csv')
}

test('loadCsv: path,label with or without a header, quoted fields, CRLF and BOM', (t) => {
  let f = csv('a.jpg,cat\nb.jpg,dog\n\nsub/c.jpg,cat\n')
  let d = loadCsv(f)
  t.deepEqual(d.classNames, ['cat', 'dog'])
  t.deepEqual(d.labels, [0, 1, 0])
  t.is(d.images[2], join(f, '..', 'sub', 'c.jpg'))
  f = csv('\ufeffpath,label\r\n"a.jpg","a cat, sitting"\r\nb.jpg,"the ""dog"""\r\n')
  d = loadCsv(f)
  t.deepEqual(d.classNames, ['a cat, sitting', 'the "dog"'])
  // A header names the columns: any order, other columns ignored.
  f = csv('label,source,image\ndog,web,a.jpg\ncat,web,b.jpg\n')
  d = loadCsv(f)
  t.deepEqual(d.labels, [1, 0])
  t.is(d.images[0], join(f, '..', 'a.jpg'))
  // Indices with class names; names looked up first.
  f = csv('a.jpg,1\nb.jpg,zero\nsub/c.jpg,0\n')
  d = loadCsv(f, { classNames: ['zero', 'one'] })
  t.deepEqual(d.labels, [1, 0, 0])
  // Paths relative to imageRoot.
  const root = tree(tempDir(), ['x.png'])
  f = csv('x.png,cat\n', [])
  t.deepEqual(loadCsv(f, { imageRoot: root }).images, [join(root, 'x.png')])
})

test('loadCsv: bad lines and bad data fail naming file:line or the value', (t) => {
  const bad = (text: string, re: RegExp, c = 'E_INVALID_ARGUMENT', classNames?: string[]) => {
    const f = csv(text)
    t.throws(() => loadCsv(f, classNames ? { classNames } : {}), code(c, re))
  }
  bad('a.jpg,cat\n"b.jpg,dog\n', /list\.csv:2: a quoted field is not closed/)
  bad('a.jpg,cat\nb.jpg,dog,extra\n', /list\.csv:2: expected 2 columns path,label, found 3/)
  bad('a.jpg,cat\n"b.jpg"x,dog\n', /list\.csv:2: text after a closing quote/)
  bad('a.jpg,cat\nb"x.jpg,dog\n', /list\.csv:2: a quote inside an unquoted field/)
  bad('a.jpg,cat\nb.jpg,\n', /list\.csv:2: empty label/)
  bad('a.jpg,0\nb.jpg,1\n', /labels are class indices .*give classNames/)
  bad('a.jpg,cat\nb.jpg,cow\n', /list\.csv:2: label "cow" is not in the class list/, 'E_INVALID_ARGUMENT', [
    'cat',
    'dog',
  ])
  bad('a.jpg,cat\nb.jpg,5\n', /list\.csv:2: label 5 is outside the class list \(2 classes/, 'E_INVALID_ARGUMENT', [
    'cat',
    'dog',
  ])
  bad('a.jpg,cat\nb.jpg,cat\n', /1 class has no images: "dog"/, 'E_INVALID_ARGUMENT', ['cat', 'dog'])
  bad('a.jpg,cat\nb.jpg,dog\n./a.jpg,dog\n', /line 3 repeats line 1/)
  bad(
    'a.jpg,cat\nmissing.jpg,dog\ngone.jpg,dog\n',
    /list\.csv: 2 of 3 images do not exist: .*missing\.jpg, .*gone\.jpg/,
    'E_FILE_NOT_FOUND',
  )
  bad('path,label\n', /list\.csv: the dataset is empty/)
})

test('fromList: names or indices, raw images, the same checks', (t) => {
  const root = tree(tempDir(), ['a.jpg', 'b.jpg'])
  const raw = { width: 1, height: 1, channels: 1 as const, data: new Uint8Array([9]) }
  const d = fromList([
    { image: join(root, 'a.jpg'), label: 'dog' },
    { image: raw, label: 'cat' },
  ])
  t.deepEqual(d.classNames, ['cat', 'dog'])
  t.deepEqual(d.labels, [1, 0])
  t.is(d.images[1], raw)
  t.deepEqual(
    fromList(
      [
        { image: raw, label: 1 },
        { image: raw, label: 'a' },
      ],
      ['a', 'b'],
    ).labels,
    [1, 0],
  )
  t.throws(() => fromList([]), code('E_INVALID_ARGUMENT', /fromList: the dataset is empty/))
  t.throws(
    () => fromList([{ image: raw, label: 2 }], ['a', 'b']),
    code('E_INVALID_ARGUMENT', /items\[0\]: label 2 is outside/),
  )
  t.throws(() => fromList([{ image: raw, label: 0 }]), code('E_INVALID_ARGUMENT', /class indices/))
  t.throws(
    () =>
      fromList([
        { image: join(root, 'a.jpg'), label: 'a' },
        { image: join(root, 'a.jpg'), label: 'b' },
      ]),
    code('E_INVALID_ARGUMENT', /items\[1\] repeats items\[0\]/),
  )
  t.throws(
    () => fromList([{ image: join(root, 'z.jpg'), label: 'a' }]),
    code('E_FILE_NOT_FOUND', /1 of 1 image does not exist/),
  )
  t.throws(() => fromList([{ image: raw, label: 'a' }], ['a', 'a']), code('E_INVALID_ARGUMENT', /"a" appears twice/))
})

test('loadIdx: MNIST-layout image and label files, digits as default class names', (t) => {
  const dir = tempDir()
  const idx = (dims: number[], body: number[]) => {
    const head = Buffer.alloc(4 + 4 * dims.length)
    head.set([0, 0, 8, dims.length])
    dims.forEach((d, i) => {
      head.writeUInt32BE(d, 4 + 4 * i)
    })
    return Buffer.concat([head, Buffer.from(body)])
  }
  writeFileSync(join(dir, 'images'), idx([3, 2, 2], [...Array(12).keys()]))
  writeFileSync(join(dir, 'labels'), idx([3], [1, 0, 1]))
  writeFileSync(join(dir, 'labels-bad'), idx([3], [1, 0, 7]))
  writeFileSync(join(dir, 'labels-short'), idx([2], [1, 0]))
  const d = loadIdx(join(dir, 'images'), join(dir, 'labels'))
  t.deepEqual(d.classNames, ['0', '1'])
  t.deepEqual(d.labels, [1, 0, 1])
  t.deepEqual(d.images[1], { width: 2, height: 2, channels: 1, data: new Uint8Array([4, 5, 6, 7]) })
  t.deepEqual(loadIdx(join(dir, 'images'), join(dir, 'labels'), ['no', 'yes']).classNames, ['no', 'yes'])
  t.throws(
    () => loadIdx(join(dir, 'images'), join(dir, 'labels-bad'), ['a', 'b']),
    code('E_INVALID_ARGUMENT', /label 7 of image 2 is outside the class list/),
  )
  t.throws(
    () => loadIdx(join(dir, 'images'), join(dir, 'labels-short')),
    code('E_INVALID_ARGUMENT', /3 images but .* 2 labels/),
  )
  t.throws(() => loadIdx(join(dir, 'nope'), join(dir, 'labels')), code('E_FILE_NOT_FOUND'))
})

test('a symbolic link to a class folder is followed; an unknown header is named as one', (t) => {
  const elsewhere = tree(tempDir(), ['pics/1.jpg'])
  const root = tree(tempDir(), ['a/1.jpg'])
  symlinkSync(join(elsewhere, 'pics'), join(root, 'b'))
  t.deepEqual(loadImageFolder(root).classNames, ['a', 'b'])
  const f = csv('file_name,species\na.jpg,cat\nb.jpg,dog\n')
  t.throws(
    () => loadCsv(f),
    code('E_FILE_NOT_FOUND', /list\.csv:1: .*file_name does not exist; if "file_name,species" is a header/),
  )
})

test('openDataset: a catalog folder without its split file says what is missing; empty val or test are left out', (t) => {
  const root = tree(tempDir(), ['oxford_pets/images/a_1.jpg', 'oxford_pets/annotations/list.txt'])
  t.throws(
    () => openDataset(join(root, 'oxford_pets')),
    code('E_FILE_NOT_FOUND', /split_zhou_OxfordPets\.json does not exist/),
  )
  const s = split({ train: [['a/1.jpg', 0, 'a']], val: [], test: [] }, ['a/1.jpg'])
  const d = openDataset(s.json, { imageRoot: s.root })
  t.false('val' in d)
  t.false('test' in d)
})
