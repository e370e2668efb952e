"""Benchmark one classification-head step: sampling, cosine logits, loss, backward, sparse update.

    flock /tmp/plsc_bench.lock python tools/bench_head.py                  # 100k / 1M / 2M classes
    flock /tmp/plsc_bench.lock python tools/bench_head.py --quick          # 100k only (smoke run)
    python tools/bench_head.py --heads PartialFC+ArcFace --classes 100000 --ratios 0.1 --output ''
    python tools/bench_head.py --classes 1000000 --ratios 0.1 --profile --output ''   # where the time goes
    python tools/bench_head.py --kernels paddle numpy ...    # the pure-Paddle reference, then the CPU kernels

One step = head forward (PartialFC: sample the class centres, cosine logits), loss forward, backward
(to the sampled centres and to the embeddings), and the FaceOptimizer step (sparse Momentum on the
sampled rows). The embeddings [batch, 512] stand in for a backbone's output. Each configuration runs
in a fresh subprocess, so its peak resident memory (VmHWM) is its own; a watchdog stops a run whose
resident memory passes --max-memory-gb. The median of the timed steps after warm-up is reported,
with each phase's median, as a markdown table (printed, and written to --output with the targets).

Head/loss pairs are registry names plus keyword arguments (HEAD_LOSS_PAIRS): a new head is a new
entry, selected with --heads.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import plsc  # noqa: E402,F401  (before Paddle: sets the CPU thread variables Paddle reads at import)

# name -> the head and the loss, each (registry name, keyword arguments). The bench adds
# num_classes, embedding_size and sample_ratio to the head's keyword arguments.
ARCFACE = {"MarginLoss": {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0}}
PARTIAL_FC = ("PartialFC", {"model_parallel": False, "seed": 2022})
HEAD_LOSS_PAIRS = {
    "PartialFC+ArcFace": {"head": PARTIAL_FC, "losses": [ARCFACE]},
    "PartialFC+CosFace": {"head": PARTIAL_FC,
                          "losses": [{"MarginLoss": {"m1": 1.0, "m2": 0.0, "m3": 0.4, "s": 64.0}}]},
    "PartialFC+CurricularFace": {"head": PARTIAL_FC, "losses": [{"CurricularFace": {"m": 0.5, "s": 64.0}}]},
    "PartialFC+AdaFace": {"head": PARTIAL_FC, "losses": [{"AdaFace": {}}]},
    "PartialFC+MagFace": {"head": PARTIAL_FC, "losses": [{"MagFace": {}}]},
    "PartialFC+L2Softmax": {"head": PARTIAL_FC, "losses": [{"L2Softmax": {"s": 64.0}}]},
    "PartialFC+ArcFace+CenterLoss": {"head": PARTIAL_FC, "losses": [ARCFACE, {"CenterLoss": {"weight": 0.5}}]},
    "SubCenterPartialFC+ArcFace": {"head": ("SubCenterPartialFC", {"model_parallel": False, "seed": 2022,
                                                                   "num_subcenters": 3}),
                                   "losses": [ARCFACE]},
}
# Each head's step relative to ArcFace's, at most what it was before the CPU kernels (docs/bench_heads.md,
# 1M classes, ratio 0.1, 2026-11-23); heads not listed: 1.3x.
RELATIVE_TARGETS = {"PartialFC+CurricularFace": 1.31, "PartialFC+AdaFace": 1.04, "PartialFC+MagFace": 0.98,
                    "PartialFC+L2Softmax": 0.83, "PartialFC+ArcFace+CenterLoss": 0.96,
                    "SubCenterPartialFC+ArcFace": 2.73}
DEFAULT_RELATIVE_TARGET = 1.3
# PLSC's face configs: Momentum 0.9, weight decay 5e-4, lr 0.1.
OPTIMIZER = {"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4}
LEARNING_RATE = 0.1
PHASES = ("forward_head", "forward_loss", "backward", "optimizer_step")
# The generated part of the markdown output sits between these; the text around it is kept.
BEGIN, END = "<!-- bench_head.py: begin -->", "<!-- bench_head.py: end -->"

FULL_CLASSES = (100_000, 1_000_000, 2_000_000)
QUICK_CLASSES = (100_000,)
RATIOS = (1.0, 0.1)
TARGETS = """\
Targets (issue 19, the CPU kernels' rows): 1M classes, ratio 0.1: step <= 1.0 s and peak <= 4.5 GiB;
100k classes, ratio 0.1: step <= 0.08 s; 1M classes, ratio 1.0: step <= 10 s and peak <= 8 GiB;
every margin head's step relative to ArcFace's at most what it was before (RELATIVE_TARGETS)."""
# (classes, ratio) -> (step seconds, peak GiB or None) that TARGET_PAIR's numpy-kernel rows must meet.
TARGET_PAIR = "PartialFC+ArcFace"
STEP_TARGETS = {(1_000_000, 0.1): (1.0, 4.5), (100_000, 0.1): (0.08, None), (1_000_000, 1.0): (10.0, 8.0)}


# ---- one configuration (runs in the child process) ------------------------------------------
def read_status_kib(field, pid="self"):
    """A `VmXXX:` line of /proc/<pid>/status in KiB, or None when unreadable (process gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_configuration(pair_name, num_classes, sample_ratio, batch_size, embedding_size, warmup_steps,
                      timed_steps, seed, kernels="numpy", profile=None):
    """Build the pair, run warm-up + timed steps; returns a dict of timings (s) and memory (bytes).

    kernels: "numpy" (plsc.fast_cpu's CPU kernels, the default path) or "paddle" (the pure-Paddle
    reference); profile: None, "python" (cProfile of the timed steps) or "paddle" (Paddle's
    profiler, per-op table), printed to stderr.
    """
    import contextlib
    import resource

    import numpy as np
    import paddle

    import plsc.heads  # noqa: F401  (fills HEADS)
    from plsc import fast_cpu
    from plsc.loss.combined import CombinedLoss
    from plsc.loss.inputs import LossInputs
    from plsc.optim import build_optimizer
    from plsc.registry import HEADS

    pair = HEAD_LOSS_PAIRS[pair_name]
    head_name, head_kwargs = pair["head"]
    rss_after_import = read_status_kib("VmRSS") * 1024

    started = time.perf_counter()
    head = HEADS.build(head_name, num_classes=num_classes, embedding_size=embedding_size,
                       sample_ratio=sample_ratio, **head_kwargs)
    # The trainer's objective: a weighted sum of `Loss.Train` entries; their tables (CenterLoss's
    # centres) are updated sparsely beside the head's.
    loss_fn = CombinedLoss(pair["losses"])
    optimizer = build_optimizer(OPTIMIZER, [], [head, *loss_fn.attach(head)], lr=LEARNING_RATE)
    build_seconds = time.perf_counter() - started

    rng = np.random.default_rng(seed)
    phase_times = {phase: [] for phase in PHASES}
    step_times, cpu_times = [], []
    kernel_context = fast_cpu.reference_only() if kernels == "paddle" else contextlib.nullcontext()
    kernel_context.__enter__()
    profiler = None
    for step in range(warmup_steps + timed_steps):
        if step == warmup_steps and profile:
            profiler = start_profiler(profile)
        embeddings = paddle.to_tensor(rng.standard_normal((batch_size, embedding_size)).astype(np.float32),
                                      stop_gradient=False)
        labels = paddle.to_tensor(rng.integers(0, num_classes, size=batch_size))
        cpu_start = time.process_time()
        marks = [time.perf_counter()]
        cos_logits, local_labels = head(embeddings, labels)
        marks.append(time.perf_counter())
        loss, _ = loss_fn(LossInputs(cos_logits, local_labels, embeddings, labels, head))
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.clear_grad()
        marks.append(time.perf_counter())
        del cos_logits, local_labels, loss, embeddings
        if step >= warmup_steps:
            step_times.append(marks[-1] - marks[0])
            cpu_times.append(time.process_time() - cpu_start)
            for phase, begin, end in zip(PHASES, marks, marks[1:]):
                phase_times[phase].append(end - begin)
    if profiler is not None:
        stop_profiler(profile, profiler, timed_steps)
    kernel_context.__exit__(None, None, None)
    return {
        "kernels": kernels,
        "pair": pair_name, "num_classes": num_classes, "sample_ratio": sample_ratio,
        "num_sampled": int(head.sampled_index.shape[0]), "batch_size": batch_size,
        "embedding_size": embedding_size, "build_seconds": build_seconds,
        "step_seconds": statistics.median(step_times), "step_seconds_all": step_times,
        "cpu_seconds": statistics.median(cpu_times),
        "phase_seconds": {phase: statistics.median(times) for phase, times in phase_times.items()},
        "peak_bytes": read_status_kib("VmHWM") * 1024,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_import_bytes": rss_after_import,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }


def start_profiler(kind):
    """A started profiler of `kind` ("python": cProfile, "paddle": paddle.profiler on the CPU)."""
    if kind == "python":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        return profiler
    import paddle.profiler as paddle_profiler

    profiler = paddle_profiler.Profiler(targets=[paddle_profiler.ProfilerTarget.CPU])
    profiler.start()
    return profiler


def stop_profiler(kind, profiler, steps):
    """Stop it and print its table to stderr (stdout carries the result line)."""
    if kind == "python":
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(f"cProfile of {steps} timed steps (tottime: time inside the function itself, numpy's C "
              f"kernels and Paddle's ops included):\n{text.getvalue()}", file=sys.stderr)
        return
    import paddle.profiler as paddle_profiler

    import contextlib

    profiler.stop()
    with contextlib.redirect_stdout(sys.stderr):
        profiler.summary(op_detail=True, time_unit="ms", sorted_by=paddle_profiler.SortedKeys.CPUTotal)


# ---- the parent: one subprocess per configuration -------------------------------------------
def minimum_step_bytes(num_classes, sample_ratio, embedding_size):
    """A lower bound of a step's memory: table, momentum, sampled rows and their gradient (float32).

    At ratio 1.0 the sampled rows are the table itself (a view), so only the gradient is added.
    """
    sampled = int(sample_ratio * num_classes)
    extra_rows = sampled if sample_ratio >= 1.0 else 2 * sampled
    return (2 * num_classes + extra_rows) * embedding_size * 4


def run_in_subprocess(config, max_memory_bytes):
    """Run one configuration in a fresh interpreter; a watchdog kills it past max_memory_bytes."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exceeded = []

    def watch():
        while child.poll() is None:
            rss = read_status_kib("VmRSS", child.pid)
            if rss is not None and rss * 1024 > max_memory_bytes:
                exceeded.append(rss * 1024)
                child.kill()
                return
            time.sleep(0.05)

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    stdout, stderr = child.communicate()
    watchdog.join()
    if config.get("profile") and child.returncode == 0:
        print(stderr, file=sys.stderr)  # the child's profile table
    if exceeded:
        return {**config, "error": f"stopped: resident memory passed {max_memory_bytes / 2**30:.1f} GiB"}
    if child.returncode != 0:
        return {**config, "error": f"exit {child.returncode}: {stderr.strip().splitlines()[-1:]}"}
    return json.loads(stdout.strip().splitlines()[-1])


def merge_runs(results):
    """One row from repeated runs of a configuration: medians over all their timed steps, the largest peak."""
    failed = [result for result in results if "error" in result]
    if failed or len(results) == 1:
        return (failed or results)[0]
    done = results
    merged = dict(done[0])
    merged["step_seconds_all"] = [seconds for result in done for seconds in result["step_seconds_all"]]
    merged["step_seconds"] = statistics.median(merged["step_seconds_all"])
    merged["cpu_seconds"] = statistics.median(result["cpu_seconds"] for result in done)
    merged["phase_seconds"] = {phase: statistics.median(result["phase_seconds"][phase] for result in done)
                               for phase in PHASES}
    for key in ("peak_bytes", "ru_maxrss_bytes", "build_seconds"):
        merged[key] = max(result[key] for result in done)
    merged["repeats"] = len(done)
    return merged


def gib(value):
    return f"{value / 2**30:.2f}"


def markdown_table(results):
    header = ("| head + loss | kernels | classes | ratio | sampled | step (s) | min (s) | CPU (s) | head fwd | loss fwd | "
              "backward | optim step | peak RSS (GiB) | build (s) |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for result in results:
        prefix = (f"| {result['pair']} | {result.get('kernels', 'numpy')} | {result['num_classes']:,} | "
                  f"{result['sample_ratio']} |")
        if "error" in result:
            rows.append(f"{prefix} | {result['error']} | | | | | | | | |")
            continue
        phases = " | ".join(f"{result['phase_seconds'][phase]:.3f}" for phase in PHASES)
        rows.append(f"{prefix} {result['num_sampled']:,} | **{result['step_seconds']:.3f}** | "
                    f"{min(result['step_seconds_all']):.3f} | {result['cpu_seconds']:.3f} | {phases} | "
                    f"{gib(result['peak_bytes'])} | {result['build_seconds']:.1f} |")
    return "\n".join([header, *rows])


def target_checks(results):
    """Lines saying whether each target is met by the CPU-kernel rows, and each row's speed-up over the reference."""
    done = {(r["pair"], r["num_classes"], r["sample_ratio"], r.get("kernels", "numpy")): r
            for r in results if "error" not in r}
    lines = []
    for (pair, classes, ratio, kernels), result in done.items():
        if kernels != "numpy":
            continue
        target = STEP_TARGETS.get((classes, ratio)) if pair == TARGET_PAIR else None
        if target:
            seconds, peak = target
            step, peak_gib = result["step_seconds"], result["peak_bytes"] / 2**30
            line = (f"- {pair}, {classes:,} classes, ratio {ratio}: step {step:.3f} s "
                    f"({'meets' if step <= seconds else 'misses'} <= {seconds:g} s)")
            if peak is not None:
                line += f", peak {peak_gib:.2f} GiB ({'meets' if peak_gib <= peak else 'misses'} <= {peak:g} GiB)"
            lines.append(line)
        before = done.get((pair, classes, ratio, "paddle"))
        if before:
            lines.append(f"- {pair}, {classes:,} classes, ratio {ratio}: pure-Paddle reference "
                         f"{before['step_seconds']:.3f} s -> CPU kernels {result['step_seconds']:.3f} s "
                         f"({before['step_seconds'] / result['step_seconds']:.2f}x), peak "
                         f"{gib(before['peak_bytes'])} -> {gib(result['peak_bytes'])} GiB")
    return lines


def relative_checks(results, reference="PartialFC+ArcFace"):
    """Lines giving each pair's step time relative to `reference` at the same classes and ratio."""
    done = {(r["pair"], r["num_classes"], r["sample_ratio"]): r for r in results
            if "error" not in r and r.get("kernels", "numpy") == "numpy"}
    lines = []
    for (pair, classes, ratio), result in done.items():
        base = done.get((reference, classes, ratio))
        if pair == reference or base is None:
            continue
        relative = result["step_seconds"] / base["step_seconds"]
        target = RELATIVE_TARGETS.get(pair, DEFAULT_RELATIVE_TARGET)
        lines.append(f"- {pair}, {classes:,} classes, ratio {ratio}: {relative:.2f}x {reference}'s step "
                     f"({'meets' if relative <= target else 'misses'} <= {target}x), peak "
                     f"{gib(result['peak_bytes'])} GiB vs {gib(base['peak_bytes'])} GiB")
    return lines


def machine_line():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = None
    try:
        with open("/proc/meminfo") as meminfo:
            memory = int(meminfo.readline().split()[1]) * 1024
    except OSError:
        pass
    memory_text = f", {gib(memory)} GiB RAM" if memory else ""
    return f"{cpu}, {os.cpu_count()} cores{memory_text}, Python {platform.python_version()}"


def write_section(path, section):
    """Put `section` between the bench markers of the markdown file `path`, keeping the text around it."""
    text = f"# Head benchmark\n\n{BEGIN}\n{END}\n"
    if os.path.exists(path):
        with open(path) as handle:
            text = handle.read()
    if BEGIN not in text or END not in text:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(f"{before}{BEGIN}\n{section.strip()}\n{END}{after}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k classes only (a smoke run)")
    parser.add_argument("--heads", nargs="+", default=["PartialFC+ArcFace"], choices=sorted(HEAD_LOSS_PAIRS),
                        help="head/loss pairs to run (HEAD_LOSS_PAIRS)")
    parser.add_argument("--classes", nargs="+", type=int, help="class counts (default 100k 1M 2M)")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--max-memory-gb", type=float, default=10.0,
                        help="stop a run whose resident memory passes this (the machine is shared)")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "docs", "bench_head.md"),
                        help="markdown file whose measured section is replaced ('' to only print)")
    parser.add_argument("--json", help="also write the raw results (every step time) to this file")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every row this many times, round-robin (a drifting machine load then affects "
                             "all rows alike), and report the median over all their timed steps")
    parser.add_argument("--kernels", nargs="+", default=["numpy"], choices=["numpy", "paddle"],
                        help="numpy: the CPU kernels (plsc.fast_cpu, the default path); paddle: the pure-Paddle "
                             "reference (PLSC_CPU_KERNELS=0); both: one row each, one after the other")
    parser.add_argument("--profile", nargs="?", const="python", choices=["python", "paddle"],
                        help="print a profile of the timed steps per row: python (cProfile: numpy kernels and "
                             "Paddle ops by own time) or paddle (Paddle's profiler, per-op table)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        config = json.loads(args.child)
        print(json.dumps(run_configuration(**config)))
        return 0

    classes = args.classes or (QUICK_CLASSES if args.quick else FULL_CLASSES)
    max_memory = args.max_memory_gb * 2**30
    load_before = os.getloadavg()
    rows = [(pair, num_classes, sample_ratio, kernels) for pair in args.heads for num_classes in classes
            for sample_ratio in args.ratios for kernels in args.kernels]
    runs = {}
    for pair, num_classes, sample_ratio, kernels in rows * max(1, args.repeats):
        config = dict(pair_name=pair, num_classes=num_classes, sample_ratio=sample_ratio,
                      batch_size=args.batch_size, embedding_size=args.embedding_size,
                      warmup_steps=args.warmup_steps, timed_steps=args.steps, seed=0,
                      kernels=kernels, profile=args.profile)
        needed = minimum_step_bytes(num_classes, sample_ratio, args.embedding_size)
        if needed > max_memory:
            result = {**config, "error": f"not run: needs over {gib(needed)} GiB (table, momentum, "
                                         f"gradient), limit {args.max_memory_gb:g}"}
        else:
            result = run_in_subprocess(config, max_memory)
        result.setdefault("pair", pair)
        runs.setdefault((pair, num_classes, sample_ratio, kernels), []).append(result)
        print(markdown_table([result]).splitlines()[-1], flush=True)
    results = [merge_runs(runs[row]) for row in rows]

    table = markdown_table(results)
    checks = target_checks(results) + relative_checks(results)
    command = "python tools/bench_head.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join([
        "## Measured", "",
        f"`{command.strip()}` on {datetime.date.today().isoformat()}; {machine_line()}; "
        f"OMP_NUM_THREADS={results[0].get('threads') if results else '?'}; batch {args.batch_size}, "
        f"{args.embedding_size}-d embeddings, median of {args.steps} steps after {args.warmup_steps} warm-up "
        f"{f'in each of {args.repeats} round-robin runs of a row ' if args.repeats > 1 else ''}"
        "steps (min: fastest of them; CPU: process CPU time of the median step, all threads); peak = VmHWM "
        "of a fresh process per row (includes ~0.3 GiB for Python + Paddle). Load average (1 min) "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores; the bench "
        "itself accounts for up to 2, more means other work shared the CPU.", "",
        table, "", TARGETS, "", *checks, ""])
    print("\n" + report)
    if args.output:
        write_section(args.output, report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
