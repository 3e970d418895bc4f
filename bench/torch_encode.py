"""PyTorch + transformers counterpart of bench/src/main.rs: same shapes, same batch sizes, same
machine, random weights. Prints one JSON line per measurement."""
import json, os, statistics, sys, time

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

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


if __name__ == "__main__":
    main()
