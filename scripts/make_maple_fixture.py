"""Reference fixture for MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023;
muzairkhattak/multimodal-prompt-learning, trainers/maple.py: MultiModalPromptLearner, CustomCLIP;
clip/model.py: the towers with compound prompts). Computed by PyTorch on the tiny transformers CLIP
in fixtures/tiny-clip-hf/.

The official learner, re-implemented on transformers' CLIP modules:

  ctx = token_embedding("a photo of a")[1:1 + n]                   (n, d_t), learned
  compound_prompts_text[i]  (n, d_t), N(0, 0.02), i = 0 .. depth - 2 (blocks 1 .. depth - 1)
  proj = nn.Linear(d_t, d_v); compound_prompt_projections = deep copies of one nn.Linear(d_t, d_v)
  shared_ctx = proj(ctx); visual_deep[i] = compound_prompt_projections[i](compound_prompts_text[i])
  text:  scripts/make_ivlp_fixture.py's encoder with ctx and the compound text prompts
  image: scripts/make_vpt_fixture.py's tower with shared_ctx at the input and visual_deep
  logits = exp(logit_scale) normalize(f) normalize(g).T, loss = cross_entropy

n = 2, depth 2 (every block of the tiny model). Recorded (fixtures/maple/deep.safetensors): every
parameter (ctx, text_prompt_1, coupling_{0,1}_{weight,bias}), the first batch's features, logits,
loss and every parameter's gradient, then 20 torch.optim.SGD steps (lr 0.0035, MaPLe's config;
momentum 0.9, weight decay 5e-4) over 5 batches of 4 in turn: the step losses and final values.

Checks: float32 gradients agree with float64 autograd and that with central finite differences;
the text prompt's gradient flows through both towers (it differs from its text-only part); the
parameters move. (At depth 2 there is one deep coupling, the clone.) Sorted metadata.

Usage (from the repo root):  python3 scripts/make_maple_fixture.py
"""

import copy
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402
import make_ivlp_fixture as ivlp  # noqa: E402  (the official text encoder with deep prompts)
import make_vpt_fixture as vpt  # noqa: E402  (the official image tower with prompts)

OUT = os.path.join(coop.ROOT, "fixtures", "maple")
N_CTX = 2
DEPTH = 2
INIT_STD = 0.02
SEED = 2025
LR = 0.0035
NAMES = ["ctx", "text_prompt_1", "coupling_0_weight", "coupling_0_bias", "coupling_1_weight",
         "coupling_1_bias"]


def forward(model, emb, ids, pixels, labels, params, text_only=False):
    ctx, t1, w0, b0, w1, b1 = params
    g = ivlp.text_features(model, emb, ids, ctx, [t1])
    shared_ctx = ctx @ w0.t() + b0
    visual_deep = [t1 @ w1.t() + b1]
    if text_only:
        shared_ctx, visual_deep = shared_ctx.detach(), [v.detach() for v in visual_deep]
    f = vpt.image_features(model, pixels, [shared_ctx] + visual_deep)
    img = f / f.norm(dim=-1, keepdim=True)
    txt = g / g.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.t()
    return torch.nn.functional.cross_entropy(logits, labels), logits, f, g


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = coop.load()
    d_t = model.text_model.config.hidden_size
    d_v, s = model.vision_model.config.hidden_size, model.vision_model.config.image_size
    texts, ids, emb = ivlp.prompt_setup(tok, model)
    assert ivlp.N_CTX == N_CTX and ivlp.DEPTH == DEPTH

    torch.manual_seed(SEED)
    ctx0 = emb[0, 1:1 + N_CTX].clone()
    t1 = torch.empty(N_CTX, d_t)
    torch.nn.init.normal_(t1, std=INIT_STD)
    proj = torch.nn.Linear(d_t, d_v)
    single = torch.nn.Linear(d_t, d_v)
    clones = [copy.deepcopy(single) for _ in range(DEPTH - 1)]
    params0 = [ctx0, t1, proj.weight.detach().clone(), proj.bias.detach().clone(),
               clones[0].weight.detach().clone(), clones[0].bias.detach().clone()]

    pgen = torch.Generator().manual_seed(vpt.PIXEL_SEED)
    pixels = torch.randn(vpt.BATCHES * vpt.BATCH, 3, s, s, generator=pgen)
    labels = torch.tensor(vpt.LABELS, dtype=torch.int64)
    b = vpt.BATCH
    x0, y0 = pixels[:b], labels[:b]

    params = [p.clone().requires_grad_(True) for p in params0]
    loss, logits, f, g = forward(model, emb, ids, x0, y0, params)
    grads = torch.autograd.grad(loss, params)
    for gr in grads:
        assert torch.isfinite(gr).all() and gr.abs().max() > 0
    # The text prompt learns through both towers.
    p2 = [p.clone().requires_grad_(True) for p in params0]
    (g_text_only,) = torch.autograd.grad(forward(model, emb, ids, x0, y0, p2, True)[0], p2[1])
    both = ((grads[1] - g_text_only).norm() / grads[1].norm()).item()
    assert both > 1e-3, both

    m64 = coop.model_float64(model)
    emb64, x64 = emb.double(), x0.double()
    sizes = [p.numel() for p in params0]

    def loss_of(flat):
        ps = [p.view_as(q) for p, q in zip(torch.split(flat, sizes), params0)]
        return forward(m64, emb64, ids, x64, y0, ps)[0]

    check = coop.check_gradient(loss_of, torch.cat([p.flatten() for p in params0]),
                                torch.cat([gr.flatten() for gr in grads]), SEED)

    params = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.SGD(params, lr=LR, momentum=vpt.MOMENTUM, weight_decay=vpt.WEIGHT_DECAY)
    step_losses = []
    for step in range(vpt.STEPS):
        k = step % vpt.BATCHES
        opt.zero_grad()
        loss_s = forward(model, emb, ids, pixels[k * b:(k + 1) * b], labels[k * b:(k + 1) * b],
                         params)[0]
        loss_s.backward()
        opt.step()
        step_losses.append(loss_s.item())
    change = max(((q.detach() - p).norm() / p.norm()).item() for q, p in zip(params, params0))
    assert change > 1e-2, change

    tensors = {
        "pixels": pixels.contiguous(),
        "labels": labels.contiguous(),
        "image_features": f.detach().contiguous(),
        "text_features": g.detach().contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "step_losses": torch.tensor(step_losses, dtype=torch.float32),
    }
    for name, p0, gr, p in zip(NAMES, params0, grads, params):
        tensors[name] = p0.contiguous()
        tensors[f"grad_{name}"] = gr.contiguous()
        tensors[f"final_{name}"] = p.detach().contiguous()
    meta = {
        "class_names": json.dumps(coop.CLASS_NAMES),
        "prompt_texts": json.dumps(texts),
        "ctx_init": ivlp.CTX_INIT,
        "n_ctx": str(N_CTX),
        "depth": str(DEPTH),
        "init": f"torch.manual_seed({SEED}): text_prompt_1 N(0, {INIT_STD}), then the two Linears",
        "batch": str(b),
        "steps": str(vpt.STEPS),
        "lr": repr(LR),
        "momentum": repr(vpt.MOMENTUM),
        "weight_decay": repr(vpt.WEIGHT_DECAY),
        "check_grad_rel_f32_f64": f"{check[0]:.3e}",
        "check_fd_rel_direction": f"{check[2]:.3e}",
        "text_prompt_grad_share_through_the_image_tower": f"{both:.3e}",
        "prompt_change": f"{change:.3e}",
    }
    path = os.path.join(OUT, "deep.safetensors")
    coop.save(tensors, meta, path)
    print(f"wrote {path}: loss {loss.item():.6f}, last step {step_losses[-1]:.6f}, "
          f"change {change:.3e}, grad f32/f64 {check[0]:.2e}, fd {check[2]:.2e}, "
          f"through the image tower {both:.2e}")


if __name__ == "__main__":
    main()
