"""Dataset classes, registered by the names configs use."""
from plsc.data.dataset import face_identification, face_verification, mx_record  # noqa: F401
