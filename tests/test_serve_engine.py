"""#14, the engine side of kvl serve: a per-request cancel that frees its sequence, a request source
that may have nothing to start yet (None), and earlier conversation turns in the prompt, with the
CLI's prompts unchanged."""

from __future__ import annotations

import threading

import pytest

from kvl_cli.engine.engine import Engine
from kvl_cli.engine.prompt import format_prompt, kimi_format
from kvl_cli.engine.reasoning import Section
from kvl_cli.engine.types import (
    Constraint,
    ConstraintKind,
    DoneEvent,
    EngineConfig,
    FinishReason,
    GenerationSettings,
    Request,
    TextEvent,
)
from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

ENDLESS = Constraint(ConstraintKind.GRAMMAR, 'root ::= [ab] root')  # a grammar that never lets the answer end


@pytest.fixture(scope="module")
def engine(scripted):  # type: ignore[no-untyped-def]
    with Engine(EngineConfig(model=scripted.model, mmproj=scripted.mmproj, n_ctx=4096, parallel=2)) as eng:
        yield eng


def endless(cancel: threading.Event) -> Request:
    return Request(user_text="Go", settings=GenerationSettings(temperature=0, max_tokens=100_000, think_budget=0,
                                                               constraint=ENDLESS), cancel=cancel)


def test_cancel_ends_the_answer_and_frees_its_sequence(engine):
    cancel = threading.Event()
    requests = [endless(cancel), Request(user_text="Hi", settings=GenerationSettings(temperature=0)),
                Request(user_text="Again", settings=GenerationSettings(temperature=0))]
    done: dict[int, object] = {}
    texts = 0
    for index, ev in engine.generate_many(iter(requests), parallel=2):
        if index == 0 and isinstance(ev, TextEvent):
            texts += 1
            if texts == 20:
                cancel.set()
        if isinstance(ev, DoneEvent):
            done[index] = ev.result
    first = done[0]
    assert first.finish_reason is FinishReason.CANCELLED
    assert 20 <= first.tokens.generated < 40 and set(first.answer) == {"a"}
    for k in (1, 2):  # the third request ran in a freed sequence
        assert done[k].finish_reason is FinishReason.STOP and done[k].answer == SCRIPTED_ANSWER


def test_cancelled_before_its_prompt_is_read(engine):
    cancel = threading.Event()
    cancel.set()
    (result,) = [ev.result for _, ev in engine.generate_many([endless(cancel)]) if isinstance(ev, DoneEvent)]
    assert result.finish_reason is FinishReason.CANCELLED and result.tokens.generated == 0


def test_a_source_with_nothing_yet_keeps_the_running_answers_going(engine):
    """None from the source: nothing to start now; the running sequence goes on, and a request that
    comes later still starts."""
    late = Request(user_text="Later", settings=GenerationSettings(temperature=0))
    pending = {"nones": 0}

    def source():  # type: ignore[no-untyped-def]
        yield Request(user_text="First", settings=GenerationSettings(temperature=0))
        while pending["nones"] < 5:
            pending["nones"] += 1
            yield None
        yield late

    results = {i: ev.result for i, ev in engine.generate_many(source(), parallel=2) if isinstance(ev, DoneEvent)}
    assert pending["nones"] == 5
    assert {r.answer for r in results.values()} == {SCRIPTED_ANSWER} and len(results) == 2
    assert all(r.thinking == SCRIPTED_THINKING for r in results.values())


def test_streamed_sections_under_cancel(engine):
    cancel = threading.Event()
    req = Request(user_text="Hi", settings=GenerationSettings(temperature=0), cancel=cancel)
    events = list(engine.generate(req))
    assert [e.section for e in events if isinstance(e, TextEvent)][0] is Section.THINKING
    assert events[-1].result.finish_reason is FinishReason.STOP


# ---- the prompt ------------------------------------------------------------------------------------


def test_earlier_turns_go_between_the_system_prompt_and_the_question(scripted):
    from kvl_cli.engine.llama_handles import Model

    req = Request(user_text="<__media__>And now?", system="Be brief.",
                  messages=[("user", "<__media__>What is it?"), ("assistant", "A cat.")])
    want = ("<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
            "<|im_user|>user<|im_middle|><__media__>What is it?<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>A cat.<|im_end|>"
            "<|im_user|>user<|im_middle|><__media__>And now?<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>")
    with Model(scripted.model, vocab_only=True) as model:
        assert format_prompt(req, model.chat_template()) == want
    assert format_prompt(req, b"not a template llama.cpp knows") == want  # kvl's own rendering agrees


def test_without_earlier_turns_the_prompt_is_unchanged():
    req = Request(user_text="<__media__>Why?")
    assert format_prompt(req, b"unknown") == kimi_format([("system", "You are a helpful assistant"),
                                                          ("user", "<__media__>Why?")])
    assert kimi_format([("system", "S"), ("user", "U")]) == (
        "<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>U<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>")


def test_a_request_whose_grammar_breaks_fails_alone(engine):
    from kvl_cli.engine.types import FailedEvent
    from kvl_cli.errors import UsageError

    bad = Request(user_text="Hi", settings=GenerationSettings(temperature=0, constraint=Constraint(
        ConstraintKind.GRAMMAR, "root ::= (")))
    good = Request(user_text="Hi", settings=GenerationSettings(temperature=0))
    outcomes = {i: ev for i, ev in engine.generate_many([bad, good, good], parallel=2)
                if isinstance(ev, (DoneEvent, FailedEvent))}
    assert isinstance(outcomes[0], FailedEvent) and isinstance(outcomes[0].error, UsageError)
    assert outcomes[1].result.answer == outcomes[2].result.answer == SCRIPTED_ANSWER
