"""Clean a training set with a Sub-center ArcFace checkpoint (Deng et al., ECCV 2020).

    python tools/subcenter_clean.py -c configs/synthetic_subcenter.yaml \
        --checkpoint output/synthetic_subcenter/IResNet/latest --out_dir output/subcenter_clean

Embeds every image of DataLoader.Train.dataset (without random augmentation), finds each class's
dominant sub-centre, and writes to --out_dir: noisy.txt (images whose angle to the dominant
sub-centre exceeds --threshold degrees), clean_label.txt (the kept images as a label list to train
on) and dominant_centers.npy (the class layer with the non-dominant sub-centres dropped).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.checkpoint import load_backbone_state, load_weights, read_global_table  # noqa: E402
from plsc.cli import run_reporting_user_errors  # noqa: E402
from plsc.data import build_dataset, build_loader  # noqa: E402
from plsc.errors import PlscError  # noqa: E402
from plsc.heads.subcenter_clean import (DEFAULT_THRESHOLD_DEGREES, clean_with_subcenters,  # noqa: E402
                                        split_subcenters, write_cleaning_report)
from plsc.registry import HEADS  # noqa: E402


def deterministic_dataset_section(section):
    """A dataset config without its random augmentations (PLSC names them Rand*: RandFlipImage, ...)."""
    section = dict(section)
    section["transform_ops"] = [op for op in section.get("transform_ops") or []
                                if not next(iter(op)).startswith("Rand")]
    return section


def embed_training_set(config, checkpoint, batch_size=128):
    """(dataset, embeddings [N, D]) of `DataLoader.Train.dataset` under the checkpoint's backbone."""
    from plsc.engine.build import build_backbone
    from plsc.engine.evaluator import embed_dataset

    state, path = load_weights(checkpoint)
    backbone = build_backbone(config.Model)
    load_backbone_state(backbone, state, path)
    dataset = build_dataset(deterministic_dataset_section(config.DataLoader.Train.dataset), "DataLoader.Train.dataset")
    loader = build_loader(dataset, {"name": "BatchSampler", "batch_size": batch_size}, {"num_workers": 0})
    return dataset, embed_dataset(backbone, loader, flip_test=False)


def clean_from_checkpoint(config, checkpoint, out_dir, threshold_degrees=DEFAULT_THRESHOLD_DEGREES, batch_size=128):
    """Embed the training set, find each class's dominant sub-centre and the noisy images, write the report.

    Returns (CleaningResult, {what: path}).
    """
    pfc = config.Model.get("pfc_config") or {}
    head = pfc.get("name") or "PartialFC"
    num_subcenters = int(pfc.get("num_subcenters", HEADS.parameters(head).get("num_subcenters", 1)))
    if num_subcenters < 2:
        raise PlscError("Model.pfc_config.num_subcenters is below 2: the checkpoint has no sub-centres to clean "
                        "with (train with pfc_config.name: SubCenterPartialFC)")
    subcenters = split_subcenters(read_global_table(checkpoint), num_subcenters)
    dataset, embeddings = embed_training_set(config, checkpoint, batch_size)
    result = clean_with_subcenters(subcenters, embeddings, dataset.labels, threshold_degrees)
    return result, write_cleaning_report(result, dataset, out_dir, threshold_degrees)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="subcenter_clean", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True, help="the training config (YAML)")
    parser.add_argument("-o", "--override", action="append", default=[], help="override a config key")
    parser.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: Global.checkpoint)")
    parser.add_argument("--out_dir", required=True, help="where to write the report")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_DEGREES, help="angle to the dominant sub-centre, degrees")
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args(argv)

    def run():
        from plsc.config import load_config

        config = load_config(args.config, args.override)
        checkpoint = args.checkpoint or config.Global.get("checkpoint")
        if not checkpoint:
            raise PlscError("give --checkpoint PREFIX (e.g. output/synthetic_subcenter/IResNet/latest)")
        result, written = clean_from_checkpoint(config, checkpoint, args.out_dir, args.threshold, args.batch_size)
        kept = int((~result.noisy).sum())
        print(f"{len(result.noisy)} images, {kept} kept, {int(result.noisy.sum())} noisy "
              f"(> {args.threshold} degrees from their class's dominant sub-centre)")
        for what, path in written.items():
            print(f"{what}: {path}")

    run_reporting_user_errors("subcenter_clean", run)


if __name__ == "__main__":
    main()
