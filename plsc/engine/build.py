"""Config sections -> the objects of a training run. One function per component, in data-flow order."""
import os

import paddle

from plsc import distributed
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


def build_train_loader(config, seed):
    section = config.DataLoader.Train
    dataset = build_dataset(section.dataset, "DataLoader.Train.dataset", seed=seed)
    if config.Model.get("class_num") is not None:  # tasks without a class layer (MAE) ignore labels
        dataset.check_labels(config.Model.class_num)
    return build_loader(dataset, section.sampler, section.get("loader"), seed=seed)


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
