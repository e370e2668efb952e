"""Print backbones' parameters (M) and GFLOPs (multiply-accumulates * 1e-9 per image).

    python tools/model_info.py -c CONFIG [CONFIG ...] [-o Key.sub=value ...]   # each config's Model section
    python tools/model_info.py --all                                          # every registered backbone

Configs are read exactly as plsc-train reads them (same validation and `-o` overrides). The input
is 112x112 unless --input-size or the config's Model.input_size says otherwise. The backbone
alone is counted: the Partial FC class centres (class_num x num_features) are not.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.errors import PlscError  # noqa: E402

DEFAULT_INPUT_SIZE = 112
HEADER = f"{'backbone':<28} {'params (M)':>10} {'GFLOPs':>8} {'input':>8}  config"


def report_line(name, kwargs, input_size, source=""):
    """One table row: the backbone `name` built with `kwargs`, measured at input_size x input_size."""
    from plsc.models import MODELS
    from plsc.models.complexity import model_facts

    facts = model_facts(MODELS.build(name, where="Model.name", **kwargs), (1, 3, input_size, input_size))
    size = f"{input_size}x{input_size}"
    return f"{name:<28} {facts['params_m']:>10.2f} {facts['gflops']:>8.2f} {size:>8}  {source}".rstrip()


def config_line(config_path, overrides, input_size=None):
    """The row of the backbone in `config_path`'s Model section (after `overrides`)."""
    from plsc.config import load_config
    from plsc.models import backbone_kwargs

    model_section = dict(load_config(config_path, overrides).Model)
    kwargs = backbone_kwargs(model_section)
    size = input_size or kwargs.get("input_size", DEFAULT_INPUT_SIZE)
    return report_line(model_section["name"], kwargs, size, os.path.basename(config_path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", nargs="+", help="YAML config(s) whose Model section is built")
    source.add_argument("--all", action="store_true", help="every registered backbone with default arguments")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="override a config key, e.g. -o Model.num_features=128 (repeatable)")
    parser.add_argument("--input-size", type=int, help="image side (default: Model.input_size or 112)")
    args = parser.parse_args(argv)

    print(HEADER, flush=True)
    if args.all:
        from plsc.models import MODELS

        for name in MODELS.names():
            print(report_line(name, {}, args.input_size or DEFAULT_INPUT_SIZE), flush=True)
        return 0
    failed = False
    for config_path in args.config:
        # One bad config is reported and skipped, so a glob over configs/ still lists the others.
        try:
            print(config_line(config_path, args.override, args.input_size), flush=True)
        except PlscError as error:
            message = str(error)
            if config_path not in message:
                message = f"{config_path}: {message}"
            print(f"model_info: error: {message}", file=sys.stderr, flush=True)
            failed = True
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
