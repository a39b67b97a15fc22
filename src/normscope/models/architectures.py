"""One description per architecture: where its norms sit, what they read, who reads them.

Both the probe (:func:`normscope.models.find_norms`, which names each norm's role) and the exact
LN → RMSNorm conversion (:func:`normscope.convert.plan`, which needs every residual writer and
every residual-reading LayerNorm) read this table; ``docs/architectures.md`` explains how to add
a family. The table is a fast path and a cross-check: :mod:`normscope.models.roles` infers the
same roles from one traced forward for any model, and wins when the two disagree.

Paths are relative to the HF base model (``model.base_model``: ``transformer``, ``model``,
``gpt_neox``, ...), so ``*ForCausalLM`` and bare base models both resolve; block-norm paths and
their ``readers`` are relative to one block; ``final_readers`` to the model root.

Roles (:data:`ROLES`; their group in :data:`ROLE_GROUPS`):

- ``pre_attention``, ``pre_cross_attention``, ``pre_mlp`` — reads the residual stream before a
  sublayer (pre-LN, arXiv:2002.04745); Mamba's mixer counts as attention (token mixing).
- ``attention_output``, ``mlp_output`` — normalises a sublayer's output *before* the residual add
  (Gemma-2/3 "sandwich" and OLMo-2 norms, arXiv:2408.00118).
- ``post_attention``, ``post_mlp`` — sits *after* the residual add, so the stream itself is the
  norm's output (post-LN, BERT; arXiv:1706.03762).
- ``query``, ``key`` — QK-norm on queries/keys (per head or full width, see ``note``).
- ``embedding`` (normalises the embeddings before the first block), ``final`` (after the last
  block), ``other``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "ROLES", "ROLE_GROUPS", "KINDS", "BlockNorm", "Architecture", "ARCHITECTURES", "architecture",
    "post_ln_families", "convertible_families",
]

ROLES = (
    "embedding", "pre_attention", "pre_cross_attention", "pre_mlp", "attention_output", "mlp_output",
    "post_attention", "post_mlp", "query", "key", "final", "other",
)  # fmt: skip
ROLE_GROUPS = {
    "embedding": "embedding", "pre_attention": "pre", "pre_cross_attention": "pre", "pre_mlp": "pre",
    "attention_output": "sandwich", "mlp_output": "sandwich", "post_attention": "post", "post_mlp": "post",
    "query": "qk", "key": "qk", "final": "final", "other": "other",
}  # fmt: skip
KINDS = ("layernorm", "rmsnorm", "rmsnorm_offset")

_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


@dataclass(frozen=True)
class BlockNorm:
    """A norm inside every block.

    **Fields:** ``path`` (relative to the block, e.g. ``"input_layernorm"``); ``role`` (one of
    :data:`ROLES`); ``readers`` — the linear layers that read this norm's output and nothing else
    (relative to the block), so a gain can be folded into them; empty when the output is also
    added to the residual stream (post-LN) or feeds a non-linear reader; ``seq_dim`` — axis of
    token positions in the norm's input (1 for ``(batch, seq, d)``; 2 for per-head
    ``(batch, heads, seq, head_dim)``); ``note``.
    """

    path: str
    role: str
    readers: tuple[str, ...] = ()
    seq_dim: int = 1
    note: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"BlockNorm {self.path!r}: unknown role {self.role!r}; use one of {ROLES}")


@dataclass(frozen=True)
class Architecture:
    """Where one family's norms sit, what writes its residual stream, and what reads its norms.

    **Fields:**

    - ``model_types``: ``config.model_type`` values described.
    - ``kind``: the checkpoint's norm formula (:data:`KINDS`; the probe re-checks it numerically).
    - ``layers``: path of the block ``ModuleList``.
    - ``embeddings``: residual writers before the first block (or a function of the config).
    - ``writers``: per-block output projections (relative to a block).
    - ``norms``: per-block norms (:class:`BlockNorm`); ``inner_norms``: norms on something other
      than the residual stream (QK-norm), left alone by the conversion.
    - ``final``, ``final_readers``: the final norm and what reads it (from the model root).
    - ``embedding_norm``: a norm on the token embeddings alone (BLOOM; folded into the table).
    - ``parallel``: attention and MLP read the same residual vector (GPT-J, Pythia, Falcon).
    - ``convertible``: the exact LN → RMSNorm conversion supports this family.
    - ``variant``: config → field overrides (OPT's ``do_layer_norm_before``, Falcon's three block
      layouts, ...), applied by :func:`architecture`.
    - ``refuse``: config → reason the conversion cannot be exact, or None.
    - ``eps``: the eps the forward uses when the module does not store one (OLMo: 1e-5).
    """

    model_types: tuple[str, ...]
    kind: str
    layers: str
    norms: tuple[BlockNorm, ...]
    final: str | None
    embeddings: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    writers: tuple[str, ...] = ()
    final_readers: tuple[str, ...] = ("lm_head",)
    inner_norms: tuple[BlockNorm, ...] = ()
    embedding_norm: str | None = None
    parallel: bool = False
    convertible: bool = False
    variant: Callable[[Any], dict] | None = None
    refuse: Callable[[Any], str | None] = field(default=lambda cfg: None)
    eps: float | None = None

    @property
    def post_ln(self) -> bool:
        """True when some block norm sits after a residual add (the stream is a norm output)."""
        return any(ROLE_GROUPS[n.role] == "post" for n in self.norms)

    @property
    def stream_norms(self) -> tuple[BlockNorm, ...]:
        """Block norms that read the residual stream (pre-sublayer)."""
        return tuple(n for n in self.norms if ROLE_GROUPS[n.role] == "pre")

    def resolve(self, config: Any) -> Architecture:
        """This description with the config's variant applied (no-op without ``variant``)."""
        return dataclasses.replace(self, variant=None, **self.variant(config)) if self.variant else self


# --------------------------------------------------------------------------- variants and refusals


def _opt_embeddings(cfg) -> tuple[str, ...]:
    # With word_embed_proj_dim != hidden_size, the stream's first writer is project_in, not the table.
    proj = getattr(cfg, "word_embed_proj_dim", cfg.hidden_size) != cfg.hidden_size
    return ("decoder.project_in" if proj else "decoder.embed_tokens", "decoder.embed_positions")


def _opt_variant(cfg) -> dict:
    if getattr(cfg, "do_layer_norm_before", True):
        return {}
    return {"norms": (BlockNorm("self_attn_layer_norm", "post_attention", note="post-LN (do_layer_norm_before=False)"),
                      BlockNorm("final_layer_norm", "post_mlp", note="post-LN (do_layer_norm_before=False)")),
            "final": None}  # fmt: skip


def _opt_refuse(cfg) -> str | None:
    if not getattr(cfg, "do_layer_norm_before", True):
        return (
            "this OPT checkpoint is post-LN (do_layer_norm_before=False, as OPT-350m): the residual stream is an LN "
            "output and is read un-normed, so writer centring is not an identity"
        )
    if getattr(cfg, "_remove_final_layer_norm", False):
        return "this OPT checkpoint has no final LayerNorm, so the unembedding reads the residual stream un-normed"
    return None


def _gpt2_refuse(cfg) -> str | None:
    if getattr(cfg, "add_cross_attention", False):
        return "GPT-2 with cross-attention writes encoder states into the residual stream; not supported"
    return None


def _bloom_refuse(cfg) -> str | None:
    if getattr(cfg, "apply_residual_connection_post_layernorm", False):
        return "BLOOM with apply_residual_connection_post_layernorm=True adds LN outputs to the residual stream (post-LN)"
    return None


PARALLEL_NOTE = "parallel block: attention and MLP both read this norm's output"
_PARALLEL = PARALLEL_NOTE


def _neox_variant(cfg) -> dict:
    if not getattr(cfg, "use_parallel_residual", True):
        return {}
    return {"parallel": True}


def _falcon_variant(cfg) -> dict:
    qkv, mlp = ("self_attention.query_key_value",), ("mlp.dense_h_to_4h",)
    if not getattr(cfg, "parallel_attn", True):
        return {"norms": (BlockNorm("input_layernorm", "pre_attention", qkv),
                          BlockNorm("post_attention_layernorm", "pre_mlp", mlp))}  # fmt: skip
    n_ln = getattr(cfg, "num_ln_in_parallel_attn", None)
    if n_ln is None and getattr(cfg, "new_decoder_architecture", False):
        n_ln = 2
    if n_ln == 2:
        return {"parallel": True, "norms": (BlockNorm("ln_attn", "pre_attention", qkv),
                                            BlockNorm("ln_mlp", "pre_mlp", mlp))}  # fmt: skip
    return {"parallel": True, "norms": (BlockNorm("input_layernorm", "pre_attention", qkv + mlp, note=_PARALLEL),)}


def _stablelm_variant(cfg) -> dict:
    qk = () if not getattr(cfg, "qk_layernorm", False) else tuple(
        BlockNorm(f"self_attn.{p}_layernorm.norms.{h}", r, seq_dim=2, note=f"per-head {r} norm (head {h})")
        for p, r, n in (("q", "query", cfg.num_attention_heads), ("k", "key", cfg.num_key_value_heads)) for h in range(n)
    )  # fmt: skip
    if getattr(cfg, "use_parallel_residual", False):
        return {"parallel": True, "inner_norms": qk,
                "norms": (BlockNorm("input_layernorm", "pre_attention", _QKV + _GATE_UP, note=_PARALLEL),)}
    return {"inner_norms": qk}


def _phi_variant(cfg) -> dict:
    if not getattr(cfg, "qk_layernorm", False):
        return {"inner_norms": ()}
    return {}


# --------------------------------------------------------------------------- the table


def _llama_like(*types: str, kind: str = "rmsnorm", qk: tuple[BlockNorm, ...] = (), eps=None) -> Architecture:
    return Architecture(
        model_types=types, kind=kind, layers="layers", embeddings=("embed_tokens",),
        writers=("self_attn.o_proj", "mlp.down_proj"),
        norms=(BlockNorm("input_layernorm", "pre_attention", _QKV),
               BlockNorm("post_attention_layernorm", "pre_mlp", _GATE_UP, note="reads the stream before the MLP "
                         "(HF's name notwithstanding)")),
        final="norm", inner_norms=qk, eps=eps,
    )  # fmt: skip


def _qk(seq_dim: int, note: str) -> tuple[BlockNorm, ...]:
    return (BlockNorm("self_attn.q_norm", "query", seq_dim=seq_dim, note=f"{note} query norm"),
            BlockNorm("self_attn.k_norm", "key", seq_dim=seq_dim, note=f"{note} key norm"))  # fmt: skip


_SANDWICH = (
    BlockNorm("input_layernorm", "pre_attention", _QKV),
    BlockNorm("post_attention_layernorm", "attention_output", note="on the attention output, before the residual add"),
    BlockNorm("pre_feedforward_layernorm", "pre_mlp", _GATE_UP),
    BlockNorm("post_feedforward_layernorm", "mlp_output", note="on the MLP output, before the residual add"),
)


def _bert_like(*types: str, layers: str = "encoder.layer", attn: str = "attention.output.LayerNorm",
               mlp: str = "output.LayerNorm", emb: str | None = "embeddings.LayerNorm") -> Architecture:
    return Architecture(
        model_types=types, kind="layernorm", layers=layers, final=None, embedding_norm=emb, final_readers=(),
        norms=(BlockNorm(attn, "post_attention", note="post-LN: after the attention residual add"),
               BlockNorm(mlp, "post_mlp", note="post-LN: after the MLP residual add")),
    )  # fmt: skip


_TABLE: tuple[Architecture, ...] = (
    Architecture(("gpt2",), "layernorm", "h", embeddings=("wte", "wpe"), writers=("attn.c_proj", "mlp.c_proj"),
                 norms=(BlockNorm("ln_1", "pre_attention", ("attn.c_attn",)), BlockNorm("ln_2", "pre_mlp", ("mlp.c_fc",))),
                 final="ln_f", convertible=True, refuse=_gpt2_refuse),
    Architecture(("gpt_neo",), "layernorm", "h", embeddings=("wte", "wpe"),
                 writers=("attn.attention.out_proj", "mlp.c_proj"),
                 norms=(BlockNorm("ln_1", "pre_attention", tuple(f"attn.attention.{p}_proj" for p in "qkv")),
                        BlockNorm("ln_2", "pre_mlp", ("mlp.c_fc",))), final="ln_f", convertible=True),
    Architecture(("gpt_bigcode",), "layernorm", "h", embeddings=("wte", "wpe"), writers=("attn.c_proj", "mlp.c_proj"),
                 norms=(BlockNorm("ln_1", "pre_attention", ("attn.c_attn",)), BlockNorm("ln_2", "pre_mlp", ("mlp.c_fc",))),
                 final="ln_f", convertible=True),
    Architecture(("gpt_neox",), "layernorm", "layers", embeddings=("embed_in",),
                 writers=("attention.dense", "mlp.dense_4h_to_h"),
                 norms=(BlockNorm("input_layernorm", "pre_attention", ("attention.query_key_value",)),
                        BlockNorm("post_attention_layernorm", "pre_mlp", ("mlp.dense_h_to_4h",))),
                 final="final_layer_norm", convertible=True, variant=_neox_variant),
    Architecture(("gptj",), "layernorm", "h", embeddings=("wte",), writers=("attn.out_proj", "mlp.fc_out"),
                 norms=(BlockNorm("ln_1", "pre_attention", tuple(f"attn.{p}_proj" for p in "qkv") + ("mlp.fc_in",),
                                  note=_PARALLEL),),
                 final="ln_f", parallel=True, convertible=True),
    Architecture(("codegen",), "layernorm", "h", embeddings=("wte",), writers=("attn.out_proj", "mlp.fc_out"),
                 norms=(BlockNorm("ln_1", "pre_attention", ("attn.qkv_proj", "mlp.fc_in"), note=_PARALLEL),),
                 final="ln_f", parallel=True, convertible=True),
    Architecture(("opt",), "layernorm", "decoder.layers", embeddings=_opt_embeddings, writers=("self_attn.out_proj", "fc2"),
                 norms=(BlockNorm("self_attn_layer_norm", "pre_attention", _QKV), BlockNorm("final_layer_norm", "pre_mlp", ("fc1",))),
                 final="decoder.final_layer_norm", convertible=True, variant=_opt_variant, refuse=_opt_refuse),
    Architecture(("phi",), "layernorm", "layers", embeddings=("embed_tokens",), writers=("self_attn.dense", "mlp.fc2"),
                 norms=(BlockNorm("input_layernorm", "pre_attention", _QKV + ("mlp.fc1",), note=_PARALLEL),),
                 final="final_layernorm", parallel=True, convertible=True, variant=_phi_variant,
                 inner_norms=(BlockNorm("self_attn.q_layernorm", "query", seq_dim=2, note="per-head query norm"),
                              BlockNorm("self_attn.k_layernorm", "key", seq_dim=2, note="per-head key norm"))),
    Architecture(("bloom",), "layernorm", "h", embeddings=("word_embeddings",),
                 writers=("self_attention.dense", "mlp.dense_4h_to_h"),
                 norms=(BlockNorm("input_layernorm", "pre_attention", ("self_attention.query_key_value",)),
                        BlockNorm("post_attention_layernorm", "pre_mlp", ("mlp.dense_h_to_4h",))),
                 final="ln_f", embedding_norm="word_embeddings_layernorm", convertible=True, refuse=_bloom_refuse),
    Architecture(("falcon",), "layernorm", "h", embeddings=("word_embeddings",),
                 writers=("self_attention.dense", "mlp.dense_4h_to_h"), norms=(), final="ln_f", convertible=True,
                 variant=_falcon_variant),
    Architecture(("stablelm",), "layernorm", "layers", embeddings=("embed_tokens",),
                 writers=("self_attn.o_proj", "mlp.down_proj"),
                 norms=(BlockNorm("input_layernorm", "pre_attention", _QKV),
                        BlockNorm("post_attention_layernorm", "pre_mlp", _GATE_UP)),
                 final="norm", convertible=True, variant=_stablelm_variant),
    Architecture(("mpt",), "layernorm", "blocks", embeddings=("wte",), writers=("attn.out_proj", "ffn.down_proj"),
                 norms=(BlockNorm("norm_1", "pre_attention", ("attn.Wqkv",)), BlockNorm("norm_2", "pre_mlp", ("ffn.up_proj",))),
                 final="norm_f"),
    Architecture(("mamba",), "rmsnorm", "layers", embeddings=("embeddings",), writers=("mixer.out_proj",),
                 norms=(BlockNorm("norm", "pre_attention", ("mixer.in_proj",), note="before the Mamba mixer"),),
                 final="norm_f"),
    _llama_like("llama", "mistral", "qwen2", "smollm3"),
    _llama_like("olmo", kind="layernorm", eps=1e-5),  # non-parametric LayerNorm, eps hard-coded in its forward
    _llama_like("qwen3", qk=_qk(1, "per-head")),
    dataclasses.replace(
        _llama_like("phi3"),
        norms=(BlockNorm("input_layernorm", "pre_attention", ("self_attn.qkv_proj",)),
               BlockNorm("post_attention_layernorm", "pre_mlp", ("mlp.gate_up_proj",)))),
    _llama_like("gemma", kind="rmsnorm_offset"),
    dataclasses.replace(_llama_like("gemma2", kind="rmsnorm_offset"), norms=_SANDWICH),
    dataclasses.replace(_llama_like("gemma3", "gemma3_text", kind="rmsnorm_offset", qk=_qk(2, "per-head")),
                        norms=_SANDWICH),
    dataclasses.replace(
        _llama_like("olmo2", qk=_qk(1, "full-width")),
        norms=(BlockNorm("post_attention_layernorm", "attention_output", note="on the attention output, before the add"),
               BlockNorm("post_feedforward_layernorm", "mlp_output", note="on the MLP output, before the add"))),
    _bert_like("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta"),
    _bert_like("distilbert", layers="transformer.layer", attn="sa_layer_norm", mlp="output_layer_norm"),
    _bert_like("mpnet", attn="attention.LayerNorm"),
    _bert_like("albert", layers="encoder.albert_layer_groups.0.albert_layers", attn="attention.LayerNorm",
               mlp="full_layer_layer_norm"),
)  # fmt: skip

ARCHITECTURES: dict[str, Architecture] = {t: a for a in _TABLE for t in a.model_types}


def architecture(model_or_config: Any) -> Architecture | None:
    """The description of a model's family with its config's variant applied, or None if unknown.

    **Arguments:** ``model_or_config`` — an HF model (anything with ``.config``) or an HF config.
    """
    cfg = getattr(model_or_config, "config", model_or_config)
    arch = ARCHITECTURES.get(getattr(cfg, "model_type", None))
    return None if arch is None else arch.resolve(cfg)


def post_ln_families() -> tuple[str, ...]:
    """Families whose block norms sit after the residual add in every checkpoint."""
    return tuple(t for t, a in ARCHITECTURES.items() if a.variant is None and a.post_ln)


def convertible_families() -> tuple[str, ...]:
    """Families the exact LN → RMSNorm conversion supports (see :mod:`normscope.convert`)."""
    return tuple(t for t, a in ARCHITECTURES.items() if a.convertible)
