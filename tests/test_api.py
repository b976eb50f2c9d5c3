"""The public API as docs/api.md shows it: every python block of that page runs as written (its workdirs
moved to a temporary folder), and the API's contracts behind it."""
import json
import os
import re

import numpy as np
import pytest

import spr_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def doc_blocks():
    text = open(os.path.join(ROOT, "docs", "api.md")).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_docs_have_blocks_to_run():
    assert len(doc_blocks()) == 3


@pytest.mark.parametrize("index", range(3))
def test_every_api_block_of_the_docs_runs(tmp_path, index, capsys):
    code = doc_blocks()[index].replace('"/tmp/', f'"{tmp_path}/')
    exec(compile(code, f"docs/api.md block {index}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip()
    if index == 2:
        assert "did you mean noise.rate?" in out


def test_read_run_agrees_with_the_files(tmp_path):
    work = str(tmp_path / "run")
    summary = spr_jax.run(spr_jax.load_config("tiny"), work, progress=False)
    run = spr_jax.read_run(work)
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    chunks = [r for r in records if r["type"] == "chunk"]
    assert run.summary == summary == json.load(open(os.path.join(work, "summary.json")))
    assert run.chunks["kept"].tolist() == [r["kept"] for r in chunks]
    assert run.chunks["buffer_counts"].shape == (len(chunks), 10)
    assert run.evals == [r for r in records if r["type"] == "eval"]
    m = run.accuracy_matrix
    assert np.isnan(m[np.triu_indices(5, 1)]).all() and np.isfinite(m[np.tril_indices(5)]).all()
    np.testing.assert_allclose(np.nanmean(m[-1]), summary["average_accuracy"])
    # A second run of the same config in the same workdir is the finished run, read back.
    assert spr_jax.run(spr_jax.load_config("tiny"), work, progress=False) == summary


def test_load_config_by_name_path_and_with_bad_names():
    by_name = spr_jax.load_config("tiny")
    assert by_name == spr_jax.load_config("configs/tiny.py") == spr_jax.load_config(
        os.path.join(ROOT, "configs", "tiny.py"))
    assert spr_jax.load_config("digits", {"buffer.size": 50}).buffer.size == 50
    with pytest.raises(spr_jax.UserError, match="no such file"):
        spr_jax.load_config("nonexistent_config")
    with pytest.raises(spr_jax.UserError, match="outside"):
        spr_jax.load_config("tiny", {"noise.rate": 1.5})
    with pytest.raises(spr_jax.UserError) as e:
        spr_jax.load_config("tiny", {"filter.kin": "none"})
    assert "did you mean filter.kind?" in e.value.hint


def test_read_run_of_a_folder_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(spr_jax.UserError, match="holds no run"):
        spr_jax.read_run(str(tmp_path))


def test_the_api_tour_example_runs_and_plots(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "api_tour.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "tour.png").stat().st_size > 10_000
    assert spr_jax.read_run(str(tmp_path / "knn")).summary["method"]["filter"] == "knn_filter:knn_agreement"


def test_a_plugins_keyword_settings_are_overridable_fields(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    c = spr_jax.load_config("tiny", {"filter.kind": "knn_filter:knn_agreement", "filter.k": 7})
    assert c.filter.k == 7 and c.filter.kind == "knn_filter:knn_agreement"
    from spr_jax import settings
    s = settings.build(c, image_shape=(8, 8, 1), num_classes=10, chunk_size=40)
    assert s.filter.fn.keywords["k"] == 7  # the filter is called with it
    with pytest.raises(spr_jax.UserError, match="has a setting 'kk'") as e:
        spr_jax.load_config("tiny", {"filter.kind": "knn_filter:knn_agreement", "filter.kk": 7})
    assert "did you mean filter.k?" in e.value.hint
    with pytest.raises(spr_jax.UserError, match="has no field 'k'"):  # centrality takes no k
        spr_jax.load_config("tiny", {"filter.k": 7})
    # A sweep over a plug-in's setting: declared, parsed as the default's type, applied to each run's config.
    from spr_jax import comparison
    c = spr_jax.load_config("tiny", {"filter.kind": "knn_filter:knn_agreement"})
    assert comparison.parse_sweeps(c, ["filter.k=3,5"]) == [{"filter.k": 3}, {"filter.k": 5}]
    with pytest.raises(spr_jax.UserError, match="filter.k='x' is not of type int"):
        comparison.parse_sweeps(c, ["filter.k=3,x"])


def _launch_error_lines(*args):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return r.stderr.strip().splitlines()


def _assert_same_error_as_launch(workdir, needle):
    """spr_jax.run and spr_jax.compare raise the UserError whose message and hint launch.py prints."""
    for call in (lambda: spr_jax.run(spr_jax.load_config("tiny"), str(workdir), progress=False),
                 lambda: spr_jax.compare(spr_jax.load_config("tiny"), str(workdir), methods=["spr"], progress=False)):
        with pytest.raises(spr_jax.UserError) as e:  # (a raw FileExistsError / OSError traceback before)
            call()
        assert needle in str(e.value) and str(workdir) in str(e.value)
        want = [f"error: {e.value}"] + ([f"hint: {e.value.hint}"] if e.value.hint else [])
        assert _launch_error_lines("--config=configs/tiny.py", f"--workdir={workdir}") == want


def test_an_unusable_workdir_is_the_same_one_line_error_as_launch(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _assert_same_error_as_launch(afile, "is a file, not a folder")
    _assert_same_error_as_launch(afile / "sub", "cannot be created")
    assert afile.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_read_only_workdir_is_the_same_one_line_error_as_launch(tmp_path):
    import subprocess
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only filesystem here")
        ro.chmod(0o555)  # (not read-only for root, hence the mount)
    try:
        _assert_same_error_as_launch(ro, "is not writable")
        _assert_same_error_as_launch(ro / "w", "cannot be created")
        assert os.listdir(ro) == []
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
        ro.chmod(0o755)
