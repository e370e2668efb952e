"""A backbone with no batch statistics (flatten + linear), registered as `LinearFace` for tests where a
batch split into micro-batches must give exactly the gradients of the whole batch."""
import paddle.nn as nn

from plsc.registry import MODELS

if "LinearFace" not in MODELS:
    @MODELS.register("LinearFace")
    class LinearFace(nn.Layer):
        """images [N, 3, S, S] -> [N, num_features]: one linear map of the pixels."""

        def __init__(self, num_features=16, input_size=32, data_format="NCHW"):
            super().__init__()
            self.data_format = data_format
            self.fc = nn.Linear(3 * input_size * input_size, num_features)

        def forward(self, images):
            return self.fc(images.flatten(1))
