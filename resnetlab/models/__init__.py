"""Model zoo: ResNet/ResNeXt/Wide-ResNet, CIFAR ResNets and plain twins, GoogLeNet, MobileNet v1/v2."""

from resnetlab.models._registry import create_model, get_builder, is_model, list_models, register_model

__all__ = ["create_model", "get_builder", "is_model", "list_models", "register_model"]
