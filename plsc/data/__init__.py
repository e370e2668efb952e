"""Datasets, transforms and loaders built from a `DataLoader.Train` / `DataLoader.Eval` section."""
from plsc.data import dataset  # noqa: F401  (fills the DATASETS registry)
from plsc.data.loader import CheckedLoader
from plsc.data.sampler import SAMPLERS
from plsc.errors import PlscError
from plsc.registry import DATASETS


def build_dataset(section, where, seed=0):
    """`{name: ..., kwargs}` -> dataset instance."""
    kwargs = dict(section)
    name = kwargs.pop("name", None)
    if name is None:
        raise PlscError(f"{where}.name is missing")
    if "seed" in DATASETS.parameters(name):
        kwargs.setdefault("seed", seed)
    return DATASETS.build(name, where=f"{where}.name", **kwargs)


def build_loader(dataset, sampler_section, loader_section, seed=0):
    """Wrap `dataset` in the configured batch sampler and a (multi-worker) paddle DataLoader."""
    sampler_kwargs = dict(sampler_section)
    name = sampler_kwargs.pop("name", "DistributedBatchSampler")
    if name not in SAMPLERS:
        raise PlscError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    if name == "DistributedBatchSampler":
        sampler_kwargs["seed"] = seed
    batch_sampler = SAMPLERS[name](dataset, **sampler_kwargs)
    loader_kwargs = dict(loader_section or {})
    return CheckedLoader(dataset, batch_sampler, num_workers=int(loader_kwargs.get("num_workers", 0)),
                         use_shared_memory=bool(loader_kwargs.get("use_shared_memory", True)))
