"""Regenerate the README's speed and reproduction tables from machine-readable results.

Speed: every ``benchmarks/results/*.json`` written by the benchmark harness
(``benchmarks/_harness.py``): one row per recorded ratio (what it compares, ours, reference,
ratio, target, threads) and per recorded value that carries a target (peak RSS, ...).
Reproductions: the JSON each ``normscope reproduce`` command writes into its ``--out`` folder
(``ni/results.json``, ``riechers/claims.json``, ``brody/summary.json``), passed as
``--repro NAME=DIR``; a copy of it is kept in ``benchmarks/results/repro/NAME/``.

The tables live between marker comments in README.md::

    <!-- normscope:speed:start --> ... <!-- normscope:speed:end -->
    <!-- normscope:repro:start --> ... <!-- normscope:repro:end -->

Usage::

    python scripts/readme_numbers.py                 # rewrite the blocks in README.md
    python scripts/readme_numbers.py --check         # exit 1 when README and JSON disagree
    python scripts/readme_numbers.py --print         # print the generated blocks
    python scripts/readme_numbers.py --repro ni=out/ni --repro riechers=out/riechers --repro brody=out/brody
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- normscope:{name}:{end} -->"


def _fmt_s(s: Any) -> str:
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        return "–"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def speed_rows(results: Path) -> list[str]:
    """Markdown rows of the speed table, sorted by benchmark and key (stable output)."""
    rows = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        script = f"`{data.get('name', path.stem)}.py`"
        env = data.get("env") or {}
        where = f"{env.get('processor', '?')}, {env.get('date', '?')}"
        quick = " (**quick smoke run**)" if (data.get("values") or {}).get("quick") else ""
        for key, r in sorted((data.get("ratios") or {}).items()):
            what = r.get("what") or key
            label = r.get("label") or ""
            threads = r.get("threads")
            tgt = f" (target {r['target']})" if r.get("target") else ""
            rows.append(f"| {script}: {what}; {label}; {threads} thread{'s' if threads != 1 else ''}{quick} "
                        f"| {r.get('ours', '')} {_fmt_s(r.get('ours_s'))} | {r.get('reference', '')} "
                        f"{_fmt_s(r.get('reference_s'))} | {r['ratio']:.3f}×{tgt} | {where} |")
        for key, v in sorted((data.get("values") or {}).items()):
            if isinstance(v, dict) and "target" in v:
                shown = {k: x for k, x in v.items() if k != "target" and not isinstance(x, (dict, list))}
                body = ", ".join(f"{k} {_fmt(x)}" for k, x in shown.items())
                rows.append(f"| {script}: {key}{quick} | {body} | – | target {v['target']} | {where} |")
    return rows


def speed_block(results: Path) -> str:
    rows = speed_rows(results)
    if not rows:
        raise SystemExit(f"no benchmark results in {results}; run the benchmarks (benchmarks/bench_*.py) first")
    return "\n".join(["| benchmark: what it measures | ours | reference | ratio / value | machine, date |",
                      "|---|---|---|---|---|", *rows])


# -- reproductions: one extractor per command, reading the JSON it writes -------------------------
def _ni(path: Path) -> str:
    res = json.loads(path.read_text())["results"]
    parts = []
    rows = (res.get("construct") or {}).get("rows") or []
    big = [r for r in rows if r.get("classes") == 2 and r.get("m") == max((x.get("m", 0) for x in rows), default=0)]
    if big:
        depths = [r["depth"] for r in big]
        parts.append(f"width-3 LN-Nets, m = {big[0]['m']} binary: {min(depths)}–{max(depths)} LN layers "
                     f"(bound m − 2 = {big[0]['m'] - 2}), float64 accuracy {min(r['acc64'] for r in big):.0%}")
    for dname, models in (res.get("capacity") or {}).items():
        accs = ", ".join(f"{label} {v['mean']:.2f}" for label, v in models.items())
        parts.append(f"random labels ({dname}): {accs}")
    return "; ".join(parts)


def _riechers(path: Path) -> str:
    res = json.loads(path.read_text())
    claims = res.get("claims") or []
    ok = [c for c in claims if c.get("pass", c.get("ok"))]
    return f"claims: {len(ok)}/{len(claims)} checks reproduce the reference status"


_BRODY_NORM1 = {"proj_scale": "projection + scaling", "scale_inv_sqrt_d": "scaling to 1/√d",
                "scale_sqrt_d": "scaling to √d", "none": "no norm"}


def _slash(values: list[float], nd: int = 1) -> str:
    return "/".join(f"{v:.{nd}f}" for v in values)


def _brody_random_points(e: dict[str, Any]) -> str:
    (d0, d1), (n0, n1) = e["d"], e["n"]
    cells = []
    for r in e["without_ln"]:
        ours = (f"P ≥ 0.95 from n = {r['first_n_p95']}" if r["first_n_p95"] is not None
                else f"P = {r['p_at_n_max']:.2f} at n = {n1}")
        cells.append(f"d = {r['d']} {ours} (paper {r['paper']})")
    return (f"Gaussian points, d = {d0}–{d1}, n = {n0}–{n1} ({e['n_values']} values), {e['runs']} draws per cell: "
            f"P(some point unselectable) with LN, max over the grid {e['with_ln_max_p']:.2f} "
            f"(paper {e['paper_with_ln_max_p']:g}, {e['paper_with_ln_source']}); without LN: " + ", ".join(cells))


def _brody_majority(e: dict[str, Any]) -> str:
    head = (f"majority task, d = {e['d']}, {e['steps']:,} steps of batch {e['batch_size']} (paper {e['paper_steps']:,} "
            f"of {e['paper_batch_size']:,}), {e['seeds']} seeds")
    parts = []
    if e["at_step"]:
        at = e["at_step"][-1]
        cells = []
        for v, o in at["ours"].items():
            p = at["paper"].get(v)
            paper = f" (paper ≈ {p['train_loss']:g} / {p['test_acc']:g})" if p and p["test_acc"] is not None else ""
            cells.append(f"{_BRODY_NORM1.get(v, v)} {o['train_loss']:.2f} / {o['test_acc']:.2f}{paper}")
        parts.append(f"train loss / test accuracy at step {at['step']:,}: " + ", ".join(cells))
    angles = ", ".join(f"{_BRODY_NORM1.get(v, v)} {f['angle_start']:.0f}° → {f['angle_end']:.0f}°" for v, f in e["final"].items())
    parts.append(f"query angle to 𝟙, start → step {e['steps']:,}: {angles} (paper: {e['paper_angle']})")
    return head + ": " + "; ".join(parts) + ". Paper's \"without projection\" = scaling to 1/√d"


def _brody_lm(e: dict[str, Any]) -> str:
    t1, t2, loss = e["table1"], e["table2"], e["final_loss"]
    return (f"d = {e['d']} LM, {e['steps']:,} steps, {e['vocab_size']}-token BPE (paper: 50k steps, GPT-2 BPE), "
            f"{e['measure_windows']} held-out windows of {e['measure_len']} tokens: % unselectable after ln_1, layers "
            f"1–{e['layers']}: without scaling {_slash(t1['ours']['without_scaling'])} "
            f"(paper {_slash(t1['paper']['without_scaling'])}), with scaling {_slash(t1['ours']['with_scaling'])} "
            f"(paper {_slash(t1['paper']['with_scaling'])}); before ln_1 of the with-scaling model "
            f"{_slash(t2['ours']['before'])} (paper {_slash(t2['paper']['before'])}); final held-out loss with / without "
            f"scaling {loss['ours']['with_scaling']['heldout']:.3f} / {loss['ours']['without_scaling']['heldout']:.3f} "
            f"(paper test {loss['paper']['with_scaling']['test']:g} / {loss['paper']['without_scaling']['test']:g}, "
            f"other vocabulary: compare the direction only)")


def _brody_real(e: dict[str, Any]) -> str:
    cells = []
    for name, m in e["models"].items():
        keys = (f", worst key head (W_K·y) {m['keys_max']:.1f} ({m['keys_beyond_duplicates_max']:.1f} beyond duplicates)"
                if m["keys_max"] is not None else "")
        cells.append(f"{name} ({m['sequences']} × {m['seq_len']} tokens, d = {m['d']}): worst layer before the norm "
                     f"{m['before_max']:.1f}, after {m['after_max']:.1f} ({m['after_beyond_duplicates_max']:.1f} beyond "
                     f"exact duplicates, which are up to {m['duplicates_max']:.1f}){keys}")
    return ("packaged models (extension, not in the paper; its claim: " + e["paper_claim"] + "), "
            "% unselectable: " + "; ".join(cells))


_BRODY = {"random-points": _brody_random_points, "majority": _brody_majority, "lm": _brody_lm, "real": _brody_real}


def _brody(path: Path) -> list[tuple[str, str]]:
    try:
        exps = json.loads(path.read_text())["experiments"]
        rows = [(name, _BRODY[name](e)) for name, e in exps.items()]
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise SystemExit(f"{path}: missing or malformed entry ({type(err).__name__}: {err}); regenerate it with "
                         f"`normscope reproduce brody --out DIR` and copy it with --repro brody=DIR") from None
    if not rows:
        raise SystemExit(f"{path}: no experiments; regenerate it with `normscope reproduce brody --out DIR`")
    missing = [name for name in _BRODY if name not in exps]
    return rows + [(name, (f"not part of the run this table comes from (`--only` left it out); "
                           f"`normscope reproduce brody --only {name}` measures it")) for name in missing]


class Repro(NamedTuple):
    """A reproduce command: README label, the JSON file it writes into --out, and the row builder
    (path of that file -> [(experiment, what it shows)]; experiment "" for a single row)."""

    label: str
    file: str
    rows: Callable[[Path], list[tuple[str, str]]]


REPRO: dict[str, Repro] = {
    "ni": Repro("`reproduce ni`", "results.json", lambda f: [("", _ni(f))]),
    "riechers": Repro("`reproduce riechers`", "claims.json", lambda f: [("", _riechers(f))]),
    "brody": Repro("`reproduce brody`", "summary.json", _brody),
}


def repro_block(folders: dict[str, Path]) -> str:
    lines = ["| command | what it shows (generated from the command's JSON) |", "|---|---|"]
    for name, folder in folders.items():
        if name not in REPRO:
            raise SystemExit(f"--repro {name}=...: no extractor for {name!r}; known: {', '.join(REPRO)}")
        rep = REPRO[name]
        for exp, text in rep.rows(folder / rep.file):
            lines.append(f"| {rep.label}{f' ({exp})' if exp else ''} | {text} |")
    return "\n".join(lines)


# -- the main job's headline: from a `normscope report` run's stats.json ------------------------
def headline_block(stats_path: Path) -> str:
    """Per-model headline numbers of a report run, computed by the report's own verdict code."""
    sys.path.insert(0, str(ROOT / "src"))
    from normscope.report.format import pct
    from normscope.report.verdict import model_verdict

    stats = json.loads(stats_path.read_text())
    models = stats["models"]
    vs = [model_verdict(m) for m in models]
    head = ["", *[f"{v.model} ({m.get('family')}, d = {v.d})" for v, m in zip(vs, models)]]
    rows = [
        ["angle of block-norm inputs with 𝟙 (mean ± pooled token SD)",
         *[f"{v.angle.mean:.2f}° ± {v.angle.sd:.2f}°" for v in vs]],
        ["random-vector baseline 90° ± 57.3°/√d", *[f"90° ± {57.29577951308232 / v.d ** 0.5:.2f}°" for v in vs]],
        ["share of ‖x‖² along 𝟙 (what mean removal discards): mean / worst block",
         *[f"{pct(v.cos2.mean)} / {pct(v.worst_cos2)}" for v in vs]],
    ]
    groups = list(dict.fromkeys(g.label.split(" (")[0] for v in vs for g in v.groups))
    for label in groups:
        cells = []
        for v in vs:
            g = next((g for g in v.groups if g.label.split(" (")[0] == label), None)
            if g is None:
                cells.append("–")
                continue
            verdict = {True: "can go", False: "must stay", None: "–"}[g.removable]
            cells.append(f"{verdict}: {g.swap.effect()}" if g.swap is not None else verdict)
        rows.append([f"naive swap of the {label}", *cells])
    rows.append(["naive swap of every norm at once", *[v.swap_all.effect() if v.swap_all else "–" for v in vs]])
    rows.append(["tokens probed / swapped",
                 *[f"{int(m['tokens']):,} / {int((m.get('swap') or {}).get('tokens', 0)):,}" for m in models]])
    run = stats.get("run") or {}
    lines = [f"Generated from `{stats_path.relative_to(ROOT) if stats_path.is_relative_to(ROOT) else stats_path}` "
             f"(a `normscope report` run of {run.get('started', '?')}, {run.get('threads', '?')} threads, "
             f"{float(run.get('seconds', float('nan'))):.0f} s before rendering).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- **{v.model}**: {v.answer}" for v in vs]
    return "\n".join(lines)


# -- README blocks ------------------------------------------------------------------------------
def _span(text: str, name: str) -> tuple[int, int] | None:
    start, end = MARK.format(name=name, end="start"), MARK.format(name=name, end="end")
    m = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.DOTALL)
    return (m.start(1), m.end(1)) if m else None


def replace_block(text: str, name: str, body: str) -> str:
    span = _span(text, name)
    if span is None:
        raise SystemExit(f"README has no {MARK.format(name=name, end='start')} ... "
                         f"{MARK.format(name=name, end='end')} block; add the two marker lines where the table goes")
    return text[: span[0]] + body.rstrip("\n") + "\n" + text[span[1]:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--repro", action="append", default=[], metavar="NAME=DIR",
                   help="a reproduce command's --out folder, e.g. ni=out/ni (repeatable)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="a `normscope report` --out folder: copy its stats.json to "
                        "benchmarks/results/report/stats.json (the headline block's source)")
    p.add_argument("--check", action="store_true", help="exit 1 if README differs from the generated blocks")
    p.add_argument("--print", dest="show", action="store_true", help="print the generated blocks and exit")
    args = p.parse_args(argv)
    blocks = {"speed": speed_block(args.results)}
    stored = args.results / "repro"
    for item in args.repro:  # keep a copy of each command's JSON beside the benchmark results
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"--repro {item!r}: expected NAME=DIR, e.g. ni=out/ni")
        if name not in REPRO:
            raise SystemExit(f"--repro {name}=...: no extractor for {name!r}; known: {', '.join(REPRO)}")
        src = Path(folder) / REPRO[name].file
        if not src.is_file():
            raise SystemExit(f"--repro {name}={folder}: no {src}; run `normscope reproduce {name} --out {folder}` first")
        (stored / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stored / name / REPRO[name].file)
    folders = {n: stored / n for n in REPRO if (stored / n).is_dir()}
    if folders:
        blocks["repro"] = repro_block(folders)
    report_copy = args.results / "report" / "stats.json"
    if args.report is not None:
        report_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.report / "stats.json", report_copy)
    if report_copy.is_file():
        blocks["headline"] = headline_block(report_copy)
    if args.show:
        for name, body in blocks.items():
            print(f"{MARK.format(name=name, end='start')}\n{body}\n{MARK.format(name=name, end='end')}\n")
        return 0
    text = args.readme.read_text(encoding="utf-8")
    new = text
    for name, body in blocks.items():
        new = replace_block(new, name, body)
    if args.check:
        if new != text:
            stale = [n for n, b in blocks.items() if replace_block(text, n, b) != text]
            print(f"README.md is stale: the {', '.join(stale)} block(s) differ from the JSON results; "
                  f"regenerate with python scripts/readme_numbers.py", file=sys.stderr)
            return 1
        print("README.md matches the JSON results")
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"updated {args.readme} ({', '.join(blocks)})")
    else:
        print(f"{args.readme} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
