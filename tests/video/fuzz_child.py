"""Read one (mutated) file every way the toolkit reads files, in a process of its own; print what came of it as JSON.

Run by tests/video/test_fuzz.py as ``python -m tests.video.fuzz_child FILE``: a crash or a hang then shows as this
process's exit code or timeout instead of taking the test run down. Each way is a decode configuration (decoders
at once, seeking or front to back) or the fused path (each frame preprocessed as it is decoded); each gives a
digest of the clips and the count of replaced frames, or the error's type and message.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings

WAYS = {
    "predict": dict(threads=0, seek=True),  # what predict uses on this machine (one decoder per core)
    "worker": dict(threads=1, seek=True),  # what classify's decoding processes use
    "two": dict(threads=2, seek=True),
    "front-to-back": dict(threads=1, seek=False),
}


def main(path: str) -> dict:
    from vivit_deploy.errors import VideoReadError
    from vivit_deploy.video.preprocessing import VideoPreprocessor
    from vivit_deploy.video.reading import decode_clips

    warnings.simplefilter("ignore")
    pre = VideoPreprocessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    out: dict = {}
    for name, kwargs in {**WAYS, "fused": dict(threads=0, transform=pre.frame)}.items():
        try:
            clips = decode_clips(path, 8, num_clips=2, sampling="uniform", **kwargs)
            if name == "fused":  # the preprocessor on the raw frames of the "predict" way, computed here too
                raw = decode_clips(path, 8, num_clips=2, sampling="uniform", threads=0).array
                same = bool((pre(raw.reshape(-1, *raw.shape[2:])).reshape(clips.array.shape) == clips.array).all())
                out[name] = ["ok", same, clips.replaced]
                continue
            out[name] = ["ok", hashlib.sha1(clips.array.tobytes()).hexdigest(), clips.replaced, clips.frames]
        except VideoReadError as exc:
            out[name] = ["VideoReadError", str(exc)]
        except Exception as exc:  # noqa: BLE001  what the test exists to find
            out[name] = ["other", f"{type(exc).__name__}: {exc}"]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
