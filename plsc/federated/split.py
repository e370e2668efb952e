"""FedFR's data split: one training set -> a public set, N client folders and a shared `local_veri`.

    python -m plsc.federated.split --source DATA --out_dir OUT [--num_clients 40 ...]

The identities are shuffled once (fixed seed). The first half of that order gives the federated
identities: those with fl_min_images < #images < fl_max_images, the first num_clients x
ids_per_client of them; client k owns the k-th block, relabelled 0..ids_per_client-1. Each
identity's first veri_per_id images (record order) go to `local_veri` (labelled with the
federated index k * ids_per_client + j), the rest are client k's training images and gallery.
The second half gives the public identities: public_min_images < #images < public_max_images,
the first num_public of them, relabelled 0..num_public-1. Every output is a folder with
`label.txt` (`relative/path<TAB>label`) that FaceIdentificationDataset reads; `split.json`
records the parameters and counts and is written last.
"""
import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass

import numpy as np

from plsc.errors import PlscError

SPLIT_MANIFEST = "split.json"
CLIENT_MANIFEST = "client.json"  # the client's identities and their labels in local_veri
PUBLIC_DIR, CLIENTS_DIR, VERI_DIR = "public", "clients", "local_veri"


def client_dir_name(index):
    return f"client_{index:03d}"


@dataclass(frozen=True)
class SplitParameters:
    """Every count and threshold of the split; defaults are the published MS1M protocol's."""

    num_clients: int = 40
    ids_per_client: int = 100
    veri_per_id: int = 40
    fl_min_images: int = 100     # exclusive bounds, as published: 100 < #images < 110
    fl_max_images: int = 110
    num_public: int = 6000
    public_min_images: int = 60  # 60 < #images < 80
    public_max_images: int = 80
    seed: int = 100


class SourceImages:
    """A training set's images in record order: labels [N] and the bytes (or file) of image i."""

    def __init__(self, source, label_file=None):
        if not os.path.exists(source):
            raise PlscError(f"--source not found: {source}")
        if os.path.isfile(os.path.join(source, "train.rec")):
            from plsc.data.dataset.mx_record import MXRecordDataset

            self.dataset = MXRecordDataset(source)
            self.paths = None
        else:
            from plsc.data.dataset.face_identification import FaceIdentificationDataset

            label_file = label_file or os.path.join(source, "label.txt")
            self.dataset = FaceIdentificationDataset(source, label_file)
            self.paths = self.dataset.paths
        self.labels = np.asarray(self.dataset.labels, dtype=np.int64)

    def extension(self, index):
        if self.paths is None:
            return ".jpg"
        return os.path.splitext(self.paths[index])[1] or ".jpg"

    def copy(self, index, destination):
        """Write image `index` to `destination`: a hard link when possible, else a copy or the record bytes."""
        if self.paths is None:
            with open(destination, "wb") as handle:
                handle.write(self.dataset.read_bytes(index))
            return
        source = os.path.join(self.dataset.image_root, self.paths[index])
        try:
            os.link(source, destination)
        except OSError:
            shutil.copyfile(source, destination)


def plan_split(labels, parameters):
    """Which images go where: {'public': [(index, label)], 'clients': [[(index, label)]], 'veri': [...]}.

    labels: [N] int64 identity of each image in record order. Raises PlscError when the set has too
    few identities in the asked ranges (nothing has been written then).
    """
    p = parameters
    identities, counts = np.unique(labels, return_counts=True)
    order = np.random.default_rng(p.seed).permutation(identities.size)
    half = identities.size // 2
    count_of = dict(zip(identities.tolist(), counts.tolist()))
    fl_pool = [int(identities[i]) for i in order[:half]]
    public_pool = [int(identities[i]) for i in order[half:]]
    fl_ids = [i for i in fl_pool if p.fl_min_images < count_of[i] < p.fl_max_images]
    public_ids = [i for i in public_pool if p.public_min_images < count_of[i] < p.public_max_images]
    needed_fl = p.num_clients * p.ids_per_client
    if len(fl_ids) < needed_fl:
        raise PlscError(f"too few identities for the federated part: {needed_fl} needed "
                        f"(--num_clients {p.num_clients} x --ids_per_client {p.ids_per_client}) with "
                        f"{p.fl_min_images} < #images < {p.fl_max_images} in the first half of the shuffled "
                        f"identities, found {len(fl_ids)} (of {identities.size} identities)")
    if len(public_ids) < p.num_public:
        raise PlscError(f"too few identities for the public part: --num_public {p.num_public} needed with "
                        f"{p.public_min_images} < #images < {p.public_max_images} in the second half of the "
                        f"shuffled identities, found {len(public_ids)}")
    if p.veri_per_id >= p.fl_min_images + 1:
        raise PlscError(f"--veri_per_id {p.veri_per_id} leaves no training images for identities with "
                        f"{p.fl_min_images + 1} images (--fl_min_images {p.fl_min_images})")
    images_of = {}
    for index, label in enumerate(labels.tolist()):
        images_of.setdefault(label, []).append(index)
    plan = {"public": [], "clients": [[] for _ in range(p.num_clients)], "veri": []}
    for new_label, identity in enumerate(public_ids[:p.num_public]):
        plan["public"].extend((index, new_label) for index in images_of[identity])
    for fl_label, identity in enumerate(fl_ids[:needed_fl]):
        client, local_label = divmod(fl_label, p.ids_per_client)
        images = images_of[identity]
        plan["veri"].extend((index, fl_label) for index in images[:p.veri_per_id])
        plan["clients"][client].extend((index, local_label) for index in images[p.veri_per_id:])
    return plan


def write_set(images, entries, out_dir):
    """Images of `entries` [(index, label)] -> out_dir/images/<label>/<k>.ext + out_dir/label.txt."""
    lines, written = [], {}
    for index, label in entries:
        number = written.get(label, 0)
        written[label] = number + 1
        relative = os.path.join("images", f"{label:06d}", f"{number:04d}{images.extension(index)}")
        destination = os.path.join(out_dir, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.exists(destination):
            os.remove(destination)
        images.copy(index, destination)
        lines.append(f"{relative}\t{label}\n")
    temporary = os.path.join(out_dir, f"label.txt.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    os.replace(temporary, os.path.join(out_dir, "label.txt"))
    return len(lines)


def split_dataset(source, out_dir, parameters=SplitParameters(), label_file=None, log=print):
    """Write the FedFR layout of training set `source` (folder + label.txt, or a .rec folder) to `out_dir`.

    Returns the summary also stored in `out_dir/split.json`.
    """
    images = SourceImages(source, label_file)
    plan = plan_split(images.labels, parameters)  # raises before anything is written
    manifest_path = os.path.join(out_dir, SPLIT_MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    summary = {"source": os.path.abspath(source), "parameters": asdict(parameters),
               "public": {"identities": parameters.num_public,
                          "images": write_set(images, plan["public"], os.path.join(out_dir, PUBLIC_DIR))},
               "clients": [],
               "local_veri": {"identities": parameters.num_clients * parameters.ids_per_client,
                              "images": write_set(images, plan["veri"], os.path.join(out_dir, VERI_DIR))}}
    for client, entries in enumerate(plan["clients"]):
        directory = os.path.join(out_dir, CLIENTS_DIR, client_dir_name(client))
        about = {"name": client_dir_name(client), "identities": parameters.ids_per_client,
                 "first_veri_label": client * parameters.ids_per_client,
                 "images": write_set(images, entries, directory)}
        write_json(os.path.join(directory, CLIENT_MANIFEST), about)
        summary["clients"].append(about)
    write_json(manifest_path, summary)
    log(format_summary(summary, out_dir))
    return summary


def write_json(path, content):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1)
    os.replace(temporary, path)


def read_client_manifest(client_dir):
    """{'name', 'identities', 'first_veri_label', 'images'} of a client folder written by the split."""
    path = os.path.join(client_dir, CLIENT_MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise PlscError(f"{path}: cannot read the client's split record ({error})") from None


def read_split(out_dir):
    """The summary of a finished split in `out_dir`, or None when there is none (or it is unfinished)."""
    try:
        with open(os.path.join(out_dir, SPLIT_MANIFEST), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def format_summary(summary, out_dir):
    client_images = [client["images"] for client in summary["clients"]]
    return (f"split of {summary['source']} -> {out_dir}\n"
            f"  public:     {summary['public']['identities']} identities, {summary['public']['images']} images\n"
            f"  clients:    {len(client_images)} x {summary['parameters']['ids_per_client']} identities, "
            f"{min(client_images)}..{max(client_images)} training images each\n"
            f"  local_veri: {summary['local_veri']['identities']} identities, "
            f"{summary['local_veri']['images']} images")


def parse_args(argv):
    defaults = SplitParameters()
    parser = argparse.ArgumentParser(prog="python -m plsc.federated.split", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="training set: folder with label.txt, or folder with train.rec")
    parser.add_argument("--label_file", default=None, help="label list of a folder source (default SOURCE/label.txt)")
    parser.add_argument("--out_dir", required=True)
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name}", type=int, default=value, help=f"default {value}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    parameters = SplitParameters(**{name: getattr(args, name) for name in asdict(SplitParameters())})
    try:
        split_dataset(args.source, args.out_dir, parameters, args.label_file)
    except PlscError as error:
        print(f"plsc.federated.split: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
