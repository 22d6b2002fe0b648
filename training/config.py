"""Typed training configuration, read from a YAML or JSON file.

Every section forbids unknown keys and checks types strictly (no silent ``"15"`` -> ``15``), so a
typo or a wrong value fails before any data is read, naming the key: ``optim.lrr: unknown key``.
Paths in a config are taken relative to the working directory, as command-line paths are.

Defaults follow the papers (see ``shared/reference``): ZSE-SBIR AdamW lr 1e-5, weight decay 1e-2,
15 triplets a step, 10,000 triplets an epoch, 30 epochs, seed 2021, validation from epoch 10;
FFMLN AdamW lr 1e-5, weight decay 5e-4, lambda 0.8, margin 0.2. Settings that depend on the model
family (weight decay, epoch size) are ``None`` here and resolved by :meth:`TrainConfig.resolved_weight_decay`
and friends once the family is known.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import SbirError
from training.datasets import DatasetName

Family = Literal["zse", "amff"]

# Family defaults from the papers.
ZSE_WEIGHT_DECAY = 1e-2
AMFF_WEIGHT_DECAY = 5e-4
ZSE_EPOCH_SIZE = 10_000  # the reference's `datasetLen`: triplets drawn per epoch


class ConfigError(SbirError, ValueError):
    """A configuration that cannot be used; the message names the file and the key at fault."""


class _Section(BaseModel):
    # strict: YAML's `batch_size: "15"` or `amp: 1` is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSection(_Section):
    """Which network to train.

    name: a preset (``zse-vit-b16``, ``zse-tiny``, ``amff-r50``, ``amff-tiny``).
    overrides: fields of the preset's config to change (``ZSEConfig`` / ``AMFFConfig``), e.g.
        ``{keep_rate_sketch: 0.7, pretrained: vit_base_patch16_224.augreg_in21k_ft_in1k,
        pretrained_file: weights/vit.safetensors}``. AMFF's ``num_classes`` is set from the data.
    init_checkpoint: start from this checkpoint's weights (fine-tuning); its architecture wins over
        ``name`` and ``overrides`` except for AMFF's class count, which the training data decides.
    """

    name: str = "zse-vit-b16"
    overrides: dict[str, Any] = Field(default_factory=dict)
    init_checkpoint: str | None = None


class DataSection(_Section):
    """Training data and its zero-shot (validation) part.

    dataset: a reference split (``sketchy25``, ``sketchy21``, ``tuberlin``, ``quickdraw``), QMUL
        (``qmul-chair``: train on Shoe-V2, validate on Chair-V2; ``qmul-shoe``: Shoe-V2 both), a
        folder of your own (``generic``) or the demo set (``openmoji-demo``).
    root: the data root (see docs/training.md, section Datasets).
    unseen: generic / openmoji-demo only: the unseen classes, a list or a file with one name a line
        (openmoji-demo default: ``ROOT/split.json``; generic default: drawn with ``unseen_fraction``
        and ``split_seed``).
    max_missing_fraction: refuse to start when more of the listed images are missing.
    pair_by_stem: generic only: pair each sketch with the photo of its class that has the same file
        stem (``cat/3.png`` with ``cat/3.jpg``; a suffix cut at ``-`` or ``_`` also pairs, ``3-2`` ->
        ``3``). Validation then also measures each sketch against its own photo (acc@1, acc@10);
        ``zse.positive: instance`` pairs this way whether or not it is set. openmoji-demo and QMUL are
        always paired.
    num_workers: image loading processes; None = one fewer than the CPU cores, at most 4
        (:func:`default_num_workers`).
    sketch_augment: ``"package.module:name"`` of a callable applied to each training sketch's PIL image
        before preprocessing (see ``training.data.load_sketch``), or of a class, which is built with
        ``sketch_augment_options`` (e.g. ``training.augment:SketchAugment``); None = no augmentation.
    """

    dataset: DatasetName
    root: str
    unseen: str | list[str] | None = None
    unseen_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    split_seed: int = 0
    max_missing_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    pair_by_stem: bool = False
    num_workers: int | None = Field(default=None, ge=0)
    sketch_augment: str | None = None
    sketch_augment_options: dict[str, Any] = Field(default_factory=dict)


class OptimSection(_Section):
    """AdamW and the learning-rate schedule.

    weight_decay: None = the paper's value for the family (ZSE 1e-2, AMFF 5e-4).
    grad_clip_norm: clip the global gradient norm to this value; None = no clipping (the reference
        code does not clip; the paper configs under configs/ say so explicitly).
    scheduler: ``constant`` (the papers) or ``cosine`` (to zero at the last step), after
        ``warmup_steps`` of linear warm-up.
    """

    lr: float = Field(default=1e-5, gt=0.0)
    weight_decay: float | None = Field(default=None, ge=0.0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(default=1e-8, gt=0.0)
    grad_clip_norm: float | None = Field(default=1.0, gt=0.0)
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)


class ZSESection(_Section):
    """ZSE-SBIR triplet training (reference: 15 triplets a step, margin 1, weights 2 and 4).

    batch_size is per process: under torchrun each GPU takes this many triplets a step.
    positive: ``class`` (the reference: any photo of the sketch's class) or ``instance`` (the sketch's
        own photo where the data pairs them, e.g. the OpenMoji demo).
    ret_weight, ret_margin: an extra triplet term on the normalised self-attention [Ret] features,
        which the ANN shortlist compares (not in the reference: 0 turns it off; see models.zse_loss).
    """

    batch_size: int = Field(default=15, ge=1)
    positive: Literal["class", "instance"] = "class"
    triplet_margin: float = Field(default=1.0, ge=0.0)
    triplet_weight: float = Field(default=2.0, ge=0.0)
    relation_weight: float = Field(default=4.0, ge=0.0)
    ret_weight: float = Field(default=0.0, ge=0.0)
    ret_margin: float = Field(default=0.2, ge=0.0)


class AMFFSection(_Section):
    """FFMLN training on class-balanced batches.

    A batch holds ``classes_per_batch`` seen classes with ``samples_per_class`` sketches and as many
    photos each (per process). The paper does not give its batch composition; batch-hard triplets
    need at least two classes and two samples of a class.
    freeze_classifier: Algorithm 1 of the paper freezes the classification layer.
    """

    classes_per_batch: int = Field(default=8, ge=2)
    samples_per_class: int = Field(default=4, ge=2)
    lam: float = Field(default=0.8, ge=0.0)
    margin: float = Field(default=0.2, ge=0.0)
    mining: Literal["hard", "all"] = "hard"
    freeze_classifier: bool = True


class ScheduleSection(_Section):
    """How long to train and how often to log and save.

    epoch_size: training items an epoch: triplets for ZSE (None = the reference's 10,000), sketches
        for AMFF (None = the number of training sketches). Steps an epoch = epoch_size // global batch.
    max_steps: stop after this many steps in all (None = epochs x steps an epoch).
    checkpoint_every: steps between saves of the last checkpoint (it is also saved at each epoch end).
    """

    epochs: int = Field(default=30, ge=1)
    epoch_size: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)


class ValidationSection(_Section):
    """Validation on the unseen classes; the best checkpoint is the one with the highest mAP@all.

    retrieval: ``ret`` ([Ret] / AMFF embedding distances) or ``rn`` (exhaustive relation scores,
        ZSE only, as the reference's default; slow).
    from_epoch: first epoch (1-based) validated; the reference starts at 10.
    quick: the reference's subsampled test set (every n-th sketch and photo).
    allow_small_split: validate even when fewer than 2 classes are held out or a held-out class has
        no photo (refused by default: with one class mAP is 1.0 whatever the model does, and
        ``best.pt`` would be picked on it).
    """

    enabled: bool = True
    retrieval: Literal["ret", "rn"] = "ret"
    from_epoch: int = Field(default=1, ge=1)
    every_epochs: int = Field(default=1, ge=1)
    quick: bool = True
    batch_size: int = Field(default=32, ge=1)
    allow_small_split: bool = False


class TrainConfig(_Section):
    """A whole training run. ``run_dir`` receives checkpoints/, metrics.jsonl, config.json, report.json.

    amp: mixed precision (torch.autocast + GradScaler) when training on CUDA; ignored on CPU.
    resume: continue from ``run_dir/checkpoints/last.pt`` (``sbir train --resume`` sets it).
    progress_bar: a tqdm bar; None = only when stderr is a terminal.
    """

    run_dir: str
    seed: int = 2021
    device: str = "auto"
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    resume: bool = False
    progress_bar: bool | None = None
    tensorboard: bool = True
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    zse: ZSESection | None = None
    amff: AMFFSection | None = None
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)

    # -- values that depend on the model family ------------------------------------------------

    @property
    def family(self) -> Family:
        return model_family(self.model.name)

    @property
    def zse_settings(self) -> ZSESection:
        return self.zse or ZSESection()

    @property
    def amff_settings(self) -> AMFFSection:
        return self.amff or AMFFSection()

    @property
    def resolved_weight_decay(self) -> float:
        if self.optim.weight_decay is not None:
            return self.optim.weight_decay
        return ZSE_WEIGHT_DECAY if self.family == "zse" else AMFF_WEIGHT_DECAY

    @property
    def items_per_step(self) -> int:
        """Training items one process takes a step: triplets (ZSE) or sketches (AMFF)."""
        if self.family == "zse":
            return self.zse_settings.batch_size
        amff = self.amff_settings
        return amff.classes_per_batch * amff.samples_per_class

    @property
    def num_workers(self) -> int:
        """``data.num_workers``, or the default for this machine's cores when it is not set."""
        return default_num_workers() if self.data.num_workers is None else self.data.num_workers

    @property
    def pairs_by_stem(self) -> bool:
        """Whether the generic data are paired by stem: asked for, or needed by instance positives."""
        return self.data.dataset in _STEM_PAIRED and (
            self.data.pair_by_stem or (self.family == "zse" and self.zse_settings.positive == "instance")
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Datasets paired on request (training.data.STEM_PAIRED_DATASETS), and those always paired.
_STEM_PAIRED = frozenset({"generic"})
_ALWAYS_PAIRED = frozenset({"openmoji-demo", "qmul-chair", "qmul-shoe"})
MAX_DEFAULT_WORKERS = 4


def default_num_workers() -> int:
    """Image loading processes when ``data.num_workers`` is not set: the cores less one (the training
    process needs one), at most :data:`MAX_DEFAULT_WORKERS` (1 on a 2-core machine)."""
    return max(0, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) - 1))


# ----------------------------------------------------------------------------------------------
# Checks that need more than one key


def model_family(name: str) -> Family:
    """``zse`` or ``amff`` for a preset name; ConfigError for an unknown one."""
    from models.config import ZSE_PRESETS

    if name in ZSE_PRESETS:
        return "zse"
    from models.amff import AMFF_PRESETS  # imports timm: only reached for a non-ZSE name

    if name in AMFF_PRESETS:
        return "amff"
    known = ", ".join(sorted([*ZSE_PRESETS, *AMFF_PRESETS]))
    raise ConfigError(f"model.name: unknown preset {name!r} (presets: {known})")


def model_config_with_overrides(name: str, overrides: Mapping[str, Any]) -> Any:
    """The preset's config dataclass with ``overrides`` applied, each value type-checked.

    Raises:
        ConfigError: an unknown field or a value of the wrong type, naming ``model.overrides.<key>``.
    """
    import dataclasses

    from pydantic import TypeAdapter

    from models.config import ZSE_PRESETS, ZSEConfig

    if model_family(name) == "zse":
        base: Any = ZSE_PRESETS[name]
        config_class: Any = ZSEConfig
    else:
        from models.amff import AMFF_PRESETS, AMFFConfig

        base, config_class = AMFF_PRESETS[name], AMFFConfig
    settable = {field.name for field in dataclasses.fields(config_class) if field.init}
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in settable:
            raise ConfigError(
                f"model.overrides.{key}: unknown key "
                f"(fields of {config_class.__name__}: {', '.join(sorted(settable))})"
            )
        if typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            value = tuple(value)  # YAML and JSON have lists only
        try:
            values[key] = TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError as error:
            raise ConfigError(f"model.overrides.{key}: {error.errors()[0]['msg']} (got {value!r})") from None
    return dataclasses.replace(base, **values)


def check_consistency(config: TrainConfig) -> None:
    """Cross-key checks, run once the sections are valid on their own.

    Raises:
        ConfigError: naming the key at fault.
    """
    family = config.family
    if family == "zse" and config.amff is not None:
        raise ConfigError(f"amff: settings for an AMFF model, but model.name {config.model.name!r} is ZSE")
    if family == "amff" and config.zse is not None:
        raise ConfigError(f"zse: settings for a ZSE model, but model.name {config.model.name!r} is AMFF")
    if family == "amff" and config.validation.retrieval == "rn":
        raise ConfigError("validation.retrieval: 'rn' needs a relation network; AMFF models have none")
    if config.data.unseen is not None and config.data.dataset not in ("generic", "openmoji-demo"):
        raise ConfigError(
            f"data.unseen: only for generic and openmoji-demo; {config.data.dataset} has fixed unseen classes"
        )
    dataset = config.data.dataset
    if config.data.pair_by_stem and dataset not in _STEM_PAIRED | _ALWAYS_PAIRED:
        raise ConfigError(
            f"data.pair_by_stem: only for generic data ({dataset}'s split files pair sketches by class only)"
        )
    if family == "zse" and config.zse_settings.positive == "instance" and dataset not in _STEM_PAIRED | _ALWAYS_PAIRED:
        raise ConfigError(
            f"zse.positive: 'instance' needs each sketch's own photo, which {dataset} does not give "
            "(generic data are paired by file stem; use positive: class here)"
        )
    model_config_with_overrides(config.model.name, config.model.overrides)
    if family == "amff" and "num_classes" in config.model.overrides:
        raise ConfigError("model.overrides.num_classes: set from the training data, leave it out")


# ----------------------------------------------------------------------------------------------
# Reading


def _yaml_loader() -> Any:
    """A safe YAML loader that also reads ``1e-5`` as a float.

    YAML 1.1 (PyYAML) only knows floats with a dot (``1.0e-5``), so ``lr: 1e-5`` would be the
    string "1e-5" and fail the type check: the papers' values are written that way.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    float_pattern = re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    )
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_pattern, list("-+0123456789."))
    return Loader


def _format_errors(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: optim.lr: Input should be a valid number (got 'abc')``."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
        elif problem["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        else:
            lines.append(f"{source}: {key}: {problem['msg']} (got {problem.get('input')!r})")
    return "; ".join(lines)


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping (a parsed file, or a request body) into a :class:`TrainConfig`.

    Raises:
        ConfigError: unknown keys, wrong types, missing required keys or inconsistent settings,
            each named by its dotted key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, found {type(data).__name__}")
    try:
        config = TrainConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    try:
        check_consistency(config)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return config


def load_config(path: str | os.PathLike[str], **changes: Any) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file.

    Args:
        path: the file.
        changes: top-level keys to set before validation (e.g. ``resume=True`` from the command line).

    Raises:
        ConfigError: unreadable file, bad syntax, or any problem :func:`config_from_dict` finds.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        data = {}
    if isinstance(data, Mapping):
        data = {**data, **changes}
    return config_from_dict(data, str(path))
