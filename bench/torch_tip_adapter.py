"""Tip-Adapter-F's fine-tuning and Tip-Adapter's cache in PyTorch, the way the official
main.py (run_tip_adapter_F) and utils.py (build_cache_model) run them, at the shapes of
bench/src/adapters.rs:

- tip_adapter_f_fit: features already computed (normalised), 16 shots x 100 classes, E = 512;
  adapter = nn.Linear(E, N, bias=False) initialised with the cache keys; AdamW(lr 0.001, eps 1e-4);
  CosineAnnealingLR(T_max = 20 x batches) stepped per batch; a shuffled loader of batch 256 (the
  last batch partial, as the official loader); per batch: affinity = adapter(f), cache logits
  ((-1) * (beta - beta * affinity)).exp() @ values, 100 f W^T + alpha * cache, cross-entropy,
  zero_grad / backward / step / scheduler.step.
- tip_adapter_cache: a random ViT-B/16 image tower (transformers CLIPVisionModelWithProjection),
  the same 32 images, 10 passes of the official train transform (RandomResizedCrop(224,
  scale=(0.5, 1), bicubic), RandomHorizontalFlip, ToTensor, Normalize with CLIP's mean/std) and
  encode_image; keys = mean over passes, normalised.

    python bench/torch_tip_adapter.py <images-dir>
Prints JSON lines."""
import json, os, sys, time

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


def fit(shots=16, k=100, e=512, epochs=20, batch=256):
    g = torch.Generator().manual_seed(0)
    n = shots * k
    keys = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    values = F.one_hot(torch.arange(n) // shots, k).float()
    text = F.normalize(torch.randn(k, e, generator=g), dim=-1)
    feats = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    labels = torch.arange(n) // shots
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(feats, labels), batch_size=batch, shuffle=True)
    adapter = torch.nn.Linear(e, n, bias=False)
    adapter.weight = torch.nn.Parameter(keys.clone())
    opt = torch.optim.AdamW(adapter.parameters(), lr=0.001, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    beta, alpha = 1.0, 1.0

    def step(f, y):
        affinity = adapter(f)
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
        logits = 100.0 * f @ text.t() + cache_logits * alpha
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    f0, y0 = next(iter(loader))
    step(f0, y0)  # warm-up
    t0 = time.perf_counter()
    for _ in range(epochs):
        for f, y in loader:
            step(f, y)
    return time.perf_counter() - t0, len(loader)


def cache(images_dir, n=32, passes=10):
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16, hidden_act="quick_gelu", projection_dim=512)
    model = CLIPVisionModelWithProjection(cfg).eval()
    files = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.rsplit(".", 1)[-1] in ("png", "jpg", "jpeg", "webp"))
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size=224, scale=(0.5, 1), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
    ])
    t0 = time.perf_counter()
    images = [Image.open(files[i % len(files)]).convert("RGB") for i in range(n)]
    with torch.no_grad():
        passes_out = []
        for _ in range(passes):
            x = torch.stack([tf(im) for im in images])  # the official loader: one batch of 256 at most
            passes_out.append(model(pixel_values=x).image_embeds)
        keys = torch.stack(passes_out).mean(0)
        keys = keys / keys.norm(dim=-1, keepdim=True)
    return time.perf_counter() - t0


def main():
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    s, batches = fit()
    print(json.dumps({"impl": "torch", "what": "tip_adapter_f_fit", "arch": "ViT-B/16", "shots": 16, "classes": 100, "epochs": 20, "batches_per_epoch": batches, "threads": threads, "torch": torch.__version__, "seconds": s, "per_second": 1 / s}), flush=True)
    s = cache(sys.argv[1])
    print(json.dumps({"impl": "torch", "what": "tip_adapter_cache", "arch": "ViT-B/16", "images": 32, "passes": 10, "threads": threads, "torch": torch.__version__, "seconds": s, "per_second": 1 / s, "image_passes_per_second": 320 / s}), flush=True)


if __name__ == "__main__":
    main()
