#!/usr/bin/env python3
"""Tables and a plot from the quality study's output (studies/quality/quality_study).

Reads DIR/study.json, DIR/<row>/seed-<s>/report.json and DIR/additivity.*
(as studies/quality/quality_study writes them, in one run or split into a --gate-only
run and --rows-only runs; DIR/runs/ and DIR/logs/ are not read) and prints a
markdown report: the teacher and classifier, the gate's guidance sweep, then
one line per row with the mean ± sample
standard deviation over seeds of each metric and its decline relative to the
teacher, then the additivity correlations. With --svg PATH it also writes a
scatter plot of the additivity points (predicted vs measured output loss),
drawn by hand (no plotting library). Python 3 standard library only.

  python3 studies/quality/quality_table.py OUT [--svg additivity.svg] [--out table.md]
"""

import argparse
import csv
import glob
import json
import math
import os
import statistics
import sys

ROW_ORDER = [
    "rh-output_loss-nkd",
    "rh-output_loss-pkd",
    "rh-magnitude-nkd",
    "rh-random-nkd",
    "rh-handcrafted-nkd",
    "r50-output_loss-nkd",
    "r50-output_loss-pkd",
    "r50-magnitude-nkd",
    "r50-random-nkd",
]


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_reports(root):
    """{row id: [report, ...]} sorted by seed."""
    rows = {}
    pattern = os.path.join(root, "*", "seed-*", "report.json")
    for path in sorted(glob.glob(pattern)):
        report = load_json(path)
        rows.setdefault(report["row"], []).append(report)
    for reports in rows.values():
        reports.sort(key=lambda r: r["seed"])
    return rows


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return m, sd


def fmt(values, digits=3, scale=1.0, suffix=""):
    m, sd = mean_sd([None if v is None else v * scale for v in values])
    if m is None:
        return "n/a"
    if sd is None:
        return f"{m:.{digits}f}{suffix}"
    return f"{m:.{digits}f} ± {sd:.{digits}f}{suffix}"


def row_sort_key(row_id):
    return (ROW_ORDER.index(row_id) if row_id in ROW_ORDER else len(ROW_ORDER),
            row_id)


def metric(report, *path):
    value = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def table(root):
    study_path = os.path.join(root, "study.json")
    study = load_json(study_path) if os.path.exists(study_path) else {}
    rows = load_reports(root)
    out = []
    teacher = study.get("teacher", {})
    gate = study.get("gate", {})
    classifier = study.get("classifier", {})
    if study:
        out.append("## Setup\n")
        out.append(f"- device: {study.get('device', 'n/a')}; "
                   f"teacher parameters: {teacher.get('parameters', 'n/a')}; "
                   f"units: {study.get('units', 'n/a')}; "
                   f"R_h (BK-SDM-Base rule): {study.get('ratio_h', float('nan')):.4f}")
        acc = classifier.get("heldout_accuracy", {})
        if acc:
            out.append(
                "- classifier held-out accuracy: present {present:.3f}, kind "
                "{kind:.3f} (chance 0.250), colour {colour:.3f} (chance "
                "0.167), size {size:.3f} (chance 0.500)".format(**acc))
        real = classifier.get("real_adherence", {})
        chance = classifier.get("chance_adherence", {})
        if real and chance:
            out.append(
                f"- adherence of real held-out images: "
                f"{real['attribute_accuracy']:.3f} attributes, "
                f"{real['exact_rate']:.3f} exact; chance (shuffled prompts): "
                f"{chance['attribute_accuracy']:.3f}, {chance['exact_rate']:.3f}")
        ta = gate.get("teacher_adherence", {})
        tu = gate.get("teacher_adherence_unguided", {})
        sweep = gate.get("sweep", [])
        if len(sweep) > 1:
            out.append(
                f"- guidance sweep of the teacher ({gate.get('ddim_steps')} "
                f"DDIM steps, {gate.get('samples')} prompts, same noise), "
                f"attributes / exact: " + ", ".join(
                    f"g={e['guidance']:g}: "
                    f"{e['adherence']['attribute_accuracy']:.3f} / "
                    f"{e['adherence']['exact_rate']:.3f}" for e in sweep)
                + f"; threshold {gate.get('threshold', float('nan')):.3f}")
        if ta:
            chosen = ("forced" if gate.get("guidance_forced")
                      else "best of the sweep" if len(sweep) > 1 else None)
            out.append(
                f"- teacher DDIM samples (guidance {gate.get('guidance'):g}"
                + (f", {chosen}" if chosen else "")
                + f", {gate.get('ddim_steps')} steps, {gate.get('samples')} "
                f"prompts): {ta['attribute_accuracy']:.3f} attributes, "
                f"{ta['exact_rate']:.3f} exact"
                + (f"; unguided {tu['attribute_accuracy']:.3f}, "
                   f"{tu['exact_rate']:.3f}" if tu else "")
                + f"; gate {'passed' if gate.get('passed') else 'FAILED'}")
        # The budget the rows ran with (their reports), else study.json's.
        budgets = sorted({
            (metric(r, "distill", "steps"), metric(r, "distill", "batch"),
             metric(r, "distill", "learning_rate"),
             metric(r, "distill", "precision"))
            for reports in rows.values() for r in reports}, key=str)
        distill = study.get("distill", {})
        if not budgets and distill:
            budgets = [(distill.get("steps"), distill.get("batch"),
                        distill.get("learning_rate"),
                        distill.get("precision"))]
        if budgets:
            out.append(
                "- distillation budget per row: "
                + ("MIXED: " if len(budgets) > 1 else "")
                + "; ".join(f"{b[0]} steps of batch {b[1]}, lr {b[2]}, {b[3]}"
                            for b in budgets)
                + f"; seeds: {study.get('seeds')}")
        scales = sorted({metric(r, "sampling", "guidance")
                         for reports in rows.values() for r in reports
                         if metric(r, "sampling", "guidance") is not None})
        if len(scales) > 1 or (scales and gate.get("guidance") is not None
                               and scales[0] != gate.get("guidance")):
            out.append(
                "- WARNING: the rows sampled at guidance "
                + ", ".join(f"{g:g}" for g in scales)
                + f", the gate chose {gate.get('guidance')}")
        out.append("")

    out.append("## Rows (mean ± sample std over seeds)\n")
    out.append(
        "| row | criterion | feature KD | removed params | seeds | "
        "adherence (attributes) | Δ vs teacher | exact | Δ vs teacher | "
        "rel. output error | denoising loss | Δ loss vs teacher | "
        "sample PSNR (dB) |")
    out.append("|" + "---|" * 13)
    for row_id in sorted(rows, key=row_sort_key):
        reports = rows[row_id]
        r0 = reports[0]
        adh = [metric(r, "adherence", "attribute_accuracy") for r in reports]
        t_adh = [metric(r, "teacher_adherence", "attribute_accuracy")
                 for r in reports]
        exact = [metric(r, "adherence", "exact_rate") for r in reports]
        t_exact = [metric(r, "teacher_adherence", "exact_rate")
                   for r in reports]
        d_adh = [a - t if a is not None and t is not None else None
                 for a, t in zip(adh, t_adh)]
        d_exact = [a - t if a is not None and t is not None else None
                   for a, t in zip(exact, t_exact)]
        loss = [metric(r, "evaluation", "student_loss") for r in reports]
        t_loss = [metric(r, "evaluation", "teacher_loss") for r in reports]
        d_loss = [s / t - 1 if s is not None and t else None
                  for s, t in zip(loss, t_loss)]
        out.append(
            "| {row} | {crit} | {kd} | {ratio} | {n} | {adh} | {dadh} | "
            "{exact} | {dexact} | {rel} | {loss} | {dloss} | {psnr} |".format(
                row=row_id,
                crit=r0["criterion"],
                kd=r0["feature_kd"],
                ratio=fmt([r["achieved_ratio"] for r in reports], 1, 100, "%"),
                n=len(reports),
                adh=fmt(adh),
                dadh=fmt(d_adh),
                exact=fmt(exact),
                dexact=fmt(d_exact),
                rel=fmt([metric(r, "evaluation", "relative_error")
                         for r in reports], 4),
                loss=fmt(loss, 4),
                dloss=fmt(d_loss, 1, 100, "%"),
                psnr=fmt([metric(r, "sample_psnr_db", "mean")
                          for r in reports], 1)))
    out.append("")

    add_path = os.path.join(root, "additivity.json")
    if os.path.exists(add_path):
        add = load_json(add_path)
        out.append("## Additivity of the output-loss scores\n")
        out.append("| set size | sets | Pearson | Spearman |")
        out.append("|---|---|---|---|")
        for r in add.get("by_set_size", []):
            p = r.get("pearson")
            s = r.get("spearman")
            out.append(f"| {r['set_size']} | {r['samples']} | "
                       f"{'n/a' if p is None else f'{p:.3f}'} | "
                       f"{'n/a' if s is None else f'{s:.3f}'} |")
        pooled = add.get("pooled", {})
        if pooled:
            p, s = pooled.get("pearson"), pooled.get("spearman")
            out.append(f"| pooled | {pooled.get('samples')} | "
                       f"{'n/a' if p is None else f'{p:.3f}'} | "
                       f"{'n/a' if s is None else f'{s:.3f}'} |")
        out.append("")
    return "\n".join(out)


def nice_ticks(lo, hi, count=5):
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 0.5:
        ticks.append(t)
        t += step
    return ticks


def svg_scatter(root, path):
    points = []
    with open(os.path.join(root, "additivity.csv"), encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            points.append((int(rec["set_size"]), float(rec["predicted"]),
                           float(rec["measured"])))
    pooled = {}
    add_path = os.path.join(root, "additivity.json")
    if os.path.exists(add_path):
        pooled = load_json(add_path).get("pooled", {})
    width, height, margin = 560, 460, 70
    xs = [p[1] for p in points] or [0.0]
    ys = [p[2] for p in points] or [0.0]
    hi = max(max(xs), max(ys))
    ticks = nice_ticks(0.0, hi)
    top = ticks[-1] if ticks[-1] > 0 else 1.0

    def sx(v):
        return margin + (width - 2 * margin) * v / top

    def sy(v):
        return height - margin - (height - 2 * margin) * v / top

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
               "#8c564b", "#e377c2", "#17becf"]
    sizes = sorted({p[0] for p in points})
    colour = {s: palette[i % len(palette)] for i, s in enumerate(sizes)}
    e = []
    e.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="sans-serif" font-size="12">')
    e.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    for t in ticks:
        e.append(f'<line x1="{sx(t):.1f}" y1="{sy(0):.1f}" x2="{sx(t):.1f}" '
                 f'y2="{sy(top):.1f}" stroke="#eee"/>')
        e.append(f'<line x1="{sx(0):.1f}" y1="{sy(t):.1f}" x2="{sx(top):.1f}" '
                 f'y2="{sy(t):.1f}" stroke="#eee"/>')
        e.append(f'<text x="{sx(t):.1f}" y="{sy(0) + 16:.1f}" '
                 f'text-anchor="middle">{t:g}</text>')
        e.append(f'<text x="{sx(0) - 6:.1f}" y="{sy(t) + 4:.1f}" '
                 f'text-anchor="end">{t:g}</text>')
    e.append(f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(top):.1f}" '
             f'y2="{sy(0):.1f}" stroke="black"/>')
    e.append(f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(0):.1f}" '
             f'y2="{sy(top):.1f}" stroke="black"/>')
    e.append(f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(top):.1f}" '
             f'y2="{sy(top):.1f}" stroke="#999" stroke-dasharray="4 4"/>')
    for size, x, y in points:
        e.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" '
                 f'fill="{colour[size]}" fill-opacity="0.8"/>')
    for i, size in enumerate(sizes):
        ly = margin + 16 * i
        e.append(f'<circle cx="{margin + 10}" cy="{ly}" r="4" '
                 f'fill="{colour[size]}"/>')
        e.append(f'<text x="{margin + 20}" y="{ly + 4}">{size} units</text>')
    title = "Additivity: measured vs predicted output loss"
    p, s = pooled.get("pearson"), pooled.get("spearman")
    if p is not None and s is not None:
        title += f" (pooled r = {p:.3f}, rho = {s:.3f})"
    e.append(f'<text x="{width / 2:.1f}" y="24" text-anchor="middle" '
             f'font-size="14">{title}</text>')
    e.append(f'<text x="{width / 2:.1f}" y="{height - 20}" '
             'text-anchor="middle">predicted (sum of single-unit scores)'
             '</text>')
    e.append(f'<text x="18" y="{height / 2:.1f}" text-anchor="middle" '
             f'transform="rotate(-90 18 {height / 2:.1f})">measured '
             '(removing the whole set)</text>')
    e.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(e) + "\n")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="the study's --out folder")
    parser.add_argument("--out", help="write the markdown here (default: "
                        "standard output)")
    parser.add_argument("--svg", help="write the additivity scatter plot here")
    args = parser.parse_args(argv)
    text = table(args.dir)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    if args.svg:
        svg_scatter(args.dir, args.svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
