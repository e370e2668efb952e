"""`python -m plsc.data.synthetic --out DIR ...`: write a synthetic training folder and pair set."""
import argparse
import sys

from plsc.data.synthetic.quickstart import ensure_quickstart_data
from plsc.errors import PlscError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m plsc.data.synthetic",
                                     description="Write procedural synthetic faces: DIR/train (image folder + "
                                                 "label.txt) and DIR/verification (held-out identity pairs).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-classes", type=int, default=100, help="training identities")
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=400, help="verification pairs (half positive)")
    parser.add_argument("--pair-identities", type=int, default=None,
                        help="held-out identities in the pairs (default: pairs / 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=1.0, help="intra-class variation strength")
    parser.add_argument("--num-workers", type=int, default=0, help="processes (output is identical for any value)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete set exists")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        paths = ensure_quickstart_data(args.out, args.num_classes, args.images_per_class, args.pairs, seed=args.seed,
                                       num_verification_identities=args.pair_identities, jitter=args.jitter,
                                       num_workers=args.num_workers, force=args.force, log=print)
    except PlscError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not paths["generated"]:
        print(f"complete synthetic sets already in {args.out}; nothing to do (--force regenerates)")
    print(f"train: {paths['train_label_file']}\nverification: {paths['verification_label_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
