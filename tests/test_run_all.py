"""benchmarks/run_all.py: parsing every benchmark's printed output, the RESULTS.md report, the GPU section's code path."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(REPO, "benchmarks", "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# Outputs as the scripts print them (copied from real runs on a 2-core CPU).
FEATURES = """\
torch 2.13.0+cpu, 2 threads, x86_64
ASTFeatureExtractor backend: numpy (transformers)
batch: 8 clips x 10 s at 16000 Hz, 1 repeats, fastest shown
extractor                           time (s)  speed-up
ASTFeatureExtractor                    1.950      1.0x
SpecPatch kaldi (batched torch)        0.658      3.0x
SpecPatch logmel (AaPE)                0.864      2.3x
output shape (8, 1024, 128), max |AST - ours| = 4.53e-06
speed-up kaldi vs ASTFeatureExtractor: 3.0x (target >= 10x)
"""

SPECMASK = "SpecMask vs Algorithm 1 per sample in numpy; device cpu, torch threads 1\n"


def _stat(median, noisy=False):
    return {"median": median, "spread": 0.3 if noisy else 0.05, "rounds": 10, "noisy": noisy}


SPECMASK_JSON = {
    "device": "cpu",
    "threads": 1,
    "settings": {
        "audioset": {
            "setting": "32 x 1000 frames x 128 mel, budget 25600, max 128 mel x 128 frames",
            "times": {"numpy loop": _stat(0.004), "SpecMask": _stat(0.002), "numpy loop, in place": _stat(0.003),
                      "SpecMask, in place": _stat(0.001), "SpecMask placement only": _stat(0.0005)},
            "ratios": {"new tensor": _stat(2.0), "in place": _stat(3.0, noisy=True), "placement": _stat(8.0)},
        },
        "speech_commands": {
            "setting": "256 x 128 frames x 128 mel, budget 1024, max 128 mel x 16 frames",
            "times": {"numpy loop": _stat(0.012), "SpecMask": _stat(0.002), "numpy loop, in place": _stat(0.01),
                      "SpecMask, in place": _stat(0.001), "SpecMask placement only": _stat(0.0005)},
            "ratios": {"new tensor": _stat(6.0), "in place": _stat(10.0), "placement": _stat(24.0)},
        },
    },
}  # fmt: skip

SBLU = """\
torch 2.13.0+cpu, 1 threads
shape: batch 2 x channels 128 x frames 608 -> 152 outputs, K = 63, s = 4, float32
full complex kernel the direct form materialises: 19 MiB at this batch, 4.6 GiB at the pre-training batch of 512

Adaptive SBLU (per-frame decay and frequency); speed-up and memory ratio vs reference
method          fwd ms  speed-up  fwd+bwd ms  speed-up  peak MiB   ratio
reference         80.0       1.0x       300.0       1.0x     150.0    1.00
unfold            40.0       2.0x       100.0       3.0x      20.0    0.13
recursive         20.0       4.0x        60.0       5.0x      10.0    0.07

Non-adaptive SBLU (one kernel per channel); speed-up and memory ratio vs reference
method          fwd ms  speed-up  fwd+bwd ms  speed-up  peak MiB   ratio
reference         70.0       1.0x       280.0       1.0x       n/a
recursive         20.0       3.5x        60.0       4.7x       n/a
conv               2.0      35.0x        10.0      28.0x       n/a

Adaptive recursive path, memory budget per chunk sweep (fwd+bwd ms):
  1 MiB: 70.0, 4 MiB: 60.0, 16 MiB: 61.0, 64 MiB: 65.0
"""

FEATURES_JSON = {
    "backend": "numpy (transformers)", "threads": 2, "clips": 32, "seconds": 10.0,
    "times": {"ASTFeatureExtractor": _stat(3.5), "SpecPatch kaldi": _stat(0.25), "SpecPatch logmel": _stat(0.4)},
    "speedups": {"kaldi": _stat(14.0, noisy=True), "logmel": _stat(8.75)}, "max_abs_difference": 1.55e-05,
}  # fmt: skip

AAPE = """\
Patch-embedding parameters (class token excluded; position embeddings included), ViT-B, 8 x 38 patches
patch embedding       measured     paper   ratio
standard               430,848     0.43M   1.002
aape_nonadaptive     1,162,656     1.16M   1.002
aape                 1,860,032     1.86M   1.000
encoder (AaPE)      86,919,104     87.00M   0.999   (Table III: 87M)
predictor           10,640,896     10.63M   1.001   (Table VIII, trainable)

Pre-training step (forward + backward + EMA update), ViT-B, 1 clip(s) x 2 views, 608 frames = 304 patches, 61 visible per view, device cpu, 2 threads, median of 1
patch embedding      step s  clips/s  patch tokens/s  student tokens/s
standard              2.000     0.50           152.0              61.0
aape                  2.600     0.38           116.9              46.9
aape overhead: 23.1 % of its step time (step time x1.30; goal < 35 %: OK)
"""

PATCHING_JSON = {
    "rows": [
        {"config": "square-1212", "patches": 1212, "gmacs_paper": 103.35, "gmacs_full": 130.4, "latency_s": 2.0,
         "speedup_vs_square": 1.0},
        {"config": "fftp-248", "patches": 248, "gmacs_paper": 21.48, "gmacs_full": 22.6, "latency_s": 0.4,
         "speedup_vs_square": 5.0},
        {"config": "fftp-991", "patches": 991, "gmacs_paper": 85.31, "gmacs_full": 103.0, "latency_s": 1.6,
         "speedup_vs_square": 1.25},
    ],
    "transformers_ast_time_ratio": 1.02,
    "fftp248_speedup": 5.0,
    "noisy": {"transformers_ast": True, "fftp248": False},
}  # fmt: skip

AUM_JSON = {
    "mixer": {
        "shape": "batch 2, 1000 tokens, width 192, d_state 16, expand 2",
        "threads": 2,
        "forward_s": {"1 thread": {"transformers": 0.5, "specpatch": 0.05}, "2 threads": {"transformers": 0.4,
                                                                                          "specpatch": 0.1}},
        "forward_ratio": {"1 thread": 10.0, "2 threads": 4.0},
        "specpatch_forward_backward_s": 0.2,
        "max_abs_output_difference": 1e-6,
    },
    "model": {
        "square-1212": {"patches": 1212, "latency_s": 1.0, "ratio_to_square": 1.0},
        "fftp-248": {"patches": 248, "latency_s": 0.25, "ratio_to_square": 0.25},
        "fftp-991": {"patches": 991, "latency_s": 0.2, "ratio_to_square": 0.2, "noisy": True},
    },
    "scan": {
        "threads": 1,
        "training batch": {
            "shape": "batch 64, 49 steps, 192 channels, d_state 16", "max_abs_difference": 1e-6,
            "times": {"mambapy forward": _stat(0.4), "specpatch forward": _stat(0.02), "mambapy fwd+bwd": _stat(1.2),
                      "specpatch fwd+bwd": _stat(0.11)},
            "speedups": {"forward": _stat(20.0), "fwd+bwd": _stat(10.9)},
        },
    },
    "training_step": {
        "setting": "width 96, 4 layers, 48 patches, batch 64, fo-bi",
        "1 thread": {"times": {"FFTP-AST": _stat(0.2), "FFTP-AuM": _stat(0.7)}, "ratio": _stat(3.5)},
        "2 threads": {"times": {"FFTP-AST": _stat(0.2), "FFTP-AuM": _stat(0.5)}, "ratio": _stat(2.5, noisy=True)},
    },
}  # fmt: skip
AUM = (
    "torch 2.13.0+cpu, 2 threads, x86_64\n\n2. FFTP-AuM-tiny (fo-bi) forward latency per Table II patching, batch 1\n"
)


def _results(run_all, **overrides):
    outputs = {
        "features": (FEATURES, {}),
        "specmask": (SPECMASK, SPECMASK_JSON),
        "patching": ("# FFTP-AST patch configurations, ViT-B, batch 1, 2 threads\n", PATCHING_JSON),
        "aum": (AUM, AUM_JSON),
        "sblu": (SBLU, {}),
        "aape": (AAPE, {}),
    }
    outputs.update(overrides)
    results = {}
    for key, (stdout, data) in outputs.items():
        result = run_all.RunResult(key, ["python", f"benchmarks/bench_{key}.py"], 0, 12.0, stdout, "", data)
        result.parsed = run_all.PARSERS[key](stdout, data)
        result.load_after = (1.0, 1.0, 1.0)
        results[key] = result
    return results


def test_parsers_read_the_printed_tables(run_all):
    features = run_all.parse_features(FEATURES, {})
    assert features == {"threads": 2, "ast_s": 1.95, "kaldi_s": 0.658, "kaldi_speedup": 3.0, "logmel_s": 0.864,
                        "logmel_speedup": 2.3, "clips": 8, "seconds": 10.0, "max_abs_difference": 4.53e-06}  # fmt: skip
    specmask = run_all.parse_specmask(SPECMASK, SPECMASK_JSON)
    assert specmask["threads"] == 1 and sorted(specmask["settings"]) == ["audioset", "speech_commands"]
    features = run_all.parse_features("", FEATURES_JSON)
    assert features["kaldi_speedup"] == 14.0 and features["kaldi_noisy"] and features["backend"] == "numpy (transformers)"
    sblu = run_all.parse_sblu(SBLU, {})
    assert sblu["batch"] == 2 and sorted(sblu["adaptive"]) == ["recursive", "reference", "unfold"]
    assert sblu["adaptive"]["recursive"]["forward_backward_speedup"] == 5.0
    assert sblu["adaptive"]["recursive"]["memory_ratio"] == 0.07
    assert sblu["non_adaptive"]["conv"]["forward_speedup"] == 35.0 and sblu["non_adaptive"]["conv"]["peak_mib"] is None
    aape = run_all.parse_aape(AAPE, {})
    assert aape["counts"]["aape"] == {"measured": 1_860_032, "paper_m": 1.86}
    assert aape["steps"]["aape"]["step_s"] == 2.6 and aape["overhead_percent"] == 23.1 and aape["step_ratio"] == 1.3
    assert (aape["clips"], aape["views"], aape["frames"], aape["threads"]) == (1, 2, 608, 2)
    aum = run_all.parse_aum(AUM, AUM_JSON)
    assert aum["size"] == "tiny" and aum["bimamba_type"] == "fo-bi" and aum["mixer"]["forward_ratio"]["1 thread"] == 10


def test_summary_has_a_row_per_comparison_with_its_verdict(run_all):
    rows = run_all.summary_rows(_results(run_all))
    by_text = {row[1]: row for row in rows}
    kaldi = next(row for text, row in by_text.items() if "kaldi fbank" in text)
    assert kaldi[2:5] == ("3.0x", ">= 10x", "**not met**")
    specmask = [r for r in rows if r[0] == "SpecMask"]
    assert [r[2:5] for r in specmask[:3]] == [
        ("2.00x", ">= 5x", "**not met**"), ("3.00x (noisy)", ">= 5x", "noisy (not a finding)"), ("8.00x", "", "")
    ]  # fmt: skip
    assert specmask[3][2:5] == ("6.00x", ">= 5x", "met") and "speech_commands" in specmask[3][1]
    assert specmask[-1][2] == "not measured here (no GPU)"
    assert next(r for t, r in by_text.items() if "fftp-248 over square-1212, forward (ViT-B)" in t)[2] == "5.00x"
    ast_time = next(r for t, r in by_text.items() if "ASTForAudioClassification" in t)
    assert ast_time[2:5] == ("1.02x (noisy)", ">= 0.97x", "noisy (not a finding)")
    monotone = [r for r in rows if r[1] == "forward latency grows with the patch count"]
    assert [r[0] for r in monotone] == ["FFTP-AST", "FFTP-AuM"]
    assert monotone[0][2:5] == ("yes", "monotone", "met")  # 248 < 991 < 1212 patches: 0.2 < 0.8 < 1
    assert monotone[1][2:5] == ("no", "monotone", "noisy (not a finding)")  # fftp-991 faster than 248, but noisy
    scan = [row for row in rows if row[0] == "selective scan"]
    assert [row[2] for row in scan[:2]] == ["10.0x", "4.0x"]  # one row per thread count
    assert [row[4] for row in scan[:2]] == ["met", "**not met**"]
    assert "not run" in scan[2][2]  # no transformers backward in quick mode
    assert scan[3][2:5] == ("20.0x", ">= 5x", "met") and "mambapy" in scan[3][1]
    step_rows = [r for r in rows if "training step time, FFTP-AuM" in r[1]]
    assert [r[2:5] for r in step_rows] == [
        ("3.50x", "<= 3x", "**not met**"), ("2.50x (noisy)", "<= 3x", "noisy (not a finding)")
    ]  # fmt: skip
    assert next(r for r in rows if r[0] == "FFTP-AuM" and "fftp-248" in r[1])[2] == "4.00x"
    assert next(r for r in rows if r[0] == "SBLU")[2] == "4.0x / 5.0x"
    step = next(r for r in rows if "pre-training step time" in r[1])
    assert step[2] == "1.30x" and step[4] == "met"


def test_a_changed_output_format_does_not_stop_the_report(run_all):
    broken = {"mixer": {"forward_ratio": "fast", "forward_s": None}}  # not what the row builder expects
    results = _results(run_all, aum=(AUM, broken), sblu=("something else entirely\n", {}))
    rows = run_all.summary_rows(results)
    assert any(r[0] == "aum" and "could not summarise" in r[1] for r in rows)
    assert any(r[0] == "sblu" and "see the raw output" in r[1] for r in rows)
    assert any(r[0] == "features" for r in rows)


def _machine():
    return {"cpu": "Test CPU", "logical_cores": 2, "usable_cores": 2, "torch": "2.x", "torch_threads": 2,
            "transformers": "5.x", "python": "3.11", "os": "Linux", "gpu": None, "mamba_ssm": False}  # fmt: skip


def test_markdown_report(run_all):
    results = _results(run_all)
    gpu = [{"model": "FFTP-AST", "setting": "fftp-248", "patches": 248, "batch": 32, "ms_per_batch": 12.5,
            "clips_per_s": 2560.0}]  # fmt: skip
    text = run_all.render_markdown(
        results, _machine(), (3.5, 3.0, 2.0), (4.0, 3.2, 2.1), False, "python benchmarks/run_all.py", gpu,
        "2026-01-01 00:00 UTC", 600.0, 4.5,
    )  # fmt: skip
    assert "- CPU: Test CPU, 2 logical cores (2 usable)" in text
    assert "os.getloadavg()" in text and "1-minute peak 4.5" in text
    assert "**The machine was shared and loaded during this run**" in text
    assert "| FFTP-AST | speed-up of fftp-248 over square-1212, forward (ViT-B) | 5.00x | >= 4.5x | met |" in text
    assert "| fftp-248 | 248 | 21.48 | 22.60 | 0.200 | 0.250 | 21.48 | 0.181 |" in text  # ours next to the paper's
    assert "| FFTP-AST | fftp-248 | 248 | 32 | 12.50 | 2560.0 |" in text
    assert text.count("<details>") == 6 and "6.00x" in text
    assert "| fftp-991 | 991 | 85.31 | 103.00 | 0.800 | 0.200 (noisy) |" in text
    quiet = run_all.render_markdown(results, _machine(), (0.2, 0.1, 0.1), (0.3, 0.1, 0.1), True, "cmd")
    assert "shared and loaded" not in quiet and "(quick mode)" in quiet and "GPU: absolute" not in quiet


def test_report_tells_other_processes_from_our_own_load(run_all):
    """A high load average from the benchmarks' own threads is not a shared machine; CPU taken by other processes
    (or the hypervisor) is."""
    results = _results(run_all)
    for result in results.values():
        result.other_load = {"other": 0.05, "steal": 0.0}
    own_load = run_all.render_markdown(results, _machine(), (1.8, 1.5, 1.2), (1.9, 1.6, 1.3), False, "cmd")
    assert "shared" not in own_load and "at most 0.05 of 2 cores" in own_load
    assert "it counts the benchmarks' own threads too" in own_load
    results["aum"].other_load = {"other": 0.6, "steal": 0.1}
    shared = run_all.render_markdown(results, _machine(), (0.2, 0.1, 0.1), (0.3, 0.1, 0.1), False, "cmd")
    assert "**The machine was shared during this run**" in shared and "0.70 of 2 cores during `aum`" in shared
    assert "other processes 0.60 cores, steal 0.10" in shared


def test_foreign_load_subtracts_our_own_cpu_time(run_all):
    before = {"time": 10.0, "busy": 100.0, "steal": 5.0, "ours": 40.0}
    after = {"time": 20.0, "busy": 118.0, "steal": 6.0, "ours": 55.0}  # 18 s busy, 15 s of it ours, over 10 s
    assert run_all.foreign_load(before, after) == {"other": 0.3, "steal": 0.1}
    assert run_all.foreign_load(None, after) is None
    snapshot = run_all.cpu_snapshot()
    if snapshot is not None:  # Linux
        assert set(snapshot) == {"time", "busy", "steal", "ours"} and min(snapshot.values()) >= 0


def test_from_json_rerenders_a_saved_run(run_all, tmp_path):
    results = _results(run_all)
    state = {
        "command": "python benchmarks/run_all.py --quick", "started": "2026-01-01 00:00 UTC", "machine": _machine(),
        "load_before": [0.5, 0.5, 0.5], "load_after": [0.6, 0.5, 0.5], "quick": True, "load_max": 0.7,
        "raw": {key: {"command": r.command, "returncode": 0, "seconds": 1.0, "stdout": r.stdout, "stderr": "",
                      "data": r.data, "load_after": [0.6, 0.5, 0.5]} for key, r in results.items()},
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(state))
    run_all.main(["--from-json", str(tmp_path / "run.json"), "--output", str(tmp_path / "RESULTS.md")])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "6.00x" in text and "5.00x" in text and "(quick mode)" in text


def test_gpu_throughput_code_path_on_cpu(run_all):
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}
    rows = run_all.gpu_throughput("cpu", batch_size=1, repeats=1, dtype="float32", overrides=tiny, presets=["fftp-96"])
    assert [(r["model"], r["patches"]) for r in rows] == [("FFTP-AST", 96), ("FFTP-AuM", 96), ("AaPE-ViT", 512)]
    assert all(r["ms_per_batch"] > 0 and r["clips_per_s"] > 0 for r in rows)


def test_every_script_is_known(run_all):
    scripts = {b.script for b in run_all.BENCHMARKS_TO_RUN}
    on_disk = {name for name in os.listdir(os.path.join(REPO, "benchmarks")) if name.startswith("bench_")}
    assert scripts <= on_disk and on_disk <= scripts | set(run_all.SEPARATE_SCRIPTS)


def test_specmask_rows_with_threads_and_ceilings(run_all):
    """The thread rows keep the target and name the thread count; the ceilings are information with the floor's
    time; the absolute column reads each ratio's own rows."""
    times = {"numpy loop": _stat(0.003), "SpecMask (2 threads)": _stat(0.0006),
             "numpy loop, in place": _stat(0.002), "floor: read batch, write budget": _stat(0.0004)}  # fmt: skip
    result = {
        "setting": "32 x 1000 frames x 128 mel, budget 25600, max 128 mel x 128 frames",
        "times": times,
        "ratios": {"new tensor, 2 threads": _stat(5.0), "ceiling, in place": _stat(5.0), "unknown": _stat(1.0),
                   "in place, cold caches": _stat(4.0), "ceiling, in place, cold caches": _stat(6.0),
                   "in place, sideways": _stat(1.0)},
        "pairs": {"new tensor, 2 threads": ["numpy loop", "SpecMask (2 threads)"],
                  "ceiling, in place": ["numpy loop, in place", "floor: read batch, write budget"],
                  "unknown": ["numpy loop", "numpy loop"]},  # fmt: skip
    }
    rows = run_all._rows_specmask({"device": "cpu", "threads": 2, "settings": {"audioset": result}})
    assert len(rows) == 5  # four ratios and the CUDA line; unknown keys and qualifiers are left out
    threads, ceiling, cold, cold_ceiling = rows[:4]
    assert "caches evicted before each call" in cold[1] and cold[2:6] == ("4.00x", ">= 5x", "**not met**", "")
    assert "the most any implementation could reach in place" in cold_ceiling[1] and "evicted" in cold_ceiling[1]
    assert "with torch's 2 threads" in threads[1] and threads[2:6] == ("5.00x", ">= 5x", "met", "0.60 ms vs 3.00 ms")
    assert "the most any implementation could reach in place" in ceiling[1]
    assert ceiling[2:6] == ("5.00x", "", "", "0.40 ms vs 2.00 ms")
