"""Write two tiny random CLIP checkpoints and reference outputs computed with transformers.

(a) fixtures/tiny-clip-hf/         Hugging Face folder: config.json, model.safetensors (float16),
                                   tokenizer.json (+ tokenizer_config.json, special_tokens_map.json
                                   where transformers writes one), preprocessor_config.json.
                                   text: width 32, 2 heads, 2 layers, mlp 64, "gelu" (erf);
                                   vision: width 32, 2 heads, 2 layers, mlp 64, 32x32 image,
                                   8x8 patches, "gelu"; projection 16.
    fixtures/reference-hf.safetensors
(b) fixtures/tiny-clip-openai.safetensors
                                   a differently shaped random CLIP under OpenAI's own parameter
                                   names (as in the official CLIP repo's state_dict), float16, no
                                   config or tokenizer. text: width 64, 1 head, 2 layers, mlp 256;
                                   vision: width 128, 2 heads, 2 layers, mlp 512, 48x48 image,
                                   16x16 patches; "quick_gelu"; projection 24.
    fixtures/reference-openai.safetensors

Random init (torch.manual_seed), then every parameter gets += 0.02 * randn so LayerNorm weights are
not 1, biases are not 0 etc., then logit_scale = log(1/0.07). The references are computed in
float32 from the float16-ROUNDED weights (exactly what the saved files hold), eval mode, no grad.

Reference tensors (same names in both files):
    pixel_values       f32 (N,3,S,S)  randn, N=3 S=32 for (a); N=2 S=48 for (b)
    input_ids          i64 (4,77)     "a photo of a dog.", "a photo of a cat.",
                                      "an origami crane, folded from paper", "x":
                                      <|startoftext|> ... <|endoftext|> then zeros (OpenAI padding)
    eot_index          i64 (4,)       position of 49407 in each row
    image_embeds       f32 (N,P)      model.get_image_features: projected, NOT normalised
    text_embeds        f32 (4,P)      model.get_text_features: projected, NOT normalised
    text_pooled        f32 (4,W)      final-layer-normed text hidden state at eot_index, before
                                      the projection
    logits_per_image   f32 (N,4)      exp(logit_scale) * cos-similarity (model(...).logits_per_image)

Checks: transformers' EOT pooling equals a manual gather at eot_index (and equals OpenAI's
argmax(input_ids) rule with this padding); an independent functional re-implementation of
OpenAI's CLIP forward (nn.MultiheadAttention semantics, OpenAI names) reproduces both references;
the OpenAI-named dict converted back into a fresh transformers model gives identical outputs.

Usage (from the repo root):  python3 scripts/make_clip_fixtures.py
Needs: torch, transformers (4.x or 5.x), safetensors. CPU only; deterministic for a given
torch/transformers pair. The committed files were made with torch 2.15.0 and transformers 5.23.0;
transformers 4.57 passes every check too but initialises parameters in a different order (so
different random weights) and writes config.json without text_config's bos/eos ids (they equal
the defaults), so regenerate everything together, never one file alone.
"""

import json
import math
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_vocab  # noqa: E402

ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "fixtures")
HF_DIR = os.path.join(FIX, "tiny-clip-hf")
HF_REF = os.path.join(FIX, "reference-hf.safetensors")
OA_PATH = os.path.join(FIX, "tiny-clip-openai.safetensors")
OA_REF = os.path.join(FIX, "reference-openai.safetensors")

TEXTS = ["a photo of a dog.", "a photo of a cat.", "an origami crane, folded from paper", "x"]
SOT, EOT, CTX = 49406, 49407, 77
KEEP_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}

HF_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=2,
               num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu",
               bos_token_id=SOT, eos_token_id=EOT, pad_token_id=0, projection_dim=16)
HF_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                 image_size=32, patch_size=8, hidden_act="gelu", projection_dim=16)
HF_PROJ = 16

OA_TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_attention_heads=1,
               num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu",
               bos_token_id=SOT, eos_token_id=EOT, pad_token_id=0, projection_dim=24)
OA_VISION = dict(hidden_size=128, intermediate_size=512, num_attention_heads=2,
                 num_hidden_layers=2, image_size=48, patch_size=16, hidden_act="quick_gelu",
                 projection_dim=24)
OA_PROJ = 24


def tf_major():
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_kw(dtype):
    return {"dtype": dtype} if tf_major() >= 5 else {"torch_dtype": dtype}


def build_model(text_kw, vision_kw, proj, seed):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(text_kw), vision_config=dict(vision_kw),
                        projection_dim=proj, logit_scale_init_value=math.log(1 / 0.07))
    config._attn_implementation = "eager"
    model = CLIPModel(config).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=torch.float32))
        model.logit_scale.fill_(math.log(1 / 0.07))
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if "norm" in name and name.endswith("weight"):
            assert not torch.all(p == 1), name
        if name.endswith("bias"):
            assert torch.all(p != 0), name
    return model


def round_fp16_(model):
    """Round every parameter to float16 and back (what the saved file will hold)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def features(out):
    # transformers 4 returns a tensor; 5 returns a BaseModelOutputWithPooling
    return out if torch.is_tensor(out) else out.pooler_output


def pad_ids(rows):
    ids = torch.zeros(len(rows), CTX, dtype=torch.int64)
    for i, r in enumerate(rows):
        assert len(r) <= CTX and r[0] == SOT and r[-1] == EOT, r
        ids[i, : len(r)] = torch.tensor(r)
    return ids


@torch.no_grad()
def reference_outputs(model, pixel_values, input_ids):
    image_embeds = features(model.get_image_features(pixel_values=pixel_values))
    text_embeds = features(model.get_text_features(input_ids=input_ids))
    out = model(input_ids=input_ids, pixel_values=pixel_values)
    text_out = model.text_model(input_ids=input_ids)

    eot_index = (input_ids == EOT).int().argmax(dim=-1).to(torch.int64)
    assert torch.equal(eot_index, input_ids.argmax(dim=-1)), "OpenAI argmax rule disagrees"
    rows = torch.arange(input_ids.shape[0])
    text_pooled = text_out.last_hidden_state[rows, eot_index]  # last_hidden_state is post-final-LN
    assert torch.equal(text_out.pooler_output, text_pooled), "transformers pooled a different token"
    manual_text = model.text_projection(text_pooled)
    assert torch.allclose(manual_text, text_embeds, rtol=0, atol=1e-6), "EOT pooling mismatch"
    # manual image path + logits
    vis = model.vision_model(pixel_values=pixel_values)
    assert torch.allclose(model.visual_projection(vis.pooler_output), image_embeds, atol=1e-6)
    img_n = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    txt_n = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img_n @ txt_n.t()
    assert torch.allclose(logits, out.logits_per_image, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.logits_per_text, out.logits_per_image.t())
    return {
        "pixel_values": pixel_values.float().contiguous(),
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "eot_index": eot_index.contiguous(),
        "image_embeds": image_embeds.float().contiguous(),
        "text_embeds": text_embeds.float().contiguous(),
        "text_pooled": text_pooled.float().contiguous(),
        "logits_per_image": out.logits_per_image.float().contiguous(),
    }


# ---- HF <-> OpenAI parameter names ----------------------------------------------------------
def _block_map(hf_prefix, oa_prefix, n):
    pairs = []
    for i in range(n):
        h, o = f"{hf_prefix}.encoder.layers.{i}.", f"{oa_prefix}transformer.resblocks.{i}."
        for a, b in [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]:
            for s in ("weight", "bias"):
                pairs.append((h + f"{a}.{s}", o + f"{b}.{s}"))
    return pairs


def _simple_map(nt, nv):
    pairs = [
        ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
        ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
        ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        ("logit_scale", "logit_scale"),
    ]
    return pairs + _block_map("text_model", "", nt) + _block_map("vision_model", "visual.", nv)


def _qkv(nt, nv):
    return [(f"text_model.encoder.layers.{i}.self_attn", f"transformer.resblocks.{i}.attn")
            for i in range(nt)] + [
            (f"vision_model.encoder.layers.{i}.self_attn", f"visual.transformer.resblocks.{i}.attn")
            for i in range(nv)]


def hf_to_openai(sd, nt, nv):
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    out, used = {}, set()
    for h, o in _simple_map(nt, nv):
        out[o] = sd[h]
        used.add(h)
    for h, o in _qkv(nt, nv):
        for s in ("weight", "bias"):
            names = [f"{h}.{x}_proj.{s}" for x in "qkv"]
            out[f"{o}.in_proj_{s}"] = torch.cat([sd[n] for n in names], dim=0)
            used.update(names)
    out["text_projection"] = sd["text_projection.weight"].t()
    out["visual.proj"] = sd["visual_projection.weight"].t()
    used.update(["text_projection.weight", "visual_projection.weight"])
    assert used == set(sd), sorted(set(sd) - used)
    assert out["logit_scale"].shape == torch.Size([])
    return {k: v.contiguous() for k, v in out.items()}


def openai_to_hf(sd, nt, nv):
    out = {}
    for h, o in _simple_map(nt, nv):
        out[h] = sd[o]
    for h, o in _qkv(nt, nv):
        for s in ("weight", "bias"):
            q, k, v = sd[f"{o}.in_proj_{s}"].chunk(3, dim=0)
            out[f"{h}.q_proj.{s}"], out[f"{h}.k_proj.{s}"], out[f"{h}.v_proj.{s}"] = q, k, v
    out["text_projection.weight"] = sd["text_projection"].t()
    out["visual_projection.weight"] = sd["visual.proj"].t()
    return {k: v.contiguous() for k, v in out.items()}


# ---- independent functional forward, OpenAI semantics ---------------------------------------
def _act(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: F.gelu(x)  # exact (erf) GELU, as transformers' "gelu"
    raise ValueError(name)


def _resblocks(x, sd, prefix, n, heads, act, mask):
    d = x.shape[-1]
    for i in range(n):
        p = f"{prefix}transformer.resblocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5).transpose(0, 1)
        a, _ = F.multi_head_attention_forward(
            h, h, h, d, heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"],
            None, None, False, 0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"],
            training=False, need_weights=False, attn_mask=mask)
        x = x + a.transpose(0, 1)
        h = F.layer_norm(x, (d,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.linear(act(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + h
    return x


@torch.no_grad()
def openai_forward(sd, pixel_values, input_ids, text_kw, vision_kw):
    sd = {k: v.float() for k, v in sd.items()}
    # text
    L = input_ids.shape[1]
    mask = torch.full((L, L), float("-inf")).triu_(1)
    x = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:L]
    x = _resblocks(x, sd, "", text_kw["num_hidden_layers"], text_kw["num_attention_heads"],
                   _act(text_kw["hidden_act"]), mask)
    x = F.layer_norm(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    pooled = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]
    text = pooled @ sd["text_projection"]
    # vision
    ps = vision_kw["patch_size"]
    v = F.conv2d(pixel_values, sd["visual.conv1.weight"], stride=ps)
    v = v.reshape(v.shape[0], v.shape[1], -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"].expand(v.shape[0], 1, -1)
    v = torch.cat([cls, v], dim=1) + sd["visual.positional_embedding"]
    d = v.shape[-1]
    v = F.layer_norm(v, (d,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
    v = _resblocks(v, sd, "visual.", vision_kw["num_hidden_layers"],
                   vision_kw["num_attention_heads"], _act(vision_kw["hidden_act"]), None)
    v = F.layer_norm(v[:, 0], (d,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], 1e-5)
    image = v @ sd["visual.proj"]
    img_n = image / image.norm(dim=-1, keepdim=True)
    txt_n = text / text.norm(dim=-1, keepdim=True)
    logits = sd["logit_scale"].exp() * img_n @ txt_n.t()
    return {"image_embeds": image, "text_embeds": text, "text_pooled": pooled,
            "logits_per_image": logits}


def check_close(ref, got, what, tol=2e-5):
    for k, v in got.items():
        err = (ref[k] - v).abs().max().item()
        scale = ref[k].abs().max().item()
        assert err <= tol * max(1.0, scale), f"{what}: {k} differs by {err} (scale {scale})"
        print(f"    {what}: {k} max |diff| {err:.2e}")


def describe(path, tensors):
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")
    for k, v in tensors.items():
        print(f"    {k}: {str(v.dtype).replace('torch.', '')} {tuple(v.shape)}")


def tokenizer_files(tmp):
    from transformers import CLIPTokenizerFast

    vocab_dir = os.path.join(tmp, "vocab")
    clip_vocab.write_vocab_files(vocab_dir)
    return CLIPTokenizerFast.from_pretrained(vocab_dir)


# ---- (a) ------------------------------------------------------------------------------------
def make_hf(tmp):
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    model = build_model(HF_TEXT, HF_VISION, HF_PROJ, seed=0)
    rounded = round_fp16_(build_model(HF_TEXT, HF_VISION, HF_PROJ, seed=0))
    if os.path.isdir(HF_DIR):
        shutil.rmtree(HF_DIR)
    model.half().save_pretrained(HF_DIR, safe_serialization=True)

    tok = tokenizer_files(tmp)
    tok.model_max_length = CTX  # as in real CLIP folders (transformers' default is "unlimited")
    tok.save_pretrained(HF_DIR)
    # transformers writes tokenizer.json pretty-printed (~3.6 MB); the same JSON without
    # indentation is ~40% smaller and loads identically.
    tok.backend_tokenizer.save(os.path.join(HF_DIR, "tokenizer.json"), pretty=False)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(HF_DIR)
    for f in os.listdir(HF_DIR):
        if f not in KEEP_TOKENIZER_FILES | {"config.json", "model.safetensors",
                                            "preprocessor_config.json"}:
            os.remove(os.path.join(HF_DIR, f))

    # reload exactly what is on disk
    tok = CLIPTokenizerFast.from_pretrained(HF_DIR)
    ref_model = CLIPModel.from_pretrained(HF_DIR, attn_implementation="eager",
                                          **dtype_kw(torch.float32)).eval()
    for (n, p), (n2, p2) in zip(ref_model.named_parameters(), rounded.named_parameters()):
        assert n == n2 and p.dtype == torch.float32 and torch.equal(p, p2), n
    assert ref_model.text_model.eos_token_id == EOT

    rows = [list(tok(t, truncation=True, max_length=CTX)["input_ids"]) for t in TEXTS]
    fresh_ref = tokenizer_files(tmp)
    assert rows == [list(fresh_ref(t)["input_ids"]) for t in TEXTS]
    assert rows[0] == [49406, 320, 1125, 539, 320, 1929, 269, 49407], rows[0]
    input_ids = pad_ids(rows)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(100))
    ref = reference_outputs(ref_model, pixel_values, input_ids)

    oa_sd = hf_to_openai(ref_model.state_dict(), 2, 2)
    check_close(ref, openai_forward(oa_sd, pixel_values, input_ids, HF_TEXT, HF_VISION),
                "functional OpenAI forward vs transformers (a)")

    save_file(ref, HF_REF)
    print(f"wrote {os.path.relpath(HF_DIR, ROOT)}/:")
    for f in sorted(os.listdir(HF_DIR)):
        print(f"    {f} ({os.path.getsize(os.path.join(HF_DIR, f))} bytes)")
    describe(HF_REF, ref)
    return rows


# ---- (b) ------------------------------------------------------------------------------------
def make_openai(rows):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPModel

    nt, nv = OA_TEXT["num_hidden_layers"], OA_VISION["num_hidden_layers"]
    model = round_fp16_(build_model(OA_TEXT, OA_VISION, OA_PROJ, seed=1))
    oa_sd = {k: v.half().contiguous() for k, v in hf_to_openai(model.state_dict(), nt, nv).items()}
    expect_shapes = {
        "token_embedding.weight": (49408, 64), "positional_embedding": (77, 64),
        "text_projection": (64, 24), "visual.class_embedding": (128,),
        "visual.conv1.weight": (128, 3, 16, 16), "visual.positional_embedding": (10, 128),
        "visual.proj": (128, 24), "logit_scale": (),
        "transformer.resblocks.0.attn.in_proj_weight": (192, 64),
        "transformer.resblocks.0.attn.in_proj_bias": (192,),
        "visual.transformer.resblocks.1.attn.in_proj_weight": (384, 128),
        "visual.transformer.resblocks.1.mlp.c_fc.weight": (512, 128),
        "visual.transformer.resblocks.1.mlp.c_proj.weight": (128, 512),
    }
    for k, s in expect_shapes.items():
        assert tuple(oa_sd[k].shape) == s, (k, tuple(oa_sd[k].shape), s)
    save_file(oa_sd, OA_PATH)

    # Reference: transformers model holding the same fp16-rounded weights, in float32.
    input_ids = pad_ids(rows)
    pixel_values = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(200))
    ref = reference_outputs(model, pixel_values, input_ids)

    # Round trip: file -> HF names -> fresh transformers model -> identical outputs.
    loaded = load_file(OA_PATH)
    config = CLIPConfig(text_config=dict(OA_TEXT), vision_config=dict(OA_VISION),
                        projection_dim=OA_PROJ)
    config._attn_implementation = "eager"
    fresh = CLIPModel(config).float().eval()
    missing, unexpected = fresh.load_state_dict(
        {k: v.float() for k, v in openai_to_hf(loaded, nt, nv).items()}, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing), (missing, unexpected)
    ref2 = reference_outputs(fresh, pixel_values, input_ids)
    for k in ref:
        assert torch.equal(ref[k], ref2[k]), f"round trip changed {k}"
    print("    round trip OpenAI names -> fresh transformers model: outputs identical")
    check_close(ref, openai_forward(loaded, pixel_values, input_ids, OA_TEXT, OA_VISION),
                "functional OpenAI forward vs transformers (b)")

    save_file(ref, OA_REF)
    print(f"wrote {os.path.relpath(OA_PATH, ROOT)} ({os.path.getsize(OA_PATH)} bytes, "
          f"{len(oa_sd)} tensors, float16)")
    describe(OA_REF, ref)


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(FIX, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_hf(tmp)
    make_openai(rows)


if __name__ == "__main__":
    main()
