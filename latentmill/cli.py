"""The `latentmill` command: a click group whose commands are listed in workflow order.

Nothing here imports torch at start-up: the commands' options are generated from torch-free
settings dataclasses, and each command imports the library when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import sys

import click

from latentmill.commands import align, checkpoints, evaluate, invert, store, training
from pipeline.errors import LatentmillError, describe_fault, filesystem_fault

# The order of `latentmill --help`: try it, run it, look at the result, then the tools behind it.
COMMANDS = [invert.demo, align.align, invert.invert, invert.verify, store.report, store.curate, store.rebalance,
            store.augment, store.export, store.reconstruct, store.channels, evaluate.evaluate, training.fit_prior, training.fit_flow, training.train_encoder,
            training.train_generator, training.train_identity, checkpoints.inspect, checkpoints.convert,
            checkpoints.generate, training.make_demo_data]


class _Group(click.Group):
    """Lists commands in workflow order, and turns latentmill's own errors into one clear line and
    exit status 2, not a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with the whole first sentence of its help, wrapped, never cut off."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands[name]
            if command.hidden:
                continue
            text = " ".join((command.help or "").split("\n\n")[0].split())
            first = text.split(". ")[0].rstrip(".") + "."
            rows.append((name, first))
        with formatter.section("Commands, in the order of a workflow"):
            formatter.write_dl(rows, col_spacing=2)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LatentmillError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            fault = filesystem_fault(exc)
            if fault is None:
                raise
            click.echo(f"error: {describe_fault(fault)}", err=True)
            sys.exit(1)

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        """One error style for every mistake, click's (a misspelt option) and latentmill's alike:
        'error: <what to change>' and the --help to read, exit status 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.UsageError as exc:
            where = f"\nsee `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="latentmill")
def main() -> None:
    """latentmill: invert, score, curate and rebalance image datasets through a pretrained StyleGAN
    (StyleGAN2 or StyleGAN3, with or without a pSp, e4e or ReStyle encoder).

    Weights are given as URIs (local paths, file://, s3://, gs://, https://, ...); remote files are
    cached under $LATENTMILL_CACHE (default ~/.cache/latentmill). Checkpoints are NVlabs pickles
    (read without running their code), rosinality .pt files, or latentmill .safetensors bundles.

    \b
    Start here:
      latentmill demo                      # the whole pipeline on the bundled model, then report.html
      latentmill invert --input photos/ --output out/store --generator ffhq.pkl --prior prior.safetensors
      latentmill report out/store
    """


for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
