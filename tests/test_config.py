"""plsc.config: YAML loading, PLSC quirks, `-o` overrides, key-tree validation, defaults, printing."""
import copy
import difflib
import pickle
from pathlib import Path

import pytest
import yaml

from plsc import registry as plsc_registry
from plsc.config import (Config, apply_override, evaluate_number, fill_defaults, format_config,
                         import_registries, load_config, normalise_yaml_quirks,
                         parse_override_value, validate)
from plsc.errors import PlscError
from plsc.registry import Registry

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
CONFIG_A = FIXTURES / "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml"
CONFIG_D = FIXTURES / "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc10_droppath005_mask0_1n8c_dp_mp_fp16o1.yaml"

# The registered names the two PLSC fixtures use, per schema registry key.
PLSC_NAMES = {
    "MODELS": ["IResNet50", "FaceViT_tiny_patch9_112"],
    "LOSSES": ["MarginLoss"],
    "LR_SCHEDULERS": ["Poly"],
    "OPTIMIZERS": ["Momentum", "AdamW"],
    "DATASETS": ["FaceIdentificationDataset", "FaceVerificationDataset"],
    "TRANSFORMS": ["DecodeImage", "RandFlipImage", "NormalizeImage", "ToCHWImage"],
    "METRICS": ["LFWAcc"],
}


def make_fake_registries():
    """Fresh registries with stand-in constructors whose keyword signatures follow PLSC's (facts 2-3)."""
    registries = {name: Registry(getattr(plsc_registry, name).kind)
                  for name in ("MODELS", "HEADS", "LOSSES", "DATASETS", "TRANSFORMS", "OPTIMIZERS",
                               "LR_SCHEDULERS", "METRICS")}
    models, losses = registries["MODELS"], registries["LOSSES"]
    schedulers, optimizers = registries["LR_SCHEDULERS"], registries["OPTIMIZERS"]
    datasets, transforms, metrics = registries["DATASETS"], registries["TRANSFORMS"], registries["METRICS"]

    @models.register("IResNet50")
    def _iresnet50(num_features=512, data_format="NCHW", dropout=0.0):
        pass

    @models.register("FaceViT_tiny_patch9_112")
    def _face_vit_tiny(num_features=512, drop_path_rate=0.0, mask_ratio=0.0):
        pass

    @losses.register("MarginLoss")
    def _margin_loss(m1=1.0, m2=0.5, m3=0.0, s=64.0, model_parallel=False):
        pass

    @schedulers.register("Poly")
    def _poly(learning_rate, decay_unit="step", warmup_steps=0, warmup_epochs=0, warmup_start_lr=0.0,
              warmup_end_lr=0.0, *, epochs, steps_per_epoch):
        pass

    @optimizers.register("Momentum")
    def _momentum(momentum=0.9, weight_decay=0.0, use_master_param=True, grad_clip=None):
        pass

    @optimizers.register("AdamW")
    def _adamw(betas=(0.9, 0.999), epsilon=1e-8, weight_decay=0.01, use_master_param=False,
               grad_clip=None):
        pass

    @datasets.register("FaceIdentificationDataset")
    def _identification(image_root, cls_label_path, transform_ops=None, delimiter="\t"):
        pass

    @datasets.register("FaceVerificationDataset")
    def _verification(image_root, cls_label_path, transform_ops=None, delimiter="\t"):
        pass

    @transforms.register("DecodeImage")
    def _decode(to_rgb=True, channel_first=False):
        pass

    @transforms.register("RandFlipImage")
    def _flip(flip_code=1):
        pass

    @transforms.register("NormalizeImage")
    def _normalize(scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), order="chw"):
        pass

    @transforms.register("ToCHWImage")
    def _to_chw():
        pass

    @metrics.register("LFWAcc")
    def _lfw_acc(flip_test=True, nrof_folds=10, pca=0):
        pass

    return registries


@pytest.fixture
def fakes():
    return make_fake_registries()


def write_yaml(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
Global:
  epochs: 2
Model:
  name: IResNet50
  class_num: 10
"""


def error_of(function, *args, **kwargs):
    with pytest.raises(PlscError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- override values and paths

@pytest.mark.parametrize("text, expected", [
    ("5", 5),
    ("-3", -3),
    ("0.25", 0.25),
    ("1e-4", 0.0001),
    ("5e-4", 0.0005),
    ("True", True),
    ("false", False),
    ("true", True),
    ("None", None),
    ("null", None),
    ("[1, [2, 3]]", [1, [2, 3]]),
    ("['a','b']", ["a", "b"]),
    ("[a, b]", ["a", "b"]),
    ("(0.9, 0.999)", (0.9, 0.999)),
    ("{'a': 1, 'b': [2, 3]}", {"a": 1, "b": [2, 3]}),
    ("{a: 1, b: 5e-4}", {"a": 1, "b": 0.0005}),
    ("[None, 3, 112, 112]", [None, 3, 112, 112]),
    ("IResNet50", "IResNet50"),
    ("./output/run 1", "./output/run 1"),
    ("1.0/255.0", "1.0/255.0"),
    ("__import__('os').getcwd()", "__import__('os').getcwd()"),
    ("'quoted'", "quoted"),
    ("", ""),
])
def test_override_value_typing(text, expected):
    value = parse_override_value(text)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, (list, tuple)):
        assert [type(item) for item in value] == [type(item) for item in expected]


def test_override_sets_nested_list_entry_and_keeps_the_rest():
    config = Config(normalise_yaml_quirks(yaml.safe_load(CONFIG_A.read_text())))
    apply_override(config, "Loss.Train.0.MarginLoss.m2=0.3")
    apply_override(config, "DataLoader.Train.dataset.transform_ops.1.RandFlipImage.flip_code=0")
    apply_override(config, "Export.input_shape.0=8")
    assert config["Loss"]["Train"][0]["MarginLoss"]["m2"] == 0.3
    assert config["Loss"]["Train"][0]["MarginLoss"]["m3"] == 0.0
    assert config["DataLoader"]["Train"]["dataset"]["transform_ops"][1] == {"RandFlipImage": {"flip_code": 0}}
    assert config["Export"]["input_shape"] == [8, 3, 112, 112]


def test_override_splits_at_the_first_equals_sign():
    config = apply_override(Config({"Global": {}}), "Global.output_dir=./runs/a=b")
    assert config["Global"]["output_dir"] == "./runs/a=b"


def test_override_creates_missing_keys_and_replaces_null():
    config = Config({"Global": {"epochs": 1}, "Loss": {"Train": [{"ToCHW": None}]}})
    apply_override(config, "Global.flags.FLAGS_cudnn_deterministic=1")
    apply_override(config, "SyntheticData.root=/tmp/x")
    apply_override(config, "Loss.Train.0.ToCHW.k=2")
    assert config["Global"] == {"epochs": 1, "flags": {"FLAGS_cudnn_deterministic": 1}}
    assert config["SyntheticData"] == {"root": "/tmp/x"}
    assert config["Loss"]["Train"][0] == {"ToCHW": {"k": 2}}
    assert isinstance(config.Global.flags, Config)


@pytest.mark.parametrize("override, fragment", [
    ("Global.epochs", "has no '='"),
    ("Global..epochs=1", "empty key part"),
    ("=3", "empty key part"),
    ("Loss.Train.5.MarginLoss.m2=0.3", "past the end of Loss.Train"),
    ("Loss.Train.first.m2=0.3", "must be an index"),
    ("Global.epochs.value=3", "Global.epochs is 20"),
    ("Global.epochs.0=3", "Global.epochs is 20"),
    ("Export.input_shape.1.x=3", "Export.input_shape.1 is 3"),
])
def test_malformed_override_names_the_override(override, fragment):
    config = Config(normalise_yaml_quirks(yaml.safe_load(CONFIG_A.read_text())))
    message = error_of(apply_override, config, override)
    assert f"'{override}'" in message
    assert fragment in message


# ---------------------------------------------------------------- PLSC YAML quirks

def test_evaluate_number_matches_python_arithmetic():
    assert evaluate_number("1.0/255.0") == 1.0 / 255.0
    assert evaluate_number(" (1 + 2) * 3 - 2 ** -1 ") == (1 + 2) * 3 - 2 ** -1
    assert evaluate_number("-4/8") == -0.5
    assert evaluate_number("5e-4") == 0.0005
    assert evaluate_number(7) == 7.0 and isinstance(evaluate_number(7), float)


@pytest.mark.parametrize("text", [
    "__import__('os')", "os.system('ls')", "x + 1", "abs(-1)", "[1]", "'a' * 3", "1 if 1 else 2",
    "1/0", "1e308 * 10", "9 ** 9 ** 9", "", "1.0/", "True + 1", None, [1.0],
])
def test_evaluate_number_refuses_anything_but_arithmetic(text):
    error_of(evaluate_number, text)


def test_normalise_yaml_quirks_types_strings_like_plsc():
    tree = yaml.safe_load("a: 5e-4\nb: 1e-8\nc: (0.9, 0.999)\nd: 1.0/255.0\ne: [None, 3, 'x']\n"
                          "f: ''\ng: ./data/\nh: 'IResNet50'\n")
    assert tree["a"] == "5e-4"  # what PyYAML (YAML 1.1) really does, the reason for the quirk handling
    normalised = normalise_yaml_quirks(tree)
    assert normalised == {"a": 0.0005, "b": 1e-8, "c": (0.9, 0.999), "d": "1.0/255.0",
                          "e": [None, 3, "x"], "f": "", "g": "./data/", "h": "IResNet50"}
    assert type(normalised["a"]) is float and type(normalised["c"]) is tuple


def test_plsc_config_quirks_after_loading(fakes):
    config_a = load_config(CONFIG_A, registries=fakes)
    assert config_a.Optimizer.weight_decay == 0.0005
    assert type(config_a.Optimizer.weight_decay) is float
    assert config_a.Export.input_shape == [None, 3, 112, 112]
    normalize = config_a.DataLoader.Train.dataset.transform_ops[2].NormalizeImage
    assert normalize.scale == "1.0/255.0"
    assert abs(evaluate_number(normalize.scale) - 1 / 255) < 1e-15
    assert normalize.order == ""
    config_d = load_config(CONFIG_D, registries=fakes)
    assert config_d.Optimizer.betas == (0.9, 0.999)
    assert type(config_d.Optimizer.betas) is tuple
    assert config_d.Optimizer.epsilon == 1e-8


# ---------------------------------------------------------------- PLSC configs load

@pytest.mark.parametrize("path", [CONFIG_A, CONFIG_D], ids=["config_A", "config_D"])
def test_plsc_config_loads_with_stand_in_registries(path, fakes):
    config = load_config(path, registries=fakes)
    raw = yaml.safe_load(path.read_text())
    # Every key the file sets keeps its value (modulo the quirk conversion).
    assert config.Model.class_num == raw["Model"]["class_num"]
    assert config.Global.epochs == raw["Global"]["epochs"]
    assert config.Global.device == "gpu"
    assert config.Loss.Train[0].MarginLoss.m3 == raw["Loss"]["Train"][0]["MarginLoss"]["m3"]
    assert config.DataLoader.Train.dataset.transform_ops[-1] == {"ToCHWImage": {}}


def test_plsc_ci_overrides_apply(fakes):
    # tests/CI/recognition/face: the pfc01 dp8 variant of config A (pfc 0.1, pure data-parallel FC).
    overrides = ["Global.print_batch_step=1", "Global.max_train_step=200",
                 "Global.flags.FLAGS_cudnn_exhaustive_search=0", "Global.flags.FLAGS_cudnn_deterministic=1",
                 "Model.pfc_config.sample_ratio=0.1", "Model.pfc_config.model_parallel=False",
                 "Loss.Train.0.MarginLoss.model_parallel=False"]
    config = load_config(CONFIG_A, overrides, registries=fakes)
    assert config.Global.max_train_step == 200
    assert config.Global.flags == {"FLAGS_cudnn_exhaustive_search": 0, "FLAGS_cudnn_deterministic": 1}
    assert config.Model.pfc_config == {"sample_ratio": 0.1, "model_parallel": False, "sparse_update": True}
    assert config.Loss.Train[0].MarginLoss.model_parallel is False


@pytest.mark.parametrize("path", [CONFIG_A, CONFIG_D], ids=["config_A", "config_D"])
def test_plsc_config_loads_with_real_registries(path):
    import_registries()
    missing = [f"{kind}:{name}" for kind, names in PLSC_NAMES.items() for name in names
               if name not in getattr(plsc_registry, kind)]
    relevant = [entry for entry in missing if entry.split(":")[1] in path.read_text()]
    if relevant:
        pytest.skip(f"not registered yet by their packages: {', '.join(relevant)}")
    config = load_config(path)
    assert config.Model.name in path.name


def test_import_registries_imports_existing_packages():
    imported = import_registries()
    assert "plsc.models" in imported and "plsc.loss" in imported


# ---------------------------------------------------------------- validation errors

def load_with(tmp_path, registries, overrides=(), text=MINIMAL):
    path = write_yaml(tmp_path, text)
    return path, (lambda: load_config(path, overrides, registries=registries))


def test_unknown_key_names_dotted_key_and_nearest(tmp_path, fakes):
    path, load = load_with(tmp_path, fakes, ["Model.bogus_key=1"])
    model_keys = ["name", "num_features", "data_format", "dropout", "class_num", "pfc_config"]
    nearest = difflib.get_close_matches("bogus_key", model_keys, n=1, cutoff=0)[0]
    assert error_of(load) == f"{path}: unknown key Model.bogus_key (did you mean Model.{nearest}?)"


@pytest.mark.parametrize("override, message", [
    ("Model.num_featurs=128", "unknown key Model.num_featurs (did you mean Model.num_features?)"),
    ("Gloabl.epochs=1", "unknown key Gloabl (did you mean Global?)"),
    ("Model.pfc_config.sample_rate=0.1",
     "unknown key Model.pfc_config.sample_rate (did you mean Model.pfc_config.sample_ratio?)"),
    ("FP16.GradScaler.init_loss_scale=8.0",
     "unknown key FP16.GradScaler.init_loss_scale (did you mean FP16.GradScaler.init_loss_scaling?)"),
])
def test_unknown_key_suggestions(tmp_path, fakes, override, message):
    path, load = load_with(tmp_path, fakes, [override])
    assert error_of(load) == f"{path}: {message}"


@pytest.mark.parametrize("override, message", [
    ("Loss.Train.0.MarginLoss.model_paralel=False",
     "unknown key Loss.Train.0.MarginLoss.model_paralel (did you mean Loss.Train.0.MarginLoss.model_parallel?)"),
    ("DataLoader.Train.dataset.transform_ops.0.DecodeImage.to_bgr=True",
     "unknown key DataLoader.Train.dataset.transform_ops.0.DecodeImage.to_bgr "
     "(did you mean DataLoader.Train.dataset.transform_ops.0.DecodeImage.to_rgb?)"),
    ("DataLoader.Train.dataset.transform_ops.3.ToCHWImage.order=1",
     "unknown key DataLoader.Train.dataset.transform_ops.3.ToCHWImage.order "
     "(DataLoader.Train.dataset.transform_ops.3.ToCHWImage takes no keys)"),
    ("Optimizer.grad_clip.clip_nrom=1.0",
     "unknown key Optimizer.grad_clip.clip_nrom (did you mean Optimizer.grad_clip.clip_norm?)"),
    ("Metric.Eval.0.LFWAcc.flip=False", "unknown key Metric.Eval.0.LFWAcc.flip (did you mean "
     "Metric.Eval.0.LFWAcc.flip_test?)"),
])
def test_unknown_key_in_entries(fakes, override, message):
    assert error_of(load_config, CONFIG_A, [override], registries=fakes) == f"{CONFIG_A}: {message}"


@pytest.mark.parametrize("override, message", [
    ("Global.epochs=ten", "Global.epochs must be an int, got 'ten'"),
    ("Global.epochs=True", "Global.epochs must be an int, got True"),
    ("Global.epochs=0", "Global.epochs must be >= 1, got 0"),
    ("Global.checkpoint=3", "Global.checkpoint must be a string or null, got 3"),
    ("Global.device=gpus", "Global.device must be one of 'cpu', 'gpu', 'auto', got 'gpus' "
                           "(did you mean 'gpu'?)"),
    ("Global.flags.cudnn=1", "key Global.flags.cudnn must start with 'FLAGS_'"),
    ("Model.num_features=12.5", "Model.num_features must be an int, got 12.5"),
    ("Model.data_format=5", "Model.data_format must be a string, got 5"),
    ("Model.pfc_config.sample_ratio=1.5", "Model.pfc_config.sample_ratio must be in (0, 1], got 1.5"),
    ("Model.pfc_config.sample_ratio=0", "Model.pfc_config.sample_ratio must be in (0, 1], got 0"),
    ("Model.pfc_config.model_parallel=yes",
     "Model.pfc_config.model_parallel must be a bool (True/False), got 'yes'"),
    ("Loss.Train.0.MarginLoss.s=big",
     "Loss.Train.0.MarginLoss.s must be a float or arithmetic text such as 1.0/255.0, got 'big'"),
    ("Loss.Train.0.MarginLoss.weight=[1]", "Loss.Train.0.MarginLoss.weight must be a float, got [1]"),
    ("Optimizer.grad_clip.no_clip_list=dist", "Optimizer.grad_clip.no_clip_list must be a list, got 'dist'"),
    ("Export.input_shape.0=-", "Export.input_shape.0 must be an int or null, got '-'"),
    ("DataLoader.Train.sampler.name=DistributedSampler",
     "DataLoader.Train.sampler.name must be one of 'DistributedBatchSampler', 'BatchSampler', "
     "got 'DistributedSampler' (did you mean 'DistributedBatchSampler'?)"),
    ("Loss.Train.0={'MarginLoss': {}, 'CosFace': {}}",
     "Loss.Train.0 must be a one-key mapping {Name: {...}}, got {'MarginLoss': {}, 'CosFace': {}}"),
    ("LRScheduler.epochs=3", "LRScheduler.epochs is supplied by the trainer, not the config"),
    ("FP16.GradScaler.use_dynamic_loss_scaling=False",
     "FP16.GradScaler.use_dynamic_loss_scaling and FP16.GradScaler.dynamic are the same key; set only one"),
])
def test_wrong_values_are_reported(fakes, override, message):
    overrides = [override]
    if "use_dynamic_loss_scaling" in override:
        overrides = [override, "FP16.GradScaler.dynamic=True"]
    assert error_of(load_config, CONFIG_A, overrides, registries=fakes) == f"{CONFIG_A}: {message}"


@pytest.mark.parametrize("override, message", [
    ("Model.name=IResNet5", "unknown model 'IResNet5' at Model.name (did you mean 'IResNet50'?)"),
    ("Loss.Train.0={'MarginLos': {}}", "unknown loss 'MarginLos' at Loss.Train.0 (did you mean 'MarginLoss'?)"),
    ("Optimizer.name=Momentun", "unknown optimizer 'Momentun' at Optimizer.name (did you mean 'Momentum'?)"),
    ("LRScheduler.name=poly", "unknown LR scheduler 'poly' at LRScheduler.name (did you mean 'Poly'?)"),
    ("DataLoader.Eval.dataset.name=FaceVerification",
     "unknown dataset 'FaceVerification' at DataLoader.Eval.dataset.name "
     "(did you mean 'FaceVerificationDataset'?)"),
    ("DataLoader.Eval.dataset.transform_ops.0={'Decode': None}",
     "unknown transform op 'Decode' at DataLoader.Eval.dataset.transform_ops.0 "
     "(did you mean 'DecodeImage'?)"),
    ("Metric.Eval.0={'LFWAccuracy': {}}",
     "unknown metric 'LFWAccuracy' at Metric.Eval.0 (did you mean 'LFWAcc'?)"),
    ("Model.name=5", "Model.name must be a model name (a string), got 5"),
])
def test_unknown_registry_names(fakes, override, message):
    assert error_of(load_config, CONFIG_A, [override], registries=fakes) == f"{CONFIG_A}: {message}"


def test_unknown_name_in_an_empty_registry(fakes):
    fakes["METRICS"] = Registry("metric")
    message = error_of(load_config, CONFIG_A, registries=fakes)
    assert message == (f"{CONFIG_A}: unknown metric 'LFWAcc' at Metric.Eval.0 "
                       "(no metric is registered; is its package importable?)")


@pytest.mark.parametrize("drop, message", [
    ("Model.name", "missing required key Model.name"),
    ("Model", "missing required key Model"),
    ("Global.epochs", "missing required key Global.epochs"),
    ("Global", "missing required key Global.epochs"),
    ("DataLoader.Train.dataset.image_root", "missing required key DataLoader.Train.dataset.image_root"),
    ("DataLoader.Eval.sampler.batch_size", "missing required key DataLoader.Eval.sampler.batch_size"),
    ("DataLoader.Eval.sampler", "missing required key DataLoader.Eval.sampler"),
    ("LRScheduler.learning_rate", "missing required key LRScheduler.learning_rate"),
])
def test_missing_required_keys(fakes, drop, message):
    config = Config(normalise_yaml_quirks(yaml.safe_load(CONFIG_A.read_text())))
    *parents, last = drop.split(".")
    node = config
    for part in parents:
        node = node[part]
    del node[last]
    assert error_of(validate, config, source="a.yaml", registries=fakes) == f"a.yaml: {message}"


@pytest.mark.parametrize("override, message", [
    ("Model=None", "missing required key Model (it is null)"),
    ("DataLoader.Train.dataset=None", "missing required key DataLoader.Train.dataset (it is null)"),
    ("DataLoader.Train.sampler=null", "missing required key DataLoader.Train.sampler (it is null)"),
    ("Global=None", "missing required key Global.epochs"),
])
def test_null_required_sections(fakes, override, message):
    assert error_of(load_config, CONFIG_A, [override], registries=fakes) == f"{CONFIG_A}: {message}"


def test_validate_without_source_gives_the_bare_message(fakes):
    config = Config({"Global": {"epochs": "ten"}, "Model": {"name": "IResNet50", "class_num": 2}})
    assert error_of(validate, config, registries=fakes) == "Global.epochs must be an int, got 'ten'"


# ---------------------------------------------------------------- defaults

def test_defaults_are_filled_from_plsc(tmp_path, fakes):
    path, load = load_with(tmp_path, fakes)
    config = load()
    # PLSC's engine defaults.
    assert config.Global.print_batch_step == 10
    assert config.Global.save_interval == 1
    assert config.Global.accum_steps == 1
    assert config.Global.max_train_step is None
    assert config.Global.checkpoint is None and config.Global.pretrained_model is None
    assert config.Global.finetune is False
    assert config.Global.flags == {}
    assert config.Global.device == "auto"
    assert config.DistributedStrategy.data_parallel is True
    assert config.Model.pfc_config == {"sample_ratio": 1.0, "model_parallel": False, "sparse_update": True}
    assert config.Export == {"export_type": "onnx", "input_shape": [None, 3, 112, 112]}
    # Optional sections stay absent; the backbone's own defaults are not copied into the config.
    for section in ("FP16", "Loss", "LRScheduler", "Optimizer", "DataLoader", "Metric", "SyntheticData"):
        assert section not in config
    assert set(config.Model) == {"name", "class_num", "pfc_config"}


def test_fp16_section_defaults_and_alias(tmp_path, fakes):
    text = MINIMAL + "FP16:\n  GradScaler:\n    use_dynamic_loss_scaling: False\n"
    config = load_with(tmp_path, fakes, text=text)[1]()
    assert config.FP16.level == "O2"
    assert config.FP16.GradScaler == {
        "dynamic": False, "init_loss_scaling": 1024.0, "max_loss_scaling": 2.0 ** 32,
        "min_loss_scaling": 1.0, "incr_ratio": 2.0, "decr_ratio": 0.5, "incr_every_n_steps": 1000,
        "decr_every_n_nan_or_inf": 2, "no_unscale_list": []}


def test_null_sections_switch_features_off(tmp_path, fakes):
    text = MINIMAL + ("FP16:\nOptimizer:\n  name: Momentum\n  grad_clip: null\n"
                      "Loss:\n  Train:\n    - MarginLoss:\n")
    config = load_with(tmp_path, fakes, text=text)[1]()
    assert config.FP16 is None
    assert config.Optimizer == {"name": "Momentum", "grad_clip": None}
    assert config.Loss.Train == [{"MarginLoss": {"weight": 1.0}}]


def test_filled_defaults_are_valid_and_idempotent(fakes):
    config = load_config(CONFIG_A, registries=fakes)
    validate(config, registries=fakes)
    assert fill_defaults(copy.deepcopy(config), registries=fakes) == config
    assert config.Optimizer.grad_clip.clip_norm_max is None
    assert config.Loss.Train[0].MarginLoss.weight == 1.0


# ---------------------------------------------------------------- Config and printing

def test_config_attribute_access(fakes):
    config = load_config(CONFIG_A, registries=fakes)
    assert isinstance(config, Config) and isinstance(config, dict)
    assert config.Global.epochs == config["Global"]["epochs"] == 20
    assert isinstance(config.Loss.Train[0], Config)
    assert config.Loss.Train[0].MarginLoss.m2 == 0.5
    assert config.DataLoader.Eval.dataset.transform_ops[0].DecodeImage.to_rgb is True
    config.Global.epochs = 3
    assert config["Global"]["epochs"] == 3
    config.Model.pfc_config = {"sample_ratio": 0.5}
    assert isinstance(config.Model.pfc_config, Config)
    assert not hasattr(config.Global, "no_such_key")
    with pytest.raises(AttributeError):
        del config.Global.no_such_key
    assert config.get("FP16").level == "O1"
    shallow = config.Global.copy()
    assert isinstance(shallow, Config) and shallow == config.Global and shallow is not config.Global
    plain = config.to_dict()
    assert type(plain) is dict and type(plain["Loss"]["Train"][0]) is dict
    assert plain == config


def test_config_survives_copy_and_pickle(fakes):
    config = load_config(CONFIG_D, registries=fakes)
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config
        assert isinstance(clone.Loss.Train[0], Config)
        assert clone.Optimizer.betas == (0.9, 0.999)
        clone.Global.epochs = 1
        assert config.Global.epochs == 40


@pytest.mark.parametrize("path", [CONFIG_A, CONFIG_D], ids=["config_A", "config_D"])
def test_format_config_reads_back_as_the_same_config(path, fakes):
    config = load_config(path, registries=fakes)
    text = format_config(config)
    assert "\nModel:\n  name: " in text
    assert "  - MarginLoss:\n      m1: 1.0" in text
    assert normalise_yaml_quirks(yaml.safe_load(text)) == config.to_dict()


def test_format_config_quotes_ambiguous_strings():
    config = Config({"A": {"empty": "", "looks_bool": "True", "colon": "a: b", "flags": {}, "items": ["x, y"]}})
    assert yaml.safe_load(format_config(config)) == config.to_dict()


# ---------------------------------------------------------------- files

def test_missing_file_names_the_path(tmp_path, fakes):
    path = tmp_path / "nope.yaml"
    assert error_of(load_config, path, registries=fakes) == f"config file not found: {path}"


def test_invalid_yaml_names_file_and_line(tmp_path, fakes):
    path = write_yaml(tmp_path, "Global:\n  epochs: 2\n  seed: [1, 2\n")
    message = error_of(load_config, path, registries=fakes)
    assert message.startswith(f"{path}:4: invalid YAML")


def test_top_level_must_be_a_mapping(tmp_path, fakes):
    path = write_yaml(tmp_path, "- Global\n- Model\n")
    assert error_of(load_config, path, registries=fakes) == (
        f"{path}: the top level must be a mapping of sections, got list")


def test_empty_file_reports_the_first_missing_key(tmp_path, fakes):
    path = write_yaml(tmp_path, "")
    assert error_of(load_config, path, registries=fakes) == f"{path}: missing required key Global.epochs"
