"""The `Federated` config section (FedFR): its keys, types and defaults as one data table.

plsc's main schema lists it as an optional section, so `plsc-train` accepts a FedFR config (and
trains its generic model); `plsc-fedtrain` requires it.
"""
from plsc.config.nodes import ListOf, Range, Section, Value

POSITIVE = Range(1)
UNIT = Range(0, 1)
OPTIONAL_STR = ("str", "none")

# The published protocol's counts (MS1M); small synthetic runs lower them.
SPLIT = Section({
    "source": Value(OPTIONAL_STR, None),  # a training set to split when data_dir holds no split yet
    "num_clients": Value("int", 40, within=POSITIVE),
    "ids_per_client": Value("int", 100, within=POSITIVE),
    "veri_per_id": Value("int", 40, within=POSITIVE),
    "fl_min_images": Value("int", 100, within=Range(0)),
    "fl_max_images": Value("int", 110, within=POSITIVE),
    "num_public": Value("int", 6000, within=POSITIVE),
    "public_min_images": Value("int", 60, within=Range(0)),
    "public_max_images": Value("int", 80, within=POSITIVE),
    "seed": Value("int", 100),
})

FEDERATED = Section({
    "data_dir": Value("str", "./dataset/fedfr"),  # public/, clients/client_NNN/, local_veri/, split.json
    "Split": SPLIT,
    # plsc-train checkpoint prefix of the generic model (backbone + public class centres); null: trained
    # here from this config (DataLoader.Train on the public set) into Global.output_dir/generic.
    "generic_model": Value(OPTIONAL_STR, None),
    "clients": ListOf(Value("str"), []),  # client folder names under data_dir/clients; empty: all
    "client_state_name": Value("str", "fedfr_state"),  # private state folder inside each client folder
    "keep_client_rounds": Value("int", 2, within=Range(0)),  # 0 keeps every round's private state
    "rounds": Value("int", 20, within=POSITIVE),
    "min_clients": Value("int", 1, within=POSITIVE),
    "round_retries": Value("int", 2, within=Range(0)),
    "seed": Value("int", 100),
    # Local epochs: E at round 1, then E <- max(min_local_epochs, E - local_epochs_step).
    "local_epochs": Value("int", 10, within=POSITIVE),
    "min_local_epochs": Value("int", 4, within=POSITIVE),
    "local_epochs_step": Value("int", 2, within=Range(0)),
    "lr_decay_fraction": Value("float", 0.75, within=Range(0, 1, low_open=True)),  # LR x gamma after this share of E
    "lr_decay_gamma": Value("float", 0.1, within=Range(0, 1, low_open=True)),
    "learning_rate": Value("float", 0.001, within=Range(0, low_open=True)),
    "momentum": Value("float", 0.9, within=UNIT),
    "weight_decay": Value("float", 5.0e-4, within=Range(0)),
    "batch_size": Value("int", 256, within=POSITIVE),
    "hard_negative_threshold": Value("float", 0.4, within=Range(-1, 1)),
    "cosface_scale": Value("float", 30.0, within=Range(0, low_open=True)),
    "cosface_margin": Value("float", 0.4, within=Range(0)),
    "bce_scale": Value("float", 30.0, within=Range(0, low_open=True)),
    "bce_margin": Value("float", 0.4, within=Range(0)),
    "bce_positive_weight": Value(("float", "arithmetic"), "0.7/30"),
    "bce_negative_weight": Value(("float", "arithmetic"), "0.3/30"),
    "contrastive_temperature": Value("float", 0.5, within=Range(0, low_open=True)),
    "bce_loss_weight": Value("float", 10.0, within=Range(0)),
    "contrastive_loss_weight": Value("float", 5.0, within=Range(0)),
    "average_public_centers": Value("bool", True),  # False keeps the generic model's public centres fixed
    "embed_batch_size": Value("int", 128, within=POSITIVE),
    "personal_fprs": ListOf(Value("float"), [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]),
    "personal_fpirs": ListOf(Value("float"), [1e-3, 1e-4, 1e-5, 1e-6]),
    "eval_every_round": Value("bool", True),
    "ijbc_root": Value(OPTIONAL_STR, None),  # IJB release folder (loose_crop/, meta/) for the generic model
    "ijbc_target": Value("str", "IJBC", choices=("IJBC", "IJBB")),
}, create=False)

