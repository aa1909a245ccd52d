"""Latent stores: `from pipeline.store import open_store` is the one way to read one (see store.py).

Imported lazily, so that modules needing only the schemas (the command line's --help) load no
pandas or fsspec."""


def __getattr__(name: str):
    if name in ("open_store", "Store"):
        from pipeline.store import store

        return getattr(store, name)
    raise AttributeError(f"module 'pipeline.store' has no attribute {name!r}")
