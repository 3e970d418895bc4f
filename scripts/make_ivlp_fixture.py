"""Reference fixture for IVLP, independent vision-language prompting (the baseline of Khattak et
al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023; muzairkhattak/multimodal-prompt-learning,
trainers/independentVL.py and clip/model.py). Computed by PyTorch on the tiny transformers CLIP in
fixtures/tiny-clip-hf/.

The official towers, re-implemented on transformers' CLIP modules:

  text   ctx = token_embedding("a photo of a")[1:1 + n]          the first n of the init words
         prompt_k = cat[SOS, ctx, embedding("of a {name}." ...)]   "[V1 V2] of a {name}." (K, 77, d)
         h = prompt + positions; for block i: if 0 < i < depth_text:
             h = cat[h[:, :1], T_i, h[:, 1 + n:]]                  (ResidualAttentionBlock_IVLP)
         g_k = text_projection(ln_final(h)[k, eot_k])
  image  as scripts/make_vpt_fixture.py (VPT at the input, VPT_shallow_i at block i)
  logits = exp(logit_scale) normalize(f) normalize(g).T, loss = cross_entropy

n = 2 text and 2 image tokens, depth 2 in both towers (every block of the tiny model), deep text and
image prompts N(0, 0.02) from a seeded generator. Recorded (fixtures/ivlp/deep.safetensors): the
prompts, the first batch's pixels, labels, features, logits, loss and every prompt's gradient;
then 20 torch.optim.SGD steps (lr 0.0035, IVLP's 2+2ctx config; momentum 0.9, weight decay 5e-4)
over 5 batches of 4 taken in turn: every step's loss and the final prompts.

Checks: the text side at the init with no deep prompt equals get_text_features of "a photo of a
{name}." (the encoder path); float32 gradients agree with float64 autograd and that with central
finite differences; the deep text prompt is read; the prompts move. Sorted metadata.

Usage (from the repo root):  python3 scripts/make_ivlp_fixture.py
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402
import make_vpt_fixture as vpt  # noqa: E402  (the official image tower with prompts)

OUT = os.path.join(coop.ROOT, "fixtures", "ivlp")
CTX_INIT = "a photo of a"
N_CTX = 2
DEPTH = 2
INIT_STD = 0.02
PROMPT_SEED = 2024
LR = 0.0035


def prompt_setup(tok, model):
    texts = [f"{CTX_INIT} {c.replace('_', ' ')}." for c in coop.CLASS_NAMES]
    ids = torch.stack([coop.tokenize(tok, t) for t in texts])
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(ids)
    return texts, ids, emb


def text_features(model, emb, ids, ctx, deep):
    """The official IVLP text encoder on the prompts with `ctx` and deep prompts `deep`."""
    tm = model.text_model
    k, length, _ = emb.shape
    prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(k, -1, -1), emb[:, 1 + N_CTX:]], 1)
    h = tm.embeddings(inputs_embeds=prompts)
    mask = coop.causal_mask(k, length, h.dtype)
    for i, block in enumerate(tm.encoder.layers):
        if 0 < i < len(deep) + 1:
            h = torch.cat([h[:, :1], deep[i - 1].unsqueeze(0).expand(k, -1, -1),
                           h[:, 1 + N_CTX:]], 1)
        h = vpt.layer_out(block(h, mask))
    h = tm.final_layer_norm(h)
    return model.text_projection(h[torch.arange(k), ids.argmax(dim=-1)])


def loss_and_logits(model, emb, ids, pixels, labels, params):
    ctx, text_deep, vision = params[0], params[1:DEPTH], params[DEPTH:]
    g = text_features(model, emb, ids, ctx, text_deep)
    f = vpt.image_features(model, pixels, vision)
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
    assert model.text_model.config.num_hidden_layers == DEPTH
    assert model.vision_model.config.num_hidden_layers == DEPTH
    d_t = model.text_model.config.hidden_size
    d_v, s = model.vision_model.config.hidden_size, model.vision_model.config.image_size
    texts, ids, emb = prompt_setup(tok, model)
    ctx0 = emb[0, 1:1 + N_CTX].clone()

    # At the init with no deep prompt, the prompts are the words: get_text_features of the texts.
    with torch.no_grad():
        plain = text_features(model, emb, ids, ctx0, [])
        ref = coop.text_features_ref(model, ids)
    err = (plain - ref).abs().max().item()
    assert err < 1e-5, f"encoder path vs get_text_features: {err}"

    gen = torch.Generator().manual_seed(PROMPT_SEED)
    text_deep0 = [INIT_STD * torch.randn(N_CTX, d_t, generator=gen) for _ in range(DEPTH - 1)]
    vision0 = [INIT_STD * torch.randn(N_CTX, d_v, generator=gen) for _ in range(DEPTH)]
    params0 = [ctx0] + text_deep0 + vision0
    names = ["ctx"] + [f"text_prompt_{i}" for i in range(1, DEPTH)] + \
        [f"vision_prompt_{i}" for i in range(DEPTH)]
    pgen = torch.Generator().manual_seed(vpt.PIXEL_SEED)
    pixels = torch.randn(vpt.BATCHES * vpt.BATCH, 3, s, s, generator=pgen)
    labels = torch.tensor(vpt.LABELS, dtype=torch.int64)
    b = vpt.BATCH
    x0, y0 = pixels[:b], labels[:b]

    params = [p.clone().requires_grad_(True) for p in params0]
    loss, logits, f, g = loss_and_logits(model, emb, ids, x0, y0, params)
    grads = torch.autograd.grad(loss, params)
    for gr in grads:
        assert torch.isfinite(gr).all() and gr.abs().max() > 0

    with torch.no_grad():
        moved = (text_features(model, emb, ids, ctx0,
                               [text_deep0[0] + 0.1 * torch.randn(N_CTX, d_t, generator=gen)])
                 - text_features(model, emb, ids, ctx0, text_deep0)).abs().max().item()
    assert moved > 1e-4, moved

    m64 = coop.model_float64(model)
    emb64 = emb.double()
    x64 = x0.double()
    sizes = [p.numel() for p in params0]

    def loss_of(flat):
        parts = list(torch.split(flat, sizes))
        ps = [p.view_as(q) for p, q in zip(parts, params0)]
        return loss_and_logits(m64, emb64, ids, x64, y0, ps)[0]

    check = coop.check_gradient(loss_of, torch.cat([p.flatten() for p in params0]),
                                torch.cat([gr.flatten() for gr in grads]), PROMPT_SEED)

    params = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.SGD(params, lr=LR, momentum=vpt.MOMENTUM, weight_decay=vpt.WEIGHT_DECAY)
    step_losses = []
    for step in range(vpt.STEPS):
        k = step % vpt.BATCHES
        opt.zero_grad()
        loss_s = loss_and_logits(model, emb, ids, pixels[k * b:(k + 1) * b],
                                 labels[k * b:(k + 1) * b], params)[0]
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
    for name, p0, gr, p in zip(names, params0, grads, params):
        tensors[name] = p0.contiguous()
        tensors[f"grad_{name}"] = gr.contiguous()
        tensors[f"final_{name}"] = p.detach().contiguous()
    meta = {
        "class_names": json.dumps(coop.CLASS_NAMES),
        "prompt_texts": json.dumps(texts),
        "ctx_init": CTX_INIT,
        "n_ctx": str(N_CTX),
        "depth": str(DEPTH),
        "init": f"{INIT_STD} * randn (seed {PROMPT_SEED}): text_prompt_1, vision_prompt_0, _1",
        "batch": str(b),
        "steps": str(vpt.STEPS),
        "lr": repr(LR),
        "momentum": repr(vpt.MOMENTUM),
        "weight_decay": repr(vpt.WEIGHT_DECAY),
        "check_grad_rel_f32_f64": f"{check[0]:.3e}",
        "check_fd_rel_direction": f"{check[2]:.3e}",
        "prompt_change": f"{change:.3e}",
    }
    path = os.path.join(OUT, "deep.safetensors")
    coop.save(tensors, meta, path)
    print(f"wrote {path}: loss {loss.item():.6f}, last step {step_losses[-1]:.6f}, "
          f"change {change:.3e}, grad f32/f64 {check[0]:.2e}, fd {check[2]:.2e}")


if __name__ == "__main__":
    main()
