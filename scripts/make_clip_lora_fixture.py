"""Reference fixture for CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of
Vision-Language Models", CVPR-W 2024; MaxZanella/CLIP-LoRA). Computed by running the OFFICIAL code
on the tiny OpenAI-format CLIP in fixtures/tiny-clip-openai.safetensors: its clip/model.py
`build_model`, loralib/utils.py `apply_lora`, `mark_only_lora_as_trainable`,
`get_lora_parameters`, `lora_state_dict` and loralib/layers.py `PlainMultiheadAttentionLoRA` /
`LinearLoRA`. The official repository is not part of this project: pass a checkout with
--official (its files are imported from there by path; clip/__init__.py, which needs PIL,
torchvision and tqdm, is not imported).

What the official code does (and so what is computed here, float32 on the CPU, no autocast):

  model    build_model(state_dict).float()  (state dict: the float16 tiny model)
  LoRA     apply_lora: every nn.MultiheadAttention of both towers (position "all", encoder
           "both") becomes PlainMultiheadAttentionLoRA: q_proj, k_proj, v_proj = the row blocks
           [0:E], [E:2E], [2E:3E] of in_proj_weight / in_proj_bias, proj = out_proj; each of the
           params ["q", "k", "v", "o"] a LinearLoRA with w_lora_A (r, in) and w_lora_B (out, r):
               y = x W^T + b + dropout(x) (B A)^T * scaling,   scaling = alpha / sqrt(r)
           (NOT alpha / r), then SDPA: softmax(q k^T / sqrt(d_head) + attn_mask) v per head. The
           text tower passes OpenAI's causal mask (-inf above the diagonal) as attn_mask; the
           image tower none. r = 2, alpha = 1; A: the official kaiming_uniform_(a=sqrt(5))
           (global torch RNG seeded with LORA_SEED right before apply_lora), B: officially zero,
           here set to N(0, 0.1) from a seeded generator so that A's gradient is not zero.
  dropout  the official 0.25 (applied to the LoRA branch's input only) is replaced by
           nn.Dropout(0.0) in every LinearLoRA so the fixture is deterministic. NOT
           dropout_rate=0: with dropout None LinearLoRA takes another path (merge_lora_param,
           forward, sub_lora_data) which edits the weight saved for backward in place, so the
           gradient passed to the layer's input uses W instead of W + scaling B A and the factors
           of earlier layers get wrong gradients (checked below).
  loss     model.train(); g = encode_text(token ids of "a photo of a {name}."), f =
           encode_image(pixels); logits = 100 normalize(f) normalize(g)^T (run_lora's fixed
           logit_scale = 100); loss = cross_entropy(logits, labels)
  training torch.optim.AdamW(get_lora_parameters(model), lr 2e-4, weight_decay 1e-2, betas
           (0.9, 0.999), eps 1e-8), CosineAnnealingLR(T_max 20, eta_min 1e-6) stepped after every
           optimiser step; 20 steps over 5 batches of 4 images in turn (batch k = step % 5)
  eval     model.eval() merges W += scaling B A in place (lora_train(False)); the first batch's
           logits and features in that mode.

Recorded (fixtures/clip_lora/lora.safetensors, float32, labels/token ids int64): pixels (20, 3,
48, 48; randn, already normalised), labels, token_ids, eot_index; the first batch's loss, logits,
image_features and text_features (projected, not normalised) at the initial factors; for every
LoRA factor under its official state-dict name (lora_state_dict), `init.<name>`, `grad.<name>`
(first batch) and `final.<name>` (after 20 steps); step_losses, lrs (the lr used by each step);
final_logits, final_image_features, final_text_features (eval, merged).

Checks (asserted): the official build_model reproduces fixtures/reference-openai.safetensors and
the official tokenizer its input_ids; at B = 0 the LoRA model's logits equal the plain model's;
float32 gradients agree with float64 autograd (float64 copy of the model) and those with central
finite differences (coordinates and a random direction); the dropout_rate=0 path gives different
gradients for the first-layer factors; the first training step's loss is the recorded loss; the
lrs follow the closed-form cosine; train-mode logits at the final factors equal the eval-mode
(merged) ones; every factor moves. Sorted metadata (byte-reproducible).

Usage (from the repo root):
    python3 scripts/make_clip_lora_fixture.py --official /path/to/CLIP-LoRA [--official-commit SHA]
(the commit is read with git from the checkout when not given). Needs: torch, numpy, safetensors
and the official tokenizer's ftfy and regex. CPU only, deterministic (~10 s).
"""

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402  (CLASS_NAMES, save, check_gradient)
import make_vpt_fixture as vpt  # noqa: E402  (LABELS, batches, steps, pixel seed)

OUT = os.path.join(coop.ROOT, "fixtures", "clip_lora")
MODEL = os.path.join(coop.ROOT, "fixtures", "tiny-clip-openai.safetensors")
REFERENCE = os.path.join(coop.ROOT, "fixtures", "reference-openai.safetensors")
OFFICIAL_REPO = "MaxZanella/CLIP-LoRA"
OFFICIAL_FILES = ["clip/model.py", "clip/simple_tokenizer.py", "loralib/__init__.py",
                  "loralib/layers.py", "loralib/utils.py"]

TEMPLATE = "a photo of a {}."
LORA_ARGS = dict(encoder="both", position="all", params=["q", "k", "v", "o"], r=2, alpha=1,
                 dropout_rate=0.25, backbone="ViT-B/16")
LOGIT_SCALE = 100.0
LORA_SEED = 1  # run_utils.py's default --seed
B_STD = 0.1
B_SEED = 2025
LR = 2e-4
WEIGHT_DECAY = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
ETA_MIN = 1e-6
STEPS = vpt.STEPS  # 20 = T_max (the official total_iters)
BATCH, BATCHES = vpt.BATCH, vpt.BATCHES
PIXEL_SEED = 78
IMAGE = 48


# ---------------------------------------------------------------------------------------------
# The official code, imported from the checkout.

def load_module(name, path, package_dir=None):
    kw = {"submodule_search_locations": [package_dir]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_official(root):
    for f in OFFICIAL_FILES:
        assert os.path.isfile(os.path.join(root, f)), f"{root} is not a CLIP-LoRA checkout ({f})"
    model_py = load_module("clip_lora_official_model", os.path.join(root, "clip", "model.py"))
    tok_py = load_module("clip_lora_official_tokenizer",
                         os.path.join(root, "clip", "simple_tokenizer.py"))
    assert "loralib" not in sys.modules
    lora_dir = os.path.join(root, "loralib")
    loralib = load_module("loralib", os.path.join(lora_dir, "__init__.py"), lora_dir)
    assert os.path.dirname(loralib.layers.__file__) == lora_dir
    return types.SimpleNamespace(model=model_py, tok=tok_py, layers=loralib.layers,
                                 utils=loralib.utils)


def official_commit(root, given):
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"{root}: not a git checkout; pass --official-commit")


def file_hashes(root):
    out = {}
    for f in OFFICIAL_FILES:
        with open(os.path.join(root, f), "rb") as fh:
            out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tokenize(tokenizer, texts):
    """clip/clip.py tokenize: [SOT] + encode(text) + [EOT], 0-padded to 77."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), coop.CTX, dtype=torch.int64)
    for i, t in enumerate(texts):
        ids = [sot] + tokenizer.encode(t) + [eot]
        assert len(ids) <= coop.CTX
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def build(off, state_dict):
    return off.model.build_model(dict(state_dict)).float()


def apply_lora(off, model, dropout_rate):
    """The official apply_lora (its per-block prints suppressed), then the LinearLoRA list."""
    args = types.SimpleNamespace(**{**LORA_ARGS, "dropout_rate": dropout_rate})
    with contextlib.redirect_stdout(io.StringIO()):
        layers = off.utils.apply_lora(args, model)
    assert len(layers) == 4  # 2 text + 2 image blocks
    return [m for m in model.modules() if isinstance(m, off.layers.LinearLoRA)]


def lora_names(off, model):
    return list(off.utils.lora_state_dict(model).keys())


def loss_and_logits(model, token_ids, pixels, labels):
    """run_lora's step (encoder "both"), fp32: text first, then the images."""
    g = model.encode_text(token_ids)
    txt = g / g.norm(dim=-1, keepdim=True)
    f = model.encode_image(pixels)
    img = f / f.norm(dim=-1, keepdim=True)
    logits = LOGIT_SCALE * img @ txt.t()
    return F.cross_entropy(logits, labels), logits, f, g


class Objective(nn.Module):
    """loss as a module so torch.func.functional_call can substitute the factors."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, token_ids, pixels, labels):
        return loss_and_logits(self.clip, token_ids, pixels, labels)[0]


def float64_copy(off, model):
    """A float64 copy. The official LayerNorm runs in float32 (x.type(torch.float32), written for
    fp16): in a float64 model use plain nn.LayerNorm, the same function without the cast."""
    m64 = copy.deepcopy(model).double()
    for m in m64.modules():
        if isinstance(m, off.model.LayerNorm):
            m.__class__ = nn.LayerNorm
    return m64


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of MaxZanella/CLIP-LoRA")
    ap.add_argument("--official-commit", default=None, help="its commit (default: git rev-parse)")
    cli = ap.parse_args()
    root = os.path.abspath(cli.official)
    commit = official_commit(root, cli.official_commit)

    from safetensors.torch import load_file

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; official {OFFICIAL_REPO} @ {commit}")
    off = load_official(root)
    os.makedirs(OUT, exist_ok=True)

    sd = load_file(MODEL)
    plain = build(off, sd)
    ref = load_file(REFERENCE)
    tokenizer = off.tok.SimpleTokenizer()  # the official bpe_simple_vocab_16e6.txt.gz
    ref_texts = ["a photo of a dog.", "a photo of a cat.", "an origami crane, folded from paper",
                 "x"]
    assert torch.equal(tokenize(tokenizer, ref_texts), ref["input_ids"]), "tokenizer"
    with torch.no_grad():
        err_t = rel(plain.encode_text(ref["input_ids"]), ref["text_embeds"])
        err_i = rel(plain.encode_image(ref["pixel_values"]), ref["image_embeds"])
    assert err_t < 1e-5 and err_i < 1e-5, (err_t, err_i)

    texts = [TEMPLATE.format(c.replace("_", " ")) for c in coop.CLASS_NAMES]
    token_ids = tokenize(tokenizer, texts)
    eot_index = token_ids.argmax(dim=-1)
    for row, e in zip(token_ids.tolist(), eot_index.tolist()):
        assert row[0] == coop.SOT and row[e] == coop.EOT and not any(row[e + 1:])
    k = len(texts)
    gen = torch.Generator().manual_seed(PIXEL_SEED)
    pixels = torch.randn(BATCHES * BATCH, 3, IMAGE, IMAGE, generator=gen)
    labels = torch.tensor(vpt.LABELS, dtype=torch.int64)
    assert len(labels) == BATCHES * BATCH and labels.max().item() == k - 1
    x0, y0 = pixels[:BATCH], labels[:BATCH]

    # ---- the LoRA model, official init; dropout 0.25 -> nn.Dropout(0.0) ----------------------
    model = build(off, sd)
    torch.manual_seed(LORA_SEED)
    linears = apply_lora(off, model, LORA_ARGS["dropout_rate"])
    assert len(linears) == 16
    scaling = LORA_ARGS["alpha"] / math.sqrt(LORA_ARGS["r"])
    for m in linears:
        assert isinstance(m.dropout, nn.Dropout) and m.dropout.p == LORA_ARGS["dropout_rate"]
        assert m.scaling == scaling and not m.merged and not m.fan_in_fan_out
        m.dropout = nn.Dropout(0.0)
    names = lora_names(off, model)
    print("LoRA factors (lora_state_dict):", names)
    params = dict(model.named_parameters())
    assert len(names) == 32 and all(n in params for n in names)

    # At B = 0 the model is the frozen CLIP.
    model.train()
    with torch.no_grad():
        for n in names:
            if n.endswith("_lora_B"):
                assert not params[n].any()
            else:
                assert params[n].abs().min() > 0
        lg_plain = loss_and_logits(plain, token_ids, x0, y0)[1]
        lg_b0 = loss_and_logits(model, token_ids, x0, y0)[1]
    b0_diff = (lg_b0 - lg_plain).abs().max().item()
    assert b0_diff < 1e-6, b0_diff

    # B ~ N(0, 0.1), in lora_state_dict order.
    gen = torch.Generator().manual_seed(B_SEED)
    with torch.no_grad():
        for n in names:
            if n.endswith("_lora_B"):
                params[n].copy_(B_STD * torch.randn(params[n].shape, generator=gen))
    init = {n: params[n].detach().clone() for n in names}

    off.utils.mark_only_lora_as_trainable(model)
    lora_params = off.utils.get_lora_parameters(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == names and [id(p) for p in lora_params] == [id(params[n]) for n in names]

    # ---- the first batch: loss, logits, features, gradients ---------------------------------
    model.train()
    loss, logits, f0, g0 = loss_and_logits(model, token_ids, x0, y0)
    grads = dict(zip(names, torch.autograd.grad(loss, lora_params)))
    for n, g in grads.items():
        assert torch.isfinite(g).all() and g.abs().max() > 0, n

    # float32 vs float64 autograd vs central finite differences, over all factors at once.
    m64 = float64_copy(off, model)
    obj64 = Objective(m64)
    x64 = x0.double()
    sizes = [init[n].numel() for n in names]

    def loss_of(flat):
        parts = torch.split(flat, sizes)
        sub = {f"clip.{n}": p.view(init[n].shape) for n, p in zip(names, parts)}
        return torch.func.functional_call(obj64, sub, (token_ids, x64, y0))

    flat0 = torch.cat([init[n].flatten() for n in names])
    with torch.no_grad():
        loss64 = loss_of(flat0.double()).item()
    assert abs(loss64 - loss.item()) < 1e-5 * abs(loss64), (loss64, loss.item())
    check = coop.check_gradient(loss_of, flat0, torch.cat([grads[n].flatten() for n in names]),
                                B_SEED)

    # The trap: dropout_rate=0 (dropout None) -> merge_lora_param / sub_lora_data path.
    trap = build(off, sd)
    torch.manual_seed(LORA_SEED)
    trap_linears = apply_lora(off, trap, 0.0)
    assert all(m.dropout is None for m in trap_linears)
    tparams = dict(trap.named_parameters())
    assert lora_names(off, trap) == names
    with torch.no_grad():
        for n in names:
            tparams[n].copy_(init[n])
    off.utils.mark_only_lora_as_trainable(trap)
    trap.train()
    tloss, tlogits = loss_and_logits(trap, token_ids, x0, y0)[:2]
    tgrads = dict(zip(names, torch.autograd.grad(tloss, [tparams[n] for n in names])))
    trap_logits_diff = (tlogits - logits).abs().max().item()
    print(f"dropout None path: logits max diff {trap_logits_diff:.3e} (max |logit| "
          f"{logits.abs().max().item():.3f}), loss diff {abs(tloss.item() - loss.item()):.3e}")
    assert trap_logits_diff < 1e-6 * logits.abs().max().item(), trap_logits_diff  # same forward
    first = [n for n in names if ".resblocks.0." in n]
    trap_rel = rel(torch.cat([tgrads[n].flatten() for n in first]),
                   torch.cat([grads[n].flatten() for n in first]))
    print("dropout None (merge / sub_lora_data) vs nn.Dropout(0): gradient rel difference")
    for n in names:
        print(f"    {n:58s} {rel(tgrads[n], grads[n]):.3e}")
    print(f"    first-layer factors together: {trap_rel:.3e}")
    assert trap_rel > 1e-6, trap_rel  # ... but other gradients
    # and the frozen weight is no longer a Parameter once that path has run
    w_gone = [n for n in ("transformer.resblocks.0.attn.q_proj.weight",)
              if n not in dict(trap.named_parameters())]
    del trap, tparams, tgrads

    # ---- 20 steps of AdamW with the cosine schedule -----------------------------------------
    opt = torch.optim.AdamW(lora_params, weight_decay=WEIGHT_DECAY, betas=BETAS, lr=LR, eps=EPS)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS, eta_min=ETA_MIN)
    model.train()
    step_losses, lrs = [], []
    for step in range(STEPS):
        b = step % BATCHES
        lrs.append(opt.param_groups[0]["lr"])
        loss_s = loss_and_logits(model, token_ids, pixels[b * BATCH:(b + 1) * BATCH],
                                 labels[b * BATCH:(b + 1) * BATCH])[0]
        opt.zero_grad()
        loss_s.backward()
        opt.step()
        sched.step()
        step_losses.append(loss_s.item())
    assert step_losses[0] == loss.item(), (step_losses[0], loss.item())
    for t, lr in enumerate(lrs):
        want = ETA_MIN + (LR - ETA_MIN) * (1 + math.cos(math.pi * t / STEPS)) / 2
        assert abs(lr - want) <= 1e-12 * LR, (t, lr, want)
    final = {n: params[n].detach().clone() for n in names}
    changes = {n: rel(final[n], init[n]) for n in names}
    change_min, change_max = min(changes.values()), max(changes.values())
    assert change_min > 1e-3, changes

    # ---- eval: the official merge ---------------------------------------------------------
    with torch.no_grad():
        lg_train = loss_and_logits(model, token_ids, x0, y0)[1]
        lg64 = loss_and_logits(float64_copy(off, model), token_ids, x0.double(), y0)[1]
        q0 = model.transformer.resblocks[0].attn.q_proj
        w_before = q0.weight.detach().clone()
        model.eval()
        assert all(m.merged for m in linears)
        merge_err = (q0.weight - w_before - scaling * q0.w_lora_B @ q0.w_lora_A).abs().max().item()
        assert merge_err < 1e-6, merge_err
        _, final_logits, f1, g1 = loss_and_logits(model, token_ids, x0, y0)
    # float32 rounding only: each within ~1e-6 of the logits' scale of the float64 forward
    train_eval_diff = (final_logits - lg_train).abs().max().item()
    scale = lg64.abs().max().item()
    train_f64 = (lg_train.double() - lg64).abs().max().item()
    eval_f64 = (final_logits.double() - lg64).abs().max().item()
    assert train_eval_diff < 1e-6 * scale, (train_eval_diff, scale)
    assert max(train_f64, eval_f64) < 1e-6 * scale, (train_f64, eval_f64, scale)

    tensors = {
        "pixels": pixels.contiguous(),
        "labels": labels.contiguous(),
        "token_ids": token_ids.contiguous(),
        "eot_index": eot_index.to(torch.int64).contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "logits": logits.detach().contiguous(),
        "image_features": f0.detach().contiguous(),
        "text_features": g0.detach().contiguous(),
        "step_losses": torch.tensor(step_losses, dtype=torch.float32),
        "lrs": torch.tensor(lrs, dtype=torch.float32),
        "final_logits": final_logits.contiguous(),
        "final_image_features": f1.contiguous(),
        "final_text_features": g1.contiguous(),
    }
    for n in names:
        tensors[f"init.{n}"] = init[n].contiguous()
        tensors[f"grad.{n}"] = grads[n].contiguous()
        tensors[f"final.{n}"] = final[n].contiguous()
    for key, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), key
    meta = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_files_sha256": json.dumps(file_hashes(root), sort_keys=True),
        "torch_version": torch.__version__,
        "class_names": json.dumps(coop.CLASS_NAMES),
        "template": TEMPLATE,
        "prompt_texts": json.dumps(texts),
        "encoder": LORA_ARGS["encoder"],
        "position": LORA_ARGS["position"],
        "params": json.dumps(LORA_ARGS["params"]),
        "r": str(LORA_ARGS["r"]),
        "alpha": str(LORA_ARGS["alpha"]),
        "scaling": repr(scaling),
        "lora_names": json.dumps(names),
        "logit_scale": repr(LOGIT_SCALE),
        "a_init": f"official kaiming_uniform_(a=sqrt(5)), torch.manual_seed({LORA_SEED}) "
                  "right before apply_lora",
        "b_init": f"N(0, {B_STD}) from torch.Generator().manual_seed({B_SEED}), in lora_names "
                  "order (official: zeros)",
        "dropout": f"official dropout_rate {LORA_ARGS['dropout_rate']} replaced by "
                   "nn.Dropout(0.0) in every LinearLoRA (not dropout_rate=0, whose "
                   "merge/sub_lora_data path gives wrong gradients)",
        "lr": repr(LR),
        "weight_decay": repr(WEIGHT_DECAY),
        "betas": json.dumps(list(BETAS)),
        "eps": repr(EPS),
        "eta_min": repr(ETA_MIN),
        "t_max": str(STEPS),
        "steps": str(STEPS),
        "batch": str(BATCH),
        "batches": str(BATCHES),
        "pixel_seed": str(PIXEL_SEED),
        "lrs": json.dumps(lrs),
        "check_b0_logits_max_diff": f"{b0_diff:.3e}",
        "check_grad_rel_f32_f64": f"{check[0]:.3e}",
        "check_fd_rel_coords": f"{check[1]:.3e}",
        "check_fd_rel_direction": f"{check[2]:.3e}",
        "check_dropout_none_first_layer_grad_rel": f"{trap_rel:.3e}",
        "check_train_eval_logits_max_diff": f"{train_eval_diff:.3e}",
        "check_final_logits_vs_f64_max_diff": f"train {train_f64:.3e}, eval {eval_f64:.3e} "
                                              f"(max |logit| {scale:.3f})",
        "factor_change_min": f"{change_min:.3e}",
        "factor_change_max": f"{change_max:.3e}",
    }
    path = os.path.join(OUT, "lora.safetensors")
    coop.save(tensors, meta, path)
    print(f"reference-openai: text rel {err_t:.2e}, image rel {err_i:.2e}; B=0 logits "
          f"{b0_diff:.2e}; loss {loss.item():.6f} (f64 {loss64:.6f}), last step "
          f"{step_losses[-1]:.6f}; grad f32/f64 {check[0]:.2e}, fd coords {check[1]:.2e}, "
          f"fd direction {check[2]:.2e}; dropout-None first-layer grad rel {trap_rel:.2e} "
          f"(weight no longer a Parameter: {bool(w_gone)}); train/eval logits "
          f"{train_eval_diff:.2e} (vs f64: train {train_f64:.2e}, eval {eval_f64:.2e}, max "
          f"|logit| {scale:.2f}); merge {merge_err:.2e}; factor change {change_min:.2e}.."
          f"{change_max:.2e}")


if __name__ == "__main__":
    main()
