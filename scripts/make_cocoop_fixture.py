"""Reference fixtures for CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language
Models"): the meta-net, instance-conditioned prompts, logits, loss and the gradients w.r.t. ctx
and the meta-net's four tensors, computed by PyTorch on the tiny transformers CLIP in
fixtures/tiny-clip-hf/.

The semantics follow the official code (KaiyangZhou/CoOp, trainers/cocoop.py: PromptLearner,
TextEncoder, CustomCLIP, forward_backward); the text encoder, tokenization and prompt prefix /
suffix come from scripts/make_coop_fixture.py (same transformers path, explicit causal mask):

    ctx                "a photo of a" -> M = 4, ctx = token_embedding of those 4 tokens (M,d)
    prompt text        "a photo of a " + name + "."  (names "_" -> " "), prefix = emb[:, :1],
                       suffix = emb[:, 1+M:]
    meta_net           Sequential(linear1: Linear(E, E // ratio), relu, linear2: Linear(E // ratio,
                       d)); the official ratio is 16, which gives 1 hidden unit for E = 16, so the
                       fixture uses ratio 4 (hidden 4). PyTorch's default Linear init, fixed seed.
    forward            f = f / |f|                       (B,E), image features
                       bias = meta_net(f)                (B,d)
                       ctx_shifted = ctx[None] + bias[:, None]      (B,M,d)
                       per image i: prompts_i = cat(prefix, ctx_shifted[i] expanded to K, suffix)
                           text_i = normalize(text_encoder(prompts_i))   (K,E)
                           logits_i = exp(logit_scale) * f[i] @ text_i.T  (K,)
                       logits = stack (B,K); loss = cross_entropy(logits, labels) (batch mean)
    gradients          w.r.t. ctx and meta_net.{linear1,linear2}.{weight,bias} (CLIP frozen)

Cases, fixtures/cocoop/<case>.safetensors (class names ["dog", "paper_crane",
"golden retriever"], K = 3; image features torch.randn, seeded, raw = before normalisation):
    batch1   B = 1, labels [2]
    batch3   B = 3, labels [0, 2, 1]
Both use the same ctx and meta-net init.

Tensors per file (f32 unless noted):
    ctx (4,32)  meta.linear1.weight (4,16)  meta.linear1.bias (4,)  meta.linear2.weight (32,4)
    meta.linear2.bias (32,)  (initial values)          image_features (B,16) raw
    labels i64 (B,)   logits (B,3)   loss ()   text_features (B,3,16) normalised per image
    grad.ctx (4,32)   grad.meta.linear1.weight (4,16)   grad.meta.linear1.bias (4,)
    grad.meta.linear2.weight (32,4)   grad.meta.linear2.bias (32,)
    extras for debugging: meta_bias (B,32) = meta_net(normalised f), token_ids i64 (3,77),
    eot_index i64 (3,)
Metadata (strings): n_ctx, init, class_names (JSON), ratio, hidden, prompt_texts (JSON),
    logit_scale_exp.

fixtures/cocoop/init_stats.json: empirical check of PyTorch's default nn.Linear init
    (kaiming_uniform_(a=sqrt(5)) on the weight = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))) on nn.Linear(512, 32) and on the fixture's meta-net.

Checks: the encoder path equals get_text_features on the plain prompt text (CoOp's check); with
the meta-net output forced to zero the logits equal CoOp's (coop.forward); the official
per-image loop equals one vectorised (B*K) encoder call; batch3's loss / gradients equal the mean
of per-image (B = 1) losses / gradients; float32 gradients agree with float64 ones, and float64
autograd with central finite differences on coordinates of ctx and meta.linear1.weight (and a
random direction in all five tensors); every gradient tensor is non-zero.

Usage (from the repo root):  python3 scripts/make_cocoop_fixture.py
Needs: torch, transformers (5.x), safetensors. CPU only, deterministic.
"""

import copy
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402  (load, PromptSetup, text_features, ...)

ROOT = coop.ROOT
OUT = os.path.join(ROOT, "fixtures", "cocoop")

CLASS_NAMES = ["dog", "paper_crane", "golden retriever"]
CTX_INIT = "a photo of a"
RATIO = 4
# chosen (by trying seeds) so that no hidden unit is dead for the whole of batch3 (every row of
# linear1 gets a gradient there), batch1 has active and inactive units (ReLU masking matters), and
# no pre-activation is within 0.05 of the ReLU kink
META_SEED = 2071
# name, labels, seed of the raw image features
CASES = [
    ("batch1", [2], 101),
    ("batch3", [0, 2, 1], 303),
]
PARAM_NAMES = ["meta.linear1.weight", "meta.linear1.bias", "meta.linear2.weight",
               "meta.linear2.bias"]


def make_meta_net(vis_dim, ctx_dim, ratio, seed):
    torch.manual_seed(seed)
    hidden = vis_dim // ratio
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(vis_dim, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("linear2", nn.Linear(hidden, ctx_dim)),
    ]))


def meta_params(meta_net):
    return [meta_net.linear1.weight, meta_net.linear1.bias, meta_net.linear2.weight,
            meta_net.linear2.bias]


def forward(model, setup, ctx, meta_net, image_features, labels):
    """Official CustomCLIP.forward (training mode returns the loss; we also keep the pieces)."""
    k = setup.token_ids.shape[0]
    f = image_features / image_features.norm(dim=-1, keepdim=True)
    bias = meta_net(f)                                   # (B,d)
    ctx_shifted = ctx.unsqueeze(0) + bias.unsqueeze(1)   # (B,M,d)
    prefix, suffix = setup.prefix.to(ctx.dtype), setup.suffix.to(ctx.dtype)
    logit_scale = model.logit_scale.exp()
    logits, texts = [], []
    for ctx_i, f_i in zip(ctx_shifted, f):
        pts_i = torch.cat([prefix, ctx_i.unsqueeze(0).expand(k, -1, -1), suffix], dim=1)
        t = coop.text_features(model, pts_i, setup.eot_index)
        t = t / t.norm(dim=-1, keepdim=True)
        logits.append(logit_scale * f_i @ t.t())
        texts.append(t)
    logits = torch.stack(logits)
    loss = F.cross_entropy(logits, labels)
    return {"bias": bias, "text_features": torch.stack(texts), "logits": logits, "loss": loss}


def forward_vectorised(model, setup, ctx, meta_net, image_features, labels):
    """Same maths with all B*K prompts through one encoder call (how a port may batch it)."""
    k = setup.token_ids.shape[0]
    b = image_features.shape[0]
    f = image_features / image_features.norm(dim=-1, keepdim=True)
    ctx_shifted = ctx.unsqueeze(0) + meta_net(f).unsqueeze(1)         # (B,M,d)
    prefix, suffix = setup.prefix.to(ctx.dtype), setup.suffix.to(ctx.dtype)
    pts = torch.cat([prefix.unsqueeze(0).expand(b, -1, -1, -1),
                     ctx_shifted.unsqueeze(1).expand(-1, k, -1, -1),
                     suffix.unsqueeze(0).expand(b, -1, -1, -1)], dim=2)  # (B,K,77,d)
    t = coop.text_features(model, pts.reshape(b * k, *pts.shape[2:]), setup.eot_index.repeat(b))
    t = t.reshape(b, k, -1)
    t = t / t.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * torch.einsum("be,bke->bk", f, t)
    return logits, F.cross_entropy(logits, labels)


def grads_of(model, setup, ctx0, meta_net, image_features, labels):
    ctx = ctx0.clone().requires_grad_(True)
    out = forward(model, setup, ctx, meta_net, image_features, labels)
    gs = torch.autograd.grad(out["loss"], [ctx] + meta_params(meta_net))
    return out, [g.detach().clone() for g in gs]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def to_float64(model, meta_net):
    m64 = copy.deepcopy(model).double()
    # eager attention takes its softmax in float32 even in a float64 model (see make_coop_fixture)
    if hasattr(m64, "set_attn_implementation"):
        m64.set_attn_implementation("sdpa")
    else:
        m64.config._attn_implementation = "sdpa"
        m64.text_model.config._attn_implementation = "sdpa"
    assert m64.text_model.config._attn_implementation == "sdpa"
    return m64, copy.deepcopy(meta_net).double()


def fd_check(model, setup, ctx0, meta_net, image_features, labels, grads32, seed):
    """float32 grads vs float64 autograd; float64 autograd vs central finite differences."""
    m64, meta64 = to_float64(model, meta_net)
    img64 = image_features.double()
    ctx64 = ctx0.double()
    # ReLU kinks: finite differences are only meaningful away from pre-activation 0
    with torch.no_grad():
        f = img64 / img64.norm(dim=-1, keepdim=True)
        pre = meta64.linear1(f)
    min_pre = pre.abs().min().item()
    assert min_pre > 1e-3, f"a linear1 pre-activation is {min_pre}: too close to the ReLU kink"
    _, g64 = grads_of(m64, setup, ctx64, meta64, img64, labels)
    rel32 = {n: rel(a, b) for n, a, b in zip(["ctx"] + PARAM_NAMES, grads32, g64)}
    for n, r in rel32.items():
        assert r < 1e-4, f"float32 vs float64 grad {n}: rel {r}"

    def loss_at(ctx, params):
        m = copy.deepcopy(meta64)
        with torch.no_grad():
            for p, v in zip(meta_params(m), params):
                p.copy_(v)
        return forward(m64, setup, ctx, m, img64, labels)["loss"].item()

    base = [p.detach().clone() for p in meta_params(meta64)]
    eps = 1e-6
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for ti, name in [(0, "ctx"), (1, "meta.linear1.weight")]:
            flat = g64[ti].flatten()
            # largest, a random and the last entry with a non-zero gradient, plus the first one
            # with a zero gradient (a dead ReLU unit) if there is one
            nz = flat.nonzero().flatten()
            coords = [int(flat.abs().argmax()),
                      int(nz[torch.randint(nz.numel(), (1,), generator=gen)]), int(nz[-1])]
            zero = (flat == 0).nonzero().flatten()
            if zero.numel():
                coords.append(int(zero[0]))
            for idx in coords:
                e = torch.zeros_like(flat)
                e[idx] = eps
                e = e.view_as(g64[ti])
                if ti == 0:
                    lp, lm = loss_at(ctx64 + e, base), loss_at(ctx64 - e, base)
                else:
                    lp = loss_at(ctx64, [base[0] + e] + base[1:])
                    lm = loss_at(ctx64, [base[0] - e] + base[1:])
                fd = (lp - lm) / (2 * eps)
                an = flat[idx].item()
                assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)) + 1e-5 * abs(an), (name, idx, fd, an)
                rows.append((name, idx, an, fd, abs(fd - an) / max(abs(an), 1e-300)))
        # a random direction in all five tensors at once
        ds = [torch.randn(g.shape, generator=gen, dtype=torch.float64) for g in g64]
        lp = loss_at(ctx64 + eps * ds[0], [b + eps * d for b, d in zip(base, ds[1:])])
        lm = loss_at(ctx64 - eps * ds[0], [b - eps * d for b, d in zip(base, ds[1:])])
        fd = (lp - lm) / (2 * eps)
        an = sum((g * d).sum().item() for g, d in zip(g64, ds))
        rel_dir = abs(fd - an) / abs(an)
        assert rel_dir < 1e-5, (fd, an)
    return rel32, rows, rel_dir, min_pre


def make_case(tok, model, setup, ctx0, meta_net, name, labels_list, seed):
    from safetensors.torch import save_file

    e = model.text_projection.out_features
    image_features = torch.randn(len(labels_list), e, generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor(labels_list, dtype=torch.int64)
    out, grads = grads_of(model, setup, ctx0, meta_net, image_features, labels)
    loss = out["loss"].detach()
    print(f"{name}: loss {loss.item():.6f}")
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)

    # (c) every gradient tensor non-zero; report the ReLU activity (dead units -> zero rows)
    with torch.no_grad():
        f = image_features / image_features.norm(dim=-1, keepdim=True)
        active = (meta_net.linear1(f) > 0)
    for n, g in zip(["ctx"] + PARAM_NAMES, grads):
        assert g.abs().max() > 0, f"{name}: grad {n} is zero"
    print(f"    relu active (B,hidden): {active.int().tolist()}; "
          f"|grad| max: " + ", ".join(f"{n} {g.abs().max().item():.3e}"
                                      for n, g in zip(["ctx"] + PARAM_NAMES, grads)))
    zero_rows = (grads[1].abs().amax(dim=1) == 0).int().tolist()
    assert zero_rows == (~active.any(dim=0)).int().tolist()
    assert active.any() and not active.all(), "ReLU masking untested"
    if len(labels_list) > 1:
        assert active.any(dim=0).all(), "a hidden unit is dead for the whole batch"

    # the official loop vs one vectorised encoder call
    with torch.no_grad():
        lv, lossv = forward_vectorised(model, setup, ctx0, meta_net, image_features, labels)
    err_vec = (lv - out["logits"]).abs().max().item() / out["logits"].abs().max().item()
    assert err_vec < 1e-5, err_vec
    print(f"    loop vs vectorised (B*K prompts): logits rel {err_vec:.1e}, "
          f"loss diff {abs(lossv.item() - loss.item()):.1e}")

    # zero meta-net output -> CoCoOp reduces to CoOp with the same ctx
    z = copy.deepcopy(meta_net)
    with torch.no_grad():
        z.linear2.weight.zero_()
        z.linear2.bias.zero_()
        lz = forward(model, setup, ctx0, z, image_features, labels)["logits"]
        lc = coop.forward(model, setup, ctx0, "end", image_features, labels)[2]
    err_coop = (lz - lc).abs().max().item()
    assert err_coop < 1e-5, err_coop
    print(f"    zero meta-net vs CoOp forward: logits max diff {err_coop:.1e}")

    # (a) batched loss / grads = mean of per-image (B = 1) losses / grads
    b = len(labels_list)
    if b > 1:
        per = [grads_of(model, setup, ctx0, meta_net, image_features[i:i + 1], labels[i:i + 1])
               for i in range(b)]
        mean_loss = sum(o["loss"].item() for o, _ in per) / b
        d_loss = abs(mean_loss - loss.item())
        assert d_loss < 1e-5 * max(1.0, abs(loss.item())), (mean_loss, loss.item())
        per_logits = torch.cat([o["logits"] for o, _ in per])
        err_logits = (per_logits - out["logits"]).abs().max().item()
        assert err_logits < 1e-5, err_logits
        print(f"    batched vs per-image loop: loss {loss.item():.8f} vs mean "
              f"{mean_loss:.8f} (diff {d_loss:.1e}), logits max diff {err_logits:.1e}")
        msg = []
        for j, n in enumerate(["ctx"] + PARAM_NAMES):
            avg = sum(g[j] for _, g in per) / b
            err = (avg - grads[j]).abs().max().item() / grads[j].abs().max().item()
            assert err < 1e-5, (n, err)
            msg.append(f"{n} {err:.1e}")
        print("    grads vs mean of per-image grads (max err / max|grad|): " + ", ".join(msg))

    # (b) finite differences in float64
    rel32, rows, rel_dir, min_pre = fd_check(model, setup, ctx0, meta_net, image_features,
                                             labels, grads, seed)
    print("    float32 vs float64 grads (rel): "
          + ", ".join(f"{n} {r:.1e}" for n, r in rel32.items()))
    for n, idx, an, fd, r in rows:
        print(f"    fd {n}[{idx}]: autograd {an:+.10e} fd {fd:+.10e} rel {r:.1e}")
    print(f"    fd random direction (all tensors): rel {rel_dir:.1e}; "
          f"min |linear1 pre-activation| {min_pre:.3f}")

    tensors = {
        "ctx": ctx0,
        "meta.linear1.weight": meta_net.linear1.weight.detach(),
        "meta.linear1.bias": meta_net.linear1.bias.detach(),
        "meta.linear2.weight": meta_net.linear2.weight.detach(),
        "meta.linear2.bias": meta_net.linear2.bias.detach(),
        "image_features": image_features,
        "labels": labels,
        "logits": out["logits"].detach(),
        "loss": loss.reshape(()),
        "text_features": out["text_features"].detach(),
        "meta_bias": out["bias"].detach(),
        "token_ids": setup.token_ids,
        "eot_index": setup.eot_index.to(torch.int64),
        "grad.ctx": grads[0],
    }
    for n, g in zip(PARAM_NAMES, grads[1:]):
        tensors["grad." + n] = g
    tensors = {k: v.clone().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), k
    meta = {
        "n_ctx": str(ctx0.shape[0]),
        "init": CTX_INIT,
        "class_names": json.dumps(CLASS_NAMES),
        "ratio": str(RATIO),
        "hidden": str(meta_net.linear1.out_features),
        "prompt_texts": json.dumps(setup.texts),
        "logit_scale_exp": repr(model.logit_scale.exp().item()),
    }
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    coop.canonical_header(path)
    print(f"    wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")
    for k, v in tensors.items():
        print(f"    {k}: {str(v.dtype).replace('torch.', '')} {tuple(v.shape)}")


def make_init_stats(meta_net):
    def stats(fan_in, fan_out, w, b):
        bound = 1.0 / math.sqrt(fan_in)
        mw, mb = w.abs().max().item(), b.abs().max().item()
        assert mw <= bound and mb <= bound, (fan_in, mw, mb, bound)
        return {"in": fan_in, "out": fan_out, "bound": bound, "max_abs_weight": mw,
                "max_abs_bias": mb, "max_abs_weight_over_bound": mw / bound,
                "max_abs_bias_over_bound": mb / bound,
                "weight_std": w.std().item(), "uniform_std": bound / math.sqrt(3)}

    torch.manual_seed(0)
    lin = nn.Linear(512, 32)
    with torch.no_grad():
        big = stats(512, 32, lin.weight, lin.bias)
    # kaiming_uniform_(a=sqrt(5)): bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2))
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    kaiming_bound = gain * math.sqrt(3 / 512)
    assert abs(kaiming_bound - big["bound"]) < 1e-15
    # with 16384 samples the max should sit within a few 1e-4 of the bound; 32 bias samples less so
    assert big["max_abs_weight_over_bound"] > 0.999, big
    assert big["max_abs_bias_over_bound"] > 0.8, big
    assert abs(big["weight_std"] / big["uniform_std"] - 1) < 0.03, big
    with torch.no_grad():
        l1 = stats(meta_net.linear1.in_features, meta_net.linear1.out_features,
                   meta_net.linear1.weight, meta_net.linear1.bias)
        l2 = stats(meta_net.linear2.in_features, meta_net.linear2.out_features,
                   meta_net.linear2.weight, meta_net.linear2.bias)
    data = {
        "description": "PyTorch default nn.Linear init: weight kaiming_uniform_(a=sqrt(5)) = "
                       "U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias U(-1/sqrt(fan_in), "
                       "1/sqrt(fan_in)); observed max |weight| and |bias| stay within the bound",
        "torch": torch.__version__,
        "kaiming_uniform_a_sqrt5_bound_512": kaiming_bound,
        "linear_512_32_seed0": big,
        "fixture_meta_linear1": l1,
        "fixture_meta_linear2": l2,
    }
    path = os.path.join(OUT, "init_stats.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)}: Linear(512,32) bound {big['bound']:.6f}, "
          f"max|w| {big['max_abs_weight']:.6f}, max|b| {big['max_abs_bias']:.6f}; "
          f"meta linear1 bound {l1['bound']} max|w| {l1['max_abs_weight']:.4f} "
          f"max|b| {l1['max_abs_bias']:.4f}; linear2 bound {l2['bound']:.4f} "
          f"max|w| {l2['max_abs_weight']:.4f} max|b| {l2['max_abs_bias']:.4f}")


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = coop.load()
    d = model.text_model.config.hidden_size
    e = model.text_projection.out_features

    # CoCoOp / CoOp word init: n_ctx = number of words, which must be the BPE token count
    words = CTX_INIT.replace("_", " ")
    n_ctx = len(words.split(" "))
    assert len(coop.bpe(tok, words)) == n_ctx
    setup = coop.PromptSetup(tok, model, n_ctx, CTX_INIT, CLASS_NAMES)
    init_ids = coop.tokenize(tok, words)
    with torch.no_grad():
        ctx0 = model.text_model.embeddings.token_embedding(init_ids[None])[0, 1:1 + n_ctx].clone()
        # prompts with the unshifted ctx are exactly the plain text's embeddings, and the encoder
        # path reproduces get_text_features on them
        prompts = setup.assemble(ctx0, "end")
        assert torch.equal(prompts, setup.embedding)
        got = coop.text_features(model, prompts, setup.eot_index)
        want = coop.text_features_ref(model, setup.token_ids)
    enc_err = (got - want).abs().max().item()
    assert enc_err < 1e-6, enc_err
    print(f"texts {setup.texts}, eot_index {setup.eot_index.tolist()}, ctx {tuple(ctx0.shape)}, "
          f"encoder path vs get_text_features {enc_err:.1e}")

    meta_net = make_meta_net(e, d, RATIO, META_SEED)
    for p in meta_net.parameters():
        assert p.dtype == torch.float32
    for name, labels, seed in CASES:
        make_case(tok, model, setup, ctx0, meta_net, name, labels, seed)
    make_init_stats(meta_net)


if __name__ == "__main__":
    main()
