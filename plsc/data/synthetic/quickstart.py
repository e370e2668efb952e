"""Generate the quickstart data sets once and reuse them, in the formats a config asks for.

`folder`: `root/train` (images + label.txt) and `root/verification` (pair folder);
`rec`: `root/train_rec` (`train.rec`, `train.idx`, `property`, the face-release layout);
`bin`: `root/bin/{lfw,cfp_fp,agedb_30}.bin`, three LFW-style pair sets of different held-out identities.

Each set gets a manifest written after its last file. A set is reused only if its manifest exists,
records the same generation parameters and its files are there, so an interrupted or
differently-sized generation is redone rather than trusted. While a set is written, its progress
goes to the caller's log: a tqdm bar when stderr is a terminal, a plain line every 10 % otherwise.
"""
import json
import os
from collections import namedtuple

from plsc.data.progress import start_progress
from plsc.data.synthetic.render import RENDER_VERSION
from plsc.data.synthetic.writers import (VERIFICATION_IDENTITY_OFFSET, write_image_folder, write_text_atomic,
                                         write_verification_pairs)
from plsc.errors import PlscError

MANIFEST_NAME = "synthetic_manifest.json"

# The `.bin` sets: name -> (added to the seed, first identity index). Each range holds a million
# identities, above the training classes and the folder pair set, so no two sets share a person.
BIN_SETS = {"lfw": (1, 2_000_000), "cfp_fp": (2, 3_000_000), "agedb_30": (3, 4_000_000)}
BIN_IDENTITY_RANGE = 1_000_000

SyntheticSet = namedtuple("SyntheticSet", ["name", "directory", "parameters", "files", "description", "num_images",
                                           "write"])
SyntheticSet.__doc__ = ("One generated set: where it goes, what defines it, the files it must have, how many images "
                        "it holds, and how to write it (`write(progress)` -> summary dict).")


def folder_sets(root, request):
    """The training image folder and the verification pair folder."""
    train_dir, verification_dir = os.path.join(root, "train"), os.path.join(root, "verification")
    seed, jitter, num_workers = request["seed"], request["jitter"], request["num_workers"]
    num_classes, images_per_class = request["num_classes"], request["images_per_class"]
    num_identities, num_pairs = request["num_verification_identities"], request["num_pairs"]
    train_parameters = {"kind": "image_folder", "render_version": RENDER_VERSION, "seed": seed,
                        "num_classes": num_classes, "images_per_class": images_per_class, "jitter": jitter,
                        "image_format": "jpg", "identity_offset": 0}
    verification_parameters = {"kind": "verification_pairs", "render_version": RENDER_VERSION, "seed": seed,
                               "num_identities": num_identities, "num_pairs": num_pairs,
                               "jitter": jitter, "identity_offset": VERIFICATION_IDENTITY_OFFSET}
    return [
        SyntheticSet("train", train_dir, train_parameters, ("label.txt",),
                     f"synthetic training faces: {num_classes} classes x {images_per_class} images -> {train_dir}",
                     num_classes * images_per_class,
                     lambda progress: write_image_folder(train_dir, num_classes, images_per_class, seed=seed,
                                                         jitter=jitter, num_workers=num_workers, progress=progress)),
        SyntheticSet("verification", verification_dir, verification_parameters, ("label.txt",),
                     f"synthetic verification pairs: {num_pairs} pairs of {num_identities} held-out identities "
                     f"-> {verification_dir}", 2 * num_pairs,
                     lambda progress: write_verification_pairs(verification_dir, num_identities, num_pairs, seed=seed,
                                                               jitter=jitter, num_workers=num_workers,
                                                               progress=progress)),
    ]


def recordio_sets(root, request):
    """The training images as a face-release `.rec` (same pictures as the training folder)."""
    from plsc.data.synthetic.formats import write_recordio

    rec_dir = os.path.join(root, "train_rec")
    seed, num_classes, images_per_class = request["seed"], request["num_classes"], request["images_per_class"]
    parameters = {"kind": "recordio", "render_version": RENDER_VERSION, "seed": seed, "num_classes": num_classes,
                  "images_per_class": images_per_class, "jitter": 1.0, "layout": "identity_records"}
    return [SyntheticSet("train_rec", rec_dir, parameters, ("train.rec", "train.idx", "property"),
                         f"synthetic training faces as RecordIO: {num_classes} classes x {images_per_class} "
                         f"images -> {rec_dir}", num_classes * images_per_class,
                         lambda progress: write_recordio(rec_dir, num_classes, images_per_class, seed=seed,
                                                         progress=progress))]


def bin_sets(root, request):
    """Three verification `.bin` files, each of `num_pairs` pairs with its own seed and identities."""
    from plsc.data.synthetic.formats import write_bin

    bin_dir = os.path.join(root, "bin")
    seed, num_pairs = request["seed"], request["num_pairs"]
    # Every pair takes two fresh identities (formats.pair_plan).
    if 2 * num_pairs > BIN_IDENTITY_RANGE:
        raise PlscError(f"num_pairs {num_pairs} needs more than the {BIN_IDENTITY_RANGE} identities "
                        f"of a synthetic .bin set")
    plan = {name: {"seed": seed + seed_step, "identity_offset": offset}
            for name, (seed_step, offset) in BIN_SETS.items()}
    parameters = {"kind": "verification_bins", "render_version": RENDER_VERSION, "num_pairs": num_pairs,
                  "jitter": 1.0, "sets": plan}

    def write(progress):
        for name, settings in plan.items():
            write_bin(os.path.join(bin_dir, f"{name}.bin"), num_pairs, settings["seed"], settings["identity_offset"],
                      progress)
        return {"num_pairs": num_pairs, "files": [f"{name}.bin" for name in plan]}

    return [SyntheticSet("bin", bin_dir, parameters, tuple(f"{name}.bin" for name in plan),
                         f"synthetic verification .bin sets {', '.join(plan)}: {num_pairs} pairs each -> {bin_dir}",
                         len(plan) * 2 * num_pairs, write)]


# The fairness sets keep the group generator's own seed: the same pictures whatever the training seed.
FAIRNESS_SEED = 0


def fairness_sets(root, request):
    """Per-group `.bin` pair sets (`fairness/pairs/<group>.bin`) and a group-labelled identity folder
    (`fairness/folder/` with label.txt and groups.txt), for GroupVerification, InstanceFairness, Recall."""
    from plsc.data.synthetic.fairness import group_sets

    return group_sets(os.path.join(root, "fairness"), seed=FAIRNESS_SEED)


# Config `SyntheticData.formats` entries -> the sets they stand for.
FORMATS = {"folder": folder_sets, "rec": recordio_sets, "bin": bin_sets, "fairness": fairness_sets}


def ensure_quickstart_data(root, num_classes, images_per_class, num_pairs, seed=0, num_verification_identities=None,
                           jitter=1.0, num_workers=0, formats=("folder",), force=False, log=None):
    """Write the sets of `formats` under `root` unless complete ones exist; return their paths.

    The result has `train_dir`, `train_label_file`, `verification_dir`, `verification_label_file`,
    `rec_dir`, `bin_paths` ({set name: path}) and `generated` (names of the sets written by this
    call). `log(message)` hears about each set that is generated. One process should call this
    (e.g. rank 0, then a barrier).
    """
    if num_classes > VERIFICATION_IDENTITY_OFFSET:
        raise PlscError(f"num_classes {num_classes} would reach the verification identities "
                        f"(indices from {VERIFICATION_IDENTITY_OFFSET})")
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise PlscError(f"unknown synthetic data format {unknown[0]!r}; known: {', '.join(FORMATS)}")
    if jitter != 1.0 and set(formats) - {"folder"}:
        raise PlscError(f"synthetic 'rec' and 'bin' sets are rendered at jitter 1.0; got jitter {jitter}")
    if num_verification_identities is None:
        # About one positive and one negative pair per identity.
        num_verification_identities = max(2, num_pairs // 2)
    request = {"num_classes": num_classes, "images_per_class": images_per_class, "num_pairs": num_pairs,
               "seed": seed, "num_verification_identities": num_verification_identities, "jitter": jitter,
               "num_workers": num_workers}
    synthetic_sets = [synthetic_set for format_name in dict.fromkeys(formats)
                      for synthetic_set in FORMATS[format_name](root, request)]
    generated = ensure_sets(synthetic_sets, force, log)
    train_dir, verification_dir = os.path.join(root, "train"), os.path.join(root, "verification")
    return {"train_dir": train_dir, "train_label_file": os.path.join(train_dir, "label.txt"),
            "verification_dir": verification_dir,
            "verification_label_file": os.path.join(verification_dir, "label.txt"),
            "rec_dir": os.path.join(root, "train_rec"),
            "bin_paths": {name: os.path.join(root, "bin", f"{name}.bin") for name in BIN_SETS},
            "generated": generated}


def ensure_sets(synthetic_sets, force=False, log=None):
    """Write each SyntheticSet unless a complete one exists (always with `force`); returns the names written.

    `log(message)` hears about each set that is generated and about its progress.
    """
    generated = []
    for synthetic_set in synthetic_sets:
        if force or not is_complete(synthetic_set.directory, synthetic_set.parameters, synthetic_set.files):
            if log is not None:
                log(f"generating {synthetic_set.description}")
            with start_progress(synthetic_set.num_images, f"writing {synthetic_set.name}", log) as progress:
                _generate(synthetic_set, progress)
            generated.append(synthetic_set.name)
    return generated


def is_complete(set_dir, parameters, files=("label.txt",)):
    """True if `set_dir` holds a finished set generated with exactly `parameters`, with all its `files`."""
    manifest_path = os.path.join(set_dir, MANIFEST_NAME)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    # Compare through JSON so tuples/lists and ints/floats compare as they were stored.
    return (manifest.get("parameters") == json.loads(json.dumps(parameters))
            and all(os.path.isfile(os.path.join(set_dir, name)) for name in files))


def _generate(synthetic_set, progress):
    """Drop the old manifest first, write the set, then record the manifest as the last file."""
    manifest_path = os.path.join(synthetic_set.directory, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    summary = synthetic_set.write(progress)
    write_text_atomic(manifest_path, json.dumps({"parameters": synthetic_set.parameters, "summary": summary},
                                                indent=1))
