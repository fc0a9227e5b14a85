"""The diffusion vocoder (task vocoder): DiffWave's network and its conditioner, folding, DiffWave's 6-step fast
schedule as a step grid, chunked vocoding, a tiny run trained by `difflab train` on a folder of audio, and
`difflab vocode`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from difflab import io
from difflab.cli import main
from difflab.config import Config, apply_overrides
from difflab.errors import UserError
from difflab.models.wavenet import DiffWave, MelUpsampler, upsample_strides
from difflab.schedules import DIFFWAVE_FAST_BETAS, make_schedule, step_grid
from difflab.tasks import load_run
from difflab.tasks.vocoder import VocoderRun, VocoderTask, chunk_mel, stitch

RATE = 8000
TINY_VOCODER = ["task=vocoder", "data.name=audio-folder", f"audio.sample_rate={RATE}", "audio.n_fft=256",
                "audio.win_length=256", "audio.hop_length=64", "audio.n_mels=20", "audio.f_max=null",
                "vocoder.channels=8", "vocoder.layers=4", "vocoder.dilation_cycle=2", "vocoder.step_features=16",
                "vocoder.step_width=16", "vocoder.fold=2", "vocoder.segment_frames=8", "vocoder.chunk_frames=16",
                "vocoder.overlap_frames=2", "diffusion.schedule=linear", "diffusion.timesteps=50",
                "diffusion.beta_start=1e-4", "diffusion.beta_end=0.05", "train.batch_size=8", "train.lr=3e-3",
                "train.warmup_steps=2", "train.log_every=2", "train.max_minutes=null", "sample.sampler=ddpm",
                "sample.steps=6", "sample.grid=diffwave", "sample.batch_size=8"]


def write_audio_folder(folder, files):
    """A folder of WAVs at RATE with its manifest: ``files`` are (file name, wave, text, speaker, split)."""
    folder.mkdir(parents=True)
    for name, wave, *_ in files:
        sf.write(folder / name, np.asarray(wave, np.float32), RATE)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(dict(zip(("file_name", "text", "speaker", "split"),
                                                                       (name, *row)))) + "\n"
                                                   for name, _, *row in files))
    return folder


def _tones(folder, n=12, seconds=0.6):
    """A folder of n tone sweeps with a manifest (two test files)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    return write_audio_folder(folder, [
        (f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * (rng.uniform(200, 600) * t + 300 * t ** 2)) * np.minimum(1, 10 * t),
         "", f"s{i % 3}", "test" if i < 2 else "train") for i in range(n)])


# -- the network ----------------------------------------------------------------------------------
def test_upsample_strides_multiply_to_the_hop():
    for hop in (1, 64, 200, 256, 300, 441):
        strides = upsample_strides(hop)
        assert int(np.prod(strides)) == hop and all(s <= 16 for s in strides)
    assert upsample_strides(256) == (16, 16) and upsample_strides(17) == (17,)  # a prime above 16: one layer


@pytest.mark.parametrize("hop", [64, 200, 256])
def test_the_conditioner_reaches_the_waveform_rate(hop):
    up = MelUpsampler(hop)
    assert up(torch.randn(2, 10, 7)).shape == (2, 10, 7 * hop)


@pytest.mark.parametrize("fold", [1, 4])
def test_diffwave_output_shape_and_zero_start(fold):
    net = DiffWave(n_mels=20, hop=64, channels=8, layers=4, dilation_cycle=2, step_features=16, step_width=16,
                   fold=fold)
    x, t, mel = torch.randn(3, 1, 640), torch.tensor([0.0, 10.5, 49.0]), torch.randn(3, 20, 11)
    assert torch.equal(net(x, t, mel=mel), torch.zeros(3, 1, 640))  # zero-initialised output layer
    torch.nn.init.normal_(net.output.weight)
    out = net(x, t, mel=mel)
    assert out.shape == (3, 1, 640) and out.abs().sum() > 0
    other = net(x, t, mel=mel + 1)
    assert not torch.allclose(out, other)  # it reads the spectrogram
    with pytest.raises(ValueError, match="does not condition"):
        net(x, t, mel=mel[..., :5])  # 5 frames cannot cover 640 samples at hop 64


def test_a_fold_sees_every_kth_sample_as_a_channel():
    """fold k: output sample j of position p is channel j of position p, so samples stay in place."""
    torch.manual_seed(0)
    net = DiffWave(n_mels=4, hop=8, channels=16, layers=1, dilation_cycle=1, step_features=8, step_width=8, fold=4)
    torch.nn.init.normal_(net.output.weight)
    torch.nn.init.normal_(net.output.bias)
    x = torch.randn(1, 1, 32)
    base = net(x, torch.zeros(1), mel=torch.zeros(1, 4, 4))
    assert base.shape == (1, 1, 32)
    bumped = x.clone()
    bumped[..., 5] += 1.0  # sample 5 is channel 1 of position 1; one kernel-3 layer reaches positions 0..2
    change = (net(bumped, torch.zeros(1), mel=torch.zeros(1, 4, 4)) - base).abs()[0, 0]  # (32,)
    assert change[:12].sum() > 0 and change[12:].sum() == 0  # samples 12.. (positions 3..) are untouched


# -- DiffWave's fast schedule ----------------------------------------------------------------------
def test_the_diffwave_grid_takes_the_published_six_steps():
    """Each grid time's alpha_bar equals the cumulative product of the published betas (Kong et al. 2021)."""
    schedule = make_schedule("linear", T=50, beta_start=1e-4, beta_end=0.05)
    grid = step_grid(schedule, 6, "diffwave")
    expected = np.cumprod(1 - np.array(DIFFWAVE_FAST_BETAS))[::-1]  # noisiest first
    np.testing.assert_allclose(schedule.alpha_bar_at(grid).numpy(), expected, rtol=1e-4)
    assert (grid.diff() < 0).all()
    assert len(step_grid(schedule, 8, "diffwave")) == 8  # other counts: betas spaced geometrically


# -- chunks -----------------------------------------------------------------------------------------
def test_chunks_cover_the_mel_and_stitching_restores_a_waveform():
    mel = torch.arange(2 * 37, dtype=torch.float32).reshape(2, 37)
    chunks = chunk_mel(mel, 16, 2, 1e-5)
    assert chunks.shape == (3, 2, 16) and torch.equal(chunks[1, :, :2], chunks[0, :, -2:])
    assert torch.equal(chunks[0], mel[:, :16]) and torch.equal(chunks[1], mel[:, 14:30])
    wave = torch.randn(100)
    pieces = torch.stack([wave[0:40], wave[30:70], wave[60:100]])  # 10 samples of overlap
    assert torch.allclose(stitch(pieces, 10), wave, atol=1e-6)  # a cross-fade of equal signals is the signal


# -- a tiny run --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocoder")
    tones = _tones(root / "tones")
    run = root / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "120", "--set", *TINY_VOCODER,
                 f"data.path={tones}"]) == 0
    return run, tones


def test_training_lowers_the_loss(vocoder_run):
    run, _ = vocoder_run
    losses = [json.loads(line)["loss"] for line in (run / io.METRICS_FILE).read_text().splitlines()]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:2]), losses


def test_batches_are_frame_aligned_crops(vocoder_run):
    from difflab.data.mel import log_mel

    _, tones = vocoder_run
    cfg = apply_overrides(Config(), [*TINY_VOCODER, f"data.path={tones}"])
    task = VocoderTask(cfg)
    x0, cond = task.batch(4, torch.Generator().manual_seed(1))
    assert x0.shape == (4, 1, 8 * 64) and cond["mel"].shape == (4, 20, 8)
    i = next(i for i, w in enumerate(task.waves)
             for s in range(len(w) // 64 - 7) if torch.equal(w[s * 64:(s + 8) * 64], x0[0, 0]))
    s = next(s for s in range(len(task.waves[i]) // 64 - 7) if torch.equal(task.waves[i][s * 64:(s + 8) * 64], x0[0, 0]))
    assert torch.allclose(cond["mel"][0], log_mel(task.waves[i], cfg.audio)[:, s:s + 8])


def test_save_load_and_vocode_lengths(vocoder_run, tmp_path):
    run, tones = vocoder_run
    loaded = load_run(run)
    assert isinstance(loaded, VocoderRun)
    wave = sf.read(tones / "tone0.wav")[0]
    mel = loaded.mel_of(wave)  # (20, 76)
    out = loaded.vocode([mel, mel[:, :30]], seed=3, progress=False)
    assert [len(o) for o in out] == [(mel.shape[1] - 1) * 64, 29 * 64] and out[0].dtype == np.float32
    again = load_run(run).vocode([mel, mel[:, :30]], seed=3, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    s = loaded.sample(2, seed=0, progress=False)
    assert len(s) == 2 and loaded.save(s, tmp_path / "folder").is_dir()
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["000000.wav", "000001.wav", "metadata.jsonl"]


def test_difflab_vocode_writes_a_wav(vocoder_run, tmp_path, capsys):
    run, tones = vocoder_run
    out = tmp_path / "v.wav"
    assert main(["vocode", str(run), str(tones / "tone3.wav"), "--out", str(out), "--steps", "2"]) == 0
    data, rate = sf.read(out)
    assert rate == RATE and abs(len(data) - len(sf.read(tones / "tone3.wav")[0])) < 64
    np.save(tmp_path / "m.npy", load_run(run).mel_of(sf.read(tones / "tone3.wav")[0]).numpy())
    assert main(["vocode", str(run), str(tmp_path / "m.npy"), "--out", str(tmp_path / "m.wav")]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((7, 30), np.float32))
    capsys.readouterr()
    assert main(["vocode", str(run), str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b.wav")]) == 2
    assert "(20, frames)" in capsys.readouterr().err and not (tmp_path / "b.wav").exists()
    assert main(["vocode", str(run), str(tones / "tone3.wav"), "--out", str(tmp_path / "v.mp3")]) == 2



def _awkward_wavs(folder):
    """The issue's awkward inputs: {name: (path, whether a WAV comes out)}."""
    folder.mkdir()
    t = np.arange(int(0.4 * 8000)) / 8000
    speech = 0.5 * np.sin(2 * np.pi * 300 * t)
    files = {"zero-length": (np.zeros(0, np.float32), RATE, "PCM_16", False),
             "silent": (np.zeros(4000, np.float32), RATE, "PCM_16", True),
             "clipped": (np.clip(3 * speech, -1, 1), RATE, "PCM_16", True),  # full-scale square-ish wave
             "over-range float": (1.5 * speech, RATE, "FLOAT", True),
             "4 kHz (upsampled to the run's 8 kHz)": (speech[::2], 4000, "PCM_16", True),
             "16 kHz stereo 24-bit": (np.stack([np.repeat(speech, 2), np.repeat(0.5 * speech, 2)], 1), 16000,
                                      "PCM_24", True),
             "float": (speech, RATE, "DOUBLE", True)}
    out = {}
    for i, (name, (x, rate, subtype, ok)) in enumerate(files.items()):
        path = folder / f"f{i}.wav"
        sf.write(path, x, rate, subtype=subtype)
        out[name] = (path, ok)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    out["corrupt"] = (folder / "corrupt.wav", False)
    return out


def test_awkward_wavs_are_vocoded_or_refused_in_one_line(vocoder_run, tmp_path, capsys):
    run, _ = vocoder_run
    for name, (path, ok) in _awkward_wavs(tmp_path / "in").items():
        out = tmp_path / f"{path.stem}-out.wav"
        capsys.readouterr()
        code = main(["vocode", str(run), str(path), "--out", str(out), "--steps", "2"])
        err = capsys.readouterr().err
        assert code == (0 if ok else 2), (name, err)
        assert "Traceback" not in err and (ok or (err.count("error:") == 1 and not out.exists())), (name, err)
        if ok:
            data, rate = sf.read(out)
            assert rate == RATE and data.ndim == 1 and np.isfinite(data).all() and len(data) > 0, name

def test_eval_compares_with_griffin_lim(vocoder_run):
    from difflab.measure import evaluate_run

    run, _ = vocoder_run
    m = evaluate_run(run, n=6, steps=2, write=False, progress=False)
    assert m["baseline"] == "griffin-lim-32" and m["outputs"] == "vocoded test utterances"
    assert m["mr_stft"] > 0 and m["baseline_mr_stft"] > 0 and m["real_time_factor"] > 0 and json.dumps(m)


def test_a_vocoder_needs_speech_data():
    with pytest.raises(UserError, match="task vocoder trains on speech"):
        VocoderTask(apply_overrides(Config(), [*TINY_VOCODER, "data.name=shapes"]))
    with pytest.raises(UserError, match="vocoder.fold=3 must divide audio.hop_length=64"):
        VocoderTask(apply_overrides(Config(), [*TINY_VOCODER, "vocoder.fold=3"]))


def test_the_report_plays_held_out_utterances(vocoder_run):
    import base64
    import io as bytes_io

    from difflab import report_html
    from difflab.tasks.vocoder import listen_section

    run, _ = vocoder_run
    ctx = report_html.load_context(load_run(run), samples=2, progress=False)
    title, body = listen_section(ctx)
    assert title == "Listen" and body.count("<audio controls") == 6 and body.count("data:image/png;base64,") == 2
    wave = np.sin(np.linspace(0, 40, 800)) * 0.5
    uri = report_html.wav_data_uri(wave, RATE)
    data, rate = sf.read(bytes_io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert rate == RATE and np.abs(data - wave).max() < 1 / 32767 + 1e-9


def test_refining_starts_from_the_griffin_lim_waveform(vocoder_run, monkeypatch):
    """refine s: each chunk begins at q(x_t0 | Griffin-Lim chunk), t0 = s (T - 1), then the grid below t0."""
    from difflab import samplers
    from difflab.samplers import sdedit_grid

    grid = torch.tensor([42.9, 23.0, 10.5, 4.1, 0.96, 0.0], dtype=torch.float64)
    assert torch.equal(sdedit_grid(grid, 12.25), torch.tensor([12.25, 10.5, 4.1, 0.96, 0.0], dtype=torch.float64))
    run, tones = vocoder_run
    loaded = load_run(run)
    seen = {}
    real = samplers.get_sampler("ddpm")

    def spy(denoiser, x_T, schedule, timesteps, **kw):
        seen["t"], seen["x"] = timesteps, x_T
        return real(denoiser, x_T, schedule, timesteps, **kw)

    monkeypatch.setitem(samplers.SAMPLERS, "ddpm", spy)
    mel = loaded.mel_of(sf.read(tones / "tone4.wav")[0])
    out = loaded.vocode([mel], refine=0.25, seed=0, progress=False)[0]
    assert float(seen["t"][0]) == pytest.approx(0.25 * 49) and (seen["t"][1:] < 0.25 * 49).all()
    assert len(out) == (mel.shape[1] - 1) * 64
    with pytest.raises(UserError, match="strength"):
        samplers.sample("ddim", lambda x, t, c: x, (1, 4), make_schedule("linear", T=50), steps=2,
                        start=torch.zeros(1, 4), strength=1.5)


# -- PriorGrad ---------------------------------------------------------------------------------------
def test_priorgrads_sigma_follows_the_loudness_of_the_frames():
    from difflab.data.mel import log_mel
    from difflab.tasks.vocoder import fit_prior_scale, prior_sigma

    cfg = apply_overrides(Config(), [*TINY_VOCODER, "vocoder.prior=priorgrad", "vocoder.prior_min_std=1e-4"])
    t = np.arange(RATE) / RATE
    wave = torch.from_numpy((np.sin(2 * np.pi * 440 * t) * np.where(t < 0.5, 0.5, 0.05)).astype(np.float32))
    mel = log_mel(wave, cfg.audio)  # (20, 126)
    scale = fit_prior_scale([wave], [mel], 64)
    cfg = apply_overrides(cfg, [f"vocoder.prior_scale={scale}"])
    sigma = prior_sigma(mel[None], len(wave), cfg)[0, 0]  # (L,)
    loud, quiet = sigma[1000:3000].mean(), sigma[5000:7000].mean()
    assert float(loud / quiet) == pytest.approx(10, rel=0.1)  # the amplitudes' ratio
    assert float(loud) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)  # the loud half's RMS


def test_the_whitened_network_is_priorgrads_noise_prediction():
    """Standard diffusion on y = x / sigma with z ~ N(0, I) is diffusion on x with eps = sigma z."""
    from difflab.models.wavenet import Whitened

    torch.manual_seed(0)
    net = DiffWave(n_mels=20, hop=64, channels=8, layers=2, dilation_cycle=2, step_features=16, step_width=16)
    torch.nn.init.normal_(net.output.weight)
    schedule = make_schedule("linear", T=50, beta_start=1e-4, beta_end=0.05)
    x0, z, sigma = torch.randn(2, 1, 640) * 0.1, torch.randn(2, 1, 640), torch.rand(2, 1, 640) + 0.1
    t, mel = torch.tensor([5.0, 30.0]), torch.randn(2, 20, 11)
    y_t = schedule.q_sample(x0 / sigma, t, z)
    x_t = schedule.q_sample(x0, t, sigma * z)
    assert torch.allclose(sigma * y_t, x_t, atol=1e-6)
    assert torch.allclose(Whitened(net)(y_t, t, sigma=sigma, mel=mel), net(x_t, t, mel=mel) / sigma, atol=1e-5)


def test_a_priorgrad_run_trains_stores_its_scale_and_vocodes(vocoder_run, tmp_path):
    run, tones = vocoder_run
    out = tmp_path / "pg"
    assert main(["train", "--out", str(out), "--no-progress", "--max-steps", "20", "--set", *TINY_VOCODER,
                 f"data.path={tones}", "vocoder.prior=priorgrad"]) == 0
    loaded = load_run(out)
    assert loaded.config.vocoder.prior_scale > 0
    mel = loaded.mel_of(sf.read(tones / "tone5.wav")[0])
    for refine in (0.0, 0.1):
        wave = loaded.vocode([mel], refine=refine, seed=0, progress=False)[0]
        assert len(wave) == (mel.shape[1] - 1) * 64 and np.isfinite(wave).all() and np.abs(wave).max() <= 1
