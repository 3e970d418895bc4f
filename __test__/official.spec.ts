/**
 * Prompts under the official code's state-dict names, as a user moves them: a learner exported
 * (`exportOfficial`), converted back by `promptclip convert` and predicting as before; a prompt
 * file converted to the official names without a model; training from such a file (`initFrom`,
 * `shuffle: false`); and, where a Python with torch is at hand (PROMPTCLIP_PYTHON, else
 * python3), a Dassl checkpoint made by torch.save through scripts/dassl_to_safetensors.py and
 * back. The core's tests (crates/promptclip-core/tests/official.rs) check the names against the
 * official fixtures' losses.
 */
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, PromptLearner, Trainer } from 'promptclip'
import { CLASSES, collect, dataset, HF_MODEL, readSafetensors } from './helpers'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const TMP = mkdtempSync(join(tmpdir(), 'promptclip-official-'))
const MAPLE_NAMES = [
  'prompt_learner.compound_prompt_projections.0.bias',
  'prompt_learner.compound_prompt_projections.0.weight',
  'prompt_learner.compound_prompts_text.0',
  'prompt_learner.ctx',
  'prompt_learner.proj.bias',
  'prompt_learner.proj.weight',
]

/** float32 tensors to a safetensors file with no metadata. */
function writeSafetensors(path: string, tensors: Record<string, { shape: number[]; data: number[] }>) {
  const header: Record<string, unknown> = {}
  const parts: Buffer[] = []
  let offset = 0
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = Buffer.from(new Float32Array(t.data).buffer)
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + bytes.length] }
    parts.push(bytes)
    offset += bytes.length
  }
  const json = Buffer.from(JSON.stringify(header))
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  writeFileSync(path, Buffer.concat([len, json, ...parts]))
}

function cli(args: string[]) {
  return collect(spawn(process.execPath, [CLI, ...args], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] }))
}

test('a learner exported under the official names converts back and predicts as before', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(2, 3)
  const maple = PromptLearner.create(clip, 'maple', { classNames: CLASSES })
  await new Trainer(maple, { epochs: 1, batchSize: 4, augment: false }).fit(data)
  const official = join(TMP, 'maple-official.safetensors')
  await maple.exportOfficial(official)
  t.deepEqual(Object.keys(readSafetensors(official)).sort(), MAPLE_NAMES)

  // The official names, with the classes and ctxInit the official config had.
  const prompt = join(TMP, 'maple.safetensors')
  const r = await cli([
    'convert',
    official,
    prompt,
    '--model',
    HF_MODEL,
    '--classes',
    CLASSES.join(','),
    '--ctx-init',
    String(maple.info.options.ctxInit),
  ])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /maple prompts from/)
  const back = await PromptLearner.load(clip, prompt)
  t.deepEqual(back.info, maple.info)
  const images = data.images.slice(0, 4)
  const [a, b] = [await maple.predict(images), await back.predict(images)]
  const probs = (ps: typeof a) => ps.flatMap((p) => Array.from(p.probabilities ?? []))
  const [pa, pb] = [probs(a), probs(b)]
  t.is(pa.length, images.length * CLASSES.length)
  t.true(
    pa.every((v, i) => Math.abs(v - pb[i]) < 1e-6),
    'the same probabilities',
  )

  // A prompt file to the official names: no model needed.
  const again = join(TMP, 'again-official.safetensors')
  const e = await cli(['convert', prompt, again, '--json'])
  t.is(e.code, 0, e.stderr)
  t.like(JSON.parse(e.stdout), { to: 'official' })
  t.deepEqual(Object.keys(readSafetensors(again)).sort(), MAPLE_NAMES)
  // What it cannot be: flags for a file that says its own, a method that keeps no official names.
  const f = await cli(['convert', prompt, join(TMP, 'x.safetensors'), '--method', 'ivlp'])
  t.is(f.code, 2, f.stdout)
  t.regex(f.stderr, /is a promptclip prompt file/)
  const g = await cli(['convert', official, join(TMP, 'y.safetensors'), '--model', HF_MODEL, '--method', 'coop'])
  t.not(g.code, 0)
  t.regex(g.stderr, /compound_prompt|proj/)
  const r2 = await cli(['convert', official, join(TMP, 'own-classes.prompt'), '--model', HF_MODEL])
  t.is(r2.code, 0, `an export names its own classes: ${r2.stderr}`)
  // The same tensors without promptclip's metadata, as the official code's files are.
  const bare = join(TMP, 'bare-official.safetensors')
  writeSafetensors(bare, readSafetensors(official))
  const r3 = await cli(['convert', bare, join(TMP, 'bare.prompt'), '--model', HF_MODEL])
  t.is(r3.code, 2)
  t.regex(r3.stderr, /holds no class names.*--classes/)
  const r4 = await cli(['convert', bare, join(TMP, 'bare.prompt'), '--model', HF_MODEL, '--classes', CLASSES.join(',')])
  t.is(r4.code, 0, r4.stderr)
  t.is((await PromptLearner.load(clip, join(TMP, 'bare.prompt'))).info.method, 'maple')
  const pickle = join(TMP, 'model.pth.tar-5')
  writeFileSync(pickle, Buffer.from('PK\x03\x04 a torch.save archive'))
  const h = await cli(['convert', pickle, join(TMP, 'z.safetensors'), '--model', HF_MODEL])
  t.not(h.code, 0)
  t.regex(h.stderr, /E_UNSUPPORTED.*dassl_to_safetensors\.py/s)
})

test('training starts from official prompts (initFrom) and keeps the data order (shuffle: false)', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(2, 5)
  const coop = PromptLearner.create(clip, 'coop', { classNames: CLASSES, nCtx: 4 })
  await new Trainer(coop, { epochs: 1, batchSize: 4, augment: false }).fit(data)
  const official = join(TMP, 'coop-official.safetensors')
  await coop.exportOfficial(official)
  const fresh = () => PromptLearner.create(clip, 'coop', { classNames: CLASSES, nCtx: 4, seed: 9 })
  const start = fresh()
  // No steps to speak of: lr so small that the context stays what the file holds.
  await new Trainer(start, {
    epochs: 1,
    batchSize: 8,
    lr: 1e-12,
    warmupEpochs: 0,
    augment: false,
    initFrom: official,
  }).fit(data)
  const [x, y] = [coop.context(), start.context()]
  t.true(
    x.every((v, i) => Math.abs(v - y[i]) < 1e-6),
    'the context starts from the file',
  )
  // Without shuffling, the training seed changes nothing (no augmentation, same start).
  const run = async (seed: number) => {
    const l = fresh()
    await new Trainer(l, { epochs: 2, batchSize: 4, augment: false, shuffle: false, seed, initFrom: official }).fit(
      data,
    )
    return Array.from(l.context())
  }
  t.deepEqual(await run(1), await run(2))
  const bad = fresh()
  const err = await t.throwsAsync(new Trainer(bad, { epochs: 1, initFrom: join(TMP, 'missing.safetensors') }).fit(data))
  t.is((err as { code?: string }).code, 'E_FILE_NOT_FOUND')
})

/** A Python that has torch and safetensors, or null. */
function torchPython(): string | null {
  for (const python of [process.env.PROMPTCLIP_PYTHON, 'python3'].filter((p): p is string => !!p)) {
    const r = spawnSync(python, ['-c', 'import torch, safetensors'], { stdio: 'ignore' })
    if (r.status === 0) return python
  }
  return null
}

test('scripts/dassl_to_safetensors.py reads a Dassl checkpoint and writes one back', async (t) => {
  const python = torchPython()
  if (python === null) {
    t.log('no Python with torch and safetensors here (set PROMPTCLIP_PYTHON): the script is not run')
    t.pass()
    return
  }
  const clip = await Clip.load(HF_MODEL)
  const ivlp = PromptLearner.create(clip, 'ivlp', { classNames: CLASSES })
  const exported = join(TMP, 'ivlp-official.safetensors')
  await ivlp.exportOfficial(exported)
  // A Dassl checkpoint as the official IVLP trainer saves it: the whole model's state dict (its
  // frozen weights and class-token buffers too) under DataParallel's `module.`, and the
  // optimiser's state; made by torch.save.
  const ckpt = join(TMP, 'VLPromptLearner', 'model.pth.tar-5')
  const make = spawnSync(
    python,
    [
      '-c',
      `import os, sys, torch
from safetensors.torch import load_file
sd = {"module." + k: v for k, v in load_file(sys.argv[1]).items()}
sd["module.prompt_learner.token_prefix"] = torch.zeros(4, 1, 8)
sd["module.image_encoder.proj"] = torch.zeros(8, 8)
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
torch.save({"state_dict": sd, "epoch": 5, "optimizer": {"state": {}, "param_groups": [{"lr": 0.0035}]}, "scheduler": None}, sys.argv[2])`,
      exported,
      ckpt,
    ],
    { encoding: 'utf8' },
  )
  t.is(make.status, 0, make.stderr)
  const converted = join(TMP, 'ivlp-from-dassl.safetensors')
  const r = spawnSync(python, [join(ROOT, 'scripts', 'dassl_to_safetensors.py'), ckpt, converted], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  const names = Object.keys(readSafetensors(converted)).sort()
  t.deepEqual(
    names,
    Object.keys(readSafetensors(exported)).sort(),
    'the learned prompts, without buffers or frozen weights',
  )
  const back = await PromptLearner.importOfficial(clip, converted, {
    classNames: CLASSES,
    options: { ctxInit: String(ivlp.info.options.ctxInit) },
  })
  t.deepEqual(back.info, ivlp.info)
  // And back to a checkpoint that the official code's load_model reads.
  const dassl = join(TMP, 'out', 'VLPromptLearner', 'model.pth.tar-5')
  const w = spawnSync(python, [join(ROOT, 'scripts', 'dassl_to_safetensors.py'), '--to-dassl', exported, dassl], {
    encoding: 'utf8',
  })
  t.is(w.status, 0, w.stderr)
  const check = spawnSync(
    python,
    [
      '-c',
      `import sys, torch
from safetensors.torch import load_file
c = torch.load(sys.argv[1], weights_only=True)
e = load_file(sys.argv[2])
assert c["epoch"] == 5, c["epoch"]
assert sorted(c["state_dict"]) == sorted(e), (sorted(c["state_dict"]), sorted(e))
assert all(torch.equal(c["state_dict"][k], e[k]) for k in e)`,
      dassl,
      exported,
    ],
    { encoding: 'utf8' },
  )
  t.is(check.status, 0, check.stderr)
})

test("scripts/dassl_to_safetensors.py reads CLIP-LoRA's save_lora files and writes them back", (t) => {
  const python = torchPython()
  if (python === null) {
    t.log('no Python with torch and safetensors here (set PROMPTCLIP_PYTHON): the script is not run')
    t.pass()
    return
  }
  // A save_lora file as the official code writes it for ViT-B/16 (encoder both, position all,
  // q, k, v): layers numbered over the text tower's 12 blocks, then the image tower's.
  const saved = join(TMP, 'lora_weights.pt')
  const make = spawnSync(
    python,
    [
      '-c',
      `import sys, torch
w = {}
for n in range(24):
    d = 512 if n < 12 else 768
    w[f"layer_{n}"] = {p: {"w_lora_A": torch.full((2, d), float(n)), "w_lora_B": torch.randn(d, 2)} for p in ("q_proj", "k_proj", "v_proj")}
torch.save({"weights": w, "metadata": {"r": 2, "alpha": 2, "encoder": "both", "params": ["q", "k", "v"], "position": "all"}}, sys.argv[1])`,
      saved,
    ],
    { encoding: 'utf8' },
  )
  t.is(make.status, 0, make.stderr)
  const converted = join(TMP, 'lora-from-save.safetensors')
  const r = spawnSync(python, [join(ROOT, 'scripts', 'dassl_to_safetensors.py'), saved, converted], {
    encoding: 'utf8',
  })
  t.is(r.status, 0, r.stderr)
  const tensors = readSafetensors(converted)
  t.is(Object.keys(tensors).length, 24 * 3 * 2)
  // Layer 13 is the image tower's block 1; the text tower's are 512 wide.
  t.true(tensors['visual.transformer.resblocks.1.attn.k_proj.w_lora_A'].data.every((v) => v === 13))
  t.deepEqual(tensors['transformer.resblocks.11.attn.v_proj.w_lora_B'].shape, [512, 2])
  // Back as the official save_lora: the same weights and metadata (alpha kept).
  const back = join(TMP, 'out', 'lora_weights.pt')
  const w = spawnSync(python, [join(ROOT, 'scripts', 'dassl_to_safetensors.py'), '--to-dassl', converted, back], {
    encoding: 'utf8',
  })
  t.is(w.status, 0, w.stderr)
  const check = spawnSync(
    python,
    [
      '-c',
      `import sys, torch
a, b = torch.load(sys.argv[1], weights_only=True), torch.load(sys.argv[2], weights_only=True)
assert a["metadata"] == b["metadata"], (a["metadata"], b["metadata"])
for n, layer in a["weights"].items():
    for p, f in layer.items():
        assert all(torch.equal(f[k], b["weights"][n][p][k]) for k in f), (n, p)`,
      saved,
      back,
    ],
    { encoding: 'utf8' },
  )
  t.is(check.status, 0, check.stderr)
})
