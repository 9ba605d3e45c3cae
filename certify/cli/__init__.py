"""The ``certify`` command: a thin click layer over the library.

Every user mistake ends as one ``error: ...`` line on stderr and exit code 2, never a traceback.
Heavy imports (torch) happen inside the commands, so ``certify --help`` answers at once.
"""

from __future__ import annotations

import sys

import click

from certify import __version__
from certify.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def _register() -> None:
    from certify.cli import evaluate, inspect, ladc, plot, quickstart, run, train

    for module in (run, plot, train, evaluate, quickstart, inspect, ladc):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()
