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

CLIP-LoRA (MaxZanella/CLIP-LoRA) saves its factors with `save_lora`, `{'weights': {'layer_<n>':
{'q_proj': {'w_lora_A': ..., 'w_lora_B': ...}, ...}}, 'metadata': {'r', 'alpha', 'encoder',
'params', 'position'}}`, its layers numbered over the text tower's adapted blocks, then the image
tower's. Such a file (or a state dict with `w_lora_` names) becomes safetensors under the official
model's names (`transformer.resblocks.<i>.attn.q_proj.w_lora_A`, `visual.transformer...`), its
alpha recorded for the import; `--backbone` (default ViT-B/16) says which blocks a position names
in the image tower. `--to-dassl` on a CLIP-LoRA export writes a `save_lora` file that the official
`--eval_only` loads (its blocks must be one of the official positions).

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
# CLIP-LoRA's factors under the official model's names.
LORA = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.attn\.(q_proj|k_proj|v_proj|proj)\.w_lora_[AB]")
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
# The blocks of each official `--position` (loralib/utils.py's INDEX_POSITIONS_TEXT and _VISION).
TEXT_POSITIONS = {
    "top1": [11], "top2": [10, 11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
    "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
    "all": list(range(12)),
}
VISION_POSITIONS = {
    "ViT-B/16": {"top": [11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
                 "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11],
                 "half-bottom": [0, 1, 2, 3, 4, 5], "all": list(range(12))},
    "ViT-B/32": {"bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11],
                 "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
                 "all": list(range(12))},
    "ViT-L/14": {"half-up": list(range(12, 24)), "half-bottom": list(range(12)),
                 "all": list(range(24))},
}
# The methods whose trainers register only their prompt learner with Dassl (its keys lack
# `prompt_learner.`); the others register the whole model.
PROMPT_LEARNER_ONLY = {"coop", "cocoop", "kgcoop"}


def learned_prompts(state):
    """The learned tensors of a Dassl state dict, under the whole model's names."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    whole = any(k.startswith(("prompt_learner.", "image_encoder.", "text_encoder.", "transformer.", "visual."))
                for k in state)
    if not whole:
        state = {f"prompt_learner.{k}": v for k, v in state.items()}
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()
            if LEARNED.fullmatch(k) or LORA.fullmatch(k)}


def lora_blocks(metadata, backbone):
    """The (tower prefix, block) of each of a save_lora file's layers, in its order."""
    position, encoder = metadata["position"], metadata["encoder"]
    blocks = []
    if encoder in ("text", "both"):
        blocks += [("", i) for i in TEXT_POSITIONS[position]]
    if encoder in ("vision", "both"):
        table = VISION_POSITIONS.get(backbone)
        if table is None or position not in table:
            sys.exit(f"position {position!r} has no image-tower blocks for backbone {backbone!r} "
                     f"(known: {', '.join(VISION_POSITIONS)})")
        blocks += [("visual.", i) for i in table[position]]
    return blocks


def from_save_lora(checkpoint, src, dst, backbone):
    metadata, weights = checkpoint["metadata"], checkpoint["weights"]
    blocks = lora_blocks(metadata, backbone)
    if len(blocks) != len(weights):
        sys.exit(f"{src}: {len(weights)} layers, but encoder {metadata['encoder']!r} at position "
                 f"{metadata['position']!r} of {backbone} has {len(blocks)} (is --backbone right?)")
    out = {}
    for n, (tower, i) in enumerate(blocks):
        for proj, factors in weights[f"layer_{n}"].items():
            for name, t in factors.items():
                out[f"{tower}transformer.resblocks.{i}.attn.{proj}.{name}"] = t.detach().float().contiguous()
    options = {"alpha": float(metadata["alpha"])}
    save_file(out, dst, metadata={"format": "pt", "source": os.path.basename(src),
                                  "promptclip.method": "clip-lora",
                                  "promptclip.options": json.dumps(options)})
    print(f"{dst}: clip-lora factors, {len(out)} tensors, rank {metadata['r']}, alpha {metadata['alpha']}")


def from_dassl(src, dst, backbone="ViT-B/16"):
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and {"weights", "metadata"} <= set(checkpoint):
        return from_save_lora(checkpoint, src, dst, backbone)
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


def to_save_lora(state, options, src, dst, backbone):
    """A CLIP-LoRA export as the official save_lora writes it."""
    towers = {"": set(), "visual.": set()}
    for k in state:
        m = LORA.fullmatch(k)
        if m:
            towers[m.group(1) or ""].add(int(m.group(2)))
    encoder = {(True, True): "both", (True, False): "text", (False, True): "vision"}[
        (bool(towers[""]), bool(towers["visual."]))]
    layers = sorted(towers[""] | towers["visual."])
    vision = VISION_POSITIONS.get(backbone, {})
    position = next((p for p, blocks in TEXT_POSITIONS.items()
                     if blocks == layers and (encoder == "text" or vision.get(p) == layers)), None)
    if position is None:
        sys.exit(f"{src}: blocks {layers} are none of the official positions for {backbone} "
                 f"({', '.join(TEXT_POSITIONS)}): the official code cannot load them")
    params = [p for p, name in PROJECTIONS.items() if any(f".attn.{name}.w_lora_A" in k for k in state)]
    weights = {}
    for n, (tower, i) in enumerate(lora_blocks({"position": position, "encoder": encoder}, backbone)):
        weights[f"layer_{n}"] = {
            PROJECTIONS[p]: {f: state[f"{tower}transformer.resblocks.{i}.attn.{PROJECTIONS[p]}.{f}"]
                             for f in ("w_lora_A", "w_lora_B")} for p in params}
    rank = next(v.shape[0] for k, v in state.items() if k.endswith("w_lora_A"))
    alpha = options.get("alpha", 1)
    metadata = {"r": rank, "alpha": int(alpha) if float(alpha).is_integer() else alpha,
                "encoder": encoder, "params": params, "position": position}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({"weights": weights, "metadata": metadata}, dst)
    print(f"{dst}: clip-lora save_lora file, {metadata}")


def to_dassl(src, dst, epoch, backbone="ViT-B/16"):
    with safe_open(src, framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    method = metadata.get("promptclip.method")
    if method is None:
        sys.exit(f"{src}: not a promptclip export (no promptclip.method metadata)")
    if method == "clip-lora":
        return to_save_lora(state, json.loads(metadata.get("promptclip.options", "{}")), src, dst, backbone)
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
    p.add_argument("--backbone", default="ViT-B/16", help="CLIP-LoRA: the official --backbone, "
                   "whose image-tower blocks a position names (default ViT-B/16)")
    a = p.parse_args()
    if a.to_dassl:
        m = re.search(r"model\.pth\.tar-(\d+)$", a.dst)
        to_dassl(a.src, a.dst, a.epoch if a.epoch is not None else int(m.group(1)) if m else 1, a.backbone)
    else:
        from_dassl(a.src, a.dst, a.backbone)


if __name__ == "__main__":
    main()
