"""Text (task text): every method trained a few steps by `difflab train` on a tiny text file, sampled by
`difflab sample` (prefix and suffix kept exactly where a method infills), measured by `difflab eval` (held-out
bits/char, samples scored by the autoregressive run), and the one-line errors of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from difflab.cli import main
from difflab.config import Config, apply_overrides
from difflab.tasks import build_task, load_run
from difflab.tasks.text import SAMPLE_SEPARATOR, TextCondition
from difflab.tasks.text_methods import METHODS

TINY_TEXT = ["task=text", "data.name=text-file", "text.length=24", "text.width=32", "text.depth=1", "text.heads=2",
             "text.test_fraction=0.2", "text.timesteps=50", "diffusion.timesteps=50", "train.batch_size=8",
             "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=2", "train.max_minutes=null",
             "train.max_steps=6", "train.checkpoint_every=6", "sample.steps=4", "sample.batch_size=8",
             "text.block_size=8"]  # block: three blocks of 8
VERSES = ["In the beginning the cat sat on the mat.", "The dog ran to the park and back again.",
          "A bird sang in the tall green tree all day.", "The sun rose over the quiet hills at dawn.",
          "Rain fell softly on the roof of the old barn.", "The fox jumped over the lazy brown dog twice."]


def _corpus(folder, repeats=4):
    """A folder of two categories of short documents, enough text for windows of 24 characters."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("animals", VERSES[:3]), ("weather", VERSES[3:])):
        (folder / f"{name}.txt").write_text("\n\n".join(part * repeats), encoding="utf-8")
    return folder


def _overrides(corpus, method, *extra):
    return [*TINY_TEXT, f"data.path={corpus}", f"text.method={method}", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per method (the same data and network)."""
    base = tmp_path_factory.mktemp("text")
    corpus = _corpus(base / "corpus")
    out = {}
    for method in METHODS:
        run = base / method
        assert main(["train", "--no-progress", "--out", str(run), "--set", *_overrides(corpus, method)]) == 0
        out[method] = run
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_samples_and_bounds(runs, method, tmp_path, capsys):
    run = runs[method]
    assert (run / "tokenizer.json").is_file()
    out = tmp_path / "s.txt"
    assert main(["sample", str(run), "--n", "3", "--out", str(out)]) == 0
    texts = out.read_text(encoding="utf-8").split(f"\n{SAMPLE_SEPARATOR}\n")
    assert len(texts) == 4 and texts[-1] == ""  # three samples, each followed by the separator line
    assert main(["eval", str(run), "--nll-only", "--nll-n", "4", "--no-progress"]) == 0
    nll = json.loads((run / "metrics.json").read_text())["nll"]
    assert nll["method"] == method and nll["n"] >= 2 and nll["bits_per_char"] > 0
    assert nll["exact"] == (method == "autoregressive")


@pytest.mark.parametrize("method", ["masked", "uniform", "embedding", "mask-predict"])
def test_infilling_keeps_the_prefix_and_suffix_exactly(runs, method):
    loaded = load_run(runs[method])
    cond = TextCondition(prefix="The cat", suffix="day.")
    samples = loaded.sample(3, cond=cond, seed=1, progress=False)
    for text in samples.data:
        assert text.startswith("The cat") and text.endswith("day.") and len(text) >= len("The catday.")


@pytest.mark.parametrize("method", ["autoregressive", "block"])
def test_a_left_to_right_run_continues_a_prefix_and_refuses_a_suffix(runs, method, capsys):
    loaded = load_run(runs[method])
    assert all(t.startswith("The dog ran") for t in loaded.sample(2, cond=TextCondition(prefix="The dog ran"),
                                                                  progress=False).data)
    assert main(["sample", str(runs[method]), "--n", "1", "--suffix", "end."]) == 2
    err = capsys.readouterr().err
    assert "cannot fill before a suffix" in err and "block" not in err.split("infills")[1]


def test_samples_are_scored_by_the_autoregressive_run(runs, tmp_path):
    loaded = load_run(runs["masked"])
    m = loaded.evaluate(6, seed=0, progress=False, scorer=runs["autoregressive"])
    assert m["gen_bits_per_char"] > 0 and m["gen_perplexity"] > 1
    assert 0 < m["unigram_entropy"] and 0 <= m["distinct_1"] <= 1 and m["seconds_per_sample"] > 0


@pytest.mark.parametrize("method", ["masked", "uniform", "autoregressive"])
def test_a_tiny_nucleus_draws_the_most_likely_token_whatever_the_seed(runs, method):
    """top_p -> 0 keeps only the most likely token at each draw: the samples no longer depend on the seed (the
    masked sampler's order of unmasking still does, so there the check is on the temperature's sharpening)."""
    loaded = load_run(runs[method])
    sharp = TextCondition(temperature=0.05, top_p=1e-9)
    a, b = (loaded.sample(2, cond=sharp, seed=seed, progress=False).data for seed in (1, 2))
    plain = [loaded.sample(2, seed=seed, progress=False).data for seed in (1, 2)]
    if method == "autoregressive":
        assert list(a) == list(b) and list(plain[0]) != list(plain[1])
    assert len(set("".join(a))) <= len(set("".join(plain[0])))


def test_mask_predict_draws_different_texts_and_its_argmax_one_text(runs):
    """Unconditionally, the paper's argmax decoding (temperature 0, re-masking by confidence alone) writes the same
    text in every sample; the default draws (temperature 1, re-masking noise) do not."""
    loaded = load_run(runs["mask-predict"])
    paper = TextCondition(temperature=0.0, remask_noise=0.0)
    assert len(set(loaded.sample(3, cond=paper, seed=1, progress=False).data)) == 1
    assert len(set(loaded.sample(3, seed=1, progress=False).data)) == 3


def test_remask_noise_reaches_mask_predict_and_only_mask_predict(runs, capsys):
    """--remask-noise changes the mask-predict texts (MaskGIT's noise re-orders the re-masking) and is one line
    with another sampler."""
    loaded = load_run(runs["mask-predict"])
    plain, noisy = (list(loaded.sample(3, cond=TextCondition(temperature=0.0, remask_noise=tau), seed=1,
                                       progress=False).data) for tau in (0.0, 8.0))
    assert len(set(plain)) == 1 and plain != noisy
    assert main(["sample", str(runs["masked"]), "--n", "1", "--remask-noise", "2"]) == 2
    assert "--remask-noise is the mask-predict sampler's" in capsys.readouterr().err


def test_difflab_eval_samples_at_the_temperature_it_is_given(runs, capsys):
    run = runs["autoregressive"]
    assert main(["eval", str(run), "--n", "10", "--temperature", "0.5", "--top-p", "0.9", "--no-progress"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["temperature"] == 0.5 and saved["top_p"] == 0.9


def test_embedding_sampling_refuses_a_temperature(runs, capsys):
    assert main(["sample", str(runs["embedding"]), "--n", "1", "--temperature", "0.7"]) == 2
    assert "takes no --temperature or --top-p" in capsys.readouterr().err


def test_the_judge_scores_a_batch_as_the_sum_of_its_texts(runs):
    """score_texts batches windows of equal length: the nats and characters are those of each text alone, summed."""
    judge = load_run(runs["autoregressive"])
    texts = [VERSES[0] * 2, VERSES[1], VERSES[2] + VERSES[3]]
    alone = [judge.score_texts([t]) for t in texts]
    nats, chars = judge.score_texts(texts)
    assert chars == sum(c for _, c in alone) == sum(len(t) for t in texts)
    assert nats == pytest.approx(sum(n for n, _ in alone), rel=1e-6)


def test_jsonl_output_names_each_samples_condition(runs, tmp_path):
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(runs["masked"]), "--n", "2", "--prefix", "The", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prefix"] == "The" and r["text"].startswith("The") for r in rows)


def test_a_short_masked_training_lowers_the_bound(tmp_path):
    corpus = _corpus(tmp_path / "c", repeats=20)
    cfg = apply_overrides(Config(), _overrides(corpus, "masked"))
    task = build_task(cfg)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def mean_loss():
        with torch.no_grad():
            return float(torch.stack([task.loss(model, 32, torch.Generator().manual_seed(k)) for k in range(4)]).mean())

    before = mean_loss()
    for _ in range(150):
        opt.zero_grad()
        task.loss(model, 16, g).backward()
        opt.step()
    assert mean_loss() < 0.75 * before


def test_categories_condition_samples_and_unknown_ones_are_refused(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c")
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--out", str(run), "--set",
                 *_overrides(corpus, "masked", "text.labels=true")]) == 0
    assert load_run(run).label_names == ("animals", "weather")
    assert main(["sample", str(run), "--n", "1", "--category", "weather", "--out", str(tmp_path / "w.txt")]) == 0
    assert main(["sample", str(run), "--n", "1", "--category", "sport"]) == 2
    assert "unknown category 'sport'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--sampler", "ddim"], "samples with ancestral or mask-predict"),
    (["--prefix", "x" * 30], "shorten them"),
    (["--prefix", "Zebra ☃"], "characters this run never saw"),
    (["--guidance", "2"], "text runs take no --guidance"),
    (["--out", "s.png"], "use a .txt file"),
    (["--temperature", "0"], "must be > 0"),
    (["--top-p", "1.5"], "must be in (0, 1]"),
    (["--sampler", "mask-predict", "--temperature", "-1"], "is negative"),
])
def test_bad_sampling_requests_are_one_line(runs, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(runs["masked"]), "--n", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_file_that_is_not_utf8_is_one_line_or_replaced(tmp_path, capsys):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(("plain text that is long enough for windows. " * 5).encode() + b"\xff\xfe" + b" more." * 20
                       + b"\n\nA second document, so that one can be held out. " * 3)
    args = ["train", "--no-progress", "--out", str(tmp_path / "r"), "--set", *TINY_TEXT, f"data.path={corpus}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and str(corpus) in err and "byte 220" in err  # 5 x 44 ASCII bytes before it
    with pytest.warns(UserWarning):
        assert main([*args, "text.errors=replace", "text.test_fraction=0.5"]) == 0


def test_a_text_task_on_an_image_dataset_is_one_line(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "task=text", "data.name=digits"]) == 2
    assert "set data.name to one of bible, fortunes, text-file" in capsys.readouterr().err


def test_difflab_eval_prints_the_judged_samples_and_writes_them(runs, capsys):
    run = runs["mask-predict"]
    assert main(["eval", str(run), "--n", "10", "--scorer", str(runs["autoregressive"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "judge bpc" in out and "distinct-2" in out
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n"] == 10 and saved["gen_perplexity"] > 1 and saved["sampler"] == "mask-predict"


def test_scoring_with_a_run_that_is_not_autoregressive_is_one_line(runs, capsys):
    assert main(["eval", str(runs["masked"]), "--n", "10", "--scorer", str(runs["uniform"])]) == 2
    assert "not an autoregressive text run" in capsys.readouterr().err


def test_a_report_shows_text_samples_and_the_bound(runs, tmp_path):
    run = runs["uniform"]
    assert main(["eval", str(run), "--nll-only", "--nll-n", "4", "--no-progress"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--samples", "2"]) == 0
    page = out.read_text()
    assert "text-sample" in page and "held-out bits/char" in page


def test_validation_documents_are_held_out_of_training_and_of_the_test_split(tmp_path):
    from difflab.errors import UserError
    from difflab.tasks.text import corpus_split

    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(f"document number {i} " * 3, encoding="utf-8")
    cfg = apply_overrides(Config(), _overrides(corpus, "masked", "text.validation_fraction=0.2"))
    train, test, _ = corpus_split(cfg)
    _, validation, _ = corpus_split(cfg, "validation")
    sets = [set(c.documents) for c in (train, test, validation)]
    assert all(sets) and not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == 40
    with pytest.raises(UserError, match="text.validation_fraction"):
        corpus_split(apply_overrides(Config(), _overrides(corpus, "masked")), "validation")


def test_a_scorer_for_a_run_that_is_not_text_is_one_line(runs, tmp_path, capsys):
    from difflab.config import dump_config

    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(Config()))
    assert main(["eval", str(folder), "--scorer", str(runs["autoregressive"])]) == 2
    assert "so --scorer cannot be used" in capsys.readouterr().err
    assert main(["eval", str(folder), "--temperature", "0.8", "--top-p", "0.9"]) == 2
    assert "so --temperature and --top-p cannot be used: they are for the samples of text runs" in \
        capsys.readouterr().err
