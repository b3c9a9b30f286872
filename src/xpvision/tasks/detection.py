"""Detection: the YOLO loss for training; VOC and COCO mAP, PR curves and drawn detections for evaluation."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic, backend
from xpvision.detection.metrics.coco import eval_detection_coco
from xpvision.detection.metrics.voc import eval_detection_voc
from xpvision.detection.predict import Detections, detections_to_numpy, postprocess
from xpvision.detection.yolo import DETECTORS, build_detector
from xpvision.detection.yolo_loss import YoloLoss
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.nn.base import Layer
from xpvision.tasks.base import PerClass, checked_class_weights, evaluation_pass


class DetectionTask:
    """Trains and evaluates a detector built by :func:`~xpvision.detection.yolo.build_detector`.

    ``forward_loss`` runs the model and :class:`YoloLoss` on a batch (``images`` ``(N, C, H, W)`` float32 and
    per-image ``boxes``/``labels``/``difficult``). ``evaluate`` decodes, suppresses (score ``>
    score_threshold``, NMS IoU ``> nms_iou``) and returns ``map_50`` (VOC all-point AP at IoU 0.5, the primary
    metric), the COCO-style ``map`` (AP@[.5:.95]) and ``map_75``, and the mean ``loss``.
    """

    kind = "detection"
    primary_metric = "map_50"
    onnx_probabilities = False

    def __init__(self, model: Layer | None, meta: dict, score_threshold: float = 0.01, nms_iou: float = 0.45,
                 max_detections: int = 100) -> None:
        self.spec = YoloSpec.from_meta(meta)
        self.loss = YoloLoss(self.spec, **meta["detector"].get("loss", {}))
        self.meta = meta
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

    # -- what the stages look up -----------------------------------------------------------------------------
    @staticmethod
    def output_classes(classes: Sequence[str]) -> list[str]:
        return list(classes)

    @staticmethod
    def model_names() -> list[str]:
        return list(DETECTORS)

    @staticmethod
    def build_network(name: str, args: dict, input_shape: Sequence[int], classes: Sequence[str],
                      train_set: Any = None) -> tuple[Layer, dict[str, Any]]:
        """:func:`~xpvision.detection.yolo.build_detector`; the metadata gains its ``detector`` block."""
        channels, height, width = input_shape
        return build_detector(name, in_channels=channels, classes=list(classes), input_size=(height, width),
                              train_set=train_set, **args)

    @classmethod
    def for_model(cls, model: Layer | None, meta: dict, class_weights: Sequence[float] | None = None):
        checked_class_weights(class_weights, meta, cls.kind, supported=False)
        return cls(model, meta)

    # -- training and evaluation -----------------------------------------------------------------------------
    def forward_loss(self, model: Layer, batch: dict) -> tuple[float, Any]:
        pred = model.forward(backend.to_device(batch["images"], model.device))
        loss = self.loss.forward(pred, batch)
        return loss, self.loss.backward()

    def predict(self, model: Layer, loader: Iterable[dict]) -> tuple[list[Detections], dict, float]:
        """Eval-mode pass: ``(detections per image (NumPy), ground truth {'boxes', 'labels', 'difficult'}
        lists, mean loss per image)``, in loader order."""
        detections: list[Detections] = []
        truth: dict[str, list] = {"boxes": [], "labels": [], "difficult": []}
        loss_fn = YoloLoss(self.spec, **self.loss.config())

        def step(batch: dict, pred: Any) -> tuple[float, int]:  # pred: the head map (N, A·(5 + C), S_h, S_w)
            found = postprocess(pred, self.spec, self.score_threshold, self.nms_iou, self.max_detections)
            detections.extend(detections_to_numpy(found))
            for key in truth:
                truth[key].extend(backend.to_numpy(a) for a in batch[key])
            return loss_fn.forward(pred, batch), int(pred.shape[0])

        loss = evaluation_pass(model, loader, step, "cannot evaluate a detector on an empty loader")
        return detections, truth, loss

    def evaluate(self, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        detections, truth, loss = self.predict(model, loader)
        return detection_metrics(detections, truth, self.spec.num_classes)[0] | {"loss": loss}

    def test_report(self, model: Layer, loader: Iterable[dict], test_set: Any,
                    figures_dir: str | os.PathLike, *, sample_images: int = 16,
                    score_threshold: float = 0.01, nms_iou: float = 0.45,
                    voc07_metric: bool = False) -> tuple[dict[str, float], PerClass]:
        """:func:`evaluate_and_plot`, with the per-class AP@0.5 split off as ``(classes, 'ap50', values)``."""
        metrics = evaluate_and_plot(model, self.meta, loader, test_set, score_threshold=score_threshold,
                                    nms_iou=nms_iou, use_07_metric=voc07_metric, sample_count=sample_images,
                                    figures_dir=figures_dir)
        per_class = {k.removeprefix("ap50_"): metrics.pop(k) for k in list(metrics) if k.startswith("ap50_")}
        return metrics, (list(per_class), "ap50", list(per_class.values()))


    # -- prediction on images (xpvision predict, the MLflow model, the export checks) ----------------------
    @staticmethod
    def predict_images(model: Layer, meta: dict, x: Any, score_threshold: float = 0.3) -> list[dict]:
        """``{'boxes': (R, 4) xyxy pixels at the model's input size, 'labels': [names], 'scores': (R,)}`` per
        image of the network input ``x`` ``(N, C, H, W)``, detections scoring above ``score_threshold``."""
        from xpvision.detection.predict import detect

        return [{"boxes": np.asarray(d.boxes, np.float32), "labels": [meta["classes"][k] for k in d.labels],
                 "scores": np.asarray(d.scores, np.float32)}
                for d in detect(model, x, meta, score_threshold=score_threshold)]

    @staticmethod
    def prediction_record(meta: dict, result: dict, original_size: tuple[int, int]) -> dict[str, Any]:
        """Plain-Python detections, boxes rescaled from the model's input to the original image."""
        _, height, width = meta["input_shape"]
        scale = np.array([original_size[0] / width, original_size[1] / height] * 2, dtype=np.float32)
        return {"detections": [{"label": label, "score": float(score), "box": (box * scale).round(1).tolist()}
                               for box, label, score in zip(result["boxes"], result["labels"],
                                                            result["scores"], strict=True)]}

    @staticmethod
    def write_prediction(out: Path, path: Path, original: Any, record: dict, result: dict,
                         meta: dict) -> Path | None:
        """``<out>/<stem>_detections.png``: the detections drawn on the original image."""
        from xpvision.detection.predict import draw_detections

        detections = record["detections"]
        boxes = np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4)  # (R, 4)
        labels = np.array([meta["classes"].index(d["label"]) for d in detections], dtype=np.int64)
        scores = np.array([d["score"] for d in detections], dtype=np.float32)
        drawn = draw_detections(np.asarray(original.convert("RGB")), boxes, labels, scores, meta["classes"])
        target = out / f"{path.stem}_detections.png"
        with atomic.atomic_path(target) as tmp:
            drawn.save(tmp, format="PNG")
        return target

    @staticmethod
    def describe(record: dict) -> str:
        found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in record["detections"]) or "nothing"
        return f"{record['image']}: {found} -> {record['output']}"

    @staticmethod
    def pyfunc_output(results: list[dict]) -> Any:
        """The MLflow model's output: a DataFrame, one row (``image``, ``label``, ``score``, ``x1``, ``y1``,
        ``x2``, ``y2``) per detection."""
        import pandas as pd

        corners = ("x1", "y1", "x2", "y2")
        rows = [{"image": i, "label": label, "score": float(score),
                 **dict(zip(corners, map(float, box), strict=True))}
                for i, r in enumerate(results)
                for box, label, score in zip(r["boxes"], r["labels"], r["scores"], strict=True)]
        return pd.DataFrame(rows, columns=["image", "label", "score", *corners])

    @staticmethod
    def pyfunc_agrees(served: Any, results: list[dict]) -> bool:
        import pandas as pd

        return isinstance(served, pd.DataFrame) and len(served) == sum(len(r["labels"]) for r in results)


def detection_metrics(detections: Sequence[Detections], truth: dict, num_classes: int,
                      use_07_metric: bool = False) -> tuple[dict[str, float], dict, dict]:
    """``({'map_50', 'map', 'map_75', 'coco_map_50'}, VOC result, COCO result)`` of per-image detections
    against ``truth`` (per-image ``boxes``/``labels``/``difficult`` lists).

    ``map_50`` is VOC AP at IoU 0.5 (all-point, or 11-point with ``use_07_metric``) with difficult boxes
    ignored. COCO has no "difficult": for the COCO numbers those boxes are crowd regions (ignored, absorbing
    the detections that hit them).
    """
    pred_boxes = [d.boxes for d in detections]
    pred_labels = [d.labels for d in detections]
    pred_scores = [d.scores for d in detections]
    voc = eval_detection_voc(pred_boxes, pred_labels, pred_scores, truth["boxes"], truth["labels"],
                             truth["difficult"], iou_thresh=0.5, use_07_metric=use_07_metric,
                             num_classes=num_classes)
    coco = eval_detection_coco(pred_boxes, pred_labels, pred_scores, truth["boxes"], truth["labels"],
                               gt_crowdeds=truth["difficult"], num_classes=num_classes)
    summary = {"map_50": voc["map"], "map": coco["map"], "map_75": coco["map_75"],
               "coco_map_50": coco["map_50"]}
    return summary, voc, coco


def evaluate_and_plot(model: Any, meta: dict, loader: Any, test_set: Any, *, score_threshold: float = 0.01,
                      nms_iou: float = 0.45, use_07_metric: bool = False, sample_count: int = 16,
                      figures_dir: str | os.PathLike, draw_threshold: float = 0.3) -> dict[str, float]:
    """VOC and COCO metrics of ``model`` on ``loader`` (unshuffled, over ``test_set``), and PNGs.

    Writes ``figures_dir/pr_curves.png`` (VOC PR curve per class) and ``figures_dir/detections_<i>.png`` for
    the first ``sample_count`` test images (detections scoring ``>= draw_threshold``, ground truth not drawn).

    Returns floats: ``map_50`` (VOC AP@0.5), ``map``, ``map_75``, ``map_small``/``medium``/``large``,
    ``mar_100`` (COCO style), ``loss``, and ``ap50_<class>`` per class (NaN-free: classes without ground
    truth are left out).
    """
    from xpvision.detection.plots import plot_pr_curves
    from xpvision.detection.predict import draw_detections

    classes = list(meta["classes"])
    task = DetectionTask(model, meta, score_threshold=score_threshold, nms_iou=nms_iou)
    detections, truth, loss = task.predict(model, loader)
    summary, voc, coco = detection_metrics(detections, truth, len(classes), use_07_metric=use_07_metric)
    figures = Path(figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    metric_name = "VOC07 11-point" if use_07_metric else "VOC all-point"
    plot_pr_curves(figures / "pr_curves.png", voc["precision"], voc["recall"], classes, voc["ap"],
                   title=f"test PR curves, IoU 0.5 ({metric_name}), mAP {voc['map']:.3f}")
    for i in range(min(sample_count, len(detections))):
        d = detections[i]
        shown = d.scores >= draw_threshold
        picture = draw_detections(test_set[i]["image"], d.boxes[shown], d.labels[shown], d.scores[shown],
                                  classes, scale=4)
        with atomic.atomic_path(figures / f"detections_{i:03d}.png") as tmp:
            picture.save(tmp, format="PNG")
    metrics = {**summary, "loss": float(loss)}
    for key in ("map_small", "map_medium", "map_large", "mar_100"):
        metrics[key] = float(coco[key])
    for name, ap in zip(classes, voc["ap"], strict=True):
        if not np.isnan(ap):
            metrics[f"ap50_{name}"] = float(ap)
    return metrics
