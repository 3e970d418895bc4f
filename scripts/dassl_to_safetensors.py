#!/usr/bin/env python3
"""Prompts between the official code's Dassl checkpoints and safetensors, for promptclip.

The official trainers (CoOp, CoCoOp, KgCoOp, multimodal-prompt-learning's VPT, IVLP and MaPLe,
PromptSRC) save Dassl checkpoints, `<output>/<module>/model.pth.tar-<epoch>`: a pickle, which
promptclip never reads. This script reads one with torch.load(weights_only=True) (tensors and
plain values only: no code from the file runs) and writes its learned prompts, under the same
state-dict names, to safetensors that `promptclip convert` and `PromptLearner.importOfficial` read:

    python scripts/dassl_to_safetensors.py output/.../MultiModalPromptLearner/model.pth.tar-5 maple.safetensors

It keeps the learned tensors only (`ctx`, the Meta-Net, MaPLe's compound prompts and projections,
the `VPT` and `VPT_shallow` prompts), as float32; the class-token buffers (token_prefix,
token_suffix) and the frozen CLIP weights of a whole-model state dict are left out. A prompt
learner's own state dict (CoOp's and CoCoOp's checkpoints: `ctx`) is named as the whole model
names it (`prompt_learner.ctx`), and DataParallel's `module.` prefix is dropped.

The other way, a file that promptclip exported (`promptclip convert prompt.safetensors out.safetensors`
or `learner.exportOfficial`) becomes a checkpoint the official code's --model-dir/--load-epoch read:

    python scripts/dassl_to_safetensors.py --to-dassl maple-official.safetensors out/MultiModalPromptLearner/model.pth.tar-5

Needs torch and safetensors (pip install torch safetensors).
"""
import argparse
import json
import os
import re
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# The learned tensors' names in the official CustomCLIP state dicts.
LEARNED = re.compile(
    r"prompt_learner\.(ctx|meta_net\.linear[12]\.(weight|bias)|proj\.(weight|bias)"
    r"|compound_prompts_text\.\d+|compound_prompt_projections\.\d+\.(weight|bias))"
    r"|(image_encoder|text_encoder)\.(VPT|transformer\.resblocks\.\d+\.VPT_shallow)"
)
# The methods whose trainers register only their prompt learner with Dassl (its keys lack
# `prompt_learner.`); the others register the whole model.
PROMPT_LEARNER_ONLY = {"coop", "cocoop", "kgcoop"}


def learned_prompts(state):
    """The learned tensors of a Dassl state dict, under the whole model's names."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    whole = any(k.startswith(("prompt_learner.", "image_encoder.", "text_encoder.")) for k in state)
    if not whole:
        state = {f"prompt_learner.{k}": v for k, v in state.items()}
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state.items() if LEARNED.fullmatch(k)}


def from_dassl(src, dst):
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        sys.exit(f"{src}: not a Dassl checkpoint (no state_dict)")
    prompts = learned_prompts(state)
    if not prompts:
        names = ", ".join(sorted(state)[:6])
        sys.exit(f"{src}: no learned prompts among its tensors ({names}, ...)")
    metadata = {"format": "pt", "source": os.path.basename(src)}
    if isinstance(checkpoint.get("epoch"), int):
        metadata["epoch"] = str(checkpoint["epoch"])
    save_file(prompts, dst, metadata=metadata)
    print(f"{dst}: {len(prompts)} tensors ({', '.join(sorted(prompts))})")


def to_dassl(src, dst, epoch):
    with safe_open(src, framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    method = metadata.get("promptclip.method")
    if method is None:
        sys.exit(f"{src}: not a promptclip export (no promptclip.method metadata)")
    if method in PROMPT_LEARNER_ONLY:
        state = {k[len("prompt_learner."):]: v for k, v in state.items()}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": None, "scheduler": None}, dst)
    print(f"{dst}: {method} prompts, {len(state)} tensors, epoch {epoch}")
    print("options: " + json.dumps(json.loads(metadata.get("promptclip.options", "{}"))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to-dassl", action="store_true", help="a promptclip export to a Dassl checkpoint")
    p.add_argument("--epoch", type=int, default=None, help="with --to-dassl: the epoch to record "
                   "(default: the number after model.pth.tar-, else 1)")
    a = p.parse_args()
    if a.to_dassl:
        m = re.search(r"model\.pth\.tar-(\d+)$", a.dst)
        to_dassl(a.src, a.dst, a.epoch if a.epoch is not None else int(m.group(1)) if m else 1)
    else:
        from_dassl(a.src, a.dst)


if __name__ == "__main__":
    main()
