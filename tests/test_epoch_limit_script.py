"""benchmarks/epoch_limit.py: its FLOP counter counts dense and sparse–dense products exactly, and the script
measures a tiny set end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "epoch_limit.py"


def _script_module():
    return load_benchmark_script("epoch_limit")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_the_flop_counter_counts_dense_and_sparse_products():
    counter = _script_module().FlopCount()
    a, b = torch.randn(30, 20, requires_grad=True), torch.randn(20, 7)
    graph = torch.eye(40)[:, :30].to_sparse_csr()  # 30 stored entries
    with counter:
        (a @ b).sum().backward()  # forward 2·30·20·7; backward grad_a = g @ bᵀ: 2·30·7·20
        torch.addmm(torch.zeros(3, 7), torch.randn(3, 20), b)
        torch.bmm(torch.randn(4, 3, 5), torch.randn(4, 5, 2))
        graph @ torch.randn(30, 8)
    assert counter.by_op["mm"] == 2 * 30 * 20 * 7 * 2
    assert counter.by_op["addmm"] == 2 * 3 * 20 * 7
    assert counter.by_op["bmm"] == 2 * 4 * 3 * 5 * 2
    assert sum(v for k, v in counter.by_op.items() if k.startswith("sparse")) == 2 * 30 * 8
    assert counter.total == sum(counter.by_op.values())


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_the_counter_keeps_one_replayable_call_per_product_signature():
    counter = _script_module().FlopCount()
    a, b = torch.randn(30, 20), torch.randn(20, 7)
    graph = torch.eye(40)[:, :30].to_sparse_csr()
    with counter:
        for _ in range(3):
            a @ b
        a.T.contiguous().T @ b  # same shapes, other strides: another signature
        graph @ torch.randn(30, 8)
        a.sum()  # not a product: not kept
    calls = sorted(counter.products.values(), key=lambda p: -p.calls)
    assert [p.calls for p in calls] == [3, 1, 1]
    assert calls[0].flops == 3 * 2 * 30 * 20 * 7 and sum(p.flops for p in calls) == counter.total
    sparse = next(p for p in calls if any(isinstance(x, torch.Tensor) for x in p.args))
    assert next(x for x in sparse.args if isinstance(x, torch.Tensor)) is graph  # the graph itself, not a copy
    seconds = counter.time_products_alone()
    assert seconds > 0 and all(p.seconds_alone > 0 for p in calls)
    assert seconds == pytest.approx(sum(p.calls * p.seconds_alone for p in calls))
    first = calls[0].describe()
    assert first["op"] == "mm" and first["operands"] == [[30, 20], [20, 7]] and first["calls"] == 3
    assert "sparse [40, 30], 30 stored" in sparse.describe()["operands"]


def test_the_script_measures_a_tiny_set(tmp_path):
    out = tmp_path / "limit.json"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR;LightGCN;MARIO:graph_refresh=epoch", "--shape", "default"]
    cmd += ["--factor", "0.05", "--threads", "1", "--warmup", "1", "--profile-steps", "1", "--out", str(out)]
    cmd += ["--modalities", "image:24,text:12"]  # the scale table's sets pass image:256,text:128
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert all(row["modalities"] == {"image": 24, "text": 12} for row in result["rows"])
    assert result["gemm_gflops"] > 0 and result["threads"] == 1
    bpr, lightgcn, mario = result["rows"]
    assert bpr["gflop_per_epoch"] == 0 and bpr["epoch_over_limit"] is None  # BPR's step has no matrix product
    assert lightgcn["gflop_per_step_by_op"].get("sparse mm", 0) > 0 and lightgcn["epoch_seconds"] > 0
    assert mario["overrides"] == {"graph_refresh": "epoch"} and mario["gflop_per_epoch_outside_steps"] > 0
    assert mario["epoch_over_limit"] > 0 and mario["top_ops_self_cpu_share"]
    assert mario["products_alone_seconds"] > 0 and mario["epoch_over_products_alone"] > 0
    assert mario["slowest_products_per_step"][0]["ms_alone"] > 0
    assert result["machine"]["cpus"] > 0 and "simd" in result["machine"] and "cpu_id" in result["machine"]
    assert (bpr["users"], bpr["items"]) == (75, 100)


def test_a_malformed_modalities_option_is_named():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "BPR", "--modalities", "image:big"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "--modalities" in proc.stderr and "'image:big'" in proc.stderr


def test_the_meaim_term_count_splits_a_step(tmp_path):
    out = tmp_path / "terms.json"
    cmd = [sys.executable, str(SCRIPT.with_name("meaim_loss_flops.py")), "--shape", "default", "--factor", "0.05"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    default, large = json.loads(out.read_text())["rows"]
    terms = default["gflop_forward_by_term"]
    assert set(terms) == {"representations", "pair heads", "contrastive (InfoNCE)", "KL"}
    assert all(v > 0 for v in terms.values()) and default["gflop_whole_step"] > sum(terms.values())
    # 100 items and 75 users: 1,024 sampled candidates cover the tables, so the mode's terms are the full ones
    assert large["large_data"] and large["cl_candidates"] == 1024 and large["gflop_forward_by_term"] == terms


def test_the_records_name_the_cpu_from_cpuinfo(tmp_path):
    bench_record = load_benchmark_script("bench_record")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Some Xeon\nstepping\t: 2\n"
        "flags\t\t: fpu sse avx2 fma avx512f avx512bw\n\nprocessor\t: 1\nmodel name\t: Some Xeon\n"
    )
    cpu = bench_record.cpu_description(cpuinfo)
    assert cpu["cpu_model"] == "Some Xeon" and cpu["cpu_id"] == "family 6 model 207 stepping 2"
    assert cpu["simd"] == ["avx2", "fma", "avx512f"]  # the extensions it looks for, in its order
    missing = bench_record.cpu_description(tmp_path / "absent")
    assert missing["cpu_id"] is None and missing["simd"] is None
    assert "CPU cores" in bench_record.machine_summary()
