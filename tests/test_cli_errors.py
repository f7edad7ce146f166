"""Bad input to the command-line tools gives a clear message and exit status 2, never a traceback."""

import numpy as np
import pytest

from conftest import REPO_ROOT, run_module

TINY = str(REPO_ROOT / "configs" / "tiny.py")


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.lower()
    for fragment in fragments:
        assert fragment.lower() in message, (fragment, result.stderr[-2000:])


def prepare_file(tmp_path, path, *extra):
    return run_module("data_prep.prepare", "--data_root", str(tmp_path / "data"), "--input", str(path),
                      "--name", "mine", *extra)


def test_prepare_file_with_only_nan_windows(tmp_path):
    path = tmp_path / "nan.csv"
    values = np.arange(200, dtype=float)
    values[::10] = np.nan  # A NaN in every window of 24 steps.
    np.savetxt(path, values[:, None], delimiter=",")
    result = prepare_file(tmp_path, path, "--seq_len", "24")
    assert_clean_error(result, "nan")


def test_prepare_wrong_rank(tmp_path):
    path = tmp_path / "four_d.npy"
    np.save(path, np.zeros((2, 3, 24, 1)))
    result = prepare_file(tmp_path, path, "--seq_len", "24")
    assert_clean_error(result, "(2, 3, 24, 1)")


def test_prepare_window_longer_than_series(tmp_path):
    path = tmp_path / "short.csv"
    np.savetxt(path, np.arange(50, dtype=float)[:, None], delimiter=",")
    result = prepare_file(tmp_path, path, "--seq_len", "96")
    assert_clean_error(result, "96")


def test_prepare_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    result = prepare_file(tmp_path, path, "--seq_len", "24")
    assert_clean_error(result, "empty")


def test_prepare_non_numeric_column(tmp_path):
    path = tmp_path / "text.csv"
    rows = ["value,label"] + [f"{i},item{i}" for i in range(100)]
    path.write_text("\n".join(rows) + "\n")
    result = prepare_file(tmp_path, path, "--seq_len", "24")
    assert_clean_error(result, "label")


def test_prepare_unknown_domain(tmp_path):
    result = run_module("data_prep.prepare", "--data_root", str(tmp_path), "--seq_len", "24",
                        "--domains", "electricty")
    assert_clean_error(result, "electricty", "electricity")


def test_train_length_the_unet_cannot_take(tmp_path):
    result = run_module("timecraft_jax.train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                        f"--config.data.data_root={tmp_path / 'data'}", "--config.data.seq_len=20")
    assert_clean_error(result, "20", "multiple of 8")
    assert not (tmp_path / "data").exists(), "data was prepared before the length was checked"


def test_train_unknown_domain(tmp_path):
    result = run_module("timecraft_jax.train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                        f"--config.data.data_root={tmp_path / 'data'}", "--config.data.domains=nope")
    assert_clean_error(result, "nope")


def test_train_mistyped_config_key(tmp_path):
    result = run_module("timecraft_jax.train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                        "--config.training.num_stepz=3")
    assert_clean_error(result, "num_stepz", "num_steps")


def test_train_missing_config_file(tmp_path):
    result = run_module("timecraft_jax.train", f"--config={tmp_path / 'absent.py'}", f"--workdir={tmp_path / 'run'}")
    assert_clean_error(result, "absent.py", "not found")


def test_train_channels_differ_from_data(tmp_path):
    # exchange has 8 channels; without flattening to univariate the 1-channel model cannot take it.
    result = run_module("timecraft_jax.train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                        f"--config.data.data_root={tmp_path / 'data'}", "--config.data.domains=exchange",
                        "--config.data.univariate=False")
    assert_clean_error(result, "8 channel", "in_channels")


def test_resume_with_checkpoint_of_other_channel_count(tiny_run, tmp_path):
    workdir, data_root, _ = tiny_run
    result = run_module("timecraft_jax.train", f"--config={TINY}", f"--workdir={workdir}",
                        f"--config.data.data_root={data_root}", "--config.data.domains=exchange",
                        "--config.data.univariate=False", "--config.model.in_channels=8")
    assert_clean_error(result, "different config")


def test_sample_unknown_domain(tiny_run, tmp_path):
    workdir, _, _ = tiny_run
    result = run_module("timecraft_jax.sample", "--workdir", str(workdir), "--domain", "nope",
                        "--num_samples", "2", "--out", str(tmp_path / "x.npy"))
    assert_clean_error(result, "nope", "exchange")


def test_sample_missing_workdir(tmp_path):
    result = run_module("timecraft_jax.sample", "--workdir", str(tmp_path / "absent"), "--domain", "exchange",
                        "--num_samples", "2", "--out", str(tmp_path / "x.npy"))
    assert_clean_error(result, "no checkpoints", "timecraft_jax.train")


@pytest.mark.parametrize("flag,value", [("--num_samples", "0"), ("--eta", "2"), ("--num_steps", "500")])
def test_sample_invalid_options(tiny_run, tmp_path, flag, value):
    workdir, _, _ = tiny_run
    args = ["--workdir", str(workdir), "--domain", "exchange", "--num_samples", "2",
            "--out", str(tmp_path / "x.npy"), "--sampler", "ddim"]
    args = [a for a in args]
    if flag == "--num_samples":
        args[args.index("--num_samples") + 1] = value
    else:
        args += [flag, value]
    result = run_module("timecraft_jax.sample", *args)
    assert_clean_error(result, value)
    assert not (tmp_path / "x.npy").exists()


def test_evaluate_nan_samples(tmp_path):
    samples = np.random.default_rng(0).normal(size=(10, 24, 1)).astype(np.float32)
    samples[3, 5, 0] = np.nan
    np.save(tmp_path / "gen.npy", samples)
    np.save(tmp_path / "real.npy", np.zeros((10, 24, 1), np.float32))
    result = run_module("timecraft_jax.evaluate", "--samples", str(tmp_path / "gen.npy"), "--reference",
                        str(tmp_path / "real.npy"), "--samples_space", "raw", "--out", str(tmp_path / "eval"))
    assert_clean_error(result, "nan")
