"""The processes of one probe run: a single one, or the ranks of ``accelerate launch`` / ``torchrun``, each
scoring its share of the records."""

from __future__ import annotations

import os


class Processes:
    """This process's rank and share under ``accelerate launch`` / ``torchrun`` (or a single process).

    Both launchers set RANK, WORLD_SIZE and LOCAL_RANK; the process group is created here (NCCL on GPUs,
    Gloo on CPUs) only to wait for every rank before the summary."""

    def __init__(self, device: str | None):
        import torch

        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = device
        if self.world > 1:
            import torch.distributed as dist

            local = int(os.environ.get("LOCAL_RANK", "0"))
            if torch.cuda.is_available():
                self.device = device or f"cuda:{local}"
                torch.cuda.set_device(torch.device(self.device))
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        return items[self.rank :: self.world]

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def suffix(self) -> str:
        return "" if self.world == 1 else f".rank{self.rank}-of-{self.world}"
