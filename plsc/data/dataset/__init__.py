"""Dataset classes, registered by the names configs use."""
from plsc.data.dataset import (balanced_face, boxed_list, face_identification, face_verification,  # noqa: F401
                               mx_record)
