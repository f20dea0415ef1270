#!/usr/bin/env python3
"""Prints the medians of the last `cargo bench -p ryw-http --bench server` run as a Markdown
table: what the layer adds to the bare handler, in nanoseconds and in HMACs (one HMAC-SHA256 over
a 4-scope token, measured in the same run).

    cargo bench -p ryw-http --bench server && python3 crates/ryw-http/benches/ratios.py
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion") / "server"
rows = {}
for est in sorted(root.glob("*/new/estimates.json")):
    name = json.loads((est.parent / "benchmark.json").read_text())["function_id"]
    rows[name] = json.loads(est.read_text())["median"]["point_estimate"]

hmac = rows.pop("one HMAC-SHA256 over a 4-scope token")
bare = rows.pop("bare handler")
print(f"one HMAC-SHA256 over a 4-scope token: {hmac:.0f} ns; bare handler: {bare:.0f} ns")
print()
print("| request | median | added by the layer | in HMACs |")
print("|---|---:|---:|---:|")
for name, ns in rows.items():
    print(f"| {name} | {ns:.0f} ns | {ns - bare:.0f} ns | {(ns - bare) / hmac:.2f} |")
