"""Option types shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from certify.errors import UserError


def pick_device(name: str):
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    import torch

    from certify.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (use auto, cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: certify runs on cpu or cuda devices")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda or cuda:K.")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=str), default=None,
    help="Directory with the dataset files (default: $CERTIFY_DATA, the Debian package path for "
         "Fashion-MNIST, $IMAGENET_DIR for imagenet, then ./data/NAME).")
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Seed; each example's noise is seeded by (seed, index).")


def command_line() -> str:
    """The command as typed, recorded in checkpoints and sidecars."""
    import shlex
    import sys
    from pathlib import Path

    return " ".join(["certify", *map(shlex.quote, sys.argv[1:])]) if Path(sys.argv[0]).name == "certify" \
        else " ".join(map(shlex.quote, sys.argv))


def click_type(param: Any) -> Any:
    """The click type of a :class:`certify.params.Param` (ranges are checked by the parameter
    itself, so the error names the same bounds wherever the value came from)."""
    if param.choices and param.kind is str:
        return click.Choice(param.choices)
    return {int: click.INT, float: click.FLOAT, bool: click.BOOL}.get(param.kind, click.STRING)


def param_option(param: Any, *, default: Any, help: str, show_default: bool = False,
                 **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of a parameter: ``--flag`` (``--flag/--no-flag`` for a bool), stored under
    the parameter's own name."""
    flag = param.cli_flag
    if param.kind is bool:
        flag = f"{flag}/--no-{flag[2:]}"
        extra.setdefault("default", default)
        return click.option(flag, param.name, help=help, show_default=show_default, **extra)
    aliases = [f"--{a.replace('_', '-')}" for a in param.aliases]
    return click.option(flag, *aliases, param.name, type=click_type(param), default=default, help=help,
                        show_default=show_default, metavar=param.metavar, **extra)


def flag_error(err: Any, flags: dict[str, str]) -> UserError:
    """A library ``ParamError`` retold with the parameter's CLI flag (and the known ones' flags)."""
    from certify.errors import UserError

    known = "" if err.known is None else \
        f" (its options: {', '.join(flags.get(k, k) for k in err.known) or 'none'})"
    return UserError(f"{flags.get(err.param, err.param)}: {err.message}{known}")
