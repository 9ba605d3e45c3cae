"""The ``certify`` command: a thin click layer over the library.

Every user mistake ends as one ``error: ...`` line on stderr and exit code 2, never a traceback.
Heavy imports (torch) happen inside the commands, so ``certify --help`` answers at once.
"""

from __future__ import annotations

import sys

import click

from certify import __version__
from certify.errors import UserError

# Each command: its module (imported only when the command runs or shows its own help, so that
# 'certify --help' answers without importing torch) and the first paragraph of its help, which the
# listing shortens (a test checks it against the command's own).
COMMAND_MODULES: dict[str, tuple[str, str]] = {
    "run": ("certify.cli.run",
        "Certify CHECKPOINT on a dataset split: a prediction and a certified radius per "
        "example."),
    "predict": ("certify.cli.run",
        "Predict with CHECKPOINT's smoothed classifier, abstaining when unsure."),
    "merge": ("certify.cli.run",
        "Join the TSV files of 'certify run --shard' into the rows of one run (sorted by "
        "index)."),
    "plot": ("certify.cli.plot",
        "Plot certified accuracy vs radius for RESULTS files, one line each, and print a "
        "table."),
    "train": ("certify.cli.train",
        "Train a model that 'certify run' can certify."),
    "eval": ("certify.cli.evaluate",
        "Accuracy, balanced and per-class accuracy, ECE and classwise ECE (15 bins), and "
        "top-k against average-k sets, for CHECKPOINT on a dataset split."),
    "quickstart": ("certify.cli.quickstart",
        "Train (or reuse) a Fashion-MNIST model, certify test images, plot certified "
        "accuracy."),
    "export": ("certify.cli.export", "Write CHECKPOINT's model as a torch.export program for any batch size."),
    "info": ("certify.cli.inspect",
        "Show what CHECKPOINT records: architecture, data, certification, training and "
        "metrics."),
    "ladc": ("certify.cli.ladc",
        "Label-aware distribution calibration (LADC): retrain CHECKPOINT's last layer on a "
        "rebalanced feature set, keeping the rest of the network."),
}


class _LazyGroup(click.Group):
    """Imports a command's module only when that command is looked up for running or for its help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        import importlib

        module = importlib.import_module(COMMAND_MODULES[name][0])
        return next(c for c in module.COMMANDS if c.name == name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(map(len, COMMAND_MODULES))
        rows = [(name, _shorten(summary, limit)) for name, (_, summary) in COMMAND_MODULES.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shorten(text: str, limit: int) -> str:
    """The first sentence of ``text``, cut at a word to fit ``limit`` characters (with "...")."""
    sentence = text.split(". ")[0].rstrip(".") + "."
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="certify")
def cli() -> None:
    """Train robust image classifiers and prove how robust they are.

    \b
    Typical session:
      certify quickstart                           # train/reuse a Fashion-MNIST model, certify, plot
      certify train --dataset fashion-mnist --arch lenet --sigma 0.25 --out m.pt
      certify run m.pt --out m.tsv --skip 20       # certified prediction + radius per test image
      certify plot m.tsv other.tsv --out curve.png # certified accuracy vs radius, and a table

    Run 'certify COMMAND --help' for the options of each command.
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line on stderr."""
    from certify.allocator import tune_malloc

    tune_malloc()  # large CPU batches otherwise page-fault through fresh memory on every pass
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the help itself, not a usage error squeezed onto one line
        args = ["--help"]
    try:
        code = cli.main(args=args, prog_name="certify", standalone_mode=False)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        _fail(f"{err.format_message()}{hint}")
    except click.ClickException as err:
        _fail(err.format_message())
    except UserError as err:
        _fail(str(err))
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted: finished rows and checkpoints are kept; rerun with --resume", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(2)

