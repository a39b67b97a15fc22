"""Typed readers for ``stats.json`` (schema ``normscope.stats/1``, documented in ``probe/SCHEMA.md``).

The probe writes plain dicts (JSON-able, streamed from several processes); everything that
*reads* them — the report's verdict, tables and plots — goes through this module, so a key is
spelled once. Two layers:

- dict accessors that never raise on missing keys (:func:`num`, :func:`get_path`,
  :func:`count_of`, :func:`layer_index`), used where a plot walks many summaries;
- dataclasses with ``from_dict`` (:class:`MetricSummary`, :class:`Tail`, :class:`SiteStats`,
  :class:`ModelStats`, :class:`RunInfo`), used where code reasons about a model.

Role groups (:func:`role_group`) put the norm roles of the schema — and the finer roles that
graph-inferred descriptions use (``attention_output``, ``query``, ...) — into the six groups the
verdict and the role-grouped swap test speak about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PRE_ROLES", "POST_ROLES", "BLOCK_ROLES", "ROLE_GROUPS", "GROUP_LABELS", "GROUP_VARIANTS", "NOT_MEASURED",
    "num", "count_of", "get_path", "layer_index", "is_post_ln", "ln_sites", "role_group", "not_measured",
    "is_not_measured", "MetricSummary", "Tail", "SiteStats", "ModelStats", "RunInfo",
]  # fmt: skip

PRE_ROLES = ("pre_attention", "pre_mlp")
POST_ROLES = ("post_attention", "post_mlp")
BLOCK_ROLES = PRE_ROLES + POST_ROLES
NOT_MEASURED = "not measured"

# Order in which groups are reported; labels are what the page prints.
ROLE_GROUPS = ("embedding", "pre", "sandwich", "post", "qk", "final", "other")
GROUP_LABELS = {
    "embedding": "embedding norm",
    "pre": "pre-sublayer norms",
    "sandwich": "sandwich norms (on the sublayer output, before the add)",
    "post": "post-LN norms (after the residual add)",
    "qk": "QK norms",
    "final": "final norm",
    "other": "other norms",
}
# Variant labels of the role-grouped swap test (normscope.convert.swap_test(per="role")).
GROUP_VARIANTS = {
    "embedding": "embedding norm", "pre": "pre-sublayer norms", "sandwich": "sandwich norms",
    "post": "post-LN norms", "qk": "QK norms", "final": "final norm", "other": "other norms",
}  # fmt: skip
_QK_LABELS = {"q_norm", "k_norm", "q_layernorm", "k_layernorm", "query_norm", "key_norm"}


# ----------------------------------------------------------------------------- dict accessors


def num(summary: Any, key: str) -> float:
    """``summary[key]`` as float; NaN when ``summary`` is not a dict or the key is missing/null."""
    if not isinstance(summary, dict):
        return math.nan
    v = summary.get(key)
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def count_of(summary: Any) -> float:
    """Number of values behind a summary (``count``, or ``n`` in attention summaries); NaN if unknown."""
    for key in ("count", "n"):
        v = num(summary, key)
        if not math.isnan(v):
            return v
    return math.nan


def get_path(entry: Any, path: str) -> Any:
    """``get_path(e, "input.angle_deg")`` → ``e["input"]["angle_deg"]``; None when any step is missing."""
    cur: Any = entry
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def layer_index(entry: dict) -> int | None:
    """Block index of a site: the schema's ``"layer"`` field (None for sites outside the blocks)."""
    v = entry.get("layer")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def is_post_ln(model: dict) -> bool:
    """True when the model has ``post_*`` block norms and no ``pre_*`` one (BERT-style post-LN)."""
    roles = {e.get("role") for e in model.get("layers", [])}
    return not (roles & set(PRE_ROLES)) and bool(roles & set(POST_ROLES))


def ln_sites(model: dict) -> tuple[list[dict], list[dict], str, str]:
    """The block norms in the roles of Gupta et al.'s LN1 and LN2, sorted by block, and those roles.

    LN1 = ``pre_attention`` sites (``post_attention`` for post-LN models), LN2 = ``pre_mlp``
    (``post_mlp``). **Returns:** ``(ln1, ln2, role1, role2)``.
    """
    layers = model.get("layers", [])
    r1, r2 = ("post_attention", "post_mlp") if is_post_ln(model) else ("pre_attention", "pre_mlp")

    def key(e: dict) -> int:
        i = layer_index(e)
        return -1 if i is None else i

    ln1 = sorted((e for e in layers if e.get("role") == r1), key=key)
    ln2 = sorted((e for e in layers if e.get("role") == r2), key=key)
    return ln1, ln2, r1, r2


def role_group(role: str | None, label: str | None = None, *, post_ln: bool) -> str:
    """The role group (one of :data:`ROLE_GROUPS`) of a norm site.

    ``pre_*`` → "pre"; ``attention_output``/``mlp_output`` → "sandwich"; ``post_*`` → "post" in a
    post-LN model and "sandwich" in a pre-LN one (Gemma-2/3's ``post_attention_layernorm`` sits on
    the sublayer output, before the add); ``query``/``key`` or a q/k-norm label → "qk".

    **Arguments:** ``role`` and ``label`` of the site (schema keys), ``post_ln`` from :func:`is_post_ln`.
    """
    role = str(role or "other")
    if role.startswith("pre_"):
        return "pre"
    if role in ("attention_output", "mlp_output"):
        return "sandwich"
    if role in POST_ROLES:
        return "post" if post_ln else "sandwich"
    if role in ("query", "key") or (label or "") in _QK_LABELS:
        return "qk"
    if role in ("embedding", "final"):
        return role
    return "other"


def not_measured(reason: str) -> dict:
    """The record that stands in for a section that could not be computed."""
    return {"status": NOT_MEASURED, "reason": str(reason)}


def is_not_measured(record: Any) -> bool:
    return isinstance(record, dict) and record.get("status") == NOT_MEASURED


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class MetricSummary:
    """One streamed summary ``S`` over tokens: count, exact mean/std/min/max, histogram percentiles.

    Missing or null numbers read as NaN, so an all-NaN site (``count`` 0) is representable.
    """

    count: float
    mean: float
    std: float
    min: float
    max: float
    p01: float
    p50: float
    p99: float
    hist: dict | None = None

    @classmethod
    def from_dict(cls, d: Any) -> "MetricSummary":
        d = d if isinstance(d, dict) else {}
        h = d.get("hist")
        return cls(count_of(d), *(num(d, k) for k in ("mean", "std", "min", "max", "p01", "p50", "p99")),
                   hist=h if isinstance(h, dict) else None)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.mean)


@dataclass(frozen=True)
class TailToken:
    """One of a site's worst tokens: its share of ‖x‖² along 𝟙, its position in the window, and the
    token — the probe's global index in the stream (an int) or, from other writers, its text."""

    share: float
    position: int | None
    token: int | str | None

    def describe(self) -> str:
        what = (f"token #{self.token}" if isinstance(self.token, int) else
                repr(self.token) if self.token is not None else "a token")
        return f"{what} at position {self.position if self.position is not None else '?'}"


@dataclass(frozen=True)
class Tail:
    """The ``input.tail`` block (``TAIL`` in SCHEMA.md): the tokens whose mean carries the largest share.

    ``by_position`` maps "0", "1", "2", "3", ">=4" to the mean share at those window positions
    (the probe's ``mean_share_by_position``; ``by_position`` is accepted too);
    ``frac_above_10_over_d`` / ``frac_above_100_over_d`` are the fractions of tokens whose share
    exceeds 10/d and 100/d (10 and 100 times the random-vector mean 1/d).
    """

    top: tuple[TailToken, ...] = ()
    by_position: dict[str, float] = field(default_factory=dict)
    frac_above_10_over_d: float = math.nan
    frac_above_100_over_d: float = math.nan

    @classmethod
    def from_dict(cls, d: Any) -> "Tail | None":
        if not isinstance(d, dict):
            return None
        top = []
        for t in d.get("top") or ():
            if isinstance(t, dict):
                pos, tok = t.get("position"), t.get("token")
                top.append(TailToken(num(t, "share"), pos if isinstance(pos, int) else None,
                                     tok if isinstance(tok, (int, str)) and not isinstance(tok, bool) else None))
        bp = d.get("mean_share_by_position", d.get("by_position"))
        bp = bp if isinstance(bp, dict) else {}
        return cls(tuple(top), {str(k): num(bp, k) for k in bp}, num(d, "frac_above_10_over_d"),
                   num(d, "frac_above_100_over_d"))


@dataclass(frozen=True)
class SiteStats:
    """One norm site (``LAYER`` in the schema), with the summaries the verdict reads."""

    name: str
    role: str
    kind: str
    label: str
    layer: int | None
    d: int
    eps: float
    angle_in: MetricSummary
    cos2_in: MetricSummary
    norm_in: MetricSummary
    rms_gap: MetricSummary
    tail: Tail | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, e: dict) -> "SiteStats":
        return cls(
            name=str(e.get("name")), role=str(e.get("role", "other")), kind=str(e.get("kind")),
            label=str(e.get("label") or str(e.get("name", "")).rpartition(".")[2]), layer=layer_index(e),
            d=int(e.get("d") or 0), eps=num(e, "eps"),
            angle_in=MetricSummary.from_dict(get_path(e, "input.angle_deg")),
            cos2_in=MetricSummary.from_dict(get_path(e, "input.cos2")),
            norm_in=MetricSummary.from_dict(get_path(e, "input.norm")),
            rms_gap=MetricSummary.from_dict(e.get("rms_gap")),
            tail=Tail.from_dict(get_path(e, "input.tail")), raw=e,
        )


@dataclass(frozen=True)
class ModelStats:
    """One probed model (``MODEL`` in the schema) with its sites and the optional sections.

    ``swap`` and ``attention`` are the raw section records (a result dict, a
    ``{"status": "not measured", "reason"}`` record, or None when the step was not run).
    """

    name: str
    family: str | None
    d: int
    tokens: int | None
    post_ln: bool
    sites: tuple[SiteStats, ...]
    swap: dict | None
    attention: dict | None
    run: dict
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, m: dict) -> "ModelStats":
        toks = m.get("tokens")
        return cls(
            name=str(m.get("name")), family=m.get("family"), d=int(m.get("hidden_size") or 0),
            tokens=int(toks) if isinstance(toks, (int, float)) and math.isfinite(toks) else None,
            post_ln=is_post_ln(m), sites=tuple(SiteStats.from_dict(e) for e in m.get("layers", [])),
            swap=m.get("swap") if isinstance(m.get("swap"), dict) else None,
            attention=m.get("attention") if isinstance(m.get("attention"), dict) else None,
            run=m.get("run") if isinstance(m.get("run"), dict) else {}, raw=m,
        )

    def group_of(self, site: SiteStats) -> str:
        return role_group(site.role, site.label, post_ln=self.post_ln)

    def groups(self) -> dict[str, list[SiteStats]]:
        """Sites by role group, in :data:`ROLE_GROUPS` order (empty groups left out)."""
        out: dict[str, list[SiteStats]] = {g: [] for g in ROLE_GROUPS}
        for s in self.sites:
            out[self.group_of(s)].append(s)
        return {g: v for g, v in out.items() if v}


@dataclass(frozen=True)
class RunInfo:
    """The top-level ``"run"`` block the CLI adds (settings, versions, per-stage seconds)."""

    texts: Any = None
    seq_len: int | None = None
    max_tokens: int | None = None
    batch_size: int | None = None
    skip_first: bool = False
    dtype: str = "float32"
    seconds: float = math.nan
    stages: dict[str, float] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, r: Any) -> "RunInfo":
        r = r if isinstance(r, dict) else {}
        st = r.get("stages") if isinstance(r.get("stages"), dict) else {}
        return cls(texts=r.get("texts"), seq_len=r.get("seq_len"), max_tokens=r.get("max_tokens"),
                   batch_size=r.get("batch_size"), skip_first=bool(r.get("skip_first")),
                   dtype=str(r.get("dtype", "float32")), seconds=num(r, "seconds"),
                   stages={str(k): num(st, k) for k in st}, failures=tuple(str(f) for f in r.get("failures") or ()),
                   raw=r)
