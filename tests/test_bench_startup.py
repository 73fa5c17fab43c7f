"""bench/startup.py (with bench/startup_probe.py) in --tiny mode: the phase and import tables come out and add
up. No timing is asserted."""

from __future__ import annotations

from conftest import run_bench, table_rows


def test_startup_tables(tmp_path, cache_dir):
    proc = run_bench("startup.py", "--tiny", "--system", "seq2seq", cwd=tmp_path, cache_dir=cache_dir)
    phases = table_rows(proc.stdout, "| phase | seq2seq_synthetic |")
    seconds = {label: value for label, value in phases}
    for label in ("interpreter start", "Hydra: plugins, resume check, config composition, run dir, logging",
                  "main(): imports (lightning, torch, torchmetrics, ...), STATUS file",
                  "data setup (datasets)", "model build (configure_model)", "sanity check (validation batches)",
                  "first batch (loader iterator, fetch, to device, batch-start hooks)"):
        assert float(seconds[label]) >= 0, label
    total = float(seconds["**command -> first training step**"].strip("*"))
    parts = [float(v) for label, v in seconds.items() if not label.startswith(("**", "StartupTimer"))]
    assert abs(sum(parts) - total) < 0.02 * len(parts)  # the phases cover the whole startup (2-decimal rounding)
    assert 0 < float(seconds["StartupTimer perf/time_to_first_step_s (from the aigc_lab import)"]) <= total

    imports = table_rows(proc.stdout, "| package (imports, own time) | seq2seq_synthetic s | first imported by |")
    by_package = {row[0]: row for row in imports}
    assert float(by_package["torch"][1]) > 0 and by_package["torch"][2].startswith("lightning")
    assert float(by_package["**all imports**"][1].strip("*")) <= total
    assert not list(tmp_path.glob("outputs"))  # run dirs go to a temporary dir, removed afterwards
