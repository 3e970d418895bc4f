"""The official CoOp / CoCoOp training steps in PyTorch, on the GPU, as the reference that
promptclip's GPU benchmark (promptclip-bench gpu) is measured against in the same run.

The model follows OpenAI's CLIP as the official code builds it (REFERENCE.md): nn.MultiheadAttention
blocks with a causal mask over all 77 positions, LayerNorm computed in fp32 and cast back, QuickGELU,
the EOT row of ln_final @ text_projection. For "fp16" the weights are converted the way CLIP's
build_model converts them (linear, conv and attention weights and the two projections to half;
embeddings and LayerNorm stay fp32), the prompt buffers and learned context are fp16, and SGD updates
the fp16 parameters directly, as the official trainers do with PREC=fp16. "fp32" is everything in fp32.

CoOp: prompts = [SOS] ctx [CLASS . EOS pad] (77 tokens), the whole text encoder per step, backward to
ctx. CoCoOp: the Meta-Net on normalised image features, then the official Python loop over the images
of the batch, each running the text encoder on its K prompts. Image encoding is also measured for
transformers' CLIPVisionModel with SDPA (the fastest stock PyTorch path).

    python3 torch_official_gpu.py <work-dir>      (the folder promptclip-bench gpu wrote)
Prints one JSON line per measurement. BENCH_DEVICE=cpu BENCH_QUICK=1 is a small dry run on the CPU.
"""
import json
import os
import statistics
import sys
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

DEVICE = os.environ.get("BENCH_DEVICE", "cuda")
QUICK = os.environ.get("BENCH_QUICK") == "1"


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed in fp32 whatever the input dtype."""

    def forward(self, x):
        return super().forward(x.type(torch.float32)).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width, heads, mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = LayerNorm(width)
        self.mask = mask

    def forward(self, x):  # x: (L, N, D), sequence first as in CLIP
        m = None if self.mask is None else self.mask.to(dtype=x.dtype, device=x.device)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=m)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(width, heads, mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class Visual(nn.Module):
    def __init__(self, res, patch, width, layers, heads, out):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((res // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # (B, grid², width)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class Clip(nn.Module):
    """ViT-B/16 CLIP with OpenAI's parameter names, so promptclip's checkpoint loads as is."""

    def __init__(self):
        super().__init__()
        self.visual = Visual(224, 16, 768, 12, 12, 512)
        mask = torch.full((77, 77), float("-inf")).triu(1)
        self.transformer = Transformer(512, 12, 8, mask)
        self.token_embedding = nn.Embedding(49408, 512)
        self.positional_embedding = nn.Parameter(torch.zeros(77, 512))
        self.ln_final = LayerNorm(512)
        self.text_projection = nn.Parameter(torch.zeros(512, 512))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def half_like_clip(self):
        """CLIP's convert_weights: conv, linear and attention weights and the projections to fp16."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.data = m.weight.data.half()
                if m.bias is not None:
                    m.bias.data = m.bias.data.half()
            if isinstance(m, nn.MultiheadAttention):
                for name in ("in_proj_weight", "in_proj_bias"):
                    getattr(m, name).data = getattr(m, name).data.half()
        self.text_projection.data = self.text_projection.data.half()
        self.visual.proj.data = self.visual.proj.data.half()
        return self


def text_encoder(clip, prompts, eot):
    """The official TextEncoder: prompts (N, 77, D) -> features (N, E)."""
    x = prompts + clip.positional_embedding.type(clip.dtype)
    x = clip.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip.ln_final(x).type(clip.dtype)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection


class Tokens:
    """CLIP's tokenizer (transformers' fast tokenizer on the fixture's tokenizer.json)."""

    def __init__(self, tok_dir):
        from transformers import CLIPTokenizerFast

        self.tok = CLIPTokenizerFast.from_pretrained(tok_dir)

    def __call__(self, texts):
        ids = self.tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
        return ids, ids.argmax(-1)  # EOT is the largest id, as the official code finds it


def sync():
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def time_ms(warmup, reps, f):
    for _ in range(warmup):
        f()
    sync()
    xs = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        sync()
        xs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(xs)


def peak_mib(f):
    if DEVICE == "cpu":
        f()
        return float("nan")
    sync()
    torch.cuda.reset_peak_memory_stats()
    f()
    sync()
    return torch.cuda.max_memory_allocated() / 2**20


class CoopStep:
    def __init__(self, clip, tokens, names, ctx_init, prec):
        m = ctx_init.shape[0]
        ids, self.eot = tokens([" ".join(["X"] * m) + " " + n + "." for n in names])
        ids, self.eot = ids.to(DEVICE), self.eot.to(DEVICE)
        with torch.no_grad():
            emb = clip.token_embedding(ids).type(clip.dtype)
        self.prefix, self.suffix = emb[:, :1], emb[:, 1 + m:]
        self.ctx = nn.Parameter(ctx_init.clone().to(DEVICE).type(clip.dtype))
        self.opt = torch.optim.SGD([self.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
        self.clip, self.k = clip, len(names)

    def __call__(self, pixels, labels):
        clip = self.clip
        f = clip.visual(pixels.type(clip.dtype))
        prompts = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(self.k, -1, -1), self.suffix], dim=1)  # (K, 77, D)
        t = text_encoder(clip, prompts, self.eot)
        f = f / f.norm(dim=-1, keepdim=True)
        t = t / t.norm(dim=-1, keepdim=True)
        logits = clip.logit_scale.exp() * f @ t.t()
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


class CocoopStep:
    def __init__(self, clip, tokens, names, init, prec):
        m = init["cocoop.ctx"].shape[0]
        ids, self.eot = tokens([f"a photo of a {n}." for n in names])
        ids, self.eot = ids.to(DEVICE), self.eot.to(DEVICE)
        with torch.no_grad():
            emb = clip.token_embedding(ids).type(clip.dtype)
        self.prefix, self.suffix = emb[:, :1], emb[:, 1 + m:]
        self.ctx = nn.Parameter(init["cocoop.ctx"].clone().to(DEVICE).type(clip.dtype))
        hidden, vis = init["cocoop.meta.linear1.weight"].shape
        self.meta = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis, hidden)), ("relu", nn.ReLU(inplace=True)), ("linear2", nn.Linear(hidden, 512))])).to(DEVICE)
        with torch.no_grad():
            for name, p in self.meta.named_parameters():
                p.copy_(init[f"cocoop.meta.{name}"])
        if prec == "fp16":
            self.meta.half()
        self.opt = torch.optim.SGD([self.ctx, *self.meta.parameters()], lr=0.002, momentum=0.9, weight_decay=5e-4)
        self.clip, self.k = clip, len(names)

    def __call__(self, pixels, labels):
        clip = self.clip
        f = clip.visual(pixels.type(clip.dtype))
        f = f / f.norm(dim=-1, keepdim=True)
        shifted = self.ctx.unsqueeze(0) + self.meta(f).unsqueeze(1)  # (B, M, D)
        logits = []
        for ctx_i, f_i in zip(shifted, f):  # the official per-image loop
            prompts = torch.cat([self.prefix, ctx_i.unsqueeze(0).expand(self.k, -1, -1), self.suffix], dim=1)
            t = text_encoder(clip, prompts, self.eot)
            t = t / t.norm(dim=-1, keepdim=True)
            logits.append(clip.logit_scale.exp() * f_i @ t.t())
        loss = F.cross_entropy(torch.stack(logits), labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


def main():
    work = sys.argv[1]
    tok_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-clip-hf")
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, stated: fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    init = load_file(os.path.join(work, "inputs.safetensors"))
    with safe_open(os.path.join(work, "inputs.safetensors"), "pt") as f:
        names_all = json.loads(f.metadata()["class_names_1000"])
    tokens = Tokens(tok_dir)
    weights = load_file(os.path.join(work, "vit-b16.safetensors"))
    pixels_all, labels_all = init["pixels"].to(DEVICE), init["labels"].to(DEVICE).long()
    out = lambda **kw: print(json.dumps({"impl": "official", "torch": torch.__version__, **kw}), flush=True)

    warm, reps = (1, 1) if QUICK else (3, 20)
    for prec in ("fp32",) if DEVICE == "cpu" else ("fp16", "fp32"):
        clip = Clip()
        clip.load_state_dict(weights)
        if prec == "fp16":
            clip.half_like_clip()
        clip = clip.to(DEVICE).eval()
        for p in clip.parameters():
            p.requires_grad_(False)

        px100 = torch.cat([pixels_all[:25]] * 4).type(clip.dtype)
        with torch.no_grad():
            ms = time_ms(warm, reps, lambda: clip.visual(px100))
            mib = peak_mib(lambda: clip.visual(px100))
        out(prec=prec, what="image_encode", batch=100, ms=ms, per_second=100 / ms * 1e3, peak_mib=mib)

        for k in (10,) if QUICK else (100, 1000):
            s = CoopStep(clip, tokens, names_all[:k], init["coop_ctx"], prec)
            px, lb = pixels_all[:32], labels_all[:32] % k
            ms = time_ms(warm, max(1, reps // 2), lambda: s(px, lb))
            mib = peak_mib(lambda: s(px, lb))
            out(prec=prec, what=f"coop_step_k{k}", classes=k, batch=32, n_ctx=16, ms=ms, per_second=32 / ms * 1e3, peak_mib=mib)
            del s

        for k, b in ((5, 2),) if QUICK else ((50, 1), (50, 8), (500, 1)):
            s = CocoopStep(clip, tokens, names_all[:k], init, prec)
            px, lb = pixels_all[:b], labels_all[:b] % k
            ms = time_ms(min(warm, 2), max(1, reps // 4), lambda: s(px, lb))
            mib = peak_mib(lambda: s(px, lb))
            out(prec=prec, what=f"cocoop_step_k{k}_b{b}", classes=k, batch=b, ms=ms, ms_per_image=ms / b, per_second=b / ms * 1e3, peak_mib=mib)
            del s

        # Agreement with promptclip: the same steps from the same start.
        s = CoopStep(clip, tokens, names_all[:100], init["coop_ctx"], prec)
        out(prec=prec, what="coop_losses_k100", losses=[s(pixels_all[:32], labels_all[:32] % 100) for _ in range(2 if QUICK else 10)])
        s = CocoopStep(clip, tokens, names_all[:50], init, prec)
        out(prec=prec, what="cocoop_losses_k50_b8", losses=[s(pixels_all[:8], labels_all[:8] % 50) for _ in range(2 if QUICK else 5)])
        del clip, s
        if DEVICE != "cpu":
            torch.cuda.empty_cache()

    # transformers' vision tower with SDPA, fp16, batch 100: the fastest stock PyTorch encoder.
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16, hidden_act="quick_gelu", projection_dim=512)
    for impl in ("sdpa", "eager"):
        dtype = torch.float32 if DEVICE == "cpu" else torch.float16
        vm = CLIPVisionModelWithProjection._from_config(cfg, attn_implementation=impl).to(dtype).to(DEVICE).eval()
        px = torch.cat([pixels_all[:25]] * 4).to(dtype)
        with torch.no_grad():
            ms = time_ms(warm, reps, lambda: vm(pixel_values=px).image_embeds)
        out(prec="fp16" if DEVICE != "cpu" else "fp32", what=f"image_encode_transformers_{impl}", batch=100, ms=ms, per_second=100 / ms * 1e3)
        del vm


if __name__ == "__main__":
    main()
