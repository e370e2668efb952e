"""The training optimizer: Paddle's Momentum / AdamW for the backbone, row-sparse updates for the class shard.

`build_optimizer(Optimizer config, dense parameters, sparse heads, lr, backbone=None)` returns a
`FaceOptimizer`. Its `step()` runs, in this order:
  1. all-reduce (sum) of the dense gradients across ranks,
  2. clipping by global norm (`Optimizer.grad_clip`),
  3. the dense update (paddle.optimizer.Momentum / AdamW, one Paddle parameter group per
     `ParameterGroup`: its LR scale and weight decay; see layer_decay.py),
  4. the sparse update of each head's sampled class-centre rows (never all-reduced: each rank
     owns its shard).

A sparse head is any object with `weight` [C_local, D] (a Parameter with stop_gradient=True),
`sampled_index` [S] int64 (unique rows) and `sampled_weight` [S, D], the values of those rows at
the forward, whose `.grad` is their gradient; optionally `model_parallel` (default True: the rows'
gradients differ per rank). step() consumes the gradient (the Momentum update uses its memory as
scratch space) and Momentum updates `sampled_weight` in place with the rows (one gather fewer).

The registered optimizers (`Momentum`, `AdamW`) are the update rules with PLSC's config keys; each
knows how to build the dense Paddle optimizer and how to update sparse rows.

`Optimizer.layer_decay: d` (ViT backbones that declare layer ids) scales the LR of backbone layer
`id` by d ** (num_lr_layers - 1 - id) and turns on the no-weight-decay rule for 1-D parameters,
biases and position embeddings (`Optimizer.no_weight_decay_1d` turns that rule on or off by
itself). The class-centre rows always learn at the schedule's LR.
"""
import paddle
from paddle.utils import unique_name

from plsc import distributed, fast_cpu
from plsc.errors import PlscError
from plsc.optim.grad_clip import build_grad_clip
from plsc.optim.layer_decay import check_layer_decay, check_no_weight_decay_1d, exempt_from_decay, group_parameters
from plsc.optim.sparse_momentum import sparse_adamw_update, sparse_momentum_update
from plsc.registry import OPTIMIZERS


def name_patterns(value):
    """A config list of name substrings: None -> [], 'a b' -> ['a', 'b'], a list stays a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return list(value)


def named_parameters(parameters):
    """[(names, parameter)] from Parameters or (structured name, Parameter) pairs.

    Name patterns (no_weight_decay_name, no_clip_list) match the structured name when one is
    given, and always Paddle's own `parameter.name` (what PLSC matched).
    """
    named = []
    for item in parameters:
        if isinstance(item, (tuple, list)):
            structured_name, parameter = item
            named.append(((structured_name, parameter.name), parameter))
        else:
            named.append(((item.name,), item))
    return named


class UpdateRule:
    """What the registered optimizers share: weight decay, its exemptions, layer-wise LR decay and the clip."""

    def __init__(self, weight_decay, grad_clip, no_weight_decay_name, layer_decay, no_weight_decay_1d):
        self.weight_decay = float(weight_decay)
        self.grad_clip = build_grad_clip(grad_clip)
        self.no_weight_decay_name = name_patterns(no_weight_decay_name)
        self.layer_decay = check_layer_decay(layer_decay)
        self.no_weight_decay_1d = check_no_weight_decay_1d(no_weight_decay_1d, self.layer_decay)

    def decays(self, names, parameter=None):
        """False when any of a parameter's `names` contains a `no_weight_decay_name` string, or the
        no-weight-decay rule is on and exempts `parameter` (1-D, bias, position embedding).

        The class-centre tables are asked without `parameter`: the rule is for backbone tensors.
        """
        if any(pattern in name for pattern in self.no_weight_decay_name for name in names):
            return False
        return not (self.no_weight_decay_1d and parameter is not None and exempt_from_decay(names, parameter))

    def group_parameters(self, named, backbone):
        """The dense parameters [(names, Parameter)] as ParameterGroups (LR scale, weight decay)."""
        return group_parameters(named, self.weight_decay, self.decays, self.layer_decay, backbone)


def paddle_groups(groups):
    """ParameterGroups -> Paddle's parameter groups.

    Paddle multiplies the optimizer's LR by a group's `learning_rate` at every step (it becomes
    each parameter's optimize_attr), so set_lr keeps driving all groups; a group's `weight_decay`
    overrides the optimizer's (Momentum: the L2 coefficient; AdamW: the decoupled coefficient,
    applied as p *= 1 - lr * scale * wd).
    """
    return [{"params": [parameter for _, parameter in group.parameters], "learning_rate": group.lr_scale,
             "weight_decay": group.weight_decay} for group in groups]


@OPTIMIZERS.register("Momentum")
class Momentum(UpdateRule):
    """Momentum SGD with L2 weight decay folded into the gradient: v = mu*v + g + wd*p; p -= lr*v.

    `use_master_param` keeps an fp32 copy of fp16 parameters (Paddle's multi_precision); under
    O1 the parameters are fp32 already, so it only matters for fp16 parameters.
    """

    sparse_state_names = ("velocity",)

    def __init__(self, momentum=0.9, weight_decay=0.0, use_master_param=True, grad_clip=None,
                 no_weight_decay_name=None, layer_decay=None, no_weight_decay_1d=None):
        super().__init__(weight_decay, grad_clip, no_weight_decay_name, layer_decay, no_weight_decay_1d)
        self.momentum = float(momentum)
        self.use_master_param = bool(use_master_param)

    def build_dense(self, groups, lr):
        return paddle.optimizer.Momentum(learning_rate=lr, momentum=self.momentum, parameters=paddle_groups(groups),
                                         weight_decay=self.weight_decay,
                                         multi_precision=self.use_master_param)

    def new_sparse_state(self, weight):
        return {"velocity": paddle.zeros_like(weight)}

    def update_sparse(self, weight, state, index, grad_rows, lr, weight_decay, weight_rows=None):
        sparse_momentum_update(weight, state["velocity"], index, grad_rows, lr, self.momentum, weight_decay,
                               weight_rows=weight_rows)


@OPTIMIZERS.register("AdamW")
class AdamW(UpdateRule):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd before the Adam step.

    PLSC passed a fixed eps of 1e-8 and ignored the configs' `epsilon` key; we honour it (the
    shipped configs set 1e-8, so they train the same). The class-centre rows use a row-sparse
    AdamW whose bias correction counts each row's own updates (see sparse_adamw_update).
    """

    sparse_state_names = ("moment1", "moment2", "row_steps")

    def __init__(self, betas=(0.9, 0.999), epsilon=1e-8, weight_decay=0.01, use_master_param=False,
                 grad_clip=None, no_weight_decay_name=None, layer_decay=None, no_weight_decay_1d=None):
        super().__init__(weight_decay, grad_clip, no_weight_decay_name, layer_decay, no_weight_decay_1d)
        if len(betas) != 2:
            raise PlscError(f"Optimizer.betas needs two numbers (beta1, beta2), got {betas}")
        self.beta1, self.beta2 = (float(beta) for beta in betas)
        self.epsilon = float(epsilon)
        self.use_master_param = bool(use_master_param)

    def build_dense(self, groups, lr):
        # Not AdamW's lr_ratio: Paddle implements it on GPU and XPU only; group LRs work everywhere.
        return paddle.optimizer.AdamW(learning_rate=lr, beta1=self.beta1, beta2=self.beta2,
                                      epsilon=self.epsilon, parameters=paddle_groups(groups),
                                      weight_decay=self.weight_decay, multi_precision=self.use_master_param)

    def new_sparse_state(self, weight):
        return {"moment1": paddle.zeros_like(weight), "moment2": paddle.zeros_like(weight),
                "row_steps": paddle.zeros([weight.shape[0]], dtype="int64")}

    def update_sparse(self, weight, state, index, grad_rows, lr, weight_decay, weight_rows=None):
        # weight_rows is not used: the AdamW update gathers the rows itself.
        sparse_adamw_update(weight, state["moment1"], state["moment2"], state["row_steps"], index, grad_rows,
                            lr, self.beta1, self.beta2, self.epsilon, weight_decay)


def head_key(position):
    """Key of a head's sparse state. Not the weight's name: that embeds the rank ('..._rank_00003'),
    and a checkpoint resharded to another world size must still find its state."""
    return f"head{position}"


def rename_state(state, renames):
    """Paddle optimizer state with each parameter-name prefix replaced by renames[prefix]."""
    def renamed(key):
        # Longest match first: 'fc_1.w_0' must not claim 'fc_11.w_0_velocity_0'.
        for old in sorted(renames, key=len, reverse=True):
            if key == old or key.startswith(old + "_"):
                return renames[old] + key[len(old):]
        return key

    result = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            result[key] = {renamed(name): tensor for name, tensor in value.items()}
        else:
            result[renamed(key)] = value
    return result


def merge_row_gradients(pending):
    """[(rows [S_k] int64 sorted unique, grad [S_k, D], leaf)] -> (union rows [U], summed grad [U, D], None)."""
    union = paddle.unique(paddle.concat([rows for rows, _, _ in pending]))  # sorted
    merged = paddle.zeros([union.shape[0], pending[0][1].shape[1]], dtype=pending[0][1].dtype)
    for rows, grad, _ in pending:
        merged = paddle.index_add(merged, paddle.searchsorted(union, rows), 0, grad)
    return union, merged, None


def step_rows(head):
    """(rows [S] int64, their gradient [S, D], leaf holding W_rows or None) of the head's last backward, or None.

    The leaf is None when the CPU kernel wrote the gradient over it (plsc.heads.partial_fc): it
    holds no weights any more, and the update reads W_rows from the table.
    """
    rows = head.sampled_weight
    if rows is None or rows.grad is None:
        return None
    leaf = None if fast_cpu.same_memory(rows, rows.grad) else rows
    return head.sampled_index, rows.grad, leaf


class FaceOptimizer:
    """Dense (data-parallel) plus row-sparse (model-parallel) optimizer behind one step()."""

    def __init__(self, rule, dense_parameters, sparse_heads, lr, backbone=None):
        self.rule = rule
        self.lr = float(lr)
        self.dense_named = [(names, parameter) for names, parameter in named_parameters(dense_parameters)
                            if not parameter.stop_gradient]
        self.heads = {head_key(position): head for position, head in enumerate(sparse_heads)}
        # Layer ids are looked up even without dense parameters, so a misconfigured model fails at once.
        self.groups = rule.group_parameters(self.dense_named, backbone)
        self.dense = rule.build_dense(self.groups, self.lr) if self.groups else None
        # head key -> {state name: tensor whose first axis runs over the shard's rows}; made lazily.
        self.sparse_state = {}
        # head key -> [(rows, their gradients, leaf)] of the micro-batches since the last step
        # (Global.accum_steps), and their merge, made once per step.
        self._pending = {}
        self._merged = None

    # ---- learning rate ----------------------------------------------------------------------
    def set_lr(self, lr):
        self.lr = float(lr)
        if self.dense is not None:
            self.dense.set_lr(self.lr)

    def get_lr(self):
        return self.lr

    def describe_groups(self):
        """One line per parameter group: layer id, LR scale, LR now, weight decay, parameter count."""
        lines = []
        for group in self.groups:
            layer = "-" if group.layer_id is None else group.layer_id
            lines.append(f"layer {layer}: lr scale {group.lr_scale:.6g}, lr {self.lr * group.lr_scale:.6g}, "
                         f"weight decay {group.weight_decay:g}, {len(group.parameters)} parameters "
                         f"({group.num_values()} values)")
        for key, head in self.heads.items():
            decays = getattr(head, "weight_decay", True) and self.rule.decays((head.weight.name,))
            weight_decay = self.rule.weight_decay if decays else 0.0
            lines.append(f"{key} class centres (sparse): lr scale 1, lr {self.lr:.6g}, weight decay {weight_decay:g}, "
                         f"{int(head.weight.size)} values on this rank")
        return lines

    # ---- gradients --------------------------------------------------------------------------
    def dense_gradients(self):
        """[(names, grad)] of the dense parameters that received a gradient."""
        return [(names, parameter.grad) for names, parameter in self.dense_named if parameter.grad is not None]

    def accumulate_sparse(self):
        """After a micro-batch's backward: keep the rows each table used and their gradients.

        With Global.accum_steps = K the trainer calls this after each of the K backwards and steps
        once: the union of the rows moves, each by the sum of its gradients (Partial FC samples
        afresh per micro-batch, and only the last sample stays on the head).
        """
        for key, head in self.heads.items():
            entry = step_rows(head)
            if entry is not None:
                index, grad, rows = entry
                # A copy: the head's CPU kernels write the next micro-batch's gradient into the same memory.
                self._pending.setdefault(key, []).append((index, grad.clone(), rows))
        self._merged = None

    def _sparse_rows(self):
        """{head key: (rows [S] int64, grad [S, D], leaf holding W_rows or None)} for the next step."""
        if self._merged is None:
            self._merged = {}
            for key, head in self.heads.items():
                pending = self._pending.get(key)
                if not pending:  # a step without accumulate_sparse(): the head's last backward
                    entry = step_rows(head)
                    pending = [] if entry is None else [entry]
                if len(pending) == 1:
                    self._merged[key] = pending[0]
                elif pending:
                    self._merged[key] = merge_row_gradients(pending)
        return self._merged

    def sparse_gradients(self):
        """[(names, grad rows [S, D], head)] of the heads that were used since the last clear_grad."""
        return [((self.heads[key].weight.name,), grad, self.heads[key])
                for key, (_, grad, _) in self._sparse_rows().items()]

    def named_gradients(self):
        """[(name, grad)] of every gradient the next step() uses (for the loss scaler)."""
        dense = [(names[-1], grad) for names, grad in self.dense_gradients()]
        return dense + [(names[-1], grad) for names, grad, _ in self.sparse_gradients()]

    def clear_grad(self):
        if self.dense is not None:
            self.dense.clear_grad()
        for head in self.heads.values():
            if head.sampled_weight is not None:
                head.sampled_weight.clear_gradient(False)  # None, not zeros: "no rows to update"
        self._pending, self._merged = {}, None

    # ---- the step ---------------------------------------------------------------------------
    @paddle.no_grad()
    def step(self):
        """All-reduce dense grads, clip, update the dense parameters, then the sampled rows."""
        dense = self.dense_gradients()
        for _, grad in dense:
            # SUM, not mean: the loss is already a mean over the global batch, and the embedding
            # all-gather's backward hands each rank the gradient of its own samples only, so the
            # per-rank gradients are disjoint parts of one total and add up to it.
            distributed.all_reduce(grad, "sum")
        sparse = self.sparse_gradients()
        if self.rule.grad_clip is not None:
            sharded = [(names, grad) for names, grad, head in sparse if getattr(head, "model_parallel", True)]
            replicated = [(names, grad) for names, grad, head in sparse
                          if not getattr(head, "model_parallel", True)]
            self.rule.grad_clip(dense + replicated, sharded)
        if self.dense is not None:
            # Paddle creates its accumulators at the first step, named after the parameter plus a
            # process-wide counter ('w_velocity_1' when an earlier optimizer held the same
            # parameter). A fresh name scope makes them '{parameter}_velocity_0' in every
            # optimizer, so a state saved by one optimizer loads into another over the same model.
            with unique_name.guard():
                self.dense.step()
        for key, (index, grad, weight_rows) in self._sparse_rows().items():
            head = self.heads[key]
            decays = getattr(head, "weight_decay", True) and self.rule.decays((head.weight.name,))
            weight_decay = self.rule.weight_decay if decays else 0.0
            self.rule.update_sparse(head.weight, self._sparse_state(key, head.weight), index, grad, self.lr,
                                    weight_decay, weight_rows=weight_rows)

    def _sparse_state(self, key, weight):
        if key not in self.sparse_state:
            self.sparse_state[key] = self.rule.new_sparse_state(weight)
        return self.sparse_state[key]

    # ---- state ------------------------------------------------------------------------------
    def dense_state_dict(self):
        """Paddle's optimizer state of the dense parameters (the same on every rank: saved once).

        Paddle keys the state by parameter name ('conv2d_14.w_0_velocity_0'), and those names
        depend on how many layers the process built before; the checkpoint keys it by the
        structured name ('stages.0.conv.weight_velocity_0') so any process can load it.
        """
        if self.dense is None:
            return {}
        return rename_state(self.dense.state_dict(), self._paddle_to_structured())

    def _paddle_to_structured(self):
        return {names[-1]: names[0] for names, _ in self.dense_named if len(names) == 2}

    def sparse_state_dict(self):
        """{head key: {state name: [C_local, ...] tensor}}: this rank's rows, saved per rank."""
        return {key: dict(state) for key, state in self.sparse_state.items()}

    def state_dict(self):
        return {"dense": self.dense_state_dict(), "sparse": self.sparse_state_dict()}

    def set_dense_state_dict(self, state):
        # Paddle keys the state by parameter name: the model must be built in the same order.
        if self.dense is not None:
            structured_to_paddle = {structured: name for name, structured in self._paddle_to_structured().items()}
            self.dense.set_state_dict(rename_state(state, structured_to_paddle))

    def set_sparse_state_dict(self, state):
        for key, tables in state.items():
            if key not in self.heads:
                raise PlscError(f"optimizer checkpoint has sparse state for '{key}', but the model has "
                                f"{len(self.heads)} class-centre head(s)")
            expected = set(self.rule.sparse_state_names)
            if set(tables) != expected:
                raise PlscError(f"optimizer checkpoint: sparse state of '{key}' has {sorted(tables)}, "
                                f"{type(self.rule).__name__} needs {sorted(expected)}")
            rows = self.heads[key].weight.shape[0]
            loaded = {}
            for name, table in tables.items():
                table = table.clone() if isinstance(table, paddle.Tensor) else paddle.to_tensor(table)
                if table.shape[0] != rows:
                    raise PlscError(f"optimizer checkpoint: '{key}.{name}' has {table.shape[0]} rows, "
                                    f"this rank's class shard has {rows}")
                loaded[name] = table
            self.sparse_state[key] = loaded

    def set_state_dict(self, state):
        self.set_dense_state_dict(state["dense"])
        self.set_sparse_state_dict(state["sparse"])


def build_optimizer(optimizer_config, dense_parameters, sparse_heads, lr, backbone=None):
    """`Optimizer` config section -> FaceOptimizer over the backbone parameters and the heads' shards.

    dense_parameters: Parameters, or (structured name, Parameter) pairs; sparse_heads: see the module
    docstring; lr: the learning rate of step 0; backbone: the model whose `num_lr_layers` and
    `layer_id(structured name)` place each parameter for `Optimizer.layer_decay` (needed only then).
    """
    kwargs = dict(optimizer_config)
    name = kwargs.pop("name", None)
    if name is None:
        raise PlscError("Optimizer.name is missing")
    known = OPTIMIZERS.parameters(name)
    for key in kwargs:
        if key not in known:
            raise PlscError(f"unknown key Optimizer.{key} for {name}; known: {', '.join(known)}")
    rule = OPTIMIZERS.build(name, where="Optimizer.name", **kwargs)
    return FaceOptimizer(rule, dense_parameters, sparse_heads, lr, backbone=backbone)
