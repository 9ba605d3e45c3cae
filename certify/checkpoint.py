"""Self-describing checkpoints: one file that says how to rebuild, normalize and certify the model.

Saved atomically (a crash never leaves a half-written file under the final name) and loaded with
``torch.load(weights_only=True)``, so a checkpoint can carry tensors and plain values but never code.
Reference checkpoints of the public smoothing repos (``{'arch', 'state_dict'}``) load too, given the
dataset and σ that the file does not record.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.errors import UserError, first_line
from certify.fsutil import atomic_writer, check_output_path

FORMAT = "certify-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint knows; ``build_model()`` returns the network with its weights loaded."""

    arch: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    certification: dict[str, Any]  # {"kind": "smoothing", "sigma": 0.25}; the ℓ∞ kinds need no σ
    state_dict: dict[str, torch.Tensor]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    resume_state: dict[str, Any] = field(default_factory=dict)  # optimizer, scheduler, RNG
    path: Path | None = None
    sha256: str = ""
    reference_format: bool = False

    def build_model(self, device: torch.device | str = "cpu") -> nn.Module:
        """Rebuild the architecture and load the weights; a mismatch is reported as a user error.

        An ℓ∞-dist net comes back at p = ∞, the network its certificate is about (it is built at the
        training schedule's first p, and a resumed training run sets p before every batch)."""
        from certify.linf_dist.layers import INF, set_p
        from certify.nets import build_model

        model = build_model(self.arch, num_classes=self.num_classes, input_shape=self.input_shape,
                            mean=self.mean, std=self.std, **self.arch_kwargs)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            detail = next((ln.strip() for ln in first[1:] if ln.strip()), first[0] if first else "")
            raise UserError(
                f"the weights in {self.path or 'the checkpoint'} do not fit {self.arch} on "
                f"{self.dataset} ({'×'.join(map(str, self.input_shape))}, {self.num_classes} classes): "
                f"{detail} — wrong --dataset?") from None
        set_p(model, INF)  # no-op for models without ℓp-distance layers
        return model.to(device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs),
            "dataset": self.dataset, "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "certification": dict(self.certification),
            "training": dict(self.training), "command": self.command,
            "metrics": dict(self.metrics), "epoch": self.epoch,
            "resume_state": self.resume_state, "state_dict": self.state_dict,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically: temporary file in the same directory, fsync, rename."""
    path = Path(path)
    check_output_path(path, "checkpoint")
    with atomic_writer(path, "wb") as f:
        torch.save(checkpoint.to_dict(), f)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike, *, dataset: str | None = None,
                    sigma: float | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load our checkpoints, or a reference ``{'arch', 'state_dict'}`` one, a torch.export program or
    a TorchScript archive (``certify.exported``) given ``dataset`` and ``sigma``.

    ``dataset``/``sigma`` given for one of our checkpoints must agree with what it records.
    """
    path = Path(path)
    from certify.exported import load_exported, model_archive_format  # it builds on this module

    if (fmt := model_archive_format(path)) is not None:  # torch.export or TorchScript, by content
        return load_exported(path, fmt, dataset, sigma)
    raw = _read(path, map_location)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise UserError(f"{path} is not a model checkpoint (no 'state_dict' entry)")
    if raw.get("format") == FORMAT:
        ckpt = _from_ours(raw, path)
        if dataset is not None and dataset != ckpt.dataset:
            from certify.data import dataset_info

            other = dataset_info(dataset)
            raise UserError(
                f"{path} was trained on {ckpt.dataset} ({'×'.join(map(str, ckpt.input_shape))}); "
                f"--dataset {dataset} is {'×'.join(map(str, other.input_shape))}: drop --dataset, "
                f"the checkpoint knows its data")
        if sigma is not None and ckpt.certification.get("kind") in ("smoothing", "none"):
            # an explicit σ overrides the training σ; a model trained without noise gets smoothed
            # at that σ (the undefended baseline), which the runner notes
            ckpt.certification = {"kind": "smoothing", "sigma": float(sigma)}
    else:
        ckpt = _from_reference(raw, path, dataset, sigma)
    ckpt.path = path
    ckpt.sha256 = file_sha256(path)
    return ckpt


def _read(path: Path, map_location: str | torch.device) -> Any:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a checkpoint file: give the .pt file itself")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
            raise UserError(
                f"refusing to load {path}: it contains pickled Python objects (code), which certify "
                f"never executes; re-save it as a dict of tensors and plain values") from None
        raise UserError(f"cannot read checkpoint {path}: corrupt file ({first_line(err)})") from None
    except Exception as err:  # a damaged file can fail anywhere inside the unpickler
        raise UserError(f"cannot read checkpoint {path}: {_what_is_wrong(path, err)}") from None


def _what_is_wrong(path: Path, err: BaseException) -> str:
    """Why torch.load failed, in words: from the file's first bytes, not torch's internals."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start == b"PK\x03\x04":  # the zip archive torch.save writes
        return ("the file is truncated or damaged (its zip archive is incomplete); copy or download "
                "it again")
    if start[:1] == b"\x80":  # a legacy pickle
        return "the file is truncated or damaged (its pickle stream ends early); copy it again"
    return (f"it is not a PyTorch checkpoint (it starts with {start!r}, not the zip archive that "
            f"torch.save writes)")


def _from_ours(raw: dict[str, Any], path: Path) -> Checkpoint:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {version}; this certify reads "
                        f"version {FORMAT_VERSION}: upgrade certify")
    try:
        norm = raw["normalization"]
        return Checkpoint(
            arch=raw["arch"], arch_kwargs=dict(raw.get("arch_kwargs", {})),
            dataset=raw["dataset"], input_shape=tuple(raw["input_shape"]),
            num_classes=int(raw["num_classes"]), mean=tuple(norm["mean"]), std=tuple(norm["std"]),
            certification=dict(raw["certification"]), state_dict=raw["state_dict"],
            training=dict(raw.get("training", {})), command=raw.get("command", ""),
            metrics=dict(raw.get("metrics", {})), epoch=int(raw.get("epoch", 0)),
            resume_state=raw.get("resume_state", {}) or {})
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is a damaged certify checkpoint (missing or bad field {err})") from None


class ReferenceNeedsData(UserError):
    """A reference checkpoint loaded without the --dataset and --sigma it does not record; carries
    what the file does say (architecture name, weights, epoch) for callers that can use it."""

    def __init__(self, message: str, *, arch: str, state_dict: dict[str, Any], epoch: int):
        super().__init__(message)
        self.arch, self.state_dict, self.epoch = arch, state_dict, epoch


def _from_reference(raw: dict[str, Any], path: Path, dataset: str | None,
                    sigma: float | None) -> Checkpoint:
    from certify.data import dataset_info

    arch = raw.get("arch")
    if not isinstance(arch, str):
        raise UserError(f"{path} has no architecture name ('arch'); it is neither a certify nor a "
                        f"reference smoothing checkpoint")
    if dataset is None or sigma is None:
        raise ReferenceNeedsData(f"{path} is a reference checkpoint ({{'arch', 'state_dict'}}) that does "
                                 f"not record its data or noise: pass --dataset and --sigma",
                                 arch=arch, state_dict=raw.get("state_dict") or {},
                                 epoch=int(raw.get("epoch", 0) or 0))
    info = dataset_info(dataset)
    # DataParallel-trained references carry a "module." component in every key
    state = {".".join(part for part in k.split(".") if part != "module"): v
             for k, v in raw["state_dict"].items()}
    return Checkpoint(arch=arch, dataset=info.name, input_shape=info.input_shape,
                      num_classes=info.num_classes, mean=info.mean, std=info.std,
                      certification={"kind": "smoothing", "sigma": float(sigma)}, state_dict=state,
                      epoch=int(raw.get("epoch", 0) or 0), reference_format=True)
