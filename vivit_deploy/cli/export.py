"""`vivit-export` (and `vivit-deploy export`): a checkpoint to a validated ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from vivit_deploy.cli.common import (GEOMETRY, Stopwatch, emit_json, friendly_errors, merge_tokens_option, print_report,
                                     writable)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option("--opset", default=None, type=click.IntRange(18, 23),
              help="ONNX opset [default: 18, the exporter's native one; 19 for fp8]. 20+ writes Gelu as one op.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default="fp32", show_default=True,
              help="fp16: an fp16 graph with float32 input and logits (TensorRT's strongly typed builds); int8: "
                   "calibrated Q/DQ on the weight MatMuls (needs --calibration); fp8: the same in float8 e4m3fn, "
                   "for TensorRT on Hopper/Ada GPUs.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="int8/fp8: a directory of videos like those the model will see, or an .npz from `compare "
                   "--save-inputs`, to calibrate on; fp16: the clips to validate on [default: random clips].")
@click.option("--calibration-clips", type=click.IntRange(min=1), default=None,
              help="How many clips of --calibration to use [default: 32].")
@click.option("--keep-fp32", "keep_fp32", default=None, metavar="auto|none|LAYERS",
              help="fp16/int8/fp8: keep these layers (2,5) or parts of them (2.attention, 2.mlp, 2.norms) in fp32; "
                   "auto: the fewest that make the file pass [default: none].")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
              help="The logits' cosine the file must keep against PyTorch fp32 [default: the precision's tolerance].")
@click.option("--smooth-quant", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="int8/fp8: SmoothQuant's alpha, moving outlier channels of the MatMul inputs into the weights "
                   "(the same function in fp32); 0 turns it off.")
@click.option("--attention-products", type=click.Choice(["none", "qk"]), default="none", show_default=True,
              help="int8/fp8: qk also quantizes Q @ K^T (both operands per tensor): faster on OpenVINO, not on ONNX "
                   "Runtime (docs/benchmarks.md). P @ V stays float: its probabilities collapse in int8.")
@GEOMETRY
@merge_tokens_option(auto=True)
@click.option("--videos", "merge_videos", type=click.Path(path_type=Path), default=None,
              help="--merge-tokens auto: a directory of labelled videos (its labels.json) to measure accuracy on.")
@click.option("--manifest", "merge_manifest", type=click.Path(path_type=Path), default=None,
              help="--merge-tokens auto: a manifest (.csv/.parquet with path and label columns) of labelled videos.")
@click.option("--gate", "merge_gate", default=None, metavar="accuracy:SHARE",
              help="--merge-tokens auto: what a merged model must keep of the unmerged one's top-1 accuracy "
                   "[default: accuracy:99%].")
@click.option("--merge-tries", default=None, metavar="R1,R2,...",
              help="--merge-tokens auto: the r values to try [default: 8 from 0 to half the tokens].")
@click.option("--merge-plot", type=click.Path(path_type=Path), default=None,
              help="--merge-tokens auto: where to draw the accuracy/latency curve [default: OUTPUT's name + "
                   ".merge-curve.png, when matplotlib is installed].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch the file accepts [default: 32; 1 with --static-batch].")
@click.option("--static-batch", is_flag=True, help="Fix the batch axis to --max-batch instead of a dynamic axis.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of SOURCE.")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Also write the export report as JSON to this file, also when the export is refused ('-' prints "
                   "the JSON instead of the text).")
@friendly_errors
def export_command(source, output, opset, precision, calibration, calibration_clips, keep_fp32, min_cosine, smooth_quant,
                   attention_products, num_frames, image_size, merge_tokens, merge_videos, merge_manifest, merge_gate,
                   merge_tries, merge_plot, max_batch, static_batch, revision, offline, json_path):
    """Export SOURCE (checkpoint directory or Hub id) to a validated ONNX file.

    The file carries the model config, labels and preprocessor config, so `vivit-deploy predict
    --model FILE` needs nothing else. It is checked (onnx.checker, graph hygiene) and run with ONNX
    Runtime at two batch sizes against PyTorch before it is written (an fp16 graph is also checked for
    products beyond fp16's range); on failure nothing is written, and the error names the first failing
    layer, what broke there and the --keep-fp32 option that fixes it.
    """
    from vivit_deploy.errors import ExportError
    from vivit_deploy.export import export_onnx

    writable(json_path, "--json")
    merge_search = _merge_search(merge_tokens, merge_videos, merge_manifest, merge_gate, merge_tries, merge_plot)
    progress = Stopwatch()
    try:
        report = export_onnx(
            source, output, opset=opset, precision=precision, max_batch=max_batch, static_batch=static_batch,
            calibration=calibration, calibration_clips=calibration_clips, keep_fp32=keep_fp32, min_cosine=min_cosine,
            smooth_quant=smooth_quant, attention_products=() if attention_products == "none" else (attention_products,),
            progress=progress, revision=revision, local_files_only=offline or None, num_frames=num_frames,
            image_size=image_size, merge_tokens=merge_tokens, merge_search=merge_search,
        )
    except ExportError as exc:
        refused = getattr(exc, "report", None)
        if refused is not None:
            click.echo(refused.format(), err=True)  # the refusal's reasons on stderr, its JSON where --json says
            emit_json(refused.to_dict(), json_path)
        raise
    print_report(report.format() + "\n", report.to_dict(), json_path)



def _merge_search(merge_tokens, videos, manifest, gate, tries, plot):
    """--merge-tokens auto's options, or a usage error when they are given without it."""
    from vivit_deploy.export.merge_search import DEFAULT_GATE, MergeSearchOptions

    given = [flag for flag, value in (("--videos", videos), ("--manifest", manifest), ("--gate", gate),
                                      ("--merge-tries", tries), ("--merge-plot", plot)) if value is not None]
    if merge_tokens != "auto":
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --merge-tokens auto")
        return None
    if (videos is None) == (manifest is None):
        raise click.UsageError("--merge-tokens auto measures accuracy on labelled clips: give --videos DIR (with its "
                               "labels.json) or --manifest FILE")
    if tries is not None:
        parts = [p.strip() for p in tries.split(",")]
        if not all(p.isdigit() for p in parts):
            raise click.BadParameter(f"{tries!r}: give whole numbers of tokens, 0 or more (0,50,100)",
                                     param_hint="--merge-tries")
        tries = tuple(int(p) for p in parts)
    writable(plot, "--merge-plot")
    return MergeSearchOptions(videos=videos, manifest=manifest, gate=gate or DEFAULT_GATE, tries=tries, plot=plot)
