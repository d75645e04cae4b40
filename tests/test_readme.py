"""README.md: the model-layer example runs verbatim, and every file the README names exists."""
import glob
import os
import re
import runpy

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _section(text, heading):
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start:] if nxt < 0 else text[start:nxt]


def test_model_layer_example_runs_verbatim(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")            # the digits
    text = open(README, encoding="utf-8").read()
    sec = _section(text, "## Models: `convkit.nn` and `convkit.models`")
    blocks = re.findall(r"```python\n(.*?)```", sec, flags=re.S)
    assert len(blocks) == 1
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert ns["accuracy"] > 0.95                   # a real model, not a smoke test
    assert (tmp_path / "small_cnn.npz").exists()
    with np.load(tmp_path / "small_cnn.npz") as f:
        assert "features.1.num_batches_tracked" in f.files


def _named_paths(text):
    """Repository paths the README names: tokens that look like paths (a '/' and a known
    top-level folder, or a .md file); globs count when they match something."""
    tops = ("convkit/", "convkit_cuda/", "bench/", "tests/", "shared/", ".ci/")
    out = set()
    for tok in re.findall(r"[\w.*<>\-]+(?:/[\w.*<>\-]*)+|[\w\-]+\.md\b", text):
        tok = tok.rstrip(".,")
        if "<" in tok:                 # a pattern of files a command writes (results-<UTC>/)
            continue
        if tok.startswith(tops) or tok.endswith(".md"):
            out.add(tok)
    return sorted(out)


def test_readme_names_only_files_that_exist():
    text = open(README, encoding="utf-8").read()
    paths = _named_paths(text)
    assert "bench/RESULTS.md" in paths and "convkit/functional.py" in paths
    missing = [p for p in paths if not glob.glob(os.path.join(ROOT, p))
               and not glob.glob(os.path.join(ROOT, "*", p))]
    assert not missing, f"README.md names files that are not in the repository: {missing}"
