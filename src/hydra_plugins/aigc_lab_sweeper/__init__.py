"""aigc_lab's Optuna sweeper for Hydra: ``hydra/sweeper=aigc_optuna``.

A small replacement for ``hydra-optuna-sweeper`` (whose last release pins ``optuna<3`` and breaks with
SQLAlchemy 2): ask/tell over a current Optuna, failed trials recorded as FAIL instead of aborting the
sweep, and a SQLite study in the sweep dir so that an interrupted study resumes. Hydra finds it through
the ``hydra_plugins`` namespace package; ``config.py`` registers the config, ``sweeper.py`` the plugin.
"""
