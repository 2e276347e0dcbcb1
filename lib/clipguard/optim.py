"""AdamW that updates an embedding table row by row, with the same numbers as the dense fused AdamW.

The tiny CLIP's token embedding is 49,408 × 64 (3.2M of its 3.3M weights), and a batch of Fashion-MNIST captions
uses a few dozen of those rows. With a dense gradient every step zero-fills a 12.6 MB gradient, scatters the
batch's rows into it and runs AdamW over all 3.2M entries. :func:`sparse_embedding_grads` makes the table's
gradient sparse for the duration of a training run (the batch's token occurrences and their gradient rows), and
:class:`RowSparseAdamW` then updates only the rows that ever had a gradient:

* a row that has never had a gradient has zero moments, and dense AdamW leaves it ``p · (1 - lr · wd)`` (its Adam
  term is 0 / eps = 0): here it gets exactly that multiplication;
* every other row (the union of the rows seen so far) goes through torch's fused AdamW kernel on a gathered copy,
  with the dense kernel's arithmetic element by element; its gradient is summed in token order from zero, as the
  dense embedding backward sums it.

Weights and optimiser state are bit for bit those of ``torch.optim.AdamW(fused=True)`` with dense gradients
(tested on CLIP, CleanCLIP and SafeCLIP training and across a resume), for about 5% less time per CPU step
(``benchmarks/bench_train.py``). A gradient summed from several backward contributions to the table (the
embedding used twice in one loss) would be summed in another order; the objectives here embed every caption of a
step in one forward pass, and the tests check each of them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["RowSparseAdamW", "sparse_embedding_grads"]


class RowSparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (fused) that also takes the uncoalesced sparse gradients of
    :func:`sparse_embedding_grads`; dense gradients go through the parent unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen: dict[torch.Tensor, torch.Tensor] = {}  # table -> sorted rows that ever had a gradient

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._seen = {}  # rebuilt from the moments at the next step

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("RowSparseAdamW does not take a closure")
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.is_sparse:
                    self._sparse_step(param, group)
                    param.grad = None  # done: the parent's step skips it
        return super().step()

    def _sparse_step(self, param: torch.Tensor, group: dict) -> None:
        if param.ndim != 2 or group["amsgrad"] or group["maximize"] or group.get("capturable"):
            raise ValueError("RowSparseAdamW takes sparse gradients of 2-D tables only, without amsgrad, maximize "
                             "or capturable")
        grad = param.grad
        occurrences, values = grad._indices()[0], grad._values()
        state = self.state[param]
        if not state:  # as the fused AdamW initialises it
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        seen = self._seen.get(param)
        if seen is None:  # a fresh optimiser, or one loaded from a checkpoint: the rows with a non-zero moment
            seen = torch.nonzero((state["exp_avg"] != 0).any(1) | (state["exp_avg_sq"] != 0).any(1))[:, 0]
        seen = torch.unique(torch.cat([seen, occurrences]))
        self._seen[param] = seen
        rows_grad = torch.zeros(len(seen), param.shape[1], dtype=param.dtype, device=param.device)
        rows_grad.index_add_(0, torch.searchsorted(seen, occurrences), values)  # in token order, as dense
        rows, exp_avg, exp_avg_sq = param[seen], state["exp_avg"][seen], state["exp_avg_sq"][seen]
        state["step"] += 1
        lr, weight_decay = group["lr"], group["weight_decay"]
        if weight_decay:
            param.mul_(1 - lr * weight_decay)  # the rows never seen: all that dense AdamW does to them
        beta1, beta2 = group["betas"]
        torch._fused_adamw_([rows], [rows_grad], [exp_avg], [exp_avg_sq], [], [state["step"]], lr=lr, beta1=beta1,
                            beta2=beta2, weight_decay=weight_decay, eps=group["eps"], amsgrad=False, maximize=False)
        param[seen], state["exp_avg"][seen], state["exp_avg_sq"][seen] = rows, exp_avg, exp_avg_sq


@contextlib.contextmanager
def sparse_embedding_grads(model: torch.nn.Module, enabled: bool = True) -> Iterator[list[torch.nn.Embedding]]:
    """Within the block, every ``nn.Embedding`` of ``model`` with a trainable table gives a sparse gradient
    (restored afterwards, so code outside training sees the module as it was). Yields the switched modules."""
    switched = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad
                and not m.sparse] if enabled else []
    for module in switched:
        module.sparse = True
    try:
        yield switched
    finally:
        for module in switched:
            module.sparse = False
