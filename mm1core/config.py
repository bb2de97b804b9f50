"""MM1Config: the fully resolved configuration of one trial, and the config of each part it is built from.

The part configs live here rather than beside their modules so that validating and planning thousands of trial
configs never imports torch (the planner answers in well under a second). Each part's module builds from its config.
`config_from_dict` builds an MM1Config from plain data (strict: unknown keys and wrong types are errors naming the
field path), `config_problems` finds combinations that cannot be built (e.g. more image tokens than patches) without
building anything, and `flatten` gives the dotted view used for overrides, MLflow params and results columns.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

# The world's knobs live with the world (it draws scenes from them); a config holds them as its `data.world`.
from mm1core.data.text import longest_words
from mm1core.data.world import WorldConfig
from mm1core.registry import Choice, Registry

__all__ = [
    "CONNECTORS",
    "ENCODER_LOSSES",
    "PRECISIONS",
    "STEMS",
    "LM_POSITIONS",
    "IMAGE_TOKEN_POSITIONS",
    "FEATURE_NORMS",
    "FREEZE_STAGES",
    "ConfigError",
    "ENCODER_SEED_SOURCES",
    "encoder_seed",
    "eval_task_problems",
    "ConnectorConfig",
    "DataConfig",
    "EVAL_TASKS",
    "FILE_TASK_KINDS",
    "FileTaskKind",
    "EvalConfig",
    "EvalTaskConfig",
    "LMConfig",
    "MM1Config",
    "SFTConfig",
    "Schedule",
    "TrainConfig",
    "ViTConfig",
    "apply_overrides",
    "config_from_dict",
    "config_problems",
    "config_to_dict",
    "connector_problem",
    "field_paths",
    "flatten",
    "parse_ratio",
    "stage_loop",
    "unknown_path_message",
]


# Each kind of choice a config names, declared once (mm1core.registry): the name a study writes, where the
# implementation lives, and what the choice needs of the rest of the config (a check of the whole MM1Config, except
# connectors, whose checks take the token count and the encoder's patch grid side).
STEMS = Registry(
    "stem",
    [
        Choice("patchify", "mm1core.vit:patchify_stem"),
        Choice(
            "conv",
            "mm1core.vit:conv_stem",
            check=lambda cfg: (
                None
                if cfg.encoder.patch_size % 2 == 0
                else f"the conv stem needs an even patch_size, got {cfg.encoder.patch_size}"
            ),
        ),
    ],
)
LM_POSITIONS = Registry(
    "position encoding",
    [
        Choice("learned"),  # a learned table of max_seq_len positions (mm1core.lm)
        Choice(
            "rope",  # rotary, applied in attention (mm1core.blocks)
            check=lambda cfg: (
                None
                if (cfg.lm.width // max(1, cfg.lm.num_heads)) % 2 == 0
                else "rotary positions need an even head width (lm.width / lm.num_heads)"
            ),
        ),
    ],
)
# How the LM tells an image's tokens apart: "learned" adds a learned embedding of each token's place in the image's
# token grid (as Honeybee's C-Abstractor and Qwen-VL's resampler do), "none" leaves it to the encoder's features.
IMAGE_TOKEN_POSITIONS = Registry("image-token positions", [Choice("learned"), Choice("none")])
# How the encoder's features enter the connector: as they are, or standardised per channel with statistics measured
# once on the trial's first training images (MAE's linear probes put a BatchNorm without affine there, for the same
# reason: a large shared mean and uneven channel scales make a learned readout slow).
FEATURE_NORMS = Registry("feature normalisation", [Choice("none"), Choice("standardize")])
# What stays trainable in each named stage.
FREEZE_STAGES: dict[str, tuple[str, ...]] = {
    "all": ("image_encoder", "connector", "lm"),
    "connector-warmup": ("connector",),
    "frozen-encoder": ("connector", "lm"),
}
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware has bf16 units (mm1core.hardware)


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    resolution: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    stem: str = "conv"

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass(frozen=True, kw_only=True)
class ConnectorConfig:
    name: str = "avg-pool"
    num_image_tokens: int = 16
    token_positions: str = "learned"
    feature_norm: str = "none"  # FEATURE_NORMS


def _square_within_grid(name: str) -> Callable[[int, int], str | None]:
    def rule(num_image_tokens: int, grid_size: int) -> str | None:
        side = math.isqrt(num_image_tokens)
        if side * side != num_image_tokens:
            return f"{name} needs a square number of image tokens, got {num_image_tokens}"
        if side > grid_size:
            return (
                f"{num_image_tokens} image tokens exceed the {grid_size}x{grid_size}={grid_size**2} patches "
                "of the encoder (raise the resolution or lower the patch size)"
            )
        return None

    return rule


def _at_most_patches(num_image_tokens: int, grid_size: int) -> str | None:
    # Learned queries can number anything, but more queries than patches only re-describe the same patches.
    if num_image_tokens > grid_size**2:
        return (
            f"{num_image_tokens} image tokens exceed the {grid_size}x{grid_size}={grid_size**2} patches "
            "of the encoder (raise the resolution or lower the patch size)"
        )
    return None


CONNECTORS = Registry(
    "connector",
    [
        Choice(
            "avg-pool", "mm1core.connectors.avg_pool:AvgPoolConnector", check=_square_within_grid("avg-pool")
        ),
        Choice("attn-pool", "mm1core.connectors.attn_pool:AttnPoolConnector", check=_at_most_patches),
        Choice(
            "attn-pool-local",
            "mm1core.connectors.attn_pool:LocalAttnPoolConnector",
            check=_square_within_grid("attn-pool-local"),
        ),
        Choice(
            "c-abstractor",
            "mm1core.connectors.c_abstractor:CAbstractorConnector",
            check=_square_within_grid("c-abstractor"),
        ),
    ],
)


def connector_problem(cfg: ConnectorConfig, *, grid_size: int) -> str | None:
    """Why this connector cannot be built on a grid_size x grid_size patch grid, or None if it can."""
    return CONNECTORS.problem(cfg.name, cfg.num_image_tokens, grid_size)


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    width: int
    depth: int
    num_heads: int
    positions: str = "learned"  # "learned" absolute embeddings, or "rope" (rotary, applied in attention)
    # Primer's multi-dconv-head attention: a causal depthwise convolution of this width over q, k and v (0 or 1:
    # plain attention). mm1core.blocks.Attention says why small LMs need it.
    qkv_conv_width: int = 0
    # Mixture of experts (the paper's MoE variants): num_experts > 0 turns the FFN of every moe_every-th layer
    # into num_experts SwiGLU experts with top-k routing; the paper used 64 experts every 2nd layer (3B-MoE).
    num_experts: int = 0
    moe_every: int = 2
    experts_top_k: int = 2
    moe_balance_coef: float = 0.01
    router_z_coef: float = 0.001


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    world: WorldConfig = WorldConfig()
    # caption : interleaved : text-only, as in the paper's "5:5:1".
    ratio: str = "1:0:0"
    # Of the caption part, the share of synthetic complete captions (the paper's VeCap data) instead of alt-text.
    recaption_share: float = 0.0
    # Of interleaved pages, the share that list question-answer pairs (the rest list captions).
    interleaved_qa_share: float = 0.5
    # Questions asked about each image of a question page, all of the page's kind, about different things where the
    # scene has them (a page of one question per image spends 16 image tokens on each ~12-token question).
    questions_per_image: int = 1
    max_images_per_document: int = (
        8  # an interleaved page holds 2 to this many images, as many as fit max_seq_len
    )
    max_seq_len: int = 384
    # Bring your own data (docs/data-formats.md): a Parquet/Arrow file, directory or glob per source replaces the
    # generated documents of that source; the tokenizer is then a byte-level BPE trained on your text and the world's.
    caption_files: str = ""
    interleaved_files: str = ""
    text_files: str = ""
    bpe_vocab_size: int = 2000


def parse_ratio(ratio: str) -> tuple[float, float, float]:
    parts = ratio.split(":")
    if len(parts) != 3:
        raise ValueError(f"data ratio {ratio!r} must be caption:interleaved:text, e.g. 5:5:1")
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"data ratio {ratio!r} must hold three numbers, e.g. 5:5:1") from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"data ratio {ratio!r} needs non-negative parts with a positive sum")
    total = sum(weights)
    return tuple(w / total for w in weights)  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How long and how fast a training stage runs: what encoder pre-training (`encoder_pretrain`), multimodal
    pre-training (`train`) and SFT (`sft`) each declare, and the training loop reads (`stage_loop`)."""

    steps: int
    batch_size: int
    lr: float | Literal["auto"]  # "auto" (multimodal only): the paper's learning-rate law (mm1core.lr_law)
    warmup_steps: int


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Schedule):
    """The multimodal stage: its schedule, and the training loop's settings, which SFT trains with too."""

    weight_decay: float = 0.1
    grad_clip: float = 1.0
    z_loss_coef: float = 1e-4
    precision: str = "fp32"
    log_every: int = 25
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 200
    freeze: str = "all"
    # The image encoder's learning rate as a share of the schedule's, when it trains: a pre-trained encoder trained
    # at the LM's full rate from step 0 loses its per-cell features within 200 steps (measured: a colour probe
    # falls from 0.87 to 0.40), as the connector's first, random gradients reach it.
    encoder_lr_scale: float = 1.0


@dataclass(frozen=True)
class FileTaskKind:
    """What a file task of one kind reads, prompts with and records (docs/data-formats.md)."""

    columns: tuple[tuple[str, str], ...]  # (column, "binary" | "string" | "list<string>") of its files
    scores: tuple[
        str, ...
    ]  # recorded as <task>/<k>shot/<score>, the first per item and as the task's headline
    template: str
    scorer: str


# What an evaluation task scores: the generated world's whole suite, or a user's file of captioning, VQA or text-only
# items. A file task of a kind may stand in for the paper's column of that name (`plays`).
EVAL_TASKS = Registry(
    "evaluation task kind",
    [
        Choice("world", "mm1core.eval.suite:evaluate"),
        Choice(
            "caption",
            "mm1core.eval.file_tasks:evaluate_file_task",
            spec=FileTaskKind(
                columns=(("image", "binary"), ("references", "list<string>")),
                scores=("cider", "bleu4"),
                template="k x (<image> CAPTION) + <image>",
                scorer="CIDEr-D (pycocoevalcap) per item, corpus BLEU-4 (pycocoevalcap)",
            ),
        ),
        Choice(
            "vqa",
            "mm1core.eval.file_tasks:evaluate_file_task",
            spec=FileTaskKind(
                columns=(("image", "binary"), ("question", "string"), ("answers", "list<string>")),
                scores=("vqa",),
                template="k x (<image> question Q answer A .) + <image> question Q answer",
                scorer="VQA accuracy (min(#matching references / 3, 1), averaged over leave-one-out subsets; "
                "exact match for one reference), VQA-normalised",
            ),
        ),
        Choice(
            "text",
            "mm1core.eval.file_tasks:evaluate_file_task",
            spec=FileTaskKind(
                columns=(("prompt", "string"), ("answers", "list<string>")),
                scores=("accuracy",),
                template="k x (PROMPT A .) + PROMPT",
                scorer="exact match against any accepted answer, VQA-normalised",
            ),
        ),
    ],
)
FILE_TASK_KINDS: dict[str, FileTaskKind] = {
    name: EVAL_TASKS[name].spec for name in EVAL_TASKS if name != "world"
}
# First parts of metric names the trial records itself: a task of one of these names would collide with them.
RESERVED_TASK_NAMES = (
    "train",
    "encoder",
    "sft",
    "eval",
    "time",
    "floor",
    "probe",
    "protocol",
    "lr_law",
    "heldout",
    "textcore",
)


@dataclass(frozen=True, kw_only=True)
class EvalTaskConfig:
    """One evaluation task: `kind: world` is the generated world's suite (its metrics keep their plain names,
    `0shot/vqa`); any other kind scores the items of a user's file, as `<name>/<k>shot/<score>`."""

    name: str
    kind: str = "world"
    files: str = ""  # the items scored: a Parquet/Arrow file, directory or glob in the kind's schema
    split: str = ""  # only the rows whose `split` column holds this value ("": every row)
    demos: str = ""  # where few-shot demonstrations come from ("": the items' own files)
    demos_split: str = ""  # only the demonstration rows whose `split` column holds this value
    shots: tuple[int, ...] = ()  # (): the study's `eval.shots`
    max_items: int = 0  # the first this many items (0: all of them)
    plays: str = ""  # the paper's column this task stands in for: caption, vqa or text ("": none)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    num_items: int = 140  # per task: captioning, VQA (split evenly over question categories), text-only
    # Items per task of the intermediate rounds (train.eval_every): a learning curve needs a trend, not a verdict,
    # so those rounds score the first items of the same set; 0: all of them. The final round always scores all.
    intermediate_items: int = 0
    batch_size: int = 50
    set_seed: int = 0  # which held-out scenes, and which demonstrations for few-shot prompts
    shots: tuple[int, ...] = (0, 4, 8)
    max_caption_words: int = 24  # generation budget for a caption
    # The tasks scored at every round: the world's suite, and any number of file tasks (EvalTaskConfig).
    tasks: tuple[EvalTaskConfig, ...] = (EvalTaskConfig(name="world"),)

    def task_shots(self, task: EvalTaskConfig) -> tuple[int, ...]:
        return task.shots or self.shots

    @property
    def scores_world(self) -> bool:
        return any(task.kind == "world" for task in self.tasks)

    @property
    def file_tasks(self) -> tuple[EvalTaskConfig, ...]:
        return tuple(task for task in self.tasks if task.kind != "world")


ENCODER_LOSSES = Registry(
    "encoder loss",
    [
        Choice("none"),  # the encoder starts from random weights and learns only in multimodal training
        Choice("clip", "mm1core.encoder_pretrain:train_clip"),
        Choice(
            "aim",
            "mm1core.encoder_pretrain:train_aim",
            check=lambda cfg: (
                None
                if cfg.encoder.stem == "patchify"
                else "aim needs encoder.stem: patchify (the conv stem's receptive field crosses patch borders, so a "
                "patch's feature would already see the next patch it must predict)"
            ),
        ),
    ],
)
ENCODER_SEED_SOURCES = ("trial", "stage")


@dataclass(frozen=True, kw_only=True)
class EncoderPretrainConfig(Schedule):
    """The image encoder's own pre-training stage, run before multimodal training and cached by its config."""

    loss: str = (
        "none"  # "none": the encoder starts from random weights and learns only in multimodal training
    )
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 30
    text_width: int = 64
    text_depth: int = 1
    # Per image, captions that differ from its own in one detail (a sign digit, a colour, a shape): without them a
    # contrastive encoder can tell captions apart by their easiest words and never learns to read.
    num_hard_negatives: int = 1
    # Share of the image-text pairs whose text is a complete synthetic caption rather than alt-text (VeCap analogue).
    recaption_share: float = 0.0
    # Where the encoder's randomness comes from. "trial": from this seed and the trial's, so every training run
    # pre-trains its own encoder and a study's seeds sample the encoder's randomness too (an arm's verdict then
    # covers it); trials with the same encoder config and seed still share one. "stage": from this seed alone, so
    # every seed of an arm reuses one encoder, as the paper reuses one across its ablations: cheaper, but the
    # encoder's randomness is then confounded with the arm, and the report says its verdicts exclude it.
    seed: int = 0
    seed_from: str = "trial"


@dataclass(frozen=True, kw_only=True)
class SFTConfig(Schedule):
    """Optional supervised fine-tuning after multimodal pre-training: single-image question-answer instructions,
    loss on the answers only, with its own schedule (steps 0: no SFT stage)."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    freeze: str = "all"  # the paper unfreezes everything for SFT


@dataclass(frozen=True, kw_only=True)
class MM1Config:
    encoder: ViTConfig
    encoder_pretrain: EncoderPretrainConfig
    connector: ConnectorConfig
    lm: LMConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    sft: SFTConfig = SFTConfig()
    seed: int = 0


def stage_loop(stage: Schedule, loop: TrainConfig | None = None, **settings: Any) -> TrainConfig:
    """The training loop's config for a stage: the stage's schedule, with the loop settings of `loop` (the
    multimodal stage's, which SFT shares) or the loop's defaults, and `settings` on top."""
    schedule = {field.name: getattr(stage, field.name) for field in dataclasses.fields(Schedule)}
    if loop is None:
        return TrainConfig(**schedule, **settings)
    return dataclasses.replace(loop, **schedule, **settings)


def encoder_seed(config: dict) -> str:
    """The encoder stage's seed, from a resolved config dict: `encoder_pretrain.seed`, with the trial's seed when
    the encoder's randomness comes from the trial (`encoder_pretrain.seed_from`)."""
    pretrain = config["encoder_pretrain"]
    if pretrain.get("seed_from", "trial") == "trial":
        return f"{pretrain['seed']}/trial{config.get('seed', 0)}"
    return str(pretrain["seed"])


class ConfigError(ValueError):
    """A config problem at a dotted field path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def config_to_dict(cfg: Any) -> dict:
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@functools.cache
def field_paths(cls: type = MM1Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a config class as {dotted path: type}."""
    paths: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            paths |= field_paths(hint, f"{prefix}{name}.")
        else:
            paths[f"{prefix}{name}"] = hint
    return paths


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unknown_path_message(path: str) -> str:
    known = list(field_paths())
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    if not close:  # a typo in the leaf alone, e.g. connector.num_image_token
        leaf = path.rsplit(".", 1)[-1]
        close = [p for p in known if difflib.get_close_matches(leaf, [p.rsplit(".", 1)[-1]], cutoff=0.75)][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config field {path!r}{hint}"


def apply_overrides(tree: dict, overrides: dict[str, Any]) -> dict:
    """A copy of the nested config dict with dotted-path overrides applied; unknown paths raise ConfigError."""
    known = field_paths()
    result = _copy(tree)
    for path, value in overrides.items():
        if path not in known:
            raise ConfigError(path, unknown_path_message(path))
        node = result
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return result


def _copy(tree: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


_ADAPTER = TypeAdapter(MM1Config)


def config_from_dict(tree: dict) -> MM1Config:
    """Strictly build an MM1Config; the first problem raises ConfigError with its dotted path."""
    for path in flatten(tree):
        if path not in field_paths():
            raise ConfigError(path, unknown_path_message(path))
    try:
        return _ADAPTER.validate_python(tree, strict=False)
    except ValidationError as err:
        errors = err.errors()
        path = _field_of(errors[0]["loc"])
        # A union field (lr: float | "auto") fails once per member; say all the ways it could have been right.
        messages = dict.fromkeys(e["msg"] for e in errors if _field_of(e["loc"]) == path)
        raise ConfigError(path, f"{' or '.join(messages)} (got {errors[0].get('input')!r})") from None


def _field_of(loc: tuple) -> str:
    """The config field a pydantic error location names, without union-member suffixes like `.float`."""
    known = field_paths()
    parts: list[str] = []
    for part in loc:
        parts.append(str(part))
        if ".".join(parts) in known:
            break
    return ".".join(parts)


_MAY_BE_ZERO = {
    "intermediate_items",
    "qkv_conv_width",
    "num_experts",
    "moe_balance_coef",
    "router_z_coef",
    "seed",
    "set_seed",
    "eval_every",
    "z_loss_coef",
    "weight_decay",
    "warmup_steps",
    "num_hard_negatives",
    "recaption_share",
    "interleaved_qa_share",
    "clutter",
    "sft.steps",
}


# Values no one means: a typo (an extra zero, a unit slip) caught at plan time instead of an out-of-memory crash or a
# trial that runs for weeks. Each is far above the largest preset's.
_UPPER_BOUNDS: dict[str, float] = {
    "encoder.resolution": 1024,
    "canvas_px": 2048,
    "steps": 10_000_000,
    "batch_size": 65_536,
    "width": 16_384,
    "depth": 256,
    "max_seq_len": 65_536,
    "num_image_tokens": 4_096,
    "num_items": 1_000_000,
    "seed": 2**31 - 1,
    "set_seed": 2**31 - 1,
    "lr": 100.0,
}


@functools.cache
def _numeric_fields() -> list[tuple[str, Callable[[Any], Any]]]:
    """(path, getter) for every int or float field: the planner checks thousands of arms, so no per-call walk."""
    return [(path, operator.attrgetter(path)) for path, hint in field_paths().items() if hint in (int, float)]


_Check = Callable[[bool, str, str], None]


def config_problems(cfg: MM1Config) -> list[ConfigError]:
    """Every reason this config cannot be built or trained, each at the field that causes it: the numbers' ranges,
    then each section's own checks, which compose the registries' checks of the choices the config names."""
    problems: list[ConfigError] = []

    def check(ok: bool, path: str, message: str) -> None:
        if not ok:
            problems.append(ConfigError(path, message))

    for section in (
        _number_problems,
        _encoder_problems,
        _connector_problems,
        _lm_problems,
        _schedule_problems,
        _data_problems,
        _eval_problems,
    ):
        section(cfg, check)
    return problems


def _choice(registry: Registry, name: str, cfg: MM1Config, path: str, check: _Check, blame: str = "") -> None:
    """A named choice: registered (or the problem is at `path`), and its own check passed (at `blame`)."""
    if name not in registry:
        check(False, path, registry.unknown(name))
    elif problem := registry.problem(name, cfg):
        check(False, blame or path, problem)


def _number_problems(cfg: MM1Config, check: _Check) -> None:
    for path, getter in _numeric_fields():
        value = getter(cfg)
        if not math.isfinite(value):
            check(False, path, f"must be a finite number, got {value}")
            continue
        leaf = path.rsplit(".", 1)[-1]
        bound = _UPPER_BOUNDS.get(path, _UPPER_BOUNDS.get(leaf))
        if bound is not None:
            check(
                value <= bound, path, f"{value} is beyond any run this project can make (at most {bound:,})"
            )
        if path in _MAY_BE_ZERO or leaf in _MAY_BE_ZERO:
            check(value >= 0, path, f"must be >= 0, got {value}")
        else:
            check(value > 0, path, f"must be > 0, got {value}")


def _encoder_problems(cfg: MM1Config, check: _Check) -> None:
    pre, enc = cfg.encoder_pretrain, cfg.encoder
    _choice(ENCODER_LOSSES, pre.loss, cfg, "encoder_pretrain.loss", check)
    check(
        pre.seed_from in ENCODER_SEED_SOURCES,
        "encoder_pretrain.seed_from",
        f"unknown seed source {pre.seed_from!r}; known: {', '.join(ENCODER_SEED_SOURCES)}",
    )
    check(
        pre.warmup_steps <= pre.steps,
        "encoder_pretrain.warmup_steps",
        f"warmup_steps {pre.warmup_steps} exceed steps {pre.steps}",
    )
    check(
        pre.text_width % 4 == 0,
        "encoder_pretrain.text_width",
        f"the text tower's width {pre.text_width} must be divisible by its 4 heads",
    )
    check(0 <= pre.recaption_share <= 1, "encoder_pretrain.recaption_share", "must be between 0 and 1")
    _choice(STEMS, enc.stem, cfg, "encoder.stem", check, blame="encoder.patch_size")
    check(
        enc.resolution % enc.patch_size == 0,
        "encoder.resolution",
        f"resolution {enc.resolution} is not divisible by patch_size {enc.patch_size}",
    )
    check(
        enc.width % enc.num_heads == 0,
        "encoder.num_heads",
        f"encoder width {enc.width} is not divisible by num_heads {enc.num_heads}",
    )


def _connector_problems(cfg: MM1Config, check: _Check) -> None:
    enc, connector = cfg.encoder, cfg.connector
    _choice(IMAGE_TOKEN_POSITIONS, connector.token_positions, cfg, "connector.token_positions", check)
    _choice(FEATURE_NORMS, connector.feature_norm, cfg, "connector.feature_norm", check)
    if connector.name not in CONNECTORS:
        check(False, "connector.name", CONNECTORS.unknown(connector.name))
    elif enc.patch_size > 0 and enc.resolution % enc.patch_size == 0:  # the patch grid is defined
        problem = connector_problem(connector, grid_size=enc.grid_size)
        check(problem is None, "connector.num_image_tokens", problem or "")


def _lm_problems(cfg: MM1Config, check: _Check) -> None:
    lm = cfg.lm
    _choice(LM_POSITIONS, lm.positions, cfg, "lm.positions", check)
    check(
        lm.num_experts == 0 or lm.experts_top_k <= lm.num_experts,
        "lm.experts_top_k",
        f"top-{lm.experts_top_k} routing needs at least that many experts (num_experts {lm.num_experts})",
    )
    check(
        lm.width % lm.num_heads == 0,
        "lm.num_heads",
        f"lm width {lm.width} is not divisible by num_heads {lm.num_heads}",
    )


def _schedule_problems(cfg: MM1Config, check: _Check) -> None:
    lr = cfg.train.lr
    check(
        lr == "auto" or (math.isfinite(lr) and 0 < lr <= _UPPER_BOUNDS["lr"]),
        "train.lr",
        f"must be a finite number in (0, {_UPPER_BOUNDS['lr']:g}] or auto, got {lr}",
    )
    for section in ("train", "sft"):
        stage = getattr(cfg, section)
        check(
            stage.freeze in FREEZE_STAGES,
            f"{section}.freeze",
            f"unknown freeze stage {stage.freeze!r}; known: {', '.join(FREEZE_STAGES)}",
        )
        check(
            stage.steps == 0 or stage.warmup_steps <= stage.steps,
            f"{section}.warmup_steps",
            f"warmup_steps {stage.warmup_steps} exceed steps {stage.steps}",
        )
    check(
        cfg.train.precision in PRECISIONS,
        "train.precision",
        f"unknown precision {cfg.train.precision!r}; known: {', '.join(PRECISIONS)}",
    )


def _data_problems(cfg: MM1Config, check: _Check) -> None:
    data, world = cfg.data, cfg.data.world
    try:
        parse_ratio(data.ratio)
    except ValueError as err:
        check(False, "data.ratio", str(err))
    check(
        world.min_objects <= world.max_objects,
        "data.world.min_objects",
        f"min_objects {world.min_objects} exceeds max_objects {world.max_objects}",
    )
    check(
        world.max_objects + world.max_signs <= world.grid_size**2,
        "data.world.max_objects",
        f"{world.max_objects} objects and {world.max_signs} signs do not fit a "
        f"{world.grid_size}x{world.grid_size} grid",
    )
    check(world.min_signs >= 1, "data.world.min_signs", "every scene needs a sign (reading is a task)")
    check(
        world.min_signs <= world.max_signs,
        "data.world.min_signs",
        f"min_signs {world.min_signs} exceeds max_signs {world.max_signs}",
    )
    check(0 <= data.recaption_share <= 1, "data.recaption_share", "must be between 0 and 1")
    check(0 <= data.interleaved_qa_share <= 1, "data.interleaved_qa_share", "must be between 0 and 1")
    check(data.max_images_per_document >= 2, "data.max_images_per_document", "an interleaved page needs 2+")
    check(
        data.questions_per_image >= 1, "data.questions_per_image", "a question page asks at least 1 per image"
    )
    for what, tokens in _longest_sequences(cfg).items():
        check(
            tokens <= data.max_seq_len,
            "data.max_seq_len",
            f"{what} needs {tokens} tokens with {cfg.connector.num_image_tokens} image tokens per image; "
            f"max_seq_len is {data.max_seq_len}",
        )


def _eval_problems(cfg: MM1Config, check: _Check) -> None:
    check(
        all(e >= 0 for e in cfg.eval.shots), "eval.shots", f"shot counts must be >= 0, got {cfg.eval.shots}"
    )
    for message in eval_task_problems(cfg.eval):
        check(False, "eval.tasks", message)


def eval_task_problems(cfg: EvalConfig) -> list[str]:
    """Why the evaluation tasks cannot be scored as declared, each naming its task."""
    problems: list[str] = []
    if not cfg.tasks:
        problems.append("no evaluation task; the default is [{name: world}], the generated world's suite")
    names = [task.name for task in cfg.tasks]
    for i, task in enumerate(cfg.tasks):
        label = f"task {i} ({task.name!r})"
        if not task.name or not all(c.isalnum() or c in "-_." for c in task.name):
            problems.append(
                f"{label}: a name is letters, digits, '-', '_' or '.' (it starts the task's metric names)"
            )
        if names.count(task.name) > 1 and names.index(task.name) == i:
            problems.append(f"{label}: the name is used by {names.count(task.name)} tasks")
        if task.kind not in EVAL_TASKS:
            problems.append(f"{label}: {EVAL_TASKS.unknown(task.kind)}")
            continue
        if any(k < 0 for k in task.shots):
            problems.append(f"{label}: shot counts must be >= 0, got {list(task.shots)}")
        if task.max_items < 0:
            problems.append(f"{label}: max_items must be >= 0 (0: every item), got {task.max_items}")
        if task.kind == "world":
            given = [f for f in ("files", "split", "demos", "demos_split", "plays") if getattr(task, f)]
            if given:
                problems.append(
                    f"{label}: the world's suite takes no {', '.join(given)} (those are for file tasks)"
                )
            if task.shots and tuple(task.shots) != tuple(cfg.shots):
                problems.append(f"{label}: the world's shot counts are eval.shots; set those instead")
            if names.count(task.name) == 1 and [t.kind for t in cfg.tasks].count("world") > 1:
                problems.append(f"{label}: the world's suite is listed more than once")
            continue
        if task.name in RESERVED_TASK_NAMES or task.name.endswith("shot"):
            problems.append(f"{label}: the name {task.name!r} is taken by metrics the trial records itself")
        if not task.files:
            problems.append(f"{label}: a {task.kind} task needs `files`, the items it scores")
        fewshot = [k for k in cfg.task_shots(task) if k > 0]
        if fewshot and not (task.demos or task.demos_split):
            problems.append(
                f"{label}: {fewshot[0]}-shot prompts need demonstrations: name a file (demos) or a split of its "
                "files (demos_split), or score it 0-shot only (shots: [0])"
            )
        if task.demos_split and task.demos_split == task.split and not task.demos:
            problems.append(f"{label}: its demonstrations would be its own items (demos_split = split)")
        if task.plays and task.plays != task.kind:
            problems.append(
                f"{label}: a {task.kind} task can play the paper's {task.kind} column, not {task.plays!r}"
            )
    return problems


def _longest_sequences(cfg: MM1Config) -> dict[str, int]:
    words = longest_words(cfg.data.world)
    image = cfg.connector.num_image_tokens
    longest_item = image + max(words["alt_caption"], words["qa"])
    longest = {
        "a re-captioned image": 2 + image + words["recaption"],
        "an image of a question page and its questions": 2
        + image
        + cfg.data.questions_per_image * words["qa"],
        "a text-only document": 2 + words["text_document"],
    }
    if cfg.eval.scores_world:  # file tasks' prompts are measured with the study's tokenizer, at plan time
        # The prompt and the words generated after it must both fit the position table.
        longest[f"a {max(cfg.eval.shots, default=0)}-shot prompt and its answer"] = (
            1
            + (max(cfg.eval.shots, default=0) + 1) * longest_item
            + max(cfg.eval.max_caption_words, words["qa"])
        )
    return longest
