"""Procedural synthetic face data: identities, aligned 112x112 renders, and data-set writers.

No real face data can be downloaded in CI, so plsc draws its own: `make_identity` gives a person
from (seed, index, group), `render_face` draws one photo of them aligned to the ArcFace template,
and the writers lay out PLSC-style training folders and verification pair sets.
Run `python -m plsc.data.synthetic --help` for the command line.
"""
from plsc.data.synthetic.identity import ARCFACE_TEMPLATE, GROUPS, FaceIdentity, make_identity
from plsc.data.synthetic.quickstart import ensure_quickstart_data
from plsc.data.synthetic.render import RENDER_VERSION, render_face
from plsc.data.synthetic.writers import (IMAGE_FORMATS, VERIFICATION_IDENTITY_OFFSET, encode_image,
                                         plan_verification_pairs, render_train_image, write_image_folder,
                                         write_verification_pairs)

__all__ = ["ARCFACE_TEMPLATE", "GROUPS", "FaceIdentity", "make_identity", "render_face", "RENDER_VERSION",
           "IMAGE_FORMATS", "VERIFICATION_IDENTITY_OFFSET", "encode_image", "plan_verification_pairs",
           "render_train_image", "write_image_folder", "write_verification_pairs", "ensure_quickstart_data"]
