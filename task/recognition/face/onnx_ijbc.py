"""IJB-C / IJB-B evaluation of an ONNX face model with onnxruntime (1:1 TAR@FAR, and 1:N if present).

    python task/recognition/face/onnx_ijbc.py --model-root output/IResNet50.onnx \
        --image-path /data/IJB_release/IJBC --target IJBC --result-dir ./output

Steps: read the protocol (meta/), align every loose crop with its 5 landmarks in worker processes,
embed each image and its mirror image, pool templates (media means summed, L2-normalised), score
the template pairs and print TAR at FAR 1e-6 .. 1e-1 (x 100, like PLSC), then run the 1:N search of
the mixed probes. Both follow insightface's evaluation conventions by default (the ones published
figures use): TAR at the ROC point nearest in FAR, and 1:N over the two galleries joined into one;
`--tar-convention at_most` and `--one-to-n-convention open_set` select plsc's stricter rules. Every
table and results.json name the convention used. Writes to
{result-dir}/{job}/: features.npz (the features and their cache key in one file), {target}.npy (pair scores),
roc.png and results.json. Several `--model-root` files are evaluated in turn, each under its own
{job}, and {result-dir}/roc_{target}.png draws their ROC curves together. A user error (missing meta
file, unreadable image, bad model) is one line on stderr and exit code 1.
"""
import argparse
import collections
import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run from a source checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_helper import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_STD, OnnxFaceModel  # noqa: E402

from plsc.data.align import read_aligned  # noqa: E402
from plsc.errors import PlscError  # noqa: E402
from plsc.metrics import ijb  # noqa: E402
from plsc.metrics.roc import DEFAULT_FARS, TAR_CONVENTIONS, roc_curve, tar_at_far  # noqa: E402

PROG = "onnx_ijbc.py"
RANKS = (1, 5, 10)
FPIRS = (0.01, 0.1)
CACHE_VERSION = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model-root", required=True, nargs="+",
                        help="the ONNX model file; several models are evaluated in turn and their ROC curves "
                             "share one picture, {result-dir}/roc_{target}.png")
    parser.add_argument("--image-path", required=True, help="IJB release folder holding meta/ and loose_crop/")
    parser.add_argument("--target", default="IJBC", choices=("IJBC", "IJBB"))
    parser.add_argument("--result-dir", default="./output")
    parser.add_argument("--job", default=None, help="row name and result sub-folder (default: the model's name)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per batch; each is run with its mirror image, so twice as many per call")
    parser.add_argument("--num-workers", type=int, default=2, help="processes decoding and aligning images")
    parser.add_argument("--input-mean", type=float, default=DEFAULT_INPUT_MEAN)
    parser.add_argument("--input-std", type=float, default=DEFAULT_INPUT_STD)
    # The three switches of the standard protocol (PLSC / insightface test modes N1, D1, F1).
    parser.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True,
                        help="keep each image feature's norm as a quality weight (N1); off: L2-normalise first")
    parser.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                        help="weight image features by the face detector's score (D1)")
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=True,
                        help="add the mirror image's embedding (F1)")
    parser.add_argument("--tar-convention", default="insightface", choices=tuple(TAR_CONVENTIONS),
                        help="insightface: ROC point nearest in FAR (published figures); "
                             "at_most: best TAR with FAR <= target")
    parser.add_argument("--one-to-n-convention", default="insightface", choices=tuple(ijb.ONE_TO_N_CONVENTIONS),
                        help="insightface: galleries joined, threshold from non-mate scores of mated probes "
                             "(published figures); open_set: each gallery alone, rank 1 required")
    parser.add_argument("--skip-1n", action="store_true",
                        help="run the 1:1 protocol only (otherwise a missing 1:N csv is an error)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1 and --num-workers >= 0")
    return args


# ---- features ----------------------------------------------------------------------------------

def _align_chunk(job):
    """Worker: (image paths, landmarks [B, 5, 2], size) -> aligned RGB uint8 [B, size, size, 3]."""
    paths, landmarks, size = job
    return np.stack([read_aligned(path, points, size) for path, points in zip(paths, landmarks)])


def _quiet_worker():
    import cv2

    cv2.setNumThreads(1)  # the workers are the parallelism; OpenCV's own threads would oversubscribe


def aligned_batches(paths, landmarks, size, batch_size, num_workers):
    """Aligned image batches in order, decoded by `num_workers` processes (0: in this process).

    At most 2 * num_workers batches wait in memory: pool.imap would queue all 469k aligned images
    when the model is slower than the workers.
    """
    jobs = ((paths[start:start + batch_size], landmarks[start:start + batch_size], size)
            for start in range(0, len(paths), batch_size))
    if num_workers == 0:
        yield from map(_align_chunk, jobs)
        return
    with multiprocessing.get_context("fork").Pool(num_workers, initializer=_quiet_worker) as pool:
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.apply_async(_align_chunk, (job,)))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def extract_features(model, image_dir, protocol, batch_size, num_workers):
    """[N, 2 * D] float32: embedding of each aligned image, then of its mirror image (PLSC's layout)."""
    height, width = model.image_size
    if height != width:
        raise PlscError(f"{model.path}: input {height}x{width} is not square; faces are aligned to a square crop")
    paths = [str(Path(image_dir) / name) for name in protocol.image_names]
    features = None
    with tqdm(total=len(paths), desc="features", unit="img") as progress:
        start = 0
        for images in aligned_batches(paths, protocol.landmarks, height, batch_size, num_workers):
            embeddings = model.embed(np.concatenate([images, images[:, :, ::-1]]))
            count = images.shape[0]
            if features is None:
                features = np.empty((len(paths), 2 * embeddings.shape[1]), dtype=np.float32)
            features[start:start + count] = np.concatenate([embeddings[:count], embeddings[count:]], axis=1)
            start += count
            progress.update(count)
    return features


def cache_key(model, protocol, image_dir):
    """What the cached features depend on: the model's bytes, the preprocessing and the image list."""
    images = hashlib.sha1()
    images.update("\n".join(protocol.image_names).encode())
    images.update(np.ascontiguousarray(protocol.landmarks, dtype=np.float32).tobytes())
    # The model file's content, not its name or time stamp: a model replaced in place (same path,
    # size and mtime after a copy) must not be served the old model's features.
    weights = hashlib.sha1()
    with open(model.path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            weights.update(block)
    return {"version": CACHE_VERSION, "model_sha1": weights.hexdigest(), "input_mean": model.input_mean,
            "input_std": model.input_std, "image_dir": str(Path(image_dir).resolve()),
            "images_sha1": images.hexdigest()}


def cached_features(result_dir, key, compute):
    """The features of an earlier run with the same key, else compute() and store them.

    Features and key live in one file, written under a temporary name and renamed: an interrupted
    run leaves the previous pair or none, never new features under an old key or the reverse.
    """
    cache_path = result_dir / "features.npz"
    for leftover in result_dir.glob("features.partial*.npz"):  # from a run killed while writing
        leftover.unlink()
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as stored:
                if json.loads(str(stored["key"])) == key:
                    print(f"using cached features {cache_path}")
                    return stored["features"]
            print(f"cached features {cache_path} are from another model or image list; recomputing")
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            print(f"cached features {cache_path} are unreadable; recomputing")
    features = compute()
    result_dir.mkdir(parents=True, exist_ok=True)
    partial = result_dir / f"features.partial{os.getpid()}.npz"
    with open(partial, "wb") as handle:
        np.savez(handle, features=features, key=np.array(json.dumps(key, sort_keys=True)))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, cache_path)
    return features


def image_features(features, flip_test):
    """[N, 2D] (image, mirror) -> [N, D]: their sum (F1) or the image's embedding alone."""
    dim = features.shape[1] // 2
    return features[:, :dim] + features[:, dim:] if flip_test else features[:, :dim]


# ---- report ------------------------------------------------------------------------------------

def format_table(header, rows):
    """A plain-text grid like PrettyTable's: header [K] strings, rows of K strings."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"

    def line(cells):  # row names left-aligned, figures centred
        padded = [str(cells[0]).ljust(widths[0])] + [str(c).center(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([rule, line(header), rule, *(line(row) for row in rows), rule])


def percent(rate):
    """A rate as PLSC prints it (x 100, two decimals); 'nan' where the protocol cannot resolve it."""
    return "nan" if np.isnan(rate) else f"{100 * rate:.2f}"


def verification_table(job, tar):
    return format_table(["Methods", *map(str, tar)], [[job, *map(percent, tar.values())]])


def identification_table(results):
    """The 1:N figures as a table: one row for insightface's joined gallery, one per gallery + mean for open_set."""
    header = ["Gallery", *(f"rank-{k}" for k in RANKS), *(f"TPIR@FPIR={f:g}" for f in FPIRS)]
    if results["convention"] == "insightface":
        names, rows_of = [results["galleries"]], {results["galleries"]: results}
    else:
        names = [name for name in results if name != "convention"]
        rows_of = results
    rows = [[name, *(percent(rows_of[name]["cmc"][k]) for k in RANKS),
             *(percent(rows_of[name]["tpir"][f]) for f in FPIRS)] for name in names]
    return format_table(header, rows)


def plot_roc(curves, labels, path):
    """One ROC line (TAR vs log FAR) per model: curves = [(job, pair scores [P])], labels [P]."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for job, scores in curves:
        far, tar, _ = roc_curve(scores, labels)
        axes.semilogx(np.maximum(far, 1e-7), tar, label=job)
    axes.set(xlim=(1e-6, 1.0), ylim=(0.0, 1.0), xlabel="False accept rate", ylabel="True accept rate",
             title="ROC on the template pairs")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _json_ready(value):
    """Results with NaN as null and dict keys as strings, for a standard JSON file."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


# ---- main --------------------------------------------------------------------------------------

def evaluate(args):
    """Every --model-root in turn; with several, their ROC curves in one picture. Returns [results]."""
    if args.job and len(args.model_root) > 1:
        raise PlscError("--job names one model's results; with several --model-root each is named after its file")
    protocol = ijb.read_ijb_protocol(args.image_path, args.target, one_to_n=not args.skip_1n)
    if not protocol.image_names or not len(protocol.labels):
        raise PlscError(f"{args.image_path}/meta: the {args.target} protocol lists no images or no pairs")
    evaluated = [evaluate_model(args, protocol, path) for path in args.model_root]
    if len(evaluated) > 1:
        path = Path(args.result_dir) / f"roc_{args.target}.png"
        plot_roc([(results["job"], scores) for results, scores in evaluated], protocol.labels, path)
        print(f"ROC of all models: {path}")
    return [results for results, _ in evaluated]


def evaluate_model(args, protocol, model_path):
    """One model's 1:1 (and 1:N) figures, written under {result-dir}/{job}/: (results, pair scores)."""
    model = OnnxFaceModel(model_path, batch_size=2 * args.batch_size,
                          input_mean=args.input_mean, input_std=args.input_std)
    job = args.job or model.path.stem
    result_dir = Path(args.result_dir) / job
    image_dir = Path(args.image_path) / "loose_crop"
    print(f"{args.target}: {len(protocol.image_names)} images, {np.unique(protocol.templates).size} templates, "
          f"{len(protocol.labels)} pairs; model {model.path} on {model.session.get_providers()[0]}")

    started = time.time()
    features = cached_features(result_dir, cache_key(model, protocol, image_dir), lambda: extract_features(
        model, image_dir, protocol, args.batch_size, args.num_workers))
    print(f"Feature Shape: ({features.shape[0]} , {features.shape[1]}) in {time.time() - started:.1f}s")

    template_ids, template_features = ijb.pool_templates(
        image_features(features, args.flip_test), protocol.templates, protocol.medias,
        faceness=protocol.faceness if args.detector_score else None, keep_norm=args.norm_score)
    with tqdm(total=len(protocol.labels), desc="pairs", unit="pair") as progress:
        scores = ijb.verification_scores(template_ids, template_features, protocol.pairs[:, 0],
                                         protocol.pairs[:, 1], progress=progress)
    np.save(result_dir / f"{args.target}.npy", scores)
    tar = tar_at_far(scores, protocol.labels, DEFAULT_FARS, convention=args.tar_convention)
    plot_roc([(job, scores)], protocol.labels, result_dir / "roc.png")
    print(f"{args.target} 1:1 verification, TAR (%) at FAR [{args.tar_convention}: "
          f"{TAR_CONVENTIONS[args.tar_convention]}]:")
    print(verification_table(job, tar))
    results = {"job": job, "target": args.target, "model": str(model.path), "tar_at_far": tar,
               "tar_convention": args.tar_convention}

    if protocol.one_to_n:
        results["one_to_n"] = ijb.one_to_n(template_ids, template_features, protocol.one_to_n, RANKS, FPIRS,
                                           convention=args.one_to_n_convention)
        print(f"{args.target} 1:N identification, mixed probes (%) [{args.one_to_n_convention}: "
              f"{ijb.ONE_TO_N_CONVENTIONS[args.one_to_n_convention]}]:")
        print(identification_table(results["one_to_n"]))
    (result_dir / "results.json").write_text(json.dumps(_json_ready(results), indent=1))
    print(f"results in {result_dir}")
    return results, scores


def main(argv=None):
    args = parse_args(argv)
    try:
        evaluate(args)
    except PlscError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
