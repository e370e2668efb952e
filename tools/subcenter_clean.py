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

from plsc.cli import run_reporting_user_errors  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="subcenter_clean", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True, help="the training config (YAML)")
    parser.add_argument("-o", "--override", action="append", default=[], help="override a config key")
    parser.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: Global.checkpoint)")
    parser.add_argument("--out_dir", required=True, help="where to write the report")
    parser.add_argument("--threshold", type=float, default=75.0, help="angle to the dominant sub-centre, degrees")
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args(argv)

    def run():
        from plsc.config import load_config
        from plsc.errors import PlscError
        from plsc.heads.subcenter_clean import clean_from_checkpoint

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
