"""The launcher, ``python -m aigc_lab``, with timestamps of its startup phases: run by bench/startup.py.

    STARTUP_PROBE_OUT=marks.json python bench/startup_probe.py experiment=gan_mnist ...

Runs the real launcher (``aigc_lab.__main__.cli``) in this process with a few wrappers that only take
``CLOCK_MONOTONIC`` timestamps: at the entry of the Hydra task function ``main(cfg)`` and of ``train(cfg)``,
around the data module's ``prepare_data`` and
``setup``, the system's ``setup`` and ``configure_model``, every ``hydra.utils.instantiate`` of the data module,
the system and the trainer, and a last callback for the Lightning hooks up to the first training batch. At the
first batch it writes the marks (``STARTUP_PROBE_OUT``) and ends the process at once (``os._exit``): the rest of
the run does not matter here. ``STARTUP_PROBE_T0`` is the caller's timestamp just before it started us.

Each mark is ``[label, seconds]``: the label names what the interval ending at that mark was spent on.
"""

import time

T_PYTHON = time.clock_gettime(time.CLOCK_MONOTONIC)  # first statement: the interpreter is up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

MARKS: list[tuple[str, float]] = [("interpreter start", T_PYTHON)]
EXTRA: dict[str, Any] = {}


def mark(label: str) -> None:
    MARKS.append((label, time.clock_gettime(time.CLOCK_MONOTONIC)))


def wrap(obj: Any, name: str, before: str | None, after: str) -> None:
    """Mark ``before`` (if given) and ``after`` around ``obj.name()``; the first call only."""
    method = getattr(obj, name)
    done = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        if done:
            return method(*args, **kwargs)
        done.append(True)
        if before:
            mark(before)
        result = method(*args, **kwargs)
        mark(after)
        return result

    setattr(obj, name, timed)


def finish(trainer: Any) -> None:
    """At the first training batch: the StartupTimer's own figure, the marks to the file, and exit."""
    timer = next((c for c in trainer.callbacks if type(c).__name__ == "StartupTimer"), None)
    EXTRA["startup_timer_s"] = getattr(timer, "seconds", None)
    record = {"t0": float(os.environ.get("STARTUP_PROBE_T0", T_PYTHON)), "marks": MARKS, **EXTRA}
    with open(os.environ["STARTUP_PROBE_OUT"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the training, the test and every teardown


def marks_callback() -> Any:
    import lightning as L

    class Marks(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            mark("optimizers, model to device, model summary")

        def on_sanity_check_start(self, trainer, pl_module) -> None:
            mark("hyperparameters saved")

        def on_sanity_check_end(self, trainer, pl_module) -> None:
            mark("sanity check (validation batches)")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            mark("train loader, train start hooks")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            mark("first batch (loader iterator, fetch, to device, batch-start hooks)")
            finish(trainer)

    return Marks()


def timed_instantiate(instantiate: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(config: Any, *args: Any, **kwargs: Any) -> Any:
        target = str(config.get("_target_", "")) if hasattr(config, "get") else ""
        kind = ("data" if ".data." in target else "system" if ".systems." in target
                else "trainer" if target.endswith(".Trainer") else None)
        if kind == "data":
            mark("train(): imports, config check, config tree, provenance, seed")
        if kind == "trainer":
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), marks_callback()]
        obj = instantiate(config, *args, **kwargs)
        if kind == "data":
            mark("data module __init__")
            wrap(obj, "prepare_data", "hyperparameters to the loggers, fit entry",
                 "data prepare_data (tokenizer, token cache)")
            wrap(obj, "setup", "logger start (TensorBoard writer)", "data setup (datasets)")
        elif kind == "system":
            mark("system __init__ (the GAN builds its networks here)")
            wrap(obj, "setup", "callback setup hooks", "system setup (GAN: FID features, channels_last)")
            import lightning as L

            if type(obj).configure_model is not L.LightningModule.configure_model:
                wrap(obj, "configure_model", None, "model build (configure_model)")
        elif kind == "trainer":
            mark("callbacks, loggers, trainer")
        return obj

    return wrapper


def hook_task_function(decorated: Callable[..., Any], label: str) -> None:
    """Mark ``label`` when Hydra calls the task function: its cell in the ``@hydra.main`` closure is replaced
    by a wrapper (Hydra holds the function there, not as a module attribute)."""
    original = decorated.__wrapped__
    cell = next(c for c in decorated.__closure__ or () if c.cell_contents is original)

    def entered(cfg: Any) -> Any:
        mark(label)
        return original(cfg)

    cell.cell_contents = entered


def main() -> None:
    import hydra.utils

    import aigc_lab.__main__ as entry
    import aigc_lab.train as launcher

    mark("import the launcher (aigc_lab, hydra, omegaconf)")
    hook_task_function(launcher.main, "Hydra: plugins, resume check, config composition, run dir, logging")
    train = launcher.train

    def timed_train(cfg: Any, launch: Any = None) -> Any:
        mark("main(): imports (lightning, torch, torchmetrics, ...), STATUS file")
        return train(cfg, launch)

    launcher.train = timed_train  # main() looks train up at call time
    hydra.utils.instantiate = timed_instantiate(hydra.utils.instantiate)  # train() imports it at call time
    sys.argv = [entry.__file__, *sys.argv[1:]]
    entry.cli()
    raise SystemExit("the launcher returned before a training batch (train=false? max_steps=0?)")


if __name__ == "__main__":
    main()
