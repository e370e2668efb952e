"""`plsc-eval`: the config's verification sets on a saved backbone, without training."""
import os

from plsc import distributed
from plsc.checkpoint import load_backbone_state, load_weights
from plsc.engine.build import build_backbone, build_evaluator, select_device
from plsc.engine.evaluator import format_figures
from plsc.errors import PlscError


def evaluate_saved_model(config):
    """Load `Global.pretrained_model` (or `Global.checkpoint`) into the backbone and score it.

    Prints one line per verification set (its kind, and for a per_image set the accuracy over pairs
    with and without a masked face); returns {set name: {figure: number}}.
    """
    distributed.init()
    select_device(config.Global.device)
    path = config.Global.get("pretrained_model") or config.Global.get("checkpoint")
    if not path:
        raise PlscError("plsc-eval needs -o Global.pretrained_model=PATH (a .pdparams file or checkpoint prefix)")
    state, path = load_weights(path)
    backbone = build_backbone(config.Model)
    load_backbone_state(backbone, state, path)
    evaluator = build_evaluator(config)
    if evaluator is None:
        raise PlscError("the config has no DataLoader.Eval dataset or no Metric.Eval entry to evaluate")
    results = evaluator.evaluate(backbone)
    if evaluator.reports and distributed.is_main_process():
        from plsc.metrics.report import format_report, write_reports

        paths = write_reports(evaluator.reports, os.path.join(config.Global.output_dir, config.Model.name, "eval"))
        for report in evaluator.reports.values():
            print(format_report(report) + "\n")
        print(f"report: {paths['json']}" + "".join(f"\nchart: {chart}" for chart in paths["charts"]))
    if distributed.is_main_process():
        # Each set with its kind, and a per_image set's masked / unmasked pairs, side by side.
        for name, figures in results.items():
            print(format_figures(name, {key: value for key, value in figures.items() if key != "best"}))
    for figures in results.values():
        figures.pop("best", None)
        figures.pop("kind", None)  # the returned figures are all numbers
    return results
