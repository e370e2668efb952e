"""The config key tree: PLSC's face-config keys with their types and defaults, as one data table.

Adding a key or a section means adding a line here. Defaults follow PLSC's own (its engine's
`.get(key, default)` values) unless a comment says otherwise. Registry names refer to
`plsc.registry` (see `validate.py`).
"""
from plsc.config.nodes import (REQUIRED, Entry, FreeMapping, ListOf, OneOrList, Range, Registered, Section,
                               Value)

from plsc.federated.schema import FEDERATED  # a data table like this one (imports plsc.config.nodes only)

POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
OPTIONAL_STR = ("str", "none")
SCALAR = ("bool", "int", "float", "str")

GLOBAL = Section({
    # What a step optimises (plsc/engine/tasks.py): PLSC's face recognition, or MAE pre-training.
    "task_type": Value("str", "recognition", choices=("recognition", "mae_pretrain")),
    "train_epoch_func": Value("str", "default_train_one_epoch", choices=("default_train_one_epoch",)),
    "eval_func": Value("str", "face_verification_eval", choices=("face_verification_eval",)),
    "checkpoint": Value(OPTIONAL_STR, None),  # '<output_dir>/<model>/latest' to resume
    "pretrained_model": Value(OPTIONAL_STR, None),
    # Ours: a config (e.g. MAE pre-training) that plsc-train runs first when pretrained_model is missing.
    "pretrain_config": Value(OPTIONAL_STR, None),
    "finetune": Value("bool", False),  # PLSC: True means the pretrained weights are NOT loaded
    "output_dir": Value("str", "./output/"),
    # Ours: 'auto' picks the GPU when Paddle has one; PLSC's configs say 'gpu'.
    "device": Value("str", "auto", choices=("cpu", "gpu", "auto")),
    "save_interval": Value("int", 1, within=POSITIVE),  # epochs
    "max_num_latest_checkpoint": Value("int", 0, within=NON_NEGATIVE),  # 0: no epoch_N checkpoints
    "eval_during_train": Value("bool", False),
    "eval_interval": Value("int", 1, within=POSITIVE),  # in eval_unit
    "eval_unit": Value("str", "epoch", choices=("step", "epoch")),
    "accum_steps": Value("int", 1, within=POSITIVE),
    "epochs": Value("int", REQUIRED, within=POSITIVE),
    "max_train_step": Value(("int", "none"), None, within=POSITIVE),  # stop early (CI runs)
    "print_batch_step": Value("int", 10, within=POSITIVE),
    "use_visualdl": Value("bool", False),  # ours: off unless asked, visualdl is an optional install
    "seed": Value(("int", "none"), None),  # None: not seeded; each rank adds its rank
    # Paddle FLAGS_* set before training. PLSC's defaults are cuDNN flags, so no defaults here:
    # the trainer adds them on GPU only.
    "flags": FreeMapping(Value(SCALAR), key_prefix="FLAGS_", default={}),
    "use_dali": Value("bool", False),  # accepted for PLSC configs and ignored: plsc has no DALI reader
})

GRAD_SCALER = Section({
    "init_loss_scaling": Value("float", 2.0 ** 10, within=Range(0, low_open=True)),
    "max_loss_scaling": Value("float", 2.0 ** 32, within=Range(0, low_open=True)),
    "min_loss_scaling": Value("float", 1.0, within=Range(0, low_open=True)),  # ours: stops collapse to 0
    "incr_ratio": Value("float", 2.0, within=Range(1)),
    "decr_ratio": Value("float", 0.5, within=Range(0, 1, low_open=True)),
    "incr_every_n_steps": Value("int", 1000, within=POSITIVE),
    "decr_every_n_nan_or_inf": Value("int", 2, within=POSITIVE),
    "dynamic": Value("bool", True),
    "no_unscale_list": ListOf(Value("str"), []),
}, aliases={"use_dynamic_loss_scaling": "dynamic"})  # Paddle's GradScaler spelling

FP16 = Section({
    "level": Value("str", "O2", choices=("O0", "O1", "O2")),  # PLSC: O2 when the section has no level
    "fp16_custom_white_list": ListOf(Value("str"), []),
    "fp16_custom_black_list": ListOf(Value("str"), []),
    "GradScaler": GRAD_SCALER,
}, create=False)  # no FP16 section: plain fp32 training

DISTRIBUTED_STRATEGY = Section({
    "data_parallel": Value("bool", True),
})

class HeadSection(Registered):
    """`Model.pfc_config`: PLSC's Partial FC keys with their defaults, plus an optional `name` of another
    HEADS entry (e.g. SubCenterPartialFC) whose own keyword parameters then become valid keys too.
    Unlike other registry sections it may be absent (all defaults) and an absent name stays absent:
    the trainer then builds PartialFC, whose keys are exactly the fixed ones."""

    def __init__(self, fixed, supplied):
        super().__init__("HEADS", fixed=fixed, supplied=supplied)
        self.create = True

    def children_for(self, value, path, context):
        if value.get("name") is None:
            return {"name": Value(("str", "none")), **self.children}
        return super().children_for(value, path, context)


PARTIAL_FC = HeadSection({
    "sample_ratio": Value("float", 1.0, within=Range(0, 1, low_open=True)),
    "model_parallel": Value("bool", False),
    "sparse_update": Value("bool", True),
}, supplied=("num_classes", "embedding_size", "seed"))

# Backbone keys come from the registered constructor's signature; the head's from the head's (pfc_config).
MODEL = Registered("MODELS", fixed={
    # Required by the recognition task (it says so); MAE pre-training has no class layer.
    "class_num": Value(("int", "none"), None, within=POSITIVE),
    "pfc_config": PARTIAL_FC,
}, required=True)

LOSS_LIST = ListOf(Entry("LOSSES", extra={"weight": Value("float", 1.0)}))
LOSS = Section({"Train": LOSS_LIST, "Eval": LOSS_LIST}, create=False)

# `epochs` and `steps_per_epoch` come from Global.epochs and the train loader's length.
LR_SCHEDULER = Registered("LR_SCHEDULERS", supplied=("epochs", "steps_per_epoch"))

GRAD_CLIP = Section({
    "name": Value("str", "ClipGradByGlobalNorm", choices=("ClipGradByGlobalNorm",)),
    "clip_norm": Value("float", 1.0, within=Range(0, low_open=True)),
    "always_clip": Value("bool", False),
    "no_clip_list": ListOf(Value("str"), []),  # parameter-name substrings left unclipped ('dist')
    "clip_norm_max": Value(("float", "none"), None),
}, create=False)  # no grad_clip: no clipping

OPTIMIZER = Registered("OPTIMIZERS", fixed={
    "grad_clip": GRAD_CLIP,
    # Ours, typed here (the constructors default them to None, which says nothing about the type).
    # Layer-wise LR decay for ViT backbones (e.g. 0.75); absent or null: off.
    "layer_decay": Value(("float", "none"), within=Range(0, 1, low_open=True)),
    # No weight decay on 1-D parameters, biases and position embeddings; absent or null: on with layer_decay.
    "no_weight_decay_1d": Value(("bool", "none")),
})

DATASET = Registered("DATASETS", fixed={
    "transform_ops": ListOf(Entry("TRANSFORMS")),
}, required=True)

SAMPLER = Section({
    "name": Value("str", "DistributedBatchSampler",
                  choices=("DistributedBatchSampler", "BatchSampler")),
    "batch_size": Value("int", REQUIRED, within=POSITIVE),  # per rank
    "drop_last": Value("bool", False),
    "shuffle": Value("bool", False),
}, required=True)

LOADER = Section({
    "num_workers": Value("int", 0, within=NON_NEGATIVE),
    "use_shared_memory": Value("bool", True),
})

DATA_LOADER_TRAIN = Section({"dataset": DATASET, "sampler": SAMPLER, "loader": LOADER}, create=False)
# Evaluation may score several verification sets at once (lfw, cfp_fp, agedb_30): a list of datasets.
DATA_LOADER_EVAL = Section({"dataset": OneOrList(DATASET), "sampler": SAMPLER, "loader": LOADER}, create=False)
DATA_LOADER = Section({"Train": DATA_LOADER_TRAIN, "Eval": DATA_LOADER_EVAL}, create=False)

METRIC_LIST = ListOf(Entry("METRICS"))
METRIC = Section({"Train": METRIC_LIST, "Eval": METRIC_LIST}, create=False)

EXPORT = Section({
    "export_type": Value("str", "onnx", choices=("onnx", "paddle")),
    "input_shape": ListOf(Value(("int", "none")), [None, 3, 112, 112]),  # None: dynamic batch
})

# Ours: the quickstart renders its data from this section the first time it runs.
SYNTHETIC_DATA = Section({
    "root": Value("str", "./dataset/synthetic"),
    "num_classes": Value("int", 100, within=POSITIVE),
    "images_per_class": Value("int", 20, within=POSITIVE),
    "num_pairs": Value("int", 200, within=POSITIVE),
    "seed": Value("int", 0),
    "num_workers": Value("int", 0, within=NON_NEGATIVE),
    # folder: train/ + verification/; rec: train_rec/train.rec; bin: bin/{lfw,cfp_fp,agedb_30}.bin;
    # fairness: fairness/pairs/<group>.bin + fairness/folder/ (label.txt, groups.txt)
    "formats": ListOf(Value("str", choices=("folder", "rec", "bin", "fairness")), ["folder"]),
}, create=False)

# Global.task_type: mae_pretrain (plsc.models.mae.MAEPretrainModel's keys, FaceT's recipe as defaults).
MAE = Section({
    "mask_ratio": Value("float", 0.75, within=Range(0, 1, low_open=True)),
    "decoder_dim": Value("int", 516, within=POSITIVE),
    "decoder_depth": Value("int", 8, within=POSITIVE),
    "decoder_heads": Value("int", 12, within=POSITIVE),
    "decoder_mlp_ratio": Value("float", 3.0, within=Range(0, low_open=True)),
    "norm_pix_loss": Value("bool", False),
    "image_interval": Value("int", 0, within=NON_NEGATIVE),  # steps between reconstruction PNGs; 0: none
}, create=False)

SCHEMA = Section({
    "Global": GLOBAL,
    "FP16": FP16,
    "DistributedStrategy": DISTRIBUTED_STRATEGY,
    "Model": MODEL,
    "Loss": LOSS,
    "LRScheduler": LR_SCHEDULER,
    "Optimizer": OPTIMIZER,
    "DataLoader": DATA_LOADER,
    "Metric": METRIC,
    "Export": EXPORT,
    "SyntheticData": SYNTHETIC_DATA,
    "MAE": MAE,
    # FedFR (plsc-fedtrain); optional here, so plsc-train takes a FedFR config and trains its generic model.
    "Federated": FEDERATED,
}, required=True)
