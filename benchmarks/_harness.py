"""Shared harness for ``benchmarks/``: measurements that cannot flatter us.

Every benchmark script uses it so all of them follow one protocol:

- a header naming the machine, torch/numpy versions, the thread count and the BLAS libraries in use
  (``threadpoolctl``: library, version, kernel/core type, threads), with a loud warning when a variable
  that slows the reference (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``, ``MKL_DEBUG_CPU_TYPE``,
  ``MKL_ENABLE_INSTRUCTIONS``) is set;
- :func:`compare`: warm-up, then interleaved rounds (every contender once per round, so load drifts hit
  all alike), reporting median, quartiles and min per contender, with the **same thread count** for all
  sides (:func:`threads` sets torch, OpenMP and BLAS pools together);
- :func:`save`: results as JSON under ``benchmarks/results/<name>.json`` (atomically), from which
  ``scripts/readme_numbers.py`` regenerates the README's tables.

    from _harness import Bench
    b = Bench("bench_nn")                       # prints the header
    with b.threads(1):
        r = b.compare({"ours": f, "F.layer_norm": g}, rounds=15, warmup=2, label="4096x4096 fp32, 1 thread")
    b.ratio(r, "ours", "F.layer_norm", key="ln_vs_torch_1t", target="<= 1.05")
    b.save()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SLOWING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "MKL_DEBUG_CPU_TYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


@dataclass
class Timing:
    """Seconds per call of one contender over the measured rounds."""

    median: float
    q1: float
    q3: float
    min: float
    rounds: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0


@dataclass
class Comparison:
    label: str
    threads: int
    timings: dict[str, Timing]


@dataclass
class Bench:
    """One benchmark run: header, comparisons, ratios, JSON.

    **Arguments:** ``name``: the script's name (the JSON file is ``results/<name>.json``);
    ``quiet``: no header printout (tests).
    """

    name: str
    quiet: bool = False
    comparisons: list[Comparison] = field(default_factory=list)
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = environment()
        if not self.quiet:
            print(format_header(self.name, self.env), flush=True)

    @contextlib.contextmanager
    def threads(self, n: int) -> Iterator[int]:
        """Run the block with ``n`` threads in torch, OpenMP and every BLAS pool (restored after)."""
        with threads(n) as k:
            yield k

    def compare(self, contenders: dict[str, Callable[[], Any]], **options: Any) -> Comparison:
        """:func:`compare` (same keyword options), recorded and printed as a table (median, IQR, min)."""
        c = compare(contenders, **options)
        self.comparisons.append(c)
        if not self.quiet:
            print(format_comparison(c), flush=True)
        return c

    def ratio(self, c: Comparison, ours: str, ref: str, *, key: str, target: str = "", what: str = "") -> float:
        """Record and print median(ours) / median(ref) from one comparison."""
        a, b = c.timings[ours], c.timings[ref]
        r = a.median / b.median
        self.ratios[key] = {
            "ours": ours, "reference": ref, "ratio": r, "ours_s": a.median, "reference_s": b.median,
            "ours_spread": a.spread, "reference_spread": b.spread, "threads": c.threads, "label": c.label,
            "target": target, "what": what,
        }
        if not self.quiet:
            t = f"  (target {target})" if target else ""
            print(f"{key}: {ours} / {ref} = {r:.3f}{t}", flush=True)
        return r

    def record(self, key: str, value: Any) -> None:
        """Store any other measured value (peak RSS, error, ...) in the JSON."""
        self.values[key] = value

    def save(self, path: Path | None = None) -> Path:
        path = Path(path) if path else RESULTS_DIR / f"{self.name}.json"
        data = {
            "name": self.name, "env": self.env,
            "comparisons": [{"label": c.label, "threads": c.threads,
                             "timings": {k: asdict(t) for k, t in c.timings.items()}} for c in self.comparisons],
            "ratios": self.ratios, "values": self.values,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=float)
        os.replace(tmp, path)
        if not self.quiet:
            print(f"wrote {path}", flush=True)
        return path


def compare(
    contenders: dict[str, Callable[[], Any]], *, rounds: int = 11, warmup: int = 2, label: str = "",
    sync: Callable[[], None] | None = None, settle: float = 0.0, before: Callable[[], Any] | None = None,
) -> Comparison:
    """Warm-up, then ``rounds`` interleaved rounds; the contender order rotates each round.

    ``before``: an untimed call right before each timed one, the same for every contender (e.g. a
    matmul, to time a kernel where a model runs it: after a torch operation whose threads still spin).

    ``settle``: idle seconds before each timed call, the same for every contender, so that the
    previous contender's thread pool has gone quiet. OpenBLAS's worker threads spin for ~0.1 s
    after a call (THREAD_TIMEOUT); a torch contender started at once on the same cores measured
    2–3× slower at 2 threads."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    sync = sync or (lambda: None)
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
            sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            if settle:
                time.sleep(settle)
            if before is not None:
                before()
                sync()
            t0 = time.perf_counter()
            contenders[n]()
            sync()
            times[n].append(time.perf_counter() - t0)
    return Comparison(label, current_threads(), {n: _timing(v) for n, v in times.items()})


def _timing(v: list[float]) -> Timing:
    s = sorted(v)
    if len(s) >= 4:
        q = statistics.quantiles(s, n=4)
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = s[0], s[-1]
    return Timing(statistics.median(s), q1, q3, s[0], len(s))


def current_threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Same thread count for torch (intra-op), OpenMP and every BLAS/LAPACK pool (numpy's included)."""
    import torch
    from threadpoolctl import threadpool_limits

    n = max(1, min(int(n), os.cpu_count() or 1))
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        torch.set_num_threads(old)


def environment() -> dict[str, Any]:
    """What the numbers depend on: machine, versions, threads, BLAS libraries and their kernels."""
    import numpy as np
    import torch

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "machine": platform.machine(), "processor": _cpu_name(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(), "torch_blas": _torch_blas(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "slowing_env": {k: os.environ[k] for k in SLOWING_VARS if k in os.environ},
    }
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [
            {k: i.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")}
            for i in threadpool_info()
        ]
    except Exception as err:  # noqa: BLE001 - the header must print anyway
        env["blas"] = f"threadpoolctl unavailable: {err}"
    return env


def format_header(name: str, env: dict[str, Any]) -> str:
    lines = [f"== {name} == {env['date']}",
             f"machine: {env['processor']} ({env['machine']}, {env['cpus']} CPUs); python {env['python']}; "
             f"torch {env['torch']} ({env['torch_threads']} threads); numpy {env['numpy']}; cuda: {env['cuda']}",
             f"torch BLAS: {env['torch_blas']}"]
    blas = env["blas"]
    if isinstance(blas, list):
        for b in blas:
            lines.append(f"pool: {b['internal_api']} {b['version']} kernel={b['architecture']} "
                         f"threads={b['num_threads']} ({os.path.basename(str(b['filepath']))})")
    else:
        lines.append(str(blas))
    if env["slowing_env"]:
        bad = ", ".join(f"{k}={v}" for k, v in env["slowing_env"].items())
        lines.append("!" * 78)
        lines.append(f"WARNING: {bad} is set: it can slow numpy's/torch's LAPACK (the reference) 1.3-2.5x.")
        lines.append("Unset it for this command (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...) for honest ratios.")
        lines.append("!" * 78)
    return "\n".join(lines)


def format_comparison(c: Comparison) -> str:
    w = max(len(k) for k in c.timings) + 2
    out = [f"-- {c.label} ({c.threads} thread{'s' if c.threads != 1 else ''}, "
           f"median of {next(iter(c.timings.values())).rounds} interleaved rounds)",
           f"{'contender':{w}s} {'median':>11s} {'IQR/median':>11s} {'min':>11s}"]
    for k, t in c.timings.items():
        out.append(f"{k:{w}s} {_fmt_s(t.median):>11s} {t.spread:11.1%} {_fmt_s(t.min):>11s}")
    return "\n".join(out)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _torch_blas() -> str:
    import torch

    cfg = torch.__config__.show()
    info = [line.strip() for line in cfg.splitlines() if "BLAS_INFO" in line or "LAPACK_INFO" in line]
    parts = []
    for line in info:
        for item in line.split(","):
            if "BLAS_INFO" in item or "LAPACK_INFO" in item:
                parts.append(item.split(":")[-1].strip())
    return "; ".join(parts) or "unknown"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux: ``VmHWM`` from /proc/self/status, which belongs to the process image and starts afresh
    at exec. (``ru_maxrss`` does not: a child started by fork + exec inherits the parent's peak, so
    a big parent makes every child look big.) Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20
