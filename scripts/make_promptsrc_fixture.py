"""Reference fixture for PromptSRC (Khattak et al., "Self-regulating Prompts: Foundational Model
Adaptation without Forgetting", ICCV 2023; muzairkhattak/PromptSRC, trainers/promptsrc.py:
VLPromptLearner, CustomCLIP.forward, PromptSRC.forward_backward and its Gaussian prompt
aggregation). Computed by PyTorch on the tiny transformers CLIP in fixtures/tiny-clip-hf/.

The official step, re-implemented on transformers' CLIP modules (the prompted towers are
scripts/make_ivlp_fixture.py's):

  fixed   = mean over the 60 IMAGENET_TEMPLATES of get_text_features(template(name)), unnormalised,
            then normalised                                                        (K, E)
  zs_img  = normalize(get_image_features(x))        the unprompted tower           (B, E)
  zs_logits = exp(logit_scale) zs_img @ fixed.T
  image, text = normalize(prompted f(x)), normalize(prompted g(t))
  logits  = exp(logit_scale) image @ text.T
  loss    = CE(logits, y) + 25 l1_loss(text, fixed) + 10 l1_loss(image, zs_img)
            + kl_div(log_softmax(logits), log_softmax(zs_logits), 'sum', log_target=True) / numel
  GPA     after epoch e of N: sum += g(e) * prompts, g the Gaussian (mean, std) over 1..N
            normalised to sum 1 (`get_gauss`, `gauss[step_counter - 2]`)

4 + 4 tokens (all four words of "a photo of a" learned), depth 2 in both towers, deep and image
prompts N(0, 0.02) seeded. Recorded (fixtures/promptsrc/deep.safetensors): the prompts; the first
batch's frozen text and image features, logits, zero-shot logits, the loss and its four terms, and
every prompt's gradient; then 3 epochs of 5 steps of torch.optim.SGD (lr 0.0025, momentum 0.9,
weight decay 5e-4) over 5 batches of 4 in turn with GPA (mean 2, std 1 over the 3 epochs): the
step losses, the last prompts and the aggregated ones.

Checks: float32 gradients agree with float64 autograd and that with central finite differences;
each regulariser has a gradient of its own; the aggregate differs from the last epoch's prompts.

Usage (from the repo root):  python3 scripts/make_promptsrc_fixture.py
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402
import make_ivlp_fixture as ivlp  # noqa: E402
import make_vpt_fixture as vpt  # noqa: E402

OUT = os.path.join(coop.ROOT, "fixtures", "promptsrc")
N_CTX = 4
DEPTH = 2
INIT_STD = 0.02
SEED = 2026
LR = 0.0025
TEXT_W, IMAGE_W = 25.0, 10.0
EPOCHS, GPA_MEAN, GPA_STD = 3, 2.0, 1.0
IMAGENET_TEMPLATES_URL = "muzairkhattak/PromptSRC trainers/imagenet_templates.py"


def imagenet_templates():
    """The 60 templates, as the core holds them (checked against the official list's length)."""
    path = os.path.join(coop.ROOT, "crates", "promptclip-core", "src", "methods", "promptsrc.rs")
    src = open(path).read()
    block = src[src.index("pub const IMAGENET_TEMPLATES"):]
    block = block[:block.index("];")]
    t = [line.strip()[1:-2] for line in block.splitlines()[1:] if line.strip().startswith('"')]
    assert len(t) == 60 and t[0] == "a photo of a {}." and t[-1] == "itap of the {}.", len(t)
    return t


def gauss(n, mu, sigma):
    g = np.array([(1 / (sigma * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((a - mu) / sigma) ** 2)
                  for a in range(1, n + 1)])
    return g / sum(g)


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = coop.load()
    d_t = model.text_model.config.hidden_size
    d_v, s = model.vision_model.config.hidden_size, model.vision_model.config.image_size
    ivlp.N_CTX = N_CTX  # the prompted text encoder's token count
    texts, ids, emb = ivlp.prompt_setup(tok, model)
    names = [c.replace("_", " ") for c in coop.CLASS_NAMES]
    templates = imagenet_templates()
    with torch.no_grad():
        feats = [coop.text_features_ref(model, torch.stack([coop.tokenize(tok, t.replace("{}", n))
                                                            for n in names]))
                 for t in templates]
        fixed = torch.stack(feats, 1).mean(1)
        fixed = fixed / fixed.norm(dim=-1, keepdim=True)

    gen = torch.Generator().manual_seed(SEED)
    ctx0 = emb[0, 1:1 + N_CTX].clone()
    deep0 = [INIT_STD * torch.randn(N_CTX, d_t, generator=gen) for _ in range(DEPTH - 1)]
    vis0 = [INIT_STD * torch.randn(N_CTX, d_v, generator=gen) for _ in range(DEPTH)]
    params0 = [ctx0] + deep0 + vis0
    pnames = ["ctx"] + [f"text_prompt_{i}" for i in range(1, DEPTH)] + \
        [f"vision_prompt_{i}" for i in range(DEPTH)]

    pgen = torch.Generator().manual_seed(vpt.PIXEL_SEED)
    pixels = torch.randn(vpt.BATCHES * vpt.BATCH, 3, s, s, generator=pgen)
    labels = torch.tensor(vpt.LABELS, dtype=torch.int64)
    b = vpt.BATCH

    def terms(m, x, y, params, fixed_t, weights=(TEXT_W, IMAGE_W, 1.0)):
        ctx, deep, vis = params[0], params[1:DEPTH], params[DEPTH:]
        g = ivlp.text_features(m, emb.to(x.dtype), ids, ctx, deep)
        f = vpt.image_features(m, x, vis)
        image = f / f.norm(dim=-1, keepdim=True)
        text = g / g.norm(dim=-1, keepdim=True)
        scale = m.logit_scale.exp()
        logits = scale * image @ text.t()
        with torch.no_grad():
            zf = m.get_image_features(pixel_values=x)
            zf = zf if torch.is_tensor(zf) else zf.pooler_output
            zs = zf / zf.norm(dim=-1, keepdim=True)
            zs_logits = scale * zs @ fixed_t.t()
        ce = F.cross_entropy(logits, y)
        l_text = F.l1_loss(text, fixed_t, reduction="mean") * weights[0]
        l_image = F.l1_loss(image, zs, reduction="mean") * weights[1]
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1),
                      reduction="sum", log_target=True) / logits.numel() * weights[2]
        return ce, l_text, l_image, kl, logits, zs, zs_logits

    def loss_of_terms(t):
        return t[0] + t[3] + t[1] + t[2]

    x0, y0 = pixels[:b], labels[:b]
    params = [p.clone().requires_grad_(True) for p in params0]
    t0 = terms(model, x0, y0, params, fixed)
    loss = loss_of_terms(t0)
    grads = torch.autograd.grad(loss, params)
    for gr in grads:
        assert torch.isfinite(gr).all() and gr.abs().max() > 0
    # Each regulariser pulls on the prompts.
    for k in (1, 2, 3):
        p2 = [p.clone().requires_grad_(True) for p in params0]
        gk = torch.autograd.grad(terms(model, x0, y0, p2, fixed)[k], p2, allow_unused=True)
        assert max(g.abs().max().item() for g in gk if g is not None) > 0, k

    m64 = coop.model_float64(model)
    with torch.no_grad():
        f64 = torch.stack([coop.text_features_ref(m64, torch.stack(
            [coop.tokenize(tok, t.replace("{}", n)) for n in names])) for t in templates], 1).mean(1)
        f64 = f64 / f64.norm(dim=-1, keepdim=True)
    sizes = [p.numel() for p in params0]
    x64 = x0.double()

    def loss_of(flat):
        ps = [p.view_as(q) for p, q in zip(torch.split(flat, sizes), params0)]
        return loss_of_terms(terms(m64, x64, y0, ps, f64))

    check = coop.check_gradient(loss_of, torch.cat([p.flatten() for p in params0]),
                                torch.cat([gr.flatten() for gr in grads]), SEED)

    # 3 epochs of 5 steps with GPA.
    weights = gauss(EPOCHS, GPA_MEAN, GPA_STD)
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.SGD(params, lr=LR, momentum=vpt.MOMENTUM, weight_decay=vpt.WEIGHT_DECAY)
    step_losses, gpa = [], None
    for epoch in range(EPOCHS):
        for k in range(vpt.BATCHES):
            opt.zero_grad()
            ls = loss_of_terms(terms(model, pixels[k * b:(k + 1) * b], labels[k * b:(k + 1) * b],
                                     params, fixed))
            ls.backward()
            opt.step()
            step_losses.append(ls.item())
        w = float(weights[epoch])
        weighted = [p.detach().clone() * w for p in params]
        gpa = weighted if gpa is None else [a + c for a, c in zip(weighted, gpa)]
    diff = max(((a - p.detach()).norm() / p.norm()).item() for a, p in zip(gpa, params))
    assert diff > 1e-4, diff

    ce, l_text, l_image, kl, logits, zs, zs_logits = t0
    tensors = {
        "pixels": pixels.contiguous(),
        "labels": labels.contiguous(),
        "frozen_text": fixed.contiguous(),
        "frozen_image": zs.contiguous(),
        "logits": logits.detach().contiguous(),
        "zero_shot_logits": zs_logits.contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "loss_ce": ce.detach().reshape(()).contiguous(),
        "loss_text": l_text.detach().reshape(()).contiguous(),
        "loss_image": l_image.detach().reshape(()).contiguous(),
        "loss_kl": kl.detach().reshape(()).contiguous(),
        "step_losses": torch.tensor(step_losses, dtype=torch.float32),
        "gpa_weights": torch.tensor(weights, dtype=torch.float64),
    }
    for name, p0, gr, p, a in zip(pnames, params0, grads, params, gpa):
        tensors[name] = p0.contiguous()
        tensors[f"grad_{name}"] = gr.contiguous()
        tensors[f"final_{name}"] = p.detach().contiguous()
        tensors[f"gpa_{name}"] = a.contiguous()
    meta = {
        "class_names": json.dumps(coop.CLASS_NAMES),
        "prompt_texts": json.dumps(texts),
        "ctx_init": ivlp.CTX_INIT,
        "n_ctx": str(N_CTX),
        "depth": str(DEPTH),
        "templates": f"the 60 IMAGENET_TEMPLATES of {IMAGENET_TEMPLATES_URL}",
        "init": f"{INIT_STD} * randn (seed {SEED}): text_prompt_1, vision_prompt_0, _1",
        "batch": str(b),
        "epochs": str(EPOCHS),
        "steps_per_epoch": str(vpt.BATCHES),
        "gpa_mean": repr(GPA_MEAN),
        "gpa_std": repr(GPA_STD),
        "lr": repr(LR),
        "momentum": repr(vpt.MOMENTUM),
        "weight_decay": repr(vpt.WEIGHT_DECAY),
        "text_loss_weight": repr(TEXT_W),
        "image_loss_weight": repr(IMAGE_W),
        "check_grad_rel_f32_f64": f"{check[0]:.3e}",
        "check_fd_rel_direction": f"{check[2]:.3e}",
        "gpa_vs_last": f"{diff:.3e}",
    }
    path = os.path.join(OUT, "deep.safetensors")
    coop.save(tensors, meta, path)
    print(f"wrote {path}: loss {loss.item():.6f} (ce {ce.item():.4f}, text {l_text.item():.4f}, "
          f"image {l_image.item():.4f}, kl {kl.item():.5f}), grad f32/f64 {check[0]:.2e}, "
          f"fd {check[2]:.2e}, gpa vs last {diff:.2e}")


if __name__ == "__main__":
    main()
