"""Backend machinery shared by the norm modules: a lazily compiled kernel and the measured ``"auto"`` choice.

**Compiled kernels** (:class:`LazyCompiled`): a module's ``"compile"`` backend is its kernel
function under ``torch.compile`` (static width, rows marked dynamic per call), built and probed on
first use; where no compiler works (no C++ toolchain, unsupported platform, ...) a warning says so
once and the module runs its eager kernel.

**Measured choice** (:func:`choose`): the first time a module class sees a (device type, dtype,
width rounded to a power of 2, rows rounded to a power of 4, torch threads, ...) :func:`bucket`, it
times each candidate backend on the real input (one warm-up call each, then 3 interleaved timed
calls, a few ms) and caches the fastest (median) for the process, per class. The candidates are
``"eager"``, ``"numba"`` where it applies (``normscope.nn._numba``), and ``"compile"`` only when
``NORMSCOPE_COMPILE=1`` is set and a compiler works (:meth:`LazyCompiled.candidates`): the first
compile costs ~20 s and needs a C++ toolchain, which a library must not impose on import or in a
test run. Measuring beats a fixed table: the winner
depends on device, dtype, width, rows and thread count (``benchmarks/bench_nn.py`` measures them),
and a table written on one machine goes stale on the next.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

_CHOICES: dict[type, dict[tuple, str]] = {}  # module class -> bucket -> fastest measured backend


class LazyCompiled:
    """``torch.compile(fn)``, built and checked by ``probe`` on the first call.

    **Arguments:** ``fn`` (the kernel); ``probe`` (calls the compiled kernel once on a tiny input,
    so a missing compiler fails here rather than in a forward); ``owner`` (the module name the
    fallback warning names).

    **Returns** (on call): the compiled kernel, or ``None`` where no compiler works (warned once).
    """

    def __init__(self, fn: Callable, probe: Callable[[Callable], object], owner: str, *, dynamic: bool = False) -> None:
        self.fn, self.probe, self.owner, self.dynamic = fn, probe, owner, dynamic
        self._compiled: Callable | bool | None = None  # None: not tried yet; False: no compiler here

    def __call__(self) -> Callable | None:
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self.fn, dynamic=self.dynamic)  # static: rows marked dynamic per call
                self.probe(self._compiled)
            except Exception as err:  # noqa: BLE001 - no C++ compiler, unsupported platform, ...
                self.fail(err)
        return self._compiled or None

    def fail(self, err: BaseException) -> None:
        """Give up on the compiled kernel for this process, with one warning (also for a failure
        at a later call, e.g. a shape the compiler rejects)."""
        warnings.warn(f"torch.compile is unavailable here ({type(err).__name__}); {self.owner} uses the eager kernel")
        self._compiled = False

    def candidates(self) -> list[str]:
        """The backends ``"auto"`` measures: ``"eager"``, plus ``"compile"`` when
        ``NORMSCOPE_COMPILE=1`` is set and a compiler works."""
        return ["eager", "compile"] if opted_in() and self() is not None else ["eager"]


def opted_in() -> bool:
    """Whether the user asked for compiled kernels: ``NORMSCOPE_COMPILE=1`` (the only switch)."""
    return os.environ.get("NORMSCOPE_COMPILE") == "1"


def bucket(x: torch.Tensor, width: int, *extra: object) -> tuple:
    """(device type, dtype, log2 width, log4 rows, torch threads, *extra)."""
    rows = max(1, x.numel() // max(width, 1))
    return (x.device.type, x.dtype, width.bit_length(), rows.bit_length() // 2, torch.get_num_threads(), *extra)


def choose(module: nn.Module, x: torch.Tensor, key: tuple, candidates: Callable[[], Sequence[str]]) -> str:
    """The backend ``module`` (which defines ``_forward(x, backend)``) runs on ``x`` under ``"auto"``:
    cached per (class, ``key``), else the only candidate, else the :func:`measure`\\ d fastest. ``candidates`` is called on a cache miss only."""
    cache = _CHOICES.setdefault(type(module), {})
    if key not in cache:
        cands = list(candidates())
        cache[key] = cands[0] if len(cands) == 1 else measure(module, x, cands)
    return cache[key]


def choices(cls: type) -> dict[tuple, str]:
    """A copy of the backends ``cls(backend="auto")`` chose so far, by bucket."""
    return dict(_CHOICES.get(cls, {}))


def measure(module: nn.Module, x: torch.Tensor, candidates: list[str]) -> str:
    """The candidate backend with the lowest median of 3 interleaved timed calls on ``x``, each
    ``module._forward(x, backend)``: no forward hooks run (a probe's or a user's see the one real
    call), and the module is not touched (so concurrent callers cannot see a half-set backend)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {c: [] for c in candidates}
    with torch.no_grad():
        for rnd in range(4):
            for c in candidates:
                sync()
                t0 = time.perf_counter()
                module._forward(x, c)
                sync()
                if rnd:  # round 0 is the warm-up
                    times[c].append(time.perf_counter() - t0)
    return min(candidates, key=lambda c: sorted(times[c])[1])
