"""A training run's settings, nested per component, each section checked against its typed options.

The checkpoint records the settings as one flat mapping (every option name is unique across the
sections, and checkpoints written before the sections existed have that shape), so a run can be
rebuilt from any checkpoint with :meth:`TrainConfig.from_record`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certify.objectives.gaussian import SIGMA
from certify.params import Param, ParamError, resolve
from certify.training.data import DATA_OPTIONS
from certify.training.example_weighting import ABSGD
from certify.training.model import MODEL_OPTIONS
from certify.training.optim import OPTIMIZER_OPTIONS, SCHEDULE_OPTIONS, milestone_epochs
from certify.training.sampling import ExampleSampling
from certify.training.susceptibility import SusceptibilityProbe

AMP_MODES = ("off", "bf16")
RUN_OPTIONS: tuple[Param, ...] = (
    Param("batch_size", 256, "Images per optimizer step in each process. Under torchrun with K "
          "processes a step sees K×batch images (the global batch): to keep a single-process "
          "recipe's hyperparameters, divide --batch by K; to keep --batch, scale --lr by about K.",
          kind=int, at_least=1, flag="batch"),
    Param("seed", 0, "Seed of the initial weights, the data order, the noise and the label noise.",
          kind=int, at_least=0),
    Param("device", "cpu", "Where to train.", kind=str),
    Param("amp", "off", "bf16: autocast the training forward and loss to bfloat16 (evaluation stays "
          "fp32).", kind=str, choices=AMP_MODES),
)
# Settings that may change when a run is resumed (they do not change what is being trained;
# augment_on draws other random numbers from the same distribution).
RESUMABLE_CHANGES = ("epochs", "device", "workers", "data_dir", "channels_last", "augment_on")


@dataclass(frozen=True)
class Section:
    """A group of settings: its attribute on :class:`TrainConfig`, its --help heading, its options."""

    name: str
    title: str
    options: tuple[Param, ...]


SECTIONS: tuple[Section, ...] = (
    Section("data", "Data", DATA_OPTIONS),
    Section("model", "Model", MODEL_OPTIONS),
    Section("optim", "Optimizer", OPTIMIZER_OPTIONS),
    Section("schedule", "Length and learning-rate schedule", SCHEDULE_OPTIONS),
    *(Section(c.name, c.title, c.options) for c in (ExampleSampling, ABSGD, SusceptibilityProbe)),
    Section("run", "Run", RUN_OPTIONS),
)
# The components besides the objective, in the order their hooks run: the probe measures before
# anything else moves; the objective's epoch hooks follow theirs at the start of an epoch and
# precede them at its end. A component is one module with a class and one entry here.
COMPONENTS: tuple[Any, ...] = (SusceptibilityProbe, ExampleSampling, ABSGD)
_OWNER = {p.name: s.name for s in SECTIONS for p in s.options}


class Settings:
    """One section's values, read as attributes (``config.data.dataset``)."""

    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __getattr__(self, name: str) -> Any:  # only reached for a name that is not an option
        raise AttributeError(f"no training option {name!r} in this section")

    if TYPE_CHECKING:  # options are set as attributes too (object's own __setattr__ at runtime)
        def __setattr__(self, name: str, value: Any) -> None: ...

    def __repr__(self) -> str:
        return f"Settings({self.__dict__!r})"


class TrainConfig:
    """A training run: the objective (its name and the options given to it) and one
    :class:`Settings` per section. Built from flat keywords, as recipes and checkpoints hold them;
    ``config.NAME`` reads an option of any section. :meth:`validate` checks every value."""

    data: Settings
    model: Settings
    optim: Settings
    schedule: Settings
    sampling: Settings
    absgd: Settings
    probe: Settings
    run: Settings

    def __init__(self, objective: str = "gaussian", objective_params: Mapping[str, Any] | None = None,
                 **values: Any):
        unknown = sorted(set(values) - set(_OWNER))
        if unknown:
            raise ParamError(unknown[0], "is not a training option", known=tuple(_OWNER))
        self.objective = objective
        self.objective_params = dict({"sigma": SIGMA.default} if objective_params is None else objective_params)
        for section in SECTIONS:
            own = {p.name: values.get(p.name, _copy(p.default)) for p in section.options}
            object.__setattr__(self, section.name, Settings(own))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """The config a checkpoint recorded (options added since then take their defaults)."""
        return cls(**dict(record))

    @staticmethod
    def option_names() -> tuple[str, ...]:
        """Every section option's name (recipes' ``[config]`` keys), plus the objective's two."""
        return ("objective", "objective_params", *_OWNER)

    def sections(self) -> Iterator[tuple[Section, Settings]]:
        for section in SECTIONS:
            yield section, getattr(self, section.name)

    def record(self) -> dict[str, Any]:
        """The flat mapping a checkpoint stores (the same keys as before the sections existed)."""
        flat: dict[str, Any] = {"objective": self.objective,
                                "objective_params": dict(self.objective_params)}
        for _, settings in self.sections():
            flat |= settings.as_dict()
        return flat

    def validate(self) -> None:
        """Every option's type and range, and the rules between options of different sections."""
        for section, settings in self.sections():
            resolve(section.options, settings.as_dict(), owner=f"section {section.name}")
        schedule = self.schedule
        if not schedule.cosine_start < schedule.epochs:
            raise ParamError("cosine_start", f"must be below epochs ({schedule.epochs}), got "
                                             f"{schedule.cosine_start}")
        milestone_epochs(schedule.lr_milestones)  # whole epochs
        for name, value, applies_to in (("lr_warmup", schedule.lr_warmup, "multistep"),
                                        ("lr_step_delay", schedule.lr_step_delay, "step")):
            if value and schedule.lr_schedule != applies_to:
                raise ParamError(name, f"applies to lr_schedule {applies_to} only, not "
                                       f"{schedule.lr_schedule}")

    def __getattr__(self, name: str) -> Any:
        owner = _OWNER.get(name)
        if owner is None:
            raise AttributeError(f"TrainConfig has no option {name!r}")
        return getattr(getattr(self, owner), name)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = _OWNER.get(name)
        if owner is not None:
            setattr(getattr(self, owner), name, value)
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self.record() == other.record()

    def __repr__(self) -> str:
        return f"TrainConfig({self.record()!r})"


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value
