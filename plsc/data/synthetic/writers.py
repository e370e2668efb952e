"""Write synthetic datasets to disk: a training image folder and a verification pair set.

Layouts are PLSC's: `label.txt` lines are `relative/path<TAB>label` for training
(FaceIdentificationDataset) and `path_0<TAB>path_1<TAB>issame` for pairs
(FaceVerificationDataset). Every image has its own random stream, so the bytes written do not
depend on `num_workers`.
"""
import multiprocessing
import numbers
import os
import signal

import cv2

from plsc.data.progress import NO_PROGRESS
from plsc.data.synthetic.identity import make_identity
from plsc.data.synthetic.render import render_face
from plsc.data.synthetic.streams import check_seed, pair_image_rng, pair_plan_rng, train_image_rng
from plsc.errors import PlscError

# Verification identities are drawn from this index on, far above any training set's classes,
# so a verification pair never shows a person seen in training.
VERIFICATION_IDENTITY_OFFSET = 1_000_000
# Extension and cv2 encoder settings; fixed explicitly so files are identical across machines.
IMAGE_FORMATS = {
    "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}
_PAIRS_PER_TASK = 32


def image_extension(image_format):
    """File extension ('.jpg') of an image format name ('jpg')."""
    if image_format not in IMAGE_FORMATS:
        raise PlscError(f"unknown image_format '{image_format}'; known: {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[image_format][0]


def encode_image(image_rgb, image_format="jpg"):
    """RGB uint8 [H,W,3] -> encoded file bytes (`jpg` or `png`)."""
    extension = image_extension(image_format)
    parameters = IMAGE_FORMATS[image_format][1]
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), parameters)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {image_format} image")
    return encoded.tobytes()


def render_train_image(seed, identity_index, image_index, group=None, jitter=1.0, size=112, identity=None):
    """Image `image_index` of identity `identity_index` as every training-set writer renders it.

    Returns (image_rgb uint8 [size,size,3], landmarks float32 [5,2]). Pass `identity` to skip
    rebuilding it when rendering many images of one person.
    """
    if identity is None:
        identity = make_identity(seed, identity_index, group)
    return render_face(identity, train_image_rng(seed, identity_index, image_index), jitter, size)


def plan_verification_pairs(num_identities, num_pairs, seed=0, identity_offset=VERIFICATION_IDENTITY_OFFSET):
    """Which identities each pair shows: list of (identity_a, identity_b, is_same), shuffled.

    num_pairs // 2 pairs are positive (same identity, cycling through a permutation so every
    identity is used before any repeats), the rest negative (two distinct identities).
    """
    if num_identities < 2:
        raise PlscError(f"a verification set needs at least 2 identities, got {num_identities}")
    rng = pair_plan_rng(seed)
    num_positive = num_pairs // 2
    order = rng.permutation(num_identities)
    pairs = [(int(order[k % num_identities]),) * 2 + (True,) for k in range(num_positive)]
    for _ in range(num_pairs - num_positive):
        first = int(rng.integers(num_identities))
        second = int(rng.integers(num_identities - 1))
        second += second >= first  # uniform over the identities other than `first`
        pairs.append((first, second, False))
    pairs = [pairs[k] for k in rng.permutation(num_pairs)]
    return [(identity_offset + first, identity_offset + second, same) for first, second, same in pairs]


def write_image_folder(out_dir, num_classes, images_per_class, seed=0, image_format="jpg",
                       identity_offset=0, group=None, jitter=1.0, num_workers=0, progress=NO_PROGRESS):
    """`out_dir/images/<class:06d>/<k:04d>.<ext>` + `out_dir/label.txt`; returns a summary dict.

    Class `label` shows identity `identity_offset + label`. `progress` (plsc.data.progress) hears of
    every class's images once they are written.
    """
    check_seed(seed)
    _check_positive(num_classes=num_classes, images_per_class=images_per_class)
    extension = image_extension(image_format)
    _check_jitter(jitter)
    make_identity(seed, identity_offset, group)  # an unknown group fails here, not in a worker
    tasks = [(str(out_dir), seed, label, identity_offset + label, images_per_class, group, jitter, image_format)
             for label in range(num_classes)]
    _run_tasks(_write_class, tasks, num_workers, progress)
    lines = [f"{_train_image_path(label, k, extension)}\t{label}\n"
             for label in range(num_classes) for k in range(images_per_class)]
    label_file = os.path.join(out_dir, "label.txt")
    write_text_atomic(label_file, "".join(lines))
    return {"root": str(out_dir), "label_file": label_file, "num_classes": num_classes,
            "num_images": len(lines), "identity_range": (identity_offset, identity_offset + num_classes)}


def write_verification_pairs(out_dir, num_identities, num_pairs, seed=0, identity_offset=VERIFICATION_IDENTITY_OFFSET,
                             group=None, jitter=1.0, num_workers=0, progress=NO_PROGRESS):
    """`out_dir/images/%08d_{0,1}.png` per pair + `out_dir/label.txt` (1 = same); returns a summary dict.

    `progress` hears of the images of every run of pairs once they are written.
    """
    check_seed(seed)
    _check_positive(num_identities=num_identities, num_pairs=num_pairs)
    plan = plan_verification_pairs(num_identities, num_pairs, seed, identity_offset)
    _check_jitter(jitter)
    make_identity(seed, identity_offset, group)  # an unknown group fails here, not in a worker
    indexed = [(pair_index, first, second) for pair_index, (first, second, _) in enumerate(plan)]
    tasks = [(str(out_dir), seed, indexed[start:start + _PAIRS_PER_TASK], group, jitter)
             for start in range(0, num_pairs, _PAIRS_PER_TASK)]
    _run_tasks(_write_pairs, tasks, num_workers, progress)
    lines = [f"{_pair_image_path(k, 0)}\t{_pair_image_path(k, 1)}\t{int(same)}\n"
             for k, (_, _, same) in enumerate(plan)]
    label_file = os.path.join(out_dir, "label.txt")
    write_text_atomic(label_file, "".join(lines))
    return {"root": str(out_dir), "label_file": label_file, "num_pairs": num_pairs,
            "num_positive": sum(same for _, _, same in plan),
            "identity_range": (identity_offset, identity_offset + num_identities)}


def _train_image_path(label, image_index, extension):
    return f"images/{label:06d}/{image_index:04d}{extension}"


def _pair_image_path(pair_index, side):
    return f"images/{pair_index:08d}_{side}.png"


def _write_class(task):
    """Render and save every image of one class (runs in a worker process when parallel); returns their number."""
    out_dir, seed, label, identity_index, images_per_class, group, jitter, image_format = task
    identity = make_identity(seed, identity_index, group)
    extension = image_extension(image_format)
    os.makedirs(os.path.join(out_dir, "images", f"{label:06d}"), exist_ok=True)
    for image_index in range(images_per_class):
        image, _ = render_train_image(seed, identity_index, image_index, jitter=jitter, identity=identity)
        _write_bytes(os.path.join(out_dir, _train_image_path(label, image_index, extension)),
                     encode_image(image, image_format))
    return images_per_class


def _write_pairs(task):
    """Render and save both images of a run of pairs (runs in a worker process when parallel); returns
    the number of images."""
    out_dir, seed, pairs, group, jitter = task
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for pair_index, *identity_indices in pairs:
        for side, identity_index in enumerate(identity_indices):
            image, _ = render_face(make_identity(seed, identity_index, group), pair_image_rng(seed, pair_index, side),
                                   jitter)
            _write_bytes(os.path.join(out_dir, _pair_image_path(pair_index, side)), encode_image(image, "png"))
    return 2 * len(pairs)


def _run_tasks(function, tasks, num_workers, progress):
    """function(task) for every task, in this process or over `num_workers` processes; each returns the
    number of images it wrote, which goes to `progress`."""
    if num_workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            progress.update(function(task))
        return
    processes = min(num_workers, len(tasks))
    pool = multiprocessing.get_context().Pool(processes, initializer=_init_worker)
    try:
        # Several tasks per message keep the inter-process chatter small for many small classes.
        for num_written in pool.imap_unordered(function, tasks, chunksize=max(1, len(tasks) // (8 * processes))):
            progress.update(num_written)
        pool.close()  # workers exit on their own once the work is done
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _init_worker():
    # The workers already share the cores; cv2's own thread pool would only oversubscribe them.
    cv2.setNumThreads(1)
    # A forked worker inherits the parent's SIGTERM handler (Paddle installs one that prints a
    # crash report); Pool stops workers with SIGTERM, which should end them quietly.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _check_positive(**counts):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise PlscError(f"{name} must be a positive integer, got {value!r}")


def _check_jitter(jitter):
    if not isinstance(jitter, numbers.Real) or not jitter >= 0:
        raise PlscError(f"synthetic jitter must be a number >= 0, got {jitter!r}")


def _write_bytes(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path, text):
    """Write via a temporary file and rename, so a reader never sees a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
