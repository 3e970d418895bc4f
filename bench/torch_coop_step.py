"""One CoOp training step in PyTorch, the way the official trainers/coop.py runs it: frozen
CLIP, images through the image encoder, K prompts of 77 tokens assembled from [SOS] + ctx +
suffix buffers, the text encoder, cross-entropy, backward to the context, SGD with momentum.
ViT-B/16 shapes with random weights; K = 100, batch 32, M = 16. Prints JSON lines."""
import json, os, statistics, sys, time

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast


def class_names(k):
    adj = ["red", "small", "wild", "old", "striped", "golden", "wooden", "spotted", "tiny", "giant"]
    noun = ["dog", "car", "bird", "chair", "flower", "boat", "house", "fish", "lamp", "tree"]
    return [f"{adj[i % 10]} {noun[(i // 10) % 10]}" for i in range(k)]


def frozen_vit_b16(tok_dir):
    """A randomly initialised ViT-B/16 CLIP with every weight frozen, and CLIP's tokenizer."""
    cfg = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, hidden_act="quick_gelu", eos_token_id=49407),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=512,
    )
    model = CLIPModel(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, CLIPTokenizerFast.from_pretrained(tok_dir)


def main():
    tok_dir = sys.argv[1]
    k, batch, m = 100, 32, 16
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    model, tok = frozen_vit_b16(tok_dir)
    texts = [" ".join(["X"] * m) + " " + n + "." for n in class_names(k)]
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    eot = (ids == 49407).int().argmax(-1)
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(ids)
    prefix, suffix = emb[:, :1], emb[:, 1 + m:]
    ctx = torch.nn.Parameter(torch.randn(m, 512) * 0.02)
    opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    mask = torch.full((77, 77), float("-inf")).triu(1)[None, None]
    pixels = torch.randn(batch, 3, 224, 224)
    labels = torch.arange(batch) % k
    with torch.no_grad():
        cached = model.get_image_features(pixel_values=pixels)
        cached = getattr(cached, "pooler_output", cached)
    scale = model.logit_scale.exp()

    def step(encode_images):
        if encode_images:
            with torch.no_grad():
                f = model.get_image_features(pixel_values=pixels)
                f = getattr(f, "pooler_output", f)
        else:
            f = cached
        prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(k, -1, -1), suffix], dim=1)
        h = model.text_model.embeddings(inputs_embeds=prompts)
        h = model.text_model.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state
        h = model.text_model.final_layer_norm(h)
        t = model.text_projection(h[torch.arange(k), eot])
        logits = scale * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for what, encode, reps in (("coop_step_cached_features", False, 3), ("coop_step", True, 2)):
        step(encode)
        xs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step(encode)
            xs.append(time.perf_counter() - t0)
        s = statistics.median(xs)
        print(json.dumps({"impl": "torch", "what": what, "arch": "ViT-B/16", "classes": k, "batch": batch, "n_ctx": m, "threads": threads, "torch": torch.__version__, "seconds": s, "per_second": 1 / s}), flush=True)


if __name__ == "__main__":
    main()
