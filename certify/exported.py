"""Models brought as files: torch.export programs and TorchScript archives, certified by smoothing.

``torch.export.save`` writes a graph of PyTorch operators plus its weights; ``torch.jit.save`` writes
TorchScript code plus weights. Neither needs the model's Python source, so any architecture (a
torchvision or timm model, say) can be certified without certify knowing it. Neither is loaded in a
way that runs Python from the file. ``torch.export.load`` alone would: it retries some members with
the full unpickler, and it evaluates the graph's shape expressions with sympy's ``sympify`` (an
``eval``), and ``ExportedProgram.module()`` execs the recorded guards. So every ``torch.load`` inside
is forced to ``weights_only``, members holding pickled objects or compiled code are refused before
loading, shape expressions must be plain sympy arithmetic, the module is built without its guards,
and the loaded graph may call PyTorch operators only.

The files record no dataset and no σ, so both are given (``--dataset``, ``--sigma``). The model takes
pixels in [0, 1] and normalizes inside, as ours do, so the checkpoint's own mean/std are 0 and 1;
``warn_if_expects_normalized`` catches the commonest violation of that contract.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import logging
import math
import operator
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.checkpoint import Checkpoint, file_sha256, load_checkpoint
from certify.errors import UserError, first_line
from certify.fsutil import atomic_writer, check_output_path

EXPORT = "torch.export"
TORCHSCRIPT = "torchscript"

# Python callables (not PyTorch operators) that an exported graph may call: shape arithmetic.
_PYTHON_OPS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
               operator.floordiv, operator.mod, operator.pow, operator.neg, operator.pos,
               operator.abs, operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
               operator.ge, operator.and_, operator.or_, operator.xor, operator.not_,
               operator.invert, math.ceil, math.floor, math.trunc, math.sqrt}


def model_archive_format(path: Path) -> str | None:
    """``EXPORT`` or ``TORCHSCRIPT`` when ``path`` is such a file, judged by its zip members (every
    format here is a zip archive, ours included); None for anything else a checkpoint may be.

    A complete zip that is none of these formats and no ``torch.save`` archive is refused here,
    since torch.load's complaint about it would read like a damaged file."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    inner = {name.split("/", 1)[1] for name in names if "/" in name}  # below the archive's folder
    if "archive_format" in inner or "serialized_exported_program.json" in names:
        return EXPORT
    if "data.pkl" in inner and any(name.startswith("code/") for name in inner):
        return TORCHSCRIPT
    if "data.pkl" in inner:
        return None  # torch.save's archive: a certify or a reference checkpoint
    raise UserError(f"{path} is a zip archive but not a model: neither a checkpoint (torch.save), "
                    f"a torch.export program (torch.export.save) nor TorchScript (torch.jit.save)")


class LoadedModel(nn.Module):
    """A loaded program as the module certify runs.

    Batches are cut and padded to the sizes the program accepts (a program exported with a fixed
    batch size runs at any --batch), and ``train()``/``eval()`` only set the flag: an exported graph
    keeps the mode it was exported in, and refuses ``eval()`` itself."""

    def __init__(self, program: Callable[[torch.Tensor], Any], min_batch: int = 1,
                 max_batch: int | None = None):
        super().__init__()
        self.program = program
        self.min_batch, self.max_batch = min_batch, max_batch

    def train(self, mode: bool = True) -> LoadedModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> Any:
        low, high = self.min_batch, self.max_batch
        if low <= len(x) and (high is None or len(x) <= high):
            return self.program(x)
        outputs = []
        for chunk in x.split(high or len(x)):
            rows, short = len(chunk), low - len(chunk)
            if short > 0:  # repeat the last image: each row's logits depend on that row alone
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            outputs.append(self.program(chunk)[:rows])
        return torch.cat(outputs)


@dataclass
class ExportedCheckpoint(Checkpoint):
    """A checkpoint whose model is a loaded program rather than an architecture name and weights."""

    program: Any = None  # torch.export.ExportedProgram or torch.jit.ScriptModule
    batch_range: tuple[int, int | None] = (1, None)

    def build_model(self, device: torch.device | str = "cpu") -> nn.Module:
        """The program on ``device``, after checking on a dummy batch that it returns
        ``num_classes`` logits per image (a wrong file fails here in words, not mid-run)."""
        if isinstance(self.program, torch.export.ExportedProgram):
            from torch.export.passes import move_to_device_pass

            # check_guards=False: the program's recorded guards are Python source that module()
            # would exec; the input check that stays compares shapes with the recorded ranges
            module: Any = move_to_device_pass(self.program, device).module(check_guards=False)
        else:
            module = self.program.to(device)
        model = LoadedModel(module, *self.batch_range)
        self._check_logits(model, device)
        return model

    def _check_logits(self, model: nn.Module, device: torch.device | str) -> None:
        shape = "×".join(map(str, self.input_shape))
        try:
            with torch.inference_mode():
                out = model(torch.zeros(2, *self.input_shape, device=device))
        except Exception as err:
            raise UserError(f"cannot run {self.path} on a batch of 2 {self.dataset} images ({shape}): "
                            f"{first_line(err)}") from None
        if not isinstance(out, torch.Tensor):
            raise UserError(f"{self.path} returns a {type(out).__name__}, not one tensor of logits: "
                            f"certify needs (batch, {self.num_classes}) logits")
        if tuple(out.shape) != (2, self.num_classes):
            raise UserError(f"{self.path} returns shape {tuple(out.shape)} for a batch of 2 "
                            f"{self.dataset} images; certify needs (2, {self.num_classes}): one logit "
                            f"per {self.dataset} class — wrong --dataset, or a model for other classes?")


def load_exported(path: Path, fmt: str, dataset: str | None, sigma: float | None) -> ExportedCheckpoint:
    """A torch.export or TorchScript file as a smoothing checkpoint at ``sigma`` on ``dataset``."""
    from certify.data import dataset_info

    if dataset is None or sigma is None:
        raise UserError(f"{path} is a {fmt} model, which records neither its dataset nor its noise "
                        f"level: pass --dataset and --sigma (e.g. --dataset cifar10 --sigma 0.25) to "
                        f"'certify run' or 'certify info'; other commands read our checkpoints only")
    if not sigma > 0:
        raise UserError(f"--sigma must be positive, got {sigma}")
    info = dataset_info(dataset)
    if fmt == EXPORT:
        program: Any = _load_program(path)
        batch_range = _batch_range(program, path, info.name, info.input_shape)
        weights = {**program.state_dict, **{k: v for k, v in program.constants.items()
                                            if isinstance(v, torch.Tensor)}}
    else:
        program = _load_torchscript(path)
        batch_range, weights = (1, None), program.state_dict()
    channels = info.input_shape[0]
    return ExportedCheckpoint(
        arch=fmt, dataset=info.name, input_shape=info.input_shape, num_classes=info.num_classes,
        mean=(0.0,) * channels, std=(1.0,) * channels,
        certification={"kind": "smoothing", "sigma": float(sigma)}, state_dict=weights,
        path=path, sha256=file_sha256(path), program=program, batch_range=batch_range)


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """Force ``weights_only`` on every torch.load within (torch.export.load retries some members
    with the full unpickler), and keep torch's logged tracebacks off the user's terminal."""
    variable = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(variable)
    os.environ[variable] = "1"
    logs = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def _load_program(path: Path) -> torch.export.ExportedProgram:
    _refuse_code_members(path)
    _check_shape_expressions(path)
    try:
        with open(path, "rb") as f, _weights_only_unpickling():
            program = torch.export.load(f)
    except pickle.UnpicklingError:
        raise UserError(_pickled_code(path)) from None
    except Exception as err:
        raise UserError(f"cannot load {path} as a torch.export program ({first_line(err)}); a "
                        f"program exported by another PyTorch may not load in this one "
                        f"({torch.__version__}): export it again here") from None
    for module in program.graph_module.modules():
        graph = module.graph if isinstance(module, torch.fx.GraphModule) else None
        for node in graph.nodes if graph is not None else ():
            if node.op == "call_function" and not _is_operator(node.target):
                raise UserError(f"refusing to run {path}: its graph calls {node.target!r}, which is "
                                f"not a PyTorch operator")
    return program


def _refuse_code_members(path: Path) -> None:
    """Members that torch.export.load would run as code: compiled AOTInductor libraries, and
    constants stored as pickled Python objects."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[-1]
            if inner.startswith("data/aotinductor/"):
                raise UserError(f"refusing to load {path}: it contains a compiled AOTInductor "
                                f"library (native code); save the program with torch.export.save")
            if inner.startswith("data/constants/") and \
                    inner.split("/")[-1].startswith(("custom_obj_", "opaque_obj_")):
                raise UserError(_pickled_code(path))


def _check_shape_expressions(path: Path) -> None:
    """torch.export.load rebuilds each symbolic shape of the graph (``expr_str``, such as
    ``Mul(Integer(3), Symbol('s77', positive=True, integer=True))``) with sympy's ``sympify``, which
    is Python's ``eval``: a crafted file could hide any code there. Allow only sympy arithmetic."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[-1]
            if not (inner.startswith("models/") and inner.endswith(".json")
                    or name == "serialized_exported_program.json"):
                continue
            try:
                graph = json.loads(archive.read(name))
            except ValueError:
                raise UserError(f"cannot load {path}: its graph ({name}) is not valid JSON") from None
            for text in _values_under(graph, "expr_str"):
                if not _is_sympy_arithmetic(text):
                    raise UserError(f"refusing to load {path}: a shape expression in its graph is "
                                    f"not plain arithmetic ({text[:80]!r})")


def _values_under(tree: Any, key: str) -> Iterator[Any]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if key in node:
                yield node[key]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


_NUMBER_PARSERS = ("Symbol", "Dummy", "Integer", "Float")  # the calls that may take a string
_SYMBOL_OR_NUMBER = re.compile(r"[A-Za-z_]\w*|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)")


def _is_sympy_arithmetic(text: Any) -> bool:
    """Calls of sympy classes (and torch's shape functions) on numbers, free names and each other:
    no attributes, no subscripts, no builtins, strings only as a symbol's name or a number."""
    if not isinstance(text, str):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    names_or_numbers = {id(call.args[0]) for call in ast.walk(tree)
                        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id in _NUMBER_PARSERS and call.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not (id(node) in names_or_numbers and
                                                    _SYMBOL_OR_NUMBER.fullmatch(node.value)):
                return False
            if not isinstance(node.value, (str, int, float, bool)):
                return False
        elif isinstance(node, ast.Name):
            if not _is_sympy_name(node.id):
                return False
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or any(k.arg is None for k in node.keywords):
                return False
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                                   ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.boolop,
                                   ast.cmpop)):
            return False
    return True


def _is_sympy_name(name: str) -> bool:
    """A sympy class or constant (``Mul``, ``oo``), one of torch's shape functions (``FloorDiv``),
    or a free name, which sympify turns into a symbol; never a builtin (``eval``) or a sympy helper
    (``lambdify``)."""
    import sympy
    from torch.utils._sympy import functions as shape_functions

    for namespace in (shape_functions, sympy):
        if hasattr(namespace, name):
            value = getattr(namespace, name)
            return isinstance(value, sympy.Basic) or \
                (isinstance(value, type) and issubclass(value, sympy.Basic))
    return name.isidentifier() and not name.startswith("_") and not hasattr(builtins, name)


def _is_operator(target: Any) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket,
                           torch._ops.HigherOrderOperator)):
        return True
    if getattr(target, "__module__", None) == "torch" and \
            getattr(target, "__name__", "").startswith("sym_"):
        return True  # torch.sym_max and friends: symbolic shape arithmetic
    try:
        return target in _PYTHON_OPS
    except TypeError:  # unhashable
        return False


def _batch_range(program: torch.export.ExportedProgram, path: Path, dataset: str,
                 shape: tuple[int, int, int]) -> tuple[int, int | None]:
    """The batch sizes the program accepts, after checking it takes one batch of images of the
    dataset's shape."""
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise UserError(f"{path} takes {len(names)} inputs; certify calls the model with one batch "
                        f"of images")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    val = node.meta.get("val")
    dims = tuple(val.shape) if isinstance(val, torch.Tensor) else ()
    fixed = [d if isinstance(d, int) else None for d in dims]
    if len(dims) != 4 or any(d is not None and d != want for d, want in zip(fixed[1:], shape)):
        given = "×".join("?" if d is None else str(d) for d in fixed)
        raise UserError(f"{path} takes inputs of shape {given or 'other than a tensor'}; {dataset} "
                        f"batches are N×{'×'.join(map(str, shape))}: export the model with an example "
                        f"input of that shape")
    batch = dims[0]
    if isinstance(batch, int):
        print(f"note: {path} was exported for batches of exactly {batch}; certify pads and splits "
              f"every batch to that size (export with dynamic_shapes=({{0: "
              f"torch.export.Dim('batch')}},) to take any size)", file=sys.stderr)
        return batch, batch
    bounds = program.range_constraints.get(batch.node.expr)
    if bounds is None:
        return 1, None
    upper = float(bounds.upper)
    return max(1, int(bounds.lower)), None if math.isinf(upper) else int(upper)


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """TorchScript archives unpickle with TorchScript's own restricted unpickler (tensors and
    TorchScript classes only) and run as TorchScript, not Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still loads
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise UserError(f"cannot load {path} as TorchScript: {first_line(err)}") from None


def _pickled_code(path: Path) -> str:
    return (f"refusing to load {path}: it contains pickled Python objects (code), which certify "
            f"never executes; export the model again with plain tensor weights")


def warn_if_expects_normalized(ckpt: Checkpoint, model: nn.Module, data: Any,
                               device: torch.device, count: int = 32) -> bool:
    """Warn (one line on stderr) when the model classifies the first ``count`` images clearly better
    after normalizing them with the dataset's mean/std than as pixels in [0, 1].

    Smoothing adds its noise to the model's input, and σ and the radii are in the units of that
    input: a model that expects normalized inputs is certified at the wrong scale, and its clean
    accuracy on pixels is poor. Two forward passes of ``count`` images, so it always runs."""
    from certify.data import dataset_info

    info = dataset_info(ckpt.dataset)
    n = min(count, len(data))
    if n == 0:
        return False
    images, labels = zip(*(data[i] for i in range(n)), strict=True)
    x = torch.stack(images).to(device)
    y = torch.as_tensor(labels, device=device)
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    model.eval()
    with torch.inference_mode():
        as_pixels = int((model(x).argmax(1) == y).sum())
        normalized = int((model((x - mean) / std).argmax(1) == y).sum())
    if normalized - as_pixels < max(3, n // 4):
        return False
    print(f"warning: {ckpt.path} classifies {normalized} of the first {n} {info.name} images right "
          f"when they are normalized (mean {_values(info.mean)}, std {_values(info.std)}) but only "
          f"{as_pixels} as pixels in [0, 1]: it seems to expect normalized inputs; smoothing adds "
          f"noise to the pixels it is given, so put the normalization inside the model and export "
          f"it again", file=sys.stderr)
    return True


def _values(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:g}" for v in values)


def export_checkpoint(source: Path, out: Path, *, force: bool = False) -> Checkpoint:
    """Write ``source``'s model as a torch.export program with a dynamic batch dimension, atomically;
    returns the checkpoint it came from (its dataset and σ are what the file cannot record)."""
    fmt = model_archive_format(Path(source))
    if fmt is not None:
        raise UserError(f"{source} is already a {fmt} model: 'certify run' certifies it as it is")
    if out.exists() and not force:
        raise UserError(f"{out} exists: pass --force to overwrite it, or choose another --out")
    check_output_path(out, "exported model")
    ckpt = load_checkpoint(source)
    kind = ckpt.certification.get("kind")
    if kind not in ("smoothing", "none"):
        raise UserError(f"certify export writes models for randomized smoothing; {source} is "
                        f"{kind}, whose certificate comes from its own layers: certify it with "
                        f"'certify run {source}'")
    model = ckpt.build_model("cpu").eval()
    example = torch.rand(2, *ckpt.input_shape)
    try:
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as err:
        raise UserError(f"torch.export cannot export {ckpt.arch} from {source}: "
                        f"{first_line(err)}") from None
    with atomic_writer(out, "wb") as f:
        torch.export.save(program, f)
    return ckpt
