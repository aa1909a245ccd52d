"""Augmenting a store: K edited variants of every ok row (StyleSpace, mixing, prior jitter, composition)."""
