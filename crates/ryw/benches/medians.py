#!/usr/bin/env python3
"""Prints the median of every criterion benchmark of the last run as a Markdown table, with the
layer's overhead over the bare service measured in the same run.

    cargo bench -p ryw && python3 crates/ryw/benches/medians.py
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in sorted(root.glob("*/*/new/estimates.json")):
    group, name = est.parts[-4], est.parts[-3]
    rows[(group, name)] = json.loads(est.read_text())["median"]["point_estimate"]

bare = rows.get(("layer", "bare service_fn"))
print("| benchmark | median | overhead vs bare service_fn |")
print("|---|---:|---:|")
for (group, name), ns in rows.items():
    extra = f"{ns - bare:.1f} ns" if group == "layer" and bare is not None else ""
    print(f"| {group} / {name} | {ns:.1f} ns | {extra} |")
