"""The GPU benchmark's table: promptclip against the official PyTorch step, from the JSON lines
that promptclip-bench gpu and torch_official_gpu.py print in the same run.

    python3 gpu_report.py promptclip.jsonl official.jsonl
Speed ratio > 1: promptclip is faster. Memory ratio > 1: promptclip uses less.
"""
import json
import sys


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def main():
    ours, theirs = (read(p) for p in sys.argv[1:3])
    find = lambda rows, prec, what: next((r for r in rows if r.get("prec") == prec and r["what"] == what), None)
    print(f"{'workload':<26}{'prec':<6}{'promptclip':>14}{'official':>14}{'speed':>8}{'mem (MiB) ours/official':>28}")
    for o in ours:
        if "ms" not in o:
            continue
        t = find(theirs, o["prec"], o["what"])
        per = "ms/image" if o["what"].startswith("cocoop") else ("images/s" if o["what"].startswith("image") else "ms/step")
        value = lambda r: r["ms_per_image"] if per == "ms/image" else (r["per_second"] if per == "images/s" else r["ms"])
        mine = f"{value(o):.2f}"
        if t is None:
            print(f"{o['what']:<26}{o['prec']:<6}{mine:>14}{'-':>14}{'':>8}{o['peak_mib']:>16.0f}  ({per})")
            continue
        speed = o["per_second"] / t["per_second"]
        mem = f"{o['peak_mib']:.0f} / {t['peak_mib']:.0f}"
        print(f"{o['what']:<26}{o['prec']:<6}{mine:>14}{value(t):>14.2f}{speed:>7.2f}x{mem:>28}  ({per})")
    for r in theirs:
        if r["what"].startswith("image_encode_transformers"):
            mine = find(ours, "fp16", "image_encode")
            ratio = f"{mine['per_second'] / r['per_second']:.2f}x" if mine else ""
            print(f"{r['what']:<26}{r['prec']:<6}{(mine or {}).get('per_second', 0):>14.0f}{r['per_second']:>14.0f}{ratio:>8}  (images/s, promptclip vs transformers)")
    print("\nloss agreement (same weights, inputs and start; each step's loss):")
    for o in ours:
        if "losses" not in o:
            continue
        t = find(theirs, o["prec"], o["what"])
        if t is None:
            continue
        diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(o["losses"], t["losses"]))
        print(f"  {o['what']:<24}{o['prec']:<6} promptclip {o['losses'][0]:.5f} -> {o['losses'][-1]:.5f}   official {t['losses'][0]:.5f} -> {t['losses'][-1]:.5f}   max rel diff {diff:.1e}")



def e2e(ours, theirs):
    find = lambda rows, what: next((r for r in rows if r["what"] == what), None)
    o, t = find(ours, "e2e_coop"), find(theirs, "e2e_coop")
    if not (o or t):
        return
    print("\nthe whole job (16 shots x 100 classes of 500x375 JPEGs, crop + flip, batch 32, fp16):")
    if o:
        print(f"  promptclip: {o['epochs']} epochs in {o['seconds']:.1f} s ({o['seconds_per_epoch'] * 1e3:.0f} ms/epoch after a first epoch of {o['first_epoch_seconds']:.2f} s; loss {o['first_epoch_loss']:.3f} -> {o['last_epoch_loss']:.3f})")
    if t:
        print(f"  official:   {t['seconds_per_epoch']:.2f} s/epoch (first {t['first_epoch_seconds']:.2f} s) -> about {t['seconds_200_epochs_estimated']:.0f} s for 200 epochs")
    if o and t and o["epochs"] == 200:
        print(f"  speed-up on 200 epochs: {t['seconds_200_epochs_estimated'] / o['seconds']:.1f}x")
    o, t = find(ours, "e2e_evaluate"), find(theirs, "e2e_evaluate")
    if o and t:
        print(f"  evaluation (decode, crop, encode, classify): promptclip {o['per_second']:.0f} images/s, official {t['per_second']:.0f} images/s ({o['per_second'] / t['per_second']:.2f}x)")


if __name__ == "__main__":
    main()
    e2e(*(read(p) for p in sys.argv[1:3]))
