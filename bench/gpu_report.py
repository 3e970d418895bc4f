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


if __name__ == "__main__":
    main()
