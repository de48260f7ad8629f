"""The lm-evaluation-harness model ``titans``: its scores equal the model's own, and a tiny local task runs
through lm-eval's evaluator and its command line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

import torch
from lm_eval.api.instance import Instance

from test_hf_helpers import one_thread  # noqa: F401  (fixture)
from titans.hf.configuration import TitansHFConfig
from titans.hf.lm_eval_adapter import TitansEvalLM
from titans.hf.modeling import TitansForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [("The sky is", " blue."), ("Two plus two is", " four"), ("", "Hello"), ("Trailing space ", "here")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = TitansHFConfig(variant="mag", vocab_size=256, dim=32, depth=2, heads=2, chunk_size=4, window=8,
                            persistent_tokens=2, memory_expansion=2)  # fmt: skip
    directory = tmp_path_factory.mktemp("titans_eval")
    TitansForCausalLM(config).save_pretrained(directory)
    return directory


def own_logprob(model: TitansForCausalLM, context: bytes, continuation: bytes) -> float:
    """Σ log p(continuation | context) straight from the model, on UTF-8 bytes (NUL before an empty context)."""
    ids = torch.tensor([list(context or b"\0") + list(continuation)])
    with torch.no_grad():
        logprobs = model.model(ids).logits.log_softmax(-1)[0]
    start = len(context or b"\0")
    return sum(float(logprobs[start - 1 + i, token]) for i, token in enumerate(continuation))


def request(kind: str, *args: object) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)  # type: ignore[arg-type]


def test_loglikelihood_equals_the_models_own(model_dir):
    lm = TitansEvalLM(pretrained=str(model_dir))
    results = lm.loglikelihood([request("loglikelihood", c, x) for c, x in PAIRS])
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        spaces = len(context) - len(context.rstrip())
        ctx, cont = context.rstrip(), context[len(context) - spaces :] + continuation
        expected = own_logprob(lm.hf_model, ctx.encode(), cont.encode())
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_and_long_texts_in_pieces(model_dir):
    text = "A long document that is read in several pieces. " * 3
    lm = TitansEvalLM(pretrained=str(model_dir), piece_len=16)
    (score,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert score == pytest.approx(own_logprob(lm.hf_model, b"", text.encode()), rel=1e-5)


def test_generate_until_equals_native_greedy_decoding(model_dir):
    lm = TitansEvalLM(pretrained=str(model_dir))
    (text,) = lm.generate_until([request("generate_until", "Once upon", {"until": ["\n\n"], "max_gen_toks": 12})])
    native = lm.hf_model.model.generate(torch.tensor([list(b"Once upon")]), 12, temperature=0.0)
    expected = bytes(native.new_tokens[0].tolist()).decode("utf-8", errors="replace").split("\n\n")[0]
    assert text == expected


def _task(tmp_path) -> str:
    rows = [{"question": "Color of the sky:", "choices": [" blue", " green"], "answer": 0},
            {"question": "Two plus two:", "choices": [" three", " four"], "answer": 1}]  # fmt: skip
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tiny.yaml").write_text(
        "task: titans_tiny\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        'test_split: test\noutput_type: multiple_choice\ntarget_delimiter: ""\n'
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return str(tmp_path)


def test_tiny_task_through_the_evaluator(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="titans", model_args=f"pretrained={model_dir}", tasks=["titans_tiny"],
        task_manager=TaskManager(include_path=_task(tmp_path), include_defaults=False), log_samples=True,
    )  # fmt: skip
    assert 0.0 <= results["results"]["titans_tiny"]["acc,none"] <= 1.0
    model = TitansForCausalLM.from_pretrained(model_dir).eval()
    for sample in results["samples"]["titans_tiny"]:
        doc = sample["doc"]
        for choice, resp in zip(doc["choices"], sample["resps"]):
            logprob = resp[0][0] if isinstance(resp[0], list | tuple) else resp[0]
            expected = own_logprob(model, doc["question"].encode(), choice.encode())
            assert float(logprob) == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_command_line(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    from titans.hf.lm_eval_adapter import main

    index = TaskManager.__init__  # index only the tiny task (lm-eval's own thousands take long)
    monkeypatch.setattr(
        TaskManager, "__init__", lambda self, *a, **k: index(self, *a, **{**k, "include_defaults": False})
    )
    main(["run", "--model", "titans", "--model_args", f"pretrained={model_dir}", "--tasks", "titans_tiny",
          "--include_path", _task(tmp_path)])  # fmt: skip
    assert "titans_tiny" in capsys.readouterr().out
