"""Typed recipe schema: load a YAML recipe, apply dotted overrides, validate before any model loads."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolchain.errors import RecipeError

Variant = Literal["fp32", "fp16", "int8", "int8-static", "int4"]
GateName = Variant


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    family: Literal["clip", "xclip", "dual-encoder"] = "clip"
    name_or_path: str = "tiny-video-clip"
    pooling: Literal["mean", "transformer"] = "mean"
    pooling_layers: int = Field(1, ge=1, le=12)

    @model_validator(mode="after")
    def _pooling_fits_family(self):
        if self.family == "xclip" and self.pooling != "mean":
            raise ValueError(
                "model.pooling: xclip pools frames with its own multi-frame transformer (mit); "
                "leave model.pooling at 'mean'"
            )
        return self


DATA_FORMATS = ("jsonl", "csv", "msrvtt", "vatex")


class DataSection(Section):
    """Where the clips come from. `train` and `eval` each name one split:

    jsonl / csv: a file of (video, caption) rows (video paths relative to the file, or to video_root);
    msrvtt: a CLIP4Clip split file (MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv) or a split name of
            the official json (train | validate | test), captions from `annotations`;
    vatex: a VATEX json (videoID, enCap) of that split.

    in_memory_gb: a split whose prepared pixels (float32 K x 3 x S x S per video) fit keeps them in
    RAM; a larger one streams each batch from the frame cache (0: always stream), `workers` videos
    at a time (0: one per CPU, up to 8); `vqtool data prepare` decodes with `workers` processes.
    cache_max_gb: the frame cache's cap on disk; past it, the least recently used entries go.
    """

    format: Literal["jsonl", "csv", "msrvtt", "vatex"] = "jsonl"
    train: str = "data/shapes/train.jsonl"
    eval: str = "data/shapes/eval.jsonl"
    annotations: str | None = None
    video_root: str | None = None
    cache: bool = True
    cache_dir: str | None = None
    cache_max_gb: float = Field(50.0, gt=0, allow_inf_nan=False)
    in_memory_gb: float = Field(8.0, ge=0, allow_inf_nan=False)
    workers: int = Field(0, ge=0, le=256)
    synthesize_if_missing: bool = True
    synth_videos: int = Field(192, ge=1)
    synth_seed: int = 0

    @model_validator(mode="after")
    def _format_needs(self):
        if self.format == "msrvtt" and not self.annotations:
            raise ValueError(
                "data.annotations: format msrvtt needs the official train_val_videodatainfo.json "
                "(its captions), e.g. data.annotations: data/msrvtt/train_val_videodatainfo.json"
            )
        if self.format in ("msrvtt", "vatex") and not self.video_root:
            raise ValueError(
                f"data.video_root: format {self.format} names clips by id; set the folder holding "
                "the video files, e.g. data.video_root: data/" + self.format + "/videos"
            )
        if self.format in ("jsonl", "csv", "vatex") and self.annotations:
            raise ValueError(
                f"data.annotations is only read by format msrvtt; for {self.format} put each split's "
                "file in data.train and data.eval"
            )
        return self


class FramesSection(Section):
    k: int = Field(8, ge=1, le=256)
    selector: Literal["uniform", "motion", "motion-uniform"] = "uniform"
    decode_max_frames: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _budget_fits(self):
        if self.decode_max_frames < self.k:
            raise ValueError(
                f"frames.decode_max_frames ({self.decode_max_frames}) must be >= frames.k ({self.k})"
            )
        return self


class TemporalSection(Section):
    enabled: bool = False
    kernel: int = Field(3, ge=1, le=15)
    gate: Literal["motion", "position", "both", "none"] = "both"
    layers: Literal["all"] | list[int] = "all"

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"adapters.temporal.kernel must be odd (centred on the frame), got {self.kernel}")
        return self


RANK_GROUPS = ("vision", "text", "fusion")
PERCENT = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*%\s*$")


class RanksSection(Section):
    """How the adapter budget is split over layers (toolchain/adapters/ranks.py)."""

    strategy: Literal["uniform", "manual", "importance"] = "uniform"
    budget: int | str | None = None  # trainable adapter parameters, "0.5%" of the base, or None
    shares: dict[str, float] | None = None  # manual: budget share per group, summing to 1
    min_rank: int = Field(1, ge=1)
    max_rank: int = Field(64, ge=1)
    calibration_batches: int = Field(4, ge=1)  # importance: batches the sensitivity is averaged over

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.budget, str) and not PERCENT.match(self.budget):
            raise ValueError(f"adapters.ranks.budget: {self.budget!r} is neither a parameter count (e.g. 20000) "
                             "nor a percentage of the base (e.g. '0.5%')")
        if isinstance(self.budget, int) and self.budget < 1:
            raise ValueError(f"adapters.ranks.budget must be a positive number of parameters, got {self.budget}")
        if self.min_rank > self.max_rank:
            raise ValueError(f"adapters.ranks.min_rank ({self.min_rank}) must be <= max_rank ({self.max_rank})")
        if self.strategy == "manual":
            check_shares(self.shares)
        elif self.shares is not None:
            raise ValueError(f"adapters.ranks.shares is only used by strategy manual (strategy is {self.strategy}); "
                             "remove shares or set strategy: manual")
        return self


def check_shares(shares: dict[str, float] | None) -> None:
    if not shares:
        raise ValueError("adapters.ranks.strategy manual needs adapters.ranks.shares, "
                         "e.g. {vision: 0.6, text: 0.2, fusion: 0.2}")
    unknown = sorted(set(shares) - set(RANK_GROUPS))
    if unknown:
        raise ValueError(f"adapters.ranks.shares: unknown group {', '.join(map(repr, unknown))}; "
                         f"groups are {', '.join(RANK_GROUPS)}")
    if any(v < 0 for v in shares.values()):
        raise ValueError("adapters.ranks.shares must not be negative")
    total = sum(shares.values())
    if abs(total - 1) > 1e-6:
        raise ValueError(f"adapters.ranks.shares must sum to 1, they sum to {total:g} ({shares})")


class AdaptersSection(Section):
    quantization: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1)
    # A list of layer names, "all-linear", or one regex matched (PEFT's re.fullmatch) against full
    # module names, e.g. ".*vision_model\..*_proj" for the vision tower's attention only.
    target_modules: list[str] | str = ["q_proj", "k_proj", "v_proj", "out_proj"]
    temporal: TemporalSection = TemporalSection()
    ranks: RanksSection = RanksSection()

    @field_validator("target_modules")
    @classmethod
    def _regex_compiles(cls, value):
        if isinstance(value, str) and value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"adapters.target_modules: {value!r} is neither 'all-linear' nor a valid "
                                 f"regex ({exc}); give a list of layer names, 'all-linear' or a regex") from None
        return value


class TrainSection(Section):
    max_steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    lr: float = Field(2e-3, gt=0, allow_inf_nan=False)
    batch_size: int = Field(16, ge=2)
    grad_accumulation: int = Field(1, ge=1)
    seed: int = 0
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    warmup_steps: int = Field(10, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=0)  # steps between resumable checkpoints; 0 disables them
    keep: int = Field(2, ge=1)  # how many of the newest checkpoints to keep

    @model_validator(mode="after")
    def _one_length(self):
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                "can't set both train.max_steps and train.epochs: choose one "
                "(e.g. --set train.epochs=null)"
            )
        return self

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return max(1, self.epochs * batches_per_epoch // self.grad_accumulation)
        return DEFAULT_MAX_STEPS


DEFAULT_MAX_STEPS = 200


class EvalSection(Section):
    batch_size: int = Field(64, ge=1)


class GateSection(Section):
    min_cosine: float | None = Field(None, ge=-1, le=1)
    max_r1_drop: float | None = Field(None, ge=0)


DEFAULT_GATES = {
    "fp32": {"min_cosine": 0.9999, "max_r1_drop": 0.0},
    "fp16": {"min_cosine": 0.999, "max_r1_drop": 1.0},
    "int8": {"min_cosine": 0.99, "max_r1_drop": 1.0},
    "int8-static": {"min_cosine": 0.99, "max_r1_drop": 1.0},
    "int4": {"min_cosine": 0.98, "max_r1_drop": 2.0},
}


class Int4Section(Section):
    """Weight-only MatMulNBits: blocks of `block_size` input channels share a scale (and a zero point)."""

    block_size: int = Field(32, ge=16, le=256)
    symmetric: bool = True
    # auto: the fastest level (4, int8 compute) if it passes the parity gate, else 1 (float32 compute)
    accuracy_level: Literal["auto", 0, 1, 2, 3, 4] = "auto"

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (16, 32, 64, 128 or 256), got {value}")
        return value


class ExportSection(Section):
    variants: list[Variant] = ["fp32", "int8"]
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    opset: int = Field(18, ge=17)
    int4: Int4Section = Int4Section()
    calibration_clips: int = Field(16, ge=1)
    parity: dict[GateName, GateSection] = Field(default_factory=dict)
    latency_runs: int = Field(20, ge=1)
    threads: int = Field(2, ge=1)

    def gate(self, variant: str) -> GateSection:
        """The recipe's thresholds for a variant; unset fields take the defaults."""
        given = self.parity.get(variant, GateSection()).model_dump(exclude_none=True)
        return GateSection(**{**DEFAULT_GATES[variant], **given})


class Recipe(Section):
    name: str = "run"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    frames: FramesSection = FramesSection()
    adapters: AdaptersSection = AdaptersSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    export: ExportSection = ExportSection()


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `key.sub=value` overrides and validate it all at once."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}. Check the path (recipes live in recipes/).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Set a dotted key from `--set a.b=value`; the value is parsed as YAML (1e-4, true, [a, b])."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = parse_value(text)


SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def parse_value(text: str) -> Any:
    """YAML semantics, except that 1e-4 is a number (YAML 1.1 wants 1.0e-4)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and SCIENTIFIC.match(value):
        return float(value)
    return value


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise RecipeError(f"{source}: {len(lines)} problem(s)\n" + "\n".join(f"  - {x}" for x in lines)) from None


def describe_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'" + suggest(loc)
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {err['input']!r} is not allowed; choose one of {allowed}"
    return f"{key}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"]


def suggest(loc: list[str]) -> str:
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is None:
        return ""
    names = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], names, n=1)
    where = ".".join(loc[:-1])
    hint = f"; did you mean '{'.'.join(loc[:-1] + close[:1])}'?" if close else ""
    return f"{hint or '.'} Valid keys{' in ' + where if where else ''}: {', '.join(names)}"


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
