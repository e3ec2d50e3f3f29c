import pytest
import torch

from fedtune.data import SYNTHETIC_ASSAYS, synthetic_fitness
from fedtune.models import TrunkConfig, load_trunk, travelling_keys
from fedtune.tasks import build_model
from fedtune.models.tiny import make_tiny_trunk

HEAVY = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"
LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTPLT"


@pytest.mark.slow
def test_real_antiberty_is_deterministic_and_padding_invariant():
    model = build_model("fitness", TrunkConfig("antiberty"), SYNTHETIC_ASSAYS).eval()
    assert model.trunk.hidden_size == 512 and model.trunk.residue_sep == " "
    with torch.no_grad():
        alone = model.embed([HEAVY], [LIGHT])
        again = model.embed([HEAVY], [LIGHT])
        # batched with a much longer antibody: the first item is padded, its embedding must not move
        batch = model.embed([HEAVY, HEAVY + "GGGGSGGGGSGGGGS" * 2], [LIGHT, LIGHT + "K" * 20])
    assert alone.shape == (1, 1024)
    assert torch.equal(alone, again)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[1], alone[0])


@pytest.mark.slow
def test_real_minilm_is_deterministic_and_padding_invariant():
    trunk = load_trunk(TrunkConfig("minilm")).eval()
    assert trunk.hidden_size == 384
    texts = ["Operating profit rose to EUR 13.1 mn .", "Sales fell ."]
    with torch.no_grad():
        a = trunk(**trunk.tokenize(texts[:1]))
        b = trunk(**trunk.tokenize(texts))
        c = trunk(**trunk.tokenize(texts[:1]))
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(a, c)
    # pooling covers real tokens only: special tokens and padding are excluded from the mean
    tok = trunk.tokenize(texts)
    assert tok["pool_mask"].sum() < tok["attention_mask"].sum()


@pytest.mark.parametrize("kind", ["antibody", "esm"])
def test_local_hf_folder_trunk(tmp_path, kind):
    folder = make_tiny_trunk(tmp_path / kind, kind)
    trunk = load_trunk(TrunkConfig(str(folder))).eval()
    assert trunk.hidden_size == 32
    ids = trunk.tokenize([trunk.prepare("EVQLV")])["input_ids"][0].tolist()
    assert trunk.tokenizer.unk_token_id not in ids and len(ids) == 7      # 5 residues + 2 special tokens
    with torch.no_grad():
        one = trunk(**trunk.tokenize([trunk.prepare(HEAVY)]))
        two = trunk(**trunk.tokenize([trunk.prepare(HEAVY), trunk.prepare(HEAVY + "AAAA")]))
    torch.testing.assert_close(two[0], one[0], atol=1e-5, rtol=1e-5)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_trunk(TrunkConfig(str(tmp_path / "nope")))


def test_heads_per_task_with_one_output_per_assay(tiny_antibody_trunk):
    data = synthetic_fitness(4)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk)), data.assays)
    out = model(data.heavy, data.light)
    assert set(out) == set(data.tasks)
    assert out["aggregation"].shape == (4, 2) and out["binding"].shape == (4, 1)
    assert all(k.startswith(("trunk.", "heads.")) for k in model.state_dict())
    layers = [m.out_features for m in model.heads["polyreactivity"].net if isinstance(m, torch.nn.Linear)]
    assert layers == [128, 64, 32, 2]


@pytest.mark.parametrize("mode", ["frozen", "full", "lora", "ptuning"])
def test_trunk_modes_decide_what_trains_and_travels(tiny_antibody_trunk, mode):
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode=mode), SYNTHETIC_ASSAYS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if n.startswith("heads.")}
    trunk = trainable - heads
    assert heads == {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    if mode == "frozen":
        assert not trunk
    elif mode == "lora":
        assert trunk and all("lora_" in n for n in trunk)
    elif mode == "ptuning":      # only the prompt encoder (and the heads) train and travel
        assert trunk and all(n.startswith("trunk.prompt.encoder.") for n in trunk)
    else:
        assert trunk == {n for n, _ in model.named_parameters() if n.startswith("trunk.")}
    shared = set(travelling_keys(model, private_heads=False))
    private = set(travelling_keys(model, private_heads=True))
    assert heads <= shared and not any(k.startswith("heads.") for k in private)
    assert private == {k for k in shared if not k.startswith("heads.")}


def test_ptuning_prompt_changes_embeddings_but_not_padding_invariance(tiny_antibody_trunk):
    plain = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), SYNTHETIC_ASSAYS).eval()
    prompted = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="ptuning", virtual_tokens=4),
                           SYNTHETIC_ASSAYS).eval()
    with torch.no_grad():
        a = plain.embed([HEAVY], [LIGHT])
        b = prompted.embed([HEAVY], [LIGHT])
        c = prompted.embed([HEAVY, HEAVY + "AAAAAAAA"], [LIGHT, LIGHT])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c[0], b[0], atol=1e-5, rtol=1e-5)
