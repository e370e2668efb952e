"""Mixed precision: fp16 O1 auto_cast and a dynamic loss scaler that also sees the sparse class-centre grads.

O1 casts activations only: matmuls and convolutions run in fp16, while the parameters, and so
the master weights the optimizer updates, stay fp32 (no separate master copy is needed). The ops
in `FP32_OPS` (softmax, normalisations, exp/log, reductions, the loss) stay fp32 because their
range or accumulation overflows or loses too much in fp16. On CPU Paddle's auto_cast has no
effect (no fp16 kernels) but the loss-scaling logic runs all the same. O2 (fp16 parameters) is
not supported.

Paddle's GradScaler only unscales the parameters its optimizer holds; the class-centre rows
(`sampled_weight.grad`) are not parameters, so `DynamicLossScaler` asks the `FaceOptimizer` for
every gradient, and all ranks agree on skipping a step through an all-reduced found-inf flag.
"""
import contextlib
import inspect

import paddle

from plsc import distributed
from plsc.errors import PlscError

SUPPORTED_LEVELS = ("O0", "O1")
UNSUPPORTED_LEVEL = ("FP16.level '{}' is not supported; use O1 (fp16 activations, fp32 weights) or O0 "
                     "(fp32). PLSC reads a missing level as O2, so write `level: O1` explicitly")

# Kept in fp32 under O1 in addition to Paddle's own black list. batch_norm is left to Paddle
# (fp16 input, fp32 statistics), as torch.autocast does.
FP32_OPS = frozenset({
    "softmax", "log_softmax", "cross_entropy", "cross_entropy2", "cross_entropy_with_softmax",
    "softmax_with_cross_entropy", "margin_cross_entropy", "c_softmax_with_cross_entropy",
    "exp", "log", "logsumexp", "pow", "square", "sqrt", "rsqrt",
    "sum", "reduce_sum", "mean", "reduce_mean", "max", "reduce_max", "cumsum",
    "p_norm", "norm", "squared_l2_norm", "frobenius_norm", "layer_norm", "group_norm", "instance_norm",
    "acos", "cos",
})


def autocast(level="O1", custom_white_list=(), custom_black_list=()):
    """A context running the forward in fp16 O1 with FP32_OPS kept fp32; a no-op for O0."""
    if level not in SUPPORTED_LEVELS:
        raise PlscError(UNSUPPORTED_LEVEL.format(level))
    if level == "O0":
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, level="O1", dtype="float16",
                                custom_white_list=set(custom_white_list),
                                custom_black_list=FP32_OPS | set(custom_black_list))


def next_loss_scale(scale, good_steps, bad_steps, found_inf, incr_ratio, decr_ratio, incr_every_n_steps,
                    decr_every_n_nan_or_inf, min_loss_scaling, max_loss_scaling):
    """(scale, good_steps, bad_steps) after one step: grow after N good steps in a row, shrink after M bad."""
    if found_inf:
        good_steps, bad_steps = 0, bad_steps + 1
        if bad_steps == decr_every_n_nan_or_inf:
            # The floor keeps the scale from collapsing to 0 when a model produces inf gradients
            # for a long stretch (the scale would then never recover).
            scale, bad_steps = max(scale * decr_ratio, min_loss_scaling), 0
    else:
        good_steps, bad_steps = good_steps + 1, 0
        if good_steps == incr_every_n_steps:
            scale, good_steps = min(scale * incr_ratio, max_loss_scaling), 0
    return scale, good_steps, bad_steps


class NonFiniteError(PlscError):
    """A loss or gradient is inf/nan where no dynamic loss scale expects it; the step was not taken."""


class DynamicLossScaler:
    """Loss scaling with PLSC's GradScaler keys; `step(optimizer)` unscales, checks and maybe skips.

    `no_unscale_list` (PLSC): gradients whose parameter name contains one of these strings are
    neither unscaled nor checked, exactly as in PLSC; only useful if something else unscales them.
    """

    def __init__(self, init_loss_scaling=2.0 ** 10, max_loss_scaling=2.0 ** 32, min_loss_scaling=1.0,
                 incr_ratio=2.0, decr_ratio=0.5, incr_every_n_steps=1000, decr_every_n_nan_or_inf=2,
                 dynamic=True, no_unscale_list=(), enable=True):
        if not min_loss_scaling <= init_loss_scaling <= max_loss_scaling:
            raise PlscError(f"FP16.GradScaler: init_loss_scaling {init_loss_scaling} must lie within "
                            f"[min_loss_scaling {min_loss_scaling}, max_loss_scaling {max_loss_scaling}]")
        self.enable = bool(enable)
        self.scale_value = float(init_loss_scaling) if self.enable else 1.0
        self.max_loss_scaling = float(max_loss_scaling)
        self.min_loss_scaling = float(min_loss_scaling)
        self.incr_ratio = float(incr_ratio)
        self.decr_ratio = float(decr_ratio)
        self.incr_every_n_steps = int(incr_every_n_steps)
        self.decr_every_n_nan_or_inf = int(decr_every_n_nan_or_inf)
        self.dynamic = bool(dynamic)
        self.no_unscale_list = list(no_unscale_list or ())
        self.good_steps = 0
        self.bad_steps = 0
        self.skipped_last_step = False

    @property
    def loss_scale(self):
        return self.scale_value

    def scale(self, loss):
        """loss * scale (the tensor to call backward() on)."""
        return loss * self.scale_value if self.enable else loss

    @paddle.no_grad()
    def unscale_and_check(self, optimizer):
        """Divide every gradient of `optimizer` by the scale in place; True if any rank saw inf/nan."""
        grads = [grad for name, grad in optimizer.named_gradients()
                 if not any(pattern in name for pattern in self.no_unscale_list)]
        inverse = 1.0 / self.scale_value
        found_inf = paddle.zeros([1], dtype="float32")
        for grad in grads:
            if inverse != 1.0:
                grad.scale_(inverse)
            bad = paddle.logical_not(paddle.isfinite(grad).all()).astype("float32").reshape([1])
            found_inf = paddle.maximum(found_inf, bad)
        # MAX over ranks: an inf in one rank's class-centre rows (which are never all-reduced)
        # must stop every rank, or the dense weights would diverge between ranks.
        distributed.all_reduce(found_inf, "max")
        return bool(found_inf.item() > 0)

    def step(self, optimizer):
        """Unscale, then optimizer.step() unless some rank found inf/nan; update the scale. True if stepped.

        Without loss scaling (O0) an inf/nan gradient is not an fp16 overflow to skip but a diverged
        run: NonFiniteError, raised before the weights change. With a scale (dynamic or static, as
        Paddle's GradScaler) such a step is skipped.
        """
        found_inf = self.unscale_and_check(optimizer)
        if found_inf and not self.enable:
            raise NonFiniteError("a gradient is not finite (inf or nan)")
        if not found_inf:
            optimizer.step()
        self.skipped_last_step = found_inf
        if self.dynamic:
            self.scale_value, self.good_steps, self.bad_steps = next_loss_scale(
                self.scale_value, self.good_steps, self.bad_steps, found_inf, self.incr_ratio,
                self.decr_ratio, self.incr_every_n_steps, self.decr_every_n_nan_or_inf,
                self.min_loss_scaling, self.max_loss_scaling)
        return not found_inf

    def state_dict(self):
        return {"scale": self.scale_value, "good_steps": self.good_steps, "bad_steps": self.bad_steps}

    def set_state_dict(self, state):
        self.scale_value = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.bad_steps = int(state["bad_steps"])


class AmpPolicy:
    """The `FP16` section: the forward's autocast context and the loss scaler (disabled at O0)."""

    def __init__(self, level="O1", fp16_custom_white_list=(), fp16_custom_black_list=(), GradScaler=None):
        if level not in SUPPORTED_LEVELS:
            raise PlscError(UNSUPPORTED_LEVEL.format(level))
        self.level = level
        self.custom_white_list = tuple(fp16_custom_white_list or ())
        self.custom_black_list = tuple(fp16_custom_black_list or ())
        self.scaler = build_loss_scaler(GradScaler, enable=level != "O0")

    def autocast(self):
        return autocast(self.level, self.custom_white_list, self.custom_black_list)

    @property
    def dynamic(self):
        """True when non-finite steps are expected and skipped by a dynamic loss scale."""
        return self.scaler.enable and self.scaler.dynamic

    @property
    def loss_scale(self):
        return self.scaler.loss_scale


def check_keys(constructor, kwargs, where):
    """PlscError naming the first key of `kwargs` that `constructor` does not take."""
    known = [name for name in inspect.signature(constructor).parameters if name != "self"]
    for key in kwargs:
        if key not in known:
            raise PlscError(f"unknown key {where}.{key}; known: {', '.join(known)}")


def build_loss_scaler(section, enable=True):
    """`FP16.GradScaler` (a mapping or None) -> DynamicLossScaler."""
    kwargs = dict(section or {})
    if "use_dynamic_loss_scaling" in kwargs:  # Paddle's spelling of the same switch
        kwargs["dynamic"] = kwargs.pop("use_dynamic_loss_scaling")
    kwargs.pop("enable", None)  # the level decides
    check_keys(DynamicLossScaler, kwargs, "FP16.GradScaler")
    return DynamicLossScaler(enable=enable, **kwargs)


def build_amp(fp16_config):
    """The `FP16` config section (None: fp32 training) -> AmpPolicy."""
    if not fp16_config:
        return AmpPolicy(level="O0")
    kwargs = dict(fp16_config)
    check_keys(AmpPolicy, kwargs, "FP16")
    return AmpPolicy(**kwargs)
