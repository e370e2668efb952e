"""The `Loss.Train` list as one objective: a weighted sum of registered losses, their state and tables.

Life of a CombinedLoss in the trainer:
  attach(head)          once, after the class layer is built: every loss learns the class layer's
                        layout (model_parallel, shard) and class tables are created; returns the
                        tables for the sparse optimizer;
  __call__(inputs)      every step, on a plsc.loss.inputs.LossInputs;
  with_sample_losses(inputs)   the same, plus each row's loss for logging per group
                        (plsc.loss.per_sample), when the training data has groups;
  state_dict()          running statistics (identical on every rank: saved once, in P.pdopt);
  tables()              the class tables the losses own (saved and resharded with the class layer's).
Entries are keyed `{position}.{name}` (e.g. '1.CenterLoss'), so two entries of one name stay apart.
"""
import numpy as np
import paddle

from plsc.errors import PlscError
from plsc.loss.inputs import call_loss
from plsc.loss.per_sample import take_row_losses
from plsc.registry import LOSSES


class CombinedLoss:
    """Weighted sum of the `Loss.Train` entries; returns the total and each named part."""

    def __init__(self, entries):
        self.parts = []  # (key, name, weight, loss)
        for position, entry in enumerate(entries):
            (name, kwargs), = entry.items()
            kwargs = dict(kwargs or {})
            weight = float(kwargs.pop("weight", 1.0))
            loss = LOSSES.build(name, where=f"Loss.Train.{position}", **kwargs)
            self.parts.append((f"{position}.{name}", name, weight, loss))

    def attach(self, head):
        """Bind every loss to the class layer `head`; returns the class tables the losses own ([] if none)."""
        tables = []
        for key, _, _, loss in self.parts:
            if hasattr(loss, "attach"):
                tables += loss.attach(head)
            elif getattr(loss, "model_parallel", False) is None:
                loss.model_parallel = head.model_parallel  # None: follow Model.pfc_config
            elif hasattr(loss, "model_parallel") and bool(loss.model_parallel) != bool(head.model_parallel):
                # A sharded softmax needs its collectives; a replicated one must not sum over ranks.
                raise PlscError(f"Loss.Train.{key}.model_parallel is {loss.model_parallel} but "
                                f"Model.pfc_config.model_parallel is {head.model_parallel}; set both alike")
        return tables

    def __call__(self, inputs):
        """inputs: LossInputs -> (total scalar, {name: scalar})."""
        total, named, _ = self._run(inputs, with_rows=False)
        return total, named

    def with_sample_losses(self, inputs):
        """inputs: LossInputs -> (total, {name: scalar}, rows): rows [N_global] float32 (no gradient) is
        the weighted sum of the per-row losses of the entries that have them, None when none has."""
        return self._run(inputs, with_rows=True)

    def _run(self, inputs, with_rows):
        named, weighted_rows = {}, []
        for _, name, weight, loss in self.parts:
            named[name] = call_loss(loss, inputs)
            # Taken on every call, so no loss holds on to a step's rows after it.
            rows = take_row_losses(loss)
            if with_rows and rows is not None:
                weighted_rows.append(weight * rows)
        total = sum(weight * named[name] for _, name, weight, _ in self.parts)
        return total, named, (sum(weighted_rows) if weighted_rows else None)

    # ---- running statistics (replicated) ------------------------------------------------------
    def state_dict(self):
        """{entry key: {buffer name: numpy array}} of the losses that keep running statistics."""
        state = {}
        for key, _, _, loss in self.parts:
            buffers = {name: buffer.numpy().copy() for name, buffer in loss.named_buffers()}
            if buffers:
                state[key] = buffers
        return state

    def set_state_dict(self, state):
        """Restore running statistics saved by state_dict(); a mismatch with Loss.Train is a PlscError."""
        for key, _, _, loss in self.parts:
            buffers = dict(loss.named_buffers())
            if not buffers:
                continue
            saved = state.get(key)
            if saved is None or set(saved) != set(buffers):
                raise PlscError(f"the checkpoint has no running statistics {sorted(buffers)} for Loss.Train.{key} "
                                f"(it has: {', '.join(sorted(state)) or 'none'}); was it trained with another "
                                "Loss.Train?")
            for name, buffer in buffers.items():
                buffer.set_value(paddle.to_tensor(np.asarray(saved[name]), dtype=buffer.dtype))

    # ---- class tables (sharded) ---------------------------------------------------------------
    def tables(self):
        """{entry key: ClassTable} of the losses that own one (after attach)."""
        return {key: loss.table for key, _, _, loss in self.parts if getattr(loss, "table", None) is not None}
