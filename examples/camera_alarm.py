"""Camera to alarm in ten lines: score every frame of a source, print the anomalous ones.

    python examples/camera_alarm.py BUNDLE [SOURCE] [MAX_FRAMES]
SOURCE is test:// (default), csi://0, /dev/video0, rtsp://..., rtp://@:5000, a video file or an image folder.
"""

import sys

from edge_ad import Detector
from edge_ad.sources import open_source

if not 2 <= len(sys.argv) <= 4:
    sys.exit(__doc__)
bundle, source = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "test://"
max_frames = int(sys.argv[3]) if len(sys.argv) > 3 else 100  # frames scored; a live source skips the ones it drops

detector = Detector.load(bundle)
for scored, frame in enumerate(open_source(source), start=1):
    result = detector(frame.image)
    print(f"frame {frame.index}: score {result.score:.3f} {'ANOMALY' if result.is_anomaly else 'ok'}")
    if scored >= max_frames:
        break
