"""bench/profile_preset.py on the tiny GAN: the hook and op tables come out, with the training step in them."""

from __future__ import annotations

from conftest import make_mnist, run_bench, table_rows
from runs import GAN


def test_profile_tables(tmp_path):
    data = make_mnist(tmp_path / "data", n_train=200, n_test=100)
    overrides = [o for o in GAN if not o.startswith(("debug=", "optimized_metric"))]
    proc = run_bench("profile_preset.py", "--steps", "3", "--warmup", "2", *overrides, f"paths.data_dir={data}",
                     cwd=tmp_path, cache_dir=tmp_path / "cache")
    hooks = table_rows(proc.stdout, "| Lightning hook (per-step ones) | ms/step |")
    assert "`[Strategy]SingleDeviceStrategy.training_step`" in [row[0] for row in hooks]
    ops = table_rows(proc.stdout, "| torch op | self CPU ms/step | share of wall | calls/step |")
    assert any("convolution" in row[0] for row in ops) and all(float(row[1]) >= 0 for row in ops)
