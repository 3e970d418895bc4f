"""One CLIP-LoRA training step, and LoRA-merged image encoding, with the OFFICIAL code
(MaxZanella/CLIP-LoRA: clip/model.py `build_model`, loralib `apply_lora`,
`mark_only_lora_as_trainable`, `get_lora_parameters`, and lora.py run_lora's step), on the same
random OpenAI-format ViT-B/16 checkpoint that promptclip-bench wrote (bench/clip_lora.sh runs
both sides; bench/src/clip_lora.rs is promptclip's).

The official repository is not part of this project: pass a checkout with --official PATH (or
CLIP_LORA_OFFICIAL=PATH). One without its images (the mirror lacks them) is enough:
    mkdir -p /tmp/clip-lora-official && git -C <CLIP-LoRA clone> archive HEAD -- clip loralib \\
        lora.py utils.py | tar -x -C /tmp/clip-lora-official
Its clip/model.py, clip/simple_tokenizer.py and loralib/ are imported by path; clip/__init__.py
(PIL, torchvision, tqdm) is not, so clip.tokenize is re-done here with the official tokenizer
(SOT + BPE + EOT, 0-padded to 77).

    python bench/torch_clip_lora.py <ckpt.safetensors> <batch> [--official PATH]
        [--device cpu|cuda] [--predict] [--reps N]

Step (run_lora, encoder "both"): LoRA r = 2, alpha = 1 (scaling alpha / sqrt(r)), dropout 0.25,
on q, k, v of every block of both towers; K = 100 prompts "a photo of a {name}." tokenized and
through the adapted text tower every step, the batch through the adapted image tower, logits =
100 normalize(img) normalize(txt)^T, cross-entropy, backward, AdamW (lr 2e-4, weight decay 1e-2,
betas (0.9, 0.999)), CosineAnnealingLR stepped per iteration. On the CPU: fp32
(build_model(...).float(), the checkpoint's own fp32 weights loaded back over build_model's
fp16-rounded ones), no autocast. On CUDA: as the official main.py / run_lora: the model as
clip.load leaves it on a GPU (fp16; the LoRA projections fp32, as PlainMultiheadAttentionLoRA
makes them), autocast fp16 and a GradScaler. Median over reps after warm-up; peak RSS
(getrusage) on the CPU, torch.cuda.max_memory_allocated over the timed steps on CUDA.

--predict: the official eval path: a LoRA model with non-zero B, model.eval() (which merges
scaling B A into the weights in place), then encode_image of <batch> images, interleaved with
the plain model's encode_image (nn.MultiheadAttention); no_grad (and autocast on CUDA, as
evaluate_lora). Prints one JSON line per measurement, `what` as promptclip's."""
import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import resource
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

K = 100
TEMPLATE = "a photo of a {}."
LORA_ARGS = dict(encoder="both", position="all", params=["q", "k", "v"], r=2, alpha=1,
                 dropout_rate=0.25, backbone="ViT-B/16")
LOGIT_SCALE = 100
LR, WEIGHT_DECAY, ETA_MIN = 2e-4, 1e-2, 1e-6
TOTAL_ITERS = 500 * 16  # n_iters x shots, the official 16-shot schedule
LORA_SEED = 1  # run_utils.py's default --seed
CTX = 77


def class_names(k):
    """bench/src/main.rs class_names (k <= 1000)."""
    adj = ["red", "small", "wild", "old", "striped", "golden", "wooden", "spotted", "tiny", "giant"]
    noun = ["dog", "car", "bird", "chair", "flower", "boat", "house", "fish", "lamp", "tree"]
    place = ["", "sea ", "mountain ", "desert ", "city ", "forest ", "river ", "snow ", "garden ",
             "toy "]
    return [f"{place[(i // 100) % 10]}{adj[i % 10]} {noun[(i // 10) % 10]}" for i in range(k)]


def load_module(name, path, package_dir=None):
    kw = {"submodule_search_locations": [package_dir]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_official(root):
    for f in ["clip/model.py", "clip/simple_tokenizer.py", "loralib/__init__.py",
              "loralib/layers.py", "loralib/utils.py"]:
        if not os.path.isfile(os.path.join(root, f)):
            sys.exit(f"{root} is not a CLIP-LoRA checkout (no {f}); see this script's docstring")
    model_py = load_module("clip_lora_official_model", os.path.join(root, "clip", "model.py"))
    tok_py = load_module("clip_lora_official_tokenizer",
                         os.path.join(root, "clip", "simple_tokenizer.py"))
    lora_dir = os.path.join(root, "loralib")
    loralib = load_module("loralib", os.path.join(lora_dir, "__init__.py"), lora_dir)
    return types.SimpleNamespace(model=model_py, tok=tok_py, layers=loralib.layers,
                                 utils=loralib.utils)


def tokenize(tokenizer, texts):
    """clip.tokenize: [SOT] + encode(text) + [EOT], 0-padded to 77."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [sot] + tokenizer.encode(t) + [eot]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def build(off, sd, device):
    """The CLIP as the official code has it: fp32 on the CPU (with the checkpoint's exact fp32
    weights), on CUDA fp16 as clip.load leaves it there."""
    model = off.model.build_model(dict(sd))
    if device.type == "cpu":
        model = model.float()
        model.load_state_dict({k: v for k, v in sd.items()
                               if k not in ("input_resolution", "context_length", "vocab_size")})
    return model.to(device)


def lora_model(off, sd, device):
    model = build(off, sd, device)
    torch.manual_seed(LORA_SEED)
    with contextlib.redirect_stdout(io.StringIO()):  # apply_lora prints every block
        layers = off.utils.apply_lora(types.SimpleNamespace(**LORA_ARGS), model)
    assert len(layers) == 24, len(layers)
    return model.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device):
    if device.type == "cuda":
        return torch.amp.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_step_bench(off, sd, batch, device, reps):
    model = lora_model(off, sd, device)
    off.utils.mark_only_lora_as_trainable(model)
    params = off.utils.get_lora_parameters(model)
    assert len(params) == 2 * 3 * 24
    optimizer = torch.optim.AdamW(params, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), lr=LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, TOTAL_ITERS, eta_min=ETA_MIN)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    tokenizer = off.tok.SimpleTokenizer()
    names = class_names(K)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    target = (torch.arange(batch) % K).to(device)
    model.train()

    def step():
        # run_lora's loop body (encoder "both"), its accuracy bookkeeping aside.
        texts = [TEMPLATE.format(c.replace("_", " ")) for c in names]
        with autocast(device):
            texts = tokenize(tokenizer, texts).to(device)
            class_embeddings = model.encode_text(texts)
        text_features = class_embeddings / class_embeddings.norm(dim=-1, keepdim=True)
        with autocast(device):
            image_features = model.encode_image(images)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        cosine_similarity = LOGIT_SCALE * image_features @ text_features.t()
        loss = F.cross_entropy(cosine_similarity, target)
        loss_item = loss.item()
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        return loss_item

    warmup = 3 if device.type == "cuda" else 1
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t)
    assert math.isfinite(loss), loss
    s = statistics.median(times)
    peak = "peak_rss_mib" if device.type == "cpu" else "peak_mib"
    return {"what": f"clip_lora_step_b{batch}", "classes": K, "batch": batch, "seconds": s,
            "per_second": batch / s, peak: peak_mib(device), "all_seconds": times, "loss": loss}


def predict_bench(off, sd, batch, device, reps):
    plain = build(off, sd, device).eval()
    lora = lora_model(off, sd, device)
    # A trained model's B is not zero: small random values, so that the merge changes weights.
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if n.endswith("_lora_B"):
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    t = time.perf_counter()
    lora.eval()  # lora_train(False): W += scaling B A, in place
    sync(device)
    merge_s = time.perf_counter() - t
    assert all(m.merged for m in lora.modules() if isinstance(m, off.layers.LinearLoRA))
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(5)).to(device)

    def encode(model):
        with torch.no_grad(), autocast(device):
            return model.encode_image(x)  # (which casts x to the model's dtype)

    diff = (encode(lora).float() - encode(plain).float()).abs().max().item()  # and the warm-up
    assert diff > 0, "the merged model's features equal the plain ones"
    tp, tm = [], []
    for r in range(reps):
        order = [(plain, tp), (lora, tm)] if r % 2 == 0 else [(lora, tm), (plain, tp)]
        for model, into in order:
            sync(device)
            t = time.perf_counter()
            encode(model)
            sync(device)
            into.append(time.perf_counter() - t)
    out = []
    for what, times, extra in [
        ("frozen_encode", tp, {}),
        ("lora_merged_encode", tm, {"merge_seconds": merge_s, "max_abs_feature_diff_vs_frozen": diff}),
    ]:
        s = statistics.median(times)
        out.append({"what": f"{what}_b{batch}", "batch": batch, "reps": reps, "seconds": s,
                    "per_second": batch / s, "all_seconds": times, **extra})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", help="the random OpenAI-format checkpoint promptclip-bench wrote")
    ap.add_argument("batch", type=int)
    ap.add_argument("--official", default=os.environ.get("CLIP_LORA_OFFICIAL"),
                    help="a checkout of MaxZanella/CLIP-LoRA (default: $CLIP_LORA_OFFICIAL)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--predict", action="store_true", help="time merged vs plain encode_image")
    ap.add_argument("--reps", type=int, default=None)
    a = ap.parse_args()
    if not a.official:
        sys.exit("pass --official PATH or set CLIP_LORA_OFFICIAL (see this script's docstring)")
    from safetensors.torch import load_file

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    device = torch.device(a.device)
    off = load_official(os.path.abspath(a.official))
    sd = load_file(a.ckpt)
    base = {"impl": "torch", "arch": "ViT-B/16", "threads": threads, "torch": torch.__version__,
            "device": a.device}
    if device.type == "cuda":
        base["gpu"] = torch.cuda.get_device_name()
    if a.predict:
        reps = a.reps or (5 if device.type == "cpu" else 20)
        rows = predict_bench(off, sd, a.batch, device, reps)
    else:
        reps = a.reps or ((1 if a.batch >= 8 else 2) if device.type == "cpu" else 10)
        rows = [train_step_bench(off, sd, a.batch, device, reps)]
    for r in rows:
        print(json.dumps({**base, **r}), flush=True)


if __name__ == "__main__":
    main()
