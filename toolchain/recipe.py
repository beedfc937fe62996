"""Typed recipe schema, validated before any model loads (files and overrides: recipe_io.py)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from toolchain.errors import RecipeError
from toolchain.time_reversal import symmetric_pairs

from toolchain.recipe_export import (  # noqa: F401  (re-exported: callers import sections from here)
    DEFAULT_GATES, DEFAULT_GEN_GATES, ExportSection, GateName, GateSection, GenGateSection, GenVariant, Int4Section,
    Variant,
)
from toolchain.recipe_section import Section

FAMILIES = ("clip", "xclip", "dual-encoder", "video-llm")
GENERATIVE = ("video-llm",)  # families with a decoder: captioning and qa, not retrieval


class ModelSection(Section):
    """clip / xclip / dual-encoder: dual encoders for retrieval; video-llm: a vision tower, a projector and a
    causal LM decoder (LlavaOnevisionForConditionalGeneration) for captioning and qa."""

    family: Literal["clip", "xclip", "dual-encoder", "video-llm"] = "clip"
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
        if self.family == "video-llm" and self.pooling != "mean":
            raise ValueError(
                "model.pooling: a video-llm pools each frame's patches itself and its decoder reads every "
                "frame's tokens; leave model.pooling at 'mean'"
            )
        return self


DATA_FORMATS = ("jsonl", "csv", "msrvtt", "vatex", "videoqa")


class DataSection(Section):
    """Where the clips come from. `train` and `eval` each name one split:

    jsonl / csv: a file of (video, caption) rows (video paths relative to the file, or to video_root);
    msrvtt: a CLIP4Clip split file (MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv) or a split name of
            the official json (train | validate | test), captions from `annotations`;
    vatex: a VATEX json (videoID, enCap) of that split;
    videoqa: an MSRVTT-QA / MSVD-QA json (a list of {video_id or video, question, answer}); MSVD's
             youtube_mapping.txt (file name -> vidN) as `annotations` when ids are MSVD's.

    jsonl rows are {"video", "caption"} or, for task qa, {"video", "question", "answer"} (an optional
    "type" names the question type; otherwise it is the question's first word).

    in_memory_gb: a split whose prepared pixels (float32 K x 3 x S x S per video) fit keeps them in
    RAM; a larger one streams each batch from the frame cache (0: always stream), `workers` videos
    at a time (0: one per CPU, up to 8); `vqtool data prepare` decodes with `workers` processes.
    cache_max_gb: the frame cache's cap on disk; past it, the least recently used entries go.
    synth_variety: how a missing synthetic set is drawn (`vqtool data synth --variety`): plain, one
    flat drawing; wide, per-clip sizes, backgrounds, noise, jitter, frame rates and codecs.
    """

    format: Literal["jsonl", "csv", "msrvtt", "vatex", "videoqa"] = "jsonl"
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
    synth_variety: Literal["plain", "wide"] = "plain"

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
                f"data.annotations is only read by format msrvtt (and videoqa, for MSVD's youtube_mapping.txt); "
                f"for {self.format} put each split's file in data.train and data.eval"
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
    init: Literal["identity", "difference"] = "identity"  # difference: half the channels start as d/dt

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"adapters.temporal.kernel must be odd (centred on the frame), got {self.kernel}")
        return self


RANK_GROUPS = ("vision", "text", "fusion", "decoder")
QUANT_GROUPS = ("vision", "fusion", "decoder")  # video-llm: the module groups that can be loaded in 4-bit
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
        raise ValueError("adapters.ranks.strategy manual needs adapters.ranks.shares, e.g. "
                         "{vision: 0.6, text: 0.2, fusion: 0.2} (a video-llm: {vision: 0.3, fusion: 0.1, decoder: 0.6})")
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
    # video-llm: the groups whose linears load in 4-bit; the others stay in full precision.
    # null = all three, what transformers does (toolchain/adapters/qlora.py)
    quantize_groups: list[Literal["vision", "fusion", "decoder"]] | None = None
    # Modules kept out of 4-bit: "default" = transformers' own choice (the output layer lm_head and
    # weights tied to it), or a list of module names (from the start of the name, or a suffix) that
    # replaces it, e.g. [lm_head, model.multi_modal_projector].
    keep_unquantized: Literal["default"] | list[str] = "default"

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
    max_grad_norm: float | None = Field(None, gt=0, allow_inf_nan=False)  # clip the adapters' gradient norm; null: off
    time_reversal: dict[str, str] | None = None  # captioning/qa: word pairs swapped when a clip plays backwards
    # shuffle: plain random batches; spread (retrieval): each caption's clips spread evenly over the
    # epoch, so a batch rarely repeats a caption and holds its one-word siblings as negatives
    batching: Literal["shuffle", "spread"] = "shuffle"
    warmup_steps: int = Field(10, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=0)  # steps between resumable checkpoints; 0 disables them
    keep: int = Field(2, ge=1)  # how many of the newest checkpoints to keep

    @field_validator("time_reversal", mode="before")
    @classmethod
    def _words_are_strings(cls, value):
        """YAML 1.1 reads on/off/yes/no/true/false unquoted as booleans (and 1, 2 as numbers)."""
        if isinstance(value, dict):
            odd = [w for pair in value.items() for w in pair if not isinstance(w, str)]
            if odd:
                raise ValueError(f"train.time_reversal takes words, but YAML read {odd[0]!r} as a "
                                 f"{type(odd[0]).__name__}: quote the words, e.g. {{'on': 'off'}}")
        return value

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


TASKS = ("retrieval", "captioning", "qa")
DEFAULT_PROMPTS = {"captioning": "{video} describe the video .", "qa": "{video} question : {question} answer :"}


class GenerationSection(Section):
    """video-llm: how a prompt is built and how answers are decoded (toolchain/models/prompt.py).

    prompt: a template; {video} stands for the video's tokens and {question} for the question (qa).
    Text around them is tokenized as it is, so a chat model's markers may be written in, e.g.
    "<|im_start|>user\n{video}{question}<|im_end|>\n<|im_start|>assistant\n". null: the task's default.
    max_new_tokens: greedy decoding stops at the end-of-text token or after this many tokens.
    """

    prompt: str | None = None
    max_new_tokens: int = Field(16, ge=1, le=1024)

    def template(self, task: str) -> str:
        return self.prompt if self.prompt is not None else DEFAULT_PROMPTS[task]


class Recipe(Section):
    name: str = "run"
    # retrieval (dual encoders), captioning or qa (video-llm); unset: retrieval, or captioning for a video-llm
    task: Literal["retrieval", "captioning", "qa"] = "retrieval"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    frames: FramesSection = FramesSection()
    adapters: AdaptersSection = AdaptersSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    generation: GenerationSection = GenerationSection()
    export: ExportSection = ExportSection()

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data):
        if isinstance(data, dict) and data.get("task") is None:
            model = data.get("model")
            family = model.get("family", "clip") if isinstance(model, dict) else getattr(model, "family", "clip")
            data = {**data, "task": "captioning" if family in GENERATIVE else "retrieval"}
        return data

    @model_validator(mode="after")
    def _task_fits(self):
        check_task(self)
        return self


def check_task(r: "Recipe") -> None:
    family, task = r.model.family, r.task
    if family in GENERATIVE and task == "retrieval":
        raise ValueError("task: retrieval needs a dual encoder (model.family clip, xclip or dual-encoder); "
                         "a video-llm is fine-tuned for task: captioning or task: qa")
    if family not in GENERATIVE and task != "retrieval":
        raise ValueError(f"task: {task} needs a decoder: set model.family: video-llm (e.g. model.name_or_path: "
                         f"tiny-video-llm), or task: retrieval for the {family} family")
    if family not in GENERATIVE and r.adapters.quantize_groups is not None:
        raise ValueError("adapters.quantize_groups chooses the 4-bit groups of a video-llm; for the "
                         f"{family} family leave it unset (or use adapters.keep_unquantized)")
    if task == "qa" and r.data.format not in ("jsonl", "videoqa"):
        raise ValueError(f"task: qa reads question-answer rows: data.format jsonl (rows with question and "
                         f"answer) or videoqa (MSRVTT-QA / MSVD-QA json), not {r.data.format}")
    if task != "retrieval" and r.train.batching == "spread":
        raise ValueError("train.batching: spread orders retrieval captions (task: retrieval); use shuffle "
                         f"for task: {task}")
    if task == "retrieval" and r.train.time_reversal:
        raise ValueError("train.time_reversal augments captions and answers (task: captioning or qa); "
                         "remove it for task: retrieval")
    if task != "retrieval":
        check_prompt(r.generation.template(task), task)
        symmetric_pairs(r.train.time_reversal or {})


def check_prompt(template: str, task: str) -> None:
    if template.count("{video}") != 1:
        raise ValueError(f"generation.prompt: {template!r} must contain {{video}} exactly once (where the video's "
                         f"tokens go), e.g. {DEFAULT_PROMPTS[task]!r}")
    has_question = "{question}" in template
    if task == "qa" and template.count("{question}") != 1:
        raise ValueError(f"generation.prompt: a qa prompt needs {{question}} exactly once, e.g. {DEFAULT_PROMPTS['qa']!r}")
    if task == "captioning" and has_question:
        raise ValueError("generation.prompt: a captioning prompt has no {question}; remove it or set task: qa")


# Reading and validating files lives in recipe_io.py; imported here (after Recipe exists) so callers
# keep one place to import recipes from.
from toolchain.recipe_io import (  # noqa: E402,F401
    apply_override, describe_error, dump_recipe, load_recipe, parse_value, read_yaml, suggest, validate_recipe,
)
