"""Attention expressivity (Brody, Alon & Yahav, Findings of ACL 2023): unselectable keys and
per-layer / per-head measurements of the vectors entering attention in real models."""

from normscope.attention.unselectable import unselectable, unselectable_fraction

__all__ = ["unselectable", "unselectable_fraction"]
