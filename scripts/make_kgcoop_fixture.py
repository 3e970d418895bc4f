"""Reference fixture for KgCoOp (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided
Context Optimization", CVPR 2023): CoOp plus a knowledge-guided term that keeps the learned
prompts' text features close to the frozen CLIP features of a hand-made template. Computed by
PyTorch on the tiny transformers CLIP in fixtures/tiny-clip-hf/.

The semantics follow the official code (htyao89/KgCoOp, trainers/kgcoop.py: PromptLearner,
CustomCLIP.forward, KgCoOp.forward_backward), re-implemented here on top of the CoOp fixture's
code (make_coop_fixture.py: prompt assembly, text encoder, logits, cross-entropy):

    text_features      g(t_k): CoOp's prompts "a photo of a <name>." with ctx in place of the
                       4 context tokens, through CLIP's text encoder (K,16)
    clip_text_features g(t_k^clip): frozen CLIP text features (encode_text = get_text_features)
                       of the template filled with each class, template.format(name.replace("_",
                       " ")), computed once without gradient (K,16)
    logits             exp(logit_scale) * normalize(image) @ normalize(text_features).T
    loss_ce            cross_entropy(logits, labels), mean over the batch
    loss_kg            1 - mean_k cos(normalize(text_features_k), normalize(clip_text_features_k)),
                       cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07) (both inputs are already
                       unit vectors, so it is their dot product)
    loss               loss_ce + w * loss_kg, w = 8.0 (TRAINER.COOP.W in the official scripts)
    grad_ctx           d loss / d ctx;  grad_ctx_w0 = d loss_ce / d ctx (w = 0)

Case (one file, fixtures/kgcoop/unified_end_words.safetensors): CoOp's unified_end_words (ctx
initialised from the words "a photo of a", M = 4, unified, class token at the end, class names
["dog", "paper_crane", "golden retriever", "x"], the same 6 image features and labels), template
"a photo of a {}.". The template texts are then the prompt texts themselves, so at the word
initialisation text_features == clip_text_features and the KG term and its gradient are zero
(checked); the fixture is evaluated at ctx = word init + 0.01 * randn (seed PERTURB_SEED), the
ctx stored in the file.

Checks: the template's features by get_text_features equal the encoder path on their token
embeddings; at the word init loss_kg is 0 up to float32 rounding; CosineSimilarity equals the dot
product of the unit vectors; loss = loss_ce + w * loss_kg; the float32 losses agree with float64
ones (relative, < 1e-4); for both w = 8 and w = 0 the float32
gradient agrees with a float64 autograd gradient (float64 model, SDPA attention, float64
template features) and that with central finite differences (coordinates and a random
direction); the KG term's gradient (grad_ctx - grad_ctx_w0) / w equals d loss_kg / d ctx and is
non-zero in every ctx row. The file has sorted metadata (byte-reproducible).

Usage (from the repo root):  python3 scripts/make_kgcoop_fixture.py
Needs: torch, transformers, safetensors (as make_coop_fixture.py). CPU only, deterministic.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_coop_fixture as coop  # noqa: E402  (load, PromptSetup, forward, check_gradient, ...)

ROOT = coop.ROOT
OUT = os.path.join(ROOT, "fixtures", "kgcoop")

NAME = "unified_end_words"
INIT = "a photo of a"
POSITION = "end"
TEMPLATE = "a photo of a {}."
W = 8.0
COS_EPS = 1e-07
PERTURB_STD = 0.01
PERTURB_SEED = 4242


def template_texts(class_names):
    return [TEMPLATE.format(n.replace("_", " ")) for n in class_names]


def clip_text_features(tok, model, texts):
    """Frozen CLIP text features of the filled templates (official: clip_model_.encode_text)."""
    ids = torch.stack([coop.tokenize(tok, t) for t in texts])
    with torch.no_grad():
        feats = coop.text_features_ref(model, ids)
    return ids, feats


def kg_loss(text_features, clip_features):
    """1 - mean_k cos(g(t_k), g(t_k^clip)), both sides L2-normalised first (official)."""
    t = text_features / text_features.norm(dim=-1, keepdim=True)
    c = clip_features / clip_features.norm(dim=-1, keepdim=True)
    cos = torch.nn.CosineSimilarity(dim=1, eps=COS_EPS)(t, c)
    return 1.0 - torch.mean(cos)


def forward(model, setup, ctx, image_features, labels, clip_features, w):
    _, tf, logits, ce = coop.forward(model, setup, ctx, POSITION, image_features, labels)
    kg = kg_loss(tf, clip_features)
    return tf, logits, ce, kg, ce + w * kg


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = coop.load()
    image_features, labels = coop.make_batch(model)
    class_names = coop.CLASS_NAMES

    n_ctx, ctx_words = coop.word_init(tok, model, INIT)
    setup = coop.PromptSetup(tok, model, n_ctx, INIT, class_names)
    texts = template_texts(class_names)
    tmpl_ids, clip_feats = clip_text_features(tok, model, texts)

    # the template's features by the encoder path on its token embeddings
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(tmpl_ids)
        via_encoder = coop.text_features(model, emb, tmpl_ids.argmax(dim=-1))
    enc_err = (via_encoder - clip_feats).abs().max().item()
    assert enc_err < 1e-6, f"template features: encoder path vs get_text_features {enc_err}"

    # the template here is the prompt text itself: at the word init the KG term vanishes
    assert texts == setup.texts and torch.equal(tmpl_ids, setup.token_ids)
    with torch.no_grad():
        tf0, _, _, kg0, _ = forward(model, setup, ctx_words, image_features, labels, clip_feats,
                                    W)
    assert (tf0 - clip_feats).abs().max().item() < 1e-6 and abs(kg0.item()) < 1e-6, kg0.item()

    noise = torch.randn(ctx_words.shape, generator=torch.Generator().manual_seed(PERTURB_SEED),
                        dtype=torch.float32)
    ctx0 = ctx_words + PERTURB_STD * noise

    ctx = ctx0.clone().requires_grad_(True)
    tf, logits, ce, kg, loss = forward(model, setup, ctx, image_features, labels, clip_feats, W)
    (grad,) = torch.autograd.grad(loss, ctx, retain_graph=True)
    (grad_w0,) = torch.autograd.grad(ce, ctx, retain_graph=True)
    (grad_kg,) = torch.autograd.grad(kg, ctx)
    for t in (grad, grad_w0, grad_kg, loss):
        assert torch.isfinite(t).all()
    assert loss.item() == (ce + W * kg).item()
    assert kg.item() > 1e-3, f"KG term too small to test: {kg.item()}"

    # CosineSimilarity on unit vectors = their dot product
    with torch.no_grad():
        t_n = tf / tf.norm(dim=-1, keepdim=True)
        c_n = clip_feats / clip_feats.norm(dim=-1, keepdim=True)
        kg_dot = 1.0 - (t_n * c_n).sum(-1).mean()
    cos_err = abs(kg_dot.item() - kg.item())
    assert cos_err < 1e-6, cos_err

    # the KG term's own gradient: non-zero in every row, and what separates grad from grad_w0
    kg_from_diff = (grad - grad_w0) / W
    rel_split = rel(kg_from_diff, grad_kg)
    assert rel_split < 1e-4, f"(grad - grad_w0) / w vs d loss_kg / d ctx: rel {rel_split}"
    assert grad_kg.abs().amax(dim=-1).min() > 0, "a ctx row got no KG gradient"
    kg_share = (W * grad_kg).norm().item() / grad.norm().item()
    assert kg_share > 0.05, f"KG gradient is a negligible part of grad_ctx ({kg_share})"
    assert grad_w0.abs().amax(dim=-1).min() > 0

    # float32 vs float64 autograd vs central finite differences, for w = 8 and w = 0
    m64 = coop.model_float64(model)
    _, clip64 = clip_text_features(tok, m64, texts)
    img64 = image_features.double()
    with torch.no_grad():
        _, _, ce64, kg64, loss64 = forward(m64, setup, ctx0.double(), img64, labels, clip64, W)
    loss_rels = {n: abs(a.item() - b.item()) / abs(b.item())
                 for n, a, b in (("loss_ce", ce, ce64), ("loss_kg", kg, kg64),
                                 ("loss", loss, loss64))}
    assert max(loss_rels.values()) < 1e-4, loss_rels
    checks = {}
    for tag, w, g32 in (("w=8", W, grad), ("w=0", 0.0, grad_w0)):
        def loss_of(c, w=w):
            return forward(m64, setup, c, img64, labels, clip64, w)[4]

        checks[tag] = coop.check_gradient(loss_of, ctx0, g32, PERTURB_SEED)

    tensors = {
        "ctx": ctx0.contiguous(),
        "image_features": image_features.contiguous(),
        "labels": labels.contiguous(),
        "token_ids": setup.token_ids.contiguous(),
        "eot_index": setup.eot_index.to(torch.int64).contiguous(),
        "text_features": tf.detach().contiguous(),
        "clip_text_features": clip_feats.contiguous(),
        "logits": logits.detach().contiguous(),
        "loss_ce": ce.detach().reshape(()).contiguous(),
        "loss_kg": kg.detach().reshape(()).contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "grad_ctx": grad.contiguous(),
        "grad_ctx_w0": grad_w0.contiguous(),
    }
    for key, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), key
    meta = coop.case_metadata(model, setup, POSITION, n_ctx, False, INIT)
    meta.update({
        "w": repr(W),
        "template": TEMPLATE,
        "template_texts": json.dumps(texts),
        "ctx_perturbation": f"{PERTURB_STD} * randn (seed {PERTURB_SEED})",
    })
    path = os.path.join(OUT, f"{NAME}.safetensors")
    coop.save(tensors, meta, path)
    print(f"    template_texts {texts}, eot_index {setup.eot_index.tolist()}")
    print(f"    loss_ce {ce.item():.6f}, loss_kg {kg.item():.6e}, loss {loss.item():.6f} (w {W})")
    print(f"    |grad_ctx| max {grad.abs().max().item():.3e}, |grad_ctx_w0| max "
          f"{grad_w0.abs().max().item():.3e}, |w*grad_kg|/|grad_ctx| {kg_share:.3f}")
    print(f"    template encoder path vs get_text_features {enc_err:.1e}, loss_kg at word init "
          f"{kg0.item():.1e}, CosineSimilarity vs dot {cos_err:.1e}, "
          f"(grad-grad_w0)/w vs d loss_kg rel {rel_split:.1e}")
    print("    f32 vs f64 " + ", ".join(f"{n} rel {r:.1e}" for n, r in loss_rels.items()))
    for tag, (rel32, worst, rel_dir, coords) in checks.items():
        print(f"    {tag}: f32 vs f64 grad rel {rel32:.1e}, finite differences: coords {coords} "
              f"worst rel {worst:.1e}, direction rel {rel_dir:.1e}")
    for key, v in tensors.items():
        print(f"    {key}: {str(v.dtype).replace('torch.', '')} {tuple(v.shape)}")


if __name__ == "__main__":
    main()
