"""DeepStream: nvinfer runs the edge-ad network, a pad probe scores every frame with the bundle.

    edge-ad deepstream --bundle BUNDLE        # once per bundle; on the device add --build for FP16 or INT8
    python3 examples/deepstream_probe.py --bundle BUNDLE file:///path/to/video.mp4
    python3 examples/deepstream_probe.py --bundle mono=BUNDLE_MONO --bundle poly=BUNDLE_POLY rtsp://cam1 rtsp://cam2
    python3 examples/deepstream_probe.py --bundle B --calibration calib/a --calibration calib/b rtsp://a rtsp://b
Needs DeepStream with its Python bindings (pyds). The score, map and alarm are the Detector's:
the bundle's quantiles, its site calibration (calibration.yaml) and its threshold; with one
bundle per product variant, each runs in its own nvinfer element and the variant that explains
the frame best gives the result. Several cameras go through one nvstreammux batch; nvinfer runs
it in calls of the config's batch-size (`edge-ad deepstream --batch-size N` for N cameras). A
camera with its own site calibration of the bundle (`calibration:` in --sources) is judged by
it: `--calibration FOLDER` once per URI, in their order ('-' for one on the bundle's numbers).
"""

import argparse

import gi

gi.require_version("Gst", "1.0")
import pyds
from gi.repository import GLib, Gst

from edge_ad import InspectionMask
from edge_ad.deepstream import CONFIG_FILE, DEEPSTREAM_DIR, DeepStreamScorer
from edge_ad.variants import parse_variants

parser = argparse.ArgumentParser(description="score every frame of one or more cameras with edge-ad in DeepStream")
parser.add_argument("--bundle", action="append", required=True, help="BUNDLE, or NAME=BUNDLE once per product variant")
parser.add_argument("--mask", help="inspection mask for every camera, in its frames' pixels (README 'Inspection mask')")
parser.add_argument("--calibration", action="append", default=[], metavar="FOLDER",
                    help="once per URI, in their order: the camera's own site calibration folder, '-' for the bundle's")
parser.add_argument("uris", nargs="+", help="one URI per camera or video (file://, rtsp://)")
args = parser.parse_args()
if args.calibration and len(args.calibration) != len(args.uris):
    parser.error(f"--calibration: give one per URI ({len(args.uris)}), got {len(args.calibration)}")
calibrations = [None if folder == "-" else folder for folder in args.calibration]
scorer = DeepStreamScorer(args.bundle, calibrations=calibrations)  # steps=K if the networks were written with --steps K
mask = InspectionMask.load(args.mask) if args.mask else None


def score_frames(pad, info):
    batch = pyds.gst_buffer_get_nvds_batch_meta(hash(info.get_buffer()))
    item = batch.frame_meta_list
    while item is not None:
        frame = pyds.NvDsFrameMeta.cast(item.data)
        result = scorer(frame, mask)
        if result is not None:
            variant = f" ({result.variant})" if result.variant else ""
            print(f"{args.uris[frame.source_id]} frame {frame.frame_num}{variant}: "
                  f"score {result.score:.3f} {'ANOMALY' if result.is_anomaly else 'ok'}")
        try:
            item = item.next
        except StopIteration:
            break
    return Gst.PadProbeReturn.OK


Gst.init(None)
networks = " ! ".join(  # the i-th bundle's network in the nvinfer element with unique-id i
    f"nvinfer config-file-path={path}/{DEEPSTREAM_DIR}/{CONFIG_FILE} unique-id={i}"
    for i, path in enumerate(parse_variants(args.bundle).values(), start=1)
)
cameras = " ".join(f"uridecodebin uri={uri} ! mux.sink_{i}" for i, uri in enumerate(args.uris))
pipeline = Gst.parse_launch(
    f"{cameras} nvstreammux name=mux batch-size={len(args.uris)} batched-push-timeout=33000 width=1280 height=720 "
    f"! {networks} ! fakesink name=sink"
)
pipeline.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, score_frames)
loop = GLib.MainLoop()
bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message::eos", lambda *_: loop.quit())
bus.connect("message::error", lambda _, message: (print(message.parse_error()[0].message), loop.quit()))
pipeline.set_state(Gst.State.PLAYING)
try:
    loop.run()
finally:
    pipeline.set_state(Gst.State.NULL)
