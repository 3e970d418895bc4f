"""One MaPLe or PromptSRC training step in PyTorch, the way the official trainers run it
(multimodal-prompt-learning trainers/maple.py, PromptSRC trainers/promptsrc.py): 77-token
prompts "a photo of a {name}." with the learned context after SOS, the deep prompts replacing
their rows block by block in both towers (the official block structure, as re-implemented on
transformers' CLIP modules for the fixtures: scripts/make_ivlp_fixture.py's text encoder,
scripts/make_vpt_fixture.py's image tower), the loss, backward, and SGD with momentum.

- maple: 2 tokens, depth 9, the image prompts Linear(512 -> 768) maps of the text prompts;
- promptsrc: 4 + 4 tokens, depth 9 / 9, with its frozen text side (the 60 templates' mean
  features, computed once), the unprompted image tower on the same images, and its L1 and KL
  terms.

ViT-B/16 shapes with random weights (bench/torch_coop_step.py's), K = 100, fp32 on the CPU.
    python bench/torch_deep_prompts.py <tokenizer-dir> <maple|promptsrc> <batch>
Prints one JSON line with the median step time and the process's peak RSS."""
import copy, json, os, resource, statistics, sys, time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
sys.path.insert(0, HERE)
import make_ivlp_fixture as ivlp  # noqa: E402
import make_vpt_fixture as vpt  # noqa: E402
from torch_coop_step import class_names, frozen_vit_b16  # noqa: E402

DEPTH = 9


def templates():
    import make_promptsrc_fixture as src
    return src.imagenet_templates()


def main():
    tok_dir, method, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    k = 100
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    model, tok = frozen_vit_b16(tok_dir)
    n = 2 if method == "maple" else 4
    ivlp.N_CTX = n
    names = class_names(k)
    ids = tok([f"a photo of a {c}." for c in names], padding="max_length", max_length=77,
              truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(ids)
    d_t, d_v = 512, 768
    g = torch.Generator().manual_seed(0)
    ctx = emb[0, 1:1 + n].clone().requires_grad_(True)
    text_deep = [(0.02 * torch.randn(n, d_t, generator=g)).requires_grad_(True)
                 for _ in range(DEPTH - 1)]
    if method == "maple":
        proj = torch.nn.Linear(d_t, d_v)
        single = torch.nn.Linear(d_t, d_v)
        clones = torch.nn.ModuleList([copy.deepcopy(single) for _ in range(DEPTH - 1)])
        params = [ctx, *text_deep, *proj.parameters(), *clones.parameters()]
    else:
        vision = [(0.02 * torch.randn(n, d_v, generator=g)).requires_grad_(True)
                  for _ in range(DEPTH)]
        params = [ctx, *text_deep, *vision]
        with torch.no_grad():
            feats = []
            for t in templates():
                tid = tok([t.replace("{}", c) for c in names], padding="max_length", max_length=77,
                          truncation=True, return_tensors="pt")["input_ids"]
                out = model.get_text_features(input_ids=tid)
                feats.append(out if torch.is_tensor(out) else out.pooler_output)
            fixed = torch.stack(feats, 1).mean(1)
            fixed = fixed / fixed.norm(dim=-1, keepdim=True)
    opt = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 224, 224, generator=g)
    y = torch.arange(batch) % k
    scale = model.logit_scale.exp()

    def step():
        if method == "maple":
            vis = [proj(ctx)] + [c(t) for c, t in zip(clones, text_deep)]
        else:
            vis = vision
        gt = ivlp.text_features(model, emb, ids, ctx, text_deep)
        f = vpt.image_features(model, x, vis)
        image = f / f.norm(dim=-1, keepdim=True)
        text = gt / gt.norm(dim=-1, keepdim=True)
        logits = scale * image @ text.t()
        loss = F.cross_entropy(logits, y)
        if method == "promptsrc":
            with torch.no_grad():
                zf = model.get_image_features(pixel_values=x)
                zf = zf if torch.is_tensor(zf) else zf.pooler_output
                zs = zf / zf.norm(dim=-1, keepdim=True)
                zs_logits = scale * zs @ fixed.t()
            loss = loss + F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1),
                                   reduction="sum", log_target=True) / logits.numel() \
                + 25 * F.l1_loss(text, fixed) + 10 * F.l1_loss(image, zs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()
    reps = 1 if batch > 8 else 2
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torch", "what": f"{method}_step_b{batch}", "arch": "ViT-B/16",
                      "classes": k, "batch": batch, "threads": threads, "torch": torch.__version__,
                      "seconds": s, "per_second": batch / s, "peak_rss_mib": rss}), flush=True)


if __name__ == "__main__":
    main()
