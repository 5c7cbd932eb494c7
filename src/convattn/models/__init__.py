"""Backbones (one ResNet class, MobileNet v1), the registry and weights handling."""

from ._base import Backbone, FeatureInfo, init_weights
from .blocks import MIDDLES, BasicBlock, Bottleneck, make_middle
from .create import create_model
from .mobilenet import MobileNetV1
from .profile import ModelProfile, count_parameters, profile
from .registry import ModelSpec, get_model_spec, list_models, register_model
from .resnet import ResNet
from .surgery import add_attention, wrap_with_attention
from .weights import CheckpointError, LoadReport, load_checkpoint, read_state_dict
from .zoo import register_zoo

register_zoo()

__all__ = [
    "MIDDLES",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "CheckpointError",
    "FeatureInfo",
    "LoadReport",
    "MobileNetV1",
    "ModelProfile",
    "ModelSpec",
    "ResNet",
    "add_attention",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "init_weights",
    "list_models",
    "load_checkpoint",
    "make_middle",
    "profile",
    "read_state_dict",
    "register_model",
    "wrap_with_attention",
]
