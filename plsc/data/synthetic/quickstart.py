"""Generate the quickstart data set once and reuse it: `root/train` and `root/verification`.

Each set gets a manifest written after its last file. A set is reused only if its manifest exists
and records the same generation parameters, so an interrupted or differently-sized generation is
redone rather than trusted.
"""
import json
import os

from plsc.data.synthetic.render import RENDER_VERSION
from plsc.data.synthetic.writers import (VERIFICATION_IDENTITY_OFFSET, write_image_folder, write_text_atomic,
                                         write_verification_pairs)
from plsc.errors import PlscError

MANIFEST_NAME = "synthetic_manifest.json"


def ensure_quickstart_data(root, num_classes, images_per_class, num_pairs, seed=0, num_verification_identities=None,
                           jitter=1.0, num_workers=0, force=False, log=None):
    """Write the training folder and the pair set under `root` unless complete ones exist; return paths.

    The result has `train_dir`, `train_label_file`, `verification_dir`, `verification_label_file`
    and `generated` (names of the sets written by this call). `log(message)` hears about each set
    that is generated. One process should call this (e.g. rank 0, then a barrier).
    """
    if num_classes > VERIFICATION_IDENTITY_OFFSET:
        raise PlscError(f"num_classes {num_classes} would reach the verification identities "
                        f"(indices from {VERIFICATION_IDENTITY_OFFSET})")
    if num_verification_identities is None:
        # About one positive and one negative pair per identity.
        num_verification_identities = max(2, num_pairs // 2)
    train_dir, verification_dir = os.path.join(root, "train"), os.path.join(root, "verification")
    train_parameters = {"kind": "image_folder", "render_version": RENDER_VERSION, "seed": seed,
                        "num_classes": num_classes, "images_per_class": images_per_class, "jitter": jitter,
                        "image_format": "jpg", "identity_offset": 0}
    verification_parameters = {"kind": "verification_pairs", "render_version": RENDER_VERSION, "seed": seed,
                               "num_identities": num_verification_identities, "num_pairs": num_pairs,
                               "jitter": jitter, "identity_offset": VERIFICATION_IDENTITY_OFFSET}
    generated = []
    if force or not is_complete(train_dir, train_parameters):
        _announce(log, f"generating synthetic training faces: {num_classes} classes x {images_per_class} "
                       f"images -> {train_dir}")
        _generate(train_dir, train_parameters, lambda: write_image_folder(
            train_dir, num_classes, images_per_class, seed=seed, jitter=jitter, num_workers=num_workers))
        generated.append("train")
    if force or not is_complete(verification_dir, verification_parameters):
        _announce(log, f"generating synthetic verification pairs: {num_pairs} pairs of "
                       f"{num_verification_identities} held-out identities -> {verification_dir}")
        _generate(verification_dir, verification_parameters, lambda: write_verification_pairs(
            verification_dir, num_verification_identities, num_pairs, seed=seed, jitter=jitter,
            num_workers=num_workers))
        generated.append("verification")
    return {"train_dir": train_dir, "train_label_file": os.path.join(train_dir, "label.txt"),
            "verification_dir": verification_dir,
            "verification_label_file": os.path.join(verification_dir, "label.txt"), "generated": generated}


def is_complete(set_dir, parameters):
    """True if `set_dir` holds a finished set generated with exactly `parameters`."""
    manifest_path = os.path.join(set_dir, MANIFEST_NAME)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    # Compare through JSON so tuples/lists and ints/floats compare as they were stored.
    return (manifest.get("parameters") == json.loads(json.dumps(parameters))
            and os.path.isfile(os.path.join(set_dir, "label.txt")))


def _generate(set_dir, parameters, write):
    """Drop the old manifest first, write the set, then record the manifest as the last file."""
    manifest_path = os.path.join(set_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    summary = write()
    write_text_atomic(manifest_path, json.dumps({"parameters": parameters, "summary": summary}, indent=1))


def _announce(log, message):
    if log is not None:
        log(message)
