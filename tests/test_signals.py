"""Signals: SIGTERM stops a batch like Ctrl-C (143, "terminated"), Ctrl-C is taken at once whatever the
native side is doing (the stop flag, the encoder off the main thread, the abort callback), and the
load can be left behind."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kvl_cli.engine import stop
from kvl_cli.errors import Terminated
from kvl_cli.signals import stop_signals

from .conftest import kvl_env, make_image

KVL = [sys.executable, "-m", "kvl_cli"]
LONG = ["--no-think", "--temperature", "0", "--image-max-tokens", "16", "--max-tokens", "3000"]


@pytest.fixture(autouse=True)
def fresh_stop():
    stop.reset()
    yield
    stop.reset()
    stop._state["abandoned"] = 0


def interrupt_main_after(seconds: float) -> None:
    threading.Timer(seconds, _thread.interrupt_main).start()


# ---- the CLI, as a real process ------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "kvl: terminated"),
                                                   (signal.SIGINT, 130, "kvl: interrupted")], ids=["TERM", "INT"])
def test_a_signal_stops_a_batch_and_keeps_whole_records(random_pair, photos, sig, code, line, workers):
    inputs = photos(12)
    proc = subprocess.Popen(KVL + ["caption", "--json", "-P", workers, *LONG, *inputs], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kvl_env(random_pair))
    assert proc.stdout is not None
    first = proc.stdout.readline()  # one record is out: the batch is running
    t0 = time.monotonic()
    proc.send_signal(sig)
    out = proc.stdout.read()  # not communicate(): it would skip what readline() buffered
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert time.monotonic() - t0 < 5  # a toy model: the stop itself is at once
    assert proc.returncode == code
    assert err.decode() == line + "\n"
    *lines, end = (first + out).decode().split("\n")
    assert end == ""
    recs = [json.loads(x) for x in lines]  # whole lines only
    assert 0 < len(recs) < len(inputs)
    assert recs[0]["input"] == inputs[0] and recs[0]["finish_reason"] == "length"
    assert all(r["finish_reason"] in ("length", "interrupted") for r in recs)


HUNG_LOAD = """
import sys, time
from kvl_cli.engine import engine
def hung(self, *args, **kwargs):  # a load that does not come back (a hung network disk)
    print("loading", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
engine.Engine.__init__ = hung
from kvl_cli.cli import main
sys.argv[0] = "kvl"
main()
"""


def test_ctrl_c_during_a_load_that_does_not_return_exits_at_once(scripted, photos):
    (photo,) = photos(1)
    proc = subprocess.Popen([sys.executable, "-c", HUNG_LOAD, "caption", photo], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kvl_env(scripted))
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"loading\n"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 3  # the load is left to the exit
    assert proc.returncode == 130
    assert err == b"kvl: interrupted\n" and out == b""


def test_help_documents_the_signal_exit_codes():
    r = subprocess.run(KVL + ["--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(r.stdout.split())
    assert "130 interrupted (Ctrl-C), 141 stdout closed (`kvl … | head`), 143 terminated (SIGTERM)" in text


# ---- the stop flag -----------------------------------------------------------------------------------


def test_sigterm_raises_terminated_and_sets_the_flag():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert stop.reason() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_the_watcher_sets_the_flag_for_ctrl_c_without_the_main_thread():
    main = threading.main_thread().ident
    assert main is not None
    with pytest.raises(KeyboardInterrupt), stop_signals():
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
        time.sleep(5)
    # Python's own SIGINT handler only raises: the flag comes from the watcher thread
    deadline = time.monotonic() + 2
    while not stop.requested() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stop.reason() == signal.SIGINT


@stop.native_callback
def _log_callback_hit_by_ctrl_c() -> str:
    signal.raise_signal(signal.SIGINT)
    total = 0
    for i in range(10000):  # the handler runs in here, inside "native code's" callback: it must not raise
        total += i
    return "done"


def test_ctrl_c_inside_a_native_callback_is_delivered_after_it():
    with stop_signals():
        assert _log_callback_hit_by_ctrl_c() == "done"
        assert stop.requested()  # the native side hears of it at once
        with pytest.raises(KeyboardInterrupt):  # the main thread, a moment later
            time.sleep(5)
    assert stop.reason() == signal.SIGINT


def test_ctrl_c_inside_a_native_callback_is_raised_once():
    with stop_signals():
        _log_callback_hit_by_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_stopped()  # the stopped native call raised it
        time.sleep(0.3)  # the delivery again finds it raised: nothing more


def test_run_native_takes_ctrl_c_at_once_and_waits_for_the_native_side():
    finished = threading.Event()

    def native_like() -> str:  # stands for a native call that checks the flag now and then
        while not stop.requested():
            time.sleep(0.05)
        time.sleep(0.1)
        finished.set()
        return "stopped"

    interrupt_main_after(0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stop.run_native(native_like)
    assert time.monotonic() - t0 < 1
    assert finished.is_set()  # the main thread never frees what the native side still uses
    assert stop.reason() == signal.SIGINT and stop.abandoned() == 0


def test_run_native_can_leave_a_call_behind():
    release = threading.Event()
    interrupt_main_after(0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stop.run_native(release.wait, 10, abandon=True)
    assert time.monotonic() - t0 < 1
    assert stop.abandoned() == 1
    release.set()


def test_run_native_passes_results_and_errors_through():
    assert stop.run_native(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        stop.run_native(lambda: 1 / 0)
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(stop.run_native(threading.current_thread)))
    t.start()
    t.join()
    assert out == [t]  # off the main thread: called in place


# ---- the native side stops when asked -------------------------------------------------------------


@pytest.fixture
def toy_engine(scripted):
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import EngineConfig

    with Engine(EngineConfig(model=scripted.model, mmproj=scripted.mmproj, n_ctx=1024)) as eng:
        yield eng


def test_a_stopped_encoder_returns_nothing(toy_engine, tmp_path):
    from kvl_cli.media.images import InputRef, load_image

    image = load_image(InputRef("a.png", path=make_image(tmp_path / "a.png")), max_tokens=64)
    tokens, _ = toy_engine.encode_image(image)  # it works...
    assert tokens > 0
    stop.request()
    with pytest.raises(KeyboardInterrupt):  # ...and once a stop is asked for, its half-made output is not used
        toy_engine.encode_image(image)


def test_a_stopped_prompt_evaluation_raises_keyboard_interrupt(toy_engine):
    ctx = toy_engine.workers[0].ctx
    assert ctx.eval_tokens([1, 2, 3], 0, 0, 8, logits_last=True) == 3
    ctx.seq_rm(0)
    stop.request(signal.SIGTERM)
    with pytest.raises(Terminated):
        ctx.eval_tokens([1, 2, 3], 0, 0, 8, logits_last=True)
    stop.reset()
    assert ctx.eval_tokens([1, 2, 3], 0, 0, 8, logits_last=True) == 3  # the context is still good


def test_a_batch_whose_workers_took_the_ctrl_c_ends_interrupted():
    from kvl_cli.errors import Interrupted
    from kvl_cli.run.ordered import OrderedEmitter, run_ordered

    class Sink:
        written: list[int] = []

        def begin(self, pos): ...
        def event(self, pos, ev): ...
        def progress(self, pos, ev): ...
        def done(self, pos, outcome):
            self.written.append(pos)

    class WorkersStoppedInTheirPrefill:  # the Ctrl-C reached the workers: no answer had begun
        def generate_many(self, requests, parallel=None):
            stop.request(signal.SIGINT)
            return iter(())

    sink = Sink()
    with pytest.raises(Interrupted):
        run_ordered(WorkersStoppedInTheirPrefill(), iter([]), OrderedEmitter(sink), 2)  # type: ignore[arg-type]
    assert sink.written == []
