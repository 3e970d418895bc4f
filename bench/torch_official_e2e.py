"""The official CoOp training run with its data pipeline, as Dassl drives it: the JPEGs that
`promptclip-bench e2e` wrote (16 shots x 100 classes, 500x375), a DataLoader with 8 workers,
batch 32, shuffling, dropping the last batch, pinned memory, PIL decoding, RandomResizedCrop(224,
scale 0.08-1, bicubic), a horizontal flip, ToTensor and CLIP's normalisation; the fp16 CoOp step
of torch_official_gpu.py. A few epochs are timed (the first one separately: it starts the
workers); then evaluation at batch 100 with the test transform (resize 224 bicubic, center crop).

    python3 torch_official_e2e.py <work-dir> [epochs]
Prints one JSON line per measurement. BENCH_DEVICE=cpu BENCH_QUICK=1: a small fp32 dry run.
"""
import json
import os
import sys
import time

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(__file__))
from torch_official_gpu import DEVICE, QUICK, Clip, CoopStep, Tokens, sync, text_encoder  # noqa: E402

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class Files(Dataset):
    def __init__(self, listing, transform):
        with open(listing) as f:
            self.items = [(p, int(l)) for p, l in (line.rstrip("\n").split("\t") for line in f if line.strip())]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


def main():
    work = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    k = 4 if QUICK else 100
    listing = os.path.join(work, "jpeg-4x4" if QUICK else "jpeg-100x16", "files.txt")
    cuda = DEVICE != "cpu"
    train_tf = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    test_tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = DataLoader(Files(listing, train_tf), batch_size=32 if cuda else 8, shuffle=True, num_workers=8 if cuda else 2, drop_last=True, pin_memory=cuda)
    test = DataLoader(Files(listing, test_tf), batch_size=100, shuffle=False, num_workers=8 if cuda else 2, pin_memory=cuda)

    clip = Clip()
    clip.load_state_dict(load_file(os.path.join(work, "vit-b16.safetensors")))
    clip = (clip.half_like_clip() if cuda else clip).to(DEVICE).eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    init = load_file(os.path.join(work, "inputs.safetensors"))
    with safe_open(os.path.join(work, "inputs.safetensors"), "pt") as f:
        names = json.loads(f.metadata()["class_names_1000"])[:k]
    tok_dir = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-clip-hf")
    step = CoopStep(clip, Tokens(tok_dir), names, init["coop_ctx"], "fp16" if cuda else "fp32")

    times = []
    for _ in range(epochs):
        sync()
        t = time.perf_counter()
        for images, labels in train:
            step(images.to(DEVICE, non_blocking=True), labels.to(DEVICE, non_blocking=True))
        sync()
        times.append(time.perf_counter() - t)
    steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    out = lambda **kw: print(json.dumps({"impl": "official", "torch": torch.__version__, "prec": "fp16" if cuda else "fp32", **kw}), flush=True)
    out(what="e2e_coop", images=len(train.dataset), classes=k, epochs_timed=epochs, first_epoch_seconds=times[0], seconds_per_epoch=steady, seconds_200_epochs_estimated=times[0] + 199 * steady)

    scale = clip.logit_scale.exp()
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        prompts = torch.cat([step.prefix, step.ctx.unsqueeze(0).expand(step.k, -1, -1), step.suffix], dim=1)
        text = text_encoder(clip, prompts, step.eot)
        text = text / text.norm(dim=-1, keepdim=True)
        n = 0
        for images, _ in test:
            f = clip.visual(images.to(DEVICE, non_blocking=True).type(clip.dtype))
            f = f / f.norm(dim=-1, keepdim=True)
            (scale * f @ text.t()).softmax(-1).cpu()
            n += len(images)
    sync()
    s = time.perf_counter() - t
    out(what="e2e_evaluate", images=n, seconds=s, per_second=n / s)


if __name__ == "__main__":
    main()
