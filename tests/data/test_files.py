"""The one writer: a write that fails or is killed leaves the old file or none, never a partial one."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scmamba2.data.files import (atomic_path, check_model_dir, check_output, read_json, staged_dir, write_h5ad,
                                 write_text)
from scmamba2.errors import CheckpointError, InputError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new conte")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary file left


def test_a_failed_first_write_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.h5ad") as tmp:
            tmp.write_bytes(b"\x89HDF")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_written_files_are_0644_and_keep_their_extension(tmp_path, tiny_counts):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.h5ad") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith("x.h5ad") and tmp.name != "x.h5ad"
            tiny_counts.write_h5ad(tmp)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.h5ad").stat().st_mode) == 0o644


def test_model_files_all_0644(tmp_path):
    from scmamba2 import ModelConfig, ScMamba2
    from scmamba2.data.vocab import GeneVocab

    vocab = GeneVocab([f"G{i}" for i in range(6)])
    model = ScMamba2(ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, d_state=16, headdim=16,
                                 chunk_size=8), vocab=vocab)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "vocab.json": 0o644}


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from scmamba2.data.files import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"N" * 1_000_000)   # half of the new file
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)               # killed here
            fh.write(b"N" * 1_000_000)
""")


def test_sigkill_during_a_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"OLD" * 1000)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": SRC}, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"OLD" * 1000  # the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out.h5ad"]
    assert all(n.startswith(".tmp-") for n in leftovers)  # only a hidden temporary file, never the final name


_H5AD_WRITER = textwrap.dedent("""
    import sys
    import anndata as ad, numpy as np
    from scmamba2.data.files import write_h5ad
    x = np.random.default_rng(0).poisson(1.0, (4000, 2000)).astype(np.float32)
    print("start", flush=True)
    write_h5ad(ad.AnnData(X=x), sys.argv[1])
""")


def test_sigkill_during_write_h5ad_never_leaves_a_partial_file(tmp_path):
    """A real h5ad write killed after a few ms: the target is the old file or the whole new one."""
    import anndata as ad

    target = tmp_path / "out.h5ad"
    old = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))
    old.write_h5ad(target)
    old_bytes = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _H5AD_WRITER, str(target)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": SRC}, text=True)
    try:
        assert proc.stdout.readline().strip() == "start"
        import time

        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    if target.read_bytes() != old_bytes:  # the write finished before the kill: then it is whole
        assert ad.read_h5ad(target).shape == (4000, 2000)


def test_write_h5ad_and_read_json(tmp_path, tiny_counts):
    import anndata as ad

    write_h5ad(tiny_counts, tmp_path / "sub" / "a.h5ad")
    assert ad.read_h5ad(tmp_path / "sub" / "a.h5ad").shape == tiny_counts.shape
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(CheckpointError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(InputError, match="missing"):
        read_json(tmp_path / "none.json", error=InputError)


def test_check_output_and_model_dir(tmp_path):
    data = tmp_path / "d.h5ad"
    data.write_bytes(b"x")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(InputError, match="input"):
        check_output(tmp_path / "." / "d.h5ad", [data])
    with pytest.raises(InputError, match="input"):
        check_output(model / "e.h5ad", [data, model])
    with pytest.raises(InputError, match="folder"):
        check_output(model, [data])
    assert check_output(tmp_path / "new.h5ad", [data, model]) == tmp_path / "new.h5ad"
    with pytest.raises(InputError, match="--overwrite"):
        check_model_dir(model)
    assert check_model_dir(model, overwrite=True) == model
    with pytest.raises(InputError, match="input"):  # never the starting model, even with --overwrite
        check_model_dir(model, overwrite=True, sources=[model])
    with pytest.raises(InputError, match="input"):
        check_model_dir(tmp_path, overwrite=True, sources=[data])  # the folder holds an input
    (tmp_path / "empty").mkdir()
    check_model_dir(tmp_path / "empty")


def test_staged_dir_replaces_only_on_success(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(model) as stage:
            (stage / "new.txt").write_text("new")
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and [p.name for p in model.iterdir()] == ["old.txt"]
    with staged_dir(model) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and [p.name for p in model.iterdir()] == ["new.txt"]
