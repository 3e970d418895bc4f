"""One CoCoOp training step in PyTorch as the official trainers/cocoop.py runs it: images through
the frozen image encoder, the Meta-Net on normalised features, then a Python loop over the
images, each running the text encoder on its K prompts of 77 tokens, cross-entropy, backward to
context and Meta-Net, SGD. ViT-B/16 shapes, random weights, K = 50.
Usage: torch_cocoop_step.py <tokenizer dir> <batch>. Prints one JSON line with peak memory."""
import json, os, resource, statistics, sys, time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_coop_step import class_names, frozen_vit_b16  # noqa: E402


def main():
    tok_dir, batch = sys.argv[1], int(sys.argv[2])
    k, m = 50, 4
    torch.set_num_threads(os.cpu_count())
    model, tok = frozen_vit_b16(tok_dir)
    ids = tok([f"a photo of a {n}." for n in class_names(k)], padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    eot = (ids == 49407).int().argmax(-1)
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(ids)
    prefix, suffix = emb[:, :1], emb[:, 1 + m:]
    ctx = nn.Parameter(emb[0, 1:1 + m].clone())
    meta = nn.Sequential(OrderedDict([("linear1", nn.Linear(512, 32)), ("relu", nn.ReLU(inplace=True)), ("linear2", nn.Linear(32, 512))]))
    opt = torch.optim.SGD([ctx, *meta.parameters()], lr=0.002, momentum=0.9, weight_decay=5e-4)
    mask = torch.full((77, 77), float("-inf")).triu(1)[None, None]
    pixels = torch.randn(batch, 3, 224, 224)
    labels = torch.arange(batch) % k
    scale = model.logit_scale.exp()

    def text_encoder(prompts):
        h = model.text_model.embeddings(inputs_embeds=prompts)
        h = model.text_model.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state
        h = model.text_model.final_layer_norm(h)
        return model.text_projection(h[torch.arange(prompts.shape[0]), eot])

    def step():
        with torch.no_grad():
            f = model.get_image_features(pixel_values=pixels)
            f = getattr(f, "pooler_output", f)
        f = f / f.norm(dim=-1, keepdim=True)
        shifted = ctx[None] + meta(f)[:, None]
        logits = []
        for ctx_i, f_i in zip(shifted, f):  # the official per-image loop
            prompts = torch.cat([prefix, ctx_i[None].expand(k, -1, -1), suffix], dim=1)
            t = text_encoder(prompts)
            t = t / t.norm(dim=-1, keepdim=True)
            logits.append(scale * f_i @ t.t())
        loss = F.cross_entropy(torch.stack(logits), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    reps = 3 if batch == 1 else 1
    step()
    xs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        xs.append(time.perf_counter() - t0)
    s = statistics.median(xs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torch", "what": f"cocoop_step_b{batch}", "arch": "ViT-B/16", "classes": k, "batch": batch, "torch": torch.__version__, "seconds": s, "seconds_per_image": s / batch, "per_second": batch / s, "peak_rss_mib": peak}), flush=True)


if __name__ == "__main__":
    main()
