"""Reference fixtures for CLIP with OpenAI's ModifiedResNet image encoder, computed with open_clip
(open_clip_torch 3.x, randomly initialised, pretrained=None, QuickGELU as in OpenAI's checkpoints),
written to fixtures/resnet/. Every state-dict name is OpenAI's own (open_clip 3.x uses the same
names for the RN models: checked below, nothing is renamed).

Texts (every file): "a photo of a dog.", "a photo of a cat.", "an origami crane, folded from
paper", "x", tokenised by open_clip's SimpleTokenizer (= OpenAI clip.tokenize: 49406 ... 49407,
0-padded to 77; asserted equal to the input_ids of fixtures/reference-openai.safetensors, which
came from the HF tokenizer built by clip_vocab.py). eot_index = argmax(input_ids) = [7, 7, 8, 2].

BatchNorm (both models): open_clip zero-initialises every Bottleneck's bn3.weight and a fresh
BatchNorm has running_mean 0 / running_var 1, which would leave the residual branches dead. So
every BatchNorm2d gets weight ~ U(1 +- 0.2) (RN50's bn3: U(0.5 +- 0.1), see (b)), bias ~
U(0 +- 0.1), and then its running statistics are calibrated: reset_running_stats(),
momentum=None (cumulative average), model.visual.train(), one forward of 8 randn images (seeded),
eval(). The running stats are then that batch's mean and unbiased variance
(num_batches_tracked = 1). BatchNorm eps is 1e-5 everywhere.

(a) tiny ResNet CLIP: embed_dim 24; vision layers [1, 2, 1, 1], width 16 (stem 8, 8, 16 channels;
    bottleneck widths 16/32/64/128, outputs 64/128/256/512), image 64 (grid 2x2 after /32),
    attnpool embed 512, 8 heads (width*32//64), positional_embedding (5, 512); text context 77,
    vocab 49408, width 64, 1 head, 2 layers, mlp 256. open_clip's own init (torch.manual_seed),
    then every float parameter += 0.02*randn, then the BatchNorm treatment, logit_scale =
    log(1/0.07). All float tensors are rounded to float16; the references are computed in float32
    from the rounded tensors (the file is loaded back, strict, into a fresh float32 model).

    fixtures/resnet/tiny-rn.safetensors   the full open_clip state dict (= OpenAI names): 149
        float tensors as F16 and the 22 `*.num_batches_tracked` as I64 () (value 1), exactly as
        torch writes them (9.2 MB: the token embedding is 6.3 MB, the 512-wide attnpool 1.6 MB).
        Metadata: format "pt", config (JSON: the open_clip model config).
    fixtures/resnet/tiny-rn-reference.safetensors (f32 unless said)
        pixel_values (2,3,64,64) randn      input_ids i64 (4,77)     eot_index i64 (4,)
        image_embeds (2,24)  = encode_image (attnpool output, projected, NOT normalised)
        text_embeds (4,24)   = encode_text (projected, NOT normalised)
        text_pooled (4,64)   = ln_final output at eot_index, before text_projection
        logits_per_image (2,4) = exp(logit_scale) * cos(image, text)
        stem (2,16,16,16)  layer1 (2,64,16,16)  layer2 (2,128,8,8)  layer3 (2,256,4,4)
        layer4 (2,512,2,2): the image tower's intermediate outputs (stem = after its avgpool)
    fixtures/resnet/tiny-rn-coop.safetensors   CoOp in exactly the format of
        fixtures/coop/unified_end.safetensors (see make_coop_fixture.py): M = 4, unified ctx
        (4,64) randn*0.02 (seed 11), class token at the end, class names ["dog", "paper_crane",
        "golden retriever", "x"] ("_" -> " "), labels [0,1,2,3,1,2]; tensors ctx, image_features
        (6,24), labels, prompts (4,77,64), eot_index, token_ids, name_lens, text_features (4,24),
        logits (6,4), loss, grad_ctx (4,64), plus image_pixels (6,3,64,64): image_features =
        encode_image(image_pixels). Metadata position, n_ctx, csc, class_names, init,
        prompt_texts, logit_scale_exp.

(b) RN50 (open_clip.create_model("RN50-quickgelu", pretrained=None): vision layers [3,4,6,3],
    width 64, image 224, attnpool 2048 -> 1024 with 32 heads; text width 512, 8 heads, 12 layers;
    embed 1024). Its ~102M weights are not committed: every float tensor except the BatchNorm
    running statistics is a hash function of its name that Rust recomputes bit for bit:

        seed = FNV-1a 64 of the UTF-8 name (offset 0xcbf29ce484222325, prime 0x100000001b3)
        for element i (0-based, row-major), all u64 arithmetic wrapping:
            z = seed + (i+1) * 0x9E3779B97F4A7C15
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB
            z =  z ^ (z >> 31)
            u = (z >> 40) / 2^24                        in [0, 1), exact in f64
            v = f32( cq/2^24 + (hq/2^24) * (2u - 1) )   computed in f64, rounded once
        The f64 expression is exact (|c|, |h| < 8: every term is a multiple of 2^-48 smaller
        than 32), so any evaluation order gives the same f64, then one round-to-nearest-even f32.

    fixtures/resnet/rn50-weights.json   list, in state-dict order, of {"name", "shape",
        "center_q24": cq, "halfwidth_q24": hq} (integers) for every hashed tensor. From a fresh
        open_clip init (torch.manual_seed(50)): cq = round(mean * 2^24), hq = round(sqrt(3) *
        max(std, 0.02) * 2^24) (population std; constant tensors such as LayerNorm weights get
        c = 1, h = 0.02*sqrt(3)). BatchNorm weight: c = 1, h = 0.2; bias: c = 0, h = 0.1;
        EXCEPT the Bottleneck bn3 weights (visual.layerL.B.bn3.weight, which open_clip
        zero-initialises): c = 0.5, h = 0.1. With c = 1 every residual branch is as strong as
        the identity and the 16-block float32 forward is ill-conditioned: any float32
        implementation then differs from exact (float64) arithmetic by ~6e-5 (norm-relative) at
        layer4 and ~3e-5 at image_embeds, so two correct float32 implementations could differ
        by ~1e-4. At 0.5 these are ~1.4e-5 and ~4e-6 (printed on every run).
        logit_scale: cq = round(log(1/0.07) * 2^24), hq = 0.
    fixtures/resnet/rn50-stored.safetensors   every BatchNorm running_mean / running_var (F32,
        state-dict names) after calibration on 8 randn images; num_batches_tracked are omitted.
    fixtures/resnet/rn50-reference.safetensors  as the tiny reference, for 2 randn 224x224
        images: pixel_values (2,3,224,224), input_ids, eot_index, image_embeds (2,1024),
        text_embeds (4,1024), text_pooled (4,512), logits_per_image (2,4); the intermediate
        maps would not fit the size budget (layer1 alone is 6.4 MB, all five 13.6 MB), so for
        each of stem (2,64,56,56), layer1 (2,256,56,56), layer2 (2,512,28,28),
        layer3 (2,1024,14,14), layer4: `<name>.mean` (B,C) = mean over H,W, `<name>.tl`
        (B,C,4,4) = [..., :4, :4] and `<name>.br` (B,C,4,4) = [..., -4:, -4:] (the corners
        see the zero padding of the 3x3 convolutions).
    fixtures/resnet/rn50-coop.safetensors   CoOp as tiny-rn-coop (ctx (4,512) randn*0.02,
        seed 11; image_features (6,1024) = encode_image of 6 randn 224x224 images, seed 1234).
        image_pixels is NOT stored: with it the file would be 4.3 MB (over the 4 MB budget);
        use image_features directly.

Checks: state-dict names, shapes and order are OpenAI's; the tokenizer matches the committed
ids; BatchNorm running stats equal the calibration batch statistics; an independent functional
forward (F.conv2d, manual BatchNorm, attnpool as single-query attention, text via
make_clip_fixtures._resblocks) reproduces every reference (max |diff| <= 1e-5 * max |ref| for
the tiny model, 1e-4 for RN50; the same forward in float64 measures the float32 error of the
references themselves, printed); the stem/layer chain reproduces encode_image exactly; the
RN50 weights reload strict into a fresh model and every float entry is either hashed or
stored; the numpy hash equals a pure-Python-int one (and exact rational arithmetic) on sample
elements; CoOp: with prompts = plain token embeddings the encoder equals encode_text, float32
grad_ctx equals float64 autograd (rel < 1e-4), which matches central finite differences
(make_coop_fixture.check_gradient).

Usage (from the repo root):  /work/venv/bin/python scripts/make_resnet_fixtures.py
Needs: torch, open_clip_torch 3.x, numpy, safetensors. CPU only, one thread, deterministic: the
same bytes on every run on a given machine and library versions (sorted safetensors metadata).
"""

import copy
import json
import math
import os
import re
import sys
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fixture_files import canonical_header  # noqa: E402
from make_clip_fixtures import _act, _resblocks  # noqa: E402  (functional OpenAI text blocks)
from make_coop_fixture import check_gradient  # noqa: E402

ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "fixtures")
OUT = os.path.join(FIX, "resnet")

TEXTS = ["a photo of a dog.", "a photo of a cat.", "an origami crane, folded from paper", "x"]
SOT, EOT, CTX = 49406, 49407, 77
CLASS_NAMES = ["dog", "paper_crane", "golden retriever", "x"]
LABELS = [0, 1, 2, 3, 1, 2]
N_CTX, CTX_SEED, COOP_IMAGE_SEED = 4, 11, 1234
LOGIT_SCALE = math.log(1 / 0.07)
BN_EPS = 1e-5
COOP_MAX_BYTES = 4_000_000
TOTAL_MAX_BYTES = 14_000_000

TINY_CFG = dict(
    embed_dim=24,
    vision_cfg=dict(layers=[1, 2, 1, 1], width=16, image_size=64, patch_size=None),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
    quick_gelu=True,
)
TINY_SEEDS = dict(init=0, perturb=1, bn=2, calib=3, pixels=100)
RN50_NAME = "RN50-quickgelu"
RN50_SEEDS = dict(init=50, check=51, calib=53, pixels=200)

Q24 = 1 << 24
BLOCK_BN3 = re.compile(r"visual\.layer\d+\.\d+\.bn3\.weight")
MASK64 = (1 << 64) - 1
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


# ---- shared helpers ---------------------------------------------------------------------------
def save(tensors, meta, path):
    """save_file, then the canonical (sorted-metadata) header."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
    canonical_header(path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def describe(tensors):
    for k, v in tensors.items():
        print(f"    {k}: {str(v.dtype).replace('torch.', '')} {tuple(v.shape)}")


def tokenizer():
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import load_file

    tok = SimpleTokenizer()
    ids = tok(TEXTS)
    committed = load_file(os.path.join(FIX, "reference-openai.safetensors"))["input_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, committed), "tokenizer != committed ids"
    assert ids[0, :8].tolist() == [SOT, 320, 1125, 539, 320, 1929, 269, EOT]
    return tok, ids


def bn_modules(model):
    return [(f"visual.{n}", m) for n, m in model.visual.named_modules()
            if isinstance(m, nn.BatchNorm2d)]


def check_openai_names(model, layers):
    """The names a loader of OpenAI's RN checkpoints expects, in OpenAI's state-dict order."""
    sd = model.state_dict()
    keys = list(sd)
    want_head = ["positional_embedding", "text_projection", "logit_scale"]
    assert keys[:3] == want_head, keys[:3]
    stem = [f"visual.{c}.weight" for c in ("conv1", "conv2", "conv3")]
    for i in (1, 2, 3):
        stem += [f"visual.bn{i}.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                               "num_batches_tracked")]
    for k in stem:
        assert k in sd, k
    for li, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"visual.layer{li}.{b}."
            for j in (1, 2, 3):
                assert p + f"conv{j}.weight" in sd and p + f"bn{j}.running_var" in sd, p
            has_ds = p + "downsample.0.weight" in sd
            assert has_ds == (b == 0), p  # layer1.0 too: inplanes != 4*planes
            if has_ds:
                assert p + "downsample.1.running_mean" in sd
        assert f"visual.layer{li}.{n}.conv1.weight" not in sd
    for k in ("positional_embedding", "q_proj.weight", "q_proj.bias", "k_proj.weight",
              "v_proj.weight", "c_proj.weight", "c_proj.bias"):
        assert f"visual.attnpool.{k}" in sd, k
    for k in ("token_embedding.weight", "ln_final.weight", "ln_final.bias",
              "transformer.resblocks.0.attn.in_proj_weight",
              "transformer.resblocks.0.attn.in_proj_bias",
              "transformer.resblocks.0.attn.out_proj.weight", "transformer.resblocks.0.ln_1.weight",
              "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_proj.bias"):
        assert k in sd, k
    assert sd["logit_scale"].shape == torch.Size([])
    width = sd["token_embedding.weight"].shape[1]
    assert sd["text_projection"].shape[0] == width  # (width, embed): x @ text_projection
    assert not any(k.startswith("attn_mask") for k in keys)  # non-persistent buffer
    from open_clip.transformer import QuickGELU

    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert model.text_pool_type == "argmax"


def calibrate_bn(model, images):
    """Running stats := the statistics of one batch (cumulative average over a single batch)."""
    bns = bn_modules(model)
    seen = {}
    stem_bn = model.visual.bn1

    def keep_input(module, inp, out):  # returns None: the output is left alone
        seen["x"] = inp[0].clone()

    hook = stem_bn.register_forward_hook(keep_input)
    for _, m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.visual.train()
    with torch.no_grad():
        model.visual(images)
    model.visual.eval()
    model.eval()
    hook.remove()
    for name, m in bns:
        m.momentum = 0.1
        assert m.num_batches_tracked.item() == 1, name
        assert m.eps == BN_EPS and m.affine and m.track_running_stats, name
    x = seen["x"]
    assert torch.allclose(stem_bn.running_mean, x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.allclose(stem_bn.running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-5,
                          atol=1e-6)


def set_bn_affine(model, gen):
    with torch.no_grad():
        for _, m in bn_modules(model):
            m.weight.copy_(1 + 0.2 * (2 * torch.rand(m.weight.shape, generator=gen) - 1))
            m.bias.copy_(0.1 * (2 * torch.rand(m.bias.shape, generator=gen) - 1))


# ---- independent functional forward (OpenAI semantics, OpenAI names) -------------------------
def _bn(x, sd, p):
    scale = sd[p + ".weight"] / torch.sqrt(sd[p + ".running_var"] + BN_EPS)
    shift = sd[p + ".bias"] - sd[p + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _bottleneck(x, sd, p, stride):
    out = F.relu(_bn(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1"))
    out = F.relu(_bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), sd, p + "bn2"))
    if stride > 1:
        out = F.avg_pool2d(out, stride)
    out = _bn(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "bn3")
    idn = x
    if p + "downsample.0.weight" in sd:
        if stride > 1:
            idn = F.avg_pool2d(idn, stride)
        idn = _bn(F.conv2d(idn, sd[p + "downsample.0.weight"]), sd, p + "downsample.1")
    return F.relu(out + idn)


@torch.no_grad()
def functional_image(sd, x, dtype=torch.float32):
    sd = {k: v.to(dtype) for k, v in sd.items() if v.is_floating_point()}
    x = x.to(dtype)
    outs = {}
    for i, stride in ((1, 2), (2, 1), (3, 1)):
        x = F.conv2d(x, sd[f"visual.conv{i}.weight"], stride=stride, padding=1)
        x = F.relu(_bn(x, sd, f"visual.bn{i}"))
    x = F.avg_pool2d(x, 2)
    outs["stem"] = x
    for li in (1, 2, 3, 4):
        b = 0
        while f"visual.layer{li}.{b}.conv1.weight" in sd:
            x = _bottleneck(x, sd, f"visual.layer{li}.{b}.", 2 if (li > 1 and b == 0) else 1)
            b += 1
        outs[f"layer{li}"] = x
    # attention pool: tokens = [mean over HW, HW tokens] + pos; only token 0 is a query
    n, c, h, w = x.shape
    heads = c // 64
    t = x.reshape(n, c, h * w).permute(0, 2, 1)
    t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
    t = t + sd["visual.attnpool.positional_embedding"]
    p = "visual.attnpool."
    q = t[:, :1] @ sd[p + "q_proj.weight"].t() + sd[p + "q_proj.bias"]
    k = t @ sd[p + "k_proj.weight"].t() + sd[p + "k_proj.bias"]
    v = t @ sd[p + "v_proj.weight"].t() + sd[p + "v_proj.bias"]
    split = lambda z: z.reshape(n, z.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    o = (att @ split(v)).transpose(1, 2).reshape(n, c)
    outs["image_embeds"] = o @ sd[p + "c_proj.weight"].t() + sd[p + "c_proj.bias"]
    return outs


@torch.no_grad()
def functional_text(sd, input_ids, heads):
    sd = {k: v.float() for k, v in sd.items() if v.is_floating_point()}
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    L = input_ids.shape[1]
    mask = torch.full((L, L), float("-inf")).triu_(1)
    x = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:L]
    x = _resblocks(x, sd, "", n_layers, heads, _act("quick_gelu"), mask)
    x = F.layer_norm(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    pooled = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]
    return {"text_pooled": pooled, "text_embeds": pooled @ sd["text_projection"]}


def check_close(ref, got, what, tol):
    """max |diff| <= tol * max |ref| (and print the norm-relative error, ||diff|| / ||ref||)."""
    for k, v in got.items():
        d = (ref[k].double() - v.double())
        err, scale = d.abs().max().item(), ref[k].abs().max().item()
        rel_norm = (d.norm() / ref[k].double().norm()).item()
        assert err <= tol * scale, f"{what}: {k} differs by {err} (scale {scale})"
        print(f"    {what}: {k} max |diff| / max |ref| {err / scale:.1e}, "
              f"||diff|| / ||ref|| {rel_norm:.1e}")


# ---- references --------------------------------------------------------------------------------
@torch.no_grad()
def compute_references(model, pixel_values, input_ids):
    v = model.visual
    inter = {}
    x = v.stem(pixel_values)
    inter["stem"] = x
    for li in (1, 2, 3, 4):
        x = getattr(v, f"layer{li}")(x)
        inter[f"layer{li}"] = x
    image = model.encode_image(pixel_values)
    assert torch.equal(v.attnpool(x), image), "stem/layer chain != encode_image"
    text = model.encode_text(input_ids)
    eot_index = input_ids.argmax(dim=-1)
    assert torch.equal(eot_index, (input_ids == EOT).int().argmax(dim=-1))
    h = model.token_embedding(input_ids) + model.positional_embedding
    h = model.ln_final(model.transformer(h, attn_mask=model.attn_mask))
    pooled = h[torch.arange(h.shape[0]), eot_index]
    assert torch.allclose(pooled @ model.text_projection, text, rtol=1e-5, atol=1e-6)
    logits = model.get_logits(pixel_values, input_ids)[0]
    img_n, txt_n = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    assert torch.allclose(logits, model.logit_scale.exp() * img_n @ txt_n.t(), rtol=1e-5,
                          atol=1e-5)
    ref = {
        "pixel_values": pixel_values,
        "input_ids": input_ids.to(torch.int64),
        "eot_index": eot_index.to(torch.int64),
        "image_embeds": image,
        "text_embeds": text,
        "text_pooled": pooled,
        "logits_per_image": logits,
    }
    for k, t in list(ref.items()) + list(inter.items()):
        assert torch.isfinite(t.float()).all(), k
    print(f"    image_embeds std {image.std().item():.4f}, "
          f"text_embeds std {text.std().item():.4f}, "
          f"logits {logits.tolist()}")
    for k, t in inter.items():
        print(f"    {k} {tuple(t.shape)}: mean {t.mean().item():.4f} std {t.std().item():.4f} "
              f"max {t.max().item():.3f}, zero fraction {(t == 0).float().mean().item():.3f}")
    return ref, inter


def check_functional(sd, ref, inter, heads, tol):
    """The functional forward in float32 must match open_clip; the same forward in float64 shows
    how far any float32 implementation is from exact (the conditioning of the fixture)."""
    img = {**inter, "image_embeds": ref["image_embeds"]}
    check_close(img, functional_image(sd, ref["pixel_values"]), "functional f32 vs open_clip", tol)
    check_close(ref, functional_text(sd, ref["input_ids"], heads), "functional f32 vs open_clip",
                tol)
    exact = functional_image(sd, ref["pixel_values"], torch.float64)
    check_close(exact, img, "open_clip f32 vs functional f64", tol)


# ---- CoOp ----------------------------------------------------------------------------------
class TextTower(nn.Module):
    """The frozen text modules CoOp's TextEncoder uses (shared with the model, or a copy)."""

    def __init__(self, model):
        super().__init__()
        self.transformer = model.transformer
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask.clone())


def coop_text_features(tower, prompts, eot_index):
    """Official CoOp TextEncoder: x = prompts + pos; transformer with OpenAI's causal mask;
    ln_final; x[arange, eot] @ text_projection. open_clip 3.x's Transformer takes (N, L, D)
    whatever its batch_first (it transposes internally when batch_first is False), so CoOp's
    permute(1, 0, 2) pair is not needed here."""
    x = prompts + tower.positional_embedding.to(prompts.dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask.to(prompts.dtype))
    x = tower.ln_final(x)
    return x[torch.arange(x.shape[0]), eot_index] @ tower.text_projection


def coop_forward(tower, prompts_of, ctx, eot_index, image_features, logit_scale_exp, labels):
    prompts = prompts_of(ctx)
    tf = coop_text_features(tower, prompts, eot_index)
    logits = logit_scale_exp * F.normalize(image_features, dim=-1) @ F.normalize(tf, dim=-1).t()
    return prompts, tf, logits, F.cross_entropy(logits, labels)


def make_coop(model, tok, image_size, path, keep_pixels):
    from safetensors.torch import load_file

    for p in model.parameters():
        p.requires_grad_(False)
    names = [n.replace("_", " ") for n in CLASS_NAMES]
    name_lens = [len(tok.encode(n)) for n in names]
    texts = [" ".join(["X"] * N_CTX) + " " + n + "." for n in names]
    token_ids = tok(texts)
    committed = load_file(os.path.join(FIX, "coop", "unified_end.safetensors"))
    assert torch.equal(token_ids, committed["token_ids"]), "CoOp token ids != fixtures/coop"
    assert name_lens == committed["name_lens"].tolist()
    eot_index = token_ids.argmax(dim=-1)
    assert torch.equal(eot_index, (token_ids == EOT).int().argmax(dim=-1))
    for i, n in enumerate(names):
        assert token_ids[i, 1 + N_CTX:1 + N_CTX + name_lens[i]].tolist() == tok.encode(n)
    with torch.no_grad():
        emb = model.token_embedding(token_ids)
    prefix, suffix = emb[:, :1], emb[:, 1 + N_CTX:]
    k, d = emb.shape[0], emb.shape[-1]

    def prompts_of(ctx):
        c = ctx.unsqueeze(0).expand(k, -1, -1)
        return torch.cat([prefix.to(ctx.dtype), c, suffix.to(ctx.dtype)], dim=1)

    tower = TextTower(model)
    # prompts = the plain token embeddings ("X" rows) -> encode_text of the same ids
    with torch.no_grad():
        got = coop_text_features(tower, prompts_of(emb[0, 1:1 + N_CTX]), eot_index)
        want = model.encode_text(token_ids)
    enc_err = (got - want).abs().max().item()
    assert enc_err <= 1e-5 * max(1.0, want.abs().max().item()), enc_err

    pixels = torch.randn(len(LABELS), 3, image_size, image_size,
                         generator=torch.Generator().manual_seed(COOP_IMAGE_SEED))
    with torch.no_grad():
        image_features = model.encode_image(pixels)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    scale = model.logit_scale.exp().detach()
    ctx0 = torch.randn(N_CTX, d, generator=torch.Generator().manual_seed(CTX_SEED)) * 0.02
    ctx = ctx0.clone().requires_grad_(True)
    prompts, tf, logits, loss = coop_forward(tower, prompts_of, ctx, eot_index, image_features,
                                             scale, labels)
    loss.backward()
    grad = ctx.grad.detach().clone()
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    assert grad.abs().amax(dim=-1).min() > 0, "a ctx row got a zero gradient"

    tower64 = copy.deepcopy(tower).double()
    img64, scale64 = image_features.double(), scale.double()

    def loss_of(c):
        return coop_forward(tower64, prompts_of, c, eot_index, img64, scale64, labels)[3]

    rel32, worst, rel_dir, coords = check_gradient(loss_of, ctx0, grad, CTX_SEED)

    tensors = {
        "ctx": ctx0,
        "image_features": image_features,
        "labels": labels,
        "prompts": prompts.detach(),
        "eot_index": eot_index.to(torch.int64),
        "token_ids": token_ids,
        "name_lens": torch.tensor(name_lens, dtype=torch.int64),
        "text_features": tf.detach(),
        "logits": logits.detach(),
        "loss": loss.detach().reshape(()),
        "grad_ctx": grad,
    }
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    pix_bytes = pixels.numel() * pixels.element_size()
    if keep_pixels:
        assert nbytes + pix_bytes < COOP_MAX_BYTES
        tensors["image_pixels"] = pixels
    else:
        assert nbytes + pix_bytes >= COOP_MAX_BYTES, "image_pixels would fit: keep them"
        print(f"    image_pixels dropped: the file would hold {nbytes + pix_bytes} bytes")
    assert set(tensors) - {"image_pixels"} == set(committed)
    for key, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), key
    meta = {
        "position": "end",
        "n_ctx": str(N_CTX),
        "csc": "false",
        "class_names": json.dumps(CLASS_NAMES),
        "init": "random",
        "prompt_texts": json.dumps(texts),
        "logit_scale_exp": repr(scale.item()),
    }
    save(tensors, meta, path)
    print(f"    texts {texts}, name_lens {name_lens}, eot_index {eot_index.tolist()}")
    print(f"    loss {loss.item():.6f}, |grad_ctx| max {grad.abs().max().item():.3e}, "
          f"encoder path vs encode_text {enc_err:.1e}, f32 vs f64 grad rel {rel32:.1e}, "
          f"finite differences: coords {coords} worst rel {worst:.1e}, direction rel {rel_dir:.1e}")
    describe(tensors)


# ---- (a) tiny --------------------------------------------------------------------------------
def new_tiny():
    from open_clip.model import CLIP

    return CLIP(**TINY_CFG).float().eval()


def make_tiny(tok, input_ids):
    from safetensors.torch import load_file

    torch.manual_seed(TINY_SEEDS["init"])
    model = new_tiny()
    check_openai_names(model, TINY_CFG["vision_cfg"]["layers"])
    g = torch.Generator().manual_seed(TINY_SEEDS["perturb"])
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=torch.float32))
    set_bn_affine(model, torch.Generator().manual_seed(TINY_SEEDS["bn"]))
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
    calibrate_bn(model, torch.randn(8, 3, 64, 64,
                                    generator=torch.Generator().manual_seed(TINY_SEEDS["calib"])))

    sd = {k: (v.half() if v.is_floating_point() else v.clone())
          for k, v in model.state_dict().items()}
    for k, v in sd.items():
        assert v.dtype in (torch.float16, torch.int64), k
        assert torch.isfinite(v.float()).all(), k
        assert v.dtype == torch.float16 or k.endswith("num_batches_tracked"), k
    path = os.path.join(OUT, "tiny-rn.safetensors")
    cfg = {k: v for k, v in TINY_CFG.items()}
    save(sd, {"format": "pt", "config": json.dumps(cfg, sort_keys=True)}, path)
    n_f16 = sum(v.dtype == torch.float16 for v in sd.values())
    print(f"    {n_f16} float16 tensors, {len(sd) - n_f16} int64 num_batches_tracked")

    # references from exactly what the file holds, in float32
    loaded = load_file(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    ref_model = new_tiny()
    ref_model.load_state_dict({k: (v.float() if v.is_floating_point() else v)
                               for k, v in loaded.items()}, strict=True)
    ref_model.eval()
    heads = ref_model.visual.attnpool.num_heads
    assert heads == 8 and ref_model.visual.attnpool.positional_embedding.shape == (5, 512)
    pixel_values = torch.randn(2, 3, 64, 64,
                               generator=torch.Generator().manual_seed(TINY_SEEDS["pixels"]))
    ref, inter = compute_references(ref_model, pixel_values, input_ids)
    check_functional(loaded, ref, inter, TINY_CFG["text_cfg"]["heads"], 1e-5)
    out = {**ref, **inter}
    save(out, {"config": json.dumps(cfg, sort_keys=True), "weights": "tiny-rn.safetensors"},
         os.path.join(OUT, "tiny-rn-reference.safetensors"))
    describe(out)
    make_coop(ref_model, tok, 64, os.path.join(OUT, "tiny-rn-coop.safetensors"), keep_pixels=True)


# ---- (b) RN50 ----------------------------------------------------------------------------------
def fnv1a64(name):
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def hash_tensor(name, shape, cq, hq):
    """The weight function (numpy, vectorised): float32 array of `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN) + np.uint64(fnv1a64(name))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / Q24
    v = (cq / Q24 + (hq / Q24) * (2.0 * u - 1.0)).astype(np.float32)
    return v.reshape(shape)


def hash_element_py(name, i, cq, hq):
    """The same for one element, in Python ints and exact rationals (an independent check)."""
    z = (fnv1a64(name) + (i + 1) * GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    z ^= z >> 31
    m = z >> 40
    exact = Fraction(cq, Q24) + Fraction(hq, Q24) * (Fraction(2 * m, Q24) - 1)
    as_f64 = cq / Q24 + (hq / Q24) * (2.0 * (m / Q24) - 1.0)
    assert Fraction(as_f64) == exact, "the f64 expression is not exact"
    return np.float32(as_f64)


def rn50_specs(fresh):
    """(name, shape, cq, hq) for every hashed tensor, in state-dict order."""
    bn_w, bn_b = set(), set()
    for p, _ in bn_modules(fresh):
        bn_w.add(p + ".weight")
        bn_b.add(p + ".bias")
    specs = []
    for name, t in fresh.state_dict().items():
        if not t.is_floating_point() or name.endswith(("running_mean", "running_var")):
            continue
        if name in bn_w and BLOCK_BN3.fullmatch(name):
            cq, hq = Q24 // 2, round(0.1 * Q24)  # residual branches at half weight, see above
        elif name in bn_w:
            cq, hq = Q24, round(0.2 * Q24)
        elif name in bn_b:
            cq, hq = 0, round(0.1 * Q24)
        elif name == "logit_scale":
            cq, hq = round(LOGIT_SCALE * Q24), 0
        else:
            t64 = t.double()
            std = t64.std(unbiased=False).item() if t.numel() > 1 else 0.0
            cq = round(t64.mean().item() * Q24)
            hq = round(math.sqrt(3) * max(std, 0.02) * Q24)
        assert abs(cq) < 8 * Q24 and 0 <= hq < 8 * Q24, name
        specs.append({"name": name, "shape": list(t.shape), "center_q24": int(cq),
                      "halfwidth_q24": int(hq)})
    return specs


def new_rn50(seed):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(RN50_NAME, pretrained=None)
    return model.float().eval()


def make_rn50(tok, input_ids):
    model = new_rn50(RN50_SEEDS["init"])
    check_openai_names(model, [3, 4, 6, 3])
    assert model.visual.attnpool.num_heads == 32
    assert model.visual.attnpool.positional_embedding.shape == (50, 2048)
    assert model.text_projection.shape == (512, 1024) and len(model.transformer.resblocks) == 12
    specs = rn50_specs(model)

    hashed = {s["name"]: torch.from_numpy(hash_tensor(s["name"], s["shape"], s["center_q24"],
                                                      s["halfwidth_q24"])) for s in specs}
    # the hash a second time, in Python ints, on sample elements
    by_name = {s["name"]: s for s in specs}
    for name in ("visual.conv1.weight", "visual.layer1.0.bn3.weight", "token_embedding.weight",
                 "transformer.resblocks.11.attn.in_proj_weight", "visual.attnpool.c_proj.bias",
                 "logit_scale"):
        s = by_name[name]
        flat = hashed[name].reshape(-1).numpy()
        n = flat.size
        for i in sorted({i for i in (0, 1, 2, n // 2, n - 1) if i < n}):
            want = hash_element_py(name, i, s["center_q24"], s["halfwidth_q24"])
            assert flat[i] == want and flat[i].tobytes() == want.tobytes(), (name, i)
    missing, unexpected = model.load_state_dict(hashed, strict=False)
    assert not unexpected and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                  for k in missing), (missing, unexpected)
    calibrate_bn(model, torch.randn(8, 3, 224, 224,
                                    generator=torch.Generator().manual_seed(RN50_SEEDS["calib"])))
    stored = {k: v.clone() for k, v in model.state_dict().items()
              if k.endswith(("running_mean", "running_var"))}

    # reload: hash + stored (+ num_batches_tracked) into a fresh model, strict
    fresh = new_rn50(RN50_SEEDS["check"])
    nbt = {k: torch.tensor(1, dtype=torch.int64) for k, v in fresh.state_dict().items()
           if k.endswith("num_batches_tracked")}
    fresh.load_state_dict({**hashed, **stored, **nbt}, strict=True)
    fresh.eval()
    assert not set(hashed) & set(stored)
    for k, v in fresh.state_dict().items():
        if v.is_floating_point():
            assert k in hashed or k in stored, k
            assert v.dtype == torch.float32
        else:
            assert k in nbt, k
        assert torch.equal(v, model.state_dict()[k]), k
    n_hashed = sum(v.numel() for v in hashed.values())
    print(f"RN50: {len(specs)} hashed tensors ({n_hashed} values), {len(stored)} stored "
          f"BatchNorm statistics, {len(nbt)} num_batches_tracked omitted")
    del model

    path = os.path.join(OUT, "rn50-weights.json")
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(s) for s in specs) + "\n]\n")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")
    with open(path) as f:
        assert json.load(f) == specs
    for name in ("visual.conv1.weight", "logit_scale"):
        print(f"    {name}: first values {hashed[name].reshape(-1)[:4].tolist()} "
              f"(spec {by_name[name]})")
    save(stored, {"description": "BatchNorm running statistics of the hashed RN50 (see "
                                 "rn50-weights.json), calibrated on 8 randn images"},
         os.path.join(OUT, "rn50-stored.safetensors"))

    pixel_values = torch.randn(2, 3, 224, 224,
                               generator=torch.Generator().manual_seed(RN50_SEEDS["pixels"]))
    ref, inter = compute_references(fresh, pixel_values, input_ids)
    sd = {**hashed, **stored}
    check_functional(sd, ref, inter, 8, 1e-4)
    out = dict(ref)
    for k, t in inter.items():
        out[f"{k}.mean"] = t.mean(dim=(2, 3))
        out[f"{k}.tl"] = t[:, :, :4, :4].contiguous()
        out[f"{k}.br"] = t[:, :, -4:, -4:].contiguous()
    save(out, {"model": RN50_NAME, "weights": "rn50-weights.json + rn50-stored.safetensors"},
         os.path.join(OUT, "rn50-reference.safetensors"))
    describe(out)
    make_coop(fresh, tok, 224, os.path.join(OUT, "rn50-coop.safetensors"), keep_pixels=False)


def main():
    import open_clip

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, numpy {np.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, input_ids = tokenizer()
    make_tiny(tok, input_ids)
    make_rn50(tok, input_ids)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"fixtures/resnet/: {total} bytes in all")
    assert total < TOTAL_MAX_BYTES, total


if __name__ == "__main__":
    main()
