"""The report's fixed prose: what is measured, how the paper's ± is read, deviations, footer.

Text only (Markdown); the numbers come from :mod:`normscope.report.verdict` and the tables.
"""

from __future__ import annotations

from normscope.probe.schema import is_post_ln, ln_sites
from normscope.report.verdict import C_BASELINE, C_TAIL, SWAP_TOL_COS, SWAP_TOL_NATS

METRICS_MD = """\
- **Angle with 𝟙**, θ(v, 𝟙) = arccos(v·𝟙 / (‖v‖√d)) in degrees; cos θ = μ/RMS(v). 90° means the vector has zero mean, so LayerNorm's mean removal does nothing to it.
- **cos²θ** = μ²/(μ² + σ²), the fraction of the squared norm along 𝟙: exactly what mean removal discards.
- **Norm** ‖v‖₂ of the norm layer's input ("Hidden", "Pre-LN2") and output ("Post-LN1", "Post-LN2"; after γ and β). The standardised vector before γ has norm √d.
- **Rotation** = angle(x_in, x_out) between a norm layer's input and its output (after γ, β). Mean removal alone rotates by |90° − θ|; RMSNorm's standardisation rotates by 0°, so the rest is the gain γ (and bias β).
- **RMSNorm gap** = ‖z − RMSNorm(x)‖/‖z‖ with the layer's own γ, β and ε: the relative error of naively swapping this LayerNorm for RMSNorm at this token; zero when the input already has zero mean, rounding level for layers that are RMSNorm already.
- **Radial fraction** ρ = (1 + ε/σ²)^(−1/2) (RMSNorm: (1 + ε/mean(x²))^(−1/2)): the norm of the standardised vector over √d; below 1 only when the input's variance is comparable to ε.
- **Random-vector baseline**: an isotropic random vector in R^d makes 90° ± 57.3°/√d with 𝟙 (cos θ ≈ N(0, 1/d)), and E[cos²θ] = 1/d.
- **p01 / p50 / p99**: 1st, 50th, 99th percentile over tokens, interpolated in the probe's fixed-bin histograms (angles: 0.09° bins), so exact to within one bin; means, SDs, min and max are exact. Bands in the plots: p01–p99 (light), mean ± SD (dark).
"""

PM_MD = (
    "The paper's ± in Tables 2–4 is the per-layer token SD divided by √L (L = number of layers): e.g. GPT-J's "
    "layer-24 histogram has SD 8.90° and 8.90/√28 = 1.68, its Table 2 value. This is inferred from the published "
    "numbers; the paper does not say so. Our tables print the same paper-style ± and, as σ, the true pooled token SD."
)


def deviations_md(stats: dict) -> str:
    run = stats.get("run", {}) or {}
    models = stats.get("models", [])
    items = [
        "**Models.** The paper probes GPT-2 XL, GPT-Neo 1.3B, Pythia-1.4B/6.9B, GPT-J 6B (LayerNorm) and Llama-2-7B, "
        "Llama-3-8B (RMSNorm). None of those can be installed offline; we probe "
        + ", ".join(f"`{m.get('name')}`" for m in models)
        + ". The paper's numbers are shown for reference only, never as a pass/fail target.",
        "**Data.** The paper uses ~1M Wikipedia tokens per model (dump, chunking, context and BOS not stated); we use "
        f"{texts_label(run)} in chunks of {run.get('seq_len', '?')} tokens, "
        f"{'skipping' if run.get('skip_first') else 'including'} the first position of every chunk, "
        f"at most {run.get('max_tokens', '?')} tokens per model, in {run.get('dtype', 'float32')}.",
        (
            "**First positions** were left out (--skip-first): every statistic starts at position 1 of each window."
            if run.get("skip_first") else
            "**First positions** are included, as the paper appears to do. The first token of a window often carries "
            "outlier ('massive activation') norms that dominate the max and σ of the Hidden norm; rerun with "
            "`--skip-first` to leave position 0 out."
        ),
        "**Final and embedding norms** are not in the paper's tables; they are excluded from our tables too but shown "
        "in the per-block plots (◆ markers).",
    ]
    for m in models:
        ln1, ln2, _, _ = ln_sites(m)
        kinds = {str(e.get("kind")) for e in ln1 + ln2}
        if is_post_ln(m):
            items.append(
                f"**{m.get('name')} is a post-LN encoder** (BERT style): each LayerNorm sits after the residual add, "
                "so its input is the residual sum (previous LN output + sublayer output) and 'Hidden' as the paper "
                "defines it (the pre-LN residual stream of a decoder) does not exist. Its rows are not directly "
                "comparable with the paper's."
            )
        elif kinds and kinds <= {"rmsnorm", "rmsnorm_offset"}:
            items.append(
                f"**{m.get('name')} already uses RMSNorm**, which never removes the mean. 'Is mean removal redundant' "
                "is measured on its RMSNorm inputs: the numbers say how much a LayerNorm would remove there, as the "
                "paper does for Llama."
            )
    items.append(
        "**Aggregation.** We stream statistics (mean, SD, percentiles, histograms) per norm site instead of storing "
        "every vector; across-block numbers are recomputed exactly from the per-block ones (see the tables' notes)."
    )
    return "\n".join(f"- {s}" for s in items)


def texts_label(run: dict) -> str:
    texts = run.get("texts")
    if not texts:
        return "the default text (CPython pydoc_data.topics, English documentation prose)"
    if isinstance(texts, str):
        return texts
    return ", ".join(str(t) for t in texts)


VERDICT_RULE_MD = (
    "Measured on the inputs of every norm, per role group. The share of ‖x‖² along 𝟙 (cos²θ, what mean removal "
    f"discards) is judged against the random-vector baseline 1/d: a group passes when its token-averaged share is at "
    f"most {C_BASELINE:g}/d (|cos θ| within 2/√d, the ±2 SD band of a random vector's angle), and every site passes; "
    f"tokens above {C_TAIL:g}/d are the tail (first positions, massive activations). Where the naive swap test ran, "
    f"it decides: a group can lose its mean removal when the swap changes the loss by at most {SWAP_TOL_NATS:g} "
    f"nats/token (LM losses; perplexity ×1.01) or 1 − cos ≤ {SWAP_TOL_COS:g} (embeddings), and the headline says "
    "when it contradicts the angle statistics."
)

SUMMARY_INTRO_MD = (
    "Gupta et al. (2025) argue that LayerNorm's mean subtraction is redundant at inference because hidden vectors "
    "already sit at ≈90° to the all-ones vector 𝟙. " + VERDICT_RULE_MD
)

FOOTER = (
    "Paper: A. Gupta, A. Ozdemir, G. Anumanchipalli, “Geometric Interpretation of Layer Normalization and a "
    "Comparative Analysis with RMSNorm”, arXiv:2409.12951 v2 (2025). Published numbers transcribed into "
    "normscope/data/gupta_tables.json. Files next to this page: stats.json (all statistics), tables.md, figures/."
)
