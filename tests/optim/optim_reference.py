"""Numpy references of the update rules, written from the formulas (float64), shared by the optim tests."""
import numpy as np


def momentum_step(weight, velocity, grad, lr, momentum, weight_decay):
    """Momentum SGD with L2 decay in the gradient: returns (new weight, new velocity)."""
    grad = grad + weight_decay * weight
    velocity = momentum * velocity + grad
    return weight - lr * velocity, velocity


def adamw_step(weight, moment1, moment2, steps, grad, lr, beta1, beta2, epsilon, weight_decay):
    """AdamW with decoupled decay; `steps` (array broadcastable to rows) counts updates including this one.

    Returns (new weight, new moment1, new moment2).
    """
    weight = weight * (1.0 - lr * weight_decay)
    moment1 = beta1 * moment1 + (1.0 - beta1) * grad
    moment2 = beta2 * moment2 + (1.0 - beta2) * grad * grad
    corrected1 = moment1 / (1.0 - beta1 ** steps)
    corrected2 = moment2 / (1.0 - beta2 ** steps)
    return weight - lr * corrected1 / (np.sqrt(corrected2) + epsilon), moment1, moment2


class RowMomentum:
    """Momentum on a table where only some rows move per step (the sparse-update contract)."""

    def __init__(self, weight, momentum, weight_decay):
        self.weight = np.asarray(weight, np.float64).copy()
        self.velocity = np.zeros_like(self.weight)
        self.momentum, self.weight_decay = momentum, weight_decay

    def step(self, rows, grad_rows, lr):
        new_weight, new_velocity = momentum_step(self.weight[rows], self.velocity[rows], grad_rows, lr,
                                                 self.momentum, self.weight_decay)
        self.weight[rows], self.velocity[rows] = new_weight, new_velocity


class RowAdamW:
    """AdamW on a table where only some rows move; each row's bias correction counts its own updates."""

    def __init__(self, weight, beta1, beta2, epsilon, weight_decay):
        self.weight = np.asarray(weight, np.float64).copy()
        self.moment1 = np.zeros_like(self.weight)
        self.moment2 = np.zeros_like(self.weight)
        self.steps = np.zeros(len(self.weight), dtype=np.int64)
        self.beta1, self.beta2, self.epsilon, self.weight_decay = beta1, beta2, epsilon, weight_decay

    def step(self, rows, grad_rows, lr):
        self.steps[rows] += 1
        new = adamw_step(self.weight[rows], self.moment1[rows], self.moment2[rows], self.steps[rows][:, None],
                         grad_rows, lr, self.beta1, self.beta2, self.epsilon, self.weight_decay)
        self.weight[rows], self.moment1[rows], self.moment2[rows] = new


def global_norm(grads):
    """L2 norm of all arrays together."""
    return float(np.sqrt(sum(np.sum(np.asarray(grad, np.float64) ** 2) for grad in grads)))
