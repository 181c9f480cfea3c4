"""Training loops, losses and seeding."""

from ._loop import seed_everything, single_thread, target_tensor, train_network
from ._losses import cox_partial_likelihood_loss, task_loss

__all__ = ["cox_partial_likelihood_loss", "seed_everything", "single_thread", "target_tensor", "task_loss", "train_network"]
