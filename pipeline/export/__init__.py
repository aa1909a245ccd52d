"""Latent stores for other teams: exports in formats they query (Lance with a vector index), nearest rows."""
