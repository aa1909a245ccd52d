"""Curation and rebalancing: near-duplicate search, outlier and reconstruction tests, group specs and
candidate making as tensor functions (curate.py, rebalance.py, similarity_search.py), and the store
operations that run them over a whole store (store_curation.py, store_rebalance.py)."""
