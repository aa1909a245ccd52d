"""Job entry points. Each runs unchanged from `latentmill <command>` or `python -m jobs.<module>`
(e.g. as the entrypoint of `ray job submit -- python -m jobs.fit_prior ...`)."""
