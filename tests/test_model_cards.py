"""Model cards: the hub metadata parses, every python snippet runs on a tiny checkpoint, every training command parses
with the training script's own argument parser, and `write_model_card` fills a card from a checkpoint and its run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from conftest import FRONTENDS, tiny_config
from huggingface_hub import ModelCard
from transformers import AutoModelForAudioClassification

from specpatch import SpecPatchFeatureExtractor
from specpatch.model_card import (
    CARD_FILES,
    CHECKPOINT_PLACEHOLDERS,
    count_checkpoint_parameters,
    efficiency_section,
    render_model_card,
    write_model_card,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARDS = {model_type: os.path.join(REPO, "model_cards", name) for model_type, name in CARD_FILES.items()}
LABELS = {0: "dog", 1: "rain", 2: "speech"}


def _blocks(card: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", card, flags=re.DOTALL)


def _save_tiny_checkpoint(directory, model_type) -> str:
    config = tiny_config(model_type, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    AutoModelForAudioClassification.from_config(config).save_pretrained(directory)
    SpecPatchFeatureExtractor(max_length=config.max_length, frontend=FRONTENDS[model_type]).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {model_type: _save_tiny_checkpoint(root / model_type, model_type) for model_type in CARD_FILES}


def _read(path):
    with open(path) as handle:
        return handle.read()


def _check_metadata(card: str, datasets: bool = True) -> dict:
    data = ModelCard(card).data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "audio-classification"
    assert data["license"] == "apache-2.0"
    assert data["tags"] and data["metrics"]
    assert bool(data.get("datasets")) == datasets
    return data


@pytest.mark.parametrize("model_type", sorted(CARD_FILES))
def test_committed_card_metadata(model_type):
    assert os.path.isfile(CARDS[model_type]), (
        f"missing {CARDS[model_type]}: run examples/write_model_card.py --generic"
    )
    card = _read(CARDS[model_type])
    data = _check_metadata(card)
    assert "specpatch" in data["tags"]
    # The papers' numbers are in a section that says they are the paper's; our measurements say they are ours.
    assert re.search(r"^### Reported by the (FFTP|AaPE) paper \(not reproduced by this project\)$", card, re.M)
    assert "## Efficiency (measured by this project)" in card
    assert CHECKPOINT_PLACEHOLDERS[model_type] in card


def _run_snippet(code: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "<model card>", "exec"), {"__name__": "__model_card__"})  # noqa: S102
    return output.getvalue()


@pytest.mark.parametrize("model_type", sorted(CARD_FILES))
def test_card_snippets_run_with_the_package(model_type, checkpoints):
    snippets = _blocks(_read(CARDS[model_type]), "python")
    assert len(snippets) == 3
    placeholder = CHECKPOINT_PLACEHOLDERS[model_type]
    for code in snippets:
        if "trust_remote_code" in code:
            continue  # run without the package below
        printed = _run_snippet(code.replace(f'"{placeholder}"', repr(checkpoints[model_type])))
        assert printed.strip()
    # The configuration snippet prints what its comment says.
    config_snippet = snippets[-1]
    expected = config_snippet.strip().splitlines()[-1].split("#")[-1].strip()
    assert _run_snippet(config_snippet).strip() == expected


def test_card_snippets_run_without_the_package(checkpoints, tmp_path):
    parts = ['import sys\nsys.modules["specpatch"] = None  # `import specpatch` raises ImportError from here on\n']
    for model_type in sorted(CARD_FILES):
        (code,) = [c for c in _blocks(_read(CARDS[model_type]), "python") if "trust_remote_code" in c]
        assert "import specpatch" not in code and "from specpatch" not in code
        code = code.replace(f'"{CHECKPOINT_PLACEHOLDERS[model_type]}"', repr(checkpoints[model_type]))
        parts.append(f"def card_{model_type}():\n{textwrap.indent(code, '    ')}\ncard_{model_type}()\n")
    parts.append('print("cards-ok")\n')
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(parts)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("cards-ok")


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model_type", sorted(CARD_FILES))
def test_card_training_commands_parse(model_type):
    """Every `examples/*.py` command in the card's shell blocks is accepted by that script's own argument parser."""
    commands = [
        line
        for block in _blocks(_read(CARDS[model_type]), "bash")
        for line in block.splitlines()
        if re.search(r"examples/\w+\.py", line)
    ]
    assert any("examples/finetune.py" in line for line in commands)
    for line in commands:
        argv = shlex.split(re.sub(r"<[^>]+>", "placeholder", line.split("  #")[0]))
        script = next(arg for arg in argv if arg.startswith("examples/"))
        args = _load_example(os.path.basename(script)[:-3]).parse_args(argv[argv.index(script) + 1 :])
        if script.endswith("finetune.py"):
            expected = model_type if args.model_name_or_path is None else "aape_vit"
            assert args.model_type == expected, line


def _fake_run(directory, model_type, dataset):
    """The two files examples/finetune.py writes next to the model (same keys)."""
    results = {
        "recipe": "builtin",
        "model_type": model_type,
        "global_step": 12,
        "epochs_completed": 2,
        "num_processes": 1,
        "train_skipped_clip_reads": 0,
        "train_skipped_rows": [],
        "ema": False,
        "runtime_s": 30.5,
        "eval_mAP": 0.61234,
        "eval_top1_hit_rate": 0.8,
        "eval_skipped_clips": 0,
        "history": [],
    }
    args = {"recipe": "builtin", "model_type": model_type, "dataset_name": dataset, "batch_size": 32,
            "learning_rate": 0.001, "masking": "specmask", "config_overrides": {"*": {"hidden_size": 32}}}  # fmt: skip
    for name, content in (("all_results.json", results), ("run_args.json", args)):
        with open(os.path.join(directory, name), "w") as handle:
            json.dump(content, handle)


@pytest.mark.parametrize("model_type, dataset", [("fftp_ast", "agkphysics/AudioSet"), ("aape_vit", "builtin")])
def test_write_model_card_into_a_checkpoint(model_type, dataset, tmp_path):
    directory = _save_tiny_checkpoint(tmp_path / "model", model_type)
    _fake_run(directory, model_type, dataset)
    path = write_model_card(directory)
    assert path == os.path.join(directory, "README.md")
    card = _read(path)
    data = _check_metadata(card, datasets=dataset != "builtin")  # the built-in set is not a hub dataset
    assert data.get("datasets") in (None, [dataset])
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "mAP", "value": 0.6123, "name": "mAP"}]
    model = AutoModelForAudioClassification.from_pretrained(directory)
    count = sum(p.numel() for p in model.parameters())
    assert count_checkpoint_parameters(directory) == count
    assert f"| parameters | {count:,} " in card
    assert f"| patches | {model.config.num_patches} on 64 frames" in card
    assert "| mAP | 0.6123 |" in card and "| `masking` | `specmask` |" in card
    # The card's own code loads this very directory.
    (code, *_) = _blocks(card, "python")
    assert repr(directory)[1:-1] in code
    printed = _run_snippet(code)
    assert any(label in printed for label in LABELS.values())


def test_write_model_card_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        write_model_card(tmp_path)


def test_efficiency_section_quotes_the_models_rows():
    results = textwrap.dedent(
        """\
        # specpatch benchmark results

        Generated by `python benchmarks/run_all.py` on 2026-01-01 10:00 UTC, 30.0 min in all.

        ## Machine

        - CPU: Test CPU, 2 logical cores (2 usable)
        - load average (1, 5, 15 min): (1.0, 1.0, 1.0) before

        ## Summary: ratios measured side by side

        | benchmark | comparison | ratio | target | | absolute, this machine |
        |---|---|---:|---|---|---|
        | features | kaldi vs AST | 12.0x | >= 10x | met | 1 s |
        | FFTP-AST | fftp-248 vs square | 5.0x | >= 4.5x | met | 1 ms |
        | AaPE-ViT | step ratio | 1.3x | | | 2 s |

        ## Patch count and cost per Table II patching

        AST: explanation.

        | patching | patches |
        |---|---:|
        | square-1212 | 1212 |
        """
    )
    ast = "\n".join(efficiency_section(results, "fftp_ast"))
    assert "fftp-248 vs square" in ast and "kaldi vs AST" in ast and "step ratio" not in ast
    assert "- CPU: Test CPU" in ast and "2026-01-01" in ast and "| square-1212 | 1212 |" in ast
    aape = "\n".join(efficiency_section(results, "aape_vit"))
    assert "step ratio" in aape and "fftp-248" not in aape and "square-1212" not in aape
    assert "run_all.py" in "\n".join(efficiency_section(None, "fftp_aum"))


def test_render_rejects_unknown_or_mismatched_types():
    with pytest.raises(ValueError, match="model_type"):
        render_model_card("ast")
    with pytest.raises(ValueError, match="not 'fftp_aum'"):
        render_model_card("fftp_aum", config=tiny_config("fftp_ast"))
