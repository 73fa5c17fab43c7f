"""aigc_lab's Hydra plugins: the Optuna sweeper (``hydra/sweeper=aigc_optuna``) and the one-job-per-device
launcher (``hydra/launcher=devices``).

The sweeper is a small replacement for ``hydra-optuna-sweeper`` (whose last release pins ``optuna<3`` and breaks
with SQLAlchemy 2): ask/tell over a current Optuna, failed trials recorded as FAIL instead of aborting the sweep, a
SQLite study in the sweep dir so that an interrupted study resumes, and studies shared by many workers
(``_storage.py``). Hydra finds both through the ``hydra_plugins`` namespace package; ``config.py`` registers their
configs, ``sweeper.py`` and ``launcher.py`` the plugins.
"""
