"""Run progress: one overall bar, a metrics bar, plain lines off a terminal, third-party output in run.log, and the
final summary."""

from __future__ import annotations

import io
import logging
import re
import warnings

import pytest

from eval.harness import progress


def _lines(text, phase):
    return [tuple(map(int, m.groups())) for m in re.finditer(rf"^\[{phase}\] (\d+)/(\d+) ", text, re.M)]


def test_line_bar_writes_monotone_lines_without_carriage_returns():
    out = io.StringIO()
    bar = progress.LineBar(25, "m / t", "generate", out, every=10)
    for _ in range(25):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    assert _lines(text, "generate") == [(10, 25), (20, 25), (25, 25)]
    assert "ETA" in text.splitlines()[0] and "m / t" in text


def test_line_bar_also_writes_on_a_time_interval():
    out = io.StringIO()
    bar = progress.LineBar(1000, "", "metrics", out, every=1000, interval=0.0)
    bar.update(1)
    bar.update(1)
    assert _lines(out.getvalue(), "metrics") == [(1, 1000), (2, 1000)]


def test_third_party_output_goes_to_run_log_not_the_terminal(tmp_path, capfd):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    tlog.enable_progress_bar()  # loading a model in an earlier test may have turned them off
    dlog.enable_progress_bar()
    with progress.session(tmp_path, quiet=False, stream=io.StringIO()):
        assert not tlog.is_progress_bar_enabled() and not dlog.is_progress_bar_enabled()
        warnings.warn("zoo python warning", UserWarning, stacklevel=1)
        logging.getLogger().warning("zoo root warning /abs/cache/path")  # open_clip logs like this
        tlog.get_logger("transformers.modeling_utils").warning("zoo transformers warning")
        dlog.get_logger("diffusers.models").warning("zoo diffusers warning")
    err = capfd.readouterr().err
    log = (tmp_path / "run.log").read_text()
    for msg in ("zoo python warning", "zoo root warning", "zoo transformers warning", "zoo diffusers warning"):
        assert msg in log and msg not in err
    assert tlog.is_progress_bar_enabled() and dlog.is_progress_bar_enabled()  # restored after the run


def test_summary_names_failures_total_time_and_a_file_link(tmp_path):
    (tmp_path / "failures" / "m" / "t").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "failures" / "m" / "t" / f"s{i}.json").write_text("{}")
    (tmp_path / "report.html").write_text("<html></html>")
    with progress.session(tmp_path, quiet=False, stream=io.StringIO()) as sess:
        text = sess.summary(tmp_path)
    assert "failures: 3" in text and "total time:" in text
    assert f"report: {(tmp_path / 'report.html').resolve().as_uri()}" in text and "file://" in text


@pytest.mark.slow
def test_a_run_off_a_terminal_reports_generation_and_metrics_progress(tmp_path, capfd):
    import methods
    from eval.harness import RunConfig, run

    run(RunConfig(methods=["identity", "sdedit"], tasks=["sample-edit"], out=tmp_path / "run", max_samples=3),
        registry=methods)
    err = capfd.readouterr().err
    assert "\r" not in err
    gen, met = _lines(err, "generate"), _lines(err, "metrics")
    assert gen and gen[-1] == (6, 6) and all(a[0] < b[0] for a, b in zip(gen, gen[1:]))
    assert met and met[-1][0] == met[-1][1] and all(a[0] < b[0] for a, b in zip(met, met[1:]))
    assert "sdedit / sample-edit" in err and "failures: 0" in err and "file://" in err
    assert (tmp_path / "run" / "run.log").is_file()
    run(RunConfig(methods=["identity"], tasks=["sample-edit"], out=tmp_path / "quiet", max_samples=2, quiet=True),
        registry=methods)
    assert capfd.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_tqdm_bar_names_the_current_method_and_task(tmp_path):
    term = _Terminal()
    with progress.session(tmp_path, quiet=False, stream=term) as sess:
        sess.open_bar(4, "generate", "img")
        sess.advance(2, "sdedit / sample-edit")
        sess.advance(2, "identity / sample-edit", failed=1)
    text = term.getvalue()
    assert "\r" in text and "identity / sample-edit" in text and "4/4" in text and "1 failed" in text


def test_quiet_shows_no_bar(tmp_path):
    out = io.StringIO()
    with progress.session(tmp_path, quiet=True, stream=out) as sess:
        assert sess.open_bar(4, "generate", "img") is None
        sess.advance(4, "m / t")
    assert out.getvalue() == ""
