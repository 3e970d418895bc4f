"""PyTorch's best fp32 matrix-multiply rate on this CPU (its BLAS: MKL or OpenBLAS), at the shapes
promptclip-bench sgemm times with candle, and the arithmetic rate of transformers' image encoding
is read against it (bench/run.sh). Prints JSON lines.
    python bench/torch_sgemm.py"""
import json, os, time

import torch


def best_gflops(m, k, n, reps=10):
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = min(_timed(a, b) for _ in range(reps))
    return 2.0 * m * k * n / best / 1e9


def _timed(a, b):
    t = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - t


def main():
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    for what, (m, k, n) in [("sgemm_2048", (2048, 2048, 2048)), ("sgemm_vit_b16_qkv_b8", (8 * 197, 768, 2304))]:
        g = best_gflops(m, k, n)
        print(json.dumps({"impl": "torch", "what": what, "m": m, "k": k, "n": n, "threads": threads,
                          "torch": torch.__version__, "blas": torch.backends.mkl.is_available() and "mkl" or "other",
                          "gflops": g, "per_second": g}))


if __name__ == "__main__":
    main()
