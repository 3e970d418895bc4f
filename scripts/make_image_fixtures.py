"""Write small test images to fixtures/images/ and CLIP preprocessing references for them.

Images (content: smooth gradients + shapes + mild noise, so resampling differences show;
deterministic, numpy seed 1234):

    a_landscape_320x240.jpg   RGB JPEG (quality 90, default 4:2:0 chroma subsampling)
    b_portrait_180x302.png    RGB PNG  -> resized 224x375, crop offset 75.5: floor 75 / round 76
    c_small_100x100.png       RGB PNG, must be upscaled
    d_wide_601x151.png        RGB PNG  -> resized 891x224, crop offset 333.5: floor 333 / round 334
    e_grey_200x260.png        mode L PNG
    f_grey_256x192.jpg        mode L JPEG
    g_rgba_240x200.png        RGBA PNG with alpha varying 0..255
    h_palette_150x210.png     mode P PNG (adaptive 64-colour palette, no transparency)
    i_webp_300x225.webp       RGB WebP, LOSSLESS (so any conforming decoder gives exact pixels)
    j_exact_224x224.png       RGB PNG, already 224x224 (resize is a no-op)

Reference: transformers' CLIPImageProcessor with its defaults (resize shortest edge to 224 with
PIL bicubic, output long edge int(224*long/short) i.e. floored, center crop 224x224 with offset
(size-224)//2 i.e. floored, rescale 1/255, normalise with CLIP mean/std), applied to
PIL.Image.open(path). The script replicates those steps with PIL/numpy and asserts the replica
equals the installed processor exactly (uint8 crop) and within 1e-6 (normalised floats).

Transparency: OpenAI's CLIP and transformers 4.x convert RGBA to RGB with PIL's
image.convert("RGB"), which DROPS alpha; transformers 5 composites onto a WHITE background first.
`crop.<file>` follows OpenAI / transformers 4 (alpha dropped); for the RGBA image the white
composite is stored as well, under `crop_on_white.<file>`.

Outputs:
    fixtures/images/*.{jpg,png,webp}
    fixtures/images/manifest.json      [{"file", "width", "height", "mode"}] in sorted name order
    fixtures/images/reference.safetensors
        crop.<file>            uint8   (224, 224, 3)  HWC, after resize+crop, before rescale
        crop_on_white.<file>   uint8   (224, 224, 3)  only for the RGBA image (see above)
        pixel_values.<file>    float32 (3, 224, 224)  CHW, fully normalised, for two images

Usage (from the repo root):  python3 scripts/make_image_fixtures.py
Needs: numpy, pillow, safetensors, transformers (4.x or 5.x; no torch needed). Committed files
were made with Pillow 13.0.0 and checked against transformers 4.57.6 and 5.23.0 (byte-identical
output from both). Other Pillow/libjpeg/libwebp versions may encode the images differently.
"""

import json
import os

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "fixtures", "images")

SIZE = 224
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PIXEL_VALUE_FILES = ["a_landscape_320x240.jpg", "b_portrait_180x302.png"]


def base_rgb(w, h, rng, noise=4.0):
    """Smooth colour gradients + a few shapes + mild Gaussian noise, uint8 HxWx3."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    r = 255 * (0.15 + 0.7 * u)
    g = 255 * (0.5 + 0.35 * np.sin(2 * np.pi * (1.3 * v + 0.4 * u)))
    b = 255 * (0.85 - 0.6 * u * v)
    img = Image.fromarray(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, w * 3 // 4), rng.integers(0, h * 3 // 4)
        x1 = x0 + rng.integers(w // 8, w // 3)
        y1 = y0 + rng.integers(h // 8, h // 3)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.rectangle([x0, y0, x1, y1], fill=col)
    pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
    d.polygon(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    for k in range(3):  # thin lines: high frequencies that resampling filters treat differently
        d.line([(0, (k + 1) * h // 4), (w - 1, (k + 1) * h // 5)], fill=(255, 255, 255), width=1)
    arr = np.asarray(img).astype(np.float64)
    arr += rng.normal(0.0, noise, arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def make_images(rng):
    """Write the images; returns the list of file names."""
    os.makedirs(OUT_DIR, exist_ok=True)
    files = []

    def save(name, img, **kw):
        img.save(os.path.join(OUT_DIR, name), **kw)
        files.append(name)

    save("a_landscape_320x240.jpg", Image.fromarray(base_rgb(320, 240, rng)), quality=90)
    save("b_portrait_180x302.png", Image.fromarray(base_rgb(180, 302, rng)), optimize=True)
    save("c_small_100x100.png", Image.fromarray(base_rgb(100, 100, rng, noise=8)), optimize=True)
    save("d_wide_601x151.png", Image.fromarray(base_rgb(601, 151, rng)), optimize=True)
    save("e_grey_200x260.png", Image.fromarray(base_rgb(200, 260, rng)).convert("L"), optimize=True)
    save("f_grey_256x192.jpg", Image.fromarray(base_rgb(256, 192, rng)).convert("L"), quality=90)

    rgb = base_rgb(240, 200, rng)
    yy, xx = np.mgrid[0:200, 0:240]
    alpha = (255 * (xx / 239.0) * (0.5 + 0.5 * np.cos(yy / 199.0 * np.pi))).round()
    alpha[:20, :] = 0  # fully transparent band (colour underneath is still non-trivial)
    alpha[-20:, :] = 255  # fully opaque band
    rgba = np.concatenate([rgb, alpha.astype(np.uint8)[..., None]], -1)
    save("g_rgba_240x200.png", Image.fromarray(rgba, "RGBA"), optimize=True)

    pal = Image.fromarray(base_rgb(150, 210, rng)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    assert pal.mode == "P" and "transparency" not in pal.info
    save("h_palette_150x210.png", pal, optimize=True)

    save("i_webp_300x225.webp", Image.fromarray(base_rgb(300, 225, rng)), lossless=True)
    save("j_exact_224x224.png", Image.fromarray(base_rgb(224, 224, rng)), optimize=True)
    return sorted(files)


# ---- replica of CLIPImageProcessor's steps --------------------------------------------------
def to_rgb(img, white_background):
    if white_background and ("A" in img.getbands() or img.info.get("transparency") is not None):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def resize_crop(img_rgb):
    w, h = img_rgb.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(SIZE * long / short)  # floored, as transformers and torchvision do
    nw, nh = (SIZE, new_long) if w <= h else (new_long, SIZE)
    resized = img_rgb.resize((nw, nh), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(resized)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2  # floored offsets (transformers)
    return np.ascontiguousarray(arr[top : top + SIZE, left : left + SIZE]), (nw, nh, left, top)


def normalise(crop_hwc_u8):
    x = crop_hwc_u8.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1).astype(np.float32))


def hf_processor():
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        try:
            from transformers import CLIPImageProcessorPil as Proc  # PIL/numpy backend
        except ImportError:
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
    else:
        from transformers import CLIPImageProcessor as Proc  # the numpy/PIL ("slow") processor
    return Proc(), major, transformers.__version__


def main():
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1234)
    files = make_images(rng)
    proc, major, version = hf_processor()
    assert proc.size == {"shortest_edge": 224} or dict(proc.size).get("shortest_edge") == 224

    tensors, manifest = {}, []
    for name in files:
        path = os.path.join(OUT_DIR, name)
        img = Image.open(path)
        img.load()
        manifest.append({"file": name, "width": img.width, "height": img.height, "mode": img.mode})
        crop, geom = resize_crop(to_rgb(img, white_background=False))
        tensors[f"crop.{name}"] = crop
        has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
        if has_alpha:
            crop_white, _ = resize_crop(to_rgb(img, white_background=True))
            tensors[f"crop_on_white.{name}"] = crop_white
        if name in PIXEL_VALUE_FILES:
            tensors[f"pixel_values.{name}"] = normalise(crop)

        # Check the replica against the installed transformers processor.
        expected = crop_white if (has_alpha and major >= 5) else crop
        raw = proc(images=Image.open(path), do_rescale=False, do_normalize=False, return_tensors="np")
        raw = np.asarray(raw["pixel_values"][0])
        assert raw.shape == (3, SIZE, SIZE), raw.shape
        assert np.array_equal(raw.transpose(1, 2, 0).astype(np.float64), expected.astype(np.float64)), name
        full = np.asarray(proc(images=Image.open(path), return_tensors="np")["pixel_values"][0])
        err = float(np.abs(full - normalise(expected)).max())
        assert err <= 1e-6, (name, err)
        print(f"  {name}: {img.width}x{img.height} {img.mode} -> resized {geom[0]}x{geom[1]}, "
              f"crop left={geom[2]} top={geom[3]}; processor check ok (max |diff| {err:.1e})")

    ref_path = os.path.join(OUT_DIR, "reference.safetensors")
    save_file(tensors, ref_path)
    man_path = os.path.join(OUT_DIR, "manifest.json")
    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")

    print(f"transformers {version} ({type(proc).__name__}), pillow {Image.__version__}")
    total = 0
    for name in files + ["manifest.json", "reference.safetensors"]:
        size = os.path.getsize(os.path.join(OUT_DIR, name))
        total += size
        print(f"wrote fixtures/images/{name} ({size} bytes)")
    print(f"total {total} bytes; tensors in reference.safetensors:")
    for k, v in tensors.items():
        print(f"  {k}: {v.dtype} {tuple(v.shape)}")


if __name__ == "__main__":
    main()
