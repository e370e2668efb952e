"""Backbones: images [N, 3, H, W] -> embeddings [N, num_features]; importing this fills `MODELS`."""
from plsc.models import face_t, face_vit, iresnet, mobilefacenet  # noqa: F401  (registration side effects)
from plsc.registry import MODELS

# Keys of the config's `Model` section that belong to the training head, not the backbone.
NON_BACKBONE_KEYS = ("name", "class_num", "pfc_config")


def backbone_kwargs(model_section):
    """The `Model` section minus name/class_num/pfc_config: the keyword args of the backbone constructor."""
    return {key: value for key, value in model_section.items() if key not in NON_BACKBONE_KEYS}


def build_backbone(model_section):
    """Build the backbone named by `Model.name` from the rest of the `Model` section."""
    return MODELS.build(model_section["name"], where="Model.name", **backbone_kwargs(model_section))
