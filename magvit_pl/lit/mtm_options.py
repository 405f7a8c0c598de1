"""The option groups of :class:`~magvit_pl.lit.mtm.MTMModule` that belong to no network or algorithm
module, and the reading of MTM hyper-parameters saved in a checkpoint (old flat layout included).

The other groups live next to the code they configure: :class:`~magvit_pl.models.transformer.TransformerConfig`,
:class:`~magvit_pl.commit.CommitConfig`, :class:`~magvit_pl.sampling.SamplingConfig`. Each group is a
frozen dataclass: LightningCLI shows it as ``--model.GROUP.FIELD`` and YAML nests it under ``GROUP:``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from magvit_pl.commit import CommitConfig, TaskScheduleKind, Vocab, official_token_keys
from magvit_pl.run.checkpoint import load_checkpoint, save_checkpoint
from magvit_pl.run.errors import UserError
from magvit_pl.models.checkpointing import drop_legacy_flag
from magvit_pl.models.transformer import TransformerConfig
from magvit_pl.lit.schedules import LRSchedule
from magvit_pl.lit.evaluation import EvalConfig
from magvit_pl.sampling import SamplingConfig
from magvit_pl.tasks import LatentRule

TaskTokenLayout = Literal["auto", "always", "never"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay.

    Args:
        lr: Peak learning rate.
        betas: AdamW betas.
        weight_decay: Weight decay on weight matrices only (not embeddings, LayerNorms or biases).
        warmup_steps: Linear warmup steps before the cosine decay.
        min_lr_ratio: Final learning rate as a fraction of the peak (``warmup_cosine`` only).
        lr_schedule: ``warmup_cosine`` (linear warmup, cosine to ``min_lr_ratio`` over the remaining steps) or
            ``official`` (scenic's form: rate 0 at step 0, cosine over all the run's steps).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.045
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.0
    lr_schedule: LRSchedule = "warmup_cosine"


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which tasks the model learns, and the run-wide task options.

    Args:
        names: Task names to train on; ``None`` = every installed task. Stored in the checkpoint (the
            task table), so a plugin installed later never shifts the vocabulary.
        num_cond_frames: Given frames of the frame tasks (1 for BAIR, 5 for Kinetics-600); reaches only
            the tasks whose constructor declares it.
        latent_rule: Latent condition mask rule: ``task`` (official), ``any`` or ``all``; reaches only
            the tasks whose constructor declares it.
        task_token: Whether sequences start with a task token: ``auto`` (official: only when there is more
            than one task, so a single-task model sees ``[class] + N``), ``always`` or ``never``.
        shared_task_tokens: Give all outpainting and inpainting tasks one task token, as the official code
            does (task_registry.py:191-194); off: every task its own token.
        weights: Relative sampling weight per task name (tasks not listed: 1); None = equal weights.
        schedule: Which task each step trains: ``cycle`` (a shuffled list in proportion to the weights,
            reshuffled every pass) or ``official`` (that list permuted once with the seed and indexed by
            the step, as the official trainer).
    """

    names: list[str] | None = None
    num_cond_frames: int = 1
    latent_rule: LatentRule = "task"
    task_token: TaskTokenLayout = "auto"
    shared_task_tokens: bool = False
    weights: dict[str, float] | None = None
    schedule: TaskScheduleKind = "cycle"

    def vocab(self, codebook_size: int, num_classes: int, families: dict[str, str]) -> Vocab:
        """The vocabulary of the tasks ``families`` (name → family, in order): a task token unless ``task_token``
        says otherwise (``auto``: only with several tasks, as the official code), one for all out/inpainting
        tasks with ``shared_task_tokens``."""
        names = tuple(families)
        task_token = len(names) > 1 if self.task_token == "auto" else self.task_token == "always"
        keys = official_token_keys(names, list(families.values())) if self.shared_task_tokens and task_token else None
        return Vocab(codebook_size=codebook_size, num_classes=num_classes, task_names=names, task_token=task_token, token_keys=keys)

    def weight_list(self, names: list[str]) -> list[float]:
        """The sampling weight of each of ``names`` (1 unless ``weights`` says otherwise); a weight for another
        task is a one-line error."""
        weights = dict(self.weights or {})
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise UserError(f"model.tasks.weights names {', '.join(unknown)}, not among the trained tasks: {', '.join(names)}")
        return [float(weights.get(n, 1.0)) for n in names]

    @staticmethod
    def check_classes(num_classes: int, uses_class: dict[str, bool]) -> None:
        """Data without classes (``num_classes`` 0, e.g. BAIR) trains no class-conditional task."""
        conditional = [n for n, uses in uses_class.items() if uses]
        if num_classes == 0 and conditional:
            raise UserError(f"model.num_classes=0 (data without classes) but {', '.join(conditional)} "
                            f"{'is' if len(conditional) == 1 else 'are'} class-conditional; leave them out of model.tasks.names")

    def shared_options(self) -> dict[str, Any]:
        """The options passed to each task that declares them (see :func:`magvit_pl.tasks.get_task`)."""
        return {"num_cond_frames": self.num_cond_frames, "latent_rule": self.latent_rule}


GROUPS: dict[str, type] = {
    "transformer": TransformerConfig, "commit": CommitConfig, "sampling": SamplingConfig,
    "optim": OptimConfig, "tasks": TaskConfig, "evaluation": EvalConfig,
}

# Checkpoints written before the options were grouped saved them flat: old name -> (group, field).
_FLAT: dict[str, tuple[str, str]] = {
    **{f: ("transformer", f) for f in ("hidden_dim", "num_layers", "num_heads", "mlp_dim", "dropout",
                                       "attention_dropout", "pre_norm", "attention_backend")},
    **{f: ("commit", f) for f in ("mode", "mask_schedule", "loss_weights", "label_smoothing", "class_dropout_prob")},
    **{f: ("optim", f) for f in ("lr", "betas", "weight_decay", "warmup_steps", "min_lr_ratio")},
    "sample_steps": ("sampling", "steps"), "choice_temperature": ("sampling", "choice_temperature"),
    "sample_temperature": ("sampling", "temperature"), "top_k": ("sampling", "top_k"),
    "guidance_scale": ("sampling", "guidance_scale"),
    "num_cond_frames": ("tasks", "num_cond_frames"),
}


def is_flat_layout(hparams: dict[str, Any]) -> bool:
    """Whether MTM hyper-parameters are of the old flat layout (``hidden_dim``, ``lr`` … at the top)."""
    return not isinstance(hparams.get("tasks"), dict) and any(k in _FLAT for k in hparams)


def group_flat_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters of the old flat layout (``hidden_dim``, ``lr``, ``tasks: [..]`` …) in the grouped
    one; grouped ones are returned unchanged."""
    if not is_flat_layout(hparams):
        return dict(hparams)
    out: dict[str, Any] = {g: {} for g in GROUPS}
    out["tasks"]["names"] = hparams.get("tasks")
    for key, value in hparams.items():
        if key in _FLAT:
            group, field = _FLAT[key]
            out[group][field] = value
        elif key != "tasks":
            out[key] = value
    return out


FLAT_LAYOUT = ("holds MTM options of the old flat layout (hidden_dim, lr, ... ungrouped), which test and fit cannot read; "
               "re-save it grouped: python -c \"from magvit_pl.lit.mtm_options import upgrade_checkpoint; "
               "upgrade_checkpoint('OLD.ckpt', 'NEW.ckpt')\" (generate and MTMModule.from_checkpoint read it as it is)")


def explain_checkpoint_error(path: str, message: str) -> str:
    """Why the hyper-parameters of checkpoint ``path`` did not parse (Lightning merges them into the config):
    the old flat layout, with the command that upgrades the file, or else the parser's ``message``."""
    try:
        flat = is_flat_layout(load_checkpoint(path).get("hyper_parameters", {}))
    except UserError:
        flat = False
    return f"--ckpt_path {path} {FLAT_LAYOUT}" if flat else f"--ckpt_path {path}: {explain_option_error(message)}"


def upgrade_checkpoint(src: str, dst: str) -> Path:
    """Re-save an MTM checkpoint of the old flat layout in the grouped one (what ``cli.py test`` and
    ``fit --ckpt_path`` read), written atomically to ``dst``; a grouped one is copied as it is."""
    ckpt = load_checkpoint(src)
    ckpt["hyper_parameters"] = group_flat_hparams(ckpt.get("hyper_parameters", {}))
    meta = ckpt.get("magvit", {})
    if "tokenizer_config" in meta:
        meta["tokenizer_config"] = drop_legacy_flag(meta["tokenizer_config"])
    return save_checkpoint(ckpt, dst)


def constructor_args(hparams: dict[str, Any]) -> dict[str, Any]:
    """``MTMModule`` keyword arguments from saved hyper-parameters: groups become their dataclasses;
    private keys (``_class_path``, ``_instantiator``) are dropped. Unknown fields are one-line errors."""
    args = {k: v for k, v in group_flat_hparams(hparams).items() if not k.startswith("_")}
    for name, cls in GROUPS.items():
        value = args.get(name)
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise UserError(f"checkpoint hyper-parameter model.{name} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            if name == "tasks" and "task_token" not in value:  # saved before the option: every sequence had a task token
                value = {**value, "task_token": "always"}
            args[name] = cls(**{k: tuple(v) if isinstance(v, list) and k != "names" else v for k, v in value.items()})
    return args


def with_defaults(**groups: Any) -> dict[str, Any]:
    """The option groups with ``None`` (``null`` in YAML) replaced by the group's defaults. (The groups
    are typed ``X | None`` because then jsonargparse checks that a group is given its fields.)"""
    return {name: GROUPS[name]() if value is None else value for name, value in groups.items()}


def explain_option_error(message: str) -> str:
    """A parser error about the MTM's options, made actionable: an option of the old flat layout
    (``Option 'lr' is not accepted (in ...MTMModule)``) gets where it lives now (``--model.optim.lr``); a
    group given something other than its fields gets the fields. Other messages come back unchanged."""
    old = re.search(r"Option '(\w+)' is not accepted \(in magvit_pl\.lit\.mtm\.MTMModule\)", message)
    if old and old.group(1) in _FLAT:
        group, field = _FLAT[old.group(1)]
        return f"{message}; MTM options are grouped now: --model.{group}.{field} (YAML: {group}: {{{field}: ...}})"
    bad = re.search(r'Parser key "(\w+)": Does not validate against any of the Union subtypes', message)
    if bad and bad.group(1) in GROUPS:
        group = bad.group(1)
        fields = [f.name for f in dataclasses.fields(GROUPS[group])]
        return (f"model.{group} takes its fields ({', '.join(fields)}), not a single value; "
                f"e.g. --model.{group}.{fields[0]} VALUE, or in YAML {group}: {{{fields[0]}: ...}}")
    return message
