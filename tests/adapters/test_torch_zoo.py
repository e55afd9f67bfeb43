"""Round trips of real architectures: torchvision resnet18, Hugging Face BERT and GPT-2 built
from small config objects (random weights; nothing is downloaded)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from onnxinit.rescale import rescale
from onnxinit.weights import MappingError

from .torch_roundtrip import export, ort_outputs, round_trip

torch = pytest.importorskip("torch")
from onnxinit.adapters.torch import load_into


class _LastHidden(torch.nn.Module):
    """A Hugging Face model as a function of token ids returning one tensor."""

    def __init__(self, model, output):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, ids):
        # an explicit mask and positions keep the legacy exporter off aten::diff (transformers 5)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                         position_ids=torch.arange(ids.shape[1]).expand_as(ids))
        return getattr(out, self.output)


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    return transformers.BertModel(config, add_pooling_layer=False)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config)


def test_resnet18_training_export_round_trip(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for module in model.modules():  # training-mode forwards must not move the running stats
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0
    report = round_trip(model, (torch.randn(4, 3, 32, 32),), ["x"], tmp_path, training=True)
    assert report.missing == []
    assert len(report.mapped) == len(list(model.parameters())) + 2 * 20  # + BN running stats
    assert set(report.how.values()) == {"name"}


def test_bert_round_trip_with_transposed_and_deduplicated_weights(tmp_path):
    torch.manual_seed(1)
    model = _LastHidden(_bert(), "last_hidden_state")
    ids = torch.randint(0, 100, (2, 8))
    report = round_trip(model, (ids,), ["input_ids"], tmp_path)
    assert report.missing == []
    assert len(report.transposed) == 12  # q, k, v, out, up, down per layer: onnx::MatMul_N
    assert report.aliases  # equal zero biases / unit LayerNorm weights read through Identity
    assert len(set(report.mapped.values())) == len(list(model.parameters()))


def test_bert_loads_into_the_bare_model_by_normalised_names(tmp_path):
    torch.manual_seed(2)
    model = _LastHidden(_bert(), "last_hidden_state")
    ids = torch.randint(0, 100, (2, 8))
    original = export(model, (ids,), tmp_path / "bert.onnx", ["input_ids"])
    rescaled = rescale(original, "autoinit", output=tmp_path / "bert.r.onnx").output
    bare = copy.deepcopy(model.model)  # names lack the wrapper's "model." prefix
    report = load_into(bare, rescaled, original)
    assert report.unmapped == [] and report.missing == []
    assert "normalized name" in report.how.values()
    with torch.no_grad():
        out = _LastHidden(bare, "last_hidden_state").eval()(ids).numpy()
    np.testing.assert_allclose(out, ort_outputs(rescaled, {"input_ids": ids.numpy()}),
                               rtol=1e-4, atol=1e-4)


def test_gpt2_tied_embedding_maps_to_one_parameter(tmp_path):
    torch.manual_seed(3)
    model = _LastHidden(_gpt2(), "logits")
    ids = torch.randint(0, 100, (2, 8))
    wte = "model.transformer.wte.weight"
    assert model.model.lm_head.weight is model.model.transformer.wte.weight

    # without constant folding the tie stays one initializer: a plain round trip
    report = round_trip(model, (ids,), ["input_ids"], tmp_path, fold=False)
    assert [n for n, p in report.mapped.items() if p == wte] == [wte]
    assert "model.lm_head.weight" not in report.mapped.values() and report.missing == []
    assert model.model.lm_head.weight is model.model.transformer.wte.weight

    # constant folding writes lm_head as a transposed copy: both tensors map to the one parameter
    folded = export(model, (ids,), tmp_path / "folded.onnx", ["input_ids"])
    from onnxinit.adapters.torch import module_parameters
    from onnxinit.weights import map_weights, weight_source

    _, values, buffers = module_parameters(model)
    report = map_weights(weight_source(folded), values, buffers=buffers)
    tied = sorted(n for n, p in report.mapped.items() if p == wte)
    assert len(tied) == 2 and any(n.startswith("onnx::MatMul") for n in tied)
    assert report.unmapped == [] and report.missing == []
    # ... and autoinit scales the copy (a MatMul weight) but not the embedding (a Gather
    # table): loading would untie them, so it is refused and nothing changes
    rescaled = rescale(folded, "autoinit", output=tmp_path / "folded.r.onnx").output
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MappingError, match="tied parameters") as info:
        load_into(model, rescaled, folded)
    assert list(info.value.report.conflicts) == [wte]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
