"""Tiny stand-ins for the parts the optimizer meets: parameters with known gradients and a sparse head."""
import numpy as np
import paddle
from paddle.utils import unique_name


def parameter(values, name):
    """A trainable Parameter holding `values` (float32), named `name` plus a suffix ('_3').

    Paddle refuses two parameters of one name in a process, and every test builds its own.
    """
    values = np.asarray(values, dtype=np.float32)
    param = paddle.create_parameter(list(values.shape), "float32", name=unique_name.generate(name),
                                    default_initializer=paddle.nn.initializer.Assign(values))
    param.stop_gradient = False
    return param


def give_gradients(params_and_grads):
    """Run a backward pass whose gradient for each parameter is exactly the given array."""
    loss = sum((param * paddle.to_tensor(np.asarray(grad, np.float32))).sum()
               for param, grad in params_and_grads)
    loss.backward()


class FakeHead:
    """The sparse-head interface: weight [C, D] (stop_gradient), sampled_index [S], sampled_weight [S, D]."""

    def __init__(self, weight, name="partialfc_dist_rank_00000_0.w", model_parallel=True):
        self.weight = parameter(weight, name)
        self.weight.stop_gradient = True
        self.model_parallel = model_parallel
        self.sampled_index = None
        self.sampled_weight = None

    def sample(self, index):
        """Like a forward: pick rows `index` as a fresh leaf tensor."""
        self.sampled_index = paddle.to_tensor(np.asarray(index, dtype=np.int64))
        rows = paddle.gather(self.weight, self.sampled_index)
        rows.stop_gradient = False
        self.sampled_weight = rows
        return rows

    def backward_rows(self, index, grad_rows):
        """Sample `index` and give those rows the gradient `grad_rows` [S, D]."""
        rows = self.sample(index)
        (rows * paddle.to_tensor(np.asarray(grad_rows, np.float32))).sum().backward()
