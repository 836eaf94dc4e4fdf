"""DeepStream: nvinfer runs the edge-ad network, a pad probe scores every frame with the bundle.

    edge-ad deepstream --bundle BUNDLE        # once; on the device add --build for FP16 or INT8
    python3 examples/deepstream_probe.py BUNDLE file:///path/to/video.mp4
Needs DeepStream with its Python bindings (pyds). The score, map and alarm are the Detector's:
the bundle's quantiles, its site calibration (calibration.yaml) and its threshold.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
import pyds
from gi.repository import GLib, Gst

from edge_ad import MapScorer, load_bundle
from edge_ad.deepstream import frame_grid_maps

bundle, uri = sys.argv[1], sys.argv[2]
scorer = MapScorer(load_bundle(bundle))  # load_bundle(bundle, steps=K) if the network was written with --steps K


def score_frames(pad, info):
    batch = pyds.gst_buffer_get_nvds_batch_meta(hash(info.get_buffer()))
    item = batch.frame_meta_list
    while item is not None:
        frame = pyds.NvDsFrameMeta.cast(item.data)
        grids = frame_grid_maps(frame)
        if grids is not None:
            shape = (frame.source_frame_height, frame.source_frame_width)
            result = scorer.score_grids(grids[None], [shape])[0]
            print(f"frame {frame.frame_num}: score {result.score:.3f} {'ANOMALY' if result.is_anomaly else 'ok'}")
        try:
            item = item.next
        except StopIteration:
            break
    return Gst.PadProbeReturn.OK


Gst.init(None)
pipeline = Gst.parse_launch(
    f"uridecodebin uri={uri} ! mux.sink_0 nvstreammux name=mux batch-size=1 width=1280 height=720 "
    f"! nvinfer name=infer config-file-path={bundle}/deepstream/config_infer_edge_ad.txt ! fakesink"
)
pipeline.get_by_name("infer").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, score_frames)
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
