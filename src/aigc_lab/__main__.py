"""``python -m aigc_lab`` and the ``aigc-train`` script: the launcher, with resuming (``ckpt_path=last``)."""

from __future__ import annotations

import sys

from aigc_lab.utils.signals import stops_on_signals


@stops_on_signals("train")  # SIGTERM and Ctrl+C in every stage (utils/signals.py)
def cli() -> None:
    """Rewrite a resuming command line into the run's own folder and overrides and check it whole before
    anything is written there (resume.py), then start Hydra."""
    from aigc_lab.errors import UserError
    from aigc_lab.resume import launch_argv
    from aigc_lab.train import main
    from aigc_lab.utils.ddp import external_rank_overrides
    from aigc_lab.utils.kernel_caches import bound_kernel_caches
    from aigc_lab.utils.malloc import keep_freed_memory

    keep_freed_memory()  # before the first tensor, where glibc malloc runs: faster steps (utils/malloc.py)
    bound_kernel_caches()  # before the first matmul: flat memory when batch shapes vary (utils/kernel_caches.py)
    try:
        sys.argv = launch_argv(sys.argv)
        sys.argv += external_rank_overrides(sys.argv)  # torchrun/srun ranks > 0: no .hydra/ of their own
    except UserError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl+C while a resume is checked: nothing was written yet
        print("\ninterrupted (Ctrl+C) before the launch: nothing was written", file=sys.stderr)
        sys.exit(130)
    main()


def main() -> None:
    """The command: the launcher in a process that runs with mimalloc where it is installed (utils/malloc.py)."""
    from aigc_lab.utils.malloc import start_with_mimalloc

    start_with_mimalloc()  # first: it may restart this process, before torch is imported
    cli()


if __name__ == "__main__":
    main()
