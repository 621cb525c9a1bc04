"""The verl and TRL reward functions (armorm_client.verl, armorm_client.trl) against the live server: the
reference's score and objectives for the same conversation, None / an exception where each trainer needs one,
the environment's settings, and no hang on a server that is gone or silent."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from armorm_client import (
    DeadlineExceededError,
    InvalidConversationError,
    RetriesExhaustedError,
    ServerUnavailableError,
)
from armorm_client import verl as verl_reward
from armorm_client.contract import OBJECTIVES
from armorm_client.rlhf import MissingPromptError, Settings
from armorm_client.trl import ArmoRMReward, AsyncArmoRMReward
from tests.conversations import TEST_MAX_TOKENS, turn, varied_conversations
from tests.test_server import SCORE_ATOL, VECTOR_ATOL

pytestmark = pytest.mark.integration

OVER_LIMIT = [turn("user", "word " * (TEST_MAX_TOKENS + 200)), turn("assistant", "ok")]


@pytest.fixture
def env(monkeypatch, server):
    """The environment a trainer's workers would see: ARMORM_URL at the test server, nothing else set."""
    for name in ("ARMORM_URL", "ARMORM_API_KEY", "ARMORM_TIMEOUT_S", "ARMORM_MAX_ATTEMPTS", "ARMORM_MAX_IN_FLIGHT",
                 "ARMORM_SSL", "ARMORM_ROOT_CERTIFICATES", "ARMORM_OBJECTIVE_WEIGHTS", "ARMORM_MODEL",
                 verl_reward.INVALID_SCORE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARMORM_URL", server.grpc_url)
    monkeypatch.setenv("ARMORM_TIMEOUT_S", "30")
    return monkeypatch


def split(messages):
    """A conversation as a trainer holds it: the prompt messages and the final response text."""
    return messages[:-1], messages[-1]["content"]


def assert_like_reference(row: dict, expected, what: str) -> None:
    assert set(row) == {"score", *OBJECTIVES}, what
    assert abs(row["score"] - expected.score) <= SCORE_ATOL, f"{what}: score {row['score']} vs {expected.score}"
    served = np.array([row[name] for name in OBJECTIVES])
    error = float(np.abs(served - expected.rewards).max())
    assert error <= VECTOR_ATOL, f"{what}: objectives differ by {error:.3g}"


# verl


def test_verl_compute_score_gives_the_reference_score_and_objectives(env, reference):
    for index, messages in enumerate(varied_conversations()[:6]):
        prompt, response = split(messages)
        row = verl_reward.compute_score("hh", response, None, extra_info={"prompt": prompt, "index": index})
        assert_like_reference(row, reference.score(messages), f"conversation {index}")


def test_verl_takes_a_text_prompt_as_one_user_turn_and_numpy_rows_as_parquet_gives_them(env, reference):
    row = verl_reward.compute_score("hh", "Paris.", "", extra_info={"prompt": "Capital of France?"})
    assert_like_reference(row, reference.score([turn("user", "Capital of France?"), turn("assistant", "Paris.")]),
                          "text prompt")
    messages = varied_conversations()[5]  # system + user + assistant
    prompt, response = split(messages)
    as_read = np.array([{**m, "tool_calls": None} for m in prompt], dtype=object)  # parquet structs, extra fields
    row = verl_reward.compute_score("hh", response, "", extra_info={"prompt": as_read},
                                    reward_router_address=None)  # a keyword verl's reward loop may add
    assert_like_reference(row, reference.score(messages), "numpy array of messages")


def test_verl_batch_and_async_forms_give_the_same_rows(env, reference):
    conversations = varied_conversations()
    prompts, responses = zip(*map(split, conversations))
    rows = verl_reward.compute_score_batch(["hh"] * len(conversations), list(responses), [None] * len(conversations),
                                           [{"prompt": p} for p in prompts])
    assert len(rows) == len(conversations)
    for index, (row, messages) in enumerate(zip(rows, conversations)):
        assert_like_reference(row, reference.score(messages), f"batch row {index}")

    async def concurrently():
        return await asyncio.gather(*(verl_reward.compute_score_async("hh", r, None, {"prompt": p})
                                      for p, r in zip(prompts[:8], responses[:8])))

    for index, (row, batched) in enumerate(zip(asyncio.run(concurrently()), rows)):
        assert_like_reference(row, reference.score(conversations[index]), f"async row {index}")
        assert abs(row["score"] - batched["score"]) <= SCORE_ATOL


@pytest.mark.parametrize("extra_info", [None, {}, {"index": 3, "question": "q"}, {"prompt": ""}, {"prompt": None}])
def test_verl_refuses_a_row_without_the_prompt_and_says_what_to_add(env, extra_info):
    with pytest.raises(MissingPromptError, match=r"extra_info\['prompt'\]"):
        verl_reward.compute_score("hh", "an answer", "gt", extra_info)
    infos = [{"prompt": "fine"}, extra_info]
    with pytest.raises(MissingPromptError, match=r"row 1"):
        verl_reward.compute_score_batch(["hh"] * 2, ["a", "b"], [None] * 2, infos)
    with pytest.raises(MissingPromptError, match="not a prompt"):
        verl_reward.compute_score("hh", "an answer", "gt", {"prompt": [{"text": "no role"}]})


def test_verl_raises_on_a_refused_row_unless_a_score_for_refused_rows_is_set(env, reference):
    prompt, response = split(OVER_LIMIT)
    with pytest.raises(InvalidConversationError, match="the limit is"):
        verl_reward.compute_score("hh", response, None, {"prompt": prompt})
    good = varied_conversations()[0]
    infos = [{"prompt": split(good)[0]}, {"prompt": prompt}, {"prompt": split(good)[0]}]
    with pytest.raises(InvalidConversationError):
        verl_reward.compute_score_batch(["hh"] * 3, [good[-1]["content"], response, good[-1]["content"]],
                                        [None] * 3, infos)
    env.setenv(verl_reward.INVALID_SCORE_ENV, "-5")
    rows = verl_reward.compute_score_batch(["hh"] * 3, [good[-1]["content"], response, good[-1]["content"]],
                                           [None] * 3, infos)
    assert rows[1]["score"] == -5.0 and rows[1]["refused"] == 1.0
    assert all(np.isnan(rows[1][name]) for name in OBJECTIVES)
    for row in (rows[0], rows[2]):
        assert row.pop("refused") == 0.0
        assert_like_reference(row, reference.score(good), "neighbour of a refused row")


# TRL


def test_trl_conversational_and_plain_text_batches_give_the_reference_score(env, server, reference):
    reward = ArmoRMReward()
    assert reward.__name__ == "armorm" and reward.settings.url == server.grpc_url
    conversations = varied_conversations()
    prompts = [messages[:-1] for messages in conversations]
    completions = [[messages[-1]] for messages in conversations]
    scores = reward(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None,
                    log_extra=None, log_metric=None, solution=["dataset column"] * len(prompts))
    for index, (score, messages) in enumerate(zip(scores, conversations)):
        assert abs(score - reference.score(messages).score) <= SCORE_ATOL, f"conversational row {index}"
    plain = [("Name a prime.", "7"), ("What is 2+2?", "4"), ("Hi", "Hello there!")]
    scores = reward([p for p, _ in plain], [c for _, c in plain])
    for (prompt, completion), score in zip(plain, scores):
        expected = reference.score([turn("user", prompt), turn("assistant", completion)]).score
        assert abs(score - expected) <= SCORE_ATOL, f"plain text {prompt!r}: one user turn, one assistant turn"
    reward.close()


def test_trl_gives_none_for_a_refused_row_and_logs_the_objective_means(env, reference):
    good = varied_conversations()[:3]
    batch = [good[0], OVER_LIMIT, good[1], good[2]]
    logged: dict[str, float] = {}
    for reward in (ArmoRMReward(name="armorm_rm"), AsyncArmoRMReward(name="armorm_rm")):
        logged.clear()
        call = reward([m[:-1] for m in batch], [m[-1]["content"] for m in batch],
                      log_metric=lambda name, value: logged.__setitem__(name, value))
        scores = asyncio.run(call) if asyncio.iscoroutine(call) else call
        assert scores[1] is None, "the server refused the over-limit row: TRL leaves it out"
        for score, messages in zip([scores[0], *scores[2:]], good):
            assert abs(score - reference.score(messages).score) <= SCORE_ATOL
        means = np.mean([reference.score(m).rewards for m in good], axis=0)
        assert logged.pop("armorm_rm/refused") == 1.0
        assert set(logged) == {f"armorm_rm/{name}" for name in OBJECTIVES}
        for name, mean in zip(OBJECTIVES, means):
            assert abs(logged[f"armorm_rm/{name}"] - mean) <= VECTOR_ATOL, name


def test_objective_weights_steer_the_verl_and_trl_rewards(env, reference):
    """ARMORM_OBJECTIVE_WEIGHTS (verl, slime) or objective_weights= (TRL): the reward is Σ wᵢ·rewardᵢ, the gated
    score beside it."""
    messages = varied_conversations()[0]
    expected = reference.score(messages)
    steered = 0.97 * expected.rewards[OBJECTIVES.index("helpsteer-helpfulness")] - 0.26 * expected.rewards[
        OBJECTIVES.index("helpsteer-verbosity")]
    env.setenv("ARMORM_OBJECTIVE_WEIGHTS", "helpsteer-helpfulness=0.97,helpsteer-verbosity=-0.26")
    prompt, response = split(messages)
    row = verl_reward.compute_score("hh", response, None, extra_info={"prompt": prompt})
    assert abs(row["score"] - steered) <= VECTOR_ATOL and abs(row["armorm_score"] - expected.score) <= SCORE_ATOL
    env.delenv("ARMORM_OBJECTIVE_WEIGHTS")
    logged: dict[str, float] = {}
    reward = ArmoRMReward(objective_weights={"helpsteer-helpfulness": 0.97, "helpsteer-verbosity": -0.26})
    [score] = reward([prompt], [response], log_metric=lambda name, value: logged.__setitem__(name, value))
    assert abs(score - steered) <= VECTOR_ATOL and abs(logged["armorm/armorm_score"] - expected.score) <= SCORE_ATOL
    assert pickle.loads(pickle.dumps(reward)).settings.objective_weights == reward.settings.objective_weights
    reward.close()


def test_trl_async_reward_runs_on_the_callers_loop_and_survives_a_new_loop(env, reference):
    reward = AsyncArmoRMReward()
    messages = varied_conversations()[1]
    expected = reference.score(messages).score
    for _ in range(2):  # asyncio.run makes a new loop each time: the reward reconnects on it
        [score] = asyncio.run(reward([messages[:-1]], [[messages[-1]]]))
        assert abs(score - expected) <= SCORE_ATOL


def test_trl_reward_pickles_without_its_connection(env, reference):
    reward = ArmoRMReward(timeout_s=12.5)
    messages = varied_conversations()[0]
    reward([messages[:-1]], [[messages[-1]]])  # connected
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.settings == reward.settings and copy.__name__ == reward.__name__
    [score] = copy([messages[:-1]], [[messages[-1]]])
    assert abs(score - reference.score(messages).score) <= SCORE_ATOL


# Settings from the environment


def test_settings_come_from_the_environment_and_bad_values_name_the_variable(env):
    env.setenv("ARMORM_API_KEY", "secret-key")
    env.setenv("ARMORM_MAX_ATTEMPTS", "2")
    env.setenv("ARMORM_MAX_IN_FLIGHT", "7")
    settings = Settings.from_env()
    assert (settings.timeout_s, settings.max_attempts, settings.max_in_flight) == (30.0, 2, 7)
    assert "secret-key" not in repr(settings)
    reward = ArmoRMReward()
    assert reward.settings == settings and reward.client()._options.headers == {
        "triton-grpc-protocol-armorm-api-key": "secret-key"}  # the header the gateway checks
    assert ArmoRMReward(max_attempts=4, url="elsewhere:1").settings.max_attempts == 4
    for name, value in (("ARMORM_TIMEOUT_S", "soon"), ("ARMORM_TIMEOUT_S", "nan"), ("ARMORM_TIMEOUT_S", "inf"),
                        ("ARMORM_MAX_ATTEMPTS", "0"), ("ARMORM_SSL", "yes")):
        with env.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                Settings.from_env()
            with pytest.raises(ValueError, match=name):
                verl_reward.compute_score("hh", "a", None, {"prompt": "q"})


# A server that is gone or silent: an error within the deadline, never a hang


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_server():
    """Accepts TCP connections and never answers (a hung server, or a proxy with nothing behind it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for sock in accepted:
        sock.close()
    listener.close()


def test_an_unreachable_server_raises_after_the_retries(env):
    env.setenv("ARMORM_URL", f"127.0.0.1:{closed_port()}")
    env.setenv("ARMORM_MAX_ATTEMPTS", "3")
    prompt, response = split(varied_conversations()[0])
    calls = {
        "verl": lambda: verl_reward.compute_score("hh", response, None, {"prompt": prompt}),
        "verl batch": lambda: verl_reward.compute_score_batch(["hh"] * 4, [response] * 4, [None] * 4,
                                                              [{"prompt": prompt}] * 4),
        "verl async": lambda: asyncio.run(verl_reward.compute_score_async("hh", response, None, {"prompt": prompt})),
        "trl": lambda: ArmoRMReward()([prompt] * 4, [response] * 4),
        "trl async": lambda: asyncio.run(AsyncArmoRMReward()([prompt] * 4, [response] * 4)),
    }
    for what, call in calls.items():
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError) as caught:
            call()
        assert time.monotonic() - start < 20, what
        assert isinstance(caught.value, RetriesExhaustedError), f"{what}: {caught.value!r}"
        assert "3 attempts" in str(caught.value), what


def test_a_silent_server_raises_deadline_exceeded_within_the_timeout(env, silent_server):
    env.setenv("ARMORM_URL", silent_server)
    env.setenv("ARMORM_TIMEOUT_S", "1.5")
    prompt, response = split(varied_conversations()[0])
    calls = {
        "verl": lambda: verl_reward.compute_score("hh", response, None, {"prompt": prompt}),
        "verl async": lambda: asyncio.run(verl_reward.compute_score_async("hh", response, None, {"prompt": prompt})),
        "trl": lambda: ArmoRMReward()([prompt] * 3, [response] * 3),
        "trl async": lambda: asyncio.run(AsyncArmoRMReward()([prompt] * 3, [response] * 3)),
    }
    for what, call in calls.items():
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError) as caught:  # not retried: one deadline, then the error
            call()
        elapsed = time.monotonic() - start
        assert elapsed < 1.5 + 5, f"{what}: {elapsed:.1f} s"
        if what.startswith("trl"):
            assert "3 of 3 completions got no reward" in str(caught.value), str(caught.value)


# TRL's own reward-calling code (slow: TRL and its dependencies, installed apart from the project's venv)

TRL_SITE = Path(os.environ.get("ARMORM_TRL_SITE", Path(__file__).resolve().parent.parent / "build" / "trl-site"))
TRL_INSTALL = "`make trl` installs it there (pip install --no-deps --target build/trl-site trl ...)"

# GRPOTrainer._calculate_rewards, unchanged, on a trainer whose __init__ (model, dataset, generation) is skipped:
# it calls the reward functions as training does (sync ones in turn, async ones on its daemon loop), turns None
# into NaN, checks the lengths and gathers across processes.
TRL_SCRIPT = """
import collections, json, sys
from accelerate import Accelerator
from transformers import TrainerState
from trl import GRPOTrainer
from trl.trainer.utils import start_event_loop_in_daemon
from armorm_client.trl import ArmoRMReward, AsyncArmoRMReward


class Args:
    report_to = []


class Harness(GRPOTrainer):
    def __init__(self, url):
        self.accelerator, self.args, self.state = Accelerator(cpu=True), Args(), TrainerState()
        self.reward_funcs = [ArmoRMReward(url), AsyncArmoRMReward(url, name="armorm_async")]
        self.reward_processing_classes = [None, None]
        self.reward_func_names = [f.__name__ for f in self.reward_funcs]
        self.environments = None
        self._pending_metrics = collections.defaultdict(list)
        self._pending_extra_logs = collections.defaultdict(list)
        _, self.async_loop, ready = start_event_loop_in_daemon(name="rewards")
        ready.wait()


batch = json.loads(sys.stdin.read())
trainer = Harness(sys.argv[1])
prompts, completions = batch["prompts"], batch["completions"]
inputs = [{"prompt": p, "completion": c, "topic": "t"} for p, c in zip(prompts, completions)]
rewards = trainer._calculate_rewards(inputs, prompts, completions, [[0]] * len(prompts))
print(json.dumps({"rewards": [[None if v != v else v for v in row] for row in rewards.tolist()],
                  "metrics": {k: v for k, v in trainer._pending_metrics.items()}}))
"""


@pytest.mark.slow
def test_trl_grpo_trainer_calls_the_reward_functions_and_gets_the_reference_scores(server, reference):
    site = str(TRL_SITE)
    probe = subprocess.run([sys.executable, "-c", "import trl, accelerate, datasets"], capture_output=True,
                           env={**os.environ, "PYTHONPATH": site}, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"TRL is not installed under {site}; {TRL_INSTALL}")
    conversations = varied_conversations()[:5]
    batch = [*conversations[:2], OVER_LIMIT, *conversations[2:]]
    payload = {"prompts": [m[:-1] for m in batch], "completions": [[m[-1]] for m in batch]}
    done = subprocess.run([sys.executable, "-c", TRL_SCRIPT, server.grpc_url], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([site, *sys.path])})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [reference.score(m).score for m in conversations]
    for column in (0, 1):  # the sync and the async reward function
        got = [row[column] for row in answer["rewards"]]
        assert got[2] is None, "TRL turned the refused row's None into NaN"
        for score, want in zip(got[:2] + got[3:], expected):
            assert abs(score - want) <= SCORE_ATOL
    means = np.mean([reference.score(m).rewards for m in conversations], axis=0)
    for prefix in ("armorm", "armorm_async"):
        assert answer["metrics"][f"{prefix}/refused"] == [1.0]
        for name, mean in zip(OBJECTIVES, means):
            assert abs(answer["metrics"][f"{prefix}/{name}"][0] - mean) <= VECTOR_ATOL, (prefix, name)


# Prompts already templated (a plain-text dataset rendered with the policy's chat template)


def test_a_templated_prompt_is_scored_as_text_not_templated_twice(env, reference, tokenizer):
    """Before: wrapped in a user turn and templated again (nested headers), a score and no error."""
    for index, messages in enumerate(varied_conversations()[:4]):
        prompt, response = split(messages)
        for templated in (tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                          tokenizer.apply_chat_template(prompt, tokenize=False)):  # without the generation header
            expected = reference.score(messages)
            row = verl_reward.compute_score("hh", response, None, extra_info={"prompt": templated})
            assert_like_reference(row, expected, f"verl, conversation {index}")
            (reward,) = ArmoRMReward()([templated], [response])
            assert abs(reward - expected.score) <= SCORE_ATOL, f"TRL, conversation {index}"
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InvalidConversationError, match="ChatML"):
        verl_reward.compute_score("hh", "Hello", None, extra_info={"prompt": chatml})


def test_the_verl_module_loaded_from_its_path_pickles_as_verls_remote_manager_does(env, reference):
    """verl loads `custom_reward_function.path` by file path and Ray pickles the function by value (cloudpickle):
    a module-level lock made that fail ("cannot pickle '_thread.lock'")."""
    import importlib.util

    import cloudpickle

    path = Path(verl_reward.__file__)
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("compute_score", "compute_score_batch", "compute_score_async"):
        restored = pickle.loads(cloudpickle.dumps(getattr(module, name)))
        assert callable(restored)
    messages = varied_conversations()[0]
    prompt, response = split(messages)
    restored = pickle.loads(cloudpickle.dumps(module.compute_score))
    assert_like_reference(restored("hh", response, None, extra_info={"prompt": prompt}), reference.score(messages),
                          "the unpickled function")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction needs Python 3.12")
def test_the_async_trl_reward_is_a_coroutine_function_to_inspect(env):
    """TRL versions that pick async reward functions with inspect.iscoroutinefunction (1.9) awaited nothing."""
    import inspect

    reward = AsyncArmoRMReward()
    assert inspect.iscoroutinefunction(reward)
    assert inspect.iscoroutinefunction(pickle.loads(pickle.dumps(reward))), "kept across pickling"
    assert not inspect.iscoroutinefunction(ArmoRMReward())
