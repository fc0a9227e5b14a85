"""The diffusion vocoder against Griffin-Lim on held-out utterances (voices training never heard among them):

    python bench/vocoder.py                      # train configs/speech_vocoder.yaml (its budget), then score
    python bench/vocoder.py --score-only --run bench/results/vocoder_trial --name vocoder-trial

Every system turns the same log-mels (difflab.data.mel, the run's front end) of N test utterances of the built-in
corpus back into waveforms: difflab at 6 steps (DiffWave's fast schedule), 12 (geometric betas, the same
ends) and 50 (every training step) from noise, and refining Griffin-Lim 32's waveform from a noised start
(SDEdit, three strengths, 0.05 the shipped default; its Griffin-Lim time counted), Griffin-Lim with 32 and 100 iterations (librosa). Measured against the
original audio: multi-resolution STFT distance and log-mel L1 (difflab.evaluate.audio), word accuracy of
offline speech recognition (pocketsphinx's English model, jiwer) relative to that on the originals, and the
real-time factor (compute seconds / audio seconds, torch on all cores). Results:
bench/results/NAME-<date>.json, a table on stdout, and bench/figures/NAME.png (log-mel spectrograms of one
utterance: original, Griffin-Lim 32, difflab shipped, difflab 6 steps from noise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from difflab import grids  # noqa: E402
from difflab.data.speech import TEST_SPEAKERS  # noqa: E402
from difflab.evaluate.audio import griffin_lim, real_time_factor, transcribe, word_accuracy  # noqa: E402
from difflab.tasks import load_run  # noqa: E402
from difflab.tasks.vocoder import fidelity  # noqa: E402
from framings import train_system  # noqa: E402
from runs import run_summary  # noqa: E402

CONFIG = "configs/speech_vocoder.yaml"
SEED = 20261202  # the draw of test utterances and the samplers' noise
SHIPPED = "difflab, shipped: 6-step grid refining griffin-lim 32, strength 0.05"
DIFFLAB = {"difflab, 6 steps from noise (diffwave grid)": {"steps": 6, "grid": "diffwave", "refine": 0.0},
           "difflab, 12 steps from noise (geometric betas)": {"steps": 12, "grid": "diffwave", "refine": 0.0},
           "difflab, 50 steps from noise (every training step)": {"steps": 50, "grid": "trailing", "refine": 0.0},
           # SDEdit: Griffin-Lim 32's waveform noised to strength s (T - 1), then the 6-step grid's times below it
           SHIPPED: {"steps": 6, "grid": "diffwave", "refine": 0.05},
           "difflab refines griffin-lim 32, strength 0.1": {"steps": 6, "grid": "diffwave", "refine": 0.1},
           "difflab refines griffin-lim 32, strength 0.25": {"steps": 6, "grid": "diffwave", "refine": 0.25}}
GRIFFIN_LIM = {"griffin-lim, 32 iterations": 32, "griffin-lim, 100 iterations": 100}


def table(rows: list[dict]) -> str:
    head = ("| system | MR-STFT | log-mel L1 | ASR word accuracy | relative to original | real-time factor |\n"
            "|---|---|---|---|---|---|")
    return "\n".join([head, *(f"| {r['system']} | {r.get('mr_stft', 0):.3f} | {r.get('log_mel_l1', 0):.3f} | "
                              f"{r['asr']:.3f} | {r['asr_relative']:.2f} | {r.get('rtf', 0):.3f} |" for r in rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="held-out utterances")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--run", type=Path, default=ROOT / "bench" / "results" / "vocoder")
    p.add_argument("--name", default="vocoder", help="results NAME-<date>.json and bench/figures/NAME.png")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the config")
    p.add_argument("--chunk-frames", type=int, help="vocode in chunks of this many frames (default: the run's)")
    p.add_argument("--skip", nargs="*", default=[], metavar="WORD",
                   help="leave out the difflab rows whose name holds one of these words (e.g. 50)")
    args = p.parse_args()
    if not args.score_only:
        train_system(args.run, CONFIG, args.set)
    run = load_run(args.run)
    if args.chunk_frames:  # a sampling setting: the weights are the run's
        run.config = replace(run.config, vocoder=replace(run.config.vocoder, chunk_frames=args.chunk_frames))
    a = run.config.audio
    waves, texts, speakers = run.held_out(args.n, SEED)
    mels = [run.mel_of(w) for w in waves]
    audio_seconds = sum(len(w) for w in waves) / a.sample_rate
    original = word_accuracy(texts, transcribe(waves, a.sample_rate))
    rows = [{"system": "original audio", "asr": original, "asr_relative": 1.0}]
    outputs = {}
    for name, iters in GRIFFIN_LIM.items():
        t0 = time.perf_counter()
        out = [griffin_lim(m, a, n_iter=iters, seed=SEED) for m in mels]
        outputs[name] = out
        rows.append({"system": name, **fidelity(waves, out, a), "rtf": (time.perf_counter() - t0) / audio_seconds})
    for name, options in ((k, o) for k, o in DIFFLAB.items() if not any(w in k for w in args.skip)):
        t0 = time.perf_counter()
        out = run.vocode(mels, seed=SEED, progress=False, **options)
        seconds = time.perf_counter() - t0
        outputs[name] = out
        rows.append({"system": name, **fidelity(waves, out, a), **options,
                     "rtf": real_time_factor(seconds, sum(len(o) for o in out), a.sample_rate)})
        print(f"{name}: MR-STFT {rows[-1]['mr_stft']:.3f}, log-mel L1 {rows[-1]['log_mel_l1']:.3f}, "
              f"RTF {rows[-1]['rtf']:.3f}", flush=True)
    for r in rows[1:]:
        r["asr"] = word_accuracy(texts, transcribe(outputs[r["system"]], a.sample_rate))
        r["asr_relative"] = r["asr"] / original if original > 0 else float("nan")
    # the voices no training utterance has (difflab.data.speech.TEST_SPEAKERS), scored alone
    unseen = [i for i, sp in enumerate(speakers) if sp in TEST_SPEAKERS]
    unseen_rows = []
    if unseen:
        ref, said = [waves[i] for i in unseen], [texts[i] for i in unseen]
        for name, out in (("original audio", waves), *((k, outputs[k]) for k in ("griffin-lim, 32 iterations", SHIPPED)
                                                        if k in outputs)):
            picked = [out[i] for i in unseen]
            unseen_rows.append({"system": name, **(fidelity(ref, picked, a) if out is not waves else {}),
                                "asr": word_accuracy(said, transcribe(picked, a.sample_rate))})
    first = 0
    shown = {f"original: {texts[first]}"[:60]: mels[first]}
    shown |= {k: run.mel_of(outputs[name][first]) for k, name in (
        ("griffin-lim 32", "griffin-lim, 32 iterations"), ("difflab (shipped: refines griffin-lim 32)", SHIPPED),
        ("difflab 6 steps from noise", "difflab, 6 steps from noise (diffwave grid)")) if name in outputs}
    fig = ROOT / "bench" / "figures" / f"{args.name}.png"
    grids.save_png(fig, grids.spectrograms([m.numpy() for m in shown.values()], list(shown)))
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "config": CONFIG, "overrides": args.set,
           "run": str(args.run), "training": run_summary(args.run), "n": args.n, "seed": SEED,
           "chunk_frames": run.config.vocoder.chunk_frames,
           "audio_seconds": audio_seconds, "speakers": sorted(set(speakers)), "rows": rows,
           "unseen_voices": {"n": len(unseen), "speakers": sorted({speakers[i] for i in unseen}), "rows": unseen_rows},
           "figure": str(fig.relative_to(ROOT))}
    out_json = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
    out_json.write_text(json.dumps(res, indent=1))
    print(table(rows))
    for r in unseen_rows:
        print(f"unseen voices ({len(unseen)} utterances), {r['system']}: MR-STFT {r.get('mr_stft', 0):.3f}, "
              f"ASR {r['asr']:.3f}")
    print(f"{args.n} utterances, {audio_seconds:.1f} s of audio; results {out_json.relative_to(ROOT)}; figure {res['figure']}")


if __name__ == "__main__":
    main()
