"""Job entry points: each takes its settings dataclass, calls the library (pipeline/) and writes
its outputs. The command line (latentmill/) is the layer above; from a shell or as the entrypoint
of `ray job submit`, run them as `python -m latentmill <command> ...`."""
