"""What one training step offers the losses; each loss names what it reads.

A loss class lists the attributes of `LossInputs` it takes, in order, in `inputs` (default
`("cos_logits", "labels_local")`, MarginLoss's forward). Derived quantities are computed on first
use, once per step, so a collective runs only when some loss needs it.

Gradient bookkeeping across ranks (DESIGN section 6): the backbone is data-parallel and the
optimizer SUMs its gradients over ranks, so every loss must hand each rank the gradient of the
global loss w.r.t. that rank's own rows, exactly once:
- quantities gathered over the global batch (`embeddings_global`, `embedding_norms_global`) are
  gathered like PartialFC gathers the embeddings: with a sharded class layer each rank uses them
  only through its shard, so their gradients are summed over ranks; with a replicated one every
  rank computes the whole loss, so each keeps its own rows' gradient;
- a term on this rank's rows (`embeddings`, `embedding_norms`, `group_logits`) is a sum over the
  rank's rows divided by the global batch size, then all-reduced with an identity backward.
"""
import paddle

from plsc import distributed
from plsc.errors import PlscError

DEFAULT_INPUTS = ("cos_logits", "labels_local")
# sqrt has an infinite derivative at 0: a zero embedding gets this norm (and no gradient) instead.
MIN_NORM = 1e-6


def safe_norm(embeddings):
    """L2 norm of each row, at least MIN_NORM, with a finite gradient everywhere: [N, D] -> [N]."""
    return paddle.sqrt(paddle.clip(paddle.sum(embeddings * embeddings, axis=1), min=MIN_NORM ** 2))


class LossInputs:
    """The step's tensors for the losses.

    cos_logits: [N_global, S_local] float32 cosines from the head; labels_local: [N_global] int64
    column of each row's class on this rank or -1; embeddings: [n, D] float32 this rank's rows (the
    backbone output, with gradient); labels: [n] int64; head: the class layer (its `model_parallel`
    says how rows were gathered); backbone: for auxiliary outputs such as GroupFace's group logits.
    """

    def __init__(self, cos_logits, labels_local, embeddings, labels, head, backbone=None):
        self.cos_logits = cos_logits
        self.labels_local = labels_local
        self.embeddings = embeddings
        self.labels = labels.reshape([-1]).astype("int64")
        self.head = head
        self.backbone = backbone
        self._cache = {}

    def _once(self, name, compute):
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @property
    def model_parallel(self):
        return bool(getattr(self.head, "model_parallel", False))

    @property
    def embeddings_global(self):
        """[N_global, D] every rank's rows in rank order, gradient routed back as PartialFC's gather."""
        return self._once("embeddings_global", lambda: distributed.all_gather_with_grad(
            self.embeddings, sum_grads=self.model_parallel))

    @property
    def labels_global(self):
        """[N_global] int64 class ids of the global batch."""
        return self._once("labels_global", lambda: distributed.all_gather(self.labels))

    @property
    def embedding_norms(self):
        """[n] L2 norms of this rank's embeddings (the MagFace magnitude), with gradient."""
        return self._once("embedding_norms", lambda: safe_norm(self.embeddings))

    @property
    def embedding_norms_global(self):
        """[N_global] norms of the global batch, gathered like `embeddings_global`."""
        return self._once("embedding_norms_global", lambda: distributed.all_gather_with_grad(
            self.embedding_norms, sum_grads=self.model_parallel))

    @property
    def group_logits(self):
        """[n, K] group-decision logits of this rank's rows from a GroupFace backbone's last forward."""
        logits = getattr(self.backbone, "group_logits", None)
        if logits is None:
            raise PlscError("GroupLoss needs a GroupFace_* model (Model.name) run in training mode; "
                            f"{type(self.backbone).__name__} has no group logits")
        return logits


def call_loss(loss, inputs):
    """Run `loss` on the attributes of `inputs` it names in `loss.inputs`: a scalar tensor."""
    return loss(*[getattr(inputs, name) for name in getattr(loss, "inputs", DEFAULT_INPUTS)])
