"""What transformers' own VideoMAE and TimeSformer tests check (tests/models/videomae/test_modeling_videomae.py,
tests/models/timesformer/test_modeling_timesformer.py and the common model tests), held for our classes on upstream's
tiny testers' configs: output shapes and counts, tuples, the embeddings' accessors, masked tubelets, torch.export.

Not applicable, with the reason: VideoMAEForPreTraining (pixel reconstruction, not classification), training and
gradient checkpointing, flash attention, pipelines, and mutating a config after building (ours is frozen: pass
``output_attentions=...`` to forward, or build the config with it)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (the reference) is not installed")

# upstream's testers: odd sizes (10 px frames of 2 px patches, 37 MLP channels), dropout set (off in eval)
VIDEOMAE = dict(image_size=10, patch_size=2, num_frames=2, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=37, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                num_labels=10)
TIMESFORMER = dict(image_size=10, patch_size=2, num_frames=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=10)
BATCH = 13


def _pair(tmp_path, family: str, base: bool, **overrides):
    from vivit_deploy.model.checkpoint import load_model

    if family == "videomae":
        config = transformers.VideoMAEConfig(**{**VIDEOMAE, **overrides})
        cls = transformers.VideoMAEModel if base else transformers.VideoMAEForVideoClassification
        seq = (2 // 2) * 25
    else:
        config = transformers.TimesformerConfig(**{**TIMESFORMER, **overrides})
        cls = transformers.TimesformerModel if base else transformers.TimesformerForVideoClassification
        seq = 1 + 2 * 25
    torch.manual_seed(0)
    theirs = cls(config).eval()
    theirs.save_pretrained(tmp_path)
    theirs = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    return load_model(tmp_path, head="base" if base else "classification", attn_implementation="eager"), theirs, seq


@pytest.mark.parametrize("family", ["videomae", "timesformer"])
@pytest.mark.parametrize("base", [True, False], ids=["base", "classifier"])
def test_output_shapes_counts_and_tuples_are_upstreams(family, base, tmp_path):
    ours, theirs, seq = _pair(tmp_path, family, base)
    x = torch.rand(BATCH, 2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine = ours(x, output_attentions=True, output_hidden_states=True)
        expected = theirs(x, output_attentions=True, output_hidden_states=True)
        plain = ours(x, output_attentions=True)
        as_tuple = ours(x, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert len(mine.hidden_states) == len(expected.hidden_states) == 3  # the embeddings and each layer's output
    assert tuple(mine.hidden_states[0].shape[-2:]) == (seq, 32)
    assert len(mine.attentions) == len(expected.attentions) == 2
    assert [tuple(a.shape) for a in mine.attentions] == [tuple(a.shape) for a in expected.attentions]
    assert len(plain) + 1 == len(mine) and len(as_tuple) == len(mine)  # attentions last, hidden states before them
    if base:
        assert tuple(mine.last_hidden_state.shape) == (BATCH, seq, 32)
        torch.testing.assert_close(mine.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    else:
        assert tuple(mine.logits.shape) == (BATCH, 10)
        torch.testing.assert_close(mine.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert isinstance(ours.get_input_embeddings(), torch.nn.Module) and ours.get_output_embeddings() is None


@pytest.mark.parametrize("family", ["videomae", "timesformer"])
def test_torch_export_takes_them_as_upstream_tests_it(family, tmp_path):
    ours, _, _ = _pair(tmp_path, family, base=False)
    x = torch.rand(2, 2, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    exported = torch.export.export(ours, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)


def test_videomae_keeps_only_the_visible_tubelets_of_bool_masked_pos(tmp_path):
    """Upstream's pre-training tests mask 90% of the tubelets, the same count in every clip: the encoder sees the rest."""
    ours, theirs, seq = _pair(tmp_path, "videomae", base=True, num_frames=4)
    seq = 2 * 25
    mask = torch.zeros(seq, dtype=torch.bool)
    mask[: int(0.9 * seq)] = True
    masked = mask.expand(3, -1)
    x = torch.rand(3, 4, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine = ours(x, bool_masked_pos=masked).last_hidden_state
        torch.testing.assert_close(mine, theirs(x, bool_masked_pos=masked).last_hidden_state, atol=1e-5, rtol=1e-5)
    assert tuple(mine.shape) == (3, seq - int(0.9 * seq), 32)
    from vivit_deploy.errors import InputShapeError

    uneven = masked.clone()
    uneven[0, -1] = True
    with pytest.raises(InputShapeError, match="the same number of tubelets in every clip"):
        ours(x, bool_masked_pos=uneven)


@pytest.mark.parametrize("family", ["videomae", "timesformer"])
def test_transformers_5s_new_format_saves_them_under_the_same_names_and_they_load(family, tmp_path):
    """transformers 5 renames ViViT's keys with save_original_format=False; for VideoMAE and TimeSformer it keeps them
    (no conversion mapping): such checkpoints load as they are."""
    from vivit_deploy.model.checkpoint import load_model

    if family == "videomae":
        model = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**VIDEOMAE))
    else:
        model = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**TIMESFORMER))
    model.eval().save_pretrained(tmp_path, save_original_format=False)
    x = torch.rand(2, 2, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)


def test_classify_and_stream_take_a_videomae_checkpoint(tmp_path):
    """The corpus job and the stream classifier reach a model only through a runtime: a VideoMAE checkpoint's labels
    come out of both, as PyTorch computes them on the same frames."""
    import json

    from click.testing import CliRunner

    from vivit_deploy.cli import main
    from vivit_deploy.demo import sample_videos
    from vivit_deploy.demo.motion import write_phases
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.streaming import StreamClassifier

    config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    transformers.VideoMAEForVideoClassification(config).save_pretrained(tmp_path / "ckpt")
    transformers.VideoMAEImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
                                           ).save_pretrained(tmp_path / "ckpt")
    videos = tmp_path / "videos"
    videos.mkdir()
    for path, _ in sample_videos()[:3]:
        (videos / path.name).write_bytes(path.read_bytes())
    result = CliRunner().invoke(main, ["classify", str(videos), "-o", str(tmp_path / "rows.jsonl"), "--model",
                                       str(tmp_path / "ckpt"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    here = VideoClassifier.from_pretrained(tmp_path / "ckpt")
    assert {r["path"].rsplit("/", 1)[1]: r["label"] for r in rows} == {
        p.name: here.classify(p, top_k=1)[0].label for p in sorted(videos.iterdir())}
    stream = write_phases(tmp_path / "stream.mp4", [(0, 1), (1, 1)], fps=8)
    with load_runtime(tmp_path / "ckpt") as runtime:
        records = [r for r in StreamClassifier(runtime, [str(stream)], window=2.0, hop=2.0, smooth=1) if "event" not in r]
    assert len(records) == 2 and all(r["label"] in config.id2label.values() for r in records)
