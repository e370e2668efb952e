"""Group-labelled synthetic faces for fairness evaluation: RFW-style per-group `.bin` pair sets and a
folder of identities with a group per identity (`label.txt` + `groups.txt`).

Each group draws its identities in its own skin-tone and geometry ranges (identity.GROUP_RANGES),
from identity indices no other set uses: group g's k-th identity is
`FAIRNESS_IDENTITY_OFFSET + g * GROUP_STRIDE + k`, with g the group's position in GROUPS, so a
group's people do not change when other groups are added or left out.

    python -m plsc.data.synthetic.fairness --out DIR [--groups group_a group_b ...]
"""
import argparse
import os
import sys

from plsc.data.progress import NO_PROGRESS
from plsc.data.synthetic.identity import GROUPS, make_identity
from plsc.data.synthetic.quickstart import SyntheticSet, ensure_sets
from plsc.data.synthetic.render import RENDER_VERSION, render_face
from plsc.data.synthetic.streams import check_seed, stream_rng
from plsc.data.synthetic.writers import (VERIFICATION_IDENTITY_OFFSET, encode_image, plan_verification_pairs,
                                         render_train_image, write_text_atomic)
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError

# Above the quickstart's training classes, its held-out pair identities and its `.bin` sets
# (which take the millions from VERIFICATION_IDENTITY_OFFSET up to 5 million).
FAIRNESS_IDENTITY_OFFSET = 10 * VERIFICATION_IDENTITY_OFFSET
GROUP_STRIDE = 100_000
# The identity folder takes each group's identities from here on, apart from the pair sets' people.
FOLDER_IDENTITY_START = GROUP_STRIDE // 2
# Stream tag of the pair images (streams.py uses 1-4); keeps them apart from the quickstart pairs.
GROUP_PAIR_IMAGE_STREAM = 101
# The groups that differ from the neutral population, as RFW's four.
DEFAULT_GROUPS = tuple(group for group in GROUPS if group != "neutral")
GROUP_FILE_NAME = "groups.txt"


def group_identity_index(group, k):
    """Global identity index of the k-th identity of `group`."""
    if group not in GROUPS:
        raise PlscError(f"unknown synthetic face group '{group}'; known: {', '.join(GROUPS)}")
    if not 0 <= k < GROUP_STRIDE:
        raise PlscError(f"at most {GROUP_STRIDE} identities per group, asked for index {k}")
    return FAIRNESS_IDENTITY_OFFSET + GROUPS.index(group) * GROUP_STRIDE + k


def write_group_bin(out_path, group, num_identities, num_pairs, seed=0, jitter=1.0, progress=NO_PROGRESS):
    """An LFW-style `.bin` of `num_pairs` pairs (half positive) of `group`'s people, telling `progress`
    (plsc.data.progress) of each image; returns issame [P]."""
    check_seed(seed)
    if num_identities > FOLDER_IDENTITY_START:
        raise PlscError(f"a pair set may use at most {FOLDER_IDENTITY_START} identities, got {num_identities}")
    plan = plan_verification_pairs(num_identities, num_pairs, seed, identity_offset=group_identity_index(group, 0))
    images = []
    for pair_index, (first, second, _) in enumerate(plan):
        for side, identity_index in enumerate((first, second)):
            rng = stream_rng(GROUP_PAIR_IMAGE_STREAM, seed, GROUPS.index(group), pair_index, side)
            image, _ = render_face(make_identity(seed, identity_index, group), rng, jitter)
            images.append(encode_image(image, "jpg"))
            progress.update()
    issame = [same for _, _, same in plan]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_bin(out_path, images, issame)
    return issame


def write_group_folder(out_dir, groups, identities_per_group, images_per_identity, seed=0, jitter=1.0,
                       progress=NO_PROGRESS):
    """`out_dir/images/<label>/<k>.jpg`, `label.txt` (path<TAB>label) and `groups.txt` (label group).

    Labels are consecutive, group by group in the order given; `progress` hears of each image.
    Returns a summary dict.
    """
    check_seed(seed)
    lines, group_lines = [], []
    for group_position, group in enumerate(groups):
        for k in range(identities_per_group):
            label = group_position * identities_per_group + k
            identity_index = group_identity_index(group, FOLDER_IDENTITY_START + k)
            identity = make_identity(seed, identity_index, group)
            os.makedirs(os.path.join(out_dir, "images", f"{label:06d}"), exist_ok=True)
            for image_index in range(images_per_identity):
                image, _ = render_train_image(seed, identity_index, image_index, jitter=jitter, identity=identity)
                path = f"images/{label:06d}/{image_index:04d}.jpg"
                with open(os.path.join(out_dir, path), "wb") as handle:
                    handle.write(encode_image(image, "jpg"))
                lines.append(f"{path}\t{label}\n")
                progress.update()
            group_lines.append(f"{label} {group}\n")
    write_text_atomic(os.path.join(out_dir, GROUP_FILE_NAME), "".join(group_lines))
    write_text_atomic(os.path.join(out_dir, "label.txt"), "".join(lines))
    return {"root": str(out_dir), "num_identities": len(group_lines), "num_images": len(lines)}


def group_sets(root, groups=DEFAULT_GROUPS, num_pairs=600, pair_identities=300, folder_identities=50,
               images_per_identity=8, seed=0, jitter=1.0):
    """The SyntheticSets `root/pairs/<group>.bin` and `root/folder/` (see ensure_fairness_data)."""
    groups = tuple(groups)
    for group in groups:
        group_identity_index(group, 0)  # unknown names fail before anything is written
    pairs_dir, folder_dir = os.path.join(root, "pairs"), os.path.join(root, "folder")
    common = {"render_version": RENDER_VERSION, "seed": seed, "jitter": jitter, "groups": list(groups)}
    pair_parameters = {"kind": "group_pairs", "num_pairs": num_pairs, "pair_identities": pair_identities, **common}
    folder_parameters = {"kind": "group_folder", "identities_per_group": folder_identities,
                         "images_per_identity": images_per_identity, **common}

    def write_pairs(progress):
        for group in groups:
            write_group_bin(os.path.join(pairs_dir, f"{group}.bin"), group, pair_identities, num_pairs, seed, jitter,
                            progress)
        return {"groups": list(groups)}

    def write_folder(progress):
        return write_group_folder(folder_dir, groups, folder_identities, images_per_identity, seed, jitter, progress)

    return [
        SyntheticSet("group_pairs", pairs_dir, pair_parameters, tuple(f"{group}.bin" for group in groups),
                     f"synthetic group pair sets: {len(groups)} x {num_pairs} pairs -> {pairs_dir}",
                     len(groups) * 2 * num_pairs, write_pairs),
        SyntheticSet("group_folder", folder_dir, folder_parameters, ("label.txt", GROUP_FILE_NAME),
                     f"synthetic group identity folder: {len(groups)} x {folder_identities} identities x "
                     f"{images_per_identity} images -> {folder_dir}",
                     len(groups) * folder_identities * images_per_identity, write_folder),
    ]


def ensure_fairness_data(root, groups=DEFAULT_GROUPS, num_pairs=600, pair_identities=300, folder_identities=50,
                         images_per_identity=8, seed=0, jitter=1.0, force=False, log=None):
    """Write `root/pairs/<group>.bin` and `root/folder/` unless complete ones exist; return their paths.

    Reuses a set only when its manifest records the same parameters (as the quickstart data does).
    """
    groups = tuple(groups)
    ensure_sets(group_sets(root, groups, num_pairs, pair_identities, folder_identities, images_per_identity, seed,
                           jitter), force, log)
    folder_dir = os.path.join(root, "folder")
    return {"bins": {group: os.path.join(root, "pairs", f"{group}.bin") for group in groups}, "folder": folder_dir,
            "label_file": os.path.join(folder_dir, "label.txt"),
            "group_file": os.path.join(folder_dir, GROUP_FILE_NAME)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m plsc.data.synthetic.fairness",
                                     description="Write group-labelled synthetic faces: DIR/pairs/<group>.bin "
                                                 "(RFW-style pair sets) and DIR/folder (label.txt + groups.txt).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--groups", nargs="+", default=list(DEFAULT_GROUPS), help=f"among {', '.join(GROUPS)}")
    parser.add_argument("--pairs", type=int, default=600, help="pairs per group (half positive)")
    parser.add_argument("--pair-identities", type=int, default=300, help="identities per group in the pair sets")
    parser.add_argument("--folder-identities", type=int, default=50, help="identities per group in the folder")
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=1.0, help="intra-class variation strength")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete sets exist")
    args = parser.parse_args(argv)
    try:
        paths = ensure_fairness_data(args.out, args.groups, args.pairs, args.pair_identities, args.folder_identities,
                                     args.images_per_identity, args.seed, args.jitter, args.force, log=print)
    except PlscError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("pair sets: " + ", ".join(f"{group}={path}" for group, path in paths["bins"].items()))
    print(f"folder: {paths['folder']} (label.txt, {GROUP_FILE_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
