"""Console entry points: `plsc-train`, `plsc-eval`, `plsc-export` (PLSC's flags: -c CONFIG, -o Key.sub=value)
and `plsc-import`."""
import argparse
import os
import sys

from plsc.errors import PlscError


def parse_args(prog, description, argv):
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="override a config key, e.g. -o Global.epochs=2 (repeatable)")
    parser.add_argument("-p", "--profiler_options", default=None,
                        help="accepted for PLSC compatibility and ignored (a warning says so)")
    args = parser.parse_args(argv)
    if args.profiler_options is not None:
        from plsc.config.notices import warn_once

        warn_once("-p/--profiler_options is accepted for PLSC compatibility and ignored "
                  "(Paddle's profiler is not wired in)")
    return args


def run_reporting_user_errors(prog, function):
    """Run `function`; a PlscError (the user's mistake) becomes one line on stderr and exit code 2."""
    try:
        function()
    except PlscError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # noqa: BLE001 - DataLoader workers re-raise user errors as plain exceptions
        message = _user_error_from_worker(error)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _user_error_from_worker(error):
    """The PlscError message inside an exception Paddle's DataLoader re-raised from a worker, if any."""
    text = str(error)
    marker = "PlscError: "
    if marker not in text:
        return None
    return text.split(marker, 1)[1].strip().splitlines()[0]


def train_main(argv=None):
    args = parse_args("plsc-train", "Train a face recognition model.", argv)

    def run():
        from plsc.config import format_config, load_config
        from plsc.engine.trainer import Trainer

        config = load_config(args.config, args.override)
        glob = config.Global
        stage, start = glob.get("pretrain_config"), glob.get("pretrained_model")
        if stage and start and not glob.get("checkpoint") and not os.path.exists(start):
            # A two-stage recipe (MAE pre-training, then fine-tuning) in one command: the first
            # stage runs once, when the weights this config starts from are not there yet.
            first = Trainer(load_config(stage, []))
            first.logger.info(f"pre-training stage {stage}, for Global.pretrained_model {start}")
            first.train()
            if not os.path.exists(start):
                raise PlscError(f"Global.pretrain_config {stage} finished without writing Global.pretrained_model "
                                f"{start}: make the two paths agree")
        trainer = Trainer(config)
        trainer.logger.info("config:\n" + format_config(config))
        trainer.train()

    run_reporting_user_errors("plsc-train", run)


def eval_main(argv=None):
    args = parse_args("plsc-eval", "Evaluate a saved model on the config's verification sets.", argv)

    def run():
        from plsc.config import load_config
        from plsc.engine.evaluate import evaluate_saved_model

        config = load_config(args.config, args.override)
        results = evaluate_saved_model(config)
        for name, figures in results.items():
            print(f"{name}: " + ", ".join(f"{key}: {value:.5f}" for key, value in figures.items()))

    run_reporting_user_errors("plsc-eval", run)


def export_main(argv=None):
    args = parse_args("plsc-export", "Export a trained backbone to ONNX and check it against Paddle.", argv)

    def run():
        from plsc.config import load_config
        from plsc.export import export_from_config

        export_from_config(load_config(args.config, args.override))

    run_reporting_user_errors("plsc-export", run)


def fedtrain_main(argv=None):
    args = parse_args("plsc-fedtrain", "Federated training (FedFR): generic model + personalised clients.", argv)

    def run():
        from plsc.federated.config import load_fedfr_config
        from plsc.federated.simulation import run_fedtrain

        run_fedtrain(load_fedfr_config(args.config, args.override))

    run_reporting_user_errors("plsc-fedtrain", run)


def fedeval_main(argv=None):
    args = parse_args("plsc-fedeval", "Evaluate a saved FedFR round (-o Global.checkpoint=.../round_NNN).", argv)

    def run():
        from plsc.federated.config import load_fedfr_config
        from plsc.federated.evaluate import evaluate_round

        evaluate_round(load_fedfr_config(args.config, args.override))

    run_reporting_user_errors("plsc-fedeval", run)


def import_main(argv=None):
    parser = argparse.ArgumentParser(prog="plsc-import", description=(
        "Convert an insightface / arcface_torch backbone (ONNX export or .pth state dict) into a plsc "
        "weights file for Global.pretrained_model, checking its embeddings against the source."))
    parser.add_argument("--arch", required=True,
                        help="arcface_torch network name: r18, r34, r50, r100, r200, mbf or mbf_large")
    parser.add_argument("--source", required=True,
                        help="the model: .onnx (arcface_torch export or model-zoo file) or .pth")
    parser.add_argument("--out", required=True, help="plsc weights file to write (.pdparams)")
    args = parser.parse_args(argv)

    def run():
        from plsc.importer import import_backbone

        import_backbone(args.source, args.arch, args.out)

    run_reporting_user_errors("plsc-import", run)
