"""`plsc-eval`: the config's verification sets on a saved backbone, without training."""
import os

import paddle

from plsc import distributed
from plsc.checkpoint import checkpoint_prefix, load_backbone_state
from plsc.engine.build import build_backbone, build_evaluator, select_device
from plsc.errors import PlscError


def evaluate_saved_model(config):
    """Load `Global.pretrained_model` (or `Global.checkpoint`) into the backbone and score it."""
    distributed.init()
    select_device(config.Global.device)
    path = config.Global.get("pretrained_model") or config.Global.get("checkpoint")
    if not path:
        raise PlscError("plsc-eval needs -o Global.pretrained_model=PATH (a .pdparams file or checkpoint prefix)")
    path = f"{checkpoint_prefix(path)}.pdparams"
    if not os.path.isfile(path):
        raise PlscError(f"model file not found: {path}")
    backbone = build_backbone(config.Model)
    load_backbone_state(backbone, paddle.load(path), path)
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
    for figures in results.values():
        figures.pop("best", None)
    return results
