"""The README's Python examples run as written (on fewer sentences, to stay fast)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.integration


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_examples_run(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 3
    first = blocks[0]
    assert len(first.strip().splitlines()) <= 22, "the README promises a short example"
    fast = first.replace("subset(1000)", "subset(48)").replace("subset(300)", "subset(32)")
    fast = fast.replace("num_samples=8", "num_samples=2")
    assert fast != first
    namespace = {}
    exec(compile(fast, str(README), "exec"), namespace)
    loop = blocks[1].replace("for batch in train:", "for batch in list(train)[:2]:")
    exec(compile(loop, str(README), "exec"), namespace)
    assert namespace["out"].probs.shape == (32, 2)
    trainer = blocks[2].replace('"runs/', f'"{tmp_path}/').replace("subset(1000)", "subset(32)")
    trainer = trainer.replace("subset(300)", "subset(16)").replace("num_samples=8", "num_samples=2")
    assert trainer.count(str(tmp_path)) == 1 and "subset(32)" in trainer
    exec(compile(trainer, str(README), "exec"), namespace)
    assert "eval_nll" in namespace["trainer"].state.log_history[0]
    save = blocks[3].replace('"runs/', f'"{tmp_path}/')
    assert save != blocks[3]
    exec(compile(save, str(README), "exec"), namespace)
    assert namespace["again"].config == namespace["model"].config
    assert namespace["again_guide"] is not None and (tmp_path / "my-adapter-peft" / "adapter_config.json").is_file()
