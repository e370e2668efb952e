"""Print a backbone's name, parameters (M) and GFLOPs (MACs * 1e-9 per image).

    python tools/model_info.py -c CONFIG [-o Model.key=value ...]   # the config's Model section
    python tools/model_info.py --all                                # every registered backbone, defaults
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from plsc.errors import PlscError  # noqa: E402
from plsc.models import MODELS, backbone_kwargs  # noqa: E402
from plsc.models.complexity import model_facts  # noqa: E402

DEFAULT_INPUT_SIZE = 112


def read_model_section(config_path, overrides):
    """The config's `Model` mapping with `Model.key=value` overrides applied (values parsed as YAML)."""
    try:
        with open(config_path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream) or {}
    except OSError as error:
        raise PlscError(f"{config_path}: cannot read config ({error.strerror})") from None
    model_section = dict(config.get("Model") or {})
    if "name" not in model_section:
        raise PlscError(f"{config_path}: no Model.name")
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or not key.startswith("Model.") or "." in key[len("Model."):]:
            raise PlscError(f"override '{override}': model_info accepts Model.<key>=value only")
        model_section[key[len("Model."):]] = yaml.safe_load(value)
    return model_section


def report_line(name, kwargs, input_size):
    facts = model_facts(MODELS.build(name, where="Model.name", **kwargs), (1, 3, input_size, input_size))
    return f"{name:<28} {facts['params_m']:>10.2f} {facts['gflops']:>8.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", help="YAML config whose Model section is built")
    source.add_argument("--all", action="store_true", help="every registered backbone with default arguments")
    parser.add_argument("-o", "--override", action="append", default=[], help="Model.key=value (repeatable)")
    parser.add_argument("--input-size", type=int, help="image side (default: Model.input_size or 112)")
    args = parser.parse_args(argv)

    print(f"{'name':<28} {'params (M)':>10} {'GFLOPs':>8}")
    try:
        if args.all:
            for name in MODELS.names():
                print(report_line(name, {}, args.input_size or DEFAULT_INPUT_SIZE), flush=True)
            return 0
        model_section = read_model_section(args.config, args.override)
        kwargs = backbone_kwargs(model_section)
        input_size = args.input_size or kwargs.get("input_size", DEFAULT_INPUT_SIZE)
        print(report_line(model_section["name"], kwargs, input_size))
    except PlscError as error:
        print(f"model_info: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
