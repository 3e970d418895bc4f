"""Reference fixture for VPT-deep on CLIP (Jia et al., "Visual Prompt Tuning", ECCV 2022, as the
prompt-learning papers run it: muzairkhattak/multimodal-prompt-learning, trainers/vpt.py and
clip/model.py). Computed by PyTorch on the tiny transformers CLIP in fixtures/tiny-clip-hf/.

The official image tower, re-implemented here on transformers' CLIP modules (the official code
runs OpenAI's module tree; the arithmetic is the same block for block):

    x = embeddings(pixels)                       class token + patches, with positions (B, 17, 32)
    x = cat[x, VPT.expand(B, -1, -1)]            the input prompts after the patches (B, 17 + n, 32)
    x = ln_pre(x)
    for i, block in enumerate(blocks):
        if 0 < i < depth:                        ResidualAttentionBlock_IVLP, add_prompt
            x = cat[x[:, :T - n], VPT_shallow_i.expand(B, -1, -1)]   the last n positions replaced
        x = block(x)
    f = visual_projection(ln_post(x[:, 0]))

The text side is the frozen hand-made prompt "a photo of a {}." (get_text_features), and
logits = exp(logit_scale) normalize(f) normalize(text).T, loss = cross_entropy(logits, labels).

Recorded (fixtures/vpt/deep.safetensors): the prompts P_0 (VPT) and P_1 (the block 1
VPT_shallow), N(0, 0.02) from a seeded generator, n = 2, depth 2 (every block of the tiny tower);
the first batch's pixels, labels, image features, logits, loss and both prompts' gradients; then
20 steps of torch.optim.SGD (lr 0.0025, the official VPT config's; momentum 0.9, weight decay 5e-4,
Dassl's) over 5 batches of 4 images taken in turn, with every step's loss and the final prompts.

Checks: the float32 gradients agree with a float64 autograd gradient (float64 model) and that with
central finite differences (coordinates and a random direction); deep prompts change the features
(the replaced positions are read); the prompts move in the 20 steps. Sorted metadata
(byte-reproducible).

Usage (from the repo root):  python3 scripts/make_vpt_fixture.py
Needs: torch, transformers, safetensors (as make_coop_fixture.py). CPU only, deterministic.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402  (load, tokenize, text_features_ref, save, ...)

OUT = os.path.join(coop.ROOT, "fixtures", "vpt")
TEMPLATE = "a photo of a {}."
N_CTX = 2
DEPTH = 2
INIT_STD = 0.02
PROMPT_SEED = 2023
PIXEL_SEED = 77
BATCH = 4
BATCHES = 5
STEPS = 20
LR = 0.0025
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABELS = [0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1, 3, 2, 1, 0, 0, 0, 1, 1]


def layer_out(out):
    return out[0] if isinstance(out, tuple) else out


def image_features(model, pixels, prompts):
    """The official VPT-deep image tower: prompts[0] at the input, prompts[i] at block i."""
    vm = model.vision_model
    x = vm.embeddings(pixels)
    b = x.shape[0]
    n = prompts[0].shape[0]
    x = torch.cat([x, prompts[0].unsqueeze(0).expand(b, -1, -1)], dim=1)
    x = vm.pre_layrnorm(x)
    for i, block in enumerate(vm.encoder.layers):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, : x.shape[1] - n], prompts[i].unsqueeze(0).expand(b, -1, -1)],
                          dim=1)
        x = layer_out(block(x, None))
    return model.visual_projection(vm.post_layernorm(x[:, 0, :]))


def class_text_features(tok, model):
    texts = [TEMPLATE.format(c.replace("_", " ")) for c in coop.CLASS_NAMES]
    ids = torch.stack([coop.tokenize(tok, t) for t in texts])
    with torch.no_grad():
        return texts, coop.text_features_ref(model, ids)


def loss_and_logits(model, text, pixels, labels, prompts):
    f = image_features(model, pixels, prompts)
    img = f / f.norm(dim=-1, keepdim=True)
    txt = text / text.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.t()
    return torch.nn.functional.cross_entropy(logits, labels), logits, f


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = coop.load()
    vc = model.vision_model.config
    assert vc.num_hidden_layers == DEPTH, "depth 2 is every block of the tiny tower"
    d, s = vc.hidden_size, vc.image_size
    texts, text = class_text_features(tok, model)

    gen = torch.Generator().manual_seed(PROMPT_SEED)
    prompts0 = [INIT_STD * torch.randn(N_CTX, d, generator=gen) for _ in range(DEPTH)]
    pgen = torch.Generator().manual_seed(PIXEL_SEED)
    pixels = torch.randn(BATCHES * BATCH, 3, s, s, generator=pgen)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    assert len(LABELS) == BATCHES * BATCH

    # The first batch: loss, logits and gradients.
    x0, y0 = pixels[:BATCH], labels[:BATCH]
    params = [p.clone().requires_grad_(True) for p in prompts0]
    loss, logits, feats = loss_and_logits(model, text, x0, y0, params)
    grads = torch.autograd.grad(loss, params)
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().max() > 0

    # The deep prompt is read: replacing it changes the features.
    with torch.no_grad():
        # (a random change: a constant one would vanish in ln_1)
        other = [prompts0[0], prompts0[1] + 0.1 * torch.randn(N_CTX, d, generator=gen)]
        moved = (image_features(model, x0, other) - feats).abs().max().item()
    assert moved > 1e-4, moved

    # float32 vs float64 autograd vs central finite differences, on the stacked prompts.
    m64 = coop.model_float64(model)
    _, text64 = class_text_features(tok, m64)
    x64 = x0.double()

    def loss_of(stacked):
        return loss_and_logits(m64, text64, x64, y0, list(stacked.unbind(0)))[0]

    check = coop.check_gradient(loss_of, torch.stack(prompts0), torch.stack(grads), PROMPT_SEED)

    # 20 SGD steps over the batches in turn.
    params = [p.clone().requires_grad_(True) for p in prompts0]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    step_losses = []
    for step in range(STEPS):
        k = step % BATCHES
        xb, yb = pixels[k * BATCH:(k + 1) * BATCH], labels[k * BATCH:(k + 1) * BATCH]
        opt.zero_grad()
        loss_s, _, _ = loss_and_logits(model, text, xb, yb, params)
        loss_s.backward()
        opt.step()
        step_losses.append(loss_s.item())
    final = [p.detach() for p in params]
    change = max(((f - p).norm() / p.norm()).item() for f, p in zip(final, prompts0))
    assert change > 1e-2, f"the prompts hardly moved in {STEPS} steps: {change}"

    tensors = {
        "prompt_0": prompts0[0].contiguous(),
        "prompt_1": prompts0[1].contiguous(),
        "pixels": pixels.contiguous(),
        "labels": labels.contiguous(),
        "image_features": feats.detach().contiguous(),
        "text_features": text.contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "grad_prompt_0": grads[0].contiguous(),
        "grad_prompt_1": grads[1].contiguous(),
        "step_losses": torch.tensor(step_losses, dtype=torch.float32),
        "final_prompt_0": final[0].contiguous(),
        "final_prompt_1": final[1].contiguous(),
    }
    meta = {
        "class_names": json.dumps(coop.CLASS_NAMES),
        "template": TEMPLATE,
        "template_texts": json.dumps(texts),
        "n_ctx": str(N_CTX),
        "depth": str(DEPTH),
        "init": f"{INIT_STD} * randn (seed {PROMPT_SEED})",
        "batch": str(BATCH),
        "steps": str(STEPS),
        "lr": repr(LR),
        "momentum": repr(MOMENTUM),
        "weight_decay": repr(WEIGHT_DECAY),
        "check_grad_rel_f32_f64": f"{check[0]:.3e}",
        "check_fd_rel_direction": f"{check[2]:.3e}",
        "prompt_change": f"{change:.3e}",
    }
    path = os.path.join(OUT, "deep.safetensors")
    coop.save(tensors, meta, path)
    print(f"wrote {path}: loss {loss.item():.6f}, final step loss {step_losses[-1]:.6f}, "
          f"prompt change {change:.3e}, grad f32/f64 {check[0]:.2e}, fd {check[2]:.2e}")


if __name__ == "__main__":
    main()
