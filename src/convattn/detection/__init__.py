"""Object detection with attention backbones, on torchvision's detectors.

``backbones`` (registry models as FPN bodies: stage features, frozen BatchNorm,
trainable stages, classification weights), ``faster_rcnn`` (torchvision's Faster R-CNN
with an FPN on them), ``ssd`` (torchvision's SSD on VGG-16 with CBAM/SE, or on a registry
backbone such as MobileNet v1; their feature maps in ``ssd_features``), ``data``
(targets, the generated scenes, loaders), ``composed`` (object photos pasted on real
scenes), ``readers`` (COCO- and VOC-format files, bad records reported and skipped),
``metrics`` (COCO mAP through pycocotools, VOC AP with the 11-point and area methods),
and the training engine for detectors (``config``, ``setup``, ``loop``, ``engine``,
``evaluate``); ``draw`` puts boxes on images.
"""

from .backbones import BackboneFPN, StageFeatures, build_fpn_backbone, freeze_batchnorm
from .composed import composed_detection
from .data import DetectionDataset, ImageRecord, build_detection_loader, synthetic_detection
from .faster_rcnn import build_faster_rcnn
from .metrics import CocoStats, VocResult, coco_evaluate, voc_evaluate
from .readers import read_coco, read_voc
from .ssd import build_ssd

__all__ = [
    "BackboneFPN",
    "CocoStats",
    "DetectionDataset",
    "ImageRecord",
    "StageFeatures",
    "VocResult",
    "build_detection_loader",
    "build_faster_rcnn",
    "build_fpn_backbone",
    "build_ssd",
    "coco_evaluate",
    "composed_detection",
    "freeze_batchnorm",
    "read_coco",
    "read_voc",
    "synthetic_detection",
    "voc_evaluate",
]
