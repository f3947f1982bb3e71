"""lm-evaluation-harness through the posterior predictive (``pyro_monteclora.evaluation.harness``).

With S = 0 the answers must be those of lm-eval's own ``hf`` model on the PEFT export of the mean
adapter; with S > 0 the log-likelihood must be the log of the average likelihood over the draws
(log-sum-exp minus log S), all windows of a rolling request under the same draws.
"""

import json
import math

import pyro
import pytest
import torch
from conftest import tiny_llama, word_tokenizer

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel  # noqa: E402
from pyro_monteclora.data.multiple_choice import MultipleChoiceData, multiple_choice_loader  # noqa: E402
from pyro_monteclora.evaluation.harness import MonteCLoRALM  # noqa: E402
from pyro_monteclora.evaluation.language_model import predict_multiple_choice  # noqa: E402

VOCAB = 64
REQUESTS = [
    ("what is the capital of peru ?", " lima"),
    ("what is the capital of", " japan ? tokyo"),
    ("", "what is"),  # an empty context is scored after the prefix token
    ("capital ? ", "lima"),  # a trailing space moves to the continuation
]


def full_tokenizer():
    """The word tokenizer with as many ids as the tiny Llama's vocabulary (lm-eval's ``hf`` would
    otherwise resize the embedding to the tokenizer, changing the softmax)."""
    tokenizer = word_tokenizer()
    tokenizer.add_tokens([f"extra{i}" for i in range(VOCAB - len(tokenizer))])
    return tokenizer


def adapted(random_B: bool = True, sample_scaler: float = 1.0):
    network = tiny_llama(initializer_range=0.2)
    config = MonteCLoRAConfig(
        rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=sample_scaler, random_B=random_B
    )
    model = MonteCLoRAModel(network, config)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    return model, MonteCLoRAGuide(model)


def instances(kind, args):
    return [Instance(kind, {}, arg, index) for index, arg in enumerate(args)]


def write_local_tasks(folder, rows) -> None:
    """lm-eval task YAMLs over a local JSONL of ``rows`` (question, choices, answer, target), one per
    request type: ``capitals_mc``, ``capitals_gen`` and ``capitals_ppl``."""
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: capitals_mc\noutput_type: multiple_choice\n" + common + 'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\ndoc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n'
    )
    (folder / "gen.yaml").write_text(
        "task: capitals_gen\noutput_type: generate_until\n" + common + 'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{target}}"\ngeneration_kwargs:\n  until: ["?"]\n  max_gen_toks: 3\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    (folder / "ppl.yaml").write_text(
        "task: capitals_ppl\noutput_type: loglikelihood_rolling\n" + common + 'doc_to_text: ""\n'
        'doc_to_target: "{{question}} {{target}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: bits_per_byte\n"
    )


def test_with_no_draws_every_request_type_equals_lm_eval_hf_on_the_peft_export(tmp_path):
    from lm_eval.models.huggingface import HFLM

    tokenizer = full_tokenizer()
    network = tiny_llama(initializer_range=0.2)
    network.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = MonteCLoRAModel(network, MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)  # a zero B would make the export the base model
    guide = MonteCLoRAGuide(model)
    model.export_peft(tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    ours = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=0, batch_size=3)
    hf = HFLM(pretrained=str(tmp_path / "base"), peft=str(tmp_path / "peft"), batch_size=3, device="cpu")

    requests = instances("loglikelihood", REQUESTS)
    for (mine, mine_greedy), (theirs, theirs_greedy) in zip(ours.loglikelihood(requests), hf.loglikelihood(requests)):
        assert mine == pytest.approx(theirs, abs=1e-4) and mine_greedy == theirs_greedy
    rolling = instances("loglikelihood_rolling", [("what is the capital of peru ? lima " * 12,), ("lima",)])
    ours._max_length = hf._max_length = 16  # several windows per text
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(hf.loglikelihood_rolling(rolling), abs=1e-4)
    generate = instances(
        "generate_until",
        [("what is the capital of peru ?", {"until": ["?"], "max_gen_toks": 5}), ("capital", {"max_gen_toks": 4})],
    )
    assert ours.generate_until(generate) == hf.generate_until(generate)
    assert all(record["agreement"] == 1.0 and len(record["generations"]) == 1 for record in ours.generations)


def test_the_loglikelihood_is_the_log_of_the_mean_likelihood_over_the_draws():
    tokenizer = full_tokenizer()
    model, guide = adapted()
    draws = 4
    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=draws, batch_size=len(REQUESTS))
    pyro.set_rng_seed(3)
    got = [value for value, _ in lm.loglikelihood(instances("loglikelihood", REQUESTS))]

    # the same draws (same seed, one batch), scored by hand: each draw's summed token log-probs
    pyro.set_rng_seed(3)
    expected = []
    model.eval()
    with torch.no_grad(), model.stacked_adapters(guide, draws) as network:
        for context, continuation in REQUESTS:
            if context:
                spaces = len(context) - len(context.rstrip())  # lm-eval moves them to the continuation
                context, continuation = context.rstrip(), context[len(context) - spaces :] + continuation
                whole = tokenizer.encode(context + continuation)
                prefix = tokenizer.encode(context)
            else:
                whole = [tokenizer.bos_token_id] + tokenizer.encode(continuation)
                prefix = [tokenizer.bos_token_id]
            ids = torch.tensor([whole[:-1]]).repeat(draws, 1)
            log_probs = network(input_ids=ids).logits.float().log_softmax(-1)
            targets = torch.tensor(whole[len(prefix) :])
            per_draw = log_probs[:, len(prefix) - 1 :].gather(-1, targets.expand(draws, -1)[..., None]).sum((1, 2))
            expected.append((per_draw.double().logsumexp(0) - math.log(draws)).item())
            mean_of_logs = per_draw.double().mean().item()
            assert expected[-1] >= mean_of_logs  # Jensen: not the average log-likelihood
    assert got == pytest.approx(expected, abs=1e-4)
    assert len(set(round(v, 6) for v in got)) == len(got)


def test_options_score_as_the_librarys_own_multiple_choice_scorer():
    tokenizer = full_tokenizer()
    model, guide = adapted()
    questions = ["what is the capital of peru ?", "what is the capital of japan ?"]
    choices = [["lima", "tokyo", "cairo"], ["tokyo", "paris"]]
    data = MultipleChoiceData(questions, choices, [0, 0])
    loader = multiple_choice_loader(data, tokenizer, questions_per_batch=2)
    scored = predict_multiple_choice(model, guide, loader, num_samples=0)

    from pyro_monteclora.data.instructions import format_prompt

    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=0, add_bos_token=False)
    for row, (question, options) in enumerate(zip(questions, choices)):
        context = tokenizer.bos_token + format_prompt(tokenizer, question)  # the scorer's prompt: bos + template
        values = lm.loglikelihood(instances("loglikelihood", [(context, " " + option) for option in options]))
        probs = torch.tensor([value for value, _ in values], dtype=torch.float64).softmax(-1)
        assert torch.allclose(probs, scored.probs[row, : len(options)].double(), atol=1e-5)


def test_rolling_windows_share_their_draws():
    tokenizer = full_tokenizer()
    model, guide = adapted()
    text = "what is the capital of peru ? lima " * 6
    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=3, max_length=8, batch_size=2)
    pyro.set_rng_seed(0)
    (got,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))
    # by hand: the whole text's per-draw log-likelihood, windows summed under one set of draws
    from lm_eval import utils

    pyro.set_rng_seed(0)
    model.eval()
    windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(tokenizer.encode(text), 1, 8, 1)]
    assert len(windows) > 2
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad(), model.stacked_adapters(guide, 3) as network:
        for context, continuation in windows:
            whole = (context + continuation)[-9:]
            log_probs = network(input_ids=torch.tensor([whole[:-1]]).repeat(3, 1)).logits.float().log_softmax(-1)
            targets = torch.tensor(whole[-len(continuation) :])
            picked = log_probs[:, -len(continuation) :].gather(-1, targets.expand(3, -1)[..., None])
            totals += picked.sum((1, 2)).double()
    assert got == pytest.approx((totals.logsumexp(0) - math.log(3)).item(), abs=1e-4)


def test_generation_returns_the_majority_answer_and_keeps_the_agreement():
    tokenizer = full_tokenizer()
    model, guide = adapted(sample_scaler=3.0)
    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=5, samples_per_pass=2)
    requests = instances(
        "generate_until",
        [("what is the capital of peru ?", {"until": ["?"], "max_gen_toks": 3}), ("capital", {"max_gen_toks": 4})],
    )
    pyro.set_rng_seed(1)
    answers = lm.generate_until(requests)
    assert len(lm.generations) == 2
    for answer, record in zip(answers, lm.generations):
        assert len(record["generations"]) == 5
        votes = [a for a in record["answers"] if a == record["answer"]]
        assert record["agreement"] == pytest.approx(len(votes) / 5)
        assert record["agreement"] >= max(record["answers"].count(a) for a in set(record["answers"])) / 5
        assert " ".join(answer.split()) == record["answer"] and "?" not in answer
    assert any(len(set(r["generations"])) > 1 for r in lm.generations)  # the draws differ


def test_simple_evaluate_runs_local_tasks_of_every_request_type(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    rows = [
        {"question": "what is the capital of peru ?", "choices": ["lima", "tokyo"], "answer": 0, "target": "lima"},
        {"question": "what is the capital of japan ?", "choices": ["lima", "tokyo"], "answer": 1, "target": "tokyo"},
    ]
    write_local_tasks(tmp_path, rows)
    model, guide = adapted()
    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=full_tokenizer(), num_samples=2)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["capitals_mc", "capitals_gen", "capitals_ppl"], task_manager=manager, log_samples=False
    )
    results = out["results"]
    assert 0.0 <= results["capitals_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["capitals_gen"]["exact_match,none"] <= 1.0
    assert math.isfinite(results["capitals_ppl"]["word_perplexity,none"])
    assert len(lm.generations) == 2


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    model, guide = adapted()
    tokenizer = full_tokenizer()
    with pytest.raises(ValueError, match="answer_type must be one of short, number, text"):
        MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, answer_type="regex")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 0"):
        MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=-1)
    with pytest.raises(ValueError, match="give checkpoint, or model and tokenizer"):
        MonteCLoRALM(model=model)


def test_is_greedy_marks_the_predictives_own_greedy_continuation_across_passes():
    tokenizer = full_tokenizer()
    model, guide = adapted(sample_scaler=0.0)  # every draw is the mean adapter: the predictive is its model
    context = "what is the capital of peru ?"
    ids = torch.tensor([tokenizer.encode(context)])
    model.eval()
    with torch.no_grad(), model.mean_adapters():
        out = model.network.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    greedy_text = " " + tokenizer.decode(out[0, ids.shape[1] :])
    other = " lima lima lima" if greedy_text != " lima lima lima" else " tokyo tokyo tokyo"
    for samples, per_pass in ((0, None), (3, 2)):
        lm = MonteCLoRALM(model=model, guide=guide, tokenizer=tokenizer, num_samples=samples, samples_per_pass=per_pass)
        flags = [
            flag for _, flag in lm.loglikelihood(instances("loglikelihood", [(context, greedy_text), (context, other)]))
        ]
        assert flags == [True, False], (samples, greedy_text)


def test_requests_lm_eval_refuses_are_refused_here_too():
    model, guide = adapted()
    lm = MonteCLoRALM(model=model, guide=guide, tokenizer=full_tokenizer(), num_samples=0, max_length=4)
    with pytest.raises(ValueError, match="exceeds max_length 4"):
        lm.loglikelihood(instances("loglikelihood", [("capital", " lima lima lima lima lima")]))
    assert lm.loglikelihood_rolling(instances("loglikelihood_rolling", [("",)])) == [0.0]
    with pytest.raises(TypeError):
        MonteCLoRALM(model=model, guide=guide, tokenizer=full_tokenizer(), num_sample=0)
