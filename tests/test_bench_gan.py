"""bench/gan_speed.py in --tiny mode, in-process (the suite has torch and Lightning loaded already): every variant
trains and the table comes out. torch.compile variants (--compile) take ~40 s to compile here: not run in the
suite. No timing is asserted."""

from __future__ import annotations

import sys

import torch
from conftest import REPO, table_rows

sys.path.insert(0, str(REPO / "bench"))
import gan_speed  # noqa: E402  (bench/ is not a package)


def test_speed_table(monkeypatch, capsys, data_dir, single_thread):
    monkeypatch.setenv("AIGC_DATA_DIR", str(data_dir))
    assert gan_speed.main(["--tiny", "--optim", "for-loop", "foreach"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, gan_speed.TABLE_HEADER)
    assert [tuple(r[:4]) for r in rows] == [("32-true", "False", "fused", "False"),
                                            ("32-true", "True", "fused", "False"),
                                            ("bf16-mixed", "False", "fused", "False"),
                                            ("bf16-mixed", "True", "fused", "False"),
                                            ("32-true", "True", "for-loop", "False"),
                                            ("32-true", "True", "foreach", "False"),
                                            ("bf16-mixed", "True", "for-loop", "False"),
                                            ("bf16-mixed", "True", "foreach", "False")]
    assert "native bf16" in out  # the machine is named
    for row in rows:
        assert float(row[4]) > 0 and float(row[5]) > 0 and row[7] == "—" and float(row[8]) > 0
    assert rows[0][6] == "1.00x" and "batch fetch from the in-memory loader" in out


def test_optimizer_kernels_reach_adam():
    from hydra.utils import instantiate

    preset = gan_speed.preset([])
    assert preset.model.optimizer_g.fused is True and preset.model.optimizer_d.fused is True  # `auto` on a CPU
    for kernel, fused, foreach in (("fused", True, None), ("for-loop", False, False), ("foreach", False, True)):
        cfg = gan_speed.preset(gan_speed.optim_overrides(kernel))
        for net in ("optimizer_g", "optimizer_d"):
            adam = instantiate(cfg.model[net])([torch.nn.Parameter(torch.zeros(1))])
            assert (adam.defaults["fused"], adam.defaults["foreach"]) == (fused, foreach), (kernel, net)
