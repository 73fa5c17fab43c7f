"""bench/gan_speed.py in --tiny mode, in-process (the suite has torch and Lightning loaded already): every variant
trains and the table comes out. torch.compile variants (--compile) take ~40 s to compile here: not run in the
suite. No timing is asserted."""

from __future__ import annotations

import sys

from conftest import REPO, table_rows

sys.path.insert(0, str(REPO / "bench"))
import gan_speed  # noqa: E402  (bench/ is not a package)


def test_speed_table(monkeypatch, capsys, data_dir, single_thread):
    monkeypatch.setenv("AIGC_DATA_DIR", str(data_dir))
    assert gan_speed.main(["--tiny", "--optim", "foreach", "fused"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, gan_speed.TABLE_HEADER)
    assert [tuple(r[:4]) for r in rows] == [("32-true", "False", "default", "False"),
                                            ("bf16-mixed", "False", "default", "False"),
                                            ("bf16-mixed", "True", "default", "False"),
                                            ("bf16-mixed", "True", "foreach", "False"),
                                            ("bf16-mixed", "True", "fused", "False")]
    for row in rows:
        assert float(row[4]) > 0 and float(row[5]) > 0 and row[7] == "—" and float(row[8]) > 0
    assert rows[0][6] == "1.00x" and "batch fetch from the in-memory loader" in out


def test_optimizer_kernels_reach_adam():
    cfg = gan_speed.preset(gan_speed.optim_overrides("fused"))
    assert cfg.model.optimizer_g.fused is True and cfg.model.optimizer_d.fused is True
    assert gan_speed.optim_overrides("default") == []
