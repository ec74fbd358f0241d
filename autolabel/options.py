"""The one source of truth for what a grid cell means.

A cell directory holds two inputs, ``options.json`` (a :class:`CellOptions`) and
``plan.json`` (a :class:`Plan`), and the trainer writes ``metrics.json`` (a
:class:`CellMetrics`) last. The grid spec (``flows/spec/parse.py``) validates its
``static``/``hyper`` values and plan rounds with these same models, so a value
the flow accepts is exactly a value the trainer accepts.

Names follow the published method (Benson, Song et al. 2025); see
``autolabel/datasets/format.py`` for the channel, input-set and label names themselves.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_validator,
)

BaseModelName = Literal["resnet18", "resnet34"]
InputSetName = Literal["anat", "t1t2", "func", "trac", "not2", "nofn", "nodw", "full"]
PredictionName = Literal["area", "ring"]
DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]

# Subject ids become file names in the on-disk dataset format: keep them tame.
SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataset(_Strict):
    """A synthetic cohort generated once per (seed, size) into the on-disk cache."""

    kind: Literal["synthetic"] = "synthetic"
    seed: int = Field(0, ge=0, description="generator seed; same seed, same cohort")
    subjects: int = Field(181, ge=4, le=10_000, description="cohort size (HCP 7T retinotopy: 181)")
    rows: int = Field(128, ge=16, le=2048, description="image height in pixels")
    cols: int = Field(256, ge=32, le=4096, description="image width: left | right hemisphere")

    @field_validator("rows", "cols")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        # The encoder downsamples 5 times; odd sizes would misalign the skip connections.
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (the U-Net downsamples by 32), got {v}")
        return v


class PathDataset(_Strict):
    """A dataset in the on-disk format (see README): a local folder or an s3:// prefix."""

    kind: Literal["path"] = "path"
    path: str = Field(min_length=1, description="folder or s3://bucket/prefix holding manifest.json")


class FsaverageDataset(SyntheticDataset):
    """A cohort generated from fsaverage's real anatomy and the Benson 2014 atlas (autolabel.datasets.fsaverage).

    It has the analytic cohort's size fields, so whatever sizes a generated cohort by
    them (the cost model, the cache) treats both alike.
    """

    kind: Literal["fsaverage"] = "fsaverage"


Dataset = Annotated[Union[FsaverageDataset, SyntheticDataset, PathDataset], Field(discriminator="kind")]


class ExplicitPartition(_Strict):
    """A fixed train/validation split by subject id, as the original grid used."""

    train: list[str] = Field(min_length=1, description="training subject ids")
    validation: list[str] = Field(min_length=1, description="validation subject ids")

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: Any) -> Any:
        # HCP ids are numbers in the original grid-params.json (e.g. 100610).
        if isinstance(v, list):
            return [str(s) if isinstance(s, int) and not isinstance(s, bool) else s for s in v]
        return v

    @field_validator("train", "validation")
    @classmethod
    def _valid_ids(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not SUBJECT_ID.match(s)]
        if bad:
            raise ValueError(f"invalid subject id(s) {bad[:3]}: use letters, digits, '_', '.', '-'")
        if len(set(v)) != len(v):
            raise ValueError("subject ids are duplicated")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> ExplicitPartition:
        both = sorted(set(self.train) & set(self.validation))
        if both:
            raise ValueError(f"subjects in both train and validation: {both[:5]}")
        return self



def split_counts(partition: float | ExplicitPartition, n_subjects: int) -> tuple[int, int]:
    """(training, validation) subject counts of a partition of ``n_subjects``.

    A fraction sends round(fraction x n) subjects to validation, at least one and leaving
    at least one for training; autolabel.datasets.format.split_subjects picks which by id hash, and
    the cost model counts the same numbers without opening the dataset.
    """
    if isinstance(partition, ExplicitPartition):
        return len(partition.train), len(partition.validation)
    n_val = min(max(1, round(float(partition) * n_subjects)), n_subjects - 1)
    return n_subjects - n_val, n_val


def partition_problem(partition: float | ExplicitPartition, subjects: list[str]) -> str | None:
    """An explicit partition's ids that the dataset lacks, as ``partition: problem``; None when fine.

    The trainer (autolabel.datasets.format.split_subjects) and the dry run (flows) ask the same question here.
    """
    if not isinstance(partition, ExplicitPartition):
        return None
    known = set(subjects)
    unknown = [s for s in [*partition.train, *partition.validation] if s not in known]
    if not unknown:
        return None
    more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
    return f"partition: unknown subject id(s) {unknown[:10]}{more}; use ids from the dataset manifest"


def training_problem(train_subjects: int, size: tuple[int, int], batch_sizes: tuple[int, ...] = ()) -> str | None:
    """What makes a training set untrainable by the U-Net, as ``field: problem``; None when fine.

    One subject cannot train: BatchNorm needs two images in a batch (a final batch of one in a
    larger set is dropped from its epoch, autolabel.loop.train_one_epoch; the dry run checks it too,
    flows/plan/checks.py). The encoder halves the image 5 times, so both sides must be multiples of
    32 for the skip connections to align; and BatchNorm needs more than one value per channel at
    the deepest level too, so a batch of one image needs images larger than 32x32 (``batch_sizes``:
    those of the plan's rounds).
    """
    if train_subjects < 2:
        return (f"partition: the training set has {train_subjects} subject; BatchNorm needs at least 2: "
                "lower the validation fraction or add subjects")
    if any(side % 32 for side in size):
        fixed = tuple(max(32, round(side / 32) * 32) for side in size)
        return (f"image_size: the images are {size[0]}x{size[1]}; both sides must be multiples of 32 "
                f"(set image_size, e.g. [{fixed[0]}, {fixed[1]}])")
    deepest = (size[0] // 32) * (size[1] // 32)
    if batch_sizes and min(batch_sizes) * deepest < 2:
        return (f"batch_size: a batch of {min(batch_sizes)} image of {size[0]}x{size[1]} leaves BatchNorm one value "
                "per channel at the encoder's deepest level (1x1); use batch_size >= 2 or larger images")
    return None


class CellOptions(_Strict):
    """Everything about one training run except its plan (``options.json``)."""

    base_model: BaseModelName = Field("resnet18", description="ResNet encoder of the U-Net")
    pretrained: bool = Field(False, description="start the encoder from ImageNet weights (local file only)")
    inputs: InputSetName = Field("full", description="input channel set (anat ... full)")
    prediction: PredictionName = Field("area", description="area = V1-V3, ring = E0-E4")
    batch_size: int = Field(4, ge=1, le=4096, description="default batch size; a round may override it")
    partition: Union[Annotated[float, Field(gt=0, lt=1)], ExplicitPartition] = Field(
        0.2, description="validation fraction, or explicit train/validation subject ids"
    )
    until: int = Field(1, ge=1, le=100, description="repeat the plan from this many fresh inits, keep the best")
    seed: int = Field(0, ge=0, description="seed for weights, data order and augmentation")
    device: DeviceName = Field("auto", description="auto picks cuda, then mps, then cpu")
    image_size: tuple[int, int] | None = Field(
        None, description="(rows, cols) to train at; default is the dataset's own size"
    )
    dataset: Dataset = Field(default_factory=SyntheticDataset, description="synthetic cohort or path/s3 URI")

    @field_validator("partition", mode="before")
    @classmethod
    def _legacy_partition(cls, v: Any) -> Any:
        # The original grid-params.json gave the partition as [train_ids, validation_ids].
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, list) for x in v):
            return {"train": v[0], "validation": v[1]}
        return v

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] % 32 or v[1] % 32 or min(v) < 32):
            raise ValueError(f"rows and cols must be positive multiples of 32, got {list(v)}")
        return v


class Round(_Strict):
    """One round of the plan: continue from the previous round's weights."""

    lr: float = Field(gt=0, le=10, description="Adam learning rate")
    gamma: float = Field(1.0, gt=0, le=1, description="StepLR factor, applied once per epoch")
    bce_weight: float = Field(ge=0, le=1, description="loss = w*BCE + (1-w)*Dice")
    num_epochs: int = Field(10, ge=1, le=10_000, description="epochs in this round")
    batch_size: int | None = Field(None, ge=1, le=4096, description="overrides the cell's batch_size")


class Plan(RootModel[list[Round]]):
    """``plan.json``: the list of rounds, trained one after another."""

    root: list[Round] = Field(min_length=1)

    # Iterate over ``plan.root``: a pydantic model's own __iter__ yields (field, value) pairs,
    # which tools that walk models (Prefect's parameter visitor) rely on.

    def __len__(self) -> int:
        return len(self.root)

    def __getitem__(self, i: int) -> Round:
        return self.root[i]

    @property
    def total_epochs(self) -> int:
        """Epochs of one pass through the plan (a repeat)."""
        return sum(r.num_epochs for r in self.root)


# ----------------------------------------------------------------------------- results

CellStatus = Literal["complete", "diverged", "failed"]


class RoundResult(BaseModel):
    repeat: int
    round: int
    best_epoch: int = Field(description="1-based epoch within the round with the lowest validation loss")
    val_loss: float
    val_dice_loss: float


class RepeatResult(BaseModel):
    repeat: int
    best_round: int = Field(description="round with the lowest validation Dice loss")
    val_dice_loss: float


class CellMetrics(BaseModel):
    """``metrics.json``, written atomically and last: status complete means done."""

    model_config = ConfigDict(extra="forbid")

    status: CellStatus
    message: str = ""
    best_val_dice_loss: float | None = None
    dice: dict[str, float] = Field(default_factory=dict, description="validation Dice score per label")
    mean_dice: float | None = None
    rounds: list[RoundResult] = Field(default_factory=list)
    repeats: list[RepeatResult] = Field(default_factory=list)
    best_repeat: int | None = Field(None, description="0-based repeat of the best result")
    best_round: int | None = Field(None, description="0-based round of the best result within its repeat")
    best_epoch: int | None = Field(None, description="1-based epoch of the best result within its round")
    epochs: int = Field(0, description="epochs trained in total, all repeats and rounds")
    wall_seconds: float = 0.0
    device: str = ""
    train_images: int = Field(0, description="training images processed (forward+backward)")
    train_images_per_second: float = 0.0
    train_subjects: int = Field(0, description="subjects in the training set")
    validation_subjects: int = Field(0, description="subjects in the validation set")

