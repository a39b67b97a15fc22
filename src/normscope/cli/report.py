"""``normscope report``: probe models' norm layers on text and write the HTML/Markdown report.

Loads every ``--model`` (all before probing, so a bad name fails fast), streams token windows of
the text through each, collects per-token statistics at every norm layer
(:func:`normscope.probe.run`) and writes ``report.html`` (self-contained), ``tables.md``,
``stats.json`` and ``figures/`` into a fresh ``--out`` folder.

Stages, each timed into ``stats["run"]["stages"]`` (and per model into ``model["run"]``): load,
probe, swap (the naive swap test, by role group by default), attention (optional), figures,
write. A swap test or attention measurement that cannot be computed is recorded as
``{"status": "not measured", "reason"}`` and shown as such; the statistics already measured are
always written (``stats.json`` even when drawing or rendering the page fails).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from typing import Any, NamedTuple

DEFAULT_MODELS = ("minilm", "smollm2")
# Chosen so the default run (both packaged models, first smollm2 load included) stays well under
# 5 minutes on 2 CPU cores; see the README / report for the measured time.
DEFAULT_MAX_TOKENS = 8192
DEFAULT_SEQ_LEN = 256
DEFAULT_BATCH_SIZE = 8
# Stages timed into stats["run"]["stages"] (figures and write are added by report.build).
STAGES = ("load", "probe", "swap", "attention")


class _Loaded(NamedTuple):
    """One model loaded before any probing: its norm sites, context (None unless text) and input modality."""

    name: str
    lm: Any
    sites: list
    ctx: int | None
    load_s: float
    kind: str  # normscope.models.inputs.modality: "text", "image", "audio" or "image+text"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="probe models' norm layers and write an HTML report (Gupta et al. Tables 2-4 + plots)",
        description=(
            "Run text through each model, measure the geometry of the inputs and outputs of every "
            "normalisation layer (angle with the all-ones vector, norms, rotation, RMSNorm gap, radial "
            "fraction) and write report.html, tables.md, stats.json and figures/ to --out. "
            "Answers Gupta et al. (arXiv:2409.12951): is LayerNorm's mean removal redundant here?"
        ),
    )
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="packaged name (minilm, smollm2), local HF folder or .gguf file; repeatable "
                        f"(default: {' and '.join(DEFAULT_MODELS)})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--text", action="extend", nargs="+", metavar="FILE",
                   help="UTF-8 text file(s) to probe with, concatenated in order; repeatable "
                        "(default: CPython's pydoc_data.topics prose)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"token positions per model, special tokens included (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, metavar="N",
                   help=f"tokens per window; must fit the model's context (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--skip-first", action="store_true",
                   help="leave position 0 of every window (BOS / [CLS]) out of all statistics")
    p.add_argument("--layers-hist", nargs="+", default=None, metavar="SPEC",
                   help="blocks to histogram: 'N[,N...]' for every model or 'MODEL:N[,N...]' "
                        "(default: the block at ~75%% depth)")
    p.add_argument("--swap-test", choices=["role", "all", "layer", "site", "off"], default="role",
                   help="naive LN<->RMSNorm swap test per model: each role group of norms (pre-sublayer, sandwich, "
                        "post-LN, QK, final, embedding) and all at once (default), all at once only, each block, "
                        "each site, or off")
    p.add_argument("--swap-tokens", type=int, default=2048, metavar="N",
                   help="token positions for the swap test (default 2048)")
    p.add_argument("--attention", type=int, default=0, metavar="SEQS",
                   help="also measure unselectable keys and query angles (Brody et al.) on SEQS sequences "
                        "per model (default 0 = off; costs about a minute per sequence on 2 cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_layers_hist(specs: list[str] | None, models: list[str]) -> dict[str, list[int]] | None:
    """``["20", "minilm:1,4"]`` → {model: [blocks]}; a bare list applies to every model."""
    if not specs:
        return None
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, _, blocks = spec.rpartition(":")
        try:
            idx = [int(b) for b in blocks.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--layers-hist {spec!r}: expected 'N[,N...]' or 'MODEL:N[,N...]'") from None
        if not idx:
            raise ValueError(f"--layers-hist {spec!r}: no block index given")
        targets = [name] if name else models
        for t in targets:
            if t not in models:
                raise ValueError(f"--layers-hist {spec!r}: {t!r} is not one of the --model names ({', '.join(models)})")
            out.setdefault(t, []).extend(i for i in idx if i not in out.get(t, []))
    return out


def _check_args(args: argparse.Namespace) -> None:
    for flag, v in (("--max-tokens", args.max_tokens), ("--seq-len", args.seq_len), ("--batch-size", args.batch_size),
                    ("--swap-tokens", args.swap_tokens)):
        if v < 1:
            raise ValueError(f"{flag} must be a positive integer, got {v}")
    if args.attention < 0:
        raise ValueError(f"--attention must be >= 0, got {args.attention}")
    if args.skip_first and args.seq_len < 2:
        raise ValueError("--skip-first needs --seq-len >= 2 (nothing would be left)")


def _check_blocks(name: str, sites: list, blocks: list[int]) -> None:
    """Every --layers-hist block must exist among the model's numbered norm sites (checked before probing)."""
    have = sorted({s.layer for s in sites if isinstance(s.layer, int)})
    bad = [b for b in blocks if b not in have]
    if bad:
        raise ValueError(
            f"--layers-hist: {name} has no block {bad[0]} (blocks {have[0]}..{have[-1]})"
            if have else f"--layers-hist: {name} has no numbered blocks"
        )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _check_args(args)
    names = list(dict.fromkeys(args.models or DEFAULT_MODELS))
    hist_layers = parse_layers_hist(args.layers_hist, names)

    from normscope._io import output_dir

    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = dict.fromkeys(STAGES, 0.0)
    failures: list[str] = []
    rc = 0
    # Refuse an existing --out before any slow work; the folder appears only when the run ends (with
    # stats.json of whatever was measured, even when a later stage failed).
    with output_dir(args.out, force=args.force, inputs=[*names, *(args.text or [])]) as tmp:
        from normscope.models import text as nt
        from normscope.report.build import build, write_stats

        texts = nt.read_texts(args.text) if args.text else nt.default_texts()
        if sum(len(t.split()) for t in texts) == 0:
            raise ValueError("the text is empty")

        loaded: list[_Loaded | None] = _load_all(args, names, hist_layers, stages)
        models_out: list[dict] = []
        meta: dict[str, Any] = {}
        for i, entry in enumerate(loaded):
            try:
                m, top = _probe_one(args, entry, texts, stages)
            except Exception as e:  # noqa: BLE001 — keep the models already measured
                if not models_out and i == len(loaded) - 1:
                    for f in failures:
                        print(f"error: {f}", file=sys.stderr)
                    raise
                failures.append(_fail(f"probe of {entry.name}", e))
            else:
                models_out.append(m)
                meta = meta or top
            loaded[i] = entry = None  # free the weights before the next model
        if not models_out:
            raise RuntimeError(f"no model could be probed: {'; '.join(failures)}")

        stats: dict[str, Any] = {**meta, "models": models_out}
        stats["run"] = _run_block(args, names, started, stages, failures, t0)
        _say(args, "writing report ...")
        try:
            from normscope.report.verdict import model_verdict, verdict_record

            for m in models_out:  # the verdict is recorded beside the statistics it was drawn from
                m["verdict"] = verdict_record(model_verdict(m))
            build(stats, tmp, hist_layers=hist_layers)
        except Exception as e:  # noqa: BLE001 — the statistics survive a failed figure or page
            failures.append(_fail("report", e))
            write_stats(stats, tmp)
            rc = 1
    out = os.path.abspath(args.out)
    for m in models_out:
        nf = sum(int((e.get("nonfinite") or {}).get("input_tokens", 0)) + int((e.get("nonfinite") or {}).get("output_tokens", 0))
                 for e in m["layers"])
        if nf:
            print(f"warning: {m['name']}: {nf} token-vectors with NaN/Inf were skipped (counted in the report)",
                  file=sys.stderr)
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    if rc:
        print(f"wrote {os.path.join(out, 'stats.json')} only (the report itself failed, see above) "
              f"in {time.perf_counter() - t0:.0f} s")
    else:
        print(f"wrote {os.path.join(out, 'report.html')} (+ tables.md, stats.json, figures/) "
              f"in {time.perf_counter() - t0:.0f} s")
    return 1 if failures else 0


def _load_all(args: argparse.Namespace, names: list[str], hist_layers: dict[str, list[int]] | None,
              stages: dict[str, float]) -> list[_Loaded]:
    """Load every model and check the options against it (context, --layers-hist) before any probing."""
    from normscope import models as nm
    from normscope.models import text as nt
    from normscope.models.inputs import modality

    loaded = []
    for name in names:
        _say(args, f"loading {name} ...")
        t = time.perf_counter()
        lm = nm.load(name)
        load_s = time.perf_counter() - t
        stages["load"] += load_s
        sites = nm.find_norms(lm.model)  # ValueError if the model has no norm layer
        kind = modality(lm.model)
        ctx = nt.context_length(lm.model) if kind == "text" else None
        if ctx is not None and args.seq_len > ctx:
            raise ValueError(
                f"--seq-len {args.seq_len} is longer than {name}'s context ({ctx} positions); use --seq-len <= {ctx}"
            )
        if hist_layers and name in hist_layers:
            _check_blocks(name, sites, hist_layers[name])
        loaded.append(_Loaded(name, lm, sites, ctx, load_s, kind))
    return loaded


def _run_block(args: argparse.Namespace, names: list[str], started: str, stages: dict[str, float],
               failures: list[str], t0: float) -> dict[str, Any]:
    """The top-level ``run`` block of stats.json (``RUN`` in probe/SCHEMA.md)."""
    import torch

    return {
        "models": names,
        "texts": [str(p) for p in args.text] if args.text else
                 "CPython pydoc_data.topics (English documentation prose; normscope default)",
        "seq_len": args.seq_len,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "skip_first": args.skip_first,
        "swap_test": args.swap_test,
        "dtype": "float32",
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "threads": torch.get_num_threads(),
        "started": started,
        "stages": stages,
        "failures": failures,
        "seconds": time.perf_counter() - t0,  # everything before the report is drawn and written
    }


def _fail(stage: str, e: BaseException) -> str:
    """One line naming the stage that failed and why."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{stage} failed: {type(e).__name__}" + (f": {msg}" if msg else "")


def _probe_one(args: argparse.Namespace, entry: _Loaded, texts: list[str], stages: dict[str, float]) -> tuple[dict, dict]:
    """Probe one model, then its swap test and attention (each recorded, or 'not measured' with the reason).

    **Returns:** the model's stats entry (with ``run``, ``swap``, ``attention``) and the top-level
    keys of the probe's result (schema, version).
    """
    from normscope import probe
    from normscope.models import text as nt
    from normscope.models.inputs import DEFAULT_TEXT, probe_batches

    name, lm, sites, ctx, load_s, kind = entry
    # text windows for language models and encoders; offline images (ViT, CLIP) or synthetic audio
    # (Whisper) for the others, with a one-line description of what was used
    inp = probe_batches(lm, texts, seq_len=args.seq_len, max_tokens=args.max_tokens, batch_size=args.batch_size,
                        context=ctx, text_label=", ".join(map(str, args.text)) if args.text else DEFAULT_TEXT)
    collector = None
    if args.swap_test != "off" and kind == "text":  # the swap test's baseline loss comes from the probe's forward
        from normscope.convert.swap import BaselineCollector

        collector = BaselineCollector(lm, nt.token_batches(
            lm.tokenizer, texts, seq_len=args.seq_len, max_tokens=args.swap_tokens, batch_size=args.batch_size,
            context=ctx))
    t = time.perf_counter()
    res = probe.run(lm, inp.batches, skip_first=args.skip_first, progress=not args.quiet, sites=sites,
                    name=name, total=inp.total, on_output=collector.on_output if collector else None)
    probe_s = time.perf_counter() - t
    stages["probe"] += probe_s
    m = res["models"][0]
    m["run"] = {"load_seconds": load_s, "probe_seconds": probe_s, "source": str(getattr(lm, "source", "")),
                "context": ctx, "seq_len": args.seq_len, "input": inp.description, "modality": kind}
    steps = (("swap", lambda: _text_only(kind, "swap test", args.swap_test != "off")
              or _swap(args, name, lm, sites, probed=m, baseline=collector)),
             ("attention", lambda: _text_only(kind, "attention measurement", bool(args.attention))
              or _attention(args, name, lm, texts, ctx)))
    for key, step in steps:
        t = time.perf_counter()
        try:
            m[key] = step()
        except Exception as e:  # noqa: BLE001 — a section that cannot be computed is reported, not fatal
            from normscope.probe.schema import not_measured

            reason = str(e).strip() if isinstance(e, ValueError) else _fail(key, e).split(" failed: ", 1)[1]
            m[key] = not_measured(reason)
            print(f"warning: {name}: {key} not measured: {reason}", file=sys.stderr)
        if m[key] is None:
            del m[key]
        else:
            dt = time.perf_counter() - t
            m["run"][f"{key}_seconds"] = dt
            stages[key] += dt
    return m, {k: v for k, v in res.items() if k != "models"}


def _text_only(kind: str, what: str, wanted: bool) -> None:
    """Refuse a text-only section for an image or audio model (the section then reads 'not measured')."""
    if wanted and kind != "text":
        raise ValueError(f"the {what} needs token windows of text; this is an {kind} model (its norms were probed "
                         "on the offline inputs named in the run table)")


def _swap(args: argparse.Namespace, name: str, lm: Any, sites: list, *, probed: dict, baseline: Any) -> dict | None:
    """The naive LN<->RMSNorm swap test of one model (None when --swap-test off).

    Angles come from the report's own probe entry ``probed``, the token windows and the original
    model's loss from ``baseline`` (the :class:`~normscope.convert.swap.BaselineCollector` fed by
    the probe's forward, which exists whenever the swap test runs), the norm sites from the load
    step, so neither the probe, the original model nor the role tracing runs a second time."""
    if args.swap_test == "off":
        return None
    from normscope.convert import swap_test

    _say(args, f"swap test on {name} ({args.swap_test}) ...")
    return swap_test(lm, baseline.batches, sites=sites, per=args.swap_test, angles=probed,
                     progress=not args.quiet, baseline=baseline)


def _attention(args: argparse.Namespace, name: str, lm: Any, texts: list[str], ctx: int | None) -> dict | None:
    """Unselectable keys and query angles (Brody et al.) of one model (None when --attention 0)."""
    if not args.attention:
        return None
    from normscope.attention import measure_attention
    from normscope.models import text as nt

    d = int(lm.model.config.hidden_size)
    seq_len = 1 << d.bit_length()  # the first power of two above d: fewer keys than d + 1 are all selectable
    if ctx is not None:
        seq_len = min(seq_len, ctx)
    _say(args, f"attention on {name} ({args.attention} x {seq_len} tokens) ...")
    batches = nt.token_batches(lm.tokenizer, texts, seq_len=seq_len, max_tokens=args.attention * seq_len,
                               batch_size=1, context=ctx)
    return measure_attention(lm.model, batches, name=name, max_sequences=args.attention, progress=not args.quiet)


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # pragma: no cover
        return "?"


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)
