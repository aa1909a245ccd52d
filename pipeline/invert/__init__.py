"""`latentmill invert`'s worker and what prepares its run, with no Ray: settings (config.py), the shard
processor that decodes, inverts and writes a shard (shard_processor.py), store setup and resume
(invert_store.py), preflight checks, batch sizing and the shard book (retries, summaries). The
distributors that run shard processors (Ray's actor pool, or this process) are in pipeline/runtime/."""
