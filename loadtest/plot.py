#!/usr/bin/env python3
"""Bar charts of a compare-*.md table: redirects/s, p99 and CPU per redirect."""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

table, png = sys.argv[1], sys.argv[2]
rows = []
for line in open(table):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 8 and cells[1].replace(".", "").isdigit():
        rows.append(cells)
names = [r[0].split(" (")[0] for r in rows]
series = [("redirects/s", 1, "higher is better"), ("p99 latency (ms)", 3, "lower is better"),
          ("CPU per redirect (µs)", 5, "lower is better")]
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
colors = ["#9ca3af" if "floor" in n else "#2563eb" if "clickedge" in n else "#f59e0b" for n in names]
for ax, (title, col, note) in zip(axes, series):
    values = [float(r[col]) for r in rows]
    ax.bar(names, values, color=colors)
    ax.set_title(f"{title}\n({note})", fontsize=10)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}" if v >= 100 else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
fig.suptitle("One server core, same redirects (loadtest/compare.sh)", fontsize=11)
fig.tight_layout()
fig.savefig(png, dpi=110)
