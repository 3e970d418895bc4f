"""Kernel time by kernel name from `ncu --csv --page raw --metrics gpu__time_duration.sum`
(scripts/gpu.sh profile): total microseconds, launches, share of the GPU time, largest first.

    python3 ncu_summary.py ncu-image.csv
"""
import collections
import csv
import sys


def main():
    with open(sys.argv[1]) as f:
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.reader(lines))
    header, units, data = rows[0], rows[1], rows[2:]
    name_col, time_col = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    # ncu leaves the unit row empty for this metric: nanoseconds.
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(units[time_col], 1e-3)
    total, count = collections.Counter(), collections.Counter()
    for r in data:
        name = r[name_col].split("(")[0][:90]
        total[name] += float(r[time_col].replace(",", "")) * scale
        count[name] += 1
    all_us = sum(total.values())
    print(f"{len(data)} kernels, {all_us / 1e3:.2f} ms of GPU time")
    for name, us in total.most_common(25):
        print(f"{us:10.1f} us {100 * us / all_us:5.1f}% {count[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
