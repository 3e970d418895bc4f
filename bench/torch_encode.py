"""PyTorch counterpart of bench/src/main.rs: same shapes, same batch sizes, same machine, random
weights. Prints one JSON line per measurement.

  torch_encode.py ViT-B/16 <tokenizer-dir> [images-dir]     transformers' CLIPModel
  torch_encode.py RN50|RN101 <checkpoint.safetensors> [check-prefix]
      open_clip's ModifiedResNet CLIP ("RN50-quickgelu", OpenAI's architecture) loaded with the
      very checkpoint promptclip-bench wrote, so both time the same weights; with check-prefix
      (from `promptclip-bench features`), also the largest difference of the image features."""
import json, os, statistics, sys, time

import torch

ARCHS = {
    "ViT-B/32": dict(patch=32, vw=768, vl=12, tw=512, tl=12, e=512),
    "ViT-B/16": dict(patch=16, vw=768, vl=12, tw=512, tl=12, e=512),
    "ViT-L/14": dict(patch=14, vw=1024, vl=24, tw=768, tl=12, e=768),
}


def timed(reps, f):
    f()
    xs = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def main():
    arch = sys.argv[1] if len(sys.argv) > 1 else "ViT-B/16"
    if arch in RESNETS:
        return main_resnet(arch)
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    tok_dir = sys.argv[2]  # a folder with tokenizer.json (the tiny HF fixture has CLIP's)
    images_dir = sys.argv[3] if len(sys.argv) > 3 else None
    a = ARCHS[arch]
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=a["tw"], intermediate_size=4 * a["tw"], num_hidden_layers=a["tl"], num_attention_heads=a["tw"] // 64, hidden_act="quick_gelu", eos_token_id=49407),
        vision_config=dict(hidden_size=a["vw"], intermediate_size=4 * a["vw"], num_hidden_layers=a["vl"], num_attention_heads=a["vw"] // 64, image_size=224, patch_size=a["patch"], hidden_act="quick_gelu"),
        projection_dim=a["e"],
    )
    model = CLIPModel(cfg).eval()
    tok = CLIPTokenizerFast.from_pretrained(tok_dir)
    out = lambda **kw: print(json.dumps({"impl": "torch", "arch": arch, "threads": threads, "torch": torch.__version__, **kw}), flush=True)

    batch = 8
    px = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        s = timed(3, lambda: model.get_image_features(pixel_values=px))
    out(what="image_encode", batch=batch, seconds=s, per_second=batch / s)

    classes = ["dog", "cat", "airplane", "golden retriever", "sea turtle", "espresso machine", "tabby cat", "fire truck"]
    prompts = [f"a photo of a {classes[i % len(classes)]}." for i in range(256)]
    for padding, label in (("max_length", "text_encode_pad77"), ("longest", "text_encode")):
        def run():
            ids = tok(prompts, padding=padding, max_length=77, truncation=True, return_tensors="pt")
            return model.get_text_features(**ids)
        with torch.inference_mode():
            s = timed(3, run)
        out(what=label, batch=len(prompts), seconds=s, per_second=len(prompts) / s)

    if images_dir:
        from PIL import Image
        from transformers import CLIPImageProcessor
        proc = CLIPImageProcessor()
        files = sorted(f for f in os.listdir(images_dir) if f.endswith((".jpg", ".png", ".webp")))
        paths = [os.path.join(images_dir, f) for f in (files * 64)[:64]]
        s = timed(3, lambda: proc([Image.open(p) for p in paths], return_tensors="np"))
        out(what="preprocess", batch=len(paths), seconds=s, per_second=len(paths) / s)


RESNETS = ("RN50", "RN101")


def main_resnet(arch):
    ckpt = sys.argv[2]
    check = sys.argv[3] if len(sys.argv) > 3 else None
    try:
        import open_clip
    except ImportError:
        sys.exit(f"torch_encode.py {arch}: open_clip is not importable with {sys.executable} (pip install open_clip_torch)")
    from safetensors.torch import load_file

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    out = lambda **kw: print(json.dumps({"impl": "torch", "arch": arch, "threads": threads, "torch": torch.__version__, "open_clip": open_clip.__version__, **kw}), flush=True)

    # OpenAI's RN CLIPs use QuickGELU in the text tower; the image tower is the same either way.
    model = open_clip.create_model(f"{arch}-quickgelu", pretrained=None).float().eval()
    state = {k: v.float() for k, v in load_file(ckpt).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # BatchNorm's num_batches_tracked counters are the only tensors the checkpoint leaves out.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"

    if check:
        px = load_file(f"{check}.pixels.safetensors")["x"]
        ours = load_file(f"{check}.features.safetensors")["x"].double()
        with torch.inference_mode():
            theirs = model.encode_image(px).double()
        diff = (ours - theirs).abs().max().item()
        scale = theirs.abs().max().item()
        cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
        out(what="image_features_check", batch=px.shape[0], max_abs_diff=diff, max_abs=scale, max_rel_diff=diff / scale, min_cosine=cos)

    batch = 8
    px = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        s = timed(3, lambda: model.encode_image(px))
    out(what="image_encode", batch=batch, seconds=s, per_second=batch / s)

    # open_clip's tokenizer pads to 77 and its text tower runs every position ("text_encode_pad77").
    # For "text_encode" (as promptclip and transformers' padding="longest" do) the batch is cut to
    # its longest prompt, with the positional embedding and causal mask cut to match; the EOT
    # pooling (argmax of the ids) is unchanged, which the assert below checks.
    tok = open_clip.get_tokenizer(f"{arch}-quickgelu")
    classes = ["dog", "cat", "airplane", "golden retriever", "sea turtle", "espresso machine", "tabby cat", "fire truck"]
    prompts = [f"a photo of a {classes[i % len(classes)]}." for i in range(256)]
    pos, mask = model.positional_embedding, model.attn_mask

    def longest():
        ids = tok(prompts)
        n = int((ids != 0).sum(dim=1).max())
        model.positional_embedding, model.attn_mask = torch.nn.Parameter(pos[:n]), mask[:n, :n]
        try:
            return model.encode_text(ids[:, :n])
        finally:
            model.positional_embedding, model.attn_mask = pos, mask

    with torch.inference_mode():
        full = model.encode_text(tok(prompts[:8]))
        assert torch.allclose(longest()[:8], full, rtol=1e-4, atol=1e-4 * full.abs().max().item())
        for label, run in (("text_encode_pad77", lambda: model.encode_text(tok(prompts))), ("text_encode", longest)):
            s = timed(3, run)
            out(what=label, batch=len(prompts), seconds=s, per_second=len(prompts) / s)

if __name__ == "__main__":
    main()
