"""Config sections -> the objects of a training run. One function per component, in data-flow order."""
import os

import paddle

from plsc import distributed
from plsc.config.notices import warn_once
from plsc.data import build_dataset, build_loader
from plsc.errors import PlscError
from plsc.loss.combined import CombinedLoss  # noqa: F401  (the trainer imports it from here)
from plsc.registry import HEADS, LR_SCHEDULERS, METRICS, MODELS

DEFAULT_HEAD = "PartialFC"  # PLSC's configs name no head


def select_device(requested):
    """'cpu', 'gpu' or 'auto' -> the device Paddle will use; asking for a missing GPU falls back to CPU."""
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        print("plsc: Global.device is 'gpu' but this Paddle has no usable GPU; running on CPU")
    device = "gpu" if requested in ("gpu", "auto") and has_gpu else "cpu"
    if device == "gpu":
        device = f"gpu:{distributed.local_rank()}"
    paddle.set_device(device)
    return device


def build_backbone(model_config):
    from plsc.models import backbone_kwargs

    return MODELS.build(model_config.name, where="Model.name", **backbone_kwargs(model_config))


def build_head(model_config, seed):
    """`Model.pfc_config` -> the class layer; its optional `name` picks a HEADS entry (PartialFC by default)."""
    pfc = dict(model_config.get("pfc_config") or {})
    pfc.pop("sparse_update", None)  # every sampled head updates sparsely here; the key stays for PLSC configs
    name = pfc.pop("name", None) or DEFAULT_HEAD
    embedding_size = model_config.get("num_features", MODELS.parameters(model_config.name)["num_features"])
    return HEADS.build(name, where="Model.pfc_config.name", num_classes=model_config.class_num,
                       embedding_size=embedding_size, seed=seed, **pfc)


def resolve_seed(seed):
    """`Global.seed`, or (when it is null) a random one drawn on rank 0 and shared, so it can be logged."""
    if seed is None:
        seed = distributed.broadcast_object(int.from_bytes(os.urandom(4), "little") % 2**31)
    return int(seed)


def build_lr_schedule(section, epochs, steps_per_epoch):
    kwargs = dict(section)
    name = kwargs.pop("name")
    return LR_SCHEDULERS.build(name, where="LRScheduler.name", epochs=epochs,
                               steps_per_epoch=steps_per_epoch, **kwargs)


def train_sampler_section(sampler):
    """`DataLoader.Train.sampler` with PLSC's `BatchSampler` read as the sampler it amounts to.

    PLSC's configs name `BatchSampler` only for evaluation; for training on one process it shuffles
    and batches like `DistributedBatchSampler`, which it becomes here. On several ranks it would give
    every rank the whole data set, so it is refused there.
    """
    sampler = dict(sampler)
    if sampler.get("name") != "BatchSampler":
        return sampler
    if distributed.world_size() > 1:
        raise PlscError("DataLoader.Train.sampler.name: BatchSampler would give every rank the whole data set; "
                        "use DistributedBatchSampler")
    warn_once("DataLoader.Train.sampler.name: BatchSampler on one process is trained as DistributedBatchSampler "
              "(the same batches)")
    sampler["name"] = "DistributedBatchSampler"
    return sampler


def check_class_num(dataset, class_num, where="Model.class_num"):
    """Warn when class_num exceeds what the labels need and no `property` file vouches for it.

    Extra classes are legal (PLSC trains them as never-positive centres) but usually a wrong number:
    a `property` file is checked exactly by the dataset; without one this is the only hint.
    """
    labels = getattr(dataset, "labels", None)
    records = getattr(dataset, "records", None)
    if labels is None or len(labels) == 0 or getattr(records, "property", None) is not None:
        return
    needed = int(max(labels)) + 1
    if class_num > needed:
        warn_once(f"{where} is {class_num} but the training labels need only {needed} (largest label "
                  f"{needed - 1}); the other {class_num - needed} class centres are never a target")


def build_train_loader(config, seed):
    section = config.DataLoader.Train
    dataset = build_dataset(section.dataset, "DataLoader.Train.dataset", seed=seed)
    if config.Model.get("class_num") is not None:  # tasks without a class layer (MAE) ignore labels
        dataset.check_labels(config.Model.class_num)
        check_class_num(dataset, config.Model.class_num)
    return build_loader(dataset, train_sampler_section(section.sampler), section.get("loader"), seed=seed)


def build_evaluator(config):
    """Verification sets of `DataLoader.Eval` scored by `Metric.Eval`, or None without them."""
    from plsc.engine.evaluator import VerificationEvaluator

    section = config.get("DataLoader", {}).get("Eval")
    metrics_config = (config.get("Metric") or {}).get("Eval") or []
    if not section or not metrics_config:
        return None
    dataset_sections = section.dataset if isinstance(section.dataset, list) else [section.dataset]
    datasets = [build_dataset(part, f"DataLoader.Eval.dataset.{i}") for i, part in enumerate(dataset_sections)]
    names = [dataset.name for dataset in datasets]
    for position, name in enumerate(names):
        if name in names[:position]:
            raise PlscError(f"DataLoader.Eval.dataset.{position}: a second verification set named '{name}' "
                            "(results are keyed by set name): give each a distinct set_name")
    metrics = []
    for position, entry in enumerate(metrics_config):
        (name, kwargs), = entry.items()
        metrics.append(METRICS.build(name, where=f"Metric.Eval.{position}", **(kwargs or {})))
    sampler = section.get("sampler") or {}
    loader = section.get("loader") or {}
    return VerificationEvaluator(datasets, metrics, batch_size=sampler.get("batch_size", 128),
                                 num_workers=loader.get("num_workers", 0))


def check_supported(config):
    """Stop early on settings this version accepts in configs but does not implement, and on keys the
    chosen task needs (before any data is generated or read)."""
    from plsc.registry import TASKS

    TASKS.get(config.Global.get("task_type", "recognition"), where="Global.task_type").check_config(config)
    if distributed.world_size() > 1 and not config.get("DistributedStrategy", {}).get("data_parallel", True):
        raise PlscError("DistributedStrategy.data_parallel must be True when running on several ranks")
    warn_ignored_keys(config)
    apply_paddle_flags(config.Global.get("flags") or {})


# Keys PLSC's configs carry that plsc accepts and does not act on: key -> (value that asks for
# something, why it is ignored).
IGNORED_KEYS = {
    "Global.use_dali": (True, "plsc has no DALI reader; images are read by the configured dataset"),
}


def warn_ignored_keys(config):
    """One warning per accepted-but-ignored key that asks for something."""
    for key, (asking, reason) in IGNORED_KEYS.items():
        section, name = key.split(".")
        if (config.get(section) or {}).get(name) == asking:
            warn_once(f"{key}: {asking} is accepted and ignored ({reason})")


def _flag_value(name, value, current):
    """`value` in the type of the flag's current value (Paddle refuses e.g. 1 for a bool flag)."""
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true")
        return bool(value)
    try:
        return type(current)(value)
    except (TypeError, ValueError):
        raise PlscError(f"Global.flags.{name}: {value!r} is not a {type(current).__name__}") from None


def apply_paddle_flags(flags):
    """Set `Global.flags` ({FLAGS_name: value}) with paddle.set_flags before any work; returns those set.

    A flag this Paddle build does not know is skipped with a warning when Paddle has no CUDA (PLSC's
    flags are cuDNN ones, absent from CPU builds), and an error naming it otherwise (a misspelling).
    """
    applied = {}
    for name, value in flags.items():
        try:
            current = paddle.get_flags([name])[name]
        except ValueError:
            if paddle.device.is_compiled_with_cuda():
                raise PlscError(f"Global.flags.{name}: not a flag of this Paddle build") from None
            warn_once(f"Global.flags.{name}: not in this CPU build of Paddle (a GPU-only flag?); skipped")
            continue
        applied[name] = _flag_value(name, value, current)
        paddle.set_flags({name: applied[name]})
    return applied
